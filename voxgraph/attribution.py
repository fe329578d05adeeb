"""Who said which word: pure speaker attribution and window-merging of ASR.

The attribution follows WhisperX's `assign_word_speakers`, but decides with
the diarizer's frame probabilities rather than turn overlap alone, and
returns new objects instead of mutating its inputs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from voxgraph.turns import frame_span, speaker_label, turn_confidence
from voxgraph.types import Segment, Transcript, Turn, Word
from voxgraph.windows import Window

_DIGITS = 6
# Below this mean activity a word's frames say nothing about who spoke
# (Sortformer's silence sits near 0, speech near 1).
_MASS_FLOOR = 0.05


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Length of [a0, a1) ∩ [b0, b1); a zero-length [a0, a0] counts as inside when b0 <= a0 < b1."""
    if a1 <= a0:
        return 1e-9 if b0 <= a0 < b1 else 0.0
    return max(0.0, min(a1, b1) - max(a0, b0))


def _word_frames(start: float, end: float, frame_s: float, n_frames: int) -> tuple[int, int]:
    i0, i1 = frame_span(start, end, frame_s, n_frames)
    if i1 <= i0:
        # A zero-length word still sits inside one frame.
        i0 = min(max(0, math.floor(start / frame_s)), n_frames - 1)
        i1 = i0 + 1
    return max(0, i0), min(n_frames, i1)


class _TurnIndex:
    """Turns sorted by start, with a running maximum of ends for interval queries."""

    def __init__(self, turns: Sequence[Turn]):
        self.turns = sorted(turns, key=lambda t: (t.start, t.end))
        self.starts = [t.start for t in self.turns]
        self.max_end: list[float] = []
        self.argmax_end: list[int] = []
        best, arg = -math.inf, -1
        for k, t in enumerate(self.turns):
            if t.end > best:
                best, arg = t.end, k
            self.max_end.append(best)
            self.argmax_end.append(arg)

    def overlapping(self, start: float, end: float) -> list[tuple[Turn, float]]:
        """Turns overlapping [start, end) with the overlap length."""
        hi = bisect.bisect_right(self.starts, start if end <= start else end - 1e-12)
        found: list[tuple[Turn, float]] = []
        k = hi - 1
        # max_end is non-decreasing, so once it drops to <= start no earlier turn reaches us.
        while k >= 0 and self.max_end[k] > start:
            t = self.turns[k]
            ov = _overlap(start, end, t.start, t.end)
            if ov > 0:
                found.append((t, ov))
            k -= 1
        return found

    def nearest(self, start: float, end: float) -> Turn:
        """Closest turn to a word that overlaps none; ties go to the earlier turn."""
        nxt = bisect.bisect_left(self.starts, end)
        before = self.turns[self.argmax_end[nxt - 1]] if nxt > 0 else None
        after = self.turns[nxt] if nxt < len(self.turns) else None
        if before is None:
            assert after is not None
            return after
        if after is None or start - before.end <= after.start - end:
            return before
        return after


def _label_of(turn: Turn, label: Callable[[int], str]) -> str:
    return turn.speaker if isinstance(turn.speaker, str) else label(int(turn.speaker))


