"""`pip install voxgraph` is the client only: httpx, rich and websockets, never Ray, torch or NeMo.

The unit tests check what `voxgraph.client` and the `voxgraph` command import in this
venv and what pyproject.toml declares. The integration test builds the wheel, installs
it without extras into a fresh venv (dependencies from the package index) and runs
that venv's `voxgraph` command against the tiny-model service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, SR, speechlike, wav_bytes
from voxgraph import cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Distributions (and their import names) that belong to the server extra only.
SERVER_ONLY = {
    "ray": "ray",
    "torch": "torch",
    "nemo_toolkit": "nemo",
    "numpy": "numpy",
    "soundfile": "soundfile",
    "soxr": "soxr",
    "av": "av",
    "fastapi": "fastapi",
    "starlette": "starlette",
    "pydantic": "pydantic",
    "pydantic-settings": "pydantic_settings",
    "pyyaml": "yaml",
    "python-multipart": "multipart",
}
CLIENT_IMPORTS = "import voxgraph.client, voxgraph.cli, voxgraph.live_client"


def _name(requirement: str) -> str:
    """`ray[serve]>=2.60` -> `ray`."""
    for i, ch in enumerate(requirement):
        if ch in "[<>=!~; ":
            return requirement[:i].lower()
    return requirement.lower()


def test_base_dependencies_are_the_client_only():
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert base == {"httpx", "rich", "websockets"}
    server = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["server"]}
    assert set(SERVER_ONLY) <= server, set(SERVER_ONLY) - server
    assert PYPROJECT["project"]["scripts"]["voxgraph"] == "voxgraph.cli:main"


def test_client_and_command_import_nothing_heavy():
    """In the full venv: importing the client and running `voxgraph --help` loads none
    of the server's packages, so neither needs them."""
    code = (
        f"import sys, json\n{CLIENT_IMPORTS}\n"
        "try:\n    voxgraph.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.splitlines()[-1]))
    assert "voxgraph" in loaded and "httpx" in loaded
    assert not loaded & set(SERVER_ONLY.values()), sorted(loaded & set(SERVER_ONLY.values()))


def test_wav_duration_without_soundfile_or_av(tmp_path, monkeypatch):
    """The client-only install reads a WAV's length from its header (for the progress bar)."""
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(speechlike(2.5, seed=4)))
    (tmp_path / "b.ogg").write_bytes(b"OggS but nothing else")
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "av", None)
    assert cli.probe_duration(path) == pytest.approx(2.5, abs=1 / SR)
    assert cli.probe_duration(tmp_path / "b.ogg") is None


# ------------------------------------------------------------------ a fresh venv


def _build_wheel(out: Path) -> Path:
    """The wheel `pip install voxgraph` would get, built from a copy of this checkout.

    A copy keeps the build's `build/` and `*.egg-info` out of the working tree; this
    venv's setuptools builds it, so no build backend is downloaded.
    """
    src = out / "src"
    src.mkdir(parents=True)
    setuptools_cfg = PYPROJECT["tool"]["setuptools"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in setuptools_cfg["packages"]:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for module in setuptools_cfg.get("py-modules", []):
        shutil.copy2(ROOT / f"{module}.py", src / f"{module}.py")
    dist = out / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(dist), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = dist.glob("voxgraph-*.whl")
    return wheel


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_client_only_install_runs_the_command(service, tmp_path):
    wheel = _build_wheel(tmp_path / "build")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False, clear=True)
    python, exe = env_dir / "bin" / "python", env_dir / "bin" / "voxgraph"
    # Nothing of this checkout or the test venv may leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("VOXGRAPH_API_KEY", None)
    env |= {"VOXGRAPH_URL": service.url, "PYTHONNOUSERSITE": "1"}
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    probe = (
        "import importlib.util as u, json\n"
        f"print(json.dumps([m for m in {sorted(SERVER_ONLY.values())!r} if u.find_spec(m)]))"
    )
    found = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == [], "server packages in the client-only install"

    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "call.wav").write_bytes(wav_bytes(speechlike(4.0, seed=21)))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )

    health = run("health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "ready"

    # The realtime route from the client-only install: the WAV is read and resampled
    # to 24 kHz by the standard library, the session spoken over `websockets`.
    live = run("live", str(rec / "call.wav"), "--speed", "4")
    assert live.returncode == 0, live.stderr
    assert "4.0 s of audio" in live.stderr, live.stderr

    diarized = run("diarize", str(rec / "call.wav"))
    assert diarized.returncode == 0, diarized.stderr
    turns = json.loads((rec / "call.diarize.json").read_text())
    assert turns["duration"] == pytest.approx(4.0, abs=0.01)
    assert set(turns) >= {"segments", "speakers_detected", "model"}
    assert set(turns["speakers_detected"]) == {seg["speaker"] for seg in turns["segments"]}
    for seg in turns["segments"]:
        assert 0 <= seg["start_s"] < seg["end_s"] <= 4.0 + 0.08
    # The audio length came from the WAV header: no soundfile in this install.
    assert "1 written, 0 skipped, 0 failed; 0:04 of audio" in diarized.stderr, diarized.stderr

    transcribed = run("transcribe", str(rec), "--diarize", "--format", "json")
    assert transcribed.returncode == 0, transcribed.stderr
    transcript = json.loads((rec / "call.json").read_text())
    assert transcript["duration"] == pytest.approx(4.0, abs=0.01)
    assert isinstance(transcript["text"], str) and transcript["segments"] is not None
    assert {s["speaker"] for s in transcript["segments"]} <= set(turns["speakers_detected"])

    srt = run("transcribe", str(rec / "call.wav"), "--diarize", "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    cues = re.findall(
        r"^(\d+)\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\[(\w+)\] ",
        (rec / "call.srt").read_text(),
        flags=re.M,
    )
    # The same transcript as the JSON one, one cue per segment with its speaker.
    assert cues == [
        (str(i), seg["speaker"]) for i, seg in enumerate(transcript["segments"], start=1)
    ]
