"""Realtime transcription sessions over hand-made backends: protocol, speakers, limits, memory.

`Voices` are tests.test_pipeline's FakeBackends that also hear silence: a
sample value of 0.1 is Alice, 0.2 is Bob, 0 is nobody. So every turn's words,
local speakers and fingerprints are known, and the session's labels can be
checked against the offline route's for the same recording. The real graph
(tiny NeMo models, Ray, the openai client) is tests/test_realtime_graph.py.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.test_pipeline import FRAME_S, HOP, FakeBackends, _who
from voxgraph.live import EnergyVad, LiveSession, RollingAudio
from voxgraph.live_speakers import SessionSpeakers
from voxgraph.schemas import DiarizeOptions
from voxgraph.settings import Settings
from voxgraph.types import SAMPLE_RATE, Diarization, Turn

SR = SAMPLE_RATE


class Voices(FakeBackends):
    """FakeBackends whose diarizer hears nobody in silence."""

    async def transcribe(self, audio: np.ndarray):
        from voxgraph.types import Segment, Transcript

        t = await super().transcribe(audio)
        words = tuple(w for w in t.words if w.text != "?")  # silence says nothing
        segs = (Segment(" ".join(w.text for w in words), words[0].start, words[-1].end, words),)
        return Transcript(segs[0].text, words, segs if words else (), t.duration)

    async def diarize(self, audio: np.ndarray) -> Diarization:
        self.calls["diarizer"] += 1
        frames = math.ceil(len(audio) / HOP)
        who = [_who(audio[i * HOP]) for i in range(frames)]
        voices = [w for w in dict.fromkeys(who) if w]
        local = {w: k for k, w in enumerate(voices)}
        probs = np.full((frames, 4), 0.02, dtype=np.float32)
        turns: list[Turn] = []
        start = 0
        for i in range(1, frames + 1):
            if i == frames or who[i] != who[start]:
                if who[start]:
                    turns.append(Turn(start * FRAME_S, i * FRAME_S, local[who[start]]))
                start = i
        for i, w in enumerate(who):
            if w:
                probs[i, local[w]] = 0.9
        return Diarization(tuple(turns), probs, FRAME_S, len(audio) / SR)


def settings(**over) -> Settings:
    base = {"diar_window_s": 25, "diar_overlap_s": 5, "asr_window_s": 25, "asr_overlap_s": 5}
    return Settings.load({**base, **over})


def meeting(turns: list[tuple[float, float]], gap_s: float = 1.0) -> np.ndarray:
    """(voice value, seconds) turns separated by `gap_s` of silence."""
    parts = []
    for value, seconds in turns:
        parts += [
            np.full(int(seconds * SR), value, np.float32),
            np.zeros(int(gap_s * SR), np.float32),
        ]
    return np.concatenate(parts).astype(np.float32)


def pcm(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


class Run:
    """A session with its events collected."""

    def __init__(self, backends=None, **over):
        from voxgraph.pipeline import Pipeline

        self.settings = settings(**over)
        self.backends = backends or Voices()
        self.pipeline = Pipeline(self.backends, self.settings)
        self.events: list[dict] = []

        async def emit(ev):
            self.events.append(ev)

        self.session = LiveSession(self.pipeline, emit, self.settings)

    async def send(self, **ev):
        await self.session.receive(json.dumps(ev))

    async def stream(self, x: np.ndarray, rate: int = 16000, step_s: float = 0.1):
        step = int(step_s * SR)
        for i in range(0, len(x), step):
            await self.send(type="input_audio_buffer.append", audio=pcm(x[i : i + step]))

    async def settle(self, timeout_s: float = 10.0):
        t0 = time.monotonic()
        while self.session.pending_items and time.monotonic() - t0 < timeout_s:
            await asyncio.sleep(0.01)
        assert not self.session.pending_items

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


SESSION_16K = {
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
}
MANUAL_16K = {
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
}


def test_server_vad_turns_keep_session_speakers_equal_to_the_offline_labels():
    x = meeting([(0.1, 3), (0.2, 3), (0.1, 2), (0.2, 4), (0.1, 3)])

    async def live():
        run = Run()
        await run.session.start()
        await run.send(type="session.update", session=SESSION_16K)
        await run.stream(x)
        await run.settle()
        await run.session.close()
        return run

    run = asyncio.run(live())
    assert [e["type"] for e in run.events[:2]] == ["session.created", "session.updated"]
    started = run.of("input_audio_buffer.speech_started")
    stopped = run.of("input_audio_buffer.speech_stopped")
    committed = run.of("input_audio_buffer.committed")
    completed = run.of("conversation.item.input_audio_transcription.completed")
    assert len(started) == len(stopped) == len(committed) == len(completed) == 5
    assert [s["item_id"] for s in stopped] == [c["item_id"] for c in completed]
    assert [c["previous_item_id"] for c in committed] == [None] + [
        c["item_id"] for c in committed[:-1]
    ]
    # The VAD's times are the recording's: turn k starts after k turns and k gaps.
    assert [s["audio_start_ms"] for s in started] == [0, 4000, 8000, 11000, 16000]

    async def offline():
        from voxgraph.pipeline import Pipeline

        return await Pipeline(Voices(), run.settings).diarize(wav(x), DiarizeOptions())

    turns = asyncio.run(offline()).turns
    offline_labels = [t.speaker for t in turns]
    live_labels = [c["speaker"] for c in completed]
    assert (
        live_labels
        == offline_labels
        == [
            "Speaker_0",
            "Speaker_1",
            "Speaker_0",
            "Speaker_1",
            "Speaker_0",
        ]
    )
    words = {c["speaker"]: set(c["transcript"].split()) for c in completed}
    assert words == {"Speaker_0": {"alice"}, "Speaker_1": {"bob"}}
    segments = run.of("conversation.item.input_audio_transcription.segment")
    assert {s["speaker"] for s in segments} == {"Speaker_0", "Speaker_1"}
    for s in segments:
        # Session times, with the diarizer's confidence.
        assert 0 <= s["start"] < s["end"] <= len(x) / SR + 0.01
        assert 0.5 < s["confidence"] <= 1.0
    # No turn and no segment mixes the two voices.
    for s in segments:
        assert set(s["text"].split()) in ({"alice"}, {"bob"})


def update(audio_input: dict) -> str:
    return json.dumps({"type": "session.update", "session": {"audio": {"input": audio_input}}})


def append(x: np.ndarray) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": pcm(x)})


def wav(x: np.ndarray) -> bytes:
    from tests.conftest import wav_bytes

    return wav_bytes(x)


def test_manual_commits_clear_and_bad_messages_keep_the_session_open():
    async def go():
        run = Run()
        await run.session.start()
        await run.send(
            type="session.update",
            session=MANUAL_16K,
        )
        assert run.session.config.vad is None
        bad = [
            "not json",
            json.dumps({"no": "type"}),
            json.dumps({"type": "response.create"}),
            json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}),
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}
            ),
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}
                    },
                }
            ),
            json.dumps({"type": "session.update", "session": {"type": "realtime"}}),
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
                }
            ),
            json.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_client_1"}),
        ]
        for m in bad:
            await run.session.receive(m)
        errors = run.of("error")
        assert len(errors) == len(bad)
        codes = [e["error"]["code"] for e in errors]
        assert codes[:3] == ["invalid_json", "invalid_event", "invalid_event"]
        assert codes[-1] == "input_audio_buffer_commit_empty"
        assert errors[-1]["error"]["event_id"] == "evt_client_1"
        assert "44100" in errors[5]["error"]["message"] or "rate" in errors[5]["error"]["message"]
        assert run.session.config.rate == 16000  # a refused update changes nothing
        # The session still works: Alice, commit; noise, clear; Bob, commit.
        await run.stream(np.full(2 * SR, 0.1, np.float32))
        await run.send(type="input_audio_buffer.commit")
        await run.stream(np.full(SR, 0.3, np.float32))
        await run.send(type="input_audio_buffer.clear")
        await run.stream(np.full(2 * SR, 0.2, np.float32))
        await run.send(type="input_audio_buffer.commit")
        await run.settle()
        await run.session.close()
        return run

    run = asyncio.run(go())
    assert len(run.of("input_audio_buffer.cleared")) == 1
    done = run.of("conversation.item.input_audio_transcription.completed")
    assert [c["speaker"] for c in done] == ["Speaker_0", "Speaker_1"]
    assert [c["transcript"] for c in done] == ["alice alice", "bob bob"]
    assert done[1]["usage"] == {"type": "duration", "seconds": 2.0}
    assert not run.of("input_audio_buffer.speech_started")  # manual mode: no VAD events


def test_24khz_audio_is_resampled_and_times_stay_in_session_seconds():
    from scipy.signal import resample_poly

    x = meeting([(0.1, 2), (0.2, 2)])
    x24 = resample_poly(x, 3, 2).astype(np.float32)

    async def go():
        run = Run()
        await run.session.start()
        assert run.session.config.rate == 24000  # OpenAI's default
        step = 2400
        for i in range(0, len(x24), step):
            await run.send(type="input_audio_buffer.append", audio=pcm(x24[i : i + step]))
        await run.settle()
        return run

    run = asyncio.run(go())
    stopped = run.of("input_audio_buffer.speech_stopped")
    assert [round(s["audio_end_ms"] / 100) for s in stopped] == [20, 50]
    done = run.of("conversation.item.input_audio_transcription.completed")
    assert [c["speaker"] for c in done] == ["Speaker_0", "Speaker_1"]


def test_known_speakers_are_named_for_the_whole_session(tmp_path):
    from tests.test_pipeline import _voice

    ref = "data:audio/wav;base64," + base64.b64encode(_voice(0.2, 3)).decode()
    x = meeting([(0.1, 3), (0.2, 3), (0.1, 2), (0.2, 2)])

    async def go():
        run = Run()
        await run.session.start()
        await run.send(
            type="session.update",
            session={
                **SESSION_16K,
                "speakers": {"known_speaker_names": ["Bob"], "known_speaker_references": [ref]},
            },
        )
        await run.stream(x)
        await run.settle()
        return run

    run = asyncio.run(go())
    assert not run.of("error")
    done = run.of("conversation.item.input_audio_transcription.completed")
    assert [c["speaker"] for c in done] == ["Speaker_0", "Bob", "Speaker_0", "Bob"]


def test_a_monologue_is_cut_at_the_longest_turn():
    async def go():
        run = Run(realtime_max_turn_s=5)
        await run.session.start()
        await run.send(type="session.update", session=SESSION_16K)
        await run.stream(np.full(12 * SR, 0.1, np.float32))
        await run.stream(np.zeros(SR, np.float32))
        await run.settle()
        return run

    run = asyncio.run(go())
    done = run.of("conversation.item.input_audio_transcription.completed")
    assert [c["usage"]["seconds"] for c in done][:2] == [5.0, 5.0]
    assert len(done) == 3 and {c["speaker"] for c in done} == {"Speaker_0"}


def test_session_memory_is_bounded_by_its_context():
    """A long session holds no more than a short one: the context's audio and a few frames."""

    async def session_of(seconds: int) -> int:
        run = Run(realtime_context_s=20, realtime_diar_context_s=10)
        await run.session.start()
        await run.send(type="session.update", session=SESSION_16K)
        one = meeting([(0.1, 4), (0.2, 4)])  # 10 s of dialogue with gaps
        for _ in range(seconds // 10):
            await run.stream(one, step_s=1.0)
            await run.settle()
        held = run.session.memory_bytes()
        assert {
            c["speaker"] for c in run.of("conversation.item.input_audio_transcription.completed")
        } == {
            "Speaker_0",
            "Speaker_1",
        }
        await run.session.close()
        return held

    short, long = asyncio.run(session_of(120)), asyncio.run(session_of(1800))
    assert long <= short * 1.05, (short, long)
    assert long < 25 * SR * 4 + 100_000  # the 20 s context of float32, plus small change


def test_rolling_audio_and_vad_pieces():
    audio = RollingAudio(keep_s=1.0)
    for _ in range(5):
        audio.append(np.arange(8000, dtype=np.float32))
    assert audio.end == 40000 and audio.start >= 40000 - 16000 - 8000
    assert len(audio.get(0, 40000)) == audio.end - audio.start
    assert np.array_equal(audio.get(32000, 32010), np.arange(10, dtype=np.float32))
    vad = EnergyVad(0.5, 200)
    x = np.concatenate([np.zeros(SR), np.full(SR, 0.1), np.zeros(SR)]).astype(np.float32)
    events = [e for i in range(0, len(x), 123) for e in vad.feed(x[i : i + 123])]
    assert [(e.kind, e.sample) for e in events] == [("start", SR), ("stop", 2 * SR)]
    # Quiet noise (about -60 dBFS) is not speech.
    noise = np.random.default_rng(0).normal(0, 0.001, SR).astype(np.float32)
    assert EnergyVad(0.5, 200).feed(noise) == []


def test_session_speakers_are_stable_and_constrained():
    speakers = SessionSpeakers(0.5)
    a, b = np.eye(8)[1], np.eye(8)[2]

    def diar(*locals_):
        turns = tuple(Turn(i * 1.0, i * 1.0 + 1.0, k) for i, k in enumerate(locals_))
        return Diarization(turns, np.zeros((0, 4), np.float32), 0.08, len(locals_))

    assert speakers.link(diar(0, 1), {0: a, 1: b}, 0.0) == {0: 0, 1: 1}
    # Local order changes from chunk to chunk; session speakers do not.
    assert speakers.link(diar(0, 1), {0: b, 1: a}, 10.0) == {0: 1, 1: 0}
    # Two local voices both closest to Alice: one to one, the other is someone new.
    assert speakers.link(diar(0, 1), {0: a, 1: a * 0.9 + b * 0.1}, 20.0) == {0: 0, 1: 2}


# ---------------------------------------------------------------- over the WebSocket route


@pytest.fixture
def app_over(tmp_path):
    from deployments.http_app import build_api
    from voxgraph.service import VoxgraphService

    def make(**over) -> TestClient:
        db = f"sqlite:///{tmp_path / 'speakers.db'}"
        svc = VoxgraphService(Voices(), settings(speakers_db=db, **over))
        return TestClient(build_api(svc))

    return make


def _until(ws, kind: str, limit: int = 500) -> list[dict]:
    seen = []
    for _ in range(limit):
        ev = json.loads(ws.receive_text())
        seen.append(ev)
        if ev["type"] == kind:
            return seen
    raise AssertionError(f"no {kind} in {[e['type'] for e in seen]}")


def test_websocket_session_end_to_end(app_over):
    client = app_over()
    with client.websocket_connect("/v1/realtime?intent=transcription") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        ws.send_text(json.dumps({"type": "session.update", "session": SESSION_16K}))
        assert json.loads(ws.receive_text())["type"] == "session.updated"
        assert client.get("/").json()["realtime"] == {"sessions": 1, "max_sessions": 32}
        x = meeting([(0.1, 2), (0.2, 2)])
        for i in range(0, len(x), 1600):
            ws.send_text(
                json.dumps({"type": "input_audio_buffer.append", "audio": pcm(x[i : i + 1600])})
            )
        first = _until(ws, "conversation.item.input_audio_transcription.completed")
        second = _until(ws, "conversation.item.input_audio_transcription.completed")
    assert first[-1]["speaker"] == "Speaker_0" and second[-1]["speaker"] == "Speaker_1"
    assert "conversation.item.input_audio_transcription.delta" in [e["type"] for e in first]
    assert client.app.state.service.live.sessions == {}


def test_websocket_limits_and_keys(app_over):
    client = app_over(realtime_max_sessions=1, api_keys="k1,k2", cors_origins="https://ok.example")
    # No key, a wrong key: refused with a reason, policy close code.
    for url, headers in [
        ("/v1/realtime?intent=transcription", {}),
        ("/v1/realtime?intent=transcription&api_key=nope", {}),
        ("/v1/realtime", {"Authorization": "Bearer nope"}),
    ]:
        with client.websocket_connect(url, headers=headers) as ws:
            assert json.loads(ws.receive_text())["error"]["code"] == "invalid_api_key"
            with pytest.raises(WebSocketDisconnect) as e:
                ws.receive_text()
            assert e.value.code == 1008
    # A browser page from another site is refused; from the allowed site it gets in.
    with client.websocket_connect(
        "/v1/realtime?api_key=k2", headers={"Origin": "https://evil.example"}
    ) as ws:
        assert json.loads(ws.receive_text())["error"]["code"] == "origin_refused"
    with client.websocket_connect("/v1/realtime?intent=conversation&api_key=k1") as ws:
        assert json.loads(ws.receive_text())["error"]["code"] == "unsupported_intent"
    with client.websocket_connect(
        "/v1/realtime?intent=transcription&api_key=k1", headers={"Origin": "https://ok.example"}
    ) as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        # The replica is full: a second session is refused at once, with a retryable code.
        with client.websocket_connect(
            "/v1/realtime", headers={"Authorization": "Bearer k2"}
        ) as ws2:
            assert json.loads(ws2.receive_text())["error"]["code"] == "session_limit"
            with pytest.raises(WebSocketDisconnect) as e:
                ws2.receive_text()
            assert e.value.code == 1013
    # The first session left: the slot is free again.
    with client.websocket_connect("/v1/realtime?api_key=k1") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"


def test_idle_and_expired_sessions_are_closed(app_over):
    client = app_over(realtime_idle_timeout_s=1.0)
    with client.websocket_connect("/v1/realtime") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        t0 = time.monotonic()
        assert json.loads(ws.receive_text())["error"]["code"] == "session_idle"
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
        assert e.value.code == 1000 and time.monotonic() - t0 < 5
    client = app_over(realtime_max_session_s=1.5)
    with client.websocket_connect("/v1/realtime") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        assert json.loads(ws.receive_text())["error"]["code"] == "session_expired"


def test_a_client_gone_mid_turn_frees_its_session(app_over):
    fake = Voices()
    fake.gate = asyncio.Event()  # the ASR never answers: the turn is mid-flight
    from deployments.http_app import build_api
    from voxgraph.service import VoxgraphService

    svc = VoxgraphService(fake, settings())
    client = TestClient(build_api(svc))
    with client.websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        ws.send_text(json.dumps({"type": "session.update", "session": MANUAL_16K}))
        ws.receive_text()
        ws.send_text(
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": pcm(np.full(SR, 0.1, np.float32))}
            )
        )
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        assert json.loads(ws.receive_text())["type"] == "input_audio_buffer.committed"
        assert len(svc.live.sessions) == 1
    t0 = time.monotonic()
    while svc.live.sessions and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert svc.live.sessions == {}


