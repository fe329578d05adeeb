"""Hotwords (`keywords[]`): validation, plumbing, per-request isolation, and NeMo's boosting.

The tiny Parakeet TDT (random weights) is no judge of accuracy; what these tests
show is that its greedy decoding really goes through NeMo's boosting tree (a
token it never says without keywords appears when boosted), that one batch never
lends a request's keywords to another, and that requests without keywords are
decoded exactly as before.
"""

from __future__ import annotations

import asyncio
import copy
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import speechlike, wav_bytes
from tests.test_realtime import Voices, settings
from voxgraph import models as M
from voxgraph.errors import BadRequest
from voxgraph.schemas import (
    DEFAULT_KEYWORD_BOOST,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    TranscribeOptions,
    parse_options,
)
from voxgraph.types import KeywordBoost, ModelInfo

A = speechlike(4.0, seed=11)
B = speechlike(3.0, seed=12)
C = speechlike(5.0, seed=13)


# ------------------------------------------------------------------ the runner (tiny TDT)


@pytest.fixture(scope="module")
def asr(tiny_models) -> M.AsrRunner:
    return M.AsrRunner(M.load_model("asr", str(tiny_models / "asr.nemo"), "cpu"), "cpu")


def _words(t) -> list[str]:
    return [w.text for w in t.words]


def _absent_word(asr: M.AsrRunner, said: set[str], skip: set[str] = frozenset()) -> str:
    """A whole word of the tiny model's vocabulary (one `▁word` piece) it did not say."""
    pieces = asr.model.tokenizer.tokenizer.id_to_piece(
        list(range(asr.model.tokenizer.tokenizer.get_piece_size()))
    )
    for p in pieces:
        word = p.removeprefix("▁")
        whole = p.startswith("▁") and len(word) >= 2 and word.isalpha()
        if whole and word not in said and word not in skip:
            return word
    raise AssertionError("the tiny vocabulary has no whole-word piece left to boost")


def test_the_tiny_tdt_model_can_take_keywords(asr):
    assert asr.capabilities["keywords"] is True


def test_boosting_pulls_the_hypothesis_toward_the_keyword(asr):
    plain = asr.transcribe([A])[0]
    assert plain.words, "the tiny ASR model is built to emit tokens"
    word = _absent_word(asr, set(_words(plain)))
    boosted = asr.transcribe([A], [KeywordBoost((word,), 10.0)])[0]
    assert word in _words(boosted)
    assert boosted.text != plain.text
    # Boosting picks other tokens, not other times: word stamps stay inside the audio.
    assert all(0 <= w.start <= w.end <= boosted.duration for w in boosted.words)
    # A zero weight adds nothing: the plain hypothesis.
    assert asr.transcribe([A], [KeywordBoost((word,), 0.0)])[0] == plain


def test_a_keyword_outside_the_vocabulary_is_spelled_in_bpe_pieces(asr):
    # No piece holds this word: its tree is built from the pieces the tokenizer spells.
    word = "zqxjv"
    ids = asr.model.tokenizer.text_to_ids(word)
    assert len(ids) > 1
    out = asr.transcribe([A], [KeywordBoost((word,), 10.0)])[0]
    assert out.text != asr.transcribe([A])[0].text


def test_one_batch_decodes_each_request_with_its_own_keywords(asr):
    plain = asr.transcribe([A, B, C])
    said = {w for t in plain for w in _words(t)}
    wa = _absent_word(asr, said)
    wb = _absent_word(asr, said, skip={wa})
    ka, kb = KeywordBoost((wa,), 10.0), KeywordBoost((wb,), 8.0)
    mixed = asr.transcribe([A, B, C], [ka, kb, None])
    alone = [asr.transcribe([A], [ka])[0], asr.transcribe([B], [kb])[0], asr.transcribe([C])[0]]
    assert mixed == alone
    assert wa in _words(mixed[0]) and wb not in _words(mixed[0])
    assert wb in _words(mixed[1]) and wa not in _words(mixed[1])
    # The request without keywords is decoded exactly as without any keywords around.
    assert mixed[2] == plain[2]
    # Two requests with the same keywords share one tree; a batch leaves none behind.
    again = asr.transcribe([A, A], [ka, ka])
    assert again == [alone[0], alone[0]]
    multi = asr._keywords._decoding.decoding.decoding_computer.biasing_multi_model
    assert not bool(multi.model2active.any())
    assert asr.transcribe([A, B, C]) == plain


