"""A client for voxgraph's live route: OpenAI's Realtime transcription protocol (WebSocket).

```python
import asyncio
from voxgraph.live_client import LiveClient, LiveOptions, SEGMENT

async def main() -> None:
    live = LiveClient("http://127.0.0.1:8000")
    async for event in live.stream_file("meeting.wav", LiveOptions(identify=True)):
        if event.type == SEGMENT:
            seg = event.data
            print(f"{seg['start']:.1f}-{seg['end']:.1f} {seg['speaker']}: {seg['text']}")

asyncio.run(main())
```

`stream_file` decodes the file, opens `ws://HOST/v1/realtime?intent=transcription`,
sends `session.update` (PCM16 at 24 kHz by default, server VAD by default, or a
client commit every `manual_commit_s` seconds), streams the audio in ~100 ms
`input_audio_buffer.append` chunks paced by the wall clock (`speed` times real
time), commits the tail, waits until every committed item has its `completed` (or
`failed`) event, and closes. It yields every server event as a `LiveEvent`
carrying the event and when it arrived. `LiveClient.connect` gives the session
itself (`append`, `commit`, `clear`, `recv`) for callers that produce audio as it
happens.

Failures raise the client's errors (`voxgraph.client`): a refused or unreachable
server `APIConnectionError`; a handshake answered with an HTTP status the matching
`APIError` (401 `AuthenticationError`, 503 `ServiceUnavailableError`, ...); a
session the server ends `SessionClosed` (close code and reason: 1013 full or a
model failed, try again later; 1012 restart; 1008 refused by policy). The
server's `error` events are yielded, not raised: most leave the session usable.

No Ray, no NeMo, no numpy needed: in the client-only install PCM WAV files are
read and resampled with the standard library; with `voxgraph[server]` installed
any format the service decodes is read by its own decoder.
"""

from __future__ import annotations

import array
import asyncio
import base64
import io
import itertools
import json
import sys
import time
import wave
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxgraph.client import (
    APIConnectionError,
    APITimeoutError,
    AudioInput,
    VoxgraphClientError,
    _error_from,
    _upload,
    env_api_key,
    env_url,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CLEARED",
    "COMMITTED",
    "COMPLETED",
    "DEFAULT_RATE",
    "DELTA",
    "ERROR",
    "FAILED",
    "RATES",
    "SEGMENT",
    "SESSION_CREATED",
    "SESSION_UPDATED",
    "SPEECH_STARTED",
    "SPEECH_STOPPED",
    "AudioFileError",
    "LiveClient",
    "LiveEvent",
    "LiveOptions",
    "LiveSession",
    "SessionClosed",
    "error_text",
    "load_pcm16",
    "pcm16_from_float",
    "realtime_url",
    "session_update",
]

RATES = (24_000, 16_000)
"""Sample rates the route accepts for `audio/pcm` (OpenAI's is 24 kHz; 16 kHz is voxgraph's)."""
DEFAULT_RATE = 24_000
REALTIME_PATH = "/v1/realtime"

# Server event types (OpenAI Realtime GA names).
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
CLEARED = "input_audio_buffer.cleared"
DELTA = "conversation.item.input_audio_transcription.delta"
SEGMENT = "conversation.item.input_audio_transcription.segment"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
ERROR = "error"

SETTLE_S = 0.1
"""How long a finished stream still listens before it closes."""

# The answer to committing a buffer with nothing (or too little) in it; OpenAI's code.
# The tail commit of a server-VAD stream often finds the buffer empty: not an error.
COMMIT_EMPTY_CODES = frozenset({"input_audio_buffer_commit_empty"})

CLOSE_CODES = {
    1000: "normal closure (session over, idle or at its maximum length)",
    1001: "the server is going away",
    1006: "the connection dropped without a close frame",
    1008: "refused by policy (API key or origin)",
    1011: "internal server error",
    1012: "the service is restarting; try again",
    1013: "the service is full or a model failed; try again later",
}


# --------------------------------------------------------------------------- errors


