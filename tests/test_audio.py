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

import av
import numpy as np
import pytest
import soundfile as sf

import voxgraph.audio as audio_module
from voxgraph.audio import SAMPLE_RATE, decode_audio, encode_wav
from voxgraph.errors import (
    AudioTooLong,
    EmptyAudio,
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


def test_truncated_wav_decodes_what_is_there():
    data = encode_wav(tone(16000))
    y = decode_audio(data[: 44 + 2 * 8000])
    assert len(y) == 8000


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


# --- encode_wav ------------------------------------------------------------------------


def test_encode_wav_roundtrip():
    x = tone(16000)
    data = encode_wav(x, subtype="FLOAT")
    assert data[:4] == b"RIFF"
    np.testing.assert_array_equal(decode_audio(data), x)
