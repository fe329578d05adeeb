"""Custom metrics reach Ray's Prometheus endpoint; a request id follows the request."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import speechlike, wav_bytes

pytestmark = pytest.mark.integration

WAV = wav_bytes(speechlike(8.0, seed=7))


def _metrics_url() -> str:
    import ray

    ports = {n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    assert ports, "Ray exposes no metrics port"
    return f"http://127.0.0.1:{min(ports)}/metrics"


def _value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_custom_metrics_move(service):
    url = _metrics_url()
    for _ in range(2):
        files = {"file": ("a.wav", WAV, "audio/wav")}
        assert httpx.post(
            f"{service.url}/v1/audio/diarize-chunk", files=files, timeout=120
        ).is_success
        r = httpx.post(
            f"{service.url}/v1/audio/transcriptions",
            files={"file": ("a.wav", WAV, "audio/wav")},
            timeout=120,
        )
        assert r.is_success
    bad = httpx.post(
        f"{service.url}/v1/audio/diarize",
        files={"file": ("a.wav", b"not audio at all, sorry", "audio/wav")},
        timeout=60,
    )
    assert bad.status_code == 400

    wanted = {
        ("ray_voxgraph_audio_seconds_total", (("route", "/v1/audio/diarize-chunk"),)): 16.0,
        ("ray_voxgraph_audio_seconds_total", (("route", "/v1/audio/transcriptions"),)): 16.0,
        (
            "ray_voxgraph_errors_total",
            (("route", "/v1/audio/diarize"), ("kind", "undecodable_audio")),
        ): 1,
        ("ray_voxgraph_batch_size_count", (("role", "diarizer"),)): 1,
        ("ray_voxgraph_batch_size_count", (("role", "embedder"),)): 1,
        ("ray_voxgraph_queue_wait_seconds_count", (("role", "asr"),)): 1,
        ("ray_voxgraph_model_audio_seconds_total", (("role", "asr"),)): 16.0,
        ("ray_voxgraph_model_busy_seconds_total", (("role", "diarizer"),)): 1e-9,
        ("ray_voxgraph_model_rtfx", (("role", "asr"),)): 1e-9,
    }
    deadline = time.monotonic() + 90  # metrics are pushed to the agent every few seconds
    missing: list[str] = []
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        missing = [
            f"{name}{dict(labels)} >= {at_least}"
            for (name, labels), at_least in wanted.items()
            if _value(text, name, **dict(labels)) < at_least - 1e-6
        ]
        if not missing:
            break
        time.sleep(3)
    assert not missing, f"metrics did not move: {missing}"


def _serve_logs() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"


def test_request_id_reaches_every_deployment(service):
    rid = f"voxgraph-trace-{uuid.uuid4().hex}"
    r = httpx.post(
        f"{service.url}/v1/audio/diarize-chunk",
        files={"file": ("a.wav", WAV, "audio/wav")},
        headers={"X-Request-ID": rid},
        timeout=120,
    )
    assert r.status_code == 200
    assert r.headers.get("x-request-id") == rid
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen != {"Ingress", "Diarizer", "Embedder"}:
        for log in _serve_logs().glob("replica_voxgraph_*.log"):
            if rid in log.read_text(errors="replace"):
                seen.add(log.name.split("_")[2])
        time.sleep(1)
    assert seen == {"Ingress", "Diarizer", "Embedder"}
