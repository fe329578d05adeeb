"""The one request walk, free of Ray.

    bytes ─ admit + decode ─┬─ ASR windows ──────────────────────────────┐
                            └─ diarizer windows → fingerprints → link →  ├─ attribute → output
                                                     stitch → confidence ┘

`Pipeline` runs it against `Backends`: three async model calls on decoded
16 kHz mono float32 audio. The ingress gives it Ray Serve handles
(`deployments/handles.py`), the seed-style baseline and the tests give it
in-process runners (`voxgraph.local`). Whatever the backends, the walk, its
windows, linking and outputs are this code and nothing else.

Where things happen: audio is decoded in `_admitted` (voxgraph.audio), windows
are planned in `voxgraph.windows`, confidence is computed in `voxgraph.turns`,
windows' speakers are linked and stitched in `voxgraph.linking`, words get
speakers in `voxgraph.attribution`, and each model lives in its deployment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Literal, Protocol, TypeVar

import numpy as np

from voxgraph.attribution import (
    assign_word_speakers,
    merge_window_transcripts,
    split_segments_by_speaker,
)
from voxgraph.audio import decode_audio, probe_duration
from voxgraph.budget import AudioBudget
from voxgraph.errors import BadRequest, PayloadTooLarge
from voxgraph.formats import DiarizationOutput, TranscriptionOutput
from voxgraph.linking import SpeakerHints, link_speakers, stitch
from voxgraph.schemas import (
    MODEL_LANGUAGES,
    DiarizeChunkOptions,
    DiarizeOptions,
    ServerVadChunking,
    SpeakerCountHints,
    TranscribeOptions,
)
from voxgraph.settings import Settings
from voxgraph.turns import l2_normalise, speaker_clips, speaker_label, with_confidence
from voxgraph.types import SAMPLE_RATE, Diarization, ModelInfo, Transcript, Turn
from voxgraph.windows import Window, plan_windows, window_samples

T = TypeVar("T")
Role = Literal["asr", "diarizer", "embedder"]
ROLES: tuple[Role, ...] = ("asr", "diarizer", "embedder")

# An upload that declares no duration is reserved as if it held this few bytes per
# second (8 kbit/s, below any usable speech codec) until decoding tells the truth.
_MIN_BYTES_PER_S = 1000.0


class Backends(Protocol):
    """The three models, as async calls on decoded 16 kHz mono float32 audio."""

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """Text with word and segment timestamps of one clip."""
        ...

    async def diarize(self, audio: np.ndarray) -> Diarization:
        """Local speaker turns and frame probabilities of one clip."""
        ...

    async def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """One fingerprint row per clip, in order (never called with no clips)."""
        ...

    async def info(self, role: Role, *, fresh: bool = False) -> ModelInfo:
        """What the model of `role` is, where it runs, whether it is ready.

        `fresh` asks now (for /health); otherwise a recent answer may be reused.
        """
        ...


class Pipeline:
    """decode → windows → ASR ∥ diarizer → fingerprints → link → stitch → attribute."""

    def __init__(self, backends: Backends, settings: Settings | None = None):
        self.backends = backends
        self.settings = settings or Settings.load()
        self.budget = AudioBudget(self.settings.max_inflight_audio_s)

    # ------------------------------------------------------------ operations

    async def transcribe(self, audio: bytes, opts: TranscribeOptions) -> TranscriptionOutput:
        """What was said; with `opts.diarize`, who said each word and segment."""
        hints = _hints(opts)
        asr = await self.backends.info("asr")
        _check_language(opts.language, asr.model)
        async with self._admitted(audio) as samples:
            if opts.diarized:
                transcript, diar = await asyncio.gather(
                    self._transcript(samples), self._speakers(samples, hints)
                )
                transcript = attribute(transcript, diar)
            else:
                transcript = await self._transcript(samples)
        return TranscriptionOutput(
            transcript=transcript,
            model=asr.model,
            language=opts.language,
            granularities=tuple(opts.timestamp_granularities),
            temperature=opts.temperature,
            diarized=opts.diarized,
            pause_s=_pause_s(opts),
        )

    async def diarize(self, audio: bytes, opts: DiarizeOptions) -> DiarizationOutput:
        """Who spoke when, with speakers consistent across the whole recording."""
        hints = _hints(opts)
        async with self._admitted(audio) as samples:
            diar = await self._speakers(samples, hints)
        info = await self.backends.info("diarizer")
        return DiarizationOutput(
            turns=labelled_turns(diar),
            duration=len(samples) / SAMPLE_RATE,
            model=info.model,
            device=info.device,
        )

    async def diarize_chunk(
        self, audio: bytes, opts: DiarizeChunkOptions | None = None
    ) -> DiarizationOutput:
        """Chunk-local speakers with confidence and one fingerprint per speaker."""
        async with self._admitted(audio) as samples:
            diar = await self.backends.diarize(samples)
            prints = await self._fingerprints(samples, diar)
        dinfo, einfo = await asyncio.gather(
            self.backends.info("diarizer"), self.backends.info("embedder")
        )
        return DiarizationOutput(
            turns=labelled_turns(diar),
            duration=len(samples) / SAMPLE_RATE,
            model=dinfo.model,
            device=dinfo.device,
            fingerprints={
                speaker_label(k): [round(float(x), 6) for x in v] for k, v in prints.items()
            },
            models={"diarization": dinfo.model, "embedding": einfo.model},
        )

    # ------------------------------------------------------------ the walk

    @asynccontextmanager
    async def _admitted(self, audio: bytes) -> AsyncIterator[np.ndarray]:
        """Reserve the in-flight audio budget, then decode; release when the request ends.

        The reservation comes before decoding, from the duration the file declares
        (or a bound from its size), so a burst of long uploads is refused before
        their samples exist; it is corrected to the real length once decoded.
        """
        s = self.settings
        if not isinstance(audio, bytes | bytearray | memoryview):
            raise BadRequest("audio must be the file's bytes")
        if not audio:
            raise BadRequest("the uploaded file is empty")
        if len(audio) > s.max_upload_mb * 1024 * 1024:
            raise PayloadTooLarge(f"upload is over the {s.max_upload_mb:g} MB limit")
        data = bytes(audio)
        declared = probe_duration(data)
        estimate = declared if declared is not None else len(data) / _MIN_BYTES_PER_S
        with self.budget.reserve(min(estimate, s.max_audio_s)) as reservation:
            # Decoding is CPU work (FFmpeg, resampling): keep the event loop free.
            samples = await asyncio.to_thread(decode_audio, data, max_duration_s=s.max_audio_s)
            del data
            reservation.resize(len(samples) / SAMPLE_RATE)
            yield samples

    async def _transcript(self, samples: np.ndarray) -> Transcript:
        """ASR over overlapping windows; each word kept by the window whose core holds it."""
        s = self.settings
        windows = plan_windows(len(samples) / SAMPLE_RATE, s.asr_window_s, s.asr_overlap_s)
        parts = await self._each(
            windows, lambda w: self.backends.transcribe(window_samples(samples, w))
        )
        return merge_window_transcripts(windows, parts)

    async def _speakers(self, samples: np.ndarray, hints: SpeakerHints) -> Diarization:
        """Windows diarized and fingerprinted, speakers linked, stitched in global time."""
        s = self.settings
        windows = plan_windows(len(samples) / SAMPLE_RATE, s.diar_window_s, s.diar_overlap_s)

        async def one(w: Window) -> tuple[Diarization, dict[int, np.ndarray]]:
            clip = window_samples(samples, w)
            diar = await self.backends.diarize(clip)
            return diar, await self._fingerprints(clip, diar)

        results = await self._each(windows, one)
        diars = [d for d, _ in results]
        prints = [p for _, p in results]
        mappings = link_speakers(windows, diars, prints, hints, threshold=s.link_threshold)
        return stitch(windows, diars, mappings)

    async def _fingerprints(self, clip: np.ndarray, diar: Diarization) -> dict[int, np.ndarray]:
        """L2-normalised fingerprint per local speaker with enough speech, in one call."""
        clips = speaker_clips(clip, diar.turns, self.settings.min_fingerprint_speech_s)
        if not clips:
            return {}
        speakers = sorted(clips)
        embs = await self.backends.embed([clips[k] for k in speakers])
        return {int(k): l2_normalise(e) for k, e in zip(speakers, embs, strict=True)}

    async def _each(self, windows: list[Window], fn: Callable[[Window], Awaitable[T]]) -> list[T]:
        """`fn` over windows in order, at most `max_windows_in_flight` at once.

        Only windows in flight are in the models' hands, so a long recording
        needs its decoded samples plus a few windows, not a second copy of itself.
        """
        gate = asyncio.Semaphore(self.settings.max_windows_in_flight)

        async def gated(w: Window) -> T:
            async with gate:
                return await fn(w)

        return list(await asyncio.gather(*(gated(w) for w in windows)))


# ---------------------------------------------------------------- pure steps


def attribute(transcript: Transcript, diar: Diarization) -> Transcript:
    """A new transcript whose words and segments carry speakers and confidence."""
    turns = with_confidence(diar.turns, diar.probs, diar.frame_s)
    words = assign_word_speakers(transcript.words, diar.probs, diar.frame_s, turns)
    segments = split_segments_by_speaker(transcript.segments, words, diar.probs, diar.frame_s)
    return Transcript(
        text=transcript.text,
        words=tuple(words),
        segments=tuple(segments),
        duration=transcript.duration,
    )


def labelled_turns(diar: Diarization) -> tuple[Turn, ...]:
    """Turns with their confidence and `Speaker_<k>` labels."""
    return tuple(
        Turn(t.start, t.end, speaker_label(int(t.speaker)), t.confidence)
        for t in with_confidence(diar.turns, diar.probs, diar.frame_s)
    )


def _hints(opts: SpeakerCountHints) -> SpeakerHints:
    return SpeakerHints(opts.num_speakers, opts.min_speakers, opts.max_speakers)


def _pause_s(opts: TranscribeOptions) -> float | None:
    vad = opts.chunking_strategy
    return vad.silence_duration_ms / 1000 if isinstance(vad, ServerVadChunking) else None


def _check_language(language: str | None, model: str) -> None:
    supported = MODEL_LANGUAGES.get(model)
    if language and supported is not None and language not in supported:
        raise BadRequest(
            f"language {language!r} is not supported by {model}; "
            f"supported: {', '.join(sorted(supported))}"
        )
