"""The model deployments' lifecycle (deployments/model_host.py), without Ray or NeMo.

The deployment classes are plain Python under `@serve.deployment`. Here they run
with a fake loader whose loads are held and released with events, so every
interleaving (a slow load superseded, a swap failing on a live replica) is reached
deterministically: no test sleeps to wait for a thread. Only the lifecycle runs
here: Serve's batch queue needs a real replica (tests/test_app.py covers that path).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from deployments.asr import ASR
from deployments.embedder import Embedder
from deployments.model_host import ModelHost
from voxgraph.errors import ModelFailed, ModelLoading

WAIT_S = 10.0  # only ever reached when a test is about to fail


class FakeRunner:
    def __init__(self, loader: Loader, model: str, device: str, precision: str):
        self.loader, self.model_name, self.device, self.precision = loader, model, device, precision
        self.capabilities = {"transcribe": True, "timestamps": True, "translate": False}
        self.dim = 7

    def close(self) -> None:
        self.loader.closed.append(self.model_name)


class RewrappableRunner(FakeRunner):
    def with_precision(self, precision: str) -> RewrappableRunner:
        return RewrappableRunner(self.loader, self.model_name, self.device, precision)


class Loader:
    """A `load_runner` whose loads can be held (`hold`) or made to fail (`fail`)."""

    def __init__(self, runner_class: type[FakeRunner] = FakeRunner):
        self.runner_class = runner_class
        self.calls: list[tuple[str, str, str, str]] = []
        self.entered: dict[str, threading.Event] = defaultdict(threading.Event)
        self.gates: dict[str, threading.Event] = {}
        self.fail: set[str] = set()
        # Weak: the loader must not be what keeps a runner alive.
        self.made: dict[str, weakref.ref[FakeRunner]] = {}
        self.closed: list[str] = []

    def hold(self, model: str) -> threading.Event:
        """Loads of `model` block until the returned event is set."""
        self.gates[model] = gate = threading.Event()
        return gate

    def __call__(self, role: str, model: str, device: str, precision: str) -> FakeRunner:
        self.calls.append((role, model, device, precision))
        self.entered[model].set()
        gate = self.gates.get(model)
        if gate is not None:
            assert gate.wait(WAIT_S), f"load of {model} was never released"
        if model in self.fail:
            raise FileNotFoundError(f"asr model file not found: {model}")
        runner = self.runner_class(self, model, device, precision)
        self.made[model] = weakref.ref(runner)
        return runner

    def alive(self, model: str) -> bool:
        gc.collect()
        return self.made[model]() is not None


def host_for(deployment: Any, loader: Loader, **bind: Any) -> Any:
    """A replica of `deployment` (a Serve deployment) as a plain object, loading with `loader`."""

    class Replica(deployment.func_or_class):
        load_runner = staticmethod(loader)
        pick_device = staticmethod(lambda: "cpu")

    return Replica(**bind)


def reconfigure(host: ModelHost, **user_config: Any) -> None:
    asyncio.run(host.reconfigure(user_config))


def started(loader: Loader, model: str = "a", deployment: Any = ASR, **user_config: Any) -> Any:
    host = host_for(deployment, loader, model=model)
    reconfigure(host, model=model, **user_config)
    assert host.status().state == "ready"
    return host


def serving(host: Any) -> str:
    """The model that requests are handed to now."""
    return host._require_runner().model_name


# ------------------------------------------------------------------ start


@pytest.mark.parametrize(
    ("user_config", "loaded"),
    [
        ({"model": "a", "precision": "bf16"}, ("asr", "a", "cpu", "bf16")),
        ({"model": "b"}, ("asr", "b", "cpu", "fp32")),
        ({"max_batch_size": 3}, ("asr", "a", "cpu", "fp32")),
    ],
)
def test_one_load_per_start_whatever_the_user_config(user_config, loaded):
    loader = Loader()
    host = host_for(ASR, loader, model="a")
    # __init__ only records the bind args: nothing loads or is pending yet.
    assert host.wait_idle(0) and loader.calls == []
    reconfigure(host, **user_config)
    assert loader.calls == [loaded]
    host.check_health()
    info = host.status()
    assert (info.state, info.model, info.device, info.error) == ("ready", loaded[1], "cpu", None)
    assert info.capabilities == {"transcribe": True, "timestamps": True, "translate": False}
    assert info.load_seconds is not None and info.load_seconds >= 0
    assert host._require_runner().precision == loaded[3]
    assert serving(host) == loaded[1]
    assert host.wait_idle(0) and len(loader.calls) == 1


def test_batch_settings_follow_the_config():
    loader = Loader()
    host = host_for(ASR, loader, model="a", max_batch_size=5)
    assert host._transcribe_batch._get_max_batch_size() == 5
    reconfigure(host, max_batch_size=3, batch_wait_timeout_s=0.2)
    assert host._transcribe_batch._get_max_batch_size() == 3
    assert host._transcribe_batch._get_batch_wait_timeout_s() == 0.2


def test_without_user_config_the_first_health_check_starts_the_only_load():
    loader = Loader()
    host = host_for(ASR, loader, model="a")
    host.check_health()  # Serve's first health check follows __init__ when nothing else does
    assert host.wait_idle(WAIT_S)
    host.check_health()
    assert host.status().state == "ready"
    assert loader.calls == [("asr", "a", "cpu", "fp32")]


def test_starting_replica_holds_reconfigure_until_its_model_is_loaded():
    loader = Loader()
    gate = loader.hold("a")
    host = host_for(ASR, loader, model="a")
    pending = ThreadPoolExecutor(1).submit(reconfigure, host, model="a")
    assert loader.entered["a"].wait(WAIT_S)
    # The load cannot end before the gate opens, so neither can reconfigure.
    assert not pending.done()
    assert host.status().state == "loading"
    host.check_health()  # loading is not unhealthy
    gate.set()
    pending.result(WAIT_S)
    assert host.status().state == "ready"


def test_load_wait_s_bounds_the_hold_then_requests_get_503_loading():
    loader = Loader()
    gate = loader.hold("a")
    host = host_for(ASR, loader, model="a")
    reconfigure(host, model="a", load_wait_s=0)
    assert host.status().state == "loading"
    host.check_health()
    with pytest.raises(ModelLoading):
        host._require_runner()
    gate.set()
    assert host.wait_idle(WAIT_S)
    assert serving(host) == "a"


# ------------------------------------------------------------------ failures


def test_failed_load_at_start_fails_the_start_and_the_health_check():
    loader = Loader()
    loader.fail.add("bad")
    host = host_for(ASR, loader, model="bad")
    with pytest.raises(RuntimeError, match="asr model failed to load: FileNotFoundError"):
        reconfigure(host, model="bad")
    with pytest.raises(RuntimeError, match="failed to load"):
        host.check_health()
    info = host.status()
    assert info.state == "failed" and "not found: bad" in info.error
    with pytest.raises(ModelFailed):
        host._require_runner()
    assert loader.calls == [("asr", "bad", "cpu", "fp32")]  # no retry loop on its own
    # A new config is loaded (were Serve to keep the replica): loading, then ready.
    gate = loader.hold("good")
    reconfigure(host, model="good", load_wait_s=0)
    assert host.status().state == "loading"
    host.check_health()
    gate.set()
    assert host.wait_idle(WAIT_S)
    assert host.status().state == "ready" and serving(host) == "good"


def test_failed_swap_keeps_the_old_runner_serving_and_healthy():
    loader = Loader()
    loader.fail.add("bad")
    host = started(loader, "a")
    reconfigure(host, model="bad")  # a live replica does not wait for the swap
    assert host.wait_idle(WAIT_S)
    host.check_health()
    info = host.status()
    assert (info.state, info.model) == ("ready", "a")
    assert "FileNotFoundError" in info.error and "bad" in info.error
    assert serving(host) == "a"
    # A later good config swaps and clears the error.
    reconfigure(host, model="c")
    assert host.wait_idle(WAIT_S)
    info = host.status()
    assert (info.state, info.model, info.error) == ("ready", "c", None)
    assert serving(host) == "c"


# ------------------------------------------------------------------ changes in place


def test_model_swap_in_place_serves_the_old_runner_until_the_new_one_is_in():
    loader = Loader()
    host = started(loader, "a")
    gate = loader.hold("b")
    reconfigure(host, model="b")  # returns while b is still loading
    assert loader.entered["b"].wait(WAIT_S)
    info = host.status()
    assert (info.state, info.model) == ("ready", "a")
    assert serving(host) == "a"
    gate.set()
    assert host.wait_idle(WAIT_S)
    assert host.status().model == "b"
    assert serving(host) == "b"
    assert not loader.alive("a"), "the swapped-out runner is still referenced"
    assert [c[1] for c in loader.calls] == ["a", "b"]


def test_superseded_load_is_freed_and_never_installed():
    loader = Loader()
    host = started(loader, "x")
    gate_a, gate_b = loader.hold("a"), loader.hold("b")
    reconfigure(host, model="a")
    assert loader.entered["a"].wait(WAIT_S)
    reconfigure(host, model="b")  # supersedes a while it loads
    gate_a.set()
    # Loads run one at a time: b starts only once a has been dealt with.
    assert loader.entered["b"].wait(WAIT_S)
    assert host.status().model == "x" and serving(host) == "x"
    assert loader.closed == ["a"]
    assert not loader.alive("a"), "the superseded runner is still referenced"
    gate_b.set()
    assert host.wait_idle(WAIT_S)
    assert host.status().model == "b" and serving(host) == "b"
    assert loader.closed == ["a"]
    assert [c[1] for c in loader.calls] == ["x", "a", "b"]


def test_back_to_the_serving_model_drops_the_load_in_progress():
    loader = Loader()
    host = started(loader, "a")
    gate = loader.hold("b")
    reconfigure(host, model="b")
    assert loader.entered["b"].wait(WAIT_S)
    reconfigure(host, model="a")
    gate.set()
    assert host.wait_idle(WAIT_S)
    assert host.status().model == "a" and serving(host) == "a"
    assert loader.closed == ["b"]
    assert [c[1] for c in loader.calls] == ["a", "b"]


def test_superseded_first_load_never_serves_on_a_starting_replica():
    loader = Loader()
    gate_a = loader.hold("a")
    host = host_for(ASR, loader, model="a")
    reconfigure(host, model="a", load_wait_s=0)
    assert loader.entered["a"].wait(WAIT_S)
    reconfigure(host, model="b", load_wait_s=0)
    gate_a.set()
    assert host.wait_idle(WAIT_S)
    assert host.status().model == "b" and serving(host) == "b"
    assert loader.closed == ["a"]
    assert [c[1] for c in loader.calls] == ["a", "b"]


def test_precision_change_rewraps_the_loaded_model():
    loader = Loader(RewrappableRunner)
    host = started(loader, "a")
    before = host._require_runner()
    reconfigure(host, precision="bf16")
    assert host.wait_idle(WAIT_S)
    after = host._require_runner()
    assert after is not before and after.precision == "bf16" and before.precision == "fp32"
    assert loader.calls == [("asr", "a", "cpu", "fp32")]  # no second load
    assert host.status().model == "a"


def test_precision_change_reloads_a_runner_that_cannot_rewrap():
    loader = Loader()
    host = started(loader, "a")
    reconfigure(host, precision="fp16")
    assert host.wait_idle(WAIT_S)
    assert host._require_runner().precision == "fp16"
    assert loader.calls == [("asr", "a", "cpu", "fp32"), ("asr", "a", "cpu", "fp16")]


# ------------------------------------------------------------------ embedder


def test_embedder_sizes_an_empty_answer_from_its_runner():
    loader = Loader()
    host = started(loader, "e", deployment=Embedder)
    empty = asyncio.run(host.embed([]))
    assert empty.shape == (0, 7) and empty.dtype == np.float32


def test_embedder_empty_answer_while_loading_is_503():
    loader = Loader()
    gate = loader.hold("e")
    host = host_for(Embedder, loader, model="e")
    reconfigure(host, model="e", load_wait_s=0)
    with pytest.raises(ModelLoading):
        asyncio.run(host.embed([]))
    gate.set()
    assert host.wait_idle(WAIT_S)
