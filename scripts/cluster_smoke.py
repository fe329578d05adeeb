"""voxgraph on a real two-node Ray cluster on loopback, deployed with the `serve` CLI.

`python scripts/cluster_smoke.py` (or `tests/test_cluster.py`, which calls `run()`):

1. starts a head and a worker with `ray start --block`, both on 127.0.0.1, each with
   one logical GPU and a few logical CPUs, every port chosen free, in a private
   `--temp-dir`;
2. derives a config from `serve_config.yaml` (tiny `.nemo` models, the GPU shares
   kept, short autoscaling delays, HTTP on 127.0.0.1 and a free port) and deploys it
   with `serve deploy --address http://127.0.0.1:<dashboard>`;
3. waits for `serve status` to report every deployment HEALTHY and `/health` 200;
4. bursts diarize-chunk requests until a model deployment runs a second replica
   (one GPU per node: a second replica of any model cannot fit beside the first
   set, so replicas must land on both nodes), then stops and waits for the scale-down;
5. `serve deploy`s a changed `user_config` (batch sizes) while requests flow, and
   checks that no request failed and no replica was restarted;
6. stops only the processes it started (never `ray stop`: that kills every Ray
   on the machine).

It prints a JSON report of what it saw; `verify(report)` holds the assertions.

No request may fail, in the burst or during the update: a replica added by
autoscaling is routed to only once its model is loaded (ModelHost's first
`reconfigure` waits for the load; this script found the gap when it did not).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
SERVE = Path(sys.executable).with_name("serve")
if not RAY.exists():  # not run from the venv's python
    RAY, SERVE = Path(shutil.which("ray") or "ray"), Path(shutil.which("serve") or "serve")
TINY_FILES = {"ASR": "asr.nemo", "Diarizer": "diarizer.nemo", "Embedder": "embedder.nemo"}
ARGS_KEY = {"ASR": "asr", "Diarizer": "diarizer", "Embedder": "embedder"}  # in the app's args
MODELS = tuple(TINY_FILES)
from deployments.loopback import HOOK as LOOPBACK_HOOK  # noqa: E402

ROUTE = "/v1/audio/diarize-chunk"

# Short autoscaling loop so the test sees up and down within a couple of minutes.
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 5,
    "look_back_period_s": 5,
}


# ------------------------------------------------------------------ the cluster


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1, outside the range Ray's daemons draw from."""
    spec = importlib.util.spec_from_file_location(
        "serve_local", ROOT / "scripts" / "serve_local.py"
    )
    assert spec and spec.loader
    serve_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_local)
    return serve_local.free_ports(n)


def _term_with_parent() -> None:
    """In the child before exec: SIGTERM it if we die (a killed test leaves no cluster)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ray_env() -> dict[str, str]:
    """Environment for every `ray` / `serve` command we run."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_AUTH_MODE="disabled",  # token auth would reject the serve CLI
        RAY_USAGE_STATS_ENABLED="0",
        # Keeps 127.0.0.1 as the node address: with 1 Ray rewrites --node-ip-address
        # 127.0.0.1 (and --address 127.0.0.1:...) to the machine's routable IP and
        # binds its servers there and on 0.0.0.0. See WORKER_START for the catch.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        # Nothing to drain at teardown: skip the 30 s wait a SIGTERMed node grants Serve.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        PYTHONUNBUFFERED="1",
    )
    return env


