"""Word speaker attribution, segment splitting and window-merging of transcripts."""

from __future__ import annotations

import numpy as np
import pytest

from voxgraph.attribution import (
    assign_word_speakers,
    merge_window_transcripts,
    split_segments_by_speaker,
)
from voxgraph.types import Segment, Transcript, Turn, Word
from voxgraph.windows import plan_windows

# 1 s frames keep the matrices readable: frame i is [i, i + 1).
TURNS = (Turn(0, 4, 0), Turn(3, 6, 1), Turn(8, 10, 0))


def probs() -> np.ndarray:
    p = np.zeros((10, 2))
    p[0:3, 0] = 0.9
    p[3, 0] = 0.6  # overlap: speaker 1 dominates this frame
    p[3:5, 1] = 0.95
    p[5, 1] = 0.7
    p[8:10, 0] = 0.9
    return p


def speakers(words: list[Word]) -> list[str | None]:
    return [w.speaker for w in words]


def test_probability_mass_decides_overlaps_gaps_go_to_the_nearest_turn() -> None:
    words = [
        Word("alone", 0.5, 1.5),  # only speaker 0's turn
        Word("overlap", 3.1, 3.9),  # both turns; speaker 1 has 0.95 vs 0.6 -> dominant
        Word("gap-early", 6.5, 7.0),  # gap: 0.5 s after speaker 1, 1.0 s before speaker 0
        Word("gap-late", 7.6, 7.9),  # gap: 0.1 s before speaker 0
        Word("straddle", 5.5, 8.5),  # 0.5 s in each turn; frames 5..8: 0.175 vs 0.225
        Word("point", 9.0, 9.0),  # zero length, inside speaker 0's last turn
        Word("after", 10.5, 11.0),  # past every turn
    ]
    out = assign_word_speakers(words, probs(), 1.0, TURNS)
    assert speakers(out) == [
        "Speaker_0",
        "Speaker_1",
        "Speaker_1",
        "Speaker_0",
        "Speaker_0",
        "Speaker_0",
        "Speaker_0",
    ]
    assert [(w.text, w.start, w.end) for w in out] == [(w.text, w.start, w.end) for w in words]
    assert all(w.speaker is None for w in words)  # inputs untouched


def test_equidistant_gap_word_goes_to_the_earlier_turn() -> None:
    out = assign_word_speakers([Word("mid", 6.5, 7.5)], probs(), 1.0, TURNS)
    assert speakers(out) == ["Speaker_1"]


def test_before_the_first_turn() -> None:
    turns = (Turn(2, 3, 1),)
    assert speakers(assign_word_speakers([Word("a", 0, 1)], probs(), 1.0, turns)) == ["Speaker_1"]


def test_no_turns_means_no_speaker() -> None:
    words = [Word("a", 0, 1, speaker="Speaker_3")]
    assert speakers(assign_word_speakers(words, probs(), 1.0, ())) == [None]


def test_without_mass_the_largest_time_overlap_decides() -> None:
    silent = np.zeros((10, 2))
    out = assign_word_speakers([Word("x", 3.0, 4.5), Word("y", 3.5, 3.8)], silent, 1.0, TURNS)
    # x: 1.0 s with speaker 0 (3-4), 1.5 s with speaker 1 (3-4.5). y: a tie -> lower index.
    assert speakers(out) == ["Speaker_1", "Speaker_0"]


def test_string_speakers_and_custom_labels() -> None:
    named = (Turn(0, 2, "alice"), Turn(2, 4, "bob"))
    out = assign_word_speakers([Word("a", 0.2, 1.0), Word("b", 2.5, 3.0)], probs(), 1.0, named)
    assert speakers(out) == ["alice", "bob"]
    out = assign_word_speakers([Word("a", 0.2, 1.0)], probs(), 1.0, TURNS, label=lambda k: f"S{k}")
    assert speakers(out) == ["S0"]


# --- splitting segments ------------------------------------------------------


def split_probs() -> np.ndarray:
    p = np.zeros((14, 2))
    p[0:2, 0] = [0.75, 0.5]
    p[3:6, 1] = [1.0, 0.5, 0.75]
    p[6, 1] = 0.375
    p[8:10, 0] = [0.25, 0.75]
    p[10:14, 0] = 0.5
    p[11, 1] = 1.0
    return p


