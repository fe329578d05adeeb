"""Streaming Sortformer for live sessions: runner steps, invariances, state, deployment.

The tiny streaming model (models/tiny/diarizer_streaming.nemo) is a real
SortformerEncLabelModel in streaming mode with small streaming sizes, so a few seconds
of audio fill its FIFO and speaker cache and compress the cache. Its outputs are
meaningless; what is checked is that a live session's frames are exactly what NeMo's
own streaming forward gives on the whole recording, however the audio is cut and
whichever sessions share a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle

import numpy as np
import pytest

from tests.support import SR, speechlike

pytest.importorskip("nemo.collections.asr")
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

from voxgraph import models as M  # noqa: E402
from voxgraph.types import DiarStreamState, DiarStreamStep  # noqa: E402


def _meeting(seed: int = 0) -> np.ndarray:
    """About 14 s of three synthetic 'speakers' (pitch, level), with pauses between them."""
    parts = [speechlike(5.0, seed + 1), 0.5 * speechlike(5.0, seed + 2), speechlike(4.0, seed + 3)]
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Steps are many small ops: on a shared, busy CPU two torch threads spin against each
    other (36 s instead of 0.4 s for 28 chunks measured here). Ray replicas with num_cpus
    <= 1 run with one thread anyway."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def stream_runner(tiny_models) -> M.DiarRunner:
    model = M.load_model("diarizer", str(tiny_models / "diarizer_streaming.nemo"), "cpu")
    return M.DiarRunner(model, "cpu")


@pytest.fixture(scope="module")
def offline_runner(tiny_models) -> M.DiarRunner:
    return M.DiarRunner(M.load_model("diarizer", str(tiny_models / "diarizer.nemo"), "cpu"), "cpu")


def _stream(runner, audio: np.ndarray, pieces_s, state=None) -> tuple[np.ndarray, DiarStreamState]:
    """Feed `audio` in pieces of the given lengths (seconds, cycled); all frames and the state."""
    out, pos, i = [], 0, 0
    while pos < len(audio) or i == 0:
        n = max(1, round(pieces_s[i % len(pieces_s)] * SR))
        before = state.frames if state is not None else 0
        (step,) = runner.stream_step([(audio[pos : pos + n], state)])
        assert isinstance(step, DiarStreamStep)
        assert step.start_frame == before and step.frame_s == runner.frame_s
        assert step.state.frames == before + len(step.probs)
        out.append(step.probs)
        state, pos, i = step.state, pos + n, i + 1
    return np.concatenate(out), state


def _expected_frames(runner, n_samples: int) -> int:
    g = runner.stream
    k = 0
    while g.samples_needed(k) <= n_samples:
        k += 1
    return k * g.chunk


def _nemo_streaming(runner, audio: np.ndarray) -> np.ndarray:
    """NeMo's own streaming forward (asynchronous update) over the whole recording."""
    import torch

    model = runner.model
    saved = model.async_streaming
    model.async_streaming = True
    try:
        with torch.inference_mode():
            preds = model.forward(
                audio_signal=torch.from_numpy(audio)[None],
                audio_signal_length=torch.tensor([len(audio)]),
            )
    finally:
        model.async_streaming = saved
    return preds[0].numpy()


# ----------------------------------------------------------------------------- runner


def test_capabilities(stream_runner, offline_runner):
    assert stream_runner.capabilities["streaming"] is True
    assert offline_runner.capabilities["streaming"] is False
    assert offline_runner.stream is None and offline_runner.stream_latency_s is None
    # chunk 6 + right context 2 frames of 80 ms, plus half a 512-sample window
    assert stream_runner.stream_latency_s == pytest.approx(8 * 0.08 + 96 / SR)
    with pytest.raises(ValueError, match="not a streaming Sortformer"):
        offline_runner.stream_step([(np.zeros(16000, np.float32), None)])


def test_stream_matches_nemo_and_is_chunking_invariant(stream_runner):
    audio = _meeting()
    whole, state = _stream(stream_runner, audio, [len(audio) / SR])
    uneven, state2 = _stream(stream_runner, audio, [0.3, 1.7, 0.05, 0.01, 0.77, 2.5, 0.0001])
    assert whole.shape == (_expected_frames(stream_runner, len(audio)), 4)
    assert whole.dtype == np.float32 and whole.min() >= 0.0 and whole.max() <= 1.0
    np.testing.assert_allclose(uneven, whole, atol=1e-6)
    # The FIFO overflowed into the speaker cache, which was compressed to its size.
    assert state.arrays["spkcache"].shape[0] == stream_runner.model.sortformer_modules.spkcache_len
    assert state.samples == state2.samples == len(audio)
    # Live frames are exactly NeMo's streaming forward over the whole file.
    reference = _nemo_streaming(stream_runner, audio)
    np.testing.assert_allclose(whole, reference[: len(whole)], atol=1e-5)


