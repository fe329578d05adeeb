"""The request walk's model backends as Ray Serve handles to the three deployments.

`voxgraph.pipeline.Pipeline` calls these like any other `Backends`; here a call
is a `.remote()` to the ASR, Diarizer or Embedder deployment (which batches it
with other requests' calls), with a timeout, and Ray's infrastructure failures
become typed 503s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import numpy as np
from ray.serve.handle import DeploymentHandle

from deployments.placement import PlacedAudio
from voxgraph.errors import ServiceUnavailable, VoxgraphError
from voxgraph.pipeline import Role
from voxgraph.schemas import DEFAULT_KEYWORD_BOOST
from voxgraph.types import Diarization, DiarStreamState, DiarStreamStep, ModelInfo, Transcript

T = TypeVar("T")

# A ready model's name and device change only on reconfigure: refresh now and then.
_INFO_TTL_S = 30.0


class HandleBackends:
    """`Backends` over the model deployments' handles."""

    def __init__(
        self,
        asr: DeploymentHandle,
        diarizer: DeploymentHandle,
        embedder: DeploymentHandle,
        timeout_s: float,
    ):
        self._handles: dict[Role, DeploymentHandle] = {
            "asr": asr,
            "diarizer": diarizer,
            "embedder": embedder,
        }
        self._timeout_s = timeout_s
        self._info: dict[Role, tuple[float, ModelInfo]] = {}
        self._placed = PlacedAudio()

    async def place(self, audio: np.ndarray) -> np.ndarray:
        """The decoded recording in the object store once; its windows then travel as spans."""
        return await self._placed.place(audio)

    async def transcribe(
        self,
        audio: np.ndarray,
        *,
        keywords: Sequence[str] = (),
        boost: float = DEFAULT_KEYWORD_BOOST,
        language: str | None = None,
        task: str = "transcribe",
    ) -> Transcript:
        asr = self._handles["asr"].transcribe
        clip = self._placed.span(audio)
        # A multitask (Canary) model's prompt: sent only when the walk gives one.
        prompt = {} if language is None and task == "transcribe" else {"language": language}
        if prompt:
            prompt["task"] = task
        if not keywords:
            return await self._call(asr.remote(clip, **prompt))
        return await self._call(asr.remote(clip, keywords=tuple(keywords), boost=boost, **prompt))

    async def diarize(self, audio: np.ndarray) -> Diarization:
        clip = self._placed.span(audio)
        return await self._call(self._handles["diarizer"].diarize.remote(clip))

    async def diarize_fingerprinted(
        self, audio: np.ndarray, min_speech_s: float, max_speech_s: float | None = None
    ) -> tuple[Diarization, dict[int, np.ndarray]]:
        """Diarize one clip and fingerprint its speakers, the diarization going straight
        from the Diarizer to the Embedder (Serve passes the response by reference)."""
        clip = self._placed.span(audio)
        diar = self._handles["diarizer"].diarize.remote(clip)
        prints = self._handles["embedder"].fingerprints.remote(
            clip, diar, min_speech_s, max_speech_s
        )
        got_diar, got_prints = await asyncio.gather(self._call(diar), self._call(prints))
        return got_diar, got_prints

    async def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return await self._call(self._handles["embedder"].embed.remote(list(clips)))

    async def diarize_step(
        self, audio: np.ndarray, state: DiarStreamState | None
    ) -> DiarStreamStep:
        """One live step on a streaming Sortformer; BadRequest where the model cannot stream."""
        return await self._call(self._handles["diarizer"].diarize_step.remote(audio, state))

    async def info(self, role: Role, *, fresh: bool = False) -> ModelInfo:
        cached = self._info.get(role)
        if (
            not fresh
            and cached
            and cached[1].state == "ready"
            and time.monotonic() - cached[0] < _INFO_TTL_S
        ):
            return cached[1]
        # /health must answer quickly even when a replica does not.
        timeout_s = 3.0 if fresh else 10.0
        info: ModelInfo = await self._call(self._handles[role].status.remote(), timeout_s)
        self._info[role] = (time.monotonic(), info)
        return info

    async def _call(self, response: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await a model deployment with a timeout; infrastructure failures become 503."""
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
            RequestCancelledError,
        )

        try:
            return await asyncio.wait_for(response, timeout_s or self._timeout_s)
        except TimeoutError as e:
            raise ServiceUnavailable("a model took too long to answer; retry later", 5) from e
        except BackPressureError as e:
            raise ServiceUnavailable(f"the service is overloaded ({e}); retry shortly", 1) from e
        except (
            RayActorError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
            RequestCancelledError,
        ) as e:
            raise ServiceUnavailable(
                f"a model replica is unavailable ({type(e).__name__})", 5
            ) from e
        except RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, VoxgraphError):
                raise cause from None
            raise
