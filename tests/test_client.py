"""voxgraph.client and the `voxgraph` command against the real tiny-model graph.

The retry and header tests at the top answer from an httpx MockTransport (a 503
with Retry-After cannot be provoked on demand from a healthy service); every
other test talks to the `service` fixture over loopback.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
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
    PayloadTooLargeError,
    ServiceUnavailableError,
    VoxgraphClient,
)

pytestmark = pytest.mark.integration

WAV = wav_bytes(speechlike(6.0, seed=3))
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