def test_short_pieces_give_no_frames_until_a_chunk_is_complete(stream_runner):
    g = stream_runner.stream
    need = g.samples_needed(0)
    audio = speechlike(2.0, 9)
    (step,) = stream_runner.stream_step([(audio[: need - 1], None)])
    assert step.probs.shape == (0, 4) and step.start_frame == 0
    assert step.state.pending.shape == (need - 1,) and step.state.frames == 0
    (step,) = stream_runner.stream_step([(audio[need - 1 : need], step.state)])
    assert step.probs.shape == (g.chunk, 4) and step.start_frame == 0
    (empty,) = stream_runner.stream_step([(np.zeros(0, np.float32), step.state)])
    assert empty.probs.shape == (0, 4) and empty.start_frame == g.chunk


def test_batched_sessions_match_each_alone(stream_runner):
    # Three sessions at different points: fresh, a few chunks in, past cache compression.
    a, b, c = _meeting(10), _meeting(20), _meeting(30)
    _, sb = _stream(stream_runner, b[: 2 * SR], [2.0])
    _, sc = _stream(stream_runner, c[: 9 * SR], [9.0])
    batch = [(a[: 3 * SR], None), (b[2 * SR : 6 * SR], sb), (c[9 * SR :], sc)]
    together = stream_runner.stream_step(batch)
    for (audio, state), step in zip(batch, together, strict=True):
        (alone,) = stream_runner.stream_step([(audio, state)])
        assert step.start_frame == alone.start_frame
        assert step.probs.shape == alone.probs.shape and len(step.probs) > 0
        np.testing.assert_allclose(step.probs, alone.probs, atol=1e-5)
        assert step.state.arrays.keys() == alone.state.arrays.keys()
        for key, value in alone.state.arrays.items():
            np.testing.assert_allclose(step.state.arrays[key], value, atol=1e-5)
        np.testing.assert_array_equal(step.state.pending, alone.state.pending)


def test_state_pickles_and_continues(stream_runner):
    audio = _meeting(5)
    _, state = _stream(stream_runner, audio[: 7 * SR], [1.3])
    copy = pickle.loads(pickle.dumps(state))
    assert isinstance(copy, DiarStreamState) and copy.model == state.model
    assert copy.frames == state.frames and copy.pending_start == state.pending_start
    rest = audio[7 * SR :]
    (x,) = stream_runner.stream_step([(rest, state)])
    (y,) = stream_runner.stream_step([(rest, copy)])
    np.testing.assert_array_equal(x.probs, y.probs)
    assert all(v.dtype != object for v in state.arrays.values())


def test_state_of_another_model_or_setting_is_refused(stream_runner, tiny_models):
    (step,) = stream_runner.stream_step([(speechlike(1.0, 2), None)])
    other = dataclasses.replace(step.state, model="nvidia/diar_streaming_sortformer_4spk-v2")
    with pytest.raises(ValueError, match="belongs to diarizer model"):
        stream_runner.stream_step([(np.zeros(160, np.float32), other)])
    # The same file behind other streaming sizes is another model for a session.
    resized = M.DiarRunner(stream_runner.model, "cpu", streaming={"chunk_len": 3})
    assert resized.stream.chunk == 3
    with pytest.raises(ValueError, match="other streaming settings"):
        resized.stream_step([(np.zeros(160, np.float32), step.state)])
    with pytest.raises(ValueError, match="DiarStreamState"):
        stream_runner.check_stream_state({"arrays": {}})  # type: ignore[arg-type]


def test_streaming_overrides_apply_to_steps_only(stream_runner):
    sm = stream_runner.model.sortformer_modules
    resized = M.DiarRunner(stream_runner.model, "cpu", streaming={"chunk_len": 3})
    audio = _meeting(7)[: 6 * SR]
    probs, _ = _stream(resized, audio, [0.9])
    assert probs.shape == (_expected_frames(resized, len(audio)), 4)
    assert sm.chunk_len == 6  # restored after each step