def assign_word_speakers(
    words: Sequence[Word],
    probs: np.ndarray,
    frame_s: float,
    turns: Sequence[Turn],
    label: Callable[[int], str] = speaker_label,
) -> list[Word]:
    """New words, each with the speaker who most likely said it.

    - Candidates are the speakers whose turns overlap the word; among them
      the one with the most activity-probability mass over the word's frames
      wins, so overlapped speech goes to the dominant speaker and a word
      straddling a turn change goes to whoever the frames say. (Speakers with
      no turn there are not candidates: a noisy column must not outvote the
      turns.)
    - A word overlapping no turn (a gap) goes to the nearest turn in time.
    - If the candidates' frames carry no mass above a small floor (or the
      matrix has no column for them), the largest time overlap decides.
    - No turns at all: every word's speaker is None.
    """
    if not turns:
        return [replace(w, speaker=None) for w in words]
    index = _TurnIndex(turns)
    usable = probs.ndim == 2 and probs.shape[0] > 0 and frame_s > 0
    # Running sums per speaker: a word's mean activity in O(1), not a numpy call per
    # word and speaker (the walk's largest CPU cost on a long transcript).
    csum: list[list[float]] = []
    if usable:
        zero = np.zeros((1, probs.shape[1]))
        csum = np.concatenate([zero, np.cumsum(probs, axis=0, dtype=np.float64)]).tolist()
    out: list[Word] = []
    for w in words:
        hits = index.overlapping(w.start, w.end)
        if not hits:
            out.append(replace(w, speaker=_label_of(index.nearest(w.start, w.end), label)))
            continue
        by_speaker: dict[int | str, float] = {}
        for t, ov in hits:
            by_speaker[t.speaker] = by_speaker.get(t.speaker, 0.0) + ov
        mass: dict[int | str, float] = {}
        if usable:
            i0, i1 = _word_frames(w.start, w.end, frame_s, probs.shape[0])
            for spk in by_speaker:
                if isinstance(spk, int | np.integer) and 0 <= spk < probs.shape[1] and i1 > i0:
                    k = int(spk)
                    mass[spk] = (csum[i1][k] - csum[i0][k]) / (i1 - i0)
        if mass and max(mass.values()) >= _MASS_FLOOR:
            best = max(mass, key=lambda s: (mass[s], by_speaker[s], -_order(s)))
        else:
            best = max(by_speaker, key=lambda s: (by_speaker[s], -_order(s)))
        speaker = best if isinstance(best, str) else label(int(best))
        out.append(replace(w, speaker=speaker))
    return out


def _order(speaker: int | str) -> float:
    """Tie-break towards the lower speaker index (labels sort after indices)."""
    return float(speaker) if isinstance(speaker, int | np.integer) else math.inf


def _columns(probs: np.ndarray, label: Callable[[int], str]) -> dict[str, int]:
    n = probs.shape[1] if probs.ndim == 2 else 0
    return {label(k): k for k in range(n)}


def _confidence(
    probs: np.ndarray, frame_s: float, start: float, end: float, column: int | None
) -> float | None:
    if column is None:
        return None
    return turn_confidence(probs, frame_s, Turn(start, end, column))


def split_segments_by_speaker(
    segments: Sequence[Segment],
    words_with_speakers: Sequence[Word],
    probs: np.ndarray,
    frame_s: float,
    label: Callable[[int], str] = speaker_label,
) -> list[Segment]:
    """Segments cut at every speaker change, each with speaker and speaker_confidence.

    A segment's words are matched to `words_with_speakers` by (text, start,
    end) when the segment lists its words, else by the word's midpoint
    falling inside the segment. An unsplit segment keeps its own text (the
    ASR's punctuation and spacing); split pieces get their words joined with
    spaces, the first piece starting at the segment's start and the last
    ending at its end. A segment without words gets the speaker with the
    most mass over its frames, or None. `speaker_confidence` is the mean of
    that speaker's probability over the piece's frames.
    """
    columns = _columns(probs, label)
    pending: dict[tuple[str, float, float], list[Word]] = {}
    for w in words_with_speakers:
        pending.setdefault((w.text, w.start, w.end), []).append(w)
    mids = sorted(((w.start + w.end) / 2, k) for k, w in enumerate(words_with_speakers))
    mid_keys = [m for m, _ in mids]

    out: list[Segment] = []
    for seg in segments:
        if seg.words:
            words = []
            for w in seg.words:
                queue = pending.get((w.text, w.start, w.end))
                words.append(queue.pop(0) if queue else w)
        else:
            lo = bisect.bisect_left(mid_keys, seg.start)
            hi = bisect.bisect_left(mid_keys, seg.end)
            words = [words_with_speakers[k] for _, k in mids[lo:hi]]
        if not words:
            speaker = _dominant(probs, frame_s, seg.start, seg.end, label)
            col = columns.get(speaker) if speaker is not None else None
            conf = _confidence(probs, frame_s, seg.start, seg.end, col)
            out.append(replace(seg, speaker=speaker, speaker_confidence=conf))
            continue
        groups: list[list[Word]] = []
        for w in words:
            if groups and groups[-1][-1].speaker == w.speaker:
                groups[-1].append(w)
            else:
                groups.append([w])
        for g, group in enumerate(groups):
            start = seg.start if g == 0 else group[0].start
            end = seg.end if g == len(groups) - 1 else group[-1].end
            text = seg.text if len(groups) == 1 else " ".join(w.text for w in group)
            speaker = group[0].speaker
            col = columns.get(speaker) if speaker is not None else None
            conf = _confidence(probs, frame_s, start, end, col)
            out.append(
                Segment(text, start, end, tuple(group), speaker=speaker, speaker_confidence=conf)
            )
    return out


