"""Output formats: one result type per operation knows how to become each format.

Like pyannote's `DiarizeOutput.serialize()`: `TranscriptionOutput.render(fmt)`
and `DiarizationOutput.render(fmt)` return either a JSON-able dict or text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from voxgraph.schemas import (
    DiarizeChunkResponse,
    DiarizedSegmentOut,
    DiarizedTranscriptionResponse,
    DiarizeResponse,
    DurationUsage,
    IdentificationOut,
    SegmentOut,
    TranscriptionResponse,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranscriptTextSegment,
    TurnOut,
    VerboseTranscriptionResponse,
    WordOut,
)
from voxgraph.types import Segment, Transcript, Turn, Word

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt", "diarized_json")
DIARIZATION_FORMATS = ("json", "rttm")

TEXT_MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "rttm": "text/plain; charset=utf-8",
}


def _clock(seconds: float, sep: str) -> str:
    # Round once to whole milliseconds so 59.9996 s becomes 00:01:00.000, not 00:00:60.000.
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_time(seconds: float) -> str:
    """`HH:MM:SS,mmm` as SubRip wants it."""
    return _clock(seconds, ",")


def vtt_time(seconds: float) -> str:
    """`HH:MM:SS.mmm` as WebVTT wants it."""
    return _clock(seconds, ".")


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def segments_to_srt(segments: Sequence[Segment]) -> str:
    blocks = []
    for i, seg in enumerate(segments, start=1):
        text = seg.text.strip()
        if seg.speaker:
            text = f"[{seg.speaker}] {text}"
        blocks.append(f"{i}\n{srt_time(seg.start)} --> {srt_time(seg.end)}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def segments_to_vtt(segments: Sequence[Segment]) -> str:
    lines = ["WEBVTT", ""]
    for seg in segments:
        text = _vtt_escape(seg.text.strip())
        if seg.speaker:
            text = f"<v {seg.speaker}>{text}</v>"
        lines += [f"{vtt_time(seg.start)} --> {vtt_time(seg.end)}", text, ""]
    return "\n".join(lines)


def segments_to_text(segments: Sequence[Segment], fallback: str) -> str:
    """Plain text; with speakers, each speaker change starts a new `Speaker_k: ` line."""
    if not any(s.speaker for s in segments):
        return fallback
    lines: list[str] = []
    current: str | None = None
    for seg in segments:
        if seg.speaker != current or not lines:
            lines.append(f"{seg.speaker}: {seg.text.strip()}")
            current = seg.speaker
        else:
            lines[-1] += " " + seg.text.strip()
    return "\n".join(lines)


def _word(w: Word) -> WordOut:
    out = WordOut(word=w.text, start=_r(w.start), end=_r(w.end))
    if w.speaker is not None:
        out.speaker = w.speaker
    return out


@dataclass(frozen=True)
class TranscriptionOutput:
    """A finished transcription, ready to be rendered in any OpenAI response format."""

    transcript: Transcript
    model: str
    language: str | None = None
    task: str = "transcribe"
    granularities: tuple[str, ...] = ("segment",)
    temperature: float = 0.0
    diarized: bool = False
    identity_scores: dict[str, float] = field(default_factory=dict)
    """Score of each speaker label that is a known speaker's name."""
    pause_s: float | None = None
    """With server_vad chunking: a pause this long between words ends a diarized segment."""
    identification: dict[str, Any] | None = None
    """How speakers were named (threshold, candidates, skipped), when names were asked for."""

    def render(self, fmt: str) -> dict[str, Any] | str:
        """The body for `fmt`: a JSON-able dict (json, verbose_json) or text."""
        body = self.body(fmt)
        return body if isinstance(body, str) else body.model_dump(mode="json", exclude_unset=True)

    def body(
        self, fmt: str
    ) -> TranscriptionResponse | VerboseTranscriptionResponse | DiarizedTranscriptionResponse | str:
        """The response model (or text) for `fmt`; only the fields that apply are set."""
        t = self.transcript
        if fmt == "diarized_json":
            return self._diarized()
        text = segments_to_text(t.segments, t.text) if self.diarized else t.text
        if fmt == "json":
            if self.diarized:
                return TranscriptionResponse(text=text, segments=self._segments())
            return TranscriptionResponse(text=text)
        if fmt == "text":
            return text
        if fmt == "srt":
            return segments_to_srt(t.segments)
        if fmt == "vtt":
            return segments_to_vtt(t.segments)
        if fmt == "verbose_json":
            extra: dict[str, Any] = {}
            if "segment" in self.granularities or self.diarized:
                extra["segments"] = self._segments()
            if "word" in self.granularities or self.diarized:
                extra["words"] = [_word(w) for w in t.words]
            return VerboseTranscriptionResponse(
                task=self.task,
                language=self.language,
                duration=_r(t.duration),
                text=t.text,
                model=self.model,
                **extra,
                **self._identification(),
            )
        raise ValueError(f"unknown response_format {fmt!r}")

    def _diarized(self) -> DiarizedTranscriptionResponse:
        out = DiarizedSegments(self.identity_scores, self.pause_s).add(self.transcript.segments)
        d = _r(self.transcript.duration)
        # Set, not defaulted: the body is dumped with exclude_unset.
        return DiarizedTranscriptionResponse(
            task="transcribe",
            duration=d,
            text=" ".join(s.text for s in out),
            segments=out,
            usage=DurationUsage(type="duration", seconds=d),
            **self._identification(),
        )

    def _identification(self) -> dict[str, Any]:
        if self.identification is None:
            return {}
        return {"identification": IdentificationOut.model_validate(self.identification)}

    def _segments(self) -> list[SegmentOut]:
        return [self._segment(i, s) for i, s in enumerate(self.transcript.segments)]

    def _segment(self, i: int, s: Segment) -> SegmentOut:
        # OpenAI's segment shape, minus Whisper-only scores (avg_logprob,
        # compression_ratio, no_speech_prob) that Parakeet has no honest value for.
        out = SegmentOut(
            id=i,
            seek=0,
            start=_r(s.start),
            end=_r(s.end),
            text=s.text,
            tokens=[],
            temperature=self.temperature,
        )
        if s.speaker is not None:
            out.speaker = s.speaker
            out.speaker_confidence = (
                None if s.speaker_confidence is None else _r(s.speaker_confidence, 4)
            )
            if s.speaker in self.identity_scores:
                out.identity_score = _r(self.identity_scores[s.speaker], 4)
        return out


