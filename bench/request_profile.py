"""Where a request's CPU goes in the graph: per process, and per kind of work inside each.

    .venv/bin/python bench/request_profile.py [--models tiny] [--requests 30] [--json FILE]

Deploys the graph on a local Ray cluster (127.0.0.1) and, for each route, sends
`--requests` sequential HTTP requests (30 s of 3-speaker audio each), reading
every process's CPU time, then as many again while py-spy samples the proxy,
the ingress and the three model replicas. Two tables per route:

- CPU-ms per request of every process of the system (from /proc: utime+stime),
  the Ray daemons (raylet, GCS, agents) and this client included;
- those CPU-ms split by what the sampled Python stacks were doing: model
  compute (torch/NeMo), audio decode, HTTP body parsing, serialization,
  Serve's routing and replica plumbing, batching, metrics, logging, the
  asyncio loop, the service's own work (the walk, formats). A process's
  CPU-ms are shared out in proportion to its active samples.

A stack is charged to the first category found walking from its innermost frame
outwards, so `pickle` called by the router counts as serialization and a torch
kernel called by the walk as model compute.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROUTES,
    _proc_table,
    conversation,
    fmt,
    machine,
    model_paths,
    print_machine,
    run_graph,
    table,
    wav_bytes,
)

DEFAULT_ROUTES = "transcriptions,transcriptions-diarize,diarize-chunk"

# Process titles Ray gives its workers and daemons -> the name in the tables.
_SAMPLED = {
    "ray::ProxyActor": "proxy",
    "ServeReplica:voxgraph:Ingress": "ingress",
    "ServeReplica:voxgraph:ASR": "asr",
    "ServeReplica:voxgraph:Diarizer": "diarizer",
    "ServeReplica:voxgraph:Embedder": "embedder",
}
_DAEMONS = {
    "raylet": "raylet",
    "gcs_server": "gcs",
    "ray::ServeController": "serve controller",
    "ray::DashboardAgent": "dashboard agent",
    "ray::RuntimeEnvAgent": "runtime env agent",
    "ray::IDLE": "idle workers",
    "dashboard/dashboard.py": "dashboard",
    "log_monitor.py": "log monitor",
    "autoscaler/_private/monitor.py": "autoscaler monitor",
}

# (category, substrings of a frame "function (file:line)"), tried in this order at
# each frame from the innermost outwards; the first hit names the sample.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("model compute (torch/NeMo)", ("/torch/", "/nemo/", "/lightning/", "voxgraph/models.py")),
    ("audio decode", ("voxgraph/audio.py", "/soundfile", "/av/")),
    ("HTTP body parsing", ("multipart", "formparsers", "voxgraph/json_body.py")),
    (
        "serialization",
        ("serialization.py", "pickle", "cloudpickle", "msgpack", "(json/", "/json/", "orjson"),
    ),
    ("metrics", ("metrics", "prometheus", "opencensus", "opentelemetry")),
    ("logging", ("/logging/", "logging_utils")),
    ("Serve batching", ("serve/batching.py",)),
    ("Serve routing (handles)", ("serve/_private/router", "request_router", "serve/handle.py")),
    ("Serve replica plumbing", ("serve/_private/replica", "serve/_private/utils")),
    ("Serve proxy", ("serve/_private/proxy", "serve/_private/http_util")),
    ("Ray core (tasks, objects)", ("/ray/_private/", "/ray/_raylet", "/ray/actor.py", "/ray/")),
    ("HTTP server (uvicorn/starlette/fastapi)", ("uvicorn", "starlette", "fastapi", "h11")),
    ("service (walk, formats, schemas)", ("voxgraph/", "deployments/", "pydantic")),
    ("asyncio event loop", ("asyncio", "uvloop", "selectors")),
]
OTHER = "other"
IDLE = "idle"

# Innermost frames of threads blocked in native code (Ray's core worker loop, a
# thread waiting in C): py-spy cannot always tell these are idle.
_BLOCKED = ("Worker.main_loop (", "Thread.run (threading.py", "_worker (concurrent/futures")


def classify(stack: str) -> str:
    frames = stack.split(";")
    if not stack or frames[-1].startswith(_BLOCKED):
        return IDLE
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return OTHER


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def find_processes(root: int) -> dict[int, str]:
    """pid -> table name for the Ray cluster this process started (its descendants)."""
    procs = _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in procs.items():
        children[ppid].append(pid)
    names: dict[int, str] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, ()))
        if pid == root:
            names[pid] = "client + driver"
            continue
        cmd = _cmdline(pid)
        label = next((v for k, v in _SAMPLED.items() if k in cmd), None)
        label = label or next((v for k, v in _DAEMONS.items() if k in cmd), None)
        names[pid] = label or "other Ray processes"
    return names


def cpu_by_name(names: dict[int, str]) -> dict[str, float]:
    procs = _proc_table()
    out: dict[str, float] = defaultdict(float)
    for pid, name in names.items():
        if pid in procs:
            out[name] += procs[pid][1]
    return out


def idle_cpu(names: dict[int, str], seconds: float) -> dict[str, float]:
    """Cores each process uses with no traffic: the fixed price of a running graph."""
    c0 = cpu_by_name(names)
    time.sleep(seconds)
    c1 = cpu_by_name(names)
    return {k: (c1.get(k, 0.0) - c0.get(k, 0.0)) / seconds for k in c1}


def parse_raw(path: Path) -> Counter[str]:
    """py-spy's raw (collapsed) output -> samples per category."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[classify(stack)] += int(n)
    return counts


