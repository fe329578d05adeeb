"""ASGI guards in front of the ingress routes: body limit, API keys, CORS.

Plain ASGI middleware (not BaseHTTPMiddleware) so the upload limit is enforced
on the byte stream itself: nothing past the limit is ever buffered.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.metrics import ingress_metrics
from voxgraph.errors import PayloadTooLarge, ServiceUnavailable, Unauthorized, VoxgraphError
from voxgraph.settings import Settings

OPEN_PATHS = frozenset({"/health"})


def error_response(e: VoxgraphError) -> JSONResponse:
    """OpenAI-style error body; 503s carry Retry-After, 401s a Bearer challenge."""
    headers: dict[str, str] = {}
    if isinstance(e, ServiceUnavailable):
        headers["Retry-After"] = str(max(1, int(e.retry_after_s)))
    if isinstance(e, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"message": e.message, "type": "invalid_request_error", "code": e.code}}
    if e.status >= 500:
        body["error"]["type"] = "server_error"
    return JSONResponse(body, status_code=e.status, headers=headers)


HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


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


def _authorized(header: bytes | None, keys: list[str]) -> bool:
    if not header or header[:7].lower() != b"bearer ":
        return False
    token = header[7:].strip()
    ok = False
    for key in keys:
        # Compare against every key so timing does not reveal which one matched.
        ok |= hmac.compare_digest(token, key.encode())
    return ok
