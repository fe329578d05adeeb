"""Linking accuracy against fingerprint separation and number of speakers.

Simulated recordings, seeded: a cast of at most 3 speakers that changes by
one person every 2 minutes (so no 90 s window holds more than 4, as
Sortformer requires, and every speaker leaves and comes back), cut into the
service's default windows (90 s, 10 s overlap). Each window gets noisy
Sortformer-like probabilities with its local speakers in random order, and
each local speaker with >= 0.5 s of speech a TitaNet-like fingerprint drawn
around its speaker's centre: `centre + sigma * N(0, I)` in 192 dimensions,
with all centres sharing a common direction (between-centre cosine `rho`), as
real speaker embeddings do.

Reported per cell: linking accuracy (fraction of local speakers mapped to the
right global speaker after the optimal one-to-one label mapping) and the
fraction of recordings whose speaker count is exact; with the service's rule
(fingerprints + overlap agreement), with fingerprints alone, and with the
service's rule given the true count as `num_speakers`.

Run: .venv/bin/python bench/linking.py [--recordings 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxgraph.linking import SpeakerHints, link_speakers
from voxgraph.types import Diarization, Turn
from voxgraph.windows import Window, plan_windows

FRAME = 0.08
WINDOW_S, OVERLAP_S = 90.0, 10.0  # voxgraph's defaults (Settings.diar_window_s/overlap_s)
BLOCK_S = 120.0
DIM = 192
RHO = 0.3  # cosine between speaker centres
SIGMAS = (0.03, 0.05, 0.06, 0.07, 0.08, 0.1)
SPEAKERS = tuple(range(2, 11))


@dataclass(frozen=True)
class Recording:
    windows: list[Window]
    diarizations: list[Diarization]
    fingerprints: list[dict[int, np.ndarray]]
    truth: list[dict[int, int]]  # per window: local speaker -> true speaker


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def activity(n: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, n) speech activity: turns of 1.2-6 s, short gaps, some interruptions."""
    cast_size = min(3, n)
    order = rng.permutation(n)
    blocks = max(4, 2 * n)
    n_frames = round(blocks * BLOCK_S / FRAME)
    act = np.zeros((n_frames, n), dtype=bool)
    prev_end, prev_start, before_prev_end, prev_spk = 0, 0, 0, -1
    while True:
        block = min(blocks - 1, int(prev_end * FRAME // BLOCK_S))
        cast = [int(order[(block + j) % n]) for j in range(cast_size)]
        speaker = int(rng.choice([s for s in cast if s != prev_spk]))
        if prev_spk >= 0 and rng.random() < 0.2:
            start = max(prev_end - int(rng.integers(4, 13)), before_prev_end + 1, prev_start + 1)
        else:
            start = prev_end + int(rng.integers(0, 16))
        end = start + int(rng.integers(15, 76))
        if end > n_frames:
            return act
        act[start:end, speaker] = True
        before_prev_end, prev_start, prev_end, prev_spk = prev_end, start, end, speaker


def centres(n: int, rng: np.random.Generator) -> np.ndarray:
    common = rng.standard_normal(DIM)
    common /= np.linalg.norm(common)
    own = rng.standard_normal((n, DIM))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    c = math.sqrt(RHO) * common + math.sqrt(1 - RHO) * own
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def simulate(n: int, sigma: float, rng: np.random.Generator) -> Recording:
    act = activity(n, rng)
    voice = centres(n, rng)
    windows = plan_windows(act.shape[0] * FRAME, WINDOW_S, OVERLAP_S, FRAME)
    diars, prints, truth = [], [], []
    for w in windows:
        s = w.start_frame(FRAME)
        e = min(act.shape[0], math.ceil(w.end_s / FRAME - 1e-6))
        window_act = act[s:e]
        present = [k for k in range(n) if window_act[:, k].any()]
        assert len(present) <= 4
        slots = rng.permutation(4)[: len(present)].tolist()
        probs = rng.uniform(0.0, 0.3, size=(e - s, 4))
        turns: list[Turn] = []
        fp: dict[int, np.ndarray] = {}
        for speaker, slot in zip(present, slots, strict=True):
            col = window_act[:, speaker]
            probs[col, slot] = rng.uniform(0.6, 1.0, size=int(col.sum()))
            turns.extend(Turn(a * FRAME, b * FRAME, slot) for a, b in runs(col))
            if col.sum() * FRAME >= 0.5:
                fp[slot] = voice[speaker] + sigma * rng.standard_normal(DIM)
        diars.append(Diarization(tuple(turns), probs, FRAME, w.end_s - w.start_s))
        prints.append(fp)
        truth.append(dict(zip(slots, present, strict=True)))
    return Recording(windows, diars, prints, truth)


def score(rec: Recording, mappings: list[dict[int, int]], n: int) -> tuple[int, int, bool]:
    """(correct local speakers, local speakers, exact count) under the best label mapping."""
    pairs = [(m[k], t[k]) for m, t in zip(mappings, rec.truth, strict=True) for k in m]
    n_global = 1 + max(g for g, _ in pairs)
    table = np.zeros((n_global, n), dtype=int)
    for g, t in pairs:
        table[g, t] += 1
    rows, cols = linear_sum_assignment(table, maximize=True)
    return int(table[rows, cols].sum()), len(pairs), n_global == n


def measured_cosines(sigma: float, rng: np.random.Generator) -> tuple[float, float]:
    """Mean fingerprint cosine between two draws of one speaker, and of two speakers."""
    voice = centres(2, rng)
    a = voice[0] + sigma * rng.standard_normal((400, DIM))
    b = voice[0] + sigma * rng.standard_normal((400, DIM))
    c = voice[1] + sigma * rng.standard_normal((400, DIM))
    for x in (a, b, c):
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1))), float(np.mean(np.sum(a * c, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=8, help="recordings per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()

    # mode -> (overlap weight, pass the true count as num_speakers)
    modes = {
        "fingerprints + overlap agreement (voxgraph default)": (1.0, False),
        "fingerprints only (overlap_weight=0)": (0.0, False),
        "fingerprints + overlap agreement, num_speakers=N given": (1.0, True),
    }
    results: dict[tuple[str, float, int], tuple[float, float]] = {}
    excess: dict[float, list[int]] = {s: [] for s in SIGMAS}  # default mode: found - true
    for si, sigma in enumerate(SIGMAS):
        for n in SPEAKERS:
            rng = np.random.default_rng([args.seed, si, n])
            recs = [simulate(n, sigma, rng) for _ in range(args.recordings)]
            for mode, (weight, hinted) in modes.items():
                hints = SpeakerHints(num_speakers=n) if hinted else None
                correct = total = exact = 0
                for rec in recs:
                    maps = link_speakers(
                        rec.windows, rec.diarizations, rec.fingerprints, hints,
                        overlap_weight=weight,
                    )  # fmt: skip
                    c, t, e = score(rec, maps, n)
                    correct, total, exact = correct + c, total + t, exact + e
                    if mode == next(iter(modes)):
                        found = 1 + max(g for m in maps for g in m.values())
                        excess[sigma].append(found - n)
                results[(mode, sigma, n)] = (correct / total, exact / len(recs))

    cos = {s: measured_cosines(s, np.random.default_rng([args.seed, 99])) for s in SIGMAS}
    print(
        f"window {WINDOW_S:.0f} s, overlap {OVERLAP_S:.0f} s, threshold 0.5, "
        f"{args.recordings} recordings per cell (each speaker comes back at least once); "
        "cell = linking accuracy / exact speaker count"
    )
    for mode in modes:
        print(f"\n{mode}")
        header = f"{'sigma':>6} {'cos same':>8} {'cos diff':>8} |" + "".join(
            f"{f'N={n}':>10}" for n in SPEAKERS
        )
        print(header)
        print("-" * len(header))
        for sigma in SIGMAS:
            same, diff = cos[sigma]
            cells = "".join(
                f"{results[(mode, sigma, n)][0]:>6.3f}/{results[(mode, sigma, n)][1]:<3.0%}"
                for n in SPEAKERS
            )
            print(f"{sigma:>6.3f} {same:>8.2f} {diff:>8.2f} |{cells}")

    ours, alone, hinted = modes

    def solid(mode: str) -> list[float]:
        return [s for s in SIGMAS if all(results[(mode, s, n)][0] >= 0.99 for n in SPEAKERS)]

    good, good_hinted = solid(ours), solid(hinted)
    broken = [s for s in SIGMAS if s not in good]
    if good and broken and good_hinted:
        g, b, h = max(good), min(broken), max(good_hinted)
        alone_exact = min(results[(alone, SIGMAS[0], n)][1] for n in SPEAKERS)
        print(
            f"\nInterpretation: with the default threshold (0.5) linking is >= 99% right for "
            f"2-10 speakers while the mean same-speaker cosine is >= {cos[g][0]:.2f} (vs "
            f"{cos[g][1]:.2f} between speakers); at {cos[b][0]:.2f} many same-speaker pairs "
            f"fall under the threshold and speakers split ({np.mean(excess[b]):+.1f} on "
            f"average). Given num_speakers it stays >= 99% down to {cos[h][0]:.2f} (vs "
            f"{cos[h][1]:.2f}): the ranking holds, the fixed threshold is what breaks. Overlap "
            "agreement links speakers too short to fingerprint: fingerprints alone get the "
            f"count exact in as few as {alone_exact:.0%} of recordings even for the best-"
            "separated voices."
        )
    else:
        print("\nInterpretation: the separation range did not bracket the breaking point.")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
