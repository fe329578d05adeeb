"""NeMo model loading (hub name or local .nemo) and batched runners.

torch and NeMo are imported inside functions only: importing NeMo's ASR
collection takes ~20 s and ~850 MB, which the ingress and the pure core must
never pay. Every runner takes and returns plain numpy / voxgraph types, works
on 16 kHz mono float32, and never crashes on empty or sub-frame audio.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import logging
import math
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from voxgraph.turns import parse_nemo_segment, sorted_turns
from voxgraph.types import (
    SAMPLE_RATE,
    Diarization,
    DiarStreamState,
    DiarStreamStep,
    KeywordBoost,
    Segment,
    Transcript,
    Turn,
    Word,
)

if TYPE_CHECKING:
    import torch

Role = Literal["asr", "diarizer", "embedder"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
CPU_ONLY_PRECISIONS: tuple[str, ...] = ("int8",)
"""Precisions that change the model itself (int8: quantised weights), CPU kernels only."""

# NeMo's transcribe() pads numpy inputs shorter than this *on both sides*, which
# shifts every timestamp by half the padding; padding on the right ourselves first
# makes its padding a no-op and keeps timestamps aligned with the caller's audio.
ASR_MIN_INPUT_S = 1.0

# TitaNet pools statistics over all frames: below one 10 ms hop it returns NaN,
# and a few frames give a noisy embedding. Short clips are tiled (not zero-padded,
# which would mix silence into the speaker's statistics) up to this length.
EMBED_MIN_INPUT_S = 0.5

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- loading


def quiet_nemo_logs(level: int = logging.ERROR) -> None:
    """Silence NeMo's per-call INFO/WARNING lines and nv_one_logger's import-time notices.

    Call before the first NeMo import: nv_one_logger logs while NeMo imports it.
    """
    logging.getLogger("nv_one_logger").setLevel(level)
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(level)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_class(role: Role) -> Any:
    if role == "asr":
        from nemo.collections.asr.models import ASRModel

        return ASRModel
    if role == "diarizer":
        from nemo.collections.asr.models import SortformerEncLabelModel

        return SortformerEncLabelModel
    if role == "embedder":
        from nemo.collections.asr.models import EncDecSpeakerLabelModel

        return EncDecSpeakerLabelModel
    raise ValueError(f"unknown model role {role!r}; expected 'asr', 'diarizer' or 'embedder'")


def is_local_spec(spec: str) -> bool:
    """A `.nemo` path or an existing file is loaded locally; anything else is a hub name."""
    return spec.endswith(".nemo") or os.path.isfile(os.path.expanduser(spec))


def _restore_connector() -> Any:
    """NeMo's .nemo reader, with the checkpoint's weights memory-mapped on CPU.

    NeMo builds the model (its own copy of every weight) and then reads the whole
    state dict into memory before copying it in: twice the model's size at once
    (5.5 GB for a Parakeet-0.6B replica). Mapped, the state dict's pages are the
    extracted file's, which the kernel can drop and read again rather than swap.
    """
    from nemo.core.connectors.save_restore_connector import SaveRestoreConnector

    class MappedWeights(SaveRestoreConnector):
        @staticmethod
        def _load_state_dict_from_disk(model_weights: str, map_location: Any = "cpu") -> Any:
            import torch

            if map_location is None or torch.device(map_location).type != "cpu":
                return SaveRestoreConnector._load_state_dict_from_disk(model_weights, map_location)
            return torch.load(model_weights, map_location="cpu", mmap=True)

    return MappedWeights()


def load_model(role: Role, spec: str, device: str, quiet: bool = True) -> Any:
    """Load a NeMo model from a local .nemo file or a hub name, in eval mode on `device`."""
    if quiet:
        quiet_nemo_logs()
    cls = _model_class(role)
    if is_local_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{role} model file not found: {path}")
        model = cls.restore_from(
            str(path), map_location=device, save_restore_connector=_restore_connector()
        )
    else:
        model = cls.from_pretrained(
            spec, map_location=device, save_restore_connector=_restore_connector()
        )
    if not isinstance(model, cls):
        raise TypeError(f"{spec} holds a {type(model).__name__}, not a {cls.__name__} ({role})")
    model = model.to(device).eval()
    # Runners report this name in /health and responses; the class name says too little.
    model.voxgraph_name = spec
    return model


# ----------------------------------------------------------------------------- shared


def _as_mono_f32(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"expected 1-D mono audio, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _geometry(model: Any) -> tuple[int, int]:
    """(hop in samples, encoder subsampling factor), as the loaded model computes frames.

    Read from the model's own modules (the ones NeMo uses to count frames), not from
    defaults: a model with another hop or subsampling gets its own frame length.
    """
    rate = int(model.preprocessor._sample_rate)
    if rate != SAMPLE_RATE:
        # Every caller hands 16 kHz audio; another rate would give wrong times silently.
        raise ValueError(f"the model expects {rate} Hz audio; voxgraph feeds {SAMPLE_RATE} Hz")
    return int(model.preprocessor.featurizer.hop_length), int(model.encoder.subsampling_factor)


def release_memory() -> None:
    """Collect dropped models now and hand cached CUDA blocks back to the other replicas."""
    # NeMo models hold reference cycles: without a collection they outlive their runner.
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to free nothing
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc): a restore's fp32 state dict, say.

    Without it a CPU replica keeps the RSS of its load's peak for good (measured: an
    int8 Parakeet-size replica holds 1.6 GB once loaded, after a 5.5 GB load peak).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_device_precision(device: str, precision: str) -> None:
    """Refuse int8 on CUDA: its dynamic quantisation has CPU kernels only (use bf16 there)."""
    _check_precision(precision)
    if precision in CPU_ONLY_PRECISIONS and not device.startswith("cpu"):
        raise ValueError(
            f"precision {precision!r} runs on CPU only (dynamic int8 quantisation has no "
            f"{device} kernels); use bf16 or fp16 on a GPU, or num_gpus: 0 for a CPU replica"
        )


INT8_THRESHOLDS: dict[str, float] = {
    "asr_encoder_rel_l2": 0.10,
    "diarizer_max_abs": 0.10,
    "embedder_min_cosine": 0.99,
}
"""How far int8 may move a model's outputs from fp32's on the same input (README "CPU
serving"): the ASR encoder output's relative L2 error (greedy transcripts of random
weights are not comparable), the largest change of a diarizer speaker probability,
and the smallest cosine between a clip's two embeddings. Checked by
tests/test_quantization.py (tiny models) and bench/cpu.py (real-size ones)."""

INT8_SKIP_INSIDE = ("SqueezeExcite",)
"""Modules whose linear layers stay fp32: NeMo's squeeze-excite (TitaNet, Jasper) reads
`fc[0].weight.dtype` in its forward, which a quantised layer does not have."""


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of the nn.Linear layers of `model`, in place; returns it.

    Weights become int8 per output channel; activations are quantised per call from
    their own range (torch's dynamic quantisation, fbgemm/x86 kernels), and every other
    module (convolutions, norms, the LSTM of a transducer's prediction net, the
    preprocessor) stays fp32. Layers inside `INT8_SKIP_INSIDE` modules stay fp32 too.
    Otherwise NeMo only calls its linear layers at inference, so transcribe(),
    diarize() and forward() work unchanged. Returns the model; `model.voxgraph_int8`
    counts the layers quantised.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    skipped = [n for n, m in model.named_modules() if type(m).__name__ in INT8_SKIP_INSIDE]
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and not any(n == s or n.startswith(s + ".") for s in skipped)
    ]
    with warnings.catch_warnings():
        # torch.ao.quantization's eager mode is deprecated in favour of torchao, which
        # this environment lacks; the eager kernels are what torch 2.13 CPU ships.
        warnings.simplefilter("ignore")
        quantize_dynamic(
            model,
            dict.fromkeys(names, per_channel_dynamic_qconfig),
            dtype=torch.qint8,
            inplace=True,
        )
    model.voxgraph_int8 = len(names)
    return model


def set_sdpa(model: Any, on: bool) -> int:
    """Switch NeMo's Conformer self-attention in `model` to torch's SDPA (`on`) or back.

    NeMo's attention layers carry a `use_pytorch_sdpa` flag read at every forward: with
    it, scores go through torch.nn.functional.scaled_dot_product_attention (the relative
    position term as its additive mask) instead of matmul, softmax and matmul. Same
    result (fp32 outputs within 1e-6); on CPU one fused kernel instead of several
    passes over a (heads x T x T) tensor: measured 28 % faster for Sortformer on 90 s.
    Returns how many modules carry the flag (0: the model has no such attention).
    """
    mods = [m for m in model.modules() if isinstance(getattr(m, "use_pytorch_sdpa", None), bool)]
    for m in mods:
        m.use_pytorch_sdpa = bool(on)
    return len(mods)


def audio_groups(lengths: Sequence[int], max_samples: int | None) -> list[list[int]]:
    """Consecutive groups of items whose padded size (items x the longest) is <= max_samples.

    What one forward pass holds when a batch is limited in audio seconds: a batch is
    padded to its longest item, so that is the size its activations scale with. An
    item longer than the limit goes alone. None: one group (no limit).
    """
    if not lengths:
        return []
    if max_samples is None:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        grown = max(longest, int(n))
        if current and grown * (len(current) + 1) > max_samples:
            groups.append(current)
            current, grown = [], int(n)
        current.append(i)
        longest = grown
    groups.append(current)
    return groups


class _Runner:
    """Lock, inference mode, autocast and CPU threads shared by the three runners.

    `max_batch_audio_s` caps the audio one forward pass holds (items x the longest
    item, seconds; None or 0: no cap): a larger batch runs as consecutive passes, so a
    replica's peak memory follows the limit, not the batch. `torch_threads` (> 0) is how many CPU
    threads this runner's calls compute with (torch.set_num_threads in the calling
    thread); 0 leaves torch's own setting (Ray's OMP_NUM_THREADS in a replica).
    Both change in place (`configure`).
    """

    def __init__(self, model: Any, device: str, precision: str, name: str | None):
        _check_precision(precision)
        if precision in CPU_ONLY_PRECISIONS:
            check_device_precision(device, precision)
            if getattr(model, "voxgraph_int8", None) is None:
                quantize_int8(model)  # in place: the runner owns its model
        self.model = model
        self.device = device
        self.precision = precision
        self._name = name or getattr(model, "voxgraph_name", None) or type(model).__name__
        # NeMo's transcribe()/diarize() flip model state (train/eval, dither, decoding
        # config, an id->manifest map) for the duration of a call: never run two at once.
        self._lock = threading.Lock()
        self.max_batch_audio_s: float | None = None
        self.torch_threads = 0

    @property
    def model_name(self) -> str:
        return self._name

    def configure(
        self,
        max_batch_audio_s: float | None = None,
        torch_threads: int = 0,
        sdpa: bool | None = None,
    ) -> Self:
        """Set the runtime limits (see the class docstring); returns the runner.

        `sdpa` (None: as it is) switches the model's self-attention layers to torch's
        scaled_dot_product_attention or back (`set_sdpa`).
        """
        if max_batch_audio_s is not None and not max_batch_audio_s >= 0:
            raise ValueError("max_batch_audio_s must be >= 0 (0 or None: no limit)")
        if torch_threads < 0:
            raise ValueError("torch_threads must be >= 0 (0: torch's default)")
        self.max_batch_audio_s = max_batch_audio_s or None
        self.torch_threads = int(torch_threads)
        if sdpa is not None and self.model is not None:
            set_sdpa(self.model, sdpa)
        return self

    def _groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """The forward passes of a batch with these lengths (samples), in order."""
        limit = self.max_batch_audio_s
        return audio_groups(lengths, None if limit is None else int(limit * SAMPLE_RATE))

    def with_precision(self, precision: str) -> Self:
        """The same model behind another autocast precision; shares this runner's lock.

        Not to or from int8: a quantised model is another model (`load_runner` builds it).
        """
        _check_precision(precision)
        if precision != self.precision and (
            precision in CPU_ONLY_PRECISIONS or self.precision in CPU_ONLY_PRECISIONS
        ):
            raise ValueError(f"{self.precision} -> {precision} needs the model loaded again")
        runner = copy.copy(self)
        runner.precision = precision
        return runner

    def close(self) -> None:
        """Drop this runner's model and free its memory; only for a runner nobody calls."""
        self.model = None
        release_memory()

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        import torch

        with self._lock, torch.inference_mode():
            if self.torch_threads > 0:
                # OpenMP's thread count is per calling thread, and worker threads are
                # shared between runners in one process: set it on every call, in the
                # thread that computes (cheap next to a forward pass).
                torch.set_num_threads(self.torch_threads)
            if self.device.startswith("cuda") and self.precision in ("bf16", "fp16"):
                dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
                with torch.autocast(device_type="cuda", dtype=dtype):
                    yield
            else:
                yield