def test_trees_are_cached_per_keyword_list_and_bounded(asr):
    biasing = asr._keywords
    old = biasing.cache_size
    biasing.cache_size = 2
    try:
        for k in ("one", "two", "three"):
            asr.transcribe([B], [KeywordBoost((k,), 1.0)])
        assert list(biasing._trees) == [("two",), ("three",)]
        tree = biasing._trees[("two",)]
        asr.transcribe([B], [KeywordBoost(("two",), 3.0)])  # another weight, same tree
        assert biasing._trees[("two",)] is tree
        assert list(biasing._trees)[-1] == ("two",)
    finally:
        biasing.cache_size = old


def test_a_model_without_label_looping_decoding_cannot_take_keywords(tiny_models):
    model = M.load_model("asr", str(tiny_models / "asr.nemo"), "cpu")
    cfg = copy.deepcopy(model.cfg.decoding)
    cfg.strategy = "greedy"
    model.change_decoding_strategy(cfg, verbose=False)
    runner = M.AsrRunner(model, "cpu")
    assert runner.capabilities["keywords"] is False
    with pytest.raises(ValueError, match="cannot take keywords"):
        runner.transcribe([A], [KeywordBoost(("word",), 1.0)])
    assert runner.transcribe([A], [None])[0].duration == pytest.approx(4.0)


# ------------------------------------------------------------------ options


def test_options_take_keywords_by_form_name_and_python_name():
    by_form = parse_options(TranscribeOptions, {"keywords[]": [" Ray  Serve ", "NeMo", "NeMo"]})
    by_name = parse_options(TranscribeOptions, {"keywords": ["Ray Serve", "NeMo"]})
    assert by_form.keywords == by_name.keywords == ["Ray Serve", "NeMo"]
    assert by_form.keyword_boost == DEFAULT_KEYWORD_BOOST
    assert parse_options(TranscribeOptions, {}).keywords == []


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"keywords": ["w"] * (MAX_KEYWORDS + 1)}, f"at most {MAX_KEYWORDS} keywords"),
        ({"keywords": ["x" * (MAX_KEYWORD_CHARS + 1)]}, f"at most {MAX_KEYWORD_CHARS}"),
        ({"keywords": ["ok", "   "]}, "keyword 1 is empty"),
        ({"keywords": ["ok"], "keyword_boost": 10.5}, "keyword_boost"),
        ({"keywords": ["ok"], "keyword_boost": -1}, "keyword_boost"),
    ],
)
def test_keyword_limits_are_400s_naming_the_limit(values, needle):
    with pytest.raises(BadRequest, match=re.escape(needle)):
        parse_options(TranscribeOptions, values)


# ------------------------------------------------------------------ the walk and HTTP (fakes)


class Hotwords(Voices):
    """Voices that can take keywords and record every ASR call's keywords."""

    def __init__(self, keywords: bool = True) -> None:
        super().__init__()
        self.can = keywords
        self.seen: list[tuple[tuple[str, ...], float] | None] = []

    async def transcribe(self, audio, *, keywords=(), boost=DEFAULT_KEYWORD_BOOST):
        self.seen.append((tuple(keywords), boost) if keywords else None)
        return await super().transcribe(audio)

    async def info(self, role, *, fresh=False):
        caps = {"keywords": self.can} if role == "asr" else {}
        return ModelInfo(role, f"fake-{role}", "cpu", "ready", capabilities=caps)


WAV = wav_bytes(np.full(3 * 16000, 0.1, np.float32))


def _client(backends) -> TestClient:
    from deployments.http_app import build_api
    from voxgraph.service import VoxgraphService

    return TestClient(build_api(VoxgraphService(backends, settings())))


def _post(client, fields) -> object:
    files = {"file": ("a.wav", WAV, "audio/wav")}
    return client.post("/v1/audio/transcriptions", files=files, data=fields)


