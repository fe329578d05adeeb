"""Request options and response models of the HTTP and handle API.

Options are validated once here, whichever way a request arrives (form
fields or handle keyword arguments); validation errors become 400s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from voxgraph.errors import BadRequest

# ISO 639-1: what OpenAI's `language` field takes.
ISO_639_1 = frozenset(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu "
    "cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi "
    "ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks "
    "ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl "
    "nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl "
    "sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve "
    "vi vo wa wo xh yi yo za zh zu".split()
)

# Languages of known ASR checkpoints; a model not listed accepts any ISO code.
MODEL_LANGUAGES: dict[str, frozenset[str]] = {
    "nvidia/parakeet-tdt-0.6b-v3": frozenset(
        "bg hr cs da nl en et fi fr de el hu it lv lt mt pl pt ro sk sl es sv ru uk".split()
    ),
    "nvidia/parakeet-tdt-0.6b-v2": frozenset({"en"}),
}

TranscriptionFormat = Literal["json", "text", "verbose_json", "srt", "vtt", "diarized_json"]
# As OpenAI: a stream carries text (and diarized segments); timed formats come whole.
STREAM_FORMATS = ("json", "text", "diarized_json")
DiarizationFormat = Literal["json", "rttm"]


class Options(BaseModel):
    """Request options: one model per operation, for HTTP forms and handle calls alike."""

    # Unknown names are an error, not silently ignored; both the form field name
    # (`timestamp_granularities[]`) and the Python name are accepted.
    model_config = ConfigDict(
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        use_attribute_docstrings=True,
    )


class SpeakerCountHints(Options):
    """Speaker-count hints shared by diarize and transcriptions?diarize=true."""

    num_speakers: int | None = Field(None, ge=1, le=64)
    """Exact number of speakers in the recording, when known."""
    min_speakers: int | None = Field(None, ge=1, le=64)
    """At least this many speakers."""
    max_speakers: int | None = Field(None, ge=1, le=64)
    """At most this many speakers."""


# OpenAI accepts up to 4 references; a library of enrolled voices takes more names.
MAX_KNOWN_SPEAKERS = 32


class KnownSpeakers(SpeakerCountHints):
    """Who may be named: enrolled speakers, per-request references, or the whole library."""

    known_speaker_names: list[str] = Field(
        default_factory=list, alias="known_speaker_names[]", max_length=MAX_KNOWN_SPEAKERS
    )
    """Names to recognise; with references, one name per reference, else enrolled names."""
    known_speaker_references: list[str] = Field(
        default_factory=list, alias="known_speaker_references[]", max_length=MAX_KNOWN_SPEAKERS
    )
    """Short reference clips as data URLs (`data:audio/wav;base64,...`), one per name."""
    identify: bool = False
    """Match the speakers against every enrolled speaker of the library."""

    @field_validator("known_speaker_names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        names = [n.strip() for n in v]
        if any(not n or len(n) > 64 for n in names):
            raise ValueError("each known speaker name must be 1 to 64 characters")
        if len({n.casefold() for n in names}) != len(names):
            raise ValueError("known speaker names must be distinct")
        return names

    @model_validator(mode="after")
    def _counts(self) -> KnownSpeakers:
        refs, names = len(self.known_speaker_references), len(self.known_speaker_names)
        if refs and refs != names:
            raise ValueError(
                f"known_speaker_references[] ({refs}) and known_speaker_names[] ({names}) "
                "must have the same length: one name per reference clip"
            )
        return self

    @property
    def wants_identity(self) -> bool:
        return self.identify or bool(self.known_speaker_names)


# Hotwords (keywords[]): NeMo's phrase boosting of RNNT/TDT greedy decoding.
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 50
DEFAULT_KEYWORD_BOOST = 1.0
"""NeMo's default weight of a per-request boosting tree (BiasingRequestItemConfig)."""
MAX_KEYWORD_BOOST = 10.0


