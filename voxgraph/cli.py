"""`voxgraph`: push files and folders of recordings through a voxgraph service.

    voxgraph transcribe meetings/ --diarize --format srt --concurrency 4
    voxgraph diarize call.wav --format rttm --out rttm/
    voxgraph transcribe call.wav --speaker "Ada Lovelace" --format diarized_json
    voxgraph speakers add "Ada Lovelace" ada-1.wav ada-2.wav
    voxgraph speakers list
    voxgraph live call.wav --identify
    voxgraph health

Each input gets one output, `<name>.<ext>` next to it (or under `--out`, with
the folders below each input folder mirrored). A file whose output already
exists is skipped, so an interrupted batch resumes where it stopped; outputs
are written to a temporary file and renamed into place, so an existing output
is always a complete one. A failing file is reported and the batch goes on;
the exit status is 1 if any file failed.

`voxgraph live FILE` streams one recording through the realtime route at real
time and prints speaker-labelled lines as the service sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import unicodedata
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxgraph import __version__
from voxgraph.client import (
    APIConnectionError,
    AsyncVoxgraphClient,
    VoxgraphClient,
    VoxgraphClientError,
    env_url,
)

# What a folder walk picks up: the containers the service decodes (libsndfile,
# then FFmpeg). A file named explicitly on the command line is sent whatever its
# extension: the server is the judge of what is audio.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac",
        ".aif", ".aiff", ".caf", ".au", ".wma", ".amr", ".3gp",
        ".webm", ".mp4", ".m4v", ".mkv", ".mov", ".avi",
    }
)  # fmt: skip

FORMATS = {
    "transcribe": ("json", "txt", "srt", "vtt", "rttm", "diarized_json"),
    "diarize": ("json", "rttm"),
}
# `diarize --format json` and `diarized_json` get their own suffixes so that they never
# collide with (and are never skipped because of) the transcript JSON of the recording.
SUFFIXES = {
    ("transcribe", "json"): ".json",
    ("transcribe", "txt"): ".txt",
    ("transcribe", "srt"): ".srt",
    ("transcribe", "vtt"): ".vtt",
    ("transcribe", "rttm"): ".rttm",
    ("transcribe", "diarized_json"): ".diarized.json",
    ("diarize", "json"): ".diarize.json",
    ("diarize", "rttm"): ".rttm",
}
PART_SUFFIX = ".part"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------- planning


@dataclass
class Job:
    source: Path
    output: Path
    duration_s: float | None = None
    error: str | None = None


@dataclass
class Outcome:
    written: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)


def find_inputs(paths: Sequence[Path]) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """Files to process as (file, the folder argument it was found under), plus problems.

    Folders are walked recursively for audio/video extensions, skipping hidden
    entries (our own `.name.part` temporaries among them). Duplicates are dropped.
    """
    found: list[tuple[Path, Path | None]] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path | None) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, root))

    for p in paths:
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    f = Path(dirpath) / name
                    if not name.startswith(".") and f.suffix.lower() in AUDIO_EXTENSIONS:
                        add(f, p)
        elif p.is_file():
            add(p, None)
        else:
            problems.append(f"{p}: no such file or directory")
    return found, problems


def output_for(source: Path, root: Path | None, out_dir: Path | None, suffix: str) -> Path:
    """`<name><suffix>` next to the source, or under `out_dir` mirroring the input folder."""
    name = source.stem + suffix
    if out_dir is None:
        return source.with_name(name)
    rel_parent = source.parent.relative_to(root) if root is not None else Path()
    return out_dir / rel_parent / name


def plan_jobs(
    inputs: Sequence[tuple[Path, Path | None]], out_dir: Path | None, suffix: str
) -> list[Job]:
    jobs = [Job(src, output_for(src, root, out_dir, suffix)) for src, root in inputs]
    # a.wav and a.mp3 in one folder would both become a.json: name such outputs
    # after the whole source name (a.wav.json, a.mp3.json) instead.
    by_output: dict[Path, list[Job]] = {}
    for job in jobs:
        by_output.setdefault(job.output, []).append(job)
    for clash in (js for js in by_output.values() if len(js) > 1):
        for job in clash:
            job.output = job.output.with_name(job.source.name + suffix)
    claimed: dict[Path, Job] = {}
    for job in jobs:
        if job.output in claimed:
            job.error = f"output {job.output} is also the output of {claimed[job.output].source}"
        else:
            claimed[job.output] = job
    return jobs


def probe_duration(path: Path) -> float | None:
    """Seconds of audio from the file's header (None if no reader here knows it).

    soundfile and PyAV come with the server install; the client-only install has
    neither, and the standard library still reads the header of a PCM WAV.
    """
    try:
        import soundfile as sf

        return float(sf.info(str(path)).duration)
    except Exception:
        pass
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except Exception:
        pass
    try:
        import av

        with av.open(str(path)) as container:
            streams = container.streams.audio
            if streams and streams[0].duration is not None and streams[0].time_base:
                return float(streams[0].duration * streams[0].time_base)
            if container.duration is not None:
                return container.duration / av.time_base
    except Exception:
        pass
    return None


# --------------------------------------------------------------------------- writing


def write_atomic(path: Path, content: str) -> None:
    """Write to a hidden temporary beside `path`, then rename it into place.

    A rename within one folder is atomic, so `path` either does not exist or is
    complete: an interrupted run never leaves a half output that a re-run skips.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_parts(path: Path, older_than: float) -> None:
    """Temporaries a killed earlier run left beside `path` (never ones of a run in progress)."""
    if not path.parent.is_dir():
        return
    for part in path.parent.glob(f".{path.name}.*{PART_SUFFIX}"):
        try:
            if part.stat().st_mtime < older_than:
                part.unlink()
        except OSError:
            pass