# ----------------------------------------------------------------------------- ASR


class AsrRunner(_Runner):
    """Batched transcription with word and segment timestamps."""

    def __init__(self, model: Any, device: str, precision: str = "fp32", name: str | None = None):
        super().__init__(model, device, precision, name)
        hop, factor = _geometry(model)
        # Below one encoder frame there is nothing to recognise.
        self.min_samples = hop * factor
        from nemo.collections.asr.models import EncDecMultiTaskModel

        # Only multitask (Canary-style) models take a target language; others only transcribe.
        self._multitask = isinstance(model, EncDecMultiTaskModel)
        # Shared by with_precision() copies, like the model and the lock.
        self._keywords = KeywordBiasing(model) if KeywordBiasing.supported(model) else None

    @property
    def capabilities(self) -> dict[str, bool]:
        return {
            "transcribe": True,
            "timestamps": True,
            "translate": self._multitask,
            "keywords": self._keywords is not None,
        }

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """The encoder's float32 output for one clip, (1, features, frames): the part a
        precision changes, compared by `INT8_THRESHOLDS["asr_encoder_rel_l2"]`."""
        import torch

        with self._inference():
            self.model.eval()
            feats, flen = self.model.preprocessor(
                input_signal=torch.from_numpy(audio)[None].to(self.device),
                length=torch.tensor([len(audio)], device=self.device),
            )
            enc, _ = self.model.encoder(audio_signal=feats, length=flen)
        return enc.float().cpu().numpy()

    def transcribe(
        self,
        batch: Sequence[np.ndarray],
        keywords: Sequence[KeywordBoost | None] | None = None,
    ) -> list[Transcript]:
        """Transcripts of a batch; `keywords[i]` biases item i only (None: plain decoding).

        Items with different keywords share the batch's forward pass; each is decoded
        with its own boosting tree (NeMo's per-stream biasing), items without keywords
        with none, so no request ever sees another's keywords.
        """
        audios = [_as_mono_f32(x) for x in batch]
        wanted = list(keywords) if keywords is not None else [None] * len(audios)
        if len(wanted) != len(audios):
            raise ValueError(f"{len(wanted)} keyword entries for {len(audios)} clips")
        if self._keywords is None and any(wanted):
            raise ValueError(f"the ASR model {self.model_name!r} cannot take keywords")
        out = [
            Transcript(text="", words=(), segments=(), duration=a.shape[0] / SAMPLE_RATE)
            for a in audios
        ]
        todo = [i for i, a in enumerate(audios) if a.shape[0] >= self.min_samples]
        min_len = int(ASR_MIN_INPUT_S * SAMPLE_RATE)
        inputs = [np.pad(audios[i], (0, max(0, min_len - audios[i].shape[0]))) for i in todo]
        hyps: list[Any] = []
        with self._inference():
            # Consecutive forward passes of at most max_batch_audio_s each.
            for group in self._groups([len(x) for x in inputs]):
                with self._biased([wanted[todo[g]] for g in group]) as extra:
                    try:
                        hyps += self.model.transcribe(
                            [inputs[g] for g in group],
                            batch_size=len(group),
                            timestamps=True,
                            verbose=False,
                            **extra,
                        )
                    finally:
                        # NeMo 3.0's transcribe() leaves the encoder in training mode
                        # (dropout on) for whoever calls the model next.
                        self.model.eval()
        for i, hyp in zip(todo, hyps, strict=True):
            out[i] = self._to_transcript(hyp, out[i].duration)
        return out

    @contextlib.contextmanager
    def _biased(self, wanted: Sequence[KeywordBoost | None]) -> Iterator[dict[str, Any]]:
        """transcribe()'s extra arguments for these items' keywords; none when none has any."""
        if self._keywords is None or not any(wanted):
            yield {}
            return
        with self._keywords.decoding(wanted) as requests:
            yield {"partial_hypothesis": requests}

    def _to_transcript(self, hyp: Any, duration: float) -> Transcript:
        # timestamps=True makes NeMo return Hypothesis objects whose word and segment
        # stamps carry start/end in seconds (CTC: numpy scalars, hence the casts).
        text = str(hyp.text or "")
        stamps = getattr(hyp, "timestamp", None) or {}
        raw_words = stamps.get("word", []) if isinstance(stamps, dict) else []
        raw_segments = stamps.get("segment", []) if isinstance(stamps, dict) else []

        words: list[Word] = []
        for w in raw_words:
            start, end = float(w["start"]), float(w["end"])
            # Frames are 80 ms, so the last word may end past the audio; words that
            # start past it can only come from the silence padded on for NeMo.
            if start >= duration:
                continue
            words.append(Word(text=str(w["word"]), start=max(0.0, start), end=min(end, duration)))
        dropped = len(words) != len(raw_words)
        if dropped:
            text = " ".join(w.text for w in words)

        spans: list[tuple[str, float, float]] = []
        for s in raw_segments:
            start, end = float(s["start"]), float(s["end"])
            if start < duration:
                spans.append((str(s["segment"]), max(0.0, start), min(end, duration)))
        if not spans and words:
            spans = [(text, words[0].start, words[-1].end)]

        buckets: list[list[Word]] = [[] for _ in spans]
        for w in words:
            buckets[_nearest_span(spans, w.start)].append(w)
        segments = tuple(
            Segment(
                text=" ".join(w.text for w in ws) if dropped else seg_text,
                start=start,
                end=end,
                words=tuple(ws),
            )
            for (seg_text, start, end), ws in zip(spans, buckets, strict=True)
            if ws or not dropped
        )
        return Transcript(
            text=text.strip(), words=tuple(words), segments=segments, duration=duration
        )


