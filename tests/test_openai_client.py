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
