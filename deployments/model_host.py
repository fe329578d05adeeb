"""What the three model deployments share: config, one background loader, health.

Not a deployment itself, and usable without Ray: subclasses set `role` and wire
their `@serve.batch` methods through `batched`.

Lifecycle of a replica:
- `__init__` only records the bind args. The first `reconfigure` (Serve calls it
  right after `__init__` when a `user_config` is set, and routes nothing to the
  replica until it returns) merges the `user_config` in and starts the one load of
  the replica's start, then waits for it up to `load_wait_s`: a replica added by
  autoscaling or replacing a dead one takes traffic only once its model is ready.
  If that load fails, `reconfigure` raises: the replica fails to start instead of
  running on, answering 503 for ever. Serve retries the start; after a few failures
  it stops a rolling update (the previous version's replicas keep serving) or marks
  a new deployment DEPLOY_FAILED, with the load error in `serve status`.
- A deployment without a `user_config` gets no `reconfigure`: its first
  `status()`, `check_health()` or request starts the load from the bind args.
- Loading runs in one background thread, so `status()` answers (and the ingress
  answers 503 + Retry-After) while a large model downloads or restores. One load
  runs at a time, always of the newest wanted config: a model loaded for a config
  that was replaced meanwhile is freed, never installed.
- On a live replica, a new model or precision is loaded while the old runner keeps
  serving, then swapped in (a precision change re-wraps the loaded model, except to or
  from int8, whose quantised weights need the model loaded again).
  `max_batch_audio_s`, `torch_threads` and `sdpa` change on the serving runner in place.
  If a load fails the old runner keeps serving, the replica stays healthy and
  `status()` reports the error.
- `check_health` (called by Serve periodically) raises while the replica has no
  model and its load failed, so Serve replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from deployments.metrics import model_metrics
from voxgraph import models
from voxgraph.errors import BadRequest, ModelFailed, ModelLoading
from voxgraph.settings import ModelConfig
from voxgraph.types import ModelInfo

logger = logging.getLogger("ray.serve")

__all__ = ["LoadRunner", "ModelConfig", "ModelHost", "check_audio"]

LoadRunner = Callable[[str, str, str, str], Any]
"""`(role, model, device, precision) -> runner`: load a model and wrap it for serving."""

Key = tuple[str, str]
"""(model, precision): what a runner is built from; anything else changes in place."""


class ModelHost:
    """Mixin for the model deployments; subclasses set `role` (and `batched`)."""

    role: ClassVar[str]
    batched: ClassVar[tuple[str, ...]] = ()
    """Names of the subclass's `@serve.batch` methods, sized from the config."""

    load_runner: ClassVar[LoadRunner] = staticmethod(models.load_runner)
    """The loader; NeMo's by default. Tests put a fake one here."""
    pick_device: ClassVar[Callable[[], str]] = staticmethod(models.pick_device)
    """Where a new model goes: CUDA when present."""

    def __init__(self, **config: Any):
        self._config = ModelConfig(**config)
        self._apply_batching(self._config)
        self._lock = threading.Lock()
        self._wanted: Key | None = None  # None until something starts the first load
        self._failed: Key | None = None  # the wanted key whose last load failed
        self._runner: Any = None
        self._loaded: Key | None = None
        self._state = "loading"
        self._error: str | None = None
        self._device = "unknown"
        self._load_seconds: float | None = None
        self._worker: threading.Thread | None = None
        self._idle = threading.Event()  # set while no load is pending
        self._idle.set()

    # ------------------------------------------------------------ Serve hooks

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ModelConfig(**{**self._config.model_dump(), **(user_config or {})})
        self._config = config
        self._apply_batching(config)
        _configure(self._runner, config)  # batch audio limit and threads: in place
        self._want(config)
        if self._runner is None:
            # Serve routes nothing to a starting replica until this returns. On a live
            # replica the old runner keeps serving while the new one loads: no wait.
            await asyncio.to_thread(self.wait_idle, config.load_wait_s)
            self._raise_if_failed()

    def check_health(self) -> None:
        """Raise while the replica has no model and its load failed: Serve replaces it."""
        self._ensure_started()
        self._raise_if_failed()

    def status(self) -> ModelInfo:
        self._ensure_started()
        with self._lock:
            runner, loaded = self._runner, self._loaded
            return ModelInfo(
                role=self.role,
                model=loaded[0] if loaded else self._config.model,
                device=self._device,
                state=self._state,
                error=self._error,
                load_seconds=self._load_seconds,
                capabilities=dict(getattr(runner, "capabilities", {}) or {}),
                languages=tuple(getattr(runner, "languages", ()) or ()),
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no load is pending (the wanted model is in or failed); False on timeout."""
        return self._idle.wait(timeout)

    # ------------------------------------------------------------ loading

    def _apply_batching(self, config: ModelConfig) -> None:
        for name in self.batched:
            method = getattr(self, name)
            method.set_max_batch_size(config.max_batch_size)
            method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def _ensure_started(self) -> None:
        if self._wanted is None:
            self._want(self._config)

    def _want(self, config: ModelConfig) -> None:
        """Make `config`'s model the one to serve; start the loader if it is idle."""
        key = (config.model, config.precision)
        with self._lock:
            self._wanted = key
            # An explicit reconfigure retries a model that failed before.
            self._failed = None
            if key == self._loaded:
                # Back to what is serving: a load still running for another key is
                # dropped when it ends, and its error no longer applies.
                self._error = None
                return
            if self._runner is None:
                self._state = "loading"
            if self._worker is None:
                self._idle.clear()
                self._worker = threading.Thread(
                    target=self._work, name=f"load-{self.role}", daemon=True
                )
                self._worker.start()

    def _work(self) -> None:
        """Load the wanted key until what is installed (or failed) is what is wanted."""
        while True:
            with self._lock:
                key = self._wanted
                if key is None or key in (self._loaded, self._failed):
                    self._worker = None
                    self._idle.set()
                    return
                # A precision change re-wraps the loaded model instead of loading it again.
                base = self._runner if self._loaded and self._loaded[0] == key[0] else None
            t0 = time.perf_counter()
            try:
                runner, device = self._build(key, base)
            except Exception as e:  # a bad path or name must not kill the replica
                logger.exception("loading %s model %r failed", self.role, key[0])
                with self._lock:
                    if self._wanted == key:
                        self._failed = key
                        self._error = f"{type(e).__name__}: {e}"
                        if self._runner is None:
                            self._state = "failed"
                continue
            seconds = time.perf_counter() - t0
            with self._lock:
                superseded = self._wanted != key
                if not superseded:
                    _configure(runner, self._config)
                    old = self._runner
                    self._runner, self._loaded = runner, key
                    self._device = device
                    self._state, self._error, self._load_seconds = "ready", None, seconds
            if superseded:
                logger.info("%s model %r loaded but superseded; freeing it", self.role, key[0])
                _close(runner)
            else:
                logger.info(
                    "%s model %r (%s) ready on %s in %.1fs",
                    self.role,
                    key[0],
                    key[1],
                    self._device,
                    seconds,
                )
                # Calls already running on the old runner hold their own reference to it.
                del old
            del runner
            models.release_memory()

    def _build(self, key: Key, base: Any) -> tuple[Any, str]:
        """A runner for `key` and its device; from `base` when only the precision differs."""
        model, precision = key
        # int8 quantises the model itself: to or from it, the model is loaded again.
        reloads = models.CPU_ONLY_PRECISIONS
        same_model = precision not in reloads and getattr(base, "precision", None) not in reloads
        if base is not None and hasattr(base, "with_precision") and same_model:
            return base.with_precision(precision), self._device
        device = self.pick_device()
        return self.load_runner(self.role, model, device, precision), device

    def _raise_if_failed(self) -> None:
        with self._lock:
            if self._runner is None and self._state == "failed":
                raise RuntimeError(f"the {self.role} model failed to load: {self._error}")

    # ------------------------------------------------------------ serving

    def _require_runner(self) -> Any:
        self._ensure_started()
        runner = self._runner
        if runner is not None:
            return runner
        if self._state == "failed":
            raise ModelFailed(f"the {self.role} model failed to load: {self._error}", 30)
        raise ModelLoading(f"the {self.role} model is still loading; retry shortly", 10)

    async def _run_batch(
        self,
        fn: Callable[[list[Any]], Any],
        items: list[Any],
        enqueued: list[float],
        audio_s: float,
    ) -> Any:
        """Run one batch off the event loop and record its size, queue wait and RTFx."""
        start = time.perf_counter()
        # Inference is synchronous torch work: keep it off the replica's event loop.
        out = await asyncio.to_thread(fn, items)
        busy = time.perf_counter() - start
        model_metrics(self.role).observe_batch(
            len(items), [start - t for t in enqueued], audio_s, busy
        )
        return out


def _configure(runner: Any, config: ModelConfig) -> None:
    """The config's in-place runtime knobs on a runner (a test's fake may lack them)."""
    configure = getattr(runner, "configure", None)
    if runner is not None and callable(configure):
        configure(
            max_batch_audio_s=config.max_batch_audio_s,
            torch_threads=config.torch_threads,
            sdpa=config.sdpa,
        )


def _close(runner: Any) -> None:
    """Free a runner that never served (a superseded load)."""
    close = getattr(runner, "close", None)
    if callable(close):
        close()


def check_audio(audio: Any) -> None:
    """Model deployments take decoded 16 kHz mono float32 only; say so early."""
    import numpy as np

    if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 1:
        raise BadRequest("model deployments take 16 kHz mono float32 numpy arrays (1-D)")
