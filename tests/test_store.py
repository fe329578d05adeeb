"""The speaker library against both back ends: a SQLite file and a real PostgreSQL.

The PostgreSQL server is started once for the session on 127.0.0.1 (tests/pg.py);
each test gets a database of its own there, or a SQLite file of its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import stat
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from tests.pg import PostgresServer
from voxgraph.errors import (
    InvalidSpeakerName,
    InvalidVoiceprint,
    SpeakerNameTaken,
    SpeakerNotFound,
)
from voxgraph.store import (
    SCHEMA_VERSION,
    SchemaTooNew,
    SpeakerStore,
    database_url,
    migrate,
)

MODEL = "titanet_large"
DIM = 192
# Child processes fork from a server that imported this module once: spawning a fresh
# interpreter per child costs seconds on a busy machine, and forking the test process
# itself would copy whatever threads and connections it holds.
PROCESSES = multiprocessing.get_context("forkserver")
PROCESSES.set_forkserver_preload([__name__])


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'speakers.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def store(db_url: str) -> Iterator[SpeakerStore]:
    with SpeakerStore.open(db_url) as opened:
        yield opened


def voice(rng: np.random.Generator, clips: int, dim: int = DIM) -> list[np.ndarray]:
    """Clip embeddings of one synthetic voice: a direction plus noise, at random scales."""
    base = rng.normal(size=dim)
    return [(base + 0.7 * rng.normal(size=dim)) * rng.uniform(0.5, 20.0) for _ in range(clips)]


def reference(embeddings: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    units = [e / np.linalg.norm(e) for e in embeddings]
    centroid = np.sum(units, axis=0)
    centroid /= np.linalg.norm(centroid)
    cosines = np.array([u @ centroid for u in units])
    return centroid, float(cosines.mean()), float(cosines.var())


def raw_engine(url: str) -> sa.Engine:
    return sa.create_engine(database_url(url))


def scalar(url: str, query: str, **params: object) -> object:
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query), params).scalar()
    finally:
        engine.dispose()


def test_create_get_list_find_delete(store: SpeakerStore) -> None:
    rng = np.random.default_rng(1)
    ada = store.create("Ada Lovelace", MODEL, voice(rng, 3), [1.5, 2.0, 2.5])
    assert ada.id.startswith("spk_") and len(ada.id) == 20
    assert ada.name == "Ada Lovelace"
    assert ada.created_at == ada.updated_at and abs(ada.created_at - time.time()) < 60
    (print_,) = ada.voiceprints
    assert (print_.model, print_.dim, print_.clip_count, print_.speech_seconds) == (
        MODEL,
        DIM,
        3,
        6.0,
    )
    assert store.get(ada.id) == ada

    grace = store.create("Grace Hopper", MODEL, voice(rng, 2), [3.0, 3.0])
    assert [s.id for s in store.list()] == [ada.id, grace.id]

    found = store.find_by_names(
        ["ada lovelace", "GRACE HOPPER", "  Ada   Lovelace ", "Alan Turing", "bad;name", ""]
    )
    assert found == {"ada lovelace": ada, "GRACE HOPPER": grace, "  Ada   Lovelace ": ada}

    with pytest.raises(SpeakerNameTaken) as taken:
        store.create("ADA LOVELACE", MODEL, voice(rng, 1), [1.0])
    assert taken.value.status == 409 and ada.id in str(taken.value)

    assert store.delete(ada.id) is True
    assert store.delete(ada.id) is False
    assert store.delete("spk_AAAAAAAAAAAAAAAA") is False
    assert store.get(ada.id) is None
    assert store.get("not an id") is None
    assert store.list() == [grace]
    assert store.find_by_names(["Ada Lovelace"]) == {}
    # The name is free again once its speaker is gone.
    again = store.create("ada lovelace", MODEL, voice(rng, 1), [1.0])
    assert again.id != ada.id and again.name == "ada lovelace"


def test_name_validation(store: SpeakerStore) -> None:
    rng = np.random.default_rng(2)
    accepted = {
        "  Ada   Lovelace ": "Ada Lovelace",
        "José Ñúñez": "José Ñúñez",
        "李小龍": "李小龍",
        "Ελένη": "Ελένη",
        "O'Brien-Smith Jr.": "O'Brien-Smith Jr.",
        "e\u0301lise_2": "\u00e9lise_2",  # NFC: one code point, as typed elsewhere
        "अनुराग": "अनुराग",  # combining vowel signs
        "x" * 64: "x" * 64,
    }
    for given, stored in accepted.items():
        assert store.create(given, MODEL, voice(rng, 1), [1.0]).name == stored
    assert store.find_by_names(["ÉLISE_2"])["ÉLISE_2"].name == "\u00e9lise_2"

    refused = [
        "",
        "   ",
        "x" * 65,
        "Ann\nLee",
        "Tab\tName",
        "semi;colon",
        "<script>",
        "Ann Lee (CEO)",
        "smile 😀",
        "...",
        "'-_'",
        "Speaker_0",
        "speaker_12",
        42,
        None,
    ]
    for name in refused:
        with pytest.raises(InvalidSpeakerName) as error:
            store.create(name, MODEL, voice(rng, 1), [1.0])  # type: ignore[arg-type]
        assert isinstance(error.value, ValueError)
        assert error.value.status == 400 and error.value.message
    assert len(store.list()) == len(accepted)


def test_centroid_is_exact_however_the_clips_arrive(store: SpeakerStore) -> None:
    rng = np.random.default_rng(3)
    clips = voice(rng, 7)
    seconds = list(rng.uniform(0.5, 9.0, size=7))
    store.create("All At Once", MODEL, clips, seconds)
    stepwise = store.create("In Three Steps", MODEL, clips[:2], seconds[:2])
    store.add_samples(stepwise.id, MODEL, clips[2:5], seconds[2:5])
    stepwise = store.add_samples(stepwise.id, MODEL, clips[5:], seconds[5:])
    assert stepwise.updated_at >= stepwise.created_at

    centroid, mean, var = reference(clips)
    assert var > 1e-4  # the clips disagree: the variance is really measured
    candidates = {c.name: c for c in store.candidates(MODEL)}
    assert set(candidates) == {"All At Once", "In Three Steps"}
    for candidate in candidates.values():
        assert candidate.centroid.dtype == np.float32 and candidate.centroid.shape == (DIM,)
        np.testing.assert_allclose(candidate.centroid, centroid, atol=1e-6)
        assert candidate.clip_count == 7
        assert candidate.speech_seconds == pytest.approx(sum(seconds), abs=1e-9)
        assert candidate.cosine_mean == pytest.approx(mean, abs=1e-9)
        assert candidate.cosine_var == pytest.approx(var, abs=1e-9)
    once, steps = candidates["All At Once"], candidates["In Three Steps"]
    np.testing.assert_allclose(once.centroid, steps.centroid, atol=1e-6)
    (print_,) = stepwise.voiceprints
    assert print_.cosine_mean == pytest.approx(mean, abs=1e-9)
    assert print_.clip_count == 7


def test_voiceprints_per_model(store: SpeakerStore, db_url: str) -> None:
    rng = np.random.default_rng(4)
    ada = store.create("Ada", MODEL, voice(rng, 3), [1.0, 1.0, 1.0])
    other = voice(rng, 2, dim=256)
    ada = store.add_samples(ada.id, "ecapa_tdnn", other, [2.0, 2.0])
    store.create("Grace", MODEL, voice(rng, 1), [1.0])
    assert [(p.model, p.dim, p.clip_count) for p in ada.voiceprints] == [
        ("ecapa_tdnn", 256, 2),
        (MODEL, DIM, 3),
    ]
    assert [c.name for c in store.candidates(MODEL)] == ["Ada", "Grace"]
    (ecapa,) = store.candidates("ecapa_tdnn")
    assert ecapa.id == ada.id
    np.testing.assert_allclose(ecapa.centroid, reference(other)[0], atol=1e-6)
    assert store.candidates("unknown") == []

    with pytest.raises(InvalidVoiceprint, match="256 dimensions"):
        store.add_samples(ada.id, "ecapa_tdnn", voice(rng, 1, dim=128), [1.0])
    with pytest.raises(SpeakerNotFound) as missing:
        store.add_samples("spk_AAAAAAAAAAAAAAAA", MODEL, voice(rng, 1), [1.0])
    assert missing.value.status == 404
    bad_inputs = [
        ([], []),
        (voice(rng, 2), [1.0]),
        ([np.zeros(DIM)], [1.0]),
        ([np.full(DIM, np.nan)], [1.0]),
        ([np.ones((2, DIM))], [1.0]),
        ([np.ones(DIM), np.ones(DIM + 1)], [1.0, 1.0]),
        (voice(rng, 1), [-1.0]),
        (voice(rng, 1), [float("inf")]),
    ]
    for clips, seconds in bad_inputs:
        with pytest.raises(InvalidVoiceprint):
            store.create("Alan", MODEL, clips, seconds)
        with pytest.raises(InvalidVoiceprint):
            store.add_samples(ada.id, MODEL, clips, seconds)
    with pytest.raises(InvalidVoiceprint):
        store.create("Alan", "", voice(rng, 1), [1.0])
    assert store.get(ada.id) == ada
    assert [s.name for s in store.list()] == ["Ada", "Grace"]

    assert store.delete(ada.id)
    assert scalar(db_url, "SELECT count(*) FROM voiceprints WHERE speaker_id = :id", id=ada.id) == 0


def _v1_database(url: str, embeddings: list[np.ndarray]) -> str:
    """A library as the first schema version wrote it, with one enrolled speaker."""
    engine = raw_engine(url)
    try:
        assert migrate(engine, target=1) == 1
        units = np.stack([e / np.linalg.norm(e) for e in embeddings])
        total = units.sum(axis=0)
        centroid, mean, var = reference(embeddings)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO speakers (id, name, name_key, created_at, updated_at) "
                    "VALUES ('spk_v1v1v1v1v1v1v1v1', 'Old Timer', 'old timer', 1.0, 1.0)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO voiceprints (speaker_id, model, dim, centroid, embedding_sum, "
                    "scatter, clip_count, speech_seconds, cosine_mean, cosine_var, created_at, "
                    "updated_at) VALUES ('spk_v1v1v1v1v1v1v1v1', :model, :dim, :centroid, "
                    ":total, :scatter, :count, 4.0, :mean, :var, 1.0, 1.0)"
                ),
                {
                    "model": MODEL,
                    "dim": DIM,
                    "centroid": centroid.astype("<f4").tobytes(),
                    "total": total.astype("<f8").tobytes(),
                    "scatter": (units.T @ units)[np.triu_indices(DIM)].astype("<f8").tobytes(),
                    "count": len(embeddings),
                    "mean": mean,
                    "var": var,
                },
            )
        assert not sa.inspect(engine).has_table("library_state")
    finally:
        engine.dispose()
    return "spk_v1v1v1v1v1v1v1v1"


def test_opening_an_older_schema_migrates_it(db_url: str) -> None:
    rng = np.random.default_rng(5)
    clips = voice(rng, 5)
    old_id = _v1_database(db_url, clips[:3])

    with SpeakerStore.open(db_url) as store:
        versions = scalar(db_url, "SELECT count(*) FROM schema_version")
        assert versions == SCHEMA_VERSION == 2
        assert isinstance(store.version(), int)
        old = store.get(old_id)
        assert old is not None and old.name == "Old Timer"
        assert old.voiceprints[0].clip_count == 3
        assert store.find_by_names(["OLD TIMER"]) == {"OLD TIMER": old}
        before = store.version()
        store.add_samples(old_id, MODEL, clips[3:], [1.0, 1.0])
        assert store.version() > before
        (candidate,) = store.candidates(MODEL)
        np.testing.assert_allclose(candidate.centroid, reference(clips)[0], atol=1e-6)
        assert candidate.cosine_var == pytest.approx(reference(clips)[2], abs=1e-9)

    # Opening again applies nothing twice.
    with SpeakerStore.open(db_url):
        assert scalar(db_url, "SELECT max(version) FROM schema_version") == SCHEMA_VERSION
        assert scalar(db_url, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION


def test_opening_a_newer_schema_fails_clearly(db_url: str) -> None:
    rng = np.random.default_rng(6)
    with SpeakerStore.open(db_url) as store:
        store.create("Ada", MODEL, voice(rng, 1), [1.0])
    engine = raw_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, 0)"),
            {"v": SCHEMA_VERSION + 1},
        )
    engine.dispose()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        SpeakerStore.open(db_url)
    assert scalar(db_url, "SELECT count(*) FROM speakers") == 1


def test_version_changes_with_every_write(store: SpeakerStore, db_url: str) -> None:
    rng = np.random.default_rng(7)
    with SpeakerStore.open(db_url) as replica:
        start = replica.version()
        store.list()
        store.candidates(MODEL)
        assert replica.version() == store.version() == start

        ada = store.create("Ada", MODEL, voice(rng, 2), [1.0, 1.0])
        created = replica.version()
        assert created > start
        assert [c.id for c in replica.candidates(MODEL)] == [ada.id]

        for failing in (
            lambda: store.create("ADA", MODEL, voice(rng, 1), [1.0]),
            lambda: store.create("bad;name", MODEL, voice(rng, 1), [1.0]),
            lambda: store.add_samples(ada.id, MODEL, voice(rng, 1, dim=DIM + 1), [1.0]),
        ):
            with pytest.raises((SpeakerNameTaken, InvalidSpeakerName, InvalidVoiceprint)):
                failing()
        assert replica.version() == created

        store.add_samples(ada.id, MODEL, voice(rng, 1), [1.0])
        added = replica.version()
        assert added > created
        assert not store.delete("spk_AAAAAAAAAAAAAAAA")
        assert replica.version() == added
        store.delete(ada.id)
        assert replica.version() > added
        assert replica.candidates(MODEL) == []


def _enrol_many(url: str, worker: int, count: int, barrier: Barrier, errors: Queue[str]) -> None:
    try:
        rng = np.random.default_rng(worker)
        barrier.wait(timeout=60)
        # Both workers open a library that does not exist yet at the same moment.
        with SpeakerStore.open(url) as store:
            for i in range(count):
                store.create(f"Worker {worker} Voice {i}", MODEL, voice(rng, 2), [1.0, 2.0])
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def _enrol_at_once(url: str, processes: int, count: int) -> None:
    """`processes` workers open the library at the same moment and enrol `count` each."""
    barrier, errors = PROCESSES.Barrier(processes), PROCESSES.Queue()
    workers = [
        PROCESSES.Process(target=_enrol_many, args=(url, w, count, barrier, errors))
        for w in range(processes)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    assert [p.exitcode for p in workers] == [0] * processes


def test_concurrent_enrolments_from_two_processes(db_url: str) -> None:
    count = 10
    _enrol_at_once(db_url, 2, count)
    with SpeakerStore.open(db_url) as store:
        names = sorted(s.name for s in store.list())
        assert names == sorted(f"Worker {w} Voice {i}" for w in range(2) for i in range(count))
        assert all(s.voiceprints[0].clip_count == 2 for s in store.list())
        assert len(store.candidates(MODEL)) == 2 * count
    # Each migration ran once, though both processes created the schema concurrently.
    assert scalar(db_url, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION


def test_concurrent_opens_migrate_once(db_url: str) -> None:
    # Replicas starting together all find an empty database and race to create it.
    _enrol_at_once(db_url, 4, 1)
    assert scalar(db_url, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION
    assert scalar(db_url, "SELECT count(*) FROM speakers") == 4


def _enrol_then_hang(url: str, pipe: Connection) -> None:
    """Enrol three speakers, then stop for good inside the fourth enrolment's transaction."""
    rng = np.random.default_rng(8)
    store = SpeakerStore.open(url)
    hang = {"armed": False}

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _pause(*args: object) -> None:
        statement = str(args[2])
        # The speaker row is written, its voiceprint is not: the worst moment to die.
        if hang["armed"] and statement.lstrip().upper().startswith("INSERT INTO VOICEPRINTS"):
            pipe.send(("paused", None))
            time.sleep(600)

    for i in range(3):
        speaker = store.create(f"Committed {i}", MODEL, voice(rng, 3), [1.0, 1.0, 1.0])
        pipe.send(("committed", speaker.id))
    hang["armed"] = True
    store.create("In Flight", MODEL, voice(rng, 3), [1.0, 1.0, 1.0])


