"""Speaker turns: parsing the diarizer's output and attaching confidence.

A turn's confidence is the mean, over the frames the turn covers, of the
assigned speaker's activity probability. Frame i covers
[i * frame_s, (i + 1) * frame_s); a turn covers every frame it overlaps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence

import numpy as np

from voxgraph.types import Turn

# Boundaries come from frame indices times 0.08 and are printed rounded, so
# "1.36" may be 16.999999 frames: snap within this tolerance before flooring.
_FRAME_EPS = 1e-3

_SEGMENT_RE = re.compile(r"^\s*(\S+)\s+(\S+)\s+speaker_(\d+)\s*$")


def speaker_label(index: int) -> str:
    return f"Speaker_{index}"


def parse_nemo_segment(line: str) -> Turn:
    """Parse Sortformer's `"start end speaker_k"` string into a Turn."""
    m = _SEGMENT_RE.match(line)
    if not m:
        raise ValueError(f"unrecognised diarization segment: {line!r}")
    start, end = float(m.group(1)), float(m.group(2))
    return Turn(start=start, end=end, speaker=int(m.group(3)))


def frame_span(start: float, end: float, frame_s: float, n_frames: int) -> tuple[int, int]:
    """Indices [i0, i1) of the frames that [start, end) overlaps, clipped to the matrix."""
    i0 = math.floor(start / frame_s + _FRAME_EPS)
    i1 = math.ceil(end / frame_s - _FRAME_EPS)
    return max(0, i0), min(n_frames, i1)


def turn_confidence(probs: np.ndarray, frame_s: float, turn: Turn) -> float | None:
    """Mean activity of the turn's speaker over the turn's frames, or None.

    None only when it cannot be derived: no frames under the turn, or a
    speaker index the matrix has no column for.
    """
    if not isinstance(turn.speaker, int | np.integer):
        return None
    if probs.ndim != 2 or not 0 <= int(turn.speaker) < probs.shape[1] or turn.end <= turn.start:
        return None
    i0, i1 = frame_span(turn.start, turn.end, frame_s, probs.shape[0])
    if i1 <= i0:
        return None
    value = float(np.mean(probs[i0:i1, int(turn.speaker)]))
    # Sigmoid outputs are in [0, 1]; clamp only float noise, never rescale.
    return min(1.0, max(0.0, value))


def with_confidence(turns: Iterable[Turn], probs: np.ndarray, frame_s: float) -> list[Turn]:
    """New turns with `confidence` filled from the probability matrix."""
    return [Turn(t.start, t.end, t.speaker, turn_confidence(probs, frame_s, t)) for t in turns]


def speech_seconds(turns: Sequence[Turn]) -> dict[int | str, float]:
    """Total turn duration per speaker (overlapping turns of one speaker counted once each)."""
    totals: dict[int | str, float] = {}
    for t in turns:
        totals[t.speaker] = totals.get(t.speaker, 0.0) + max(0.0, t.end - t.start)
    return totals


def sorted_turns(turns: Iterable[Turn]) -> list[Turn]:
    return sorted(turns, key=lambda t: (t.start, t.end, str(t.speaker)))


def speaker_clips(
    samples: np.ndarray,
    turns: Sequence[Turn],
    min_speech_s: float,
    sample_rate: int = 16_000,
    max_speech_s: float | None = None,
) -> dict[int | str, np.ndarray]:
    """Each speaker's turns' audio, concatenated in time order, for speakers with enough speech.

    Speakers under `min_speech_s` get no clip: a fingerprint from a fraction
    of a second is noise that would mislead whoever links speakers with it.
    `max_speech_s` (None: no limit) caps a clip: a speaker embedding stops improving
    after some tens of seconds while its cost grows with every second, so a capped
    clip keeps the speaker's longest turns (the fewest boundaries and overlaps) up to
    the cap, the last one cut short.
    """
    pieces: dict[int | str, list[tuple[int, int]]] = {}
    for t in sorted_turns(turns):
        a = max(0, round(t.start * sample_rate))
        b = min(len(samples), round(t.end * sample_rate))
        if b > a:
            pieces.setdefault(t.speaker, []).append((a, b))
    min_samples = round(min_speech_s * sample_rate)
    cap = None if max_speech_s is None else max(1, round(max_speech_s * sample_rate))
    clips: dict[int | str, np.ndarray] = {}
    for spk, spans in pieces.items():
        if sum(b - a for a, b in spans) < min_samples:
            continue
        if cap is not None:
            spans = _longest_spans(spans, cap)
        clips[spk] = np.concatenate([samples[a:b] for a, b in spans]).astype(np.float32, copy=False)
    return clips


def _longest_spans(spans: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    """The longest spans totalling at most `cap` samples (the last cut short), in time order."""
    kept: list[tuple[int, int]] = []
    left = cap
    for a, b in sorted(spans, key=lambda s: (s[0] - s[1], s[0])):
        if left <= 0:
            break
        kept.append((a, min(b, a + left)))
        left -= kept[-1][1] - a
    return sorted(kept)


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """Unit-length float32 copy of `v` (zero vectors stay zero)."""
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v.copy()


async def speaker_fingerprints(
    samples: np.ndarray,
    turns: Sequence[Turn],
    min_speech_s: float,
    embed: Callable[[list[np.ndarray]], Awaitable[np.ndarray]],
    max_speech_s: float | None = None,
) -> dict[int, np.ndarray]:
    """L2-normalised fingerprint per local speaker with enough speech, from one `embed` call
    (each speaker's clip capped at `max_speech_s`, see `speaker_clips`)."""
    clips = speaker_clips(samples, turns, min_speech_s, max_speech_s=max_speech_s)
    if not clips:
        return {}
    speakers = sorted(clips)
    embs = await embed([clips[k] for k in speakers])
    return {int(k): l2_normalise(e) for k, e in zip(speakers, embs, strict=True)}
