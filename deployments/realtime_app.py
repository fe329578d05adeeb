"""The realtime WebSocket: `/v1/realtime?intent=transcription`, OpenAI's transcription protocol.

The route only admits (API key, origin, session limit), pumps messages into a
`voxgraph.live.LiveSession` and writes its events back; the session does the
work. No Ray import: the Ingress serves this router in its replica, the
baseline in its process.

Close codes: 1000 when the session ends normally (client goodbye, idle timeout,
maximum length), 1008 for a refused client (API key, origin, intent), 1011 for
an internal error, 1012 when the session's task is cancelled (the replica is
stopping) and 1013 when the replica is full or a model is unavailable: clients
retry on 1012 and 1013. A replica that dies cannot say goodbye: Serve's proxy
ends its sockets itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import SecretStr
from starlette.websockets import WebSocketDisconnect, WebSocketState

from deployments.http_guards import token_accepted
from voxgraph.live import LiveSession, SessionClosed
from voxgraph.realtime import error_event

logger = logging.getLogger("ray.serve")

router = APIRouter()

# Events waiting for a slow reader; a client that stops reading is cut off.
MAX_QUEUED_EVENTS = 2000
_KEY_PROTOCOL = "openai-insecure-api-key."


def _key_of(ws: WebSocket) -> str | None:
    header = ws.headers.get("authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    if ws.query_params.get("api_key"):
        return ws.query_params["api_key"]
    # Browsers cannot set headers on a WebSocket: OpenAI's clients put the key in a subprotocol.
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(_KEY_PROTOCOL):
            return proto[len(_KEY_PROTOCOL) :]
    return None


def _key_ok(token: str | None, keys: list[SecretStr]) -> bool:
    # The HTTP guard's constant-time check; no keys configured means no auth.
    if not keys:
        return True
    return token is not None and token != "" and token_accepted(token.encode(), keys)


def _origin_ok(origin: str | None, allowed: list[str]) -> bool:
    # Non-browser clients send no Origin; a browser page may only connect from an allowed site.
    return origin is None or "*" in allowed or origin in allowed


async def _refuse(ws: WebSocket, code: int, message: str, err: str) -> None:
    """Accept, say why in an `error` event, close: a clear refusal rather than a bare 403."""
    await ws.accept(subprotocol=_subprotocol(ws))
    await ws.send_text(json.dumps(error_event(message, err)))
    await ws.close(code=code, reason=message[:120])


def _subprotocol(ws: WebSocket) -> str | None:
    protos = ws.scope.get("subprotocols", [])
    return "realtime" if "realtime" in protos else None


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    service = ws.app.state.service
    settings = service.settings
    registry = service.live
    if not _key_ok(_key_of(ws), settings.api_keys):
        service.observer.error("/v1/realtime", "unauthorized")
        await _refuse(
            ws,
            1008,
            "missing or invalid API key: send 'Authorization: Bearer <key>' or ?api_key=",
            "invalid_api_key",
        )
        return
    if not _origin_ok(ws.headers.get("origin"), list(settings.cors_origins)):
        await _refuse(ws, 1008, "this origin may not open realtime sessions", "origin_refused")
        return
    intent = ws.query_params.get("intent")
    if intent not in (None, "transcription"):
        await _refuse(
            ws,
            1008,
            f"intent {intent!r} is not served: use ?intent=transcription",
            "unsupported_intent",
        )
        return
    if registry.full:
        service.observer.error("/v1/realtime", "overloaded")
        await _refuse(
            ws,
            1013,
            f"this replica holds its maximum of {settings.realtime_max_sessions} realtime "
            "sessions; retry shortly",
            "session_limit",
        )
        return
    await ws.accept(subprotocol=_subprotocol(ws))
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MAX_QUEUED_EVENTS)

    async def emit(ev: dict[str, Any]) -> None:
        try:
            outbox.put_nowait(ev)
        except asyncio.QueueFull:
            raise SessionClosed(1008, "the client is not reading its events") from None

    session = LiveSession(service.pipeline, emit, settings)
    registry.add(session)
    writer = asyncio.create_task(_write(ws, outbox))
    code, reason = 1000, "session ended"
    try:
        await session.start()
        code, reason = await _pump(ws, session, settings, writer)
    except SessionClosed as e:
        code, reason = e.code, e.reason
    except WebSocketDisconnect:
        code, reason = 1000, "client gone"
    except asyncio.CancelledError:
        # The replica is going away: tell the client it may reconnect elsewhere.
        code, reason = 1012, "service restart"
        raise
    except Exception:
        logger.exception("realtime session %s failed", session.id)
        code, reason = 1011, "internal error"
    finally:
        registry.remove(session)
        await session.close()
        await _end(ws, outbox, writer, code, reason)


async def _pump(
    ws: WebSocket, session: LiveSession, settings: Any, writer: asyncio.Task[None]
) -> tuple[int, str]:
    """Client messages into the session until it ends; returns the close code and reason."""
    deadline = time.monotonic() + settings.realtime_max_session_s
    while True:
        if session.failure is not None:
            return session.failure.code, session.failure.reason
        if writer.done():
            return 1000, "client gone"
        left = deadline - time.monotonic()
        if left <= 0:
            await session.emit(
                error_event("the session reached its maximum length", "session_expired")
            )
            return 1000, "maximum session length"
        try:
            # Wake at least every second: a failed turn or an idle client ends the session.
            message = await asyncio.wait_for(ws.receive(), timeout=min(1.0, left))
        except TimeoutError:
            idle = time.monotonic() - session.last_message
            if not session.pending_items and idle >= settings.realtime_idle_timeout_s:
                await session.emit(
                    error_event(
                        f"no message for {settings.realtime_idle_timeout_s:g} s: session closed",
                        "session_idle",
                    )
                )
                return 1000, "idle timeout"
            continue
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        session.last_message = time.monotonic()
        text = message.get("text")
        await session.receive(text if text is not None else message.get("bytes") or b"")


async def _write(ws: WebSocket, outbox: asyncio.Queue[dict[str, Any] | None]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (ev := await outbox.get()) is not None:
            await ws.send_text(json.dumps(ev))


async def _end(
    ws: WebSocket,
    outbox: asyncio.Queue[dict[str, Any] | None],
    writer: asyncio.Task[None],
    code: int,
    reason: str,
) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        outbox.put_nowait(None)
    try:
        await asyncio.wait_for(writer, 5.0)
    except (TimeoutError, asyncio.CancelledError):
        writer.cancel()
    if ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.close(code=code, reason=reason)
