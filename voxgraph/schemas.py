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

TranscriptionFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
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


class TranscribeOptions(SpeakerCountHints):
    """Options of /v1/audio/transcriptions and the handle's `transcribe`."""

    model: str | None = None
    """Model the client names (e.g. `whisper-1`); the deployed ASR model serves every name."""
    language: str | None = None
    """ISO 639-1 code of the spoken language; Parakeet detects it itself, this only validates."""
    prompt: str | None = None
    """Accepted for OpenAI compatibility; Parakeet takes no prompt and ignores it."""
    response_format: TranscriptionFormat = "json"
    """json, text, verbose_json, srt or vtt."""
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    """Accepted for compatibility; decoding is greedy."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=lambda: ["segment"], alias="timestamp_granularities[]"
    )
    """Which timestamps verbose_json carries: `word`, `segment` or both."""
    diarize: bool = False
    """Add `speaker` to every segment and word (voxgraph extension)."""

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


class TranslateOptions(Options):
    """Options of /v1/audio/translations and the handle's `translate`."""

    model: str | None = None
    """Model the client names; the deployed ASR model serves every name."""
    prompt: str | None = None
    """Accepted for OpenAI compatibility; ignored."""
    response_format: TranscriptionFormat = "json"
    """json, text, verbose_json, srt or vtt."""
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    """Accepted for compatibility; decoding is greedy."""


class DiarizeOptions(SpeakerCountHints):
    """Options of /v1/audio/diarize and the handle's `diarize`."""

    response_format: DiarizationFormat = "json"
    """json or rttm."""


class DiarizeChunkOptions(Options):
    """Options of /v1/audio/diarize-chunk and the handle's `diarize_chunk`: none yet."""


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


class ErrorBody(Body):
    message: str
    type: str
    code: str


class ErrorResponse(Body):
    error: ErrorBody
