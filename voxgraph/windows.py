"""Cutting long audio into overlapping windows that each own a core region.

Sortformer was trained on ~90 s sessions and Parakeet's full attention holds
~24 min, so long audio is processed window by window. Consecutive windows
overlap (the overlap is where speakers of neighbouring windows are linked and
where ASR words cut by a window edge are seen whole by the other window), and
each overlap is split at its midpoint: every instant of the recording belongs
to exactly one window's *core*, so stitched results have no gap and no
duplicate.

All window starts and core boundaries sit on the diarizer's frame grid
(multiples of `frame_s`), so frame i of a window is exactly global frame
`start_frame + i` and nothing has to be resampled when windows are stitched.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from voxgraph.types import SAMPLE_RATE

# Times are products of frame counts and 0.08; rounding to the microsecond
# makes 3 * 0.08 print (and compare) as 0.24, not 0.24000000000000002.
_DIGITS = 6
_EPS = 1e-6


@dataclass(frozen=True)
class Window:
    """One window of a recording, in global seconds.

    The window spans [start_s, end_s); results from it are kept only for
    [core_start_s, core_end_s). Cores of consecutive windows touch, and the
    cores of a plan tile [0, duration) exactly.
    """

    index: int
    start_s: float
    end_s: float
    core_start_s: float
    core_end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def start_frame(self, frame_s: float) -> int:
        """Global index of the window's first frame (starts are frame multiples)."""
        return round(self.start_s / frame_s)

    def core_frames(self, frame_s: float) -> tuple[int, int]:
        """Global frame indices [f0, f1) of the core; the last core may end mid-frame."""
        return round(self.core_start_s / frame_s), math.ceil(self.core_end_s / frame_s - _EPS)

    def in_core(self, t: float, *, first: bool = False, last: bool = False) -> bool:
        """Whether global time t is owned by this window (`first`/`last` open the outer ends)."""
        lo_ok = first or t >= self.core_start_s
        hi_ok = last or t < self.core_end_s
        return lo_ok and hi_ok


def _t(frames: int, frame_s: float) -> float:
    return round(frames * frame_s, _DIGITS)


def plan_windows(
    duration_s: float, window_s: float, overlap_s: float, frame_s: float = 0.08
) -> list[Window]:
    """Overlapping windows covering [0, duration_s), starts on the frame grid.

    - Audio not longer than `window_s` gives exactly one window; zero-length
      audio gives none.
    - Otherwise every window is `floor(window_s / frame_s)` frames long (the
      last one ends at `duration_s`, never longer than `window_s`). The
      windows are spread evenly, so consecutive ones overlap by at least
      `overlap_s` (rounded up to whole frames) and the last window is never a
      sliver: the spare length goes into the overlaps instead.
    - Each overlap is split at its (frame-rounded) midpoint into the two
      windows' cores.
    """
    values = (duration_s, window_s, overlap_s, frame_s)
    if not all(math.isfinite(v) for v in values):
        raise ValueError("window plan needs finite numbers")
    if duration_s < 0:
        raise ValueError(f"duration must be >= 0, got {duration_s}")
    if frame_s <= 0 or window_s <= 0 or overlap_s < 0:
        raise ValueError("frame_s and window_s must be > 0 and overlap_s >= 0")
    if duration_s == 0:
        return []
    duration_s = float(duration_s)
    if duration_s <= window_s + _EPS:
        return [Window(0, 0.0, duration_s, 0.0, duration_s)]

    total = duration_s / frame_s  # recording length in (fractional) frames
    length = math.floor(window_s / frame_s + _EPS)
    overlap = math.ceil(overlap_s / frame_s - _EPS)
    hop = length - overlap
    if length < 1 or hop < 1:
        raise ValueError(
            f"overlap ({overlap_s} s) must be shorter than the window ({window_s} s) by a frame"
        )
    # max(1, ...): audio a hair longer than the window still needs a second window.
    count = max(1, math.ceil((total - length) / hop - _EPS)) + 1
    last = max(1, math.ceil(total - length - _EPS))  # the last window ends at duration_s
    # Integer ceil division keeps every hop <= `hop` (see module docstring), so
    # no overlap ends up shorter than requested.
    starts = [-(-i * last // (count - 1)) for i in range(count)]
    bounds = [0]
    for a, b in itertools.pairwise(starts):
        bounds.append((b + a + length) // 2)  # midpoint of the overlap [b, a + length)

    windows: list[Window] = []
    for i, s in enumerate(starts):
        is_last = i == count - 1
        end = duration_s if is_last else _t(s + length, frame_s)
        core_end = duration_s if is_last else _t(bounds[i + 1], frame_s)
        windows.append(Window(i, _t(s, frame_s), end, _t(bounds[i], frame_s), core_end))
    return windows


def window_samples(
    samples: np.ndarray, window: Window, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """The window's slice of a 16 kHz signal: a view, so memory stays bounded by the window."""
    i0 = round(window.start_s * sample_rate)
    i1 = round(window.end_s * sample_rate)
    return samples[i0:i1]
