"""Audio bytes -> 16 kHz mono float32, with limits and typed errors.

Decoding is done once, in the ingress, entirely in memory: no temporary files
and no subprocesses, so a failed request leaves nothing behind. libsndfile
(via soundfile) handles WAV/FLAC/OGG/Opus/MP3 and similar; anything it cannot
open goes to FFmpeg (via PyAV) for containers such as m4a, mp4, webm and video.

Both paths decode in blocks and count samples as they go, so audio longer than
`max_duration_s` is refused early: a few hundred kilobytes of compressed
silence that would expand to hours of samples never gets fully decoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import numpy as np
import soundfile as sf
import soxr

from voxgraph.errors import AudioTooLong, EmptyAudio, UndecodableAudio, UnsupportedMediaType
from voxgraph.types import SAMPLE_RATE

__all__ = ["SUPPORTED_FORMATS", "decode_audio", "encode_wav"]

SUPPORTED_FORMATS = (
    "WAV (8/16/24/32-bit PCM, float), FLAC, MP3, OGG Vorbis, Opus, M4A/AAC, "
    "MP4, WebM/MKV and other common audio or video files with an audio track"
)

# libsndfile reports this frame count when the header does not say (e.g. a
# streamed FLAC with total_samples = 0).
_UNKNOWN_FRAMES = 2**63 - 1

# Block size in samples (all channels together): bounds the memory of one read
# whatever the channel count.
_BLOCK_SAMPLES = 1 << 20


class _TrySoundfileFailed(Exception):
    """libsndfile could not open or read the bytes; the PyAV path gets a go."""


class _Decoded:
    """Accumulates mono 16 kHz blocks while enforcing the duration limit."""

    def __init__(self, max_duration_s: float | None):
        self.max_duration_s = max_duration_s
        self.input_seconds = 0.0
        self.blocks: list[np.ndarray] = []

    def check_header(self, frames: int, rate: int) -> None:
        if self.max_duration_s is not None and frames / rate > self.max_duration_s:
            raise _too_long(self.max_duration_s, frames / rate)

    def count(self, frames: int, rate: int) -> None:
        # Counted on the input side before resampling, so a bomb is stopped
        # without paying for the resampler on audio that will be thrown away.
        self.input_seconds += frames / rate
        if self.max_duration_s is not None and self.input_seconds > self.max_duration_s:
            raise _too_long(self.max_duration_s)

    def add(self, mono: np.ndarray) -> None:
        if not np.isfinite(mono).all():
            raise UndecodableAudio(
                "audio contains NaN or infinite sample values; "
                "re-export it as 16-bit PCM WAV or FLAC"
            )
        if mono.size:
            self.blocks.append(mono.astype(np.float32, copy=False))

    def result(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros(0, dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(self.blocks), dtype=np.float32)


def decode_audio(data: bytes, *, max_duration_s: float | None = None) -> np.ndarray:
    """Decode any common audio/video bytes to a 16 kHz mono float32 1-D array.

    Channels are averaged. Raises `EmptyAudio` for no bytes, `UndecodableAudio`
    for bytes that are not decodable audio (or contain NaN/Inf samples),
    `UnsupportedMediaType` for a media file without an audio stream and
    `AudioTooLong` when the audio lasts longer than `max_duration_s`. Audio
    that decodes to zero samples is returned as an empty array, not an error.
    """
    if not data:
        raise EmptyAudio("empty file: the upload contains no bytes")
    if max_duration_s is not None and max_duration_s <= 0:
        raise ValueError("max_duration_s must be positive")
    try:
        return _decode_soundfile(data, max_duration_s)
    except _TrySoundfileFailed as sf_error:
        return _decode_av(data, max_duration_s, sf_error)


def encode_wav(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16"
) -> bytes:
    """Encode (frames,) or (frames, channels) samples as WAV bytes.

    `subtype` is any libsndfile WAV subtype ("PCM_16", "PCM_24", "FLOAT", ...).
    """
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples), sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _too_long(limit_s: float, actual_s: float | None = None) -> AudioTooLong:
    actual = f" ({actual_s:.1f} s)" if actual_s is not None else ""
    return AudioTooLong(
        f"audio too long{actual}: the limit is {limit_s:g} s; split it into shorter files"
    )


def _undecodable(reason: str) -> UndecodableAudio:
    return UndecodableAudio(
        f"could not decode the file as audio ({reason}); supported formats: {SUPPORTED_FORMATS}"
    )


def _decode_soundfile(data: bytes, max_duration_s: float | None) -> np.ndarray:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (RuntimeError, ValueError, TypeError) as e:
        raise _TrySoundfileFailed(str(e)) from e
    with f:
        rate, channels = f.samplerate, f.channels
        if rate <= 0 or channels <= 0:
            raise _TrySoundfileFailed(f"bad header: {rate} Hz, {channels} channels")
        out = _Decoded(max_duration_s)
        # libsndfile clamps WAV/AIFF frame counts to the bytes really present
        # and FLAC/OGG store exact lengths, so those headers can refuse a bomb
        # before any decoding. MP3 lengths are estimates without a Xing
        # header; those are only counted while decoding.
        if f.frames != _UNKNOWN_FRAMES and f.format != "MP3":
            out.check_header(f.frames, rate)
        resampler = _Resampler(rate)
        block = max(1, _BLOCK_SAMPLES // channels)
        try:
            while True:
                chunk = f.read(block, dtype="float32", always_2d=True)
                if not len(chunk):
                    break
                out.count(len(chunk), rate)
                out.add(resampler(_downmix(chunk)))
        except (RuntimeError, ValueError) as e:
            # e.g. a FLAC stream without a length errors at its end: FFmpeg
            # decodes those cleanly, so retry there rather than fail.
            raise _TrySoundfileFailed(str(e)) from e
        out.add(resampler.flush())
        return out.result()


def _downmix(chunk: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging channels."""
    if chunk.shape[1] == 1:
        return np.ascontiguousarray(chunk[:, 0])
    return chunk.mean(axis=1, dtype=np.float32)


