"""OpenAI's Realtime transcription protocol: the session config, client events, server events.

Only the wire: parsing what a client sends into typed events (or a `ProtocolError`
saying what is wrong) and building what the server sends. The session logic is
voxgraph.live; the WebSocket route is deployments/realtime_app.py.

voxgraph extends the protocol in two compatible ways: `session.speakers` (the
same known-speaker options as the HTTP routes) and, on `segment` and
`completed` events, the session-wide `speaker` label and its `confidence`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxgraph.schemas import KnownSpeakers, validation_problems


class ProtocolError(Exception):
    """A client event the session cannot act on; becomes an `error` event, the session lives on."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class _Wire(BaseModel):
    # OpenAI's clients send fields this server has no use for (noise_reduction,
    # create_response...): accepted and ignored, like OpenAI ignores them for transcription.
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)


class AudioFormat(_Wire):
    """Input audio: 16-bit little-endian mono PCM."""

    type: Literal["audio/pcm"] = "audio/pcm"
    """Only raw PCM16 (`audio/pcm`) is accepted."""
    rate: Literal[16000, 24000] = 24000
    """Samples per second (Hz): OpenAI's 24000, or 16000."""


class ServerVad(_Wire):
    """The server commits a turn when speech stops (energy VAD, see voxgraph.live)."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Speech activity (0..1) above which a 20 ms frame is speech."""
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    """Audio kept before detected speech (milliseconds)."""
    silence_duration_ms: int = Field(500, ge=100, le=10000)
    """Silence that ends a turn (milliseconds)."""


class Transcription(_Wire):
    """Which model transcribes (the deployed one, whatever is named) and in which language."""

    model: str | None = None
    """Informational: the deployed ASR model transcribes."""
    language: str | None = None
    """ISO-639-1 code; checked against the model's languages."""
    prompt: str | None = None
    """Accepted for compatibility; not used."""


class AudioInput(_Wire):
    format: AudioFormat = Field(default_factory=AudioFormat)
    """Format of `input_audio_buffer.append` audio."""
    turn_detection: ServerVad | None = Field(default_factory=ServerVad)
    """`server_vad`, or null: the client commits turns itself."""
    transcription: Transcription = Field(default_factory=Transcription)
    """Transcription model and language."""


class Audio(_Wire):
    input: AudioInput = Field(default_factory=AudioInput)


class SessionSpeakers(KnownSpeakers):
    """voxgraph's extension: whom to name (the HTTP routes' known-speaker options)."""


class SessionConfig(_Wire):
    """A transcription session as `session.update` sets it and `session.*` events show it."""

    type: Literal["transcription"] = "transcription"
    """Only transcription sessions are served."""
    audio: Audio = Field(default_factory=Audio)
    include: list[str] = Field(default_factory=list)
    """Accepted for compatibility (no logprobs are produced)."""
    speakers: SessionSpeakers | None = None
    """Name enrolled or referenced speakers in this session (voxgraph extension)."""

    def updated(self, patch: Any) -> SessionConfig:
        """This config with a `session.update` payload merged in (given fields replace)."""
        if not isinstance(patch, dict):
            raise ProtocolError("'session' must be an object", param="session")
        if patch.get("type", "transcription") != "transcription":
            raise ProtocolError(
                "only transcription sessions are served (session.type 'transcription')",
                param="session.type",
            )
        td = ((patch.get("audio") or {}).get("input") or {}).get("turn_detection")
        if isinstance(td, dict) and td.get("type", "server_vad") != "server_vad":
            raise ProtocolError(
                f"turn_detection type {td.get('type')!r} is not supported: use 'server_vad' "
                "or null (manual commits)",
                param="session.audio.input.turn_detection.type",
            )
        merged = _merge(self.model_dump(exclude_none=False), patch)
        try:
            return SessionConfig.model_validate(merged)
        except ValidationError as e:
            raise ProtocolError(
                "invalid session: " + validation_problems(e.errors()), param="session"
            ) from e

    @property
    def rate(self) -> int:
        return self.audio.input.format.rate

    @property
    def vad(self) -> ServerVad | None:
        return self.audio.input.turn_detection

    @property
    def language(self) -> str | None:
        return self.audio.input.transcription.language


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "speakers":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- client events

CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


class ClientEvent(BaseModel):
    """One parsed client message."""

    type: str
    event_id: str | None = None
    session: Any = None
    audio: bytes = b""


def parse_client_event(message: str | bytes, *, max_audio_bytes: int) -> ClientEvent:
    """The event a WebSocket text frame carries, or a ProtocolError naming the problem."""
    if isinstance(message, bytes):
        raise ProtocolError(
            "send events as JSON text frames; audio goes base64 in input_audio_buffer.append",
            code="invalid_event",
        )
    try:
        raw = json.loads(message)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"the message is not JSON: {e.msg}", code="invalid_json") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ProtocolError("an event is a JSON object with a string 'type'", code="invalid_event")
    kind = raw["type"]
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    if kind not in CLIENT_EVENTS:
        raise ProtocolError(
            f"unknown event type {kind!r}; a transcription session takes: "
            + ", ".join(CLIENT_EVENTS),
            code="invalid_event",
            param="type",
        )
    if kind == "session.update":
        return ClientEvent(type=kind, event_id=event_id, session=raw.get("session"))
    if kind == "input_audio_buffer.append":
        audio = raw.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("'audio' must be base64 PCM16 text", param="audio")
        if len(audio) > max_audio_bytes * 4 // 3 + 4:
            raise ProtocolError(
                f"one append may carry at most {max_audio_bytes} bytes of audio", param="audio"
            )
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ProtocolError("'audio' is not valid base64", param="audio") from e
        if len(pcm) % 2:
            raise ProtocolError(
                "'audio' must be whole 16-bit samples (an even number of bytes)", param="audio"
            )
        return ClientEvent(type=kind, event_id=event_id, audio=pcm)
    return ClientEvent(type=kind, event_id=event_id)


# ---------------------------------------------------------------- server events

_ids = itertools.count(1)
_PREFIX = os.urandom(4).hex()


def new_id(kind: str) -> str:
    """Unique in this process: `event_…`, `item_…`, `sess_…`."""
    return f"{kind}_{_PREFIX}{next(_ids):08d}"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event with its id."""
    return {"event_id": new_id("event"), "type": kind, **fields}


def error_event(
    message: str,
    code: str = "invalid_value",
    *,
    param: str | None = None,
    event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> dict[str, Any]:
    return event(
        "error",
        error={
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    )


def session_json(session_id: str, config: SessionConfig) -> dict[str, Any]:
    return {"id": session_id, "object": "realtime.transcription_session", **config.model_dump()}
