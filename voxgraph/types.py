"""Plain result types passed between deployments and the pure core.

They are frozen dataclasses (cheap to pickle across Ray handles, no Ray or
torch import). Times are always seconds from the start of the audio the
result refers to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
"""Every model and every core function works on 16 kHz mono float32."""


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    speaker: str | None = None
    speaker_confidence: float | None = None


@dataclass(frozen=True)
class Transcript:
    """What the ASR deployment returns for one clip."""

    text: str
    words: tuple[Word, ...]
    segments: tuple[Segment, ...]
    duration: float


@dataclass(frozen=True)
class Turn:
    """One speaker turn. `speaker` is a local index (diarizer) or a label."""

    start: float
    end: float
    speaker: int | str
    confidence: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Diarization:
    """What the diarizer deployment returns for one clip.

    `probs` is (frames, speakers) sigmoid activity, trimmed to the clip's own
    frame count; frame i covers [i * frame_s, (i + 1) * frame_s).
    """

    turns: tuple[Turn, ...]
    probs: np.ndarray
    frame_s: float
    duration: float


@dataclass(frozen=True)
class ModelInfo:
    """What a model deployment says about itself for /health and /."""

    role: str
    model: str
    device: str
    state: str  # "loading" | "ready" | "failed"
    error: str | None = None
    load_seconds: float | None = None
    capabilities: dict[str, bool] = field(default_factory=dict)
    languages: tuple[str, ...] = ()
    """ISO 639-1 codes the model must be told one of (Canary); empty when it detects them."""


@dataclass(frozen=True)
class DiarStreamState:
    """A streaming diarizer's memory of one session; numpy only, so it travels over Ray handles.

    Start a session with no state (None); every step returns the next one. Any replica
    serving the same model can take the next step.
    """

    arrays: dict[str, np.ndarray]
    """The model's streaming state for batch size 1, trimmed to its valid rows: speaker
    cache (+ its predictions), FIFO, silence profile, and the streaming parameters."""
    pending: np.ndarray
    """float32 16 kHz samples the next step still needs: the left context of the next
    chunk (already seen once) followed by the samples not yet consumed by any step."""
    frames: int
    """Output frames emitted so far in this session."""
    model: str
    """The model the state belongs to (a state from another model is refused)."""
    pending_start: int = 0
    """Session sample index of `pending[0]`."""

    @property
    def samples(self) -> int:
        """Samples received so far in this session."""
        return self.pending_start + int(self.pending.shape[0])


@dataclass(frozen=True)
class DiarStreamStep:
    """What one streaming step gives: activity of the frames it finalised, and the next state."""

    probs: np.ndarray
    """(new_frames, n_speakers) float32 sigmoid activity; row i is session frame start_frame + i."""
    frame_s: float
    """Seconds per row."""
    start_frame: int
    """Session frame index of probs[0] (the state's `frames` before this step)."""
    state: DiarStreamState


@dataclass(frozen=True)
class KeywordBoost:
    """Hotwords of one ASR request: phrases to bias recognition toward, and how strongly.

    Requests with equal `phrases` and `boost` share one boosting tree; a request
    without keywords carries no KeywordBoost (None) and is decoded without biasing.
    """

    phrases: tuple[str, ...]
    """Words or phrases, as the caller wrote them (validated, deduplicated)."""
    boost: float
    """Weight of the boosting tree's scores added to the decoder's (NeMo's alpha)."""


@dataclass(frozen=True)
class AudioSpan:
    """Samples [start, stop) of a recording placed once where every model can read it.

    `source` is what the transport resolves to the whole 16 kHz mono float32
    recording (in the graph, an object-store reference): a window travels as
    three numbers, and the model takes it as a view of the shared samples.
    """

    source: Any
    """The placed recording, resolved by the receiving deployment."""
    start: int
    """First sample of the span."""
    stop: int
    """One past the span's last sample."""
