"""The benchmarks' own checks, untimed: nothing here asserts a duration.

- bench/monolith.py serves the graph's audio routes with the graph's response shapes
  (tiny models, in-process ASGI client, no Ray and no socket);
- bench/gpu.py's pure parts and its sweep / precision helpers work at tiny size;
- bench/throughput.py's defaults are K = 1, 8, 32 clients;
- the GPU device run (bench/device_run.sh) carries every package its Ray-free path imports.
"""

from __future__ import annotations

import ast
import importlib.metadata
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import gpu, throughput
from bench.common import ROOT, ROUTES, chunk_payloads, conversation, table
from voxgraph.schemas import (
    DiarizeChunkResponse,
    DiarizeResponse,
    TranscriptionResponse,
    VerboseTranscriptionResponse,
)

AUDIO_ROUTES = {
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/audio/translations"),
    ("POST", "/v1/audio/diarize"),
    ("POST", "/v1/audio/diarize-chunk"),
    ("GET", "/health"),
    ("GET", "/v1/models"),
}


def _routes(app) -> set[tuple[str, str]]:
    # OpenAPI, not app.routes: serve.ingress re-mounts the class's routes on its own router.
    paths = app.openapi()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() for m in ops}


def test_monolith_has_the_graphs_routes():
    from bench.monolith import Monolith, create_app
    from deployments.http_app import build_api

    graph_routes = _routes(build_api(None)) & AUDIO_ROUTES
    assert graph_routes == AUDIO_ROUTES, "the ingress itself should serve every audio route"
    unloaded = Monolith({"asr": "a.nemo", "diarizer": "d.nemo", "embedder": "e.nemo"})
    assert graph_routes <= _routes(create_app(unloaded))


@pytest.fixture(scope="module")
def mono(tiny_models):
    import torch

    from bench.monolith import Monolith

    torch.set_num_threads(1)
    paths = {r: str(tiny_models / f"{r}.nemo") for r in ("asr", "diarizer", "embedder")}
    return Monolith(paths).load()


@pytest.fixture(scope="module")
def client(mono):
    from fastapi.testclient import TestClient

    from bench.monolith import create_app

    with TestClient(create_app(mono)) as c:
        yield c


WAV = chunk_payloads(1, 6.0, seed=3)[0]


def _post(client, route: str, **fields):
    path, defaults = ROUTES[route]
    data = {**defaults, **fields}
    return client.post(path, files={"file": ("c.wav", WAV, "audio/wav")}, data=data)


def test_monolith_shapes_match_the_graphs_schemas(client, mono):
    r = _post(client, "diarize-chunk")
    assert r.status_code == 200, r.text
    body = DiarizeChunkResponse.model_validate(r.json())
    assert body.duration == pytest.approx(6.0, abs=0.01)
    assert set(body.fingerprints) <= set(body.speakers_detected)
    for fp in body.fingerprints.values():
        assert len(fp) == 192
        assert math.isclose(float(np.linalg.norm(fp)), 1.0, abs_tol=1e-3)
    assert body.models == {
        "diarization": mono.models["diarizer"],
        "embedding": mono.models["embedder"],
    }

    r = _post(client, "transcriptions-diarize")
    assert r.status_code == 200, r.text
    v = VerboseTranscriptionResponse.model_validate(r.json())
    assert v.words and all(w.speaker and w.speaker.startswith("Speaker_") for w in v.words)
    assert v.segments and all(s.speaker for s in v.segments)

    r = _post(client, "transcriptions", diarize="true")
    assert r.status_code == 200, r.text
    assert TranscriptionResponse.model_validate(r.json()).segments

    r = _post(client, "diarize")
    assert r.status_code == 200, r.text
    DiarizeResponse.model_validate(r.json())

    r = _post(client, "diarize", response_format="rttm")
    assert r.status_code == 200 and r.text.startswith("SPEAKER ")


def test_stream_bench_measures_first_text_and_the_same_text(mono):
    from bench import stream

    r = stream.measure(mono, minutes=0.5)
    assert r["same_text"] and r["events"] >= 1 and r["asr_windows"] == 1
    assert 0 < r["first_s"] <= r["done_s"] and r["total_s"] > 0


