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
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from voxgraph.attribution import (
    WindowMerge,
    assign_word_speakers,
    merge_window_transcripts,
    split_segments_by_speaker,
)
from voxgraph.audio import data_url_bytes, decode_audio, probe_duration
from voxgraph.budget import AudioBudget
from voxgraph.errors import BadRequest, PayloadTooLarge
from voxgraph.formats import DiarizationOutput, TranscriptEvents, TranscriptionOutput
from voxgraph.identity import Candidate, identify, speaker_voiceprints
from voxgraph.linking import SpeakerHints, link_speakers, stitch
from voxgraph.live_speakers import SessionSpeakers
from voxgraph.schemas import (
    DEFAULT_KEYWORD_BOOST,
    MODEL_LANGUAGES,
    DiarizeChunkOptions,
    DiarizeOptions,
    KnownSpeakers,
    ServerVadChunking,
    SpeakerCountHints,
    TranscribeOptions,
    TranscriptStreamEvent,
)
from voxgraph.settings import Settings
from voxgraph.turns import (
    frame_span,
    l2_normalise,
    speaker_clips,
    speaker_fingerprints,
    speaker_label,
    speech_seconds,
    with_confidence,
)
from voxgraph.types import SAMPLE_RATE, Diarization, ModelInfo, Segment, Transcript, Turn
from voxgraph.windows import Window, plan_windows, window_samples

T = TypeVar("T")
Role = Literal["asr", "diarizer", "embedder"]
ROLES: tuple[Role, ...] = ("asr", "diarizer", "embedder")

# A header, Xing frame or STREAMINFO block sits in the first bytes of a file.
_PROBE_BYTES = 64 * 1024

# A streamed segment gets its speakers once diarization reaches this far past its
# end, so a word at the edge still sees the turns that follow it.
_SPEAKER_LOOKAHEAD_S = 5.0

# An upload that declares no duration is reserved as if it held this few bytes per
# second (8 kbit/s, below any usable speech codec) until decoding tells the truth.
_MIN_BYTES_PER_S = 1000.0


class Backends(Protocol):
    """The three models, as async calls on decoded 16 kHz mono float32 audio."""

    async def transcribe(
        self,
        audio: np.ndarray,
        *,
        keywords: Sequence[str] = (),
        boost: float = DEFAULT_KEYWORD_BOOST,
        language: str | None = None,
        task: str = "transcribe",
    ) -> Transcript:
        """Text with word and segment timestamps of one clip.

        `keywords` (hotwords) bias this clip's decoding only, with weight `boost`;
        the walk passes them only when a request has some. `language` (spoken) and
        `task` (`transcribe`, or `translate` into English) go to a multitask (Canary)
        model only; the walk passes them only to such a model.
        """
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

    # Optional shortcuts a transport may offer (the graph's handles do):
    # - `async def place(audio) -> np.ndarray` puts a decoded recording where the models
    #   read it (Ray's object store, once) and returns the array to slice windows from;
    # - `async def diarize_fingerprinted(audio, min_speech_s, max_speech_s)` -> (Diarization,
    #   {speaker: unit fingerprint}) hands the diarization to the embedder directly,
    #   so the speakers' clips are cut next to the embedder, not sent to it.


class Upload(Protocol):
    """An uploaded file not yet read into memory (starlette's UploadFile is one)."""

    size: int | None

    async def read(self, size: int = -1) -> bytes: ...

    async def seek(self, offset: int) -> None: ...


class Library(Protocol):
    """Enrolled voices (voxgraph.speakers.SpeakerLibrary)."""

    async def candidates(
        self, model: str, names: Sequence[str] | None = None
    ) -> list[Candidate]: ...


