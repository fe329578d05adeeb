"""Custom metrics reach Ray's Prometheus endpoint; a request id follows the request;
a metric never fails a request.

The recorder tests use Ray's real metric objects (they work outside a replica
without Ray running), so a value Ray would refuse shows up as a failure.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from deployments import metrics
from deployments.metrics import IngressMetrics, ModelMetrics, error_kinds
from tests.conftest import speechlike, wav_bytes

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


def metric_total(name: str, **labels: str) -> float:
    """The current sum of `name`'s samples with `labels`, from Ray's Prometheus endpoint."""
    return _value(httpx.get(_metrics_url(), timeout=10).text, name, **labels)


@pytest.mark.integration
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


@pytest.mark.integration
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


# ------------------------------------------------------------------ errors while reading uploads

ERRORS_APP, ERRORS_PREFIX = "voxgraph-errors", "/errors"


@pytest.mark.integration
def test_errors_while_reading_the_upload_are_counted_once(service):
    from ray import serve

    from tests.conftest import deploy_ingress_variant

    url = deploy_ingress_variant(service, ERRORS_APP, ERRORS_PREFIX, settings={"max_upload_mb": 1})
    try:
        big = b"\0" * (2 * 1024 * 1024)
        route = f"{url}/v1/audio/diarize"
        # Declared too large: refused before the body is read.
        declared = httpx.post(route, files={"file": ("a.wav", big, "audio/wav")}, timeout=60)
        # Streamed with no length: the limit trips while the form's file part is parsed.
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        streamed = httpx.post(
            route,
            content=iter([part] + [big[i : i + 65536] for i in range(0, len(big), 65536)]),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=60,
        )
        malformed = httpx.post(
            route,
            content=b"--b\r\nnot a part header at all\r\n\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=60,
        )
        assert [declared.status_code, streamed.status_code, malformed.status_code] == [
            413,
            413,
            400,
        ]
        app = {"application": ERRORS_APP}
        deadline = time.monotonic() + 90  # metrics are pushed to the agent every few seconds
        total = 0.0
        while time.monotonic() < deadline:
            total = metric_total("ray_voxgraph_errors_total", **app)
            if total >= 3:
                break
            time.sleep(3)
        # Each answer once: the streamed 413 is not also counted as the parser's 400.
        assert total == 3
        too_large = metric_total(
            "ray_voxgraph_errors_total", route="/v1/audio/diarize", kind="payload_too_large", **app
        )
        assert too_large == 2
    finally:
        serve.delete(ERRORS_APP)


# ------------------------------------------------------------------ never fail a request


class Recording:
    """A real Ray metric object that also keeps every call it accepted."""

    def __init__(self, metric):
        self.metric = metric
        self.calls: list[tuple[str, float]] = []

    def __getattr__(self, name: str):
        call = getattr(self.metric, name)

        def record(value, *args, **kwargs):
            call(value, *args, **kwargs)  # raises on anything Ray refuses
            self.calls.append((name, value))

        return record


class Broken:
    """A metric object whose every call fails, as a broken exporter's would."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, _: str):
        def fail(*args, **kwargs):
            self.calls += 1
            raise RuntimeError("metrics exporter is gone")

        return fail


@pytest.fixture
def warnings_logged(monkeypatch) -> list[str]:
    """The metrics module's warnings, with its once-per-kind memory reset."""
    monkeypatch.setattr(metrics, "_logged_failures", set())
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    metrics.logger.addHandler(handler)
    yield seen
    metrics.logger.removeHandler(handler)


def _recording_model_metrics(role: str) -> ModelMetrics:
    m = ModelMetrics(role)
    for name in ("batch_size", "queue_wait", "audio", "busy", "rtfx"):
        setattr(m, name, Recording(getattr(m, name)))
    return m


