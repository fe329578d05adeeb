"""A small typed client for the voxgraph HTTP API, sync and async (httpx).

```python
from voxgraph.client import VoxgraphClient

with VoxgraphClient("http://127.0.0.1:8000") as vg:
    result = vg.transcribe("meeting.wav", diarize=True, response_format="verbose_json")
    turns = vg.diarize("meeting.wav", max_speakers=6)["segments"]

    ada = vg.enrol_speaker("Ada Lovelace", ["ada-1.wav", "ada-2.wav"])
    named = vg.transcribe(
        "meeting.wav", response_format="diarized_json", known_speaker_names=["Ada Lovelace"]
    )
    vg.delete_speaker(ada["id"])
```

`AsyncVoxgraphClient` has the same methods as coroutines. JSON formats come back
as dicts, text formats (text, srt, vtt, rttm) as str. Every non-2xx answer
raises an `APIError` subclass carrying the HTTP status and the server's own
message and code; 503s (a model loading, the queue full) are retried a bounded
number of times, waiting as long as the server's `Retry-After` asks.

No Ray here: this module is what users install the package for on a laptop.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import mimetypes
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, TypedDict, overload
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncVoxgraphClient",
    "AudioInput",
    "AuthenticationError",
    "BadRequestError",
    "Clips",
    "ConflictError",
    "DiarizeChunkOptions",
    "DiarizeOptions",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "SpeakerOptions",
    "TranscribeOptions",
    "UnsupportedMediaTypeError",
    "VoxgraphClient",
    "VoxgraphClientError",
    "data_url",
    "env_api_key",
    "env_url",
]

DEFAULT_URL = "http://127.0.0.1:8000"

# A path, the file's bytes, or an open binary file.
AudioInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
# One clip, or several; each clip is an `AudioInput`.
Clips = AudioInput | Sequence[AudioInput]

TextTranscriptionFormat = Literal["text", "srt", "vtt"]
JsonTranscriptionFormat = Literal["json", "verbose_json", "diarized_json"]
TranscriptionFormat = Literal["json", "verbose_json", "diarized_json", "text", "srt", "vtt"]
DiarizationFormat = Literal["json", "rttm"]


class SpeakerOptions(TypedDict, total=False):
    """Who may be named, on every diarizing route (any of them implies diarization)."""

    identify: bool
    """Match the speakers against every enrolled speaker of the library."""
    known_speakers: Mapping[str, AudioInput]
    """Name -> a short reference clip of that person, for this request only."""
    known_speaker_names: Sequence[str]
    """Enrolled speakers to look for, by name (case-insensitive)."""


class TranscribeOptions(SpeakerOptions, total=False):
    """Optional form fields of `/v1/audio/transcriptions` (see the README's route table)."""

    diarize: bool
    language: str
    prompt: str
    model: str
    temperature: float
    timestamp_granularities: Sequence[Literal["word", "segment"]]
    num_speakers: int
    min_speakers: int
    max_speakers: int
    chunking_strategy: Literal["auto"] | Mapping[str, Any]
    """`"auto"`, or `{"type": "server_vad", "silence_duration_ms": 500, ...}`."""
    filename: str
    """Name sent with the upload (defaults to the path's name, or `audio`)."""


class DiarizeOptions(SpeakerOptions, total=False):
    """Optional form fields of `/v1/audio/diarize`."""

    num_speakers: int
    min_speakers: int
    max_speakers: int
    filename: str
    """Name sent with the upload; it labels the RTTM lines."""


class DiarizeChunkOptions(SpeakerOptions, total=False):
    """Optional form fields of `/v1/audio/diarize-chunk`."""

    num_speakers: int
    min_speakers: int
    max_speakers: int
    filename: str
    """Name sent with the upload."""


def env_url() -> str:
    """`VOXGRAPH_URL`, else the local demo's address."""
    return os.environ.get("VOXGRAPH_URL") or DEFAULT_URL


def env_api_key() -> str | None:
    """The first key of `VOXGRAPH_API_KEY`.

    The server reads the same variable as a comma-separated list of accepted
    keys; on a box that runs both, sending the whole list would be a 401.
    """
    raw = os.environ.get("VOXGRAPH_API_KEY", "")
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    return keys[0] if keys else None


# --------------------------------------------------------------------------- errors


class VoxgraphClientError(Exception):
    """Base of everything this client raises."""


class APIConnectionError(VoxgraphClientError):
    """The server could not be reached (after the connection retries)."""


class APITimeoutError(APIConnectionError):
    """The server took longer than `timeout` to answer; not retried (the work may be running)."""


class APIError(VoxgraphClientError):
    """A non-2xx answer: `status`, the server's `message` and `code`, and `retry_after` (s)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
        body: str = "",
    ):
        super().__init__(f"{status}: {message}" + (f" ({code})" if code else ""))
        self.status = status
        self.message = message
        self.code = code
        self.error_type = error_type
        self.retry_after = retry_after
        self.body = body


class BadRequestError(APIError):
    """400/422: bad input or options (not audio, empty, unknown format, bad hints)."""


class AuthenticationError(APIError):
    """401/403: a missing or wrong API key."""


class NotFoundError(APIError):
    """404: no such speaker, or a wrong base URL or route prefix."""


class ConflictError(APIError):
    """409: a speaker with that name (compared case-insensitively) is already enrolled."""


class PayloadTooLargeError(APIError):
    """413: upload over MAX_UPLOAD_MB, or audio over MAX_AUDIO_S."""


class UnsupportedMediaTypeError(APIError):
    """415: a container with no audio stream."""


class ServiceUnavailableError(APIError):
    """503 after the retries ran out: a model still loading, or the service overloaded."""


class ServerError(APIError):
    """Any other 5xx: a server bug; the message is deliberately generic."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: BadRequestError,
    503: ServiceUnavailableError,
}