class DiarizedSegments:
    """diarized_json's segments, rendered as they come (a stream) or all at once.

    OpenAI labels unnamed speakers A, B, ... in order of first appearance and
    numbers segments `seg_0`, `seg_1`, ...; both carry on from one call to the next.
    """

    def __init__(
        self, identity_scores: dict[str, float] | None = None, pause_s: float | None = None
    ):
        self.identity_scores = identity_scores or {}
        self.pause_s = pause_s
        self.letters: dict[str, str] = {}
        self.count = 0

    def add(self, segments: Sequence[Segment]) -> list[DiarizedSegmentOut]:
        """The next segments (attributed, in time order), cut at pauses and labelled."""
        out: list[DiarizedSegmentOut] = []
        for seg in _split_at_pauses(segments, self.pause_s):
            label = seg.speaker or "Speaker_0"
            if label in self.identity_scores:
                name, score = label, _r(self.identity_scores[label], 4)
            else:
                name, score = self.letters.setdefault(label, _letters(len(self.letters))), None
            item = DiarizedSegmentOut(
                type="transcript.text.segment",
                id=f"seg_{self.count}",
                start=_r(seg.start),
                end=_r(seg.end),
                speaker=name,
                text=seg.text.strip(),
            )
            if seg.speaker_confidence is not None:
                item.speaker_confidence = _r(seg.speaker_confidence, 4)
            if score is not None:
                item.identity_score = score
            out.append(item)
            self.count += 1
        return out


class TranscriptEvents:
    """A transcription's stream events (stream=true), built as settled segments arrive.

    Plain text: one `transcript.text.delta` per segment, whose deltas joined are
    the transcript's text. diarized_json: per segment a delta (with `segment_id`)
    then its `transcript.text.segment`. Last, `transcript.text.done`.
    """

    def __init__(self, diarized: bool = False, pause_s: float | None = None):
        self.segments = DiarizedSegments(pause_s=pause_s) if diarized else None
        self.texts: list[str] = []

    def add(self, segments: Sequence[Segment]) -> list[TranscriptTextDelta | TranscriptTextSegment]:
        """Events for the next settled segments (in time order)."""
        events: list[TranscriptTextDelta | TranscriptTextSegment] = []
        if self.segments is None:
            for seg in segments:
                if text := seg.text.strip():
                    events.append(self._delta(text))
            return events
        for item in self.segments.add(segments):
            events.append(self._delta(item.text, item.id))
            events.append(TranscriptTextSegment.model_validate(item.model_dump(exclude_unset=True)))
        return events

    def done(self, text: str | None, duration: float) -> TranscriptTextDone:
        """The last event; `text` is the whole transcript's (None: the deltas joined)."""
        d = _r(duration)
        return TranscriptTextDone(
            type="transcript.text.done",
            text=" ".join(self.texts) if text is None else text,
            usage=DurationUsage(type="duration", seconds=d),
        )

    def _delta(self, text: str, segment_id: str | None = None) -> TranscriptTextDelta:
        delta = text if not self.texts else " " + text
        self.texts.append(text)
        event = TranscriptTextDelta(type="transcript.text.delta", delta=delta)
        if segment_id is not None:
            event.segment_id = segment_id
        return event


