"""What the graph adds to a request: HTTP proxy, handles, serialization, batch waits.

    .venv/bin/python bench/overhead.py [--models tiny] [--seconds 30] [--reps 10]

One process loads the three models in-process (bench/monolith.py's `Monolith`,
with ASR running next to diarization+embedding as the graph's ingress does) and
deploys the graph with the same `.nemo` files on a local Ray cluster
(127.0.0.1). Each repetition sends the same WAV through all three paths, in a
shuffled order so that drift in machine load hits them alike:

- in-process: decode + models + core, no Ray, no HTTP (the baseline);
- handle:     `serve.get_app_handle("voxgraph").<op>.remote(wav_bytes)`;
- HTTP:       multipart POST to the Serve proxy on 127.0.0.1.

Added milliseconds = path p50 - in-process p50 (and the same from minimums, the
least disturbed repetition on a shared machine); the share is of that path's
request time. CPU-ms per request of this process and all its descendants (the
Ray cluster included) is reported too: unlike wall time it does not depend on
what other tenants run. The in-process models run with one torch thread because Ray gives the
graph's CPU replicas (num_cpus <= 1) OMP_NUM_THREADS=1: both sides do the same
model work. Then the model deployments are reconfigured in place with
batch_wait_timeout_s=0 and HTTP is measured again, separating the batch
window (a deliberate wait for company at concurrency 1) from plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROUTES,
    conversation,
    fmt,
    graph_args,
    load_avg,
    machine,
    model_paths,
    percentile,
    print_machine,
    run_graph,
    table,
    tree_cpu_s,
    wav_bytes,
)

PATHS = ("in-process", "handle", "HTTP")
DEFAULT_ROUTES = "diarize-chunk,transcriptions,transcriptions-diarize"


def _handle_call(handle: Any, route: str, wav: bytes) -> Any:
    """The app handle's typed method for a bench route (same options as its HTTP form)."""
    if route == "diarize-chunk":
        return handle.diarize_chunk.remote(wav).result()
    if route == "diarize":
        return handle.diarize.remote(wav).result()
    _, fields = ROUTES[route]
    opts = {k: (v == "true" if k == "diarize" else v) for k, v in fields.items()}
    return handle.transcribe.remote(wav, **opts).result()


def _inproc_call(mono: Any, route: str, wav: bytes) -> Any:
    if route == "diarize-chunk":
        return mono.run("diarize_chunk", wav)
    if route == "diarize":
        return mono.run("diarize", wav)
    _, fields = ROUTES[route]
    opts = {k: (v == "true" if k == "diarize" else v) for k, v in fields.items()}
    return mono.run("transcribe", wav, **opts)


def _http_call(http: Any, url: str, route: str, wav: bytes) -> Any:
    path, fields = ROUTES[route]
    r = http.post(f"{url}{path}", files={"file": ("clip.wav", wav, "audio/wav")}, data=fields)
    r.raise_for_status()
    return r


