"""ASR deployment: a NeMo ASR model (Parakeet TDT by default), batched."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import numpy as np
from ray import serve

from deployments.model_host import ModelHost, check_audio
from deployments.placement import resolve_audio
from voxgraph.errors import BadRequest
from voxgraph.models import transcribe_grouped
from voxgraph.schemas import DEFAULT_KEYWORD_BOOST, MAX_KEYWORD_BOOST, clean_keywords
from voxgraph.types import SAMPLE_RATE, AudioSpan, KeywordBoost, Transcript


@serve.deployment(name="ASR")
class ASR(ModelHost):
    role = "asr"
    batched = ("_transcribe_batch",)

    async def transcribe(
        self,
        audio: np.ndarray | AudioSpan,
        keywords: Sequence[str] = (),
        boost: float = DEFAULT_KEYWORD_BOOST,
        *,
        language: str | None = None,
        task: str = "transcribe",
    ) -> Transcript:
        """Text with word and segment timestamps (seconds) for one 16 kHz clip.

        `keywords` (hotwords) bias this clip's decoding only, with weight `boost`. A
        batch mixes requests with different keywords and none: the runner decodes
        each item with its own keywords' boosting tree, or with none.

        A multitask (Canary) model takes the spoken `language` and `task`
        (`transcribe`, or `translate` into English); a batch is split into one
        model call per (language, task). Other models detect the language themselves.
        """
        audio = await resolve_audio(audio)
        check_audio(audio)
        runner = self._require_runner()
        biasing = _keyword_boost(keywords, boost)
        if biasing is not None and not runner.capabilities.get("keywords"):
            raise BadRequest(f"this ASR model cannot take keywords ({runner.model_name})")
        if task not in ("transcribe", "translate"):
            raise BadRequest(f"task must be 'transcribe' or 'translate', got {task!r}")
        if task == "translate" and not runner.capabilities.get("translate"):
            raise BadRequest(f"the ASR model {runner.model_name!r} cannot translate")
        if not runner.capabilities.get("language_required"):
            language = None  # Parakeet-style models detect it; the walk validated it
        return await self._transcribe_batch(audio, biasing, (language, task), time.perf_counter())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _transcribe_batch(
        self,
        clips: list[np.ndarray],
        biasing: list[KeywordBoost | None],
        tasks: list[tuple[str | None, str]],
        enqueued: list[float],
    ) -> list[Transcript]:
        audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
        if any(t != (None, "transcribe") for t in tasks):
            # Prompted (Canary) requests: one runner call per (language, task).
            run = functools.partial(transcribe_grouped, self._runner, keywords=biasing, tasks=tasks)
        else:
            # The runner's own keyword argument only when some item has keywords.
            run = (
                functools.partial(self._runner.transcribe, keywords=biasing)
                if any(biasing)
                else self._runner.transcribe
            )
        return await self._run_batch(run, clips, enqueued, audio_s)


def _keyword_boost(keywords: Sequence[str], boost: float) -> KeywordBoost | None:
    """The request's keywords as the runner takes them; None without keywords."""
    if isinstance(keywords, str):
        keywords = [keywords]
    try:
        phrases = clean_keywords(list(keywords or ()))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if not phrases:
        return None
    boost = float(boost)
    if not (math.isfinite(boost) and 0.0 <= boost <= MAX_KEYWORD_BOOST):
        raise BadRequest(f"keyword_boost must be between 0 and {MAX_KEYWORD_BOOST:g}")
    return KeywordBoost(tuple(phrases), boost)