KEYWORD_TREES_CACHED = 64
"""Boosting trees kept per ASR runner (least recently used dropped first)."""


class KeywordBiasing:
    """Per-request phrase boosting (hotwords) for a transducer's greedy batch decoding.

    NeMo 3.0's label-looping RNNT/TDT decoders fuse a GPU boosting tree (a phrase
    trie over the tokenizer's BPE pieces, `GPUBoostingTreeModel`) into greedy
    decoding. With `enable_per_stream_biasing` they hold a multi-model of such
    trees and pick one per batch item (id -1: none), so one batch decodes each
    request with its own keywords. That decoder is built on first use next to the
    model's own, which keeps serving requests without keywords unchanged; the
    biased one is swapped in only for the duration of a batch that has keywords.
    Trees are built once per keyword list and kept in a bounded LRU; a batch adds
    the trees it needs to the multi-model and removes them when it ends.
    Call `decoding` only under the runner's lock.
    """

    def __init__(self, model: Any, cache_size: int = KEYWORD_TREES_CACHED):
        self.model = model
        self.cache_size = cache_size
        self._decoding: Any = None
        self._trees: OrderedDict[tuple[str, ...], Any] = OrderedDict()

    @staticmethod
    def supported(model: Any) -> bool:
        """Whether `model` decodes with a label-looping transducer (RNNT/TDT greedy_batch)."""
        from nemo.collections.asr.parts.submodules.rnnt_decoding import AbstractRNNTDecoding

        if getattr(model, "cur_decoder", "rnnt") != "rnnt":  # a hybrid decoding with CTC
            return False
        decoding = getattr(model, "decoding", None)
        if not isinstance(decoding, AbstractRNNTDecoding):
            return False
        cfg = model.cfg.decoding
        if cfg.get("strategy") != "greedy_batch" or not cfg.greedy.get("loop_labels", True):
            return False
        return getattr(decoding.decoding, "decoding_computer", None) is not None

    @contextlib.contextmanager
    def decoding(self, wanted: Sequence[KeywordBoost | None]) -> Iterator[list[Any]]:
        """The biased decoder in place; yields transcribe()'s `partial_hypothesis` list."""
        decoding = self._biased_decoding()
        multi = decoding.decoding.decoding_computer.biasing_multi_model
        plain = self.model.decoding
        ids: dict[KeywordBoost, int] = {}
        try:
            for kb in wanted:
                if kb is not None and kb not in ids:
                    ids[kb] = multi.add_model(self._tree(kb.phrases), alpha=float(kb.boost))
            self.model.decoding = decoding
            yield [None if kb is None else _biasing_request(ids[kb]) for kb in wanted]
        finally:
            self.model.decoding = plain
            for model_id in ids.values():
                multi.remove_model(model_id)

    def _tree(self, phrases: tuple[str, ...]) -> Any:
        tree = self._trees.get(phrases)
        if tree is not None:
            self._trees.move_to_end(phrases)
            return tree
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import (
            BoostingTreeModelConfig,
            GPUBoostingTreeModel,
        )

        # Phrases the vocabulary lacks are spelled in BPE pieces by the tokenizer.
        cfg = BoostingTreeModelConfig(key_phrases_list=list(phrases))
        tree = GPUBoostingTreeModel.from_config(cfg, tokenizer=self.model.tokenizer)
        self._trees[phrases] = tree
        while len(self._trees) > self.cache_size:
            self._trees.popitem(last=False)
        return tree

    def _biased_decoding(self) -> Any:
        if self._decoding is not None:
            return self._decoding
        from omegaconf import open_dict

        model = self.model
        # What transcribe(timestamps=True) does on its first call, done now: the model's
        # decoding config comes out complete (merged with its defaults), and transcribe
        # never rebuilds (and so drops) the decoder swapped in for a batch.
        cfg = copy.deepcopy(model.cfg.decoding)
        with open_dict(cfg):
            cfg.compute_timestamps = True
        model.change_decoding_strategy(cfg, verbose=False)
        cfg = copy.deepcopy(model.cfg.decoding)
        with open_dict(cfg):
            cfg.greedy.enable_per_stream_biasing = True
        plain = model.decoding
        biased = type(plain)(
            decoding_cfg=cfg, decoder=model.decoder, joint=model.joint, tokenizer=model.tokenizer
        )
        computer = biased.decoding.decoding_computer
        if not getattr(computer, "per_stream_biasing_enabled", False):
            raise RuntimeError(f"{type(computer).__name__} cannot bias per request")
        self._decoding = biased
        return biased


