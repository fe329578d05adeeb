"""Ray Serve's request path, set for replicas that never block their event loop.

Every voxgraph replica runs inference in worker threads (`asyncio.to_thread`),
so nothing gains from Serve's default of a second event loop per replica for
user code and a third for each process's handle routers: those loops only add
a thread hop and a wake-up to every call, in the proxy, the ingress and each
model replica (bench/RESULTS.md, "Where a request's CPU goes"). Log lines go
to Serve's log files only, not copied to stderr, which Ray's log monitor would
read and forward again. (They are not buffered: an operator following one
request id through the deployments needs its lines at once.) Two idle costs,
the controller's loop and the metrics export, run less often (bench/RESULTS.md:
a graph at rest used 0.17 cores before, 0.145 after).

Applied to every deployment's actors (graph.py) and, where voxgraph starts Ray
itself (scripts/serve_local.py, the benchmarks), to the proxy and controller
too. These are Serve's own variables (its throughput-optimized mode,
RAY_SERVE_THROUGHPUT_OPTIMIZED, sets the first three the same way); any of
them set in the environment wins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    # Idle costs, paid per second whether or not requests come: the controller's
    # reconcile loop (default every 0.1 s) and the export of Serve's cached metrics
    # (default every 0.1 s) both run every half second or second instead.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}


def serve_env() -> dict[str, str]:
    """SERVE_ENV, with any of its variables already set in this environment winning."""
    return {k: os.environ.get(k, v) for k, v in SERVE_ENV.items()}


@contextlib.contextmanager
def for_ray_start() -> Iterator[None]:
    """SERVE_ENV set (unless set) while Ray starts here: its daemons and workers inherit it.

    This process gets its own environment back afterwards: a driver's handles need
    their router's own loop to be called from synchronous code (`.result()`).
    """
    saved = {k: os.environ.get(k) for k in SERVE_ENV}
    for k, v in SERVE_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
