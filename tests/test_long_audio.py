"""A several-minute recording through the real graph: windows, global speakers, seams."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import speechlike, wav_bytes
from voxgraph.windows import plan_windows

pytestmark = pytest.mark.integration

DURATION = 240.0  # tiny config: 90 s diarization windows, 120 s ASR windows
WAV = wav_bytes(speechlike(DURATION, seed=11))
LABEL = re.compile(r"^Speaker_(\d+)$")


def post(service, route, **fields):
    files = {"file": ("meeting.wav", WAV, "audio/wav")}
    r = httpx.post(f"{service.url}{route}", files=files, data=fields, timeout=300)
    assert r.status_code == 200, r.text
    return r


def _first_appearance_order(labels: list[str]) -> None:
    """Global labels are Speaker_0..G-1, numbered by first appearance in time."""
    seen: list[int] = []
    for label in labels:
        m = LABEL.match(label)
        assert m, label
        k = int(m.group(1))
        if k not in seen:
            seen.append(k)
    assert seen == list(range(len(seen))), seen


@pytest.fixture(scope="module")
def plans(service):
    # Read the windows the deployed app uses from its own settings.
    settings = service.handle.describe.remote().result()
    assert settings["service"] == "voxgraph"
    diar = plan_windows(DURATION, 90, 10)
    asr = plan_windows(DURATION, 120, 8)
    assert len(diar) >= 3 and len(asr) >= 2
    return diar, asr


@pytest.fixture(scope="module")
def diarized(service) -> dict:
    return post(service, "/v1/audio/diarize").json()


def test_diarize_long_recording(plans, diarized):
    diar_windows, _ = plans
    body = diarized
    turns = body["segments"]
    assert body["duration"] == pytest.approx(DURATION, abs=0.01)
    assert turns, "the tiny diarizer finds turns on speech-like audio"
    _first_appearance_order([t["speaker"] for t in sorted(turns, key=lambda t: t["start_s"])])
    assert set(body["speakers_detected"]) == {t["speaker"] for t in turns}
    for t in turns:
        assert 0 <= t["start_s"] < t["end_s"] <= DURATION + 0.08
        assert t["confidence"] is None or 0 <= t["confidence"] <= 1
    # Every window was diarized: turns start in the first and the last window's core.
    first, last = diar_windows[0], diar_windows[-1]
    assert any(first.core_start_s <= t["start_s"] < first.core_end_s for t in turns)
    assert any(last.core_start_s <= t["end_s"] <= last.core_end_s + 0.08 for t in turns)


def test_rttm_of_long_recording_parses(service, diarized, tmp_path):
    from pyannote.database.util import load_rttm

    js = diarized
    text = post(service, "/v1/audio/diarize", response_format="rttm").text
    path = tmp_path / "meeting.rttm"
    path.write_text(text)
    annotation = load_rttm(str(path))["meeting"]
    assert sorted(annotation.labels()) == sorted(js["speakers_detected"])
    assert len(text.splitlines()) == len(js["segments"])


def test_transcription_with_speakers_long(service, plans, diarized):
    _, asr_windows = plans
    body = post(
        service,
        "/v1/audio/transcriptions",
        diarize="true",
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    ).json()
    words, segments = body["words"], body["segments"]
    assert words and segments
    # Every word carries a speaker; every segment a speaker and a confidence.
    assert all(LABEL.match(w["speaker"]) for w in words)
    assert all(LABEL.match(s["speaker"]) for s in segments)
    assert all(
        s["speaker_confidence"] is None or 0 <= s["speaker_confidence"] <= 1 for s in segments
    )
    # Labels come from the whole-file diarization; a speaker may have turns but no words.
    assert {s["speaker"] for s in segments} <= set(diarized["speakers_detected"])
    # Words from every ASR window, in time order, none duplicated at a seam.
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert any(w["start"] >= asr_windows[-1].core_start_s for w in words)
    keys = [(w["word"], round(w["start"], 2)) for w in words]
    assert len(keys) == len(set(keys))
    # A segment never spans two speakers: each word lies in a segment of its own speaker.
    for w in words:
        mid = (w["start"] + w["end"]) / 2
        holders = [s for s in segments if s["start"] - 1e-3 <= mid <= s["end"] + 1e-3]
        assert holders and all(s["speaker"] == w["speaker"] for s in holders), w


def test_speaker_formats_long(service):
    # One format over the long file; test_app covers each format on a short clip.
    text = post(service, "/v1/audio/transcriptions", diarize="true", response_format="srt").text
    assert re.search(r"^\[Speaker_\d+\] ", text, re.M)


def test_hints_accepted_and_validated(service):
    r = httpx.post(
        f"{service.url}/v1/audio/diarize",
        files={"file": ("m.wav", WAV, "audio/wav")},
        data={"min_speakers": "4", "max_speakers": "2"},
        timeout=60,
    )
    assert r.status_code == 400 and "speakers" in r.json()["error"]["message"]