@functools.cache
def _biasing_request_class() -> type:
    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

    class BiasingRequest(Hypothesis):
        """An empty partial hypothesis that only carries a biasing request.

        NeMo's greedy decoder reads the request's tree id from it, then merges the
        decoded hypothesis into it; `Hypothesis.merge_` drops TDT token durations
        (and so word timestamps), so this one becomes the decoded hypothesis whole.
        """

        def merge_(self, other: Any) -> Any:
            request = self.biasing_cfg
            self.__dict__.update(other.__dict__)
            self.biasing_cfg = request
            return self

    return BiasingRequest


def _biasing_request(model_id: int) -> Any:
    from nemo.collections.asr.parts.context_biasing.biasing_multi_model import (
        BiasingRequestItemConfig,
    )

    cfg = BiasingRequestItemConfig(multi_model_id=model_id, auto_manage_multi_model=False)
    return _biasing_request_class()(y_sequence=[], score=0.0, biasing_cfg=cfg)


def _nearest_span(spans: list[tuple[str, float, float]], t: float) -> int:
    """Index of the span containing t, else the closest one."""
    best, best_d = 0, math.inf
    for k, (_, start, end) in enumerate(spans):
        d = 0.0 if start <= t < end else min(abs(t - start), abs(t - end))
        if d < best_d:
            best, best_d = k, d
    return best


# ----------------------------------------------------------------------------- multitask ASR

AsrTask = Literal["transcribe", "translate"]
TRANSLATION_TARGET = "en"
"""Translations go into English, as OpenAI's /v1/audio/translations."""

_LANG_TOKEN = re.compile(r"^<\|([a-z]{2})(?:[-_][A-Za-z]{2})?\|>$")
_SPECIAL = re.compile(r"<\|[^|]*\|>")


def is_multitask(model: Any) -> bool:
    """Whether a loaded ASR model is a NeMo multitask AED model (Canary)."""
    from nemo.collections.asr.models import EncDecMultiTaskModel

    return isinstance(model, EncDecMultiTaskModel)


def model_languages(model: Any) -> dict[str, str]:
    """ISO 639-1 code -> the model's own language name, from its language prompt tokens.

    Canary's tokenizer has a `<|xx|>` (canary-1b-v2 and -flash; some models `<|xx-YY|>`)
    special token per language it reads and writes.
    """
    from voxgraph.schemas import ISO_639_1

    tok = model.tokenizer
    special = getattr(tok, "special_tokens", None)
    pieces = list(special) if isinstance(special, Mapping) else list(getattr(tok, "vocab", []))
    out: dict[str, str] = {}
    for piece in pieces:
        m = _LANG_TOKEN.match(str(piece))
        if m and m.group(1) in ISO_639_1:
            out.setdefault(m.group(1), str(piece)[2:-2])
    return out


