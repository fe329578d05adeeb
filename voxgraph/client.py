"""A small typed client for the voxgraph HTTP API, sync and async (httpx).

```python
from voxgraph.client import VoxgraphClient

with VoxgraphClient("http://127.0.0.1:8000") as vg:
    result = vg.transcribe("meeting.wav", diarize=True, response_format="verbose_json")
    turns = vg.diarize("meeting.wav", max_speakers=6)["segments"]
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
    "DiarizeOptions",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "TranscribeOptions",
    "UnsupportedMediaTypeError",
    "VoxgraphClient",
    "VoxgraphClientError",
    "env_api_key",
    "env_url",
]

DEFAULT_URL = "http://127.0.0.1:8000"

# A path, the file's bytes, or an open binary file.
AudioInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

TextTranscriptionFormat = Literal["text", "srt", "vtt"]
JsonTranscriptionFormat = Literal["json", "verbose_json"]
TranscriptionFormat = Literal["json", "verbose_json", "text", "srt", "vtt"]
DiarizationFormat = Literal["json", "rttm"]


class TranscribeOptions(TypedDict, total=False):
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
    filename: str
    """Name sent with the upload (defaults to the path's name, or `audio`)."""


class DiarizeOptions(TypedDict, total=False):
    """Optional form fields of `/v1/audio/diarize`."""

    num_speakers: int
    min_speakers: int
    max_speakers: int
    filename: str
    """Name sent with the upload; it labels the RTTM lines."""


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
    """404: wrong base URL or route prefix."""


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
    unknown = sorted(set(given) - set(allowed.__annotations__))
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)}")


def _transcribe_fields(response_format: str, options: Mapping[str, Any]) -> dict[str, Any]:
    _check_options(options, TranscribeOptions)
    granularities = options.get("timestamp_granularities")
    return _form(
        {
            "response_format": response_format,
            "model": options.get("model"),
            "language": options.get("language"),
            "prompt": options.get("prompt"),
            "temperature": options.get("temperature"),
            "timestamp_granularities[]": list(granularities) if granularities else None,
            "diarize": options.get("diarize"),
            "num_speakers": options.get("num_speakers"),
            "min_speakers": options.get("min_speakers"),
            "max_speakers": options.get("max_speakers"),
        }
    )