class _Resampler:
    """Streaming mono resampler to 16 kHz; identical output to a one-shot soxr call."""

    def __init__(self, rate: int):
        self.stream = (
            None
            if rate == SAMPLE_RATE
            else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        if self.stream is None:
            return mono
        return self.stream.resample_chunk(mono, last=False)

    def flush(self) -> np.ndarray:
        if self.stream is None:
            return np.zeros(0, dtype=np.float32)
        return self.stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _decode_av(data: bytes, max_duration_s: float | None, sf_error: Exception) -> np.ndarray:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise _undecodable("unrecognised or corrupt data") from e
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams})
            if not kinds:
                raise _undecodable("no streams found") from sf_error
            raise UnsupportedMediaType(
                f"no audio stream in the file (it has only {', '.join(kinds)}); "
                "upload a file with an audio track"
            )
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            # FFmpeg found an audio stream but has no decoder for its codec (e.g. a
            # WAV with an unknown format tag): bad input, not a server error.
            raise _undecodable("unsupported audio codec")
        codec = stream.codec_context.name
        out = _Decoded(max_duration_s)
        to_mono = _AvToMono()
        bad_packets = 0
        try:
            for frame in _av_frames(container, stream):
                if frame is None:
                    bad_packets += 1
                    continue
                if frame.sample_rate <= 0:
                    raise _undecodable(f"{codec} frame without a sample rate")
                out.count(frame.samples, frame.sample_rate)
                for mono in to_mono(frame):
                    out.add(mono)
            for mono in to_mono.flush():
                out.add(mono)
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if not out.blocks:
                raise _undecodable(f"{codec}: {e}") from e
            # Cut short mid-stream: keep what decoded, as libsndfile does for
            # a WAV shorter than its header says.
        if bad_packets and not out.blocks:
            raise _undecodable(f"every {codec} packet was corrupt")
        return out.result()


def _av_frames(
    container: av.container.InputContainer, stream: av.AudioStream
) -> Iterator[av.AudioFrame | None]:
    """Decoded frames of `stream`; None for a packet the decoder rejected.

    Decoding packet by packet lets one corrupt packet be skipped instead of
    failing the whole file.
    """
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            yield None
            continue
        yield from frames


class _AvToMono:
    """PyAV frames -> 16 kHz mono float32 blocks.

    FFmpeg resamples (keeping every channel) and channels are averaged here:
    FFmpeg's own mono downmix uses a -3 dB pan law, which would make the same
    stereo audio 1.41x louder than the averaging done on the libsndfile path.

    The resampler's output is packed (interleaved) float, one plane whatever
    the channel count: PyAV's `to_ndarray` on a planar frame with more than 8
    channels reads past its plane pointers and crashes the process (a corrupt
    AAC frame or WAV header can claim 22 or 31 channels).
    """

    def __init__(self) -> None:
        self.resampler: av.AudioResampler | None = None
        self.key: tuple[str, str, int] | None = None

    def __call__(self, frame: av.AudioFrame) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.key:
            # A stream may change layout or rate mid-way (e.g. HE-AAC, chained
            # Ogg); a resampler is bound to one input configuration.
            out.extend(self.flush())
            self.resampler = av.AudioResampler(format="flt", rate=SAMPLE_RATE)
            self.key = key
        assert self.resampler is not None
        out.extend(_interleaved_mean(f) for f in self.resampler.resample(frame))
        return out

    def flush(self) -> list[np.ndarray]:
        if self.resampler is None:
            return []
        frames = self.resampler.resample(None)
        self.resampler = None
        self.key = None
        return [_interleaved_mean(f) for f in frames]


def _interleaved_mean(frame: av.AudioFrame) -> np.ndarray:
    channels = len(frame.layout.channels)
    packed = frame.to_ndarray()  # flt: (1, samples * channels), interleaved
    if channels < 1 or packed.size != frame.samples * channels:
        raise _undecodable(f"inconsistent audio frame ({channels} channels)")
    samples = packed.reshape(frame.samples, channels)
    if channels == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    return samples.mean(axis=1, dtype=np.float32)