def profile_route(
    url: str, route: str, wav: bytes, requests: int, names: dict[int, str], rate: int, out: Path
) -> dict[str, Any]:
    import httpx

    path, fields = ROUTES[route]
    http = httpx.Client(timeout=600)

    def send() -> None:
        r = http.post(f"{url}{path}", files={"file": ("clip.wav", wav, "audio/wav")}, data=fields)
        r.raise_for_status()

    for _ in range(3):
        send()
    # CPU per process first, without the sampler: py-spy costs CPU of its own.
    c0, t0 = cpu_by_name(names), time.perf_counter()
    for _ in range(requests):
        send()
    wall = time.perf_counter() - t0
    c1 = cpu_by_name(names)
    spies: dict[str, subprocess.Popen] = {}
    files: dict[str, Path] = {}
    spy = Path(sys.executable).parent / "py-spy"
    for pid, name in names.items():
        if name in _SAMPLED.values():
            files[name] = out / f"{route}-{name}.txt"
            spies[name] = subprocess.Popen(
                [str(spy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                 "--nonblocking", "--output", str(files[name])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
    time.sleep(1.5)  # py-spy attaches
    for _ in range(requests):
        send()
    for p in spies.values():
        p.send_signal(signal.SIGINT)
    for p in spies.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    http.close()
    per_proc = {k: 1000 * (c1.get(k, 0.0) - c0.get(k, 0.0)) / requests for k in c1}
    per_cat: dict[str, float] = defaultdict(float)
    samples: dict[str, dict[str, int]] = {}
    for name, f in files.items():
        counts = parse_raw(f)
        samples[name] = dict(counts)
        counts.pop(IDLE, None)
        total = sum(counts.values())
        for cat, n in counts.items():
            per_cat[cat] += per_proc.get(name, 0.0) * n / total if total else 0.0
    return {
        "route": route,
        "requests": requests,
        "wall_ms_per_request": 1000 * wall / requests,
        "cpu_ms_per_request_by_process": per_proc,
        "cpu_ms_per_request_by_category": dict(per_cat),
        "samples": samples,
    }


def _share_rows(ms: dict[str, float], total_label: str) -> list[list[str]]:
    total = sum(ms.values()) or 1.0
    rows = [
        [k, fmt(v), f"{100 * v / total:.0f} %"] for k, v in sorted(ms.items(), key=lambda x: -x[1])
    ]
    return [*rows, [total_label, fmt(total), "100 %"]]


def print_route(r: dict[str, Any]) -> None:
    each = fmt(r["wall_ms_per_request"])
    print(f"\n{r['route']}: {r['requests']} sequential requests, {each} ms each")
    procs = _share_rows(r["cpu_ms_per_request_by_process"], "**all**")
    print(table(["process", "CPU ms / request", "share"], procs))
    cats = _share_rows(r["cpu_ms_per_request_by_category"], "**sampled processes**")
    print()
    print(table(["work (proxy, ingress, models)", "CPU ms / request", "share"], cats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny", help="tiny | real | directory (default tiny)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per request (default 30)")
    p.add_argument("--requests", type=int, default=30, help="timed requests per route")
    p.add_argument(
        "--routes", default=DEFAULT_ROUTES, help=f"default {DEFAULT_ROUTES}; '' for idle only"
    )
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--idle-s", type=float, default=10.0, help="idle CPU measured over (s)")
    p.add_argument("--keep", help="keep py-spy's raw stacks in this folder")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)

    info = machine()
    print_machine(info, sys.argv)
    paths = model_paths(a.models)
    wav = wav_bytes(conversation(a.seconds, speakers=3, seed=7))
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="voxgraph-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with run_graph(paths) as g:
        time.sleep(3)  # replicas settle after /health
        names = find_processes(os.getpid())
        idle = idle_cpu(names, a.idle_s)
        print(f"\nIdle: CPU cores used with no traffic, over {a.idle_s:g} s\n")
        rows = [[k, f"{v:.3f}"] for k, v in sorted(idle.items(), key=lambda x: -x[1])]
        print(table(["process", "cores"], [*rows, ["**all**", f"{sum(idle.values()):.3f}"]]))
        for route in filter(None, a.routes.split(",")):
            r = profile_route(g.url, route, wav, a.requests, names, a.rate, out)
            print_route(r)
            results.append(r)
    if a.json:
        doc = {"machine": info, "idle_cores": idle, "routes": results}
        Path(a.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
