"""Graph vs seed-style monolith under K concurrent clients sending 30-second chunks.

    .venv/bin/python bench/throughput.py [--models tiny|real] [--clients 1,8,32] [--duration 20]

Starts both systems with the same `.nemo` files (or takes --graph-url /
--monolith-url), then for every route and K runs a closed loop of K clients
against one system, then the other (alternating which goes first, so drift in
machine load does not favour one), all on 127.0.0.1, with the same WAV inputs.
Per cell: requests/s, audio seconds per second (RTFx), p50/p95 latency, errors,
CPU seconds per answered request (every process of the system: for the graph the
whole Ray cluster this script started; load-independent, unlike wall time), and
the graph/monolith ratio.

- graph: the voxgraph app on a local Ray cluster: configs/tiny.yaml's CPU layout,
  or on a GPU serve_config.yaml's fractional shares, precision and batch sizes;
- monolith: bench/monolith.py in its own process, one model after another per
  request, no batching across requests (default --monolith-mode threads: requests
  overlap across models; serial: one request at a time).

On CPU the monolith runs torch with one thread per model call by default, as Ray
runs the graph's CPU replicas (OMP_NUM_THREADS=1 for num_cpus <= 1); on a GPU
torch's default. The load generator shares the machine with both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROUTES,
    Server,
    chunk_payloads,
    closed_loop,
    fmt,
    graph_args,
    load_avg,
    machine,
    model_paths,
    percentile,
    precision_spec,
    print_machine,
    run_graph,
    run_monolith,
    table,
    tree_cpu_s,
)

DEFAULT_ROUTES = "diarize-chunk,transcriptions-diarize"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny", help="tiny | real | a directory (default tiny)")
    p.add_argument("--routes", default=DEFAULT_ROUTES, help=f"default {DEFAULT_ROUTES}")
    p.add_argument("--clients", type=_ints, default=[1, 8, 32], help="K values (default 1,8,32)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per cell")
    p.add_argument("--chunk-s", type=float, default=30.0, help="audio per request (default 30)")
    p.add_argument("--inputs", type=int, default=8, help="distinct chunks cycled (default 8)")
    p.add_argument("--systems", default="graph,monolith", help="graph,monolith (default both)")
    p.add_argument("--graph-url", help="use a running graph instead of starting one")
    p.add_argument("--monolith-url", help="use a running monolith instead of starting one")
    p.add_argument("--monolith-mode", choices=("threads", "serial"), default="threads")
    p.add_argument(
        "--monolith-threads",
        type=int,
        default=None,
        help="monolith torch threads (default: 1 on CPU, torch's default on GPU)",
    )
    p.add_argument("--json", help="also write the figures to this file")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start what is needed, run every cell, print the tables; returns the figures."""
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = [r for r in routes if r not in ROUTES]
    if unknown:
        raise SystemExit(f"unknown routes {unknown}; choose from {sorted(ROUTES)}")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    info = machine()
    print_machine(info)
    gpu = _cuda()
    paths = model_paths(args.models)
    gargs = graph_args(paths, gpu)
    payloads = chunk_payloads(args.inputs, args.chunk_s)
    mono_threads = args.monolith_threads if args.monolith_threads is not None else (0 if gpu else 1)

    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        # One after the other: each time-to-ready is then measured on a quiet machine.
        if "monolith" in systems:
            servers["monolith"] = (
                Server("monolith", args.monolith_url)
                if args.monolith_url
                else stack.enter_context(
                    run_monolith(
                        paths,
                        mode=args.monolith_mode,
                        torch_threads=mono_threads,
                        precision=precision_spec(gargs),
                    )
                )
            )
        if "graph" in systems:
            servers["graph"] = (
                Server("graph", args.graph_url)
                if args.graph_url
                else stack.enter_context(run_graph(paths, gpu=gpu, args=gargs))
            )
        for s in servers.values():
            ready = f"ready in {s.ready_s:.1f}s" if s.ready_s is not None else "given"
            print(f"# {s.name}: {s.url} ({ready})", flush=True)
        idle = _idle_cpu(servers, seconds=10.0)
        cells = _run_cells(servers, routes, args.clients, payloads, args)

    out = {
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "device": "cuda" if gpu else "cpu",
        "monolith_torch_threads": mono_threads,
        "time_to_ready_s": {k: s.ready_s for k, s in servers.items()},
        "idle_cpu_cores": idle,
        "cells": cells,
    }
    _print_tables(cells, routes, args)
    print(f"# load at end: {load_avg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _run_cells(
    servers: dict[str, Server],
    routes: list[str],
    clients: list[int],
    payloads: list[bytes],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    flip = False
    for route in routes:
        for k in clients:
            order = list(servers)
            if flip:
                order.reverse()
            flip = not flip
            for name in order:
                load0 = load_avg()
                t0 = time.monotonic()
                c0 = _cpu(name, servers)
                res = asyncio.run(
                    closed_loop(servers[name].url, route, payloads, k, args.duration, args.chunk_s)
                )
                c1 = _cpu(name, servers)
                # Over the whole cell (warm-up and drain too), per request answered in it.
                cpu_per_req = (c1 - c0) / res.answered if c0 is not None and res.answered else None
                cell = {
                    "route": route,
                    "clients": k,
                    "system": name,
                    "requests": len(res.latencies),
                    "rps": res.rps,
                    "rtfx": res.rtfx,
                    "p50_s": percentile(res.latencies, 50),
                    "p95_s": percentile(res.latencies, 95),
                    "errors": res.errors,
                    "cpu_s_per_req": cpu_per_req,
                    "wall_s": time.monotonic() - t0,
                    "load": f"{load0} -> {load_avg()}",
                }
                cells.append(cell)
                print(
                    f"  {route:22s} K={k:<3d} {name:8s} {cell['requests']:4d} req "
                    f"{fmt(cell['rps'], 2)} req/s  RTFx {fmt(cell['rtfx'])}  "
                    f"p50 {fmt(cell['p50_s'], 2)} s  p95 {fmt(cell['p95_s'], 2)} s  "
                    f"CPU {fmt(cpu_per_req, 2)} s/req  errors {cell['errors']}  "
                    f"(load {cell['load']})",
                    flush=True,
                )
    return cells


def _idle_cpu(servers: dict[str, Server], seconds: float) -> dict[str, float | None]:
    """CPU cores each system burns with no traffic (Ray's GCS, raylet, controller polling...).

    Part of every cell's CPU per request: at low request rates it dominates the difference.
    """
    c0 = {name: _cpu(name, servers) for name in servers}
    time.sleep(seconds)
    out = {}
    for name in servers:
        c1 = _cpu(name, servers)
        out[name] = (c1 - c0[name]) / seconds if c1 is not None and c0[name] is not None else None
    print(
        f"# idle CPU over {seconds:g}s (cores): "
        + ", ".join(f"{k} {fmt(v, 3)}" for k, v in out.items())
    )
    return out


def _cpu(name: str, servers: dict[str, Server]) -> float | None:
    """CPU seconds so far of one system's processes (None when it was started elsewhere)."""
    mono = servers.get("monolith")
    mono_pid = mono.extra.get("pid") if mono else None
    if name == "monolith":
        return tree_cpu_s(mono_pid) if mono_pid else None
    if servers[name].handle is None:
        return None
    # The graph: every Ray process this script started (GCS, raylet, controller, proxy,
    # ingress, replicas), not the load generator itself and not the monolith.
    return tree_cpu_s(os.getpid(), include_root=False, exclude=[mono_pid] if mono_pid else [])


def _print_tables(cells: list[dict[str, Any]], routes: list[str], args: argparse.Namespace) -> None:
    for route in routes:
        rows = []
        for k in args.clients:
            by = {c["system"]: c for c in cells if c["route"] == route and c["clients"] == k}
            for name, c in by.items():
                rows.append(
                    [
                        k,
                        name,
                        c["requests"],
                        fmt(c["rps"], 2),
                        fmt(c["rtfx"]),
                        fmt(c["p50_s"], 2),
                        fmt(c["p95_s"], 2),
                        fmt(c["cpu_s_per_req"], 3),
                        c["errors"],
                        c["load"].split(" -> ")[0].split("/")[0],
                    ]
                )
            if {"graph", "monolith"} <= set(by):
                g, m = by["graph"], by["monolith"]
                ratio = g["rps"] / m["rps"] if m["rps"] else float("nan")
                lat = g["p50_s"] / m["p50_s"] if m["p50_s"] else float("nan")
                gc, mc = g["cpu_s_per_req"], m["cpu_s_per_req"]
                # Work per request, inverted so that > 1 means the graph is cheaper.
                cpu = f"{mc / gc:.2f}x (m/g)" if gc and mc else "-"
                blank = ""
                rows.append(
                    [k, "**graph/monolith**", blank, f"**{ratio:.2f}x**", blank, f"{lat:.2f}x"]
                )
                rows[-1] += [blank, cpu, blank, blank]
        print(
            f"\n{route}: {args.chunk_s:g} s chunks, {args.duration:g} s measured per cell "
            f"(goal at K=32: graph/monolith >= 2x)\n"
        )
        headers = ["K", "system", "req", "req/s", "RTFx", "p50 s", "p95 s", "CPU s/req"]
        headers += ["errors", "load 1m"]
        print(table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