def _enrol_forever(url: str, pipe: Connection) -> None:
    rng = np.random.default_rng(9)
    with SpeakerStore.open(url) as store:
        for i in range(10_000):
            speaker = store.create(f"Loop {i}", MODEL, voice(rng, 4), [1.0] * 4)
            pipe.send(("committed", speaker.id))


def _run_until_killed(
    target: Callable[[str, Connection], None], url: str, until: str, min_commits: int
) -> list[str]:
    """Run `target` in a child, SIGKILL it once it reports `until` or enough commits."""
    receiver, sender = PROCESSES.Pipe(duplex=False)
    child = PROCESSES.Process(target=target, args=(url, sender))
    child.start()
    sender.close()
    committed: list[str] = []
    try:
        while True:
            assert receiver.poll(60), "the enrolling process went quiet"
            kind, value = receiver.recv()
            if kind == "committed":
                committed.append(value)
            if kind == until or (until == "committed" and len(committed) >= min_commits):
                break
        if until == "committed":
            # Somewhere in the next enrolment: before, inside or after its transaction.
            time.sleep(np.random.default_rng().uniform(0.0, 0.03))
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    # Commits reported just before the kill; the pipe ends with the child.
    while receiver.poll():
        try:
            kind, value = receiver.recv()
        except EOFError:
            break
        committed.append(value)
    return committed


