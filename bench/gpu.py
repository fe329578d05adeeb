"""One-GPU benchmark with real-size random-weight models (and a --small CPU run).

    .venv/bin/python bench/gpu.py                 # GPU: real-size models, 1-hour recording
    .venv/bin/python bench/gpu.py --small         # CPU: tiny models, 10 minutes, small sweeps
    bash bench/device_run.sh                      # the lent GPU machine (no Ray, no NeMo there)

No download: the real-size architectures (Parakeet-TDT-0.6B-like, Sortformer
4spk-v1, TitaNet-large; see ../shared/notes/nemo-and-ray.md) are built with
random weights by scripts/make_tiny_models.py --size real into models/real and
loaded through the service's own path (voxgraph.models.load_model + runners);
--in-memory builds them in the process instead and writes nothing (the bare GPU
machine: 3 GB of models cannot travel there). --budget-s bounds the whole run.
Nothing here imports Ray except the throughput section.
Sections (--sections, default all):

- models:    each model alone: RTFx at batch 1 and at its best batch (sweep), the
             ASR encoder alone, and memory per model (torch.cuda.max_memory_allocated,
             weights + activations) against serve_config.yaml's fractional GPU shares;
- precision: bf16 (and fp16 on CUDA) autocast outputs vs fp32 on random inputs, with
             stated tolerances; on CUDA through the runners' own precision setting, on
             CPU with torch.autocast("cpu", bfloat16) around fp32 runners;
- batching:  K chunks one request at a time (the monolith) vs batched as the graph's
             deployments batch them, in-process (no Ray): the batching gain alone;
- pipeline:  a synthetic multi-speaker recording (1 hour) through the whole service
             pipeline, windowed like the ingress (plan_windows, diarize, fingerprints,
             link_speakers, stitch, ASR windows, merge, word/segment attribution);
- throughput: graph vs monolith over HTTP via bench/throughput.py (needs Ray; on by
             default on a GPU, --throughput to force it elsewhere).

Random-weight ASR decoding is NOT representative: the random TDT joint (biased to
emit tokens) emits up to max_symbols tokens on every frame and never skips frames,
where a trained Parakeet emits a few tokens per second of speech and TDT skips
frames. Encoder time is reported separately for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROLES,
    ROOT,
    SR,
    conversation,
    fmt,
    import_script,
    load_avg,
    machine,
    model_paths,
    print_machine,
    rss_mb,
    table,
    wav_bytes,
)

SECTIONS = ("models", "precision", "batching", "pipeline", "throughput")
NOT_REPRESENTATIVE = (
    "NOTE: random-weight ASR decoding time is not representative (the random TDT joint "
    "emits tokens on every frame, up to max_symbols each, and never skips frames); "
    "the ASR encoder time is the comparable figure."
)

# Reduced-precision tolerances, chosen from what the outputs feed, not from the results:
# diarizer probabilities become turn confidences (4 decimals) and 0.5 activity thresholds;
# fingerprints are linked at cosine 0.5, so 0.99 agreement cannot move a link decision;
# the ASR encoder's features feed a greedy decoder, 5 % relative L2 is bf16's ~3 significant
# digits accumulated over a deep stack.
TOLERANCES = {
    "diarizer_mean_abs": 0.01,
    "diarizer_max_abs": 0.05,
    "embedder_min_cosine": 0.99,
    "asr_encoder_rel_l2": 0.05,
}


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RoleConfig:
    """serve_config.yaml's settings for one model deployment."""

    share: float
    precision: str
    max_batch_size: int


def serve_config_roles(path: Path = ROOT / "serve_config.yaml") -> dict[str, RoleConfig]:
    """GPU share, precision and batch size per role, as production deploys them."""
    import yaml

    args = yaml.safe_load(path.read_text())["applications"][0]["args"]
    return {
        role: RoleConfig(
            share=float(args[role].get("num_gpus", 0.0)),
            precision=str(args[role].get("precision", "fp32")),
            max_batch_size=int(args[role].get("max_batch_size", 8)),
        )
        for role in ("asr", "diarizer", "embedder")
    }


# ----------------------------------------------------------------------------- pure helpers


def rtfx(audio_s: float, wall_s: float) -> float:
    """Audio seconds processed per wall second."""
    return audio_s / wall_s if wall_s > 0 else math.inf


