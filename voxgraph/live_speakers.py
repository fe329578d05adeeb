"""Speakers of a live session (or a streamed file), linked chunk by chunk.

A file's speakers are clustered once all its windows are in (voxgraph.linking).
A session cannot wait for its end: each new chunk's local speakers are linked
to the session's speakers as the chunk arrives, and never relabelled after.

The evidence is the long-file rule's (voxgraph.linking), seen from one side:
- fingerprints: cosine of the local speaker's L2-normalised fingerprint with the
  session speaker's voiceprint (its chunks' fingerprints weighted by their
  speech, so a voice's print sharpens as it talks), weight 1;
- overlap agreement: where the chunk re-hears frames already labelled (rolling
  windows overlap), the Dice coefficient of the local speaker's active frames
  and the session speaker's, weight `overlap_weight * min(1, union_s / overlap_ref_s)`.

Local speakers and session speakers are paired one to one (two voices of one
chunk are never one speaker), best score first, while the score exceeds the
threshold. A local speaker left over becomes a new session speaker, numbered in
order of first speech, so `Speaker_0` is the first voice of the session.

Memory is bounded: one voiceprint per speaker and frame labels of the last
`context_s` seconds.
"""

from __future__ import annotations

import math

import numpy as np

from voxgraph.linking import _normalise as _unit
from voxgraph.turns import speech_seconds
from voxgraph.types import Diarization


