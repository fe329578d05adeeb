"""Audio bytes -> 16 kHz mono float32, with limits and typed errors.

Decoding is done once, in the ingress, entirely in memory: no temporary files
and no subprocesses, so a failed request leaves nothing behind. libsndfile
(via soundfile) handles WAV/FLAC/OGG/Opus/MP3 and similar; anything it cannot
open goes to FFmpeg (via PyAV) for containers such as m4a, mp4, webm and video.

Both paths decode in blocks and count samples as they go, so audio longer than
`max_duration_s` is refused early: a few hundred kilobytes of compressed
silence that would expand to hours of samples never gets fully decoded.

A file cut short (an interrupted upload or copy) is refused rather than
transcribed as if complete: what decoded is compared with the duration the
header or container declares, and for Ogg and MP4, whose cut files may carry
no usable declaration, the page or box structure shows the cut.
`probe_duration` reads that declaration alone, without decoding, so the
caller can budget for the audio before paying for it.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr

from voxgraph.errors import (
    AudioTooLong,
    BadRequest,
    EmptyAudio,
    PayloadTooLarge,
    TruncatedAudio,
    UndecodableAudio,
    UnsupportedMediaType,
)
from voxgraph.types import SAMPLE_RATE

__all__ = ["SUPPORTED_FORMATS", "data_url_bytes", "decode_audio", "encode_wav", "probe_duration"]

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

    def __init__(self, max_duration_s: float | None, declared_s: float | None):
        self.max_duration_s = max_duration_s
        self.declared_s = declared_s
        self.input_seconds = 0.0
        self.blocks: list[np.ndarray] = []
        self._buf: np.ndarray | None = None
        self._filled = 0

    def check_header(self, frames: int, rate: int) -> None:
        if self.max_duration_s is not None and frames / rate > self.max_duration_s:
            raise _too_long(self.max_duration_s, frames / rate)

    def reserve(self, samples: int) -> None:
        """Decode into one array of about this many samples, from a trusted header.

        Without it, the blocks and their concatenation are both in memory at the
        end: twice the decoded size at the peak. Pages never written cost nothing.
        """
        self._buf = np.empty(max(0, samples), dtype=np.float32)

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
        if not mono.size:
            return
        buf, n = self._buf, self._filled
        if buf is not None and not self.blocks and n + mono.size <= len(buf):
            buf[n : n + mono.size] = mono
            self._filled += mono.size
        else:
            self.blocks.append(mono.astype(np.float32, copy=False))

    def result(self) -> np.ndarray:
        head = self._buf[: self._filled] if self._buf is not None else None
        if not self.blocks:
            return head if head is not None else np.zeros(0, dtype=np.float32)
        parts = [head, *self.blocks] if head is not None and head.size else self.blocks
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def decode_audio(data: bytes, *, max_duration_s: float | None = None) -> np.ndarray:
    """Decode any common audio/video bytes to a 16 kHz mono float32 1-D array.

    Channels are averaged. Raises `EmptyAudio` for no bytes, `UndecodableAudio`
    for bytes that are not decodable audio (or contain NaN/Inf samples),
    `TruncatedAudio` (a 400 too) for a file cut short of what it declares,
    `UnsupportedMediaType` for a media file without an audio stream and
    `AudioTooLong` when the audio lasts longer than `max_duration_s`. Audio
    that decodes to zero samples is returned as an empty array, not an error.
    """
    if not data:
        raise EmptyAudio("empty file: the upload contains no bytes")
    if max_duration_s is not None and max_duration_s <= 0:
        raise ValueError("max_duration_s must be positive")
    declared = _declared_seconds(data)
    try:
        out = _decode_soundfile(data, max_duration_s, declared)
    except _TrySoundfileFailed as sf_error:
        out = _decode_av(data, max_duration_s, declared, sf_error)
    _check_complete(data, out)
    return out.result()


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


def _decode_soundfile(
    data: bytes, max_duration_s: float | None, declared_s: float | None
) -> _Decoded:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (RuntimeError, ValueError, TypeError) as e:
        raise _TrySoundfileFailed(str(e)) from e
    with f:
        rate, channels = f.samplerate, f.channels
        if rate <= 0 or channels <= 0:
            raise _TrySoundfileFailed(f"bad header: {rate} Hz, {channels} channels")
        if f.format == "MP3" and declared_s is None:
            # Without a Xing/VBRI header libsndfile guesses the length from the
            # first frame's bitrate and stops reading there, silently dropping
            # the rest of a VBR stream; FFmpeg reads to the end.
            raise _TrySoundfileFailed("MP3 without a length header")
        out = _Decoded(max_duration_s, declared_s)
        # libsndfile clamps WAV/AIFF frame counts to the bytes really present
        # and FLAC/OGG store exact lengths, so those headers can refuse a bomb
        # before any decoding. MP3 lengths are estimates without a Xing
        # header; those are only counted while decoding.
        if f.frames != _UNKNOWN_FRAMES and f.format != "MP3":
            out.check_header(f.frames, rate)
            # One second over the resampled length absorbs the resampler's rounding.
            out.reserve(math.ceil(f.frames * SAMPLE_RATE / rate) + SAMPLE_RATE)
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
        return out


# --- what a file declares, read from its header or container without decoding --------


def probe_duration(data: bytes) -> float | None:
    """Seconds of audio the file declares, read from its header or container.

    Nothing is decoded, so this costs microseconds to a few milliseconds even
    for hours of audio. Returns None when the file declares no length (a raw
    MP3 or ADTS stream without a Xing/VBRI header, a live-recorded WebM, an
    Ogg of an unknown codec) and for anything that cannot be probed; it never
    raises. A streamed WAV whose size fields are placeholders reports the
    duration of the PCM bytes actually present.
    """
    if not data:
        return None
    wav = _wav_layout(data)
    if wav is not None and wav.present_s is not None:
        return wav.declared_s if wav.declared_s is not None else wav.present_s
    if data[:4] == b"OggS":
        return _ogg_seconds(data)
    start = _skip_id3v2(data)
    if data[start : start + 4] == b"fLaC":
        return _flac_seconds(data, start)
    if _mp3_header(data, start) is not None:
        return _mp3_seconds(data, start)
    return _library_seconds(data)


def _declared_seconds(data: bytes) -> float | None:
    """The length a WAV, FLAC or MP3 header declares, for checking the decoded length.

    These are read here rather than asked of libsndfile, which reports a cut
    WAV's length clamped to the bytes present. Containers opened by FFmpeg get
    theirs from `_av_declared` once open.
    """
    wav = _wav_layout(data)
    if wav is not None:
        return wav.declared_s
    start = _skip_id3v2(data)
    if data[start : start + 4] == b"fLaC":
        return _flac_seconds(data, start)
    if _mp3_header(data, start) is not None:
        return _mp3_seconds(data, start)
    return None


@dataclass(frozen=True)
class _WavLayout:
    declared_s: float | None  # None: the size field is a streaming placeholder
    present_s: float | None  # None: not PCM, so bytes do not map to seconds


# Streaming writers cannot seek back to fill in the sizes, so they leave a
# placeholder: FFmpeg 0xFFFFFFFF, SoX 0x7FFFF000, arecord 0x7FFFFFFF. No upload
# under the size limit holds that much, so any size this large means "unknown".
_WAV_SIZE_PLACEHOLDER = 0x7FFF0000

# fmt tags whose data bytes map to frames by block_align: PCM, IEEE float, A-law, mu-law.
_WAV_PCM_TAGS = frozenset({0x0001, 0x0003, 0x0006, 0x0007})


def _wav_layout(data: bytes) -> _WavLayout | None:
    """Declared and present duration of a RIFF/RF64 WAVE file; None if it is not one.

    libsndfile quietly clamps the frame count to the bytes present, so the
    declared size is read here, where a cut file still tells its full length.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64", b"BW64") or data[8:12] != b"WAVE":
        return None
    pos, fmt, ds64_size = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if cid == b"ds64" and body + 16 <= len(data):
            ds64_size = int.from_bytes(data[body + 8 : body + 16], "little")
        elif cid == b"fmt " and size >= 16 and body + 16 <= len(data):
            tag = int.from_bytes(data[body : body + 2], "little")
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            block_align = int.from_bytes(data[body + 12 : body + 14], "little")
            if tag == 0xFFFE and size >= 26 and body + 26 <= len(data):
                tag = int.from_bytes(data[body + 24 : body + 26], "little")
            fmt = (tag, rate, block_align)
        elif cid == b"data":
            if fmt is None:
                return None
            tag, rate, block_align = fmt
            if tag not in _WAV_PCM_TAGS or rate <= 0 or block_align <= 0:
                return _WavLayout(None, None)
            available = (len(data) - body) // block_align
            if size == 0xFFFFFFFF and ds64_size is not None:
                size = ds64_size  # RF64: the real size is in the ds64 chunk
            elif size >= _WAV_SIZE_PLACEHOLDER:
                return _WavLayout(None, available / rate)
            declared = size // block_align
            return _WavLayout(declared / rate, min(declared, available) / rate)
        pos = body + size + (size & 1)
    return None


