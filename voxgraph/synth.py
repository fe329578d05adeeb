"""Speech-like synthetic audio for the demo's users, the tests and the benchmarks.

Not speech: harmonic bursts with pauses, so the models see something besides
silence. One generator, so tests and benchmarks feed the same kind of input.
"""

from __future__ import annotations

import numpy as np

from voxgraph.types import SAMPLE_RATE


def speechlike(seconds: float, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """`seconds` of mono float32 audio at `sr`; the same seed gives the same samples."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n, dtype=np.float32)
    pos = 0
    while pos < n:
        dur = int(rng.uniform(0.4, 1.6) * sr)
        f0 = rng.uniform(90, 260)
        seg = t[pos : pos + dur] - t[pos]
        tone = sum(np.sin(2 * np.pi * f0 * k * seg) / k for k in range(1, 6))
        env = np.sin(np.pi * np.linspace(0, 1, len(seg))) ** 2
        out[pos : pos + dur] = 0.2 * tone * env + 0.01 * rng.standard_normal(len(seg))
        pos += dur + int(rng.uniform(0.1, 0.6) * sr)
    return out.astype(np.float32)
