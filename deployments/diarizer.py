"""Diarizer deployment: a NeMo Sortformer model, batched; live steps of a streaming one."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from ray import serve

from deployments.model_host import ModelHost, check_audio
from deployments.placement import resolve_audio
from voxgraph.errors import BadRequest
from voxgraph.types import (
    SAMPLE_RATE,
    AudioSpan,
    Diarization,
    DiarStreamState,
    DiarStreamStep,
)


@serve.deployment(name="Diarizer")
class Diarizer(ModelHost):
    role = "diarizer"
    batched = ("_diarize_batch", "_diarize_step_batch")

    def __init__(self, **config):
        super().__init__(**config)
        self._step_batch_sizes: deque[int] = deque(maxlen=256)

    async def diarize(self, audio: np.ndarray | AudioSpan) -> Diarization:
        """Turns (local speaker indices) and the (frames x speakers) probabilities of one clip."""
        audio = await resolve_audio(audio)
        check_audio(audio)
        self._require_runner()
        return await self._diarize_batch(audio, time.perf_counter())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _diarize_batch(
        self, clips: list[np.ndarray], enqueued: list[float]
    ) -> list[Diarization]:
        audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
        return await self._run_batch(self._runner.diarize, clips, enqueued, audio_s)

    async def diarize_step(
        self, audio: np.ndarray, state: DiarStreamState | None = None
    ) -> DiarStreamStep:
        """One live step of a session on a streaming Sortformer: new audio in, new frames out.

        The session's whole memory travels in `state` (None to start), so any replica
        takes any step; steps of concurrent sessions run as one forward pass per chunk.
        """
        check_audio(audio)
        runner = self._require_runner()
        if not runner.capabilities.get("streaming"):
            raise BadRequest(
                f"diarizer model {runner.model_name!r} cannot stream: "
                "live steps need a streaming Sortformer"
            )
        try:
            runner.check_stream_state(state)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return await self._diarize_step_batch((audio, state), time.perf_counter())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _diarize_step_batch(
        self, items: list[tuple[np.ndarray, DiarStreamState | None]], enqueued: list[float]
    ) -> list[DiarStreamStep]:
        self._step_batch_sizes.append(len(items))
        audio_s = sum(len(a) for a, _ in items) / SAMPLE_RATE
        runner = self._runner

        def step(batch):
            try:
                return runner.stream_step(batch)
            except ValueError as e:  # a state refused after the check (model swapped)
                raise BadRequest(str(e)) from None

        return await self._run_batch(step, items, enqueued, audio_s)

    def step_batch_sizes(self) -> list[int]:
        """Sizes of the latest live-step batches (newest last), for tests and debugging."""
        return list(self._step_batch_sizes)
