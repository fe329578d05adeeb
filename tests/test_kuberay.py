"""deploy/kuberay/rayservice.yaml, checked offline (no cluster, no kubectl).

A subset of the RayService CRD as JSON Schema (the fields KubeRay requires and
their types), Ray's own ServeDeploySchema for serveConfigV2, serveConfigV2 kept
equal to serve_config.yaml, and the fractional GPU shares at their autoscaling
maximum packed onto the GPUs the worker group can provide.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
MODEL_DEPLOYMENTS = {"ASR", "Diarizer", "Embedder"}

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = {"type": ["string", "integer", "number"]}

CONTAINER = {
    "type": "object",
    "required": ["name", "image", "resources"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
        "image": {"type": "string", "minLength": 1},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {
                    "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 15},
                },
            },
        },
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    # Kubernetes env values are strings: an unquoted 0 or 200 is rejected.
                    "value": {"type": "string"},
                    "valueFrom": {"type": "object"},
                },
                "oneOf": [{"required": ["value"]}, {"required": ["valueFrom"]}],
            },
        },
        "resources": {
            "type": "object",
            "required": ["limits", "requests"],
            "properties": {
                "limits": {"type": "object", "additionalProperties": QUANTITY},
                "requests": {"type": "object", "additionalProperties": QUANTITY},
            },
        },
    },
}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER}},
        }
    },
}
# KubeRay's rayStartParams is map[string]string: `num-cpus: 0` unquoted fails the CRD.
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}},
        },
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string", "minLength": 1},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["rayStartParams", "template"],
                            "properties": {
                                "rayStartParams": RAY_START_PARAMS,
                                "template": POD_TEMPLATE,
                            },
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": [
                                    "groupName",
                                    "minReplicas",
                                    "maxReplicas",
                                    "rayStartParams",
                                    "template",
                                ],
                                "properties": {
                                    "groupName": {"type": "string", "pattern": DNS_LABEL},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                    "rayStartParams": RAY_START_PARAMS,
                                    "template": POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


# ------------------------------------------------------------------ loading


def _documents() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document per kind"
    return by_kind


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _documents()


@pytest.fixture(scope="module")
def rayservice(docs) -> dict[str, Any]:
    return docs["RayService"]


@pytest.fixture(scope="module")
def serve_config_v2(rayservice) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def _head(rs: dict[str, Any]) -> dict[str, Any]:
    return rs["spec"]["rayClusterConfig"]["headGroupSpec"]


def _workers(rs: dict[str, Any]) -> list[dict[str, Any]]:
    return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]


def _container(group: dict[str, Any]) -> dict[str, Any]:
    # KubeRay treats the first container as the Ray container.
    return group["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _quantity(q: str | float) -> float:
    """Kubernetes CPU/GPU quantities: 2, "2", "500m"."""
    text = str(q)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ------------------------------------------------------------------ structure


def test_documents_and_rayservice_schema(docs, rayservice):
    assert set(docs) == {"RayService", "PersistentVolumeClaim"}
    jsonschema.validate(rayservice, RAYSERVICE_SCHEMA)
    assert docs["PersistentVolumeClaim"]["apiVersion"] == "v1"


def test_schema_check_catches_mistakes(rayservice):
    """The light schema is not vacuous: typical manifest mistakes fail it."""
    import copy

    broken = copy.deepcopy(rayservice)
    _head(broken)["rayStartParams"]["num-cpus"] = 0  # unquoted number
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYSERVICE_SCHEMA)
    broken = copy.deepcopy(rayservice)
    del _container(_workers(broken)[0])["image"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYSERVICE_SCHEMA)
    broken = copy.deepcopy(rayservice)
    _container(_head(broken))["env"].append({"name": "MAX_UPLOAD_MB", "value": 200})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYSERVICE_SCHEMA)


def test_ray_version_and_images(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    # The manifest names the Ray this project pins (pyproject: ray[serve]>=2.60,<2.61).
    assert cluster["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2]
    images = {_container(_head(rayservice))["image"]} | {
        _container(g)["image"] for g in _workers(rayservice)
    }
    # One image everywhere: Ray needs identical Ray/Python on every node.
    assert len(images) == 1
    (image,) = images
    assert f"ray{cluster['rayVersion']}" in image and "gpu" in image
    assert cluster["enableInTreeAutoscaling"] is True


def test_worker_group_is_gpu_and_head_is_not(rayservice):
    for group in _workers(rayservice):
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        res = _container(group)["resources"]
        assert _quantity(res["limits"]["nvidia.com/gpu"]) >= 1
        # Kubernetes requires requests == limits for extended resources such as GPUs.
        assert (
            res["requests"].get("nvidia.com/gpu", res["limits"]["nvidia.com/gpu"])
            == (res["limits"]["nvidia.com/gpu"])
        )
    head = _head(rayservice)
    assert "nvidia.com/gpu" not in _container(head)["resources"]["limits"]
    # No replicas on the head, so everything below must fit on the workers.
    assert head["rayStartParams"]["num-cpus"] == "0"


# ------------------------------------------------------------------ serveConfigV2


def test_serve_config_v2_is_a_valid_serve_config(serve_config_v2):
    schema = ServeDeploySchema.model_validate(serve_config_v2)
    (app,) = schema.applications
    assert {d.name for d in app.deployments} == MODEL_DEPLOYMENTS | {"Ingress"}
    # KubeRay's Services reach the proxies through the pod IP, never loopback.
    assert schema.http_options.host == "0.0.0.0"


def test_serve_config_v2_matches_serve_config_yaml(serve_config_v2, production):
    assert serve_config_v2["applications"] == production["applications"], (
        "serveConfigV2 drifted from serve_config.yaml: copy serve_config.yaml's "
        "applications into deploy/kuberay/rayservice.yaml"
    )
    assert serve_config_v2["proxy_location"] == production["proxy_location"]
    in_cluster = dict(serve_config_v2["http_options"])
    local = dict(production["http_options"])
    assert local.pop("host") == "127.0.0.1" and in_cluster.pop("host") == "0.0.0.0"
    assert in_cluster == local


# ------------------------------------------------------------------ GPU shares


def _replicas(app: dict[str, Any], at: str) -> list[tuple[str, float, float]]:
    """(deployment, gpus, cpus) for every replica, at min or max autoscaling."""
    out = []
    for d in app["deployments"]:
        opts = d.get("ray_actor_options", {})
        auto = d.get("autoscaling_config")
        n = auto[f"{at}_replicas"] if auto else d.get("num_replicas", 1)
        out += [(d["name"], float(opts.get("num_gpus", 0)), float(opts.get("num_cpus", 1)))] * n
    return out


def _pack(replicas: list[tuple[str, float, float]], pods: int, gpus: int, cpus: float) -> bool:
    """First-fit decreasing of replicas onto `pods` pods of `gpus` cards and `cpus` CPUs.

    Ray gives a fractional share (0.4) a slice of one card, never parts of two;
    a whole number of GPUs takes that many free cards.
    """
    cards = [[1.0] * gpus for _ in range(pods)]
    free_cpus = [cpus] * pods
    for _, g, c in sorted(replicas, key=lambda r: (r[1], r[2]), reverse=True):
        for p in range(pods):
            if c > free_cpus[p] + 1e-9:
                continue
            if g < 1:
                card = next((i for i, f in enumerate(cards[p]) if f >= g - 1e-9), None)
                if card is None:
                    continue
                cards[p][card] -= g
            else:
                whole = [i for i, f in enumerate(cards[p]) if f >= 1 - 1e-9]
                if len(whole) < g:
                    continue
                for i in whole[: int(g)]:
                    cards[p][i] = 0.0
            free_cpus[p] -= c
            break
        else:
            return False
    return True


def test_gpu_shares_fit_the_worker_group(serve_config_v2, rayservice):
    (app,) = serve_config_v2["applications"]
    (group,) = _workers(rayservice)
    limits = _container(group)["resources"]["limits"]
    gpus_per_pod = int(_quantity(limits["nvidia.com/gpu"]))
    cpus_per_pod = _quantity(limits["cpu"])
    peak = _replicas(app, "max")
    model_gpus = sum(g for name, g, _ in peak if name in MODEL_DEPLOYMENTS)
    assert all(g > 0 for name, g, _ in peak if name in MODEL_DEPLOYMENTS), "models want a GPU"
    # Every model deployment at max_replicas, times its share, within the group's GPUs ...
    assert model_gpus <= group["maxReplicas"] * gpus_per_pod + 1e-9
    # ... and actually placeable (shares are not divisible across cards or pods).
    assert _pack(peak, group["maxReplicas"], gpus_per_pod, cpus_per_pod)
    # The service comes up on the group's minimum, before any autoscaling.
    assert _pack(_replicas(app, "min"), group["minReplicas"], gpus_per_pod, cpus_per_pod)
    # And the maximum is not pointless: the peak does not fit on fewer pods.
    assert not _pack(peak, group["maxReplicas"] - 1, gpus_per_pod, cpus_per_pod)


def test_packing_rejects_what_does_not_fit():
    three_asr = [("ASR", 0.4, 2.0)] * 3
    assert _pack(three_asr, 2, 1, 8.0)
    assert not _pack(three_asr, 1, 1, 8.0)  # 1.2 GPU on one card
    assert not _pack([("ASR", 0.4, 6.0)] * 2, 1, 1, 8.0)  # CPUs run out first
    assert _pack([("ASR", 0.6, 1.0)] * 2, 1, 2, 8.0)  # two cards in one pod
    # Three 0.6 slices are 1.8 <= 2 GPUs in total, but only two cards to hold them.
    assert not _pack([("ASR", 0.6, 1.0)] * 3, 1, 2, 8.0)
    assert not _pack([("Big", 2.0, 1.0), ("ASR", 0.4, 1.0)], 1, 2, 8.0)


# ------------------------------------------------------------------ cache, readiness, env


def test_model_cache_volume(docs, rayservice):
    pvc = docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for group in _workers(rayservice):
        pod = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert pvc["metadata"]["name"] in claims.values()
        container = _container(group)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        (volume,) = [n for n, c in claims.items() if c == pvc["metadata"]["name"]]
        cache = mounts[volume]
        env = _env(container)
        # Hugging Face names (from_pretrained) and NeMo's own cache both land on the volume.
        for var in ("HF_HOME", "NEMO_CACHE_DIR"):
            assert env[var]["value"].startswith(cache + "/"), var


def test_readiness_on_health(rayservice, serve_config_v2):
    port = serve_config_v2["http_options"]["port"]
    for group in _workers(rayservice):
        container = _container(group)
        assert {"containerPort": port, "name": "serve"} in container["ports"]
        probe = container["readinessProbe"]
        command = " ".join(probe["exec"]["command"])
        assert re.search(rf"http://localhost:{port}/health\b", command)
        # KubeRay's own raylet check is kept (a custom probe replaces the injected one).
        assert "local_raylet_healthz" in command
        assert probe["timeoutSeconds"] >= 5


def test_environment(rayservice, serve_config_v2):
    app_env = serve_config_v2["applications"][0]["runtime_env"]["env_vars"]
    groups = [_head(rayservice), *_workers(rayservice)]
    for group in groups:
        env = _env(_container(group))
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0"
        assert env["RAY_AUTH_MODE"]["value"] == "disabled"
        for var in ("MAX_UPLOAD_MB", "MAX_AUDIO_S"):
            assert env[var]["value"] == app_env[var], var
        key = env["VOXGRAPH_API_KEY"]["valueFrom"]["secretKeyRef"]
        # Optional: the service starts without the Secret (open, like the defaults).
        assert key["name"] and key["optional"] is True
