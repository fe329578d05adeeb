"""Streamed transcription of a long recording: time to first text vs time to the whole.

One synthetic conversation (bench/common.conversation, default 60 min) goes through
the in-process baseline (bench/monolith.py: the graph's service, walk and HTTP app
over in-process models, tiny by default) over its ASGI app:

- `stream=true`: time to the first `transcript.text.delta`, time to
  `transcript.text.done`, number of events;
- the same file without stream: total time.

The ratio first-event / non-streamed total is what a client waits before it sees
text, as a share of what it waited before. Both figures come from the same run.

    .venv/bin/python bench/stream.py                      # 60 min, tiny models, CPU
    .venv/bin/python bench/stream.py --minutes 10 --format diarized_json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    conversation,
    fmt,
    free_port,
    load_avg,
    machine,
    model_paths,
    print_machine,
    table,
    wav_bytes,
)
from voxgraph.windows import plan_windows

ROUTE = "/v1/audio/transcriptions"


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """The app on a local socket (uvicorn in a thread): httpx's ASGI transport buffers
    a whole response, so a stream's timing needs a real server."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


async def streamed(url: str, audio: bytes, form: dict[str, str]) -> dict[str, Any]:
    """Post with stream=true and time the events as they arrive."""
    out: dict[str, Any] = {"first_s": None, "events": 0, "segments": 0}
    async with httpx.AsyncClient(base_url=url, timeout=None) as c:
        t0 = time.perf_counter()
        files = {"file": ("long.wav", audio, "audio/wav")}
        async with c.stream("POST", ROUTE, files=files, data={**form, "stream": "true"}) as r:
            if r.status_code != 200:
                raise RuntimeError(f"stream answered {r.status_code}: {await r.aread()!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line.removeprefix("data: "))
                out["events"] += 1
                kind = event["type"]
                if kind == "transcript.text.delta" and out["first_s"] is None:
                    out["first_s"] = time.perf_counter() - t0
                elif kind == "transcript.text.segment":
                    out["segments"] += 1
                elif kind == "transcript.text.done":
                    out["done_s"] = time.perf_counter() - t0
                    out["text"] = event["text"]
                elif kind == "error":
                    raise RuntimeError(f"stream failed: {event['error']}")
    return out


async def whole(url: str, audio: bytes, form: dict[str, str]) -> tuple[float, str]:
    async with httpx.AsyncClient(base_url=url, timeout=None) as c:
        t0 = time.perf_counter()
        r = await c.post(ROUTE, files={"file": ("long.wav", audio, "audio/wav")}, data=form)
        wall = time.perf_counter() - t0
    r.raise_for_status()
    return wall, r.json()["text"]


def run(minutes: float, models: str, fmt_: str, threads: int, seed: int) -> dict[str, Any]:
    """One measurement: the streamed and the whole answer of the same file, same process."""
    import torch

    from bench.monolith import Monolith

    if threads > 0:
        torch.set_num_threads(threads)
    return measure(Monolith(model_paths(models), device="auto").load(), minutes, fmt_, seed)


def measure(mono: Any, minutes: float, fmt_: str = "json", seed: int = 7) -> dict[str, Any]:
    """`run` over a loaded bench.monolith.Monolith."""
    from bench.monolith import create_app

    audio = wav_bytes(conversation(minutes * 60, seed=seed))
    form = {"response_format": fmt_}
    s = mono.settings
    windows = len(plan_windows(minutes * 60, s.asr_window_s, s.asr_overlap_s))
    with served(create_app(mono)) as url:
        # Warm up once (allocator, kernels) on a short clip, so neither run pays it.
        asyncio.run(whole(url, wav_bytes(conversation(20.0, seed=seed)), form))
        stream = asyncio.run(streamed(url, audio, form))
        total, text = asyncio.run(whole(url, audio, form))
    return {
        "minutes": minutes,
        "format": fmt_,
        "device": mono.device,
        "asr_windows": windows,
        "window_s": s.asr_window_s,
        "in_flight": s.max_windows_in_flight,
        "first_s": stream["first_s"],
        "done_s": stream["done_s"],
        "total_s": total,
        "events": stream["events"],
        "segments": stream["segments"],
        "same_text": stream["text"] == text,
        "load": load_avg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="length of the recording")
    p.add_argument("--models", default="tiny", help="tiny | real | a directory of .nemo files")
    p.add_argument("--format", default="json", choices=("json", "text", "diarized_json"))
    p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    print_machine(machine())
    r = run(args.minutes, args.models, args.format, args.torch_threads, args.seed)
    print(
        f"# {r['minutes']:g} min, {r['asr_windows']} ASR windows of {r['window_s']:g} s, "
        f"{r['in_flight']} in flight, {args.models} models on {r['device']}"
    )
    headers = [
        "audio",
        "format",
        "first delta s",
        "done s",
        "no stream s",
        "first / no stream",
        "events",
        "done text = no-stream text",
        "load",
    ]
    row = [
        f"{r['minutes']:g} min",
        r["format"],
        fmt(r["first_s"], 2),
        fmt(r["done_s"], 2),
        fmt(r["total_s"], 2),
        fmt(r["first_s"] / r["total_s"] if r["first_s"] else None, 3),
        r["events"],
        "yes" if r["same_text"] else "NO",
        r["load"],
    ]
    print(table(headers, [row]))
    return 0 if r["same_text"] else 1


if __name__ == "__main__":
    sys.exit(main())