def test_model_metrics_take_edge_values_without_a_failure(warnings_logged):
    m = _recording_model_metrics("asr")
    m.observe_batch(0, [], 0.0, 0.0)  # an empty batch
    m.observe_batch(1, [-0.25], 0.0, 0.002)  # silence, a wait made negative by the clock
    m.observe_batch(2, [math.nan, 0.1], math.inf, -1.0)  # nonsense from a broken timer
    m.observe_batch(np.int64(3), [np.float32(0.5)], np.float32(2.0), np.float64(0.5))
    assert m.batch_size.calls == [("observe", 1.0), ("observe", 2.0), ("observe", 3.0)]
    assert m.queue_wait.calls == [("observe", 0.0), ("observe", 0.1), ("observe", 0.5)]
    assert m.audio.calls == [("inc", 2.0)]  # Ray's Counter refuses 0: never sent one
    assert m.busy.calls == [("inc", 0.002), ("inc", 0.5)]
    assert m.rtfx.calls == [("set", 0.0), ("set", 4.0)]
    assert warnings_logged == []  # filtered before Ray, not swallowed after


def test_ingress_metrics_take_edge_values_without_a_failure(warnings_logged):
    m = IngressMetrics()
    m.audio, m.errors = Recording(m.audio), Recording(m.errors)
    for seconds in (0, 0.0, -3.0, math.nan, None, "x"):
        m.audio_received("/v1/audio/diarize", seconds)
    m.audio_received("/made/up/path", np.float32(1.5))
    m.error("/v1/audio/diarize", "undecodable_audio")  # outside a request: counted now
    assert m.audio.calls == [("inc", 1.5)]
    assert m.errors.calls == [("inc", 1)]
    assert warnings_logged == []


def test_error_kinds_defer_counting_to_the_http_layer():
    m = IngressMetrics()
    m.errors = Recording(m.errors)
    with error_kinds() as kinds:
        m.error("/v1/audio/diarize", "http_400")
        m.error("/v1/audio/diarize", "payload_too_large")
    assert kinds == ["http_400", "payload_too_large"]
    assert m.errors.calls == []
    m.count_error("/v1/audio/diarize", kinds[-1])
    assert m.errors.calls == [("inc", 1)]


def test_a_failing_metrics_api_never_fails_a_recorder(warnings_logged):
    model = _recording_model_metrics("embedder")
    model.queue_wait = Broken()
    ingress = IngressMetrics()
    ingress.audio, ingress.errors = Broken(), Broken()
    for _ in range(3):
        model.observe_batch(4, [0.1, 0.2], 8.0, 0.5)
        ingress.audio_received("/v1/audio/transcriptions", 8.0)
        ingress.error("/v1/audio/transcriptions", "internal")
    model.observe_batch(4, None, 8.0, 0.5)  # not even a sequence of waits
    # One broken metric does not take the recorder's others with it.
    assert model.audio.calls == [("inc", 8.0)] * 3
    assert model.queue_wait.calls == 6 and ingress.errors.calls == 3
    # Logged once per kind of failure, not once per request.
    assert len(warnings_logged) == 4, warnings_logged
    assert sum("queue_wait.observe" in w for w in warnings_logged) == 1
    assert sum("errors.inc" in w for w in warnings_logged) == 1
    assert sum("ModelMetrics.observe_batch" in w for w in warnings_logged) == 1


def test_metrics_that_cannot_be_created_fall_back_to_none(monkeypatch, warnings_logged):
    def refuse(*args, **kwargs):
        raise RuntimeError("no metrics agent")

    monkeypatch.setattr(metrics, "_in_replica", lambda: True)
    monkeypatch.setattr(metrics, "IngressMetrics", refuse)
    monkeypatch.setattr(metrics, "ModelMetrics", refuse)
    metrics.ingress_metrics.cache_clear()
    metrics.model_metrics.cache_clear()
    try:
        metrics.ingress_metrics().error("/health", "internal")
        metrics.ingress_metrics().audio_received("/health", 1.0)
        metrics.model_metrics("asr").observe_batch(1, [0.0], 1.0, 1.0)
    finally:
        metrics.ingress_metrics.cache_clear()
        metrics.model_metrics.cache_clear()
    assert len(warnings_logged) == 2
