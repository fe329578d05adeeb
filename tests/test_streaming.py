"""stream=true on /v1/audio/transcriptions: OpenAI's SSE events as windows finish.

Exact checks run the walk over tests/test_pipeline.py's FakeBackends (and the
tiny models in-process, as bench/monolith.py loads them); the unchanged openai
client and the app handle stream from the real graph (`service` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import httpx
import numpy as np
import pytest

from deployments.http_app import build_api
from tests.conftest import free_port, speechlike, wav_bytes
from tests.test_pipeline import SETTINGS, FakeBackends, _meeting
from voxgraph.attribution import WindowMerge, merge_window_transcripts
from voxgraph.errors import BadRequest, ServiceUnavailable
from voxgraph.pipeline import Pipeline
from voxgraph.schemas import TranscribeOptions
from voxgraph.service import VoxgraphService
from voxgraph.settings import Settings
from voxgraph.types import SAMPLE_RATE, ModelInfo
from voxgraph.windows import plan_windows, window_samples


async def _events(pipe: Pipeline, audio: bytes, **options) -> list:
    opts = TranscribeOptions(stream=True, **options)
    return [e async for e in pipe.transcribe_events(audio, opts)]


def _deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "transcript.text.delta")


# ------------------------------------------------------------ the walk, exact


def test_window_merge_settles_what_the_whole_merge_gives():
    fake = FakeBackends()
    samples = np.full(100 * SAMPLE_RATE, 0.1, dtype=np.float32)
    windows = plan_windows(100.0, 25, 5)
    parts = [asyncio.run(fake.transcribe(window_samples(samples, w))) for w in windows]
    merge = WindowMerge(windows)
    settled = [merge.add(p) for p in parts]
    whole = merge_window_transcripts(windows, parts)
    assert [s for batch in settled for s in batch] == list(whole.segments)
    assert merge.result == whole
    # A segment comes out as soon as no later window can touch it, not at the end.
    assert [len(b) for b in settled] == [0] + [1] * (len(windows) - 2) + [2]
    with pytest.raises(ValueError):
        merge.add(parts[0])


@pytest.mark.parametrize("fmt", ["json", "text", "diarized_json"])
def test_stream_ends_with_the_text_of_the_answer_without_stream(fmt):
    pipe = Pipeline(FakeBackends(), SETTINGS)
    events = asyncio.run(_events(pipe, _meeting(), response_format=fmt))
    whole = asyncio.run(pipe.transcribe(_meeting(), TranscribeOptions(response_format=fmt)))
    body = whole.render(fmt)
    text = body if isinstance(body, str) else body["text"]
    done = events[-1]
    assert done.type == "transcript.text.done" and [e.type for e in events].count(done.type) == 1
    assert done.text == text and _deltas(events) == text
    assert done.usage.model_dump() == {"type": "duration", "seconds": 60.0}
    # One delta per settled segment: per window, or per speaker's piece of it.
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == (4 if fmt == "diarized_json" else 3)
    if fmt == "diarized_json":
        # Alice then Bob: the session's linking agrees with the whole-file clustering.
        segments = [e for e in events if e.type == "transcript.text.segment"]
        dumped = [s.model_dump(mode="json", exclude_none=True) for s in segments]
        assert dumped == body["segments"]
        assert [s.speaker for s in segments] == ["A", "A", "B", "B"]
        # Each segment's delta comes first, tagged with its id.
        for delta, seg in zip(events[:-1:2], events[1:-1:2], strict=True):
            assert delta.segment_id == seg.id and delta.delta.strip() == seg.text
    else:
        assert all(e.type != "transcript.text.segment" for e in events)
        assert all(getattr(e, "segment_id", None) is None for e in events)
    assert pipe.budget.in_use_s == 0


class HeldBackends(FakeBackends):
    """ASR of the window `hold` (in call order) waits for `release`; `fail` raises there."""

    def __init__(self, hold: int | None = None, fail: Exception | None = None):
        super().__init__()
        self.hold, self.fail = hold, fail
        self.release = asyncio.Event()
        self.held = 0
        self.cancelled = 0

    async def transcribe(self, audio: np.ndarray):
        n = self.calls["asr"]
        if n == self.hold:
            if self.fail is not None:
                raise self.fail
            self.held += 1
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super().transcribe(audio)


def test_first_text_arrives_while_the_last_window_runs():
    async def scenario() -> None:
        fake = HeldBackends(hold=2)
        pipe = Pipeline(fake, SETTINGS)
        events = pipe.transcribe_events(_meeting(), TranscribeOptions(stream=True))
        first = await asyncio.wait_for(anext(events), 5)
        assert first.type == "transcript.text.delta" and first.delta.startswith("alice")
        assert fake.held == 1 and not fake.release.is_set()
        fake.release.set()
        rest = [e async for e in events]
        assert rest[-1].type == "transcript.text.done"

    asyncio.run(scenario())


def test_closing_the_stream_releases_the_budget_and_stops_the_windows():
    async def scenario() -> None:
        fake = HeldBackends(hold=2)
        service = VoxgraphService(fake, SETTINGS)
        events = service.transcribe_stream(_meeting(), response_format="json")
        await anext(events)
        assert service.pipeline.budget.in_use_s == pytest.approx(60.0)
        await events.aclose()
        assert service.pipeline.budget.in_use_s == 0
        await asyncio.sleep(0)
        assert fake.cancelled == 1

    asyncio.run(scenario())


def test_stream_options():
    for fmt in ("srt", "vtt", "verbose_json"):
        with pytest.raises(ValueError, match=f"stream=true is for response_format.*{fmt}"):
            TranscribeOptions(stream=True, response_format=fmt)
    with pytest.raises(ValueError, match="diarized_json"):
        TranscribeOptions(stream=True, diarize=True)
    with pytest.raises(ValueError, match="cannot name speakers"):
        TranscribeOptions(stream=True, response_format="diarized_json", identify=True)
    # The form sends strings; stream=false is the answer as before.
    assert TranscribeOptions.model_validate({"stream": "true"}).stream is True
    assert TranscribeOptions.model_validate({"stream": "false", "response_format": "srt"})
    service = VoxgraphService(FakeBackends(), SETTINGS)
    with pytest.raises(BadRequest, match="transcribe_stream"):
        asyncio.run(service.transcribe(_meeting(), stream=True))


# ------------------------------------------------------------ HTTP: SSE frames, errors


class ParakeetV2(HeldBackends):
    async def info(self, role: str, *, fresh: bool = False) -> ModelInfo:
        model = "nvidia/parakeet-tdt-0.6b-v2" if role == "asr" else f"fake-{role}"
        return ModelInfo(role=role, model=model, device="cpu", state="ready")


def _sse(body: str) -> list[dict]:
    frames = body.split("\n\n")
    assert frames[-1] == "", "every event ends with a blank line"
    assert all(f.startswith("data: ") and "\n" not in f for f in frames[:-1])
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]


def _post(app, data: bytes, **form) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            files = {"file": ("a.wav", data, "audio/wav")}
            return await client.post("/v1/audio/transcriptions", files=files, data=form)

    return asyncio.run(go())


def test_http_stream_frames_and_errors_before_it_starts():
    app = build_api(VoxgraphService(ParakeetV2(), SETTINGS))
    ok = _post(app, _meeting(), stream="true", response_format="diarized_json")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/event-stream")
    events = _sse(ok.text)
    assert [e["type"] for e in events][-1] == "transcript.text.done"
    assert {e["type"] for e in events} == {
        "transcript.text.delta",
        "transcript.text.segment",
        "transcript.text.done",
    }
    assert set(events[1]) >= {"type", "id", "start", "end", "speaker", "text"}
    # Refused before the first event: the usual JSON error, the usual status.
    refusals = [
        (b"", {}, 400, "empty"),
        (b"not audio at all" * 100, {}, 400, None),
        (_meeting(), {"response_format": "srt"}, 400, "stream=true is for response_format"),
        (_meeting(), {"language": "fr"}, 400, "not supported"),
    ]
    for data, form, status, words in refusals:
        r = _post(app, data, stream="true", **form)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()["error"]) == {"message", "type", "code"}
        if words:
            assert words in r.json()["error"]["message"]
    tight = VoxgraphService(
        ParakeetV2(), Settings.load({**SETTINGS.model_dump(), "max_audio_s": 30})
    )
    r = _post(build_api(tight), _meeting(), stream="true")
    assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long"


@pytest.mark.parametrize(
    "error, kind, code",
    [
        (ServiceUnavailable("the ASR deployment is loading"), "server_error", "unavailable"),
        (RuntimeError("secret detail"), "server_error", "internal"),
    ],
)
def test_http_failure_after_the_first_event_is_an_error_event(error, kind, code):
    fake = HeldBackends(hold=2, fail=error)
    service = VoxgraphService(fake, SETTINGS)
    r = _post(build_api(service), _meeting(), stream="true")
    assert r.status_code == 200
    events = _sse(r.text)
    assert events[0]["type"] == "transcript.text.delta"
    assert events[-1] == {
        "type": "error",
        "error": {
            "message": "internal error" if code == "internal" else error.message,
            "type": kind,
            "code": code,
        },
    }
    assert "transcript.text.done" not in {e["type"] for e in events}
    assert service.pipeline.budget.in_use_s == 0


def test_openai_client_reads_the_stream_and_its_error_event():
    import httpx2
    from openai import APIError, AsyncOpenAI
    from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

    async def read(service: VoxgraphService) -> list:
        transport = httpx2.ASGITransport(app=build_api(service))
        http = httpx2.AsyncClient(transport=transport, base_url="http://t/v1")
        client = AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http)
        stream = await client.audio.transcriptions.create(
            model="m", file=("a.wav", _meeting(), "audio/wav"), stream=True
        )
        return [e async for e in stream]

    events = asyncio.run(read(VoxgraphService(FakeBackends(), SETTINGS)))
    assert all(isinstance(e, TranscriptionTextDeltaEvent) for e in events[:-1])
    assert isinstance(events[-1], TranscriptionTextDoneEvent)
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    failing = VoxgraphService(HeldBackends(hold=2, fail=ServiceUnavailable("gone")), SETTINGS)
    with pytest.raises(APIError, match="gone"):
        asyncio.run(read(failing))


@contextlib.contextmanager
def _uvicorn(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_client_gone_mid_stream_releases_the_budget():
    fake = HeldBackends(hold=2)  # the last window never finishes on its own
    service = VoxgraphService(fake, SETTINGS)
    with _uvicorn(build_api(service)) as url:
        files = {"file": ("a.wav", _meeting(), "audio/wav")}
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST", f"{url}/v1/audio/transcriptions", files=files, data={"stream": "true"}
            ) as r,
        ):
            assert r.status_code == 200
            # Keep the iterator: a dropped one closes httpx's stream, which is a disconnect.
            chunks = r.iter_raw()
            first = next(chunks)
            assert first.startswith(b"data: ") and first.endswith(b"\n\n")
            assert json.loads(first[6:])["type"] == "transcript.text.delta"
            time.sleep(0.3)  # the server would have noticed a disconnect by now
            assert service.pipeline.budget.in_use_s == pytest.approx(60.0)
            assert fake.cancelled == 0
            chunks.close()
        deadline = time.monotonic() + 5
        while service.pipeline.budget.in_use_s and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.pipeline.budget.in_use_s == 0
        assert fake.cancelled == 1 and not fake.release.is_set()


# ------------------------------------------------------------ tiny models, in process


def test_tiny_models_stream_the_text_of_the_whole_answer(tiny_models):
    import torch

    from bench.monolith import Monolith

    torch.set_num_threads(2)
    paths = {r: str(tiny_models / f"{r}.nemo") for r in ("asr", "diarizer", "embedder")}
    windows = {"asr_window_s": 20, "asr_overlap_s": 4, "diar_window_s": 20, "diar_overlap_s": 4}
    mono = Monolith(paths, settings=windows).load()
    wav = wav_bytes(speechlike(70.0, seed=11))
    assert len(mono.pipeline._asr_windows(np.zeros(70 * SAMPLE_RATE))) == 5

    async def both(fmt: str) -> tuple[list[dict], dict]:
        events = [e async for e in mono.transcribe_stream(wav, response_format=fmt)]
        return events, await mono.transcribe(wav, response_format=fmt)

    for fmt in ("json", "diarized_json"):
        events, whole = asyncio.run(both(fmt))
        done = events[-1]
        assert done["type"] == "transcript.text.done" and done["text"] == whole["text"]
        assert "".join(e.get("delta", "") for e in events) == whole["text"]
        assert len([e for e in events if e["type"] == "transcript.text.delta"]) > 1
        if fmt == "diarized_json":
            segments = [e for e in events if e["type"] == "transcript.text.segment"]
            assert [s["text"] for s in segments] == [s["text"] for s in whole["segments"]]
            letters = list(dict.fromkeys(s["speaker"] for s in segments))
            assert letters == [chr(ord("A") + i) for i in range(len(letters))]
    assert mono.pipeline.budget.in_use_s == 0


# ------------------------------------------------------------ the real graph


pytestmark_graph = pytest.mark.integration
LONG = wav_bytes(speechlike(150.0, seed=5))  # two ASR windows of configs/tiny.yaml


@pytest.fixture(scope="module")
def client(service):
    from openai import OpenAI

    return OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytestmark_graph
def test_openai_client_streams_from_the_graph(client):
    from openai.types.audio import TranscriptionTextDoneEvent

    whole = client.audio.transcriptions.create(model="m", file=("a.wav", LONG, "audio/wav"))
    events = list(
        client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", LONG, "audio/wav"), stream=True
        )
    )
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and done.text == whole.text
    assert "".join(e.delta for e in events[:-1]) == whole.text
    assert done.usage.seconds == pytest.approx(150.0, abs=0.01)


@pytestmark_graph
def test_openai_client_streams_diarized_segments(client):
    from openai import BadRequestError
    from openai.types.audio import TranscriptionTextSegmentEvent

    events = list(
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=("a.wav", LONG, "audio/wav"),
            response_format="diarized_json",
            chunking_strategy="auto",
            stream=True,
        )
    )
    segments = [e for e in events if isinstance(e, TranscriptionTextSegmentEvent)]
    assert segments, "the tiny models emit words for speech-like audio"
    assert [s.id for s in segments] == [f"seg_{i}" for i in range(len(segments))]
    assert all(0 <= s.start <= s.end <= 150.08 and s.speaker for s in segments)
    assert events[-1].text == " ".join(s.text for s in segments)
    with pytest.raises(BadRequestError, match="stream=true is for response_format"):
        client.audio.transcriptions.create(
            model="m", file=("a.wav", LONG, "audio/wav"), response_format="srt", stream=True
        )


@pytestmark_graph
def test_handle_streams_events(service):
    wav = wav_bytes(speechlike(6.0, seed=3))
    handle = service.handle.options(stream=True)
    events = list(handle.transcribe_stream.remote(wav, response_format="diarized_json"))
    assert events[-1]["type"] == "transcript.text.done"
    assert events[-1]["usage"] == {"type": "duration", "seconds": 6.0}
    whole = service.handle.transcribe.remote(wav, response_format="diarized_json").result()
    assert events[-1]["text"] == whole["text"]
    with pytest.raises(Exception, match="stream=true is for response_format"):
        list(handle.transcribe_stream.remote(wav, response_format="vtt"))