# 429 is not sent by voxgraph itself, but a gateway in front of it may.
_RETRY_STATUSES = frozenset({429, 503})


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from(response: httpx.Response) -> APIError:
    status = response.status_code
    text = response.text
    message, code, etype = text.strip() or response.reason_phrase, None, None
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        code = err.get("code")
        etype = err.get("type")
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(
        status,
        message,
        code=code,
        error_type=etype,
        retry_after=_retry_after(response.headers.get("retry-after")),
        body=text,
    )


def _result(response: httpx.Response) -> dict[str, Any] | str:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Upload:
    """One file to send; `open()` gives a fresh stream for every attempt."""

    filename: str
    content_type: str
    data: bytes | None = None
    path: Path | None = None

    def open(self) -> IO[bytes]:
        # Paths stream from disk (httpx sends Content-Length from the file size, so
        # the server can refuse an oversized upload before reading it).
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.data or b"")

    def read(self) -> bytes:
        with self.open() as f:
            return f.read()


def _upload(audio: AudioInput, filename: str | None) -> _Upload:
    if isinstance(audio, str | os.PathLike):
        path = Path(audio)
        name = filename or path.name
        return _Upload(name, _content_type(name), path=path)
    if isinstance(audio, bytes | bytearray | memoryview):
        name = filename or "audio"
        return _Upload(name, _content_type(name), data=bytes(audio))
    if hasattr(audio, "read"):
        # Read once: a retry must resend the same bytes and not every stream can seek.
        name = filename or Path(str(getattr(audio, "name", "") or "audio")).name
        return _Upload(name, _content_type(name), data=audio.read())
    raise TypeError(f"audio must be a path, bytes or a binary file, not {type(audio).__name__}")


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _clip_list(clips: Clips) -> list[_Upload]:
    """Uploads of one clip or a sequence of clips (a lone path is one clip, not its letters)."""
    single = isinstance(clips, str | os.PathLike | bytes | bytearray | memoryview)
    items = [clips] if single or hasattr(clips, "read") else list(clips)  # type: ignore[arg-type]
    if not items:
        raise ValueError("give at least one clip of the speaker")
    return [_upload(clip, None) for clip in items]  # type: ignore[arg-type]


