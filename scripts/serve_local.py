"""Start Ray on loopback and deploy a Serve config file, then wait until healthy.

`python scripts/serve_local.py serve_config.yaml` is `serve run` with Ray bound
to 127.0.0.1 and relative `.nemo` paths resolved against the repository, so
the demo works from any directory. Tests import `start()`.

Other Python processes on this machine can join this Ray to call the app's
handle: once ready, it prints the two variables they need (`driver_env()`),
`RAY_ADDRESS=127.0.0.1:<--ray-port>` and `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from deployments.loopback import HOOK as LOOPBACK_HOOK
from deployments.serve_env import for_ray_start

ROOT = Path(__file__).resolve().parent.parent

# Before `import ray`: keep Ray local, quiet and unauthenticated on loopback.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _resolve_paths(node: Any) -> Any:
    """Make `models/...nemo` paths absolute: replicas do not share our working directory."""
    if isinstance(node, dict):
        return {k: _resolve_paths(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_paths(v) for v in node]
    if isinstance(node, str) and node.endswith(".nemo") and not os.path.isabs(node):
        return str(ROOT / node)
    return node


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return _resolve_paths(yaml.safe_load(f))


def driver_env(ray_address: str) -> dict[str, str]:
    """What a separate Python process must export to join this Ray and use handles.

    Ray on Linux swaps 127.0.0.1 for the machine's network address when a driver
    joins, then looks for this node's raylet there and times out: this Ray has no
    server on that address. With the switch at 0 the driver stays on loopback (the
    same setting the head runs with).
    """
    return {"RAY_ADDRESS": ray_address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ray_address() -> str:
    """host:port of the running Ray's GCS, what `RAY_ADDRESS` names."""
    import ray

    return ray.get_runtime_context().gcs_address


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Ray's default worker ports (--min-worker-port/--max-worker-port).
RAY_WORKER_PORTS = range(10002, 20000)


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_ports(n: int = 1, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free on `host` now, that nothing else will be handed meanwhile.

    Not from the kernel's ephemeral range: Ray's daemons bind port 0 and open
    connections whose local ports come from that range, so a port picked there
    can be taken between choosing it and Serve's proxy binding it (seen in CI as
    "Failed to bind to address"). Nor from Ray's worker ports.
    """
    ephemeral = _ephemeral_ports()
    pool = [p for p in range(20000, 65536) if p not in ephemeral and p not in RAY_WORKER_PORTS]
    pick = random.SystemRandom()  # independent picks in concurrent test processes
    ports: list[int] = []
    for _ in range(50 * n):
        if len(ports) == n or not pool:
            break
        port = pick.choice(pool)
        if port not in ports and port_free(port, host):
            ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"no {n} free ports on {host} outside the ephemeral range")
    return ports


def start(
    config_path: str | Path,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    port: int | None = None,
    ray_port: int | None = None,
) -> dict[str, Any]:
    """ray.init on 127.0.0.1, then deploy every application of the config (non-blocking).

    `ray_port` fixes Ray's GCS port (what other drivers join); by default Ray picks one.
    """
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    config = load_config(config_path)
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    config.setdefault("http_options", {})["host"] = config["http_options"].get("host", "127.0.0.1")
    local_only = config["http_options"]["host"] in ("127.0.0.1", "localhost")
    if local_only:
        for app in config.get("applications", []):
            app.setdefault("runtime_env", {})["worker_process_setup_hook"] = LOOPBACK_HOOK
    schema = ServeDeploySchema.model_validate(config)
    if not ray.is_initialized():
        # ray.init has no port argument; the GCS it starts reads this variable.
        previous = os.environ.get("RAY_GCS_SERVER_PORT")
        if ray_port is not None:
            os.environ["RAY_GCS_SERVER_PORT"] = str(ray_port)
        try:
            # The proxy and controller inherit Serve's request-path settings from Ray's
            # daemons (the replicas get them from graph.py as well).
            with for_ray_start():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    include_dashboard=False,
                    namespace="serve",
                    runtime_env={
                        "env_vars": {"PYTHONPATH": str(ROOT)},
                        # Apps deployed with serve.run from this driver (tests' variants) too.
                        **({"worker_process_setup_hook": LOOPBACK_HOOK} if local_only else {}),
                    },
                )
        finally:
            if ray_port is not None:
                if previous is None:
                    os.environ.pop("RAY_GCS_SERVER_PORT", None)
                else:
                    os.environ["RAY_GCS_SERVER_PORT"] = previous
    _check_gpus(schema, ray.cluster_resources().get("GPU", 0.0))
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    client.deploy_apps(schema, _blocking=False)
    del serve  # imported for its side effect of registering the Serve namespace
    return config


def _check_gpus(schema: Any, available: float) -> None:
    """Refuse early: a GPU share with no GPU never schedules, and Ray says nothing."""
    wanted = [
        f"{app.name}/{d.name}"
        for app in schema.applications
        for d in app.deployments
        if isinstance(getattr(d.ray_actor_options, "num_gpus", None), int | float)
        and d.ray_actor_options.num_gpus > 0
    ]
    if wanted and available <= 0:
        raise SystemExit(
            f"{', '.join(wanted)} ask for GPU shares but Ray sees no GPU on this machine. "
            "Use `make demo` (tiny models on CPU), serve_config.cpu.yaml (real models on "
            "CPU), or --num-gpus N to declare logical GPUs."
        )


def wait_healthy(
    target: int | str,
    timeout_s: float = 600,
    proc: subprocess.Popen | None = None,
    interval_s: float = 1.0,
) -> float:
    """Poll `<target>/health` until 200 (target: a port on 127.0.0.1, or a base URL).

    Returns the seconds it took; fails early if `proc`, the server's process, exits.
    """
    base = f"http://127.0.0.1:{target}" if isinstance(target, int) else target.rstrip("/")
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:300]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(interval_s)
    raise TimeoutError(f"{base} not healthy after {timeout_s:.0f}s: {last}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", nargs="?", default=str(ROOT / "serve_config.yaml"))
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument(
        "--num-gpus",
        type=int,
        default=None,
        help="logical GPUs to declare (default: what Ray detects)",
    )
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's)")
    p.add_argument(
        "--ray-port",
        type=int,
        default=None,
        help="Ray's port on 127.0.0.1, for Python drivers to join "
        "(default: a free one; if this one is taken, a free one instead)",
    )
    args = p.parse_args()
    t0 = time.monotonic()
    ray_port = args.ray_port
    if ray_port is not None and not port_free(ray_port):
        print(f"127.0.0.1:{ray_port} is taken; Ray takes a free port instead", flush=True)
        ray_port = None
    config = start(
        args.config,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        port=args.port,
        ray_port=ray_port,
    )
    port = int(config["http_options"].get("port", 8000))
    print(f"deploying {args.config}; waiting for http://127.0.0.1:{port}/health ...", flush=True)
    wait_healthy(port)
    exports = " ".join(f"{k}={v}" for k, v in driver_env(ray_address()).items())
    print(
        f"voxgraph ready on http://127.0.0.1:{port} after {time.monotonic() - t0:.1f}s "
        "(docs: /docs). Ctrl-C stops it.\n"
        "Python handles from another process on this machine (README: Python handle):\n"
        f"  export {exports}",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