def test_segments_are_split_at_speaker_changes() -> None:
    hi = (Word("Hi", 0.2, 0.8), Word("there.", 1.0, 1.8))
    yes = (Word("Yes", 3.2, 3.8), Word("indeed.", 4.0, 5.6))
    okay = (Word("Okay.", 8.2, 9.5),)
    aba = (Word("so", 10.1, 10.6), Word("right", 11.1, 11.8), Word("then", 12.2, 12.9))
    segments = [
        Segment("Hi there. Yes indeed.", 0.0, 6.0, hi + yes),
        Segment("", 6.0, 7.0),  # no words: the frames decide
        Segment("Okay.", 8.0, 10.0, okay),
        Segment("So, right, then.", 10.0, 14.0, aba),
    ]
    labelled = [
        *(Word(w.text, w.start, w.end, "Speaker_0") for w in hi),
        *(Word(w.text, w.start, w.end, "Speaker_1") for w in yes),
        Word("Okay.", 8.2, 9.5, "Speaker_0"),
        Word("so", 10.1, 10.6, "Speaker_0"),
        Word("right", 11.1, 11.8, "Speaker_1"),
        Word("then", 12.2, 12.9, "Speaker_0"),
    ]
    out = split_segments_by_speaker(segments, labelled, split_probs(), 1.0)
    assert [(s.text, s.start, s.end, s.speaker) for s in out] == [
        ("Hi there.", 0.0, 1.8, "Speaker_0"),
        ("Yes indeed.", 3.2, 6.0, "Speaker_1"),
        ("", 6.0, 7.0, "Speaker_1"),
        ("Okay.", 8.0, 10.0, "Speaker_0"),  # unsplit: the ASR's own text and span
        ("so", 10.0, 10.6, "Speaker_0"),
        ("right", 11.1, 11.8, "Speaker_1"),
        ("then", 12.2, 14.0, "Speaker_0"),
    ]
    assert [s.speaker_confidence for s in out] == pytest.approx(
        [0.625, 0.75, 0.375, 0.5, 0.5, 1.0, 0.5], abs=1e-12
    )
    assert [[w.text for w in s.words] for s in out][:2] == [["Hi", "there."], ["Yes", "indeed."]]
    assert all(w.speaker for s in out for w in s.words)


def test_segments_without_word_lists_take_words_by_midpoint() -> None:
    labelled = [Word("a", 0.2, 0.8, "Speaker_0"), Word("b", 3.2, 3.8, "Speaker_1")]
    out = split_segments_by_speaker([Segment("a b", 0.0, 4.0)], labelled, split_probs(), 1.0)
    assert [(s.text, s.start, s.end, s.speaker) for s in out] == [
        ("a", 0.0, 0.8, "Speaker_0"),
        ("b", 3.2, 4.0, "Speaker_1"),
    ]


def test_no_speakers_leaves_segments_unlabelled() -> None:
    words = (Word("a", 0.2, 0.8),)
    out = split_segments_by_speaker([Segment("a", 0, 1, words)], list(words), np.zeros((0, 0)), 1.0)
    assert [(s.text, s.speaker, s.speaker_confidence) for s in out] == [("a", None, None)]


# --- merging windowed ASR ----------------------------------------------------

# [0,10) core [0,8) and [6,16) core [8,16): the seam is at 8.0.
PLAN = plan_windows(16.0, 10.0, 4.0, frame_s=1.0)


def transcript(segments: list[tuple[str, list[tuple[str, float, float]]]]) -> Transcript:
    segs = tuple(
        Segment(text, ws[0][1], ws[-1][2], tuple(Word(*w) for w in ws)) for text, ws in segments
    )
    words = tuple(w for s in segs for w in s.words)
    return Transcript(" ".join(s.text for s in segs), words, segs, 10.0)


def merged_words(out: Transcript) -> list[tuple[str, float, float]]:
    return [(w.text, w.start, w.end) for w in out.words]