# Leading bytes of the containers a reference clip is most often in.
_MAGIC = (
    (b"RIFF", 8, b"WAVE", "audio/wav"),
    (b"fLaC", 0, b"", "audio/flac"),
    (b"OggS", 0, b"", "audio/ogg"),
    (b"ID3", 0, b"", "audio/mpeg"),
)


def _media_type(upload: _Upload, data: bytes) -> str:
    for head, at, tail, media in _MAGIC:
        if data.startswith(head) and data[at : at + len(tail)] == tail:
            return media
    # The server takes any audio/ or video/ type, and octet-stream when unsure.
    guessed = upload.content_type
    return guessed if guessed.startswith(("audio/", "video/")) else "application/octet-stream"


def data_url(clip: AudioInput) -> str:
    """`data:audio/wav;base64,...`: a clip as `known_speaker_references[]` carries it."""
    upload = _upload(clip, None)
    data = upload.read()
    if not data:
        raise ValueError("a reference clip is empty")
    return f"data:{_media_type(upload, data)};base64,{base64.b64encode(data).decode('ascii')}"


def _form(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Form fields as httpx wants them: strings, lists as repeated fields, None left out."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            out[key] = [str(v) for v in value]
        else:
            out[key] = str(value)
    return out


def _check_options(given: Mapping[str, Any], allowed: type) -> None:
    # **options would otherwise swallow a typo such as `diarise=True` silently.
    known = allowed.__required_keys__ | allowed.__optional_keys__  # type: ignore[attr-defined]
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)}")


def _speaker_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """`identify`, `known_speaker_names[]` and `known_speaker_references[]` from the options."""
    known = options.get("known_speakers")
    names = options.get("known_speaker_names")
    if known and names:
        # With references the service reads the names as theirs, one per clip: enrolled
        # names cannot ride along. identify=True adds the whole library instead.
        raise ValueError(
            "known_speakers and known_speaker_names cannot be combined in one request; "
            "add identify=True to match the library as well as the references"
        )
    fields: dict[str, Any] = {"identify": True if options.get("identify") else None}
    if known:
        if not isinstance(known, Mapping):
            raise TypeError("known_speakers must map each name to a reference clip")
        fields["known_speaker_names[]"] = [str(n) for n in known]
        fields["known_speaker_references[]"] = [data_url(clip) for clip in known.values()]
    elif names:
        fields["known_speaker_names[]"] = [names] if isinstance(names, str) else list(names)
    return fields


def _hint_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: options.get(k) for k in ("num_speakers", "min_speakers", "max_speakers")}


def _chunking_fields(value: Any) -> dict[str, Any]:
    # Multipart has no objects: OpenAI's client sends one as `chunking_strategy[type]=...`.
    if value is None or isinstance(value, str):
        return {"chunking_strategy": value}
    if isinstance(value, Mapping):
        return {f"chunking_strategy[{k}]": v for k, v in value.items()}
    raise TypeError("chunking_strategy must be 'auto' or a mapping such as {'type': 'server_vad'}")


@dataclass(frozen=True)
class _Req:
    """One HTTP request, built once and sent (perhaps several times) by either client."""

    method: str
    path: str
    data: dict[str, Any] | None = None
    uploads: tuple[_Upload, ...] = ()