def clean_keywords(values: Sequence[str]) -> list[str]:
    """Keywords stripped and deduplicated in order; a ValueError naming the broken limit."""
    if len(values) > MAX_KEYWORDS:
        raise ValueError(f"at most {MAX_KEYWORDS} keywords are allowed, got {len(values)}")
    out: list[str] = []
    for i, raw in enumerate(values):
        word = " ".join(str(raw).split())
        if not word:
            raise ValueError(f"keyword {i} is empty; every keyword needs a word or phrase")
        if len(word) > MAX_KEYWORD_CHARS:
            raise ValueError(
                f"keyword {i} has {len(word)} characters; at most {MAX_KEYWORD_CHARS} are allowed"
            )
        if word not in out:
            out.append(word)
    return out


class ServerVadChunking(BaseModel):
    """OpenAI's `server_vad` chunking: segments end where speech pauses."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    type: Literal["server_vad"]
    """Always `server_vad`."""
    prefix_padding_ms: int = Field(300, ge=0, le=10_000)
    """Audio kept before detected speech (milliseconds)."""
    silence_duration_ms: int = Field(200, ge=0, le=10_000)
    """A pause at least this long ends a segment (milliseconds)."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Speech activity above which a frame counts as speech, in [0, 1]."""


class TranscribeOptions(KnownSpeakers):
    """Options of /v1/audio/transcriptions and the handle's `transcribe`."""

    model: str | None = None
    """Model the client names (e.g. `whisper-1`); the deployed ASR model serves every name."""
    language: str | None = None
    """ISO 639-1 code of the spoken language; Parakeet detects it itself, this only validates."""
    prompt: str | None = None
    """Accepted for OpenAI compatibility; Parakeet takes no prompt and ignores it."""
    response_format: TranscriptionFormat = "json"
    """json, text, verbose_json, srt, vtt or diarized_json (which implies diarize)."""
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    """Accepted for compatibility; decoding is greedy."""
    chunking_strategy: Literal["auto"] | ServerVadChunking | None = None
    """`auto` (voxgraph's own windowing) or a `server_vad` object; form fields
    `chunking_strategy[type]`, `chunking_strategy[threshold]`, … as OpenAI's client sends."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=lambda: ["segment"], alias="timestamp_granularities[]"
    )
    """Which timestamps verbose_json carries: `word`, `segment` or both."""
    diarize: bool = False
    """Add `speaker` to every segment and word (voxgraph extension)."""
    stream: bool = False
    """Send Server-Sent Events (`transcript.text.delta`, `.segment`, `.done`) as windows finish."""
    keywords: list[str] = Field(default_factory=list, alias="keywords[]")
    """Hotwords: words or phrases to bias recognition toward (at most 100, 50 characters each)."""
    keyword_boost: float = Field(DEFAULT_KEYWORD_BOOST, ge=0.0, le=MAX_KEYWORD_BOOST)
    """How strongly keywords are boosted, 0 to 10 (NeMo's boosting-tree alpha; default 1)."""

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return clean_keywords(v)

    @field_validator("language")
    @classmethod
    def _iso_language(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        code = v.strip().lower()
        if code not in ISO_639_1:
            raise ValueError(f"language must be an ISO 639-1 code such as 'en', got {v!r}")
        return code

    @field_validator("timestamp_granularities", mode="before")
    @classmethod
    def _default_granularities(cls, v: Any) -> Any:
        return ["segment"] if v is None or v == [] else v

    @model_validator(mode="before")
    @classmethod
    def _fold_form_fields(cls, data: Any) -> Any:
        # Multipart carries an object as `chunking_strategy[type]=server_vad`, ...
        if not isinstance(data, dict):
            return data
        prefix = "chunking_strategy["
        nested = {k[len(prefix) : -1]: v for k, v in data.items() if k.startswith(prefix)}
        if not nested:
            return data
        rest = {k: v for k, v in data.items() if not k.startswith(prefix)}
        if "chunking_strategy" in rest:
            raise ValueError("give chunking_strategy either as a value or as fields, not both")
        return {**rest, "chunking_strategy": nested}

    @model_validator(mode="after")
    def _streamable(self) -> TranscribeOptions:
        if not self.stream:
            return self
        if self.response_format not in STREAM_FORMATS:
            raise ValueError(
                f"stream=true is for response_format {', '.join(STREAM_FORMATS)}; "
                f"{self.response_format} is only sent whole (leave stream unset)"
            )
        if self.response_format != "diarized_json" and self.diarize:
            raise ValueError(
                "stream=true sends speakers with response_format=diarized_json; "
                "diarize=true with json or text is only sent whole"
            )
        if self.wants_identity:
            raise ValueError(
                "stream=true cannot name speakers yet (known_speaker_names[], identify); "
                "leave stream unset to name them"
            )
        return self

    @property
    def diarized(self) -> bool:
        """Speakers wanted: diarize=true, diarized_json, or names asked for."""
        return self.diarize or self.response_format == "diarized_json" or self.wants_identity


class TranslateOptions(KnownSpeakers):
    """Options of /v1/audio/translations and the handle's `translate` (into English)."""

    model: str | None = None
    """Model the client names; the deployed ASR model serves every name."""
    language: str | None = None
    """ISO 639-1 code of the spoken language (voxgraph extension: Canary must be told it)."""
    prompt: str | None = None
    """Accepted for OpenAI compatibility; ignored."""
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = "json"
    """json, text, verbose_json, srt or vtt."""
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    """Accepted for compatibility; decoding is greedy."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=lambda: ["segment"], alias="timestamp_granularities[]"
    )
    """Which timestamps verbose_json carries: `word`, `segment` or both."""
    diarize: bool = False
    """Add `speaker` to every translated segment and word (voxgraph extension)."""

    _iso_language = field_validator("language")(TranscribeOptions._iso_language.__func__)
    _default_granularities = field_validator("timestamp_granularities", mode="before")(
        TranscribeOptions._default_granularities.__func__
    )

    def transcribe_options(self) -> TranscribeOptions:
        """The same request as the walk's options (the walk is shared with transcriptions)."""
        return TranscribeOptions.model_validate(self.model_dump(exclude_unset=True))


class DiarizeOptions(KnownSpeakers):
    """Options of /v1/audio/diarize and the handle's `diarize`."""

    response_format: DiarizationFormat = "json"
    """json or rttm."""


class DiarizeChunkOptions(KnownSpeakers):
    """Options of /v1/audio/diarize-chunk and the handle's `diarize_chunk`."""


OptionsT = TypeVar("OptionsT", bound=Options)


def parse_options(model: type[OptionsT], values: dict[str, Any]) -> OptionsT:
    """Validate options, turning pydantic's error into one readable 400."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise BadRequest(f"invalid request: {validation_problems(e.errors())}") from e


def validation_problems(errors: Sequence[Any], skip: int = 0) -> str:
    """pydantic / FastAPI errors as one line: `field: problem; field: problem`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'][skip:]) or 'options'}: "
        f"{str(err['msg']).removeprefix('Value error, ')}"
        for err in errors
    )


# ---- response models: the output formats build these, so OpenAPI and the wire agree ----


class Body(BaseModel):
    """A response body; field docstrings become the OpenAPI descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class TurnOut(Body):
    start_s: float
    """Turn start (seconds from the start of the audio)."""
    end_s: float
    """Turn end (seconds)."""
    speaker: str
    """`Speaker_<k>`."""
    confidence: float | None
    """Mean activity probability of the speaker over the turn's frames, in [0, 1]."""
    identity_score: float | None = None
    """Cosine of the speaker's voiceprint to the named voice, when `speaker` is a known name."""


class SkippedOut(Body):
    name: str
    """The known speaker that was not compared."""
    reason: str
    """`other_model` (enrolled with another embedding model), `dimension`, `invalid_vector`."""
    detail: str
    """What exactly did not fit."""


class IdentificationOut(Body):
    threshold: float
    """Cosine a voiceprint needed to be named."""
    candidates: int
    """Known voices considered (references and enrolled speakers)."""
    skipped: list[SkippedOut]
    """Known voices that could not be compared, and why."""


class DiarizeResponse(Body):
    segments: list[TurnOut]
    """Speaker turns in time order."""
    speakers_detected: list[str]
    """Every speaker label that has a turn."""
    duration: float
    """Audio duration (seconds)."""
    model: str
    """Diarization model."""
    device: str
    """Where the diarization model runs (`cpu`, `cuda`)."""
    identification: IdentificationOut | None = None
    """How speakers were named, when names were asked for."""


class DiarizeChunkResponse(DiarizeResponse):
    fingerprints: dict[str, list[float]]
    """192-dim L2-normalised TitaNet embedding per local speaker with >= 0.5 s of speech."""
    models: dict[str, str]
    """`diarization` and `embedding` model names."""


class WordOut(Body):
    word: str
    start: float
    """Seconds."""
    end: float
    """Seconds."""
    speaker: str | None = None
    """`Speaker_<k>` when diarize=true."""


class SegmentOut(Body):
    id: int
    seek: int
    start: float
    """Seconds."""
    end: float
    """Seconds."""
    text: str
    tokens: list[int]
    temperature: float
    speaker: str | None = None
    """`Speaker_<k>` when diarize=true."""
    speaker_confidence: float | None = None
    """Mean activity of that speaker over the segment, in [0, 1], when diarize=true."""
    identity_score: float | None = None
    """Cosine of the speaker's voiceprint to the named voice, when the speaker is named."""


class TranscriptionResponse(Body):
    text: str
    segments: list[SegmentOut] | None = None
    """Present with diarize=true."""


class VerboseTranscriptionResponse(Body):
    task: str
    language: str | None
    """The requested language; null when not given (Parakeet does not report one)."""
    duration: float
    """Seconds."""
    text: str
    model: str
    segments: list[SegmentOut] | None = None
    words: list[WordOut] | None = None
    identification: IdentificationOut | None = None
    """How speakers were named, when names were asked for."""


class DiarizedSegmentOut(Body):
    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    """Always `transcript.text.segment`."""
    id: str
    """Segment id (`seg_0`, `seg_1`, ...)."""
    start: float
    """Seconds."""
    end: float
    """Seconds."""
    speaker: str
    """A known speaker's name, else `A`, `B`, ... in order of first appearance."""
    text: str
    """What the speaker said in this segment."""
    speaker_confidence: float | None = None
    """Mean activity of the speaker over the segment, in [0, 1] (voxgraph extension)."""
    identity_score: float | None = None
    """Cosine of the speaker's voiceprint to the named voice, when named (voxgraph extension)."""


class DurationUsage(Body):
    type: Literal["duration"] = "duration"
    """Always `duration`."""
    seconds: float
    """Audio duration (seconds)."""


class DiarizedTranscriptionResponse(Body):
    """OpenAI's `diarized_json` transcription."""

    task: Literal["transcribe"] = "transcribe"
    """Always `transcribe`."""
    duration: float
    """Seconds."""
    text: str
    """The whole transcript."""
    segments: list[DiarizedSegmentOut]
    """Speaker segments in time order."""
    usage: DurationUsage
    """Audio seconds of the request."""
    identification: IdentificationOut | None = None
    """How speakers were named, when names were asked for (voxgraph extension)."""


# ---- stream events (stream=true): OpenAI's transcription stream, one SSE `data:` each ----


class TranscriptTextDelta(Body):
    """More text: its pieces joined give the `done` event's text."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    """Always `transcript.text.delta`."""
    delta: str
    """Text to append (starts with a space after the first piece)."""
    segment_id: str | None = None
    """The diarized segment this text belongs to (response_format=diarized_json)."""


class TranscriptTextSegment(DiarizedSegmentOut):
    """One finished diarized segment with its speaker (response_format=diarized_json)."""


class TranscriptTextDone(Body):
    """The end of the stream: the whole text and the audio it came from."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    """Always `transcript.text.done`."""
    text: str
    """The whole transcript (as the request without stream=true would answer)."""
    usage: DurationUsage
    """Audio seconds of the request."""


TranscriptStreamEvent = TranscriptTextDelta | TranscriptTextSegment | TranscriptTextDone


class ErrorBody(Body):
    message: str
    type: str
    code: str


class ErrorResponse(Body):
    error: ErrorBody


class StreamError(ErrorResponse):
    """A failure after a stream began: its last event (the HTTP status was already 200)."""

    type: Literal["error"] = "error"
    """Always `error`."""
