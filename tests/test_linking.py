"""Linking windows' local speakers into global speakers, and stitching windows.

Hand-made windows with 1 s frames keep the matrices small enough to read.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxgraph.errors import BadRequest
from voxgraph.identity import speaker_voiceprints
from voxgraph.linking import SpeakerHints, link_speakers, stitch
from voxgraph.turns import speech_seconds
from voxgraph.types import Diarization, Turn
from voxgraph.windows import plan_windows


def diar(turns: list[tuple[float, float, int]], probs: np.ndarray) -> Diarization:
    return Diarization(
        turns=tuple(Turn(a, b, k) for a, b, k in turns),
        probs=np.asarray(probs, dtype=np.float64),
        frame_s=1.0,
        duration=float(len(probs)),
    )


def activity(
    n_frames: int, n_speakers: int, spans: dict[int, tuple[int, int, float]]
) -> np.ndarray:
    """Probabilities: speaker k at `value` over frames [a, b), 0 elsewhere."""
    probs = np.zeros((n_frames, n_speakers))
    for k, (a, b, value) in spans.items():
        probs[a:b, k] = value
    return probs


def unit(*xs: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim)
    v[: len(xs)] = xs
    return v


E = np.eye(8)


# --- hints -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_speakers": 0},
        {"num_speakers": -2},
        {"min_speakers": 0},
        {"max_speakers": -1},
        {"min_speakers": 3, "max_speakers": 2},
        {"num_speakers": 2, "min_speakers": 3},
        {"num_speakers": 5, "max_speakers": 4},
        {"num_speakers": 2.5},
        {"num_speakers": True},
        {"max_speakers": "3"},
    ],
)
def test_invalid_hints_are_bad_requests(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        SpeakerHints(**kwargs)  # type: ignore[arg-type]


def test_hint_bounds() -> None:
    assert SpeakerHints().bounds == (1, math.inf)
    assert SpeakerHints(num_speakers=3, min_speakers=2, max_speakers=4).bounds == (3, 3)
    assert SpeakerHints(min_speakers=2).bounds == (2, math.inf)
    assert SpeakerHints(max_speakers=5).bounds == (1, 5)
    assert SpeakerHints(min_speakers=2, max_speakers=2).bounds == (2, 2)


# --- one window --------------------------------------------------------------


def test_single_window_numbers_speakers_by_first_appearance() -> None:
    (w,) = plan_windows(6.0, 10.0, 2.0, frame_s=1.0)
    d = diar([(3, 5, 0), (0, 2, 2)], activity(6, 4, {0: (3, 5, 0.9), 2: (0, 2, 0.9)}))
    # Speaker 1 and 3 never speak: not items, not in the mapping.
    prints = {0: E[0], 1: E[1], 2: E[2]}
    assert link_speakers([w], [d], [prints]) == [{2: 0, 0: 1}]


def test_no_speech_anywhere() -> None:
    plan = plan_windows(16.0, 10.0, 4.0, frame_s=1.0)
    empty = diar([], np.zeros((10, 4)))
    assert link_speakers(plan, [empty, empty], [{}, {}]) == [{}, {}]
    out = stitch(plan, [empty, empty], [{}, {}])
    assert out.turns == () and out.probs.shape == (16, 0) and out.duration == 16.0


def test_lengths_must_match() -> None:
    plan = plan_windows(16.0, 10.0, 4.0, frame_s=1.0)
    with pytest.raises(ValueError):
        link_speakers(plan, [diar([], np.zeros((10, 4)))], [{}, {}])


# --- fingerprints across windows ---------------------------------------------

# plan_windows(26, 10, 2, 1 s frames): [0,10) [8,18) [16,26), cores [0,9) [9,17) [17,26);
# turns at local frames 2..6 never touch the shared frames, so only fingerprints link.
PLAN3 = plan_windows(26.0, 10.0, 2.0, frame_s=1.0)


def three_windows_one_speaker_each() -> list[Diarization]:
    return [diar([(2, 4, 0)], activity(10, 4, {0: (2, 4, 0.9)})) for _ in range(3)]


def test_plan3_layout() -> None:
    assert [(w.start_s, w.end_s, w.core_start_s, w.core_end_s) for w in PLAN3] == [
        (0.0, 10.0, 0.0, 9.0),
        (8.0, 18.0, 9.0, 17.0),
        (16.0, 26.0, 17.0, 26.0),
    ]


def test_more_than_four_global_speakers_with_permuted_local_order() -> None:
    truth = [[0, 1, 2, 3], [5, 4, 1, 0], [3, 4, 2, 5]]  # true speaker in each local slot
    diars, prints = [], []
    for slots in truth:
        turns = [(2 + k, 3 + k, k) for k in range(4)]
        diars.append(diar(turns, activity(10, 4, {k: (2 + k, 3 + k, 0.9) for k in range(4)})))
        prints.append({k: 3.0 * E[s] for k, s in enumerate(slots)})  # scale must not matter
    mappings = link_speakers(PLAN3, diars, prints)
    # Global order = first appearance: 0..3 in window 0, then true 5 (t=10) and true 4 (t=11).
    assert mappings == [
        {0: 0, 1: 1, 2: 2, 3: 3},
        {0: 4, 1: 5, 2: 1, 3: 0},
        {0: 3, 1: 5, 2: 2, 3: 4},
    ]


def test_same_window_speakers_never_merge() -> None:
    d = diar([(2, 3, 0), (4, 5, 1)], activity(10, 4, {0: (2, 3, 0.9), 1: (4, 5, 0.9)}))
    (w,) = plan_windows(10.0, 10.0, 2.0, frame_s=1.0)
    # Identical voices in one window are still two people (Sortformer kept them apart).
    assert link_speakers([w], [d], [{0: E[0], 1: E[0]}]) == [{0: 0, 1: 1}]
    # And a third window speaker that matches both joins only one of them.
    d2 = diar([(2, 4, 0)], activity(10, 4, {0: (2, 4, 0.9)}))
    two = [d, d2, d2]
    mappings = link_speakers(PLAN3, two, [{0: E[0], 1: E[0]}, {0: E[0]}, {0: E[1]}])
    assert mappings == [{0: 0, 1: 1}, {0: 0}, {0: 2}]


# Fingerprints with cosines 0.8 (w0, w1), 0.6 (w1, w2), 0 (w0, w2):
# average linkage merges w0+w1 (0.8), then {w0,w1} vs w2 = (0 + 0.6) / 2 = 0.3 < 0.5.
CHAIN = [{0: unit(1.0)}, {0: unit(0.8, 0.6)}, {0: unit(0.0, 1.0)}]


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        (None, [0, 0, 1]),
        (SpeakerHints(num_speakers=3), [0, 1, 2]),  # forces a split the threshold would merge
        (SpeakerHints(num_speakers=2), [0, 0, 1]),
        (SpeakerHints(num_speakers=1), [0, 0, 0]),  # forces a merge below the threshold
        (SpeakerHints(min_speakers=3), [0, 1, 2]),
        (SpeakerHints(min_speakers=1, max_speakers=4), [0, 0, 1]),
        (SpeakerHints(max_speakers=1), [0, 0, 0]),
    ],
)
def test_hints_constrain_the_count(hints: SpeakerHints | None, expected: list[int]) -> None:
    mappings = link_speakers(PLAN3, three_windows_one_speaker_each(), CHAIN, hints)
    assert [m[0] for m in mappings] == expected


def test_threshold_is_a_cosine_bound() -> None:
    prints = [{0: unit(1.0)}, {0: unit(0.5, math.sqrt(0.75))}, {0: unit(0.0, 0.0, 1.0)}]
    diars = three_windows_one_speaker_each()
    assert [m[0] for m in link_speakers(PLAN3, diars, prints, threshold=0.51)] == [0, 1, 2]
    assert [m[0] for m in link_speakers(PLAN3, diars, prints, threshold=0.49)] == [0, 0, 1]


# --- overlap agreement -------------------------------------------------------

# plan_windows(16, 10, 4, 1 s frames): [0,10) and [6,16), cores [0,8) and [8,16);
# shared global frames 6..9.
PLAN2 = plan_windows(16.0, 10.0, 4.0, frame_s=1.0)


def seam_windows() -> list[Diarization]:
    # Window 0: A (local 0) at 0-3, B (local 1) at 5-10 (0.75). Window 1: B (local 0) at
    # global 6-10 (0.5), C (local 1) at global 12-15. B speaks in all four shared frames.
    w0 = diar([(0, 3, 0), (5, 10, 1)], activity(10, 2, {0: (0, 3, 0.875), 1: (5, 10, 0.75)}))
    w1 = diar([(0, 4, 0), (6, 9, 1)], activity(10, 2, {0: (0, 4, 0.5), 1: (6, 9, 0.625)}))
    return [w0, w1]


def test_plan2_layout() -> None:
    assert [(w.start_s, w.end_s, w.core_start_s, w.core_end_s) for w in PLAN2] == [
        (0.0, 10.0, 0.0, 8.0),
        (6.0, 16.0, 8.0, 16.0),
    ]


def test_overlap_alone_links_unfingerprinted_speakers() -> None:
    # No fingerprints at all: B is linked by speaking in the same shared frames in both
    # windows; A and C have no evidence between them and stay separate people.
    assert link_speakers(PLAN2, seam_windows(), [{}, {}]) == [{0: 0, 1: 1}, {0: 1, 1: 2}]


def test_hint_merges_speakers_without_evidence_when_it_must() -> None:
    hints = SpeakerHints(num_speakers=2)
    assert link_speakers(PLAN2, seam_windows(), [{}, {}], hints) == [{0: 0, 1: 1}, {0: 1, 1: 0}]
    # One speaker is impossible (two people share window 0): best effort, 2 speakers.
    hints = SpeakerHints(num_speakers=1)
    assert link_speakers(PLAN2, seam_windows(), [{}, {}], hints) == [{0: 0, 1: 1}, {0: 1, 1: 0}]


def test_overlap_agreement_lifts_a_weak_fingerprint_match() -> None:
    weak = unit(0.3, math.sqrt(1 - 0.09))  # cosine 0.3 with unit(1.0): below the threshold
    prints = [{1: unit(1.0), 0: unit(0.0, 0.0, 1.0)}, {0: weak, 1: unit(0.0, 0.0, 0.0, 1.0)}]
    # Fingerprints only: B's two halves stay apart.
    alone = link_speakers(PLAN2, seam_windows(), prints, overlap_weight=0.0)
    assert alone == [{0: 0, 1: 1}, {0: 2, 1: 3}]
    # With the overlap (Dice 1, weight 1): (0.3 + 1) / 2 = 0.65 > 0.5.
    assert link_speakers(PLAN2, seam_windows(), prints) == [{0: 0, 1: 1}, {0: 1, 1: 2}]


def test_overlap_disagreement_vetoes_a_fingerprint_match() -> None:
    # Window 1's local 0 is silent in the shared frames where window 0's B speaks, so
    # they cannot be the same person despite a 0.9 cosine: (0.9 + 0) / 2 = 0.45.
    w0 = diar([(5, 10, 0)], activity(10, 1, {0: (5, 10, 0.75)}))
    w1 = diar([(6, 9, 0)], activity(10, 1, {0: (6, 9, 0.75)}))  # global 12-15
    close = unit(0.9, math.sqrt(1 - 0.81))
    assert link_speakers(PLAN2, [w0, w1], [{0: unit(1.0)}, {0: close}]) == [{0: 0}, {0: 1}]
    same = link_speakers(PLAN2, [w0, w1], [{0: unit(1.0)}, {0: close}], overlap_weight=0.0)
    assert same == [{0: 0}, {0: 0}]


# --- stitching ---------------------------------------------------------------


def test_stitch_clips_to_cores_relabels_and_merges_across_the_seam() -> None:
    mappings = [{0: 0, 1: 1}, {0: 1, 1: 2}]
    out = stitch(PLAN2, seam_windows(), mappings)
    assert out.duration == 16.0 and out.frame_s == 1.0
    # B: 5-8 from window 0's core and 8-10 from window 1's core, one turn.
    # Its confidence is the mean of the frames that produced it: (3 * 0.75 + 2 * 0.5) / 5.
    assert [(t.start, t.end, t.speaker) for t in out.turns] == [
        (0.0, 3.0, 0),
        (5.0, 10.0, 1),
        (12.0, 15.0, 2),
    ]
    confs = [t.confidence for t in out.turns]
    assert confs == pytest.approx([0.875, 0.65, 0.625], abs=1e-12)
    expected = np.zeros((16, 3))
    expected[0:3, 0] = 0.875
    expected[5:8, 1] = 0.75
    expected[8:10, 1] = 0.5
    expected[12:15, 2] = 0.625
    np.testing.assert_array_equal(out.probs, expected)


def test_stitch_drops_what_only_the_non_core_part_saw() -> None:
    # Window 1 alone hears X at global 6-8 (window 0's core): the core owner wins.
    w0 = diar([], np.zeros((10, 1)))
    w1 = diar([(0, 2, 0)], activity(10, 1, {0: (0, 2, 0.75)}))
    out = stitch(PLAN2, [w0, w1], [{}, {0: 0}])
    assert out.turns == ()
    assert out.probs.shape == (16, 1) and not out.probs.any()


def test_stitch_does_not_mutate_inputs() -> None:
    diars = seam_windows()
    before = [d.probs.copy() for d in diars]
    stitch(PLAN2, diars, [{0: 0, 1: 1}, {0: 1, 1: 2}])
    for d, b in zip(diars, before, strict=True):
        np.testing.assert_array_equal(d.probs, b)


def test_global_voiceprints_are_normalised_means_of_linked_fingerprints() -> None:
    prints = [{0: unit(2.0), 1: unit(0.0, 3.0)}, {0: unit(0.0, 1.0)}, {0: unit(1.0, 1.0)}]
    mappings = [{0: 0, 1: 1}, {0: 1}, {0: 0}]
    out = speaker_voiceprints(prints, mappings)
    assert sorted(out) == [0, 1]
    a = unit(1.0) + unit(1.0, 1.0) / math.sqrt(2)
    np.testing.assert_allclose(out[0], a / np.linalg.norm(a), atol=1e-12)
    np.testing.assert_allclose(out[1], unit(0.0, 1.0), atol=1e-12)
    # Speech-weighted: window 2's speaker talks 3x longer than window 0's.
    diars = [
        diar([(0, 1, 0), (1, 2, 1)], np.zeros((10, 2))),
        diar([(0, 1, 0)], np.zeros((10, 1))),
        diar([(0, 3, 0)], np.zeros((10, 1))),
    ]
    weighted = speaker_voiceprints(prints, mappings, [speech_seconds(d.turns) for d in diars])
    b = unit(1.0) + 3 * unit(1.0, 1.0) / math.sqrt(2)
    np.testing.assert_allclose(weighted[0], b / np.linalg.norm(b), atol=1e-12)
