"""serve_config.yaml and the tiny config validate with Ray's own schema and match the code."""

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

import graph

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = {"Ingress", "ASR", "Diarizer", "Embedder"}


def _load(name):
    return ServeDeploySchema.model_validate(yaml.safe_load((ROOT / name).read_text()))


def test_production_config():
    schema = _load("serve_config.yaml")
    (app,) = schema.applications
    assert app.name == "voxgraph" and app.import_path == "graph:app"
    assert schema.http_options.host == "127.0.0.1"
    names = {d.name for d in app.deployments}
    assert names == DEPLOYMENTS
    assert {graph.ASR.name, graph.Diarizer.name, graph.Embedder.name, graph.Ingress.name} == names
    gpus = 0.0
    for d in app.deployments:
        if d.name == "Ingress":
            continue
        assert d.autoscaling_config, d.name
        assert d.max_ongoing_requests and d.max_queued_requests, d.name
        assert d.user_config["model"].startswith("nvidia/")
        gpus += d.ray_actor_options.num_gpus
    assert 0 < gpus <= 1.0  # the three shares fit one card


def test_production_models_match_code_defaults():
    app = _load("serve_config.yaml").applications[0]
    by_name = {d.name: d.user_config["model"] for d in app.deployments if d.name != "Ingress"}
    assert by_name == {
        "ASR": graph.DEFAULT_MODELS["asr"],
        "Diarizer": graph.DEFAULT_MODELS["diarizer"],
        "Embedder": graph.DEFAULT_MODELS["embedder"],
    }


def test_tiny_config_builds():
    (app,) = _load("configs/tiny.yaml").applications
    assert app.import_path == "graph:build_app"
    args = graph.VoxgraphArgs.model_validate(app.args)
    assert all(getattr(args, r).num_gpus == 0 for r in ("asr", "diarizer", "embedder"))
    assert args.asr.model.endswith(".nemo")
    graph.build_app(args)  # binds without error
