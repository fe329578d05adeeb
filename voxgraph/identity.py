"""Naming speakers: a recording's voiceprints matched against known voices.

A *voiceprint* is one L2-normalised vector per speaker, pooled from all of its
speech in the recording (`speaker_voiceprints`). *Candidates* are the known
voices: speakers enrolled in the library and the reference clips a request
brings with names. `identify` names a speaker only when all of these hold:

- the candidate was fingerprinted by the same embedding model, at the same
  dimension, as the recording; any other candidate is never compared and is
  reported in `IdentifyResult.skipped` with the reason;
- the cosine of the two voiceprints is at least `threshold`;
- the naming is one-to-one: two speakers never get one name and one name never
  goes to two speakers. Candidates whose names are equal after folding case
  and whitespace are one person (enrolled twice, or enrolled and referenced):
  a speaker's score for that person is the best of that person's voiceprints,
  and the identity says which candidate gave it;
- among the one-to-one namings that use only pairs at or above the threshold,
  the chosen one maximises the total score *above the threshold*,
  sum(score - threshold). Subtracting the threshold makes every naming pay its
  way: with A~X 0.9, A~Y 0.6, B~X 0.65 and threshold 0.5, the plain total
  would rename A to its weak second choice Y so that B could take X (1.25 >
  0.9); above the threshold the totals are 0.25 < 0.4, so A keeps X and B
  stays anonymous;
- with a `margin`, a named speaker must also beat by at least `margin` every
  other person that no other speaker of the recording was named as: a near
  tie between two known voices leaves the speaker anonymous rather than
  naming it by a coin toss.

A stranger is therefore never named because it was the best of bad matches:
below the threshold no pair is eligible, whatever the assignment prefers.

`DEFAULT_THRESHOLD` and `DEFAULT_MARGIN` come from `bench/identity.py` and are
calibrated as a pair: a caller that turns the margin off should raise the
threshold (0.53 on the same simulation) rather than keep 0.46.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import numpy as np
from scipy.optimize import linear_sum_assignment

# Calibrated together by bench/identity.py (figures in bench/RESULTS.md,
# "Identification: names from voiceprints") on simulated 192-dimensional
# voiceprints, TitaNet-large's size. Two voiceprints of one person have mean
# cosine 0.7 there (TitaNet-large's usual same-speaker cosine; sd 0.09), of two
# people 0.21 (sd 0.07). Rule: per margin (none, 0.05, 0.1, 0.15, 0.2), the lowest
# threshold (0.44-0.58 by 0.01) that names at most one stranger in 10,000 with
# 1, 10, 100 and 1,000 enrolled alike; of those pairs, the one that leaves the
# fewest enrolled speakers anonymous. With 0.46 and 0.15, over 5,000 recordings
# of 4-8 speakers per library size: strangers named 0 of 25,041 / 1 of 15,102 /
# 0 of 15,023 / 1 of 15,061; enrolled left anonymous 0.3 / 2.3 / 2.7 / 6.7 %;
# enrolled named as someone else: none. The two belong together: the threshold
# alone would have to be 0.53 for the same strangers' rate (5.5 % anonymous
# instead of 3.5 %), and at 0.46 with no margin 4.5 % of the strangers would be
# named when 1,000 voices are enrolled.
DEFAULT_THRESHOLD = 0.46
DEFAULT_MARGIN = 0.15

Source = Literal["library", "reference"]
SkipReason = Literal["other_model", "dimension", "invalid_vector"]
SpeakerT = TypeVar("SpeakerT", bound=Hashable)


@dataclass(frozen=True)
class VoiceprintStats:
    """How a library voiceprint was made: its enrolment clips."""

    clips: int
    speech_s: float
    cosine_mean: float  # clip embeddings' mean cosine to the voiceprint
    cosine_var: float


@dataclass(frozen=True, eq=False)
class Candidate:
    """A known voice: one enrolled speaker, or one named reference clip of a request.

    `vector` is kept as a read-only float64 copy; it need not be normalised.
    """

    id: str
    name: str
    model: str
    vector: np.ndarray
    source: Source = "library"
    stats: VoiceprintStats | None = None
    # Names equal after folding case and whitespace are one person.
    person: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError(f"candidate {self.id!r} has no name")
        if self.source not in ("library", "reference"):
            raise ValueError(
                f"candidate source must be 'library' or 'reference', not {self.source!r}"
            )
        vector = np.array(self.vector, dtype=np.float64)
        if vector.ndim != 1:
            raise ValueError(f"candidate {self.id!r}: vector must be 1-D, got shape {vector.shape}")
        vector.flags.writeable = False
        object.__setattr__(self, "vector", vector)
        object.__setattr__(self, "person", " ".join(self.name.split()).casefold())


@dataclass(frozen=True)
class Identity(Generic[SpeakerT]):
    """A speaker matched to a known voice with its cosine score."""

    speaker: SpeakerT
    candidate_id: str
    name: str
    score: float
    source: Source


@dataclass(frozen=True)
class Skipped:
    """A candidate that was not compared, and why."""

    candidate_id: str
    name: str
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class IdentifyResult(Generic[SpeakerT]):
    """`assignments`: the speakers that were named. `best`: every speaker given, with its
    best-scoring known voice whether named or not (None without a voiceprint or
    without a comparable candidate)."""

    assignments: dict[SpeakerT, Identity[SpeakerT]]
    best: dict[SpeakerT, Identity[SpeakerT] | None]
    skipped: tuple[Skipped, ...]
    threshold: float
    margin: float | None


def _unit(v: np.ndarray | None) -> np.ndarray | None:
    """Unit-length float64 copy, or None for a missing, zero or non-finite vector."""
    if v is None:
        return None
    v = np.asarray(v, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return v / norm


def pool_voiceprints(
    samples: Iterable[tuple[SpeakerT, np.ndarray, float]],
) -> dict[SpeakerT, np.ndarray]:
    """Speaker -> weighted mean of its L2-normalised embeddings, re-normalised.

    `samples` are (speaker, embedding, weight) triples, the weight being the
    speech seconds the embedding was made from, so a long stretch counts more
    than a short one. Zero, non-finite and zero-weight samples carry nothing;
    a speaker with nothing left is absent.
    """
    sums: dict[SpeakerT, np.ndarray] = {}
    dim: int | None = None
    for speaker, embedding, weight in samples:
        if not (math.isfinite(weight) and weight >= 0.0):
            raise ValueError(f"speaker {speaker!r}: weight must be finite and >= 0, got {weight}")
        unit = _unit(embedding)
        if unit is None or weight == 0.0:
            continue
        if dim is None:
            dim = unit.size
        elif unit.size != dim:
            raise ValueError(f"speaker {speaker!r}: embedding has {unit.size} dims, others {dim}")
        if speaker in sums:
            sums[speaker] += weight * unit
        else:
            sums[speaker] = weight * unit
    out: dict[SpeakerT, np.ndarray] = {}
    for speaker, total in sums.items():
        unit = _unit(total)
        if unit is not None:
            out[speaker] = unit
    return out


def speaker_voiceprints(
    fingerprints: Sequence[Mapping[int, np.ndarray]],
    mappings: Sequence[Mapping[int, int]],
    speech_s: Sequence[Mapping[int, float]] | None = None,
) -> dict[int, np.ndarray]:
    """Global speaker -> voiceprint from the windows' fingerprints.

    Per window w: `fingerprints[w]` maps local speaker -> embedding,
    `mappings[w]` local -> global speaker (the linking's result) and
    `speech_s[w]` local speaker -> its speech seconds in that window (its
    weight; every fingerprint weighs 1 without it). Local speakers missing
    from the mapping or without speech seconds are left out. The result's
    keys are in increasing order.
    """
    if len(mappings) != len(fingerprints) or (
        speech_s is not None and len(speech_s) != len(fingerprints)
    ):
        raise ValueError("fingerprints, mappings and speech_s need one entry per window")

    def samples() -> Iterable[tuple[int, np.ndarray, float]]:
        for w, (prints, mapping) in enumerate(zip(fingerprints, mappings, strict=True)):
            for k, embedding in prints.items():
                if k not in mapping:
                    continue
                weight = 1.0 if speech_s is None else float(speech_s[w].get(k, 0.0))
                yield mapping[k], embedding, weight

    pooled = pool_voiceprints(samples())
    return {g: pooled[g] for g in sorted(pooled)}


def _comparable(
    candidates: Iterable[Candidate], model: str, dim: int | None
) -> tuple[list[Candidate], np.ndarray, np.ndarray, list[Skipped]]:
    """The candidates that can be compared, their vectors (rows) and norms, and the rest."""
    sized: list[Candidate] = []
    skipped: list[Skipped] = []
    for c in candidates:
        if c.model != model:
            detail = f"fingerprinted by {c.model!r}, this recording by {model!r}"
            skipped.append(Skipped(c.id, c.name, "other_model", detail))
        elif dim is not None and c.vector.size != dim:
            detail = f"{c.vector.size}-dimensional voiceprint, this recording's are {dim}"
            skipped.append(Skipped(c.id, c.name, "dimension", detail))
        else:
            sized.append(c)
    if not sized or dim is None:  # nothing to compare with (no speaker has a voiceprint)
        return sized, np.zeros((0, dim or 0)), np.zeros(0), skipped
    # Array calls over the whole library at once: it may hold thousands of voices
    # and a request should not pay a Python-level loop of array calls for each.
    matrix = np.array([c.vector for c in sized])
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(matrix, axis=1)
    valid = np.isfinite(norms) & (norms > 0.0)
    if not valid.all():
        for j in np.flatnonzero(~valid):
            c = sized[j]
            skipped.append(Skipped(c.id, c.name, "invalid_vector", "zero or non-finite voiceprint"))
        sized = [c for c, ok in zip(sized, valid, strict=True) if ok]
        matrix, norms = matrix[valid], norms[valid]
    return sized, matrix, norms, skipped


def _person_scores(scores: np.ndarray, kept: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """Per speaker and person: best score over that person's candidates, and which one.

    Persons are numbered by their first candidate; returns (speakers x persons
    scores, speakers x persons index into `kept`).
    """
    persons = [c.person for c in kept]
    if len(set(persons)) == len(persons):  # nobody twice: the usual case
        return scores, np.broadcast_to(np.arange(len(kept)), scores.shape)
    number: dict[str, int] = {}
    for p in persons:
        number.setdefault(p, len(number))
    best = np.full((scores.shape[0], len(number)), -np.inf)
    which = np.zeros(best.shape, dtype=np.intp)
    for j, p in enumerate(persons):  # strict >: the first candidate wins a tie
        q = number[p]
        better = scores[:, j] > best[:, q]
        best[better, q] = scores[better, j]
        which[better, q] = j
    return best, which


def assign(
    scores: np.ndarray, threshold: float, margin: float | None = None
) -> list[tuple[int, int]]:
    """identify's decision on a (speakers x persons) cosine matrix: one-to-one
    (row, column) pairs, each scoring >= threshold, maximising
    sum(score - threshold); with a margin, minus the pairs that fail it (see
    the module docstring). Sorted by row."""
    eligible = scores >= threshold
    rows = np.flatnonzero(eligible.any(axis=1))
    cols = np.flatnonzero(eligible.any(axis=0))
    if rows.size == 0:
        return []
    sub = scores[np.ix_(rows, cols)]
    sub_eligible = eligible[np.ix_(rows, cols)]
    # Ineligible pairs weigh 0, the value of leaving a speaker anonymous; an
    # eligible pair weighs its evidence above the threshold, plus a hair so a
    # pair exactly at the threshold still counts as a naming.
    gain = np.where(sub_eligible, sub - threshold + 1e-12, 0.0)
    r, c = linear_sum_assignment(gain, maximize=True)
    pairs = [(int(rows[i]), int(cols[j])) for i, j in zip(r, c, strict=True) if sub_eligible[i, j]]
    if margin is not None:
        pairs = _clear_by_margin(scores, pairs, margin)
    return sorted(pairs)


def identify(
    voiceprints: Mapping[SpeakerT, np.ndarray | None],
    candidates: Iterable[Candidate],
    model: str,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float | None = DEFAULT_MARGIN,
) -> IdentifyResult[SpeakerT]:
    """Name the speakers whose voiceprints match a known voice; see the module docstring.

    `voiceprints`: speaker -> voiceprint made by embedding model `model`; a
    speaker without one (None, zero or non-finite) is reported in `best` as
    None and never named. All voiceprints must share one dimension.
    """
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    if margin is not None and not (math.isfinite(margin) and margin >= 0.0):
        raise ValueError(f"margin must be >= 0 or None, got {margin}")

    speakers = list(voiceprints)
    units = {s: _unit(voiceprints[s]) for s in speakers}
    present = [s for s in speakers if units[s] is not None]
    dims = {units[s].size for s in present}  # type: ignore[union-attr]
    if len(dims) > 1:
        raise ValueError(f"voiceprints differ in dimension: {sorted(dims)}")
    dim = next(iter(dims)) if dims else None

    kept, matrix, norms, skipped = _comparable(candidates, model, dim)
    best: dict[SpeakerT, Identity[SpeakerT] | None] = dict.fromkeys(speakers)
    named: dict[SpeakerT, Identity[SpeakerT]] = {}
    if present and kept:
        raw = (np.array([units[s] for s in present]) @ matrix.T) / norms
        scores, which = _person_scores(raw, kept)

        def identity(i: int, p: int) -> Identity[SpeakerT]:
            c = kept[int(which[i, p])]
            return Identity(present[i], c.id, c.name, float(scores[i, p]), c.source)

        for i, p in enumerate(np.argmax(scores, axis=1)):
            best[present[i]] = identity(i, int(p))
        for i, p in assign(scores, threshold, margin):
            named[present[i]] = identity(i, p)
        named = {s: named[s] for s in speakers if s in named}
    return IdentifyResult(
        assignments=named, best=best, skipped=tuple(skipped), threshold=threshold, margin=margin
    )


def _clear_by_margin(
    scores: np.ndarray, pairs: list[tuple[int, int]], margin: float
) -> list[tuple[int, int]]:
    """The pairs whose score beats, by >= margin, the speaker's every other
    person not named for another speaker (those are explained elsewhere)."""
    while pairs:
        free = np.ones(scores.shape[1], dtype=bool)
        free[[p for _, p in pairs]] = False
        rivals = np.where(free, scores, -np.inf).max(axis=1) if free.any() else None
        kept = [(i, p) for i, p in pairs if rivals is None or scores[i, p] - rivals[i] >= margin]
        if len(kept) == len(pairs):
            break
        # A person freed by a cleared naming is a rival for the others again.
        pairs = kept
    return pairs
