"""A realtime session's memory against its length: a 10-minute and a 3-hour session.

Feeds a synthetic conversation through one `voxgraph.live.LiveSession` (server
VAD, 16 kHz) over the tiny models in-process (or, with `--models instant`,
backends that answer at once: the models live in other deployments, so what a
session holds does not depend on them), as fast as the models allow, and
measures what the session holds at the end (its own count of audio, frames and
voiceprints) and the peak of Python/numpy allocations while it ran (tracemalloc,
which numpy reports to). Bounded memory means the same figures for both lengths.

    python bench/live_memory.py                    # 10 and 180 minutes, tiny models
    python bench/live_memory.py --minutes 2 30     # quicker
    python bench/live_memory.py --models instant   # the session alone, 3 h in minutes
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import conversation, machine, model_paths, print_machine, table  # noqa: E402

SR = 16_000
BLOCK_S = 60  # audio generated and fed a minute at a time: the bench holds no hour of audio


class InstantBackends:
    """Answers at once: a word per half second, one voice per turn, a fixed voiceprint."""

    async def transcribe(self, audio, **_):
        from voxgraph.types import Segment, Transcript, Word

        n = len(audio) / SR
        words = tuple(Word("word", t / 2, t / 2 + 0.4) for t in range(int(n * 2) - 1))
        seg = (Segment("word " * len(words), 0.0, n, words),) if words else ()
        return Transcript(" ".join(w.text for w in words), words, seg, n)

    async def diarize(self, audio):
        import numpy as np

        from voxgraph.live import turns_from_probs
        from voxgraph.types import Diarization

        hop = int(0.08 * SR)
        frames = len(audio) // hop
        rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1))
        probs = np.zeros((frames, 4), np.float32)
        probs[:, 0] = (rms > 0.01).astype(np.float32)
        return Diarization(tuple(turns_from_probs(probs, 0.08)), probs, 0.08, len(audio) / SR)

    async def embed(self, clips):
        import numpy as np

        return np.ones((len(clips), 192), np.float32)

    async def info(self, role, *, fresh=False):
        from voxgraph.types import ModelInfo

        return ModelInfo(role=role, model=f"instant-{role}", device="cpu", state="ready")


async def one_session(backends, minutes: float, settings) -> dict[str, float]:
    from voxgraph.live import LiveSession
    from voxgraph.pipeline import Pipeline

    pipeline = Pipeline(backends, settings)
    completed = 0
    speakers: set[str] = set()

    async def emit(ev):
        nonlocal completed
        if ev["type"] == "conversation.item.input_audio_transcription.completed":
            completed += 1
            speakers.add(str(ev.get("speaker")))
        elif ev["type"] == "error":
            raise RuntimeError(ev["error"]["message"])

    session = LiveSession(pipeline, emit, settings)
    await session.start()
    await session.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": SR}}}},
            }
        )
    )
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    for block in range(int(minutes * 60 / BLOCK_S)):
        x = conversation(BLOCK_S, seed=block)
        pcm = (x * 32767).astype("<i2").tobytes()
        for i in range(0, len(pcm), SR // 5):  # 100 ms appends
            chunk = base64.b64encode(pcm[i : i + SR // 5]).decode()
            await session.receive(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        while session.pending_items:
            await asyncio.sleep(0.01)
    held = session.memory_bytes()
    now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    await session.close()
    return {
        "minutes": minutes,
        "turns": completed,
        "speakers": len(speakers),
        "held_mb": held / 2**20,
        "live_mb": (now - base) / 2**20,
        "peak_mb": (peak - base) / 2**20,
        "seconds": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 180])
    ap.add_argument(
        "--models", default="tiny", help="tiny, real, instant or a directory of .nemo files"
    )
    args = ap.parse_args()

    from voxgraph.local import InProcessBackends
    from voxgraph.settings import Settings

    print_machine(machine(), sys.argv)
    if args.models == "instant":
        backends = InstantBackends()
    else:
        backends = InProcessBackends().load(model_paths(args.models))
    settings = Settings.load()
    rows = []
    for minutes in args.minutes:
        r = asyncio.run(one_session(backends, minutes, settings))
        rows.append(
            [
                f"{r['minutes']:g}",
                r["turns"],
                r["speakers"],
                f"{r['held_mb']:.1f}",
                f"{r['live_mb']:.1f}",
                f"{r['peak_mb']:.1f}",
                f"{r['seconds']:.0f}",
            ]
        )
        print(f"# {minutes:g} min done in {r['seconds']:.0f} s", flush=True)
    print(
        table(
            [
                "session (min)",
                "turns",
                "speakers",
                "held at end (MB)",
                "allocated at end (MB)",
                "peak allocations (MB)",
                "wall (s)",
            ],
            rows,
        )
    )
    context = settings.realtime_context_s
    print(f"context: {context:g} s of 16 kHz float32 = {context * SR * 4 / 2**20:.1f} MB")
    if len(rows) > 1:
        ratio = float(rows[-1][5]) / max(float(rows[0][5]), 1e-9)
        print(f"ratio peak longest/shortest: {ratio:.2f}")


if __name__ == "__main__":
    main()
