"""serve_config.cpu.yaml: the production graph and models, sized for a GPU-less machine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import graph

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("ASR", "Diarizer", "Embedder")
# What the file's header promises: it runs on 4 logical CPUs.
CPU_BUDGET = 4


def _raw(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


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
    assert [d.name for d in app.deployments] == [d.name for d in prod.deployments]
    assert {d.name for d in app.deployments} == {
        graph.Ingress.name,
        graph.ASR.name,
        graph.Diarizer.name,
        graph.Embedder.name,
    }
    assert schema.http_options.host == "127.0.0.1"


def test_real_models_no_gpu_fp32_smaller_batches(cpu, gpu):
    ours, prod = _deployments(cpu), _deployments(gpu)
    for name, d in ours.items():
        # Explicit zero: a share on a GPU-less machine never schedules and never errors.
        assert d["ray_actor_options"]["num_gpus"] == 0, name
        assert "autoscaling_config" not in d, f"{name}: replicas on CPU share the same cores"
    for name in MODELS:
        cfg, prod_cfg = ours[name]["user_config"], prod[name]["user_config"]
        assert cfg["model"] == prod_cfg["model"] == graph.DEFAULT_MODELS[name.lower()]
        assert cfg["precision"] == "fp32"
        assert cfg["max_batch_size"] < prod_cfg["max_batch_size"]
        assert ours[name]["max_queued_requests"] <= prod[name]["max_queued_requests"]
    env = cpu["applications"][0]["runtime_env"]["env_vars"]
    assert env["VOXGRAPH_CPU_ONLY"] == "1"
    assert all(isinstance(v, str) for v in env.values())  # runtime_env wants strings


def test_fits_the_cpu_budget_with_useful_threads(cpu):
    deployments = _deployments(cpu)
    total = sum(
        d["ray_actor_options"]["num_cpus"] * d.get("num_replicas", 1) for d in deployments.values()
    )
    assert total <= CPU_BUDGET
    # Ray sets OMP_NUM_THREADS = floor(num_cpus) in the replica: the ASR, the
    # slowest model on CPU, must get at least two torch threads.
    assert math.floor(deployments["ASR"]["ray_actor_options"]["num_cpus"]) >= 2


def test_code_defaults_are_cpu_only_too(monkeypatch):
    # graph:app is built from VoxgraphArgs(); the profile's VOXGRAPH_CPU_ONLY=1 zeroes
    # the code's GPU shares as well, not only the config's overrides.
    monkeypatch.setenv("VOXGRAPH_CPU_ONLY", "1")
    args = graph.VoxgraphArgs()
    assert all(getattr(args, r).num_gpus == 0 for r in ("asr", "diarizer", "embedder"))