def _assert_library_whole(url: str) -> list[str]:
    with SpeakerStore.open(url) as store:
        listed = store.list()
        assert all(len(s.voiceprints) == 1 for s in listed)
        assert len(store.candidates(MODEL)) == len(listed)
    orphans = scalar(
        url,
        "SELECT count(*) FROM speakers s LEFT JOIN voiceprints v ON v.speaker_id = s.id "
        "WHERE v.speaker_id IS NULL",
    )
    assert orphans == 0
    return [s.id for s in listed]


def test_sigkill_mid_enrolment_loses_nothing_committed(db_url: str) -> None:
    committed = _run_until_killed(_enrol_then_hang, db_url, "paused", 0)
    assert len(committed) == 3
    assert sorted(_assert_library_whole(db_url)) == sorted(committed)
    with SpeakerStore.open(db_url) as store:
        assert store.find_by_names(["In Flight"]) == {}
        # Nothing of the killed transaction holds a lock or the name.
        late = store.create("In Flight", MODEL, voice(np.random.default_rng(0), 1), [1.0])
        assert store.delete(late.id)

    committed += _run_until_killed(_enrol_forever, db_url, "committed", 5)
    present = set(_assert_library_whole(db_url))
    assert set(committed) <= present
    # At most the enrolment that committed just before the kill, unreported.
    assert len(present - set(committed)) <= 1


