"""The request walk without Ray: exact answers over hand-made backends, then the tiny models.

`FakeBackends` reads the "speaker" from the sample values (0.1 is Alice, 0.2 is
Bob), so every window's local labels, fingerprints and words are known, and the
walk's windows, linking, stitching and attribution can be checked exactly.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest

from tests.conftest import wav_bytes
from voxgraph.errors import BadRequest, ServiceUnavailable
from voxgraph.pipeline import Pipeline
from voxgraph.schemas import DiarizeOptions, TranscribeOptions
from voxgraph.settings import Settings
from voxgraph.types import SAMPLE_RATE, Diarization, ModelInfo, Segment, Transcript, Turn, Word
from voxgraph.windows import plan_windows

FRAME_S = 0.08
HOP = round(FRAME_S * SAMPLE_RATE)
NAMES = {1: "alice", 2: "bob"}


def _who(x: float) -> int:
    return round(float(x) * 10)


class FakeBackends:
    """Models whose answers follow from the samples; counts every call."""

    def __init__(self) -> None:
        self.calls = {"asr": 0, "diarizer": 0, "embedder": 0}
        self.gate: asyncio.Event | None = None

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.calls["asr"] += 1
        if self.gate is not None:
            await self.gate.wait()
        n = len(audio) / SAMPLE_RATE
        words = tuple(
            Word(NAMES.get(_who(audio[int(t * SAMPLE_RATE)]), "?"), t + 0.1, t + 0.6)
            for t in range(math.floor(n - 0.6) + 1)
        )
        seg = Segment(" ".join(w.text for w in words), words[0].start, words[-1].end, words)
        return Transcript(seg.text, words, (seg,) if words else (), n)

    async def diarize(self, audio: np.ndarray) -> Diarization:
        self.calls["diarizer"] += 1
        frames = math.ceil(len(audio) / HOP)
        who = [_who(audio[i * HOP]) for i in range(frames)]
        local = {w: k for k, w in enumerate(dict.fromkeys(who))}
        probs = np.full((frames, 4), 0.05, dtype=np.float32)
        turns: list[Turn] = []
        start = 0
        for i in range(1, frames + 1):
            if i == frames or who[i] != who[start]:
                turns.append(Turn(start * FRAME_S, i * FRAME_S, local[who[start]]))
                start = i
        for i, w in enumerate(who):
            probs[i, local[w]] = 0.9
        return Diarization(tuple(turns), probs, FRAME_S, len(audio) / SAMPLE_RATE)

    async def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        self.calls["embedder"] += 1
        out = np.zeros((len(clips), 8), dtype=np.float32)
        for i, c in enumerate(clips):
            out[i, _who(np.median(c))] = 1.0
        return out

    async def info(self, role: str, *, fresh: bool = False) -> ModelInfo:
        return ModelInfo(role=role, model=f"fake-{role}", device="cpu", state="ready")


SETTINGS = Settings.load(
    {"diar_window_s": 25, "diar_overlap_s": 5, "asr_window_s": 25, "asr_overlap_s": 5}
)


def _meeting() -> bytes:
    """60 s: Alice for 30 s, then Bob. The values survive 16-bit WAV exactly enough."""
    x = np.full(60 * SAMPLE_RATE, 0.1, dtype=np.float32)
    x[30 * SAMPLE_RATE :] = 0.2
    return wav_bytes(x)


def test_diarize_links_windows_into_global_speakers():
    fake = FakeBackends()
    out = asyncio.run(Pipeline(fake, SETTINGS).diarize(_meeting(), DiarizeOptions()))
    windows = plan_windows(60.0, 25, 5)
    assert len(windows) == 3 and fake.calls["diarizer"] == 3
    # Bob is local speaker 1 in the middle window and local speaker 0 in the last:
    # only the fingerprints can tell the walk that they are the same person.
    assert [(t.start, t.end, t.speaker) for t in out.turns] == [
        (0.0, 30.0, "Speaker_0"),
        (30.0, 60.0, "Speaker_1"),
    ]
    assert all(t.confidence == pytest.approx(0.9) for t in out.turns)
    assert out.model == "fake-diarizer" and out.duration == 60.0


def test_transcribe_with_speakers_keeps_every_word_once():
    fake = FakeBackends()
    opts = TranscribeOptions(diarize=True, response_format="verbose_json")
    out = asyncio.run(Pipeline(fake, SETTINGS).transcribe(_meeting(), opts))
    words = out.transcript.words
    # Each window hears a word a second on its own clock: at the seams the walk must
    # keep one window's words, neither both (two words closer than 1 s) nor neither.
    starts = [w.start for w in words]
    gaps = np.diff(starts)
    assert starts[0] == pytest.approx(0.1) and starts[-1] > 58.5
    assert gaps.min() > 0.5 and gaps.max() < 1.5, gaps
    assert {(w.text, w.speaker) for w in words} == {("alice", "Speaker_0"), ("bob", "Speaker_1")}
    assert all((w.text == "alice") == (w.start < 30) for w in words)
    segments = out.transcript.segments
    assert [k for k, _ in itertools.groupby(s.speaker for s in segments)] == [
        "Speaker_0",
        "Speaker_1",
    ]
    assert all(w.speaker == s.speaker for s in segments for w in s.words)
    body = out.render("verbose_json")
    assert body["model"] == "fake-asr" and len(body["words"]) == len(words)


def test_fingerprint_clips_capped_by_max_fingerprint_speech_s():
    class Recording(FakeBackends):
        def __init__(self) -> None:
            super().__init__()
            self.clip_s: list[float] = []

        async def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
            self.clip_s += [len(c) / SAMPLE_RATE for c in clips]
            return await super().embed(clips)

    uncapped, capped = Recording(), Recording()
    asyncio.run(Pipeline(uncapped, SETTINGS).diarize(_meeting(), DiarizeOptions()))
    assert max(uncapped.clip_s) > 24.9  # one voice through a whole window
    settings = SETTINGS.model_copy(update={"max_fingerprint_speech_s": 8.0})
    out = asyncio.run(Pipeline(capped, settings).diarize(_meeting(), DiarizeOptions()))
    assert len(capped.clip_s) == len(uncapped.clip_s)
    assert max(capped.clip_s) == pytest.approx(8.0)
    # Eight seconds of each voice still link the windows' speakers as before.
    assert [(t.start, t.end, t.speaker) for t in out.turns] == [
        (0.0, 30.0, "Speaker_0"),
        (30.0, 60.0, "Speaker_1"),
    ]


def test_one_embed_call_per_window_and_none_for_silence():
    fake = FakeBackends()
    pipe = Pipeline(fake, SETTINGS)
    asyncio.run(pipe.diarize(_meeting(), DiarizeOptions()))
    assert fake.calls["embedder"] == fake.calls["diarizer"] == 3
    chunk = asyncio.run(pipe.diarize_chunk(wav_bytes(np.zeros(400, dtype=np.float32))))
    # 25 ms of audio: one speaker's turn is far below min_fingerprint_speech_s.
    assert chunk.fingerprints == {} and fake.calls["embedder"] == 3


def test_budget_is_reserved_before_decoding_and_released():
    fake = FakeBackends()
    fake.gate = asyncio.Event()
    pipe = Pipeline(fake, Settings.load({"max_inflight_audio_s": 90}))

    async def scenario() -> None:
        first = asyncio.create_task(pipe.transcribe(_meeting(), TranscribeOptions()))
        while fake.calls["asr"] == 0:
            await asyncio.sleep(0.01)
        assert pipe.budget.in_use_s == 60.0
        # The WAV header declares 60 s: refused from the header, before any decoding.
        with pytest.raises(ServiceUnavailable, match="busy"):
            await pipe.transcribe(_meeting(), TranscribeOptions())
        assert fake.calls["asr"] == 1
        fake.gate.set()
        await first

    asyncio.run(scenario())
    assert pipe.budget.in_use_s == 0


def test_bad_input_is_refused_before_any_model_call():
    fake = FakeBackends()
    pipe = Pipeline(fake, SETTINGS)
    with pytest.raises(BadRequest, match="empty"):
        asyncio.run(pipe.transcribe(b"", TranscribeOptions()))
    with pytest.raises(BadRequest, match="min_speakers"):
        asyncio.run(pipe.diarize(_meeting(), DiarizeOptions(min_speakers=3, max_speakers=2)))
    with pytest.raises(BadRequest):
        asyncio.run(pipe.diarize(b"not audio at all", DiarizeOptions()))
    assert fake.calls == {"asr": 0, "diarizer": 0, "embedder": 0}
    assert pipe.budget.in_use_s == 0


def test_the_walk_over_the_tiny_nemo_models(tiny_models):
    """The same walk over in-process runners of the real NeMo classes (no Ray)."""
    from voxgraph.local import InProcessBackends
    from voxgraph.synth import speechlike

    backends = InProcessBackends().load(
        {r: str(tiny_models / f"{r}.nemo") for r in ("asr", "diarizer", "embedder")}
    )
    pipe = Pipeline(backends, SETTINGS)
    wav = wav_bytes(speechlike(40.0, seed=2))
    opts = TranscribeOptions(diarize=True, response_format="verbose_json")
    out = asyncio.run(pipe.transcribe(wav, opts))
    assert out.transcript.duration == pytest.approx(40.0, abs=0.01)
    assert out.transcript.words, "the tiny ASR model is built to emit tokens"
    assert all(w.speaker and w.speaker.startswith("Speaker_") for w in out.transcript.words)
    chunk = asyncio.run(pipe.diarize_chunk(wav_bytes(speechlike(8.0, seed=3))))
    dim = backends.runners["embedder"].embed([np.zeros(16000, np.float32)]).shape[1]
    assert chunk.fingerprints and all(len(v) == dim for v in chunk.fingerprints.values())
    for v in chunk.fingerprints.values():
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4)


def test_diarized_json_is_openais_shape_with_letters_for_strangers():
    fake = FakeBackends()
    opts = TranscribeOptions(response_format="diarized_json")  # implies diarization
    out = asyncio.run(Pipeline(fake, SETTINGS).transcribe(_meeting(), opts))
    body = out.render("diarized_json")
    assert body["task"] == "transcribe" and body["duration"] == 60.0
    assert body["usage"] == {"type": "duration", "seconds": 60.0}
    segs = body["segments"]
    assert [k for k, _ in itertools.groupby(s["speaker"] for s in segs)] == ["A", "B"]
    assert all(s["type"] == "transcript.text.segment" for s in segs)
    assert [s["id"] for s in segs] == [f"seg_{i}" for i in range(len(segs))]
    assert all(set(s["text"].split()) == {"alice" if s["speaker"] == "A" else "bob"} for s in segs)
    assert body["text"].split() == [w.text for w in out.transcript.words]
    assert all("identity_score" not in s for s in segs)


def test_server_vad_chunking_ends_segments_at_pauses():
    fake = FakeBackends()
    vad = {"type": "server_vad", "silence_duration_ms": 300}
    opts = TranscribeOptions(response_format="diarized_json", chunking_strategy=vad)
    out = asyncio.run(Pipeline(fake, SETTINGS).transcribe(_meeting(), opts))
    # The fake's words are 0.5 s long a second apart: every 0.5 s pause ends a segment.
    segs = out.render("diarized_json")["segments"]
    assert len(segs) == len(out.transcript.words)
    assert all(len(s["text"].split()) == 1 for s in segs)


def _service(tmp_path, fake: FakeBackends):
    from voxgraph.service import VoxgraphService

    db = f"sqlite:///{tmp_path / 'speakers.db'}"
    return VoxgraphService(fake, Settings.load({**SETTINGS.model_dump(), "speakers_db": db}))


def _voice(value: float, seconds: float) -> bytes:
    return wav_bytes(np.full(int(seconds * SAMPLE_RATE), value, dtype=np.float32))


def test_enrolled_and_referenced_voices_name_speakers_one_to_one(tmp_path):
    fake = FakeBackends()
    svc = _service(tmp_path, fake)
    alice = asyncio.run(svc.enrol_speaker("Alice", [_voice(0.1, 4), _voice(0.1, 3)]))
    assert alice["voiceprints"][0]["clips"] == 2 and alice["voiceprints"][0]["model"] == (
        "fake-embedder"
    )
    body = asyncio.run(svc.diarize(_meeting(), identify=True))
    assert [(t["speaker"], t.get("identity_score")) for t in body["segments"]] == [
        ("Alice", 1.0),
        ("Speaker_1", None),  # a stranger keeps an anonymous label
    ]
    assert body["identification"] == {"threshold": 0.46, "candidates": 1, "skipped": []}

    ref = "data:audio/wav;base64," + base64.b64encode(_voice(0.2, 3)).decode()
    text = asyncio.run(
        svc.transcribe(
            _meeting(),
            response_format="diarized_json",
            identify=True,
            known_speaker_names=["Bob"],
            known_speaker_references=[ref],
        )
    )
    named = {(s["speaker"], s["text"].split()[0], s["identity_score"]) for s in text["segments"]}
    assert named == {("Alice", "alice", 1.0), ("Bob", "bob", 1.0)}

    # Only names asked for are candidates: Bob's reference is absent, Alice selected by name.
    chunk = asyncio.run(svc.diarize_chunk(_voice(0.2, 5), known_speaker_names=["alice"]))
    assert chunk["speakers_detected"] == ["Speaker_0"] and "Speaker_0" in chunk["fingerprints"]
    with pytest.raises(BadRequest, match="'Carol'"):
        asyncio.run(svc.diarize(_meeting(), known_speaker_names=["Carol"]))

    asyncio.run(svc.delete_speaker(alice["id"]))
    body = asyncio.run(svc.diarize(_meeting(), identify=True))
    assert {t["speaker"] for t in body["segments"]} == {"Speaker_0", "Speaker_1"}


def test_a_clip_with_two_voices_is_refused(tmp_path):
    svc = _service(tmp_path, FakeBackends())
    two = np.full(6 * SAMPLE_RATE, 0.1, dtype=np.float32)
    two[3 * SAMPLE_RATE :] = 0.2
    with pytest.raises(BadRequest, match="more than one voice"):
        asyncio.run(svc.enrol_speaker("Dan", [wav_bytes(two)]))
    with pytest.raises(BadRequest, match="speech"):
        asyncio.run(svc.enrol_speaker("Dan", [_voice(0.1, 0.5)]))
    assert asyncio.run(svc.list_speakers())["data"] == []


class SpooledUpload:
    """An upload still on the HTTP layer's spool; counts what the walk reads of it."""

    def __init__(self, data: bytes):
        self._data, self._pos, self.size, self.read_bytes = data, 0, len(data), 0

    async def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        out = self._data[self._pos : end]
        self._pos += len(out)
        self.read_bytes += len(out)
        return out

    async def seek(self, offset: int) -> None:
        self._pos = offset


