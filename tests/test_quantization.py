"""precision: int8 (dynamic int8 quantisation of linear layers) on the tiny models.

Each int8 runner's outputs are compared with fp32's on the same input against
`voxgraph.models.INT8_THRESHOLDS` (README "CPU serving"): the ASR encoder output
(greedy transcripts of random weights are not comparable: a random TDT joint emits
a token on every frame), the diarizer's speaker probabilities, the embeddings.
bench/cpu.py checks the same on the real-size architectures.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from voxgraph import models as M

pytest.importorskip("nemo.collections.asr")
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

SR = 16_000
T = M.INT8_THRESHOLDS


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic bursts over a little noise: more structure than noise alone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.3 * t)
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 5))
    env = (np.sin(2 * np.pi * 1.5 * t) > 0).astype(np.float64)
    return (0.2 * tone * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def pairs(tiny_models):
    """role -> (fp32 runner, int8 runner), each from its own load of the same file."""
    out = {}
    for role in ("asr", "diarizer", "embedder"):
        path = str(tiny_models / f"{role}.nemo")
        out[role] = (M.load_runner(role, path, "cpu"), M.load_runner(role, path, "cpu", "int8"))
    return out


def _quantised(model) -> int:
    from torch.ao.nn.quantized.dynamic import Linear

    return sum(isinstance(m, Linear) for m in model.modules())


def test_int8_replaces_linear_layers_only(pairs):
    import torch

    for role, (ref, low) in pairs.items():
        linear = sum(isinstance(m, torch.nn.Linear) for m in ref.model.modules())
        assert low.precision == "int8" and low.model.voxgraph_int8 == _quantised(low.model)
        assert _quantised(ref.model) == 0, role
        if role == "embedder":
            # TitaNet's linear layers sit in squeeze-excite blocks, which read their
            # weight's dtype: they stay fp32 (and the model works).
            assert linear > 0 and _quantised(low.model) < linear
        else:
            assert _quantised(low.model) == linear > 0, role
    # Loading is the only way in: an fp32 runner cannot turn into an int8 one in place.
    with pytest.raises(ValueError, match="loaded again"):
        pairs["asr"][0].with_precision("int8")
    with pytest.raises(ValueError, match="loaded again"):
        pairs["asr"][1].with_precision("fp32")


def test_int8_asr_encoder_close_to_fp32_and_transcribes(pairs):
    ref, low = pairs["asr"]
    audio = _speech(4.0, 1)
    a, b = ref.encode(audio), low.encode(audio)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert a.shape == b.shape and rel <= T["asr_encoder_rel_l2"], rel
    # The whole transcribe() path runs on the quantised model (joint included).
    (tr,) = low.transcribe([audio])
    assert tr.duration == pytest.approx(4.0)
    assert all(0 <= w.start <= w.end <= 4.0 for w in tr.words)


def test_int8_diarizer_probabilities_close_to_fp32(pairs):
    ref, low = pairs["diarizer"]
    clips = [_speech(6.0, 2), _speech(2.5, 3)]
    for a, b in zip(ref.diarize(clips), low.diarize(clips), strict=True):
        assert a.probs.shape == b.probs.shape
        assert np.abs(a.probs - b.probs).max() <= T["diarizer_max_abs"]


def test_int8_embeddings_close_to_fp32(pairs):
    ref, low = pairs["embedder"]
    clips = [_speech(s, 4 + i) for i, s in enumerate((0.3, 1.0, 3.0))]
    a, b = ref.embed(clips), low.embed(clips)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.min() >= T["embedder_min_cosine"], cos


def test_int8_refused_on_cuda_before_loading():
    with pytest.raises(ValueError, match="CPU only"):
        M.check_device_precision("cuda", "int8")
    M.check_device_precision("cuda", "bf16")
    M.check_device_precision("cpu", "int8")
    # Refused before the (missing) file is even looked at.
    with pytest.raises(ValueError, match="CPU only"):
        M.load_runner("asr", "never-loaded.nemo", "cuda:0", "int8")


def test_int8_with_a_gpu_share_fails_the_deploy():
    import graph

    with pytest.raises(ValueError, match="int8 runs on CPU only"):
        graph.VoxgraphArgs(asr={"precision": "int8"})  # the default 0.4 GPU share
    args = graph.VoxgraphArgs(cpu_only=True, asr={"precision": "int8", "num_gpus": 0.4})
    assert args.asr.num_gpus == 0 and args.asr.precision == "int8"


def test_model_host_reloads_to_and_from_int8():
    from deployments.model_host import ModelHost

    loads = []

    class Host(ModelHost):
        role = "asr"

        @staticmethod
        def load_runner(role, model, device, precision):
            loads.append(precision)
            return SimpleNamespace(precision=precision, with_precision=lambda p: ("copy", p))

        @staticmethod
        def pick_device():
            return "cpu"

    host = Host(model="m.nemo")
    base = SimpleNamespace(precision="fp32", with_precision=lambda p: ("copy", p))
    assert host._build(("m.nemo", "bf16"), base) == (("copy", "bf16"), "unknown")
    runner, _ = host._build(("m.nemo", "int8"), base)  # fp32 -> int8: a new load
    assert runner.precision == "int8"
    runner, _ = host._build(("m.nemo", "fp32"), runner)  # int8 -> fp32: a new load
    assert runner.precision == "fp32" and loads == ["int8", "fp32"]
