"""Speakers by name over HTTP, the handle and the openai client, on the real graph.

The tiny models' voices mean nothing, so these tests check the contract: enrolment
refusals, the library's routes, names and scores where a voice was referenced or
enrolled, anonymous labels otherwise, and the library shared by every route.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import speechlike, wav_bytes

pytestmark = pytest.mark.integration

CLIP = wav_bytes(speechlike(6.0, seed=21))
MEETING = wav_bytes(speechlike(20.0, seed=21))


def _data_url(wav: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav).decode()


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=180) as c:
        yield c


def _enrol(http, name: str, *clips: bytes) -> httpx.Response:
    files = [("file", (f"c{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]
    return http.post("/v1/speakers", data={"name": name}, files=files)


def test_enrol_list_get_delete(http):
    r = _enrol(http, "Ada Lovelace", CLIP, wav_bytes(speechlike(5.0, seed=22)))
    assert r.status_code == 201, r.text
    ada = r.json()
    assert ada["name"] == "Ada Lovelace" and ada["id"].startswith("spk_")
    (vp,) = ada["voiceprints"]
    assert vp["clips"] == 2 and vp["model"].endswith("embedder.nemo") and vp["speech_seconds"] > 1
    assert "vector" not in str(ada)  # voiceprints never leave the service
    listed = http.get("/v1/speakers").json()
    assert listed["object"] == "list" and ada["id"] in [s["id"] for s in listed["data"]]
    assert http.get(f"/v1/speakers/{ada['id']}").json()["name"] == "Ada Lovelace"
    more = http.post(
        f"/v1/speakers/{ada['id']}/samples", files=[("file", ("m.wav", CLIP, "audio/wav"))]
    )
    assert more.status_code == 200 and more.json()["voiceprints"][0]["clips"] == 3
    assert _enrol(http, "ada lovelace", CLIP).status_code == 409  # names are case-insensitive
    r = http.delete(f"/v1/speakers/{ada['id']}")
    assert r.json() == {"id": ada["id"], "object": "speaker.deleted", "deleted": True}
    assert http.get(f"/v1/speakers/{ada['id']}").status_code == 404
    assert http.delete(f"/v1/speakers/{ada['id']}").status_code == 404


@pytest.mark.parametrize(
    ("name", "clips", "status", "says"),
    [
        ("", [CLIP], 400, "name"),
        ("x" * 65, [CLIP], 400, "name"),
        ("Robert'); DROP TABLE speakers;--", [CLIP], 400, "name"),
        ("Bo", [], 400, "clip"),
        ("Bo", [b"not audio at all" * 10], 400, "audio"),
        ("Bo", [wav_bytes(speechlike(0.3, seed=1))], 400, "speech"),
    ],
)
def test_enrolment_refusals(http, name, clips, status, says):
    r = _enrol(http, name, *clips)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"].lower()


def test_references_name_speakers_on_every_route(http, service):
    ref = _data_url(CLIP)
    form = {"known_speaker_names[]": "Grace", "known_speaker_references[]": ref}
    files = {"file": ("m.wav", MEETING, "audio/wav")}
    r = http.post(
        "/v1/audio/transcriptions", data={**form, "response_format": "diarized_json"}, files=files
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["identification"]["candidates"] == 1
    named = [s for s in body["segments"] if s["speaker"] == "Grace"]
    others = {s["speaker"] for s in body["segments"]} - {"Grace"}
    assert others <= {"A", "B", "C", "D"}
    assert all(0.46 <= s["identity_score"] <= 1.0 for s in named)
    assert all("identity_score" not in s for s in body["segments"] if s["speaker"] != "Grace")

    d = http.post("/v1/audio/diarize", data=form, files=files).json()
    assert {t["speaker"] for t in d["segments"]} >= {t["speaker"] for t in d["segments"]}
    assert all(t.get("identity_score") for t in d["segments"] if t["speaker"] == "Grace")
    rttm = http.post(
        "/v1/audio/diarize", data={**form, "response_format": "rttm"}, files=files
    ).text
    assert rttm.startswith("SPEAKER ")
    chunk = http.post("/v1/audio/diarize-chunk", data=form, files=files).json()
    assert set(chunk["fingerprints"]) <= set(chunk["speakers_detected"])
    via_handle = service.handle.diarize.remote(
        MEETING, **{"known_speaker_names": ["Grace"], "known_speaker_references": [ref]}
    ).result()
    assert via_handle["segments"] == d["segments"]


def test_enrolled_names_and_identify(http):
    alan = _enrol(http, "Alan Turing", CLIP).json()
    try:
        files = {"file": ("m.wav", MEETING, "audio/wav")}
        by_name = http.post(
            "/v1/audio/diarize", data={"known_speaker_names[]": "alan turing"}, files=files
        ).json()
        everyone = http.post("/v1/audio/diarize", data={"identify": "true"}, files=files).json()
        assert everyone["identification"]["candidates"] >= 1
        # One name never goes to two speakers.
        for body in (by_name, everyone):
            named = {t["speaker"] for t in body["segments"] if "identity_score" in t}
            assert len(named) <= 1
        unknown = http.post(
            "/v1/audio/diarize", data={"known_speaker_names[]": "Nobody Here"}, files=files
        )
        assert unknown.status_code == 400 and "Nobody Here" in unknown.json()["error"]["message"]
    finally:
        http.delete(f"/v1/speakers/{alan['id']}")


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"known_speaker_names[]": ["a", "b"], "known_speaker_references[]": "data:x"}, "length"),
        (
            {"known_speaker_names[]": "a", "known_speaker_references[]": "http://x/a.wav"},
            "data url",
        ),
        (
            {
                "known_speaker_names[]": "a",
                "known_speaker_references[]": "data:audio/wav;base64,@@",
            },
            "base64",
        ),
        (
            {
                "known_speaker_names[]": "a",
                "known_speaker_references[]": "data:text/plain;base64,QUJD",
            },
            "not audio",
        ),
        (
            {
                "known_speaker_names[]": "a",
                "known_speaker_references[]": "data:audio/wav;base64,QUJDRA==",
            },
            "reference",
        ),
    ],
)
def test_bad_references(http, form, says):
    r = http.post(
        "/v1/audio/transcriptions",
        data={**form, "response_format": "diarized_json"},
        files={"file": ("m.wav", MEETING, "audio/wav")},
    )
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"].lower()


def test_openai_client_with_known_speakers(service):
    from openai import OpenAI
    from openai.types.audio import TranscriptionDiarized

    client = OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=180)
    result = client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("m.wav", MEETING, "audio/wav"),
        response_format="diarized_json",
        chunking_strategy="auto",
        known_speaker_names=["Grace"],
        known_speaker_references=[_data_url(CLIP)],
    )
    assert isinstance(result, TranscriptionDiarized)
    assert {s.speaker for s in result.segments} <= {"Grace", "A", "B", "C", "D"}
