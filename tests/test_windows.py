"""Window planning: frame-aligned starts, cores that tile the recording, no slivers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxgraph.windows import Window, plan_windows, window_samples

FRAME = 0.08


def spans(windows: list[Window]) -> list[tuple[float, float, float, float]]:
    return [(w.start_s, w.end_s, w.core_start_s, w.core_end_s) for w in windows]


def test_short_audio_is_one_window() -> None:
    assert plan_windows(42.5, 90, 10) == [Window(0, 0.0, 42.5, 0.0, 42.5)]
    assert plan_windows(90.0, 90, 10) == [Window(0, 0.0, 90.0, 0.0, 90.0)]
    assert plan_windows(0.01, 90, 10) == [Window(0, 0.0, 0.01, 0.0, 0.01)]


def test_empty_audio_has_no_window() -> None:
    assert plan_windows(0.0, 90, 10) == []


@pytest.mark.parametrize(
    ("duration", "window", "overlap"),
    [
        (-1.0, 90, 10),
        (100, 0, 0),
        (100, 90, -1),
        (100, 10, 10),
        (100, 10, 12),
        (float("nan"), 9, 1),
    ],
)
def test_bad_plans_raise(duration: float, window: float, overlap: float) -> None:
    with pytest.raises(ValueError):
        plan_windows(duration, window, overlap)


def test_exact_fit() -> None:
    # 300 s = 90 + 3 hops of 70 s: the overlaps are exactly 10 s, split at 5 s.
    assert spans(plan_windows(300.0, 90, 10)) == [
        (0.0, 90.0, 0.0, 80.0),
        (70.0, 160.0, 80.0, 150.0),
        (140.0, 230.0, 150.0, 220.0),
        (210.0, 300.0, 220.0, 300.0),
    ]


def test_overlap_midpoint_is_rounded_to_a_frame() -> None:
    # Overlap [80, 90) is 125 frames: its midpoint frame is 1062 (84.96 s), not 85.0.
    assert spans(plan_windows(170.0, 90, 10)) == [
        (0.0, 90.0, 0.0, 84.96),
        (80.0, 170.0, 84.96, 170.0),
    ]


def test_no_sliver_spare_length_goes_to_overlaps() -> None:
    # A naive 70 s hop would leave a 0.1 s last window; instead both windows are full.
    assert spans(plan_windows(90.1, 90, 10)) == [
        (0.0, 90.0, 0.0, 45.04),
        (0.16, 90.1, 45.04, 90.1),
    ]


@pytest.mark.parametrize("duration", [90.5, 100.0, 161.13, 599.99, 1234.56, 3600.0, 7201.37])
@pytest.mark.parametrize(
    ("window", "overlap"), [(90.0, 10.0), (30.0, 6.0), (300.0, 10.0), (60.0, 0.0)]
)
def test_plan_invariants(duration: float, window: float, overlap: float) -> None:
    plan = plan_windows(duration, window, overlap, FRAME)
    assert (len(plan) == 1) == (duration <= window)
    assert [w.index for w in plan] == list(range(len(plan)))
    assert plan[0].start_s == 0.0 and plan[0].core_start_s == 0.0
    assert plan[-1].end_s == duration and plan[-1].core_end_s == duration
    for w in plan:
        for t in (w.start_s, w.core_start_s):
            assert abs(t / FRAME - round(t / FRAME)) < 1e-6, t
        assert w.start_s <= w.core_start_s < w.core_end_s <= w.end_s
        assert w.end_s - w.start_s <= window + 1e-9
        # No sliver: every window is full length to within one frame.
        assert w.end_s - w.start_s >= min(duration, window - 2 * FRAME)
    for a, b in itertools.pairwise(plan):
        assert a.core_end_s == b.core_start_s  # no gap, no double ownership
        assert a.end_s - b.start_s >= overlap - 1e-9
        if len(plan) > 2:
            # Only neighbours overlap, so each instant is in at most two windows.
            assert b.start_s > 0 and b.end_s > a.end_s
    core_total = sum(w.core_end_s - w.core_start_s for w in plan)
    assert core_total == pytest.approx(duration, abs=1e-6)


def test_in_core_ownership_is_exclusive() -> None:
    plan = plan_windows(300.0, 90, 10)
    for t in np.arange(0.0, 300.0, 0.04):
        owners = [
            w.index
            for w in plan
            if w.in_core(float(t), first=w.index == 0, last=w.index == len(plan) - 1)
        ]
        assert len(owners) == 1, (t, owners)
    assert plan[1].in_core(80.0) and not plan[0].in_core(80.0)


def test_window_samples_is_a_view_of_the_window() -> None:
    samples = np.arange(16_000 * 200, dtype=np.float32)
    w = plan_windows(200.0, 90, 10)[1]
    piece = window_samples(samples, w)
    assert len(piece) == round((w.end_s - w.start_s) * 16_000)
    assert piece[0] == samples[round(w.start_s * 16_000)]
    assert np.shares_memory(piece, samples)
