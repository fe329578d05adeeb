"""Hostile, broken and unusual input over HTTP to the real graph: a precise answer every time.

Every input is generated here (nothing binary is committed). Each case names the
status it must get and, for an error, a word the message must contain so a user
can act on it; a 200 names the duration the audio must decode to. After the
corpus the graph must be healthy, with the same replica processes as before and
no temporary file left behind.

Limit cases (upload size, duration, decompression bombs) go to an extra Ingress
with small limits (1 MB, 60 s) over the same model replicas, so they cost
kilobytes and milliseconds instead of the shared app's 8 MB / 3 h.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import SR, deploy_ingress_variant, replica_actors, speechlike, wav_bytes

pytestmark = pytest.mark.integration

T = "/v1/audio/transcriptions"
D = "/v1/audio/diarize"
C = "/v1/audio/diarize-chunk"
LIMITS_APP, LIMITS_PREFIX = "voxgraph-limits", "/limits"
LIMIT_MB, LIMIT_S = 1, 60
MARK = "vxcorpus"  # in every uploaded filename: none may ever show up on disk
SECONDS = 2.0

# ------------------------------------------------------------------ input makers


def clip(seconds: float = SECONDS, rate: int = SR, channels: int = 1) -> np.ndarray:
    """(frames,) or (frames, channels) speech-like audio; channels differ in level."""
    x = speechlike(seconds, seed=7, sr=rate)
    if channels == 1:
        return x
    return np.stack([x * (1.0 - 0.1 * k) for k in range(channels)], axis=1)


def sf_file(fmt: str, subtype: str | None = None, rate: int = SR, x=None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, clip(rate=rate) if x is None else x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav(x: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> bytes:
    return wav_bytes(x, sr=rate, subtype=subtype)


def av_file(fmt: str, codec: str | None, rate: int = 48000, video: str | None = None) -> bytes:
    """`codec` audio (mono speech-like) in a `fmt` container, optionally with a video track."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        vs = None
        if video:
            vs = c.add_stream(video, rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        if codec:
            a = c.add_stream(codec, rate=rate, layout="mono")
            x = clip(rate=rate)[None]
            for i in range(0, x.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(x[:, i : i + 1024]), format="fltp", layout="mono"
                )
                frame.sample_rate, frame.pts = rate, i
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
        if vs is not None:
            for i in range(int(SECONDS * 25)):
                img = np.full((64, 64, 3), i * 4, np.uint8)
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in vs.encode(None):
                c.mux(p)
    return buf.getvalue()


def mkv_pcm(layout: str = "7.1.4") -> bytes:
    """16-bit PCM with many channels in Matroska: libsndfile can't open it, FFmpeg can.

    More than 8 channels once crashed the decoding process (PyAV planar frames);
    frames are built packed here for the same reason.
    """
    buf = io.BytesIO()
    channels = len(av.AudioLayout(layout).channels)
    x = clip()
    with av.open(buf, "w", format="matroska") as c:
        stream = c.add_stream("pcm_s16le", rate=SR, layout=layout)
        for i in range(0, len(x), 1024):
            block = np.repeat(x[i : i + 1024, None], channels, axis=1).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), "flt", layout)
            frame.sample_rate, frame.pts = SR, i
            for p in stream.encode(frame):
                c.mux(p)
        for p in stream.encode(None):
            c.mux(p)
    return buf.getvalue()


def patched(data: bytes, offset: int, value: int, size: int) -> bytes:
    """`data` with a little-endian header field overwritten (a lying WAV header)."""
    out = bytearray(data)
    out[offset : offset + size] = value.to_bytes(size, "little")
    return bytes(out)


def cut(data: bytes, keep: float = 0.4) -> bytes:
    """The first `keep` of a file's bytes, as an interrupted upload or copy leaves it."""
    return data[: int(len(data) * keep)]


def flac_silence(seconds: float, rate: int = 8000, length_in_header: bool = True) -> bytes:
    """Compressed silence: kilobytes that decode to `seconds` of audio."""
    buf = io.BytesIO()
    block = np.zeros(rate * 10, np.int16)
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    data = bytearray(buf.getvalue())
    if not length_in_header:
        # STREAMINFO's 36-bit total_samples = 0 ("unknown"): only counting while
        # decoding can stop it.
        word = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = word.to_bytes(8, "big")
    return bytes(data)


