"""Translation with a NeMo multitask (Canary) model: runner, walk, service, and the graph.

`models/tiny/canary.nemo` is a tiny EncDecMultiTaskModel with the canary2 prompt and
an aggregate CanaryTokenizer (scripts/make_tiny_models.py), fitted to answer a fixed
sentence per *target* language in Canary's timestamp format, whatever the audio: so
transcription (target = source) and translation (target = English) give known texts.
"""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest

from tests.conftest import TINY, deploy_variant, speechlike, wav_bytes
from voxgraph.errors import BadRequest

pytest.importorskip("nemo.collections.asr")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EN = "hello team. the budget is ready."
DE = "hallo team. das projekt ist gut."
FR = "bonjour equipe. le projet est bon."


@pytest.fixture(scope="module")
def canary(tiny_models):
    from voxgraph import models as M

    return M.load_runner("asr", str(TINY / "canary.nemo"), "cpu")


def _clips() -> list[np.ndarray]:
    return [speechlike(3.0, seed=1), speechlike(2.0, seed=2), np.zeros(200, np.float32)]


# ------------------------------------------------------------------ runner


def test_loader_picks_the_canary_runner(canary):
    from voxgraph import models as M

    assert isinstance(canary, M.CanaryRunner)
    assert canary.capabilities["translate"] is True
    assert canary.capabilities["language_required"] is True
    assert canary.capabilities["keywords"] is False
    assert canary.languages == ("de", "en", "es", "fr")


def test_transcribe_and_translate_give_transcripts(canary):
    clips = _clips()
    de = canary.transcribe(clips, language="de")
    en = canary.transcribe(clips, language="de", task="translate")
    assert [t.text for t in de] == [DE, DE, ""]
    assert [t.text for t in en] == [EN, EN, ""]
    for t, clip in zip(de + en, clips + clips, strict=True):
        assert t.duration == pytest.approx(len(clip) / 16000)
        for seg in t.segments:
            assert 0.0 <= seg.start <= seg.end <= t.duration
        for w in t.words:
            assert math.isfinite(w.start) and math.isfinite(w.end) and w.start <= w.end
    # Canary's timestamp tokens give words and "."-ended segments.
    assert [s.text for s in en[0].segments] == ["hello team.", "the budget is ready."]
    assert [w.text for w in en[0].words][:2] == ["hello", "team."]


def test_mixed_batch_equals_each_alone(canary):
    from voxgraph import models as M

    clips = [*_clips()[:2], speechlike(2.5, seed=3)]
    tasks = [("de", "translate"), ("fr", "transcribe"), ("de", "translate")]
    mixed = M.transcribe_grouped(canary, clips, [None] * 3, tasks)
    alone = [
        canary.transcribe([c], language=lang, task=task)[0]
        for c, (lang, task) in zip(clips, tasks, strict=True)
    ]
    assert mixed == alone
    assert [t.text for t in mixed] == [EN, FR, EN]


def test_runner_refuses_missing_or_unknown_language(canary):
    with pytest.raises(BadRequest, match="language is required"):
        canary.transcribe(_clips()[:1])
    with pytest.raises(BadRequest, match="not supported"):
        canary.transcribe(_clips()[:1], language="ja")


def test_degenerate_stamps_never_give_nan(canary):
    from types import SimpleNamespace

    hyp = SimpleNamespace(
        text="a <|3|> b",
        timestamp={
            "word": [
                {"word": "a", "start": float("nan"), "end": 0.2},
                {"word": "b", "start": 0.5, "end": 0.1},
            ],
            "segment": [],
        },
    )
    t = canary._canary_transcript(hyp, 1.0)
    assert [(w.text, w.start, w.end) for w in t.words] == [("b", 0.5, 0.5)]
    plain = canary._canary_transcript(SimpleNamespace(text="x <|4|> y", timestamp={}), 2.0)
    assert plain.text == "x y" and [(s.start, s.end) for s in plain.segments] == [(0.0, 2.0)]


# ------------------------------------------------------------------ the walk, in process