class Pipeline:
    """decode → windows → ASR ∥ diarizer → fingerprints → link → stitch → attribute."""

    def __init__(
        self,
        backends: Backends,
        settings: Settings | None = None,
        library: Library | None = None,
    ):
        self.backends = backends
        self.settings = settings or Settings.load()
        self.library = library
        self.budget = AudioBudget(self.settings.max_inflight_audio_s)

    # ------------------------------------------------------------ operations

    async def transcribe(
        self,
        audio: bytes | Upload,
        opts: TranscribeOptions,
        task: Literal["transcribe", "translate"] = "transcribe",
    ) -> TranscriptionOutput:
        """What was said; with `opts.diarize`, who said each word and segment.

        `task="translate"` writes it in English (a multitask model such as Canary,
        told the spoken `opts.language`); speakers are attributed the same way.
        """
        hints = _hints(opts)
        asr = await self.backends.info("asr")
        _check_language(opts.language, asr.model)
        _check_keywords(opts, asr)
        prompt = _asr_prompt(opts.language, asr, task)
        known = await self._known(opts)
        naming = Naming()
        async with self._admitted(audio) as samples:
            if opts.diarized:
                transcript, (diar, prints) = await asyncio.gather(
                    self._transcript(samples, opts, prompt), self._speakers(samples, hints)
                )
                naming = await self._identify(prints, known)
                transcript = attribute(transcript, diar, naming.label)
            else:
                transcript = await self._transcript(samples, opts, prompt)
        return TranscriptionOutput(
            transcript=transcript,
            model=asr.model,
            # As OpenAI: a translation's verbose_json names its output language.
            language="english" if task == "translate" else opts.language,
            task=task,
            granularities=tuple(opts.timestamp_granularities),
            temperature=opts.temperature,
            diarized=opts.diarized,
            pause_s=_pause_s(opts),
            identity_scores=naming.scores,
            identification=naming.report,
        )

    async def transcribe_events(
        self, audio: bytes | Upload, opts: TranscribeOptions
    ) -> AsyncIterator[TranscriptStreamEvent]:
        """`transcribe` as stream events (stream=true), window by window as they finish.

        Windows run concurrently as in `transcribe`; a window's settled segments
        are sent once it and every window before it are done. The `done` text is
        `transcribe`'s text. With diarized_json, speakers are linked chunk by
        chunk (`SessionSpeakers`), not clustered over the whole file, so in hard
        cases they may differ from the answer without stream=true.
        """
        hints = _hints(opts)
        asr = await self.backends.info("asr")
        _check_language(opts.language, asr.model)
        _check_keywords(opts, asr)
        prompt = _asr_prompt(opts.language, asr, "transcribe")
        async with self._admitted(audio) as samples:
            events = TranscriptEvents(diarized=opts.diarized, pause_s=_pause_s(opts))
            windows = self._asr_windows(samples)
            merge = WindowMerge(windows)
            speakers = _StreamedSpeakers(self, samples, hints) if opts.diarized else None
            parts = _InOrder(
                windows,
                lambda w: self._asr(window_samples(samples, w), opts, prompt),
                self.settings.max_windows_in_flight,
            )
            try:
                async for part in parts:
                    segments = merge.add(part)
                    if speakers is not None and segments:
                        segments = await speakers.attribute(segments, merge.complete)
                    for event in events.add(segments):
                        yield event
            finally:
                parts.cancel()
                if speakers is not None:
                    speakers.cancel()
            result = merge.result
            text = None if opts.diarized else (result.text if result is not None else "")
            yield events.done(text, len(samples) / SAMPLE_RATE)

    async def diarize(self, audio: bytes | Upload, opts: DiarizeOptions) -> DiarizationOutput:
        """Who spoke when, with speakers consistent across the whole recording."""
        hints = _hints(opts)
        known = await self._known(opts)
        async with self._admitted(audio) as samples:
            diar, prints = await self._speakers(samples, hints)
        naming = await self._identify(prints, known)
        info = await self.backends.info("diarizer")
        return DiarizationOutput(
            turns=labelled_turns(diar, naming.label),
            duration=len(samples) / SAMPLE_RATE,
            model=info.model,
            device=info.device,
            identity_scores=naming.scores,
            identification=naming.report,
        )

    async def diarize_chunk(
        self, audio: bytes | Upload, opts: DiarizeChunkOptions | None = None
    ) -> DiarizationOutput:
        """Chunk-local speakers with confidence and one fingerprint per speaker."""
        known = await self._known(opts) if opts is not None else None
        async with self._admitted(audio) as samples:
            diar, prints = await self._diarized(samples)
        naming = await self._identify(prints, known)
        dinfo, einfo = await asyncio.gather(
            self.backends.info("diarizer"), self.backends.info("embedder")
        )
        return DiarizationOutput(
            turns=labelled_turns(diar, naming.label),
            duration=len(samples) / SAMPLE_RATE,
            model=dinfo.model,
            device=dinfo.device,
            fingerprints={
                naming.label(k): [round(float(x), 6) for x in v] for k, v in prints.items()
            },
            models={"diarization": dinfo.model, "embedding": einfo.model},
            identity_scores=naming.scores,
            identification=naming.report,
        )

    async def voiceprint(self, audio: bytes, what: str = "the clip") -> tuple[np.ndarray, float]:
        """(fingerprint, speech seconds) of one voice: a reference or an enrolment clip.

        The clip is decoded and checked like an upload; the diarizer must hear one
        main voice (another voice speaking on its own for more than a fifth of the
        main voice's time is refused) with at least `min_reference_speech_s` of speech.
        """
        try:
            async with self._admitted(audio) as samples:
                return await self._one_voice(samples, what)
        except BadRequest as e:
            if e.message.startswith(what):
                raise
            # Name the clip: a request may carry several references besides its file.
            raise type(e)(f"{what}: {e.message}") from e

    async def _one_voice(self, samples: np.ndarray, what: str) -> tuple[np.ndarray, float]:
        diar = await self.backends.diarize(samples)
        speaker, speech_s = main_voice(diar, what)
        need = self.settings.min_reference_speech_s
        if speech_s < need:
            raise BadRequest(
                f"{what} has {speech_s:.1f} s of speech; at least {need:g} s is needed"
            )
        clip = speaker_clips(samples, diar.turns, 0.0)[speaker]
        emb = await self.backends.embed([clip])
        return l2_normalise(emb[0]), speech_s

    # ------------------------------------------------------------ the walk

    @asynccontextmanager
    async def _admitted(self, audio: bytes | Upload) -> AsyncIterator[np.ndarray]:
        """Reserve the in-flight audio budget, then decode; release when the request ends.

        The reservation comes before decoding, from the duration the file declares
        (or a bound from its size), so a burst of long uploads is refused before
        their samples exist; it is corrected to the real length once decoded.
        """
        s = self.settings
        if isinstance(audio, bytes | bytearray | memoryview):
            data: bytes | None = bytes(audio)
            head, size = data, len(data)
        elif callable(getattr(audio, "read", None)) and callable(getattr(audio, "seek", None)):
            # An upload still on the HTTP layer's spool: only its head is read before
            # admission, so refused uploads never sit in this process's memory.
            data, head = None, await audio.read(_PROBE_BYTES)
            await audio.seek(0)
            size = audio.size if audio.size is not None else len(head)
        else:
            raise BadRequest("audio must be the file's bytes")
        if not size or not head:
            raise BadRequest("the uploaded file is empty")
        if size > s.max_upload_mb * 1024 * 1024:
            raise PayloadTooLarge(f"upload is over the {s.max_upload_mb:g} MB limit")
        declared = probe_duration(head)
        estimate = declared if declared is not None else size / _MIN_BYTES_PER_S
        with self.budget.reserve(min(estimate, s.max_audio_s)) as reservation:
            if data is None:
                data = await audio.read()  # type: ignore[union-attr]
            # Decoding is CPU work (FFmpeg, resampling): keep the event loop free.
            samples = await asyncio.to_thread(decode_audio, data, max_duration_s=s.max_audio_s)
            del data
            place = getattr(self.backends, "place", None)
            if place is not None:
                samples = await place(samples)
            reservation.resize(len(samples) / SAMPLE_RATE)
            yield samples

    def _asr_windows(self, samples: np.ndarray) -> list[Window]:
        s = self.settings
        return plan_windows(len(samples) / SAMPLE_RATE, s.asr_window_s, s.asr_overlap_s)

    def _diar_windows(self, samples: np.ndarray) -> list[Window]:
        s = self.settings
        return plan_windows(len(samples) / SAMPLE_RATE, s.diar_window_s, s.diar_overlap_s)

    async def _transcript(
        self,
        samples: np.ndarray,
        opts: TranscribeOptions | None = None,
        prompt: Mapping[str, Any] | None = None,
    ) -> Transcript:
        """ASR over overlapping windows; each word kept by the window whose core holds it.

        `opts` give the request's keywords (hotwords); live sessions pass none.
        `prompt` is a multitask model's `language` and `task` (`_asr_prompt`).
        """
        windows = self._asr_windows(samples)
        parts = await self._each(
            windows, lambda w: self._asr(window_samples(samples, w), opts, prompt)
        )
        return merge_window_transcripts(windows, parts)

    def _asr(
        self,
        clip: np.ndarray,
        opts: TranscribeOptions | None,
        prompt: Mapping[str, Any] | None = None,
    ) -> Awaitable[Transcript]:
        """One ASR call, with the request's keywords (hotwords) when it has any."""
        extra = dict(prompt or {})
        if opts is None or not opts.keywords:
            return self.backends.transcribe(clip, **extra)
        return self.backends.transcribe(
            clip, keywords=tuple(opts.keywords), boost=opts.keyword_boost, **extra
        )

    async def _speakers(
        self, samples: np.ndarray, hints: SpeakerHints
    ) -> tuple[Diarization, dict[int, np.ndarray]]:
        """Windows diarized and fingerprinted, speakers linked, stitched in global time.

        Also each global speaker's voiceprint: its windows' fingerprints weighted by
        their speech, so a speaker is named from all of its speech in the recording.
        """
        s = self.settings
        windows = self._diar_windows(samples)
        results = await self._each(windows, lambda w: self._diarized_window(samples, w))
        diars = [d for d, _ in results]
        prints = [p for _, p in results]
        mappings = link_speakers(windows, diars, prints, hints, threshold=s.link_threshold)
        speech = [speech_seconds(d.turns) for d in diars]
        voiceprints = speaker_voiceprints(prints, mappings, speech)  # type: ignore[arg-type]
        return stitch(windows, diars, mappings), voiceprints

    async def _diarized_window(
        self, samples: np.ndarray, w: Window
    ) -> tuple[Diarization, dict[int, np.ndarray]]:
        """One diarization window (window-relative times) and its speakers' fingerprints."""
        return await self._diarized(window_samples(samples, w))

    async def _diarized(self, clip: np.ndarray) -> tuple[Diarization, dict[int, np.ndarray]]:
        """Local speakers of one clip and an L2-normalised fingerprint per speaker with enough
        speech. Backends that can hand the diarization straight to the embedder do."""
        min_s = self.settings.min_fingerprint_speech_s
        max_s = self.settings.max_fingerprint_speech_s
        combined = getattr(self.backends, "diarize_fingerprinted", None)
        if combined is not None:
            return await combined(clip, min_s, max_s)
        diar = await self.backends.diarize(clip)
        prints = await speaker_fingerprints(clip, diar.turns, min_s, self.backends.embed, max_s)
        return diar, prints

    async def _known(self, opts: KnownSpeakers) -> list[Candidate] | None:
        """The voices this request may name, or None when it asks for no names."""
        if not opts.wants_identity:
            return None
        model = (await self.backends.info("embedder")).model
        known: list[Candidate] = []
        refs = opts.known_speaker_references
        for i, (name, url) in enumerate(zip(opts.known_speaker_names, refs, strict=False)):
            what = f"known_speaker_references[{i}] ({name})"
            clip = data_url_bytes(
                url, max_bytes=int(self.settings.max_upload_mb * 2**20), what=what
            )
            vector, _ = await self.voiceprint(clip, what)
            known.append(Candidate(f"ref_{i}", name, model, vector, "reference"))
        names = None if opts.identify else ([] if refs else opts.known_speaker_names)
        if names != []:
            if self.library is None:
                raise BadRequest("this service has no speaker library; send references instead")
            known += await self.library.candidates(model, names)
        return known

    async def _identify(
        self, voiceprints: dict[int, np.ndarray], known: list[Candidate] | None
    ) -> Naming:
        if known is None:
            return Naming()
        model = (await self.backends.info("embedder")).model
        result = identify(voiceprints, known, model, self.settings.identify_threshold)
        return Naming(
            names={k: (i.name, i.score) for k, i in result.assignments.items()},
            report={
                "threshold": result.threshold,
                "candidates": len(known),
                "skipped": [
                    {"name": sk.name, "reason": sk.reason, "detail": sk.detail}
                    for sk in result.skipped
                ],
            },
        )

    async def _each(self, windows: list[Window], fn: Callable[[Window], Awaitable[T]]) -> list[T]:
        """`fn` over windows in order, at most `max_windows_in_flight` at once.

        Only windows in flight are in the models' hands, so a long recording
        needs its decoded samples plus a few windows, not a second copy of itself.
        """
        runs = _InOrder(windows, fn, self.settings.max_windows_in_flight)
        try:
            return [r async for r in runs]
        finally:
            runs.cancel()


