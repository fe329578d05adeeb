"""Ingress: the service's operations over Ray Serve handles to the three model deployments.

HTTP routes live in deployments/http_app.py (parse, delegate, render); the
operations in voxgraph.service; the request walk in voxgraph.pipeline. This
deployment wires them: it builds the walk's backends from its handles, counts
metrics, and exposes the operations to Python callers of
`serve.get_app_handle("voxgraph")`, with the same results and typed errors as HTTP.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.handles import HandleBackends
from deployments.http_app import build_api
from deployments.metrics import ingress_metrics
from voxgraph.service import VoxgraphService
from voxgraph.settings import Settings


# Requests over max_queued_requests are refused by Serve's proxy before they reach
# a replica; the header tells clients when to come back, as our own 503s do.
@serve.deployment(name="Ingress", backpressure_config={"status_code": 503, "retry_after_s": 1})
@serve.ingress()
class Ingress(VoxgraphService):
    def __init__(
        self,
        asr: DeploymentHandle,
        diarizer: DeploymentHandle,
        embedder: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ):
        config = Settings.load(settings)
        backends = HandleBackends(asr, diarizer, embedder, config.request_timeout_s)
        super().__init__(backends, config, ingress_metrics())

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, after the constructor: routes and guards reach this object.
        return build_api(self)