def _transcribe_req(audio: AudioInput, response_format: str, options: Mapping[str, Any]) -> _Req:
    _check_options(options, TranscribeOptions)
    granularities = options.get("timestamp_granularities")
    data = _form(
        {
            "response_format": response_format,
            "model": options.get("model"),
            "language": options.get("language"),
            "prompt": options.get("prompt"),
            "temperature": options.get("temperature"),
            "timestamp_granularities[]": list(granularities) if granularities else None,
            "diarize": options.get("diarize"),
            **_hint_fields(options),
            **_chunking_fields(options.get("chunking_strategy")),
            **_speaker_fields(options),
        }
    )
    upload = _upload(audio, options.get("filename"))
    return _Req("POST", "/v1/audio/transcriptions", data, (upload,))


def _diarize_req(audio: AudioInput, response_format: str, options: Mapping[str, Any]) -> _Req:
    _check_options(options, DiarizeOptions)
    data = _form(
        {"response_format": response_format, **_hint_fields(options), **_speaker_fields(options)}
    )
    return _Req("POST", "/v1/audio/diarize", data, (_upload(audio, options.get("filename")),))


def _diarize_chunk_req(audio: AudioInput, options: Mapping[str, Any]) -> _Req:
    _check_options(options, DiarizeChunkOptions)
    data = _form({**_hint_fields(options), **_speaker_fields(options)})
    upload = _upload(audio, options.get("filename"))
    return _Req("POST", "/v1/audio/diarize-chunk", data, (upload,))


def _speaker_path(speaker_id: str, *rest: str) -> str:
    if not isinstance(speaker_id, str) or not speaker_id.strip():
        raise ValueError("a speaker id is a non-empty string such as 'spk_...'")
    # Quoted whole: an id can never step into another route ('../health').
    return "/".join(("/v1/speakers", quote(speaker_id.strip(), safe=""), *rest))


def _enrol_req(name: str, clips: Clips) -> _Req:
    return _Req("POST", "/v1/speakers", _form({"name": name}), tuple(_clip_list(clips)))


def _samples_req(speaker_id: str, clips: Clips) -> _Req:
    return _Req("POST", _speaker_path(speaker_id, "samples"), None, tuple(_clip_list(clips)))


def _json_object(body: dict[str, Any] | str, req: _Req) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise APIError(200, f"{req.method} {req.path} answered with something other than JSON")
    return body


def _listed(body: dict[str, Any] | str, req: _Req) -> list[dict[str, Any]]:
    return list(_json_object(body, req).get("data") or [])


_MODELS = _Req("GET", "/v1/models")
_INFO = _Req("GET", "/")
_HEALTH = _Req("GET", "/health")
_SPEAKERS = _Req("GET", "/v1/speakers")


class _Base:
    """Settings and the retry policy shared by the sync and async clients."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ):
        """
        Args:
            base_url: the service root (no `/v1`); default `VOXGRAPH_URL` or
                http://127.0.0.1:8000.
            api_key: sent as `Authorization: Bearer`; default the first key of
                `VOXGRAPH_API_KEY`.
            timeout: seconds to wait for an answer; long recordings take a while.
            max_retries: extra attempts after a 503/429 or a refused connection.
            max_retry_wait: the longest single wait between attempts, whatever
                Retry-After says.
        """
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = (base_url or env_url()).rstrip("/")
        self.api_key = api_key if api_key is not None else env_api_key()
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._headers = {"User-Agent": "voxgraph-client", **(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server names one, else exponential backoff with jitter."""
        if retry_after is not None:
            wait = retry_after
        else:
            wait = min(0.5 * 2**attempt, 8.0) * (0.5 + random.random() / 2)
        return min(wait, self.max_retry_wait)

    def _should_retry(self, response: httpx.Response, attempt: int) -> float | None:
        if response.status_code in _RETRY_STATUSES and attempt < self.max_retries:
            return self._wait_s(attempt, _retry_after(response.headers.get("retry-after")))
        return None

    def _after_transport_error(
        self, req: _Req, e: httpx.TransportError, attempt: int, retry: bool
    ) -> float:
        """The wait before trying again, or the client's own error for `e`.

        Only a connection that was never made is safe to repeat: nothing reached the
        server. A timeout once connected is not retried, since the work may be running.
        """
        connect = isinstance(e, httpx.ConnectTimeout | httpx.ConnectError)
        if connect and retry and attempt < self.max_retries:
            return self._wait_s(attempt, None)
        where = f"{req.method} {self.base_url}{req.path}"
        if isinstance(e, httpx.TimeoutException):
            raise APITimeoutError(f"{where}: {e or 'timed out'}") from e
        raise APIConnectionError(f"{where}: {e}") from e