def _letters(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: spreadsheet-style labels, never running out."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(ord("A") + r) + out
    return out


def _split_at_pauses(segments: Sequence[Segment], pause_s: float | None) -> list[Segment]:
    """Segments cut where the words pause at least `pause_s` (server_vad chunking)."""
    if pause_s is None:
        return list(segments)
    out: list[Segment] = []
    for seg in segments:
        run: list[Word] = []
        for w in seg.words:
            if run and w.start - run[-1].end >= pause_s:
                out.append(_sub_segment(seg, run))
                run = []
            run.append(w)
        out.append(_sub_segment(seg, run) if run and len(run) < len(seg.words) else seg)
    return out


def _sub_segment(seg: Segment, words: list[Word]) -> Segment:
    return Segment(
        text=" ".join(w.text for w in words),
        start=words[0].start,
        end=words[-1].end,
        words=tuple(words),
        speaker=seg.speaker,
        speaker_confidence=seg.speaker_confidence,
    )


def rttm_lines(turns: Sequence[Turn], file_id: str = "audio") -> str:
    """Standard RTTM: `SPEAKER <file> 1 <start> <dur> <NA> <NA> <speaker> <NA> <NA>`."""
    file_id = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in file_id) or "audio"
    lines = [
        f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> "
        f"{'_'.join(str(t.speaker).split())} <NA> <NA>"
        for t in turns
        if t.end > t.start
    ]
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass(frozen=True)
class DiarizationOutput:
    """Speaker turns with labels and confidence, plus what produced them."""

    turns: tuple[Turn, ...]
    duration: float
    model: str
    device: str
    fingerprints: dict[str, list[float]] | None = None
    models: dict[str, str] | None = None
    identity_scores: dict[str, float] = field(default_factory=dict)
    """Score of each speaker label that is a known speaker's name."""
    identification: dict[str, Any] | None = None
    """How speakers were named, when names were asked for."""

    @property
    def speakers(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.turns:
            seen.setdefault(str(t.speaker), None)
        return sorted(seen, key=_speaker_sort_key)

    def render(self, fmt: str, file_id: str = "audio") -> dict[str, Any] | str:
        """The body for `fmt`: a JSON-able dict (json) or RTTM text."""
        body = self.body(fmt, file_id)
        return body if isinstance(body, str) else body.model_dump(mode="json", exclude_unset=True)

    def body(self, fmt: str, file_id: str = "audio") -> DiarizeResponse | str:
        """The response model (or RTTM text) for `fmt`."""
        if fmt == "rttm":
            return rttm_lines(self.turns, file_id)
        if fmt != "json":
            raise ValueError(f"unknown response_format {fmt!r}")
        common: dict[str, Any] = {
            "segments": [self._turn(t) for t in self.turns],
            "speakers_detected": self.speakers,
            "duration": _r(self.duration),
            "model": self.model,
            "device": self.device,
        }
        if self.identification is not None:
            common["identification"] = IdentificationOut.model_validate(self.identification)
        if self.fingerprints is None:
            return DiarizeResponse(**common)
        return DiarizeChunkResponse(
            **common, fingerprints=self.fingerprints, models=dict(self.models or {})
        )

    def _turn(self, t: Turn) -> TurnOut:
        out = TurnOut(
            start_s=_r(t.start),
            end_s=_r(t.end),
            speaker=str(t.speaker),
            confidence=None if t.confidence is None else _r(t.confidence, 4),
        )
        if t.speaker in self.identity_scores:
            out.identity_score = _r(self.identity_scores[str(t.speaker)], 4)
        return out


def _speaker_sort_key(label: str) -> tuple[int, str]:
    tail = label.rsplit("_", 1)[-1]
    return (int(tail), label) if tail.isdigit() else (math.inf, label)  # type: ignore[return-value]
