"""Linking the local speakers of diarization windows into global speakers.

Sortformer's speaker indices are local to the window it saw (and it sees at
most 4 speakers), so long recordings are diarized window by window and the
windows' speakers are linked afterwards.

The linking rule (constrained average-linkage agglomerative clustering):

- items are the (window, local speaker) pairs that have at least one turn;
- evidence between two items of *different* windows, each a similarity in
  roughly [-1, 1] with a weight:
  * fingerprints: cosine of the L2-normalised TitaNet embeddings, weight 1;
  * overlap agreement, for windows that share frames: Dice coefficient of the
    two speakers' active frames (probability >= `activity_threshold`) in the
    shared frames, 1 = they spoke exactly together, 0 = one spoke while the
    other was silent. Both windows heard the same audio there, so this is
    strong evidence either way; its weight grows with the speech seen in the
    shared frames, `overlap_weight * min(1, union_s / overlap_ref_s)`;
- two items of the same window never merge (cannot-link), nor do clusters
  that contain them;
- the similarity of two clusters is the weighted mean of the evidence between
  their members (average linkage); pairs with no evidence at all (a speaker
  too short to be fingerprinted, not speaking in any shared frames) do not
  count, so such a speaker joins a cluster only through overlap agreement and
  otherwise stays a speaker of its own;
- clusters merge best-first while their similarity exceeds `threshold`;
  speaker-count hints override the threshold: merging stops at
  `num_speakers`/`min_speakers` and continues past the threshold down to
  `num_speakers`/`max_speakers` (then pairs without evidence may merge too),
  as far as the cannot-link constraints allow.

Global speakers are numbered by their first turn inside a window core, so
`Speaker_0` is the first voice a reader of the stitched result meets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voxgraph.errors import BadRequest
from voxgraph.turns import turn_confidence
from voxgraph.types import Diarization, Turn
from voxgraph.windows import Window

# Turn boundaries of neighbouring windows are rounded independently; closer
# than this they touch.
_TOUCH_S = 1e-6
_DIGITS = 6


@dataclass(frozen=True)
class SpeakerHints:
    """Caller's knowledge of the speaker count; every field optional."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise BadRequest(f"{name} must be a whole number, got {value!r}")
            if value < 1:
                raise BadRequest(f"{name} must be at least 1, got {value}")
        lo, hi, num = self.min_speakers, self.max_speakers, self.num_speakers
        if lo is not None and hi is not None and lo > hi:
            raise BadRequest(f"min_speakers ({lo}) is greater than max_speakers ({hi})")
        if num is not None and lo is not None and num < lo:
            raise BadRequest(f"num_speakers ({num}) is less than min_speakers ({lo})")
        if num is not None and hi is not None and num > hi:
            raise BadRequest(f"num_speakers ({num}) is greater than max_speakers ({hi})")

    @property
    def bounds(self) -> tuple[int, float]:
        """(lowest, highest) acceptable speaker count; highest may be infinite."""
        if self.num_speakers is not None:
            return self.num_speakers, self.num_speakers
        lo = self.min_speakers if self.min_speakers is not None else 1
        hi = self.max_speakers if self.max_speakers is not None else math.inf
        return lo, hi


@dataclass(frozen=True)
class _Item:
    window: int
    speaker: int
    fingerprint: np.ndarray | None
    first_s: float  # global start of its first turn
    first_core_s: float  # global start of its first turn inside the window core


