"""A throwaway PostgreSQL server on 127.0.0.1 for tests.

The server binaries come from the `pgserver` wheel (part of the test extra), so a
fresh machine needs nothing but `pip install`. This module drives them itself
rather than through pgserver's own manager: one `initdb` into a temporary
directory, one `postgres` listening on 127.0.0.1 at a free port, its unix socket
inside that directory, trust authentication (loopback only), no fsync.

PostgreSQL refuses to run as root. As root the cluster runs as `nobody`, from a
copy of the binaries in the temporary directory, because the virtual environment
may live where `nobody` cannot reach (under /root, say).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from tests.support import free_port

HOST = "127.0.0.1"
SUPERUSER = "postgres"
_UNPRIVILEGED_USER = "nobody"


def _install_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the PostgreSQL tests need the pgserver wheel (`pip install -e '.[test]'`)"
        )
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise RuntimeError(f"no PostgreSQL binaries under {install}")
    return install


def _free_port() -> int:
    return free_port(HOST)


def _die_with_parent() -> None:
    # A test run killed outright must not leave a server behind: the kernel sends
    # the postmaster SIGQUIT (immediate shutdown) when its parent dies.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGQUIT, 0, 0, 0)


def _copy_install(install: Path, target: Path) -> Path:
    """Copy the binaries, keeping the layout their RPATH expects; return the new install."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    package = install.parent
    # The wheel's executables find libpq through $ORIGIN/../../../pgserver.libs.
    copied = target / package.name / install.name
    for source, destination in [
        (package.parent / f"{package.name}.libs", target / f"{package.name}.libs"),
        *((install / part, copied / part) for part in ("bin", "lib", "share")),
    ]:
        if source.is_dir():
            shutil.copytree(source, destination, symlinks=True, copy_function=link_or_copy)
    return copied


class PostgresServer:
    """`with PostgresServer() as pg: url = pg.create_database()`."""

    def __init__(self, start_timeout_s: float = 60.0) -> None:
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"vg_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        install = _install_dir()
        self._dir = Path(tempfile.mkdtemp(prefix="voxgraph-pg-"))
        run_as: dict[str, object] = {}
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(_UNPRIVILEGED_USER)
            self._dir.chmod(0o755)
            install = _copy_install(install, self._dir / "pg")
            run_as = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        data, sockets = self._dir / "data", self._dir / "run"
        for folder in (data, sockets):
            folder.mkdir(mode=0o700)
            if self._user is not None:
                os.chown(folder, self._user.pw_uid, self._user.pw_gid)
        initdb = subprocess.run(
            [
                str(install / "bin" / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=self._dir,
            capture_output=True,
            text=True,
            check=False,
            **run_as,  # type: ignore[arg-type]
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        # A free port can be taken between the probe and the bind: try a few.
        for _ in range(3):
            self.port = _free_port()
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [
                        str(install / "bin" / "postgres"),
                        "-D",
                        str(data),
                        "-p",
                        str(self.port),
                        "-c",
                        f"listen_addresses={HOST}",
                        "-c",
                        f"unix_socket_directories={sockets}",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ],
                    cwd=self._dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                    **run_as,  # type: ignore[arg-type]
                )
            if self._wait_ready():
                return
        log_text = self.log_path.read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{log_text}")

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self._proc.kill()
        self._proc.wait()
        return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # Immediate shutdown: the cluster is thrown away, nothing needs a checkpoint.
            self._proc.send_signal(signal.SIGQUIT)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
