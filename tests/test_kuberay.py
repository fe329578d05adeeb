"""deploy/kuberay/rayservice.yaml, checked offline (no cluster, no kubectl).

A subset of the RayService CRD as JSON Schema (the fields KubeRay requires and
their types), Ray's own ServeDeploySchema for serveConfigV2, serveConfigV2 kept
equal to serve_config.yaml, the fractional GPU shares at their autoscaling
maximum packed onto the GPUs the worker group can provide, Ray's token
authentication on with its token from a Secret, and a NetworkPolicy that admits
only the Serve port from outside the Ray pods.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve._private.build_app import build_app as build_serve_app
from ray.serve.schema import ServeDeploySchema

import graph
from deployments.serve_env import SERVE_ENV

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
ROLE_DEPLOYMENTS = {"asr": "ASR", "diarizer": "Diarizer", "embedder": "Embedder"}
MODEL_DEPLOYMENTS = set(ROLE_DEPLOYMENTS.values())

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
                        "authOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "mode": {"enum": ["disabled", "token"]},
                                "secretName": {"type": "string", "pattern": DNS_LABEL},
                                "enableK8sTokenAuth": {"type": "boolean"},
                            },
                        },
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
    assert set(docs) == {"RayService", "PersistentVolumeClaim", "NetworkPolicy"}
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
    assert app.import_path == "graph:build_app"
    names = {
        d.name for d in build_serve_app(graph.build_app(_args(app.args)), name="x").deployments
    }
    assert names == MODEL_DEPLOYMENTS | {"Ingress"}
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


def _args(args: dict[str, Any]) -> graph.VoxgraphArgs:
    """The builder args as the cluster sees them: no VOXGRAPH_* variable in the pods
    changes them (test_environment), so none from this machine may either."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.upper().startswith("VOXGRAPH_")}
    try:
        return graph.VoxgraphArgs(**args)
    finally:
        os.environ.update(saved)


def _replicas(app: dict[str, Any], at: str) -> list[tuple[str, float, float]]:
    """(deployment, gpus, cpus) for every replica, at min or max autoscaling."""
    args = _args(app["args"])
    out = [("Ingress", 0.0, args.ingress.num_cpus)] * args.ingress.num_replicas
    for role, d in args.model_deployments().items():
        n = d.min_replicas if at == "min" else d.max_replicas
        out += [(ROLE_DEPLOYMENTS[role], d.num_gpus, d.num_cpus)] * n
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
    settings = serve_config_v2["applications"][0]["args"]["settings"]
    assert settings["max_upload_mb"] == 200 and settings["max_audio_s"] == 14400
    for group in [_head(rayservice), *_workers(rayservice)]:
        env = _env(_container(group))
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0"
        # The proxies and controller get Serve's request path as graph.py gives the replicas.
        for var, value in SERVE_ENV.items():
            assert env[var]["value"] == value, var
        # Limits live in serveConfigV2's args only (they win over the environment):
        # a second copy here could only disagree.
        for var in ("MAX_UPLOAD_MB", "MAX_AUDIO_S"):
            assert var not in env, var
        # Nor do the pods override the builder args or settings from the environment:
        # the API keys are the one VOXGRAPH_* variable (a secret has no place in args).
        assert {v for v in env if v.startswith("VOXGRAPH_")} == {"VOXGRAPH_API_KEY"}
        key = env["VOXGRAPH_API_KEY"]["valueFrom"]["secretKeyRef"]
        # Required: port 8000 is open to the cluster, so no pod starts without keys.
        assert key["name"] and not key.get("optional", False)


# ------------------------------------------------------------------ Ray token auth


def test_token_auth_is_never_disabled():
    text = MANIFEST.read_text()
    assert not re.search(r"RAY_AUTH_MODE\W+(value:\s*)?[\"']?disabled", text, re.I)
    for doc in yaml.safe_load_all(text):
        for env in _all_env(doc):
            if env.get("name") == "RAY_AUTH_MODE":
                assert env.get("value") == "token", env


