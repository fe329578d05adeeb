"""Shared fixtures: audio makers, and the real graph on a local Ray cluster.

The `service` fixture starts Ray on 127.0.0.1, deploys `configs/tiny.yaml`
(the same graph as production, tiny NeMo models restored from .nemo) and
yields its URL and app handle. Nothing here mocks Ray or NeMo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (  # noqa: F401  (tests import these from here)
    ROOT,
    SR,
    free_port,
    load_script,
    replica_actors,
    serve_local_script,
    speechlike,
    wav_bytes,
)

TINY = ROOT / "models" / "tiny"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@dataclass
class Service:
    url: str
    port: int
    handle: object  # the app's DeploymentHandle (Ingress)

    def deployment(self, name: str):
        from ray import serve

        return serve.get_deployment_handle(name, app_name="voxgraph")


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    files = (
        "asr.nemo",
        "diarizer.nemo",
        "embedder.nemo",
        "diarizer_streaming.nemo",
        "canary.nemo",
    )
    if not all((TINY / f).exists() for f in files):
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_tiny_models.py"), "--out", str(TINY)],
            check=True,
        )
    return TINY


@pytest.fixture(scope="session")
def service(tiny_models, tmp_path_factory) -> Service:
    import ray
    import yaml
    from ray import serve

    serve_local = serve_local_script()
    config = serve_local.load_config(ROOT / "configs" / "tiny.yaml")
    # Tighter limits than the demo so the limit tests stay small and fast.
    settings = config["applications"][0]["args"].setdefault("settings", {})
    library = tmp_path_factory.mktemp("speakers") / "speakers.db"
    settings.update(
        {"max_upload_mb": 8, "max_audio_s": 3 * 3600, "speakers_db": f"sqlite:///{library}"}
    )
    path = tmp_path_factory.mktemp("config") / "tiny-test.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    serve_local.start(path, num_cpus=8, port=port)
    serve_local.wait_healthy(port, timeout_s=600)
    yield Service(f"http://127.0.0.1:{port}", port, serve.get_app_handle("voxgraph"))
    serve.shutdown()
    ray.shutdown()


def deploy_variant(service: Service, name: str, route_prefix: str, **overrides) -> str:
    """Deploy a second copy of the tiny graph, with `overrides` merged into its args.

    Lets a test run the real graph with other settings (API keys, tight queues,
    a replica to kill) without disturbing the shared `voxgraph` app. Returns the
    variant's base URL; remove it with `serve.delete(name)`.
    """
    from ray import serve

    import graph

    serve_local = serve_local_script()
    config = serve_local.load_config(ROOT / "configs" / "tiny.yaml")
    args = config["applications"][0]["args"]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(args.get(key), dict):
            args[key] = {**args[key], **value}
        else:
            args[key] = value
    serve.run(graph.build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    url = f"{service.url}{route_prefix}"
    serve_local.wait_healthy(url, timeout_s=300)
    return url


def deploy_ingress_variant(
    service: Service,
    name: str,
    route_prefix: str,
    settings: dict | None = None,
    **options,
) -> str:
    """A second Ingress with other `settings`, over the shared app's model replicas.

    No model loads, so it is up in seconds: auth, CORS, limits and timeouts get
    their own settings while the shared `voxgraph` app is left as it is. `options`
    are Serve deployment options (max_ongoing_requests, ...). Returns the base URL;
    remove it with `serve.delete(name)`.
    """

    from ray import serve

    from deployments.ingress import Ingress

    config = serve_local_script().load_config(ROOT / "configs" / "tiny.yaml")
    merged = {**config["applications"][0]["args"].get("settings", {}), **(settings or {})}
    handles = [
        serve.get_deployment_handle(d, app_name="voxgraph") for d in ("ASR", "Diarizer", "Embedder")
    ]
    app = Ingress.options(ray_actor_options={"num_cpus": 0.1}, **options).bind(*handles, merged)
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    url = f"{service.url}{route_prefix}"
    serve_local_script().wait_healthy(url, timeout_s=180, interval_s=0.5)
    return url
