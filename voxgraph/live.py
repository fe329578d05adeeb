"""Live transcription sessions: turns as they are spoken, with speakers who keep their labels.

A `LiveSession` is one client's realtime session (voxgraph.realtime is its wire
protocol). Audio arrives as PCM16 at 16 or 24 kHz and is resampled on the fly;
turns are committed by the client or by the server's VAD; each committed turn
goes through the same backends and steps as a file:

    turn ─┬─ ASR (the walk's windows) ─────────────────────────────┐
          └─ diarizer on the turn plus context → fingerprints →    ├─ attribute → events
             link to the session's speakers → name ────────────────┘

Speakers are the session's, never the turn's: each turn's local speakers are
linked to the session's voiceprints (voxgraph.live_speakers), so `Speaker_1`
is the same voice from the first minute to the last. With a streaming
diarizer (capability `streaming`), the session feeds every appended chunk
through its streaming step and carries the model's state; its frames replace
the rolling window.

Memory is bounded: the last `realtime_context_s` of audio, one voiceprint per
speaker and a few frame labels, whatever the session's length.

Server VAD is an energy detector: each 20 ms frame's RMS level maps to an
activity in [0, 1] (0 at -55 dBFS and below, 1 at -25 dBFS and above, linear in
between), compared with `turn_detection.threshold`; speech starts after 60 ms
above it and stops after `silence_duration_ms` below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from voxgraph.audio import _Resampler
from voxgraph.errors import BadRequest, ServiceUnavailable, VoxgraphError
from voxgraph.identity import Candidate, identify
from voxgraph.live_speakers import SessionSpeakers
from voxgraph.pipeline import Pipeline, _asr_prompt, _check_language, attribute
from voxgraph.realtime import (
    ProtocolError,
    SessionConfig,
    error_event,
    event,
    new_id,
    parse_client_event,
    session_json,
)
from voxgraph.settings import Settings
from voxgraph.turns import speaker_fingerprints, speaker_label
from voxgraph.types import SAMPLE_RATE, Diarization, Transcript, Turn

if TYPE_CHECKING:
    from voxgraph.types import DiarStreamState

Emit = Callable[[dict[str, Any]], Awaitable[None]]

# One append carries at most this much audio (bytes of PCM16): 10 s at 24 kHz.
MAX_APPEND_BYTES = 10 * 24_000 * 2
# A commit needs at least this much audio (OpenAI's own minimum).
MIN_COMMIT_S = 0.1
VAD_FRAME = 320  # 20 ms at 16 kHz
VAD_START_FRAMES = 3  # 60 ms of speech before speech_started
_VAD_FLOOR_DB, _VAD_FULL_DB = -55.0, -25.0
# How long a turn waits for a streaming diarizer's frames to cover it (seconds):
# its latency is a chunk plus right context, about 1 s for Sortformer v2.
STREAM_WAIT_S = 2.0


class SessionClosed(Exception):
    """The session must end: `code` is the WebSocket close code to send."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


# ---------------------------------------------------------------- audio and VAD


