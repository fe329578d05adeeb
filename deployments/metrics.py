"""Custom Serve metrics, exported on Ray's Prometheus endpoint (names get a `ray_` prefix).

Created lazily inside a replica, where Serve adds the deployment, replica and
application tags itself; outside a replica (unit tests, the monolith bench)
every recorder is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

logger = logging.getLogger("ray.serve")

_BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128]
_WAIT_BOUNDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


class _Noop:
    def __getattr__(self, _: str) -> Any:
        return lambda *a, **k: None


def _in_replica() -> bool:
    try:
        from ray.serve import context

        return context._get_internal_replica_context() is not None
    except Exception:
        return False


class ModelMetrics:
    """Per model deployment: batch sizes, queue wait, audio and busy time (RTFx)."""

    def __init__(self, role: str):
        from ray.serve import metrics

        self.role = role
        tags = ("role",)
        self.batch_size = metrics.Histogram(
            "voxgraph_batch_size",
            description="Items per forward pass (embedder: clips).",
            boundaries=_BATCH_BOUNDS,
            tag_keys=tags,
        )
        self.queue_wait = metrics.Histogram(
            "voxgraph_queue_wait_seconds",
            description="Time a request waited in the replica before its batch ran.",
            boundaries=_WAIT_BOUNDS,
            tag_keys=tags,
        )
        self.audio = metrics.Counter(
            "voxgraph_model_audio_seconds",
            description="Audio seconds processed by the model.",
            tag_keys=tags,
        )
        self.busy = metrics.Counter(
            "voxgraph_model_busy_seconds",
            description="Seconds spent in inference; audio/busy is the real-time factor.",
            tag_keys=tags,
        )
        self.rtfx = metrics.Gauge(
            "voxgraph_model_rtfx",
            description="Real-time factor of the last batch (audio seconds per compute second).",
            tag_keys=tags,
        )
        for m in (self.batch_size, self.queue_wait, self.audio, self.busy, self.rtfx):
            m.set_default_tags({"role": role})

    def observe_batch(self, size: int, waits: Sequence[float], audio_s: float, busy_s: float):
        self.batch_size.observe(size)
        for w in waits:
            self.queue_wait.observe(max(0.0, w))
        self.audio.inc(audio_s)
        self.busy.inc(busy_s)
        if busy_s > 0:
            self.rtfx.set(audio_s / busy_s)


# Label values are bounded: a made-up path must not mint a new metric series.
ROUTES = frozenset(
    {
        "/",
        "/health",
        "/v1/models",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/diarize",
        "/v1/audio/diarize-chunk",
        "/docs",
        "/openapi.json",
    }
)


class IngressMetrics:
    """Per route: audio seconds received, errors by kind."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.audio = metrics.Counter(
            "voxgraph_audio_seconds",
            description="Decoded audio seconds received, per route.",
            tag_keys=("route",),
        )
        self.errors = metrics.Counter(
            "voxgraph_errors",
            description="Requests answered with an error, per route and kind.",
            tag_keys=("route", "kind"),
        )

    def audio_received(self, route: str, seconds: float) -> None:
        if seconds > 0:  # Ray's Counter.inc refuses 0, and an empty clip adds nothing
            self.audio.inc(seconds, tags={"route": _route(route)})

    def error(self, route: str, kind: str) -> None:
        self.errors.inc(1, tags={"route": _route(route), "kind": kind})


def _route(path: str) -> str:
    return path if path in ROUTES else "other"


@cache
def model_metrics(role: str) -> ModelMetrics | _Noop:
    return ModelMetrics(role) if _in_replica() else _Noop()


@cache
def ingress_metrics() -> IngressMetrics | _Noop:
    return IngressMetrics() if _in_replica() else _Noop()