def test_words_are_owned_by_the_core_holding_their_midpoint() -> None:
    a = transcript(
        [
            ("One, two.", [("One,", 1.0, 1.5), ("two.", 2.0, 2.5)]),
            ("Seven eight nine", [("seven", 6.5, 7.0), ("eight", 7.5, 8.3), ("nine", 8.6, 9.0)]),
            ("te-", [("te-", 9.7, 10.0)]),  # cut by the window edge
        ]
    )
    b = transcript(  # times relative to 6.0
        [
            ("seven eight nine ten", [("seven", 0.5, 1.0), ("eight", 1.5, 2.3),
                                      ("nine", 2.6, 3.0), ("ten", 3.7, 4.2)]),
            ("Eleven.", [("Eleven.", 5.0, 5.5)]),
        ]
    )  # fmt: skip
    out = merge_window_transcripts(PLAN, [a, b])
    assert merged_words(out) == [
        ("One,", 1.0, 1.5),
        ("two.", 2.0, 2.5),
        ("seven", 6.5, 7.0),
        ("eight", 7.5, 8.3),  # midpoint 7.9: window 0's
        ("nine", 8.6, 9.0),  # midpoint 8.8: window 1's
        ("ten", 9.7, 10.2),
        ("Eleven.", 11.0, 11.5),
    ]
    assert [(s.text, s.start, s.end) for s in out.segments] == [
        ("One, two.", 1.0, 2.5),  # fully kept: the ASR's own text
        ("seven eight", 6.5, 8.3),
        ("nine ten", 8.6, 10.2),
        ("Eleven.", 11.0, 11.5),
    ]
    assert out.text == "One, two. seven eight nine ten Eleven."
    assert out.duration == 16.0


def test_a_straddling_word_both_windows_give_away_is_kept_once() -> None:
    a = transcript([("x eight", [("x", 6.0, 6.5), ("eight", 7.7, 8.5)])])  # midpoint 8.1
    b = transcript([("eight y", [("eight", 1.5, 2.3), ("y", 3.0, 3.5)])])  # 7.5-8.3, mid 7.9
    assert merged_words(merge_window_transcripts(PLAN, [a, b])) == [
        ("x", 6.0, 6.5),
        ("eight", 7.7, 8.5),
        ("y", 9.0, 9.5),
    ]


def test_a_word_both_windows_keep_is_not_duplicated() -> None:
    a = transcript([("eight", [("eight", 7.5, 8.3)])])  # midpoint 7.9: kept by window 0
    b = transcript([("eight", [("eight", 1.8, 2.4)])])  # 7.8-8.4, midpoint 8.1: kept by 1
    assert merged_words(merge_window_transcripts(PLAN, [a, b])) == [("eight", 7.5, 8.3)]


def test_repeated_words_at_the_seam_both_survive() -> None:
    a = transcript([("no no", [("no", 7.4, 7.9), ("no", 8.1, 8.6)])])
    b = transcript([("no no", [("no", 1.4, 1.9), ("no", 2.1, 2.6)])])
    out = merge_window_transcripts(PLAN, [a, b])
    assert merged_words(out) == [("no", 7.4, 7.9), ("no", 8.1, 8.6)]
    assert out.text == "no no"


def test_transcripts_without_word_lists_in_segments() -> None:
    a = Transcript(
        "hello world",
        (Word("hello", 1.0, 1.5), Word("world", 2.0, 2.5)),
        (Segment("hello world", 0.5, 3.0), Segment("[noise]", 4.0, 5.0)),
        10.0,
    )
    b = Transcript("", (), (Segment("[music]", 6.0, 7.0),), 10.0)  # global 12-13
    out = merge_window_transcripts(PLAN, [a, b])
    assert [(s.text, s.start, s.end, len(s.words)) for s in out.segments] == [
        ("hello world", 0.5, 3.0, 2),
        ("[noise]", 4.0, 5.0, 0),
        ("[music]", 12.0, 13.0, 0),
    ]
    assert out.text == "hello world [noise] [music]"


def test_single_window_and_no_window() -> None:
    (w,) = plan_windows(5.0, 10.0, 2.0)
    a = transcript([("Hi.", [("Hi.", 0.5, 0.9)])])
    out = merge_window_transcripts([w], [a])
    assert merged_words(out) == [("Hi.", 0.5, 0.9)] and out.text == "Hi."
    assert merge_window_transcripts([], []) == Transcript("", (), (), 0.0)
    with pytest.raises(ValueError):
        merge_window_transcripts([w], [])
