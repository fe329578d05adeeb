"""NeMo model loading (hub name or local .nemo) and batched runners.

torch and NeMo are imported inside functions only: importing NeMo's ASR
collection takes ~20 s and ~850 MB, which the ingress and the pure core must
never pay. Every runner takes and returns plain numpy / voxgraph types, works
on 16 kHz mono float32, and never crashes on empty or sub-frame audio.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from voxgraph.turns import parse_nemo_segment, sorted_turns
from voxgraph.types import SAMPLE_RATE, Diarization, Segment, Transcript, Turn, Word

if TYPE_CHECKING:
    import torch

Role = Literal["asr", "diarizer", "embedder"]
Precision = Literal["fp32", "bf16", "fp16"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

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


def load_model(role: Role, spec: str, device: str, quiet: bool = True) -> Any:
    """Load a NeMo model from a local .nemo file or a hub name, in eval mode on `device`."""
    if quiet:
        quiet_nemo_logs()
    cls = _model_class(role)
    if is_local_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{role} model file not found: {path}")
        model = cls.restore_from(str(path), map_location=device)
    else:
        model = cls.from_pretrained(spec, map_location=device)
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


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


class _Runner:
    """Lock, inference mode and autocast shared by the three runners."""

    def __init__(self, model: Any, device: str, precision: str, name: str | None):
        _check_precision(precision)
        self.model = model
        self.device = device
        self.precision = precision
        self._name = name or getattr(model, "voxgraph_name", None) or type(model).__name__
        # NeMo's transcribe()/diarize() flip model state (train/eval, dither, decoding
        # config, an id->manifest map) for the duration of a call: never run two at once.
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._name

    def with_precision(self, precision: str) -> Self:
        """The same model behind another autocast precision; shares this runner's lock."""
        _check_precision(precision)
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
            if self.device.startswith("cuda") and self.precision != "fp32":
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

    @property
    def capabilities(self) -> dict[str, bool]:
        return {"transcribe": True, "timestamps": True, "translate": self._multitask}

    def transcribe(self, batch: Sequence[np.ndarray]) -> list[Transcript]:
        audios = [_as_mono_f32(x) for x in batch]
        out = [
            Transcript(text="", words=(), segments=(), duration=a.shape[0] / SAMPLE_RATE)
            for a in audios
        ]
        todo = [i for i, a in enumerate(audios) if a.shape[0] >= self.min_samples]
        min_len = int(ASR_MIN_INPUT_S * SAMPLE_RATE)
        inputs = [np.pad(audios[i], (0, max(0, min_len - audios[i].shape[0]))) for i in todo]
        if inputs:
            with self._inference():
                try:
                    hyps = self.model.transcribe(
                        inputs, batch_size=len(inputs), timestamps=True, verbose=False
                    )
                finally:
                    # NeMo 3.0's transcribe() leaves the encoder in training mode
                    # (dropout on) for whoever calls the model next.
                    self.model.eval()
            for i, hyp in zip(todo, hyps, strict=True):
                out[i] = self._to_transcript(hyp, out[i].duration)
        return out

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


def _nearest_span(spans: list[tuple[str, float, float]], t: float) -> int:
    """Index of the span containing t, else the closest one."""
    best, best_d = 0, math.inf
    for k, (_, start, end) in enumerate(spans):
        d = 0.0 if start <= t < end else min(abs(t - start), abs(t - end))
        if d < best_d:
            best, best_d = k, d
    return best


# ----------------------------------------------------------------------------- diarization


class DiarRunner(_Runner):
    """Batched Sortformer diarization: speaker turns plus per-frame activity probabilities."""

    def __init__(self, model: Any, device: str, precision: str = "fp32", name: str | None = None):
        super().__init__(model, device, precision, name)
        self.hop, self.subsampling = _geometry(model)
        self.frame_s = round(self.hop * self.subsampling / SAMPLE_RATE, 6)
        """Seconds per row of `probs` (0.08 for Sortformer 4spk-v1)."""
        self.num_speakers = int(model.sortformer_modules.n_spk)

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
        if todo:
            with self._inference():
                segments, probs = self.model.diarize(
                    audio=[audios[i] for i in todo],
                    sample_rate=SAMPLE_RATE,
                    batch_size=len(todo),
                    include_tensor_outputs=True,
                    verbose=False,
                )
            for i, lines, p in zip(todo, segments, probs, strict=True):
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
                idx = order[k : k + self.max_batch]
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
    """Load `spec` (hub name or .nemo) and wrap it in the role's runner: what a replica serves."""
    _check_precision(precision)
    if role not in _RUNNERS:
        raise ValueError(f"unknown model role {role!r}; expected 'asr', 'diarizer' or 'embedder'")
    return _RUNNERS[role](load_model(role, spec, device), device, precision)
