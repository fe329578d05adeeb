"""One typed Settings object for the whole service.

Every limit and knob lives here with its default; the ingress reads it from
its bind args (serve_config.yaml) with environment variables as overrides.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field


class Settings(BaseModel):
    """Service-wide settings; field names double as lower-case env variables."""

    max_upload_mb: float = Field(200.0, gt=0)
    """Largest accepted request body (MiB); larger is refused with 413 before it is read."""
    max_audio_s: float = Field(4 * 3600.0, gt=0)
    """Longest accepted decoded audio (seconds); longer is refused with 413 while decoding."""
    diar_window_s: float = Field(90.0, gt=0)
    """Diarization window (seconds): Sortformer 4spk-v1 was trained on 90 s sessions."""
    diar_overlap_s: float = Field(10.0, ge=0)
    """Overlap between consecutive diarization windows (seconds), used to link speakers."""
    asr_window_s: float = Field(300.0, gt=0)
    """ASR window (seconds): longer audio is transcribed in overlapping windows."""
    asr_overlap_s: float = Field(10.0, ge=0)
    """Overlap between consecutive ASR windows (seconds); words are owned by one window."""
    max_inflight_audio_s: float = Field(8 * 3600.0, gt=0)
    """Decoded audio one ingress replica holds at once (seconds; 8 h is ~1.8 GB); beyond: 503."""
    max_windows_in_flight: int = Field(8, ge=1)
    """Windows of one request sent to the models at once; bounds memory on long audio."""
    min_fingerprint_speech_s: float = Field(0.5, gt=0)
    """A speaker needs this much speech (seconds) in a chunk to get a fingerprint."""
    link_threshold: float = Field(0.5, ge=-1, le=1)
    """Cosine similarity above which two windows' speakers are the same person."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Longest a model call may take before the request fails with 503 (seconds)."""
    api_keys: list[str] = Field(default_factory=list)
    """Bearer tokens accepted on every route but /health; empty means no auth."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty means no cross-origin access."""

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None) -> Settings:
        """Defaults, then `overrides` (bind args), then environment variables."""
        values: dict[str, Any] = dict(overrides or {})
        env = {
            "max_upload_mb": "MAX_UPLOAD_MB",
            "max_audio_s": "MAX_AUDIO_S",
            "diar_window_s": "VOXGRAPH_DIAR_WINDOW_S",
            "diar_overlap_s": "VOXGRAPH_DIAR_OVERLAP_S",
            "asr_window_s": "VOXGRAPH_ASR_WINDOW_S",
            "asr_overlap_s": "VOXGRAPH_ASR_OVERLAP_S",
            "link_threshold": "VOXGRAPH_LINK_THRESHOLD",
            "request_timeout_s": "VOXGRAPH_REQUEST_TIMEOUT_S",
            "max_inflight_audio_s": "VOXGRAPH_MAX_INFLIGHT_AUDIO_S",
        }
        for field, var in env.items():
            if os.environ.get(var):
                values[field] = os.environ[var]
        if os.environ.get("VOXGRAPH_API_KEY"):
            values["api_keys"] = [
                k.strip() for k in os.environ["VOXGRAPH_API_KEY"].split(",") if k.strip()
            ]
        if os.environ.get("VOXGRAPH_CORS_ORIGINS"):
            values["cors_origins"] = [
                o.strip() for o in os.environ["VOXGRAPH_CORS_ORIGINS"].split(",") if o.strip()
            ]
        return cls(**values)
