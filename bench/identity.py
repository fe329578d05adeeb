"""Naming speakers from voiceprints: accuracy, false accepts, speed.

Simulated voiceprints, seeded, in 192 dimensions (TitaNet-large's size). Each
person is a direction that shares a common component with everyone else, so
two people's voiceprints have cosine RHO x separation on average (about 0.2,
inside the 0.0-0.3 that different speakers get from TitaNet) rather than the
0.0 of independent random directions. A voiceprint, enrolled or heard in a
recording, is normalise(person + s * N(0, I)), its noise scale s = sigma x
exp(SPREAD * N(0, 1)) varying from voiceprint to voiceprint (a noisy room, a
short turn), and sigma set so that two voiceprints of one person have the
wanted mean cosine, the *separation*: 0.85, 0.7 (TitaNet-large's usual
same-speaker cosine), 0.6, 0.5, 0.4.

A library holds 1, 10, 100 or 1,000 enrolled people. A recording has 4-8
speakers; each is an enrolled person with probability 1/2 (as many as the
library allows, never one person twice) and otherwise a stranger, a person
drawn afresh. Per cell, over the same recordings for every threshold:

- accuracy: speakers with the right outcome (an enrolled speaker named with
  its own name, a stranger left anonymous) / all speakers;
- FA: strangers given a name / strangers;
- FR: enrolled speakers left anonymous / enrolled speakers (an enrolled
  speaker given another's name counts against accuracy, shown separately).

The defaults are calibrated at separation 0.7 on 5,000 recordings per
library size (about 15,000 strangers each): per margin (none, 0.05, 0.1,
0.15, 0.2), the lowest threshold (0.44-0.58 by 0.01) at which identify names
at most one stranger in 10,000 at every library size; of those pairs, the one
that leaves the fewest enrolled speakers anonymous. The decision is
identify's own (`voxgraph.identity.assign`) on score matrices computed once
per recording; identify end to end is checked to name exactly the same on a
sample. For reference, the bound P(a stranger's best score >= threshold) with
1,000 enrolled shows how high a threshold alone would have to be.

Also timed: identify with 1,000 enrolled and 4-8 speakers, single-threaded
BLAS as in the ingress replica, against the scoring alone, the decision alone
and a naive Python loop.

Run: .venv/bin/python bench/identity.py [--recordings 400] [--calibration 5000]
     [--strangers 100000] [--reps 3000] [--seed 0]   (about 15 minutes on 2 busy cores)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    # identify runs in the ingress replica, where Ray sets OMP_NUM_THREADS=1 (num_cpus
    # <= 1): time it with single-threaded BLAS as it will run there. On a shared machine
    # BLAS threads also wait for each other far longer than this small product takes.
    # Only when run as a script: tests import this module and start Ray clusters later.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table
from voxgraph.identity import (
    DEFAULT_MARGIN,
    DEFAULT_THRESHOLD,
    Candidate,
    IdentifyResult,
    assign,
    identify,
)

DIM = 192
RHO = 0.3  # between-person cosine of the people themselves (bench/linking.py uses the same)
SPREAD = 0.3  # log-sd of a voiceprint's noise scale
SEPARATIONS = (0.85, 0.7, 0.6, 0.5, 0.4)
DOCUMENTED = 0.7
LIBRARY_SIZES = (1, 10, 100, 1000)
THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))  # 0.30 .. 0.70
SPEAKERS = (4, 8)  # per recording, inclusive
FA_TARGET = 0.0001  # one stranger in 10,000 named, at every library size
MARGINS = (None, 0.05, 0.1, 0.15, 0.2)
CAL_THRESHOLDS = tuple(round(0.44 + 0.01 * i, 2) for i in range(15))  # 0.44 .. 0.58
TABLE_THRESHOLDS = tuple(sorted({*THRESHOLDS, DEFAULT_THRESHOLD}))
CROSS_CHECK = 20  # recordings per library checked end to end against identify
MODEL = "titanet_large"


@dataclass(frozen=True)
class World:
    """An embedding space: every person drawn in it shares its common direction."""

    common: np.ndarray
    rho: float = RHO

    @classmethod
    def make(cls, rng: np.random.Generator, rho: float = RHO) -> World:
        common = rng.standard_normal(DIM)
        return cls(common / np.linalg.norm(common), rho)

    def people(self, n: int, rng: np.random.Generator) -> np.ndarray:
        own = rng.standard_normal((n, DIM))
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        p = math.sqrt(self.rho) * self.common + math.sqrt(1.0 - self.rho) * own
        return p / np.linalg.norm(p, axis=1, keepdims=True)


def voiceprints(people: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """One unit voiceprint per row of `people`, each with its own noise scale."""
    scale = sigma * np.exp(SPREAD * rng.standard_normal((len(people), 1)))
    v = people + scale * rng.standard_normal(people.shape)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def noise_scale(separation: float, seed: int = 0, pairs: int = 20_000) -> float:
    """sigma whose mean same-person voiceprint cosine is `separation` (to 1e-4)."""
    rng = np.random.default_rng([seed, 7])
    people = World.make(rng).people(pairs, rng)
    # The same draws for every sigma keep the mean cosine monotone in sigma.
    z = [rng.standard_normal((pairs, 1)) for _ in range(2)]
    e = [rng.standard_normal((pairs, DIM)) for _ in range(2)]

    def mean_cos(sigma: float) -> float:
        a, b = (people + sigma * np.exp(SPREAD * zi) * ei for zi, ei in zip(z, e, strict=True))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        return float(np.mean(np.sum(a * b, axis=1)))

    lo, hi = 0.0, 1.0
    while mean_cos(hi) > separation:
        hi *= 2
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_cos(mid) > separation else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Library:
    people: np.ndarray  # (n, DIM) the enrolled persons
    candidates: list[Candidate]
    matrix: np.ndarray  # (n, DIM) their voiceprints, the candidates' vectors


def enrol(world: World, size: int, sigma: float, rng: np.random.Generator) -> Library:
    people = world.people(size, rng)
    prints = voiceprints(people, sigma, rng)
    candidates = [Candidate(f"spk_{j}", f"Person {j}", MODEL, prints[j]) for j in range(size)]
    return Library(people, candidates, prints)


@dataclass(frozen=True)
class Recording:
    voiceprints: dict[str, np.ndarray]
    truth: dict[str, str | None]  # speaker -> the enrolled person's name, None for a stranger


def record(world: World, library: Library, sigma: float, rng: np.random.Generator) -> Recording:
    n = int(rng.integers(SPEAKERS[0], SPEAKERS[1] + 1))
    n_enrolled = min(int(rng.binomial(n, 0.5)), len(library.candidates))
    who = rng.choice(len(library.candidates), size=n_enrolled, replace=False)
    people = np.concatenate([library.people[who], world.people(n - n_enrolled, rng)])
    truth = [library.candidates[j].name for j in who] + [None] * (n - n_enrolled)
    order = rng.permutation(n)
    prints = voiceprints(people[order], sigma, rng)
    labels = [f"Speaker_{i}" for i in range(n)]
    return Recording(
        dict(zip(labels, prints, strict=True)),
        dict(zip(labels, [truth[i] for i in order], strict=True)),
    )


@dataclass
class Counts:
    correct: int = 0
    speakers: int = 0
    strangers: int = 0
    false_accepts: int = 0
    enrolled: int = 0
    false_rejects: int = 0
    wrong_names: int = 0

    def add(self, named: dict[str, str], truth: dict[str, str | None]) -> None:
        for speaker, true_name in truth.items():
            got = named.get(speaker)
            self.speakers += 1
            self.correct += got == true_name
            if true_name is None:
                self.strangers += 1
                self.false_accepts += got is not None
            else:
                self.enrolled += 1
                self.false_rejects += got is None
                self.wrong_names += got is not None and got != true_name

    @property
    def accuracy(self) -> float:
        return self.correct / self.speakers

    @property
    def fa(self) -> float:
        return self.false_accepts / max(1, self.strangers)

    @property
    def fr(self) -> float:
        return self.false_rejects / max(1, self.enrolled)


@dataclass(frozen=True)
class Scored:
    """A recording's speakers against a library: what identify's decision sees."""

    labels: list[str]
    scores: np.ndarray  # speakers x enrolled, cosines
    truth: dict[str, str | None]


def score(rec: Recording, library: Library) -> Scored:
    # Library voiceprints and recording voiceprints are unit vectors and every
    # enrolled name is distinct: the cosine matrix is identify's person matrix.
    labels = list(rec.voiceprints)
    return Scored(labels, np.stack(list(rec.voiceprints.values())) @ library.matrix.T, rec.truth)


def decide(sc: Scored, library: Library, threshold: float, margin: float | None) -> dict[str, str]:
    """identify's decision (voxgraph.identity.assign) on the precomputed scores."""
    pairs = assign(sc.scores, threshold, margin)
    return {sc.labels[i]: library.candidates[j].name for i, j in pairs}