def test_a_failed_model_ends_the_session_with_a_retryable_close_code(app_over):
    from deployments.http_app import build_api
    from voxgraph.errors import ServiceUnavailable
    from voxgraph.service import VoxgraphService

    class Down(Voices):
        async def transcribe(self, audio):
            raise ServiceUnavailable("the ASR deployment is unavailable")

    client = TestClient(build_api(VoxgraphService(Down(), settings())))
    with client.websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
        ws.send_text(json.dumps({"type": "session.update", "session": MANUAL_16K}))
        ws.receive_text()
        ws.send_text(append(np.full(SR, 0.1, np.float32)))
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        seen = _until(ws, "conversation.item.input_audio_transcription.failed")
        assert seen[-1]["error"]["type"] == "server_error" and seen[-1]["item_id"]
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
        assert e.value.code == 1013


def test_a_streaming_sortformer_carries_the_session_state(tiny_models):
    """With a streaming diarizer the session steps it as audio arrives and carries its state."""
    import torch

    from voxgraph.local import InProcessBackends
    from voxgraph.synth import speechlike

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two busy cores spin against each other
    try:
        backends = InProcessBackends().load(
            {
                "asr": str(tiny_models / "asr.nemo"),
                "diarizer": str(tiny_models / "diarizer_streaming.nemo"),
                "embedder": str(tiny_models / "embedder.nemo"),
            }
        )
        steps = []
        step = backends.diarize_step

        async def counted(audio, state):
            out = await step(audio, state)
            steps.append((len(audio), out.start_frame, len(out.probs)))
            return out

        backends.diarize_step = counted
        x = np.concatenate(
            [speechlike(3.0, seed=2), np.zeros(SR), speechlike(3.0, seed=5), np.zeros(2 * SR)]
        ).astype(np.float32)

        async def go():
            run = Run(backends)
            await run.session.start()
            assert run.session._streaming
            await run.send(type="session.update", session=SESSION_16K)
            await run.stream(x)
            await run.settle(timeout_s=60)
            state = run.session._stream_state
            await run.session.close()
            return run, state

        run, state = asyncio.run(go())
    finally:
        torch.set_num_threads(threads)
    assert not run.of("error")
    done = run.of("conversation.item.input_audio_transcription.completed")
    assert len(done) >= 2
    # One step per append at most, each continuing where the last left off.
    assert len(steps) <= len(x) // 1600 + 1
    frames = [(f0, n) for _, f0, n in steps if n]
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(frames))
    assert state is not None and state.samples >= len(x) - 1600
    for s in run.of("conversation.item.input_audio_transcription.segment"):
        assert s["speaker"].startswith("Speaker_")