class SessionClosed(VoxgraphClientError):
    """The server ended the session before the client was done: `code` and `reason`."""

    def __init__(self, code: int, reason: str = ""):
        meaning = CLOSE_CODES.get(code, "")
        text = f"session closed by the server: {code}"
        text += f" {reason}" if reason else ""
        text += f" ({meaning})" if meaning and meaning != reason else ""
        super().__init__(text)
        self.code = code
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """A restart (1012) or a full / overloaded service (1013): worth another try later."""
        return self.code in (1012, 1013)


class AudioFileError(VoxgraphClientError):
    """The audio to stream could not be read or decoded here."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LiveOptions:
    """How a session is set up and how audio is fed to it.

    Turn detection is the server's VAD (`threshold`, `prefix_padding_ms`,
    `silence_duration_ms`) unless `manual_commit_s` is set: then it is off and the
    client commits the buffer every `manual_commit_s` seconds of audio.
    """

    rate: int = DEFAULT_RATE
    """PCM16 sample rate sent to the server: 24000 (OpenAI's) or 16000."""
    manual_commit_s: float | None = None
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    language: str | None = None
    """ISO 639-1 code of the audio's language (default: the model's)."""
    model: str | None = None
    """Transcription model name (default: the service's)."""
    identify: bool = False
    """Name speakers from the service's whole library of enrolled speakers."""
    known_speaker_names: Sequence[str] = ()
    """Enrolled speakers to look for, by name."""
    speed: float = 1.0
    """Times real time: 2.0 streams a minute of audio in 30 s of wall clock."""
    chunk_ms: int = 100
    """Audio per `input_audio_buffer.append` event."""

    def __post_init__(self) -> None:
        if self.rate not in RATES:
            raise ValueError(f"rate must be one of {RATES}, got {self.rate}")
        if self.manual_commit_s is not None and self.manual_commit_s <= 0:
            raise ValueError("manual_commit_s must be positive")
        if not self.speed > 0:
            raise ValueError("speed must be positive")
        if not 10 <= self.chunk_ms <= 1000:
            raise ValueError("chunk_ms must be between 10 and 1000")

    @property
    def server_vad(self) -> bool:
        return self.manual_commit_s is None


def session_update(options: LiveOptions, event_id: str | None = None) -> dict[str, Any]:
    """The `session.update` client event that sets a transcription session up."""
    transcription: dict[str, Any] = {}
    if options.model:
        transcription["model"] = options.model
    if options.language:
        transcription["language"] = options.language
    turn_detection: dict[str, Any] | None = None
    if options.server_vad:
        turn_detection = {
            "type": "server_vad",
            "threshold": options.threshold,
            "prefix_padding_ms": options.prefix_padding_ms,
            "silence_duration_ms": options.silence_duration_ms,
        }
    session: dict[str, Any] = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": options.rate},
                "turn_detection": turn_detection,
                "transcription": transcription,
            }
        },
    }
    if options.identify or options.known_speaker_names:
        speakers: dict[str, Any] = {"identify": bool(options.identify)}
        if options.known_speaker_names:
            speakers["known_speaker_names"] = list(options.known_speaker_names)
        session["speakers"] = speakers
    event: dict[str, Any] = {"type": "session.update", "session": session}
    if event_id:
        event["event_id"] = event_id
    return event


