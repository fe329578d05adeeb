"""The seed-style baseline: one process, three NeMo models, one model after another.

    .venv/bin/python bench/monolith.py --models tiny [--port 8100] [--mode threads|serial]

No Ray. The same three `.nemo` files (or hub names) are loaded with
`voxgraph.models.load_model` and wrapped in the same runners as the graph's
deployments; each request is handled model after model (decode -> diarize ->
embed -> transcribe), every model call a batch of one, behind the graph's routes
and response shapes (the same pure core formats the answers: `voxgraph.formats`,
`voxgraph.turns`, `voxgraph.linking`, `voxgraph.attribution`), so outputs and
timings are comparable.

`--mode threads` (default) answers requests on a thread pool: the runners' locks
serialise each model, but request A may be in ASR while request B is in the
diarizer. That is the strongest fair form of the seed (FastAPI with sync
handlers); `--mode serial` takes one request at a time through the whole
pipeline. Neither batches across requests: that is what the graph adds.

`Monolith` is importable: bench/overhead.py and bench/gpu.py call its pipeline
in-process as their no-graph baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# FastAPI resolves the routes' (string) annotations in this module's globals: import here.
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile as StarletteUploadFile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The graph's own ASGI guards (upload limit, keys, CORS) and error body: no Ray in them.
from deployments.http_guards import BodyLimitMiddleware, GuardMiddleware, error_response
from voxgraph.attribution import (
    assign_word_speakers,
    merge_window_transcripts,
    split_segments_by_speaker,
)
from voxgraph.audio import decode_audio
from voxgraph.errors import BadRequest, ModelLoading, PayloadTooLarge, VoxgraphError
from voxgraph.formats import TEXT_MEDIA_TYPES, DiarizationOutput, TranscriptionOutput
from voxgraph.linking import SpeakerHints, link_speakers, stitch
from voxgraph.schemas import MODEL_LANGUAGES, DiarizeOptions, TranscribeOptions, parse_options
from voxgraph.settings import Settings
from voxgraph.turns import l2_normalise, speaker_clips, speaker_label, with_confidence
from voxgraph.types import SAMPLE_RATE, Diarization, Transcript, Turn
from voxgraph.windows import plan_windows, window_samples

ROLES = ("asr", "diarizer", "embedder")


class Monolith:
    """The three models and the whole request pipeline in one object, no Ray.

    `parallel=False` is the seed: one model after another. `parallel=True` runs ASR
    next to diarization+embedding in two threads, exactly the graph's fan-out but
    in-process: bench/overhead.py uses it so that graph minus in-process is only
    what the graph adds (HTTP proxy, handles, serialization, batch waits).
    """

    def __init__(
        self,
        models: dict[str, str],
        device: str | None = None,
        precision: str | dict[str, str] = "fp32",
        settings: dict[str, Any] | None = None,
        parallel: bool = False,
    ):
        self.models = dict(models)
        self.settings = Settings.load(settings)
        self.parallel = parallel
        self.device = device or "cpu"
        # One precision for all, or per role (serve_config.yaml runs only ASR in bf16).
        self.precision = (
            dict(precision) if isinstance(precision, dict) else dict.fromkeys(ROLES, precision)
        )
        self.runners: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}
        self.state = "loading"
        self.error: str | None = None

    def load(self) -> Monolith:
        """Load the three models, one after another (time per model in `load_seconds`)."""
        try:
            from voxgraph.models import (
                AsrRunner,
                DiarRunner,
                EmbedRunner,
                load_model,
                pick_device,
            )

            if self.device == "auto":
                self.device = pick_device()
            kinds = {"asr": AsrRunner, "diarizer": DiarRunner, "embedder": EmbedRunner}
            for role in ROLES:
                t0 = time.perf_counter()
                model = load_model(role, self.models[role], self.device)  # type: ignore[arg-type]
                prec = self.precision.get(role, "fp32")
                self.runners[role] = kinds[role](model, self.device, prec)
                self.load_seconds[role] = time.perf_counter() - t0
            self.state = "ready"
        except Exception as e:  # report through /health, like a failed deployment
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            raise
        return self

    # ------------------------------------------------------------------ operations

    def transcribe(self, audio: bytes, **options: Any) -> dict[str, Any] | str:
        opts: TranscribeOptions = parse_options(TranscribeOptions, options)
        self._ready()
        self._check_language(opts.language)
        samples = self._decode(audio)
        if opts.diarize:
            hints = SpeakerHints(opts.num_speakers, opts.min_speakers, opts.max_speakers)
            if self.parallel:
                with ThreadPoolExecutor(2) as pool:
                    diar_f = pool.submit(self._diarize_global, samples, hints)
                    transcript = self._transcribe_samples(samples)
                    diar = diar_f.result()
            else:  # the seed's order: decode -> diarize -> embed -> transcribe
                diar = self._diarize_global(samples, hints)
                transcript = self._transcribe_samples(samples)
            transcript = _attribute(transcript, diar)
        else:
            transcript = self._transcribe_samples(samples)
        return TranscriptionOutput(
            transcript=transcript,
            model=self.models["asr"],
            language=opts.language,
            granularities=tuple(opts.timestamp_granularities),
            temperature=opts.temperature,
            diarized=opts.diarize,
        ).render(opts.response_format)

    def diarize(self, audio: bytes, file_id: str = "audio", **options: Any) -> dict[str, Any] | str:
        opts: DiarizeOptions = parse_options(DiarizeOptions, options)
        self._ready()
        samples = self._decode(audio)
        hints = SpeakerHints(opts.num_speakers, opts.min_speakers, opts.max_speakers)
        diar = self._diarize_global(samples, hints)
        return DiarizationOutput(
            turns=tuple(_labelled(with_confidence(diar.turns, diar.probs, diar.frame_s))),
            duration=len(samples) / SAMPLE_RATE,
            model=self.models["diarizer"],
            device=self.device,
        ).render(opts.response_format, file_id)

    def diarize_chunk(self, audio: bytes) -> dict[str, Any]:
        self._ready()
        samples = self._decode(audio)
        diar = self.runners["diarizer"].diarize([samples])[0]
        clips = speaker_clips(samples, diar.turns, self.settings.min_fingerprint_speech_s)
        speakers = sorted(clips)
        embs = self._embed([clips[s] for s in speakers])
        out = DiarizationOutput(
            turns=tuple(_labelled(with_confidence(diar.turns, diar.probs, diar.frame_s))),
            duration=len(samples) / SAMPLE_RATE,
            model=self.models["diarizer"],
            device=self.device,
            fingerprints={
                speaker_label(int(s)): [round(float(x), 6) for x in l2_normalise(e)]
                for s, e in zip(speakers, embs, strict=True)
            },
            models={"diarization": self.models["diarizer"], "embedding": self.models["embedder"]},
        )
        return out.render("json")  # type: ignore[return-value]

    def health(self) -> tuple[bool, dict[str, Any]]:
        report = {
            role: {
                "state": "ready" if role in self.runners else self.state,
                "model": self.models[role],
                "device": self.device,
                "load_seconds": self.load_seconds.get(role),
            }
            for role in ROLES
        }
        if self.error:
            report["error"] = self.error  # type: ignore[assignment]
        ready = len(self.runners) == len(ROLES)
        return ready, {"status": "ready" if ready else "loading", "deployments": report}

    # ------------------------------------------------------------------ pipeline

    def _ready(self) -> None:
        if len(self.runners) != len(ROLES):
            raise ModelLoading("the models are still loading; retry shortly", 10)

    def _check_language(self, language: str | None) -> None:
        supported = MODEL_LANGUAGES.get(self.models["asr"])
        if language and supported is not None and language not in supported:
            raise BadRequest(f"language {language!r} is not supported by {self.models['asr']}")

    def _decode(self, audio: bytes) -> np.ndarray:
        if not audio:
            raise BadRequest("the uploaded file is empty")
        if len(audio) > self.settings.max_upload_mb * 1024 * 1024:
            raise PayloadTooLarge(f"upload is over the {self.settings.max_upload_mb:g} MB limit")
        return decode_audio(bytes(audio), max_duration_s=self.settings.max_audio_s)

    def _embed(self, clips: list[np.ndarray]) -> np.ndarray:
        if not clips:
            return np.zeros((0, 192), dtype=np.float32)
        return self.runners["embedder"].embed(clips)

    def _transcribe_samples(self, samples: np.ndarray) -> Transcript:
        s = self.settings
        windows = plan_windows(len(samples) / SAMPLE_RATE, s.asr_window_s, s.asr_overlap_s)
        asr = self.runners["asr"]
        parts = [asr.transcribe([window_samples(samples, w)])[0] for w in windows]
        return merge_window_transcripts(windows, parts)

    def _diarize_global(self, samples: np.ndarray, hints: SpeakerHints) -> Diarization:
        """Same windows, linking and stitching as the graph; one window at a time."""
        s = self.settings
        windows = plan_windows(len(samples) / SAMPLE_RATE, s.diar_window_s, s.diar_overlap_s)
        diars: list[Diarization] = []
        prints: list[dict[int, np.ndarray]] = []
        for w in windows:
            clip = window_samples(samples, w)
            diar = self.runners["diarizer"].diarize([clip])[0]
            clips = speaker_clips(clip, diar.turns, s.min_fingerprint_speech_s)
            speakers = sorted(clips)
            embs = self._embed([clips[k] for k in speakers])
            diars.append(diar)
            prints.append({int(k): l2_normalise(e) for k, e in zip(speakers, embs, strict=True)})
        mappings = link_speakers(windows, diars, prints, hints, threshold=s.link_threshold)
        return stitch(windows, diars, mappings)


def _attribute(transcript: Transcript, diar: Diarization) -> Transcript:
    turns = with_confidence(diar.turns, diar.probs, diar.frame_s)
    words = assign_word_speakers(transcript.words, diar.probs, diar.frame_s, turns)
    segments = split_segments_by_speaker(transcript.segments, words, diar.probs, diar.frame_s)
    return Transcript(
        text=transcript.text,
        words=tuple(words),
        segments=tuple(segments),
        duration=transcript.duration,
    )


def _labelled(turns: list[Turn]) -> list[Turn]:
    return [Turn(t.start, t.end, speaker_label(int(t.speaker)), t.confidence) for t in turns]


# ---------------------------------------------------------------------- HTTP


def create_app(mono: Monolith, mode: str = "threads") -> FastAPI:
    """The graph's routes and error shapes over `mono`; `mode` is threads or serial."""
    app = FastAPI(title="voxgraph-monolith", description="Seed-style baseline (bench/)")
    app.state.settings = mono.settings
    app.add_middleware(GuardMiddleware)
    app.add_middleware(BodyLimitMiddleware)
    # serial: one request in the pipeline at a time; threads: the runners' own locks only.
    gate = threading.Lock() if mode == "serial" else None
    pool = ThreadPoolExecutor(max_workers=1 if mode == "serial" else 16)

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            if gate is None:
                return fn(*args, **kwargs)
            with gate:
                return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    @app.exception_handler(VoxgraphError)
    async def _err(_: Request, e: VoxgraphError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(BadRequest(f"invalid request: {e.errors()}"))

    def render(result: dict[str, Any] | str, fmt: str) -> Response:
        if isinstance(result, str):
            return PlainTextResponse(result, media_type=TEXT_MEDIA_TYPES.get(fmt, "text/plain"))
        return JSONResponse(result)

    async def read(file: UploadFile | None) -> tuple[bytes, str]:
        if not isinstance(file, StarletteUploadFile):
            raise BadRequest("no audio file: send it as the multipart form field 'file'")
        data = await file.read()
        if not data:
            raise BadRequest("the uploaded file is empty")
        return data, Path(file.filename or "audio").stem or "audio"

    @app.get("/health")
    async def health() -> JSONResponse:
        ready, body = mono.health()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/")
    async def root() -> JSONResponse:
        routes = sorted(
            f"{m} {r.path}" for r in app.routes for m in getattr(r, "methods", ()) or ()
        )
        return JSONResponse(
            {
                "service": "voxgraph-monolith",
                "mode": mode,
                "models": mono.health()[1],
                "routes": routes,
            }
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        data = [
            {"id": mono.models[r], "object": "model", "owned_by": "local", "created": 0, "role": r}
            for r in ROLES
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: UploadFile | None = File(None),
        model: str | None = Form(None),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
        diarize: bool = Form(False),
        num_speakers: int | None = Form(None),
        min_speakers: int | None = Form(None),
        max_speakers: int | None = Form(None),
    ) -> Response:
        data, _ = await read(file)
        result = await run(
            mono.transcribe,
            data,
            model=model,
            language=language,
            prompt=prompt,
            response_format=response_format,
            temperature=temperature,
            timestamp_granularities=timestamp_granularities,
            diarize=diarize,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        return render(result, response_format)

    @app.post("/v1/audio/translations")
    async def translations(file: UploadFile | None = File(None)) -> Response:
        await read(file)
        raise BadRequest(f"the ASR model {mono.models['asr']!r} cannot translate")

    @app.post("/v1/audio/diarize")
    async def diarize(
        file: UploadFile | None = File(None),
        response_format: str = Form("json"),
        num_speakers: int | None = Form(None),
        min_speakers: int | None = Form(None),
        max_speakers: int | None = Form(None),
    ) -> Response:
        data, stem = await read(file)
        result = await run(
            mono.diarize,
            data,
            file_id=stem,
            response_format=response_format,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        return render(result, response_format)

    @app.post("/v1/audio/diarize-chunk")
    async def diarize_chunk(file: UploadFile | None = File(None)) -> Response:
        data, _ = await read(file)
        return JSONResponse(await run(mono.diarize_chunk, data))

    return app


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

    mono = Monolith(models, device=args.device, precision=args.precision)
    # Load in the background so /health answers 503 meanwhile, like the graph.
    threading.Thread(target=_load_logged, args=(mono,), daemon=True).start()
    uvicorn.run(create_app(mono, args.mode), host="127.0.0.1", port=args.port, log_level="warning")
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
