"""In-process backends for the request walk: the three NeMo runners in this process.

The seed-style baseline (bench/monolith.py), the benchmarks' no-graph reference and
the walk's tests run `voxgraph.pipeline.Pipeline` over these instead of Ray Serve
handles. Each call is a batch of one, run off the event loop; nothing batches
across requests (that is what the graph's deployments add).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from voxgraph.errors import BadRequest, ModelLoading
from voxgraph.pipeline import ROLES, Role
from voxgraph.schemas import DEFAULT_KEYWORD_BOOST
from voxgraph.types import (
    Diarization,
    DiarStreamState,
    DiarStreamStep,
    KeywordBoost,
    ModelInfo,
    Transcript,
)

T = TypeVar("T")


class InProcessBackends:
    """`Backends` over loaded runners (voxgraph.models' AsrRunner, DiarRunner, EmbedRunner).

    `exclusive=True` runs one model call at a time across all three models, as a
    single-threaded seed server would; otherwise each model serialises only itself
    (the runners' own locks), so one request's ASR may overlap another's diarization.
    """

    def __init__(self, runners: Mapping[Role, Any] | None = None, *, exclusive: bool = False):
        self.runners: dict[Role, Any] = dict(runners or {})
        self.load_seconds: dict[Role, float] = {}
        self.error: str | None = None
        self._exclusive = threading.Lock() if exclusive else None

    def load(
        self,
        models: Mapping[Role, str],
        device: str = "cpu",
        precision: Mapping[Role, str] | None = None,
    ) -> InProcessBackends:
        """Load the three models one after another (time per model in `load_seconds`)."""
        from voxgraph.models import DiarRunner, EmbedRunner, asr_runner_class, load_model

        kinds = {"diarizer": DiarRunner, "embedder": EmbedRunner}
        try:
            for role in ROLES:
                t0 = time.perf_counter()
                model = load_model(role, models[role], device)
                prec = (precision or {}).get(role, "fp32")
                # A multitask (Canary) ASR model gets its own runner, as in the graph.
                kind = asr_runner_class(model) if role == "asr" else kinds[role]
                self.runners[role] = kind(model, device, prec)
                self.load_seconds[role] = time.perf_counter() - t0
        except Exception as e:  # reported through info(), like a failed deployment
            self.error = f"{type(e).__name__}: {e}"
            raise
        return self

    @property
    def ready(self) -> bool:
        return all(role in self.runners for role in ROLES)

    async def transcribe(
        self,
        audio: np.ndarray,
        *,
        keywords: Sequence[str] = (),
        boost: float = DEFAULT_KEYWORD_BOOST,
        language: str | None = None,
        task: str = "transcribe",
    ) -> Transcript:
        # `language` and `task` go to a multitask (Canary) model's prompt only.
        prompt = {} if language is None and task == "transcribe" else {"language": language}
        if prompt:
            prompt["task"] = task
        if not keywords:
            return (await self._run("asr", lambda r: r.transcribe([audio], **prompt)))[0]
        biasing = [KeywordBoost(tuple(keywords), float(boost))]
        return (await self._run("asr", lambda r: r.transcribe([audio], biasing, **prompt)))[0]

    async def diarize(self, audio: np.ndarray) -> Diarization:
        return (await self._run("diarizer", lambda r: r.diarize([audio])))[0]

    async def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return await self._run("embedder", lambda r: r.embed(list(clips)))

    async def diarize_step(
        self, audio: np.ndarray, state: DiarStreamState | None
    ) -> DiarStreamStep:
        """One live step on a streaming Sortformer, as the Diarizer deployment's."""

        def step(runner: Any) -> DiarStreamStep:
            if not runner.capabilities.get("streaming"):
                raise BadRequest(
                    f"diarizer model {runner.model_name!r} cannot stream: "
                    "live steps need a streaming Sortformer"
                )
            try:
                return runner.stream_step([(audio, state)])[0]
            except ValueError as e:
                raise BadRequest(str(e)) from None

        return await self._run("diarizer", step)

    async def info(self, role: Role, *, fresh: bool = False) -> ModelInfo:
        runner = self.runners.get(role)
        if runner is None:
            state = "failed" if self.error else "loading"
            return ModelInfo(role=role, model="", device="unknown", state=state, error=self.error)
        return ModelInfo(
            role=role,
            model=runner.model_name,
            device=runner.device,
            state="ready",
            load_seconds=self.load_seconds.get(role),
            capabilities=dict(getattr(runner, "capabilities", {}) or {}),
            languages=tuple(getattr(runner, "languages", ()) or ()),
        )

    async def _run(self, role: Role, call: Callable[[Any], T]) -> T:
        runner = self.runners.get(role)
        if runner is None:
            raise ModelLoading(f"the {role} model is still loading; retry shortly", 10)

        def work() -> T:
            if self._exclusive is None:
                return call(runner)
            with self._exclusive:
                return call(runner)

        # Inference is synchronous torch work: keep the event loop free.
        return await asyncio.to_thread(work)
