"""voxgraph.audio: every input is generated here, nothing binary is committed.

Length tolerances: PCM, FLAC and libsndfile's own MP3/Vorbis/Opus (which carry
gapless info) must match round(duration * 16000) within 1 sample (resampler
rounding), and so do FFmpeg-made Opus in WebM. AAC may run longer by up to two
codec frames of 1024 input samples (2048 / rate s: 46 ms at 44.1 kHz, 93 ms at
22.05 kHz): in mp4/mkv the last frame's padding survives (measured +85..+322
samples at 16 kHz), raw ADTS has no gapless info so the 1024 priming samples
survive too (measured +1437 at 22.05 kHz). Never shorter than expected.
"""

from __future__ import annotations

import io
import pickle
import re
import time

import av
import numpy as np
import pytest
import soundfile as sf

import voxgraph.audio as audio_module
from voxgraph.audio import SAMPLE_RATE, decode_audio, encode_wav, probe_duration
from voxgraph.errors import (
    AudioTooLong,
    EmptyAudio,
    TruncatedAudio,
    UndecodableAudio,
    UnsupportedMediaType,
    VoxgraphError,
)

FREQ = 440.0
AMP = 0.5
DUR = 2.0


def tone(rate: int, dur: float = DUR, amp: float = AMP, freq: float = FREQ) -> np.ndarray:
    t = np.arange(round(dur * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def sf_bytes(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def av_bytes(
    fmt: str,
    codec: str | None,
    rate: int,
    x: np.ndarray | None,
    layout: str = "mono",
    video: str | None = None,
) -> bytes:
    """Mux `x` (channels, samples) with `codec` and optionally a short video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        vs = None
        if video:
            vs = c.add_stream(video, rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        if codec is not None and x is not None:
            a = c.add_stream(codec, rate=rate, layout=layout)
            for i in range(0, x.shape[1], 1000):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(x[:, i : i + 1000]), format="fltp", layout=layout
                )
                frame.sample_rate, frame.pts = rate, i
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
        if vs is not None:
            for i in range(50):
                img = np.full((64, 64, 3), i * 4, np.uint8)
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in vs.encode(None):
                c.mux(p)
    return buf.getvalue()


def best_corr(y: np.ndarray, amp: float = AMP, max_lag: int = 0) -> float:
    """Normalised correlation of the middle of `y` with the expected 16 kHz sine,
    best over lags up to `max_lag` (lossy codecs may shift by a few samples)."""
    ref = tone(SAMPLE_RATE, len(y) / SAMPLE_RATE, amp)
    margin = max(max_lag, 800)  # skip resampler/codec edge transients
    mid = y[margin:-margin]
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        r = ref[margin + lag : margin + lag + len(mid)]
        c = float(np.dot(mid, r) / (np.linalg.norm(mid) * np.linalg.norm(r) + 1e-12))
        best = max(best, c)
    return best


def peak_amplitude(y: np.ndarray) -> float:
    mid = y[800:-800]
    return float(np.sqrt(2) * np.sqrt(np.mean(mid.astype(np.float64) ** 2)))


def check_good(
    y: np.ndarray,
    dur: float = DUR,
    *,
    lossy: bool = False,
    amp: float = AMP,
    tol: int = 1,
    extra_s: float = 0.0,
) -> None:
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    expected = round(dur * SAMPLE_RATE)
    if lossy:
        assert expected - tol <= len(y) <= expected + tol + round(extra_s * SAMPLE_RATE), len(y)
        assert best_corr(y, amp, max_lag=400) > 0.9
        assert peak_amplitude(y) == pytest.approx(amp, rel=0.1)
    else:
        assert abs(len(y) - expected) <= tol, (len(y), expected)
        assert best_corr(y, amp) > 0.99
        assert peak_amplitude(y) == pytest.approx(amp, rel=0.02)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(FREQ, abs=2)


# --- good inputs through libsndfile -------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
def test_wav_any_rate(rate):
    check_good(decode_audio(encode_wav(tone(rate), rate)))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_any_sample_format(subtype):
    y = decode_audio(encode_wav(tone(44100), 44100, subtype=subtype))
    if subtype == "PCM_U8":
        # 8-bit quantisation noise (~48 dB SNR) still leaves a clean sine.
        assert best_corr(y) > 0.99
    check_good(y)


def test_stereo_is_averaged():
    x = np.stack([tone(48000, amp=0.6), np.zeros(96000, np.float32)], axis=1)
    check_good(decode_audio(encode_wav(x, 48000)), amp=0.3)


def test_six_channels_are_averaged():
    amps = [0.1, 0.2, 0.3, 0.4, 0.5, 0.3]
    x = np.stack([tone(44100, amp=a) for a in amps], axis=1)
    check_good(decode_audio(encode_wav(x, 44100, subtype="FLOAT")), amp=float(np.mean(amps)))


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "lossy"),
    [
        ("FLAC", "PCM_16", 44100, False),
        ("FLAC", "PCM_24", 16000, False),
        ("MP3", "MPEG_LAYER_III", 44100, True),
        ("MP3", "MPEG_LAYER_III", 16000, True),
        ("OGG", "VORBIS", 44100, True),
        ("OGG", "OPUS", 48000, True),
    ],
)
def test_soundfile_formats(fmt, subtype, rate, lossy):
    y = decode_audio(sf_bytes(tone(rate), rate, fmt, subtype))
    # libsndfile writes and reads gapless info: no padding survives, even for MP3.
    check_good(y, lossy=lossy)


def test_flac_stereo():
    x = np.stack([tone(48000), tone(48000)], axis=1)
    check_good(decode_audio(sf_bytes(x, 48000, "FLAC")))


# --- good inputs through PyAV (FFmpeg) --------------------------------------------------


PYAV_CASES = {
    "m4a_aac": ("ipod", "aac", 44100, "mono", None),
    "mp4_aac_stereo": ("mp4", "aac", 48000, "stereo", None),
    "adts_aac": ("adts", "aac", 22050, "mono", None),
    "webm_opus": ("webm", "libopus", 48000, "mono", None),
    "webm_vp8_opus": ("webm", "libopus", 48000, "stereo", "libvpx"),
    "mp4_h264_aac": ("mp4", "aac", 44100, "mono", "libx264"),
    "mkv_h264_aac_stereo": ("matroska", "aac", 44100, "stereo", "libx264"),
}


@pytest.mark.parametrize("case", PYAV_CASES)
def test_pyav_containers(case):
    fmt, codec, rate, layout, video = PYAV_CASES[case]
    channels = 2 if layout == "stereo" else 1
    data = av_bytes(fmt, codec, rate, np.stack([tone(rate)] * channels), layout, video)
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(data))  # proves this input really takes the FFmpeg path
    check_good(decode_audio(data), lossy=True, extra_s=2048 / rate if codec == "aac" else 0)


def test_pyav_stereo_averaged_like_soundfile():
    # FFmpeg's own mono downmix would give 0.707 * (L + R); we average instead.
    x = np.stack([tone(48000, amp=0.6), np.zeros(96000, np.float32)])
    y = decode_audio(av_bytes("webm", "libopus", 48000, x, "stereo"))
    check_good(y, lossy=True, amp=0.3)


def test_video_without_audio_is_415():
    data = av_bytes("mp4", None, 0, None, video="mpeg4")
    with pytest.raises(UnsupportedMediaType, match="no audio stream") as info:
        decode_audio(data)
    assert info.value.status == 415


def test_flac_of_unknown_length_falls_back_to_ffmpeg():
    # A streamed FLAC (total_samples = 0) makes libsndfile fail at its end.
    data = flac_with_total_samples(sf_bytes(tone(16000), 16000, "FLAC"), 0)
    check_good(decode_audio(data))


# --- odd but valid ------------------------------------------------------------------


def test_zero_samples_is_empty_not_error():
    y = decode_audio(encode_wav(np.zeros(0, np.float32)))
    assert y.dtype == np.float32 and y.shape == (0,)


def test_wav_header_claims_more_than_is_there():
    data = bytearray(encode_wav(tone(16000)))
    i = data.find(b"data")
    data[i + 4 : i + 8] = (0x7FFFFF00).to_bytes(4, "little")
    data[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    # Refused as too long if the header were trusted; libsndfile clamps it instead.
    check_good(decode_audio(bytes(data), max_duration_s=10))


def test_truncated_wav_is_refused():
    data = encode_wav(tone(16000))
    with pytest.raises(TruncatedAudio, match=r"truncated.*declares 2\.0 s.*only 0\.5 s"):
        decode_audio(data[: 44 + 2 * 8000])


def test_exactly_at_limit_is_accepted():
    assert len(decode_audio(encode_wav(tone(16000)), max_duration_s=DUR)) == 32000


# --- bad inputs ---------------------------------------------------------------------


def test_empty_bytes():
    with pytest.raises(EmptyAudio, match="empty") as info:
        decode_audio(b"")
    assert info.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        np.random.default_rng(0).bytes(5000),
        np.random.default_rng(1).bytes(100_000),
        b"this is not a wav file, just text\n" * 20,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        encode_wav(tone(16000))[:30],
    ],
    ids=["one_byte", "random_5k", "random_100k", "text", "riff_stub", "truncated_header"],
)
def test_not_audio(data):
    with pytest.raises(UndecodableAudio, match="could not decode") as info:
        decode_audio(data)
    assert info.value.status == 400
    assert "WAV" in info.value.message and "MP3" in info.value.message  # says what works
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_nan_inf_samples(bad, subtype):
    x = tone(16000)
    x[1234] = bad
    with pytest.raises(UndecodableAudio, match="NaN or infinite"):
        decode_audio(encode_wav(x, subtype=subtype))


def test_over_limit_from_header():
    with pytest.raises(AudioTooLong, match=r"limit is 1\.5 s") as info:
        decode_audio(encode_wav(tone(16000)), max_duration_s=1.5)
    assert info.value.status == 413


def test_over_limit_mp3_counted_while_decoding():
    with pytest.raises(AudioTooLong, match=r"limit is 1 s"):
        decode_audio(sf_bytes(tone(44100), 44100, "MP3", "MPEG_LAYER_III"), max_duration_s=1)


def test_errors_are_voxgraph_errors():
    for data, limit in [(b"", None), (b"junk", None), (encode_wav(tone(16000)), 0.5)]:
        with pytest.raises(VoxgraphError):
            decode_audio(data, max_duration_s=limit)


# --- decompression bombs ------------------------------------------------------------


def flac_with_total_samples(flac: bytes, total: int) -> bytes:
    """Rewrite STREAMINFO's 36-bit total_samples (0 means 'unknown')."""
    assert flac[:4] == b"fLaC"
    data = bytearray(flac)
    word = int.from_bytes(data[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | total
    data[18:26] = word.to_bytes(8, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def flac_bomb() -> bytes:
    """Three hours of 8 kHz silence: a few hundred kB of FLAC, 86.4 M samples."""
    buf = io.BytesIO()
    block = np.zeros(8000 * 60, np.int16)
    with sf.SoundFile(buf, "w", 8000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(180):
            f.write(block)
    data = buf.getvalue()
    assert len(data) < 1_000_000
    return data


@pytest.fixture
def decoded_seconds(monkeypatch) -> list[float]:
    """Records how much input audio decoding got through before it stopped.

    The proof that a bomb is stopped early is how little was decoded, which
    holds on a loaded machine, unlike a wall-clock comparison.
    """
    seen = [0.0]
    count = audio_module._Decoded.count

    def counting(self, frames: int, rate: int) -> None:
        seen[0] = self.input_seconds + frames / rate
        count(self, frames, rate)

    monkeypatch.setattr(audio_module._Decoded, "count", counting)
    return seen


def test_bomb_refused_from_header_before_decoding(flac_bomb, decoded_seconds):
    with pytest.raises(AudioTooLong, match=r"limit is 3600 s"):
        decode_audio(flac_bomb, max_duration_s=3600)
    assert decoded_seconds[0] == 0.0  # the header alone refused it


def test_bomb_without_length_refused_while_decoding(flac_bomb, decoded_seconds):
    # No length in the header: only counting during decoding can stop it.
    bomb = flac_with_total_samples(flac_bomb, 0)
    with pytest.raises(AudioTooLong, match=r"limit is 60 s"):
        decode_audio(bomb, max_duration_s=60)
    # Stopped within one decoding block of the limit, not after three hours.
    assert 60 < decoded_seconds[0] <= 60 + audio_module._BLOCK_SAMPLES / 8000


def test_pyav_long_audio_refused_while_decoding(decoded_seconds):
    data = av_bytes("ipod", "aac", 16000, tone(16000, dur=120)[None])
    assert len(decode_audio(data)) >= 120 * SAMPLE_RATE
    decoded_seconds[0] = 0.0
    with pytest.raises(AudioTooLong, match=r"limit is 5 s"):
        decode_audio(data, max_duration_s=5)
    assert 5 < decoded_seconds[0] < 10


# --- files cut short ----------------------------------------------------------------

CUT_DUR = 4.0


class Unseekable(io.RawIOBase):
    """A write-only sink like a pipe: muxers cannot go back to fill in lengths."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:
        self.data += bytes(b)
        return len(b)


def streamed(fmt: str, codec: str, rate: int, dur: float, **options: str) -> bytes:
    """`codec` audio muxed as a live recorder would: to a sink it cannot seek back in."""
    sink = Unseekable()
    x = tone(rate, dur)[None]
    with av.open(sink, "w", format=fmt, options=options) as c:
        a = c.add_stream(codec, rate=rate, layout="mono")
        for i in range(0, x.shape[1], 1000):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x[:, i : i + 1000]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, i
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return bytes(sink.data)


def faststart_m4a(tmp_path, rate: int = 44100, dur: float = CUT_DUR) -> bytes:
    """AAC in an M4A with its index ('moov') before the audio, as streaming sites serve it.

    FFmpeg moves the index by rewriting the file, which needs a real path.
    """
    path = tmp_path / "faststart.m4a"
    x = tone(rate, dur)[None]
    with av.open(str(path), "w", format="ipod", options={"movflags": "faststart"}) as c:
        a = c.add_stream("aac", rate=rate, layout="mono")
        for i in range(0, x.shape[1], 1000):
            frame = av.AudioFrame.from_ndarray(x[:, i : i + 1000].copy(), "fltp", "mono")
            frame.sample_rate, frame.pts = rate, i
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    return data


def mp4_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, size) of a top-level MP4 box."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == kind:
            return pos, size
        pos += size
    raise AssertionError(f"no {kind!r} box")


def wav_data_size(data: bytes, size: int) -> bytes:
    """The WAV with its data chunk's size field rewritten (the bytes stay as they are)."""
    out = bytearray(data)
    i = out.find(b"data")
    out[i + 4 : i + 8] = size.to_bytes(4, "little")
    return bytes(out)


def mp3_xing_offset(data: bytes) -> int:
    """Offset of the Xing/Info tag in the first frame of a mono MPEG-1 layer III file."""
    assert data[0] == 0xFF and data[1] & 0xFE == 0xFA and data[3] >> 6 == 3, data[:4]
    assert data[21:25] in (b"Xing", b"Info")
    return 21


def mp3_without_xing(data: bytes) -> bytes:
    """A bare MP3 stream: the first frame's Xing tag is blanked, so no length is declared."""
    i = mp3_xing_offset(data)
    return data[:i] + bytes(4) + data[i + 4 :]


CUT_CASES = {
    "wav": lambda: encode_wav(tone(16000, CUT_DUR)),
    "wav_stereo_24bit_44k": lambda: encode_wav(
        np.stack([tone(44100, CUT_DUR)] * 2, axis=1), 44100, "PCM_24"
    ),
    "flac": lambda: sf_bytes(tone(44100, CUT_DUR), 44100, "FLAC"),
    "mp3": lambda: sf_bytes(tone(44100, CUT_DUR), 44100, "MP3", "MPEG_LAYER_III"),
    "mp3_ffmpeg": lambda: av_bytes("mp3", "libmp3lame", 44100, tone(44100, CUT_DUR)[None]),
    "ogg_vorbis": lambda: sf_bytes(tone(44100, CUT_DUR), 44100, "OGG", "VORBIS"),
    "ogg_opus": lambda: sf_bytes(tone(48000, CUT_DUR), 48000, "OGG", "OPUS"),
    "m4a": lambda: av_bytes("ipod", "aac", 44100, tone(44100, CUT_DUR)[None]),
    "mp4_h264_aac": lambda: av_bytes(
        "mp4", "aac", 44100, tone(44100, CUT_DUR)[None], video="libx264"
    ),
    "fragmented_mp4": lambda: streamed(
        "mp4", "aac", 48000, CUT_DUR, movflags="frag_keyframe+empty_moov"
    ),
    "fragmented_mp4_many": lambda: streamed(
        "mp4", "aac", 48000, CUT_DUR, movflags="frag_keyframe+empty_moov", frag_duration="500000"
    ),
    "webm_opus": lambda: av_bytes("webm", "libopus", 48000, tone(48000, CUT_DUR)[None]),
    "mkv_h264_aac": lambda: av_bytes(
        "matroska", "aac", 48000, tone(48000, CUT_DUR)[None], video="libx264"
    ),
}
# Formats whose header or container states the full length, so the refusal can say
# how much was expected; cut Ogg and index-last MP4 files show the cut by structure.
# A fragmented MP4 declares the fragments present: here a single one, cut in half.
STATES_LENGTH = {
    "wav",
    "wav_stereo_24bit_44k",
    "flac",
    "mp3",
    "mp3_ffmpeg",
    "fragmented_mp4",
    "webm_opus",
    "mkv_h264_aac",
}


@pytest.mark.parametrize("case", CUT_CASES)
def test_cut_short_is_refused(case):
    data = CUT_CASES[case]()
    assert probe_duration(data) == pytest.approx(CUT_DUR, abs=0.03)
    assert abs(len(decode_audio(data)) / SAMPLE_RATE - CUT_DUR) < 0.1  # complete: accepted
    with pytest.raises(TruncatedAudio) as info:
        decode_audio(data[: len(data) // 2])
    e = info.value
    assert isinstance(e, UndecodableAudio) and e.status == 400 and e.code == "truncated_audio"
    assert e.message.startswith("the file is truncated")
    if case in STATES_LENGTH:
        found = re.search(r"declares 4\.0 s of audio but only (\d+\.\d) s is there", e.message)
        assert found, e.message
        assert 0.5 < float(found[1]) < 3.5
    else:
        assert "ends partway through" in e.message


def test_truncated_audio_survives_pickling():
    # Errors cross Ray handles pickled; the HTTP layer maps the class it gets back.
    with pytest.raises(TruncatedAudio) as info:
        decode_audio(CUT_CASES["flac"]()[:20_000])
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is TruncatedAudio and again.message == info.value.message


def test_cut_faststart_m4a_says_how_long_it_should_be(tmp_path):
    data = faststart_m4a(tmp_path)
    assert probe_duration(data) == pytest.approx(CUT_DUR, abs=1e-6)
    cut = data[: len(data) * 6 // 10]
    assert probe_duration(cut) == pytest.approx(CUT_DUR, abs=1e-6)  # the index survives
    with pytest.raises(TruncatedAudio, match=r"declares 4\.0 s of audio but only \d\.\d s"):
        decode_audio(cut)


def test_cut_inside_the_mp4_index_is_truncated_not_no_audio():
    # The index lists the video track first: cut after it, the file looks video-only.
    data = CUT_CASES["mp4_h264_aac"]()
    start, size = mp4_box(data, b"moov")
    assert start > len(data) // 2  # FFmpeg writes the index last
    with pytest.raises(TruncatedAudio, match=r"partway through its MP4 'moov' box"):
        decode_audio(data[: start + size * 3 // 4])


def test_wav_header_says_60_s_but_20_s_follow():
    data = wav_data_size(encode_wav(tone(8000, 20.0), 8000), 60 * 8000 * 2)
    assert probe_duration(data) == 60.0
    with pytest.raises(TruncatedAudio, match=r"declares 60\.0 s of audio but only 20\.0 s"):
        decode_audio(data)


@pytest.mark.parametrize(
    ("declared_s", "present_s", "refused"),
    [(10, 9.6, False), (10, 9.4, True), (100, 98.1, False), (100, 97.9, True)],
)
def test_cut_slack_is_half_a_second_or_two_percent(declared_s, present_s, refused):
    # 8-bit 8 kHz mono: one byte per sample, so the cut is exact.
    full = encode_wav(tone(8000, declared_s), 8000, "PCM_U8")
    data = full[: 44 + round(present_s * 8000)]
    if refused:
        with pytest.raises(TruncatedAudio):
            decode_audio(data)
    else:
        assert len(decode_audio(data)) == round(present_s * SAMPLE_RATE)


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])
def test_streamed_wav_placeholder_sizes_are_not_a_cut(placeholder):
    # FFmpeg, arecord and SoX write these when they cannot seek back to the header.
    data = wav_data_size(encode_wav(tone(16000)), placeholder)[: 44 + 2 * 12000]
    assert probe_duration(data) == 0.75  # what the bytes hold
    assert len(decode_audio(data)) == 12000


def test_ffmpeg_wav_to_a_pipe_is_not_a_cut():
    data = streamed("wav", "pcm_s16le", 16000, CUT_DUR)
    assert data[4:8] == b"\xff\xff\xff\xff"  # FFmpeg left the sizes unknown
    assert probe_duration(data) == CUT_DUR
    cut = data[: len(data) // 2]
    assert len(decode_audio(cut)) / SAMPLE_RATE == pytest.approx(CUT_DUR / 2, abs=0.01)


NO_LENGTH_CASES = {
    "raw_mp3": lambda: mp3_without_xing(
        sf_bytes(tone(44100, CUT_DUR), 44100, "MP3", "MPEG_LAYER_III")
    ),
    "adts_aac": lambda: av_bytes("adts", "aac", 44100, tone(44100, CUT_DUR)[None]),
    "live_webm": lambda: streamed("webm", "libopus", 48000, CUT_DUR),
    "flac_of_unknown_length": lambda: flac_with_total_samples(
        sf_bytes(tone(16000, CUT_DUR), 16000, "FLAC"), 0
    ),
}


@pytest.mark.parametrize("case", NO_LENGTH_CASES)
def test_streams_that_declare_no_length_are_accepted_when_cut(case):
    data = NO_LENGTH_CASES[case]()
    assert probe_duration(data) is None
    assert abs(len(decode_audio(data)) / SAMPLE_RATE - CUT_DUR) < 0.1
    y = decode_audio(data[: len(data) // 2])
    assert abs(len(y) / SAMPLE_RATE - CUT_DUR / 2) < 0.3


# --- complete files are never taken for cut ones -----------------------------------

# (maker, probe tolerance in s or None when nothing is declared); maker(x, rate, layout)
# with x shaped (channels, samples).
NORMAL_MAKERS = {
    "wav": (lambda x, r, lay: encode_wav(x.T, r), 0.0),
    "flac": (lambda x, r, lay: sf_bytes(x.T, r, "FLAC"), 0.0),
    "mp3": (lambda x, r, lay: sf_bytes(x.T, r, "MP3", "MPEG_LAYER_III"), 0.0),
    "ogg_vorbis": (lambda x, r, lay: sf_bytes(x.T, r, "OGG", "VORBIS"), 0.0),
    "ogg_opus": (lambda x, r, lay: sf_bytes(x.T, r, "OGG", "OPUS"), 0.0),
    "ogg_flac": (lambda x, r, lay: av_bytes("ogg", "flac", r, x, lay), 0.0),
    "mp3_ffmpeg": (lambda x, r, lay: av_bytes("mp3", "libmp3lame", r, x, lay), 0.0),
    "m4a": (lambda x, r, lay: av_bytes("ipod", "aac", r, x, lay), 1e-6),
    "mp4_h264_aac": (lambda x, r, lay: av_bytes("mp4", "aac", r, x, lay, "libx264"), 1e-6),
    # Matroska rounds to milliseconds and counts AAC's last frame whole.
    "mkv_aac": (lambda x, r, lay: av_bytes("matroska", "aac", r, x, lay), 2048 / 8000),
    "webm_opus": (lambda x, r, lay: av_bytes("webm", "libopus", r, x, lay), 0.01),
    "adts_aac": (lambda x, r, lay: av_bytes("adts", "aac", r, x, lay), None),
}


def normal_grid() -> list:
    grid = []
    for kind in NORMAL_MAKERS:
        for dur in (0.05, 1.0, 2.5):
            for rate in (8000, 44100, 48000):
                if kind in ("ogg_opus", "webm_opus") and rate == 44100:
                    continue  # Opus has no 44.1 kHz mode
                if kind == "adts_aac" and dur == 0.05:
                    continue  # one ADTS frame is too little for FFmpeg to recognise the format
                grid += [
                    pytest.param(kind, dur, rate, ch, id=f"{kind}-{dur}s-{rate}-{ch}ch")
                    for ch in (1, 2)
                ]
    return grid


@pytest.mark.parametrize(("kind", "dur", "rate", "channels"), normal_grid())
def test_complete_files_are_never_refused(kind, dur, rate, channels):
    make, probe_tol = NORMAL_MAKERS[kind]
    x = np.stack([tone(rate, dur)] * channels)
    data = make(np.ascontiguousarray(x), rate, "stereo" if channels == 2 else "mono")
    y = decode_audio(data)
    declared = probe_duration(data)
    if probe_tol is None:
        assert declared is None
        return
    assert declared == pytest.approx(dur, abs=probe_tol + 1e-9)
    # Measured over this grid: never more than 0.13 s short of the declaration,
    # well inside the 0.5 s slack before a file counts as cut.
    assert len(y) / SAMPLE_RATE > declared - 0.15


# --- probe_duration -------------------------------------------------------------------


def id3v2(payload: int = 300) -> bytes:
    """An ID3v2.3 tag of `payload` bytes (syncsafe size), as taggers put before audio."""
    size = bytes((payload >> s) & 0x7F for s in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + size + bytes(payload)


@pytest.mark.parametrize(
    "make",
    [
        lambda: sf_bytes(tone(44100), 44100, "MP3", "MPEG_LAYER_III"),
        lambda: sf_bytes(tone(44100), 44100, "FLAC"),
    ],
    ids=["mp3", "flac"],
)
def test_probe_skips_id3_tags(make):
    data = id3v2() + make()
    assert probe_duration(data) == DUR
    check_good(decode_audio(data), lossy=True)


def test_probe_reads_a_vbri_header():
    data = bytearray(sf_bytes(tone(44100), 44100, "MP3", "MPEG_LAYER_III"))
    xing = mp3_xing_offset(data)
    data[xing : xing + 4] = bytes(4)  # Fraunhofer encoders write VBRI instead of Xing
    frames = 1234
    data[36:54] = b"VBRI" + (1).to_bytes(2, "big") + bytes(8) + frames.to_bytes(4, "big")
    assert probe_duration(bytes(data)) == frames * 1152 / 44100


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        np.random.default_rng(0).bytes(100_000),
        b"this is not a wav file, just text\n" * 20,
        bytes(100_000),
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        encode_wav(tone(16000))[:30],
        b"fLaC" + np.random.default_rng(1).bytes(3000),
        b"OggS" + np.random.default_rng(2).bytes(3000),
        b"\0\0\0\x18ftypmp42" + np.random.default_rng(3).bytes(3000),
        b"\x1a\x45\xdf\xa3" + np.random.default_rng(4).bytes(3000),
        id3v2() + np.random.default_rng(5).bytes(3000),
    ],
    ids=[
        "empty",
        "one_byte",
        "random",
        "text",
        "zeros",
        "riff_stub",
        "wav_header_cut",
        "flac_magic",
        "ogg_magic",
        "mp4_magic",
        "mkv_magic",
        "id3_then_garbage",
    ],
)
def test_probe_garbage_is_none(data):
    assert probe_duration(data) is None


def test_probe_never_raises():
    rng = np.random.default_rng(7)
    seeds = [
        encode_wav(tone(16000, 0.3)),
        sf_bytes(tone(16000, 0.3), 16000, "FLAC"),
        sf_bytes(tone(44100, 0.3), 44100, "MP3", "MPEG_LAYER_III"),
        sf_bytes(tone(16000, 0.3), 16000, "OGG", "VORBIS"),
        sf_bytes(tone(48000, 0.3), 48000, "OGG", "OPUS"),
        av_bytes("ipod", "aac", 16000, tone(16000, 0.3)[None]),
        av_bytes("webm", "libopus", 48000, tone(48000, 0.3)[None]),
    ]
    for seed in seeds:
        variants = [seed[:n] for n in range(0, 300, 3)]
        for _ in range(200):
            b = bytearray(seed[: rng.integers(1, len(seed) + 1)])
            for i in rng.integers(0, min(len(b), 128), size=rng.integers(1, 6)):
                b[i] = rng.integers(256)
            variants.append(bytes(b))
        for v in variants:
            seconds = probe_duration(v)
            assert seconds is None or (isinstance(seconds, float) and seconds >= 0)


def best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


MPEG1_LAYER3_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)


def hour_long_mp3() -> bytes:
    """An hour of MP3: the frames of a 10 s file repeated, the Xing count to match."""
    one = sf_bytes(np.zeros(441000, np.float32), 44100, "MP3", "MPEG_LAYER_III")
    xing = mp3_xing_offset(one)
    padding = one[2] >> 1 & 1
    info_len = 144_000 * MPEG1_LAYER3_KBPS[one[2] >> 4] // 44100 + padding
    assert one[info_len] == 0xFF  # the first audio frame follows the Info frame
    frames = int.from_bytes(one[xing + 8 : xing + 12], "big")
    head = bytearray(one[:info_len])
    head[xing + 8 : xing + 12] = (frames * 360).to_bytes(4, "big")
    return bytes(head) + one[info_len:] * 360


def test_probe_does_not_decode():
    """An hour of audio probes in milliseconds: the header is read, the audio is not."""
    wav = encode_wav(np.zeros(8000 * 3600, np.float32), 8000)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 8000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(60):
            f.write(np.zeros(8000 * 60, np.int16))
    flac = buf.getvalue()
    mp3 = hour_long_mp3()
    for data in (wav, flac, mp3):
        # The MP3's copies each keep their encoder padding: about 11 s over the hour.
        assert probe_duration(data) == pytest.approx(3600, rel=0.005)
        assert best_of(3, lambda data=data: probe_duration(data)) < 0.05


# --- encode_wav ------------------------------------------------------------------------


def test_encode_wav_roundtrip():
    x = tone(16000)
    data = encode_wav(x, subtype="FLOAT")
    assert data[:4] == b"RIFF"
    np.testing.assert_array_equal(decode_audio(data), x)


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_a_long_wav_decodes_into_one_array_without_a_second_copy(rate):
    """Decoding allocates the output once, plus a few blocks' worth, whatever the length."""
    import tracemalloc

    minutes = 8
    buf = io.BytesIO()
    noise = np.random.default_rng(1).standard_normal(minutes * 60 * rate).astype(np.float32)
    sf.write(buf, noise * 0.1, rate, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    del noise, buf
    out_bytes = minutes * 60 * SAMPLE_RATE * 4
    tracemalloc.start()
    try:
        samples = decode_audio(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(len(samples) - minutes * 60 * SAMPLE_RATE) <= 16
    # Blocks then their concatenation would need twice the output at the end.
    blocks = 4 * audio_module._BLOCK_SAMPLES * 4  # a few decode blocks in flight: 16 MB
    assert peak < out_bytes + blocks, (
        f"peak {peak / 2**20:.0f} MB, output {out_bytes / 2**20:.0f} MB"
    )