def _open_files(req: _Req) -> tuple[list[IO[bytes]], list[tuple[str, Any]] | None]:
    """Fresh streams of the request's uploads (every attempt resends them whole)."""
    streams = [u.open() for u in req.uploads]
    files = [
        ("file", (u.filename, stream, u.content_type))
        for u, stream in zip(req.uploads, streams, strict=True)
    ]
    return streams, files or None


def _close(streams: list[IO[bytes]]) -> None:
    for stream in streams:
        stream.close()


def _answer(response: httpx.Response) -> dict[str, Any] | str:
    if response.is_success:
        return _result(response)
    raise _error_from(response)


def _health_answer(response: httpx.Response) -> dict[str, Any]:
    # A 503 here is the report of a service that is still loading, not a failure.
    if response.status_code in (200, 503):
        try:
            return response.json()
        except ValueError:
            pass
    raise _error_from(response)


# --------------------------------------------------------------------------- sync


class VoxgraphClient(_Base):
    """Blocking client; use as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            headers=headers,
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, req: _Req, *, retry: bool = True) -> httpx.Response:
        attempt = 0
        while True:
            streams, files = _open_files(req)
            try:
                response = self._http.request(req.method, req.path, files=files, data=req.data)
            except httpx.TransportError as e:
                wait = self._after_transport_error(req, e, attempt, retry)
            else:
                wait = self._should_retry(response, attempt) if retry else None
                if wait is None:
                    return response
            finally:
                _close(streams)
            self._sleep(wait)
            attempt += 1

    def _call(self, req: _Req) -> dict[str, Any] | str:
        return _answer(self._request(req))

    def health(self) -> dict[str, Any]:
        """The readiness report; `["status"]` is "ready" or "loading" (a 503 is an answer here)."""
        return _health_answer(self._request(_HEALTH, retry=False))

    def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> dict[str, Any]:
        """Poll /health until every model is loaded; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        last: str = "no answer"
        while True:
            try:
                body = self.health()
                if body.get("status") == "ready":
                    return body
                last = str(body.get("status"))
            except APIConnectionError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout_s:g}s: {last}")
            self._sleep(poll_s)

    def models(self) -> list[dict[str, Any]]:
        """The deployed models, OpenAI style: `[{"id", "object", "owned_by", "role"}, ...]`."""
        return _listed(self._call(_MODELS), _MODELS)

    def info(self) -> dict[str, Any]:
        """`GET /`: service name, version, models with their devices, routes, limits."""
        return _json_object(self._call(_INFO), _INFO)

    @overload
    def transcribe(
        self,
        audio: AudioInput,
        *,
        response_format: JsonTranscriptionFormat = "json",
        **options: Unpack[TranscribeOptions],
    ) -> dict[str, Any]: ...
    @overload
    def transcribe(
        self,
        audio: AudioInput,
        *,
        response_format: TextTranscriptionFormat,
        **options: Unpack[TranscribeOptions],
    ) -> str: ...
    def transcribe(
        self,
        audio: AudioInput,
        *,
        response_format: TranscriptionFormat = "json",
        **options: Unpack[TranscribeOptions],
    ) -> dict[str, Any] | str:
        """Speech to text; `diarize=True` adds a speaker to every segment and word.

        `identify=True`, `known_speaker_names=[...]` or `known_speakers={name: clip}`
        put names on the speakers they recognise (and imply diarization).
        """
        return self._call(_transcribe_req(audio, response_format, options))

    @overload
    def diarize(
        self,
        audio: AudioInput,
        *,
        response_format: Literal["json"] = "json",
        **options: Unpack[DiarizeOptions],
    ) -> dict[str, Any]: ...
    @overload
    def diarize(
        self,
        audio: AudioInput,
        *,
        response_format: Literal["rttm"],
        **options: Unpack[DiarizeOptions],
    ) -> str: ...
    def diarize(
        self,
        audio: AudioInput,
        *,
        response_format: DiarizationFormat = "json",
        **options: Unpack[DiarizeOptions],
    ) -> dict[str, Any] | str:
        """Who spoke when, speakers consistent across the whole file; `rttm` gives RTTM text."""
        return self._call(_diarize_req(audio, response_format, options))

    def diarize_chunk(
        self, audio: AudioInput, **options: Unpack[DiarizeChunkOptions]
    ) -> dict[str, Any]:
        """Chunk-local turns plus a 192-float fingerprint per speaker with >= 0.5 s of speech."""
        req = _diarize_chunk_req(audio, options)
        return _json_object(self._call(req), req)

    def enrol_speaker(self, name: str, clips: Clips) -> dict[str, Any]:
        """Enrol `name` from clips of that person speaking alone; the new speaker.

        `ConflictError` when the name is taken (case-insensitively), `BadRequestError`
        for a bad name or a clip without enough of one voice.
        """
        req = _enrol_req(name, clips)
        return _json_object(self._call(req), req)

    def list_speakers(self) -> list[dict[str, Any]]:
        """Every enrolled speaker: id, name, voiceprint summaries (never the vectors)."""
        return _listed(self._call(_SPEAKERS), _SPEAKERS)

    def get_speaker(self, speaker_id: str) -> dict[str, Any]:
        """One speaker by id; `NotFoundError` for an unknown id."""
        req = _Req("GET", _speaker_path(speaker_id))
        return _json_object(self._call(req), req)

    def delete_speaker(self, speaker_id: str) -> dict[str, Any]:
        """Erase a speaker and its voiceprints: `{"id", "object": "speaker.deleted", ...}`."""
        req = _Req("DELETE", _speaker_path(speaker_id))
        return _json_object(self._call(req), req)

    def add_speaker_samples(self, speaker_id: str, clips: Clips) -> dict[str, Any]:
        """Fold more clips into an enrolled speaker's voiceprint; the updated speaker."""
        req = _samples_req(speaker_id, clips)
        return _json_object(self._call(req), req)


