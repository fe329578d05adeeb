"""The README's "Python handle" example, run from a separate Python process.

Starts what `make demo` starts (`scripts/serve_local.py configs/tiny.yaml --ray-port P`,
on free ports), reads the `export ...` line it prints once ready, checks that the
README documents the same line, and runs the README's Python block in a fresh
interpreter whose environment has those variables and no other Ray setting, from a
folder holding `meeting.wav`. The block runs as typed into a Python prompt: each
statement in turn, each expression's value shown (and here collected). Then Ctrl-C
stops the server and nothing it started may be left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, speechlike, wav_bytes
from tests.support import load_script

README_PORT = 6379  # the Ray port the README's export line names (the Makefile's default)

# Runs a file's statements one by one in interactive mode, so a bare expression is
# shown the way the Python prompt shows it; prints the shown values as JSON.
PROMPT = """
import ast, json, sys
shown = []
sys.displayhook = lambda value: value is None or shown.append(value)
namespace = {"__name__": "__main__"}
for statement in ast.parse(open(sys.argv[1]).read()).body:
    code = compile(ast.Interactive(body=[statement]), "README.md", "single")
    exec(code, namespace)
print("SHOWN " + json.dumps(shown))
"""


def _script(name: str):
    return load_script(name)


def readme_handle_section() -> tuple[str, str]:
    """(the bash block's `export` line, the Python block) of README's "Python handle"."""
    text = (ROOT / "README.md").read_text()
    section = re.split(r"\n##+ ", text.split("### Python handle\n", 1)[1], maxsplit=1)[0]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S))
    (export,) = [ln for ln in blocks["bash"].splitlines() if ln.startswith("export ")]
    return export, blocks["python"]


def _exports(line: str) -> dict[str, str]:
    assert line.startswith("export "), line
    return dict(item.split("=", 1) for item in line.removeprefix("export ").split())


def _wait_for_export(proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.strip().startswith("export "):
                return line.strip()
        if proc.poll() is not None:
            pytest.fail(f"serve_local.py exited with {proc.returncode}: {log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"no export line after {timeout_s:.0f}s: {log.read_text()[-3000:]}")


def test_ray_port_taken_is_detected():
    """`make demo` falls back to a free Ray port when the chosen one is in use."""
    serve_local = _script("serve_local")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not serve_local.port_free(port)
    assert serve_local.port_free(port)


def test_free_ports_stay_out_of_the_ranges_ray_draws_from():
    """Ports picked for Serve's proxy or Ray's daemons can't be handed to anything else.

    A port from the kernel's ephemeral range was once taken by one of Ray's own
    connections before the proxy bound it, failing every test that shares the graph.
    """
    serve_local = _script("serve_local")
    ephemeral = serve_local._ephemeral_ports()
    ports = serve_local.free_ports(40)
    assert len(set(ports)) == 40
    for port in ports:
        assert port not in ephemeral and port not in serve_local.RAY_WORKER_PORTS, port
        assert 1024 < port < 65536 and serve_local.port_free(port)


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_readme_handle_example_from_another_process(tiny_models, tmp_path):
    smoke = _script("cluster_smoke")
    readme_export, readme_code = readme_handle_section()
    http_port, ray_port = _script("serve_local").free_ports(2)

    # What `make demo` runs, with its environment (the Makefile exports the first two).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env |= {"VOXGRAPH_CPU_ONLY": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "serve_local.py"), "configs/tiny.yaml"]
    command += ["--port", str(http_port), "--ray-port", str(ray_port), "--num-cpus", "4"]
    log = tmp_path / "serve_local.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Ray's processes land in it
            preexec_fn=smoke._term_with_parent,  # SIGTERMed if this test process dies
        )
    try:
        printed = _wait_for_export(server, log, timeout_s=300)
        exports = _exports(printed)
        assert exports == {
            "RAY_ADDRESS": f"127.0.0.1:{ray_port}",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }, printed
        # The README shows the same line for the default port.
        assert _exports(readme_export) == {
            **exports,
            "RAY_ADDRESS": f"127.0.0.1:{README_PORT}",
        }, readme_export

        workdir = tmp_path / "user"
        workdir.mkdir()
        audio = wav_bytes(speechlike(8.0, seed=7))
        (workdir / "meeting.wav").write_bytes(audio)
        (workdir / "example.py").write_text(readme_code)
        # A user's shell: no Ray variables but the exported ones, nothing of the tests.
        user_env = {
            k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"
        }
        driver = subprocess.run(
            [sys.executable, "-c", PROMPT, "example.py"],
            cwd=workdir,
            env=user_env | exports,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert driver.returncode == 0, driver.stderr[-4000:]
        (shown_line,) = [ln for ln in driver.stdout.splitlines() if ln.startswith("SHOWN ")]
        transcript, diarization, chunk, inferred = json.loads(shown_line.removeprefix("SHOWN "))

        assert transcript["duration"] == pytest.approx(8.0, abs=0.01)
        assert isinstance(transcript["text"], str)
        assert isinstance(transcript["words"], list) and isinstance(transcript["segments"], list)
        assert all("speaker" in s for s in transcript["segments"])  # diarize=True

        assert diarization["duration"] == pytest.approx(8.0, abs=0.01)
        speakers = diarization["speakers_detected"]
        assert len(speakers) <= 6
        assert all(s["speaker"] in speakers for s in diarization["segments"])
        # The handle's answer is the HTTP route's answer.
        http = httpx.post(
            f"http://127.0.0.1:{http_port}/v1/audio/diarize",
            files={"file": ("meeting.wav", audio, "audio/wav")},
            data={"max_speakers": "6"},
            timeout=120,
        )
        assert http.status_code == 200, http.text
        assert http.json()["segments"] == diarization["segments"]

        # The JSON body's shape through `infer` is the same diarization.
        assert inferred["segments"] == diarization["segments"]

        assert set(chunk) >= {"segments", "speakers_detected", "fingerprints", "models"}
        assert set(chunk["fingerprints"]) <= set(chunk["speakers_detected"])
        assert all(len(v) == 192 for v in chunk["fingerprints"].values())

        ours = smoke.process_tree({server.pid}, {server.pid})
        assert not smoke.non_loopback_sockets(ours)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # Ctrl-C, as in a terminal
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        deadline = time.monotonic() + 30
        while (left := smoke.process_tree({server.pid}, set())) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert server.returncode == 0, log.read_text()[-3000:]
    assert not left, f"processes left after Ctrl-C: {sorted(left)}"
