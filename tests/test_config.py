"""serve_config.yaml and the tiny config validate with Ray's schema and build with graph.py."""

import inspect
import os
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import graph
from voxgraph.settings import ENV_PREFIX, ModelConfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = {"Ingress", "ASR", "Diarizer", "Embedder"}
ROLE_NAMES = {"asr": "ASR", "diarizer": "Diarizer", "embedder": "Embedder"}


@pytest.fixture(autouse=True)
def _no_voxgraph_env(monkeypatch):
    # The builder args read the environment: a stray VOXGRAPH_* on this machine must
    # not change what the configs are checked against.
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _app(name):
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / name).read_text()))
    (app,) = schema.applications
    return schema, app


def _deployments(app):
    """The deployments an Application binds, as Serve's own build step finds them."""
    from ray.serve._private.build_app import build_app as serve_build

    return serve_build(app, name="voxgraph").deployments


def test_production_config():
    schema, app = _app("serve_config.yaml")
    assert app.name == "voxgraph" and app.import_path == "graph:build_app"
    assert schema.http_options.host == "127.0.0.1"
    assert not app.deployments, "production is typed args only, no untyped overrides"
    args = graph.VoxgraphArgs(**app.args)
    assert not args.cpu_only
    for role, d in args.model_deployments().items():
        assert d.model.startswith("nvidia/"), role
        assert (d.min_replicas, d.max_replicas) == (1, 2), role
    assert args.asr.precision == "bf16"
    shares = {role: d.num_gpus for role, d in args.model_deployments().items()}
    assert shares == {"asr": 0.4, "diarizer": 0.3, "embedder": 0.2}
    assert sum(shares.values()) <= 1.0  # the three shares fit one card


def test_production_is_the_code_defaults():
    """`serve run graph:app` and `serve deploy serve_config.yaml` build the same graph."""
    _, app = _app("serve_config.yaml")
    from_config = graph.VoxgraphArgs(**app.args)
    defaults = graph.VoxgraphArgs()
    assert from_config.model_dump(exclude={"settings"}) == defaults.model_dump(exclude={"settings"})
    for role, name in ROLE_NAMES.items():
        assert graph.ROLE_DEFAULTS[role]["model"] == getattr(from_config, role).model, name


def test_built_deployments_carry_the_args():
    _, app = _app("serve_config.yaml")
    args = graph.VoxgraphArgs(**app.args)
    by_name = {d.name: d for d in _deployments(graph.build_app(args))}
    assert set(by_name) == DEPLOYMENTS
    for role, name in ROLE_NAMES.items():
        want = getattr(args, role)
        d = by_name[name]
        config = d._deployment_config
        assert ModelConfig.model_validate(config.user_config) == want.user_config()
        # The user_config is ModelConfig only: resources never reach the replica's config.
        assert set(config.user_config) == set(ModelConfig.model_fields)
        assert d.ray_actor_options["num_gpus"] == want.num_gpus
        assert d.ray_actor_options["num_cpus"] == want.num_cpus
        assert config.autoscaling_config.min_replicas == want.min_replicas
        assert config.autoscaling_config.max_replicas == want.max_replicas
        assert config.max_ongoing_requests == want.max_ongoing_requests
        assert config.max_queued_requests == want.max_queued_requests
    ingress = by_name["Ingress"]
    assert ingress._deployment_config.num_replicas == args.ingress.num_replicas
    assert ingress._deployment_config.max_ongoing_requests == args.ingress.max_ongoing_requests


def test_model_args_extend_model_config_without_redeclaring_it():
    own = set(graph.ModelDeploymentArgs.model_fields) - set(ModelConfig.model_fields)
    assert own == {
        "num_cpus",
        "num_gpus",
        "min_replicas",
        "max_replicas",
        "target_ongoing_requests",
        "max_ongoing_requests",
        "max_queued_requests",
        "omp_wait_policy",
    }
    # Inherited, not re-declared: the class body annotates only the resources.
    assert set(inspect.get_annotations(graph.ModelDeploymentArgs)) == own
    assert issubclass(graph.ModelDeploymentArgs, ModelConfig)


def test_partial_role_args_keep_the_role_defaults():
    args = graph.VoxgraphArgs(asr={"model": "x.nemo"}, embedder={"max_batch_size": 4})
    assert args.asr.model == "x.nemo"
    assert args.asr.max_batch_size == graph.ROLE_DEFAULTS["asr"]["max_batch_size"]
    assert args.asr.num_gpus == graph.ROLE_DEFAULTS["asr"]["num_gpus"]
    assert args.embedder.model == graph.ROLE_DEFAULTS["embedder"]["model"]
    assert args.embedder.max_batch_size == 4


def test_bad_args_fail_at_build_time():
    with pytest.raises(ValueError, match="modle"):
        graph.VoxgraphArgs(asr={"modle": "x.nemo"})
    with pytest.raises(ValueError, match="max_upload"):
        graph.VoxgraphArgs(settings={"max_upload": 1})
    with pytest.raises(ValueError, match="max_audio_s"):
        graph.VoxgraphArgs(settings={"max_audio_s": -1})
    with pytest.raises(ValueError, match="below min_replicas"):
        graph.VoxgraphArgs(asr={"min_replicas": 2, "max_replicas": 1})
    with pytest.raises(ValueError, match="precision"):
        graph.VoxgraphArgs(asr={"precision": "int3"})
    with pytest.raises(ValueError, match="cpus"):
        graph.VoxgraphArgs(ingress={"cpus": 1})


def test_fixed_replicas_without_autoscaling():
    args = graph.VoxgraphArgs(diarizer={"min_replicas": 2, "max_replicas": 2})
    opts = graph.deployment_options(args.diarizer)
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts


def test_tiny_config_builds():
    _, app = _app("configs/tiny.yaml")
    assert app.import_path == "graph:build_app"
    args = graph.VoxgraphArgs(**app.args)
    for role, d in args.model_deployments().items():
        assert d.num_gpus == 0, role
        assert d.model.endswith(".nemo"), role
        assert d.min_replicas == d.max_replicas == 1, role
    graph.build_app(args)  # binds without error


def test_app_is_built_from_defaults():
    names = {d.name for d in _deployments(graph.app)}
    assert names == DEPLOYMENTS
