"""Keep Serve's inter-deployment gRPC server on loopback when the service is local-only.

Ray Serve 2.60 starts that server on `[::]:0` (every interface) in each replica,
with no setting to change it. `scripts/serve_local.py` installs this as the
replicas' `worker_process_setup_hook` whenever the HTTP host is 127.0.0.1, so a
local demo or test run listens on nothing but loopback.
"""

from __future__ import annotations

from typing import Any

HOOK = "deployments.loopback.bind_grpc_to_loopback"


def bind_grpc_to_loopback() -> None:
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "_voxgraph_loopback", False):
        return

    def add_port(server: Any, address: str) -> int:
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    add_port._voxgraph_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