class _InOrder(AsyncIterator[T]):
    """`fn` over windows, at most `limit` at once, started now; results come in window order.

    `cancel` stops the windows still running (a failed or abandoned request
    leaves no model call behind that nobody waits for).
    """

    def __init__(self, windows: Sequence[Window], fn: Callable[[Window], Awaitable[T]], limit: int):
        gate = asyncio.Semaphore(limit)

        async def gated(w: Window) -> T:
            async with gate:
                return await fn(w)

        self.tasks = [asyncio.ensure_future(gated(w)) for w in windows]
        self.next = 0

    def __aiter__(self) -> _InOrder[T]:
        return self

    async def __anext__(self) -> T:
        if self.next >= len(self.tasks):
            raise StopAsyncIteration
        task = self.tasks[self.next]
        self.next += 1
        return await task

    def cancel(self) -> None:
        for task in self.tasks:
            if not task.done():
                task.cancel()
            # Nobody awaits a window left behind: retrieve its error so none is logged.
            task.add_done_callback(_quiet)


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _StreamedSpeakers:
    """Diarization windows of a streamed request, linked as they finish (`SessionSpeakers`)."""

    def __init__(self, pipe: Pipeline, samples: np.ndarray, hints: SpeakerHints):
        self.windows = pipe._diar_windows(samples)
        self.runs = _InOrder(
            self.windows,
            lambda w: pipe._diarized_window(samples, w),
            pipe.settings.max_windows_in_flight,
        )
        # A speaker-count cap folds voices past it into the closest speaker; the
        # lower bounds need the whole file and are left to the offline clustering.
        _, most = hints.bounds
        cap = int(most) if math.isfinite(most) else 64
        self.session = SessionSpeakers(pipe.settings.link_threshold, max_speakers=cap)
        self.diars: list[Diarization] = []
        self.mappings: list[dict[int, int]] = []

    @property
    def heard_until(self) -> float:
        """Global time up to which the linked windows' cores reach."""
        return self.windows[len(self.diars) - 1].core_end_s if self.diars else 0.0

    async def attribute(self, segments: list[Segment], complete: bool) -> list[Segment]:
        """Settled segments with session speakers, once diarization has heard past them."""
        need = math.inf if complete else max(s.end for s in segments) + _SPEAKER_LOOKAHEAD_S
        while len(self.diars) < len(self.windows) and self.heard_until < need:
            diar, prints = await anext(self.runs)
            w = self.windows[len(self.diars)]
            self.mappings.append(self.session.link(diar, prints, offset_s=w.start_s))
            self.diars.append(diar)
        n = len(self.diars)
        diar = stitch(self.windows[:n], self.diars, self.mappings)
        words = tuple(w for s in segments for w in s.words)
        part = Transcript(" ".join(s.text for s in segments), words, tuple(segments), 0.0)
        return list(attribute(part, diar).segments)

    def cancel(self) -> None:
        self.runs.cancel()