class SessionSpeakers:
    """Stable speaker indices for a stream of diarized chunks."""

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        context_s: float = 90.0,
        overlap_weight: float = 1.0,
        overlap_ref_s: float = 2.0,
        activity_threshold: float = 0.5,
        max_speakers: int = 64,
    ):
        self.threshold = threshold
        self.context_s = context_s
        self.overlap_weight = overlap_weight
        self.overlap_ref_s = overlap_ref_s
        self.activity_threshold = activity_threshold
        self.max_speakers = max_speakers
        self._sums: list[np.ndarray | None] = []  # speech-weighted fingerprint sums
        self._speech: list[float] = []
        # Which session speaker was active in each recent frame (session time).
        self._frame_s: float | None = None
        self._act_start = 0  # session frame index of _act[0]
        self._act = np.zeros((0, 0), dtype=bool)

    @property
    def count(self) -> int:
        return len(self._speech)

    @property
    def voiceprints(self) -> dict[int, np.ndarray]:
        """Each speaker's L2-normalised voiceprint (speakers never fingerprinted are absent)."""
        out: dict[int, np.ndarray] = {}
        for g, s in enumerate(self._sums):
            u = None if s is None else _unit(s)
            if u is not None:
                out[g] = u.astype(np.float32)
        return out

    @property
    def speech(self) -> dict[int, float]:
        """Seconds of speech each session speaker's voiceprint was pooled from."""
        return dict(enumerate(self._speech))

    def link(
        self,
        diar: Diarization,
        prints: dict[int, np.ndarray],
        offset_s: float = 0.0,
        may_be_new: set[int] | None = None,
    ) -> dict[int, int]:
        """Local speaker -> session speaker for one chunk starting `offset_s` into the session.

        `diar` has chunk-relative times; `prints` maps local speakers with enough
        speech to their fingerprints. Only local speakers with turns are mapped;
        of those that match no one, only `may_be_new` (default: all) become new
        session speakers, the others stay unmapped (a voice heard only in the
        context before a turn is not yet a speaker of the session).
        The session's voiceprints and recent frame labels take the chunk in.
        """
        speech = speech_seconds(diar.turns)
        first: dict[int, float] = {}
        for t in diar.turns:
            first[int(t.speaker)] = min(first.get(int(t.speaker), math.inf), t.start)
        locals_ = sorted(first, key=lambda k: (first[k], k))
        if not locals_:
            return {}
        units = {k: _unit(prints[k]) for k in locals_ if k in prints}
        score = self._scores(diar, locals_, units, offset_s)
        mapping: dict[int, int] = {}
        taken: set[int] = set()
        while score.size and np.isfinite(score).any():
            i, g = np.unravel_index(int(np.argmax(score)), score.shape)
            if score[i, g] <= self.threshold:
                break
            mapping[locals_[int(i)]] = int(g)
            taken.add(int(g))
            score[i, :] = -np.inf
            score[:, g] = -np.inf
        for k in locals_:
            if k in mapping or (may_be_new is not None and k not in may_be_new):
                continue
            if self.count >= self.max_speakers:
                # A session past its speaker cap folds new voices into the closest one.
                mapping[k] = self._closest(units.get(k), exclude=taken)
            else:
                mapping[k] = self._new_speaker()
            taken.add(mapping[k])
        for k, g in mapping.items():
            u = units.get(k)
            sec = float(speech.get(k, 0.0))
            if u is not None and sec > 0:
                s = self._sums[g]
                self._sums[g] = sec * u if s is None else s + sec * u
            self._speech[g] += sec
        self._remember(diar, mapping, offset_s)
        return mapping

    # ------------------------------------------------------------ evidence

    def _scores(
        self,
        diar: Diarization,
        locals_: list[int],
        units: dict[int, np.ndarray | None],
        offset_s: float,
    ) -> np.ndarray:
        n, m = len(locals_), self.count
        sim = np.zeros((n, m))
        weight = np.zeros((n, m))
        prints = self.voiceprints
        for i, k in enumerate(locals_):
            u = units.get(k)
            if u is None:
                continue
            for g, v in prints.items():
                sim[i, g] += float(u @ v)
                weight[i, g] += 1.0
        if self.overlap_weight > 0 and m and diar.probs.ndim == 2 and len(self._act):
            self._overlap(diar, locals_, offset_s, sim, weight)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, sim / np.where(weight > 0, weight, 1.0), -np.inf)

    def _overlap(
        self,
        diar: Diarization,
        locals_: list[int],
        offset_s: float,
        sim: np.ndarray,
        weight: np.ndarray,
    ) -> None:
        frame_s = diar.frame_s
        if self._frame_s is None or not math.isclose(frame_s, self._frame_s):
            return
        start = round(offset_s / frame_s)
        lo = max(start, self._act_start)
        hi = min(start + diar.probs.shape[0], self._act_start + len(self._act))
        if hi <= lo:
            return
        mine = diar.probs[lo - start : hi - start] >= self.activity_threshold
        seen = self._act[lo - self._act_start : hi - self._act_start]
        for i, k in enumerate(locals_):
            if k >= mine.shape[1]:
                continue
            a = mine[:, k]
            for g in range(min(seen.shape[1], weight.shape[1])):
                b = seen[:, g]
                union = int(np.count_nonzero(a | b))
                if union == 0:
                    continue
                dice = 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
                w = self.overlap_weight * min(1.0, union * frame_s / self.overlap_ref_s)
                sim[i, g] += w * dice
                weight[i, g] += w

    # ------------------------------------------------------------ state

    def _new_speaker(self) -> int:
        self._sums.append(None)
        self._speech.append(0.0)
        if self._act.shape[1] < self.count:
            self._act = np.pad(self._act, ((0, 0), (0, self.count - self._act.shape[1])))
        return self.count - 1

    def _closest(self, u: np.ndarray | None, exclude: set[int]) -> int:
        options = [g for g in range(self.count) if g not in exclude] or list(range(self.count))
        if u is None:
            return max(options, key=lambda g: self._speech[g])
        prints = self.voiceprints
        return max(options, key=lambda g: float(u @ prints[g]) if g in prints else -2.0)

    def _remember(self, diar: Diarization, mapping: dict[int, int], offset_s: float) -> None:
        if diar.probs.ndim != 2 or not diar.probs.shape[0]:
            return
        frame_s = diar.frame_s
        if self._frame_s is None or not math.isclose(frame_s, self._frame_s):
            self._frame_s, self._act_start = frame_s, round(offset_s / frame_s)
            self._act = np.zeros((0, self.count), dtype=bool)
        start = round(offset_s / frame_s)
        end = start + diar.probs.shape[0]
        if start < self._act_start:
            return  # older than what is kept: nothing to add
        have_end = self._act_start + len(self._act)
        if end > have_end:
            grow = end - have_end
            self._act = np.pad(self._act, ((0, grow), (0, self.count - self._act.shape[1])))
        elif self._act.shape[1] < self.count:
            self._act = np.pad(self._act, ((0, 0), (0, self.count - self._act.shape[1])))
        rows = np.zeros((end - start, self.count), dtype=bool)
        active = diar.probs >= self.activity_threshold
        for k, g in mapping.items():
            if k < active.shape[1]:
                rows[:, g] = active[:, k]
        # The newest chunk heard these frames with the most context: its labels win.
        self._act[start - self._act_start : end - self._act_start] = rows
        keep = max(1, math.ceil(self.context_s / frame_s))
        if len(self._act) > keep:
            cut = len(self._act) - keep
            self._act = self._act[cut:]
            self._act_start += cut
