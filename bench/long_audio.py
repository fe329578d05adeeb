"""Hour-long recordings through the tiny-model graph on CPU: how time and memory grow.

Sends 10-, 30-, 60- and 120-minute synthetic recordings (by default) to
`/v1/audio/transcriptions?diarize=true` and `/v1/audio/diarize`, sampling the
RSS of every replica process while each request runs. Then fits time against
length per route (least squares: seconds per audio minute, intercept, R²) and
each replica's peak RSS against length. If memory is bounded by the window and
not the recording, the model replicas' slopes are about zero and only the
ingress grows, by about the decoded samples; its peak for the longest recording
is also given as a multiple of that recording's decoded size (float32 samples).

    python bench/long_audio.py                 # starts the tiny graph itself
    python bench/long_audio.py --url http://127.0.0.1:8000 --minutes 10 60
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.common import import_script, load_avg, machine, table  # noqa: E402
from voxgraph.synth import speechlike  # noqa: E402

ROLES = ("Ingress", "ASR", "Diarizer", "Embedder")


def replica_pids() -> dict[str, int]:
    """Serve replicas by deployment, found by Ray's process titles (no dashboard needed)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        m = re.match(r"ray::ServeReplica:voxgraph:(\w+)", title)
        if m and m.group(1) in ROLES:
            found[m.group(1)] = int(proc.name)
    return found


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Peak RSS and peak private RSS per replica while a request runs (every 0.2 s).

    RSS counts the pages of Ray's shared object store a process has touched, in every
    process that touched them, and keeps counting them after the objects are freed
    (the store reuses its segment); RssAnon is the memory the process holds itself.
    """

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = {k: rss_mb(p) for k, p in pids.items()}
        self.peak = dict(self.start)
        self.anon_start = {k: rss_mb(p, "RssAnon") for k, p in pids.items()}
        self.anon_peak = dict(self.anon_start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for k, p in self.pids.items():
                with contextlib.suppress(OSError):
                    self.peak[k] = max(self.peak[k], rss_mb(p))
                    self.anon_peak[k] = max(self.anon_peak[k], rss_mb(p, "RssAnon"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wav_of(minutes: float) -> bytes:
    buf = io.BytesIO()
    # Stitch one-minute pieces with different seeds: a varied recording without
    # holding several float copies of an hour in memory here.
    with sf.SoundFile(buf, "w", 16000, 1, format="WAV", subtype="PCM_16") as f:
        for i in range(int(np.ceil(minutes))):
            f.write(speechlike(min(60.0, minutes * 60 - i * 60), seed=100 + i))
    return buf.getvalue()


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line y = slope * x + intercept, and its R²."""
    slope, intercept = np.polyfit(xs, ys, 1)
    pred = slope * np.asarray(xs) + intercept
    ss_res = float(np.sum((np.asarray(ys) - pred) ** 2))
    ss_tot = float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot else 1.0