# ---------------------------------------------------------------- pure steps


@dataclass(frozen=True)
class Naming:
    """Which global speakers got a known name, with what score; empty when none asked."""

    names: dict[int, tuple[str, float]] = field(default_factory=dict)
    report: dict[str, Any] | None = None

    def label(self, k: int) -> str:
        named = self.names.get(int(k))
        return named[0] if named else speaker_label(int(k))

    @property
    def scores(self) -> dict[str, float]:
        return {name: score for name, score in self.names.values()}


def main_voice(diar: Diarization, what: str) -> tuple[int, float]:
    """(speaker, speech seconds) of the clip's one main voice, or a 400 saying why not."""
    speech = speech_seconds(diar.turns)
    if not speech or max(speech.values()) <= 0:
        raise BadRequest(f"{what} has no speech the diarizer can hear")
    main = max(speech, key=lambda k: speech[k])
    frames = diar.probs.shape[0]
    active = np.zeros((max(frames, 1), diar.probs.shape[1] if diar.probs.ndim == 2 else 1), bool)
    for t in diar.turns:
        i0, i1 = frame_span(t.start, t.end, diar.frame_s, active.shape[0])
        active[i0:i1, int(t.speaker)] = True
    others = np.delete(active, int(main), axis=1).any(axis=1) & ~active[:, int(main)]
    alone_s = float(others.sum()) * diar.frame_s
    if alone_s > 0.2 * speech[main]:
        raise BadRequest(
            f"{what} holds more than one voice ({alone_s:.1f} s of another speaker alone "
            f"against {speech[main]:.1f} s of the main one); send a clip of one speaker"
        )
    return int(main), float(speech[main])


