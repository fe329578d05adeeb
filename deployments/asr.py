"""ASR deployment: a NeMo ASR model (Parakeet TDT by default), batched."""

from __future__ import annotations

import time

import numpy as np
from ray import serve

from deployments.model_host import ModelHost, check_audio
from voxgraph.types import SAMPLE_RATE, Transcript


@serve.deployment(name="ASR")
class ASR(ModelHost):
    role = "asr"
    batched = ("_transcribe_batch",)

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """Text with word and segment timestamps (seconds) for one 16 kHz clip."""
        check_audio(audio)
        self._require_runner()
        return await self._transcribe_batch(audio, time.perf_counter())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _transcribe_batch(
        self, clips: list[np.ndarray], enqueued: list[float]
    ) -> list[Transcript]:
        audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
        return await self._run_batch(self._runner.transcribe, clips, enqueued, audio_s)
