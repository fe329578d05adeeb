"""voxgraph's HTTP surface: the FastAPI app, its routes, error mapping, upload forms.

Routes only parse and delegate to the `VoxgraphService` in `app.state.service`,
then render. No Ray import: the Ingress deployment builds this app in its replica
(`build_api(self)`), and the seed-style baseline (bench/monolith.py) serves the
same app over in-process models.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from deployments.http_guards import (
    BodyLimitMiddleware,
    ErrorCountMiddleware,
    GuardMiddleware,
    UploadDeadlineMiddleware,
    error_response,
    http_error_response,
    route_path,
)
from deployments.metrics import ingress_metrics
from deployments.realtime_app import router as realtime_router
from voxgraph import __version__
from voxgraph.errors import BadRequest, VoxgraphError
from voxgraph.formats import TEXT_MEDIA_TYPES
from voxgraph.json_body import SHAPE, is_json, parse_json_body
from voxgraph.schemas import (
    DiarizeChunkOptions,
    DiarizeChunkResponse,
    DiarizeOptions,
    DiarizeResponse,
    ErrorBody,
    ErrorResponse,
    Options,
    StreamError,
    TranscribeOptions,
    TranscriptionResponse,
    TranslateOptions,
    VerboseTranscriptionResponse,
    validation_problems,
)
from voxgraph.service import VoxgraphService

logger = logging.getLogger("ray.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "bad input or options"},
    413: {"model": ErrorResponse, "description": "upload or audio over the limit"},
    404: {"model": ErrorResponse, "description": "no such speaker"},
    409: {"model": ErrorResponse, "description": "a speaker with that name is enrolled"},
    415: {"model": ErrorResponse, "description": "no audio stream"},
    503: {"model": ErrorResponse, "description": "a model is loading or the service is overloaded"},
}

router = APIRouter()


async def _voxgraph_error(_: Request, e: VoxgraphError) -> JSONResponse:
    return error_response(e)


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    json_too = route_path(request.scope) in JSON_ROUTES
    problems = [_file_problem(err, json_too) or err for err in e.errors()]
    err = BadRequest(f"invalid request: {validation_problems(problems, skip=1)}")
    ingress_metrics().error(route_path(request.scope), err.code)
    return error_response(err)


# The routes that also take the JSON body {"inputs": "<base64 audio>", "parameters": {...}}.
JSON_ROUTES = frozenset({"/v1/audio/transcriptions", "/v1/audio/diarize"})


def _file_problem(err: Any, json_too: bool = False) -> dict[str, Any] | None:
    if err.get("type") == "extra_forbidden" and isinstance(err.get("input"), StarletteUploadFile):
        # An upload under another name ('audio', 'upload'): the fix is the field name.
        msg = "is not a field of this route; send the audio as the multipart form field 'file'"
        return {"loc": err["loc"], "msg": msg}
    if tuple(err["loc"][1:]) != ("file",):
        return None
    # A text value where the upload belongs (base64, a data: URI, a path): say what to send.
    msg = "must be an uploaded file (a multipart/form-data part with a filename); " + (
        f"send base64 text or a data: URL as 'inputs' of an application/json body {SHAPE} "
        "instead (paths are never read)"
        if json_too
        else "base64 text, data: URIs and paths are not accepted"
    )
    return {"loc": err["loc"], "msg": msg}


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    # Starlette's own refusals (malformed multipart, unknown path, wrong method) in the
    # same {"error": ...} shape as every other error, not FastAPI's bare {"detail": ...}.
    ingress_metrics().error(route_path(request.scope), f"http_{e.status_code}")
    return http_error_response(e.status_code, str(e.detail), e.headers)


async def _unexpected(_: Request, e: Exception) -> JSONResponse:
    # A bug, not bad input: log it with its traceback, tell the client nothing internal.
    logger.error("unhandled %s in a request", type(e).__name__, exc_info=e)
    return http_error_response(500, "internal error")


def upload_form(options: type[Options]) -> type[BaseModel]:
    """The multipart form of an operation: its options model plus the `file` part."""
    return create_model(
        options.__name__.replace("Options", "Form"),
        __base__=options,
        file=(UploadFile | None, Field(None, description="Audio or video file")),
    )


TranscribeForm = upload_form(TranscribeOptions)
TranslateForm = upload_form(TranslateOptions)
DiarizeForm = upload_form(DiarizeOptions)
DiarizeChunkForm = upload_form(DiarizeChunkOptions)


class SpeakerForm(BaseModel):
    """Enrolment: a name and one or more clips of that person speaking alone."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1, max_length=64)
    """The speaker's name as transcripts will show it (letters, digits, space, . _ ' -)."""
    file: list[UploadFile] = Field(default_factory=list)
    """Clips of the speaker (repeat the field for several; each decoded like an upload)."""