def _dominant(
    probs: np.ndarray, frame_s: float, start: float, end: float, label: Callable[[int], str]
) -> str | None:
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        return None
    i0, i1 = _word_frames(start, end, frame_s, probs.shape[0])
    if i1 <= i0:
        return None
    means = probs[i0:i1].mean(axis=0)
    k = int(np.argmax(means))
    return label(k) if means[k] >= _MASS_FLOOR else None


# --- long-audio ASR: windows merged by timestamps ---------------------------


def _shift(w: Word, offset: float) -> Word:
    return replace(w, start=round(offset + w.start, _DIGITS), end=round(offset + w.end, _DIGITS))


def _mid(w: Word) -> float:
    return (w.start + w.end) / 2


def _same_word(a: Word, b: Word) -> bool:
    """Two windows' copies of one spoken word: they share at least half the shorter span."""
    shorter = min(a.end - a.start, b.end - b.start)
    ov = _overlap(a.start, a.end, b.start, b.end)
    return ov > 0 and ov >= 0.5 * shorter


def _placed_words(transcript: Transcript) -> list[tuple[Word, int]]:
    """(word, segment index) in the window's order; -1 when no segment lists it."""
    if any(seg.words for seg in transcript.segments):
        return [(w, s) for s, seg in enumerate(transcript.segments) for w in seg.words]
    starts = [seg.start for seg in transcript.segments]
    placed = []
    for w in transcript.words:
        s = bisect.bisect_right(starts, _mid(w)) - 1
        inside = s >= 0 and _mid(w) <= transcript.segments[s].end
        placed.append((w, s if inside else -1))
    return placed


def merge_window_transcripts(
    windows: Sequence[Window], transcripts: Sequence[Transcript]
) -> Transcript:
    """One global Transcript from per-window transcripts (times relative to each window).

    A word is kept by the window whose core contains its midpoint (the first
    and last cores are open-ended). Two fix-ups at each seam guard against
    the windows timing one word slightly differently: a word straddling the
    seam that both windows assign to the other is kept once (from the
    earlier window), and a later-window word that duplicates a kept
    earlier-window word (they share at least half the shorter span) is
    dropped. Segments are rebuilt per (window, original segment) from the
    kept words; a fully kept segment keeps its own text.
    """
    if len(windows) != len(transcripts):
        raise ValueError(f"expected {len(windows)} transcripts, got {len(transcripts)}")
    if not windows:
        return Transcript(text="", words=(), segments=(), duration=0.0)
    last = len(windows) - 1
    placed = [
        [(_shift(w, win.start_s), s) for w, s in _placed_words(tr)]
        for win, tr in zip(windows, transcripts, strict=True)
    ]
    keep = [
        [win.in_core(_mid(w), first=i == 0, last=i == last) for w, _ in placed[i]]
        for i, win in enumerate(windows)
    ]
    for i in range(last):
        _fix_seam(windows[i].core_end_s, placed[i], keep[i], placed[i + 1], keep[i + 1])

    groups: dict[tuple[int, int], list[Word]] = {}
    listed: dict[tuple[int, int], int] = {}
    for i, (words, flags) in enumerate(zip(placed, keep, strict=True)):
        for (w, s), kept in zip(words, flags, strict=True):
            listed[(i, s)] = listed.get((i, s), 0) + 1
            if kept:
                groups.setdefault((i, s), []).append(w)

    segments: list[Segment] = []
    for (i, s), words in groups.items():
        if s < 0:
            segments.extend(Segment(w.text, w.start, w.end, (w,)) for w in words)
            continue
        seg = transcripts[i].segments[s]
        if len(words) == listed[(i, s)]:
            start = round(windows[i].start_s + seg.start, _DIGITS)
            end = round(windows[i].start_s + seg.end, _DIGITS)
            segments.append(replace(seg, start=start, end=end, words=tuple(words)))
        else:
            text = " ".join(w.text for w in words)
            segments.append(
                replace(seg, text=text, start=words[0].start, end=words[-1].end, words=tuple(words))
            )
    # Segments without words: owned like words, by their midpoint.
    for i, (win, tr) in enumerate(zip(windows, transcripts, strict=True)):
        for s, seg in enumerate(tr.segments):
            if (i, s) in listed:
                continue
            start = round(win.start_s + seg.start, _DIGITS)
            end = round(win.start_s + seg.end, _DIGITS)
            if win.in_core((start + end) / 2, first=i == 0, last=i == last):
                segments.append(replace(seg, start=start, end=end))
    segments.sort(key=lambda seg: (seg.start, seg.end))
    words_out = sorted((w for seg in segments for w in seg.words), key=lambda w: (w.start, w.end))
    text = " ".join(seg.text.strip() for seg in segments if seg.text.strip())
    return Transcript(
        text=text, words=tuple(words_out), segments=tuple(segments), duration=windows[-1].end_s
    )


