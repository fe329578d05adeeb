"""Decoded audio placed once, windows sent as spans (deployments/placement.py), without Ray.

A dict stands in for the object store: `put` copies the array in (as Ray does)
and `get` returns the stored array, so the tests see exactly what a model
replica would resolve, and when the stored copy is let go.
"""

from __future__ import annotations

import asyncio
import gc
import itertools

import numpy as np

from deployments.placement import PlacedAudio, resolve_audio
from voxgraph.pipeline import Pipeline
from voxgraph.schemas import TranscribeOptions
from voxgraph.settings import Settings
from voxgraph.types import SAMPLE_RATE, AudioSpan
from voxgraph.windows import plan_windows, window_samples


class Store:
    def __init__(self) -> None:
        self.objects: dict[int, np.ndarray] = {}
        self.puts = 0
        self._ids = itertools.count()

    def put(self, a: np.ndarray) -> int:
        self.puts += 1
        ref = next(self._ids)
        stored = a.copy()
        stored.flags.writeable = False  # as Ray's zero-copy reads are
        self.objects[ref] = stored
        return ref

    async def get(self, ref: int) -> np.ndarray:
        # A new array over the stored buffer, as each of Ray's zero-copy reads is.
        return np.frombuffer(memoryview(self.objects[ref]), dtype=np.float32)


class Ref:
    """An awaitable reference, as a Ray ObjectRef is in a replica."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def __await__(self):
        yield from ()
        return self.value


def test_windows_of_a_placed_recording_travel_as_spans_and_resolve_to_their_samples():
    store = Store()
    placed_audio = PlacedAudio(store.put, store.get)
    samples = np.random.default_rng(0).standard_normal(200 * SAMPLE_RATE).astype(np.float32)

    async def run() -> None:
        placed = await placed_audio.place(samples)
        assert store.puts == 1 and not placed.flags.writeable
        np.testing.assert_array_equal(placed, samples)
        for w in plan_windows(200.0, 90.0, 10.0):
            clip = window_samples(placed, w)
            span = placed_audio.span(clip)
            assert isinstance(span, AudioSpan)
            assert span.stop - span.start == len(clip)
            # What the model replica takes: the same samples, as a view of the copy.
            got = await resolve_audio(
                AudioSpan(Ref(store.objects[span.source]), span.start, span.stop)
            )
            np.testing.assert_array_equal(got, clip)
            assert np.shares_memory(got, store.objects[span.source])
        # The whole recording is a span too (a 30 s request's only window).
        whole = placed_audio.span(placed)
        assert isinstance(whole, AudioSpan) and (whole.start, whole.stop) == (0, len(samples))

    asyncio.run(run())
    assert store.puts == 1  # every window above came from the one placed copy


def test_arrays_that_are_not_placed_are_sent_as_they_are():
    store = Store()
    placed_audio = PlacedAudio(store.put, store.get)
    small = np.zeros(1000, dtype=np.float32)  # under Ray's inline size: not worth a put
    other = np.ones(60 * SAMPLE_RATE, dtype=np.float32)

    async def run() -> None:
        assert await placed_audio.place(small) is small
        assert placed_audio.span(small) is small
        assert placed_audio.span(other) is other  # a clip built elsewhere (a fingerprint's)
        assert placed_audio.span(other[::2]) is not None
        strided = (await placed_audio.place(other))[::2]
        assert placed_audio.span(strided) is strided  # not a contiguous span

    asyncio.run(run())
    assert store.puts == 1


def test_the_stored_copy_is_let_go_with_the_recording():
    store = Store()
    placed_audio = PlacedAudio(store.put, store.get)

    async def run() -> None:
        placed = await placed_audio.place(np.ones(30 * SAMPLE_RATE, dtype=np.float32))
        view = placed[SAMPLE_RATE:]
        del placed
        gc.collect()
        assert len(placed_audio) == 1  # a window in flight keeps it
        assert isinstance(placed_audio.span(view), AudioSpan)
        del view

    asyncio.run(run())
    gc.collect()
    assert len(placed_audio) == 0


def test_the_walk_places_each_recording_once_and_slices_windows_from_the_placed_copy():
    from tests.test_pipeline import FakeBackends, _meeting

    class Placing(FakeBackends):
        def __init__(self) -> None:
            super().__init__()
            self.store = Store()
            self.placed = PlacedAudio(self.store.put, self.store.get)
            self.spans: list[AudioSpan | np.ndarray] = []

        async def place(self, audio: np.ndarray) -> np.ndarray:
            return await self.placed.place(audio)

        async def transcribe(self, audio: np.ndarray, **kw):
            self.spans.append(self.placed.span(audio))
            return await super().transcribe(audio)

        async def diarize(self, audio: np.ndarray):
            self.spans.append(self.placed.span(audio))
            return await super().diarize(audio)

    settings = Settings.load(
        {"diar_window_s": 25, "diar_overlap_s": 5, "asr_window_s": 25, "asr_overlap_s": 5}
    )
    fake = Placing()
    opts = TranscribeOptions(diarize=True, response_format="diarized_json")
    out = asyncio.run(Pipeline(fake, settings).transcribe(_meeting(), opts))
    assert out.transcript.text
    assert fake.store.puts == 1
    assert len(fake.spans) == 6 and all(isinstance(s, AudioSpan) for s in fake.spans)