class CanaryRunner(AsrRunner):
    """A NeMo multitask AED model (Canary): transcription and speech translation.

    Every call says the spoken (source) language: Canary's prompt takes it, and its
    transcribe() cannot detect it, so `language` is required. `task="translate"`
    writes English (`TRANSLATION_TARGET`); `transcribe` writes the source language.
    One call is one prompt: callers group mixed requests (`transcribe_grouped`).
    """

    def __init__(self, model: Any, device: str, precision: str = "fp32", name: str | None = None):
        super().__init__(model, device, precision, name)
        self.language_names = model_languages(model)
        """ISO 639-1 code -> the language as the model's prompt spells it."""
        slots = model.prompt.get_slots("user") if hasattr(model.prompt, "get_slots") else {}
        # canary2 prompts (canary-1b-flash, -v2) ask for timestamps; canary-1b has none.
        self._timestamps = "timestamp" in slots or model.timestamps_asr_model is not None

    @property
    def languages(self) -> tuple[str, ...]:
        """Source languages the model takes (ISO 639-1)."""
        return tuple(sorted(self.language_names))

    @property
    def capabilities(self) -> dict[str, bool]:
        can_translate = TRANSLATION_TARGET in self.language_names and len(self.language_names) > 1
        return {
            "transcribe": True,
            "timestamps": self._timestamps,
            "translate": can_translate,
            "keywords": False,
            "language_required": True,
        }

    def transcribe(
        self,
        batch: Sequence[np.ndarray],
        keywords: Sequence[KeywordBoost | None] | None = None,
        *,
        language: str | None = None,
        task: AsrTask = "transcribe",
    ) -> list[Transcript]:
        """Transcripts (task="transcribe") or English translations of a batch in `language`."""
        from voxgraph.errors import BadRequest

        if keywords is not None and any(keywords):
            raise BadRequest(f"the ASR model {self.model_name!r} cannot take keywords")
        if task not in ("transcribe", "translate"):
            raise BadRequest(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not language:
            raise BadRequest(
                f"language is required by {self.model_name} (a Canary model is told the "
                f"spoken language); one of: {', '.join(self.languages)}"
            )
        if language not in self.language_names:
            raise BadRequest(
                f"language {language!r} is not supported by {self.model_name}; "
                f"supported: {', '.join(self.languages)}"
            )
        if task == "translate" and not self.capabilities["translate"]:
            raise BadRequest(f"the ASR model {self.model_name!r} cannot translate")
        source = self.language_names[language]
        target = self.language_names[TRANSLATION_TARGET] if task == "translate" else source

        audios = [_as_mono_f32(x) for x in batch]
        out = [
            Transcript(text="", words=(), segments=(), duration=a.shape[0] / SAMPLE_RATE)
            for a in audios
        ]
        todo = [i for i, a in enumerate(audios) if a.shape[0] >= self.min_samples]
        min_len = int(ASR_MIN_INPUT_S * SAMPLE_RATE)
        inputs = [np.pad(audios[i], (0, max(0, min_len - audios[i].shape[0]))) for i in todo]
        extra: dict[str, Any] = {"timestamps": True} if self._timestamps else {}
        hyps: list[Any] = []
        with self._inference():
            for group in self._groups([len(x) for x in inputs]):
                try:
                    hyps += self.model.transcribe(
                        [inputs[g] for g in group],
                        batch_size=len(group),
                        verbose=False,
                        source_lang=source,
                        target_lang=target,
                        pnc="yes",
                        **extra,
                    )
                finally:
                    self.model.eval()
        for i, hyp in zip(todo, hyps, strict=True):
            out[i] = self._canary_transcript(hyp, out[i].duration)
        return out

    def _canary_transcript(self, hyp: Any, duration: float) -> Transcript:
        """A Transcript from whatever stamps the model gave: finite, ordered, in the clip."""
        if isinstance(hyp, str):
            text, stamps = hyp, {}
        else:
            text = str(getattr(hyp, "text", "") or "")
            stamps = getattr(hyp, "timestamp", None) or {}
        text = " ".join(_SPECIAL.sub(" ", text).split())
        clean: dict[str, list[dict[str, Any]]] = {}
        for kind, key in (("word", "word"), ("segment", "segment")):
            items = stamps.get(kind, []) if isinstance(stamps, dict) else []
            kept = []
            for item in items:
                try:
                    start, end = float(item["start"]), float(item["end"])
                    label = " ".join(_SPECIAL.sub(" ", str(item[key])).split())
                except (KeyError, TypeError, ValueError):
                    continue
                if label and math.isfinite(start) and math.isfinite(end):
                    kept.append({key: label, "start": start, "end": max(start, end)})
            clean[kind] = kept
        if not clean["word"]:
            # No usable timestamps: the text as one segment over the clip, no words.
            segments = (Segment(text=text, start=0.0, end=duration),) if text else ()
            return Transcript(text=text, words=(), segments=segments, duration=duration)
        fixed = SimpleNamespace(text=text, timestamp=clean)
        return self._to_transcript(fixed, duration)


def transcribe_grouped(
    runner: Any,
    clips: Sequence[np.ndarray],
    keywords: Sequence[KeywordBoost | None],
    tasks: Sequence[tuple[str | None, str]],
) -> list[Transcript]:
    """One batch of mixed requests: one runner call per (language, task), results in order.

    A multitask model takes one prompt per call, so a batch never mixes languages or
    tasks inside a call; items without a language or task use the runner's plain call.
    """
    groups: dict[tuple[str | None, str], list[int]] = {}
    for i, key in enumerate(tasks):
        groups.setdefault((key[0], key[1]), []).append(i)
    out: list[Transcript | None] = [None] * len(clips)
    for (language, task), idx in groups.items():
        kwargs: dict[str, Any] = {}
        if any(keywords[i] for i in idx):
            kwargs["keywords"] = [keywords[i] for i in idx]
        if language is not None or task != "transcribe":
            kwargs.update(language=language, task=task)
        for i, t in zip(idx, runner.transcribe([clips[i] for i in idx], **kwargs), strict=True):
            out[i] = t
    return out  # type: ignore[return-value]


def asr_runner_class(model: Any) -> type[AsrRunner]:
    """CanaryRunner for multitask (Canary) models, AsrRunner for the others."""
    return CanaryRunner if is_multitask(model) else AsrRunner


# ----------------------------------------------------------------------------- diarization


class DiarRunner(_Runner):
    """Batched Sortformer diarization: speaker turns plus per-frame activity probabilities.

    A streaming Sortformer (`streaming_mode` in its config, e.g. diar_streaming_sortformer_4spk-v2)
    also diarizes live sessions step by step (`stream_step`); `streaming` overrides its
    streaming sizes (chunk_len, chunk_left_context, chunk_right_context, fifo_len,
    spkcache_len, spkcache_update_period) for those steps only, not for `diarize`.
    """

    def __init__(
        self,
        model: Any,
        device: str,
        precision: str = "fp32",
        name: str | None = None,
        streaming: Mapping[str, int] | None = None,
    ):
        super().__init__(model, device, precision, name)
        self.hop, self.subsampling = _geometry(model)
        self.frame_s = round(self.hop * self.subsampling / SAMPLE_RATE, 6)
        """Seconds per row of `probs` (0.08 for Sortformer 4spk-v1)."""
        self.num_speakers = int(model.sortformer_modules.n_spk)
        self._stream_overrides = dict(streaming or {})
        self.stream = (
            _StreamGeometry.of(model, self._stream_overrides) if can_stream(model) else None
        )
        """Chunking of `stream_step`; None when the model cannot stream."""
        if getattr(model, "streaming_mode", False):
            _quiet_streaming_progress()

    @property
    def capabilities(self) -> dict[str, bool]:
        return {"streaming": self.stream is not None}

    def num_frames(self, n_samples: int) -> int:
        """Frames Sortformer gives for n samples: ceil(floor(n / hop) / subsampling).

        Not ceil(duration / frame_s): e.g. 1.0425 s gives 13 frames, not 14.
        """
        return math.ceil((n_samples // self.hop) / self.subsampling)

    def diarize(self, batch: Sequence[np.ndarray]) -> list[Diarization]:
        audios = [_as_mono_f32(x) for x in batch]
        # NeMo rejects empty arrays and crashes below one hop: those have 0 frames anyway.
        todo = [i for i, a in enumerate(audios) if self.num_frames(a.shape[0]) > 0]
        results: dict[int, Diarization] = {}
        with self._inference():
            # Consecutive forward passes of at most max_batch_audio_s each.
            for group in self._groups([audios[i].shape[0] for i in todo]):
                idx = [todo[g] for g in group]
                segments, probs = self.model.diarize(
                    audio=[audios[i] for i in idx],
                    sample_rate=SAMPLE_RATE,
                    batch_size=len(idx),
                    include_tensor_outputs=True,
                    verbose=False,
                )
                for i, lines, p in zip(idx, segments, probs, strict=True):
                    results[i] = self._to_diarization(audios[i].shape[0], lines, p)
        return [results.get(i) or self._empty(a.shape[0]) for i, a in enumerate(audios)]

    def _empty(self, n_samples: int) -> Diarization:
        frames = self.num_frames(n_samples)
        return Diarization(
            turns=(),
            probs=np.zeros((frames, self.num_speakers), dtype=np.float32),
            frame_s=self.frame_s,
            duration=n_samples / SAMPLE_RATE,
        )

    def _to_diarization(self, n_samples: int, lines: list[str], p: torch.Tensor) -> Diarization:
        duration = n_samples / SAMPLE_RATE
        mat = p.detach().float().cpu().numpy().reshape(-1, p.shape[-1])
        # In a batch every matrix is zero-padded to the longest input.
        mat = np.ascontiguousarray(mat[: self.num_frames(n_samples)], dtype=np.float32)
        turns: list[Turn] = []
        for line in lines:
            t = parse_nemo_segment(line)
            # Segment ends are frame-quantised and may pass the end of the audio.
            start, end = max(0.0, t.start), min(t.end, duration)
            if end > start:
                turns.append(Turn(start=start, end=end, speaker=t.speaker))
        return Diarization(
            turns=tuple(sorted_turns(turns)), probs=mat, frame_s=self.frame_s, duration=duration
        )

    # ------------------------------------------------------------------ streaming

    @property
    def stream_latency_s(self) -> float | None:
        """Longest wait of a frame in `stream_step`: chunk + right context + half a window."""
        g = self.stream
        if g is None:
            return None
        return (g.chunk + g.right) * self.frame_s + g.lookahead / SAMPLE_RATE

    def new_stream_state(self) -> DiarStreamState:
        """The state of a session that has not sent any audio yet."""
        g = self._require_stream()
        sm = self.model.sortformer_modules
        dim = int(sm.fc_d_model)
        return DiarStreamState(
            arrays={
                "spkcache": np.zeros((0, dim), np.float32),
                "spkcache_preds": np.zeros((0, self.num_speakers), np.float32),
                "fifo": np.zeros((0, dim), np.float32),
                "mean_sil_emb": np.zeros(dim, np.float32),
                "n_sil_frames": np.zeros((), np.int64),
                "params": g.params.copy(),
            },
            pending=np.zeros(0, np.float32),
            frames=0,
            model=self.model_name,
        )

    def check_stream_state(self, state: DiarStreamState | None) -> None:
        """Raise ValueError unless `state` is None or a state of this model and its settings."""
        g = self._require_stream()
        if state is None:
            return
        if not isinstance(state, DiarStreamState):
            raise ValueError(f"expected a DiarStreamState, got {type(state).__name__}")
        if state.model != self.model_name:
            raise ValueError(
                f"this streaming state belongs to diarizer model {state.model!r}, "
                f"not {self.model_name!r}: start a new session"
            )
        params = state.arrays.get("params")
        if params is None or not np.array_equal(params, g.params):
            raise ValueError(
                "this streaming state was made with other streaming settings of the "
                "diarizer model: start a new session"
            )
        missing = sorted(set(_STATE_KEYS) - set(state.arrays))
        if missing:
            raise ValueError(f"streaming state lacks {missing}")

    def stream_step(
        self, batch: Sequence[tuple[np.ndarray, DiarStreamState | None]]
    ) -> list[DiarStreamStep]:
        """One step of each session: append its new audio, run every chunk it now allows.

        Each chunk round stacks all sessions that have a chunk ready into one forward pass
        (the model's asynchronous streaming update: speaker caches and FIFOs of different
        lengths). A session whose audio does not complete a chunk yet gets zero new frames
        and its grown state. Chunk k's frames come once the audio reaches the end of its
        right context plus half an STFT window (`stream_latency_s`).
        """
        g = self._require_stream()
        sessions: list[_StreamSession] = []
        for audio, state in batch:
            a = _as_mono_f32(audio)
            self.check_stream_state(state)
            st = state if state is not None else self.new_stream_state()
            sessions.append(
                _StreamSession(
                    buf=np.concatenate([st.pending.astype(np.float32, copy=False), a]),
                    start=st.pending_start,
                    frames=st.frames,
                    arrays={k: np.asarray(v) for k, v in st.arrays.items()},
                )
            )
        ready = [s for s in sessions if s.end >= g.samples_needed(s.chunk_index(g))]
        if ready:
            with self._inference(), self._streaming_params():
                while ready:
                    self._stream_round(ready, g)
                    ready = [s for s in ready if s.end >= g.samples_needed(s.chunk_index(g))]
        out = []
        for s, (_, state) in zip(sessions, batch, strict=True):
            before = state.frames if state is not None else 0
            probs = (
                np.concatenate(s.out).astype(np.float32, copy=False)
                if s.out
                else np.zeros((0, self.num_speakers), np.float32)
            )
            new = DiarStreamState(
                arrays=s.arrays,
                pending=np.ascontiguousarray(s.buf, dtype=np.float32),
                frames=s.frames,
                model=self.model_name,
                pending_start=s.start,
            )
            out.append(
                DiarStreamStep(probs=probs, frame_s=self.frame_s, start_frame=before, state=new)
            )
        return out

    def _require_stream(self) -> _StreamGeometry:
        if self.stream is None:
            raise ValueError(f"diarizer model {self.model_name!r} is not a streaming Sortformer")
        return self.stream

    @contextlib.contextmanager
    def _streaming_params(self) -> Iterator[None]:
        """The runner's streaming sizes on the model's modules for the duration of a step."""
        sm = self.model.sortformer_modules
        saved = {k: getattr(sm, k) for k in self._stream_overrides}
        try:
            for k, v in self._stream_overrides.items():
                setattr(sm, k, int(v))
            yield
        finally:
            for k, v in saved.items():
                setattr(sm, k, v)

    def _stream_round(self, ready: list[_StreamSession], g: _StreamGeometry) -> None:
        """One chunk of every session in `ready`, in one forward pass; call inside _inference."""
        import torch
        from nemo.collections.asr.modules.sortformer_modules import StreamingSortformerState

        model, sm, dev = self.model, self.model.sortformer_modules, self.device
        # 1. Features. Each session's chunk needs feature frames [fs, fe) of its session;
        # computing them from the audio since `margin` frames earlier makes them exactly
        # what the preprocessor gives on the whole recording (pre-emphasis and STFT window
        # reach back, the window also reaches forward: hence samples_needed). The
        # preprocessor does not normalise (can_stream), so a batch changes nothing.
        spans = []
        for s in ready:
            k = s.chunk_index(g)
            fs, fe = g.feature_span(k)
            f0 = max(0, fs - g.margin)
            seg = s.buf[f0 * g.hop - s.start : g.samples_needed(k) - s.start]
            spans.append((k, fs, fe, f0, seg))
        longest = max(len(sp[4]) for sp in spans)
        signal = np.zeros((len(spans), longest), np.float32)
        for row, sp in enumerate(spans):
            signal[row, : len(sp[4])] = sp[4]
        feats, feat_len = model.preprocessor(
            input_signal=torch.from_numpy(signal).to(dev),
            length=torch.tensor([len(sp[4]) for sp in spans], device=dev),
        )
        chunks = []
        for row, (_, fs, fe, f0, _) in enumerate(spans):
            if int(feat_len[row]) < fe - f0:
                raise RuntimeError("streaming features came out shorter than planned")
            chunks.append(feats[row, :, fs - f0 : fe - f0].transpose(0, 1))
        # 2. Pre-encode (subsampling convs), grouped by length: its convs see no padding.
        embs: list[Any] = [None] * len(ready)
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(chunks):
            by_len.setdefault(int(c.shape[0]), []).append(i)
        for n, idx in by_len.items():
            x = torch.stack([chunks[i] for i in idx])
            e, e_len = model.encoder.pre_encode(
                x=x, lengths=torch.full((len(idx),), n, device=dev, dtype=torch.long)
            )
            for j, i in enumerate(idx):
                embs[i] = e[j, : int(e_len[j])].float()
        # 3. [speaker cache | FIFO | chunk] of every session, zero-padded, in one forward.
        caches = [torch.from_numpy(s.arrays["spkcache"]).to(dev) for s in ready]
        fifos = [torch.from_numpy(s.arrays["fifo"]).to(dev) for s in ready]
        lens = [
            c.shape[0] + f.shape[0] + e.shape[0]
            for c, f, e in zip(caches, fifos, embs, strict=True)
        ]
        dim = embs[0].shape[1]
        x = torch.zeros((len(ready), max(lens), dim), device=dev)
        for row, (c, f, e) in enumerate(zip(caches, fifos, embs, strict=True)):
            x[row, : lens[row]] = torch.cat([c, f, e])
        x_len = torch.tensor(lens, device=dev, dtype=torch.long)
        enc, enc_len = model.frontend_encoder(
            processed_signal=x, processed_signal_length=x_len, bypass_pre_encode=True
        )
        preds = model.forward_infer(enc, enc_len)
        preds = sm.apply_mask_to_preds(preds, enc_len).float()
        # 4. Each session's asynchronous cache/FIFO update (NeMo's own), on its own rows.
        for row, (s, (k, fs, _, _, _)) in enumerate(zip(ready, spans, strict=True)):
            lc = (k * g.chunk * g.sub - fs) // g.sub
            st = StreamingSortformerState()
            st.spkcache = _padded(caches[row], sm.spkcache_len)
            st.spkcache_preds = _padded(
                torch.from_numpy(s.arrays["spkcache_preds"]).to(dev), sm.spkcache_len
            )
            st.spkcache_lengths = torch.tensor([caches[row].shape[0]], device=dev)
            st.fifo = _padded(fifos[row], sm.fifo_len)
            st.fifo_lengths = torch.tensor([fifos[row].shape[0]], device=dev)
            st.mean_sil_emb = torch.from_numpy(s.arrays["mean_sil_emb"]).to(dev)[None].clone()
            st.n_sil_frames = torch.from_numpy(s.arrays["n_sil_frames"]).to(dev).reshape(1)
            st, chunk_preds = sm.streaming_update_async(
                streaming_state=st,
                chunk=embs[row][None],
                chunk_lengths=torch.tensor([embs[row].shape[0]], device=dev),
                preds=preds[row : row + 1, : lens[row]],
                lc=lc,
                rc=g.right,
            )
            n_cache, n_fifo = int(st.spkcache_lengths[0]), int(st.fifo_lengths[0])
            s.arrays = {
                "spkcache": _np(st.spkcache[0, :n_cache]),
                "spkcache_preds": _np(st.spkcache_preds[0, :n_cache]),
                "fifo": _np(st.fifo[0, :n_fifo]),
                "mean_sil_emb": _np(st.mean_sil_emb[0]),
                "n_sil_frames": st.n_sil_frames[0].cpu().numpy().astype(np.int64),
                "params": s.arrays["params"],
            }
            s.out.append(_np(chunk_preds[0, : g.chunk]))
            s.frames += g.chunk
            keep = g.keep_from(k + 1)
            s.buf = s.buf[keep - s.start :]
            s.start = keep


_STATE_KEYS = ("spkcache", "spkcache_preds", "fifo", "mean_sil_emb", "n_sil_frames", "params")

STREAM_PARAMS: tuple[str, ...] = (
    "chunk_len",
    "chunk_left_context",
    "chunk_right_context",
    "fifo_len",
    "spkcache_len",
    "spkcache_update_period",
)
"""The streaming Sortformer's sizes (in output frames) a session state is bound to."""


def can_stream(model: Any) -> bool:
    """Whether a Sortformer diarizes in streaming mode (speaker cache + FIFO).

    From its config: `streaming_mode` set (diar_streaming_sortformer_4spk-v2 and later),
    and features not normalised over the whole recording, which a stream never has.
    """
    cfg = getattr(model, "_cfg", None)
    if cfg is None or not bool(cfg.get("streaming_mode", False)):
        return False
    if not hasattr(model, "sortformer_modules") or not hasattr(model, "forward_streaming_step"):
        return False
    normalize = str(cfg.get("preprocessor", {}).get("normalize", "NA") or "NA")
    return normalize.lower() in ("na", "none", "")


@dataclass(frozen=True)
class _StreamGeometry:
    """Where chunk k of a session lies, in feature frames and in samples."""

    chunk: int  # output frames per chunk
    left: int  # left context, output frames
    right: int  # right context, output frames
    sub: int  # feature frames per output frame
    hop: int  # samples per feature frame
    reach_back: int  # samples a feature frame reads before its hop start
    n_fft: int
    margin: int  # feature frames computed before the first one used
    params: np.ndarray = field(compare=False)

    @classmethod
    def of(cls, model: Any, overrides: Mapping[str, int]) -> _StreamGeometry:
        sm = model.sortformer_modules
        values = {k: int(overrides.get(k, getattr(sm, k))) for k in STREAM_PARAMS}
        if values["chunk_len"] < 1:
            raise ValueError("chunk_len must be >= 1")
        feat = model.preprocessor.featurizer
        hop, n_fft = int(feat.hop_length), int(feat.n_fft)
        pad = getattr(feat, "stft_pad_amount", None)
        reach_back = n_fft // 2 if pad is None else int(pad)
        sub = int(model.encoder.subsampling_factor)
        # Frames before the first used one: its window and pre-emphasis (one sample)
        # must lie inside the computed segment.
        margin = -(-(reach_back + 1) // hop)
        params = np.array([values[k] for k in STREAM_PARAMS] + [hop, sub, n_fft], np.int64)
        return cls(
            chunk=values["chunk_len"],
            left=values["chunk_left_context"],
            right=values["chunk_right_context"],
            sub=sub,
            hop=hop,
            reach_back=reach_back,
            n_fft=n_fft,
            margin=margin,
            params=params,
        )

    @property
    def lookahead(self) -> int:
        """Samples past its frame's hop that the last feature frame reads."""
        return self.n_fft - self.reach_back - self.hop

    def feature_span(self, k: int) -> tuple[int, int]:
        """Feature frames [start, end) chunk k reads: left context, chunk, right context."""
        start = k * self.chunk * self.sub
        return max(0, start - self.left * self.sub), start + (self.chunk + self.right) * self.sub

    def samples_needed(self, k: int) -> int:
        """Session samples needed before chunk k's features are final."""
        last = self.feature_span(k)[1] - 1
        # Its window must be complete, and the preprocessor must count it (n // hop frames
        # with centred windows).
        return max(last * self.hop - self.reach_back + self.n_fft, (last + 1) * self.hop)

    def keep_from(self, k: int) -> int:
        """First session sample chunk k still reads."""
        return max(0, self.feature_span(k)[0] - self.margin) * self.hop


@dataclass
class _StreamSession:
    """One session inside a `stream_step` call."""

    buf: np.ndarray
    start: int
    frames: int
    arrays: dict[str, np.ndarray]
    out: list[np.ndarray] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + int(self.buf.shape[0])

    def chunk_index(self, g: _StreamGeometry) -> int:
        return self.frames // g.chunk


def _quiet_streaming_progress() -> None:
    """NeMo's forward_streaming draws a tqdm bar per call in eval mode: keep it out of logs."""
    from nemo.collections.asr.models import sortformer_diar_models as sdm

    bar = sdm.tqdm
    if getattr(bar, "voxgraph_quiet", False):
        return

    def quiet(*args: Any, **kwargs: Any) -> Any:
        return bar(*args, **{**kwargs, "disable": True})

    quiet.voxgraph_quiet = True  # type: ignore[attr-defined]
    sdm.tqdm = quiet


def _padded(t: Any, rows: int) -> Any:
    """(n, d) -> (1, max(rows, n), d), zero rows appended."""
    import torch

    out = torch.zeros((1, max(rows, t.shape[0]), t.shape[1]), device=t.device, dtype=torch.float32)
    out[0, : t.shape[0]] = t
    return out


def _np(t: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy(), dtype=np.float32)


# ----------------------------------------------------------------------------- embeddings


class EmbedRunner(_Runner):
    """Batched TitaNet speaker embeddings, one row per clip (not normalised)."""

    def __init__(
        self,
        model: Any,
        device: str,
        precision: str = "fp32",
        max_batch: int = 32,
        name: str | None = None,
    ):
        super().__init__(model, device, precision, name)
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.dim = self._probe_dim()
        """Length of one embedding (192 for TitaNet)."""

    def _probe_dim(self) -> int:
        # What forward() returns is the truth, whatever the decoder's config says.
        with self._inference():
            return int(self._forward([_pad_short(np.zeros(0, np.float32))]).shape[-1])

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        audios = [_pad_short(_as_mono_f32(c)) for c in clips]
        out = np.zeros((len(audios), self.dim), dtype=np.float32)
        # Longest first so each sub-batch pads to a similar length.
        order = sorted(range(len(audios)), key=lambda i: audios[i].shape[0], reverse=True)
        with self._inference():
            for k in range(0, len(order), self.max_batch):
                chunk = order[k : k + self.max_batch]
                # Within max_batch clips, passes of at most max_batch_audio_s each.
                for group in self._groups([audios[i].shape[0] for i in chunk]):
                    idx = [chunk[g] for g in group]
                    out[idx] = self._forward([audios[i] for i in idx])
        return out

    def _forward(self, audios: list[np.ndarray]) -> np.ndarray:
        """Embeddings of one zero-padded sub-batch; call inside `_inference()`."""
        import torch

        lengths = [a.shape[0] for a in audios]
        signal = np.zeros((len(audios), max(lengths)), dtype=np.float32)
        for row, a in enumerate(audios):
            signal[row, : lengths[row]] = a
        _, emb = self.model.forward(
            input_signal=torch.from_numpy(signal).to(self.device),
            input_signal_length=torch.tensor(lengths, device=self.device),
        )
        return emb.float().cpu().numpy()


def _pad_short(a: np.ndarray) -> np.ndarray:
    min_len = int(EMBED_MIN_INPUT_S * SAMPLE_RATE)
    if a.shape[0] >= min_len:
        return a
    if a.shape[0] == 0:
        # Nothing to tile: the embedding of silence is defined, if meaningless.
        return np.zeros(min_len, dtype=np.float32)
    return np.resize(a, min_len)


# ----------------------------------------------------------------------------- serving

_RUNNERS: dict[str, type[_Runner]] = {
    "asr": AsrRunner,
    "diarizer": DiarRunner,
    "embedder": EmbedRunner,
}


def load_runner(role: Role, spec: str, device: str, precision: str = "fp32") -> _Runner:
    """Load `spec` (hub name or .nemo) and wrap it in the role's runner: what a replica serves.

    `precision="int8"` quantises the loaded model's linear layers (`quantize_int8`);
    it is refused on CUDA before anything loads.
    """
    check_device_precision(device, precision)
    if role not in _RUNNERS:
        raise ValueError(f"unknown model role {role!r}; expected 'asr', 'diarizer' or 'embedder'")
    model = load_model(role, spec, device)
    if role == "asr":
        # ASRModel.restore_from / from_pretrained return the checkpoint's own class.
        runner = asr_runner_class(model)(model, device, precision)
    else:
        runner = _RUNNERS[role](model, device, precision)
    if precision in CPU_ONLY_PRECISIONS:
        release_memory()  # the fp32 weights the quantised layers replaced
    return runner