# `ray start` for the worker node. In Ray 2.60 one switch,
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, both lets a worker node join (the CLI aborts
# without it) and makes Ray resolve 127.0.0.1 to the machine's routable IP. We want
# the first without the second: this runs the very same `ray start` command with
# only the CLI's own join check seeing the switch on; the node address resolution
# and every process it starts keep the loopback behaviour.
WORKER_START = """
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as scripts

class JoinAllowed(types.ModuleType):
    def __getattr__(self, name):
        return getattr(constants, name)

scripts.ray_constants = JoinAllowed("ray_constants")
scripts.ray_constants.ENABLE_RAY_CLUSTER = True
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(scripts.main())
"""


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class Cluster:
    """A head and a worker started with `ray start --block`; stop() ends exactly those."""

    workdir: Path
    cpus_per_node: int = 5
    gpus_per_node: int = 1
    object_store_bytes: int = 400 * 1024 * 1024
    temp_dir: Path = field(init=False)
    gcs_port: int = field(init=False)
    dashboard_port: int = field(init=False)
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Short: Ray puts unix sockets under it (108-character limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vxc-", dir="/tmp"))
        self._ports = free_ports(16)
        self.gcs_port, self.dashboard_port = self._ports[0], self._ports[1]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> Node:
        log = self.workdir / f"ray-{name}.log"
        common = [
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            f"--num-gpus={self.gpus_per_node}",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        ray = [str(RAY)] if name == "head" else [sys.executable, "-c", WORKER_START]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*ray, "start", *args, *common],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=ray_env(),
                start_new_session=True,  # its own process group: stop() can reach leftovers
                preexec_fn=_term_with_parent,
            )
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def _node_ports(self, i: int) -> list[str]:
        p = self._ports[3 + 6 * i : 9 + 6 * i]
        return [
            f"--node-manager-port={p[0]}",
            f"--object-manager-port={p[1]}",
            f"--metrics-export-port={p[2]}",
            f"--dashboard-agent-listen-port={p[3]}",
            f"--dashboard-agent-grpc-port={p[4]}",
            f"--runtime-env-agent-port={p[5]}",
        ]

    def start(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        head = self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self._ports[2]}",
                *self._node_ports(0),
            ],
        )
        self._wait_started(head, deadline)
        worker = self._start(
            "worker", [f"--address=127.0.0.1:{self.gcs_port}", *self._node_ports(1)]
        )
        self._wait_started(worker, deadline)
        while True:
            alive = [n for n in self.list_nodes() if n.get("state") == "ALIVE"]
            if len(alive) == 2:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"2 nodes not alive after {timeout_s:.0f}s: {alive}")
            time.sleep(1)

    def _wait_started(self, node: Node, deadline: float) -> None:
        while "block forever" not in node.log.read_text(errors="replace"):
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start ({node.name}) exited: {self.tail(node)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray start ({node.name}) not up: {self.tail(node)}")
            time.sleep(0.5)

    @staticmethod
    def tail(node: Node, n: int = 3000) -> str:
        return node.log.read_text(errors="replace")[-n:]

    def list_nodes(self) -> list[dict[str, Any]]:
        import httpx

        try:
            r = httpx.get(f"{self.dashboard}/api/v0/nodes", timeout=30)
            r.raise_for_status()
        except httpx.HTTPError:
            return []
        return r.json()["data"]["result"]["result"]

    def pids(self) -> set[int]:
        """Every live process started by our two `ray start`s (descendants included)."""
        return process_tree(
            {n.proc.pid for n in self.nodes},
            {n.proc.pid for n in self.nodes if n.proc.returncode is None},
        )

    def stop(self, grace_s: float = 45) -> list[int]:
        """SIGTERM each `ray start --block` (it drains and stops its node), then SIGKILL
        whatever of ours is left. Returns the pids that needed SIGKILL."""
        for node in reversed(self.nodes):  # worker first
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = sorted(self.pids())
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        return left

    def non_loopback_sockets(self) -> list[str]:
        return non_loopback_sockets(self.pids())


def process_tree(groups: set[int], live_roots: set[int]) -> set[int]:
    """Live pids in the process groups `groups` (leaders started with start_new_session),
    plus every descendant of `live_roots` (in case one left its group).

    Only roots not yet reaped are walked: a reaped pid may already belong to someone else.
    """
    children: dict[int, list[int]] = {}
    pgids: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry))
        pgids[int(entry)] = int(stat[2])
    found = {p for p, g in pgids.items() if g in groups}
    todo = list(live_roots)
    while todo:
        p = todo.pop()
        if p in pgids:
            found.add(p)
        todo.extend(c for c in children.get(p, ()) if c not in found)
    return found


