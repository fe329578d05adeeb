"""voxgraph's operations, whatever carries them: validate options, run the walk, render.

`VoxgraphService` is what the HTTP routes (deployments/http_app.py) and the
Python handle call. The Ingress deployment is this class over Ray Serve handles;
the seed-style baseline (bench/monolith.py) is the same class over in-process
runners. No Ray import here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from voxgraph import __version__
from voxgraph.errors import BadRequest, VoxgraphError
from voxgraph.json_body import parse_json_body
from voxgraph.live import SessionRegistry
from voxgraph.pipeline import ROLES, Backends, Pipeline, Upload
from voxgraph.schemas import (
    DiarizeChunkOptions,
    DiarizeOptions,
    TranscribeOptions,
    TranscriptTextDone,
    TranslateOptions,
    parse_options,
)
from voxgraph.settings import Settings
from voxgraph.speakers import SpeakerLibrary
from voxgraph.store import Speaker

R = TypeVar("R")


class Observer(Protocol):
    """Where counts go (Serve metrics in the ingress); must never raise."""

    def audio_received(self, route: str, seconds: float) -> None: ...

    def error(self, route: str, kind: str) -> None: ...


class _Silent:
    def audio_received(self, route: str, seconds: float) -> None:
        pass

    def error(self, route: str, kind: str) -> None:
        pass


def observed(route: str) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Count an operation's errors by kind, whether it came over HTTP or a handle."""

    def wrap(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(method)
        async def run(self: VoxgraphService, *args: Any, **kwargs: Any) -> R:
            try:
                return await method(self, *args, **kwargs)
            except VoxgraphError as e:
                self.observer.error(route, e.code)
                raise
            except Exception:
                self.observer.error(route, "internal")
                raise

        return run

    return wrap


MAX_ENROL_CLIPS = 16


def speaker_json(s: Speaker) -> dict[str, Any]:
    return {
        "id": s.id,
        "object": "speaker",
        "name": s.name,
        "created_at": int(s.created_at),
        "updated_at": int(s.updated_at),
        "voiceprints": [
            {
                "model": v.model,
                "clips": v.clip_count,
                "speech_seconds": round(v.speech_seconds, 2),
                "consistency": round(v.cosine_mean, 4),
            }
            for v in s.voiceprints
        ],
    }


def owner(model: str) -> str:
    """`nvidia` for `nvidia/...` hub names; `local` for .nemo files."""
    if model.endswith(".nemo") or model.startswith(("/", ".")):
        return "local"
    return model.split("/", 1)[0] if "/" in model else "voxgraph"


class VoxgraphService:
    """The typed operations; each returns what HTTP sends (a dict or text)."""

    name = "voxgraph"

    def __init__(
        self,
        backends: Backends,
        settings: Settings,
        observer: Observer | None = None,
        library: SpeakerLibrary | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        db = settings.speakers_db.get_secret_value() if settings.speakers_db else None
        self.library = library or SpeakerLibrary(db)
        self.pipeline = Pipeline(backends, settings, self.library)
        self.live = SessionRegistry(settings)
        self.observer: Observer = observer or _Silent()

    @observed("/v1/audio/transcriptions")
    async def transcribe(self, audio: bytes | Upload, **options: Any) -> dict[str, Any] | str:
        """Transcribe (and with diarize=True, attribute speakers)."""
        opts = parse_options(TranscribeOptions, options)
        if opts.stream:
            raise BadRequest(
                "stream=true is served by transcribe_stream: "
                "handle.options(stream=True).transcribe_stream.remote(audio, **options)"
            )
        out = await self.pipeline.transcribe(audio, opts)
        self.observer.audio_received("/v1/audio/transcriptions", out.transcript.duration)
        return out.render(opts.response_format)

    async def transcribe_stream(
        self, audio: bytes | Upload, **options: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """`transcribe` with stream=true: OpenAI's stream events as dicts, as windows finish.

        `transcript.text.delta` (and with diarized_json `transcript.text.segment`)
        events, then `transcript.text.done`. A failure raises the same typed error as
        `transcribe`, whether before the first event or after; HTTP turns one after
        the first event into an `error` event. Python callers:
        `handle.options(stream=True).transcribe_stream.remote(audio, **options)`.
        """
        route = "/v1/audio/transcriptions"
        try:
            opts = parse_options(TranscribeOptions, {**options, "stream": True})
            # Closed with this generator (a client gone): the walk releases its budget now.
            async with contextlib.aclosing(self.pipeline.transcribe_events(audio, opts)) as events:
                async for event in events:
                    if isinstance(event, TranscriptTextDone):
                        self.observer.audio_received(route, event.usage.seconds)
                    yield event.model_dump(mode="json", exclude_none=True)
        except VoxgraphError as e:
            self.observer.error(route, e.code)
            raise
        except Exception:
            self.observer.error(route, "internal")
            raise

    @observed("/v1/audio/translations")
    async def translate(self, audio: bytes | Upload, **options: Any) -> dict[str, Any] | str:
        """Translation to English where the ASR model can; a clear 400 where it cannot.

        A multitask ASR model (Canary) translates from the spoken `language` (required:
        Canary is told it); every response format, and diarize=true puts speakers on
        the translated segments and words, as on transcriptions.
        """
        opts = parse_options(TranslateOptions, options)
        asr = await self.backends.info("asr")
        if not asr.capabilities.get("translate"):
            raise BadRequest(
                f"the ASR model {asr.model!r} cannot translate; use /v1/audio/transcriptions "
                "or deploy a model that supports translation (e.g. nvidia/canary-1b-v2)"
            )
        out = await self.pipeline.transcribe(audio, opts.transcribe_options(), task="translate")
        self.observer.audio_received("/v1/audio/translations", out.transcript.duration)
        return out.render(opts.response_format)

    @observed("/v1/audio/diarize")
    async def diarize(
        self, audio: bytes | Upload, file_id: str = "audio", **options: Any
    ) -> dict[str, Any] | str:
        """Who spoke when, with speakers consistent across the whole recording."""
        opts = parse_options(DiarizeOptions, options)
        out = await self.pipeline.diarize(audio, opts)
        self.observer.audio_received("/v1/audio/diarize", out.duration)
        return out.render(opts.response_format, str(file_id))

    async def infer(
        self, body: Mapping[str, Any] | str | bytes, route: str = "transcriptions"
    ) -> dict[str, Any] | str:
        """The HTTP routes' JSON body as a handle call: `{"inputs", "parameters"}`.

        `handle.infer.remote({"inputs": b64, "parameters": {...}}, route="diarize")`
        is `diarize(audio, **parameters)` (route `transcriptions` or `diarize`), with
        the same checks and limits as the JSON body over HTTP. Callers holding the
        bytes need none of this: `transcribe(audio, **options)` takes them directly.
        """
        model: type[TranscribeOptions | DiarizeOptions]
        if route == "transcriptions":
            model, operation = TranscribeOptions, self.transcribe
        elif route == "diarize":
            model, operation = DiarizeOptions, self.diarize
        else:
            raise BadRequest(f"route must be 'transcriptions' or 'diarize', not {route!r}")
        max_bytes = int(self.settings.max_upload_mb * 1024 * 1024)
        try:
            audio, options = parse_json_body(body, model, max_bytes=max_bytes)
        except VoxgraphError as e:
            self.observer.error(f"/v1/audio/{route}", e.code)
            raise
        return await operation(audio, **options)

    @observed("/v1/audio/diarize-chunk")
    async def diarize_chunk(self, audio: bytes | Upload, **options: Any) -> dict[str, Any]:
        """Chunk-local speakers with confidence and one fingerprint per speaker."""
        opts = parse_options(DiarizeChunkOptions, options)
        out = await self.pipeline.diarize_chunk(audio, opts)
        self.observer.audio_received("/v1/audio/diarize-chunk", out.duration)
        return out.render("json")  # type: ignore[return-value]

    # ------------------------------------------------------------ the speaker library

    @observed("/v1/speakers")
    async def enrol_speaker(self, name: str, clips: Sequence[bytes]) -> dict[str, Any]:
        """Enrol a named voice from one or more clips of that person alone."""
        model, prints, speech = await self._voiceprints(clips)
        return speaker_json(await self.library.enrol(name, model, prints, speech))

    @observed("/v1/speakers")
    async def add_speaker_samples(self, speaker_id: str, clips: Sequence[bytes]) -> dict[str, Any]:
        """Add clips to an enrolled speaker's voiceprint."""
        await self.library.get(speaker_id)  # 404 before any model work
        model, prints, speech = await self._voiceprints(clips)
        return speaker_json(await self.library.add_samples(speaker_id, model, prints, speech))

    @observed("/v1/speakers")
    async def list_speakers(self) -> dict[str, Any]:
        """Every enrolled speaker (names and voiceprint summaries, never vectors)."""
        return {"object": "list", "data": [speaker_json(s) for s in await self.library.list()]}

    @observed("/v1/speakers")
    async def get_speaker(self, speaker_id: str) -> dict[str, Any]:
        return speaker_json(await self.library.get(speaker_id))

    @observed("/v1/speakers")
    async def delete_speaker(self, speaker_id: str) -> dict[str, Any]:
        """Erase a speaker and its voiceprints."""
        await self.library.delete(speaker_id)
        return {"id": speaker_id, "object": "speaker.deleted", "deleted": True}

    async def _voiceprints(
        self, clips: Sequence[bytes]
    ) -> tuple[str, list[np.ndarray], list[float]]:
        if not clips:
            raise BadRequest("send at least one clip of the speaker in the field 'file'")
        if len(clips) > MAX_ENROL_CLIPS:
            raise BadRequest(f"send at most {MAX_ENROL_CLIPS} clips at once")
        model = (await self.backends.info("embedder")).model
        prints, speech = [], []
        for i, clip in enumerate(clips):
            vector, seconds = await self.pipeline.voiceprint(clip, f"clip {i + 1}")
            prints.append(vector)
            speech.append(seconds)
        return model, prints, speech

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, per-deployment state): ready when every model is loaded."""
        infos = await asyncio.gather(
            *(self.backends.info(role, fresh=True) for role in ROLES), return_exceptions=True
        )
        report: dict[str, Any] = {}
        for role, info in zip(ROLES, infos, strict=True):
            if isinstance(info, BaseException):
                report[role] = {"state": "unavailable", "error": str(info) or type(info).__name__}
            else:
                report[role] = {"state": info.state, "model": info.model, "device": info.device}
                if info.error:
                    report[role]["error"] = info.error
        ready = all(r["state"] == "ready" for r in report.values())
        return ready, {"status": "ready" if ready else "loading", "deployments": report}

    async def describe(self, routes: list[str] | None = None) -> dict[str, Any]:
        """Service name, models, devices and (from HTTP) routes."""
        infos = await asyncio.gather(
            *(self.backends.info(r) for r in ROLES), return_exceptions=True
        )
        models = {
            role: {"state": "unavailable"}
            if isinstance(info, BaseException)
            else {"model": info.model, "device": info.device, "state": info.state}
            for role, info in zip(ROLES, infos, strict=True)
        }
        return {
            "service": self.name,
            "version": __version__,
            "models": models,
            "routes": routes or [],
            "limits": {
                "max_upload_mb": self.settings.max_upload_mb,
                "max_audio_s": self.settings.max_audio_s,
            },
            "realtime": {
                "sessions": len(self.live.sessions),
                "max_sessions": self.settings.realtime_max_sessions,
            },
        }

    async def model_list(self) -> dict[str, Any]:
        """OpenAI-style model list of the deployed models."""
        infos = await asyncio.gather(*(self.backends.info(r) for r in ROLES))
        data = [
            {
                "id": info.model,
                "object": "model",
                "owned_by": owner(info.model),
                "created": 0,
                "role": info.role,
            }
            for info in infos
        ]
        return {"object": "list", "data": data}