def realtime_url(base_url: str | None = None, api_key_in_query: str | None = None) -> str:
    """`ws(s)://host[:port][/prefix]/v1/realtime?intent=transcription` from a service URL.

    `http` becomes `ws` and `https` `wss`; a `ws(s)://` URL is taken as the service
    root too. The key goes in the query only when asked (browsers cannot send headers).
    """
    parts = urlsplit((base_url or env_url()).rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {base_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(REALTIME_PATH):
        path += REALTIME_PATH
    query = {"intent": "transcription"}
    if api_key_in_query:
        query["api_key"] = api_key_in_query
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


# --------------------------------------------------------------------------- audio


def pcm16_from_float(samples: Any, src_rate: int, rate: int) -> bytes:
    """float samples in [-1, 1] (a numpy array) at `src_rate` -> PCM16 LE mono at `rate`."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if src_rate != rate and x.size:
        import soxr

        x = soxr.resample(x, src_rate, rate)
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def load_pcm16(audio: AudioInput, rate: int = DEFAULT_RATE) -> bytes:
    """An audio file (path, bytes or binary file) as PCM16 little-endian mono at `rate`.

    With the server install present, the service's own decoder reads any format it
    accepts (to 16 kHz mono, then resampled to `rate`); the client-only install
    reads PCM WAV with the standard library. Raises `AudioFileError`.
    """
    try:
        data = _upload(audio, None).read()
    except OSError as e:
        raise AudioFileError(f"{getattr(e, 'filename', None) or audio}: {e.strerror or e}") from e
    if not data:
        raise AudioFileError("empty file: it holds no bytes")
    try:
        from voxgraph.audio import decode_audio
        from voxgraph.errors import VoxgraphError
    except ImportError:  # the client-only install: numpy, soundfile and PyAV are absent
        return _wav_pcm16(data, rate)
    try:
        samples = decode_audio(data)
    except VoxgraphError as e:
        raise AudioFileError(e.message) from e
    return pcm16_from_float(samples, 16_000, rate)


def _wav_pcm16(data: bytes, rate: int) -> bytes:
    """PCM WAV -> PCM16 LE mono at `rate`, standard library only (linear resampling)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, src_rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise AudioFileError(
            f"not a PCM WAV file ({e}); this client-only install reads PCM WAV only: "
            "convert it (ffmpeg -i in -ac 1 -ar 24000 out.wav) or install voxgraph[server]"
        ) from e
    samples = _int16_samples(frames, width)
    if channels > 1:
        n = len(samples) // channels
        samples = array.array(
            "h", (sum(samples[i * channels : (i + 1) * channels]) // channels for i in range(n))
        )
    out = _resample_linear(samples, src_rate, rate)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _int16_samples(frames: bytes, width: int) -> array.array:
    """Interleaved little-endian integer PCM of any width as native int16 (top 16 bits)."""
    if width == 1:  # unsigned 8-bit
        return array.array("h", ((b - 128) << 8 for b in frames))
    if width not in (2, 3, 4):
        raise AudioFileError(f"unsupported WAV sample width: {8 * width} bits")
    if width > 2:  # keep each sample's two most significant bytes
        top = bytearray(len(frames) // width * 2)
        top[0::2] = frames[width - 2 :: width]
        top[1::2] = frames[width - 1 :: width]
        frames = bytes(top)
    out = array.array("h")
    out.frombytes(frames[: len(frames) // 2 * 2])
    if sys.byteorder == "big":
        out.byteswap()
    return out


def _resample_linear(x: array.array, src: int, dst: int) -> array.array:
    if src == dst or not x:
        return x
    n_out = len(x) * dst // src
    step = src / dst
    last = len(x) - 1
    out = array.array("h", bytes(2 * n_out))
    for j in range(n_out):
        pos = j * step
        i = int(pos)
        a = x[i]
        b = x[i + 1] if i < last else a
        out[j] = round(a + (b - a) * (pos - i))
    return out


def pcm_chunks(pcm: bytes, rate: int, chunk_ms: int) -> list[bytes]:
    """PCM16 mono cut into `chunk_ms` pieces (the last one shorter)."""
    size = rate * 2 * chunk_ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class LiveEvent:
    """One server event as it arrived: `type`, the whole event in `data`, and `t`,
    seconds from the session's opening (monotonic clock) to its arrival."""

    type: str
    data: dict[str, Any]
    t: float

    @property
    def item_id(self) -> str | None:
        value = self.data.get("item_id")
        return value if isinstance(value, str) else None

    @property
    def error(self) -> dict[str, Any]:
        """The `error` object of an `error` or `...transcription.failed` event (else {})."""
        err = self.data.get("error")
        return err if isinstance(err, dict) else {}


def parse_event(message: str | bytes, t: float) -> LiveEvent:
    """A server message as a `LiveEvent`; anything but a JSON object with a type is refused."""
    try:
        data = json.loads(message)
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise VoxgraphClientError(f"the server sent a message that is not JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise VoxgraphClientError(f"the server sent an event without a type: {str(data)[:200]}")
    return LiveEvent(data["type"], data, t)


# --------------------------------------------------------------------------- session


@dataclass
class SendStats:
    """What the sender did, for callers that measure: audio sent and how late it was."""

    audio_s: float = 0.0
    """Seconds of audio sent so far."""
    max_lag_s: float = 0.0
    """The most a chunk went out after its wall-clock due time (real time / speed)."""
    started_t: float | None = None
    """When the first chunk was due (seconds from the session's opening)."""
    finished_t: float | None = None
    """When the last chunk went out."""
    commits: list[tuple[str, float]] = field(default_factory=list)
    """(client event_id, when sent) of every `input_audio_buffer.commit`."""


class LiveSession:
    """One open realtime transcription session (from `LiveClient.connect`)."""

    def __init__(self, ws: ClientConnection, options: LiveOptions, opened: float):
        self.ws = ws
        self.options = options
        self.opened = opened
        self.session: dict[str, Any] = {}
        """The effective configuration, from the server's `session.updated`."""
        self.stats = SendStats()
        self._ids = itertools.count(1)
        self._closing = False

    def now(self) -> float:
        """Seconds since the session opened (the clock of `LiveEvent.t`)."""
        return time.monotonic() - self.opened

    def _event_id(self) -> str:
        return f"client_evt_{next(self._ids)}"

    async def send(self, event: Mapping[str, Any]) -> None:
        """Send one client event. Raises `SessionClosed` when the server has ended the session."""
        try:
            await self.ws.send(json.dumps(event, separators=(",", ":")))
        except ConnectionClosed as e:
            if self._closing:
                raise
            raise _closed(e) from e

    async def append(self, pcm: bytes) -> None:
        """Send PCM16 LE mono audio at the session's rate (`input_audio_buffer.append`)."""
        audio = base64.b64encode(pcm).decode("ascii")
        await self.send({"type": "input_audio_buffer.append", "audio": audio})
        self.stats.audio_s += len(pcm) / (2 * self.options.rate)

    async def commit(self, event_id: str | None = None) -> str:
        """Commit the buffer as one item; returns the commit's client event_id."""
        event_id = event_id or self._event_id()
        # Stamped before sending: any answer arrives later than this.
        self.stats.commits.append((event_id, self.now()))
        await self.send({"type": "input_audio_buffer.commit", "event_id": event_id})
        return event_id

    async def clear(self) -> str:
        """Drop the uncommitted audio (`input_audio_buffer.clear`)."""
        event_id = self._event_id()
        await self.send({"type": "input_audio_buffer.clear", "event_id": event_id})
        return event_id

    async def recv(self) -> LiveEvent:
        """The next server event. Raises `SessionClosed` when the server ends the session."""
        try:
            message = await self.ws.recv()
        except ConnectionClosed as e:
            if self._closing:
                raise
            raise _closed(e) from e
        return parse_event(message, self.now())

    async def close(self) -> None:
        """Close with 1000 (normal closure)."""
        self._closing = True
        await self.ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _closed(e: ConnectionClosed) -> SessionClosed:
    if e.rcvd is None:
        return SessionClosed(1006)
    return SessionClosed(e.rcvd.code, e.rcvd.reason)


# --------------------------------------------------------------------------- client


class LiveClient:
    """Opens realtime transcription sessions on a voxgraph service."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        open_timeout: float = 10.0,
        finish_timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
    ):
        """
        Args:
            base_url: the service root (http(s):// or ws(s)://, no `/v1`); default
                `VOXGRAPH_URL` or http://127.0.0.1:8000.
            api_key: sent as `Authorization: Bearer`; default the first key of
                `VOXGRAPH_API_KEY`.
            open_timeout: seconds for the connection, the handshake and the
                server's `session.updated`.
            finish_timeout: seconds to wait, once all audio is sent, for the last
                committed item's transcript.
        """
        self.base_url = (base_url or env_url()).rstrip("/")
        self.url = realtime_url(self.base_url)
        self.api_key = api_key if api_key is not None else env_api_key()
        self.open_timeout = open_timeout
        self.finish_timeout = finish_timeout
        self._headers = {**(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    async def connect(self, options: LiveOptions | None = None) -> LiveSession:
        """Open a session and configure it: returns once the server sent `session.updated`.

        Server events before it (`session.created`) are kept in `session.session`
        only. Raises `APIConnectionError`, an `APIError` for an HTTP answer to the
        handshake, `SessionClosed`, or `VoxgraphClientError` for an `error` answer.
        """
        options = options or LiveOptions()
        try:
            ws = await connect(
                self.url,
                additional_headers=self._headers,
                user_agent_header="voxgraph-live-client",
                open_timeout=self.open_timeout,
                proxy=None,  # loopback and LAN services: never through an environment proxy
                compression=None,  # base64 PCM barely compresses; spare both ends the CPU
                max_size=16 * 1024 * 1024,
            )
        except InvalidStatus as e:
            r = e.response
            raise _error_from(
                httpx.Response(
                    r.status_code, headers=list(r.headers.raw_items()), content=bytes(r.body)
                )
            ) from e
        except TimeoutError as e:
            raise APITimeoutError(f"{self.url}: no answer in {self.open_timeout:g} s") from e
        except InvalidURI as e:
            raise VoxgraphClientError(f"{self.url}: not a WebSocket URL ({e})") from e
        except (OSError, InvalidHandshake) as e:
            raise APIConnectionError(f"{self.url}: {e}") from e
        session = LiveSession(ws, options, time.monotonic())
        try:
            await session.send(session_update(options, session._event_id()))
            await asyncio.wait_for(_configured(session), self.open_timeout)
        except asyncio.TimeoutError as e:
            await session.close()
            raise APITimeoutError(
                f"{self.url}: no session.updated in {self.open_timeout:g} s"
            ) from e
        except BaseException:
            await session.close()
            raise
        return session

    async def stream_file(
        self, audio: AudioInput, options: LiveOptions | None = None
    ) -> AsyncIterator[LiveEvent]:
        """Decode `audio` and stream it as `stream` does."""
        options = options or LiveOptions()
        pcm = await asyncio.to_thread(load_pcm16, audio, options.rate)
        async for event in self.stream(pcm, options):
            yield event

    async def stream(
        self,
        pcm: bytes,
        options: LiveOptions | None = None,
        *,
        session: LiveSession | None = None,
    ) -> AsyncIterator[LiveEvent]:
        """Stream PCM16 mono (at `options.rate`) at real time; yield server events as they come.

        Ends once the tail is committed and every committed item has its
        `completed` or `failed` event, then closes the session. The empty-buffer
        answer to the tail commit is not yielded. Pass an open `session` (from
        `connect`) to read its `stats` while or after streaming.
        """
        own = session is None
        session = session or await self.connect(options)
        options = session.options
        queue: asyncio.Queue[LiveEvent | BaseException | None] = asyncio.Queue()
        done = _Completion()
        reader = asyncio.create_task(_read(session, queue))
        sender = asyncio.create_task(_send_paced(session, pcm, done))
        sender.add_done_callback(lambda _: queue.put_nowait(None))  # wakes the loop below
        try:
            deadline = grace_until = None
            while True:
                if sender.done():
                    sender.result()  # its failure (the server closed, ...) surfaces here
                    now = time.monotonic()
                    deadline = deadline or now + self.finish_timeout
                    if not done.finished():
                        grace_until = None
                    elif grace_until is None:
                        # A server-VAD commit racing the tail commit, a late delta: a moment.
                        grace_until = now + SETTLE_S
                    remaining = (grace_until or deadline) - now
                    if remaining <= 0:
                        if grace_until is not None:
                            return
                        raise APITimeoutError(
                            f"{self.url}: no transcript for {sorted(done.pending())} "
                            f"{self.finish_timeout:g} s after the audio ended"
                        )
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        continue
                else:
                    item = await queue.get()
                if item is None:
                    continue
                if isinstance(item, BaseException):
                    raise item
                if done.see(item):
                    yield item
        finally:
            for task in (sender, reader):
                task.cancel()
            await asyncio.gather(sender, reader, return_exceptions=True)
            if own:
                await session.close()


async def _configured(session: LiveSession) -> None:
    """Read until `session.updated` (keeping the configuration); an `error` answer raises."""
    while True:
        event = await session.recv()
        if event.type in (SESSION_CREATED, SESSION_UPDATED):
            session.session = event.data.get("session") or {}
            if event.type == SESSION_UPDATED:
                return
        elif event.type == ERROR:
            # A refused connection (API key, origin, session limit) is an `error` event
            # and then a close: raise the close, with the event's message as its reason.
            try:
                await asyncio.wait_for(session.recv(), 2.0)
            except SessionClosed as closed:
                raise SessionClosed(closed.code, error_text(event)) from None
            except asyncio.TimeoutError:
                pass
            raise VoxgraphClientError(f"session.update refused: {error_text(event)}")


class _Completion:
    """When a stream is over: the tail commit answered and every committed item done."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.resolved: set[str] = set()
        self.tail_id: str | None = None
        self.tail_sent_t: float | None = None
        self.tail_answered = False

    def tail(self, event_id: str | None, t: float) -> None:
        """The sender's last word: its tail commit's id (None: nothing left to commit)."""
        self.tail_id, self.tail_sent_t = event_id, t
        self.tail_answered = event_id is None

    def see(self, event: LiveEvent) -> bool:
        """Track one event; False for the tail commit's empty-buffer answer (not shown)."""
        if event.type == COMMITTED and event.item_id:
            self.committed.append(event.item_id)
            if self.tail_sent_t is not None and event.t >= self.tail_sent_t:
                self.tail_answered = True
        elif event.type in (COMPLETED, FAILED, ERROR) and event.item_id:
            # An item's end: its transcript, or its failure (`failed`, or `error` with item_id)
            self.resolved.add(event.item_id)
        elif event.type == ERROR and self.tail_id and event.error.get("event_id") == self.tail_id:
            self.tail_answered = True
            return event.error.get("code") not in COMMIT_EMPTY_CODES
        return True

    def pending(self) -> set[str]:
        return set(self.committed) - self.resolved

    def finished(self) -> bool:
        return self.tail_answered and not self.pending()


async def _read(session: LiveSession, queue: asyncio.Queue[LiveEvent | BaseException | None]):
    """Every server event onto `queue`, stamped on arrival; then the reason it stopped."""
    try:
        while True:
            queue.put_nowait(await session.recv())
    except BaseException as e:  # handed to the consumer, which re-raises it
        queue.put_nowait(e)


async def _send_paced(session: LiveSession, pcm: bytes, done: _Completion) -> None:
    """Chunks sent when they would have been spoken: chunk k once (k + 1) chunks of audio
    lasted (divided by `speed`) on the wall clock; a client commit every
    `manual_commit_s` of audio when turn detection is off; then the tail commit."""
    options, stats = session.options, session.stats
    chunk_s = options.chunk_ms / 1000
    bytes_per_s = 2 * options.rate
    every = None if options.server_vad else options.manual_commit_s * bytes_per_s
    start = time.monotonic()
    stats.started_t = start - session.opened
    uncommitted = sent = 0
    for chunk in pcm_chunks(pcm, options.rate, options.chunk_ms):
        sent += len(chunk)
        due = start + sent / bytes_per_s / options.speed
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            stats.max_lag_s = max(stats.max_lag_s, -wait)
        await session.append(chunk)
        uncommitted += len(chunk)
        if every is not None and uncommitted >= every - bytes_per_s * chunk_s / 2:
            await session.commit()
            uncommitted = 0
    stats.finished_t = session.now()
    if every is not None and uncommitted == 0:
        done.tail(None, session.now())
        return
    tail_id = session._event_id()
    done.tail(tail_id, session.now())  # before the send: its answer may come at once
    await session.commit(tail_id)


def _error_text(error: Mapping[str, Any]) -> str:
    message = str(error.get("message") or "the server refused the request")
    code = error.get("code") or error.get("type")
    return f"{message} ({code})" if code else message


def error_text(event: LiveEvent) -> str:
    """A one-line description of an `error` or `...transcription.failed` event."""
    return _error_text(event.error)