class SamplesForm(BaseModel):
    """More clips for an enrolled speaker."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    file: list[UploadFile] = Field(default_factory=list)
    """Clips of the speaker (repeat the field for several)."""


async def read_clips(files: list[UploadFile]) -> list[bytes]:
    clips = [await f.read() for f in files if isinstance(f, StarletteUploadFile)]
    if not clips:
        raise BadRequest("no audio clip: send each clip as a multipart form field 'file'")
    if not all(clips):
        raise BadRequest("an uploaded clip is empty")
    return clips


async def read_upload(
    form: BaseModel, *, json_too: bool = False
) -> tuple[StarletteUploadFile, str, dict[str, Any]]:
    """(the upload, file stem, options as sent) from a parsed upload form.

    The upload stays on starlette's spool: the walk reads its head, reserves the
    in-flight audio budget, and only then reads the whole file into memory.
    """
    file = getattr(form, "file", None)
    # FastAPI hands over starlette's UploadFile (its own class is a subclass).
    if not isinstance(file, StarletteUploadFile):
        also = f", or as base64 in an application/json body {SHAPE}" if json_too else ""
        raise BadRequest(
            f"no audio file: send it as the multipart form field 'file' (multipart/form-data){also}"
        )
    if file.size == 0:
        raise BadRequest("the uploaded file is empty")
    # The name only labels RTTM lines; it never reaches a filesystem path.
    stem = PurePath(file.filename or "audio").stem or "audio"
    return file, stem, form.model_dump(exclude={"file"}, exclude_unset=True)


async def read_audio_request(
    request: Request, form: BaseModel, options: type[Options]
) -> tuple[bytes | StarletteUploadFile, str, dict[str, Any]]:
    """(audio, file stem, options as sent): the multipart form, or a JSON body by Content-Type.

    A JSON body (`{"inputs": "<base64 audio>", "parameters": {...}}`) is read whole
    (BodyLimitMiddleware caps it at 4/3 of MAX_UPLOAD_MB while it streams in), then
    parsed and decoded off the event loop; the parser clears the buffer as it goes.
    """
    if not is_json(request.headers.get("content-type")):
        return await read_upload(form, json_too=True)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    max_bytes = int(_service(request).settings.max_upload_mb * 1024 * 1024)
    parse = functools.partial(parse_json_body, body, options, max_bytes=max_bytes)
    data, opts = await anyio.to_thread.run_sync(parse)
    return data, "audio", opts


MULTIPART = "multipart/form-data"  # what OpenAPI shows for a form (FastAPI says urlencoded)


def json_request_body(options: type[Options]) -> dict[str, Any]:
    """`openapi_extra` showing the JSON request body beside the multipart form."""
    parameters = options.model_json_schema(ref_template="#/components/schemas/{model}")
    parameters.pop("$defs", None)  # the form's schema puts them in components
    parameters["description"] = "The multipart form's fields, by the same names."
    inputs = {
        "type": "string",
        "description": "The audio file as base64, or a data: URL (data:audio/wav;base64,...).",
    }
    schema = {
        "type": "object",
        "title": f"{options.__name__.replace('Options', '')}JsonBody",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {"inputs": inputs, "parameters": parameters},
    }
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}


def render(result: dict[str, Any] | str, fmt: str) -> Response:
    if isinstance(result, str):
        return PlainTextResponse(result, media_type=TEXT_MEDIA_TYPES.get(fmt, "text/plain"))
    return JSONResponse(result)


def sse(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event: `data: {json}` and a blank line."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


async def event_stream(events: AsyncIterator[dict[str, Any]], route: str) -> Response:
    """An SSE response over `events`, or the JSON error of a failure before the first one.

    The first event is awaited here, so bad options, an empty, undecodable or
    too long file answer with their usual 4xx. A failure after it ends the stream
    with an `error` event (the status was already 200); a client that goes away
    closes `events`, which releases what the request holds.
    """
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise

    async def frames() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield sse(first)
            async for event in events:
                yield sse(event)
        except Exception as e:
            if not isinstance(e, VoxgraphError):
                logger.error("unhandled %s in a stream", type(e).__name__, exc_info=e)
            error = stream_error(e)
            # Answered 200 already, so the HTTP layer's error count would not see it.
            ingress_metrics().count_error(route, error["error"]["code"])
            yield sse(error)
        finally:
            await events.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStreamResponse(frames(), media_type="text/event-stream", headers=headers)


class EventStreamResponse(StreamingResponse):
    """A stream that stops as soon as the client goes away, and always closes its events.

    Starlette on an ASGI 2.4 server notices a disconnect only at the next send,
    which for a long window may be minutes away; here the disconnect is watched
    for the whole stream, and the event generator is closed (releasing the
    request's audio budget) however the response ends.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def stream_error(e: Exception) -> dict[str, Any]:
    """The `error` event of a failed stream, with the body a JSON error would carry."""
    if isinstance(e, VoxgraphError):
        kind = "server_error" if e.status >= 500 else "invalid_request_error"
        error = ErrorBody(message=e.message, type=kind, code=e.code)
    else:
        error = ErrorBody(message="internal error", type="server_error", code="internal")
    return StreamError(type="error", error=error).model_dump(mode="json")


def _service(request: Request) -> VoxgraphService:
    return request.app.state.service


def build_api(service: VoxgraphService | None) -> FastAPI:
    """The app over `service`: its routes, guards and error mapping.

    Built where the service lives (in the Ingress replica, after its constructor;
    in the baseline's process), so routes and guards reach that very object.
    """
    api = FastAPI(
        title="voxgraph",
        version=__version__,
        description="Speech recognition, speaker diarization and voice fingerprints on Ray Serve.",
    )
    api.state.service = service
    api.state.settings = service.settings if service is not None else None
    # The last added runs first: errors are counted around everything, a stalled or
    # trickling body is cut before the limit counts it, and the limit sees the bytes
    # before anything buffers them.
    api.add_middleware(GuardMiddleware)
    api.add_middleware(BodyLimitMiddleware)
    api.add_middleware(UploadDeadlineMiddleware)
    api.add_middleware(ErrorCountMiddleware)
    api.add_exception_handler(VoxgraphError, _voxgraph_error)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    api.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    api.add_exception_handler(Exception, _unexpected)
    api.include_router(router)
    api.include_router(realtime_router)
    return api


# ------------------------------------------------------------ routes: parse, delegate, render


@router.get("/health", summary="Readiness of every deployment")
async def http_health(request: Request) -> JSONResponse:
    ready, body = await _service(request).health()
    if ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/", summary="Service name, models, device, routes")
async def http_root(request: Request) -> JSONResponse:
    paths = request.app.openapi().get("paths", {})
    routes = sorted(f"{m.upper()} {p}" for p, ops in paths.items() for m in ops)
    return JSONResponse(await _service(request).describe(routes))


@router.get("/v1/models", summary="OpenAI-style model list")
async def http_models(request: Request) -> JSONResponse:
    return JSONResponse(await _service(request).model_list())


@router.post(
    "/v1/audio/transcriptions",
    summary="OpenAI-compatible transcription (optionally with speakers)",
    response_model=TranscriptionResponse | VerboseTranscriptionResponse,
    responses=ERRORS,
    openapi_extra=json_request_body(TranscribeOptions),
)
async def http_transcriptions(
    request: Request,
    form: Annotated[TranscribeForm, Form(media_type=MULTIPART)],  # type: ignore[valid-type]
) -> Response:
    data, _, options = await read_audio_request(request, form, TranscribeOptions)
    if options.get("stream"):
        events = _service(request).transcribe_stream(data, **options)
        return await event_stream(events, route_path(request.scope))
    result = await _service(request).transcribe(data, **options)
    return render(result, options.get("response_format", "json"))


@router.post(
    "/v1/audio/translations",
    summary="OpenAI-compatible translation (400 where the model cannot translate)",
    response_model=TranscriptionResponse | VerboseTranscriptionResponse,
    responses=ERRORS,
)
async def http_translations(
    request: Request,
    form: Annotated[TranslateForm, Form()],  # type: ignore[valid-type]
) -> Response:
    data, _, options = await read_upload(form)
    return render(await _service(request).translate(data, **options), form.response_format)


@router.post(
    "/v1/audio/diarize",
    summary="Who spoke when, consistent across the whole file",
    response_model=DiarizeResponse,
    responses=ERRORS,
    openapi_extra=json_request_body(DiarizeOptions),
)
async def http_diarize(
    request: Request,
    form: Annotated[DiarizeForm, Form(media_type=MULTIPART)],  # type: ignore[valid-type]
) -> Response:
    data, stem, options = await read_audio_request(request, form, DiarizeOptions)
    result = await _service(request).diarize(data, file_id=stem, **options)
    return render(result, options.get("response_format", "json"))


@router.post("/v1/speakers", summary="Enrol a named speaker from clips", responses=ERRORS)
async def http_enrol(
    request: Request,
    form: Annotated[SpeakerForm, Form()],
) -> JSONResponse:
    clips = await read_clips(form.file)
    body = await _service(request).enrol_speaker(form.name, clips)
    return JSONResponse(body, status_code=201)


@router.get("/v1/speakers", summary="Enrolled speakers")
async def http_speakers(request: Request) -> JSONResponse:
    return JSONResponse(await _service(request).list_speakers())


@router.get("/v1/speakers/{speaker_id}", summary="One enrolled speaker", responses=ERRORS)
async def http_speaker(request: Request, speaker_id: str) -> JSONResponse:
    return JSONResponse(await _service(request).get_speaker(speaker_id))


@router.delete("/v1/speakers/{speaker_id}", summary="Erase a speaker and its voiceprints")
async def http_forget(request: Request, speaker_id: str) -> JSONResponse:
    return JSONResponse(await _service(request).delete_speaker(speaker_id))


@router.post(
    "/v1/speakers/{speaker_id}/samples",
    summary="Add clips to an enrolled speaker",
    responses=ERRORS,
)
async def http_samples(
    request: Request,
    speaker_id: str,
    form: Annotated[SamplesForm, Form()],
) -> JSONResponse:
    clips = await read_clips(form.file)
    return JSONResponse(await _service(request).add_speaker_samples(speaker_id, clips))


@router.post(
    "/v1/audio/diarize-chunk",
    summary="Chunk-local speakers with voice fingerprints",
    response_model=DiarizeChunkResponse,
    responses=ERRORS,
)
async def http_diarize_chunk(
    request: Request,
    form: Annotated[DiarizeChunkForm, Form()],  # type: ignore[valid-type]
) -> Response:
    data, _, options = await read_upload(form)
    return JSONResponse(await _service(request).diarize_chunk(data, **options))