def _normalise(v: np.ndarray) -> np.ndarray | None:
    v = np.asarray(v, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return v / norm


def _check_lengths(windows: Sequence[Window], *others: Sequence[object]) -> None:
    for other in others:
        if len(other) != len(windows):
            raise ValueError(f"expected {len(windows)} per-window results, got {len(other)}")


def _items(
    windows: Sequence[Window],
    diarizations: Sequence[Diarization],
    fingerprints: Sequence[dict[int, np.ndarray]],
) -> list[_Item]:
    items: list[_Item] = []
    for w, (window, diar, prints) in enumerate(
        zip(windows, diarizations, fingerprints, strict=True)
    ):
        first: dict[int, float] = {}
        first_core: dict[int, float] = {}
        for t in diar.turns:
            k = int(t.speaker)
            start, end = window.start_s + t.start, window.start_s + t.end
            first[k] = min(first.get(k, math.inf), start)
            lo, hi = max(start, window.core_start_s), min(end, window.core_end_s)
            if hi > lo:
                first_core[k] = min(first_core.get(k, math.inf), lo)
        for k in sorted(first):
            raw = prints.get(k)
            fp = None if raw is None else _normalise(raw)
            items.append(_Item(w, k, fp, first[k], first_core.get(k, math.inf)))
    return items


def _activity(
    diar: Diarization, window: Window, lo: int, hi: int, k: int, thr: float
) -> np.ndarray:
    """Speaker k's active flags over global frames [lo, hi) of this window (silent past its end)."""
    out = np.zeros(hi - lo, dtype=bool)
    if diar.probs.ndim != 2 or not 0 <= k < diar.probs.shape[1]:
        return out
    r0 = lo - window.start_frame(diar.frame_s)
    rows = diar.probs[max(0, r0) : max(0, r0 + hi - lo), k]
    out[: len(rows)] = rows >= thr
    return out


def _evidence(
    items: Sequence[_Item],
    windows: Sequence[Window],
    diarizations: Sequence[Diarization],
    overlap_weight: float,
    overlap_ref_s: float,
    activity_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of weight * similarity, sum of weight) for every item pair."""
    n = len(items)
    sim_sum = np.zeros((n, n))
    weight = np.zeros((n, n))

    with_fp = [i for i, it in enumerate(items) if it.fingerprint is not None]
    if with_fp:
        fps = np.stack([items[i].fingerprint for i in with_fp])  # type: ignore[misc]
        idx = np.ix_(with_fp, with_fp)
        sim_sum[idx] += fps @ fps.T
        weight[idx] += 1.0

    by_window: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_window.setdefault(it.window, []).append(i)
    if overlap_weight > 0:
        for a in range(len(windows)):
            for b in range(a + 1, len(windows)):
                shared = _shared_activity(
                    a, b, items, by_window, windows, diarizations, activity_threshold
                )
                for i, act_i, j, act_j, frame_s in shared:
                    union = int(np.count_nonzero(act_i | act_j))
                    if union == 0:
                        continue  # neither spoke in the shared frames: no evidence either way
                    both = np.count_nonzero(act_i & act_j)
                    dice = 2.0 * both / (np.count_nonzero(act_i) + np.count_nonzero(act_j))
                    w = overlap_weight * min(1.0, union * frame_s / overlap_ref_s)
                    sim_sum[[i, j], [j, i]] += w * dice
                    weight[[i, j], [j, i]] += w
    # Same-window pairs carry no usable evidence: they are cannot-link.
    for members in by_window.values():
        idx = np.ix_(members, members)
        sim_sum[idx] = 0.0
        weight[idx] = 0.0
    return sim_sum, weight


def _shared_activity(
    a: int,
    b: int,
    items: Sequence[_Item],
    by_window: dict[int, list[int]],
    windows: Sequence[Window],
    diarizations: Sequence[Diarization],
    activity_threshold: float,
) -> list[tuple[int, np.ndarray, int, np.ndarray, float]]:
    """(item of a, its activity, item of b, its activity, frame_s) over the frames a and b share."""
    frame_s = diarizations[a].frame_s
    wa, wb = windows[a], windows[b]
    lo = max(wa.start_frame(frame_s), wb.start_frame(frame_s))
    hi = min(math.ceil(wa.end_s / frame_s - 1e-6), math.ceil(wb.end_s / frame_s - 1e-6))
    if hi <= lo:
        return []
    acts_a = [
        (i, _activity(diarizations[a], wa, lo, hi, items[i].speaker, activity_threshold))
        for i in by_window.get(a, [])
    ]
    acts_b = [
        (j, _activity(diarizations[b], wb, lo, hi, items[j].speaker, activity_threshold))
        for j in by_window.get(b, [])
    ]
    return [(i, ai, j, aj, frame_s) for i, ai in acts_a for j, aj in acts_b]


def _cluster(
    sim_sum: np.ndarray,
    weight: np.ndarray,
    cannot: np.ndarray,
    threshold: float,
    bounds: tuple[int, float],
) -> list[int]:
    """Cluster id (a representative item index) for every item."""
    n = sim_sum.shape[0]
    lo, hi = bounds
    sim_sum, weight, cannot = sim_sum.copy(), weight.copy(), cannot.copy()
    np.fill_diagonal(cannot, True)
    active = np.ones(n, dtype=bool)
    owner = list(range(n))
    count = n
    while count > 1:
        allowed = ~cannot & active[:, None] & active[None, :]
        known = allowed & (weight > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(known, sim_sum / np.where(weight > 0, weight, 1.0), -np.inf)
        must = count > hi
        pick: tuple[int, int] | None = None
        if known.any():
            i, j = np.unravel_index(int(np.argmax(score)), score.shape)
            if must or (count > lo and score[i, j] > threshold):
                pick = (int(i), int(j))
        elif must and allowed.any():
            # The hint demands fewer speakers and no pair has evidence: merge
            # the first allowed pair rather than ignore the caller's count.
            i, j = np.unravel_index(int(np.argmax(allowed)), allowed.shape)
            pick = (int(i), int(j))
        if pick is None:
            break
        i, j = pick
        sim_sum[i, :] += sim_sum[j, :]
        sim_sum[:, i] += sim_sum[:, j]
        weight[i, :] += weight[j, :]
        weight[:, i] += weight[:, j]
        cannot[i, :] |= cannot[j, :]
        cannot[:, i] |= cannot[:, j]
        active[j] = False
        owner = [i if o == j else o for o in owner]
        count -= 1
    return owner


def link_speakers(
    windows: Sequence[Window],
    diarizations: Sequence[Diarization],
    fingerprints: Sequence[dict[int, np.ndarray]],
    hints: SpeakerHints | None = None,
    threshold: float = 0.5,
    *,
    overlap_weight: float = 1.0,
    overlap_ref_s: float = 2.0,
    activity_threshold: float = 0.5,
) -> list[dict[int, int]]:
    """Per window, local speaker index -> global speaker index 0..G-1.

    `diarizations[w]` has times relative to `windows[w].start_s`;
    `fingerprints[w]` maps local speaker -> embedding for the speakers that
    had enough speech to be fingerprinted. Only local speakers with turns
    appear in the result. See the module docstring for the rule.
    """
    _check_lengths(windows, diarizations, fingerprints)
    items = _items(windows, diarizations, fingerprints)
    if not items:
        return [{} for _ in windows]
    sim_sum, weight = _evidence(
        items, windows, diarizations, overlap_weight, overlap_ref_s, activity_threshold
    )
    win = np.array([it.window for it in items])
    cannot = win[:, None] == win[None, :]
    owner = _cluster(sim_sum, weight, cannot, threshold, (hints or SpeakerHints()).bounds)

    members: dict[int, list[int]] = {}
    for i, o in enumerate(owner):
        members.setdefault(o, []).append(i)

    def first_seen(o: int) -> tuple[float, float, int]:
        its = [items[i] for i in members[o]]
        return (min(it.first_core_s for it in its), min(it.first_s for it in its), min(members[o]))

    order = sorted(members, key=first_seen)
    global_of = {o: g for g, o in enumerate(order)}
    mappings: list[dict[int, int]] = [{} for _ in windows]
    for i, it in enumerate(items):
        mappings[it.window][it.speaker] = global_of[owner[i]]
    return mappings


def _merge_touching(turns: list[Turn]) -> list[Turn]:
    by_speaker: dict[int | str, list[Turn]] = {}
    for t in sorted(turns, key=lambda t: (t.start, t.end)):
        run = by_speaker.setdefault(t.speaker, [])
        if run and t.start <= run[-1].end + _TOUCH_S:
            prev = run[-1]
            run[-1] = Turn(prev.start, max(prev.end, t.end), prev.speaker)
        else:
            run.append(t)
    return [t for run in by_speaker.values() for t in run]


def stitch(
    windows: Sequence[Window],
    diarizations: Sequence[Diarization],
    mappings: Sequence[dict[int, int]],
) -> Diarization:
    """One Diarization in global time with global speaker indices.

    Each window contributes only its core: turns are clipped to it and
    relabelled, same-speaker turns touching across a seam become one, and the
    global probability matrix takes each core's frames from its own window,
    so a turn's confidence is the mean of the frames that produced it.
    """
    _check_lengths(windows, diarizations, mappings)
    if not windows:
        empty = np.zeros((0, 0), dtype=np.float32)
        return Diarization(turns=(), probs=empty, frame_s=0.08, duration=0.0)
    frame_s = diarizations[0].frame_s
    if any(abs(d.frame_s - frame_s) > 1e-9 for d in diarizations):
        raise ValueError("all windows must share one frame length")
    duration = windows[-1].end_s
    n_frames = max(0, math.ceil(duration / frame_s - 1e-6))
    n_global = 1 + max((g for m in mappings for g in m.values()), default=-1)
    dtype = np.result_type(*[d.probs.dtype for d in diarizations], np.float32)
    probs = np.zeros((n_frames, n_global), dtype=dtype)

    turns: list[Turn] = []
    for window, diar, mapping in zip(windows, diarizations, mappings, strict=True):
        c0, c1 = window.core_frames(frame_s)
        c1 = min(c1, n_frames)
        r0 = c0 - window.start_frame(frame_s)
        if diar.probs.ndim == 2:
            rows = max(0, min(c1 - c0, diar.probs.shape[0] - r0))
            for k, g in mapping.items():
                if 0 <= k < diar.probs.shape[1]:
                    probs[c0 : c0 + rows, g] = diar.probs[r0 : r0 + rows, k]
        for t in diar.turns:
            g = mapping.get(int(t.speaker))
            if g is None:
                continue
            start = max(round(window.start_s + t.start, _DIGITS), window.core_start_s)
            end = min(round(window.start_s + t.end, _DIGITS), window.core_end_s)
            if end > start:
                turns.append(Turn(start, end, g))

    merged = sorted(_merge_touching(turns), key=lambda t: (t.start, t.end, t.speaker))
    with_conf = tuple(
        Turn(t.start, t.end, t.speaker, turn_confidence(probs, frame_s, t)) for t in merged
    )
    return Diarization(turns=with_conf, probs=probs, frame_s=frame_s, duration=duration)
