"""The real graph (Ray Serve + tiny NeMo models) over HTTP and through the handle."""

from __future__ import annotations

import io
import math
import os
import tempfile

import httpx
import numpy as np
import pytest

from tests.conftest import SR, speechlike, wav_bytes
from voxgraph.audio import decode_audio
from voxgraph.errors import BadRequest
from voxgraph.turns import turn_confidence
from voxgraph.types import Turn

pytestmark = pytest.mark.integration

AUDIO = speechlike(12.0, seed=1)
WAV = wav_bytes(AUDIO)


def post(service, route, data: bytes | None = WAV, timeout=120, **fields):
    files = {"file": ("clip.wav", data, "audio/wav")} if data is not None else None
    # httpx wants form lists as repeated fields: keep lists as they are.
    return httpx.post(f"{service.url}{route}", files=files, data=fields, timeout=timeout)


# ------------------------------------------------------------------ metadata routes


def test_health_root_models(service):
    r = httpx.get(f"{service.url}/health", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert {d["state"] for d in body["deployments"].values()} == {"ready"}
    root = httpx.get(f"{service.url}/", timeout=30).json()
    assert root["service"] == "voxgraph"
    assert root["models"]["asr"]["model"].endswith("asr.nemo")
    assert root["models"]["diarizer"]["device"] == "cpu"
    assert "POST /v1/audio/diarize-chunk" in root["routes"]
    models = httpx.get(f"{service.url}/v1/models", timeout=30).json()
    assert models["object"] == "list"
    assert {m["role"] for m in models["data"]} == {"asr", "diarizer", "embedder"}
    assert all(m["object"] == "model" and m["owned_by"] for m in models["data"])
    spec = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    assert "/v1/audio/transcriptions" in spec["paths"]


# ------------------------------------------------------------------ transcriptions


def _check_times(items, duration):
    for it in items:
        assert 0 <= it["start"] <= it["end"] <= duration + 0.08, it


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcription_formats(service, fmt):
    fields = {"model": "whisper-1", "response_format": fmt}
    if fmt == "verbose_json":
        fields["timestamp_granularities[]"] = ["word", "segment"]
    r = post(service, "/v1/audio/transcriptions", **fields)
    assert r.status_code == 200, r.text
    if fmt == "json":
        assert isinstance(r.json()["text"], str)
    elif fmt == "text":
        assert r.headers["content-type"].startswith("text/plain")
    elif fmt == "verbose_json":
        body = r.json()
        assert body["duration"] == pytest.approx(12.0, abs=0.01)
        assert body["words"], "the tiny ASR model is built to emit tokens"
        _check_times(body["words"], 12.0)
        _check_times(body["segments"], 12.0)
        assert " ".join(w["word"] for w in body["words"]) == body["text"]
    elif fmt == "srt":
        assert r.text.startswith("1\n00:00:") and " --> " in r.text
    else:
        assert r.text.startswith("WEBVTT")


def test_transcription_matches_handle(service):
    http = post(service, "/v1/audio/transcriptions", response_format="verbose_json").json()
    handle = service.handle.transcribe.remote(WAV, response_format="verbose_json").result()
    assert handle["text"] == http["text"]
    assert handle["segments"] == http["segments"]


def test_translation_is_a_clear_400(service):
    r = post(service, "/v1/audio/translations")
    assert r.status_code == 400
    assert "cannot translate" in r.json()["error"]["message"]


# ------------------------------------------------------------------ diarization


def _local_probs(service, samples):
    diar = service.deployment("Diarizer").diarize.remote(samples).result()
    assert diar.probs.shape == (math.ceil(len(samples) / SR / diar.frame_s), 4)
    return diar


def test_diarize_confidence_is_recomputable(service):
    r = post(service, "/v1/audio/diarize")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration"] == pytest.approx(12.0, abs=0.01)
    assert body["model"].endswith("diarizer.nemo") and body["device"] == "cpu"
    assert set(body["speakers_detected"]) == {s["speaker"] for s in body["segments"]}
    diar = _local_probs(service, decode_audio(WAV))
    # One window: global speakers are the model's local ones, renumbered by first appearance.
    assert len(body["segments"]) == len(diar.turns)
    for seg in body["segments"]:
        assert 0 <= seg["start_s"] < seg["end_s"] <= 12.0 + 0.08
        assert seg["confidence"] is not None and 0.0 <= seg["confidence"] <= 1.0
        # The confidence equals the mean of some local speaker's frames over the turn.
        candidates = [
            turn_confidence(diar.probs, diar.frame_s, Turn(seg["start_s"], seg["end_s"], k))
            for k in range(diar.probs.shape[1])
        ]
        assert min(abs(c - seg["confidence"]) for c in candidates) < 1e-3


def test_diarize_chunk_fingerprints(service):
    r = post(service, "/v1/audio/diarize-chunk")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"] == {
        "diarization": body["model"],
        "embedding": body["models"]["embedding"],
    }
    assert body["models"]["embedding"].endswith("embedder.nemo")
    diar = _local_probs(service, decode_audio(WAV))
    # Exactly the local speakers with >= 0.5 s of speech get a fingerprint.
    speech: dict[int, float] = {}
    for t in diar.turns:
        speech[t.speaker] = speech.get(t.speaker, 0.0) + t.end - t.start
    expected = {f"Speaker_{k}" for k, s in speech.items() if s >= 0.5 - 1e-6}
    assert set(body["fingerprints"]) == expected
    assert expected, "the test audio should give at least one speaker with 0.5 s of speech"
    for vec in body["fingerprints"].values():
        assert len(vec) == 192
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
    for seg in body["segments"]:
        k = int(seg["speaker"].split("_")[1])
        want = turn_confidence(diar.probs, diar.frame_s, Turn(seg["start_s"], seg["end_s"], k))
        assert seg["confidence"] == pytest.approx(want, abs=1e-4)


