"""voxgraph.client and the `voxgraph` command against the real tiny-model graph.

The retry and header tests at the top answer from an httpx MockTransport (a 503
with Retry-After cannot be provoked on demand from a healthy service); every
other test talks to the `service` fixture over loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, speechlike, wav_bytes
from voxgraph import cli
from voxgraph.client import (
    APIConnectionError,
    AsyncVoxgraphClient,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    VoxgraphClient,
    data_url,
)

pytestmark = pytest.mark.integration

WAV = wav_bytes(speechlike(6.0, seed=3))
# Clips of one synthetic voice each, long enough to enrol with the tiny embedder.
CLIP_A = wav_bytes(speechlike(6.0, seed=21))
CLIP_B = wav_bytes(speechlike(5.0, seed=22))
LOADING = {
    "error": {"message": "the asr model is still loading", "type": "server_error", "code": "m"}
}


# ------------------------------------------------------------------ retries, headers (mocked)


class Recorder:
    """A MockTransport handler: answers from a script, remembers every request."""

    def __init__(self, *responses: httpx.Response):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


def _busy(retry_after: str = "2") -> httpx.Response:
    return httpx.Response(503, json=LOADING, headers={"Retry-After": retry_after})


def test_503_retries_honour_retry_after():
    rec = Recorder(_busy("2"), _busy("1"), httpx.Response(200, json={"text": "hi"}))
    waits: list[float] = []
    with VoxgraphClient("http://vg.test", transport=httpx.MockTransport(rec)) as vg:
        vg._sleep = waits.append
        assert vg.transcribe(WAV) == {"text": "hi"}
    assert waits == [2.0, 1.0]
    assert len(rec.requests) == 3
    # Every attempt resends the whole file, not an exhausted stream.
    assert all(WAV in r.content for r in rec.requests)


def test_retries_are_bounded_and_the_error_is_typed():
    rec = Recorder(_busy("120"))
    waits: list[float] = []
    client = VoxgraphClient(
        "http://vg.test", transport=httpx.MockTransport(rec), max_retries=2, max_retry_wait=7
    )
    client._sleep = waits.append
    with client, pytest.raises(ServiceUnavailableError) as info:
        client.diarize(WAV)
    assert waits == [7, 7]  # Retry-After 120 s, capped by max_retry_wait
    assert len(rec.requests) == 3
    err = info.value
    assert err.status == 503 and err.code == "m" and err.retry_after == 120
    assert err.message == "the asr model is still loading"


def test_async_retries_then_succeeds():
    rec = Recorder(_busy("3"), httpx.Response(200, json={"segments": []}))
    waits: list[float] = []

    async def fake_sleep(s: float) -> None:
        waits.append(s)

    async def go() -> dict:
        async with AsyncVoxgraphClient("http://vg.test", transport=httpx.MockTransport(rec)) as vg:
            vg._sleep = fake_sleep
            return await vg.diarize_chunk(WAV)

    assert asyncio.run(go()) == {"segments": []}
    assert waits == [3.0]


def test_bearer_key_and_form_fields(monkeypatch):
    # The server reads VOXGRAPH_API_KEY as a list of accepted keys; the client sends the first.
    monkeypatch.setenv("VOXGRAPH_API_KEY", "key-1, key-2")
    monkeypatch.setenv("VOXGRAPH_URL", "http://vg.test/")
    rec = Recorder(httpx.Response(200, text="WEBVTT\n", headers={"content-type": "text/vtt"}))
    with VoxgraphClient(transport=httpx.MockTransport(rec)) as vg:
        assert vg.base_url == "http://vg.test"
        out = vg.transcribe(
            io.BytesIO(WAV),
            response_format="vtt",
            diarize=True,
            timestamp_granularities=["word", "segment"],
            max_speakers=3,
            filename="meeting.wav",
        )
    assert out == "WEBVTT\n"
    (req,) = rec.requests
    assert req.url == "http://vg.test/v1/audio/transcriptions"
    assert req.headers["authorization"] == "Bearer key-1"
    body = req.content
    for part in (
        b'name="diarize"\r\n\r\ntrue',
        b'name="max_speakers"\r\n\r\n3',
        b'name="response_format"\r\n\r\nvtt',
        b'filename="meeting.wav"',
    ):
        assert part in body, part
    assert body.count(b'name="timestamp_granularities[]"') == 2
    assert b'name="language"' not in body  # unset options are not sent


def test_client_side_mistakes():
    rec = Recorder(httpx.Response(401, json={"error": {"message": "bad key", "code": "auth"}}))
    with VoxgraphClient("http://vg.test", transport=httpx.MockTransport(rec)) as vg:
        with pytest.raises(TypeError, match="diarise"):
            vg.transcribe(WAV, diarise=True)  # type: ignore[call-arg]
        with pytest.raises(AuthenticationError, match="bad key"):
            vg.models()


def test_unreachable_server_is_a_connection_error():
    # Port 9 (discard) on loopback: nothing listens there in a test environment.
    with VoxgraphClient("http://127.0.0.1:9", max_retries=1) as vg:
        vg._sleep = lambda s: None
        with pytest.raises(APIConnectionError):
            vg.health()
        with pytest.raises(APIConnectionError):
            vg.transcribe(WAV)


def _parts(request: httpx.Request) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename, value) of every part of a multipart request, in order."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    return [
        (
            part.get_param("name", header="content-disposition"),
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    ]


def _fields(request: httpx.Request, name: str) -> list[str]:
    return [v.decode() for n, f, v in _parts(request) if n == name and f is None]


def _speaker(sid: str = "spk_1", name: str = "Ada") -> dict:
    vp = {"model": "embedder.nemo", "clips": 2, "speech_seconds": 9.5, "consistency": 0.9}
    return {"id": sid, "object": "speaker", "name": name, "voiceprints": [vp]}


def test_known_speakers_become_repeated_fields_and_data_urls(tmp_path):
    rec = Recorder(httpx.Response(200, json={"segments": []}))
    ada = tmp_path / "ada.wav"
    ada.write_bytes(CLIP_A)
    flac = b"fLaC" + bytes(40)
    with VoxgraphClient("http://vg.test", transport=httpx.MockTransport(rec)) as vg:
        vg.transcribe(
            WAV,
            response_format="diarized_json",
            known_speakers={"Ada Lovelace": ada, "Bo": flac, "Cy": b"\x01\x02"},
            identify=True,
            chunking_strategy={"type": "server_vad", "silence_duration_ms": 500},
        )
        vg.diarize(WAV, known_speaker_names=["Ada Lovelace", "Grace"], max_speakers=3)
        vg.diarize_chunk(WAV, known_speaker_names="Grace Hopper")  # one name, not its letters
        vg.transcribe(WAV, chunking_strategy="auto")
        vg.diarize(WAV)
        with pytest.raises(ValueError, match="cannot be combined"):
            vg.diarize(WAV, known_speakers={"Ada": CLIP_A}, known_speaker_names=["Grace"])
        with pytest.raises(TypeError, match="known_speaker"):
            vg.diarize_chunk(WAV, known_speaker=["Ada"])  # type: ignore[call-arg]
    named, by_name, chunk, auto, plain = rec.requests
    assert named.url.path == "/v1/audio/transcriptions"
    assert _fields(named, "known_speaker_names[]") == ["Ada Lovelace", "Bo", "Cy"]
    refs = _fields(named, "known_speaker_references[]")
    b64 = base64.b64encode
    assert refs == [
        "data:audio/wav;base64," + b64(CLIP_A).decode(),
        "data:audio/flac;base64," + b64(flac).decode(),
        # Unrecognised bytes go as octet-stream, which the service sniffs itself.
        "data:application/octet-stream;base64," + b64(b"\x01\x02").decode(),
    ]
    assert refs[0] == data_url(ada) == data_url(CLIP_A)
    assert _fields(named, "identify") == ["true"]
    assert _fields(named, "response_format") == ["diarized_json"]
    assert _fields(named, "chunking_strategy[type]") == ["server_vad"]
    assert _fields(named, "chunking_strategy[silence_duration_ms]") == ["500"]
    assert [n for n, f, _ in _parts(named) if f is not None] == ["file"]

    assert by_name.url.path == "/v1/audio/diarize"
    assert _fields(by_name, "known_speaker_names[]") == ["Ada Lovelace", "Grace"]
    assert _fields(by_name, "known_speaker_references[]") == []
    assert _fields(by_name, "max_speakers") == ["3"]
    assert chunk.url.path == "/v1/audio/diarize-chunk"
    assert _fields(chunk, "known_speaker_names[]") == ["Grace Hopper"]
    assert _fields(auto, "chunking_strategy") == ["auto"]
    # Nothing asked for, nothing sent: identify=false is the service's default.
    assert {n for n, _, _ in _parts(plain)} == {"response_format", "file"}
    assert len(rec.requests) == 5  # the refused combinations never left the client


def test_speaker_library_requests(tmp_path):
    rec = Recorder(
        httpx.Response(201, json=_speaker()),
        httpx.Response(200, json={"object": "list", "data": [_speaker()]}),
        httpx.Response(200, json=_speaker()),
        httpx.Response(200, json=_speaker()),
        httpx.Response(200, json={"id": "spk_1", "object": "speaker.deleted", "deleted": True}),
        httpx.Response(404, json={"error": {"message": "no such speaker", "code": "nf"}}),
        httpx.Response(409, json={"error": {"message": "taken", "code": "speaker_name_taken"}}),
    )
    clip = tmp_path / "ada-1.wav"
    clip.write_bytes(CLIP_A)
    with VoxgraphClient("http://vg.test", transport=httpx.MockTransport(rec)) as vg:
        assert vg.enrol_speaker("Ada", [clip, CLIP_B])["id"] == "spk_1"
        assert [s["name"] for s in vg.list_speakers()] == ["Ada"]
        assert vg.get_speaker("spk_1")["object"] == "speaker"
        assert vg.add_speaker_samples("spk_1", clip)["voiceprints"][0]["clips"] == 2
        assert vg.delete_speaker("spk_1")["deleted"] is True
        with pytest.raises(NotFoundError) as missing:
            vg.get_speaker("../health")
        assert missing.value.status == 404 and missing.value.code == "nf"
        with pytest.raises(ConflictError) as taken:
            vg.enrol_speaker("ada", CLIP_A)
        assert taken.value.status == 409 and taken.value.code == "speaker_name_taken"
        with pytest.raises(ValueError, match="at least one clip"):
            vg.enrol_speaker("Ada", [])
        with pytest.raises(ValueError, match="speaker id"):
            vg.delete_speaker("")
    enrol, listed, got, samples, deleted, escaped, conflict = rec.requests
    assert (enrol.method, enrol.url.path) == ("POST", "/v1/speakers")
    assert _parts(enrol) == [
        ("name", None, b"Ada"),
        ("file", "ada-1.wav", CLIP_A),
        ("file", "audio", CLIP_B),
    ]
    assert (listed.method, listed.url.path) == ("GET", "/v1/speakers")
    assert (got.method, got.url.path) == ("GET", "/v1/speakers/spk_1")
    assert (samples.method, samples.url.path) == ("POST", "/v1/speakers/spk_1/samples")
    assert _parts(samples) == [("file", "ada-1.wav", CLIP_A)]  # a lone path is one clip
    assert (deleted.method, deleted.url.path) == ("DELETE", "/v1/speakers/spk_1")
    # An id is one path segment: it cannot climb to another route.
    assert escaped.url.raw_path == b"/v1/speakers/..%2Fhealth"
    assert _parts(conflict) == [("name", None, b"ada"), ("file", "audio", CLIP_A)]


def test_async_speaker_library_retries_a_busy_service():
    rec = Recorder(_busy("4"), httpx.Response(201, json=_speaker("spk_9", "Bo")))
    waits: list[float] = []

    async def fake_sleep(s: float) -> None:
        waits.append(s)

    async def go() -> dict:
        async with AsyncVoxgraphClient("http://vg.test", transport=httpx.MockTransport(rec)) as vg:
            vg._sleep = fake_sleep
            return await vg.enrol_speaker("Bo", [CLIP_A, CLIP_B])

    assert asyncio.run(go())["id"] == "spk_9"
    assert waits == [4.0]
    # The retry resent every clip whole.
    assert [_parts(r) for r in rec.requests] == [
        [("name", None, b"Bo"), ("file", "audio", CLIP_A), ("file", "audio", CLIP_B)]
    ] * 2


# ------------------------------------------------------------------ the real service


def test_sync_client_every_route(service, tmp_path):
    path = tmp_path / "standup.wav"
    path.write_bytes(WAV)
    with VoxgraphClient(service.url, timeout=300) as vg:
        assert vg.health()["status"] == "ready"
        assert vg.wait_ready(timeout_s=30)["status"] == "ready"
        assert {m["role"] for m in vg.models()} == {"asr", "diarizer", "embedder"}
        assert vg.info()["service"] == "voxgraph"

        assert isinstance(vg.transcribe(path)["text"], str)
        verbose = vg.transcribe(
            WAV, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
        assert verbose["duration"] == pytest.approx(6.0, abs=0.01)
        assert "words" in verbose and "segments" in verbose
        assert vg.transcribe(WAV, response_format="srt").startswith("1\n00:00:")
        assert vg.transcribe(WAV, response_format="vtt").startswith("WEBVTT")
        assert isinstance(vg.transcribe(WAV, response_format="text"), str)
        with path.open("rb") as f:
            spoken = vg.transcribe(f, diarize=True, response_format="verbose_json")
        assert all("speaker" in s for s in spoken["segments"])

        turns = vg.diarize(path, max_speakers=4)
        assert set(turns) >= {"segments", "speakers_detected", "duration", "model", "device"}
        rttm = vg.diarize(path, response_format="rttm")
        lines = [ln for ln in rttm.splitlines() if ln]
        # The upload's name labels the RTTM lines.
        assert all(ln.startswith("SPEAKER standup 1 ") for ln in lines)
        assert len(lines) == len(turns["segments"])

        chunk = vg.diarize_chunk(WAV)
        assert chunk["models"]["embedding"].endswith("embedder.nemo")
        for vec in chunk["fingerprints"].values():
            assert len(vec) == 192


def test_server_errors_are_typed(service):
    with VoxgraphClient(service.url, timeout=120) as vg:
        with pytest.raises(BadRequestError) as info:
            vg.transcribe(b"this is not audio at all" * 20, filename="notes.wav")
        assert info.value.status == 400
        assert "decode" in info.value.message.lower()
        assert info.value.code
        with pytest.raises(BadRequestError, match="response_format"):
            vg.diarize(WAV, response_format="srt")  # type: ignore[call-overload]
        with pytest.raises(BadRequestError, match="speakers"):
            vg.diarize(WAV, min_speakers=3, max_speakers=2)
        # The test service caps uploads at 8 MB.
        with pytest.raises(PayloadTooLargeError) as big:
            vg.diarize_chunk(b"\0" * (9 * 1024 * 1024))
        assert big.value.status == 413 and "8 MB" in big.value.message


def test_async_client_concurrent_routes(service):
    async def go():
        async with AsyncVoxgraphClient(service.url, timeout=300) as vg:
            health, models, text, turns, chunk, srt = await asyncio.gather(
                vg.health(),
                vg.models(),
                vg.transcribe(WAV, diarize=True),
                vg.diarize(WAV),
                vg.diarize_chunk(WAV),
                vg.transcribe(WAV, response_format="srt"),
            )
            with pytest.raises(BadRequestError):
                await vg.transcribe(b"\x00")
            return health, models, text, turns, chunk, srt, await vg.info()

    health, models, text, turns, chunk, srt, info = asyncio.run(go())
    assert health["status"] == "ready"
    assert len(models) == 3
    assert isinstance(text["text"], str) and "segments" in text
    assert "speakers_detected" in turns
    assert "fingerprints" in chunk
    assert isinstance(srt, str)
    assert "POST /v1/audio/diarize" in info["routes"]


def test_speaker_library_and_names(service, tmp_path):
    clip = tmp_path / "ada-1.wav"
    clip.write_bytes(CLIP_A)
    with VoxgraphClient(service.url, timeout=300) as vg:
        ada = vg.enrol_speaker("Client Ada", [clip, CLIP_B])
        try:
            assert ada["object"] == "speaker" and ada["id"].startswith("spk_")
            assert ada["name"] == "Client Ada"
            (vp,) = ada["voiceprints"]
            assert vp["clips"] == 2 and vp["speech_seconds"] > 1
            assert vp["model"].endswith("embedder.nemo")
            assert ada["id"] in [s["id"] for s in vg.list_speakers()]
            assert vg.get_speaker(ada["id"])["name"] == "Client Ada"
            with pytest.raises(ConflictError):
                vg.enrol_speaker("client ada", CLIP_A)  # names are case-insensitive
            more = vg.add_speaker_samples(ada["id"], [CLIP_A])
            assert more["voiceprints"][0]["clips"] == 3

            named = vg.transcribe(
                WAV, response_format="diarized_json", known_speaker_names=["Client Ada"]
            )
            assert named["identification"]["candidates"] == 1
            assert named["usage"]["seconds"] == pytest.approx(6.0, abs=0.01)
            for seg in named["segments"]:
                assert seg["type"] == "transcript.text.segment"
                # Either the enrolled name with its score, or an anonymous label.
                assert ("identity_score" in seg) == (seg["speaker"] == "Client Ada")

            # Per-request references: the client turns clips into data URLs.
            turns = vg.diarize(WAV, known_speakers={"Grace": CLIP_A}, max_speakers=4)
            assert turns["identification"]["candidates"] == 1
            everyone = vg.diarize_chunk(WAV, identify=True)
            assert everyone["identification"]["candidates"] >= 1
            with pytest.raises(BadRequestError, match="Nobody Here"):
                vg.diarize(WAV, known_speaker_names=["Nobody Here"])

            async def via_async() -> dict:
                async with AsyncVoxgraphClient(service.url, timeout=300) as avg:
                    listed, one = await asyncio.gather(
                        avg.list_speakers(), avg.get_speaker(ada["id"])
                    )
                    assert ada["id"] in [s["id"] for s in listed]
                    return one

            assert asyncio.run(via_async())["voiceprints"][0]["clips"] == 3
        finally:
            gone = vg.delete_speaker(ada["id"])
        assert gone == {"id": ada["id"], "object": "speaker.deleted", "deleted": True}
        with pytest.raises(NotFoundError):
            vg.get_speaker(ada["id"])
        with pytest.raises(NotFoundError):
            vg.delete_speaker(ada["id"])
        with pytest.raises(BadRequestError, match="name"):
            vg.enrol_speaker("Robert'); DROP TABLE speakers;--", CLIP_A)


# ------------------------------------------------------------------ the CLI


def _recordings(root: Path) -> dict[str, Path]:
    """Three short WAVs (one in a subfolder), one broken 'WAV', one non-audio file."""
    (root / "sub").mkdir(parents=True)
    files = {
        "a": root / "a.wav",
        "b": root / "sub" / "b.wav",
        "c": root / "sub" / "c.flac",
        "bad": root / "bad.wav",
    }
    files["a"].write_bytes(wav_bytes(speechlike(3.0, seed=11)))
    files["b"].write_bytes(wav_bytes(speechlike(2.0, seed=12)))
    import soundfile as sf

    sf.write(files["c"], speechlike(2.5, seed=13), 16000, format="FLAC")
    files["bad"].write_bytes(b"RIFF but not really a wave file" * 10)
    (root / "notes.txt").write_text("not audio: a folder walk skips it\n")
    (root / ".hidden.wav").write_bytes(WAV)  # hidden files are skipped too
    return files


def _no_parts(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(cli.PART_SUFFIX)]


def test_cli_in_process(service, tmp_path, capsys):
    files = _recordings(tmp_path / "rec")
    args = ["transcribe", str(tmp_path / "rec"), "--format", "srt", "--url", service.url]
    rc = cli.main([*args, "--concurrency", "2", "--verbose"])
    err = capsys.readouterr().err
    assert rc == 1, err  # the bad file fails, the batch does not stop
    assert "failed" in err and "bad.wav" in err and "decode" in err.lower()
    for key in ("a", "b", "c"):
        out = files[key].with_suffix(".srt")
        assert out.exists(), err
        assert out.read_text().startswith("1\n00:00:") or out.read_text() == ""
    assert not (tmp_path / "rec" / "bad.srt").exists()
    assert not (tmp_path / "rec" / "notes.srt").exists()
    assert not (tmp_path / "rec" / ".hidden.srt").exists()
    assert "3 written, 0 skipped, 1 failed" in err
    _no_parts(tmp_path)

    # A re-run skips finished files (untouched on disk) and retries only the failure.
    mtimes = {k: files[k].with_suffix(".srt").stat().st_mtime_ns for k in ("a", "b", "c")}
    assert cli.main([*args, "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "0 written, 3 skipped, 1 failed" in err
    assert {k: files[k].with_suffix(".srt").stat().st_mtime_ns for k in mtimes} == mtimes

    # --overwrite redoes them; explicitly named good files alone exit 0.
    rc = cli.main(["transcribe", str(files["a"]), "--format", "srt", "--url", service.url,
                   "--overwrite", "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert files["a"].with_suffix(".srt").stat().st_mtime_ns != mtimes["a"]


def test_cli_out_dir_mirrors_and_formats(service, tmp_path, capsys):
    files = _recordings(tmp_path / "rec")
    out = tmp_path / "out"
    base = ["--url", service.url, "--out", str(out), "-q"]
    assert cli.main(["diarize", str(tmp_path / "rec"), "--format", "rttm", *base]) == 1
    assert (out / "a.rttm").exists() and (out / "sub" / "b.rttm").exists()
    for line in (out / "sub" / "b.rttm").read_text().splitlines():
        assert line.startswith("SPEAKER b 1 ")
    # diarize json has its own suffix: it never collides with a transcript's JSON.
    assert cli.main(["diarize", str(files["a"]), "--format", "json", *base]) == 0
    body = json.loads((out / "a.diarize.json").read_text())
    assert "speakers_detected" in body
    assert cli.main(["transcribe", str(files["a"]), "--diarize", *base]) == 0
    full = json.loads((out / "a.json").read_text())
    assert {"text", "segments", "words", "duration"} <= set(full)
    assert all("speaker" in s for s in full["segments"])
    assert cli.main(["transcribe", str(files["c"]), "--format", "txt", *base]) == 0
    assert (out / "c.txt").exists()
    # Nothing was written beside the inputs.
    assert sorted(p.name for p in (tmp_path / "rec").rglob("*") if p.is_file()) == sorted(
        [".hidden.wav", "a.wav", "b.wav", "bad.wav", "c.flac", "notes.txt"]
    )
    _no_parts(tmp_path)
    capsys.readouterr()


def test_cli_interrupted_output_is_not_taken_as_done(service, tmp_path, monkeypatch):
    src = tmp_path / "a.wav"
    src.write_bytes(WAV)
    out = tmp_path / "a.txt"
    args = ["transcribe", str(src), "--format", "txt", "--url", service.url, "-q"]

    # A crash between writing the temporary and renaming it leaves no output at all...
    class CrashingRename:
        """`os` as the CLI sees it, except that the final rename fails."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        @staticmethod
        def replace(*_a, **_k):
            raise OSError("disk vanished")

    monkeypatch.setattr(cli, "os", CrashingRename())
    assert cli.main(args) == 1
    assert not out.exists()
    _no_parts(tmp_path)
    monkeypatch.undo()

    # ...and a temporary left by a killed run is neither an output nor kept.
    stale = tmp_path / f".a.txt.x1y2z3{cli.PART_SUFFIX}"
    stale.write_text("half a transc")
    os.utime(stale, (1, 1))
    assert cli.main(args) == 0
    assert out.exists() and not stale.exists()


