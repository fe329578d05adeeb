"""What many tests need: free ports, process memory, Serve replicas, scripts, signals.

One place for them, so that each test file says what it checks, not how to find
a port or a replica's pid.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from voxgraph.audio import encode_wav
from voxgraph.synth import speechlike

ROOT = Path(__file__).resolve().parent.parent
SR = 16_000

__all__ = [
    "ROOT",
    "SR",
    "free_port",
    "load_script",
    "replica_actors",
    "replica_pids",
    "rss_mb",
    "serve_local_script",
    "speechlike",
    "wav_bytes",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, on `host` (loopback only), that Ray won't take.

    See `scripts/serve_local.py`'s `free_ports`: not from the ephemeral range.
    """
    return serve_local_script().free_ports(1, host)[0]


@functools.cache
def serve_local_script() -> ModuleType:
    """`scripts/serve_local.py`, loaded once for the whole test run."""
    return load_script("serve_local")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (`VmRSS`) or its peak (`VmHWM`), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as a module (registered, so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def replica_pids(app: str) -> dict[str, dict[str, int]]:
    """{deployment: {actor name: pid}} of the live replicas of Serve app `app`.

    From Ray's actor table (GCS), which needs no dashboard.
    """
    import ray

    prefix = f"SERVE_REPLICA::{app}#"
    out: dict[str, dict[str, int]] = {}
    for actor in ray._private.state.actors().values():
        name = actor.get("Name") or ""
        if name.startswith(prefix) and actor.get("State") == "ALIVE":
            deployment = name[len(prefix) :].split("#")[0]
            out.setdefault(deployment, {})[name] = int(actor["Pid"])
    return out


def replica_actors(app: str) -> dict[str, tuple[str, int]]:
    """{deployment: (actor name, pid)}; with several replicas, the last listed wins."""
    return {d: list(r.items())[-1] for d, r in replica_pids(app).items()}


def wav_bytes(samples: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    return encode_wav(samples, sr, subtype)
