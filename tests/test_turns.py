"""Confidence and turn parsing on hand-made inputs with exact answers."""

import numpy as np
import pytest

from voxgraph.turns import (
    frame_span,
    parse_nemo_segment,
    speaker_clips,
    speech_seconds,
    turn_confidence,
    with_confidence,
)
from voxgraph.types import Turn

F = 0.08


def test_parse_nemo_segment():
    assert parse_nemo_segment("0.24 1.36 speaker_0") == Turn(0.24, 1.36, 0)
    assert parse_nemo_segment("  12.00   13.04 speaker_3 ") == Turn(12.0, 13.04, 3)
    with pytest.raises(ValueError):
        parse_nemo_segment("0.24 1.36 spk0")


def test_frame_span_snaps_rounded_boundaries():
    # 1.36 / 0.08 = 16.999999...: the turn ends at frame 17, it does not spill into frame 17.
    assert frame_span(0.24, 1.36, F, 100) == (3, 17)
    assert frame_span(0.0, 0.08, F, 100) == (0, 1)
    # A boundary inside a frame covers that frame.
    assert frame_span(0.1, 0.2, F, 100) == (1, 3)
    assert frame_span(7.0, 9.0, F, 100) == (87, 100)


def test_confidence_is_mean_of_assigned_speaker_frames():
    probs = np.zeros((10, 4), dtype=np.float32)
    probs[2:6, 1] = [0.9, 0.8, 0.7, 0.6]
    probs[2:6, 0] = 0.99  # another speaker's activity must not leak in
    turn = Turn(0.16, 0.48, 1)
    assert turn_confidence(probs, F, turn) == pytest.approx(0.75, abs=1e-7)


def test_confidence_none_when_underivable():
    probs = np.full((5, 4), 0.5, dtype=np.float32)
    assert turn_confidence(probs, F, Turn(1.0, 2.0, 0)) is None  # beyond the matrix
    assert turn_confidence(probs, F, Turn(0.1, 0.1, 0)) is None  # empty span
    assert turn_confidence(probs, F, Turn(0.0, 0.2, 7)) is None  # no such speaker
    assert turn_confidence(probs, F, Turn(0.0, 0.2, "Speaker_0")) is None  # label, not index
    assert turn_confidence(np.zeros((0, 4)), F, Turn(0.0, 0.2, 0)) is None


def test_with_confidence_returns_new_turns():
    probs = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 0.25]], dtype=np.float32)
    turns = [Turn(0.0, 0.16, 0), Turn(0.16, 0.24, 1)]
    out = with_confidence(turns, probs, F)
    assert [t.confidence for t in out] == [pytest.approx(0.75), pytest.approx(0.25)]
    assert turns[0].confidence is None  # inputs untouched


def test_speaker_clips_and_speech_seconds():
    sr = 16000
    samples = np.arange(3 * sr, dtype=np.float32)
    turns = [Turn(0.0, 0.3, 0), Turn(1.0, 1.3, 0), Turn(2.0, 2.2, 1)]
    clips = speaker_clips(samples, turns, min_speech_s=0.5)
    assert set(clips) == {0}  # speaker 1 has 0.2 s only
    assert len(clips[0]) == int(0.6 * sr)
    assert clips[0][0] == 0 and clips[0][int(0.3 * sr)] == sr  # second turn starts at 1.0 s
    assert speech_seconds(turns) == {0: pytest.approx(0.6), 1: pytest.approx(0.2)}


def test_speaker_clips_cap_keeps_the_longest_turns_in_time_order():
    sr = 100
    samples = np.arange(60 * sr, dtype=np.float32)
    # Speaker 0: turns of 2, 10, 4 and 8 s; speaker 1: 3 s, under the cap.
    turns = [
        Turn(0.0, 2.0, 0),
        Turn(5.0, 15.0, 0),
        Turn(20.0, 24.0, 0),
        Turn(30.0, 38.0, 0),
        Turn(40.0, 43.0, 1),
    ]
    clips = speaker_clips(samples, turns, min_speech_s=0.5, sample_rate=sr, max_speech_s=12.0)
    # The 10 s turn whole, then 2 s of the 8 s one; in time order, the 2 s and 4 s turns left out.
    want = np.concatenate([samples[5 * sr : 15 * sr], samples[30 * sr : 32 * sr]])
    np.testing.assert_array_equal(clips[0], want)
    np.testing.assert_array_equal(clips[1], samples[40 * sr : 43 * sr])
    # No cap: everything, as before; the minimum applies to all of a speaker's speech.
    whole = speaker_clips(samples, turns, min_speech_s=0.5, sample_rate=sr)
    assert len(whole[0]) == 24 * sr
    capped = speaker_clips(samples, turns, min_speech_s=3.5, sample_rate=sr, max_speech_s=1.0)
    assert set(capped) == {0} and len(capped[0]) == 1 * sr
