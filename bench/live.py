"""Live sessions at real time: how many concurrent realtime sessions this machine holds.

    .venv/bin/python bench/live.py                          # tiny graph here, N = 1, 2, 4, ...
    .venv/bin/python bench/live.py --seconds 60 --max-sessions 16
    .venv/bin/python bench/live.py --url http://127.0.0.1:8000   # a running service
    .venv/bin/python bench/live.py --gpu --models real           # serve_config.yaml's GPU shares

Starts the graph (configs/tiny.yaml's CPU layout, or with --gpu serve_config.yaml's
fractional GPU shares) on 127.0.0.1, or takes --url. Then for N = 1, 2, 4, 8, ...
N clients each open a session on `/v1/realtime?intent=transcription` at once and
stream a different synthetic conversation (bench/common.conversation, 2-4
speakers) as PCM16 at 24 kHz in 100 ms chunks, paced by the wall clock at real
time (voxgraph.live_client, the client `voxgraph live` uses). Per step:

- delay: per item (turn), the arrival of its `...transcription.completed` minus
  the arrival of its `input_audio_buffer.speech_stopped` (server VAD), or minus
  the client's `input_audio_buffer.commit` (--manual-commit-s): p50, p95, max;
- lag: the most any chunk went out after its wall-clock due time (a server that
  stops reading makes the sender fall behind real time), over all sessions;
- drain: the last transcript's arrival after the end of a session's audio (the
  backlog a session ends with), the worst session's;
- errors (`error` / `failed` events) and sessions that were refused or closed.

A step holds real time when its p95 delay is at most --max-delay, no sender fell
more than --max-lag behind, and every session finished cleanly. The ramp stops at
the first step that does not (or at --max-sessions); the last step that held is
the figure: the most sessions held at real time here. Every figure in the table
comes from this one run, with the machine's load beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    SR,
    conversation,
    fmt,
    graph_args,
    load_avg,
    machine,
    model_paths,
    percentile,
    print_machine,
    run_graph,
    table,
)
from voxgraph import live_client as lc
from voxgraph.client import VoxgraphClientError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="use a running service instead of starting the graph")
    p.add_argument("--api-key", help="Bearer key for --url (default: $VOXGRAPH_API_KEY)")
    p.add_argument("--models", default="tiny", help="tiny | real | a directory (default tiny)")
    p.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve_config.yaml's GPU layout (default: when CUDA is available)",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="audio per session (default 30)")
    p.add_argument("--max-sessions", type=int, default=64, help="last N of the ramp (default 64)")
    p.add_argument("--sessions", help="N values instead of the ramp, e.g. 1,4,16")
    p.add_argument("--rate", type=int, choices=lc.RATES, default=24000, help="PCM16 rate sent")
    p.add_argument(
        "--manual-commit-s", type=float, help="no server VAD: commit every S seconds of audio"
    )
    p.add_argument("--identify", action="store_true", help="name speakers from the library")
    p.add_argument("--max-delay", type=float, default=3.0, help="p95 delay bound, s (default 3)")
    p.add_argument("--max-lag", type=float, default=0.5, help="sender lag bound, s (default 0.5)")
    p.add_argument(
        "--finish-timeout", type=float, default=300.0, help="wait for the last transcript, s"
    )
    p.add_argument("--pause", type=float, default=3.0, help="idle seconds between steps")
    p.add_argument("--json", help="also write the figures to this file")
    return p


# ----------------------------------------------------------------------------- one session


@dataclass
class SessionResult:
    delays: list[float] = field(default_factory=list)
    items: int = 0
    segments: int = 0
    errors: int = 0
    lag_s: float = 0.0
    drain_s: float | None = None
    failure: str | None = None  # refused, closed, timed out: the session did not finish


def item_delays(
    events: list[lc.LiveEvent], commits: list[tuple[str, float]], manual: bool
) -> list[float]:
    """Seconds from the end of each turn to its transcript, on the client's clock.

    Server VAD: `speech_stopped` -> `completed` of the same item_id. Manual commits:
    the k-th `committed` answers the k-th client commit (the server handles a
    session's events in order), so commit sent -> `completed` of that item.
    """
    completed = {e.item_id: e.t for e in events if e.type == lc.COMPLETED}
    if manual:
        committed = [e.item_id for e in events if e.type == lc.COMMITTED]
        ends = {item: t for item, (_, t) in zip(committed, commits, strict=False)}
    else:
        ends = {e.item_id: e.t for e in events if e.type == lc.SPEECH_STOPPED}
    return [completed[i] - t for i, t in ends.items() if i in completed]


async def one_session(
    url: str, api_key: str | None, pcm: bytes, options: lc.LiveOptions, finish_timeout: float
) -> SessionResult:
    client = lc.LiveClient(url, api_key=api_key, open_timeout=60, finish_timeout=finish_timeout)
    out = SessionResult()
    events: list[lc.LiveEvent] = []
    session: lc.LiveSession | None = None
    try:
        session = await client.connect(options)
        async with session:
            async for event in client.stream(pcm, session=session):
                events.append(event)
    except lc.SessionClosed as e:
        out.failure = f"closed {e.code}"
    except (VoxgraphClientError, OSError) as e:
        out.failure = type(e).__name__
    out.items = sum(e.type == lc.COMPLETED for e in events)
    out.segments = sum(e.type == lc.SEGMENT for e in events)
    out.errors = sum(e.type in (lc.ERROR, lc.FAILED) for e in events)
    if session is not None:
        stats = session.stats
        out.lag_s = stats.max_lag_s
        out.delays = item_delays(events, stats.commits, not options.server_vad)
        done = [e.t for e in events if e.type == lc.COMPLETED]
        if done and stats.finished_t is not None:
            out.drain_s = max(done) - stats.finished_t
    return out


# ----------------------------------------------------------------------------- one step


def recording(i: int, seconds: float, rate: int, cache: dict[int, bytes]) -> bytes:
    """Session i's conversation as PCM16 at `rate` (2-4 speakers, its own seed)."""
    if i not in cache:
        x = conversation(seconds, seed=1000 + i, speakers=2 + i % 3)
        cache[i] = lc.pcm16_from_float(x, SR, rate)
    return cache[i]


def run_step(n: int, url: str, args: argparse.Namespace, cache: dict[int, bytes]) -> dict:
    options = lc.LiveOptions(
        rate=args.rate, manual_commit_s=args.manual_commit_s, identify=args.identify
    )
    pcms = [recording(i, args.seconds, args.rate, cache) for i in range(n)]

    async def all_sessions() -> list[SessionResult]:
        return await asyncio.gather(
            *(one_session(url, args.api_key, p, options, args.finish_timeout) for p in pcms)
        )

    load0 = load_avg()
    t0 = time.monotonic()
    results = asyncio.run(all_sessions())
    delays = [d for r in results for d in r.delays]
    failures = [r.failure for r in results if r.failure]
    drains = [r.drain_s for r in results if r.drain_s is not None]
    step = {
        "sessions": n,
        "items": sum(r.items for r in results),
        "segments": sum(r.segments for r in results),
        "p50_delay_s": percentile(delays, 50),
        "p95_delay_s": percentile(delays, 95),
        "max_delay_s": max(delays) if delays else math.nan,
        "max_lag_s": max(r.lag_s for r in results),
        "max_drain_s": max(drains) if drains else math.nan,
        "errors": sum(r.errors for r in results),
        "failed_sessions": len(failures),
        "failures": sorted(set(failures)),
        "wall_s": time.monotonic() - t0,
        "load": f"{load0} -> {load_avg()}",
    }
    step["held"] = bool(
        delays
        and not failures
        and step["p95_delay_s"] <= args.max_delay
        and step["max_lag_s"] <= args.max_lag
    )
    print(
        f"  N={n:<3d} {step['items']:4d} items  delay p50 {fmt(step['p50_delay_s'], 2)} s "
        f"p95 {fmt(step['p95_delay_s'], 2)} s max {fmt(step['max_delay_s'], 2)} s  "
        f"lag {fmt(step['max_lag_s'], 2)} s  drain {fmt(step['max_drain_s'], 2)} s  "
        f"errors {step['errors']}  failed {len(failures)} {step['failures'] or ''}  "
        f"{'held' if step['held'] else 'NOT held'}  (load {step['load']})",
        flush=True,
    )
    return step


def ramp(args: argparse.Namespace) -> list[int]:
    if args.sessions:
        return [int(x) for x in args.sessions.split(",") if x.strip()]
    out, n = [], 1
    while n <= args.max_sessions:
        out.append(n)
        n *= 2
    return out


# ----------------------------------------------------------------------------- main


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print_machine(info)
    gpu = _cuda() if args.gpu is None else args.gpu
    if gpu and not _cuda():
        raise SystemExit("--gpu: no CUDA device here")
    steps: list[dict[str, Any]] = []
    cache: dict[int, bytes] = {}
    with contextlib.ExitStack() as stack:
        if args.url:
            url, ready = args.url, None
        else:
            paths = model_paths(args.models)
            server = stack.enter_context(run_graph(paths, gpu=gpu, args=graph_args(paths, gpu)))
            url, ready = server.url, server.ready_s
        turns = f"commit every {args.manual_commit_s:g} s" if args.manual_commit_s else "server VAD"
        given = f"ready in {ready:.1f}s" if ready is not None else "given"
        print(
            f"# service: {url} ({given}); {args.seconds:g} s per session, {args.rate} Hz, {turns}",
            flush=True,
        )
        print("# warm-up, not in the table (first calls load kernels and fill caches):")
        run_step(1, url, args, cache)
        time.sleep(args.pause)
        for n in ramp(args):
            step = run_step(n, url, args, cache)
            steps.append(step)
            if not step["held"] and not args.sessions:
                break
            time.sleep(args.pause)

    held = [s["sessions"] for s in steps if s["held"]]
    best = max(held) if held else 0
    mode = "commit→completed" if args.manual_commit_s else "speech_stopped→completed"
    print(
        f"\nlive sessions at real time: {args.seconds:g} s of conversation each, "
        f"delay = {mode} per item; held = p95 delay <= {args.max_delay:g} s, "
        f"lag <= {args.max_lag:g} s, no failed session\n"
    )
    headers = ["N", "items", "p50 s", "p95 s", "max s", "lag s", "drain s", "errors"]
    headers += ["failed", "held", "load 1m"]
    rows = [
        [
            s["sessions"],
            s["items"],
            fmt(s["p50_delay_s"], 2),
            fmt(s["p95_delay_s"], 2),
            fmt(s["max_delay_s"], 2),
            fmt(s["max_lag_s"], 2),
            fmt(s["max_drain_s"], 2),
            s["errors"],
            s["failed_sessions"],
            "yes" if s["held"] else "**no**",
            s["load"].split(" -> ")[0].split("/")[0],
        ]
        for s in steps
    ]
    print(table(headers, rows))
    print(f"\n# most sessions held at real time on this machine: {best}")
    print(f"# load at end: {load_avg()}")
    out = {
        "machine": info,
        "args": vars(args),
        "device": "cuda" if gpu else "cpu",
        "steps": steps,
        "most_sessions_held": best,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