def _skip_id3v2(data: bytes) -> int:
    """Offset of the first byte after any ID3v2 tags (some MP3 and FLAC files start with one)."""
    pos = 0
    while data[pos : pos + 3] == b"ID3" and pos + 10 <= len(data):
        size = 0
        for b in data[pos + 6 : pos + 10]:
            size = size << 7 | (b & 0x7F)
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)
    return pos


def _flac_seconds(data: bytes, start: int) -> float | None:
    """STREAMINFO's total_samples / sample_rate; None when the stream says 'unknown' (0)."""
    info = start + 8  # after "fLaC" and the metadata block header
    if len(data) < info + 18 or data[start + 4] & 0x7F != 0:
        return None
    word = int.from_bytes(data[info + 10 : info + 18], "big")
    rate, total = word >> 44, word & ((1 << 36) - 1)
    return total / rate if rate and total else None


# By version bits: 3 MPEG-1, 2 MPEG-2, 0 MPEG-2.5 (1 is reserved).
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# Layer III side information bytes by (MPEG-1, mono): the Xing header follows it.
_MP3_SIDE_INFO = {(True, False): 32, (True, True): 17, (False, False): 17, (False, True): 9}


@dataclass(frozen=True)
class _Mp3Frame:
    rate: int
    samples: int  # per frame
    side_info: int  # bytes of layer III side information after the 4-byte header