def test_offline_diarize_on_the_streaming_model(stream_runner):
    clips = [_meeting(3), speechlike(1.0425, 4), np.zeros(100, np.float32)]
    batched = stream_runner.diarize(clips)
    for clip, d in zip(clips, batched, strict=True):
        assert d.probs.shape == (stream_runner.num_frames(len(clip)), 4)
        assert d.frame_s == pytest.approx(0.08)
        for t in d.turns:
            assert 0 <= t.speaker < 4 and 0.0 <= t.start < t.end <= d.duration
        (alone,) = stream_runner.diarize([clip])
        np.testing.assert_allclose(d.probs, alone.probs, atol=1e-5)
    # Offline, the file goes through NeMo's streaming forward: the same frames as live.
    live, _ = _stream(stream_runner, clips[0], [0.5])
    np.testing.assert_allclose(live, batched[0].probs[: len(live)], atol=1e-5)


def test_in_process_backends_step(stream_runner, offline_runner):
    from voxgraph.errors import BadRequest
    from voxgraph.local import InProcessBackends

    audio = _meeting(8)[: 4 * SR]
    step = asyncio.run(InProcessBackends({"diarizer": stream_runner}).diarize_step(audio, None))
    (direct,) = stream_runner.stream_step([(audio, None)])
    np.testing.assert_array_equal(step.probs, direct.probs)
    with pytest.raises(BadRequest, match="cannot stream"):
        asyncio.run(InProcessBackends({"diarizer": offline_runner}).diarize_step(audio, None))
    other = dataclasses.replace(step.state, model="another")
    with pytest.raises(BadRequest, match="belongs to"):
        asyncio.run(InProcessBackends({"diarizer": stream_runner}).diarize_step(audio, other))


# ----------------------------------------------------------------------------- deployment


@pytest.fixture(scope="module")
def stream_deployment(service, tiny_models):
    """A lone Diarizer app serving the streaming model, beside the shared tiny graph."""
    from ray import serve

    from deployments.diarizer import Diarizer
    from graph import ModelDeploymentArgs, deployment_options

    args = ModelDeploymentArgs(
        model=str(tiny_models / "diarizer_streaming.nemo"),
        num_cpus=0.5,
        min_replicas=1,
        max_replicas=1,
        max_batch_size=8,
        batch_wait_timeout_s=0.05,
    )
    app = Diarizer.options(**deployment_options(args)).bind(**args.user_config().model_dump())
    handle = serve.run(app, name="stream-diar", route_prefix=None)
    yield handle
    serve.delete("stream-diar")


def test_deployment_batches_concurrent_sessions(stream_deployment, stream_runner, service):
    from deployments.handles import HandleBackends
    from voxgraph.errors import BadRequest

    info = stream_deployment.status.remote().result(timeout_s=300)
    assert info.state == "ready" and info.capabilities == {"streaming": True}
    backends = HandleBackends(
        asr=service.deployment("ASR"),
        diarizer=stream_deployment,
        embedder=service.deployment("Embedder"),
        timeout_s=120,
    )
    clips = [_meeting(40), _meeting(50)]
    piece = int(0.7 * SR)

    async def run() -> list[np.ndarray]:
        states: list[DiarStreamState | None] = [None, None]
        out: list[list[np.ndarray]] = [[], []]
        for pos in range(0, len(clips[0]), piece):
            steps = await asyncio.gather(
                *(
                    backends.diarize_step(c[pos : pos + piece], s)
                    for c, s in zip(clips, states, strict=True)
                )
            )
            for i, step in enumerate(steps):
                assert step.start_frame == (states[i].frames if states[i] else 0)
                out[i].append(step.probs)
                states[i] = step.state
        return [np.concatenate(o) for o in out]

    served = asyncio.run(run())
    sizes = stream_deployment.step_batch_sizes.remote().result(timeout_s=30)
    assert max(sizes) >= 2, sizes  # the two sessions' steps shared forward passes
    for clip, probs in zip(clips, served, strict=True):
        local, _ = _stream(stream_runner, clip, [0.7])
        assert probs.shape == local.shape and len(probs) > 0
        np.testing.assert_allclose(probs, local, atol=1e-5)

    # A state of another model, and a model that cannot stream: 400s, not 500s.
    other = dataclasses.replace(_stream(stream_runner, clips[0][:SR], [1.0])[1], model="x")
    with pytest.raises(BadRequest, match="belongs to"):
        asyncio.run(backends.diarize_step(clips[0][:SR], other))
    offline = HandleBackends(
        asr=service.deployment("ASR"),
        diarizer=service.deployment("Diarizer"),
        embedder=service.deployment("Embedder"),
        timeout_s=120,
    )
    with pytest.raises(BadRequest, match="cannot stream"):
        asyncio.run(offline.diarize_step(clips[0][:SR], None))
