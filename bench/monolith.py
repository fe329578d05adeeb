"""The seed-style baseline: one process, three NeMo models, no Ray, no batching.

    .venv/bin/python bench/monolith.py --models tiny [--port 8100] [--mode threads|serial]

The same three `.nemo` files (or hub names) are loaded in this process and served
by the very same HTTP app, operations and request walk as the graph
(`deployments/http_app.py`, `voxgraph.service`, `voxgraph.pipeline`), over
in-process backends (`voxgraph.local`) instead of Ray Serve handles: every model
call is a batch of one. Outputs are therefore the graph's, and timings differ
only by what the graph adds (proxy, handles, serialization, batching across
requests, replicas).

`--mode threads` (default): each model runs one call at a time, but request A may
be in ASR while request B is in the diarizer (FastAPI with sync handlers, the
strongest fair form of the seed). `--mode serial`: one model call at a time in the
whole process, as a single-threaded seed server.

`Monolith` is importable: bench/overhead.py and the tests call it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.http_app import build_api
from voxgraph.local import InProcessBackends
from voxgraph.pipeline import ROLES
from voxgraph.service import VoxgraphService
from voxgraph.settings import Settings


class Monolith(VoxgraphService):
    """The service's operations over the three models loaded in this process."""

    name = "voxgraph-monolith"

    def __init__(
        self,
        models: dict[str, str],
        device: str | None = None,
        precision: str | dict[str, str] = "fp32",
        settings: dict[str, Any] | None = None,
        exclusive: bool = False,
    ):
        self.device = device or "cpu"
        # One precision for all, or per role (serve_config.yaml runs only ASR in bf16).
        self.precision = (
            dict(precision) if isinstance(precision, dict) else dict.fromkeys(ROLES, precision)
        )
        super().__init__(InProcessBackends(exclusive=exclusive), Settings.load(settings))
        self.models = dict(models)

    def load(self) -> Monolith:
        """Load the three models, one after another (time per model in `load_seconds`)."""
        if self.device == "auto":
            from voxgraph.models import pick_device

            self.device = pick_device()
        self.backends.load(self.models, self.device, self.precision)  # type: ignore[arg-type]
        return self

    @property
    def runners(self) -> dict[str, Any]:
        return dict(self.backends.runners)  # type: ignore[attr-defined]

    @property
    def load_seconds(self) -> dict[str, float]:
        return dict(self.backends.load_seconds)  # type: ignore[attr-defined]

    def run(self, operation: str, audio: bytes, **options: Any) -> Any:
        """Call an operation synchronously (for in-process timing)."""
        return asyncio.run(getattr(self, operation)(audio, **options))


def create_app(mono: Monolith) -> FastAPI:
    """The graph's own HTTP app, routes and error shapes, over `mono`."""
    return build_api(mono)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="tiny | real | a directory with the 3 .nemo")
    p.add_argument("--asr", help="ASR .nemo path or hub name (overrides --models)")
    p.add_argument("--diarizer", help="diarizer .nemo path or hub name")
    p.add_argument("--embedder", help="embedder .nemo path or hub name")
    p.add_argument("--port", type=int, default=8100, help="port on 127.0.0.1 (default 8100)")
    p.add_argument("--mode", choices=("threads", "serial"), default="threads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--precision",
        type=parse_precision,
        default="fp32",
        help="fp32 | bf16 | fp16 for all models, or per role: asr=bf16,diarizer=fp32 "
        "(autocast on CUDA only, as in the graph)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default); the graph's CPU replicas run with 1",
    )
    args = p.parse_args(argv)

    import torch
    import uvicorn

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    models: dict[str, str] = {}
    if args.models:
        from bench.common import model_paths

        models = model_paths(args.models)
    for role in ROLES:
        if getattr(args, role):
            models[role] = getattr(args, role)
    if set(models) != set(ROLES):
        p.error("give --models or all of --asr, --diarizer, --embedder")

    mono = Monolith(
        models, device=args.device, precision=args.precision, exclusive=args.mode == "serial"
    )
    # Load in the background so /health answers 503 meanwhile, like the graph.
    threading.Thread(target=_load_logged, args=(mono,), daemon=True).start()
    uvicorn.run(create_app(mono), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


def parse_precision(text: str) -> str | dict[str, str]:
    """`bf16` (every model) or `asr=bf16,diarizer=fp32,embedder=fp32`."""
    allowed = ("fp32", "bf16", "fp16")
    if "=" not in text:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"precision must be one of {allowed}")
        return text
    out: dict[str, str] = {}
    for part in text.split(","):
        role, _, value = part.partition("=")
        if role.strip() not in ROLES or value.strip() not in allowed:
            raise argparse.ArgumentTypeError(f"bad precision item {part!r}")
        out[role.strip()] = value.strip()
    return out


def _load_logged(mono: Monolith) -> None:
    t0 = time.perf_counter()
    try:
        mono.load()
    except Exception as e:
        print(f"monolith: loading failed: {e}", file=sys.stderr, flush=True)
        return
    print(
        f"monolith: ready on {mono.device} in {time.perf_counter() - t0:.1f}s "
        f"({', '.join(f'{r} {s:.1f}s' for r, s in mono.load_seconds.items())})",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
