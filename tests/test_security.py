"""No one let in without a key, no origin without consent, no name on disk, no key in logs.

Auth and CORS run on an extra Ingress over the shared model replicas (with its
own API keys and allow-list), so the shared `voxgraph` app stays open. The
fuzz reads the live /openapi.json and sends what schemathesis makes of it.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import ROOT, deploy_ingress_variant, replica_actors, speechlike, wav_bytes

pytestmark = pytest.mark.integration

AUTH_APP, AUTH_PREFIX = "voxgraph-auth", "/auth"
ANY_APP, ANY_PREFIX = "voxgraph-cors-any", "/cors-any"
# Fresh per run, so finding one in a log can only mean this run leaked it.
KEYS = [f"vxk1-{secrets.token_hex(12)}", f"vxk2-{secrets.token_hex(12)}"]
WRONG_KEY = f"vxwrong-{secrets.token_hex(12)}"
APP_ORIGIN = "https://app.example"
EVIL_ORIGIN = "https://evil.example"
WAV = wav_bytes(speechlike(2.0, seed=5))
T = "/v1/audio/transcriptions"
C = "/v1/audio/diarize-chunk"


@pytest.fixture(scope="module")
def auth_url(service):
    from ray import serve

    url = deploy_ingress_variant(
        service,
        AUTH_APP,
        AUTH_PREFIX,
        settings={"api_keys": KEYS, "cors_origins": [APP_ORIGIN]},
    )
    yield url
    serve.delete(AUTH_APP)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(url: str, route: str = C, headers: dict | None = None, name: str = "clip.wav"):
    files = {"file": (name, WAV, "audio/wav")}
    return httpx.post(f"{url}{route}", files=files, headers=headers or {}, timeout=120)


# ------------------------------------------------------------------ API keys


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer(WRONG_KEY),
        bearer(KEYS[0][:-1]),  # a prefix of a real key
        bearer(KEYS[0] + "x"),
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": KEYS[0]},  # no scheme
        {"Authorization": "Bearer"},
        {"X-API-Key": KEYS[0]},
    ],
    ids=["none", "wrong", "prefix", "suffix", "basic", "no-scheme", "empty", "other-header"],
)
def test_without_a_valid_key_401(auth_url, headers):
    for r in (
        upload(auth_url, headers=headers),
        httpx.get(f"{auth_url}/v1/models", headers=headers, timeout=30),
        httpx.get(f"{auth_url}/openapi.json", headers=headers, timeout=30),
    ):
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
        assert "Bearer" in r.json()["error"]["message"]


def test_every_configured_key_works(auth_url):
    for key in KEYS:
        assert (
            httpx.get(f"{auth_url}/v1/models", headers=bearer(key), timeout=30).status_code == 200
        )
        r = upload(auth_url, headers=bearer(key))
        assert r.status_code == 200, r.text
    # The scheme is case-insensitive (RFC 9110); the key itself is not.
    r = httpx.get(f"{auth_url}/v1/models", headers={"Authorization": f"bearer {KEYS[1]}"})
    assert r.status_code == 200
    upper = bearer(KEYS[1].upper())
    assert httpx.get(f"{auth_url}/v1/models", headers=upper, timeout=30).status_code == 401


def test_health_is_open(auth_url):
    r = httpx.get(f"{auth_url}/health", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready"


def test_openai_client_api_key(auth_url):
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=f"{auth_url}/v1", api_key=KEYS[0], max_retries=0, timeout=120)
    result = good.audio.transcriptions.create(model="whisper-1", file=("clip.wav", WAV))
    assert isinstance(result.text, str)
    bad = OpenAI(base_url=f"{auth_url}/v1", api_key=WRONG_KEY, max_retries=0, timeout=120)
    with pytest.raises(AuthenticationError):
        bad.audio.transcriptions.create(model="whisper-1", file=("clip.wav", WAV))


# ------------------------------------------------------------------ CORS


def preflight(url: str, origin: str, path: str = T) -> httpx.Response:
    return httpx.options(
        f"{url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=30,
    )


def assert_no_credentials(r: httpx.Response) -> None:
    assert "access-control-allow-credentials" not in r.headers, dict(r.headers)


def test_no_cors_by_default(service):
    """The shared app sets no origins: browsers on other sites get nothing."""
    r = preflight(service.url, APP_ORIGIN)
    assert "access-control-allow-origin" not in r.headers, dict(r.headers)
    r = httpx.get(f"{service.url}/v1/models", headers={"Origin": APP_ORIGIN}, timeout=30)
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert_no_credentials(r)


def test_cors_allow_list(auth_url):
    r = preflight(auth_url, APP_ORIGIN)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert_no_credentials(r)
    # A preflight carries no credentials, so it must not need the key either.
    r = preflight(auth_url, EVIL_ORIGIN)
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    # Simple (non-preflighted) requests: the listed origin is echoed, others are not.
    r = httpx.get(
        f"{auth_url}/v1/models", headers={"Origin": APP_ORIGIN, **bearer(KEYS[0])}, timeout=30
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert_no_credentials(r)
    r = httpx.get(
        f"{auth_url}/v1/models", headers={"Origin": EVIL_ORIGIN, **bearer(KEYS[0])}, timeout=30
    )
    assert "access-control-allow-origin" not in r.headers
    # The CORS layer does not let a cross-origin request skip the key.
    r = httpx.get(f"{auth_url}/v1/models", headers={"Origin": APP_ORIGIN}, timeout=30)
    assert r.status_code == 401


def test_wildcard_origin_never_with_credentials(service):
    from ray import serve

    url = deploy_ingress_variant(service, ANY_APP, ANY_PREFIX, settings={"cors_origins": ["*"]})
    try:
        r = preflight(url, EVIL_ORIGIN)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert_no_credentials(r)
        r = httpx.get(
            f"{url}/v1/models", headers={"Origin": EVIL_ORIGIN, "Cookie": "s=1"}, timeout=30
        )
        assert r.headers["access-control-allow-origin"] == "*"
        assert_no_credentials(r)
    finally:
        serve.delete(ANY_APP)


# ------------------------------------------------------------------ filenames


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for disposition, payload in parts:
        out += b"--vxb\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n"
        out += payload + b"\r\n"
    return out + b"--vxb--\r\n"


def test_hostile_filenames_never_reach_disk_or_shell(service):
    token = secrets.token_hex(6)
    canary = f"vxpwned-{token}"
    names = [
        f"../../../../../../tmp/{canary}.wav",
        f"/tmp/{canary}.wav",
        f"..\\..\\..\\{canary}.wav",
        f"; touch /tmp/{canary}-semicolon",
        f"$(touch /tmp/{canary}-subshell).wav",
        f"`touch /tmp/{canary}-backtick`.wav",
        f"| tee /tmp/{canary}-pipe",
        f"{canary}\r\nX-Injected: 1.wav",
        f"{canary}-" + "a" * 4000 + ".wav",
        f"{canary}-日本語 имя.wav",
        f"{canary}\x00.wav",
    ]
    replica_dirs = {
        Path(os.readlink(f"/proc/{pid}/cwd"))
        for _, pid in replica_actors("voxgraph").values()
        if os.path.exists(f"/proc/{pid}/cwd")
    }
    for name in names:
        for route, rttm in (("/v1/audio/diarize", True), (C, False)):
            # Hand-made multipart: clients (httpx too) would escape CR, LF and NUL.
            parts = [(f'name="file"; filename="{name}"'.encode(), WAV)]
            if rttm:
                parts.append((b'name="response_format"', b"rttm"))
            r = httpx.post(
                f"{service.url}{route}",
                content=multipart(parts),
                headers={"content-type": "multipart/form-data; boundary=vxb"},
                timeout=120,
            )
            # A name that breaks the part's header may be refused; never a 5xx.
            assert r.status_code in (200, 400), (name, r.status_code, r.text[:300])
            if r.status_code == 200 and rttm:
                # The name only labels RTTM lines, as one safe token: 10 fields a line.
                for line in r.text.splitlines():
                    assert len(line.split()) == 10, line
                    assert "/" not in line.split()[1] and "\\" not in line.split()[1]
            elif r.status_code == 200:
                assert r.json()["duration"] == pytest.approx(2.0, abs=0.01)
    places = {Path(tempfile.gettempdir()), Path("/tmp"), ROOT, Path.cwd(), *replica_dirs}
    for place in places:
        found = [p.name for p in place.iterdir() if canary in p.name]
        assert not found, f"{place}: {found}"


def test_no_shell_or_subprocess_in_the_service():
    """The service code never starts a process, so no name can reach a shell."""
    service_code = [
        *sorted((ROOT / "deployments").glob("*.py")),
        ROOT / "graph.py",
        *(p for p in sorted((ROOT / "voxgraph").glob("*.py")) if p.name != "cli.py"),
    ]
    pattern = re.compile(r"\bsubprocess\b|os\.system|os\.popen|os\.exec|os\.spawn|shell=True")
    for path in service_code:
        hits = [ln for ln in path.read_text().splitlines() if pattern.search(ln)]
        # Mentions in docstrings/comments are fine; calls and imports are not.
        code = [ln for ln in hits if not ln.lstrip().startswith(("#", '"'))]
        assert not code, f"{path.name}: {code}"


# ------------------------------------------------------------------ logs


def _session_logs() -> Path:
    import ray

    try:
        session = ray._private.worker.global_worker.node.get_session_dir_path()
    except AttributeError:  # private API moved: fall back to Ray's default location
        session = "/tmp/ray/session_latest"
    return Path(session) / "logs"


def test_logs_never_contain_keys(auth_url):
    # Requests with good, wrong and malformed keys, on good and bad input, first.
    upload(auth_url, headers=bearer(KEYS[0]))
    upload(auth_url, headers=bearer(WRONG_KEY))
    upload(auth_url, route=T, headers={"Authorization": f"Basic {WRONG_KEY}"})
    httpx.post(f"{auth_url}{T}", headers=bearer(KEYS[1]), content=b"junk", timeout=60)
    logs = _session_logs()
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any(p.parent.name == "serve" for p in files), f"no Serve logs under {logs}"
    secrets_ = [k.encode() for k in (*KEYS, WRONG_KEY)]
    leaked = [str(p.relative_to(logs)) for p in files if any(s in p.read_bytes() for s in secrets_)]
    assert not leaked, f"API keys found in {leaked}"


# ------------------------------------------------------------------ fuzz

FUZZ_EXAMPLES = 25  # per operation and generation mode: a couple of minutes on 2 cores


def test_fuzz_no_server_errors(service):
    """Whatever schemathesis derives from the live OpenAPI description: never a 5xx.

    Positive cases (valid by the schema) for every operation, negative ones (invalid
    by it) where there is a body to break. Driven through `as_strategy` rather than
    schemathesis' pytest plugin, whose lazy fixture does not run under pytest 9.
    """
    import schemathesis
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {
        "POST /v1/audio/transcriptions",
        "POST /v1/audio/translations",
        "POST /v1/audio/diarize",
        "POST /v1/audio/diarize-chunk",
        "GET /v1/models",
    } <= names, names
    failures: list[str] = []
    for op in operations:
        modes = [GenerationMode.POSITIVE]
        if op.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                case.call_and_validate(checks=[not_a_server_error], timeout=120)

            try:
                run()
            except Exception as e:  # collect every operation's failure, then report all
                failures.append(f"{op.method.upper()} {op.path} [{mode.value}]: {e}")
    assert not failures, "\n\n".join(failures)