def _mp3_header(data: bytes, pos: int) -> _Mp3Frame | None:
    """The MPEG audio frame header at `pos`, or None if there is none."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    version, layer = data[pos + 1] >> 3 & 3, data[pos + 1] >> 1 & 3
    bitrate, rate_index = data[pos + 2] >> 4, data[pos + 2] >> 2 & 3
    if version == 1 or layer == 0 or bitrate == 15 or rate_index == 3:
        return None
    mono = data[pos + 3] >> 6 == 3
    if layer == 3:  # layer I
        samples = 384
    elif layer == 2 or version == 3:  # layer II, or layer III of MPEG-1
        samples = 1152
    else:
        samples = 576
    side = _MP3_SIDE_INFO[version == 3, mono]
    return _Mp3Frame(_MP3_RATES[version][rate_index], samples, side)


def _mp3_seconds(data: bytes, pos: int) -> float | None:
    """Duration from the first frame's Xing/Info or VBRI header; None without one.

    Without such a header an MP3 is a bare stream of frames: any length from
    the file size and bitrate would be a guess, not a declaration.
    """
    frame = _mp3_header(data, pos)
    if frame is None:
        return None
    xing = pos + 4 + frame.side_info
    if data[xing : xing + 4] in (b"Xing", b"Info") and xing + 12 <= len(data):
        flags = int.from_bytes(data[xing + 4 : xing + 8], "big")
        if not flags & 1:
            return None
        frames = int.from_bytes(data[xing + 8 : xing + 12], "big")
        # The LAME tag after a full Xing header holds the encoder delay and
        # padding, which gapless decoders drop.
        trim = 0
        lame = xing + 120
        if flags & 0xF == 0xF and lame + 24 <= len(data) and data[lame : lame + 4].isalpha():
            packed = int.from_bytes(data[lame + 21 : lame + 24], "big")
            trim = (packed >> 12) + (packed & 0xFFF)
        return max(0, frames * frame.samples - trim) / frame.rate
    vbri = pos + 36
    if data[vbri : vbri + 4] == b"VBRI" and vbri + 18 <= len(data):
        frames = int.from_bytes(data[vbri + 14 : vbri + 18], "big")
        return frames * frame.samples / frame.rate
    return None


# Box types an MP4/M4A/MOV file can start with, and those whose cut loses audio or its index.
_MP4_TOP_BOXES = frozenset({b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"wide"})
_MP4_MEDIA_BOXES = frozenset({b"moov", b"moof", b"mdat"})
# Matroska and WebM files start with an EBML header element.
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"

# An Ogg page is at most 27 + 255 + 255 * 255 bytes.
_OGG_MAX_PAGE = 65307


def _ogg_seconds(data: bytes) -> float | None:
    """Last granule position of the first logical stream, in seconds.

    Ogg has no total-length field: the granule position of the stream's last
    page is the length. Vorbis, Opus and FLAC are understood; other codecs
    give None.
    """
    if len(data) < 28 or data[5] & 0x02 == 0:  # the first page must begin a stream
        return None
    serial = data[14:18]
    segments = data[26]
    first = 27 + segments
    packet = data[first : first + (data[27] if segments else 0)]
    if packet[:7] == b"\x01vorbis" and len(packet) >= 16:
        rate, skip = int.from_bytes(packet[12:16], "little"), 0
    elif packet[:8] == b"OpusHead" and len(packet) >= 12:
        rate, skip = 48000, int.from_bytes(packet[10:12], "little")
    elif packet[:5] == b"\x7fFLAC" and len(packet) >= 30:
        rate, skip = int.from_bytes(packet[27:30], "big") >> 4, 0
    else:
        return None
    if rate <= 0:
        return None
    # Search back from the end for the stream's last complete page; a few
    # pages of other multiplexed streams may come after it.
    floor = max(0, len(data) - 16 * _OGG_MAX_PAGE)
    pos = data.rfind(b"OggS", floor)
    while pos >= 0:
        granule = int.from_bytes(data[pos + 6 : pos + 14], "little")
        if (
            data[pos + 14 : pos + 18] == serial
            and granule != 2**64 - 1  # -1: no packet ends on this page
            and _ogg_page_end(data, pos) is not None
        ):
            return max(0, granule - skip) / rate
        pos = data.rfind(b"OggS", floor, pos)
    return None


def _ogg_page_end(data: bytes, pos: int) -> int | None:
    """Offset just past the Ogg page at `pos`; None if the page runs past the end."""
    if pos + 27 > len(data):
        return None
    segments = data[pos + 26]
    body = pos + 27 + segments
    if body > len(data):
        return None
    end = body + sum(data[pos + 27 : body])
    return end if end <= len(data) else None


def _library_seconds(data: bytes) -> float | None:
    """Length from libsndfile's or FFmpeg's header parsing, where it is a declaration."""
    try:
        info = sf.info(io.BytesIO(data))
    except (RuntimeError, ValueError, TypeError):
        info = None
    if info is not None:
        # An MP3 that reaches here has no Xing/VBRI header: its frame count is a guess.
        if info.format == "MP3" or info.frames in (0, _UNKNOWN_FRAMES) or info.samplerate <= 0:
            return None
        return info.frames / info.samplerate
    # Only MP4 and Matroska declare a length FFmpeg reports as such; asking
    # FFmpeg about anything else would cost its format probing (up to 100 ms
    # on megabytes of garbage) for nothing.
    if data[4:8] not in _MP4_TOP_BOXES and data[:4] != _EBML_MAGIC:
        return None
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
            if not container.streams.audio:
                return None
            return _av_declared(container, container.streams.audio[0])
    except (av.error.FFmpegError, ValueError, OSError):
        return None


def _av_declared(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """Audio duration an MP4 or Matroska container declares; None for other formats.

    FFmpeg fills in a duration for every format, but for raw streams (ADTS,
    MPEG-TS, ...) it is estimated from the bitrate, and a Matroska file with a
    video track states only the longest track's length.
    """
    names = set(container.format.name.split(","))
    if "mp4" in names:
        if stream.duration is not None and stream.time_base:
            return float(stream.duration * stream.time_base)
        return None
    if "matroska" in names:
        tag = stream.metadata.get("DURATION")
        if tag is not None:
            return _hms_seconds(tag)
        if len(container.streams) == 1 and container.duration is not None:
            return container.duration / av.time_base
    return None


def _hms_seconds(text: str) -> float | None:
    """'HH:MM:SS.fffffffff' (Matroska's per-track DURATION tag) -> seconds."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        return None
    try:
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


# --- cut short ----------------------------------------------------------------------

# A complete file may decode a little shorter than it declares: container
# durations are rounded and count codec frames whole, and encoders pad and
# prime differently from what the header counts. Over every format, rate and
# length the tests generate (0.05 s to 10 s, 8 to 48 kHz, mono and stereo) the
# worst is 0.13 s short (AAC in Matroska at 8 kHz); a cut is refused only past
# this slack, which also absorbs writers whose size fields are slightly off.
_CUT_SLACK_S = 0.5
_CUT_SLACK_FRACTION = 0.02


def _cut_short(declared_s: float, found_s: float) -> TruncatedAudio | None:
    """The error for audio decoded short of its declared length, or None if within slack."""
    if found_s >= declared_s - max(_CUT_SLACK_S, _CUT_SLACK_FRACTION * declared_s):
        return None
    return TruncatedAudio(
        f"the file is truncated: it declares {declared_s:.1f} s of audio but only "
        f"{found_s:.1f} s is there; upload the complete file"
    )


def _check_complete(data: bytes, out: _Decoded) -> None:
    """Refuse audio that decoded short of what the file declares, or that shows a cut."""
    error = None
    if out.declared_s is not None:
        error = _cut_short(out.declared_s, out.input_seconds)
    error = error or _cut_by_structure(data, out.input_seconds)
    if error is not None:
        raise error


def _cut_by_structure(data: bytes, found_s: float | None) -> TruncatedAudio | None:
    """The error for an Ogg or MP4 file whose last page or box runs past the end.

    Complete files never end mid-page or mid-box, so such a cut is refused
    however little is missing. These checks matter where no full length is
    declared: Ogg has no length field, an MP4 whose index comes last loses
    it, and a fragmented MP4 only declares the fragments that arrived.
    """
    if data[:4] == b"OggS" and _ogg_cut(data):
        return _ends_partway("an Ogg page", found_s, " (Ogg does not declare its full duration)")
    box = _mp4_cut_box(data)
    if box is not None:
        return _ends_partway(f"its MP4 '{box}' box", found_s)
    return None


def _ends_partway(where: str, found_s: float | None, note: str = "") -> TruncatedAudio:
    found = f" after {found_s:.1f} s of audio" if found_s is not None else ""
    return TruncatedAudio(
        f"the file is truncated: it ends partway through {where}{found}{note}; "
        "upload the complete file"
    )


def _ogg_cut(data: bytes) -> bool:
    """True if the pages chain up to a last page that runs past the end of the data."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            return b"OggS".startswith(data[pos:])
        if data[pos : pos + 4] != b"OggS":
            return False  # trailing junk or corruption, not a cut
        end = _ogg_page_end(data, pos)
        if end is None:
            return True
        pos = end
    return False


def _mp4_cut_box(data: bytes) -> str | None:
    """Name of the top-level MP4 box that runs past the end of the data, if any."""
    if data[4:8] not in _MP4_TOP_BOXES:
        return None
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if size == 1:
            if pos + 16 > len(data):
                return kind.decode("latin-1") if kind in _MP4_MEDIA_BOXES else None
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            return None  # the box runs to the end of the file by definition
        if size < 8:
            return None
        if pos + size > len(data):
            return kind.decode("latin-1") if kind in _MP4_MEDIA_BOXES else None
        pos += size
    return None


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


def _decode_av(
    data: bytes, max_duration_s: float | None, declared_s: float | None, sf_error: Exception
) -> _Decoded:
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        # An MP4 cut before its index ('moov', written last by default) cannot
        # be opened at all; its box structure still shows the cut.
        cut = _cut_by_structure(data, None)
        raise (cut or _undecodable("unrecognised or corrupt data")) from e
    with container:
        if not container.streams.audio:
            if _mp4_cut_box(data) == "moov":
                # The track list itself is cut: the audio track may be the missing part.
                raise _ends_partway("its MP4 'moov' box", None)
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
        if declared_s is None:
            declared_s = _av_declared(container, stream)
        out = _Decoded(max_duration_s, declared_s)
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
            # Cut short mid-stream: keep what decoded; the caller compares it
            # with what the file declares.
        if bad_packets and not out.blocks:
            raise _undecodable(f"every {codec} packet was corrupt")
        return out


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


def data_url_bytes(url: str, *, max_bytes: int, what: str = "reference") -> bytes:
    """The payload of a base64 `data:` URL (`data:audio/wav;base64,...`), checked.

    Only base64 data URLs of audio (or octet-stream) are accepted: the clip is then
    decoded and checked like any upload.
    """
    head, sep, payload = url.strip().partition(",")
    if not sep or not head.lower().startswith("data:"):
        raise BadRequest(f"{what} must be a data URL such as 'data:audio/wav;base64,...'")
    params = head[5:].split(";")
    media = params[0].strip().lower()
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise BadRequest(
            f"{what} must be base64-encoded ('data:{media or 'audio/wav'};base64,...')"
        )
    if media and not media.startswith(("audio/", "video/", "application/octet-stream")):
        raise BadRequest(f"{what} has media type {media!r}, not audio")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise PayloadTooLarge(f"{what} is over the {max_bytes / 2**20:g} MB limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{what} is not valid base64: {e}") from e
    if not data:
        raise BadRequest(f"{what} is empty")
    return data
