"""Custom Serve metrics, exported on Ray's Prometheus endpoint (names get a `ray_` prefix).

Created lazily inside a replica, where Serve adds the deployment, replica and
application tags itself; outside a replica (unit tests, the monolith bench)
every recorder is a no-op.

A metric must never fail the request it describes: every recorder drops what
Ray's metrics API would refuse (zero or non-finite amounts) and swallows any
exception from it, logging each kind of failure once.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any, ParamSpec

logger = logging.getLogger("ray.serve")

P = ParamSpec("P")

_BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128]
_WAIT_BOUNDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

# (what failed, exception type) already logged: a broken exporter would otherwise
# log on every request.
_logged_failures: set[tuple[str, str]] = set()


def _log_once(what: str, e: BaseException) -> None:
    key = (what, type(e).__name__)
    if key in _logged_failures:
        return
    _logged_failures.add(key)
    logger.warning(
        "metrics: %s failed (%s: %s); the request goes on, later failures of this kind "
        "are not logged",
        what,
        type(e).__name__,
        e,
    )


def _never_raises(fn: Callable[P, None]) -> Callable[P, None]:
    """A recorder that swallows (and logs once) whatever its metric calls raise."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:
            _log_once(fn.__qualname__, e)

    return run


def _record(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """One metric call; a failure is logged once and does not skip the recorder's others."""
    try:
        call(*args, **kwargs)
    except Exception as e:
        _log_once(what, e)


def _amount(value: Any) -> float | None:
    """`value` as a finite float, else None (NaN or inf would poison a series for good)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


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

    @_never_raises
    def observe_batch(
        self, size: int, waits: Sequence[float], audio_s: float, busy_s: float
    ) -> None:
        n = _amount(size)
        if n is not None and n > 0:  # an empty batch ran no forward pass
            _record("batch_size.observe", self.batch_size.observe, n)
        for w in waits:
            wait = _amount(w)
            if wait is not None:
                # A clock step can make a wait negative; it was no wait at all.
                _record("queue_wait.observe", self.queue_wait.observe, max(0.0, wait))
        audio, busy = _amount(audio_s), _amount(busy_s)
        # Ray's Counter.inc refuses 0 (and negatives): nothing to add anyway.
        if audio is not None and audio > 0:
            _record("audio.inc", self.audio.inc, audio)
        if busy is not None and busy > 0:
            _record("busy.inc", self.busy.inc, busy)
            if audio is not None and audio >= 0:
                _record("rtfx.set", self.rtfx.set, audio / busy)


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
        "/v1/speakers",
        "/docs",
        "/openapi.json",
    }
)

# The error kinds reported while one HTTP request is answered (see `error_kinds`).
_request_error_kinds: ContextVar[list[str] | None] = ContextVar(
    "voxgraph_request_error_kinds", default=None
)


@contextmanager
def error_kinds() -> Iterator[list[str]]:
    """For one HTTP request: collect the error kinds reported instead of counting them.

    Several layers may see one failure (the body limit, the framework's parse
    error, a typed operation); the HTTP layer counts the one answer the client
    got, once, naming the last kind reported, and so no error is counted twice.
    """
    kinds: list[str] = []
    token = _request_error_kinds.set(kinds)
    try:
        yield kinds
    finally:
        _request_error_kinds.reset(token)


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

    @_never_raises
    def audio_received(self, route: str, seconds: float) -> None:
        amount = _amount(seconds)
        if amount is not None and amount > 0:  # Counter.inc refuses 0; an empty clip adds nothing
            _record("audio.inc", self.audio.inc, amount, tags={"route": _route(route)})

    @_never_raises
    def error(self, route: str, kind: str) -> None:
        """An operation failed with `kind`: counted now, or by the HTTP layer once answered."""
        kinds = _request_error_kinds.get()
        if kinds is not None:
            kinds.append(str(kind))
            return
        self.count_error(route, kind)

    @_never_raises
    def count_error(self, route: str, kind: str) -> None:
        """Count one error answer (the HTTP layer calls this once per request)."""
        tags = {"route": _route(route), "kind": str(kind)}
        _record("errors.inc", self.errors.inc, 1, tags=tags)


def _route(path: str) -> str:
    if path.startswith("/v1/speakers/"):
        return "/v1/speakers"  # one series for every speaker id
    return path if path in ROUTES else "other"


@cache
def model_metrics(role: str) -> ModelMetrics | _Noop:
    if not _in_replica():
        return _Noop()
    try:
        return ModelMetrics(role)
    except Exception as e:  # serve on without metrics rather than fail every batch
        _log_once("ModelMetrics()", e)
        return _Noop()


@cache
def ingress_metrics() -> IngressMetrics | _Noop:
    if not _in_replica():
        return _Noop()
    try:
        return IngressMetrics()
    except Exception as e:  # serve on without metrics rather than fail every request
        _log_once("IngressMetrics()", e)
        return _Noop()