def measure(
    calls: dict[str, Callable[[str], Any]], routes: list[str], reps: int, warmup: int, seed: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """(wall ms, CPU ms) per (route, path); paths shuffled per repetition, warm-up discarded.

    CPU is that of this process and all its descendants (the whole Ray cluster, the
    in-process models, the client): the work a path costs whatever else runs here.
    """
    rng = random.Random(seed)
    wall = {r: {p: [] for p in calls} for r in routes}
    cpu = {r: {p: [] for p in calls} for r in routes}
    me = os.getpid()
    for i in range(warmup + reps):
        for route in routes:
            order = list(calls)
            rng.shuffle(order)
            for path in order:
                c0 = tree_cpu_s(me)
                t0 = time.perf_counter()
                calls[path](route)
                t1 = time.perf_counter()
                c1 = tree_cpu_s(me)
                if i >= warmup:
                    wall[route][path].append((t1 - t0) * 1000)
                    cpu[route][path].append((c1 - c0) * 1000)
    return wall, cpu


def report_cpu(cpu: dict[str, dict[str, list[float]]], title: str) -> list[dict[str, Any]]:
    """Mean CPU ms per request and path (ticks are 10 ms: means, not medians)."""
    rows, records = [], []
    others = [p for p in next(iter(cpu.values())) if p != "in-process"]
    for route, by_path in cpu.items():
        base = statistics.fmean(by_path["in-process"])
        rec: dict[str, Any] = {"route": route, "in_process_cpu_ms": base}
        cells = [route, fmt(base)]
        for path in others:
            m = statistics.fmean(by_path[path])
            rec[f"{path}_cpu_ms"], rec[f"{path}_added_cpu_ms"] = m, m - base
            cells += [fmt(m), f"{m - base:+.1f}", f"{100 * (m - base) / m:.1f} %"]
        rows.append(cells)
        records.append(rec)
    headers = ["route", "in-process CPU ms"]
    for path in others:
        headers += [f"{path} CPU ms", f"{path} added", f"{path} share"]
    print(f"\n{title}\n")
    print(table(headers, rows))
    return records


def report(ms: dict[str, dict[str, list[float]]], title: str) -> list[dict[str, Any]]:
    """Added ms per path against in-process, from medians and from minimums.

    On a shared machine the minimum (the least disturbed repetition) estimates the
    intrinsic cost best; the median is what a caller sees under that load.
    """
    rows, records = [], []
    others = [p for p in next(iter(ms.values())) if p != "in-process"]
    for route, by_path in ms.items():
        base, base_min = percentile(by_path["in-process"], 50), min(by_path["in-process"])
        rec: dict[str, Any] = {"route": route, "in_process_ms": base, "in_process_min_ms": base_min}
        cells = [route, f"{fmt(base)} / {fmt(base_min)}"]
        for path in others:
            p50, low = percentile(by_path[path], 50), min(by_path[path])
            rec.update(
                {
                    f"{path}_ms": p50,
                    f"{path}_added_ms": p50 - base,
                    f"{path}_min_ms": low,
                    f"{path}_added_min_ms": low - base_min,
                }
            )
            cells += [
                f"{fmt(p50)} / {fmt(low)}",
                f"{p50 - base:+.1f} / {low - base_min:+.1f}",
                f"{100 * (p50 - base) / p50:.1f} % / {100 * (low - base_min) / low:.1f} %",
            ]
        rows.append(cells)
        records.append(rec)
    headers = ["route", "in-process ms"]
    for path in others:
        headers += [f"{path} ms", f"{path} added ms", f"{path} share"]
    print(f"\n{title}\n(each cell: p50 / min over the repetitions)\n")
    print(table(headers, rows))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny", help="tiny | real | directory (default tiny)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per request (default 30)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per path (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="discarded repetitions (default 2)")
    p.add_argument("--routes", default=DEFAULT_ROUTES, help=f"default {DEFAULT_ROUTES}")
    p.add_argument("--torch-threads", type=int, default=1, help="in-process torch threads")
    p.add_argument("--no-wait-variant", action="store_true", help="skip the batch-wait-0 run")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = [r for r in routes if r not in ROUTES]
    if unknown:
        p.error(f"unknown routes {unknown}; choose from {sorted(ROUTES)}")

    info = machine()
    print_machine(info)
    import httpx
    import torch

    from bench.monolith import Monolith

    torch.set_num_threads(args.torch_threads)
    paths = model_paths(args.models)
    wav = wav_bytes(conversation(args.seconds, seed=args.seed, speakers=3))
    mono = Monolith(paths, device="cpu").load()
    print(f"# in-process models loaded in {sum(mono.load_seconds.values()):.1f}s", flush=True)

    gargs = graph_args(paths, gpu=False)
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    with run_graph(paths, args=gargs) as graph, httpx.Client(timeout=600) as http:
        print(f"# graph ready in {graph.ready_s:.1f}s at {graph.url}", flush=True)
        calls: dict[str, Callable[[str], Any]] = {
            "in-process": lambda r: _inproc_call(mono, r, wav),
            "handle": lambda r: _handle_call(graph.handle, r, wav),
            "HTTP": lambda r: _http_call(http, graph.url, r, wav),
        }
        print()
        load0 = load_avg()
        ms, cpu = measure(calls, routes, args.reps, args.warmup, args.seed)
        title = (
            f"Graph overhead, {args.seconds:g} s of audio per request, concurrency 1, "
            f"{args.reps} reps (load {load0} -> {load_avg()})"
        )
        results["default"] = report(ms, title)
        results["cpu_default"] = report_cpu(
            cpu, "CPU per request, all our processes (mean; load-independent work)"
        )
        results["raw_default"], results["raw_cpu_default"] = ms, cpu

        if not args.no_wait_variant:
            _redeploy(graph.url, gargs, {"batch_wait_timeout_s": 0.0})
            calls0 = {k: calls[k] for k in ("in-process", "HTTP")}
            load0 = load_avg()
            ms0, cpu0 = measure(calls0, routes, args.reps, args.warmup, args.seed + 1)
            title = (
                "Same, model deployments reconfigured with batch_wait_timeout_s=0 "
                f"(load {load0} -> {load_avg()})"
            )
            results["batch_wait_0"] = report(ms0, title)
            results["cpu_batch_wait_0"] = report_cpu(cpu0, "CPU per request, batch wait 0")
            results["raw_batch_wait_0"], results["raw_cpu_batch_wait_0"] = ms0, cpu0

    for key in ("", "_min"):
        d = results["default"]
        ratio = sum(r[f"HTTP{key}_ms"] / r[f"in_process{key}_ms"] for r in d) / len(d)
        added = [r[f"HTTP_added{key}_ms"] for r in d]
        print(
            f"{'p50' if not key else 'min'}: graph HTTP / in-process {ratio:.2f}x (mean over "
            f"routes); added {min(added):+.0f} to {max(added):+.0f} ms per request "
            "(goal: <= 5 % of request time)"
        )
    added_cpu = [r["HTTP_added_cpu_ms"] for r in results["cpu_default"]]
    print(f"CPU: the graph adds {min(added_cpu):+.0f} to {max(added_cpu):+.0f} CPU-ms per request")
    print(f"# load at end: {load_avg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def _redeploy(url: str, gargs: dict[str, Any], user_config: dict[str, Any]) -> None:
    """Change the model deployments' `user_config` in place (Serve reconfigures replicas).

    The change goes in `deployments:` overrides: Serve hashes `args` into the app's code
    version, so changing them would replace every replica instead.
    """
    import yaml
    from ray import serve

    from bench.common import import_script, wait_healthy

    port = int(url.rsplit(":", 1)[1])
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 900},
        "applications": [
            {
                "name": "voxgraph",
                "route_prefix": "/",
                "import_path": "graph:build_app",
                "args": gargs,
                "deployments": [
                    {"name": name, "user_config": user_config}
                    for name in ("ASR", "Diarizer", "Embedder")
                ],
            }
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(config, f)
        f.flush()
        import_script("serve_local").start(f.name, port=port)
    time.sleep(5)  # the app reports RUNNING until the controller has picked up the new config
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        app = serve.status().applications.get("voxgraph")
        if app is not None and str(app.status).endswith("RUNNING"):
            break
        time.sleep(1)
    wait_healthy(url)


if __name__ == "__main__":
    sys.exit(main())
