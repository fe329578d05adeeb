"""Oracle tests: voxgraph's own post-processing must add no error.

From a ground truth (speakers, turns with overlaps, words) we synthesise what
the models would give for every window of a long recording: Sortformer-like
frame probabilities (noisy, local speaker order permuted per window, at most 4
speakers), the turns Sortformer derives from them, TitaNet-like fingerprints
drawn around per-speaker centres, and Parakeet-like word timings per window.
Then plan_windows -> link_speakers -> stitch -> merge_window_transcripts ->
assign_word_speakers -> split_segments_by_speaker must reproduce the truth:
DER exactly 0.0 (pyannote.metrics, collar 0, overlap scored) and no word
given to the wrong speaker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from pyannote.core import Annotation, Timeline
from pyannote.core import Segment as Span
from pyannote.metrics.diarization import DiarizationErrorRate

from voxgraph.attribution import (
    assign_word_speakers,
    merge_window_transcripts,
    split_segments_by_speaker,
)
from voxgraph.linking import SpeakerHints, link_speakers, stitch
from voxgraph.turns import speaker_label
from voxgraph.types import Diarization, Segment, Transcript, Turn, Word
from voxgraph.windows import Window, plan_windows

FRAME = 0.08
BLOCK_S = 60.0  # the cast of speakers changes by at most one person per block
WINDOW_S, OVERLAP_S = 30.0, 6.0  # short windows: many of them, and many seams
DIM = 192
SIGMA = 0.045  # same-speaker fingerprint cosine ~ 1 / (1 + 192 sigma^2) ~ 0.72
SILENT, LEADING, BACKGROUND = 0, 1, 2  # activity levels of a speaker in a frame


def t(frame: int) -> float:
    return round(frame * FRAME, 6)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


@dataclass(frozen=True)
class Scene:
    level: np.ndarray  # (frames, speakers): SILENT / LEADING / BACKGROUND (overlapped, quieter)
    words: tuple[tuple[str, int, int, int], ...]  # text, first frame, end frame, speaker

    @property
    def n_frames(self) -> int:
        return self.level.shape[0]

    @property
    def duration(self) -> float:
        return t(self.n_frames)


def make_scene(schedule: Sequence[tuple[int, ...]], rng: np.random.Generator) -> Scene:
    n_frames = round(len(schedule) * BLOCK_S / FRAME)
    n_speakers = 1 + max(max(cast) for cast in schedule)
    level = np.zeros((n_frames, n_speakers), dtype=np.int8)
    turns: list[tuple[int, int, int]] = []
    while True:
        prev = turns[-1] if turns else None
        before_prev_end = turns[-2][1] if len(turns) > 1 else 0
        start_block = min(len(schedule) - 1, int((prev[1] if prev else 0) * FRAME // BLOCK_S))
        cast = [s for s in schedule[start_block] if prev is None or s != prev[2]]
        speaker = int(rng.choice(cast))
        if prev is not None and rng.random() < 0.25:
            # Interrupt the previous speaker (never a third voice at once).
            start = max(prev[1] - int(rng.integers(4, 13)), before_prev_end + 1, prev[0] + 1)
        else:
            start = (prev[1] if prev else 0) + int(rng.integers(0, 16))
        end = start + int(rng.integers(15, 76))
        if end > n_frames:
            break
        level[start:end, speaker] = LEADING
        if prev is not None and start < prev[1]:
            quiet = prev[2] if rng.random() < 0.5 else speaker
            level[start : prev[1], quiet] = BACKGROUND
        turns.append((start, end, speaker))

    words: list[tuple[str, int, int, int]] = []
    for k in range(n_speakers):
        for a, b in runs(level[:, k] == LEADING):
            cursor = a
            while b - cursor >= 2:
                length = min(int(rng.integers(2, 7)), b - cursor)
                words.append(("", cursor, cursor + length, k))
                cursor += length + int(rng.integers(0, 3))
    # A word the ASR timed into a gap, just after a turn: it belongs to the nearest turn.
    speaking = level.max(axis=1) > 0
    for a, b in runs(~speaking):
        if a > 0 and b < n_frames and b - a >= 6:
            (who,) = np.flatnonzero(level[a - 1] > 0)
            words.append(("", a + 1, a + 3, int(who)))
    words.sort(key=lambda w: (w[1], w[2]))
    return Scene(level, tuple((f"w{i}", a, b, k) for i, (_, a, b, k) in enumerate(words)))


def make_centres(n: int, rng: np.random.Generator) -> np.ndarray:
    c = rng.standard_normal((n, DIM))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def blend(a: np.ndarray, b: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at cosine `cos` from unit `a`, towards `b`."""
    ortho = b - (b @ a) * a
    ortho /= np.linalg.norm(ortho)
    return cos * a + math.sqrt(1 - cos**2) * ortho