class WindowMerge:
    """`merge_window_transcripts` fed window by window, in order, for a stream.

    `add` returns the segments that are settled: no later window can change or
    precede them. A window's seam fix-ups only touch words straddling its core
    end and everything from the next window starts at or after that window's
    start, so a merged segment ending before the next window's start is final.
    Once every window is in, the rest comes out and `result` is exactly
    `merge_window_transcripts(windows, transcripts)`.
    """

    def __init__(self, windows: Sequence[Window]):
        self.windows = list(windows)
        self.parts: list[Transcript] = []
        self.sent = 0
        self.result: Transcript | None = None

    @property
    def complete(self) -> bool:
        return len(self.parts) == len(self.windows)

    def add(self, transcript: Transcript) -> list[Segment]:
        """Take the next window's transcript; the segments it settles, in order."""
        if self.complete:
            raise ValueError("every window is already in")
        self.parts.append(transcript)
        k = len(self.parts)
        if self.complete:
            self.result = merge_window_transcripts(self.windows, self.parts)
            segments, horizon = self.result.segments, math.inf
        else:
            # Windows still out count as silent: words they might take back (seam
            # straddlers) are kept here, so segments holding them are not settled.
            silent = [Transcript("", (), (), w.duration_s) for w in self.windows[k:]]
            segments = merge_window_transcripts(self.windows, self.parts + silent).segments
            horizon = self.windows[k].start_s
        settled = self.sent
        while settled < len(segments) and segments[settled].end < horizon:
            settled += 1
        out = list(segments[self.sent : settled])
        self.sent = settled
        return out


def _fix_seam(
    seam: float,
    a_words: list[tuple[Word, int]],
    a_keep: list[bool],
    b_words: list[tuple[Word, int]],
    b_keep: list[bool],
) -> None:
    """Rescue seam-straddling words both windows gave away; drop the later copy of duplicates."""

    def straddles(w: Word) -> bool:
        return w.start < seam < w.end

    def kept(words: list[tuple[Word, int]], flags: list[bool]) -> list[Word]:
        return [w for (w, _), k in zip(words, flags, strict=True) if k and straddles_near(w)]

    def straddles_near(w: Word) -> bool:
        # Only words that could be copies of seam words matter; this keeps the check local.
        return w.end > seam - 5.0 and w.start < seam + 5.0

    for k, (w, _) in enumerate(a_words):
        gave_away = not a_keep[k] and straddles(w) and _mid(w) >= seam
        if gave_away and not any(_same_word(w, x) for x in kept(b_words, b_keep)):
            a_keep[k] = True
    for k, (w, _) in enumerate(b_words):
        gave_away = not b_keep[k] and straddles(w) and _mid(w) < seam
        if gave_away and not any(_same_word(w, x) for x in kept(a_words, a_keep)):
            b_keep[k] = True
    a_near = kept(a_words, a_keep)
    for k, (w, _) in enumerate(b_words):
        if b_keep[k] and straddles_near(w) and any(_same_word(w, x) for x in a_near):
            b_keep[k] = False
