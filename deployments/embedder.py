"""Embedder deployment: a NeMo TitaNet model, one fingerprint per clip (192-dim for TitaNet)."""

from __future__ import annotations

import time

import numpy as np
from ray import serve

from deployments.model_host import ModelHost, check_audio
from deployments.placement import resolve_audio
from voxgraph.turns import speaker_fingerprints
from voxgraph.types import SAMPLE_RATE, AudioSpan, Diarization


def _clip_count(requests: list[list[np.ndarray]]) -> int:
    return sum(len(clips) for clips in requests)


@serve.deployment(name="Embedder")
class Embedder(ModelHost):
    role = "embedder"
    batched = ("_embed_batch",)

    async def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        """An (N, dim) float32 array, one row per clip, in order (dim: the model's, 192)."""
        for clip in clips:
            check_audio(clip)
        runner = self._require_runner()
        if not clips:
            return np.zeros((0, runner.dim), dtype=np.float32)
        return await self._embed_batch(list(clips), time.perf_counter())

    async def fingerprints(
        self,
        audio: np.ndarray | AudioSpan,
        diar: Diarization,
        min_speech_s: float,
        max_speech_s: float | None = None,
    ) -> dict[int, np.ndarray]:
        """Unit-length fingerprint per local speaker of `diar` with `min_speech_s` (s) of speech,
        from at most `max_speech_s` (s) of it (None: all).

        The ingress passes the diarizer's response straight here (Serve resolves it),
        so each speaker's clip is cut from the shared samples in this replica.
        """
        audio = await resolve_audio(audio)
        check_audio(audio)
        return await speaker_fingerprints(audio, diar.turns, min_speech_s, self.embed, max_speech_s)

    # Batch size counts clips, not requests: one chunk may bring four speakers.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=_clip_count)
    async def _embed_batch(
        self, requests: list[list[np.ndarray]], enqueued: list[float]
    ) -> list[np.ndarray]:
        flat = [clip for clips in requests for clip in clips]
        audio_s = sum(len(c) for c in flat) / SAMPLE_RATE
        embs = await self._run_batch(self._runner.embed, flat, enqueued, audio_s)
        out, i = [], 0
        for clips in requests:
            out.append(np.asarray(embs[i : i + len(clips)], dtype=np.float32))
            i += len(clips)
        return out
