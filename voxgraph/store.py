"""The speaker library: named speakers and their voiceprints, in a real database.

One SQLAlchemy code path serves both back ends: an embedded SQLite file by default
(`$XDG_DATA_HOME/voxgraph/speakers.db`, else `~/.local/share/voxgraph/speakers.db`)
and PostgreSQL for clusters, where every ingress replica shares one library.

Only voiceprints are stored, never audio. A voiceprint is one row per speaker and
embedding model: the running sum of the speaker's L2-normalised clip embeddings,
their scatter matrix (sum of outer products), the clip count and the speech seconds.
From those the centroid and the mean and variance of the clips' cosine to it are
exact, so enrolling clips in several calls gives the same voiceprint as enrolling
them all at once.

Names are unique case-insensitively (after trimming, collapsing runs of spaces and
Unicode NFC): a transcript can then name a speaker unambiguously, and a name given
by a caller (`known_speaker_names[]`) selects at most one speaker whatever its case.

Every write is one transaction that also bumps a change counter (`version()`), so a
replica that caches `candidates()` sees an enrolment or a deletion at its next poll.
Writers are serialised (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the counter's row
lock, taken first), which keeps read-then-write steps such as `add_samples` exact
under concurrent replicas. The schema carries its version and migrates forward
when opened; a database written by a newer release is refused.

No Ray, torch or NeMo here: the ingress, the CLI tools and the tests import it.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.pool import StaticPool

from voxgraph.errors import (
    InvalidSpeakerName,
    InvalidVoiceprint,
    SpeakerNameTaken,
    SpeakerNotFound,
)

NAME_MAX_CHARS = 64
MODEL_MAX_CHARS = 200
# The scatter matrix grows with dim squared: 192 dims take 150 KB, 1024 take 4 MB.
MAX_DIM = 1024
MAX_CLIPS_PER_CALL = 10_000
# SQLite waits this long for another writer (another process or replica) to finish.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Key of the PostgreSQL advisory lock that serialises schema migrations of one database.
_MIGRATION_LOCK_KEY = 0x766F_7867_7370_6B01  # "voxgspk" + 1
_NAME_PUNCTUATION = frozenset(" ._'-")
_RESERVED_NAME = re.compile(r"speaker_\d+")
_ID_PATTERN = re.compile(r"spk_[A-Za-z0-9_-]{16}")


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release; this one must not touch it."""


class _Unchanged(Exception):
    """Raised inside a write to roll it back (and its version bump) when it changed nothing."""


@dataclass(frozen=True, slots=True)
class Voiceprint:
    """A speaker's voiceprint for one embedding model, without the vectors."""

    model: str
    dim: int
    clip_count: int
    speech_seconds: float
    cosine_mean: float
    """Mean cosine of the enrolled clips to the centroid (1.0 for one clip)."""
    cosine_var: float
    """Population variance of those cosines: how consistent the enrolment was."""
    updated_at: float


