"""The voxgraph application: four deployments bound into one graph.

`build_app(args)` is the builder: a config's `import_path: graph:build_app` with
`args:` (serve_config.yaml), or `serve.run(build_app({...}))`. `app` is the same
graph built from the defaults below, for `serve run graph:app`.

Where a value comes from, highest first: the builder's args, then environment
variables (`VOXGRAPH_ASR__MODEL`, `VOXGRAPH_CPU_ONLY`, ...), then `ROLE_DEFAULTS` and
the field defaults. The ingress's own settings (`args.settings`) follow the same
order, read where they are used: see voxgraph/settings.py.

Serve hashes `args` into the application's code version, so changing any of them
replaces every replica. For an in-place change of a model's `user_config` (batch
size, batch wait, precision, model) add a `deployments:` override to the config
instead; docs/kuberay.md shows both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from ray.serve import Application

from deployments.asr import ASR
from deployments.diarizer import Diarizer
from deployments.embedder import Embedder
from deployments.ingress import Ingress
from deployments.serve_env import serve_env
from voxgraph.settings import ENV_PREFIX, ModelConfig, Settings

ROLES = ("asr", "diarizer", "embedder")

# Per-role defaults, the production graph; serve_config.yaml states the same numbers
# (a test keeps the two equal). The GPU shares fit the three models on one card
# (0.4 + 0.3 + 0.2 = 0.9 GPU). Everything not listed takes ModelDeploymentArgs' defaults.
ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "asr": {
        "model": "nvidia/parakeet-tdt-0.6b-v3",
        "precision": "bf16",
        "max_batch_size": 16,
        "batch_wait_timeout_s": 0.02,
        "num_cpus": 2.0,
        "num_gpus": 0.4,
    },
    "diarizer": {
        "model": "nvidia/diar_sortformer_4spk-v1",
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.02,
        "num_gpus": 0.3,
    },
    "embedder": {
        "model": "nvidia/speakerverification_en_titanet_large",
        "max_batch_size": 32,  # clips, not requests
        "num_gpus": 0.2,
    },
}


class ModelDeploymentArgs(ModelConfig):
    """One model deployment: its `user_config` (ModelConfig's fields) and its resources."""

    num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per replica (Ray gives the replica floor(num_cpus) torch threads)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPU share per replica (0 on CPU-only machines: a share with no GPU never schedules)."""
    min_replicas: int = Field(1, ge=0)
    """Autoscaling floor."""
    max_replicas: int = Field(2, ge=1)
    """Autoscaling ceiling; equal to min_replicas means a fixed replica count."""
    target_ongoing_requests: float = Field(8.0, gt=0)
    """Autoscaling target per replica."""
    max_ongoing_requests: int = Field(32, ge=1)
    """Requests a replica works on at once (covers a full batch plus the next one filling)."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests a caller may queue before getting 503 (-1: unbounded)."""
    omp_wait_policy: Literal["active", "passive"] | None = None
    """OpenMP's OMP_WAIT_POLICY in the replica (none: the runtime's default, which spins)."""

    @model_validator(mode="after")
    def _replica_range(self) -> ModelDeploymentArgs:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self

    def user_config(self) -> ModelConfig:
        """What the replica itself sees: the ModelConfig part, without the resources."""
        return ModelConfig.model_validate(self.model_dump(include=set(ModelConfig.model_fields)))


class IngressArgs(BaseModel):
    """The ingress deployment's resources (its limits and knobs are `settings`)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0)
    """CPUs per ingress replica (decoding runs here)."""
    num_replicas: int = Field(1, ge=1)
    """Ingress replicas."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Requests one ingress replica holds at once."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests queued at the proxy before 503."""


class _ArgsEnvironment(EnvSettingsSource):
    """The builder args' environment: nested names, the per-model names, no `settings`."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        # The ingress reads the service settings' environment itself, in its replica;
        # taking them here too would turn an environment value into an init override.
        data.pop("settings", None)
        for role in ROLES:
            # VOXGRAPH_ASR_MODEL etc.: the names before nested variables existed.
            # Keys are lower-case (case-insensitive lookup); the nested name wins.
            legacy = self.env_vars.get(f"{ENV_PREFIX}{role}_model".lower())
            if legacy:
                given = data.get(role)
                if not isinstance(given, dict):
                    given = data[role] = {}
                given.setdefault("model", legacy)
        return data


class VoxgraphArgs(BaseSettings):
    """Everything `build_app` needs; unknown keys are an error, not silently ignored.

    Per model deployment, given keys are merged over `ROLE_DEFAULTS`, so
    `asr: {model: x.nemo}` keeps the ASR's batch size, share and replicas.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="forbid",
    )

    asr: ModelDeploymentArgs
    """The ASR deployment (Parakeet TDT by default)."""
    diarizer: ModelDeploymentArgs
    """The diarization deployment (Sortformer by default)."""
    embedder: ModelDeploymentArgs
    """The speaker-fingerprint deployment (TitaNet by default)."""
    ingress: IngressArgs = Field(default_factory=IngressArgs)
    """The ingress deployment's resources."""
    cpu_only: bool = False
    """Zero every model's GPU share, whatever else says otherwise (machines without a GPU)."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Service settings (`voxgraph.settings.Settings` fields) given to the ingress."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Args, then the environment; no .env files or secret directories.
        return init_settings, _ArgsEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for role in ROLES:
            given = data.get(role) or {}
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            data[role] = {**ROLE_DEFAULTS[role], **given}
        return data

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        # A misspelt or out-of-range setting fails here, at deploy time, not in the
        # ingress replica. Only the keys given are kept, typed (API keys as SecretStr,
        # so no repr of these args shows one): the ingress reads its own environment
        # under them.
        unknown = sorted(set(value) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; the keys are Settings' field names")
        validated = Settings.model_validate(value)
        return {key: getattr(validated, key) for key in value}

    @model_validator(mode="after")
    def _apply_cpu_only(self) -> VoxgraphArgs:
        if self.cpu_only:
            for role in ROLES:
                getattr(self, role).num_gpus = 0.0
        for role in ROLES:
            d = getattr(self, role)
            # Dynamic int8 quantisation has CPU kernels only: a GPU replica would load
            # its model and then fail; say so at deploy time instead.
            if d.precision == "int8" and d.num_gpus > 0:
                raise ValueError(
                    f"{role}: precision int8 runs on CPU only; set num_gpus: 0 (or "
                    "cpu_only: true), or use bf16/fp16 on a GPU"
                )
        return self

    def model_deployments(self) -> dict[str, ModelDeploymentArgs]:
        return {role: getattr(self, role) for role in ROLES}


def deployment_options(d: ModelDeploymentArgs) -> dict[str, Any]:
    """A model deployment's `.options(...)`: resources, queue limits and `user_config`."""
    env = serve_env()
    if d.omp_wait_policy:
        # Replicas sharing cores: each process's OpenMP runtime counts only its own
        # threads, so by default its idle workers spin on the cores the other models
        # compute on. Passive workers sleep instead (bench/RESULTS.md "CPU serving").
        env["OMP_WAIT_POLICY"] = d.omp_wait_policy.upper()
    opts: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": d.num_cpus,
            "num_gpus": d.num_gpus,
            "runtime_env": {"env_vars": env},
        },
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "user_config": d.user_config().model_dump(),
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


def ingress_options(i: IngressArgs) -> dict[str, Any]:
    return {
        "ray_actor_options": {"num_cpus": i.num_cpus, "runtime_env": {"env_vars": serve_env()}},
        "num_replicas": i.num_replicas,
        "max_ongoing_requests": i.max_ongoing_requests,
        "max_queued_requests": i.max_queued_requests,
    }


def build_app(args: dict[str, Any] | VoxgraphArgs | None = None) -> Application:
    """Bind ASR, Diarizer and Embedder under the Ingress, with `args` applied."""
    a = args if isinstance(args, VoxgraphArgs) else VoxgraphArgs(**(args or {}))
    handles = {}
    for role, deployment in (("asr", ASR), ("diarizer", Diarizer), ("embedder", Embedder)):
        d: ModelDeploymentArgs = getattr(a, role)
        # The full ModelConfig as init args too: a partial `user_config` override in a
        # config's `deployments:` section then merges over it on a fresh replica.
        handles[role] = deployment.options(**deployment_options(d)).bind(
            **d.user_config().model_dump()
        )
    ingress = Ingress.options(**ingress_options(a.ingress))
    return ingress.bind(handles["asr"], handles["diarizer"], handles["embedder"], a.settings)


app = build_app()
