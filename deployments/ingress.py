"""Ingress: HTTP routes and handle methods; decode, fan out, attach confidence, respond.

Routes only parse their form and delegate to the typed methods `transcribe`,
`diarize` and `diarize_chunk`, which Python callers reach through
`serve.get_app_handle("voxgraph")` with the same results as HTTP.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.http_guards import (
    BodyLimitMiddleware,
    GuardMiddleware,
    error_response,
    http_error_response,
    route_path,
)
from deployments.metrics import ingress_metrics
from voxgraph import __version__
from voxgraph.attribution import (
    assign_word_speakers,
    merge_window_transcripts,
    split_segments_by_speaker,
)
from voxgraph.audio import decode_audio
from voxgraph.budget import AudioBudget
from voxgraph.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, VoxgraphError
from voxgraph.formats import TEXT_MEDIA_TYPES, DiarizationOutput, TranscriptionOutput
from voxgraph.linking import SpeakerHints, link_speakers, stitch
from voxgraph.schemas import (
    MODEL_LANGUAGES,
    DiarizeChunkResponse,
    DiarizeOptions,
    DiarizeResponse,
    ErrorResponse,
    SpeakerCountHints,
    TranscribeOptions,
    TranscriptionResponse,
    parse_options,
)
from voxgraph.settings import Settings
from voxgraph.turns import l2_normalise, speaker_clips, speaker_label, with_confidence
from voxgraph.types import SAMPLE_RATE, Diarization, ModelInfo, Transcript, Turn
from voxgraph.windows import Window, plan_windows, window_samples

logger = logging.getLogger("ray.serve")
T = TypeVar("T")

ROLES = ("asr", "diarizer", "embedder")
ERRORS = {
    400: {"model": ErrorResponse, "description": "bad input or options"},
    413: {"model": ErrorResponse, "description": "upload or audio over the limit"},
    415: {"model": ErrorResponse, "description": "no audio stream"},
    503: {"model": ErrorResponse, "description": "a model is loading or the service is overloaded"},
}

api = FastAPI(
    title="voxgraph",
    version=__version__,
    description="Speech recognition, speaker diarization and voice fingerprints on Ray Serve.",
)
# Order matters: the body limit must see the bytes before anything buffers them.
api.add_middleware(GuardMiddleware)
api.add_middleware(BodyLimitMiddleware)


@api.exception_handler(VoxgraphError)
async def _voxgraph_error(_: Request, e: VoxgraphError) -> JSONResponse:
    return error_response(e)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    problems = "; ".join(_problem(err) for err in e.errors())
    err = BadRequest(f"invalid request: {problems}")
    ingress_metrics().error(route_path(request.scope), err.code)
    return error_response(err)


def _problem(err: Any) -> str:
    field = ".".join(str(p) for p in err["loc"][1:]) or "body"
    if field == "file":
        # A text value where the upload belongs (base64, a data: URI, a path): say what to send.
        return (
            "file: must be an uploaded file (a multipart/form-data part with a filename); "
            "base64 text, data: URIs and paths are not accepted"
        )
    return f"{field}: {err['msg']}"


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    # Starlette's own refusals (malformed multipart, unknown path, wrong method) in the
    # same {"error": ...} shape as every other error, not FastAPI's bare {"detail": ...}.
    return http_error_response(e.status_code, str(e.detail), e.headers)


@api.exception_handler(Exception)
async def _unexpected(_: Request, e: Exception) -> JSONResponse:
    # A bug, not bad input: log it with its traceback, tell the client nothing internal.
    logger.error("unhandled %s in a request", type(e).__name__, exc_info=e)
    return http_error_response(500, "internal error")


def _render(result: dict[str, Any] | str, fmt: str) -> Response:
    if isinstance(result, str):
        return PlainTextResponse(result, media_type=TEXT_MEDIA_TYPES.get(fmt, "text/plain"))
    return JSONResponse(result)


async def _read_upload(file: UploadFile | None) -> tuple[bytes, str]:
    # FastAPI hands over starlette's UploadFile (its own class is a subclass).
    if not isinstance(file, StarletteUploadFile):
        raise BadRequest("no audio file: send it as the multipart form field 'file'")
    data = await file.read()
    if not data:
        raise BadRequest("the uploaded file is empty")
    # The name only labels RTTM lines; it never reaches a filesystem path.
    stem = PurePath(file.filename or "audio").stem or "audio"
    return data, stem


def _observed(route: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Count a typed operation's errors by kind, whether it came over HTTP or a handle."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def run(self: Any, *args: Any, **kwargs: Any) -> T:
            try:
                return await method(self, *args, **kwargs)
            except VoxgraphError as e:
                ingress_metrics().error(route, e.code)
                raise
            except Exception:
                ingress_metrics().error(route, "internal")
                raise

        return run

    return wrap


def _owner(model: str) -> str:
    """`nvidia` for `nvidia/...` hub names; `local` for .nemo files."""
    if model.endswith(".nemo") or model.startswith(("/", ".")):
        return "local"
    return model.split("/", 1)[0] if "/" in model else "voxgraph"


# Requests over max_queued_requests are refused by Serve's proxy before they reach
# a replica; the header tells clients when to come back, as our own 503s do.
@serve.deployment(name="Ingress", backpressure_config={"status_code": 503, "retry_after_s": 1})
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        asr: DeploymentHandle,
        diarizer: DeploymentHandle,
        embedder: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ):
        self._handles = {"asr": asr, "diarizer": diarizer, "embedder": embedder}
        self.settings = Settings.load(settings)
        api.state.settings = self.settings
        self._info: dict[str, tuple[float, ModelInfo]] = {}
        self._budget = AudioBudget(self.settings.max_inflight_audio_s)

    # ------------------------------------------------------------ typed operations

    @_observed("/v1/audio/transcriptions")
    async def transcribe(self, audio: bytes, **options: Any) -> dict[str, Any] | str:
        """Transcribe (and with diarize=True, attribute speakers); same result as HTTP."""
        opts: TranscribeOptions = parse_options(TranscribeOptions, options)
        hints = self._hints(opts)
        asr = await self._model_info("asr")
        self._check_language(opts.language, asr.model)
        samples = await self._decode(audio, "/v1/audio/transcriptions")
        with self._budget.hold(len(samples) / SAMPLE_RATE):
            if opts.diarize:
                transcript, diar = await asyncio.gather(
                    self._transcribe_samples(samples), self._diarize_global(samples, hints)
                )
                transcript = self._attribute(transcript, diar)
            else:
                transcript = await self._transcribe_samples(samples)
        out = TranscriptionOutput(
            transcript=transcript,
            model=asr.model,
            language=opts.language,
            granularities=tuple(opts.timestamp_granularities),
            temperature=opts.temperature,
            diarized=opts.diarize,
        )
        return out.render(opts.response_format)

    @_observed("/v1/audio/translations")
    async def translate(self, audio: bytes, **options: Any) -> dict[str, Any] | str:
        """Translation to English where the ASR model can; a clear 400 where it cannot."""
        parse_options(TranscribeOptions, options)
        asr = await self._model_info("asr")
        if not asr.capabilities.get("translate"):
            raise BadRequest(
                f"the ASR model {asr.model!r} cannot translate; use /v1/audio/transcriptions "
                "or deploy a model that supports translation"
            )
        raise BadRequest(f"translation with {asr.model!r} is not supported by this service")

    @_observed("/v1/audio/diarize")
    async def diarize(self, audio: bytes, **options: Any) -> dict[str, Any] | str:
        """Who spoke when, with speakers consistent across the whole recording."""
        file_id = str(options.pop("file_id", "audio"))
        opts: DiarizeOptions = parse_options(DiarizeOptions, options)
        hints = self._hints(opts)
        samples = await self._decode(audio, "/v1/audio/diarize")
        with self._budget.hold(len(samples) / SAMPLE_RATE):
            diar = await self._diarize_global(samples, hints)
        info = await self._model_info("diarizer")
        out = DiarizationOutput(
            turns=tuple(self._labelled(with_confidence(diar.turns, diar.probs, diar.frame_s))),
            duration=len(samples) / SAMPLE_RATE,
            model=info.model,
            device=info.device,
        )
        return out.render(opts.response_format, file_id)

    @_observed("/v1/audio/diarize-chunk")
    async def diarize_chunk(self, audio: bytes, **options: Any) -> dict[str, Any]:
        """Chunk-local speakers with confidence and one 192-dim fingerprint per speaker."""
        if options:
            raise BadRequest(f"diarize-chunk takes no options, got {sorted(options)}")
        samples = await self._decode(audio, "/v1/audio/diarize-chunk")
        with self._budget.hold(len(samples) / SAMPLE_RATE):
            diar = await self._call(self._handles["diarizer"].diarize.remote(samples))
            clips = speaker_clips(samples, diar.turns, self.settings.min_fingerprint_speech_s)
            speakers = sorted(clips)
            embs = await self._embed([clips[s] for s in speakers])
        dinfo, einfo = await asyncio.gather(
            self._model_info("diarizer"), self._model_info("embedder")
        )
        out = DiarizationOutput(
            turns=tuple(self._labelled(with_confidence(diar.turns, diar.probs, diar.frame_s))),
            duration=len(samples) / SAMPLE_RATE,
            model=dinfo.model,
            device=dinfo.device,
            fingerprints={
                speaker_label(int(s)): [round(float(x), 6) for x in l2_normalise(e)]
                for s, e in zip(speakers, embs, strict=True)
            },
            models={"diarization": dinfo.model, "embedding": einfo.model},
        )
        return out.render("json")  # type: ignore[return-value]

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, per-deployment state): ready when every model is loaded."""
        infos = await asyncio.gather(
            *(self._status(role, timeout_s=3.0) for role in ROLES), return_exceptions=True
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
        infos = await asyncio.gather(*(self._model_info(r) for r in ROLES), return_exceptions=True)
        models: dict[str, Any] = {}
        for role, info in zip(ROLES, infos, strict=True):
            models[role] = (
                {"state": "unavailable"}
                if isinstance(info, BaseException)
                else {"model": info.model, "device": info.device, "state": info.state}
            )
        return {
            "service": "voxgraph",
            "version": __version__,
            "models": models,
            "routes": routes or [],
            "limits": {
                "max_upload_mb": self.settings.max_upload_mb,
                "max_audio_s": self.settings.max_audio_s,
            },
        }

    # ------------------------------------------------------------ the pipeline

    async def _decode(self, audio: bytes, route: str) -> np.ndarray:
        if not isinstance(audio, bytes | bytearray | memoryview):
            raise BadRequest("audio must be the file's bytes")
        if not audio:
            raise BadRequest("the uploaded file is empty")
        if len(audio) > self.settings.max_upload_mb * 1024 * 1024:
            raise PayloadTooLarge(f"upload is over the {self.settings.max_upload_mb:g} MB limit")
        # Decoding is CPU work (FFmpeg, resampling): keep the event loop free.
        samples = await asyncio.to_thread(
            decode_audio, bytes(audio), max_duration_s=self.settings.max_audio_s
        )
        ingress_metrics().audio_received(route, len(samples) / SAMPLE_RATE)
        return samples

    async def _transcribe_samples(self, samples: np.ndarray) -> Transcript:
        s = self.settings
        windows = plan_windows(len(samples) / SAMPLE_RATE, s.asr_window_s, s.asr_overlap_s)

        async def one(w: Window) -> Transcript:
            return await self._call(
                self._handles["asr"].transcribe.remote(window_samples(samples, w))
            )

        parts = await self._bounded(one, windows)
        return merge_window_transcripts(windows, parts)

    async def _diarize_global(self, samples: np.ndarray, hints: SpeakerHints) -> Diarization:
        """Windows diarized and fingerprinted, speakers linked, stitched in global time."""
        s = self.settings
        windows = plan_windows(len(samples) / SAMPLE_RATE, s.diar_window_s, s.diar_overlap_s)

        async def one(w: Window) -> tuple[Diarization, dict[int, np.ndarray]]:
            clip = window_samples(samples, w)
            diar = await self._call(self._handles["diarizer"].diarize.remote(clip))
            clips = speaker_clips(clip, diar.turns, s.min_fingerprint_speech_s)
            speakers = sorted(clips)
            embs = await self._embed([clips[k] for k in speakers])
            return diar, {int(k): l2_normalise(e) for k, e in zip(speakers, embs, strict=True)}

        results = await self._bounded(one, windows)
        diars = [d for d, _ in results]
        prints = [p for _, p in results]
        mappings = link_speakers(windows, diars, prints, hints, threshold=s.link_threshold)
        return stitch(windows, diars, mappings)

    async def _bounded(
        self, fn: Callable[[Window], Awaitable[T]], windows: list[Window]
    ) -> list[T]:
        """Run `fn` over windows, at most `max_windows_in_flight` at once, in order.

        Only windows in flight sit in the object store, so a long recording
        needs its decoded samples plus a few windows, not a second copy of itself.
        """
        gate = asyncio.Semaphore(self.settings.max_windows_in_flight)

        async def gated(w: Window) -> T:
            async with gate:
                return await fn(w)

        return list(await asyncio.gather(*(gated(w) for w in windows)))

    async def _embed(self, clips: list[np.ndarray]) -> np.ndarray:
        if not clips:
            return np.zeros((0, 192), dtype=np.float32)
        return await self._call(self._handles["embedder"].embed.remote(clips))

    @staticmethod
    def _attribute(transcript: Transcript, diar: Diarization) -> Transcript:
        turns = with_confidence(diar.turns, diar.probs, diar.frame_s)
        words = assign_word_speakers(transcript.words, diar.probs, diar.frame_s, turns)
        segments = split_segments_by_speaker(transcript.segments, words, diar.probs, diar.frame_s)
        return Transcript(
            text=transcript.text,
            words=tuple(words),
            segments=tuple(segments),
            duration=transcript.duration,
        )

    @staticmethod
    def _labelled(turns: list[Turn]) -> list[Turn]:
        return [Turn(t.start, t.end, speaker_label(int(t.speaker)), t.confidence) for t in turns]

    @staticmethod
    def _hints(opts: SpeakerCountHints) -> SpeakerHints:
        return SpeakerHints(opts.num_speakers, opts.min_speakers, opts.max_speakers)

    @staticmethod
    def _check_language(language: str | None, model: str) -> None:
        supported = MODEL_LANGUAGES.get(model)
        if language and supported is not None and language not in supported:
            raise BadRequest(
                f"language {language!r} is not supported by {model}; "
                f"supported: {', '.join(sorted(supported))}"
            )

    # ------------------------------------------------------------ handle plumbing

    async def _call(self, response: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await a model deployment with a timeout; infrastructure failures become 503."""
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
            RequestCancelledError,
        )

        try:
            return await asyncio.wait_for(response, timeout_s or self.settings.request_timeout_s)
        except TimeoutError as e:
            raise ServiceUnavailable("a model took too long to answer; retry later", 5) from e
        except BackPressureError as e:
            raise ServiceUnavailable(f"the service is overloaded ({e}); retry shortly", 1) from e
        except (
            RayActorError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
            RequestCancelledError,
        ) as e:
            raise ServiceUnavailable(
                f"a model replica is unavailable ({type(e).__name__})", 5
            ) from e
        except RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, VoxgraphError):
                raise cause from None
            raise

    async def _status(self, role: str, timeout_s: float) -> ModelInfo:
        info: ModelInfo = await self._call(self._handles[role].status.remote(), timeout_s)
        self._info[role] = (time.monotonic(), info)
        return info

    async def _model_info(self, role: str) -> ModelInfo:
        cached = self._info.get(role)
        # A ready model's name and device change only on reconfigure: refresh now and then.
        if cached and cached[1].state == "ready" and time.monotonic() - cached[0] < 30:
            return cached[1]
        return await self._status(role, timeout_s=10.0)

    # ------------------------------------------------------------ HTTP routes

    @api.get("/health", summary="Readiness of every deployment")
    async def http_health(self) -> JSONResponse:
        ready, body = await self.health()
        if ready:
            return JSONResponse(body)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @api.get("/", summary="Service name, models, device, routes")
    async def http_root(self, request: Request) -> JSONResponse:
        # Serve re-mounts class routes on its own router; the OpenAPI view lists them all.
        paths = request.app.openapi().get("paths", {})
        routes = sorted(f"{m.upper()} {p}" for p, ops in paths.items() for m in ops)
        return JSONResponse(await self.describe(routes))

    @api.get("/v1/models", summary="OpenAI-style model list")
    async def http_models(self) -> JSONResponse:
        infos = await asyncio.gather(*(self._model_info(r) for r in ROLES))
        data = [
            {
                "id": info.model,
                "object": "model",
                "owned_by": _owner(info.model),
                "created": 0,
                "role": info.role,
            }
            for info in infos
        ]
        return JSONResponse({"object": "list", "data": data})

    @api.post(
        "/v1/audio/transcriptions",
        summary="OpenAI-compatible transcription (optionally with speakers)",
        response_model=TranscriptionResponse,
        responses=ERRORS,
    )
    async def http_transcriptions(
        self,
        file: UploadFile | None = File(None, description="Audio or video file"),
        model: str | None = Form(None),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
        diarize: bool = Form(False),
        num_speakers: int | None = Form(None),
        min_speakers: int | None = Form(None),
        max_speakers: int | None = Form(None),
    ) -> Response:
        data, _ = await _read_upload(file)
        result = await self.transcribe(
            data,
            model=model,
            language=language,
            prompt=prompt,
            response_format=response_format,
            temperature=temperature,
            timestamp_granularities=timestamp_granularities,
            diarize=diarize,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        return _render(result, response_format)

    @api.post(
        "/v1/audio/translations",
        summary="OpenAI-compatible translation (400 where the model cannot translate)",
        response_model=TranscriptionResponse,
        responses=ERRORS,
    )
    async def http_translations(
        self,
        file: UploadFile | None = File(None),
        model: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
    ) -> Response:
        data, _ = await _read_upload(file)
        result = await self.translate(
            data,
            model=model,
            prompt=prompt,
            response_format=response_format,
            temperature=temperature,
        )
        return _render(result, response_format)

    @api.post(
        "/v1/audio/diarize",
        summary="Who spoke when, consistent across the whole file",
        response_model=DiarizeResponse,
        responses=ERRORS,
    )
    async def http_diarize(
        self,
        file: UploadFile | None = File(None),
        response_format: str = Form("json"),
        num_speakers: int | None = Form(None),
        min_speakers: int | None = Form(None),
        max_speakers: int | None = Form(None),
    ) -> Response:
        data, stem = await _read_upload(file)
        result = await self.diarize(
            data,
            file_id=stem,
            response_format=response_format,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        return _render(result, response_format)

    @api.post(
        "/v1/audio/diarize-chunk",
        summary="Chunk-local speakers with voice fingerprints",
        response_model=DiarizeChunkResponse,
        responses=ERRORS,
    )
    async def http_diarize_chunk(self, file: UploadFile | None = File(None)) -> Response:
        data, _ = await _read_upload(file)
        return JSONResponse(await self.diarize_chunk(data))