def test_a_refused_upload_is_never_read_past_its_head():
    fake = FakeBackends()
    fake.gate = asyncio.Event()
    pipe = Pipeline(fake, Settings.load({"max_inflight_audio_s": 90}))
    first, second = SpooledUpload(_meeting()), SpooledUpload(_meeting())

    async def scenario() -> None:
        task = asyncio.create_task(pipe.transcribe(first, TranscribeOptions()))
        while fake.calls["asr"] == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailable, match="busy"):
            await pipe.transcribe(second, TranscribeOptions())
        fake.gate.set()
        out = await task
        assert out.transcript.duration == 60.0

    asyncio.run(scenario())
    assert first.read_bytes == 64 * 1024 + first.size  # the head, then the whole file once
    assert second.read_bytes == 64 * 1024  # refused from its header alone
    assert pipe.budget.in_use_s == 0


def test_hostile_speaker_options_are_refused_before_any_model_call(tmp_path):
    from voxgraph.errors import PayloadTooLarge

    fake = FakeBackends()
    svc = _service(tmp_path, fake)
    names = [f"n{i}" for i in range(33)]
    with pytest.raises(BadRequest, match="at most 32"):
        asyncio.run(svc.diarize(_meeting(), known_speaker_names=names))
    with pytest.raises(BadRequest, match="distinct"):
        asyncio.run(svc.diarize(_meeting(), known_speaker_names=["Ann", "ann"]))
    huge = "data:audio/wav;base64," + "A" * (int(SETTINGS.max_upload_mb * 2**20) * 4 // 3 + 8)
    with pytest.raises(PayloadTooLarge, match="reference"):
        asyncio.run(
            svc.transcribe(_meeting(), known_speaker_names=["a"], known_speaker_references=[huge])
        )
    assert fake.calls == {"asr": 0, "diarizer": 0, "embedder": 0}