def _diarize_fields(response_format: str, options: Mapping[str, Any]) -> dict[str, Any]:
    _check_options(options, DiarizeOptions)
    return _form(
        {
            "response_format": response_format,
            "num_speakers": options.get("num_speakers"),
            "min_speakers": options.get("min_speakers"),
            "max_speakers": options.get("max_speakers"),
        }
    )


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

    def _request(
        self,
        method: str,
        path: str,
        *,
        upload: _Upload | None = None,
        data: dict[str, Any] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        attempt = 0
        while True:
            stream = upload.open() if upload else None
            try:
                files = {"file": (upload.filename, stream, upload.content_type)} if upload else None
                response = self._http.request(method, path, files=files, data=data)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout) and retry and attempt < self.max_retries:
                    self._sleep(self._wait_s(attempt, None))
                    attempt += 1
                    continue
                raise APITimeoutError(f"{method} {self.base_url}{path}: {e or 'timed out'}") from e
            except httpx.TransportError as e:
                # Only a refused connection is safe to repeat: nothing reached the server.
                if isinstance(e, httpx.ConnectError) and retry and attempt < self.max_retries:
                    self._sleep(self._wait_s(attempt, None))
                    attempt += 1
                    continue
                raise APIConnectionError(f"{method} {self.base_url}{path}: {e}") from e
            finally:
                if stream is not None:
                    stream.close()
            wait = self._should_retry(response, attempt) if retry else None
            if wait is None:
                return response
            self._sleep(wait)
            attempt += 1

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any] | str:
        response = self._request(method, path, **kw)
        if response.is_success:
            return _result(response)
        raise _error_from(response)

    def health(self) -> dict[str, Any]:
        """The readiness report; `["status"]` is "ready" or "loading" (a 503 is an answer here)."""
        response = self._request("GET", "/health", retry=False)
        if response.status_code in (200, 503):
            try:
                return response.json()
            except ValueError:
                pass
        raise _error_from(response)

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
        body = self._call("GET", "/v1/models")
        return list(body["data"]) if isinstance(body, dict) else []

    def info(self) -> dict[str, Any]:
        """`GET /`: service name, version, models with their devices, routes, limits."""
        body = self._call("GET", "/")
        return body if isinstance(body, dict) else {}

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
        """Speech to text; `diarize=True` adds a speaker to every segment and word."""
        data = _transcribe_fields(response_format, options)
        upload = _upload(audio, options.get("filename"))
        return self._call("POST", "/v1/audio/transcriptions", upload=upload, data=data)

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
        data = _diarize_fields(response_format, options)
        upload = _upload(audio, options.get("filename"))
        return self._call("POST", "/v1/audio/diarize", upload=upload, data=data)

    def diarize_chunk(self, audio: AudioInput, *, filename: str | None = None) -> dict[str, Any]:
        """Chunk-local turns plus a 192-float fingerprint per speaker with >= 0.5 s of speech."""
        body = self._call("POST", "/v1/audio/diarize-chunk", upload=_upload(audio, filename))
        if not isinstance(body, dict):
            raise APIError(200, "diarize-chunk answered with something other than JSON")
        return body


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

    async def _request(
        self,
        method: str,
        path: str,
        *,
        upload: _Upload | None = None,
        data: dict[str, Any] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        attempt = 0
        while True:
            stream = upload.open() if upload else None
            try:
                files = {"file": (upload.filename, stream, upload.content_type)} if upload else None
                response = await self._http.request(method, path, files=files, data=data)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout) and retry and attempt < self.max_retries:
                    await self._sleep(self._wait_s(attempt, None))
                    attempt += 1
                    continue
                raise APITimeoutError(f"{method} {self.base_url}{path}: {e or 'timed out'}") from e
            except httpx.TransportError as e:
                if isinstance(e, httpx.ConnectError) and retry and attempt < self.max_retries:
                    await self._sleep(self._wait_s(attempt, None))
                    attempt += 1
                    continue
                raise APIConnectionError(f"{method} {self.base_url}{path}: {e}") from e
            finally:
                if stream is not None:
                    stream.close()
            wait = self._should_retry(response, attempt) if retry else None
            if wait is None:
                return response
            await self._sleep(wait)
            attempt += 1

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any] | str:
        response = await self._request(method, path, **kw)
        if response.is_success:
            return _result(response)
        raise _error_from(response)

    async def health(self) -> dict[str, Any]:
        """The readiness report; `["status"]` is "ready" or "loading" (a 503 is an answer here)."""
        response = await self._request("GET", "/health", retry=False)
        if response.status_code in (200, 503):
            try:
                return response.json()
            except ValueError:
                pass
        raise _error_from(response)

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
        body = await self._call("GET", "/v1/models")
        return list(body["data"]) if isinstance(body, dict) else []

    async def info(self) -> dict[str, Any]:
        """`GET /`: service name, version, models with their devices, routes, limits."""
        body = await self._call("GET", "/")
        return body if isinstance(body, dict) else {}

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
        """Speech to text; `diarize=True` adds a speaker to every segment and word."""
        data = _transcribe_fields(response_format, options)
        upload = _upload(audio, options.get("filename"))
        return await self._call("POST", "/v1/audio/transcriptions", upload=upload, data=data)

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
        data = _diarize_fields(response_format, options)
        upload = _upload(audio, options.get("filename"))
        return await self._call("POST", "/v1/audio/diarize", upload=upload, data=data)

    async def diarize_chunk(
        self, audio: AudioInput, *, filename: str | None = None
    ) -> dict[str, Any]:
        """Chunk-local turns plus a 192-float fingerprint per speaker with >= 0.5 s of speech."""
        body = await self._call("POST", "/v1/audio/diarize-chunk", upload=_upload(audio, filename))
        if not isinstance(body, dict):
            raise APIError(200, "diarize-chunk answered with something other than JSON")
        return body
