"""SRT/VTT/text/RTTM rendering with exact strings."""

import pytest

from voxgraph.formats import (
    DiarizationOutput,
    TranscriptionOutput,
    rttm_lines,
    srt_time,
    vtt_time,
)
from voxgraph.types import Segment, Transcript, Turn, Word


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.5, "00:00:01,500", "00:00:01.500"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3661.042, "01:01:01,042", "01:01:01.042"),
        (-0.2, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_clock_strings(seconds, srt, vtt):
    assert srt_time(seconds) == srt
    assert vtt_time(seconds) == vtt


def _transcript(speakers=False):
    a, b = ("Speaker_0", "Speaker_1") if speakers else (None, None)
    words = (
        Word("hello", 0.0, 0.4, a),
        Word("there.", 0.5, 0.9, a),
        Word("hi", 1.2, 1.5, b),
    )
    segs = (
        Segment("hello there.", 0.0, 0.9, words[:2], a, 0.9 if speakers else None),
        Segment("hi", 1.2, 1.5, words[2:], b, 0.8 if speakers else None),
    )
    return Transcript("hello there. hi", words, segs, 2.0)


def test_srt_and_vtt():
    out = TranscriptionOutput(_transcript(), model="m")
    assert out.render("srt") == (
        "1\n00:00:00,000 --> 00:00:00,900\nhello there.\n\n2\n00:00:01,200 --> 00:00:01,500\nhi\n"
    )
    assert out.render("vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:00.900\nhello there.\n\n"
        "00:00:01.200 --> 00:00:01.500\nhi\n"
    )


def test_speaker_formats():
    out = TranscriptionOutput(_transcript(speakers=True), model="m", diarized=True)
    assert "[Speaker_0] hello there." in out.render("srt")
    assert "<v Speaker_1>hi</v>" in out.render("vtt")
    assert out.render("text") == "Speaker_0: hello there.\nSpeaker_1: hi"
    js = out.render("json")
    assert js["text"] == "Speaker_0: hello there.\nSpeaker_1: hi"
    assert [s["speaker"] for s in js["segments"]] == ["Speaker_0", "Speaker_1"]
    assert js["segments"][0]["speaker_confidence"] == 0.9


def test_verbose_json_granularities():
    out = TranscriptionOutput(_transcript(), model="m", language="en", granularities=("word",))
    v = out.render("verbose_json")
    assert v["task"] == "transcribe" and v["language"] == "en" and v["duration"] == 2.0
    assert "segments" not in v
    assert v["words"] == [
        {"word": "hello", "start": 0.0, "end": 0.4},
        {"word": "there.", "start": 0.5, "end": 0.9},
        {"word": "hi", "start": 1.2, "end": 1.5},
    ]
    both = TranscriptionOutput(_transcript(), model="m", granularities=("word", "segment"))
    assert len(both.render("verbose_json")["segments"]) == 2
    assert TranscriptionOutput(_transcript(), model="m").render("json") == {
        "text": "hello there. hi"
    }
    with pytest.raises(ValueError):
        out.render("xml")


def test_vtt_escapes_markup():
    t = Transcript("a<b", (), (Segment("a<b & c", 0.0, 1.0),), 1.0)
    assert "a&lt;b &amp; c" in TranscriptionOutput(t, model="m").render("vtt")


def test_rttm_and_diarization_json():
    turns = (Turn(0.5, 1.75, "Speaker_0", 0.9), Turn(2.0, 2.5, "Speaker_1", None))
    assert rttm_lines(turns, "my file") == (
        "SPEAKER my_file 1 0.500 1.250 <NA> <NA> Speaker_0 <NA> <NA>\n"
        "SPEAKER my_file 1 2.000 0.500 <NA> <NA> Speaker_1 <NA> <NA>\n"
    )
    out = DiarizationOutput(turns, duration=3.0, model="m", device="cpu")
    js = out.render("json")
    assert js == {
        "segments": [
            {"start_s": 0.5, "end_s": 1.75, "speaker": "Speaker_0", "confidence": 0.9},
            {"start_s": 2.0, "end_s": 2.5, "speaker": "Speaker_1", "confidence": None},
        ],
        "speakers_detected": ["Speaker_0", "Speaker_1"],
        "duration": 3.0,
        "model": "m",
        "device": "cpu",
    }
    assert out.render("rttm", "x") == rttm_lines(turns, "x")


def test_speakers_sorted_numerically():
    turns = tuple(Turn(float(i), float(i) + 0.5, f"Speaker_{k}") for i, k in enumerate([10, 2, 0]))
    assert DiarizationOutput(turns, 12.0, "m", "cpu").speakers == [
        "Speaker_0",
        "Speaker_2",
        "Speaker_10",
    ]


def test_rttm_loads_with_pyannote(tmp_path):
    from pyannote.database.util import load_rttm

    turns = (Turn(0.5, 1.75, "Speaker_0"), Turn(2.0, 2.5, "Speaker_1"))
    path = tmp_path / "x.rttm"
    path.write_text(rttm_lines(turns, "x"))
    ann = load_rttm(str(path))["x"]
    assert sorted(ann.labels()) == ["Speaker_0", "Speaker_1"]
    assert ann.label_duration("Speaker_0") == pytest.approx(1.25)
