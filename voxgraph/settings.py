"""Typed configuration: the service settings and a model deployment's `user_config`.

`Settings` holds every limit and knob of the ingress. Its values come from, highest
first: the builder's `settings:` args (serve_config.yaml), then environment
variables (`VOXGRAPH_<NAME>`, plus the short names `MAX_UPLOAD_MB`, `MAX_AUDIO_S` and
`VOXGRAPH_API_KEY`), then the defaults below. The config file wins because it is
the reviewed, per-application statement; the environment is the fallback that a
machine or a pod gives every application it runs (and where secrets arrive).

No Ray here: graph.py, the deployments and the benchmarks all import this module.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from voxgraph.identity import DEFAULT_THRESHOLD

ENV_PREFIX = "VOXGRAPH_"


class ModelConfig(BaseModel):
    """A model deployment's `user_config`; every field can change in place."""

    # A misspelt key in a live `user_config` must fail, not be ignored silently.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    """Hugging Face / NGC model name (from_pretrained) or local `.nemo` path (restore_from)."""
    precision: str = Field("fp32", pattern="^(fp32|bf16|fp16|int8)$")
    """bf16/fp16: autocast on CUDA (CPU runs those as fp32); int8: dynamic int8
    quantisation of the linear layers, CPU only (refused on a GPU)."""
    max_batch_size: int = Field(8, ge=1)
    """Most requests (embedder: clips) fused into one forward pass."""
    max_batch_audio_s: float = Field(0.0, ge=0)
    """Most audio in one forward pass (seconds, items x the longest item); a larger
    batch runs as consecutive passes, which bounds the replica's memory. 0: no limit."""
    torch_threads: int = Field(0, ge=0)
    """CPU threads the model computes with; 0: torch's default (Ray: floor(num_cpus))."""
    sdpa: bool = False
    """Self-attention through torch's scaled_dot_product_attention instead of NeMo's
    matmul-softmax-matmul: the same result, less memory traffic on long windows."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """How long the first request of a batch waits for others (seconds)."""
    load_wait_s: float = Field(600.0, ge=0)
    """How long a starting replica holds off traffic while its model loads (seconds)."""


def _env(name: str, *short: str) -> AliasChoices:
    """The environment names of a setting: `VOXGRAPH_<NAME>` first, then short ones.

    Only environment names: init args and config files use the field name
    (`populate_by_name`), so a bare `API_KEYS` in some pod's environment is never read.
    """
    return AliasChoices(f"{ENV_PREFIX}{name.upper()}", *short)


def _comma_list(value: Any) -> Any:
    """`a, b` (an environment value) as a list; a list (args) passes as it is."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Service-wide settings of the ingress; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # An empty variable (an unset optional Secret rendered as "") means "not set".
        env_ignore_empty=True,
        populate_by_name=True,
        # Errors name the field (max_audio_s), whichever of its variables was set.
        loc_by_alias=False,
        extra="forbid",
    )

    max_upload_mb: float = Field(
        200.0, gt=0, validation_alias=_env("max_upload_mb", "MAX_UPLOAD_MB")
    )
    """Largest accepted request body (MiB); larger is refused with 413 before it is read."""
    max_audio_s: float = Field(
        4 * 3600.0, gt=0, validation_alias=_env("max_audio_s", "MAX_AUDIO_S")
    )
    """Longest accepted decoded audio (seconds); longer is refused with 413 while decoding."""
    diar_window_s: float = Field(90.0, gt=0, validation_alias=_env("diar_window_s"))
    """Diarization window (seconds): Sortformer 4spk-v1 was trained on 90 s sessions."""
    diar_overlap_s: float = Field(10.0, ge=0, validation_alias=_env("diar_overlap_s"))
    """Overlap between consecutive diarization windows (seconds), used to link speakers."""
    asr_window_s: float = Field(300.0, gt=0, validation_alias=_env("asr_window_s"))
    """ASR window (seconds): longer audio is transcribed in overlapping windows."""
    asr_overlap_s: float = Field(10.0, ge=0, validation_alias=_env("asr_overlap_s"))
    """Overlap between consecutive ASR windows (seconds); words are owned by one window."""
    max_inflight_audio_s: float = Field(
        8 * 3600.0, gt=0, validation_alias=_env("max_inflight_audio_s")
    )
    """Decoded audio one ingress replica holds at once (seconds; 8 h is ~1.8 GB); beyond: 503."""
    max_windows_in_flight: int = Field(8, ge=1, validation_alias=_env("max_windows_in_flight"))
    """Windows of one request sent to the models at once; bounds memory on long audio."""
    min_fingerprint_speech_s: float = Field(
        0.5, gt=0, validation_alias=_env("min_fingerprint_speech_s")
    )
    """A speaker needs this much speech (seconds) in a chunk to get a fingerprint."""
    max_fingerprint_speech_s: float | None = Field(
        None, gt=0, validation_alias=_env("max_fingerprint_speech_s")
    )
    """Most speech (seconds) per speaker and chunk that goes into a fingerprint (None: all)."""
    link_threshold: float = Field(0.5, ge=-1, le=1, validation_alias=_env("link_threshold"))
    """Cosine similarity above which two windows' speakers are the same person."""
    request_timeout_s: float = Field(300.0, gt=0, validation_alias=_env("request_timeout_s"))
    """Longest a model call may take before the request fails with 503 (seconds)."""
    upload_timeout_s: float = Field(120.0, gt=0, validation_alias=_env("upload_timeout_s"))
    """Longest a request body may take to arrive in full (seconds); slower is refused with 408."""
    upload_idle_timeout_s: float = Field(15.0, gt=0, validation_alias=_env("upload_idle_timeout_s"))
    """Longest a request body may stall with no bytes arriving (seconds) before a 408."""
    upload_min_rate_bytes_s: float = Field(
        1024.0, ge=0, validation_alias=_env("upload_min_rate_bytes_s")
    )
    """Slowest accepted average upload rate (bytes/s), judged after the first 5 s; 0 is off."""
    # NoDecode: the environment gives `key1,key2`, not the JSON list pydantic-settings
    # would otherwise expect for a list field.
    speakers_db: SecretStr | None = Field(None, validation_alias=_env("speakers_db"))
    """Speaker library database URL (`sqlite:///path`, `postgresql://...`); unset: a SQLite
    file under the user's data directory. Secret: a PostgreSQL URL may hold a password."""
    identify_threshold: float = Field(
        DEFAULT_THRESHOLD, ge=-1, le=1, validation_alias=_env("identify_threshold")
    )
    """Cosine a speaker's voiceprint needs to a known voice to be named (bench/identity.py)."""
    min_reference_speech_s: float = Field(
        1.0, gt=0, validation_alias=_env("min_reference_speech_s")
    )
    """Speech a reference or enrolment clip needs (seconds, its main voice alone)."""
    realtime_max_sessions: int = Field(32, ge=0, validation_alias=_env("realtime_max_sessions"))
    """Realtime sessions one ingress replica holds at once; beyond: refused (close 1013)."""
    realtime_idle_timeout_s: float = Field(
        60.0, gt=0, validation_alias=_env("realtime_idle_timeout_s")
    )
    """A realtime session with no client message for this long is closed (seconds)."""
    realtime_max_session_s: float = Field(
        4 * 3600.0, gt=0, validation_alias=_env("realtime_max_session_s")
    )
    """Longest a realtime session may stay open (seconds, wall clock)."""
    realtime_context_s: float = Field(90.0, ge=10, validation_alias=_env("realtime_context_s"))
    """Audio a realtime session keeps (seconds): the turn being spoken plus diarization context."""
    realtime_diar_context_s: float = Field(
        30.0, gt=0, validation_alias=_env("realtime_diar_context_s")
    )
    """Audio before a turn's end that a rolling-window diarizer hears with it (seconds)."""
    realtime_max_turn_s: float = Field(30.0, gt=0, validation_alias=_env("realtime_max_turn_s"))
    """Longest turn (seconds): an uncommitted buffer this long is committed as is."""
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=_env("api_keys", f"{ENV_PREFIX}API_KEY")
    )
    """Bearer tokens accepted on every route but /health; empty means no auth. Never printed."""
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("cors_origins")
    )
    """Origins allowed by CORS; empty means no cross-origin access."""

    _split_lists = field_validator("api_keys", "cors_origins", mode="before")(_comma_list)

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None) -> Settings:
        """`overrides` (the builder's `settings:` args), then the environment, then defaults."""
        return cls(**(overrides or {}))

    @classmethod
    def env_names(cls, field: str) -> tuple[str, ...]:
        """The environment variables that set `field`, in the order they are looked up."""
        alias = cls.model_fields[field].validation_alias
        assert isinstance(alias, AliasChoices)
        return tuple(str(choice) for choice in alias.choices)
