"""Plain result types passed between deployments and the pure core.

They are frozen dataclasses (cheap to pickle across Ray handles, no Ray or
torch import). Times are always seconds from the start of the audio the
result refers to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