def best_batch(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep row with the highest RTFx (ties: the smaller batch)."""
    ok = [r for r in rows if r.get("rtfx") is not None and math.isfinite(r["rtfx"])]
    return max(ok, key=lambda r: (r["rtfx"], -r["batch"])) if ok else None


def sweep_should_stop(rows: Sequence[dict[str, Any]], max_cell_s: float) -> bool:
    """Stop when the last call was too slow, or two sizes in a row lost >20 % of the best RTFx."""
    if not rows:
        return False
    if rows[-1]["seconds"] > max_cell_s:
        return True
    best = max(r["rtfx"] for r in rows)
    tail = [r["rtfx"] for r in rows[-2:]]
    return len(rows) >= 3 and all(x < 0.8 * best for x in tail)


def compare_outputs(role: str, ref: Any, low: Any) -> dict[str, float]:
    """Differences between an fp32 output and a reduced-precision one (numpy inputs)."""
    if role == "diarizer":
        d = np.abs(np.asarray(ref, np.float64) - np.asarray(low, np.float64))
        return {"mean_abs": float(d.mean()) if d.size else 0.0, "max_abs": float(d.max(initial=0))}
    if role == "embedder":
        a, b = np.asarray(ref, np.float64), np.asarray(low, np.float64)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        return {"min_cosine": float(np.min(cos))}
    a, b = np.asarray(ref, np.float64), np.asarray(low, np.float64)
    return {"rel_l2": float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))}


def within_tolerance(role: str, diff: dict[str, float]) -> bool:
    t = TOLERANCES
    if role == "diarizer":
        return (
            diff["mean_abs"] <= t["diarizer_mean_abs"] and diff["max_abs"] <= t["diarizer_max_abs"]
        )
    if role == "embedder":
        return diff["min_cosine"] >= t["embedder_min_cosine"]
    return diff["rel_l2"] <= t["asr_encoder_rel_l2"]


def share_table(
    roles: dict[str, RoleConfig], footprint_mib: dict[str, float], total_mib: float | None
) -> list[list[str]]:
    """Rows: role, share, share in MiB, measured footprint, verdict (needs the GPU's size)."""
    rows = []
    for role, cfg in roles.items():
        have = cfg.share * total_mib if total_mib else None
        need = footprint_mib.get(role)
        if have is None or need is None:
            verdict = "n/a (no GPU)" if have is None else "not measured"
        else:
            verdict = "fits" if need <= have else f"OVER by {need - have:,.0f} MiB"
        rows.append([role, f"{cfg.share:g}", fmt(have, 0), fmt(need, 0), verdict])
    return rows


# ----------------------------------------------------------------------------- device helpers


class Device:
    """Timing, memory and autocast that work alike on CUDA and CPU."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def allocated_mib(self) -> float:
        return self.torch.cuda.memory_allocated() / 2**20 if self.cuda else rss_mb()[0]

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float:
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.cuda else rss_mb()[1]

    def total_mib(self) -> float | None:
        if not self.cuda:
            return None
        return self.torch.cuda.get_device_properties(0).total_memory / 2**20

    def is_oom(self, e: BaseException) -> bool:
        return isinstance(e, self.torch.cuda.OutOfMemoryError) or "out of memory" in str(e)

    def free(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()

    @contextlib.contextmanager
    def autocast(self, precision: str) -> Iterator[None]:
        """Reduced precision as the check needs it; a no-op for fp32."""
        if precision == "fp32":
            yield
            return
        dtype = self.torch.bfloat16 if precision == "bf16" else self.torch.float16
        with self.torch.autocast(device_type="cuda" if self.cuda else "cpu", dtype=dtype):
            yield


@dataclass
class Budget:
    """Wall-clock budget of the whole run (0: none). Past it, sweeps stop early, the
    pipeline's ASR windows are extrapolated from the ones done, and sections are skipped:
    a device run must end inside its lease whatever the machine turns out to be."""

    total_s: float = 0.0
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        if self.total_s <= 0:
            return math.inf
        return self.total_s - (time.monotonic() - self.start)


NO_BUDGET = Budget()


# ----------------------------------------------------------------------------- models section


@dataclass
class Loaded:
    role: str
    model: Any
    runner: Any
    weights_mib: float
    load_s: float
    sweep: list[dict[str, Any]] = field(default_factory=list)
    encoder: list[dict[str, Any]] = field(default_factory=list)


def build_in_memory(role: str, size: str, device: str) -> Any:
    """The random-weight model of scripts/make_tiny_models.py, never written to disk.

    What load_model() does after restore_from: on `device`, eval mode, a name. The real
    ASR file is 2.4 GB: building in place saves writing and reading it back (the GPU
    machine starts bare, and 3 GB of models cannot travel to it).
    """
    import tempfile

    from voxgraph.models import quiet_nemo_logs

    quiet_nemo_logs()
    mtm = import_script("make_tiny_models")
    with tempfile.TemporaryDirectory(prefix="voxgraph-build-") as d:
        model = mtm.build_model(role, workdir=Path(d), size=size)
        model = model.to(device).eval()
    model.voxgraph_name = f"random-weight {size} {role} (built in memory)"
    return model


def load_all(
    paths: dict[str, str] | None,
    dev: Device,
    cfg: dict[str, RoleConfig],
    build_size: str | None = None,
) -> dict[str, Loaded]:
    """Load the three models from `paths`, or build them in memory (`build_size`)."""
    from voxgraph.models import AsrRunner, DiarRunner, EmbedRunner, load_model

    kinds = {"asr": AsrRunner, "diarizer": DiarRunner, "embedder": EmbedRunner}
    out = {}
    for role in ROLES:
        t0 = time.perf_counter()
        if build_size is not None:
            model = build_in_memory(role, build_size, dev.name)
        else:
            assert paths is not None
            model = load_model(role, paths[role], dev.name)  # type: ignore[arg-type]
        dev.sync()
        load_s = time.perf_counter() - t0
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        prec = cfg[role].precision if dev.cuda else "fp32"  # runners autocast on CUDA only
        runner = kinds[role](model, dev.name, prec)
        out[role] = Loaded(role, model, runner, weights, load_s)
        how = "built" if build_size is not None else "loaded"
        print(
            f"# {how} {role}: {weights:,.0f} MiB of weights in {load_s:.1f}s ({prec})", flush=True
        )
    return out


def role_call(lm: Loaded, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
    method = {"asr": "transcribe", "diarizer": "diarize", "embedder": "embed"}[lm.role]
    fn = getattr(lm.runner, method)
    return lambda: fn(list(inputs))


def encoder_call(lm: Loaded, inputs: Sequence[np.ndarray], dev: Device, prec: str) -> Callable:
    """ASR preprocessor + encoder only (what a trained model's time is mostly spent on)."""
    torch = dev.torch

    def run() -> Any:
        # NeMo 3.0's transcribe() leaves the encoder in train mode (dropout on) when it
        # returns; its own calls switch to eval, a direct forward must do it itself.
        lm.model.eval()
        lengths = [len(x) for x in inputs]
        sig = np.zeros((len(inputs), max(lengths)), np.float32)
        for i, x in enumerate(inputs):
            sig[i, : len(x)] = x
        with torch.inference_mode(), dev.autocast(prec):
            feats, flen = lm.model.preprocessor(
                input_signal=torch.from_numpy(sig).to(dev.name),
                length=torch.tensor(lengths, device=dev.name),
            )
            enc, _ = lm.model.encoder(audio_signal=feats, length=flen)
        return enc

    return run


def sweep(
    label: str,
    call: Callable[[int], Callable[[], Any]],
    item_s: float,
    batches: Sequence[int],
    reps: int,
    dev: Device,
    max_cell_s: float,
    mem_base_mib: float,
    budget: Budget = NO_BUDGET,
) -> list[dict[str, Any]]:
    """RTFx per batch size; peak memory above `mem_base_mib` (others' weights) per size."""
    rows: list[dict[str, Any]] = []
    warmed = False
    for b in batches:
        if rows:
            # This size's calls, estimated from the last size's, must fit in the budget.
            need = rows[-1]["seconds"] * b / rows[-1]["batch"] * (reps + 1)
            if need > budget.left():
                print(f"  {label} batch {b}: skipped, ~{need:.0f} s would overrun the budget")
                break
        fn = call(b)
        try:
            if not warmed:
                fn()  # first call: allocator, kernels, NeMo's lazy setup
                warmed = True
            dev.reset_peak()
            times = [dev.timed(fn)[0] for _ in range(reps)]
        except RuntimeError as e:
            if dev.is_oom(e):
                print(f"  {label} batch {b}: out of memory, sweep stops")
                dev.free()
                break
            raise
        t = statistics.median(times)
        rows.append(
            {
                "batch": b,
                "seconds": t,
                "rtfx": rtfx(b * item_s, t),
                "peak_mib": dev.peak_mib() - mem_base_mib,
            }
        )
        print(f"  {label:12s} batch {b:4d}: {t * 1000:9.1f} ms  RTFx {rows[-1]['rtfx']:10.1f}")
        if sweep_should_stop(rows, max_cell_s):
            break
    return rows


def models_section(
    loaded: dict[str, Loaded],
    dev: Device,
    cfg: dict[str, RoleConfig],
    args: argparse.Namespace,
) -> dict[str, Any]:
    chunk = conversation(args.chunk_s, seed=11, speakers=3)
    clip = chunk[: int(args.clip_s * SR)]
    results: dict[str, Any] = {}
    for role in ROLES:
        lm = loaded[role]
        item, item_s = (clip, args.clip_s) if role == "embedder" else (chunk, args.chunk_s)
        # Peaks are measured with every model resident: subtract the others' weights.
        base = dev.allocated_mib() - lm.weights_mib if dev.cuda else 0.0
        print(f"# {role}: sweep over {item_s:g} s inputs", flush=True)
        lm.sweep = sweep(
            role,
            lambda b, lm=lm, item=item: role_call(lm, [item] * b),
            item_s,
            args.batches,
            args.reps,
            dev,
            args.max_cell_s,
            base,
            args.budget,
        )
        if role == "asr":
            prec = cfg["asr"].precision if dev.cuda else "fp32"
            lm.encoder = sweep(
                "asr encoder",
                lambda b, lm=lm, prec=prec: encoder_call(lm, [chunk] * b, dev, prec),
                item_s,
                args.batches,
                args.reps,
                dev,
                args.max_cell_s,
                base,
                args.budget,
            )
        results[role] = {
            "weights_mib": lm.weights_mib,
            "load_s": lm.load_s,
            "sweep": lm.sweep,
            "encoder_sweep": lm.encoder,
        }

    rows = []
    for role in ROLES:
        lm = loaded[role]
        for label, sw in ((role, lm.sweep), ("asr encoder", lm.encoder)):
            if not sw or (label == "asr encoder" and role != "asr"):
                continue
            b1, best = sw[0], best_batch(sw)
            assert best is not None
            rows.append(
                [
                    label,
                    f"{args.clip_s if role == 'embedder' else args.chunk_s:g} s",
                    fmt(b1["rtfx"]),
                    best["batch"],
                    fmt(best["rtfx"]),
                    f"{best['rtfx'] / b1['rtfx']:.1f}x",
                ]
            )
    print("\nEach model alone (median of reps; RTFx = audio seconds per wall second)\n")
    print(table(["model", "input", "RTFx b=1", "best batch", "RTFx best", "best/b=1"], rows))
    print(NOT_REPRESENTATIVE)

    # Memory: weights + activation peak at serve_config's max batch (or the largest run).
    foot: dict[str, float] = {}
    mem_rows = []
    for role in ROLES:
        lm = loaded[role]
        at = [r for r in lm.sweep if r["batch"] <= cfg[role].max_batch_size]
        row = at[-1] if at else (lm.sweep[0] if lm.sweep else None)
        if row is not None and dev.cuda:
            foot[role] = lm.weights_mib + max(0.0, row["peak_mib"])
        mem_rows.append(
            [
                role,
                fmt(lm.weights_mib, 0),
                row["batch"] if row else "-",
                fmt(foot.get(role), 0) if dev.cuda else f"RSS peak {fmt(rss_mb()[1], 0)}",
            ]
        )
    print("\nMemory per model (torch.cuda.max_memory_allocated; CUDA context not included)\n")
    print(table(["model", "weights MiB", "at batch", "weights+activations MiB"], mem_rows))
    print("\nAgainst serve_config.yaml's fractional GPU shares\n")
    print(
        table(
            ["deployment", "share", "share MiB", "measured MiB", "verdict"],
            share_table(cfg, foot, dev.total_mib()),
        )
    )
    print(
        "Ray's num_gpus share schedules replicas; it does not cap memory. Each replica also "
        "holds its own CUDA context (~0.5 GiB) outside these figures."
    )
    results["footprint_mib"] = foot
    return results


# ----------------------------------------------------------------------------- precision


def precision_section(
    loaded: dict[str, Loaded], dev: Device, args: argparse.Namespace
) -> dict[str, Any]:
    from voxgraph.models import AsrRunner, DiarRunner, EmbedRunner

    rng = np.random.default_rng(5)
    inputs = [
        conversation(args.chunk_s, seed=21, speakers=3),
        (0.1 * rng.standard_normal(int(args.chunk_s * SR))).astype(np.float32),
    ]
    precisions = args.precisions or (["bf16", "fp16"] if dev.cuda else ["bf16"])
    kinds = {"asr": AsrRunner, "diarizer": DiarRunner, "embedder": EmbedRunner}
    results: dict[str, Any] = {}
    rows = []
    for role in ROLES:
        lm = loaded[role]
        ref_runner = kinds[role](lm.model, dev.name, "fp32")

        def outputs(prec: str, role: str = role, lm: Loaded = lm, ref: Any = ref_runner) -> Any:
            # CUDA: the product's own hook (runner precision). CPU: runners never autocast
            # there, so wrap an fp32 runner in torch.autocast("cpu").
            runner = kinds[role](lm.model, dev.name, prec) if dev.cuda else ref
            ctx = contextlib.nullcontext() if dev.cuda else dev.autocast(prec)
            with ctx:
                if role == "diarizer":
                    return np.concatenate([d.probs for d in runner.diarize(inputs)])
                if role == "embedder":
                    return runner.embed([x[: int(args.clip_s * SR)] for x in inputs])
                enc = encoder_call(lm, inputs, dev, prec)()
                try:
                    texts = [t.text for t in runner.transcribe(inputs)]
                except RuntimeError as e:  # oneDNN has no bf16 LSTM on some CPUs
                    if dev.cuda:
                        raise
                    print(f"  asr {prec}: greedy transcripts not compared ({e})"[:160])
                    texts = [None] * len(inputs)
                return enc.float().cpu().numpy(), texts

        ref = outputs("fp32")
        for prec in precisions:
            low = outputs(prec)
            if role == "asr":
                diff = compare_outputs("asr", ref[0], low[0])
                diff["text_equal"] = float(
                    np.mean([a == b for a, b in zip(ref[1], low[1], strict=True)])
                    if None not in low[1]
                    else math.nan
                )
            else:
                diff = compare_outputs(role, ref, low)
            ok = within_tolerance(role, diff)
            results[f"{role}/{prec}"] = {**diff, "pass": ok}
            shown = ", ".join(f"{k} {v:.4g}" for k, v in diff.items())
            rows.append([role, prec, shown, "PASS" if ok else "FAIL"])
    where = "runner precision (CUDA autocast)" if dev.cuda else 'torch.autocast("cpu") around fp32'
    results["speed"] = precision_speed(loaded, dev, args, ["fp32", *precisions])
    print(f"\nReduced precision vs fp32 on random inputs ({where})\n")
    print(table(["model", "precision", "difference", "within tolerance"], rows))
    print(
        f"tolerances: diarizer mean|dp| <= {TOLERANCES['diarizer_mean_abs']}, max|dp| <= "
        f"{TOLERANCES['diarizer_max_abs']}; embedder cosine >= "
        f"{TOLERANCES['embedder_min_cosine']}; ASR encoder relative L2 <= "
        f"{TOLERANCES['asr_encoder_rel_l2']} (text_equal: share of identical greedy "
        "transcripts, reported only: random weights sit near decision ties)"
    )
    return results


def precision_speed(
    loaded: dict[str, Loaded], dev: Device, args: argparse.Namespace, precisions: list[str]
) -> dict[str, dict[str, float]]:
    """RTFx of each model at one batch size under each precision (fp32 first)."""
    from voxgraph.models import AsrRunner, DiarRunner, EmbedRunner

    kinds = {"asr": AsrRunner, "diarizer": DiarRunner, "embedder": EmbedRunner}
    b = args.precision_batch
    chunk = conversation(args.chunk_s, seed=31, speakers=3)
    clip = chunk[: int(args.clip_s * SR)]
    out: dict[str, dict[str, float]] = {}
    rows = []
    for role in ROLES:
        lm = loaded[role]
        item, item_s = (clip, args.clip_s) if role == "embedder" else (chunk, args.chunk_s)
        out[role] = {}
        for prec in precisions:
            if args.budget.left() < 0:
                print(f"  {role} {prec}: skipped, over the time budget")
                continue
            runner = kinds[role](lm.model, dev.name, prec if dev.cuda else "fp32")
            ctx = contextlib.nullcontext if dev.cuda else functools.partial(dev.autocast, prec)
            probe = Loaded(role, lm.model, runner, lm.weights_mib, 0.0)
            fn = role_call(probe, [item] * b)
            # CPU: oneDNN has no bf16 LSTM on some CPUs, so the decoder runs fp32 only there.
            if not (role == "asr" and not dev.cuda and prec != "fp32"):
                with ctx():
                    fn()  # warm-up at this precision and shape
                    times = [dev.timed(fn)[0] for _ in range(args.reps)]
                out[role][prec] = rtfx(b * item_s, statistics.median(times))
            if role == "asr":
                enc = encoder_call(lm, [item] * b, dev, prec)
                enc()
                t = statistics.median(dev.timed(enc)[0] for _ in range(args.reps))
                out["asr encoder"] = {**out.get("asr encoder", {}), prec: rtfx(b * item_s, t)}
    for label, by in out.items():
        ref = by.get("fp32")
        for prec, x in by.items():
            gain = f"{x / ref:.2f}x" if ref and prec != "fp32" else ""
            rows.append([label, prec, fmt(x), gain])
    print(f"\nSpeed per precision at batch {b} (RTFx, median of {args.reps})\n")
    print(table(["model", "precision", "RTFx", "vs fp32"], rows))
    return out


# ----------------------------------------------------------------------------- batching


def batching_section(
    loaded: dict[str, Loaded], dev: Device, cfg: dict[str, RoleConfig], args: argparse.Namespace
) -> dict[str, Any]:
    """diarize-chunk + transcription of K chunks: one by one vs batched, no Ray."""
    from voxgraph.turns import speaker_clips

    chunks = [conversation(args.chunk_s, seed=300 + i, speakers=2 + i % 3) for i in range(args.k)]
    diar, emb, asr = (loaded[r].runner for r in ("diarizer", "embedder", "asr"))

    def one_by_one() -> None:
        for x in chunks:  # the monolith: decode -> diarize -> embed -> transcribe, batch 1
            d = diar.diarize([x])[0]
            clips = list(speaker_clips(x, d.turns, 0.5).values())
            if clips:
                emb.embed(clips)
            asr.transcribe([x])

    def batched() -> None:
        # The graph's deployments: requests fused up to serve_config's max_batch_size.
        diars = []
        for i in range(0, len(chunks), cfg["diarizer"].max_batch_size):
            diars += diar.diarize(chunks[i : i + cfg["diarizer"].max_batch_size])
        clips = [
            c
            for x, d in zip(chunks, diars, strict=True)
            for c in speaker_clips(x, d.turns, 0.5).values()
        ]
        for i in range(0, len(clips), cfg["embedder"].max_batch_size):
            emb.embed(clips[i : i + cfg["embedder"].max_batch_size])
        for i in range(0, len(chunks), cfg["asr"].max_batch_size):
            asr.transcribe(chunks[i : i + cfg["asr"].max_batch_size])

    batched()  # warm-up at the batch shapes
    t_seq, _ = dev.timed(one_by_one)
    t_bat, _ = dev.timed(batched)
    audio = args.k * args.chunk_s
    rows = [
        ["one by one (monolith)", fmt(t_seq, 2), fmt(rtfx(audio, t_seq))],
        ["batched (graph's batch sizes)", fmt(t_bat, 2), fmt(rtfx(audio, t_bat))],
        ["**batched / one by one**", "", f"**{t_seq / t_bat:.2f}x**"],
    ]
    print(
        f"\nBatching gain, in-process (no Ray, no HTTP): {args.k} x {args.chunk_s:g} s chunks, "
        "diarize + fingerprints + transcribe each\n"
    )
    print(table(["how", "wall s", "RTFx"], rows))
    print(NOT_REPRESENTATIVE)
    return {"k": args.k, "one_by_one_s": t_seq, "batched_s": t_bat, "gain": t_seq / t_bat}


# ----------------------------------------------------------------------------- pipeline


def pipeline_section(
    loaded: dict[str, Loaded], dev: Device, cfg: dict[str, RoleConfig], args: argparse.Namespace
) -> dict[str, Any]:
    """The ingress's long-audio walk, in one process, stage by stage."""
    from voxgraph.attribution import (
        assign_word_speakers,
        merge_window_transcripts,
        split_segments_by_speaker,
    )
    from voxgraph.audio import decode_audio
    from voxgraph.formats import TranscriptionOutput
    from voxgraph.linking import link_speakers, stitch
    from voxgraph.settings import Settings
    from voxgraph.turns import l2_normalise, speaker_clips, with_confidence
    from voxgraph.types import Transcript
    from voxgraph.windows import plan_windows, window_samples

    s = Settings()
    t0 = time.perf_counter()
    audio = conversation(args.recording_s, seed=2024, speakers=3)
    wav = wav_bytes(audio)
    print(
        f"\n# pipeline: synthetic {args.recording_s:g} s recording "
        f"({len(wav) / 2**20:.0f} MiB WAV) made in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    diar, emb, asr = (loaded[r].runner for r in ("diarizer", "embedder", "asr"))
    stages: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t, out = dev.timed(fn)
        stages[name] = t
        print(f"  {name:28s} {t:8.2f} s", flush=True)
        return out

    samples = stage("decode (WAV -> 16 kHz f32)", lambda: decode_audio(wav))
    dur = len(samples) / SR
    dwins = plan_windows(dur, s.diar_window_s, s.diar_overlap_s)
    awins = plan_windows(dur, s.asr_window_s, s.asr_overlap_s)
    db, eb = cfg["diarizer"].max_batch_size, cfg["embedder"].max_batch_size
    ab = min(cfg["asr"].max_batch_size, args.asr_window_batch)

    def diarize_windows() -> list[Any]:
        clips = [window_samples(samples, w) for w in dwins]
        return [d for i in range(0, len(clips), db) for d in diar.diarize(clips[i : i + db])]

    diars = stage(f"diarize {len(dwins)} windows (b={db})", diarize_windows)

    def fingerprints() -> list[dict[int, np.ndarray]]:
        per_window = [
            speaker_clips(window_samples(samples, w), d.turns, s.min_fingerprint_speech_s)
            for w, d in zip(dwins, diars, strict=True)
        ]
        flat = [(wi, k, c) for wi, cl in enumerate(per_window) for k, c in sorted(cl.items())]
        embs = np.zeros((len(flat), 192), np.float32)
        for i in range(0, len(flat), eb):
            embs[i : i + eb] = emb.embed([c for _, _, c in flat[i : i + eb]])
        prints: list[dict[int, np.ndarray]] = [{} for _ in dwins]
        for (wi, k, _), e in zip(flat, embs, strict=True):
            prints[wi][int(k)] = l2_normalise(e)
        return prints

    prints = stage(f"fingerprints (b={eb})", fingerprints)
    glob = stage(
        "link speakers + stitch",
        lambda: stitch(dwins, diars, link_speakers(dwins, diars, prints, None, s.link_threshold)),
    )

    asr_done: dict[str, float] = {}

    def transcribe_windows() -> Transcript:
        clips = [window_samples(samples, w) for w in awins]
        parts: list[Transcript] = []
        t_start = time.perf_counter()
        for i in range(0, len(clips), ab):
            parts += asr.transcribe(clips[i : i + ab])
            if len(parts) < len(clips) and args.budget.left() < 0:
                break  # over the time budget: the rest is extrapolated below
        asr_done["windows"] = len(parts)
        asr_done["seconds"] = time.perf_counter() - t_start
        return merge_window_transcripts(awins[: len(parts)], parts)

    asr_label = f"ASR {len(awins)} windows (b={ab})"
    transcript = stage(asr_label, transcribe_windows)
    extrapolated = asr_done["windows"] < len(awins)
    if extrapolated:
        # Random-weight decoding is slow (see NOT_REPRESENTATIVE): time per window done.
        stages[asr_label] = asr_done["seconds"] * len(awins) / asr_done["windows"]
        print(
            f"  (time budget: ASR ran {asr_done['windows']} of {len(awins)} windows; the "
            f"stage time {stages[asr_label]:.2f} s is extrapolated from them)",
            flush=True,
        )

    def attribute() -> Any:
        turns = with_confidence(glob.turns, glob.probs, glob.frame_s)
        words = assign_word_speakers(transcript.words, glob.probs, glob.frame_s, turns)
        segs = split_segments_by_speaker(transcript.segments, words, glob.probs, glob.frame_s)
        t = Transcript(transcript.text, tuple(words), tuple(segs), transcript.duration)
        return TranscriptionOutput(t, model="asr", diarized=True).render("verbose_json")

    out = stage("attribution + verbose_json", attribute)

    prec = cfg["asr"].precision if dev.cuda else "fp32"

    def encoder_windows() -> None:
        clips = [window_samples(samples, w) for w in awins]
        for i in range(0, len(clips), ab):
            encoder_call(loaded["asr"], clips[i : i + ab], dev, prec)()

    enc_s, _ = dev.timed(encoder_windows)
    wall = sum(stages.values())
    asr_s = stages[asr_label]
    diar_side = sum(
        v for k, v in stages.items() if k.startswith(("diarize", "fingerprints", "link"))
    )
    rest = wall - asr_s - diar_side
    overlapped = rest + max(asr_s, diar_side)  # the ingress runs ASR next to diarization
    enc_only = rest + max(enc_s, diar_side)
    rows = [
        [label, fmt(t, 2), fmt(rtfx(dur, t))]
        for label, t in (
            ("as run, stages one after another", wall),
            ("ASR next to diarization (the graph's fan-out)", overlapped),
            ("same, ASR encoder only (decoding excluded)", enc_only),
        )
    ]
    speakers = len({str(w.get("speaker")) for w in out.get("words", [])})
    print(
        f"\nFull pipeline on {dur:g} s ({dur / 3600:.2f} h): {len(dwins)} diarization windows, "
        f"{len(awins)} ASR windows, {glob.probs.shape[1] if glob.probs.ndim == 2 else 0} global "
        f"speakers, {len(out.get('words', []))} words ({speakers} speakers on words)\n"
    )
    print(table(["pipeline", "wall s", "RTFx"], rows))
    print(f"ASR encoder alone over the ASR windows: {enc_s:.2f} s. {NOT_REPRESENTATIVE}")
    print("goal: 1 hour in <= 10 s on one H100 (RTFx >= 360)")
    return {
        "recording_s": dur,
        "stages_s": stages,
        "asr_encoder_s": enc_s,
        "wall_s": wall,
        "wall_overlapped_s": overlapped,
        "wall_encoder_only_s": enc_only,
        "rtfx": rtfx(dur, wall),
        "asr_windows_run": asr_done["windows"],
        "asr_extrapolated": extrapolated,
    }


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU-sized: tiny models, short inputs")
    p.add_argument("--models", help="real | tiny | a directory (default real; tiny with --small)")
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="build the random-weight tiny/real models in memory instead of loading .nemo "
        "files (nothing written; what the bare GPU machine does)",
    )
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"of {','.join(SECTIONS)}")
    p.add_argument("--recording-s", type=float, help="pipeline recording (3600; 600 --small)")
    p.add_argument("--chunk-s", type=float, default=30.0, help="ASR/diarizer input (default 30)")
    p.add_argument("--clip-s", type=float, default=10.0, help="embedder input (default 10)")
    p.add_argument("--batches", help="batch sweep (1,2,...,128; 1,2,4,8 --small)")
    p.add_argument("--reps", type=int, help="timed calls per batch size (3; 2 --small)")
    p.add_argument("--max-cell-s", type=float, default=60.0, help="stop a sweep past this")
    p.add_argument("--k", type=int, help="chunks in the batching section (32; 8 --small)")
    p.add_argument("--asr-window-batch", type=int, default=4, help="ASR windows per batch")
    p.add_argument("--precisions", type=lambda s: s.split(","), help="bf16,fp16 (CUDA) / bf16")
    p.add_argument("--torch-threads", type=int, default=0, help="CPU torch threads (0: default)")
    p.add_argument(
        "--throughput",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run bench/throughput.py too (default: on with a GPU, off otherwise)",
    )
    p.add_argument("--throughput-args", default="", help="extra bench/throughput.py arguments")
    p.add_argument("--precision-batch", type=int, help="batch of the speed-per-precision rows")
    p.add_argument("--budget-s", type=float, default=0.0, help="wall-clock budget (0: none)")
    p.add_argument("--json", help="also write the figures to this file (after each section)")
    return p


def resolve(args: argparse.Namespace, cuda: bool) -> argparse.Namespace:
    """Fill the size-dependent defaults (--small or not)."""
    small = args.small
    args.models = args.models or ("tiny" if small else "real")
    args.recording_s = args.recording_s or (600.0 if small else 3600.0)
    sizes = args.batches or ("1,2,4,8" if small else "1,2,4,8,16,32,64,128")
    args.batches = [int(b) for b in sizes.split(",")]
    args.reps = args.reps or (2 if small else 3)
    args.k = args.k or (8 if small else 32)
    args.precision_batch = args.precision_batch or (2 if small else 8)
    if args.in_memory and args.models not in ("tiny", "real"):
        raise SystemExit("--in-memory builds tiny or real models, not a directory")
    if args.throughput is None:
        args.throughput = cuda and not small
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    budget = Budget(args.budget_s)
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = Device(name)
    args = resolve(args, dev.cuda)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    info = machine()
    if dev.cuda:
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    print_machine(info)
    where = f"{dev.name} ({info['gpu_name']}, CUDA {info['cuda']})" if dev.cuda else dev.name
    print(f"# device {where}; torch threads {torch.get_num_threads()}; models {args.models}")
    print(f"# {NOT_REPRESENTATIVE}", flush=True)
    cfg = serve_config_roles()
    results: dict[str, Any] = {"machine": info, "device": dev.name, "args": dict(vars(args))}

    def save() -> None:
        results["elapsed_s"] = time.monotonic() - budget.start
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    def run(section: str, fn: Callable[[], Any]) -> None:
        if section not in sections:
            return
        if budget.left() < 0:
            print(f"\n# {section}: skipped, the time budget ({args.budget_s:g} s) is spent")
            results[section] = "skipped: time budget"
        else:
            results[section] = fn()
        save()

    args.budget = budget  # for the sections (not in the JSON's args: set after vars())
    needs_models = set(sections) & {"models", "precision", "batching", "pipeline"}
    if needs_models:
        t0 = time.monotonic()
        if args.in_memory:
            loaded = load_all(None, dev, cfg, build_size=args.models)
        else:
            loaded = load_all(model_paths(args.models), dev, cfg)
        results["load_s"] = time.monotonic() - t0
        with torch.inference_mode():
            run("models", lambda: models_section(loaded, dev, cfg, args))
        # Outside inference_mode: autocast + runners set it themselves.
        run("precision", lambda: precision_section(loaded, dev, args))
        with torch.inference_mode():
            run("pipeline", lambda: pipeline_section(loaded, dev, cfg, args))
            run("batching", lambda: batching_section(loaded, dev, cfg, args))
        del loaded
        dev.free()
    if "throughput" in sections and args.throughput:
        results["throughput"] = throughput_section(args)
    elif "throughput" in sections:
        print("\n# throughput (graph vs monolith over HTTP): skipped; --throughput to run it")
    print(f"\n# load at end: {load_avg()}; {time.monotonic() - budget.start:.0f} s in all")
    save()
    return 0


def throughput_section(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("\n# throughput: skipped, Ray is not installed here (measure Ray on CPU instead)")
        return None
    from bench import throughput

    targv = ["--models", args.models, *args.throughput_args.split()]
    print(f"\n# throughput: bench/throughput.py {' '.join(targv)}", flush=True)
    return throughput.run(throughput.build_parser().parse_args(targv))


if __name__ == "__main__":
    sys.exit(main())