def test_sql_in_names_is_refused_or_harmless(store: SpeakerStore, db_url: str) -> None:
    rng = np.random.default_rng(10)
    keeper = store.create("Keeper", MODEL, voice(rng, 2), [1.0, 1.0])
    for hostile in (
        "Robert'); DROP TABLE speakers;--",
        "x' OR '1'='1",
        'a"; DELETE FROM voiceprints; --',
    ):
        with pytest.raises(InvalidSpeakerName):
            store.create(hostile, MODEL, voice(rng, 1), [1.0])
    # Quotes and dashes are legitimate in names; they are stored as data, verbatim.
    quoted = store.create("Robert' OR 'a'-'a --", MODEL, voice(rng, 1), [1.0])
    assert store.get(quoted.id) == quoted and quoted.name == "Robert' OR 'a'-'a --"
    assert list(store.find_by_names(["robert' or 'a'-'a --"])) == ["robert' or 'a'-'a --"]
    assert store.find_by_names(["' OR '1'='1", "x'); DROP TABLE speakers;--", "%", "_"]) == {}
    assert store.get("spk_' OR '1'='1") is None
    assert store.delete("' OR 1=1 --") is False
    model = "titanet'; DROP TABLE voiceprints;--"
    store.add_samples(keeper.id, model, voice(rng, 1), [1.0])
    assert [c.id for c in store.candidates(model)] == [keeper.id]
    assert [s.name for s in store.list()] == ["Keeper", "Robert' OR 'a'-'a --"]
    assert scalar(db_url, "SELECT count(*) FROM voiceprints") == 3