class RollingAudio:
    """The last `keep_s` seconds of a session's 16 kHz audio, addressed in session samples."""

    def __init__(self, keep_s: float):
        self.keep = int(keep_s * SAMPLE_RATE)
        self._chunks: deque[np.ndarray] = deque()
        self.start = 0  # session sample index of the first kept sample
        self.end = 0  # session sample index one past the last sample received

    def append(self, x: np.ndarray) -> None:
        if not len(x):
            return
        self._chunks.append(x)
        self.end += len(x)
        while self._chunks and self.end - self.start - len(self._chunks[0]) >= self.keep:
            self.start += len(self._chunks.popleft())

    def get(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) in session time; what fell out of the context is missing."""
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return np.zeros(0, dtype=np.float32)
        out, pos = [], self.start
        for c in self._chunks:
            lo, hi = max(a, pos), min(b, pos + len(c))
            if hi > lo:
                out.append(c[lo - pos : hi - pos])
            pos += len(c)
            if pos >= b:
                break
        return np.concatenate(out).astype(np.float32, copy=False)

    @property
    def kept_samples(self) -> int:
        return sum(len(c) for c in self._chunks)


def frame_activity(frames: np.ndarray) -> np.ndarray:
    """Speech activity in [0, 1] of each row of 20 ms frames, from its RMS level."""
    rms = np.sqrt(np.mean(np.square(frames.astype(np.float64)), axis=1))
    db = 20 * np.log10(np.maximum(rms, 1e-10))
    return np.clip((db - _VAD_FLOOR_DB) / (_VAD_FULL_DB - _VAD_FLOOR_DB), 0.0, 1.0)


@dataclass
class VadEvent:
    kind: str  # "start" | "stop"
    sample: int  # session sample where speech started or stopped


class EnergyVad:
    """Speech start/stop from frame energy (see the module docstring)."""

    def __init__(self, threshold: float, silence_ms: int):
        self.threshold = threshold
        self.silence_frames = max(1, math.ceil(silence_ms / 20))
        self._rest = np.zeros(0, dtype=np.float32)
        self._pos = 0  # session sample of _rest[0]
        self.speaking = False
        self._run = 0  # consecutive frames on the other side of the threshold
        self._run_start = 0
        self._last_speech_end = 0

    def feed(self, x: np.ndarray) -> list[VadEvent]:
        buf = np.concatenate([self._rest, x]) if len(self._rest) else x
        n = len(buf) // VAD_FRAME
        self._rest = buf[n * VAD_FRAME :].copy()
        events: list[VadEvent] = []
        if n:
            act = frame_activity(buf[: n * VAD_FRAME].reshape(n, VAD_FRAME)) >= self.threshold
            for i, speech in enumerate(act):
                at = self._pos + i * VAD_FRAME
                events += self._step(bool(speech), at)
        self._pos += n * VAD_FRAME
        return events

    def _step(self, speech: bool, at: int) -> list[VadEvent]:
        if not self.speaking:
            if speech:
                if self._run == 0:
                    self._run_start = at
                self._run += 1
                if self._run >= VAD_START_FRAMES:
                    self.speaking, self._run = True, 0
                    self._last_speech_end = at + VAD_FRAME
                    return [VadEvent("start", self._run_start)]
            else:
                self._run = 0
            return []
        if speech:
            self._run = 0
            self._last_speech_end = at + VAD_FRAME
            return []
        self._run += 1
        if self._run >= self.silence_frames:
            self.speaking, self._run = False, 0
            return [VadEvent("stop", self._last_speech_end)]
        return []

    def reset(self, at: int) -> None:
        self.speaking, self._run = False, 0
        self._rest = np.zeros(0, dtype=np.float32)
        self._pos = at


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def turns_from_probs(probs: np.ndarray, frame_s: float, threshold: float = 0.5) -> list[Turn]:
    """Runs of frames at or above `threshold`, per speaker column."""
    turns: list[Turn] = []
    if probs.ndim != 2:
        return turns
    active = probs >= threshold
    for k in range(active.shape[1]):
        col = np.concatenate([[False], active[:, k], [False]])
        edges = np.flatnonzero(col[1:] != col[:-1])
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            turns.append(Turn(round(a * frame_s, 6), round(b * frame_s, 6), k))
    return sorted(turns, key=lambda t: (t.start, t.end, t.speaker))


def crop(diar: Diarization, start_s: float, end_s: float, mapping: dict[int, int]) -> Diarization:
    """The part [start_s, end_s) of `diar`, times from start_s, columns and speakers global."""
    width = max(mapping.values(), default=-1) + 1
    f0 = max(0, round(start_s / diar.frame_s))
    f1 = max(f0, math.ceil(end_s / diar.frame_s - 1e-6))
    rows = diar.probs[f0:f1] if diar.probs.ndim == 2 else np.zeros((0, 0), np.float32)
    probs = np.zeros((f1 - f0, max(width, 1)), dtype=np.float32)
    for k, g in mapping.items():
        if k < rows.shape[1]:
            probs[: len(rows), g] = rows[:, k]
    turns = []
    for t in diar.turns:
        a, b = max(t.start, start_s), min(t.end, end_s)
        if b > a and int(t.speaker) in mapping:
            turns.append(Turn(a - start_s, b - start_s, mapping[int(t.speaker)]))
    return Diarization(tuple(turns), probs, diar.frame_s, end_s - start_s)


# ---------------------------------------------------------------- the session


@dataclass(frozen=True)
class _Item:
    id: str
    start: int  # session samples
    end: int
    previous: str | None


class LiveSession:
    """One realtime transcription session; `emit` sends a server event to the client."""

    def __init__(self, pipeline: Pipeline, emit: Emit, settings: Settings | None = None):
        self.pipeline = pipeline
        self.backends = pipeline.backends
        self.settings = settings or pipeline.settings
        self.emit = emit
        self.id = new_id("sess")
        self.config = SessionConfig()
        s = self.settings
        self.audio = RollingAudio(s.realtime_context_s)
        self.speakers = SessionSpeakers(s.link_threshold, context_s=s.realtime_context_s)
        self._resampler = _Resampler(self.config.rate)
        self._vad: EnergyVad | None = self._new_vad()
        self._turn_start = 0  # first session sample of the uncommitted buffer
        self._speech_item: str | None = None  # item id announced by speech_started
        self._heard = False  # VAD heard speech since the last commit
        self._last_item: str | None = None
        self._items: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._known: list[Candidate] | None = None
        self._names: dict[int, tuple[str, float]] = {}
        self._decided: set[int] = set()
        self.failure: SessionClosed | None = None
        self.started = self.last_message = time.monotonic()
        self.pending_items = 0
        # Streaming diarizer: its state, frames it gave (session frame index -> row).
        self._streaming = False
        self._stream_state: DiarStreamState | None = None
        self._stream_probs: deque[np.ndarray] = deque()
        self._stream_start = 0  # session frame of the first kept row
        self._stream_frames = 0  # frames received so far
        self._stream_frame_s = 0.08
        self._stream_wake = asyncio.Event()  # audio arrived for the streaming diarizer
        self._stream_progress = asyncio.Condition()  # a streaming step came back
        self._stream_task: asyncio.Task[None] | None = None
        self._stream_fed = 0  # session samples sent to the streaming diarizer

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        info = await self.backends.info("diarizer")
        self._streaming = bool(info.capabilities.get("streaming")) and hasattr(
            self.backends, "diarize_step"
        )
        self._worker = asyncio.create_task(self._work(), name=f"{self.id}-turns")
        if self._streaming:
            self._stream_task = asyncio.create_task(self._stream(), name=f"{self.id}-diarizer")
        await self.emit(event("session.created", session=session_json(self.id, self.config)))

    async def close(self) -> None:
        """Stop work and drop everything the session holds."""
        for task in (self._worker, self._stream_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._worker = self._stream_task = None
        self.audio = RollingAudio(1)
        self._stream_probs.clear()
        self._stream_state = None

    # ------------------------------------------------------------ client events

    async def receive(self, message: str | bytes) -> None:
        """Act on one client message; a bad one gets an `error` event and changes nothing."""
        event_id = None
        try:
            ev = parse_client_event(message, max_audio_bytes=MAX_APPEND_BYTES)
            event_id = ev.event_id
            if ev.type == "session.update":
                await self._update(ev.session)
            elif ev.type == "input_audio_buffer.append":
                await self._append(ev.audio)
            elif ev.type == "input_audio_buffer.commit":
                await self._commit_manual()
            elif ev.type == "input_audio_buffer.clear":
                await self._clear()
        except ProtocolError as e:
            await self.emit(error_event(e.message, e.code, param=e.param, event_id=event_id))
        except BadRequest as e:
            await self.emit(error_event(e.message, e.code, event_id=event_id))

    async def _update(self, patch: Any) -> None:
        config = self.config.updated(patch)
        if config.rate != self.config.rate and self.audio.end > 0:
            raise ProtocolError(
                "the input audio rate cannot change once audio has been sent",
                param="session.audio.input.format.rate",
            )
        asr = await self.backends.info("asr")
        _check_language(config.language, asr.model)
        known = self._known
        if config.speakers != self.config.speakers:
            known = None
            if config.speakers is not None and config.speakers.wants_identity:
                known = await self.pipeline._known(config.speakers)
        vad_changed = config.vad != self.config.vad
        rate_changed = config.rate != self.config.rate
        self.config, self._known = config, known
        if rate_changed:
            self._resampler = _Resampler(config.rate)
        if vad_changed:
            self._vad = self._new_vad()
            if self._vad is not None:
                self._vad.reset(self.audio.end)
        await self.emit(event("session.updated", session=session_json(self.id, self.config)))

    def _new_vad(self) -> EnergyVad | None:
        vad = self.config.vad
        return None if vad is None else EnergyVad(vad.threshold, vad.silence_duration_ms)

    async def _append(self, pcm: bytes) -> None:
        x = self._resampler(pcm16_to_float(pcm))
        self.audio.append(x)
        if self._streaming:
            self._stream_wake.set()
        if self._vad is None:
            if self.audio.end - self._turn_start >= self.settings.realtime_max_turn_s * SAMPLE_RATE:
                await self._commit(self.audio.end)
            return
        for ev in self._vad.feed(x):
            if ev.kind == "start":
                self._heard = True
                pad = int(self.config.vad.prefix_padding_ms * SAMPLE_RATE / 1000)  # type: ignore[union-attr]
                self._turn_start = max(self._turn_start, ev.sample - pad, self.audio.start)
                self._speech_item = new_id("item")
                await self.emit(
                    event(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=_ms(ev.sample),
                        item_id=self._speech_item,
                    )
                )
            else:
                item = self._speech_item or new_id("item")
                await self.emit(
                    event(
                        "input_audio_buffer.speech_stopped",
                        audio_end_ms=_ms(ev.sample),
                        item_id=item,
                    )
                )
                await self._commit(max(ev.sample, self._turn_start), item)
        if (
            self._vad.speaking
            and self.audio.end - self._turn_start >= self.settings.realtime_max_turn_s * SAMPLE_RATE
        ):
            # A monologue without pauses: cut it so no turn outgrows the kept context.
            item = self._speech_item
            await self._commit(self.audio.end, item)
            self._speech_item = new_id("item")
            await self.emit(
                event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=_ms(self.audio.end),
                    item_id=self._speech_item,
                )
            )
        elif not self._vad.speaking:
            # Outside speech only the prefix padding is worth keeping for the next turn.
            pad = int(self.config.vad.prefix_padding_ms * SAMPLE_RATE / 1000)  # type: ignore[union-attr]
            self._turn_start = max(self._turn_start, self.audio.end - pad)

    async def _commit_manual(self) -> None:
        # The resampler holds back a few ms of filter delay: a commit takes all that was sent.
        tail = self._resampler.flush()
        self._resampler = _Resampler(self.config.rate)
        self.audio.append(tail)
        vad_silent = self._vad is not None and not self._vad.speaking and not self._heard
        if (self.audio.end - self._turn_start) < MIN_COMMIT_S * SAMPLE_RATE or vad_silent:
            # With server VAD, audio since the last stop that held no speech is not a turn.
            raise ProtocolError(
                f"buffer too small: at least {MIN_COMMIT_S * 1000:.0f} ms of audio is needed "
                "to commit",
                code="input_audio_buffer_commit_empty",
            )
        item = self._speech_item if self._vad is not None and self._vad.speaking else None
        await self._commit(self.audio.end, item)
        if self._vad is not None:
            self._vad.reset(self.audio.end)

    async def _commit(self, end: int, item_id: str | None = None) -> None:
        start = max(self._turn_start, self.audio.start)
        item = _Item(item_id or new_id("item"), start, end, self._last_item)
        self._turn_start, self._speech_item, self._last_item = end, None, item.id
        self._heard = bool(self._vad is not None and self._vad.speaking)
        await self.emit(
            event("input_audio_buffer.committed", item_id=item.id, previous_item_id=item.previous)
        )
        self.pending_items += 1
        await self._items.put(item)

    async def _clear(self) -> None:
        self._turn_start = self.audio.end
        self._heard = False
        self._speech_item = None
        if self._vad is not None:
            self._vad.reset(self.audio.end)
        await self.emit(event("input_audio_buffer.cleared"))

    # ------------------------------------------------------------ turns

    async def _work(self) -> None:
        while True:
            item = await self._items.get()
            if item is None:
                return
            try:
                await self._transcribe(item)
            except VoxgraphError as e:
                await self.emit(_failed(item.id, e.message, e.code))
                if isinstance(e, ServiceUnavailable):
                    self.failure = SessionClosed(1013, "a model is unavailable; retry")
                    return
            except SessionClosed as e:
                self.failure = e
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the session must report, not die silently
                await self.emit(
                    _failed(item.id, f"transcription failed: {type(e).__name__}", "internal")
                )
                self.failure = SessionClosed(1011, "internal error")
                return
            finally:
                self.pending_items -= 1

    async def _transcribe(self, item: _Item) -> None:
        if item.start < self.audio.start:
            raise BadRequest(
                "the session fell behind real time and this turn's audio is no longer kept"
            )
        clip = self.audio.get(item.start, item.end)
        offset = item.start / SAMPLE_RATE
        # A multitask model (Canary) is told the session's language; others need nothing.
        prompt = _asr_prompt(self.config.language, await self.backends.info("asr"), "transcribe")
        speakers_task = asyncio.create_task(self._turn_speakers(item))
        try:
            transcript = await self.pipeline._transcript(clip, prompt=prompt)
        except BaseException:
            speakers_task.cancel()
            raise
        if transcript.text:
            await self.emit(
                event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item.id,
                    content_index=0,
                    delta=transcript.text,
                )
            )
        turn_diar = await speakers_task
        attributed = attribute(transcript, turn_diar, self._label)
        for i, seg in enumerate(attributed.segments):
            await self.emit(
                event(
                    "conversation.item.input_audio_transcription.segment",
                    item_id=item.id,
                    content_index=0,
                    id=f"{item.id}_seg_{i}",
                    start=round(offset + seg.start, 3),
                    end=round(offset + seg.end, 3),
                    speaker=seg.speaker or "",
                    confidence=seg.speaker_confidence,
                    text=seg.text,
                )
            )
        await self.emit(
            event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item.id,
                content_index=0,
                transcript=transcript.text,
                speaker=_main_speaker(attributed),
                usage={"type": "duration", "seconds": round(len(clip) / SAMPLE_RATE, 3)},
            )
        )

    async def _turn_speakers(self, item: _Item) -> Diarization:
        """The turn's diarization with session speakers as columns and turn-relative times."""
        s = self.settings
        ctx_start = max(self.audio.start, item.end - int(s.realtime_diar_context_s * SAMPLE_RATE))
        ctx_start = min(ctx_start, item.start)
        # Whole frames before the turn, so its frames line up with the context's.
        hop = round(0.08 * SAMPLE_RATE)
        ctx_start = item.start - ((item.start - ctx_start) // hop) * hop
        if self._streaming:
            diar = await self._stream_diarization(ctx_start, item.end)
        else:
            diar = await self.backends.diarize(self.audio.get(ctx_start, item.end))
        ctx = self.audio.get(ctx_start, item.end)
        min_s = s.min_fingerprint_speech_s
        prints = await speaker_fingerprints(
            ctx, diar.turns, min_s, self.backends.embed, s.max_fingerprint_speech_s
        )
        rel = (item.start - ctx_start) / SAMPLE_RATE
        in_turn = {int(t.speaker) for t in diar.turns if t.end > rel}
        mapping = self.speakers.link(
            diar, prints, offset_s=ctx_start / SAMPLE_RATE, may_be_new=in_turn
        )
        await self._name(set(mapping.values()))
        return crop(diar, rel, rel + (item.end - item.start) / SAMPLE_RATE, mapping)

    async def _name(self, speakers: set[int]) -> None:
        """Name each speaker once, when first fingerprinted; the label then never changes."""
        if self._known is None:
            return
        prints = self.speakers.voiceprints
        todo = {g: prints[g] for g in speakers if g in prints and g not in self._decided}
        if not todo:
            return
        taken = {n for n, _ in self._names.values()}
        free = [c for c in self._known if c.name not in taken]
        model = (await self.backends.info("embedder")).model
        result = identify(todo, free, model, self.settings.identify_threshold)
        for g, ident in result.assignments.items():
            self._names[int(g)] = (ident.name, ident.score)
        self._decided |= set(todo)

    def _label(self, g: int) -> str:
        named = self._names.get(int(g))
        return named[0] if named else speaker_label(int(g))

    # ------------------------------------------------------------ streaming diarizer

    async def _stream(self) -> None:
        """Send audio to the streaming diarizer as it arrives, one step in flight at a time.

        The session carries the model's state and sends it with each step, so any
        Diarizer replica can take the next one and steps of many sessions batch.
        """
        while True:
            await self._stream_wake.wait()
            self._stream_wake.clear()
            if self._stream_fed >= self.audio.end:
                continue
            chunk = self.audio.get(self._stream_fed, self.audio.end)
            self._stream_fed = self.audio.end
            try:
                step = await self.backends.diarize_step(chunk, self._stream_state)  # type: ignore[attr-defined]
            except VoxgraphError as e:
                self.failure = SessionClosed(
                    1013 if isinstance(e, ServiceUnavailable) else 1011, e.message[:120]
                )
                await self.emit(error_event(e.message, e.code, kind="server_error"))
                return
            self._stream_state = step.state
            self._stream_frame_s = step.frame_s
            if len(step.probs):
                self._stream_probs.append(np.asarray(step.probs, dtype=np.float32))
                self._stream_frames = step.start_frame + len(step.probs)
            keep = math.ceil(self.settings.realtime_context_s / step.frame_s)
            while (
                self._stream_probs
                and self._stream_frames - self._stream_start - len(self._stream_probs[0]) >= keep
            ):
                self._stream_start += len(self._stream_probs.popleft())
            async with self._stream_progress:
                self._stream_progress.notify_all()

    async def _stream_diarization(self, a: int, b: int) -> Diarization:
        """Streaming frames of session samples [a, b).

        A frame is final once the model has heard its chunk and right context, so
        the turn waits for the audio that follows it (a live client keeps sending);
        after `STREAM_WAIT_S` frames the model has not given count as silence.
        """

        def covered() -> bool:
            return self._stream_frames * self._stream_frame_s * SAMPLE_RATE >= b - 1

        async with self._stream_progress:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stream_progress.wait_for(covered), STREAM_WAIT_S)
        frame_s = self._stream_frame_s
        f0, f1 = round(a / SAMPLE_RATE / frame_s), math.ceil(b / SAMPLE_RATE / frame_s - 1e-6)
        rows = (
            np.concatenate(list(self._stream_probs))
            if self._stream_probs
            else np.zeros((0, 4), np.float32)
        )
        width = rows.shape[1] if rows.ndim == 2 and rows.shape[1] else 4
        probs = np.zeros((max(f1 - f0, 0), width), dtype=np.float32)
        lo, hi = max(f0, self._stream_start), min(f1, self._stream_start + len(rows))
        if hi > lo:
            probs[lo - f0 : hi - f0] = rows[lo - self._stream_start : hi - self._stream_start]
        turns = turns_from_probs(probs, frame_s)
        return Diarization(tuple(turns), probs, frame_s, (b - a) / SAMPLE_RATE)

    # ------------------------------------------------------------ memory, for tests and /health

    def memory_bytes(self) -> int:
        """Bytes of audio, frames and voiceprints the session holds now."""
        audio = self.audio.kept_samples * 4
        frames = sum(p.nbytes for p in self._stream_probs)
        prints = sum(v.nbytes for v in self.speakers.voiceprints.values())
        return audio + frames + prints + self.speakers._act.nbytes


