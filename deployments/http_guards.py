"""ASGI guards in front of the ingress routes: error counting, upload deadline, body
limit, API keys, CORS.

Plain ASGI middleware (not BaseHTTPMiddleware) so the upload limits are enforced
on the byte stream itself: nothing past the size limit is ever buffered, and a
client too slow to send its body is cut off even while it sends nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.metrics import error_kinds, ingress_metrics
from voxgraph.errors import (
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    VoxgraphError,
)
from voxgraph.json_body import is_json, json_body_limit
from voxgraph.settings import Settings

OPEN_PATHS = frozenset({"/health"})


def error_response(e: VoxgraphError) -> JSONResponse:
    """OpenAI-style error body; 503s carry Retry-After, 401s a Bearer challenge."""
    headers: dict[str, str] = {}
    if isinstance(e, ServiceUnavailable):
        headers["Retry-After"] = str(max(1, int(e.retry_after_s)))
    if isinstance(e, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(e, RequestTimeout):
        # The rest of a slow body is not worth waiting for: the connection closes,
        # so the client cannot keep the server reading it.
        headers["Connection"] = "close"
    body = {"error": {"message": e.message, "type": "invalid_request_error", "code": e.code}}
    if e.status >= 500:
        body["error"]["type"] = "server_error"
    return JSONResponse(body, status_code=e.status, headers=headers)


HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "upload_timeout",
    413: "payload_too_large",
}


def http_error_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A framework refusal (starlette HTTPException) in the service's own error shape."""
    message = detail
    lowered = detail.lower()
    if status == 400 and ("multipart" in lowered or "parsing the body" in lowered):
        # python-multipart's wording names the symptom; tell the client what to send.
        message = (
            f"malformed multipart body ({detail.rstrip('.')}); send the audio as "
            "multipart/form-data with the file in the field 'file'"
        )
    body = {
        "error": {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "code": HTTP_ERROR_CODES.get(status, "invalid_request" if status < 500 else "internal"),
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _settings(scope: Scope) -> Settings:
    app = scope.get("app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    return settings if isinstance(settings, Settings) else Settings.load()


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve puts the prefix in root_path).

    Without this, an app served at /prefix would guard /prefix/health like any route.
    """
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _text_header(scope: Scope, name: bytes) -> str | None:
    value = _header(scope, name)
    return value.decode("latin-1") if value is not None else None


class BodyLimitMiddleware:
    """413 from Content-Length when present, else by counting the streamed body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit_mb = _settings(scope).max_upload_mb
        limit = int(limit_mb * 1024 * 1024)
        too_large = PayloadTooLarge(f"upload is over the {limit_mb:g} MB limit (MAX_UPLOAD_MB)")
        if is_json(_text_header(scope, b"content-type")):
            # {"inputs": "<base64>", ...}: the limit is on the audio, base64 is 4/3 of it.
            limit = json_body_limit(limit)
            too_large = PayloadTooLarge(
                f"upload is over the {limit_mb:g} MB limit (MAX_UPLOAD_MB; as base64 in a "
                "JSON body the audio may take 4/3 of it)"
            )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            ingress_metrics().error(route_path(scope), too_large.code)
            await error_response(too_large)(scope, receive, send)
            return

        state: dict[str, Any] = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise too_large
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app makes of the aborted read (often a 400 "error
            # parsing the body"), the client must learn the real cause: 413.
            if state["exceeded"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    ingress_metrics().error(route_path(scope), too_large.code)
                    await error_response(too_large)(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if not state["started"]:
                state["started"] = True
                ingress_metrics().error(route_path(scope), too_large.code)
                await error_response(too_large)(scope, receive, send)


UPLOAD_DEFAULTS = {
    "upload_timeout_s": 120.0,
    "upload_idle_timeout_s": 15.0,
    "upload_min_rate_bytes_s": 1024.0,
}
UPLOAD_RATE_GRACE_S = 5.0


@dataclass(frozen=True)
class UploadLimits:
    """How long a request body may take: in all, between two chunks, and on average."""

    total_s: float
    idle_s: float
    min_rate: float  # bytes per second; 0 turns the rate check off
    grace_s: float = UPLOAD_RATE_GRACE_S  # the rate is judged only after this long

    @classmethod
    def of(cls, settings: object, grace_s: float = UPLOAD_RATE_GRACE_S) -> UploadLimits:
        def value(name: str) -> float:
            return float(getattr(settings, name, UPLOAD_DEFAULTS[name]))

        return cls(
            value("upload_timeout_s"),
            value("upload_idle_timeout_s"),
            value("upload_min_rate_bytes_s"),
            grace_s,
        )

    def next_wait(self, elapsed: float, received: int) -> tuple[float, str]:
        """(seconds the next chunk may take, the bound that sets it) after `elapsed` s."""
        waits = [(self.total_s - elapsed, "total"), (self.idle_s, "idle")]
        if self.min_rate > 0:
            # The average falls below the minimum once received / t < min_rate.
            waits.append((max(self.grace_s, received / self.min_rate) - elapsed, "rate"))
        return min(waits)

    def error(self, bound: str) -> RequestTimeout:
        if bound == "idle":
            why = f"no bytes of the request body arrived for {self.idle_s:g} s"
        elif bound == "rate":
            why = f"the request body arrived slower than {self.min_rate:g} bytes/s"
        else:
            why = f"the request body did not arrive in full within {self.total_s:g} s"
        return RequestTimeout(f"upload too slow: {why}; retry over a faster connection")


class UploadDeadlineMiddleware:
    """408 for a request body that arrives too slowly, so no slow client holds a slot.

    Bounds the body's total time, its longest stall and (after a grace period) its
    average rate. They are timeouts on `receive` itself, so they fire while the
    app waits for bytes that never come, not only when a chunk arrives.
    """

    def __init__(self, app: ASGIApp, rate_grace_s: float = UPLOAD_RATE_GRACE_S):
        self.app = app
        self.rate_grace_s = rate_grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = UploadLimits.of(_settings(scope), self.rate_grace_s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        body_done = False
        timed_out: RequestTimeout | None = None
        response_started = False
        replaced = False  # the app's own answer is dropped for the 408

        async def deadline_receive() -> Message:
            nonlocal received, body_done, timed_out
            if timed_out is not None:
                raise timed_out
            if body_done:
                # After the body only a disconnect can come; waiting for it is no upload.
                return await receive()
            wait, bound = limits.next_wait(loop.time() - started, received)
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
                timed_out = limits.error(bound)
                raise timed_out from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                response_started = True
                if timed_out is not None:
                    # Whatever the app made of the failed read (FastAPI: 400 "error
                    # parsing the body"), the client must learn the real cause: 408.
                    replaced = True
                    await _refuse(timed_out, scope, receive, send)
                    return
            await send(message)

        try:
            await self.app(scope, deadline_receive, guarded_send)
        except Exception:
            if timed_out is None or response_started:
                raise
        if timed_out is not None and not response_started:
            response_started = True
            await _refuse(timed_out, scope, receive, send)


async def _refuse(err: VoxgraphError, scope: Scope, receive: Receive, send: Send) -> None:
    ingress_metrics().error(route_path(scope), err.code)
    await error_response(err)(scope, receive, send)


_ERROR_BODY_MAX = 64 * 1024


def _error_code(status: int, body: bytes) -> str:
    """The `code` of an error answer's body, else a name for its status."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if isinstance(code, str) and code:
        return code
    return HTTP_ERROR_CODES.get(status, "internal" if status >= 500 else "invalid_request")


class ErrorCountMiddleware:
    """Counts every error answer once, by route and kind, whichever layer gave it.

    Outermost, so refusals made while the upload is read (413, 408, a malformed
    multipart body) are counted like the routes' own errors. The kind is the
    last one reported while the request was answered (the layer that decided
    the answer reports last), else the `code` in the answer's body.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_path(scope)
        status = 0
        body = bytearray()
        counted = False

        def count(kinds: list[str], fallback: str) -> None:
            nonlocal counted
            if not counted:
                counted = True
                ingress_metrics().count_error(route, kinds[-1] if kinds else fallback)

        with error_kinds() as kinds:

            async def counting_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                elif message["type"] == "http.response.body" and status >= 400:
                    if len(body) < _ERROR_BODY_MAX:
                        body.extend(message.get("body", b""))
                    if not message.get("more_body", False):
                        # Before sending: a client gone by now still got an error.
                        count(kinds, _error_code(status, bytes(body)))
                await send(message)

            try:
                await self.app(scope, receive, counting_send)
            except Exception:
                # The framework's last resort answers 500 outside this middleware.
                count(kinds, "internal")
                raise


class GuardMiddleware:
    """API keys (constant-time compare) on every route but /health, then CORS."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._cors: tuple[tuple[str, ...], ASGIApp] | None = None

    def _with_cors(self, origins: tuple[str, ...]) -> ASGIApp:
        if not origins:
            return self.app
        if self._cors is None or self._cors[0] != origins:
            # Never credentials: with a wildcard origin any site could act as the user.
            cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                allow_credentials=False,
                max_age=600,
            )
            self._cors = (origins, cors)
        return self._cors[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = _settings(scope)
        app = self._with_cors(tuple(settings.cors_origins))
        preflight = scope["method"] == "OPTIONS" and _header(scope, b"origin") is not None
        needs_key = settings.api_keys and route_path(scope) not in OPEN_PATHS and not preflight
        if needs_key and not _authorized(_header(scope, b"authorization"), settings.api_keys):
            err = Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")
            ingress_metrics().error(route_path(scope), err.code)
            await error_response(err)(scope, receive, send)
            return
        await app(scope, receive, send)


def _authorized(header: bytes | None, keys: list[str] | list[SecretStr]) -> bool:
    if not header or header[:7].lower() != b"bearer ":
        return False
    return token_accepted(header[7:].strip(), keys)


def token_accepted(token: bytes, keys: list[str] | list[SecretStr]) -> bool:
    """Whether `token` is one of `keys`, compared in constant time."""
    ok = False
    for key in keys:
        secret = key.get_secret_value() if isinstance(key, SecretStr) else key
        # Compare against every key so timing does not reveal which one matched.
        ok |= hmac.compare_digest(token, secret.encode())
    return ok