def _database_bytes(url: str) -> bytes:
    path = Path(str(database_url(url).database))
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_delete_erases_the_voiceprint(db_url: str) -> None:
    rng = np.random.default_rng(11)
    name = "Zebulon Quixote"
    sqlite = database_url(db_url).get_backend_name() == "sqlite"
    with SpeakerStore.open(db_url) as store:
        keeper = store.create("Keeper", MODEL, voice(rng, 2), [1.0, 1.0])
        doomed = store.create(name, MODEL, voice(rng, 3), [1.0, 1.0, 1.0])
        store.add_samples(doomed.id, "ecapa_tdnn", voice(rng, 2, dim=256), [1.0, 1.0])
        centroid = next(c for c in store.candidates(MODEL) if c.id == doomed.id).centroid
        needle = centroid.astype("<f4").tobytes()[:64]
        if sqlite:
            assert name.encode() in _database_bytes(db_url)
            assert needle in _database_bytes(db_url)
        assert store.delete(doomed.id)
        assert store.get(keeper.id) == keeper
        if sqlite:
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
            # Not merely unlinked: while the library stays open, no byte of the name or
            # the voiceprint is left in the database file or its write-ahead log.
            leftover = _database_bytes(db_url)
            assert name.encode() not in leftover
            assert needle not in leftover
    for table, column in (("speakers", "id"), ("voiceprints", "speaker_id")):
        count = scalar(db_url, f"SELECT count(*) FROM {table} WHERE {column} = :id", id=doomed.id)
        assert count == 0
    assert scalar(db_url, "SELECT count(*) FROM voiceprints") == 1


def test_default_location_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with SpeakerStore.open(None) as store:
        assert store.backend == "sqlite"
        store.create("Ada", MODEL, voice(np.random.default_rng(12), 1), [1.0])
    path = tmp_path / "xdg" / "voxgraph" / "speakers.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT name FROM speakers").fetchall() == [("Ada",)]

    # A relative XDG_DATA_HOME is invalid by the spec and falls back to ~/.local/share.
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "voxgraph" / "speakers.db"
    assert database_url(None).database == str(expected)
    assert database_url("").database == str(expected)

    assert database_url("postgresql://u:pw@db:5432/vox").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@db/vox").drivername == "postgresql+psycopg"
    assert database_url("sqlite:////var/lib/vox.db").database == "/var/lib/vox.db"
    with pytest.raises(ValueError, match="psycopg 3"):
        database_url("postgresql+psycopg2://u@db/vox")
    with pytest.raises(ValueError, match="not a database URL"):
        database_url("speakers.db")
    with pytest.raises(ValueError, match="sqlite:/// or postgresql://") as error:
        database_url("mysql://u:secret@db/vox")
    assert "secret" not in str(error.value)