@dataclass(frozen=True, slots=True)
class Speaker:
    id: str
    name: str
    created_at: float
    """Unix time, seconds."""
    updated_at: float
    voiceprints: tuple[Voiceprint, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """What matching needs of one enrolled speaker for one embedding model."""

    id: str
    name: str
    model: str
    centroid: np.ndarray
    """Unit-norm float32 vector of length `dim`."""
    clip_count: int
    speech_seconds: float
    cosine_mean: float
    cosine_var: float


# --- names -------------------------------------------------------------------------


def normalize_name(name: object) -> tuple[str, str]:
    """Return (display name, case-insensitive key) or raise InvalidSpeakerName.

    A name is 1..64 characters of letters (any script, with their combining marks),
    digits, spaces and . _ ' -, with at least one letter or digit. Leading and
    trailing whitespace is trimmed and runs of spaces collapse to one.
    `Speaker_<n>` is refused: it is the label of an anonymous speaker.
    """
    if not isinstance(name, str):
        raise InvalidSpeakerName("a speaker name must be a string")
    display = re.sub(r" {2,}", " ", unicodedata.normalize("NFC", name).strip())
    if not display:
        raise InvalidSpeakerName("a speaker name must not be empty")
    if len(display) > NAME_MAX_CHARS:
        raise InvalidSpeakerName(f"a speaker name has at most {NAME_MAX_CHARS} characters")
    has_alnum = False
    for ch in display:
        category = unicodedata.category(ch)
        if category[0] == "L" or category == "Nd":
            has_alnum = True
        elif category not in ("Mn", "Mc") and ch not in _NAME_PUNCTUATION:
            raise InvalidSpeakerName(
                f"a speaker name may hold letters, digits, spaces and . _ ' - only; "
                f"not {ch!r} (U+{ord(ch):04X})"
            )
    if not has_alnum:
        raise InvalidSpeakerName("a speaker name needs at least one letter or digit")
    key = unicodedata.normalize("NFC", display.casefold())
    if _RESERVED_NAME.fullmatch(key):
        raise InvalidSpeakerName(f"{display!r} is reserved: Speaker_<n> labels anonymous speakers")
    return display, key


def _name_key_or_none(name: object) -> str | None:
    try:
        return normalize_name(name)[1]
    except InvalidSpeakerName:
        return None


def _validate_model(model: object) -> str:
    if not isinstance(model, str) or not model.strip():
        raise InvalidVoiceprint("the embedding model name must be a non-empty string")
    if len(model) > MODEL_MAX_CHARS or not model.isprintable():
        raise InvalidVoiceprint(
            f"the embedding model name must be printable and at most {MODEL_MAX_CHARS} chars"
        )
    return model


def _validate_clips(
    clip_embeddings: Sequence[np.ndarray] | np.ndarray, speech_seconds: Sequence[float]
) -> tuple[np.ndarray, float]:
    """Return the L2-normalised clip embeddings (clips x dim, float64) and total seconds."""
    if len(clip_embeddings) == 0:
        raise InvalidVoiceprint("a voiceprint needs at least one clip embedding")
    if len(clip_embeddings) > MAX_CLIPS_PER_CALL:
        raise InvalidVoiceprint(f"at most {MAX_CLIPS_PER_CALL} clips per call")
    if len(speech_seconds) != len(clip_embeddings):
        raise InvalidVoiceprint(
            f"{len(clip_embeddings)} clip embeddings but {len(speech_seconds)} speech durations"
        )
    rows = [np.asarray(e, dtype=np.float64) for e in clip_embeddings]
    dim = rows[0].shape[0] if rows[0].ndim == 1 else -1
    if not 1 <= dim <= MAX_DIM or any(r.shape != (dim,) for r in rows):
        raise InvalidVoiceprint(f"clip embeddings must be 1-D vectors of one length (1..{MAX_DIM})")
    matrix = np.stack(rows)
    if not np.all(np.isfinite(matrix)):
        raise InvalidVoiceprint("clip embeddings must be finite")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InvalidVoiceprint("a clip embedding is all zeros")
    seconds = np.asarray(speech_seconds, dtype=np.float64)
    if seconds.ndim != 1 or not np.all(np.isfinite(seconds)) or np.any(seconds < 0):
        raise InvalidVoiceprint("speech durations must be finite and non-negative")
    return matrix / norms, float(seconds.sum())


# --- voiceprint statistics ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Accumulator:
    """Sufficient statistics of a set of unit clip embeddings (float64)."""

    total: np.ndarray  # sum of unit embeddings, (dim,)
    scatter: np.ndarray  # upper triangle of sum of outer products, (dim*(dim+1)/2,)
    count: int
    seconds: float

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    @classmethod
    def empty(cls, dim: int) -> _Accumulator:
        return cls(np.zeros(dim), np.zeros(dim * (dim + 1) // 2), 0, 0.0)

    def add(self, units: np.ndarray, seconds: float) -> _Accumulator:
        upper = np.triu_indices(self.dim)
        return _Accumulator(
            self.total + units.sum(axis=0),
            self.scatter + (units.T @ units)[upper],
            self.count + units.shape[0],
            self.seconds + seconds,
        )

    def summary(self) -> tuple[np.ndarray, float, float]:
        """Unit centroid, and the mean and variance of the clips' cosine to it.

        cos_i = u_i . c with c = S/|S|, so mean = |S|/n and
        var = c^T M c / n - mean^2 where M = sum u_i u_i^T.
        """
        length = float(np.linalg.norm(self.total))
        if length == 0.0:
            raise InvalidVoiceprint("the clip embeddings cancel out: no direction to match")
        centroid = self.total / length
        full = np.zeros((self.dim, self.dim))
        full[np.triu_indices(self.dim)] = self.scatter
        full = full + full.T - np.diag(np.diag(full))
        mean = length / self.count
        var = max(float(centroid @ full @ centroid) / self.count - mean * mean, 0.0)
        return centroid, mean, var


def _f64(blob: bytes, size: int) -> np.ndarray:
    array = np.frombuffer(blob, dtype="<f8")
    if array.shape != (size,):
        raise RuntimeError("corrupt voiceprint row: vector length does not match its dim")
    return array.astype(np.float64)


# --- schema ---------------------------------------------------------------------------

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Double, nullable=False),
)

speakers = Table(
    "speakers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(NAME_MAX_CHARS), nullable=False),
    Column("name_key", Text, nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

voiceprints = Table(
    "voiceprints",
    metadata,
    Column("speaker_id", String(32), ForeignKey("speakers.id", ondelete="CASCADE"), nullable=False),
    Column("model", String(MODEL_MAX_CHARS), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("centroid", LargeBinary, nullable=False),  # float32 little-endian, unit norm
    Column("embedding_sum", LargeBinary, nullable=False),  # float64 little-endian
    Column("scatter", LargeBinary, nullable=False),  # float64 little-endian, upper triangle
    Column("clip_count", Integer, nullable=False),
    Column("speech_seconds", Double, nullable=False),
    Column("cosine_mean", Double, nullable=False),
    Column("cosine_var", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("speaker_id", "model"),
    Index("voiceprints_by_model", "model"),
)

library_state = Table(
    "library_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="library_state_one_row"),
)


def _migration_1(conn: Connection) -> None:
    """Speakers and their voiceprints."""
    # Frozen copies: the tables as this version created them, whatever they become later.
    frozen = MetaData()
    Table(
        "speakers",
        frozen,
        Column("id", String(32), primary_key=True),
        Column("name", String(NAME_MAX_CHARS), nullable=False),
        Column("name_key", Text, nullable=False, unique=True),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
    )
    Table(
        "voiceprints",
        frozen,
        Column(
            "speaker_id",
            String(32),
            ForeignKey("speakers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("model", String(MODEL_MAX_CHARS), nullable=False),
        Column("dim", Integer, nullable=False),
        Column("centroid", LargeBinary, nullable=False),
        Column("embedding_sum", LargeBinary, nullable=False),
        Column("scatter", LargeBinary, nullable=False),
        Column("clip_count", Integer, nullable=False),
        Column("speech_seconds", Double, nullable=False),
        Column("cosine_mean", Double, nullable=False),
        Column("cosine_var", Double, nullable=False),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
        PrimaryKeyConstraint("speaker_id", "model"),
        Index("voiceprints_by_model", "model"),
    )
    frozen.create_all(conn)


def _migration_2(conn: Connection) -> None:
    """The change counter that replicas poll to refresh their cached candidates."""
    frozen = MetaData()
    state = Table(
        "library_state",
        frozen,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("version", BigInteger, nullable=False),
        CheckConstraint("id = 1", name="library_state_one_row"),
    )
    frozen.create_all(conn)
    # Start from the clock, not 0: a library dropped and created again must not
    # repeat a version that a running replica has cached.
    conn.execute(insert(state).values(id=1, version=time.time_ns() // 1_000_000))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1, _migration_2)
"""Forward migrations in order; migration i (1-based) brings the schema to version i."""
SCHEMA_VERSION = len(MIGRATIONS)


# --- engines --------------------------------------------------------------------------


def default_database_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "voxgraph" / "speakers.db"


def database_url(url: str | None) -> URL:
    """The SQLAlchemy URL for a setting value: None is the default SQLite file."""
    if url is None or not url.strip():
        return URL.create("sqlite", database=str(default_database_path()))
    try:
        parsed = make_url(url.strip())
    except ArgumentError as exc:
        raise ValueError("the speaker library URL is not a database URL") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise ValueError(f"PostgreSQL is reached through psycopg 3, not {driver!r}")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise ValueError(
        "the speaker library needs a sqlite:/// or postgresql:// URL, "
        f"not {parsed.render_as_string(hide_password=True)!r}"
    )


def _wal(cursor: Any) -> None:
    """Put the file in WAL mode, waiting out another connection that holds it.

    WAL is a property of the file, so only the first connection ever changes it; that
    change needs the file to itself and SQLite does not apply the busy timeout to it,
    so two processes opening a new library at once must retry here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_engine(url: URL) -> Engine:
    path = url.database
    if not path or path == ":memory:":
        # One shared connection, or every checkout would see a new empty database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        file = Path(path).expanduser()
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Voiceprints are biometric data: the file (and its -wal/-shm, which SQLite
        # creates with the same mode) is readable by its owner only.
        os.close(os.open(file, os.O_RDWR | os.O_CREAT, 0o600))
        engine = create_engine(url.set(database=str(file)))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's begin event below: pysqlite's own
        # implicit BEGIN is deferred, and a deferred writer that meets another writer
        # fails at once instead of waiting out the busy timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _wal(cursor)
            # FULL: a commit is on disk before it returns, power loss included.
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # Deleted voiceprints are overwritten with zeros, not left in free pages.
            cursor.execute("PRAGMA secure_delete = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("voxgraph_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _postgres_engine(url: URL) -> Engine:
    return create_engine(
        url,
        # Replicas live for days; a connection dropped by a database restart or a
        # proxy is replaced instead of failing the next request.
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10, "application_name": "voxgraph"},
    )


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema forward to `target` in one transaction; return the version now.

    Concurrent callers (replicas starting at once) queue on a lock, so each
    migration runs exactly once.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"schema version {target} is not one this release knows")
    with engine.connect() as conn:
        conn.execution_options(voxgraph_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the speaker library has schema version {current}, newer than "
                    f"{SCHEMA_VERSION}, the newest this release of voxgraph knows: "
                    "upgrade voxgraph or open another database"
                )
            for version in range(current + 1, target + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(insert(schema_version).values(version=version, applied_at=time.time()))
            return max(current, target)


# --- the store ------------------------------------------------------------------------


class SpeakerStore:
    """Named speakers and their voiceprints. Thread-safe; one per process is enough."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str | None = None) -> SpeakerStore:
        """Open (creating and migrating as needed) the library at `url`.

        `None` is the default SQLite file; `sqlite:///path` and `postgresql://...`
        (psycopg 3) are accepted. Raises SchemaTooNew for a newer database.
        """
        resolved = database_url(url)
        if resolved.get_backend_name() == "sqlite":
            engine = _sqlite_engine(resolved)
        else:
            engine = _postgres_engine(resolved)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SpeakerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(voxgraph_write=True)
            with conn.begin():
                # First statement of every write: on PostgreSQL the row lock queues
                # writers one at a time (as BEGIN IMMEDIATE does on SQLite), so what a
                # write reads stays true until it commits, and there is no lock order
                # to get wrong.
                conn.execute(update(library_state).values(version=library_state.c.version + 1))
                yield conn

    # -- reads

    def version(self) -> int:
        """A counter that changes with every committed write: poll it to refresh caches."""
        with self._read() as conn:
            return int(conn.execute(select(library_state.c.version)).scalar_one())

    def list(self) -> list[Speaker]:
        """Every enrolled speaker, by name."""
        with self._read() as conn:
            return self._speakers(conn, None)

    def get(self, speaker_id: str) -> Speaker | None:
        if not _looks_like_id(speaker_id):
            return None
        with self._read() as conn:
            return self._get(conn, speaker_id)

    def find_by_names(self, names: Iterable[str]) -> dict[str, Speaker]:
        """Enrolled speakers by name, case-insensitively; keys are the names as given.

        A name that matches no speaker (or could not be one) is absent from the result.
        """
        if isinstance(names, str):
            names = [names]
        wanted: dict[str, list[str]] = {}
        for name in names:
            key = _name_key_or_none(name)
            if key is not None:
                wanted.setdefault(key, []).append(name)
        if not wanted:
            return {}
        with self._read() as conn:
            found = self._speakers(conn, speakers.c.name_key.in_(list(wanted)))
        result: dict[str, Speaker] = {}
        for speaker in found:
            for name in wanted[normalize_name(speaker.name)[1]]:
                result[name] = speaker
        return result

    def candidates(self, model: str) -> list[Candidate]:
        """Every speaker with a voiceprint for `model`, with its unit centroid."""
        query = (
            select(
                speakers.c.id,
                speakers.c.name,
                voiceprints.c.dim,
                voiceprints.c.centroid,
                voiceprints.c.clip_count,
                voiceprints.c.speech_seconds,
                voiceprints.c.cosine_mean,
                voiceprints.c.cosine_var,
            )
            .join(voiceprints, voiceprints.c.speaker_id == speakers.c.id)
            .where(voiceprints.c.model == model)
            .order_by(speakers.c.name_key)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        result = []
        for row in rows:
            centroid = np.frombuffer(row.centroid, dtype="<f4").astype(np.float32)
            if centroid.shape != (row.dim,):
                raise RuntimeError("corrupt voiceprint row: vector length does not match its dim")
            result.append(
                Candidate(
                    id=row.id,
                    name=row.name,
                    model=model,
                    centroid=centroid,
                    clip_count=row.clip_count,
                    speech_seconds=row.speech_seconds,
                    cosine_mean=row.cosine_mean,
                    cosine_var=row.cosine_var,
                )
            )
        return result

    # -- writes

    def create(
        self,
        name: str,
        model: str,
        clip_embeddings: Sequence[np.ndarray] | np.ndarray,
        speech_seconds: Sequence[float],
    ) -> Speaker:
        """Enrol a new named speaker with a voiceprint for `model`, all or nothing."""
        display, key = normalize_name(name)
        model = _validate_model(model)
        units, seconds = _validate_clips(clip_embeddings, speech_seconds)
        acc = _Accumulator.empty(units.shape[1]).add(units, seconds)
        speaker_id = "spk_" + secrets.token_urlsafe(12)
        now = time.time()
        try:
            with self._write() as conn:
                taken = conn.execute(
                    select(speakers.c.id, speakers.c.name).where(speakers.c.name_key == key)
                ).first()
                if taken is not None:
                    raise SpeakerNameTaken(
                        f"a speaker named {taken.name!r} is already enrolled ({taken.id})"
                    )
                conn.execute(
                    insert(speakers).values(
                        id=speaker_id, name=display, name_key=key, created_at=now, updated_at=now
                    )
                )
                _insert_voiceprint(conn, speaker_id, model, acc, now)
                speaker = self._get(conn, speaker_id)
        except IntegrityError as exc:
            # Only the unique name can clash: the write lock makes the check above
            # final, so this is a last line of defence, not a path that is expected.
            raise SpeakerNameTaken(f"a speaker named {display!r} is already enrolled") from exc
        assert speaker is not None
        return speaker

    def add_samples(
        self,
        speaker_id: str,
        model: str,
        clip_embeddings: Sequence[np.ndarray] | np.ndarray,
        speech_seconds: Sequence[float],
    ) -> Speaker:
        """Add clips to a speaker's voiceprint for `model` (a new one for a new model)."""
        model = _validate_model(model)
        units, seconds = _validate_clips(clip_embeddings, speech_seconds)
        if not _looks_like_id(speaker_id):
            raise SpeakerNotFound(f"no speaker {speaker_id!r}")
        now = time.time()
        with self._write() as conn:
            exists = conn.execute(select(speakers.c.id).where(speakers.c.id == speaker_id)).first()
            if exists is None:
                raise SpeakerNotFound(f"no speaker {speaker_id!r}")
            row = conn.execute(
                select(
                    voiceprints.c.dim,
                    voiceprints.c.embedding_sum,
                    voiceprints.c.scatter,
                    voiceprints.c.clip_count,
                    voiceprints.c.speech_seconds,
                ).where(voiceprints.c.speaker_id == speaker_id, voiceprints.c.model == model)
            ).first()
            if row is None:
                acc = _Accumulator.empty(units.shape[1]).add(units, seconds)
                _insert_voiceprint(conn, speaker_id, model, acc, now)
            else:
                if row.dim != units.shape[1]:
                    raise InvalidVoiceprint(
                        f"{model!r} voiceprints have {row.dim} dimensions, "
                        f"these clip embeddings {units.shape[1]}"
                    )
                stored = _Accumulator(
                    _f64(row.embedding_sum, row.dim),
                    _f64(row.scatter, row.dim * (row.dim + 1) // 2),
                    row.clip_count,
                    row.speech_seconds,
                )
                conn.execute(
                    update(voiceprints)
                    .where(voiceprints.c.speaker_id == speaker_id, voiceprints.c.model == model)
                    .values(**_voiceprint_values(stored.add(units, seconds), now))
                )
            conn.execute(update(speakers).where(speakers.c.id == speaker_id).values(updated_at=now))
            speaker = self._get(conn, speaker_id)
        assert speaker is not None
        return speaker

    def delete(self, speaker_id: str) -> bool:
        """Erase a speaker and all of its voiceprints; False when there was none.

        On SQLite the freed pages are zeroed and the write-ahead log is checkpointed, so
        no copy stays readable in the files. On PostgreSQL the rows are gone for every
        reader at commit; the server reclaims their space by VACUUM, and erasure on the
        disk itself is the database operator's (encrypted volumes).
        """
        if not _looks_like_id(speaker_id):
            return False
        try:
            with self._write() as conn:
                # Voiceprints go with the speaker through ON DELETE CASCADE.
                query = sql_delete(speakers).where(speakers.c.id == speaker_id)
                if conn.execute(query).rowcount == 0:
                    raise _Unchanged
        except _Unchanged:
            return False
        if self.backend == "sqlite":
            self._checkpoint()
        return True

    def _checkpoint(self) -> None:
        # secure_delete zeroes the freed space in the pages it writes, but those pages
        # go to the write-ahead log first, and older frames there still hold the
        # voiceprint. Copying the log into the database and truncating it leaves no
        # readable copy behind. A reader holding the log open can make this a partial
        # checkpoint; the next write's autocheckpoint finishes the job.
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        finally:
            raw.close()

    # -- helpers

    def _get(self, conn: Connection, speaker_id: str) -> Speaker | None:
        found = self._speakers(conn, speakers.c.id == speaker_id)
        return found[0] if found else None

    @staticmethod
    def _speakers(conn: Connection, where: Any) -> list[Speaker]:
        query = (
            select(
                speakers.c.id,
                speakers.c.name,
                speakers.c.created_at,
                speakers.c.updated_at,
                voiceprints.c.model,
                voiceprints.c.dim,
                voiceprints.c.clip_count,
                voiceprints.c.speech_seconds,
                voiceprints.c.cosine_mean,
                voiceprints.c.cosine_var,
                voiceprints.c.updated_at.label("vp_updated_at"),
            )
            .outerjoin(voiceprints, voiceprints.c.speaker_id == speakers.c.id)
            .order_by(speakers.c.name_key, speakers.c.id, voiceprints.c.model)
        )
        if where is not None:
            query = query.where(where)
        grouped: dict[str, tuple[Any, list[Voiceprint]]] = {}
        for row in conn.execute(query):
            entry = grouped.setdefault(row.id, (row, []))
            if row.model is not None:
                entry[1].append(
                    Voiceprint(
                        model=row.model,
                        dim=row.dim,
                        clip_count=row.clip_count,
                        speech_seconds=row.speech_seconds,
                        cosine_mean=row.cosine_mean,
                        cosine_var=row.cosine_var,
                        updated_at=row.vp_updated_at,
                    )
                )
        return [
            Speaker(
                id=row.id,
                name=row.name,
                created_at=row.created_at,
                updated_at=row.updated_at,
                voiceprints=tuple(prints),
            )
            for row, prints in grouped.values()
        ]


def _looks_like_id(speaker_id: object) -> bool:
    return isinstance(speaker_id, str) and _ID_PATTERN.fullmatch(speaker_id) is not None


def _insert_voiceprint(
    conn: Connection, speaker_id: str, model: str, acc: _Accumulator, now: float
) -> None:
    conn.execute(
        insert(voiceprints).values(
            speaker_id=speaker_id, model=model, created_at=now, **_voiceprint_values(acc, now)
        )
    )


def _voiceprint_values(acc: _Accumulator, now: float) -> dict[str, Any]:
    centroid, mean, var = acc.summary()
    return {
        "dim": acc.dim,
        "centroid": centroid.astype("<f4").tobytes(),
        "embedding_sum": acc.total.astype("<f8").tobytes(),
        "scatter": acc.scatter.astype("<f8").tobytes(),
        "clip_count": acc.count,
        "speech_seconds": acc.seconds,
        "cosine_mean": mean,
        "cosine_var": var,
        "updated_at": now,
    }