def render(result: dict[str, Any] | str) -> str:
    if isinstance(result, str):
        return result if not result or result.endswith("\n") else result + "\n"
    return json.dumps(result, ensure_ascii=False, indent=2) + "\n"


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Request:
    """What one file turns into: a client method and its arguments."""

    method: str
    kwargs: dict[str, Any]


def identity_options(args: argparse.Namespace) -> dict[str, Any]:
    """The client's speaker-naming options from --identify, --speaker and --reference."""
    out: dict[str, Any] = {}
    if getattr(args, "identify", False):
        out["identify"] = True
    if getattr(args, "speaker", None):
        out["known_speaker_names"] = list(args.speaker)
    if getattr(args, "known_speakers", None):
        out["known_speakers"] = dict(args.known_speakers)
    return out


def build_request(args: argparse.Namespace) -> Request:
    hints = {
        k: v
        for k in ("num_speakers", "min_speakers", "max_speakers")
        if (v := getattr(args, k, None)) is not None
    }
    identity = identity_options(args)
    if args.command == "diarize" or args.format == "rttm":
        # RTTM holds speaker turns and nothing else: it comes from the diarize route.
        fmt = "rttm" if args.format == "rttm" else "json"
        return Request("diarize", {"response_format": fmt, **hints, **identity})
    # Speaker hints and names only mean something with diarization: they turn it on.
    diarize = bool(args.diarize or hints or identity or args.format == "diarized_json")
    kwargs: dict[str, Any] = {"diarize": diarize, **hints, **identity}
    if args.language:
        kwargs["language"] = args.language
    if args.format == "json":
        # A saved JSON should hold everything: segments, words, duration, model.
        kwargs |= {
            "response_format": "verbose_json",
            "timestamp_granularities": ["word", "segment"],
        }
    else:
        kwargs["response_format"] = "text" if args.format == "txt" else args.format
    return Request("transcribe", kwargs)


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    """Progress over files and audio seconds (rich), per-file lines, the final summary."""

    def __init__(self, jobs: list[Job], *, quiet: bool, verbose: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        # soft_wrap: long paths stay on one line in logs instead of being folded.
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        live = self.console.is_terminal and not quiet
        # On a terminal the bars say it all; in a log, one line per file says more.
        self.per_file = (not live) if verbose is None else verbose
        self.quiet = quiet
        self.total_files = len(jobs)
        self.total_audio = sum(j.duration_s or 0.0 for j in jobs)
        self.done_audio = 0.0
        self.counts = {"written": 0, "skipped": 0, "failed": 0}
        self.progress = Progress(
            TextColumn("{task.description:>6}"),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not live,
            transient=False,
        )
        self.files_task = self.progress.add_task("files", total=len(jobs), detail="")
        self.audio_task = self.progress.add_task(
            "audio", total=max(self.total_audio, 1e-9), detail=""
        )
        self._refresh()

    def __enter__(self) -> Reporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def _refresh(self) -> None:
        c = self.counts
        done = sum(c.values())
        extra = ", ".join(f"{n} {k}" for k, n in c.items() if n and k != "written")
        detail = f"{done}/{self.total_files}" + (f" ({extra})" if extra else "")
        self.progress.update(self.files_task, completed=done, detail=detail)
        self.progress.update(
            self.audio_task,
            completed=self.done_audio,
            detail=f"{_clock(self.done_audio)}/{_clock(self.total_audio)}",
        )

    def finish(self, job: Job, status: str, message: str = "") -> None:
        from rich.markup import escape

        self.counts[status] += 1
        self.done_audio += job.duration_s or 0.0
        self._refresh()
        if status == "failed":
            self.console.print(f"[red]failed[/]  {escape(str(job.source))}: {escape(message)}")
        elif self.per_file and not self.quiet:
            self.console.print(f"{status:7} {escape(str(job.source))} -> {escape(str(job.output))}")

    def summary(self, elapsed_s: float) -> None:
        c = self.counts
        line = (
            f"voxgraph: {c['written']} written, {c['skipped']} skipped, {c['failed']} failed; "
            f"{_clock(self.total_audio)} of audio in {elapsed_s:.1f} s"
        )
        self.console.print(("[red]" if c["failed"] else "[green]") + line + "[/]")


async def _process(
    client: AsyncVoxgraphClient,
    request: Request,
    jobs: list[Job],
    *,
    concurrency: int,
    overwrite: bool,
    reporter: Reporter,
    run_started: float,
) -> Outcome:
    outcome = Outcome()
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def one(job: Job) -> None:
        if job.error:
            outcome.failed.append(job)
            reporter.finish(job, "failed", job.error)
            return
        if job.output.exists() and not overwrite:
            outcome.skipped.append(job)
            reporter.finish(job, "skipped")
            return
        try:
            method = getattr(client, request.method)
            result = await method(job.source, filename=job.source.name, **request.kwargs)
            await asyncio.to_thread(remove_stale_parts, job.output, run_started)
            await asyncio.to_thread(write_atomic, job.output, render(result))
        except Exception as e:
            # Whatever went wrong with one file is reported; the others still get their turn.
            expected = isinstance(e, VoxgraphClientError | OSError)
            job.error = str(e) if expected else f"{type(e).__name__}: {e}"
            outcome.failed.append(job)
            reporter.finish(job, "failed", job.error)
            return
        outcome.written.append(job)
        reporter.finish(job, "written")

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return outcome


async def _run(args: argparse.Namespace) -> int:
    run_started = time.time()
    t0 = time.monotonic()
    inputs, problems = find_inputs([Path(p) for p in args.inputs])
    for problem in problems:
        print(f"voxgraph: {problem}", file=sys.stderr)
    if not inputs:
        print("voxgraph: no audio files found", file=sys.stderr)
        return EXIT_USAGE
    out_dir = Path(args.out) if args.out else None
    jobs = plan_jobs(inputs, out_dir, SUFFIXES[(args.command, args.format)])
    # Headers only, off the event loop: cheap even for long recordings.
    durations = await asyncio.gather(*(asyncio.to_thread(probe_duration, j.source) for j in jobs))
    for job, d in zip(jobs, durations, strict=True):
        job.duration_s = d

    request = build_request(args)
    async with AsyncVoxgraphClient(
        args.url, api_key=args.api_key, timeout=args.timeout, max_retries=args.retries
    ) as client:
        todo = [j for j in jobs if args.overwrite or not j.output.exists()]
        if todo and not await _ready(client, args.wait):
            return EXIT_FAILED
        with Reporter(jobs, quiet=args.quiet, verbose=args.verbose) as reporter:
            outcome = await _process(
                client,
                request,
                jobs,
                concurrency=args.concurrency,
                overwrite=args.overwrite,
                reporter=reporter,
                run_started=run_started,
            )
        reporter.summary(time.monotonic() - t0)
    return EXIT_FAILED if outcome.failed or problems else EXIT_OK


async def _ready(client: AsyncVoxgraphClient, wait_s: float) -> bool:
    """Fail fast when the service cannot be reached; wait (bounded) while it loads."""
    try:
        body = await client.health()
        if body.get("status") != "ready":
            print(
                f"voxgraph: {client.base_url} is loading its models; waiting up to {wait_s:g} s",
                file=sys.stderr,
            )
            await client.wait_ready(timeout_s=wait_s)
    except (VoxgraphClientError, TimeoutError) as e:
        hint = " (is the service running? set --url or VOXGRAPH_URL)"
        extra = hint if isinstance(e, APIConnectionError) else ""
        print(f"voxgraph: {client.base_url}: {e}{extra}", file=sys.stderr)
        return False
    return True


def _health(args: argparse.Namespace) -> int:
    try:
        with VoxgraphClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            body = client.health()
    except VoxgraphClientError as e:
        print(f"voxgraph: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(body, indent=2))
    return EXIT_OK if body.get("status") == "ready" else EXIT_FAILED


# --------------------------------------------------------------------------- speakers


def name_key(name: str) -> str:
    """A name as the library compares names: NFC, trimmed, spaces collapsed, case-folded."""
    display = re.sub(r" {2,}", " ", unicodedata.normalize("NFC", name).strip())
    return unicodedata.normalize("NFC", display.casefold())


def resolve_speaker(speakers: Sequence[dict[str, Any]], ref: str) -> dict[str, Any]:
    """The one enrolled speaker whose id is `ref`, or else whose name is `ref`.

    Names are unique in the library (case-insensitively), so a name names at most one
    speaker; it is refused only when it is one speaker's id and another's name.
    """
    by_id = [s for s in speakers if s.get("id") == ref]
    by_name = [s for s in speakers if name_key(str(s.get("name", ""))) == name_key(ref)]
    found = {s["id"]: s for s in (*by_id, *by_name)}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise LookupError(f"no enrolled speaker with the id or name {ref!r}")
    raise LookupError(
        f"{ref!r} is the id of {by_id[0]['name']!r} and the name of {by_name[0]['id']}; give the id"
    )


SPEAKER_COLUMNS = ("ID", "NAME", "CLIPS", "SPEECH_S", "MODEL")


def speaker_rows(speakers: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per voiceprint (a speaker holds one per embedding model it was enrolled with)."""
    rows: list[tuple[str, ...]] = []
    for s in speakers:
        prints = s.get("voiceprints") or [{}]
        for vp in prints:
            seconds = vp.get("speech_seconds")
            rows.append(
                (
                    str(s.get("id", "")),
                    str(s.get("name", "")),
                    str(vp.get("clips", "-")),
                    f"{seconds:.1f}" if isinstance(seconds, int | float) else "-",
                    str(vp.get("model", "-")),
                )
            )
    return rows


def speaker_table(speakers: Sequence[dict[str, Any]]) -> str:
    """A plain aligned table (no box drawing), so that it greps, cuts and pipes cleanly."""
    rows = [SPEAKER_COLUMNS, *speaker_rows(speakers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(SPEAKER_COLUMNS) - 1)]
    numeric = {2, 3}
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines) + "\n"


def _print_speakers(args: argparse.Namespace, body: Any, table_of: list[dict[str, Any]]) -> None:
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(speaker_table(table_of))


def _speakers(args: argparse.Namespace) -> int:
    action = args.speakers_command
    missing = [c for c in getattr(args, "clips", []) if not Path(c).is_file()]
    if missing:
        print(f"voxgraph: {missing[0]}: no such file", file=sys.stderr)
        return EXIT_USAGE
    try:
        with VoxgraphClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            if action == "list":
                speakers = client.list_speakers()
                _print_speakers(args, speakers, speakers)
                if not speakers and not args.json:
                    print("voxgraph: no speakers enrolled", file=sys.stderr)
            elif action == "add":
                speaker = client.enrol_speaker(args.name, [Path(c) for c in args.clips])
                _print_speakers(args, speaker, [speaker])
            else:
                speaker = resolve_speaker(client.list_speakers(), args.speaker)
                if action == "rm":
                    body = client.delete_speaker(speaker["id"])
                    if args.json:
                        print(json.dumps(body, indent=2))
                    else:
                        print(f"deleted {speaker['id']} ({speaker['name']})")
                else:
                    clips = [Path(c) for c in args.clips]
                    updated = client.add_speaker_samples(speaker["id"], clips)
                    _print_speakers(args, updated, [updated])
    except (VoxgraphClientError, LookupError) as e:
        hint = " (is the service running? set --url or VOXGRAPH_URL)"
        extra = hint if isinstance(e, APIConnectionError) else ""
        print(f"voxgraph: {e}{extra}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def load_references(pairs: Sequence[tuple[str, Path]]) -> dict[str, bytes]:
    """`--reference NAME=clip` pairs read once (every file of a batch sends the same clips)."""
    out: dict[str, bytes] = {}
    seen: set[str] = set()
    for name, path in pairs:
        if name_key(name) in seen:
            raise ValueError(f"--reference names {name!r} twice")
        seen.add(name_key(name))
        try:
            out[name] = path.read_bytes()
        except OSError as e:
            raise ValueError(f"--reference {name}={path}: {e.strerror or e}") from e
    return out


# --------------------------------------------------------------------------- live


def live_clock(seconds: float) -> str:
    """`00:12.3`, or `1:02:03.4` past an hour: a session's time in tenths of a second."""
    tenths = max(0, round(seconds * 10))
    m, tenth_s = divmod(tenths, 600)
    h, m = divmod(m, 60)
    sec = f"{tenth_s // 10:02d}.{tenth_s % 10}"
    return f"{h}:{m:02d}:{sec}" if h else f"{m:02d}:{sec}"


def live_line(
    text: str,
    speaker: str | None = None,
    start: float | None = None,
    end: float | None = None,
    confidence: float | None = None,
) -> str:
    """`[00:12.3–00:15.0] Speaker_0 (0.91): text`; the parts the server did not say left out."""
    parts = []
    if start is not None and end is not None:
        parts.append(f"[{live_clock(start)}–{live_clock(end)}]")
    if speaker:
        parts.append(speaker)
    if isinstance(confidence, int | float):
        parts.append(f"({confidence:.2f})")
    head = " ".join(parts)
    return f"{head}: {text}" if head else text


def _seconds(value: Any, scale: float = 1.0) -> float | None:
    return value / scale if isinstance(value, int | float) else None


class LivePrinter:
    """Server events -> transcript lines on stdout: one per segment, or one per item
    for an item that completed without segments. `--json` prints every event instead."""

    def __init__(self, *, as_json: bool):
        from rich.console import Console

        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.items: dict[str, dict[str, Any]] = {}
        self.speakers: list[str] = []
        self.segments = self.completed = 0

    def _item(self, item_id: str | None) -> dict[str, Any]:
        return self.items.setdefault(item_id or "", {"segments": 0})

    def _print(self, line: str, speaker: str | None) -> None:
        from rich.markup import escape

        if speaker and speaker not in self.speakers:
            self.speakers.append(speaker)
        colour = ("cyan", "magenta", "green", "yellow", "blue", "red")
        if speaker and self.out.is_terminal:
            style = colour[self.speakers.index(speaker) % len(colour)]
            escaped = escape(line).replace(escape(speaker), f"[{style}]{escape(speaker)}[/]", 1)
            self.out.print(escaped)
        else:
            self.out.print(escape(line), markup=True)

    def event(self, event: Any) -> None:
        from voxgraph import live_client as lc

        data = event.data
        if self.as_json:
            sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        item = self._item(event.item_id)
        if event.type == lc.SPEECH_STARTED:
            item["start"] = _seconds(data.get("audio_start_ms"), 1000)
        elif event.type == lc.SPEECH_STOPPED:
            item["end"] = _seconds(data.get("audio_end_ms"), 1000)
        elif event.type == lc.SEGMENT:
            item["segments"] += 1
            self.segments += 1
            text = str(data.get("text") or "").strip()
            if text and not self.as_json:
                speaker = data.get("speaker")
                line = live_line(
                    text,
                    speaker,
                    _seconds(data.get("start")),
                    _seconds(data.get("end")),
                    data.get("confidence"),
                )
                self._print(line, speaker)
        elif event.type == lc.COMPLETED:
            self.completed += 1
            text = str(data.get("transcript") or "").strip()
            if text and not item["segments"] and not self.as_json:
                speaker = data.get("speaker")
                self._print(live_line(text, speaker, item.get("start"), item.get("end")), speaker)


async def _live_run(args: argparse.Namespace, path: Path) -> int:
    from voxgraph import live_client as lc

    options = lc.LiveOptions(
        rate=args.rate,
        manual_commit_s=args.manual_commit_s,
        language=args.language,
        model=args.model,
        identify=args.identify,
        known_speaker_names=tuple(args.speaker or ()),
        speed=args.speed,
    )
    pcm = await asyncio.to_thread(lc.load_pcm16, path, options.rate)
    client = lc.LiveClient(args.url, api_key=args.api_key, finish_timeout=args.timeout)
    printer = LivePrinter(as_json=args.json)
    failures = 0
    t0 = time.monotonic()
    async with await client.connect(options) as session:
        if not args.quiet:
            print(
                f"voxgraph: live session on {client.url}; streaming {path.name} "
                f"({len(pcm) / (2 * options.rate):.1f} s at {options.speed:g}x real time)",
                file=sys.stderr,
            )
        async for event in client.stream(pcm, session=session):
            if event.type in (lc.ERROR, lc.FAILED):
                failures += 1
                where = f" (item {event.item_id})" if event.item_id else ""
                print(f"voxgraph: server error{where}: {lc.error_text(event)}", file=sys.stderr)
            printer.event(event)
    if not args.quiet:
        speakers = ", ".join(printer.speakers) or "none"
        print(
            f"voxgraph: {printer.completed} items, {printer.segments} segments, "
            f"speakers: {speakers}; {session.stats.audio_s:.1f} s of audio in "
            f"{time.monotonic() - t0:.1f} s",
            file=sys.stderr,
        )
    return EXIT_FAILED if failures else EXIT_OK


def _live(args: argparse.Namespace) -> int:
    from voxgraph.live_client import AudioFileError, SessionClosed

    path = Path(args.file)
    if not path.is_file():
        print(f"voxgraph: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_live_run(args, path))
    except ValueError as e:  # options out of range
        print(f"voxgraph: {e}", file=sys.stderr)
        return EXIT_USAGE
    except AudioFileError as e:
        print(f"voxgraph: {path}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except SessionClosed as e:
        hint = " (retry later)" if e.retryable else ""
        print(f"voxgraph: {e}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except VoxgraphClientError as e:
        hint = " (is the service running? set --url or VOXGRAPH_URL)"
        extra = hint if isinstance(e, APIConnectionError) else ""
        print(f"voxgraph: {e}{extra}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("voxgraph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --------------------------------------------------------------------------- arguments


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _reference(text: str) -> tuple[str, Path]:
    # Names cannot hold '=', paths can: split at the first one.
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError("expected NAME=CLIP, e.g. 'Ada Lovelace=ada.wav'")
    return name.strip(), Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxgraph",
        description="Transcribe and diarize files and folders with a voxgraph service.",
    )
    parser.add_argument("--version", action="version", version=f"voxgraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url", default=None, help=f"service URL (default: $VOXGRAPH_URL or {env_url()})"
    )
    connection.add_argument(
        "--api-key", default=None, help="Bearer key (default: $VOXGRAPH_API_KEY)"
    )
    connection.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="seconds to wait for one file (1800)",
    )

    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    batch.add_argument(
        "--out", metavar="DIR", help="write outputs here, mirroring input folders (default: beside)"
    )
    batch.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="files in flight at once (4)",
    )
    batch.add_argument("--overwrite", action="store_true", help="redo files that have an output")
    batch.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries of a 503 (model loading, queue full) (5)",
    )
    batch.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for a loading service before giving up (600)",
    )
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar, errors only")
    batch.add_argument(
        "-v",
        "--verbose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one line per file (default: on when stderr is not a terminal)",
    )
    speakers = argparse.ArgumentParser(add_help=False)
    speakers.add_argument("--num-speakers", type=_positive_int, help="exact speaker count")
    speakers.add_argument("--min-speakers", type=_positive_int, help="at least this many")
    speakers.add_argument("--max-speakers", type=_positive_int, help="at most this many")
    speakers.add_argument(
        "--identify",
        action="store_true",
        help="name speakers from the whole library of enrolled speakers",
    )
    speakers.add_argument(
        "--speaker",
        action="append",
        metavar="NAME",
        help="look for this enrolled speaker (repeatable)",
    )
    speakers.add_argument(
        "--reference",
        action="append",
        type=_reference,
        default=[],
        metavar="NAME=CLIP",
        help="name the voice of this clip NAME, for this run only (repeatable)",
    )

    t = commands.add_parser(
        "transcribe",
        parents=[batch, speakers, connection],
        help="speech to text (optionally with speakers)",
        description="Speech to text. json writes the full result (text, segments, words, "
        "duration); txt, srt and vtt the rendered transcript; rttm the speaker turns. "
        "diarized_json writes OpenAI's speaker segments as <name>.diarized.json. "
        "Speaker hints and names imply --diarize.",
    )
    t.add_argument("--diarize", action="store_true", help="label every segment and word")
    t.add_argument("--format", choices=FORMATS["transcribe"], default="json")
    t.add_argument("--language", help="ISO 639-1 code (default: the model detects it)")

    d = commands.add_parser(
        "diarize",
        parents=[batch, speakers, connection],
        help="who spoke when",
        description="Speaker turns with confidence, consistent across the whole file. "
        "json is written as <name>.diarize.json, rttm as <name>.rttm.",
    )
    d.add_argument("--format", choices=FORMATS["diarize"], default="json")

    commands.add_parser(
        "health", parents=[connection], help="print the service's readiness (exit 1 if not ready)"
    )

    lv = commands.add_parser(
        "live",
        parents=[connection],
        help="stream a recording through the realtime route, printing lines as they come",
        description="Stream FILE at real time (or --speed times it) over the realtime "
        "transcription WebSocket and print one line per speaker segment as the service "
        "sends it. Server errors go to stderr and make the exit status 1.",
    )
    lv.add_argument("file", metavar="FILE")
    lv.add_argument("--speed", type=_positive_float, default=1.0, help="times real time (1.0)")
    lv.add_argument(
        "--rate", type=int, choices=(24000, 16000), default=24000, help="PCM16 rate sent (24000)"
    )
    lv.add_argument(
        "--manual-commit-s",
        type=_positive_float,
        metavar="S",
        help="no server VAD: commit every S seconds of audio",
    )
    lv.add_argument("--language", help="ISO 639-1 code (default: the model's)")
    lv.add_argument("--model", help="transcription model (default: the service's)")
    lv.add_argument(
        "--identify", action="store_true", help="name speakers from the library of enrolled ones"
    )
    lv.add_argument(
        "--speaker", action="append", metavar="NAME", help="look for this enrolled speaker"
    )
    lv.add_argument("--json", action="store_true", help="print every server event as JSON lines")
    lv.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the service's JSON")
    sp = commands.add_parser(
        "speakers",
        help="the library of enrolled speakers",
        description="Enrol, list and erase named speakers. SPEAKER is an id (spk_...) or a "
        "name (case-insensitive).",
    )
    actions = sp.add_subparsers(dest="speakers_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        parents=[output, connection],
        help="enrol NAME from clips of that person speaking alone",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("clips", nargs="+", metavar="CLIP")
    actions.add_parser(
        "list", parents=[output, connection], help="table of id, name, clips, speech, model"
    )
    rm = actions.add_parser(
        "rm", parents=[output, connection], help="erase a speaker and its voiceprints"
    )
    rm.add_argument("speaker", metavar="SPEAKER", help="id or name")
    samples = actions.add_parser(
        "samples", parents=[output, connection], help="add clips to an enrolled speaker"
    )
    samples.add_argument("speaker", metavar="SPEAKER", help="id or name")
    samples.add_argument("clips", nargs="+", metavar="CLIP")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return _health(args)
    if args.command == "speakers":
        return _speakers(args)
    if args.command == "live":
        return _live(args)
    if args.min_speakers and args.max_speakers and args.min_speakers > args.max_speakers:
        print("voxgraph: --min-speakers is larger than --max-speakers", file=sys.stderr)
        return EXIT_USAGE
    if args.speaker and args.reference:
        # The service reads names sent with references as theirs, one per clip.
        print(
            "voxgraph: --speaker and --reference cannot be combined; "
            "add --identify to match the library as well as the references",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        args.known_speakers = load_references(args.reference)
    except ValueError as e:
        print(f"voxgraph: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("voxgraph: interrupted; finished outputs are kept, re-run to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
