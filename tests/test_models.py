"""NeMo loading and the batched runners, on tiny random-weight models of the real classes.

The models are built by scripts/make_tiny_models.py into a temp dir and loaded
through `load_model` (restore_from), the path production uses for .nemo files.
Their outputs are meaningless; shapes, dtypes, timing and batching are real.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.support import load_script
from voxgraph import models as M  # imports no torch/NeMo at module level
from voxgraph.types import Diarization, Transcript

pytest.importorskip("nemo.collections.asr")
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

ROOT = Path(__file__).resolve().parent.parent
SR = 16_000


def _script():
    return load_script("make_tiny_models")


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    _script().make_models(out, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def asr(model_dir) -> M.AsrRunner:
    return M.AsrRunner(M.load_model("asr", str(model_dir / "asr.nemo"), "cpu"), "cpu")


@pytest.fixture(scope="session")
def diar(model_dir) -> M.DiarRunner:
    return M.DiarRunner(M.load_model("diarizer", str(model_dir / "diarizer.nemo"), "cpu"), "cpu")


@pytest.fixture(scope="session")
def emb(model_dir) -> M.EmbedRunner:
    model = M.load_model("embedder", str(model_dir / "embedder.nemo"), "cpu")
    return M.EmbedRunner(model, "cpu", max_batch=2)


@pytest.fixture(scope="session")
def odd_model_dir(tmp_path_factory) -> Path:
    """A diarizer and an embedder whose geometry differs from the defaults: 4x subsampling
    (40 ms frames), 3 speakers, 96-dim embeddings. Saved and restored like the others."""
    script = _script()
    cfgs = script.tiny_configs()
    sortformer = cfgs["sortformer"]
    sortformer["encoder"]["subsampling_factor"] = 4
    sortformer["sortformer_modules"].update(subsampling_factor=4, num_spks=3)
    sortformer["max_num_of_spks"] = 3
    cfgs["titanet"]["decoder"]["emb_sizes"] = 96
    out = tmp_path_factory.mktemp("odd-models")
    script.quiet_nemo()
    script.build_diarizer(sortformer, seed=3).save_to(str(out / "diarizer.nemo"))
    script.build_embedder(cfgs["titanet"], seed=3).save_to(str(out / "embedder.nemo"))
    return out


# ----------------------------------------------------------------------------- build script


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("role", ["diarizer", "embedder", "asr"])
def test_build_is_deterministic(role, tmp_path):
    script = _script()
    a = _state(script.build_model(role, workdir=tmp_path / "a", size="tiny", seed=7))
    b = _state(script.build_model(role, workdir=tmp_path / "b", size="tiny", seed=7))
    c = _state(script.build_model(role, workdir=tmp_path / "c", size="tiny", seed=8))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a if a[k].dtype.kind == "f")
    if role == "asr":
        # tokenizer.model embeds the corpus path; its pieces and scores must match.
        vocab = [(tmp_path / d / "tokenizer" / "tokenizer.vocab").read_text() for d in "ab"]
        assert vocab[0] == vocab[1]
        assert len(vocab[0].splitlines()) == 64


def test_make_models_skips_existing_and_force_rebuilds(tmp_path):
    script = _script()
    lines: list[str] = []
    paths = script.make_models(tmp_path, roles=("embedder",), log=lines.append)
    first = paths["embedder"].stat().st_mtime_ns
    script.make_models(tmp_path, roles=("embedder",), log=lines.append)
    assert paths["embedder"].stat().st_mtime_ns == first
    assert "skipped" in lines[-1]
    script.make_models(tmp_path, roles=("embedder",), force=True, log=lines.append)
    assert "EncDecSpeakerLabelModel" in lines[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["embedder.nemo"]  # no staging leftovers


def test_saved_models_restore_identically(model_dir, tmp_path):
    built = _state(_script().build_model("diarizer", workdir=tmp_path, size="tiny"))
    restored = _state(M.load_model("diarizer", str(model_dir / "diarizer.nemo"), "cpu"))
    assert all(np.array_equal(built[k], restored[k]) for k in built)


# ----------------------------------------------------------------------------- loading


def test_load_model_classes_and_eval(asr, diar, emb):
    from nemo.collections.asr.models import (
        ASRModel,
        EncDecRNNTBPEModel,
        EncDecSpeakerLabelModel,
        SortformerEncLabelModel,
    )

    assert isinstance(asr.model, ASRModel) and isinstance(asr.model, EncDecRNNTBPEModel)
    assert isinstance(diar.model, SortformerEncLabelModel)
    assert isinstance(emb.model, EncDecSpeakerLabelModel)
    for runner in (asr, diar, emb):
        assert not runner.model.training
        assert runner.model_name.endswith(".nemo")
    assert asr.model.cfg.decoding.model_type == "tdt"


def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        M.load_model("asr", str(tmp_path / "nope.nemo"), "cpu")


def test_load_model_unknown_role():
    with pytest.raises(ValueError, match="role"):
        M.load_model("vad", "x.nemo", "cpu")  # type: ignore[arg-type]


def test_spec_kinds(tmp_path):
    existing = tmp_path / "model.bin"
    existing.write_bytes(b"")
    assert M.is_local_spec("models/tiny/asr.nemo")
    assert M.is_local_spec(str(existing))
    assert not M.is_local_spec("nvidia/parakeet-tdt-0.6b-v3")


def test_pick_device():
    import torch

    assert M.pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_precision_rejected(asr):
    # int8 is a precision since issue 14 (tests/test_quantization.py); int4 is not.
    with pytest.raises(ValueError, match="precision"):
        M.AsrRunner(asr.model, "cpu", precision="int4")
    with pytest.raises(ValueError, match="precision"):
        asr.with_precision("int4")
    with pytest.raises(ValueError, match="precision"):
        M.load_runner("asr", "never-loaded.nemo", "cpu", "int4")


def test_load_runner_wraps_each_role(model_dir):
    kinds = {"asr": M.AsrRunner, "diarizer": M.DiarRunner, "embedder": M.EmbedRunner}
    for role, kind in kinds.items():
        runner = M.load_runner(role, str(model_dir / f"{role}.nemo"), "cpu", "bf16")
        assert type(runner) is kind
        assert (runner.device, runner.precision) == ("cpu", "bf16")
        assert runner.model_name.endswith(f"{role}.nemo") and not runner.model.training


def test_with_precision_shares_the_model_and_its_lock(diar):
    bf16 = diar.with_precision("bf16")
    assert (bf16.precision, diar.precision) == ("bf16", "fp32")
    # One model, one lock: the two runners never run NeMo's stateful calls at once.
    assert bf16.model is diar.model and bf16._lock is diar._lock
    assert (bf16.frame_s, bf16.num_speakers) == (diar.frame_s, diar.num_speakers)
    (d,) = bf16.diarize([_noise(2.0)])
    assert d.probs.shape == (diar.num_frames(2 * SR), 4)


def test_close_drops_the_model(model_dir):
    import gc
    import weakref

    runner = M.load_runner("embedder", str(model_dir / "embedder.nemo"), "cpu")
    model = weakref.ref(runner.model)
    runner.close()
    gc.collect()
    assert runner.model is None and model() is None


# ----------------------------------------------------------------------------- geometry


def test_geometry_read_from_the_tiny_models(asr, diar, emb):
    assert (diar.hop, diar.subsampling, diar.num_speakers) == (160, 8, 4)
    assert diar.frame_s == pytest.approx(0.08)
    assert emb.dim == 192
    assert asr.min_samples == 1280


def test_geometry_follows_the_model_not_defaults(odd_model_dir):
    diar = M.load_runner("diarizer", str(odd_model_dir / "diarizer.nemo"), "cpu")
    assert (diar.hop, diar.subsampling, diar.num_speakers) == (160, 4, 3)
    assert diar.frame_s == pytest.approx(0.04)
    for n in (160, 639, 641, 16000, 16680, 50000):
        audio = _noise(n / SR, n)
        # NeMo's own (untrimmed) frame count for one clip is what num_frames predicts.
        _, (raw,) = diar.model.diarize(
            audio=[audio], sample_rate=SR, batch_size=1, include_tensor_outputs=True, verbose=False
        )
        assert raw.shape[-2:] == (diar.num_frames(n), 3), n
        (d,) = diar.diarize([audio])
        assert d.frame_s == diar.frame_s and d.probs.shape == (diar.num_frames(n), 3)
    assert diar.diarize([np.zeros(0, np.float32)])[0].probs.shape == (0, 3)

    emb = M.load_runner("embedder", str(odd_model_dir / "embedder.nemo"), "cpu")
    assert emb.dim == 96
    assert emb.embed([_noise(1.0), _noise(0.1)]).shape == (2, 96)
    assert emb.embed([]).shape == (0, 96)


def test_model_at_another_sample_rate_is_refused(model_dir):
    model = M.load_model("diarizer", str(model_dir / "diarizer.nemo"), "cpu")
    model.preprocessor._sample_rate = 8000
    with pytest.raises(ValueError, match="8000 Hz"):
        M.DiarRunner(model, "cpu")


# ----------------------------------------------------------------------------- ASR


def test_asr_transcript_structure(asr):
    audio = _noise(3.0)
    (tr,) = asr.transcribe([audio])
    assert isinstance(tr, Transcript)
    assert tr.duration == pytest.approx(3.0)
    # The script lifts non-blank biases so the random model emits words.
    assert tr.text and tr.words and tr.segments
    for w in tr.words:
        assert type(w.start) is float and type(w.end) is float
        assert 0.0 <= w.start <= w.end <= tr.duration
    starts = [w.start for w in tr.words]
    assert starts == sorted(starts)
    assert sum(len(s.words) for s in tr.segments) == len(tr.words)
    for seg in tr.segments:
        assert 0.0 <= seg.start <= seg.end <= tr.duration
        for w in seg.words:
            assert seg.start - 1e-6 <= w.start <= seg.end + 1e-6
    assert asr.capabilities == {
        "transcribe": True,
        "timestamps": True,
        "translate": False,
        "keywords": True,
    }


def test_asr_batch_matches_single(asr):
    clips = [_noise(2.5, 1), _tone(1.3), _noise(0.4, 2), _noise(4.0, 3)]
    batched = asr.transcribe(clips)
    for clip, tr in zip(clips, batched, strict=True):
        (alone,) = asr.transcribe([clip])
        assert tr.text == alone.text
        assert [w.text for w in tr.words] == [w.text for w in alone.words]
        np.testing.assert_allclose(
            [(w.start, w.end) for w in tr.words], [(w.start, w.end) for w in alone.words], atol=1e-6
        )


def test_asr_short_clip_timestamps_stay_inside(asr):
    # NeMo pads clips under 1 s; timestamps must still refer to the caller's audio.
    (tr,) = asr.transcribe([_noise(0.3)])
    assert tr.duration == pytest.approx(0.3)
    assert all(w.end <= 0.3 + 1e-9 for w in tr.words)
    assert all(s.end <= 0.3 + 1e-9 for s in tr.segments)
    assert tr.text == " ".join(w.text for w in tr.words)


@pytest.mark.parametrize("n", [0, 1, 100, 1279])
def test_asr_empty_and_subframe(asr, n):
    out = asr.transcribe([np.zeros(n, np.float32), _noise(1.0)])
    assert out[0] == Transcript(text="", words=(), segments=(), duration=n / SR)
    assert out[1].duration == pytest.approx(1.0)


def test_asr_empty_batch_and_bad_shape(asr):
    assert asr.transcribe([]) == []
    with pytest.raises(ValueError, match="mono"):
        asr.transcribe([np.zeros((2, 16000), np.float32)])


# ----------------------------------------------------------------------------- diarization


def test_diarization_structure(diar):
    (d,) = diar.diarize([_noise(5.0)])
    assert isinstance(d, Diarization)
    assert d.frame_s == pytest.approx(0.08)
    assert d.duration == pytest.approx(5.0)
    assert d.probs.dtype == np.float32
    assert d.probs.shape == (math.ceil(5.0 / 0.08), 4)
    assert d.probs.min() >= 0.0 and d.probs.max() <= 1.0
    for t in d.turns:
        assert isinstance(t.speaker, int) and 0 <= t.speaker < 4
        assert 0.0 <= t.start < t.end <= d.duration
    assert [t.start for t in d.turns] == sorted(t.start for t in d.turns)


@pytest.mark.parametrize(
    ("n_samples", "frames"),
    [(160, 1), (1279, 1), (1281, 1), (1600, 2), (15400, 12), (16000, 13), (16680, 13), (16840, 14)],
)
def test_diarization_frame_count_matches_nemo(diar, n_samples, frames):
    # NeMo's own count is ceil(floor(n / 160) / 8), not ceil(duration / 0.08).
    assert diar.num_frames(n_samples) == frames
    (d,) = diar.diarize([_noise(n_samples / SR)])
    assert d.probs.shape == (frames, 4)


def test_diarization_batch_trims_and_matches_single(diar):
    clips = [_noise(3.0, 1), _noise(1.0425, 2), _noise(0.09, 3), _tone(2.0)]
    batched = diar.diarize(clips)
    for clip, d in zip(clips, batched, strict=True):
        (alone,) = diar.diarize([clip])
        assert d.probs.shape == alone.probs.shape == (diar.num_frames(len(clip)), 4)
        # Exact for noise; for a pure tone the STFT's reflect padding at the clip's end
        # sees the batch's zero padding instead, and per-feature normalisation spreads
        # that (~1e-3) over the clip. NeMo behaves the same with real models.
        np.testing.assert_allclose(d.probs, alone.probs, atol=1e-2)
        # NeMo's post-processing sees the batch's zero padding: the last boundary may
        # move by one 10 ms unit.
        assert [t.speaker for t in d.turns] == [t.speaker for t in alone.turns]
        np.testing.assert_allclose(
            [(t.start, t.end) for t in d.turns], [(t.start, t.end) for t in alone.turns], atol=0.011
        )


@pytest.mark.parametrize("n", [0, 1, 159])
def test_diarization_empty_and_subframe(diar, n):
    out = diar.diarize([np.zeros(n, np.float32), _noise(1.0)])
    assert out[0].turns == ()
    assert out[0].probs.shape == (0, 4) and out[0].probs.dtype == np.float32
    assert out[0].duration == n / SR
    assert out[1].probs.shape == (13, 4)


# ----------------------------------------------------------------------------- embeddings


def test_embeddings_shape_order_and_batching(emb):
    clips = [_noise(1.0, 1), _tone(3.0), _noise(2.2, 2), _tone(0.7, 440.0), _noise(5.0, 3)]
    out = emb.embed(clips)  # max_batch=2: three sub-batches, sorted by length
    assert out.shape == (5, 192) and out.dtype == np.float32
    assert np.isfinite(out).all()
    for clip, row in zip(clips, out, strict=True):
        np.testing.assert_allclose(row, emb.embed([clip])[0], atol=1e-5)
    assert np.linalg.norm(out, axis=1).min() > 0


@pytest.mark.parametrize("n", [0, 1, 100, 159, 1600])
def test_embeddings_short_clips_padded(emb, n):
    out = emb.embed([_noise(n / SR, 5), _noise(1.0)])
    assert out.shape == (2, 192)
    assert np.isfinite(out).all()


def test_embeddings_empty_list(emb):
    out = emb.embed([])
    assert out.shape == (0, 192) and out.dtype == np.float32


# ----------------------------------------------------------------------------- batch audio limit


def test_audio_groups_are_consecutive_and_bounded():
    assert M.audio_groups([], 100) == []
    assert M.audio_groups([5, 5, 5], None) == [[0, 1, 2]]
    # Padded size: items x the longest one so far in the group.
    assert M.audio_groups([40, 40, 40, 40], 100) == [[0, 1], [2, 3]]
    assert M.audio_groups([10, 60, 10], 100) == [[0], [1], [2]]
    assert M.audio_groups([10, 10, 60], 100) == [[0, 1], [2]]
    # An item longer than the limit goes alone; the others still share.
    assert M.audio_groups([30, 250, 30, 30], 100) == [[0], [1], [2, 3]]
    for lengths in ([7, 3, 9, 1, 4, 4, 8], [100] * 5, [1] * 9):
        groups = M.audio_groups(lengths, 12)
        assert [i for g in groups for i in g] == list(range(len(lengths)))
        for g in groups:
            assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 12


def _passes(monkeypatch, obj, name: str, count) -> list[int]:
    """Record, per call of obj.name, the padded audio it was handed (samples)."""
    seen: list[int] = []
    real = getattr(obj, name)

    def spy(*args, **kwargs):
        seen.append(count(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)
    return seen


def _padded(items) -> int:
    return len(items) * max(len(a) for a in items)


def test_asr_batch_audio_limit_splits_passes_same_output(asr, monkeypatch):
    clips = [_noise(2.5, 1), _tone(1.3), _noise(2.0, 2), _noise(3.0, 3), _noise(0.5, 4)]
    whole = asr.transcribe(clips)
    seen = _passes(monkeypatch, asr.model, "transcribe", lambda audio, **_: _padded(audio))
    try:
        asr.configure(max_batch_audio_s=5.0)
        split = asr.transcribe(clips)
    finally:
        asr.configure()
    assert len(seen) > 1 and max(seen) <= 5.0 * SR
    for a, b in zip(whole, split, strict=True):
        assert a.text == b.text and a.duration == b.duration
        np.testing.assert_allclose(
            [(w.start, w.end) for w in a.words], [(w.start, w.end) for w in b.words], atol=1e-6
        )


def test_diarizer_batch_audio_limit_splits_passes_same_output(diar, monkeypatch):
    clips = [_noise(3.0, 1), _noise(2.0, 2), _noise(1.0, 3), _noise(3.0, 4)]
    whole = diar.diarize(clips)
    seen = _passes(monkeypatch, diar.model, "diarize", lambda audio, **_: _padded(audio))
    try:
        diar.configure(max_batch_audio_s=4.0)
        split = diar.diarize(clips)
    finally:
        diar.configure()
    assert seen == [3 * SR, 2 * 2 * SR, 3 * SR]
    for a, b in zip(whole, split, strict=True):
        assert a.probs.shape == b.probs.shape
        # Only the batch's zero padding differs (see the batch-vs-single test).
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-2)


def test_embedder_batch_audio_limit_splits_passes_same_output(emb, monkeypatch):
    clips = [_noise(1.0, 1), _tone(3.0), _noise(2.2, 2), _noise(0.7, 4)]
    whole = emb.embed(clips)
    seen = _passes(monkeypatch, emb, "_forward", _padded)
    try:
        emb.configure(max_batch_audio_s=3.0)
        split = emb.embed(clips)
    finally:
        emb.configure()
    assert max(seen) <= 3.0 * SR and len(seen) == 3  # [3.0], [2.2], [1.0, 0.7]
    np.testing.assert_allclose(whole, split, atol=1e-5)


def test_torch_threads_apply_to_the_computing_thread(diar, monkeypatch):
    import threading

    import torch

    seen = _passes(monkeypatch, diar.model, "diarize", lambda *a, **k: torch.get_num_threads())
    before = torch.get_num_threads()
    try:
        diar.configure(torch_threads=1)
        t = threading.Thread(target=diar.diarize, args=([_noise(1.0)],))
        t.start()
        t.join()
    finally:
        diar.configure()
        torch.set_num_threads(before)
    assert seen == [1]
    with pytest.raises(ValueError):
        diar.configure(max_batch_audio_s=-1)
    assert diar.configure(max_batch_audio_s=0).max_batch_audio_s is None  # 0: no limit
    with pytest.raises(ValueError):
        diar.configure(torch_threads=-1)


def test_sdpa_switches_conformer_attention_same_output(asr, diar, emb, monkeypatch):
    import torch
    from nemo.collections.asr.parts.submodules.multi_head_attention import MultiHeadAttention

    # The flag is read at every forward: SDPA must really be what computes with it on.
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    audio = _noise(3.0, 5)
    for runner, run in ((diar, lambda: diar.diarize([audio])[0].probs),
                        (asr, lambda: asr.encode(audio))):  # fmt: skip
        attn = [m for m in runner.model.modules() if isinstance(m, MultiHeadAttention)]
        assert attn and not any(m.use_pytorch_sdpa for m in attn)  # NeMo's default: off
        before = run()
        try:
            runner.configure(sdpa=True)
            assert all(m.use_pytorch_sdpa for m in attn)
            n = len(calls)
            after = run()
            assert len(calls) - n >= len(attn)  # every layer went through SDPA
            runner.configure()  # None: as it is
            assert all(m.use_pytorch_sdpa for m in attn)
        finally:
            runner.configure(sdpa=False)
        assert not any(m.use_pytorch_sdpa for m in attn)
        np.testing.assert_allclose(before, after, atol=1e-5, rtol=1e-4)
    # A model without Conformer attention has nothing to switch.
    assert M.set_sdpa(emb.model, True) == 0


def test_cpu_restore_maps_the_weights_and_loads_the_same_model(model_dir, monkeypatch):
    import torch
    from nemo.collections.asr.models import SortformerEncLabelModel

    path = str(model_dir / "diarizer.nemo")
    reference = SortformerEncLabelModel.restore_from(path, map_location="cpu").state_dict()
    loads = []
    real = torch.load

    def recording(*a, **k):
        loads.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", recording)
    model = M.load_model("diarizer", path, "cpu")
    # The state dict is read mapped from the extracted checkpoint, not into memory.
    assert [k.get("mmap") for k in loads] == [True]
    got = model.state_dict()
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)