def attribute(
    transcript: Transcript, diar: Diarization, label: Callable[[int], str] = speaker_label
) -> Transcript:
    """A new transcript whose words and segments carry speakers and confidence."""
    turns = with_confidence(diar.turns, diar.probs, diar.frame_s)
    words = assign_word_speakers(transcript.words, diar.probs, diar.frame_s, turns, label)
    segments = split_segments_by_speaker(
        transcript.segments, words, diar.probs, diar.frame_s, label
    )
    return Transcript(
        text=transcript.text,
        words=tuple(words),
        segments=tuple(segments),
        duration=transcript.duration,
    )


def labelled_turns(
    diar: Diarization, label: Callable[[int], str] = speaker_label
) -> tuple[Turn, ...]:
    """Turns with their confidence and labels (`Speaker_<k>`, or a known name)."""
    return tuple(
        Turn(t.start, t.end, label(int(t.speaker)), t.confidence)
        for t in with_confidence(diar.turns, diar.probs, diar.frame_s)
    )


def _hints(opts: SpeakerCountHints) -> SpeakerHints:
    return SpeakerHints(opts.num_speakers, opts.min_speakers, opts.max_speakers)


def _pause_s(opts: TranscribeOptions) -> float | None:
    vad = opts.chunking_strategy
    return vad.silence_duration_ms / 1000 if isinstance(vad, ServerVadChunking) else None