@pytest.fixture(scope="module")
def services(tiny_models, tmp_path_factory):
    """VoxgraphService over the tiny models in this process: Canary and Parakeet as ASR."""
    from voxgraph.local import InProcessBackends
    from voxgraph.service import VoxgraphService
    from voxgraph.settings import Settings

    db = tmp_path_factory.mktemp("tr") / "speakers.db"
    settings = Settings.load({"speakers_db": f"sqlite:///{db}"})
    out = {}
    for name, asr in (("canary", "canary.nemo"), ("parakeet", "asr.nemo")):
        models = {
            "asr": str(TINY / asr),
            "diarizer": str(TINY / "diarizer.nemo"),
            "embedder": str(TINY / "embedder.nemo"),
        }
        out[name] = VoxgraphService(InProcessBackends().load(models), settings)
    return out


WAV = wav_bytes(speechlike(6.0, seed=7))


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_translation_every_format(services, fmt):
    svc = services["canary"]
    out = asyncio.run(svc.translate(WAV, language="de", response_format=fmt))
    if fmt == "json":
        assert out == {"text": EN}
    elif fmt == "text":
        assert out == EN
    elif fmt == "verbose_json":
        assert out["task"] == "translate" and out["language"] == "english"
        assert out["text"] == EN and out["duration"] == pytest.approx(6.0)
        assert [s["text"] for s in out["segments"]] == ["hello team.", "the budget is ready."]
    elif fmt == "srt":
        assert out.startswith("1\n00:00:00,080 --> 00:00:00,480\nhello team.")
    else:
        assert out.startswith("WEBVTT") and "the budget is ready." in out


def test_translation_with_speakers(services):
    svc = services["canary"]
    out = asyncio.run(
        svc.translate(
            WAV,
            language="fr",
            response_format="verbose_json",
            diarize=True,
            **{"timestamp_granularities[]": ["word", "segment"]},
        )
    )
    assert out["task"] == "translate" and out["text"] == EN
    assert out["segments"] and all(s["speaker"].startswith("Speaker_") for s in out["segments"])
    assert out["words"] and all(w["speaker"].startswith("Speaker_") for w in out["words"])
    srt = asyncio.run(svc.translate(WAV, language="fr", response_format="srt", diarize=True))
    assert "[Speaker_" in srt


def test_transcription_uses_the_source_language(services):
    svc = services["canary"]
    out = asyncio.run(svc.transcribe(WAV, language="de", response_format="verbose_json"))
    assert out["task"] == "transcribe" and out["language"] == "de" and out["text"] == DE


def test_canary_needs_a_language(services):
    svc = services["canary"]
    with pytest.raises(BadRequest, match=r"language is required.*de, en, es, fr"):
        asyncio.run(svc.translate(WAV))
    with pytest.raises(BadRequest, match="language is required"):
        asyncio.run(svc.transcribe(WAV))
    with pytest.raises(BadRequest, match="'it' is not supported"):
        asyncio.run(svc.translate(WAV, language="it"))


def test_parakeet_still_cannot_translate(services):
    svc = services["parakeet"]
    with pytest.raises(BadRequest, match="cannot translate"):
        asyncio.run(svc.translate(WAV, language="de"))
    # and its transcriptions take no prompt: language only validates, as before
    out = asyncio.run(svc.transcribe(WAV, language="en", response_format="verbose_json"))
    assert out["language"] == "en"


# ------------------------------------------------------------------ through Ray

CANARY_APP, CANARY_PREFIX = "voxgraph-canary", "/canary"


@pytest.mark.integration
def test_translation_through_the_graph(service):
    from ray import serve

    url = deploy_variant(
        service, CANARY_APP, CANARY_PREFIX, asr={"model": str(TINY / "canary.nemo")}
    )
    try:
        files = {"file": ("clip.wav", WAV, "audio/wav")}
        r = httpx.post(
            f"{url}/v1/audio/translations",
            files=files,
            data={"language": "de", "response_format": "verbose_json", "diarize": "true"},
            timeout=300,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "translate" and body["language"] == "english"
        assert body["text"] == EN
        assert all(s["speaker"].startswith("Speaker_") for s in body["segments"])
        r = httpx.post(f"{url}/v1/audio/translations", files=files, timeout=300)
        assert r.status_code == 400 and "language is required" in r.json()["error"]["message"]
        r = httpx.post(
            f"{url}/v1/audio/transcriptions", files=files, data={"language": "fr"}, timeout=300
        )
        assert r.status_code == 200 and r.json() == {"text": FR}
    finally:
        serve.delete(CANARY_APP)