def test_cli_unreachable_service_fails_fast(tmp_path, capsys):
    src = tmp_path / "a.wav"
    src.write_bytes(WAV)
    rc = cli.main(["transcribe", str(src), "--url", "http://127.0.0.1:9", "--retries", "0"])
    assert rc == 1
    assert "is the service running" in capsys.readouterr().err
    assert cli.main(["transcribe", str(tmp_path / "missing.wav")]) == 2


def test_cli_plans_colliding_outputs(tmp_path):
    (tmp_path / "a.wav").write_bytes(WAV)
    (tmp_path / "a.mp3").write_bytes(b"")
    (tmp_path / "b.ogg").write_bytes(b"")
    inputs, problems = cli.find_inputs([tmp_path, tmp_path / "a.wav", tmp_path / "nope"])
    assert problems == [f"{tmp_path / 'nope'}: no such file or directory"]
    jobs = cli.plan_jobs(inputs, None, ".json")
    assert sorted(j.output.name for j in jobs) == ["a.mp3.json", "a.wav.json", "b.json"]
    assert not any(j.error for j in jobs)


def test_cli_speaker_arguments(tmp_path, capsys):
    ref = tmp_path / "grace.wav"
    ref.write_bytes(CLIP_A)
    parse = cli.build_parser().parse_args
    args = parse(["transcribe", "m.wav", "--speaker", "Ada", "--speaker", "Bo", "--format", "srt"])
    assert cli.build_request(args) == cli.Request(
        "transcribe",
        {"diarize": True, "known_speaker_names": ["Ada", "Bo"], "response_format": "srt"},
    )
    args = parse(["transcribe", "m.wav", "--format", "diarized_json", "--identify"])
    args.known_speakers = cli.load_references(args.reference)
    assert cli.build_request(args).kwargs == {
        "diarize": True,
        "identify": True,
        "response_format": "diarized_json",
    }
    assert cli.SUFFIXES[("transcribe", "diarized_json")] == ".diarized.json"
    args = parse(["diarize", "m.wav", "--reference", f"Grace Hopper={ref}", "--identify"])
    assert args.reference == [("Grace Hopper", ref)]
    args.known_speakers = cli.load_references(args.reference)
    assert cli.build_request(args) == cli.Request(
        "diarize",
        {"response_format": "json", "identify": True, "known_speakers": {"Grace Hopper": CLIP_A}},
    )
    with pytest.raises(ValueError, match="twice"):
        cli.load_references([("Ada", ref), ("ADA", ref)])
    with pytest.raises(ValueError, match=r"missing\.wav"):
        cli.load_references([("Ada", tmp_path / "missing.wav")])

    m = str(tmp_path / "m.wav")
    assert cli.main(["diarize", m, "--speaker", "Ada", "--reference", f"Bo={ref}"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        cli.main(["diarize", m, "--reference", "no-equals-sign.wav"])
    assert bad.value.code == 2
    assert "NAME=CLIP" in capsys.readouterr().err
    missing_clip = ["speakers", "add", "Ada", str(tmp_path / "nope.wav"), "--url", "http://x"]
    assert cli.main(missing_clip) == 2
    assert "nope.wav: no such file" in capsys.readouterr().err


def test_cli_speaker_lookup_and_table():
    ada = _speaker("spk_a", "Ada Lovelace")
    twin = _speaker("spk_b", "spk_a")  # a legal name that is another speaker's id
    bo = {**_speaker("spk_c", "Bo"), "voiceprints": []}
    assert cli.resolve_speaker([ada, bo], "spk_a") is ada
    assert cli.resolve_speaker([ada, bo], "  ada   LOVELACE ") is ada
    with pytest.raises(LookupError, match="no enrolled speaker"):
        cli.resolve_speaker([ada, bo], "Grace")
    with pytest.raises(LookupError, match="give the id"):
        cli.resolve_speaker([ada, twin], "spk_a")
    assert cli.resolve_speaker([ada, twin], "spk_b") is twin
    lines = cli.speaker_table([ada, bo]).splitlines()
    assert lines[0].split() == ["ID", "NAME", "CLIPS", "SPEECH_S", "MODEL"]
    assert lines[1].split() == ["spk_a", "Ada", "Lovelace", "2", "9.5", "embedder.nemo"]
    assert lines[2].split() == ["spk_c", "Bo", "-", "-", "-"]
    # Columns line up: every row's MODEL starts where the header's does.
    at = lines[0].index("MODEL")
    assert lines[1][at:] == "embedder.nemo" and lines[2][at:] == "-"


def test_cli_speakers_console_script(service, tmp_path):
    """`voxgraph speakers add/list/samples/rm` and a named transcript, as a user runs them."""
    exe = Path(sys.executable).with_name("voxgraph")
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `.venv/bin/pip install -e . --no-deps`")
    env = {**os.environ, "VOXGRAPH_URL": service.url}
    env.pop("VOXGRAPH_API_KEY", None)
    one, two, meeting = tmp_path / "g1.wav", tmp_path / "g2.wav", tmp_path / "meeting.wav"
    one.write_bytes(CLIP_A)
    two.write_bytes(CLIP_B)
    meeting.write_bytes(WAV)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
        )

    added = run("speakers", "add", "CLI Grace", str(one), str(two), "--json")
    assert added.returncode == 0, added.stderr
    grace = json.loads(added.stdout)
    try:
        assert grace["name"] == "CLI Grace" and grace["voiceprints"][0]["clips"] == 2
        taken = run("speakers", "add", "cli grace", str(one))
        assert taken.returncode == 1 and "409" in taken.stderr, taken.stderr

        listed = run("speakers", "list")
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["ID", "NAME", "CLIPS", "SPEECH_S", "MODEL"]
        (row,) = [r for r in rows if r.startswith(grace["id"])]
        assert row.split()[1:4] == ["CLI", "Grace", "2"]
        assert row.endswith("embedder.nemo")

        more = run("speakers", "samples", "cli GRACE", str(one))  # by name
        assert more.returncode == 0, more.stderr
        assert more.stdout.splitlines()[1].split()[3] == "3"

        named = run("transcribe", str(meeting), "--speaker", "CLI Grace", "-q",
                    "--format", "diarized_json")  # fmt: skip
        assert named.returncode == 0, named.stderr
        body = json.loads((tmp_path / "meeting.diarized.json").read_text())
        assert body["identification"]["candidates"] == 1
        assert all(s["type"] == "transcript.text.segment" for s in body["segments"])

        gone = run("speakers", "rm", "CLI Grace")
        assert gone.returncode == 0, gone.stderr
        assert gone.stdout.strip() == f"deleted {grace['id']} (CLI Grace)"
        again = run("speakers", "rm", grace["id"])
        assert again.returncode == 1 and "no enrolled speaker" in again.stderr
        listed = run("speakers", "list", "--json")
        assert grace["id"] not in [s["id"] for s in json.loads(listed.stdout)]
    finally:
        with VoxgraphClient(service.url) as vg:
            if grace["id"] in [s["id"] for s in vg.list_speakers()]:
                vg.delete_speaker(grace["id"])


def test_cli_console_script(service, tmp_path):
    """The installed `voxgraph` command (pip install -e . put it in the venv)."""
    exe = Path(sys.executable).with_name("voxgraph")
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `.venv/bin/pip install -e . --no-deps`")
    files = _recordings(tmp_path / "rec")
    env = {**os.environ, "VOXGRAPH_URL": service.url}
    env.pop("VOXGRAPH_API_KEY", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
        )

    health = run("health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "ready"

    first = run("transcribe", str(tmp_path / "rec"), "--diarize", "--format", "vtt")
    assert first.returncode == 1, first.stderr
    # Not a terminal: one line per file, then the summary.
    assert first.stderr.count("written ") == 3, first.stderr
    assert "failed" in first.stderr and "bad.wav" in first.stderr
    for key in ("a", "b", "c"):
        assert files[key].with_suffix(".vtt").read_text().startswith("WEBVTT")

    again = run("transcribe", str(tmp_path / "rec"), "--diarize", "--format", "vtt")
    assert again.returncode == 1
    assert again.stderr.count("skipped ") == 3, again.stderr
    assert "0 written, 3 skipped, 1 failed" in again.stderr

    ok = run("diarize", str(files["b"]), "--format", "rttm")
    assert ok.returncode == 0, ok.stderr
    assert files["b"].with_suffix(".rttm").exists()