def synth_window(
    scene: Scene,
    window: Window,
    centre_of: dict[int, np.ndarray],
    rng: np.random.Generator,
    min_fp_s: float = 0.5,
) -> tuple[Diarization, dict[int, np.ndarray], list[int]]:
    """What Sortformer and TitaNet would return for one window; also the local->true map.

    Speakers with less than `min_fp_s` of speech in the window get no
    fingerprint (the service's rule, with 0.5 s).
    """
    s = window.start_frame(FRAME)
    e = min(scene.n_frames, math.ceil(window.end_s / FRAME - 1e-6))
    lv = scene.level[s:e]
    active = [k for k in range(lv.shape[1]) if lv[:, k].any()]
    assert len(active) <= 4, "the scene must respect Sortformer's 4 speakers per window"
    slots = rng.permutation(4)[: len(active)]
    probs = rng.uniform(0.0, 0.3, size=(e - s, 4))
    turns: list[Turn] = []
    prints: dict[int, np.ndarray] = {}
    true_of = [-1] * 4
    for speaker, slot in zip(active, slots.tolist(), strict=True):
        col = lv[:, speaker]
        probs[col == LEADING, slot] = rng.uniform(0.85, 1.0, size=int((col == LEADING).sum()))
        probs[col == BACKGROUND, slot] = rng.uniform(0.55, 0.75, int((col == BACKGROUND).sum()))
        # Sortformer's turns: its (noiseless) activity thresholded, in window time.
        turns.extend(Turn(t(a), t(b), slot) for a, b in runs(col > 0))
        if (col > 0).sum() * FRAME >= min_fp_s:
            prints[slot] = centre_of[speaker] + SIGMA * rng.standard_normal(DIM)
        true_of[slot] = speaker
    turns.sort(key=lambda x: (x.start, x.end, x.speaker))
    diar = Diarization(tuple(turns), probs, FRAME, round(window.end_s - window.start_s, 6))
    return diar, prints, true_of


def synth_asr(scene: Scene, window: Window) -> Transcript:
    """Parakeet's words for one window: those it hears whole, in window time, 10 per segment."""
    s = window.start_frame(FRAME)
    e = math.ceil(window.end_s / FRAME - 1e-6)
    words = [Word(txt, t(a - s), t(b - s)) for txt, a, b, _ in scene.words if a >= s and b <= e]
    segments = tuple(
        Segment(" ".join(w.text for w in chunk), chunk[0].start, chunk[-1].end, tuple(chunk))
        for chunk in (words[i : i + 10] for i in range(0, len(words), 10))
    )
    return Transcript(" ".join(seg.text for seg in segments), tuple(words), segments, 0.0)


@dataclass(frozen=True)
class Outcome:
    der: float
    n_speakers: int  # in the stitched turns
    n_global: int  # in the linking, including speakers heard only outside the cores
    unfingerprinted: int
    word_errors: int
    n_words: int
    seam_words: int
    stitched: Diarization
    segments: list[Segment]


def run_pipeline(
    scene: Scene,
    voice: Callable[[Window], dict[int, np.ndarray]],
    rng: np.random.Generator,
    hints: SpeakerHints | None = None,
    min_fp_s: float = 0.5,
) -> Outcome:
    """`voice(window)` gives each true speaker's fingerprint centre in that window."""
    windows = plan_windows(scene.duration, WINDOW_S, OVERLAP_S, FRAME)
    diars, prints = [], []
    unfingerprinted = 0
    for w in windows:
        d, p, _ = synth_window(scene, w, voice(w), rng, min_fp_s)
        unfingerprinted += len({turn.speaker for turn in d.turns} - set(p))
        diars.append(d)
        prints.append(p)
    mappings = link_speakers(windows, diars, prints, hints)
    stitched = stitch(windows, diars, mappings)

    reference, hypothesis = Annotation(), Annotation()
    for k in range(scene.level.shape[1]):
        for a, b in runs(scene.level[:, k] > 0):
            reference[Span(t(a), t(b)), k] = f"true{k}"
    for i, turn in enumerate(stitched.turns):
        hypothesis[Span(turn.start, turn.end), i] = speaker_label(int(turn.speaker))
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    uem = Timeline([Span(0.0, scene.duration)])
    der = metric(reference, hypothesis, uem=uem)
    to_true = metric.optimal_mapping(reference, hypothesis, uem=uem)

    merged = merge_window_transcripts(windows, [synth_asr(scene, w) for w in windows])
    truth_words = [(txt, t(a), t(b)) for txt, a, b, _ in scene.words]
    assert [(w.text, w.start, w.end) for w in merged.words] == truth_words
    seams = [w.core_end_s for w in windows[:-1]]
    seam_words = sum(any(w.start < s < w.end for s in seams) for w in merged.words)

    attributed = assign_word_speakers(merged.words, stitched.probs, FRAME, stitched.turns)
    errors = sum(
        to_true.get(w.speaker) != f"true{k}"
        for w, (_, _, _, k) in zip(attributed, scene.words, strict=True)
    )
    segments = split_segments_by_speaker(merged.segments, attributed, stitched.probs, FRAME)
    n_speakers = len({turn.speaker for turn in stitched.turns})
    n_global = 1 + max(g for m in mappings for g in m.values())
    return Outcome(
        der,
        n_speakers,
        n_global,
        unfingerprinted,
        errors,
        len(attributed),
        seam_words,
        stitched,
        segments,
    )