def test_token_auth_from_a_secret(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    auth = cluster["authOptions"]
    # The operator reads this Secret to authenticate its own dashboard calls (the
    # ones that deploy serveConfigV2); without secretName it would make its own.
    assert auth["mode"] == "token" and auth["secretName"]
    # Ray's token auth needs Ray >= 2.52 (KubeRay refuses authOptions below it).
    assert tuple(int(x) for x in cluster["rayVersion"].split(".")[:2]) >= (2, 52)
    for group in [_head(rayservice), *_workers(rayservice)]:
        env = _env(_container(group))
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token, "the token comes from a Secret, never inline"
        ref = token["valueFrom"]["secretKeyRef"]
        # KubeRay's Secret convention: the data key `auth_token`, and the same Secret
        # as authOptions, so the operator and the pods share one token.
        assert ref == {"name": auth["secretName"], "key": "auth_token"}


def _all_env(node: Any) -> list[dict[str, Any]]:
    """Every env entry anywhere in a document (containers, init containers, sidecars)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                found += [e for e in value if isinstance(e, dict)]
            else:
                found += _all_env(value)
    elif isinstance(node, list):
        for value in node:
            found += _all_env(value)
    return found


# ------------------------------------------------------------------ NetworkPolicy

# Labels KubeRay adds to every Ray pod it creates, besides the template's own.
KUBERAY_POD_LABELS = {"ray.io/is-ray-node": "yes"}
OPERATOR = {"labels": {"app.kubernetes.io/name": "kuberay-operator"}, "namespace": "kuberay"}
SERVE_PORT = 8000
HEAD_PORTS = {6379, 8265, 10001, 8080}  # GCS, dashboard, client, metrics


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector against labels ({} selects everything)."""
    selector = selector or {}
    if set(selector) - {"matchLabels"}:
        raise AssertionError(f"only matchLabels is modelled here: {selector}")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_admitted(peer: dict[str, Any], source: dict[str, Any], own_namespace: str) -> bool:
    """Does one `from` entry admit `source` ({labels, namespace}; no labels: off-cluster)?"""
    if "ipBlock" in peer:
        return True  # any address range counts as outside
    if source.get("labels") is None:
        return False  # an off-cluster client is no pod
    if "namespaceSelector" in peer:
        # Namespaces carry kubernetes.io/metadata.name; nothing else is modelled.
        ns_labels = {"kubernetes.io/metadata.name": source["namespace"]}
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif source["namespace"] != own_namespace:
        return False
    return _matches(peer.get("podSelector"), source["labels"])


def _admits(policy: dict[str, Any], source: dict[str, Any], port: int) -> bool:
    """Whether `policy` lets `source` reach `port` on the pods it selects."""
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    own_namespace = "voxgraph"
    for rule in spec.get("ingress", []):
        peers = rule.get("from")
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port for p in ports):
            continue
        if peers is None or any(_peer_admitted(p, source, own_namespace) for p in peers):
            return True
    return False


def _ray_pod_labels(rayservice: dict[str, Any]) -> list[dict[str, str]]:
    groups = [_head(rayservice), *_workers(rayservice)]
    return [{**g["template"]["metadata"]["labels"], **KUBERAY_POD_LABELS} for g in groups]


def _outsiders() -> list[dict[str, Any]]:
    return [
        {"labels": None, "namespace": None},  # a client through a LoadBalancer
        {"labels": {"app": "shell"}, "namespace": "voxgraph"},  # another pod beside us
        {"labels": {"app.kubernetes.io/name": "voxgraph"}, "namespace": "voxgraph"},
        {"labels": {"app": "other"}, "namespace": "elsewhere"},
    ]


def test_network_policy_covers_every_ray_pod(docs, rayservice):
    policy = docs["NetworkPolicy"]
    for labels in _ray_pod_labels(rayservice):
        assert _matches(policy["spec"]["podSelector"], labels), labels
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_network_policy_admits_only_serve_from_outside(docs, rayservice):
    policy = docs["NetworkPolicy"]
    for source in _outsiders():
        assert _admits(policy, source, SERVE_PORT), source
        for port in HEAD_PORTS | {52365, 20000}:  # and a raylet agent / worker port
            assert not _admits(policy, source, port), (source, port)


def test_network_policy_lets_ray_pods_and_the_operator_in(docs, rayservice):
    policy = docs["NetworkPolicy"]
    for labels in _ray_pod_labels(rayservice):
        peer = {"labels": labels, "namespace": "voxgraph"}
        for port in HEAD_PORTS | {SERVE_PORT, 52365, 20000}:
            assert _admits(policy, peer, port), (labels, port)
    # The operator deploys serveConfigV2 through the dashboard, and nothing else.
    assert _admits(policy, OPERATOR, 8265)
    for port in HEAD_PORTS - {8265}:
        assert not _admits(policy, OPERATOR, port), port


def test_network_policy_check_catches_openings(docs):
    """The evaluator is not vacuous: a policy opening a control port is caught."""
    import copy

    for extra in (
        {"ports": [{"port": 8265}]},
        {"from": [{"namespaceSelector": {}}]},
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 6379}]},
    ):
        broken = copy.deepcopy(docs["NetworkPolicy"])
        broken["spec"]["ingress"].append(extra)
        assert any(
            _admits(broken, source, port) for source in _outsiders() for port in HEAD_PORTS
        ), extra