def test_a_multitask_model_is_told_the_sessions_language():
    from voxgraph.types import ModelInfo

    class Multitask(Voices):
        """A Canary-like ASR: must be told the language, remembers what it was told."""

        def __init__(self):
            super().__init__()
            self.told: list[str | None] = []

        async def transcribe(self, audio, **kw):
            self.told.append(kw.get("language"))
            return await super().transcribe(audio)

        async def info(self, role, *, fresh=False):
            if role != "asr":
                return await super().info(role)
            caps = {"language_required": True, "translate": True}
            return ModelInfo(
                role, "fake-canary", "cpu", "ready", capabilities=caps, languages=("en", "de")
            )

    async def go(language):
        run = Run(Multitask())
        await run.session.start()
        audio_input = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        if language:
            audio_input["transcription"] = {"language": language}
        await run.send(type="session.update", session={"audio": {"input": audio_input}})
        await run.stream(np.full(2 * SR, 0.1, np.float32))
        await run.send(type="input_audio_buffer.commit")
        await run.settle()
        return run

    without = asyncio.run(go(None))
    failed = without.of("conversation.item.input_audio_transcription.failed")
    assert len(failed) == 1 and "language is required" in failed[0]["error"]["message"]
    with_de = asyncio.run(go("de"))
    assert with_de.backends.told == ["de"]
    done = with_de.of("conversation.item.input_audio_transcription.completed")
    assert done[0]["transcript"] == "alice alice"
