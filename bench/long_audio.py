"""Hour-long recordings through the tiny-model graph on CPU: time and memory.

Sends a 10-minute and a 60-minute synthetic recording (by default) to
`/v1/audio/transcriptions?diarize=true` and `/v1/audio/diarize`, sampling the
RSS of every replica process while each request runs. If memory is bounded by
the window and not the recording, the model replicas' peak RSS is the same for
both lengths and only the ingress grows, by about the decoded samples.

    python bench/long_audio.py                 # starts the tiny graph itself
    python bench/long_audio.py --url http://127.0.0.1:8000 --minutes 10 60
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

from bench.common import load_avg, machine  # noqa: E402
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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Peak RSS per replica while a request runs (sampled every 0.2 s)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = {k: rss_mb(p) for k, p in pids.items()}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for k, p in self.pids.items():
                with contextlib.suppress(OSError):
                    self.peak[k] = max(self.peak[k], rss_mb(p))

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running voxgraph (default: start the tiny graph here)")
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    args = p.parse_args()
    url = args.url
    if url is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("sl", ROOT / "scripts" / "serve_local.py")
        sl = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sl)
        t0 = time.monotonic()
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
                )
            )
            print(f"  {minutes:g} min {route}: {r.status_code} in {wall:.1f}s", flush=True)
    print()
    head = f"{'audio':>7} {'route':<26} {'status':>6} {'wall s':>7} {'RTFx':>6} {'spk':>4}"
    head += "".join(f" {k + ' MB start/peak':>26}" for k in pids) + "  load"
    print(head)
    for minutes, route, status, wall, rtfx, spk, mem, load in rows:
        line = f"{minutes:>5g} m {route:<26} {status:>6} {wall:>7.1f} {rtfx:>6.1f} {spk:>4}"
        line += "".join(f" {mem[k][0]:>12.0f}/{mem[k][1]:<13.0f}" for k in pids)
        print(line + f"  {load}")
    if len(args.minutes) >= 2:
        lo, hi = min(args.minutes), max(args.minutes)
        for k in pids:
            peaks = {m: max(r[6][k][1] for r in rows if r[0] == m) for m in (lo, hi)}
            print(
                f"{k}: peak RSS {peaks[lo]:.0f} MB at {lo:g} min vs {peaks[hi]:.0f} MB at "
                f"{hi:g} min (ratio {peaks[hi] / peaks[lo]:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
