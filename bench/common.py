"""Helpers shared by the benchmarks: inputs, machine facts, tables, servers, load.

Nothing here times anything by itself; each benchmark measures its own
baseline in the same run. Every server binds to 127.0.0.1 and every request
goes to loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as `python bench/x.py`: the repository root holds graph.py, scripts/ and bench/.
    sys.path.insert(0, str(ROOT))

# Before any `import ray`: a local cluster on loopback, no telemetry, no token auth.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SR = 16_000
ROLES = ("asr", "diarizer", "embedder")
MODEL_DIRS = {"tiny": ROOT / "models" / "tiny", "real": ROOT / "models" / "real"}
FILENAMES = {"asr": "asr.nemo", "diarizer": "diarizer.nemo", "embedder": "embedder.nemo"}
LOOPBACK = "127.0.0.1"


# ----------------------------------------------------------------------------- machine


def load_avg() -> str:
    """`uptime`-style load (1/5/15 min): every figure is recorded with it (shared machines)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def machine() -> dict[str, Any]:
    """What a reader needs to compare figures: CPU, cores, memory, GPU, versions, date, load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        mem_gb = int(kb) / 1024**2
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "load_start": load_avg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{p.name}, {p.total_memory / 1024**3:.0f} GiB"
        else:
            info["gpu"] = "none (CPU)"
    except ImportError:
        info["torch"] = "not installed"
    return info


def print_machine(info: dict[str, Any], command: Sequence[str] | None = None) -> None:
    cmd = " ".join(
        command if command is not None else [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]
    )
    print(f"# {info['date']} | {info['cpu']} x{info['cores']} | {info['memory_gb']} GB RAM")
    print(f"# GPU: {info.get('gpu', '?')} | torch {info.get('torch', '?')} | py {info['python']}")
    print(f"# command: {cmd}")
    print(f"# load (1/5/15 min) at start: {info['load_start']}", flush=True)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB, from /proc (no psutil here)."""
    cur = peak = float("nan")
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds incl. reaped children) for every visible process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = raw[raw.rindex(")") + 2 :].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        out[int(entry.name)] = (int(fields[1]), (utime + stime + cutime + cstime) / _TICK)
    return out


def tree_cpu_s(root: int, include_root: bool = True, exclude: Sequence[int] = ()) -> float:
    """CPU seconds used so far by `root` and its descendants, minus `exclude`'s subtrees.

    On a machine shared with other tenants, wall time says how busy the machine was;
    CPU time says how much work a system did: the figure to compare systems by.
    """
    table_ = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table_.items():
        children.setdefault(ppid, []).append(pid)
    skip = set(exclude)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in skip:
            continue
        if pid in table_ and (include_root or pid != root):
            total += table_[pid][1]
        stack.extend(children.get(pid, ()))
    return total


# ----------------------------------------------------------------------------- inputs