def _check_keywords(opts: TranscribeOptions, asr: ModelInfo) -> None:
    if opts.keywords and not asr.capabilities.get("keywords"):
        raise BadRequest(
            f"this ASR model cannot take keywords ({asr.model} has no phrase boosting); "
            "leave keywords[] out or deploy an RNNT/TDT model (e.g. Parakeet TDT)"
        )


def _asr_prompt(
    language: str | None, asr: ModelInfo, task: Literal["transcribe", "translate"]
) -> dict[str, Any]:
    """The ASR call's `language` and `task` for a multitask (Canary) model; {} for others.

    Canary is told the spoken language (it does not detect it), so it is required;
    a model that cannot translate answers a translation with a 400 naming it.
    """
    if task == "translate" and not asr.capabilities.get("translate"):
        raise BadRequest(
            f"the ASR model {asr.model!r} cannot translate; use /v1/audio/transcriptions "
            "or deploy a model that supports translation (e.g. nvidia/canary-1b-v2)"
        )
    if not asr.capabilities.get("language_required"):
        return {}
    supported = ", ".join(asr.languages)
    if not language:
        raise BadRequest(
            f"language is required: {asr.model} must be told the spoken language "
            f"(ISO 639-1), one of: {supported}"
        )
    if asr.languages and language not in asr.languages:
        raise BadRequest(
            f"language {language!r} is not supported by {asr.model}; supported: {supported}"
        )
    prompt: dict[str, Any] = {"language": language}
    if task != "transcribe":
        prompt["task"] = task
    return prompt


def _check_language(language: str | None, model: str) -> None:
    supported = MODEL_LANGUAGES.get(model)
    if language and supported is not None and language not in supported:
        raise BadRequest(
            f"language {language!r} is not supported by {model}; "
            f"supported: {', '.join(sorted(supported))}"
        )
