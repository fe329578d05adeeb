"""Soak: N clients for M minutes over mixed routes; errors, latency and replica memory.

    python bench/soak.py                      # starts configs/tiny.yaml itself, 32 clients, 10 min
    python bench/soak.py --minutes 2 --clients 16
    python bench/soak.py --url http://127.0.0.1:8000 --pid Ingress=1234 --pid ASR=1235

Each client sends its next request as soon as the last one is answered (closed
loop), picking a route by weight: transcriptions (json, and verbose_json with
diarize=true), diarize, diarize-chunk, /v1/models and /health, with WAV, FLAC, MP3
and M4A uploads of 3-12 s. At the end it prints requests served, errors by status,
p50/p95/p99 latency per route and the resident memory (RSS) of every replica
process and the HTTP proxy: before the load, after the warm-up, at the end and at
its peak. The goal is 0 errors and flat memory (end close to after-warm-up).

Started here, the graph runs in this process's own Ray on 127.0.0.1 and its
processes are found in Ray's actor table; with --url, name the processes to watch
with --pid. Only loopback is accepted unless --allow-remote is given.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `python bench/soak.py`
# Before `import ray`: local, quiet, unauthenticated on loopback.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from voxgraph.synth import speechlike  # noqa: E402

SR = 16_000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# name -> (method, path, form fields, weight)
ROUTES: dict[str, tuple[str, str, dict[str, str], float]] = {
    "transcriptions": ("POST", "/v1/audio/transcriptions", {"response_format": "json"}, 0.30),
    "transcriptions+diarize": (
        "POST",
        "/v1/audio/transcriptions",
        {"response_format": "verbose_json", "diarize": "true"},
        0.15,
    ),
    "diarize": ("POST", "/v1/audio/diarize", {}, 0.20),
    "diarize-chunk": ("POST", "/v1/audio/diarize-chunk", {}, 0.25),
    "models": ("GET", "/v1/models", {}, 0.05),
    "health": ("GET", "/health", {}, 0.05),
}


# ----------------------------------------------------------------------------- inputs


def payloads() -> list[tuple[str, bytes]]:
    """(filename, bytes): both decoders (libsndfile and FFmpeg) and several lengths."""
    import av
    import soundfile as sf

    out: list[tuple[str, bytes]] = []
    for i, (seconds, fmt) in enumerate(
        [(3, "WAV"), (6, "WAV"), (12, "WAV"), (8, "FLAC"), (5, "MP3"), (7, "M4A")]
    ):
        x = speechlike(seconds, seed=100 + i)
        buf = io.BytesIO()
        if fmt == "M4A":
            with av.open(buf, "w", format="ipod") as c:
                stream = c.add_stream("aac", rate=SR, layout="mono")
                for j in range(0, len(x), 1024):
                    frame = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(x[None, j : j + 1024]), format="fltp", layout="mono"
                    )
                    frame.sample_rate, frame.pts = SR, j
                    for p in stream.encode(frame):
                        c.mux(p)
                for p in stream.encode(None):
                    c.mux(p)
        else:
            sf.write(buf, x, SR, format=fmt)
        out.append((f"soak-{i}.{fmt.lower()}", buf.getvalue()))
    return out


# ----------------------------------------------------------------------------- processes


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def graph_processes(app: str = "voxgraph") -> dict[str, int]:
    """{label: pid} of the app's replicas and the HTTP proxy, from Ray's actor table."""
    import ray

    procs: dict[str, int] = {}
    for actor in ray._private.state.actors().values():
        name = actor.get("Name") or ""
        if actor.get("State") != "ALIVE":
            continue
        if name.startswith(f"SERVE_REPLICA::{app}#"):
            _, deployment, replica = name.split("#")
            procs[f"{deployment} ({replica})"] = int(actor["Pid"])
        elif name.startswith("SERVE_PROXY_ACTOR"):
            procs["proxy"] = int(actor["Pid"])
    return procs


@dataclass
class Memory:
    """RSS of each watched process over time: (monotonic time, MB) samples."""

    pids: dict[str, int]
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    last: float = 0.0

    def sample(self) -> None:
        self.last = time.monotonic()
        for name, pid in self.pids.items():
            self.samples.setdefault(name, []).append((self.last, rss_mb(pid)))

    def total(self) -> float:
        return sum(series[-1][1] for series in self.samples.values())

    def rows(self, warm_t: float) -> list[list[str]]:
        rows = []
        for name, series in self.samples.items():
            start = series[0][1]
            warm = next((v for t, v in series if t >= warm_t), series[-1][1])
            # Midway between warm-up and end: growth that slows down (allocator pools
            # filling) shows a smaller second half than first; a leak does not.
            mid_t = (warm_t + series[-1][0]) / 2
            mid = next((v for t, v in series if t >= mid_t), series[-1][1])
            end = series[-1][1]
            peak = max(v for _, v in series)
            rows.append(
                [
                    name,
                    f"{start:.0f}",
                    f"{warm:.0f}",
                    f"{mid:.0f}",
                    f"{end:.0f}",
                    f"{peak:.0f}",
                    _signed(mid - warm),
                    _signed(end - mid),
                ]
            )
        return rows


def _signed(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.0f}"


# ----------------------------------------------------------------------------- load


@dataclass
class Result:
    route: str
    status: int  # 0: transport failure (connection refused, timeout, ...)
    seconds: float
    finished: float


async def client(
    http, url: str, files: list[tuple[str, bytes]], stop: float, out: list[Result], seed: int
) -> None:
    import httpx

    rng = random.Random(seed)
    names = list(ROUTES)
    weights = [ROUTES[n][3] for n in names]
    while time.monotonic() < stop:
        route = rng.choices(names, weights)[0]
        method, path, fields, _ = ROUTES[route]
        t0 = time.monotonic()
        try:
            if method == "GET":
                r = await http.get(f"{url}{path}")
            else:
                name, data = rng.choice(files)
                r = await http.post(
                    f"{url}{path}", files={"file": (name, data)}, data=fields or None
                )
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        t1 = time.monotonic()
        out.append(Result(route, status, t1 - t0, t1))


async def soak(
    url: str, clients: int, seconds: float, memory: Memory, sample_s: float, warmup_s: float
) -> tuple[list[Result], float]:
    import httpx

    files = payloads()
    results: list[Result] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    start = time.monotonic()
    stop = start + seconds
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        tasks = [
            asyncio.create_task(client(http, url, files, stop, results, seed=i))
            for i in range(clients)
        ]
        next_report = start + 60
        while not all(t.done() for t in tasks):
            await asyncio.sleep(min(sample_s, 5))
            now = time.monotonic()
            if now - memory.last >= sample_s:
                memory.sample()
            if now >= next_report:
                errors = sum(r.status != 200 for r in results)
                print(
                    f"  {now - start:5.0f}s  {len(results)} answers, {errors} errors, "
                    f"load {os.getloadavg()[0]:.1f}, RSS total {memory.total():.0f} MB",
                    flush=True,
                )
                next_report += 60
        await asyncio.gather(*tasks)
    return results, start + warmup_s


# ----------------------------------------------------------------------------- report


def table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def report(results: list[Result], seconds: float, memory: Memory, warm_t: float) -> int:
    statuses = Counter(r.status for r in results)
    served = statuses.get(200, 0)
    errors = {s: n for s, n in statuses.items() if s != 200}
    print(f"\nrequests: {len(results)} answered, {served} served (200) in {seconds:.0f}s")
    print(f"throughput: {served / seconds:.2f} req/s")
    if errors:
        text = ", ".join(f"{'transport' if s == 0 else s}: {n}" for s, n in sorted(errors.items()))
        print(f"errors by status: {text}")
    else:
        print("errors by status: none")
    by_route: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_route[r.route].append(r)
    rows = []
    for route in ROUTES:
        rs = by_route.get(route, [])
        lat = [r.seconds for r in rs if r.status == 200]
        q = np.percentile(lat, [50, 95, 99]) if lat else [math.nan] * 3
        rows.append(
            [
                route,
                str(len(rs)),
                str(sum(r.status != 200 for r in rs)),
                *(f"{v:.2f}" for v in q),
            ]
        )
    print("\nlatency of served requests (seconds)")
    print(table(["route", "requests", "errors", "p50", "p95", "p99"], rows))
    if memory.pids:
        print("\nresident memory (MB): before load, after warm-up, midway, end, peak")
        headers = ["process", "before", "warm", "mid", "end", "peak", "mid-warm", "end-mid"]
        print(table(headers, memory.rows(warm_t)))
    else:
        print("\nresident memory: no processes to watch (pass --pid NAME=PID with --url)")
    return 1 if errors else 0


# ----------------------------------------------------------------------------- main


def start_graph() -> str:
    """Ray on 127.0.0.1 in this process, configs/tiny.yaml deployed; returns its URL."""
    import ray
    import yaml

    from bench.common import import_script

    serve_local = import_script("serve_local")
    tiny = ROOT / "models" / "tiny"
    if not all((tiny / f).exists() for f in ("asr.nemo", "diarizer.nemo", "embedder.nemo")):
        sys.exit("models/tiny missing: run `make tiny` first")
    port = serve_local.free_ports(1)[0]
    # Ray first, with replica logs kept out of this report (serve_local.start skips
    # its own ray.init when Ray is up).
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        namespace="serve",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        log_to_driver=False,
    )
    config = serve_local.load_config(ROOT / "configs" / "tiny.yaml")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(config, f)
        f.flush()
        serve_local.start(f.name, port=port)
    t = serve_local.wait_healthy(port, timeout_s=900)
    print(f"# graph ready on 127.0.0.1:{port} after {t:.0f}s", flush=True)
    return f"http://127.0.0.1:{port}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    p.add_argument("--url", help="a running voxgraph (default: start configs/tiny.yaml here)")
    p.add_argument("--pid", action="append", default=[], help="NAME=PID to watch (with --url)")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    p.add_argument("--warmup-s", type=float, default=60.0, help="warm-up before the RSS baseline")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    args = p.parse_args()

    started_here = args.url is None
    if not started_here:
        host = urlparse(args.url).hostname or ""
        if host not in LOOPBACK and not args.allow_remote:
            p.error(f"--url host {host!r} is not loopback (pass --allow-remote to insist)")
    url = args.url.rstrip("/") if args.url else start_graph()
    pids = graph_processes() if started_here else {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids[name] = int(pid)
    seconds = args.minutes * 60
    print(
        f"# soak: {args.clients} clients x {args.minutes:g} min against {url}; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    memory = Memory(pids)
    memory.sample()
    results, warm_t = asyncio.run(
        soak(url, args.clients, seconds, memory, args.sample_s, min(args.warmup_s, seconds / 4))
    )
    memory.sample()
    print(f"# load at end: {os.getloadavg()[0]:.1f}")
    code = report(results, seconds, memory, warm_t)
    if started_here:
        from ray import serve

        serve.shutdown()
        import ray

        ray.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