def _failed(item_id: str, message: str, code: str) -> dict[str, Any]:
    """OpenAI's per-item failure event."""
    return event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=0,
        error={"type": "server_error", "code": code, "message": message, "param": None},
    )


def _ms(sample: int) -> int:
    return round(sample * 1000 / SAMPLE_RATE)


def _main_speaker(t: Transcript) -> str | None:
    """The speaker with the most word time in the turn (segments' speakers without words)."""
    time_of: dict[str, float] = {}
    for w in t.words:
        if w.speaker:
            time_of[w.speaker] = time_of.get(w.speaker, 0.0) + (w.end - w.start)
    if not time_of:
        for seg in t.segments:
            if seg.speaker:
                time_of[seg.speaker] = time_of.get(seg.speaker, 0.0) + (seg.end - seg.start)
    return max(time_of, key=lambda k: time_of[k]) if time_of else None


class SessionRegistry:
    """The sessions of one ingress replica, up to `realtime_max_sessions`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sessions: dict[str, LiveSession] = {}

    @property
    def full(self) -> bool:
        return len(self.sessions) >= self.settings.realtime_max_sessions

    def add(self, session: LiveSession) -> None:
        self.sessions[session.id] = session

    def remove(self, session: LiveSession) -> None:
        self.sessions.pop(session.id, None)