def print_growth(rows: list[tuple], pids: dict[str, int]) -> None:
    """Time and peak RSS against length, per route, as fitted lines."""
    out = []
    for route in dict.fromkeys(r[1] for r in rows):
        mine = [r for r in rows if r[1] == route and r[2] == 200]
        if len({r[0] for r in mine}) < 2:
            continue
        xs = [r[0] for r in mine]
        slope, icpt, r2 = fit(xs, [r[3] for r in mine])
        out.append([route, "wall time", f"{slope:.3f} s/min", f"{icpt:+.2f} s", f"{r2:.4f}"])
        for k in pids:
            slope, icpt, r2 = fit(xs, [r[6][k][1] for r in mine])
            out.append(
                [route, f"{k} peak RSS", f"{slope:.2f} MB/min", f"{icpt:.0f} MB", f"{r2:.3f}"]
            )
            slope, icpt, r2 = fit(xs, [r[8][k][1] for r in mine])
            out.append(
                [route, f"{k} peak private", f"{slope:.2f} MB/min", f"{icpt:.0f} MB", f"{r2:.3f}"]
            )
    print("\nGrowth against recording length (least squares over the lengths above)\n")
    print(table(["route", "figure", "slope", "intercept", "R²"], out))
    longest = max(r[0] for r in rows)
    decoded_mb = longest * 60 * 16000 * 4 / 2**20
    if "Ingress" in pids:
        for r in rows:
            if r[0] == longest:
                start, peak = r[6]["Ingress"]
                a0, a1 = r[8]["Ingress"]
                print(
                    f"Ingress, {longest:g} min ({decoded_mb:.0f} MB decoded) via {r[1]}: peak RSS "
                    f"{peak:.0f} MB = {peak / decoded_mb:.2f}x decoded "
                    f"(at rest {start:.0f} MB; growth {(peak - start) / decoded_mb:.2f}x); "
                    f"private {a1:.0f} MB = {a1 / decoded_mb:.2f}x (at rest {a0:.0f} MB)"
                )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running voxgraph (default: start the tiny graph here)")
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60, 120])
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    url = args.url
    if url is None:
        sl = import_script("serve_local")
        t0 = time.monotonic()
        # Two hours of 16-bit WAV is 230 MB, over the default 200 MB upload limit; the
        # ingress reads this variable (Ray's workers inherit this environment).
        os.environ.setdefault("MAX_UPLOAD_MB", "512")
        print(f"upload limit: {os.environ['MAX_UPLOAD_MB']} MB")
        sl.start(ROOT / "configs" / "tiny.yaml", num_cpus=8)
        sl.wait_healthy(8000)
        print(f"tiny graph ready in {time.monotonic() - t0:.1f}s")
        url = "http://127.0.0.1:8000"
    pids = replica_pids()
    print(f"machine: {machine()}")
    print(f"replicas: {pids}")
    rows = []
    for minutes in args.minutes:
        data = wav_of(minutes)
        for route, fields in (
            ("/v1/audio/diarize", {}),
            ("/v1/audio/transcriptions", {"diarize": "true", "response_format": "verbose_json"}),
        ):
            with RssSampler(pids) as rss:
                t0 = time.perf_counter()
                r = httpx.post(
                    f"{url}{route}",
                    files={"file": ("long.wav", data, "audio/wav")},
                    data=fields,
                    timeout=3600,
                )
                wall = time.perf_counter() - t0
            body = r.json() if r.status_code == 200 else {}
            speakers = body.get("speakers_detected") or sorted(
                {s.get("speaker") for s in body.get("segments", []) if s.get("speaker")}
            )
            rows.append(
                (
                    minutes,
                    route,
                    r.status_code,
                    wall,
                    minutes * 60 / wall,
                    len(speakers),
                    {k: (rss.start[k], rss.peak[k]) for k in pids},
                    load_avg(),
                    {k: (rss.anon_start[k], rss.anon_peak[k]) for k in pids},
                )
            )
            print(f"  {minutes:g} min {route}: {r.status_code} in {wall:.1f}s", flush=True)
    print()
    head = f"{'audio':>7} {'route':<26} {'status':>6} {'wall s':>7} {'RTFx':>6} {'spk':>4}"
    head += "".join(f" {k + ' MB start/peak':>26}" for k in pids) + "  load"
    print(head)
    for minutes, route, status, wall, rtfx, spk, mem, load, _ in rows:
        line = f"{minutes:>5g} m {route:<26} {status:>6} {wall:>7.1f} {rtfx:>6.1f} {spk:>4}"
        line += "".join(f" {mem[k][0]:>12.0f}/{mem[k][1]:<13.0f}" for k in pids)
        print(line + f"  {load}")
    if len(set(args.minutes)) >= 2:
        print_growth(rows, pids)
    if args.json:
        records = [
            {
                "minutes": m,
                "route": route,
                "status": status,
                "wall_s": wall,
                "rtfx": rtfx,
                "speakers": spk,
                "rss_mb": {k: {"start": v[0], "peak": v[1]} for k, v in mem.items()},
                "private_rss_mb": {k: {"start": v[0], "peak": v[1]} for k, v in anon.items()},
                "load": load,
            }
            for m, route, status, wall, rtfx, spk, mem, load, anon in rows
        ]
        Path(args.json).write_text(json.dumps({"machine": machine(), "runs": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