def non_loopback_sockets(pids: set[int]) -> list[str]:
    """TCP sockets (listening or connected) of `pids` that touch anything but loopback,
    from `ss -tanpH` (empty when there is no `ss` to ask)."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 6 or "pid=" not in line:
            continue
        state, local, peer = cols[0], cols[3], cols[4]
        owners = {int(x.split(",")[0]) for x in line.split("pid=")[1:]}
        if not owners & pids:
            continue
        hosts = [local] if state == "LISTEN" else [local, peer]
        if not all(_loopback(h.rsplit(":", 1)[0]) for h in hosts):
            bad.append(" ".join(cols))
    return bad


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    return host.startswith(("127.", "::ffff:127.")) or host == "::1"


# ------------------------------------------------------------------ config


def derive_config(http_port: int, batch_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """serve_config.yaml with tiny models, loopback HTTP, short autoscaling; shares kept.

    Models and GPU shares are the app's `args`. The autoscaling delays and new batch
    sizes go in `deployments:` overrides: Serve applies those to running replicas,
    where a change to `args` would replace every replica.
    """
    import yaml

    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {**cfg.get("http_options", {}), "host": "127.0.0.1", "port": http_port}
    (app,) = cfg["applications"]
    runtime_env = app.setdefault("runtime_env", {})
    # Replicas import this checkout's graph and deployments.
    runtime_env.setdefault("env_vars", {})["PYTHONPATH"] = str(ROOT)
    runtime_env["worker_process_setup_hook"] = LOOPBACK_HOOK
    overrides = []
    for name, file in TINY_FILES.items():
        args = app["args"][ARGS_KEY[name]]
        if not args.get("num_gpus"):
            raise ValueError(f"{name}: serve_config.yaml has no GPU share to keep")
        args["model"] = str(ROOT / "models" / "tiny" / file)
        override: dict[str, Any] = {"name": name, "autoscaling_config": dict(AUTOSCALING)}
        if batch_sizes and name in batch_sizes:
            # A partial user_config: the replica merges it over the config it runs.
            override["user_config"] = {"max_batch_size": batch_sizes[name]}
        overrides.append(override)
    app["deployments"] = overrides
    return cfg


# ------------------------------------------------------------------ serve CLI and REST


class Serve:
    def __init__(self, cluster: Cluster, http_port: int):
        self.cluster = cluster
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}"

    async def cli(self, *args: str, timeout_s: float = 180) -> str:
        def call() -> str:
            r = subprocess.run(
                [str(SERVE), *args, "--address", self.cluster.dashboard],
                capture_output=True,
                text=True,
                env=ray_env(),
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
            if r.returncode:
                raise RuntimeError(f"serve {' '.join(args)} failed: {r.stdout}\n{r.stderr}")
            return r.stdout

        return await asyncio.to_thread(call)

    async def deploy(self, config: dict[str, Any], path: Path) -> None:
        import yaml

        path.write_text(yaml.safe_dump(config, sort_keys=False))
        await self.cli("deploy", str(path))

    async def status(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(await self.cli("status")) or {}

    async def details(self, client: Any) -> dict[str, Any]:
        """Deployment name -> its details (status, config, replicas with node ids)."""
        r = await client.get(f"{self.cluster.dashboard}/api/serve/applications/", timeout=30)
        r.raise_for_status()
        app = r.json()["applications"].get("voxgraph") or {}
        return app.get("deployments", {})


def all_healthy(status: dict[str, Any]) -> bool:
    app = (status.get("applications") or {}).get("voxgraph") or {}
    deps = app.get("deployments") or {}
    return (
        app.get("status") == "RUNNING"
        and set(deps) == {"Ingress", *MODELS}
        and all(d.get("status") == "HEALTHY" for d in deps.values())
    )


def running(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]


def replica_ids(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["replica_id"]: {
            "deployment": name,
            "actor_id": r.get("actor_id"),
            "pid": r.get("pid"),
            "node_id": r.get("node_id"),
            "start_time_s": r.get("start_time_s"),
        }
        for name, dep in details.items()
        for r in running(dep)
    }


# ------------------------------------------------------------------ load


@dataclass
class Load:
    """Closed-loop clients posting one clip each, counting outcomes."""

    url: str
    audio: bytes
    concurrency: int
    outcomes: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    last_failure_s: float | None = None
    _t0: float = field(default_factory=time.monotonic)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def _client(self, client: Any) -> None:
        while not self._stop.is_set():
            try:
                r = await client.post(
                    self.url + ROUTE,
                    files={"file": ("clip.wav", self.audio, "audio/wav")},
                    timeout=120,
                )
                key = str(r.status_code)
                if r.status_code == 200 and "segments" not in r.json():
                    key = "200-malformed"
                if key != "200" and len(self.errors) < 20:
                    self.errors.append(f"{key} {r.text[:200]}")
            except Exception as e:  # any transport failure is a failed request
                key = type(e).__name__
                if len(self.errors) < 20:
                    self.errors.append(f"{key}: {e}")
            self.outcomes[key] += 1
            if key != "200":
                self.last_failure_s = round(time.monotonic() - self._t0, 1)

    def start(self, client: Any) -> None:
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._client(client)) for _ in range(self.concurrency)]

    async def stop(self) -> dict[str, Any]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        ok = self.outcomes.get("200", 0)
        return {
            "requests": sum(self.outcomes.values()),
            "ok": ok,
            "failed": sum(self.outcomes.values()) - ok,
            "outcomes": dict(self.outcomes),
            "last_failure_s": self.last_failure_s,
            "errors": self.errors,
        }


# ------------------------------------------------------------------ the scenario


async def _wait(predicate, timeout_s: float, what: str, poll_s: float = 1.0):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout_s:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")


async def _wait_healthy(serve: Serve, client: Any, timeout_s: float) -> None:
    async def ok() -> bool:
        try:
            if not all_healthy(await serve.status()):
                return False
            r = await client.get(serve.url + "/health", timeout=30)
            return r.status_code == 200
        except Exception:
            return False

    await _wait(ok, timeout_s, "serve status HEALTHY and /health 200", poll_s=2)


async def scenario(cluster: Cluster, workdir: Path, report: dict[str, Any]) -> None:
    import httpx

    from voxgraph.audio import encode_wav
    from voxgraph.synth import speechlike

    http_port = free_ports(1)[0]
    serve = Serve(cluster, http_port)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        nodes = {n["node_id"]: n for n in cluster.list_nodes()}
        report["nodes"] = {
            nid: {
                "head": n.get("is_head_node"),
                "ip": n.get("node_ip"),
                "resources": n.get("resources_total"),
            }
            for nid, n in nodes.items()
        }

        # ---- deploy
        t0 = time.monotonic()
        config = derive_config(http_port)
        await serve.deploy(config, workdir / "cluster-serve.yaml")
        await _wait_healthy(serve, client, timeout_s=420)
        report["deploy_to_healthy_s"] = round(time.monotonic() - t0, 1)
        details = await serve.details(client)
        report["initial_placement"] = {
            name: [r["node_id"] for r in running(details[name])] for name in details
        }
        report["socket_check"] = "ss -tanp" if shutil.which("ss") else "unchecked: no ss"
        report["non_loopback_sockets"] = cluster.non_loopback_sockets()

        # ---- burst: scale up, on both nodes
        audio = encode_wav(speechlike(8.0, seed=0))
        burst = Load(serve.url, audio, concurrency=24)
        t_load = time.monotonic()
        burst.start(client)
        seen: dict[str, Any] = {"decided": None, "running": None}

        async def scaled_up() -> dict[str, Any] | None:
            d = await serve.details(client)
            now = round(time.monotonic() - t_load, 1)
            for name in MODELS:
                if seen["decided"] is None and d[name].get("target_num_replicas", 1) > 1:
                    seen["decided"] = (name, now)
                if len(running(d[name])) > 1:
                    seen["running"] = (name, now)
                    return d
            return None

        peak = await _wait(scaled_up, 180, "a model deployment running 2 replicas")
        # Keep the load a little longer so the new replica serves (and loads) for real.
        await asyncio.sleep(8)
        peak = await serve.details(client)
        report["non_loopback_sockets"] += cluster.non_loopback_sockets()  # under load
        report["burst"] = await burst.stop()
        report["burst"]["seconds"] = round(time.monotonic() - t_load, 1)
        t_stop = time.monotonic()
        report["scale_up"] = {
            "deployment": seen["running"][0],
            "decision_s": seen["decided"][1] if seen["decided"] else None,
            "second_replica_running_s": seen["running"][1],
            "replicas_at_peak": {n: len(running(peak[n])) for n in MODELS},
        }
        report["peak_placement"] = {
            name: [r["node_id"] for r in running(peak[name])] for name in peak
        }

        # ---- scale down after the load stops
        async def scaled_down() -> bool:
            d = await serve.details(client)
            return all(
                d[n].get("target_num_replicas") == 1 and len(d[n].get("replicas", [])) == 1
                for n in MODELS
            )

        await _wait(scaled_down, 180, "every model deployment back to 1 replica")
        report["scale_down_s"] = round(time.monotonic() - t_stop, 1)
        await _wait_healthy(serve, client, timeout_s=120)

        # ---- in-place user_config update while requests flow
        before = await serve.details(client)
        new_batch = {
            n: max(1, before[n]["deployment_config"]["user_config"]["max_batch_size"] // 2)
            for n in MODELS
        }
        # Two clients stay under target_ongoing_requests: no autoscaling during the update.
        steady = Load(serve.url, audio, concurrency=2)
        steady.start(client)
        await asyncio.sleep(3)
        t_update = time.monotonic()
        await serve.deploy(derive_config(http_port, new_batch), workdir / "cluster-update.yaml")

        async def updated() -> dict[str, Any] | None:
            d = await serve.details(client)
            done = all(
                d[n]["deployment_config"]["user_config"]["max_batch_size"] == new_batch[n]
                and d[n]["status"] == "HEALTHY"
                for n in MODELS
            )
            return d if done and all_healthy(await serve.status()) else None

        after = await _wait(updated, 180, "the new user_config rolled out")
        report["update_rollout_s"] = round(time.monotonic() - t_update, 1)
        await asyncio.sleep(3)
        update_load = await steady.stop()
        ids_before, ids_after = replica_ids(before), replica_ids(after)
        dead_before = {r["replica_id"] for n in MODELS for r in before[n]["recent_dead_replicas"]}
        dead_after = {r["replica_id"] for n in MODELS for r in after[n]["recent_dead_replicas"]}
        report["update"] = {
            **update_load,
            "max_batch_size": {
                n: [
                    before[n]["deployment_config"]["user_config"]["max_batch_size"],
                    after[n]["deployment_config"]["user_config"]["max_batch_size"],
                ]
                for n in MODELS
            },
            "replicas_unchanged": ids_before == ids_after,
            "replicas_before": ids_before,
            "replicas_after": ids_after,
            "replicas_died": sorted(dead_after - dead_before),
        }

        # ---- final state
        final = await serve.status()
        report["final_status"] = {
            "app": final["applications"]["voxgraph"]["status"],
            "deployments": {
                n: d["status"] for n, d in final["applications"]["voxgraph"]["deployments"].items()
            },
            "proxies": final.get("proxies", {}),
            "healthy": all_healthy(final),
        }
        report["non_loopback_sockets"] += cluster.non_loopback_sockets()


def run(workdir: Path | None = None, keep_logs: bool = False) -> dict[str, Any]:
    """The whole scenario; always tears down what it started. Returns the report."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="voxgraph-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"workdir": str(workdir)}
    t0 = time.monotonic()
    cluster = Cluster(workdir)
    report["ray_temp_dir"] = str(cluster.temp_dir)
    ok = False
    try:
        cluster.start()
        report["cluster_start_s"] = round(time.monotonic() - t0, 1)
        asyncio.run(scenario(cluster, workdir, report))
        ok = True
    finally:
        t_stop = time.monotonic()
        report["killed_after_grace"] = cluster.stop()
        report["leftover_pids"] = sorted(cluster.pids())
        report["teardown_s"] = round(time.monotonic() - t_stop, 1)
        report["total_s"] = round(time.monotonic() - t0, 1)
        (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
        if ok and not keep_logs:
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    return report


def verify(report: dict[str, Any]) -> None:
    """What a cluster deployment must show, as assertions with the evidence in each message."""
    heads = [nid for nid, n in report["nodes"].items() if n["head"]]
    assert len(report["nodes"]) == 2 and len(heads) == 1, report["nodes"]
    for nid, n in report["nodes"].items():
        assert n["resources"].get("GPU") == 1, (nid, n)
        assert n["ip"] == "127.0.0.1", (nid, n)

    def model_nodes(placement: dict[str, list[str]]) -> set[str]:
        return {nid for name in MODELS for nid in placement.get(name, [])}

    assert model_nodes(report["peak_placement"]) == set(report["nodes"]), report["peak_placement"]

    up = report["scale_up"]
    assert max(up["replicas_at_peak"].values()) >= 2, up
    assert report["scale_down_s"] is not None
    # A replica added by autoscaling takes traffic only once its model is loaded
    # (ModelHost.reconfigure holds it back), so the burst loses nothing.
    burst = report["burst"]
    assert burst["ok"] > 0 and burst["failed"] == 0, burst

    upd = report["update"]
    assert upd["requests"] > 0, upd
    assert upd["failed"] == 0, f"requests failed during the in-place update: {upd}"
    for name, (old, new) in upd["max_batch_size"].items():
        assert new != old, (name, old, new)
    assert upd["replicas_unchanged"], (upd["replicas_before"], upd["replicas_after"])
    assert not upd["replicas_died"], upd["replicas_died"]

    assert report["final_status"]["healthy"], report["final_status"]
    assert len(report["final_status"]["proxies"]) == 2, report["final_status"]["proxies"]
    assert not report["non_loopback_sockets"], report["non_loopback_sockets"]
    assert not report["leftover_pids"], report["leftover_pids"]


def summary(report: dict[str, Any]) -> str:
    up, upd = report.get("scale_up", {}), report.get("update", {})
    burst = report.get("burst", {})
    return (
        f"total {report.get('total_s')}s (cluster {report.get('cluster_start_s')}s, "
        f"deploy->healthy {report.get('deploy_to_healthy_s')}s, teardown "
        f"{report.get('teardown_s')}s); scale-up {up.get('deployment')}: decision "
        f"{up.get('decision_s')}s, 2nd replica running {up.get('second_replica_running_s')}s; "
        f"scale-down {report.get('scale_down_s')}s; burst {burst.get('requests')} requests, "
        f"{burst.get('failed')} failed {burst.get('outcomes')} (last failure at "
        f"{burst.get('last_failure_s')}s); update rollout "
        f"{report.get('update_rollout_s')}s, {upd.get('requests')} requests, "
        f"{upd.get('failed')} failed"
    )


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args()
    report = run(args.workdir, keep_logs=args.keep_logs)
    print(json.dumps(report, indent=1, default=str))
    print(summary(report))
    verify(report)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
