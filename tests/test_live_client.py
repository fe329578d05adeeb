"""`voxgraph.live_client` and `voxgraph live`.

Unit tests run the client against a small fake of the realtime route (websockets,
on 127.0.0.1, in a thread of its own): the protocol as the client speaks it,
pacing by the wall clock, manual and tail commits, handshake and close-code
failures, and the CLI's lines and exit codes. The integration tests run the same
client and command against the real graph (the `service` fixture).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from tests.conftest import ROOT, SR, free_port, speechlike, wav_bytes
from voxgraph import cli
from voxgraph import live_client as lc
from voxgraph.client import APIConnectionError, AuthenticationError

# --------------------------------------------------------------------------- a fake route


@dataclass
class FakeRealtime:
    """The realtime route's protocol, minimally: every commit of a non-empty buffer
    becomes an item with one segment per second of audio (speakers alternate);
    with `vad_every_s`, the "VAD" commits by itself every that many seconds."""

    key: str | None = None
    vad_every_s: float | None = None
    close_after_appends: int | None = None  # then close with 1013
    answer_delay_s: float = 0.0
    url: str = ""
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    async def handler(self, ws: ServerConnection) -> None:
        n_items = 0
        rate = 24000
        buffer = bytearray()
        total = 0  # bytes of audio over the session
        committed_at = 0  # byte offset of the last commit
        appends = 0
        previous: str | None = None
        ids = iter(range(1, 1_000_000))

        async def send(event: dict[str, Any]) -> None:
            await ws.send(json.dumps({"event_id": f"event_{next(ids)}", **event}))

        async def item(start_b: int, end_b: int) -> None:
            nonlocal n_items, previous
            n_items += 1
            item_id = f"item_{n_items}"
            await send({"type": lc.COMMITTED, "item_id": item_id, "previous_item_id": previous})
            previous = item_id
            if self.answer_delay_s:
                await asyncio.sleep(self.answer_delay_s)
            start, end = start_b / (2 * rate), end_b / (2 * rate)
            texts = []
            k, t = 0, start
            while t < end - 1e-9:
                seg_end = min(end, t + 1.0)
                text = f"words {n_items}.{k}"
                texts.append(text)
                await send({"type": lc.DELTA, "item_id": item_id, "content_index": 0,
                            "delta": text + " "})  # fmt: skip
                await send(
                    {
                        "type": lc.SEGMENT,
                        "item_id": item_id,
                        "content_index": 0,
                        "id": f"seg_{n_items}_{k}",
                        "start": round(t, 3),
                        "end": round(seg_end, 3),
                        "speaker": f"Speaker_{k % 2}",
                        "text": text,
                        "confidence": 0.9,
                    }
                )
                k, t = k + 1, seg_end
            await send(
                {
                    "type": lc.COMPLETED,
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": " ".join(texts),
                    "speaker": "Speaker_0",
                    "usage": {"type": "duration", "seconds": end - start},
                }
            )

        await send({"type": lc.SESSION_CREATED, "session": {"type": "transcription"}})
        async for message in ws:
            event = json.loads(message)
            self.received.append((time.monotonic(), event))
            kind = event["type"]
            if kind == "session.update":
                self.sessions.append(event["session"])
                rate = event["session"]["audio"]["input"]["format"]["rate"]
                await send({"type": lc.SESSION_UPDATED, "session": event["session"]})
            elif kind == "input_audio_buffer.append":
                chunk = base64.b64decode(event["audio"])
                buffer += chunk
                total += len(chunk)
                appends += 1
                if self.close_after_appends and appends >= self.close_after_appends:
                    await ws.close(1013, "try again later")
                    return
                if self.vad_every_s and len(buffer) >= self.vad_every_s * 2 * rate:
                    start_ms = committed_at * 1000 // (2 * rate)
                    await send({"type": lc.SPEECH_STARTED, "item_id": f"item_{n_items + 1}",
                                "audio_start_ms": start_ms})  # fmt: skip
                    await send({"type": lc.SPEECH_STOPPED, "item_id": f"item_{n_items + 1}",
                                "audio_end_ms": total * 1000 // (2 * rate)})  # fmt: skip
                    await item(committed_at, total)
                    committed_at = total
                    buffer.clear()
            elif kind == "input_audio_buffer.commit":
                if not buffer:
                    await send(
                        {
                            "type": lc.ERROR,
                            "error": {
                                "type": "invalid_request_error",
                                "code": "input_audio_buffer_commit_empty",
                                "message": "buffer empty",
                                "param": None,
                                "event_id": event.get("event_id"),
                            },
                        }
                    )
                    continue
                await item(committed_at, total)
                committed_at = total
                buffer.clear()
            elif kind == "input_audio_buffer.clear":
                buffer.clear()
                await send({"type": lc.CLEARED})

    def process_request(self, ws: ServerConnection, request: Any) -> Response | None:
        if not request.path.startswith("/v1/realtime?intent=transcription"):
            return _http(404, "no such route")
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return _http(401, "invalid API key")
        return None

    def appends(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.received if e["type"] == "input_audio_buffer.append"]


def _http(status: int, message: str) -> Response:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status, "error", headers, body)


@pytest.fixture
def fake() -> Iterator[FakeRealtime]:
    """A FakeRealtime listening on 127.0.0.1 in a thread with its own event loop."""
    server = FakeRealtime()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        async with serve(
            server.handler, "127.0.0.1", 0, process_request=server.process_request
        ) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            server.url = f"http://127.0.0.1:{port}"
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield server
    loop.call_soon_threadsafe(stop.set_result, None)  # type: ignore[union-attr]
    thread.join(10)
    loop.close()


def _collect(client: lc.LiveClient, pcm: bytes, options: lc.LiveOptions) -> list[lc.LiveEvent]:
    async def run() -> list[lc.LiveEvent]:
        return [e async for e in client.stream(pcm, options)]

    return asyncio.run(run())


def _pcm(seconds: float, rate: int = 24000) -> bytes:
    return lc.pcm16_from_float(speechlike(seconds, seed=3), SR, rate)


# --------------------------------------------------------------------------- pure parts


def test_session_update_is_openais_transcription_session():
    vad = lc.session_update(lc.LiveOptions(language="en", model="parakeet"), "e1")
    assert vad == {
        "type": "session.update",
        "event_id": "e1",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                    },
                    "transcription": {"model": "parakeet", "language": "en"},
                }
            },
        },
    }
    manual = lc.session_update(
        lc.LiveOptions(rate=16000, manual_commit_s=2, identify=True, known_speaker_names=["Ada"])
    )
    session = manual["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["format"]["rate"] == 16000
    assert session["speakers"] == {"identify": True, "known_speaker_names": ["Ada"]}
    assert "event_id" not in manual
    with pytest.raises(ValueError, match="rate"):
        lc.LiveOptions(rate=44100)
    with pytest.raises(ValueError, match="speed"):
        lc.LiveOptions(speed=0)


def test_realtime_url_from_the_service_url():
    assert lc.realtime_url("http://127.0.0.1:8000") == (
        "ws://127.0.0.1:8000/v1/realtime?intent=transcription"
    )
    assert lc.realtime_url("https://vg.example/speech/") == (
        "wss://vg.example/speech/v1/realtime?intent=transcription"
    )
    assert lc.realtime_url("ws://h:1/v1/realtime", api_key_in_query="k") == (
        "ws://h:1/v1/realtime?intent=transcription&api_key=k"
    )
    with pytest.raises(ValueError):
        lc.realtime_url("ftp://h")


def _wav(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    """Integer PCM WAV of any width by the standard library (mono or (n, channels))."""
    x = np.asarray(samples, dtype=np.float64)
    x = x.reshape(len(x), -1)
    ints = np.round(np.clip(x, -1, 1) * (2 ** (8 * width - 1) - 1)).astype("<i4")
    raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def test_pcm16_with_and_without_the_server_decoder(monkeypatch):
    x = speechlike(1.0, seed=5)  # 16 kHz
    data = wav_bytes(x)
    full = lc.load_pcm16(data, 24000)  # the service's decoder (numpy here)
    assert len(full) == 2 * 24000
    # The client-only install: no voxgraph.audio (numpy, soundfile, PyAV are absent).
    monkeypatch.setitem(sys.modules, "voxgraph.audio", None)
    light = lc.load_pcm16(data, 24000)
    assert len(light) == 2 * 24000
    a = np.frombuffer(full, "<i2").astype(float)
    b = np.frombuffer(light, "<i2").astype(float)
    assert np.corrcoef(a, b)[0, 1] > 0.98  # linear vs soxr resampling of the same audio
    same = lc.load_pcm16(data, 16000)
    assert np.abs(np.frombuffer(same, "<i2") - np.round(x * 32767)).max() <= 1
    # stereo 24-bit at 48 kHz: downmixed, top 16 bits, resampled
    t = np.arange(4800) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = _wav(np.stack([tone, tone], axis=1), 48000, width=3)
    out = np.frombuffer(lc.load_pcm16(stereo, 24000), "<i2")
    assert len(out) == 2400
    assert abs(out.max() / 32767 - 0.5) < 0.01
    with pytest.raises(lc.AudioFileError, match="PCM WAV"):
        lc.load_pcm16(b"OggS not a wav", 24000)
    with pytest.raises(lc.AudioFileError, match="empty"):
        lc.load_pcm16(b"", 24000)


def test_undecodable_file_with_the_server_decoder():
    with pytest.raises(lc.AudioFileError):
        lc.load_pcm16(b"definitely not audio" * 100, 24000)


def test_parse_event_refuses_what_is_not_an_event():
    event = lc.parse_event('{"type":"error","error":{"message":"m","code":"c"}}', 1.5)
    assert (event.type, event.t, lc.error_text(event)) == ("error", 1.5, "m (c)")
    for bad in ("not json", "[1, 2]", '{"no": "type"}'):
        with pytest.raises(lc.VoxgraphClientError):
            lc.parse_event(bad, 0.0)


def test_live_lines():
    assert cli.live_clock(12.34) == "00:12.3"
    assert cli.live_clock(3723.46) == "1:02:03.5"
    assert cli.live_line("hi", "Speaker_0", 12.3, 15.0, 0.913) == (
        "[00:12.3–00:15.0] Speaker_0 (0.91): hi"
    )
    assert cli.live_line("hi", None, None, None, None) == "hi"
    assert cli.live_line("hi", "Ada") == "Ada: hi"


# --------------------------------------------------------------------------- against the fake


def test_streams_at_real_time_times_speed(fake):
    pcm = _pcm(2.0)
    t0 = time.monotonic()
    events = _collect(lc.LiveClient(fake.url), pcm, lc.LiveOptions(speed=4))
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.5  # 2 s of audio at 4x real time
    appends = fake.appends()
    assert len(appends) == 20  # 100 ms chunks
    first = appends[0][0]
    for k, (t, event) in enumerate(appends):
        # chunk k goes out once k + 1 chunks of audio lasted (/ speed), never before
        assert t - first >= k * 0.025 - 0.005
        assert len(base64.b64decode(event["audio"])) == 4800
    assert appends[-1][0] - first >= 0.45
    # VAD mode: the tail is committed and its item completed before the stream ends
    kinds = [e.type for e in events]
    assert kinds.count(lc.COMPLETED) == 1 and kinds[-1] in (lc.COMPLETED, lc.DELTA, lc.SEGMENT)
    assert [e.t for e in events] == sorted(e.t for e in events)
    segs = [e.data for e in events if e.type == lc.SEGMENT]
    assert [(s["start"], s["end"]) for s in segs] == [(0.0, 1.0), (1.0, 2.0)]


def test_manual_commits_every_n_seconds(fake):
    client = lc.LiveClient(fake.url)
    options = lc.LiveOptions(manual_commit_s=0.5, speed=10, rate=16000)

    async def run() -> tuple[list[lc.LiveEvent], lc.SendStats]:
        session = await client.connect(options)
        async with session:
            events = [e async for e in client.stream(_pcm(1.2, 16000), session=session)]
        return events, session.stats

    events, stats = asyncio.run(run())
    assert fake.sessions[0]["audio"]["input"]["turn_detection"] is None
    commits = [e for _, e in fake.received if e["type"] == "input_audio_buffer.commit"]
    assert len(commits) == 3 == len(stats.commits)  # at 0.5 s, 1.0 s, and the 0.2 s tail
    assert [c["event_id"] for c in commits] == [i for i, _ in stats.commits]
    completed = [e for e in events if e.type == lc.COMPLETED]
    assert [e.item_id for e in completed] == ["item_1", "item_2", "item_3"]
    assert stats.audio_s == pytest.approx(1.2)
    assert stats.max_lag_s < 0.5


def test_vad_tail_commit_on_an_empty_buffer_is_not_an_error(fake):
    fake.vad_every_s = 1.0
    events = _collect(lc.LiveClient(fake.url), _pcm(2.0), lc.LiveOptions(speed=8))
    assert [e.type for e in events].count(lc.COMPLETED) == 2
    assert lc.ERROR not in [e.type for e in events]  # the empty-buffer answer is swallowed
    stopped = [e.data["audio_end_ms"] for e in events if e.type == lc.SPEECH_STOPPED]
    assert stopped == [1000, 2000]


def test_waits_for_slow_transcripts(fake):
    fake.answer_delay_s = 0.4
    t0 = time.monotonic()
    events = _collect(lc.LiveClient(fake.url), _pcm(0.5), lc.LiveOptions(speed=10))
    assert time.monotonic() - t0 >= 0.4
    assert events[-1].type == lc.COMPLETED


def test_finish_timeout(fake):
    fake.answer_delay_s = 5
    with pytest.raises(lc.APITimeoutError, match="item_1"):
        _collect(lc.LiveClient(fake.url, finish_timeout=0.3), _pcm(0.3), lc.LiveOptions(speed=10))


def test_auth_and_connection_failures(fake):
    fake.key = "sekret"
    events = _collect(lc.LiveClient(fake.url, api_key="sekret"), _pcm(0.2), lc.LiveOptions())
    assert events[-1].type == lc.COMPLETED
    with pytest.raises(AuthenticationError) as e:
        _collect(lc.LiveClient(fake.url, api_key="wrong"), _pcm(0.2), lc.LiveOptions())
    assert e.value.status == 401 and "invalid API key" in str(e.value)
    with pytest.raises(APIConnectionError):
        _collect(lc.LiveClient("http://127.0.0.1:9"), _pcm(0.2), lc.LiveOptions())


def test_server_closing_the_session_is_raised(fake):
    fake.close_after_appends = 3
    with pytest.raises(lc.SessionClosed) as e:
        _collect(lc.LiveClient(fake.url), _pcm(1.0), lc.LiveOptions(speed=10))
    assert e.value.code == 1013 and e.value.retryable
    assert "try again later" in str(e.value)


# --------------------------------------------------------------------------- the command


def test_command_prints_speaker_lines(fake, tmp_path, capsys):
    path = tmp_path / "call.wav"
    path.write_bytes(wav_bytes(speechlike(2.0, seed=1)))
    code = cli.main(["live", str(path), "--url", fake.url, "--speed", "8", "--identify"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == [
        "[00:00.0–00:01.0] Speaker_0 (0.90): words 1.0",
        "[00:01.0–00:02.0] Speaker_1 (0.90): words 1.1",
    ]
    assert fake.sessions[0]["speakers"] == {"identify": True}
    assert "1 items, 2 segments, speakers: Speaker_0, Speaker_1; 2.0 s of audio" in err

    code = cli.main(["live", str(path), "--url", fake.url, "--speed", "8", "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    kinds = [json.loads(line)["type"] for line in out.splitlines()]
    assert kinds[0] == lc.COMMITTED and kinds[-1] == lc.COMPLETED


def test_command_errors(fake, tmp_path, capsys):
    path = tmp_path / "call.wav"
    path.write_bytes(wav_bytes(speechlike(0.5, seed=1)))
    assert cli.main(["live", str(tmp_path / "missing.wav"), "--url", fake.url]) == 2
    assert "no such file" in capsys.readouterr().err

    assert cli.main(["live", str(path), "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "ws://127.0.0.1:9/v1/realtime" in err and "is the service running?" in err

    fake.key = "sekret"
    assert cli.main(["live", str(path), "--url", fake.url, "--api-key", "wrong"]) == 1
    assert "401: invalid API key" in capsys.readouterr().err

    fake.key = None
    fake.close_after_appends = 2
    assert cli.main(["live", str(path), "--url", fake.url, "--speed", "8"]) == 1
    assert "1013" in capsys.readouterr().err

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 50)
    assert cli.main(["live", str(bad), "--url", fake.url]) == 1
    assert "bad.wav" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real graph

LINE = re.compile(r"^\[\d\d:\d\d\.\d–\d\d:\d\d\.\d\] (Speaker_\d+) \(\d\.\d\d\): \S.*$")


def _conversation_wav(path: Path, seconds: float = 6.0) -> Path:
    from bench.common import conversation

    path.write_bytes(wav_bytes(conversation(seconds, seed=2, speakers=2)))
    return path


def _voxgraph(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgraph.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.integration
def test_live_command_prints_speaker_lines_from_the_graph(service, tmp_path):
    wav = _conversation_wav(tmp_path / "meeting.wav")
    r = _voxgraph("live", str(wav), "--url", service.url, "--speed", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(LINE.match(line) for line in lines), r.stdout
    assert "6.0 s of audio" in r.stderr and "speakers: Speaker_" in r.stderr

    # manual commits at 16 kHz: the same shape of lines, times in session seconds
    r = _voxgraph(
        "live", str(wav), "--url", service.url, "--speed", "4", "--rate", "16000",
        "--manual-commit-s", "2", "--json", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    committed = [e["item_id"] for e in events if e["type"] == lc.COMMITTED]
    completed = [e["item_id"] for e in events if e["type"] == lc.COMPLETED]
    assert len(committed) == 3 and sorted(completed) == sorted(committed)
    segments = [e for e in events if e["type"] == lc.SEGMENT]
    assert all(0 <= s["start"] <= s["end"] <= 6.0 + 0.1 for s in segments)
    assert all(e["event_id"] and e["type"] for e in events)


@pytest.mark.integration
def test_live_client_paces_at_real_time_times_speed(service):
    from bench.common import conversation

    # seed 2: a pause longer than the VAD's 500 ms after ~2.5 s (a turn the server ends)
    pcm = lc.pcm16_from_float(conversation(6.0, seed=2, speakers=2), SR, 24000)
    client = lc.LiveClient(service.url)

    async def run() -> tuple[list[lc.LiveEvent], lc.SendStats, float]:
        t0 = time.monotonic()
        async with await client.connect(lc.LiveOptions(speed=4)) as session:
            events = [e async for e in client.stream(pcm, session=session)]
        return events, session.stats, time.monotonic() - t0

    events, stats, elapsed = asyncio.run(run())
    assert elapsed >= 1.5
    assert stats.finished_t - stats.started_t >= 1.5 - 0.05
    assert stats.audio_s == pytest.approx(6.0)
    stopped = {e.item_id: e.t for e in events if e.type == lc.SPEECH_STOPPED}
    completed = {e.item_id: e.t for e in events if e.type == lc.COMPLETED}
    assert stopped and set(stopped) <= set(completed)
    assert all(completed[i] >= stopped[i] for i in stopped)


@pytest.mark.integration
def test_live_command_bad_url_and_bad_key(service, tmp_path):
    from ray import serve

    from tests.conftest import deploy_ingress_variant

    wav = _conversation_wav(tmp_path / "short.wav", seconds=1.0)
    r = _voxgraph("live", str(wav), "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "is the service running?" in r.stderr and "Traceback" not in r.stderr

    url = deploy_ingress_variant(
        service, "voxgraph-live-keys", "/live-keys", settings={"api_keys": ["live-sekret"]}
    )
    try:
        r = _voxgraph("live", str(wav), "--url", url, "--api-key", "wrong", "--speed", "4")
        assert r.returncode == 1
        assert "1008" in r.stderr and "API key" in r.stderr and "Traceback" not in r.stderr
        r = _voxgraph("live", str(wav), "--url", url, "--api-key", "live-sekret", "--speed", "4")
        assert r.returncode == 0, r.stderr
    finally:
        serve.delete("voxgraph-live-keys")


def test_bench_item_delays():
    from bench.live import item_delays

    def ev(kind: str, item: str, t: float) -> lc.LiveEvent:
        return lc.LiveEvent(kind, {"type": kind, "item_id": item}, t)

    vad = [
        ev(lc.SPEECH_STOPPED, "a", 2.0),
        ev(lc.COMMITTED, "a", 2.0),
        ev(lc.SPEECH_STOPPED, "b", 5.0),
        ev(lc.COMPLETED, "a", 2.5),
        ev(lc.COMMITTED, "b", 5.0),
        ev(lc.COMMITTED, "tail", 6.0),  # the tail commit: no speech_stopped, no delay
        ev(lc.COMPLETED, "b", 6.5),
        ev(lc.COMPLETED, "tail", 6.6),
    ]
    assert item_delays(vad, [("c1", 5.9)], manual=False) == pytest.approx([0.5, 1.5])
    manual = [ev(lc.COMMITTED, "x", 1.1), ev(lc.COMMITTED, "y", 2.1), ev(lc.COMPLETED, "y", 3.0)]
    assert item_delays(manual, [("c1", 1.0), ("c2", 2.0)], manual=True) == pytest.approx([1.0])