# --------------------------------------------------------------------------- async


class AsyncVoxgraphClient(_Base):
    """The same API as `VoxgraphClient`, as coroutines; `async with` or `await aclose()`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ):
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            headers=headers,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, req: _Req, *, retry: bool = True) -> httpx.Response:
        attempt = 0
        while True:
            streams, files = _open_files(req)
            try:
                response = await self._http.request(
                    req.method, req.path, files=files, data=req.data
                )
            except httpx.TransportError as e:
                wait = self._after_transport_error(req, e, attempt, retry)
            else:
                wait = self._should_retry(response, attempt) if retry else None
                if wait is None:
                    return response
            finally:
                _close(streams)
            await self._sleep(wait)
            attempt += 1

    async def _call(self, req: _Req) -> dict[str, Any] | str:
        return _answer(await self._request(req))

    async def health(self) -> dict[str, Any]:
        """The readiness report; `["status"]` is "ready" or "loading" (a 503 is an answer here)."""
        return _health_answer(await self._request(_HEALTH, retry=False))

    async def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> dict[str, Any]:
        """Poll /health until every model is loaded; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        last: str = "no answer"
        while True:
            try:
                body = await self.health()
                if body.get("status") == "ready":
                    return body
                last = str(body.get("status"))
            except APIConnectionError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout_s:g}s: {last}")
            await self._sleep(poll_s)

    async def models(self) -> list[dict[str, Any]]:
        """The deployed models, OpenAI style: `[{"id", "object", "owned_by", "role"}, ...]`."""
        return _listed(await self._call(_MODELS), _MODELS)

    async def info(self) -> dict[str, Any]:
        """`GET /`: service name, version, models with their devices, routes, limits."""
        return _json_object(await self._call(_INFO), _INFO)

    @overload
    async def transcribe(
        self,
        audio: AudioInput,
        *,
        response_format: JsonTranscriptionFormat = "json",
        **options: Unpack[TranscribeOptions],
    ) -> dict[str, Any]: ...
    @overload
    async def transcribe(
        self,
        audio: AudioInput,
        *,
        response_format: TextTranscriptionFormat,
        **options: Unpack[TranscribeOptions],
    ) -> str: ...
    async def transcribe(
        self,
        audio: AudioInput,
        *,
        response_format: TranscriptionFormat = "json",
        **options: Unpack[TranscribeOptions],
    ) -> dict[str, Any] | str:
        """Speech to text; `diarize=True` adds a speaker to every segment and word.

        `identify=True`, `known_speaker_names=[...]` or `known_speakers={name: clip}`
        put names on the speakers they recognise (and imply diarization).
        """
        return await self._call(_transcribe_req(audio, response_format, options))

    @overload
    async def diarize(
        self,
        audio: AudioInput,
        *,
        response_format: Literal["json"] = "json",
        **options: Unpack[DiarizeOptions],
    ) -> dict[str, Any]: ...
    @overload
    async def diarize(
        self,
        audio: AudioInput,
        *,
        response_format: Literal["rttm"],
        **options: Unpack[DiarizeOptions],
    ) -> str: ...
    async def diarize(
        self,
        audio: AudioInput,
        *,
        response_format: DiarizationFormat = "json",
        **options: Unpack[DiarizeOptions],
    ) -> dict[str, Any] | str:
        """Who spoke when, speakers consistent across the whole file; `rttm` gives RTTM text."""
        return await self._call(_diarize_req(audio, response_format, options))

    async def diarize_chunk(
        self, audio: AudioInput, **options: Unpack[DiarizeChunkOptions]
    ) -> dict[str, Any]:
        """Chunk-local turns plus a 192-float fingerprint per speaker with >= 0.5 s of speech."""
        req = _diarize_chunk_req(audio, options)
        return _json_object(await self._call(req), req)

    async def enrol_speaker(self, name: str, clips: Clips) -> dict[str, Any]:
        """Enrol `name` from clips of that person speaking alone; the new speaker.

        `ConflictError` when the name is taken (case-insensitively), `BadRequestError`
        for a bad name or a clip without enough of one voice.
        """
        req = _enrol_req(name, clips)
        return _json_object(await self._call(req), req)

    async def list_speakers(self) -> list[dict[str, Any]]:
        """Every enrolled speaker: id, name, voiceprint summaries (never the vectors)."""
        return _listed(await self._call(_SPEAKERS), _SPEAKERS)

    async def get_speaker(self, speaker_id: str) -> dict[str, Any]:
        """One speaker by id; `NotFoundError` for an unknown id."""
        req = _Req("GET", _speaker_path(speaker_id))
        return _json_object(await self._call(req), req)

    async def delete_speaker(self, speaker_id: str) -> dict[str, Any]:
        """Erase a speaker and its voiceprints: `{"id", "object": "speaker.deleted", ...}`."""
        req = _Req("DELETE", _speaker_path(speaker_id))
        return _json_object(await self._call(req), req)

    async def add_speaker_samples(self, speaker_id: str, clips: Clips) -> dict[str, Any]:
        """Fold more clips into an enrolled speaker's voiceprint; the updated speaker."""
        req = _samples_req(speaker_id, clips)
        return _json_object(await self._call(req), req)
