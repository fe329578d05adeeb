"""serve_config.cpu.yaml: the production graph and models, sized for a GPU-less machine."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

import graph
from deployments.serve_env import serve_env
from voxgraph.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
# What the file's header promises: it runs on 4 logical CPUs.
CPU_BUDGET = 4
# The forward-pass bounds behind the config's documented peak RSS per replica
# (README "CPU serving", measured by bench/cpu.py for 1, 6 and 30 minutes): the most
# audio one pass of each model may hold, in seconds (items x the longest item).
MAX_PASS_AUDIO_S = {"asr": 60.0, "diarizer": 90.0, "embedder": 120.0}
# Keys the CPU profile added for issue 14: bench/cpu.py's old profile has none of them.
NEW_KEYS = {"max_batch_audio_s", "torch_threads", "sdpa", "omp_wait_policy"}


@pytest.fixture(autouse=True)
def _no_voxgraph_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _raw(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _args(config: dict[str, Any]) -> graph.VoxgraphArgs:
    (app,) = config["applications"]
    return graph.VoxgraphArgs(**app["args"])


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return _raw("serve_config.cpu.yaml")


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return _raw("serve_config.yaml")


def test_valid_and_same_graph_as_production(cpu, gpu):
    schema = ServeDeploySchema.model_validate(cpu)
    (app,) = schema.applications
    (prod,) = ServeDeploySchema.model_validate(gpu).applications
    assert (app.name, app.import_path, app.route_prefix) == (
        prod.name,
        prod.import_path,
        prod.route_prefix,
    )
    assert schema.http_options.host == "127.0.0.1"
    assert not app.deployments and not app.runtime_env, "typed args only"
    graph.build_app(_args(cpu))


def test_real_models_no_gpu_int8_smaller_batches(cpu, gpu):
    ours, prod = _args(cpu), _args(gpu)
    assert ours.cpu_only
    for role, d in ours.model_deployments().items():
        p = getattr(prod, role)
        # Zero: a share on a GPU-less machine never schedules and never errors.
        assert d.num_gpus == 0, role
        # No autoscaling: replicas on CPU share the same cores.
        assert d.min_replicas == d.max_replicas == 1, role
        assert "autoscaling_config" not in graph.deployment_options(d), role
        assert d.model == p.model == graph.ROLE_DEFAULTS[role]["model"]
        # Dynamic int8 linear layers: the CPU speed-up bench/cpu.py measures.
        assert d.precision == "int8"
        assert d.max_batch_size < p.max_batch_size, role
        assert d.max_queued_requests <= p.max_queued_requests, role


def test_every_forward_pass_is_bounded_in_audio(cpu):
    # Memory follows the largest forward pass, not the recording: windows bound each
    # request's items, max_batch_audio_s bounds what a batch of them puts in one pass.
    args = _args(cpu)
    settings = Settings.load(args.settings)
    for role, d in args.model_deployments().items():
        assert 0 < d.max_batch_audio_s <= MAX_PASS_AUDIO_S[role], role  # 0: no limit
    # A whole window fits one pass (a longer item would go alone, past the bound).
    assert settings.asr_window_s <= args.asr.max_batch_audio_s
    assert settings.asr_overlap_s < settings.asr_window_s / 4
    assert settings.diar_window_s <= args.diarizer.max_batch_audio_s
    # The diarizer keeps the 90 s windows Sortformer 4spk-v1 was trained on.
    assert settings.diar_window_s == Settings.model_fields["diar_window_s"].default
    # Far shorter than the GPU profile's 300 s ASR windows, which on CPU held ~12 GB.
    assert settings.asr_window_s < Settings.model_fields["asr_window_s"].default
    # Fingerprints from a bounded share of each speaker's speech: no clip is longer
    # than one embedder pass (else it would go alone, past the bound), and the cost no
    # longer grows with how much a speaker says in a window.
    cap = settings.max_fingerprint_speech_s
    assert cap is not None and cap <= args.embedder.max_batch_audio_s


def test_conformer_attention_through_sdpa(cpu):
    # Same result as NeMo's attention, cheaper on CPU for whole windows (bench/cpu.py).
    args = _args(cpu)
    assert args.asr.sdpa and args.diarizer.sdpa
    assert not _args(_raw("serve_config.yaml")).asr.sdpa  # the GPU profile as NeMo ships it


def test_fits_the_cpu_budget_with_useful_threads(cpu):
    args = _args(cpu)
    total = args.ingress.num_cpus * args.ingress.num_replicas + sum(
        d.num_cpus * d.max_replicas for d in args.model_deployments().values()
    )
    assert total <= CPU_BUDGET
    # Each model computes with its own torch_threads (Ray's OMP_NUM_THREADS =
    # floor(num_cpus) otherwise): the ASR, the slowest model on CPU, gets at least
    # two; together they fit the budget.
    threads = {
        role: d.torch_threads or max(1, math.floor(d.num_cpus))
        for role, d in args.model_deployments().items()
    }
    assert threads["asr"] >= 2
    assert sum(threads.values()) <= CPU_BUDGET


def test_waiting_openmp_threads_sleep_in_every_model_replica(cpu):
    # The replicas share the cores; each OpenMP runtime counts only its own threads,
    # so spinning waits in one take the cores another computes on (bench/cpu.py).
    def env(d: graph.ModelDeploymentArgs) -> dict[str, str]:
        return graph.deployment_options(d)["ray_actor_options"]["runtime_env"]["env_vars"]

    for role, d in _args(cpu).model_deployments().items():
        assert env(d)["OMP_WAIT_POLICY"] == "PASSIVE", role
        assert env(d).items() >= serve_env().items(), role  # Serve's own settings kept
    assert "OMP_WAIT_POLICY" not in env(_args(_raw("serve_config.yaml")).asr)
    with pytest.raises(ValidationError, match="omp_wait_policy"):
        graph.VoxgraphArgs(asr={"omp_wait_policy": "sometimes"})


def test_model_calls_time_out_in_the_service_not_the_proxy(cpu):
    # A slow model call ends in the service's own 503; the proxy has no end-to-end
    # timeout, which would also cut realtime sessions and streamed responses.
    settings = _args(cpu).settings
    assert settings["request_timeout_s"] > 0
    assert "request_timeout_s" not in cpu["http_options"]
    assert settings["max_audio_s"] < Settings.model_fields["max_audio_s"].default  # GPU: 4 h


def test_cpu_only_zeroes_every_share(monkeypatch):
    # graph:app is built from VoxgraphArgs(); VOXGRAPH_CPU_ONLY=1 zeroes the code's GPU
    # shares, and so does the cpu_only arg even over a share given explicitly.
    monkeypatch.setenv("VOXGRAPH_CPU_ONLY", "1")
    args = graph.VoxgraphArgs()
    assert all(d.num_gpus == 0 for d in args.model_deployments().values())
    monkeypatch.delenv("VOXGRAPH_CPU_ONLY")
    assert graph.VoxgraphArgs().asr.num_gpus > 0
    args = graph.VoxgraphArgs(cpu_only=True, asr={"num_gpus": 0.4})
    assert args.asr.num_gpus == 0


def test_bench_deploys_both_profiles_from_this_file(cpu):
    # bench/cpu.py's graph section: the new profile is this file with the models
    # pointed elsewhere; the old one the same file with the pre-int8 values.
    from bench import cpu as bench_cpu

    paths = {r: f"/models/{r}.nemo" for r in ("asr", "diarizer", "embedder")}
    config = ROOT / "serve_config.cpu.yaml"
    new = bench_cpu.graph_args_for(bench_cpu.config_profile(config), config, paths)
    old = bench_cpu.graph_args_for(bench_cpu.OLD_PROFILE, config, paths)
    (app,) = cpu["applications"]
    for role, path in paths.items():
        assert new[role] == {**app["args"][role], "model": path}
        assert old[role]["model"] == path and old[role]["precision"] == "fp32"
        assert not NEW_KEYS & old[role].keys()
    assert new["settings"] == app["args"]["settings"]
    assert old["settings"]["asr_window_s"] == 300
    assert "max_fingerprint_speech_s" not in old["settings"]
    for args in (new, old):
        graph.build_app(graph.VoxgraphArgs(**args))
