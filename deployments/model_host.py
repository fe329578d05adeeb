"""What the three model deployments share: config, background loading, readiness.

Not a deployment itself. Loading happens in a background thread so a replica
answers `status()` (and the ingress answers 503 + Retry-After) while a large
model is still downloading or being restored, instead of hanging callers.

A starting replica's first `reconfigure` (which Serve awaits before it routes
anything to the replica) waits for that load, up to `load_wait_s`: a replica
added by autoscaling or replacing a dead one then takes traffic only once its
model is ready, instead of answering 503 while its peers could serve.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from deployments.metrics import model_metrics
from voxgraph.errors import BadRequest, ModelFailed, ModelLoading
from voxgraph.types import ModelInfo

logger = logging.getLogger("ray.serve")


class ModelConfig(BaseModel):
    """A model deployment's `user_config`; every field can change in place."""

    model: str
    """Hugging Face / NGC model name (from_pretrained) or local `.nemo` path (restore_from)."""
    precision: str = Field("fp32", pattern="^(fp32|bf16|fp16)$")
    """Autocast precision on CUDA; CPU always runs fp32."""
    max_batch_size: int = Field(8, ge=1)
    """Most requests (embedder: clips) fused into one forward pass."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """How long the first request of a batch waits for others (seconds)."""
    load_wait_s: float = Field(600.0, ge=0)
    """How long a starting replica holds off traffic while its model loads (seconds)."""


class ModelHost:
    """Mixin for the model deployments; subclasses set `role` and `_build_runner`."""

    role: ClassVar[str]
    batched: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **config: Any):
        self._config = ModelConfig(**config)
        self._runner: Any = None
        self._loaded_key: tuple[str, str] | None = None
        self._loading_key: tuple[str, str] | None = None
        self._state = "idle"
        self._error: str | None = None
        self._device = "unknown"
        self._load_seconds: float | None = None
        self._lock = threading.Lock()
        self._load_done = threading.Event()  # set when the latest load ends, either way
        # Ray calls reconfigure() right after __init__ when a user_config is
        # set; without one nothing would start the load, so apply it here too.
        self._apply(self._config)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        merged = {**self._config.model_dump(), **(user_config or {})}
        self._apply(ModelConfig(**merged))
        if self._runner is None:
            # Serve routes nothing to a starting replica until this returns. On a live
            # replica (a model swapped in place) the old runner keeps serving: no wait.
            await asyncio.to_thread(self._load_done.wait, self._config.load_wait_s)

    def _apply(self, config: ModelConfig) -> None:
        self._config = config
        for name in self.batched:
            method = getattr(self, name)
            method.set_max_batch_size(config.max_batch_size)
            method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        key = (config.model, config.precision)
        with self._lock:
            if key in (self._loaded_key, self._loading_key):
                return
            self._loading_key = key
            if self._runner is None:
                self._state = "loading"
            self._load_done = done = threading.Event()
        threading.Thread(
            target=self._load, args=(key, done), name=f"load-{self.role}", daemon=True
        ).start()

    def _load(self, key: tuple[str, str], done: threading.Event) -> None:
        try:
            self._load_model(key)
        finally:
            done.set()

    def _load_model(self, key: tuple[str, str]) -> None:
        model, precision = key
        t0 = time.perf_counter()
        try:
            from voxgraph.models import load_model, pick_device

            device = pick_device()
            runner = self._build_runner(load_model(self.role, model, device), device, precision)
        except Exception as e:  # a bad path or name must not kill the replica
            logger.exception("loading %s model %r failed", self.role, model)
            with self._lock:
                if self._loading_key == key:
                    self._loading_key = None
                    if self._runner is None:
                        self._state = "failed"
                    self._error = f"{type(e).__name__}: {e}"
            return
        with self._lock:
            if self._loading_key != key:  # superseded by a newer reconfigure
                return
            self._runner, self._loaded_key, self._loading_key = runner, key, None
            self._device, self._state, self._error = device, "ready", None
            self._load_seconds = time.perf_counter() - t0
        logger.info(
            "%s model %r ready on %s in %.1fs", self.role, model, device, self._load_seconds
        )

    def _build_runner(self, model: Any, device: str, precision: str) -> Any:
        raise NotImplementedError

    def status(self) -> ModelInfo:
        runner = self._runner
        return ModelInfo(
            role=self.role,
            model=self._loaded_key[0] if self._loaded_key else self._config.model,
            device=self._device,
            state=self._state,
            error=self._error,
            load_seconds=self._load_seconds,
            capabilities=dict(getattr(runner, "capabilities", {}) or {}),
        )

    def _require_runner(self) -> Any:
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


def check_audio(audio: Any) -> None:
    """Model deployments take decoded 16 kHz mono float32 only; say so early."""
    import numpy as np

    if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 1:
        raise BadRequest("model deployments take 16 kHz mono float32 numpy arrays (1-D)")