def _burst(n: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / SR
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    env = np.sin(np.pi * np.linspace(0, 1, n, dtype=np.float32)) ** 2
    return (0.2 * tone * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


def conversation(
    seconds: float, seed: int = 0, speakers: int = 3, cast_change_s: float = 120.0
) -> np.ndarray:
    """A multi-speaker synthetic recording: turns of 1-6 s, each speaker its own pitch range.

    Every `cast_change_s` one of the `speakers` present is replaced by a new one, so a
    long recording has many speakers overall but no 90 s window holds more than 4 (what
    Sortformer 4spk can tell apart) and linking across windows has real work to do.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n, dtype=np.float32)
    cast = list(range(speakers))
    next_id = speakers
    pos, next_change = 0, int(cast_change_s * SR)
    while pos < n:
        if pos >= next_change:
            cast[int(rng.integers(len(cast)))] = next_id
            next_id += 1
            next_change += int(cast_change_s * SR)
        who = cast[int(rng.integers(len(cast)))]
        lo = 85.0 + 23.0 * (who % 8)  # distinct, overlapping pitch bands per speaker
        turn_end = min(n, pos + int(rng.uniform(1.0, 6.0) * SR))
        while pos < turn_end:
            dur = min(int(rng.uniform(0.3, 1.2) * SR), turn_end - pos)
            out[pos : pos + dur] = _burst(dur, rng.uniform(lo, lo + 40.0), rng)
            pos += dur + int(rng.uniform(0.05, 0.25) * SR)
        pos += int(rng.uniform(0.1, 0.8) * SR)
    return out


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit PCM WAV at 16 kHz: what a client uploads (decoded by the server, as in production)."""
    from voxgraph.audio import encode_wav

    return encode_wav(samples, SR, "PCM_16")


def chunk_payloads(count: int, seconds: float, seed: int = 100) -> list[bytes]:
    """`count` different multi-speaker chunks as WAV bytes; the same list for every system."""
    return [
        wav_bytes(conversation(seconds, seed=seed + i, speakers=2 + i % 3)) for i in range(count)
    ]


# ----------------------------------------------------------------------------- models


def model_paths(models: str, build: bool = True) -> dict[str, str]:
    """Role -> .nemo path for `tiny`, `real` or a directory holding asr/diarizer/embedder.nemo.

    Missing tiny/real files are built by scripts/make_tiny_models.py (seeded, random
    weights); the real-size ASR file is ~2.4 GB and takes minutes on CPU.
    """
    directory = MODEL_DIRS.get(models, Path(models).expanduser())
    paths = {role: directory / FILENAMES[role] for role in ROLES}
    missing = tuple(role for role, p in paths.items() if not p.is_file())
    if missing:
        if not build or models not in MODEL_DIRS:
            raise FileNotFoundError(f"missing model files in {directory}: {missing}")
        sys.path.insert(0, str(ROOT / "scripts"))
        import make_tiny_models

        print(f"# building {models} models {missing} into {directory} ...", flush=True)
        make_tiny_models.make_models(directory, size=models, roles=missing)
    return {role: str(p.resolve()) for role, p in paths.items()}


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else math.nan


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into RESULTS.md as is), columns padded for the terminal."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    """A free loopback port outside the ephemeral range (see serve_local.free_ports)."""
    return import_script("serve_local").free_ports(1, LOOPBACK)[0]


def wait_healthy(url: str, timeout_s: float = 900, proc: subprocess.Popen | None = None) -> float:
    """Poll `url`/health until 200; returns the seconds it took (time-to-ready)."""
    return import_script("serve_local").wait_healthy(url, timeout_s, proc, interval_s=0.5)


@dataclass
class Server:
    """A running system under test: its URL, and how long it took to become ready."""

    name: str
    url: str
    ready_s: float | None = None
    handle: Any = None  # the graph's app handle (Ingress), when started here
    extra: dict[str, Any] = field(default_factory=dict)


def graph_args(paths: dict[str, str], gpu: bool) -> dict[str, Any]:
    """`graph:build_app` args: configs/tiny.yaml's CPU layout, or serve_config.yaml's GPU shares.

    On a GPU the model deployments get serve_config.yaml's fractional shares, precision
    and batch settings, so the benchmark measures the production layout.
    """
    import yaml

    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    args: dict[str, Any] = tiny["applications"][0]["args"]
    args.pop("settings", None)  # production window settings (chunks are single windows anyway)
    if gpu:
        prod = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
        args.pop("cpu_only", None)  # tiny.yaml's; it would zero the GPU shares
        for role in ROLES:
            args[role] = {**prod[role], "model": paths[role], "min_replicas": 1, "max_replicas": 1}
        args["ingress"] = {"num_cpus": 1}
    else:
        for role in ROLES:
            args[role]["model"] = paths[role]
    return args


def precision_spec(args: dict[str, Any]) -> str:
    """The graph args' per-role precision as bench/monolith.py's --precision value."""
    return ",".join(f"{r}={args[r].get('precision', 'fp32')}" for r in ROLES)


@contextlib.contextmanager
def run_graph(
    paths: dict[str, str], gpu: bool = False, port: int | None = None, args: dict | None = None
) -> Iterator[Server]:
    """Ray on 127.0.0.1 in this process, the voxgraph app deployed, torn down on exit."""
    import yaml

    spec = import_script("serve_local")
    port = port or free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": LOOPBACK, "port": port, "request_timeout_s": 900},
        "applications": [
            {
                "name": "voxgraph",
                "route_prefix": "/",
                "import_path": "graph:build_app",
                "args": args or graph_args(paths, gpu),
            }
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    t0 = time.monotonic()
    import ray

    from deployments.serve_env import for_ray_start

    # serve_local.start() would init Ray the same way; doing it here first keeps the
    # replicas' per-request log lines out of the benchmark's table output.
    # As serve_local.start() does: the proxy and controller inherit Serve's settings.
    with for_ray_start():
        ray.init(
            address="local",
            # Logical CPUs: Ray schedules by them, the kernel shares the real cores.
            num_cpus=max(8, os.cpu_count() or 1),
            num_gpus=1 if gpu else 0,
            include_dashboard=False,
            namespace="serve",
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
            log_to_driver=False,
        )
    spec.start(f.name, port=port)
    os.unlink(f.name)
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_healthy(url)
        from ray import serve

        yield Server("graph", url, time.monotonic() - t0, serve.get_app_handle("voxgraph"))
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@contextlib.contextmanager
def run_monolith(
    paths: dict[str, str],
    port: int | None = None,
    mode: str = "threads",
    torch_threads: int = 0,
    precision: str = "fp32",
) -> Iterator[Server]:
    """bench/monolith.py in a child process (its own interpreter, like the seed server)."""
    port = port or free_port()
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "monolith.py"),
        "--asr", paths["asr"],
        "--diarizer", paths["diarizer"],
        "--embedder", paths["embedder"],
        "--port", str(port),
        "--mode", mode,
        "--torch-threads", str(torch_threads),
        "--precision", precision,
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_healthy(url, proc=proc)
        yield Server("monolith", url, time.monotonic() - t0, extra={"pid": proc.pid})
    finally:
        # Only the process we started (and its own group): never a broad kill.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@functools.cache
def import_script(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- load


ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "diarize-chunk": ("/v1/audio/diarize-chunk", {}),
    "transcriptions": ("/v1/audio/transcriptions", {"response_format": "json"}),
    "transcriptions-diarize": (
        "/v1/audio/transcriptions",
        {"response_format": "verbose_json", "diarize": "true"},
    ),
    "diarize": ("/v1/audio/diarize", {}),
}
"""Bench route names -> (path, form fields)."""


@dataclass
class LoadResult:
    clients: int
    window_s: float
    latencies: list[float]
    errors: int
    audio_s: float  # audio seconds per request
    answered: int = 0  # 200s over the whole run, warm-up and drain included

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.window_s if self.window_s > 0 else math.nan

    @property
    def rtfx(self) -> float:
        return self.rps * self.audio_s


async def closed_loop(
    url: str,
    route: str,
    payloads: Sequence[bytes],
    clients: int,
    duration_s: float,
    audio_s: float,
    timeout_s: float = 900,
) -> LoadResult:
    """K clients, each sending its next request as soon as the last one answered.

    Measurement starts once every client has had one answer (queues are full, models
    warm) and lasts `duration_s`: throughput counts the answers that arrive inside the
    window (steady state), latency is theirs. Then clients stop and in-flight requests
    drain, uncounted, so the next cell starts on an idle server. `errors` counts every
    non-200 answer or transport failure, in or out of the window.
    """
    import httpx

    path, fields = ROUTES[route]
    warm = asyncio.Event()
    first_done: set[int] = set()
    window: dict[str, float] = {}
    stop = asyncio.Event()
    lat: list[float] = []
    errors = answered = 0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal errors, answered
        n = 0
        while not stop.is_set():
            body = payloads[(i + n * clients) % len(payloads)]
            n += 1
            t0 = time.monotonic()
            try:
                r = await http.post(
                    f"{url}{path}", files={"file": ("chunk.wav", body, "audio/wav")}, data=fields
                )
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            t1 = time.monotonic()
            if not ok:
                errors += 1
            else:
                answered += 1
            if ok and "start" in window and window["start"] <= t1 <= window["end"]:
                lat.append(t1 - t0)
            first_done.add(i)
            if len(first_done) == clients and not warm.is_set():
                window["start"] = time.monotonic()
                window["end"] = window["start"] + duration_s
                warm.set()

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        tasks = [asyncio.create_task(client(i, http)) for i in range(clients)]
        await warm.wait()
        await asyncio.sleep(duration_s)
        stop.set()
        await asyncio.gather(*tasks)
    return LoadResult(clients, duration_s, lat, errors, audio_s, answered)