def test_form_keywords_reach_the_asr_call():
    fake = Hotwords()
    r = _post(_client(fake), {"keywords[]": ["Ray Serve", "NeMo"], "keyword_boost": "2.5"})
    assert r.status_code == 200, r.text
    assert fake.seen == [(("Ray Serve", "NeMo"), 2.5)]
    fake.seen.clear()
    assert _post(_client(fake), {}).status_code == 200
    assert fake.seen == [None]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"keywords[]": [f"w{i}" for i in range(MAX_KEYWORDS + 1)]}, str(MAX_KEYWORDS)),
        ({"keywords[]": ["x" * (MAX_KEYWORD_CHARS + 1)]}, str(MAX_KEYWORD_CHARS)),
        ({"keywords[]": ["fine", " "]}, "empty"),
        ({"keywords[]": ["fine"], "keyword_boost": "11"}, "keyword_boost"),
    ],
)
def test_http_refuses_keywords_over_the_limits(fields, needle):
    fake = Hotwords()
    r = _post(_client(fake), fields)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert fake.seen == []


def test_a_model_that_cannot_take_keywords_is_a_clear_400():
    fake = Hotwords(keywords=False)
    r = _post(_client(fake), {"keywords[]": ["NeMo"]})
    assert r.status_code == 400
    assert "this ASR model cannot take keywords" in r.json()["error"]["message"]
    assert fake.seen == []
    assert _post(_client(fake), {}).status_code == 200


def test_json_body_parameters_take_keywords():
    import base64

    fake = Hotwords()
    body = {"inputs": base64.b64encode(WAV).decode(), "parameters": {"keywords": ["NeMo"]}}
    r = _client(fake).post("/v1/audio/transcriptions", json=body)
    assert r.status_code == 200, r.text
    assert fake.seen == [(("NeMo",), DEFAULT_KEYWORD_BOOST)]
    body["parameters"] = {"keywords": ["x" * (MAX_KEYWORD_CHARS + 1)]}
    r = _client(fake).post("/v1/audio/transcriptions", json=body)
    assert r.status_code == 400 and str(MAX_KEYWORD_CHARS) in r.json()["error"]["message"]


def test_streamed_transcription_passes_keywords_too():
    fake = Hotwords()
    r = _post(_client(fake), {"keywords[]": ["NeMo"], "stream": "true"})
    assert r.status_code == 200, r.text
    assert "transcript.text.done" in r.text
    assert fake.seen and all(s == (("NeMo",), DEFAULT_KEYWORD_BOOST) for s in fake.seen)


def test_in_process_backends_pass_keywords_to_the_runner(asr):
    from voxgraph.local import InProcessBackends

    backends = InProcessBackends({"asr": asr})
    word = _absent_word(asr, set(_words(asr.transcribe([A])[0])))
    out = asyncio.run(backends.transcribe(A, keywords=[word], boost=10.0))
    assert out == asr.transcribe([A], [KeywordBoost((word,), 10.0)])[0]


# ------------------------------------------------------------------ the real graph


@pytest.mark.integration
def test_keywords_through_the_graph_isolated_per_request(service):
    """Concurrent ASR calls with keywords A, B and none, batched or not, each as alone."""
    asr = service.deployment("ASR")
    caps = service.deployment("ASR").status.remote().result().capabilities
    assert caps["keywords"] is True
    plain = asr.transcribe.remote(C).result()
    calls = [(A, ("bound",)), (B, ("the", "a phrase")), (C, ())]
    alone = [asr.transcribe.remote(x, keywords=k, boost=10.0).result() for x, k in calls]
    assert alone[2] == plain

    def one(args):
        x, k = args
        return asr.transcribe.remote(x, keywords=k, boost=10.0).result()

    with ThreadPoolExecutor(len(calls) * 2) as pool:
        together = list(pool.map(one, calls * 2))
    assert together == alone * 2

    # And over HTTP, from the form to the transcript.
    import httpx

    files = {"file": ("a.wav", wav_bytes(A), "audio/wav")}
    fields = {"keywords[]": ["bound"], "keyword_boost": "10", "response_format": "verbose_json"}
    r = httpx.post(f"{service.url}/v1/audio/transcriptions", files=files, data=fields, timeout=120)
    assert r.status_code == 200, r.text
    assert "bound" in r.json()["text"]
    bad = httpx.post(
        f"{service.url}/v1/audio/transcriptions",
        files=files,
        data={"keywords[]": ["x" * (MAX_KEYWORD_CHARS + 1)]},
        timeout=60,
    )
    assert bad.status_code == 400
