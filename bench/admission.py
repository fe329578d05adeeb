"""A burst of long uploads: the ingress's memory against its in-flight audio budget.

    .venv/bin/python bench/admission.py                          # 16 clients x 1 h, budget 2 h
    .venv/bin/python bench/admission.py --hours 0.25 --clients 4  # quick (budget 0.5 h)

Starts the tiny-model graph (configs/tiny.yaml) on 127.0.0.1 with
`max_inflight_audio_s` set to the budget (default: room for two uploads), then K
clients upload a real H-hour 16 kHz PCM16 WAV at the same time to
`/v1/audio/diarize`. Each request reserves the duration its file declares before
anything is decoded, so once the budget is taken the rest are answered 503 with
Retry-After and their samples never exist. The recording is one minute of
speech-like audio and then silence: decoding and holding it cost what any
recording of that length costs, and the tiny models get through the admitted
hours in minutes on a few cores.

Measured on the Ingress replica's process (found in Ray's actor table): its RSS
at rest after one warm-up request, and its peak over the burst (VmHWM, the
kernel's high-water mark, reset just before the burst so it holds the burst
only; a 50 ms RSS sampler cross-checks it). The growth is compared with the
budget's decoded size (budget seconds x 16 000 x 4 bytes of float32), with the
uploads' own bytes (each body is read in full before admission is decided) and
with K decoded recordings, what the ingress would hold without admission.

Then, in the same run, the graph is redeployed with a budget that admits all K
and the same burst is measured: the no-admission baseline. It needs about
K x (2 x upload + 3 x decoded) of free memory and the time to process K x H
hours; `--baseline auto` skips it, and says why, when either is short (at
16 x 1 h on 2 cores it would take about 25 minutes), and the computed figures
stand in. On 2 shared cores (load 3 to 9) the quick run took about 5 minutes
with its measured baseline (about 2.5 with `--baseline skip`), the full run about 4.

The HTTP proxy's growth is shown too: the uploads pass through it on their way
to the ingress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    ROUTES,
    SR,
    fmt,
    graph_args,
    import_script,
    load_avg,
    machine,
    model_paths,
    print_machine,
    run_graph,
    table,
    wav_bytes,
)
from bench.soak import graph_processes
from voxgraph.synth import speechlike

MB = 1024 * 1024  # figures named _mb are MiB, as /proc reports them (kB = KiB)
T0 = time.monotonic()
DECODED_BYTES_PER_S = SR * 4  # what the ingress holds per second: mono float32 at 16 kHz


def recording(seconds: float, speech_s: float = 60.0) -> bytes:
    """A real WAV of `seconds`: speech-like audio first, then silence (cheap to process)."""
    samples = np.zeros(int(seconds * SR), dtype=np.float32)
    head = speechlike(min(speech_s, seconds))
    samples[: len(head)] = head
    return wav_bytes(samples)


def elapsed() -> str:
    """Seconds since start, for the progress lines (where a run spends its time)."""
    return f"[{time.monotonic() - T0:4.0f} s]"


# ----------------------------------------------------------------------------- memory


def status_mb(pid: int, key: str) -> float:
    """A `VmXXX:` line of /proc/<pid>/status in MiB (NaN once the process is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return math.nan


def reset_peak(pid: int) -> bool:
    """Set VmHWM back to the current RSS, so the next peak read is this burst's own."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler:
    """VmRSS of some processes every 50 ms: a cross-check of VmHWM, and its fallback."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.peak = {k: status_mb(p, "VmRSS") for k, p in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for k, p in self.pids.items():
                rss = status_mb(p, "VmRSS")
                if not math.isnan(rss):
                    self.peak[k] = max(self.peak[k], rss)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- load


@dataclass
class Answer:
    status: int  # 0: transport failure
    seconds: float
    retry_after: str | None = None
    code: str | None = None
    message: str = ""

    @property
    def refused_by_budget(self) -> bool:
        # The service's own 503 (error code "unavailable", naming the audio in flight):
        # not Serve's queue backpressure, which answers 503 before the ingress sees it.
        return self.status == 503 and self.retry_after is not None and "in flight" in self.message


async def burst(url: str, route: str, body: bytes, clients: int, timeout_s: float) -> list[Answer]:
    """`clients` uploads of `body`, all started together; one answer each."""
    path, fields = ROUTES[route]
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:

        async def one(i: int) -> Answer:
            t0 = time.monotonic()
            try:
                r = await http.post(
                    f"{url}{path}",
                    files={"file": (f"hour-{i}.wav", body, "audio/wav")},
                    data=fields,
                )
            except httpx.HTTPError as e:
                return Answer(0, time.monotonic() - t0, message=f"{type(e).__name__}: {e}")
            seconds = time.monotonic() - t0
            error: dict[str, Any] = {}
            if r.status_code != 200:
                with contextlib.suppress(ValueError, AttributeError):
                    error = r.json().get("error", {})
            return Answer(
                r.status_code,
                seconds,
                r.headers.get("retry-after"),
                error.get("code"),
                str(error.get("message", r.text[:200] if r.status_code != 200 else "")),
            )

        return list(await asyncio.gather(*(one(i) for i in range(clients))))


# ----------------------------------------------------------------------------- one run


@dataclass
class Run:
    label: str
    budget_s: float
    clients: int
    file_s: float
    file_mb: float
    answers: list[Answer] = field(default_factory=list)
    ingress_rest_mb: float = math.nan
    ingress_peak_mb: float = math.nan
    ingress_sampled_peak_mb: float = math.nan
    proxy_rest_mb: float = math.nan
    proxy_peak_mb: float = math.nan
    wall_s: float = math.nan
    peak_from: str = "VmHWM"
    load: str = ""

    @property
    def admitted(self) -> int:
        return sum(a.status == 200 for a in self.answers)

    @property
    def refused(self) -> int:
        return sum(a.refused_by_budget for a in self.answers)

    @property
    def other(self) -> int:
        return len(self.answers) - self.admitted - self.refused

    @property
    def growth_mb(self) -> float:
        return self.ingress_peak_mb - self.ingress_rest_mb

    @property
    def budget_decoded_mb(self) -> float:
        return self.budget_s * DECODED_BYTES_PER_S / MB

    def median_s(self, admitted: bool) -> float:
        xs = [a.seconds for a in self.answers if (a.status == 200) == admitted]
        return statistics.median(xs) if xs else math.nan


def app_args(paths: dict[str, str], budget_s: float, upload_mb: float) -> dict[str, Any]:
    """configs/tiny.yaml's graph and window settings, with this run's budget and upload cap."""
    args = graph_args(paths, gpu=False)
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    settings = dict(tiny["applications"][0]["args"].get("settings", {}))
    settings.update(max_inflight_audio_s=budget_s, max_upload_mb=upload_mb)
    return {**args, "settings": settings}


def measure(
    label: str,
    url: str,
    body: bytes,
    file_s: float,
    clients: int,
    budget_s: float,
    route: str,
    timeout_s: float,
) -> Run:
    """The burst against the graph deployed at `url`, whose budget is `budget_s`."""
    run = Run(label, budget_s, clients, file_s, len(body) / MB)
    procs = graph_processes()
    ingress = next(pid for name, pid in procs.items() if name.startswith("Ingress"))
    proxy = procs.get("proxy")
    watched = {"ingress": ingress, **({"proxy": proxy} if proxy else {})}
    # One short request first: imports and allocations a first request makes are
    # part of the ingress at rest, not of the burst.
    warm = asyncio.run(burst(url, route, wav_bytes(speechlike(5.0)), 1, timeout_s))
    if warm[0].status != 200:
        raise RuntimeError(f"warm-up request failed: {warm[0]}")
    gc.collect()
    time.sleep(2.0)
    run.ingress_rest_mb = status_mb(ingress, "VmRSS")
    run.proxy_rest_mb = status_mb(proxy, "VmRSS") if proxy else math.nan
    reset = all(reset_peak(pid) for pid in watched.values())
    print(
        f"# {elapsed()} {label}: budget {budget_s / 3600:g} h, ingress pid {ingress} at rest "
        f"{run.ingress_rest_mb:.0f} MiB; {clients} uploads of {run.file_mb:.0f} MiB ...",
        flush=True,
    )
    t0 = time.monotonic()
    with Sampler(watched) as sampled:
        run.answers = asyncio.run(burst(url, route, body, clients, timeout_s))
    run.wall_s = time.monotonic() - t0
    run.ingress_sampled_peak_mb = sampled.peak["ingress"]
    if reset:
        run.ingress_peak_mb = status_mb(ingress, "VmHWM")
        run.proxy_peak_mb = status_mb(proxy, "VmHWM") if proxy else math.nan
    else:
        run.peak_from = "sampled every 50 ms"
        run.ingress_peak_mb = sampled.peak["ingress"]
        run.proxy_peak_mb = sampled.peak.get("proxy", math.nan)
    run.load = load_avg()
    print(
        f"# {elapsed()} {label}: {run.admitted} admitted, {run.refused} refused, "
        f"{run.other} other in {run.wall_s:.0f} s; ingress peak {run.ingress_peak_mb:.0f} MiB "
        f"({run.peak_from}; sampled {run.ingress_sampled_peak_mb:.0f} MiB)",
        flush=True,
    )
    for a in run.answers:
        if a.status != 200 and not a.refused_by_budget:
            print(f"#   unexpected answer: {a.status} {a.code} {a.message[:160]}", flush=True)
    return run


def redeploy(url: str, args: dict[str, Any], timeout_s: float = 300) -> None:
    """The same app on the same Ray with new args; returns once a fresh Ingress serves."""
    from ray import serve

    serve_local = import_script("serve_local")
    old = {pid for name, pid in graph_processes().items() if name.startswith("Ingress")}
    config = serve_local.load_config(ROOT / "configs" / "tiny.yaml")
    config["applications"][0]["args"] = args
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(config, f)
        f.flush()
        serve_local.start(f.name, port=urlparse(url).port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ingress = {pid for name, pid in graph_processes().items() if name.startswith("Ingress")}
        app = serve.status().applications.get("voxgraph")
        if ingress and not ingress & old and app is not None and app.status == "RUNNING":
            serve_local.wait_healthy(url, timeout_s=max(1.0, deadline - time.monotonic()))
            return
        time.sleep(1.0)
    raise TimeoutError(f"the redeployed graph did not serve within {timeout_s:.0f} s")


def available_mb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return math.nan


# ----------------------------------------------------------------------------- report


def rows(runs: list[Run], all_decoded_mb: float) -> list[list[str]]:
    out = []
    for r in runs:
        uploads_mb = r.clients * r.file_mb
        out.append(
            [
                r.label,
                f"{r.budget_s / 3600:g} h",
                f"{r.admitted} / {r.refused} / {r.other}",
                fmt(r.ingress_rest_mb, 0),
                fmt(r.ingress_peak_mb, 0),
                fmt(r.growth_mb, 0),
                fmt(r.budget_decoded_mb, 0),
                fmt(r.growth_mb / r.budget_decoded_mb, 2),
                fmt(uploads_mb, 0),
                fmt(r.growth_mb / (uploads_mb + r.budget_decoded_mb), 2),
                fmt(r.growth_mb / all_decoded_mb, 2),
                fmt(r.proxy_peak_mb - r.proxy_rest_mb, 0),
                f"{fmt(r.median_s(True), 1)} / {fmt(r.median_s(False), 1)}",
                fmt(r.wall_s, 0),
                r.load,
            ]
        )
    return out


HEADERS = [
    "burst",
    "budget",
    "200 / 503 / other",
    "ingress at rest MiB",
    "ingress peak MiB",
    "growth MiB",
    "budget decoded MiB",
    "growth / budget decoded",
    "uploads MiB",
    "growth / (uploads + budget decoded)",
    "growth / all decoded",
    "proxy growth MiB",
    "median s 200 / 503",
    "wall s",
    "load 1/5/15",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hours", type=float, default=1.0, help="length of each upload (default 1)")
    p.add_argument("--clients", type=int, default=16, help="simultaneous uploads (default 16)")
    p.add_argument(
        "--budget-h",
        type=float,
        help="max_inflight_audio_s in hours (default: room for two uploads, 2 x --hours)",
    )
    p.add_argument(
        "--route",
        choices=("diarize", "transcriptions"),
        default="diarize",
        help="where the burst goes (default diarize)",
    )
    p.add_argument(
        "--baseline",
        choices=("auto", "measure", "skip"),
        default="auto",
        help="the same burst with a budget that admits every upload (no admission); auto\n"
        "measures it when the machine's available memory and --baseline-max-s allow",
    )
    p.add_argument(
        "--baseline-max-s",
        type=float,
        default=300,
        help="auto: skip the baseline when it would take longer than this (default 300)",
    )
    p.add_argument("--timeout-s", type=float, default=1800, help="per-request client timeout")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    info = machine()
    print_machine(info)
    paths = model_paths("tiny")
    file_s = args.hours * 3600
    budget_s = (args.budget_h * 3600) if args.budget_h else 2 * file_s
    all_s = args.clients * file_s
    body = recording(file_s)
    file_mb = len(body) / MB
    decoded_mb = file_s * DECODED_BYTES_PER_S / MB
    unbounded_mb = args.clients * decoded_mb
    upload_mb = max(200.0, math.ceil(file_mb * 1.1))
    print(
        f"# {elapsed()} upload: {file_s / 3600:g} h 16 kHz PCM16 WAV (1 min speech-like, then "
        f"silence), {file_mb:.0f} MiB, "
        f"{decoded_mb:.0f} MiB decoded; route /v1/audio/{args.route}; max_upload_mb {upload_mb:g}",
        flush=True,
    )
    print(f"# {elapsed()} starting the graph ...", flush=True)
    with run_graph(paths, args=app_args(paths, budget_s, upload_mb)) as server:
        runs = [
            measure(
                "with admission",
                server.url,
                body,
                file_s,
                args.clients,
                budget_s,
                args.route,
                args.timeout_s,
            )
        ]
        bounded = runs[0]
        # Without admission the ingress holds every upload and every decoded recording,
        # with transient copies while decoding: ask for that much, with room to spare.
        need_mb = args.clients * (2 * file_mb + 3 * decoded_mb) + 2048
        free_mb = available_mb()
        # The admitted uploads ran side by side: their pace predicts the baseline's.
        audio_per_s = bounded.admitted * file_s / bounded.wall_s
        expected_s = all_s / audio_per_s if audio_per_s > 0 else math.inf
        baseline_note = ""
        if args.baseline == "skip":
            baseline_note = "not measured (--baseline skip)"
        elif args.baseline == "auto" and not free_mb > need_mb:
            baseline_note = (
                f"not measured: it needs about {need_mb / 1024:.1f} GB free, "
                f"{free_mb / 1024:.1f} GB available"
            )
        elif args.baseline == "auto" and expected_s > args.baseline_max_s:
            baseline_note = (
                f"not measured: processing {all_s / 3600:g} h at the pace of the admitted "
                f"uploads ({audio_per_s:.0f} s of audio per second) would take about "
                f"{expected_s / 60:.0f} min"
            )
        else:
            print(f"# {elapsed()} redeploying with budget {all_s / 3600:g} h ...", flush=True)
            redeploy(server.url, app_args(paths, all_s, upload_mb))
            runs.append(
                measure(
                    "no admission",
                    server.url,
                    body,
                    file_s,
                    args.clients,
                    all_s,
                    args.route,
                    args.timeout_s,
                )
            )
        print(f"# {elapsed()} stopping the graph ...", flush=True)
    print(f"# {elapsed()} done", flush=True)

    uploads_mb = args.clients * file_mb
    print()
    print(
        f"{args.clients} simultaneous uploads of a {file_s / 3600:g} h WAV "
        f"({file_mb:.0f} MiB, {decoded_mb:.0f} MiB decoded) to /v1/audio/{args.route}: "
        f"{uploads_mb:,.0f} MiB of uploads, {unbounded_mb:,.0f} MiB if all were decoded at once"
    )
    print(table(HEADERS, rows(runs, unbounded_mb)))
    retry = sorted({a.retry_after for a in bounded.answers if a.refused_by_budget})
    print(
        f"\nwith admission: {bounded.admitted} admitted, {bounded.refused} refused with 503 "
        f"(Retry-After: {', '.join(r or '-' for r in retry) or '-'}) after a median "
        f"{bounded.median_s(False):.1f} s (their upload time). Ingress peak growth "
        f"{bounded.growth_mb:,.0f} MiB = {bounded.growth_mb / bounded.budget_decoded_mb:.2f} x "
        f"the budget's decoded size ({bounded.budget_decoded_mb:,.0f} MiB); less the uploads' "
        f"bytes ({uploads_mb:,.0f} MiB, read in full before admission is decided): "
        f"{bounded.growth_mb - uploads_mb:,.0f} MiB."
    )
    print(
        f"against no admission (computed, {args.clients} decoded recordings, "
        f"{unbounded_mb:,.0f} MiB): {bounded.growth_mb / unbounded_mb:.2f}; against their "
        f"decoded samples plus the uploads ({unbounded_mb + uploads_mb:,.0f} MiB): "
        f"{bounded.growth_mb / (unbounded_mb + uploads_mb):.2f}"
    )
    if len(runs) > 1:
        base = runs[1]
        print(
            f"no admission (measured): ingress peak growth {base.growth_mb:,.0f} MiB; "
            f"with admission / without = {bounded.growth_mb / base.growth_mb:.2f}"
        )
    else:
        print(f"no admission: {baseline_note}; the computed figures stand in")
    if args.json:
        out = {
            "machine": info,
            "command": sys.argv,
            "route": args.route,
            "upload_mb": len(body) / MB,
            "decoded_mb_each": decoded_mb,
            "all_decoded_mb": unbounded_mb,
            "baseline_note": baseline_note,
            "runs": [
                {
                    **asdict(r),
                    "admitted": r.admitted,
                    "refused": r.refused,
                    "growth_mb": r.growth_mb,
                    "budget_decoded_mb": r.budget_decoded_mb,
                }
                for r in runs
            ],
        }
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    ok = bounded.refused > 0 and bounded.other == 0 and all(r.other == 0 for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