# Seven speakers over 10 minutes (25 windows of 30 s), a cast of three that
# rotates every minute, so each speaker comes and goes and comes back.
ROTATION = [(0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 6),
            (5, 6, 0), (6, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4)]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_recording_many_speakers_is_reproduced_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = make_scene(ROTATION, rng)
    centres = make_centres(7, rng)
    out = run_pipeline(scene, lambda _: dict(enumerate(centres)), rng)

    assert out.der == 0.0
    assert out.n_speakers == out.n_global == 7
    assert out.word_errors == 0
    assert out.n_words > 1000 and out.seam_words >= 3
    # Global labels are numbered by first appearance.
    first_seen: list[int | str] = []
    for turn in out.stitched.turns:
        if turn.speaker not in first_seen:
            first_seen.append(turn.speaker)
    assert first_seen == list(range(7))
    # Confidence comes from the frames: leading speech is >= 0.85, overlapped >= 0.55.
    assert all(0.55 <= (turn.confidence or 0) <= 1.0 for turn in out.stitched.turns)
    # No segment spans two speakers, and every word kept its speaker.
    for seg in out.segments:
        assert {w.speaker for w in seg.words} == {seg.speaker}
        # A word timed into a gap keeps the gap's low activity as its confidence.
        assert seg.speaker_confidence is not None and 0.0 <= seg.speaker_confidence <= 1.0
    assert sum(len(seg.words) for seg in out.segments) == out.n_words
    # Overlapped speech is present and scored.
    assert (scene.level == BACKGROUND).any()


@pytest.mark.parametrize("seed", [3, 4])
def test_speakers_without_fingerprints_are_linked_through_the_overlaps(seed: int) -> None:
    # An embedder that needs 1.1 s of speech leaves the pieces of turns cut by a window
    # edge (turns last >= 1.2 s) without fingerprints: the overlaps must link them.
    rng = np.random.default_rng(seed)
    scene = make_scene(ROTATION, rng)
    centres = make_centres(7, rng)
    out = run_pipeline(scene, lambda _: dict(enumerate(centres)), rng, min_fp_s=1.1)
    assert out.unfingerprinted >= 1
    assert out.der == 0.0 and out.n_speakers == out.n_global == 7 and out.word_errors == 0


def test_num_speakers_splits_two_similar_voices_that_never_meet() -> None:
    # Speaker 5 sounds like speaker 0 (centre cosine 0.8: fingerprints ~0.57 > threshold),
    # and they are never in the same or neighbouring windows, so nothing else tells them apart.
    schedule = [(0, 1, 2), (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (3, 4, 5)]
    rng = np.random.default_rng(10)
    scene = make_scene(schedule, rng)
    centres = make_centres(6, rng)
    centres[5] = blend(centres[0], centres[5], 0.8)

    voice = dict(enumerate(centres))
    merged = run_pipeline(scene, lambda _: voice, np.random.default_rng(11))
    assert merged.n_speakers == 5 and merged.der > 0.0

    hints = SpeakerHints(num_speakers=6)
    split = run_pipeline(scene, lambda _: voice, np.random.default_rng(11), hints)
    assert split.der == 0.0 and split.n_speakers == split.n_global == 6
    assert split.word_errors == 0


def test_num_speakers_merges_one_voice_heard_two_ways() -> None:
    # Speaker 0 comes back after three minutes on a different microphone: its later
    # fingerprints sit at cosine 0.35 from its earlier ones, below the threshold.
    schedule = [(0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1)]
    rng = np.random.default_rng(20)
    scene = make_scene(schedule, rng)
    centres = make_centres(7, rng)
    later = blend(centres[0], centres[6], 0.35)

    def voice(w: Window) -> dict[int, np.ndarray]:
        return {k: later if k == 0 and w.start_s >= 3 * BLOCK_S else centres[k] for k in range(6)}

    split = run_pipeline(scene, voice, np.random.default_rng(21))
    assert split.n_speakers == 7 and split.der > 0.0

    for hints in (SpeakerHints(num_speakers=6), SpeakerHints(max_speakers=6)):
        out = run_pipeline(scene, voice, np.random.default_rng(21), hints)
        assert out.der == 0.0 and out.n_speakers == out.n_global == 6
        assert out.word_errors == 0
