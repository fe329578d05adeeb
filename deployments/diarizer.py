"""Diarizer deployment: a NeMo Sortformer model, batched."""

from __future__ import annotations

import time

import numpy as np
from ray import serve

from deployments.model_host import ModelHost, check_audio
from voxgraph.types import SAMPLE_RATE, Diarization


@serve.deployment(name="Diarizer")
class Diarizer(ModelHost):
    role = "diarizer"
    batched = ("_diarize_batch",)

    async def diarize(self, audio: np.ndarray) -> Diarization:
        """Turns (local speaker indices) and the (frames x speakers) probabilities of one clip."""
        check_audio(audio)
        self._require_runner()
        return await self._diarize_batch(audio, time.perf_counter())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _diarize_batch(
        self, clips: list[np.ndarray], enqueued: list[float]
    ) -> list[Diarization]:
        audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
        return await self._run_batch(self._runner.diarize, clips, enqueued, audio_s)