def names(result: IdentifyResult[str]) -> dict[str, str]:
    return {s: ident.name for s, ident in result.assignments.items()}


def pct(x: float) -> str:
    """Per cent, with the digits a small non-zero rate needs."""
    return f"{100 * x:.1f}" if x == 0 or x >= 0.001 else f"{100 * x:.3f}"


def cosines(world: World, sigma: float, rng: np.random.Generator, n: int = 4000) -> str:
    """Measured same-person and different-person voiceprint cosines: mean ± sd."""
    people = world.people(n, rng)
    a, b = voiceprints(people, sigma, rng), voiceprints(people, sigma, rng)
    c = voiceprints(world.people(n, rng), sigma, rng)
    same, diff = np.sum(a * b, axis=1), np.sum(a * c, axis=1)
    return f"{same.mean():.2f} ± {same.std():.2f} / {diff.mean():.2f} ± {diff.std():.2f}"


def fa_bound(
    world: World, library: Library, sigma: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Every stranger's best score over the library (n strangers, float32 in chunks)."""
    m = library.matrix.astype(np.float32).T
    out = np.empty(n, dtype=np.float32)
    chunk = 20_000
    for lo in range(0, n, chunk):
        k = min(chunk, n - lo)
        v = voiceprints(world.people(k, rng), sigma, rng).astype(np.float32)
        out[lo : lo + k] = (v @ m).max(axis=1)
    return out


# ----------------------------------------------------------------------------- rules compared


def plain_sum(scores: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Maximise the plain total score over eligible pairs (identify subtracts the threshold)."""
    eligible = scores >= threshold
    r, c = linear_sum_assignment(np.where(eligible, scores, 0.0), maximize=True)
    return [(int(i), int(j)) for i, j in zip(r, c, strict=True) if eligible[i, j]]


def greedy(scores: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Best pair first, then the best remaining pair, while at or above the threshold."""
    s = np.where(scores >= threshold, scores, -np.inf)
    pairs = []
    while np.isfinite(s).any():
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        pairs.append((int(i), int(j)))
        s[i, :], s[:, j] = -np.inf, -np.inf
    return pairs


# ----------------------------------------------------------------------------- timing


def naive_identify(
    prints: dict[str, np.ndarray], candidates: Sequence[Candidate], threshold: float
) -> dict[str, str]:
    """A Python loop over speakers x candidates, then best pair first: the baseline."""
    scored = []
    for s, v in prints.items():
        for c in candidates:
            if c.model != MODEL or c.vector.size != v.size:
                continue
            score = float(np.dot(v, c.vector) / (np.linalg.norm(v) * np.linalg.norm(c.vector)))
            if score >= threshold:
                scored.append((score, s, c.name))
    out: dict[str, str] = {}
    for _, s, name in sorted(scored, reverse=True):
        if s not in out and name not in out.values():
            out[s] = name
    return out


def timings(fn, args_list: list[tuple], reps: int) -> np.ndarray:
    out = np.empty(reps)
    for r in range(reps):
        args = args_list[r % len(args_list)]
        t0 = time.perf_counter_ns()
        fn(*args)
        out[r] = time.perf_counter_ns() - t0
    return out / 1e6  # ms


def ms(x: np.ndarray) -> str:
    return f"{np.percentile(x, 50):.3f} / {np.percentile(x, 99):.3f} / {x.min():.3f}"


# ----------------------------------------------------------------------------- main


def library_and_recordings(
    size: int, sigma: float, recordings: int, rng: np.random.Generator
) -> tuple[Library, list[Recording]]:
    world = World.make(rng)
    lib = enrol(world, size, sigma, rng)
    return lib, [record(world, lib, sigma, rng) for _ in range(recordings)]


Cell = tuple[float | None, float, int]  # (margin, threshold, library size)


def calibrate(
    sigma: float, recordings: int, seed: int
) -> tuple[dict[Cell, Counts], float | None, float, int]:
    """Decision counts per (margin, threshold, library size) at one separation; the
    chosen margin and threshold; how many recordings were checked against identify."""
    counts: dict[Cell, Counts] = {}
    checked = 0
    for li, size in enumerate(LIBRARY_SIZES):
        lib, recs = library_and_recordings(
            size, sigma, recordings, np.random.default_rng([seed, 5, li])
        )
        checked += cross_check(lib, recs[:CROSS_CHECK])
        scored = [score(r, lib) for r in recs]
        del recs
        for m in MARGINS:
            for t in CAL_THRESHOLDS:
                c = counts[(m, t, size)] = Counts()
                for sc in scored:
                    c.add(decide(sc, lib, t, m), sc.truth)

    def total_fr(m: float | None, t: float) -> float:
        cs = [counts[(m, t, size)] for size in LIBRARY_SIZES]
        return sum(c.false_rejects for c in cs) / sum(c.enrolled for c in cs)

    options = sorted(
        ((total_fr(m, t), m or 0.0, t, m) for m, t in safe_thresholds(counts).items()),
        key=lambda o: o[:3],
    )
    if not options:
        raise SystemExit("no (margin, threshold) meets the false-accept target")
    _, _, threshold, margin = options[0]
    return counts, margin, threshold, checked


def safe_thresholds(counts: dict[Cell, Counts]) -> dict[float | None, float]:
    """Per margin, the lowest threshold that meets FA_TARGET at every library size."""
    out: dict[float | None, float] = {}
    for m in MARGINS:
        for t in CAL_THRESHOLDS:
            if all(counts[(m, t, size)].fa <= FA_TARGET for size in LIBRARY_SIZES):
                out[m] = t
                break
    return out


def cross_check(lib: Library, recs: Sequence[Recording]) -> int:
    """identify end to end must name exactly as the decision on precomputed scores."""
    for rec in recs:
        for t, m in ((DEFAULT_THRESHOLD, DEFAULT_MARGIN), (0.35, None)):
            got = names(identify(rec.voiceprints, lib.candidates, MODEL, t, margin=m))
            if got != decide(score(rec, lib), lib, t, m):
                raise SystemExit(f"identify and assign disagree on {rec.truth}")
    return len(recs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=400, help="recordings per table cell")
    parser.add_argument(
        "--calibration", type=int, default=5000, help="recordings per library size to calibrate"
    )
    parser.add_argument("--strangers", type=int, default=100_000, help="for the threshold alone")
    parser.add_argument("--reps", type=int, default=3000, help="timed identify calls")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"{platform.node()} · {platform.machine()} · {os.cpu_count()} CPUs · OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')} · load {os.getloadavg()[0]:.1f} · Python "
        f"{platform.python_version()} · numpy {np.__version__} · "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"dim {DIM}, people's mutual cosine {RHO}, noise-scale spread {SPREAD}, "
        f"{SPEAKERS[0]}-{SPEAKERS[1]} speakers per recording, each enrolled with probability 1/2"
    )
    sigmas = {sep: noise_scale(sep, args.seed) for sep in SEPARATIONS}

    print("\nSimulated voiceprints: cosine of one person's two voiceprints / of two people's")
    rows = []
    for si, sep in enumerate(SEPARATIONS):
        rng = np.random.default_rng([args.seed, 1, si])
        rows.append([sep, f"{sigmas[sep]:.4f}", cosines(World.make(rng), sigmas[sep], rng)])
    print(table(["separation", "sigma", "same person / different people (mean ± sd)"], rows))

    # --- the threshold alone: how high it must be with many enrolled
    print(
        f"\nThe threshold alone: strangers' false-accept bound P(best score >= threshold) "
        f"with {LIBRARY_SIZES[-1]} enrolled, {args.strangers} strangers per separation, %"
    )
    rows = []
    for si, sep in enumerate(SEPARATIONS):
        rng = np.random.default_rng([args.seed, 3, si])
        world = World.make(rng)
        lib = enrol(world, LIBRARY_SIZES[-1], sigmas[sep], rng)
        best = fa_bound(world, lib, sigmas[sep], args.strangers, rng)
        rows.append(
            [sep]
            + [pct(float(np.mean(best >= t))) for t in THRESHOLDS]
            + [f"{np.percentile(best, 99.9):.3f}"]
        )
    print(table(["separation \\ threshold", *THRESHOLDS, "p99.9 best score"], rows))

    # --- calibration: margin and threshold together, identify's decision
    counts, margin, threshold, checked = calibrate(sigmas[DOCUMENTED], args.calibration, args.seed)
    first = {size: counts[(None, CAL_THRESHOLDS[0], size)] for size in LIBRARY_SIZES}
    print(
        f"\nCalibration at separation {DOCUMENTED}: margins {MARGINS} x thresholds "
        f"{CAL_THRESHOLDS[0]}-{CAL_THRESHOLDS[-1]} by 0.01, {args.calibration} recordings per "
        "library size ("
        + ", ".join(
            f"{size}: {c.strangers} strangers, {c.enrolled} enrolled" for size, c in first.items()
        )
        + f"). Per margin, its lowest threshold with false accepts <= {pct(FA_TARGET)} % of "
        "strangers at every library size (1 / 10 / 100 / 1000 enrolled):"
    )

    def row(m: float | None, t: float) -> list[object]:
        cs = [counts[(m, t, size)] for size in LIBRARY_SIZES]
        total = sum(c.false_rejects for c in cs) / sum(c.enrolled for c in cs)
        return [
            m if m is not None else "none",
            f"{t:.2f}",
            " / ".join(str(c.false_accepts) for c in cs),
            " / ".join(pct(c.fr) for c in cs),
            pct(total),
            " / ".join(str(c.wrong_names) for c in cs),
        ]

    headers = ["margin", "threshold", "false accepts", "FR %", "FR % all", "wrong names"]
    rows = [row(m, t) for m, t in safe_thresholds(counts).items()]
    print(table(headers, rows))
    print(f"\nChosen margin {margin}: every threshold of the calibration")
    print(table(headers, [row(margin, t) for t in CAL_THRESHOLDS]))
    print(f"\nThe chosen threshold {threshold:.2f} with no margin:")
    print(table(headers, [row(None, threshold)]))
    print(
        f"\nChosen: margin {margin}, threshold {threshold:.2f} (of the pairs above, the one "
        "that rejects the fewest enrolled speakers). voxgraph.identity: DEFAULT_MARGIN = "
        f"{DEFAULT_MARGIN}, DEFAULT_THRESHOLD = {DEFAULT_THRESHOLD}"
        + (
            " (the same)."
            if (margin, threshold) == (DEFAULT_MARGIN, DEFAULT_THRESHOLD)
            else ": UPDATE THEM."
        )
    )

    # --- accuracy tables: identify's default margin, the same recordings for every threshold
    kept: dict[tuple[int, float], tuple[Library, list[Recording]]] = {}
    cells: dict[tuple[int, float, float], Counts] = {}
    for li, size in enumerate(LIBRARY_SIZES):
        for si, sep in enumerate(SEPARATIONS):
            rng = np.random.default_rng([args.seed, 2, li, si])
            lib, recs = library_and_recordings(size, sigmas[sep], args.recordings, rng)
            checked += cross_check(lib, recs[:CROSS_CHECK])
            kept[(size, sep)] = (lib, recs)
            scored = [score(r, lib) for r in recs]
            for t in TABLE_THRESHOLDS:
                c = cells[(size, sep, t)] = Counts()
                for sc in scored:
                    c.add(decide(sc, lib, t, DEFAULT_MARGIN), sc.truth)
    for size in LIBRARY_SIZES:
        c0 = cells[(size, SEPARATIONS[0], THRESHOLDS[0])]
        print(
            f"\n{size} enrolled, margin {DEFAULT_MARGIN} ({args.recordings} recordings, about "
            f"{c0.enrolled} enrolled speakers and {c0.strangers} strangers per cell): "
            "accuracy / FA / FR, %"
        )
        rows = [
            [sep]
            + [
                f"{pct(c.accuracy)} / {pct(c.fa)} / {pct(c.fr)}"
                for c in (cells[(size, sep, t)] for t in TABLE_THRESHOLDS)
            ]
            for sep in SEPARATIONS
        ]
        print(table(["separation \\ threshold", *TABLE_THRESHOLDS], rows))
    wrong = sum(c.wrong_names for c in cells.values())
    named = sum(c.enrolled - c.false_rejects for c in cells.values())
    print(f"Enrolled speakers named as someone else, all cells together: {wrong} of {named} named.")

    # --- assignment rules on the same recordings, no margin
    print(
        f"\nOne-to-one rules without a margin, {LIBRARY_SIZES[-1]} enrolled, separation "
        f"{DOCUMENTED}: accuracy / FA / FR, % / wrong names"
    )
    lib, recs = kept[(LIBRARY_SIZES[-1], DOCUMENTED)]
    scored = [score(r, lib) for r in recs]
    rules = {
        "identify (sum of score - threshold)": lambda s, t: assign(s, t, None),
        "plain sum of scores": plain_sum,
        "best pair first (greedy)": greedy,
    }
    rule_thresholds = (0.3, 0.4, DEFAULT_THRESHOLD)
    rows = []
    for label, rule in rules.items():
        row: list[object] = [label]
        for t in rule_thresholds:
            c = Counts()
            for sc in scored:
                pairs = rule(sc.scores, t)
                c.add({sc.labels[i]: lib.candidates[j].name for i, j in pairs}, sc.truth)
            row.append(f"{pct(c.accuracy)} / {pct(c.fa)} / {pct(c.fr)} / {c.wrong_names}")
        rows.append(row)
    print(table(["rule \\ threshold", *rule_thresholds], rows))
    print(
        f"identify end to end named exactly as its decision on precomputed scores in "
        f"{checked} of {checked} recordings checked (2 settings each)."
    )

    # --- speed
    rng = np.random.default_rng([args.seed, 4])
    lib, recs = library_and_recordings(LIBRARY_SIZES[-1], sigmas[DOCUMENTED], 200, rng)
    calls = [(r.voiceprints, lib.candidates, MODEL) for r in recs]
    scoring = [(np.stack(list(r.voiceprints.values())), lib.matrix.T) for r in recs]
    assigning = [(v @ m, DEFAULT_THRESHOLD, DEFAULT_MARGIN) for v, m in scoring]
    naive = [(r.voiceprints, lib.candidates, DEFAULT_THRESHOLD) for r in recs]
    n_naive = max(20, args.reps // 50)
    for fn, a in ((identify, calls), (np.matmul, scoring), (assign, assigning)):
        timings(fn, a, 50)  # warm caches and lazy imports
    t_identify = timings(identify, calls, args.reps)
    t_scoring = timings(np.matmul, scoring, args.reps)
    t_assign = timings(assign, assigning, args.reps)
    t_naive = timings(naive_identify, naive, n_naive)
    speakers = np.mean([len(r.voiceprints) for r in recs])
    print(
        f"\nSpeed: {LIBRARY_SIZES[-1]} enrolled, {SPEAKERS[0]}-{SPEAKERS[1]} speakers per "
        f"recording (mean {speakers:.1f}), identify with its defaults, {args.reps} calls "
        f"({n_naive} for the naive loop); load now {os.getloadavg()[0]:.1f}"
    )
    p50 = float(np.median(t_identify))
    rows = [
        ["identify (the whole call)", ms(t_identify), "1"],
        ["scoring alone (voiceprints @ stacked library)", ms(t_scoring), ratio(t_scoring, p50)],
        ["decision alone (assign on the score matrix)", ms(t_assign), ratio(t_assign, p50)],
        ["naive loop (speakers x candidates in Python)", ms(t_naive), ratio(t_naive, p50)],
    ]
    print(table(["what", "ms p50 / p99 / min", "p50 / identify's p50"], rows))
    print(f"({time.perf_counter() - started:.0f} s)")


def ratio(x: np.ndarray, reference: float) -> str:
    return f"{float(np.median(x)) / reference:.2f}"


if __name__ == "__main__":
    main()
