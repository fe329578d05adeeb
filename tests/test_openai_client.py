"""The unchanged `openai` client, pointed at voxgraph, in every response_format."""

from __future__ import annotations

import pytest

from tests.conftest import speechlike, wav_bytes

pytestmark = pytest.mark.integration

WAV = wav_bytes(speechlike(6.0, seed=3))


@pytest.fixture(scope="module")
def client(service):
    from openai import OpenAI

    return OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_openai_transcriptions(client, fmt):
    kwargs = {}
    if fmt == "verbose_json":
        kwargs["timestamp_granularities"] = ["word", "segment"]
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", WAV, "audio/wav"), response_format=fmt, **kwargs
    )
    if fmt == "json":
        assert isinstance(result.text, str)
    elif fmt == "verbose_json":
        assert result.duration == pytest.approx(6.0, abs=0.01)
        assert result.words and all(0 <= w.start <= w.end <= 6.08 for w in result.words)
        assert result.segments and result.segments[0].text
    elif fmt == "text":
        assert isinstance(result, str)
    elif fmt == "srt":
        assert "-->" in result
    else:
        assert result.startswith("WEBVTT")


def test_openai_translation_error(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="cannot translate"):
        client.audio.translations.create(model="whisper-1", file=("clip.wav", WAV, "audio/wav"))


def test_openai_models(client):
    ids = [m.id for m in client.models.list()]
    assert len(ids) == 3 and any(i.endswith("asr.nemo") for i in ids)


def test_openai_diarized_json(client):
    from openai.types.audio import TranscriptionDiarized

    result = client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("clip.wav", WAV, "audio/wav"),
        response_format="diarized_json",
        chunking_strategy="auto",
    )
    assert isinstance(result, TranscriptionDiarized)
    assert result.task == "transcribe" and result.duration == pytest.approx(6.0, abs=0.01)
    assert result.usage and result.usage.type == "duration"
    assert result.segments, "the tiny models emit words for speech-like audio"
    letters = [s.speaker for s in result.segments]
    # Unnamed speakers are A, B, ... in order of first appearance, as OpenAI labels them.
    first_seen = list(dict.fromkeys(letters))
    assert first_seen == [chr(ord("A") + i) for i in range(len(first_seen))]
    assert all(
        s.type == "transcript.text.segment" and 0 <= s.start <= s.end for s in result.segments
    )
    assert result.text == " ".join(s.text for s in result.segments)


def test_openai_server_vad_chunking_and_bad_values(client):
    from openai import BadRequestError

    vad = {"type": "server_vad", "silence_duration_ms": 200, "threshold": 0.5}
    result = client.audio.transcriptions.create(
        model="m",
        file=("c.wav", WAV, "audio/wav"),
        response_format="diarized_json",
        chunking_strategy=vad,
    )
    assert result.segments
    with pytest.raises(BadRequestError, match="threshold"):
        client.audio.transcriptions.create(
            model="m",
            file=("c.wav", WAV, "audio/wav"),
            response_format="diarized_json",
            chunking_strategy={"type": "server_vad", "threshold": 3},
        )
    with pytest.raises(BadRequestError, match="same length"):
        client.audio.transcriptions.create(
            model="m",
            file=("c.wav", WAV, "audio/wav"),
            response_format="diarized_json",
            known_speaker_names=["ann", "bo"],
            known_speaker_references=["data:audio/wav;base64,AA"],
        )
