"""The Hugging Face endpoint's JSON body, `{"inputs": "<base64 audio>", "parameters": {...}}`.

The pure parser alone, then the HTTP routes over a `VoxgraphService` with the
FakeBackends of test_pipeline (the seed's `post(url, json=...)` shape, by
httpx), then the real graph (`service` fixture: run under flock /tmp/ray.lock).
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from deployments.http_app import build_api
from tests.conftest import wav_bytes
from tests.test_pipeline import SETTINGS, FakeBackends, _meeting
from voxgraph.errors import BadRequest, PayloadTooLarge
from voxgraph.json_body import JSON_SLACK_BYTES, is_json, json_body_limit, parse_json_body
from voxgraph.schemas import DiarizeOptions, TranscribeOptions
from voxgraph.service import VoxgraphService
from voxgraph.settings import Settings
from voxgraph.types import SAMPLE_RATE

T = "/v1/audio/transcriptions"
D = "/v1/audio/diarize"
CLIP = wav_bytes(np.full(3 * SAMPLE_RATE, 0.1, dtype=np.float32))
B64 = base64.b64encode(CLIP).decode()
MB = 1024 * 1024


def body(inputs=B64, **parameters) -> bytes:
    return json.dumps({"inputs": inputs, "parameters": parameters}).encode()


def parse(raw, model=TranscribeOptions, max_bytes=MB):
    return parse_json_body(raw, model, max_bytes=max_bytes)


# ------------------------------------------------------------ the pure parser


def test_good_body_gives_the_bytes_and_the_options_as_the_form_path_does():
    raw = body(response_format="verbose_json", **{"timestamp_granularities[]": ["word"]})
    audio, options = parse(raw)
    assert audio == CLIP
    assert options == {"response_format": "verbose_json", "timestamp_granularities": ["word"]}
    # The Python names are accepted too; no parameters at all is fine.
    _, options = parse(body(timestamp_granularities=["word", "segment"], diarize=True))
    assert options == {"timestamp_granularities": ["word", "segment"], "diarize": True}
    assert parse(json.dumps({"inputs": B64}).encode()) == (CLIP, {})
    assert parse(body(**{"known_speaker_names[]": ["Ann"]}), DiarizeOptions)[1] == {
        "known_speaker_names": ["Ann"]
    }
    assert parse(body(known_speaker_names=["Ann"]), DiarizeOptions)[1] == {
        "known_speaker_names": ["Ann"]
    }
    # null parameters are left out, as an absent form field.
    assert parse(body(language=None, response_format="text"))[1] == {"response_format": "text"}


def test_data_urls_wrapped_base64_text_and_dicts_are_accepted():
    for head in (
        "data:audio/wav;base64,",
        "DATA:;base64,",
        "data:application/octet-stream;base64,",
    ):
        assert parse(body(head + B64))[0] == CLIP
    assert parse(body(base64.encodebytes(CLIP).decode()))[0] == CLIP  # MIME line breaks
    assert parse(body().decode())[0] == CLIP  # the text
    doc = {"inputs": B64, "parameters": {"response_format": "rttm"}}
    assert parse(doc, DiarizeOptions) == (CLIP, {"response_format": "rttm"})
    assert doc == {"inputs": B64, "parameters": {"response_format": "rttm"}}  # untouched


def test_a_bytearray_body_is_consumed():
    raw = bytearray(body())
    assert parse(raw)[0] == CLIP
    assert raw == bytearray()


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"inputs": "UklGR', "invalid JSON body"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must be an object"),
        (b"[" * 100_000, "invalid JSON body"),
        (b'"UklGRg=="', "must be an object"),
        (b'{"parameters": {}}', "no audio"),
        (b'{"file": "x"}', "multipart/form-data"),
        (b'{"inputs": null}', "no audio"),
        (b'{"inputs": 42}', "'inputs' must be a string"),
        (b'{"inputs": ["UklGRg=="]}', "not an array"),
        (b'{"inputs": "UklGRg==", "extra": 1}', "unknown field(s) 'extra'"),
        (body("not base64 at all!"), "not valid base64"),
        (body("UklGR"), "not valid base64"),
        (body("UklGRg==\u00e9"), "non-ASCII"),
        (body(""), "empty"),
        (body("data:audio/wav,UklGRg=="), "must be base64"),
        (body("data:text/plain;base64,UklGRg=="), "not audio"),
        (body("data:audio/wav;base64"), "without a ','"),
        (body(bogus=1), "parameters.bogus: Extra inputs are not permitted"),
        (body(response_format="mp3"), "parameters.response_format"),
        (body(**{"timestamp_granularities[]": ["char"]}), "timestamp_granularities"),
        (b'{"inputs": "UklGRg==", "parameters": [1]}', "'parameters' must be a JSON object"),
        (b'{"inputs": "UklGRg==", "parameters": "x"}', "not a string"),
    ],
)
def test_malformed_bodies_are_clear_400s(raw, words):
    with pytest.raises(BadRequest) as e:
        parse(raw)
    assert e.value.status == 400 and words in e.value.message


def test_unknown_parameters_follow_the_routes_options():
    with pytest.raises(BadRequest, match=r"parameters\.diarize"):
        parse(body(diarize=True), DiarizeOptions)  # a transcription option, not diarize's


def test_oversize_is_413_before_and_after_decoding():
    limit = 30_000
    assert json_body_limit(limit) == 40_000 + JSON_SLACK_BYTES
    big = bytes(limit + 1)
    with pytest.raises(PayloadTooLarge):  # the decoded audio is over the limit
        parse(body(base64.b64encode(big).decode()), max_bytes=limit)
    with pytest.raises(PayloadTooLarge):  # the body itself: refused before parsing
        parse(b" " * (json_body_limit(limit) + 1), max_bytes=limit)
    with pytest.raises(PayloadTooLarge):  # a dict from a handle caller
        parse({"inputs": "A" * (json_body_limit(limit) + 4)}, max_bytes=limit)
    # Exactly the limit of audio is accepted, though its base64 is 4/3 of it.
    assert len(parse(body(base64.b64encode(bytes(limit)).decode()), max_bytes=limit)[0]) == limit


def test_is_json():
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    assert is_json("application/vnd.api+json")
    assert not any(
        map(is_json, [None, "", "multipart/form-data; boundary=x", "text/json", "audio/wav"])
    )


# ------------------------------------------------------------ HTTP over the fake graph


def app(**over):
    return build_api(
        VoxgraphService(FakeBackends(), Settings.load({**SETTINGS.model_dump(), **over}))
    )


def call(api, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, timeout=60, **kwargs)

    return asyncio.run(go())


def test_json_body_answers_as_the_multipart_form():
    api, wav = app(), _meeting()
    b64 = base64.b64encode(wav).decode()
    fields = {"response_format": "verbose_json", "diarize": True}
    form = call(
        api,
        "POST",
        T,
        files={"file": ("a.wav", wav, "audio/wav")},
        data={**fields, "timestamp_granularities[]": "word"},
    )
    # The seed's request: requests.post(url, json={"inputs": b64, "parameters": {...}}).
    seed = call(
        api,
        "POST",
        T,
        json={"inputs": b64, "parameters": {**fields, "timestamp_granularities[]": ["word"]}},
    )
    assert form.status_code == seed.status_code == 200, seed.text
    assert seed.json() == form.json()
    assert {w["speaker"] for w in seed.json()["words"]} == {"Speaker_0", "Speaker_1"}
    # Without the brackets, as a data URL, as text.
    url = call(
        api,
        "POST",
        T,
        json={"inputs": "data:audio/wav;base64," + b64, "parameters": {"response_format": "text"}},
    )
    assert url.status_code == 200 and url.headers["content-type"].startswith("text/plain")
    assert url.text.strip() == form.json()["text"].strip()


def test_json_body_streams_with_stream_true():
    api = app()
    b64 = base64.b64encode(_meeting()).decode()
    r = call(api, "POST", T, json={"inputs": b64, "parameters": {"stream": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(f.removeprefix("data: ")) for f in r.text.split("\n\n") if f]
    assert events[-1]["type"] == "transcript.text.done"
    assert "alice" in events[-1]["text"] and "bob" in events[-1]["text"]


def test_json_body_on_the_diarize_route():
    api = app()
    b64 = base64.b64encode(_meeting()).decode()
    r = call(api, "POST", D, json={"inputs": b64, "parameters": {"num_speakers": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["speakers_detected"] == ["Speaker_0", "Speaker_1"]
    rttm = call(api, "POST", D, json={"inputs": b64, "parameters": {"response_format": "rttm"}})
    assert rttm.status_code == 200 and rttm.text.startswith("SPEAKER audio 1 ")
    r = call(api, "POST", D, json={"inputs": b64, "parameters": {"diarize": True}})
    assert r.status_code == 400 and "parameters.diarize" in r.json()["error"]["message"]


def test_json_errors_over_http_are_clear():
    api = app()
    cases = [
        (b"{not json", "application/json", "invalid JSON body"),
        (b'{"parameters": {}}', "application/json", "no audio"),
        (body("@@@@"), "application/json", "not valid base64"),
        (body(bogus=1), "application/json; charset=utf-8", "parameters.bogus"),
        (b'{"inputs": "x", "parameters": 3}', "application/json", "'parameters' must be"),
        # Other content types: the answer names both accepted ones.
        (CLIP, "audio/wav", "application/json"),
        (body(), "text/plain", "multipart/form-data"),
    ]
    for raw, content_type, words in cases:
        r = call(api, "POST", T, content=raw, headers={"Content-Type": content_type})
        assert r.status_code == 400, (words, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
        assert words in r.json()["error"]["message"], r.text
    # base64 in a form field: the routes that take JSON say how; the others refuse it.
    for path, words in [(T, "application/json body"), ("/v1/audio/diarize-chunk", "not accepted")]:
        r = call(api, "POST", path, data={"file": B64})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    r = call(api, "POST", "/v1/audio/diarize-chunk", json={"inputs": B64})
    assert r.status_code == 400 and "application/json" not in r.json()["error"]["message"]
    # Audio that does not decode is the usual 400, as in a form.
    r = call(api, "POST", T, json={"inputs": base64.b64encode(b"not audio" * 50).decode()})
    assert r.status_code == 400 and r.json()["error"]["code"] == "undecodable_audio"


def test_json_body_limit_is_on_the_audio_and_refused_while_streaming_in():
    limit_mb = 0.5
    api = app(max_upload_mb=limit_mb)
    limit = int(limit_mb * MB)
    # 0.4 MB of audio is under the limit though its base64 (0.53 MB) is not.
    fits = wav_bytes(np.full(int(0.4 * MB) // 2, 0.1, dtype=np.float32))
    r = call(api, "POST", D, json={"inputs": base64.b64encode(fits).decode()})
    assert r.status_code == 200, r.text
    # Audio over the limit: 413 from Content-Length, before the route runs.
    over = base64.b64encode(bytes(limit + 1)).decode()
    r = call(api, "POST", T, json={"inputs": over})
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["error"]["message"]
    # A chunked body (no Content-Length): cut off by counting, not held in full.
    sent = []

    async def chunks():
        yield b'{"inputs": "'
        for _ in range(100):
            sent.append(64 * 1024)
            yield b"A" * (64 * 1024)
        yield b'"}'

    r = call(api, "POST", T, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert sum(sent) <= json_body_limit(limit) + 2 * 64 * 1024
    # The multipart limit is unchanged: the file itself must fit.
    r = call(api, "POST", T, files={"file": ("a.wav", bytes(limit + 1), "audio/wav")})
    assert r.status_code == 413


def test_openapi_shows_both_request_bodies():
    spec = call(app(), "GET", "/openapi.json").json()
    for path in (T, D):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}
        schema = content["application/json"]["schema"]
        assert schema["required"] == ["inputs"]
        assert "response_format" in schema["properties"]["parameters"]["properties"]
    params = spec["paths"][T]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "timestamp_granularities[]" in params["properties"]["parameters"]["properties"]
    refs = {r for r in _refs(spec) if r.startswith("#/components/schemas/")}
    assert refs and all(r.rsplit("/", 1)[1] in spec["components"]["schemas"] for r in refs)


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_handle_infer_takes_the_json_body():
    svc = VoxgraphService(FakeBackends(), SETTINGS)
    b64 = base64.b64encode(_meeting()).decode()
    out = asyncio.run(svc.infer({"inputs": b64, "parameters": {"response_format": "text"}}))
    assert "alice" in out and "bob" in out
    out = asyncio.run(svc.infer(json.dumps({"inputs": b64}), route="diarize"))
    assert out["speakers_detected"] == ["Speaker_0", "Speaker_1"]
    with pytest.raises(BadRequest, match="route must be"):
        asyncio.run(svc.infer({"inputs": b64}, route="translations"))
    with pytest.raises(BadRequest, match="transcribe_stream"):
        asyncio.run(svc.infer({"inputs": b64, "parameters": {"stream": True}}))


# ------------------------------------------------------------ the real graph (Ray)


def test_json_body_through_the_real_graph(service):
    wav = wav_bytes(np.random.default_rng(0).normal(0, 0.1, 4 * SAMPLE_RATE).astype(np.float32))
    b64 = base64.b64encode(wav).decode()
    r = httpx.post(
        f"{service.url}{T}",
        json={"inputs": b64, "parameters": {"response_format": "verbose_json", "diarize": True}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(4.0, abs=0.01)
    r = httpx.post(
        f"{service.url}{D}",
        json={"inputs": "data:audio/wav;base64," + b64, "parameters": {"response_format": "rttm"}},
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/")
    r = httpx.post(f"{service.url}{D}", json={"inputs": "@@", "parameters": {}}, timeout=60)
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    out = service.handle.infer.remote({"inputs": b64}, route="diarize").result()
    assert set(out) >= {"segments", "speakers_detected", "duration"}