def multipart(parts: list[tuple[str, bytes]], boundary: str = "vxb") -> bytes:
    """A hand-made multipart body: (headers line, payload) per part, properly closed."""
    out = b""
    for disposition, payload in parts:
        out += f"--{boundary}\r\n{disposition}\r\n\r\n".encode() + payload + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def file_part(data: bytes, name: str = "file") -> tuple[str, bytes]:
    return (f'Content-Disposition: form-data; name="{name}"; filename="{MARK}.wav"', data)


def chunked(body: bytes, piece: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    """A streamed body with no Content-Length (httpx sends it chunked)."""

    def gen() -> Iterator[bytes]:
        for i in range(0, len(body), piece):
            yield body[i : i + piece]

    return gen


# ------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    needle: str = ""  # an error message must contain it (case-insensitive)
    route: str = T
    make: Callable[[], bytes] | None = None  # the `file` part; None: no file part
    fields: dict = field(default_factory=dict)
    field_name: str = "file"
    filename: str = f"{MARK}.wav"
    raw: Callable[[], bytes | Callable[[], Iterator[bytes]]] | None = None  # whole body
    content_type: str | None = None  # with `raw`
    method: str = "POST"
    duration: float | None = None  # a 200 must decode to this many seconds
    tol: float = 0.01
    limits: bool = False  # send to the small-limits Ingress


def ok(
    id: str, make: Callable[[], bytes], duration: float = SECONDS, tol: float = 0.01, route: str = T
) -> Case:
    fields = {"response_format": "verbose_json"} if route == T else {}
    return Case(id, 200, route=route, make=make, fields=fields, duration=duration, tol=tol)


def bad(id: str, status: int, needle: str, make: Callable[[], bytes] | None = None, **kw) -> Case:
    return Case(id, status, needle, make=make, **kw)


_WAV = wav(clip())
_RNG = np.random.default_rng(4)
_UNDECODABLE = "could not decode"

CASES: list[Case] = [
    # --- no audio at all
    bad("empty-body", 400, "multipart form field 'file'", raw=lambda: b""),
    bad(
        "no-file-field",
        400,
        "multipart form field 'file'",
        raw=lambda: multipart(
            [('Content-Disposition: form-data; name="response_format"', b"json")]
        ),
        content_type="multipart/form-data; boundary=vxb",
    ),
    bad("file-under-another-name", 400, "field 'file'", lambda: _WAV, field_name="audio"),
    bad("empty-file", 400, "empty", lambda: b""),
    bad("one-byte", 400, _UNDECODABLE, lambda: b"\x00"),
    bad("random-bytes", 400, _UNDECODABLE, lambda: _RNG.bytes(4096)),
    bad("text-named-wav", 400, _UNDECODABLE, lambda: b"meeting notes, not audio\n" * 40),
    bad("riff-magic-only", 400, _UNDECODABLE, lambda: b"RIFF"),
    bad("truncated-wav-header", 400, _UNDECODABLE, lambda: _WAV[:30]),
    bad("flac-magic-then-garbage", 400, _UNDECODABLE, lambda: b"fLaC" + _RNG.bytes(3000)),
    bad(
        "mp3-tag-then-garbage", 400, _UNDECODABLE, lambda: b"ID3\x03" + bytes(6) + _RNG.bytes(3000)
    ),
    bad(
        "mp4-box-then-garbage", 400, _UNDECODABLE, lambda: b"\0\0\0\x18ftypmp42" + _RNG.bytes(3000)
    ),
    # --- WAV headers that lie
    ok("wav-huge-declared-data-size", lambda: patched(_WAV, 40, 0x7FFFFFF0, 4)),
    ok("wav-huge-declared-riff-size", lambda: patched(_WAV, 4, 0xFFFFFFFF, 4)),
    ok("wav-zero-length-data", lambda: wav(np.zeros(0, np.float32)), duration=0.0),
    bad("wav-unknown-codec", 400, _UNDECODABLE, lambda: patched(_WAV, 20, 0x1234, 2)),
    bad("wav-zero-channels", 400, _UNDECODABLE, lambda: patched(_WAV, 22, 0, 2)),
    bad("wav-zero-sample-rate", 400, _UNDECODABLE, lambda: patched(_WAV, 24, 0, 4)),
    # --- files cut short: refused as such, never transcribed as if complete
    bad("wav-truncated-data", 400, "truncated", lambda: _WAV[: 44 + int(SR * SECONDS)]),
    bad(
        "wav-declares-more-than-it-holds",
        400,
        "truncated",
        lambda: patched(wav(clip(6.0)), 40, 18 * SR * 2, 4),
    ),
    *(
        bad(f"{name}-cut-short", 400, "truncated", lambda make=make: cut(make()), route=route)
        for name, make, route in (
            ("flac", lambda: sf_file("FLAC", "PCM_16", 44100), T),
            ("mp3", lambda: sf_file("MP3", "MPEG_LAYER_III", 44100), T),
            ("ogg-vorbis", lambda: sf_file("OGG", "VORBIS", 44100), T),
            ("ogg-opus", lambda: sf_file("OGG", "OPUS", 48000), T),
            ("m4a", lambda: av_file("ipod", "aac", 44100), T),
            ("webm", lambda: av_file("webm", "libopus", 48000), C),
            ("mp4-video", lambda: av_file("mp4", "aac", 44100, video="libx264"), C),
        )
    ),
    # --- sample formats
    *(
        ok(f"wav-{sub.lower()}", lambda sub=sub: wav(clip(), subtype=sub))
        for sub in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
    ),
    bad(
        "wav-nan-samples", 400, "nan", lambda: wav(np.full(SR, np.nan, np.float32), subtype="FLOAT")
    ),
    bad(
        "wav-inf-samples",
        400,
        "infinite",
        lambda: wav(
            np.r_[np.zeros(800), np.inf, np.zeros(800)].astype(np.float32), subtype="FLOAT"
        ),
    ),
    # --- channels and rates
    ok("mono", lambda: wav(clip(channels=1))),
    ok("stereo", lambda: wav(clip(channels=2))),
    ok("six-channels", lambda: wav(clip(channels=6), subtype="FLOAT"), route=C),
    ok("twelve-channels-mkv", lambda: mkv_pcm("7.1.4"), route=C),
    *(
        ok(f"rate-{rate}", lambda rate=rate: wav(clip(rate=rate), rate), tol=0.002)
        for rate in (8000, 11025, 22050, 44100, 48000, 96000)
    ),
    # --- codecs and containers
    ok("flac", lambda: sf_file("FLAC", "PCM_16", 44100)),
    ok("mp3", lambda: sf_file("MP3", "MPEG_LAYER_III", 44100), tol=0.05),
    ok("ogg-vorbis", lambda: sf_file("OGG", "VORBIS", 44100), tol=0.05),
    ok("ogg-opus", lambda: sf_file("OGG", "OPUS", 48000), tol=0.05),
    # AAC keeps up to two codec frames of padding (2048 / rate s).
    ok("m4a-aac", lambda: av_file("ipod", "aac", 44100), duration=SECONDS + 0.05, tol=0.06),
    ok("webm-opus", lambda: av_file("webm", "libopus", 48000), tol=0.05, route=C),
    ok(
        "mp4-video-with-aac",
        lambda: av_file("mp4", "aac", 44100, video="libx264"),
        duration=SECONDS + 0.05,
        tol=0.06,
        route=C,
    ),
    bad(
        "video-without-audio", 415, "no audio stream", lambda: av_file("mp4", None, video="libx264")
    ),
    # --- content edge cases
    ok("silence", lambda: wav(np.zeros(int(SR * 3), np.float32)), duration=3.0),
    ok("ten-ms-clip", lambda: wav(clip(0.01)), duration=0.01, tol=0.001),
    ok("clipped", lambda: wav(np.clip(clip() * 20, -1, 1))),
    ok("dc-offset", lambda: wav(np.clip(clip() + 0.6, -1, 1)), route=C),
    # --- limits (the small-limits Ingress: 1 MB, 60 s)
    bad(
        "over-size-limit",
        413,
        f"{LIMIT_MB} MB",
        lambda: bytes(LIMIT_MB * 1024 * 1024 + 1000),
        limits=True,
    ),
    bad(
        "over-size-limit-streamed",
        413,
        f"{LIMIT_MB} MB",
        raw=lambda: chunked(multipart([file_part(bytes(LIMIT_MB * 1024 * 1024 + 1000))])),
        content_type="multipart/form-data; boundary=vxb",
        limits=True,
    ),
    bad("over-duration-limit", 413, f"limit is {LIMIT_S} s", lambda: flac_silence(90), limits=True),
    bad(
        "decompression-bomb",
        413,
        f"limit is {LIMIT_S} s",
        lambda: flac_silence(600, length_in_header=False),
        limits=True,
    ),
    # --- options
    bad(
        "unknown-response-format",
        400,
        "response_format",
        lambda: _WAV,
        fields={"response_format": "xml"},
    ),
    bad(
        "rttm-on-transcriptions",
        400,
        "response_format",
        lambda: _WAV,
        fields={"response_format": "rttm"},
    ),
    bad(
        "srt-on-diarize",
        400,
        "response_format",
        lambda: _WAV,
        route=D,
        fields={"response_format": "srt"},
    ),
    bad("unknown-language", 400, "language", lambda: _WAV, fields={"language": "klingon"}),
    bad(
        "bad-granularity",
        400,
        "timestamp_granularities",
        lambda: _WAV,
        fields={"timestamp_granularities[]": "char"},
    ),
    bad("temperature-out-of-range", 400, "temperature", lambda: _WAV, fields={"temperature": "7"}),
    bad("diarize-not-a-bool", 400, "diarize", lambda: _WAV, fields={"diarize": "perhaps"}),
    bad(
        "negative-num-speakers",
        400,
        "num_speakers",
        lambda: _WAV,
        fields={"diarize": "true", "num_speakers": "-2"},
    ),
    bad(
        "num-speakers-not-a-number",
        400,
        "num_speakers",
        lambda: _WAV,
        fields={"diarize": "true", "num_speakers": "two"},
    ),
    bad(
        "zero-max-speakers",
        400,
        "max_speakers",
        lambda: _WAV,
        route=D,
        fields={"max_speakers": "0"},
    ),
    bad(
        "min-above-max-speakers",
        400,
        "speakers",
        lambda: _WAV,
        route=D,
        fields={"min_speakers": "5", "max_speakers": "2"},
    ),
    # --- wrong content type, malformed multipart, base64
    bad(
        "json-body",
        400,
        "multipart",
        raw=lambda: json.dumps({"file": "x"}).encode(),
        content_type="application/json",
    ),
    bad(
        "urlencoded-body",
        400,
        "uploaded file",
        raw=lambda: b"file=UklGRiQAAABXQVZF",
        content_type="application/x-www-form-urlencoded",
    ),
    bad("raw-audio-body", 400, "multipart", raw=lambda: _WAV, content_type="audio/wav"),
    bad(
        "multipart-without-boundary",
        400,
        "malformed multipart",
        raw=lambda: b"--vxb\r\n",
        content_type="multipart/form-data",
    ),
    bad(
        "multipart-garbage",
        400,
        "malformed multipart",
        raw=lambda: b"no parts here at all",
        content_type="multipart/form-data; boundary=vxb",
    ),
    bad(
        "multipart-broken-part-header",
        400,
        "malformed multipart",
        raw=lambda: multipart([("Content-Disposition form-data name=file", b"abc")]),
        content_type="multipart/form-data; boundary=vxb",
    ),
    bad(
        "multipart-unterminated",
        400,
        "field 'file'",
        raw=lambda: multipart([file_part(_WAV[:1000])])[:-12],
        content_type="multipart/form-data; boundary=vxb",
    ),
    bad(
        "base64-in-a-text-field",
        400,
        "base64",
        lambda: b"x",
        field_name="ignored",
        fields={"file": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQ=="},
    ),
    bad(
        "data-uri-in-a-text-field",
        400,
        "base64",
        lambda: b"x",
        field_name="ignored",
        fields={"file": "data:audio/wav;base64,!!not-base64!!"},
    ),
    bad("empty-filename", 400, "uploaded file", lambda: _WAV, filename=""),
    # --- wrong method or path
    bad("get-on-a-post-route", 405, "method not allowed", method="GET"),
    bad("unknown-route", 404, "not found", route="/v1/audio/speech"),
]


def test_corpus_is_big_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 40


# ------------------------------------------------------------------ fixtures and checks

# Temporary files look like tempfile's (tmpXXXXXXXX) or carry an audio name; the
# listing is of the shared temp dir, so Ray's session dirs and other tools' are ignored.
_TEMPISH = re.compile(
    r"^(tmp\w{8}|.*\.(wav|flac|mp3|ogg|opus|m4a|mp4|webm|aac|nemo))$|" + MARK, re.IGNORECASE
)


def temp_entries() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if _TEMPISH.search(n)}


@pytest.fixture(scope="module")
def limits_url(service):
    from ray import serve

    url = deploy_ingress_variant(
        service,
        LIMITS_APP,
        LIMITS_PREFIX,
        settings={"max_upload_mb": LIMIT_MB, "max_audio_s": LIMIT_S},
    )
    yield url
    serve.delete(LIMITS_APP)


@pytest.fixture(scope="module")
def baseline(service, limits_url):
    """Replica pids and temp files before the first case."""
    return {
        "pids": {app: replica_actors(app) for app in ("voxgraph", LIMITS_APP)},
        "temp": temp_entries(),
    }


def send(case: Case, base: str) -> httpx.Response:
    url = f"{base}{case.route}"
    if case.method != "POST":
        return httpx.request(case.method, url, timeout=60)
    if case.raw is not None:
        body = case.raw()
        headers = {"content-type": case.content_type} if case.content_type else {}
        content = body() if callable(body) else body
        return httpx.post(url, content=content, headers=headers, timeout=120)
    files = None
    if case.make is not None:
        files = {case.field_name: (case.filename, case.make(), "application/octet-stream")}
    if not files and not case.fields:
        return httpx.post(url, timeout=60)
    return httpx.post(url, files=files, data=case.fields, timeout=120)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(service, limits_url, baseline, case: Case):
    base = limits_url if case.limits else service.url
    t0 = time.monotonic()
    r = send(case, base)
    elapsed = time.monotonic() - t0
    assert r.status_code == case.status, f"{case.id}: {r.status_code} {r.text[:400]}"
    body = r.json()
    if case.status == 200:
        assert body["duration"] == pytest.approx(case.duration, abs=case.tol), body["duration"]
        if case.route == T:
            assert isinstance(body["text"], str)
        else:
            assert isinstance(body["segments"], list)
        return
    error = body["error"]
    assert set(error) == {"message", "type", "code"}, body
    assert case.needle.lower() in error["message"].lower(), error["message"]
    # Nothing internal leaks into a client's error: no traceback, no object repr.
    assert "Traceback" not in error["message"] and " object at 0x" not in error["message"]
    if case.limits and case.status == 413:
        # Refused early: nowhere near the time a full decode/inference would take.
        assert elapsed < 60, elapsed


def test_after_the_corpus(service, limits_url, baseline):
    """Healthy, same replica processes, nothing left in the temp dir, next request served."""
    for base in (service.url, limits_url):
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    for app, before in baseline["pids"].items():
        assert before, f"no replicas found for {app}"
        assert replica_actors(app) == before, f"{app}: a replica was replaced"
    left = temp_entries() - baseline["temp"]
    if left:
        time.sleep(2)  # another process's short-lived temp file is gone by now
        left &= temp_entries()
    assert not left, f"temporary files left behind: {sorted(left)}"
    r = httpx.post(
        f"{service.url}{C}", files={"file": ("next.wav", _WAV, "audio/wav")}, timeout=120
    )
    assert r.status_code == 200, r.text
