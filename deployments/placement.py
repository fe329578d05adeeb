"""Decoded audio placed once in Ray's object store, and windows sent as spans of it.

Without this, every model call pickles its clip: a 30 s request with
diarize=true copies its samples into the object store twice (ASR and
diarizer), and a long recording once per ASR window and once per diarization
window, overlaps included. With it, the ingress puts the decoded recording in
the object store once, keeps slicing windows from the shared (read-only,
zero-copy) copy, and a call carries `AudioSpan(ref, start, stop)`: the model
replica resolves the reference (zero-copy on the same node) and takes a view.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from voxgraph.types import AudioSpan

# Ray inlines arguments under 100 KiB into the call itself; placing those would
# add a put and a fetch for nothing.
MIN_PLACED_BYTES = 100 * 1024


class PlacedAudio:
    """Recordings in the object store while the walk holds them; spans for their windows.

    `put` stores an array and returns a reference; `get` resolves a reference to
    the stored array (zero-copy). Ray's by default; injectable for tests.
    """

    def __init__(
        self,
        put: Callable[[np.ndarray], Any] | None = None,
        get: Callable[[Any], Awaitable[np.ndarray]] | None = None,
        min_bytes: int = MIN_PLACED_BYTES,
    ):
        self._put = put
        self._get = get
        self._min_bytes = min_bytes
        # id(placed array) -> (first byte, end byte, reference). An entry goes when its
        # array is collected, which frees the stored copy once no call still uses it.
        self._placed: dict[int, tuple[int, int, Any]] = {}

    async def place(self, samples: np.ndarray) -> np.ndarray:
        """The recording as a view of its object-store copy (or as is, if small)."""
        if samples.nbytes < self._min_bytes or samples.ndim != 1:
            return samples
        put, get = self._put, self._get
        if put is None or get is None:
            import ray

            put, get = ray.put, _await_ref
        # A copy of up to hundreds of MB: not on the event loop.
        ref = await asyncio.to_thread(put, np.ascontiguousarray(samples, dtype=np.float32))
        placed = await get(ref)
        first = _address(placed)
        key = id(placed)
        self._placed[key] = (first, first + placed.nbytes, ref)
        weakref.finalize(placed, self._placed.pop, key, None)
        return placed

    def span(self, audio: np.ndarray) -> np.ndarray | AudioSpan:
        """A window of a placed recording as a span of it; any other array as is.

        Found by address: a view's `base` may name the buffer's owner rather than
        the placed array itself.
        """
        if audio.ndim != 1 or audio.dtype != np.float32 or not audio.flags.c_contiguous:
            return audio
        first = _address(audio)
        for start, end, ref in self._placed.values():
            if start <= first and first + audio.nbytes <= end:
                offset = (first - start) // audio.itemsize
                return AudioSpan(ref, offset, offset + len(audio))
        return audio

    def __len__(self) -> int:
        return len(self._placed)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


async def _await_ref(ref: Any) -> np.ndarray:
    return await ref


async def resolve_audio(audio: Any) -> Any:
    """A model deployment's audio argument as an array: spans become views of the shared copy.

    Anything else comes back as is, for the deployment's own input check.
    """
    if not isinstance(audio, AudioSpan):
        return audio
    whole = await audio.source
    return whole[audio.start : audio.stop]