def test_diarize_rttm_and_handle(service):
    r = post(service, "/v1/audio/diarize", response_format="rttm")
    assert r.status_code == 200
    lines = [ln for ln in r.text.splitlines() if ln]
    assert all(ln.startswith("SPEAKER clip 1 ") and ln.endswith("<NA> <NA>") for ln in lines)
    body = service.handle.diarize.remote(WAV).result()
    assert len(lines) == len(body["segments"])
    chunk = service.handle.diarize_chunk.remote(WAV).result()
    assert set(chunk) >= {"segments", "speakers_detected", "fingerprints", "models", "duration"}


def test_embedder_batch_shape(service):
    clips = [speechlike(1.0, seed=s) for s in range(3)]
    embs = service.deployment("Embedder").embed.remote(clips).result()
    assert embs.shape == (3, 192) and embs.dtype == np.float32


# ------------------------------------------------------------------ input edge cases


@pytest.mark.parametrize("route", ["/v1/audio/transcriptions", "/v1/audio/diarize"])
def test_silence_and_tiny_clips_are_empty_200(service, route):
    for samples in (np.zeros(SR * 3, dtype=np.float32), np.zeros(160, dtype=np.float32)):
        r = post(service, route, data=wav_bytes(samples), response_format="json")
        assert r.status_code == 200, r.text


def test_other_rates_and_formats(service):
    stereo = np.stack([AUDIO, AUDIO], axis=1)
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, stereo[: 44100 * 3], 44100, format="FLAC")
    r = post(
        service, "/v1/audio/transcriptions", data=buf.getvalue(), response_format="verbose_json"
    )
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(3.0, abs=0.01)


def _tmp_listing():
    return set(os.listdir(tempfile.gettempdir()))


@pytest.mark.parametrize(
    ("fields", "data", "status", "needle"),
    [
        ({}, None, 400, "file"),
        ({}, b"", 400, "empty"),
        ({}, b"\x00", 400, "decode"),
        ({}, b"this is not audio at all" * 20, 400, "decode"),
        ({"response_format": "xml"}, WAV, 400, "response_format"),
        ({"language": "klingon"}, WAV, 400, "language"),
        ({"temperature": "hot"}, WAV, 400, "temperature"),
        ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, WAV, 400, "speakers"),
        ({"diarize": "true", "num_speakers": "-1"}, WAV, 400, "num_speakers"),
    ],
)
def test_bad_input_is_a_clear_4xx(service, fields, data, status, needle):
    before = _tmp_listing()
    r = post(service, "/v1/audio/transcriptions", data=data, **fields)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"].lower()
    assert _tmp_listing() - before == set()


def test_upload_limit_413(service):
    big = b"\0" * (9 * 1024 * 1024)
    r = post(service, "/v1/audio/diarize-chunk", data=big)
    assert r.status_code == 413
    assert "8 MB" in r.json()["error"]["message"]


def test_handle_errors_are_typed(service):
    with pytest.raises(BadRequest):
        service.handle.transcribe.remote(b"", response_format="json").result()
    with pytest.raises(BadRequest):
        service.handle.diarize.remote(WAV, response_format="srt").result()


def test_still_healthy_after_errors(service):
    assert httpx.get(f"{service.url}/health", timeout=30).status_code == 200
    assert post(service, "/v1/audio/diarize-chunk").status_code == 200