def test_monolith_errors_like_the_graph(client):
    r = client.post("/v1/audio/diarize-chunk", files={"file": ("x.wav", b"nope", "audio/wav")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "undecodable_audio"
    r = client.post("/v1/audio/diarize-chunk")
    assert r.status_code == 400
    r = _post(client, "transcriptions", response_format="xml")
    assert r.status_code == 400
    assert client.get("/health").json()["status"] == "ready"


# --------------------------------------------------------------------------- bench/gpu.py


def test_gpu_pure_helpers():
    assert gpu.rtfx(60.0, 2.0) == 30.0
    rows = [
        {"batch": 1, "seconds": 1.0, "rtfx": 10.0},
        {"batch": 2, "seconds": 1.0, "rtfx": 20.0},
        {"batch": 4, "seconds": 2.0, "rtfx": 20.0},
    ]
    assert gpu.best_batch(rows)["batch"] == 2  # ties go to the smaller batch
    assert gpu.best_batch([]) is None
    assert gpu.sweep_should_stop([{"batch": 1, "seconds": 99.0, "rtfx": 1.0}], max_cell_s=60)
    falling = [*rows[:2], {"batch": 4, "seconds": 9, "rtfx": 15.0}, {"batch": 8, "rtfx": 12.0}]
    falling[-1]["seconds"] = 9
    assert gpu.sweep_should_stop(falling, max_cell_s=60)
    assert not gpu.sweep_should_stop(rows, max_cell_s=60)

    p = np.array([[0.2, 0.8], [0.5, 0.5]])
    d = gpu.compare_outputs("diarizer", p, p + 0.004)
    assert d["max_abs"] == pytest.approx(0.004) and gpu.within_tolerance("diarizer", d)
    assert not gpu.within_tolerance("diarizer", gpu.compare_outputs("diarizer", p, p + 0.2))
    e = np.eye(2, 192)
    assert gpu.compare_outputs("embedder", e, e)["min_cosine"] == pytest.approx(1.0)
    assert not gpu.within_tolerance("embedder", gpu.compare_outputs("embedder", e, e[::-1]))
    assert gpu.compare_outputs("asr", np.ones(4), np.ones(4) * 1.01)["rel_l2"] == pytest.approx(
        0.01
    )


def test_gpu_shares_come_from_serve_config():
    cfg = gpu.serve_config_roles()
    assert {r: c.share for r, c in cfg.items()} == {"asr": 0.4, "diarizer": 0.3, "embedder": 0.2}
    assert cfg["asr"].precision == "bf16"
    rows = gpu.share_table(cfg, {"asr": 30_000.0, "diarizer": 100.0}, total_mib=80_000.0)
    verdicts = {r[0]: r[-1] for r in rows}
    assert verdicts["asr"] == "fits" and verdicts["diarizer"] == "fits"
    assert verdicts["embedder"] == "not measured"
    assert gpu.share_table(cfg, {}, None)[0][-1] == "n/a (no GPU)"
    assert "| asr" in table(["deployment", "share", "a", "b", "verdict"], rows)


def test_gpu_small_defaults_and_inputs():
    args = gpu.resolve(gpu.build_parser().parse_args(["--small"]), cuda=False)
    assert args.models == "tiny" and args.batches == [1, 2, 4, 8] and not args.throughput
    full = gpu.resolve(gpu.build_parser().parse_args([]), cuda=True)
    assert full.models == "real" and full.recording_s == 3600 and full.throughput
    a = conversation(5.0, seed=1)
    assert a.dtype == np.float32 and a.shape == (80_000,)
    assert np.array_equal(a, conversation(5.0, seed=1)) and np.abs(a).max() <= 1.0


def test_gpu_sweep_and_precision_at_tiny_size(mono):
    dev = gpu.Device("cpu")
    loaded = {
        role: gpu.Loaded(role, runner.model, runner, 0.0, 0.0)
        for role, runner in mono.runners.items()
    }
    x = conversation(2.0, seed=4)
    rows = gpu.sweep(
        "diarizer",
        lambda b: gpu.role_call(loaded["diarizer"], [x] * b),
        2.0,
        [1, 2],
        reps=1,
        dev=dev,
        max_cell_s=60,
        mem_base_mib=0.0,
    )
    assert [r["batch"] for r in rows] == [1, 2] and all(r["rtfx"] > 0 for r in rows)
    loaded["asr"].runner.transcribe([x])  # leaves NeMo's encoder in train mode
    enc = gpu.encoder_call(loaded["asr"], [x], dev, "fp32")
    first, again = enc().numpy(), enc().numpy()
    assert np.array_equal(first, again), "encoder_call must run in eval mode (no dropout)"
    low = gpu.encoder_call(loaded["asr"], [x], dev, "bf16")().float().numpy()
    assert gpu.within_tolerance("asr", gpu.compare_outputs("asr", first, low))


def test_throughput_defaults():
    args = throughput.build_parser().parse_args([])
    assert args.clients == [1, 8, 32] and args.chunk_s == 30.0
    assert set(args.routes.split(",")) == {"diarize-chunk", "transcriptions-diarize"}


# --------------------------------------------------------------------------- the device run


def _lines(*args: str) -> list[str]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_wheels.sh"), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.split()


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def _ray_free_path_imports() -> set[str]:
    """Third-party top-level modules that bench/device_run.sh's path imports.

    bench/gpu.py and bench/common.py at module level, everything in
    scripts/make_tiny_models.py, and every import (any level) of the voxgraph modules
    gpu.py imports, followed through voxgraph. gpu.py's throughput section (Ray) is the
    one part the device run leaves out.
    """
    todo = list(_imports(ROOT / "bench" / "gpu.py", False) - {"ray", "bench.throughput"})
    found = _imports(ROOT / "bench" / "gpu.py", True) | _imports(ROOT / "bench" / "common.py", True)
    found |= _imports(ROOT / "scripts" / "make_tiny_models.py", False)
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        if mod.split(".")[0] == "voxgraph":
            path = ROOT / (mod.replace(".", "/") + ".py")
            if path.is_file():
                todo += _imports(path, False)
        else:
            found.add(mod)
    local = {"voxgraph", "bench", "__future__", "make_tiny_models"}
    return {m.split(".")[0] for m in found} - set(sys.stdlib_module_names) - local


def test_device_wheels_cover_the_ray_free_path():
    """Every import of the device run is carried as a wheel or in the GPU image; no Ray.

    A new third-party import in the walk, the runners or the model builder fails here
    rather than on the lent GPU machine, where nothing can be installed.
    """
    pins = _lines("--list")
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9_.+-]*", p) for p in pins), pins
    names = [_dist(p.split("==")[0]) for p in pins]
    assert len(names) == len(set(names)), "two versions of one wheel stop the install there"
    assert "nemo-toolkit==3.0.0" in {f"{_dist(p.split('==')[0])}=={p.split('==')[1]}" for p in pins}
    assert "ray" not in names
    available = set(names) | {_dist(n) for n in _lines("--image")}
    by_module = importlib.metadata.packages_distributions()
    modules = _ray_free_path_imports()
    assert {"nemo", "torch", "numpy", "soundfile"} <= modules  # the scan sees the path
    missing = {
        m: by_module.get(m, ["?"])
        for m in modules
        if not {_dist(d) for d in by_module.get(m, [m])} & available
    }
    assert not missing, f"imported by the device run, neither carried nor in the image: {missing}"


def test_device_run_script_and_gpu_help_without_ray():
    script = ROOT / "bench" / "device_run.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "device_wheels.sh")], check=True)
    text = script.read_text()
    # It installs the carried wheels as the device README says, and runs gpu.py Ray-free.
    assert "--no-index --no-deps --no-compile --no-cache-dir --upgrade" in text
    assert "bench/gpu.py" in text and "throughput" not in text.split("defaults=(")[1]
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", text.split("timeout -k")[0]))
    gpu_flags = {f for a in gpu.build_parser()._actions for f in a.option_strings}
    wanted = flags - {"--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"}
    wanted -= {"--target", "--format", "--query-gpu"}
    assert wanted <= gpu_flags, wanted - gpu_flags
    # gpu.py starts, and its device-run options parse, where Ray cannot be imported.
    code = (
        "import sys; sys.modules['ray'] = None; sys.argv = ['gpu.py', '--help'];"
        "import runpy; runpy.run_path('bench/gpu.py', run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--in-memory" in out.stdout and "--budget-s" in out.stdout
    args = gpu.resolve(
        gpu.build_parser().parse_args(["--in-memory", "--models", "real", "--budget-s", "300"]),
        cuda=True,
    )
    assert args.in_memory and args.budget_s == 300 and args.precision_batch == 8
    with pytest.raises(SystemExit):
        gpu.resolve(gpu.build_parser().parse_args(["--in-memory", "--models", "/x"]), False)


def test_gpu_sweep_stops_at_the_time_budget():
    dev = gpu.Device("cpu")
    calls: list[int] = []

    def call(b: int):
        def run() -> None:
            calls.append(b)
            time.sleep(0.02 * b)

        return run

    spent = gpu.Budget(total_s=0.2)
    rows = gpu.sweep("x", call, 1.0, [1, 8, 32], 1, dev, 60, 0.0, spent)
    # batch 8 would need ~0.02 * 8 * 2 = 0.32 s: more than the budget left after batch 1.
    assert [r["batch"] for r in rows] == [1] and 8 not in calls
    rows = gpu.sweep("x", call, 1.0, [1, 2], 1, dev, 60, 0.0, gpu.Budget())
    assert [r["batch"] for r in rows] == [1, 2] and gpu.Budget().left() == math.inf
