"""The voxgraph application: four deployments bound into one graph.

`build_app(args)` is the builder (`serve run graph:build_app key=value` or a
config's `import_path: graph:build_app` with `args:`); `app` is the default
production graph for `import_path: graph:app`.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.asr import ASR
from deployments.diarizer import Diarizer
from deployments.embedder import Embedder
from deployments.ingress import Ingress

# Resource defaults, in one visible place. GPU shares fit the three models on
# one card (ASR 0.4 + diarizer 0.3 + embedder 0.2 = 0.9 GPU).
DEFAULT_MODELS = {
    "asr": "nvidia/parakeet-tdt-0.6b-v3",
    "diarizer": "nvidia/diar_sortformer_4spk-v1",
    "embedder": "nvidia/speakerverification_en_titanet_large",
}
GPU_SHARES = {"asr": 0.4, "diarizer": 0.3, "embedder": 0.2}
BATCH_SIZES = {"asr": 16, "diarizer": 8, "embedder": 32}  # embedder: clips, not requests
MODEL_ENV = {
    "asr": "VOXGRAPH_ASR_MODEL",
    "diarizer": "VOXGRAPH_DIARIZER_MODEL",
    "embedder": "VOXGRAPH_EMBEDDER_MODEL",
}


class ModelDeploymentArgs(BaseModel):
    """One model deployment: its model, batching and resources."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    """NGC / Hugging Face name (from_pretrained) or a local `.nemo` path (restore_from)."""
    precision: str = Field("fp32", pattern="^(fp32|bf16|fp16)$")
    """Autocast precision on CUDA."""
    max_batch_size: int = Field(8, ge=1)
    """Most requests (embedder: clips) per forward pass."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """Wait for a batch to fill (seconds)."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per replica."""
    num_gpus: float = Field(0.0, ge=0)
    """GPU share per replica (0 on CPU-only machines: a share with no GPU never schedules)."""
    min_replicas: int = Field(1, ge=0)
    """Autoscaling floor."""
    max_replicas: int = Field(1, ge=1)
    """Autoscaling ceiling; equal to min_replicas means a fixed replica count."""
    target_ongoing_requests: float = Field(4.0, gt=0)
    """Autoscaling target per replica."""
    max_ongoing_requests: int = Field(32, ge=1)
    """Requests a replica works on at once (covers a full batch plus the next one filling)."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests a caller may queue before getting 503 (-1: unbounded)."""


def _model_args(role: str, cpu_only: bool) -> ModelDeploymentArgs:
    return ModelDeploymentArgs(
        model=os.environ.get(MODEL_ENV[role], DEFAULT_MODELS[role]),
        max_batch_size=BATCH_SIZES[role],
        num_gpus=0.0 if cpu_only else GPU_SHARES[role],
    )


def _cpu_only() -> bool:
    return os.environ.get("VOXGRAPH_CPU_ONLY", "").lower() in ("1", "true", "yes")


class IngressArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0)
    """CPUs per ingress replica (decoding runs here)."""
    num_replicas: int = Field(1, ge=1)
    """Ingress replicas."""
    max_ongoing_requests: int = Field(64, ge=1)
    """Requests one ingress replica holds at once."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests queued at the proxy before 503."""


class VoxgraphArgs(BaseModel):
    """Everything `build_app` needs; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    asr: ModelDeploymentArgs = Field(default_factory=lambda: _model_args("asr", _cpu_only()))
    diarizer: ModelDeploymentArgs = Field(
        default_factory=lambda: _model_args("diarizer", _cpu_only())
    )
    embedder: ModelDeploymentArgs = Field(
        default_factory=lambda: _model_args("embedder", _cpu_only())
    )
    ingress: IngressArgs = Field(default_factory=IngressArgs)
    settings: dict[str, Any] = Field(default_factory=dict)
    """Overrides of `voxgraph.settings.Settings` (limits, windows, auth, CORS)."""


def _deployment_options(d: ModelDeploymentArgs) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "user_config": {
            "model": d.model,
            "precision": d.precision,
            "max_batch_size": d.max_batch_size,
            "batch_wait_timeout_s": d.batch_wait_timeout_s,
        },
    }
    if d.max_replicas > d.min_replicas:
        opts["autoscaling_config"] = {
            "min_replicas": d.min_replicas,
            "max_replicas": d.max_replicas,
            "target_ongoing_requests": d.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = d.min_replicas
    return opts


def build_app(args: VoxgraphArgs | dict[str, Any] | None = None) -> Application:
    """Bind ASR, Diarizer and Embedder under the Ingress, with `args` applied."""
    a = args if isinstance(args, VoxgraphArgs) else VoxgraphArgs.model_validate(args or {})
    asr = ASR.options(**_deployment_options(a.asr)).bind(model=a.asr.model)
    diarizer = Diarizer.options(**_deployment_options(a.diarizer)).bind(model=a.diarizer.model)
    embedder = Embedder.options(**_deployment_options(a.embedder)).bind(model=a.embedder.model)
    ingress = Ingress.options(
        ray_actor_options={"num_cpus": a.ingress.num_cpus},
        num_replicas=a.ingress.num_replicas,
        max_ongoing_requests=a.ingress.max_ongoing_requests,
        max_queued_requests=a.ingress.max_queued_requests,
    )
    return ingress.bind(asr, diarizer, embedder, a.settings)


app = build_app(VoxgraphArgs())
