"""The ledger file at start-up and the ledger lock: a ledger is created only where no file
exists, and atomically; anything else that is not a sound kiosk ledger is refused byte for byte
untouched (no -wal or -shm left behind); pending migrations apply all or none; one process at a
time holds a ledger's lock, and a dead holder's lock is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from kiosk import lock as lock_mod
from kiosk import reports, schema
from kiosk.errors import KioskError, LedgerError
from kiosk.lock import LedgerBusy, LedgerLock, holder
from kiosk.migrations import MIGRATIONS, Migration
from kiosk.schema import open_ledger

ROOT = Path(__file__).resolve().parents[1]
NEWEST = len(MIGRATIONS)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def versions(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM migrations ORDER BY 1")]


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def sqlite_file(path: Path, *statements: str, wal: bool = True) -> Path:
    """A database built by something else than the kiosk, closed (so no -wal is left)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    return path


@pytest.fixture
def opened() -> Iterator[Callable[..., tuple[Database, bool]]]:
    """open_ledger, with every database it returns closed after the test."""
    dbs: list[Database] = []

    def open_(path: Path, **kwargs: Any) -> tuple[Database, bool]:
        db, created = open_ledger(path, **kwargs)
        dbs.append(db)
        return db, created

    yield open_
    for db in dbs:
        db.close()


def a_ledger(path: Path, migrations: list[Migration] | None = None) -> Path:
    db, created = open_ledger(path, migrations=migrations)
    db.close()
    assert created
    return path


# --- a new ledger -------------------------------------------------------------------------------


def test_a_ledger_is_created_where_no_file_exists(
    tmp_path: Path, opened: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "kiosk.db"
    with caplog.at_level(logging.INFO, logger="kiosk.schema"):
        db, created = opened(path, busy_timeout_ms=250)
    assert created is True
    assert f"ledger {path}: created at schema version {NEWEST}" in caplog.messages
    assert [v for (v,) in db.execute("SELECT version FROM migrations")] == list(
        range(1, NEWEST + 1)
    )
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    assert set(listing(tmp_path)) <= {"kiosk.db", "kiosk.db-wal", "kiosk.db-shm"}


def test_an_existing_ledger_is_opened_not_created(tmp_path: Path, opened: Callable) -> None:
    path = a_ledger(tmp_path / "kiosk.db")
    db, created = opened(path)
    assert created is False
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == schema.BUSY_TIMEOUT_MS
    assert versions(path) == list(range(1, NEWEST + 1))


def test_a_failed_migration_leaves_no_half_created_ledger(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.db"
    broken = [
        *MIGRATIONS,
        (NEWEST + 1, "broken", "CREATE TABLE x (a); INSERT INTO nope VALUES (1)"),
    ]
    with pytest.raises(LedgerError) as info:
        open_ledger(path, migrations=broken)
    message = str(info.value)
    assert message.startswith(f"ledger {path}: not created: migration {NEWEST + 1} (broken) ")
    assert "no such table: nope" in message
    assert listing(tmp_path) == []


def test_a_full_disk_while_creating_leaves_nothing(tmp_path: Path) -> None:
    """max_page_count makes SQLite meet a full disk, as a tiny filesystem would."""
    path = tmp_path / "kiosk.db"
    fill = (
        "PRAGMA max_page_count = 8; CREATE TABLE big (b BLOB); "
        "INSERT INTO big SELECT randomblob(4000) FROM (WITH RECURSIVE n(i) AS "
        "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) SELECT i FROM n)"
    )
    with pytest.raises(LedgerError, match="database or disk is full"):
        open_ledger(path, migrations=[*MIGRATIONS, (NEWEST + 1, "fill", fill)])
    assert listing(tmp_path) == []
    assert open_ledger(path)[1] is True  # and the next start creates it whole


def test_a_ledger_is_not_created_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "kiosk.db"
    with pytest.raises(LedgerError) as info:
        open_ledger(path)
    assert str(info.value) == f"ledger {path}: cannot create: No such file or directory"
    assert listing(tmp_path) == []


def test_a_journal_without_its_ledger_is_not_replayed_into_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.db"
    leftover = tmp_path / "kiosk.db-wal"
    leftover.write_bytes(b"frames of a ledger that is gone")
    with pytest.raises(LedgerError, match=r"does not exist but .*kiosk\.db-wal does"):
        open_ledger(path)
    assert listing(tmp_path) == ["kiosk.db-wal"]


def test_a_file_appearing_meanwhile_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kiosk.db"
    real_link = os.link

    def link_after_another(src: str, dst: str) -> None:
        Path(dst).write_bytes(b"someone else's")
        real_link(src, dst)

    monkeypatch.setattr(schema.os, "link", link_after_another)
    with pytest.raises(LedgerError, match="appeared while a new one was built"):
        open_ledger(path)
    assert path.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["kiosk.db"]


def test_without_hard_links_the_new_ledger_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: Callable
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(schema.os, "link", no_links)
    _, created = opened(tmp_path / "kiosk.db")
    assert created and versions(tmp_path / "kiosk.db") == list(range(1, NEWEST + 1))
    assert set(listing(tmp_path)) <= {"kiosk.db", "kiosk.db-wal", "kiosk.db-shm"}


# --- existing files that are refused, untouched -------------------------------------------------


def _malformed(path: Path) -> Path:
    a_ledger(path)
    data = bytearray(path.read_bytes())
    page = 4096
    data[page : 3 * page] = os.urandom(2 * page)  # the first tables' pages
    path.write_bytes(bytes(data))
    return path


REFUSED: list[tuple[str, Callable[[Path], Path], str]] = [
    ("empty", lambda p: (p.write_bytes(b""), p)[1], "is an empty file, not a kiosk ledger"),
    ("text", lambda p: (p.write_text("kiosk\n"), p)[1], "not an SQLite database"),
    ("malformed", _malformed, "damaged"),
    ("no tables", lambda p: sqlite_file(p), "no kiosk tables"),
    (
        "another program's",
        lambda p: sqlite_file(p, "CREATE TABLE photos (id INTEGER)"),
        "not a kiosk ledger (its tables: photos)",
    ),
    (
        "rollback journal, another program's",
        lambda p: sqlite_file(p, "CREATE TABLE photos (id INTEGER)", wal=False),
        "not a kiosk ledger",
    ),
    (
        "kiosk tables without migrations",
        lambda p: sqlite_file(p, "CREATE TABLE meta (key TEXT)", "CREATE TABLE coins (id INT)"),
        "half-migrated: kiosk tables (coins, meta) but no migrations record",
    ),
    (
        "empty migrations record",
        lambda p: sqlite_file(
            p, "CREATE TABLE migrations (version INT)", "CREATE TABLE coins (id INT)"
        ),
        "half-migrated: its migrations record holds versions none",
    ),
    (
        "a gap in the record",
        lambda p: _recorded(p, [1, 3] if NEWEST >= 3 else [2]),
        "half-migrated: its migrations record holds versions",
    ),
    ("newer", lambda p: _recorded(p, [*range(1, NEWEST + 1), 99]), "schema version 99 is newer"),
]


def _recorded(path: Path, recorded: list[int]) -> Path:
    a_ledger(path)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM migrations")
        for version in recorded:
            conn.execute("INSERT INTO migrations VALUES (?, 'x', 'now')", [version])
    return path


@pytest.mark.parametrize(("make", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_file_that_is_not_a_sound_ledger_is_refused_untouched(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path / "kiosk.db")
    before, files = digest(path), listing(tmp_path)
    with pytest.raises(LedgerError) as info:
        open_ledger(path)
    assert str(info.value).startswith(f"ledger {path}: ")
    assert reason in str(info.value)
    assert digest(path) == before
    assert listing(tmp_path) == files  # no -wal or -shm left behind


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="is a directory, not a ledger file"):
        open_ledger(tmp_path)


def test_a_ledger_with_a_journal_beside_it_is_read_with_the_journal(
    tmp_path: Path, opened: Callable
) -> None:
    """A daemon that died leaves its commits in the -wal: they count, and nothing is refused."""
    path = a_ledger(tmp_path / "kiosk.db")
    writer = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(path)], capture_output=True, timeout=60
    )
    assert writer.returncode == 0, writer.stderr
    assert (tmp_path / "kiosk.db-wal").stat().st_size > 0
    db, created = opened(path)
    assert not created
    assert db.execute("SELECT value FROM meta WHERE key = 'left'").fetchone()[0] == "in the wal"


_CRASHING_WRITER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("INSERT INTO meta VALUES ('left', 'in the wal')")
conn.commit()
os._exit(0)  # a crash: no checkpoint, the -wal stays
"""


# --- migrations of an existing ledger -----------------------------------------------------------


def test_pending_migrations_apply_to_an_existing_ledger(tmp_path: Path, opened: Callable) -> None:
    path = a_ledger(tmp_path / "kiosk.db", MIGRATIONS[:1])
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO meta VALUES ('kiosk_id', 'sim-001')")
    db, created = opened(path)
    assert not created
    assert versions(path) == list(range(1, NEWEST + 1))
    assert db.execute("SELECT value FROM meta").fetchone()[0] == "sim-001"


def test_collections_from_before_their_amounts_get_them_from_the_coins(
    tmp_path: Path, opened: Callable
) -> None:
    path = a_ledger(tmp_path / "kiosk.db", MIGRATIONS[:3])
    at = "2026-01-01T00:00:00Z"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO credit_sessions (opened_at, balance_cents) VALUES (?, 0)", [at])
        for value in (5, 2, 1, 5, 5):
            conn.execute(
                "INSERT INTO coins (at, session_id, value_cents) VALUES (?, 1, ?)", [at, value]
            )
        conn.execute("INSERT INTO cashbox VALUES (5, 1)")
        for last_coin in (2, 2, 5):  # the second one found the box empty
            conn.execute(
                "INSERT INTO collections (at, last_coin_id, actor) VALUES (?, ?, 'tech')",
                [at, last_coin],
            )
    db, _ = opened(path)
    amounts = db.execute("SELECT expected_cents FROM collections ORDER BY id").fetchall()
    assert [a for (a,) in amounts] == [7, 0, 11]
    assert "cashbox" not in tables(path)
    assert reports.check_cashbox(db).ok


def test_all_pending_migrations_apply_or_none(tmp_path: Path) -> None:
    path = a_ledger(tmp_path / "kiosk.db", MIGRATIONS[:1])
    before = digest(path)
    plan = [
        *MIGRATIONS,
        (NEWEST + 1, "fine", "CREATE TABLE fine (a INTEGER)"),
        (NEWEST + 2, "broken", "CREATE TABLE half (a); INSERT INTO nope VALUES (1)"),
    ]
    with pytest.raises(LedgerError) as info:
        open_ledger(path, migrations=plan)
    assert str(info.value).startswith(f"ledger {path}: migration {NEWEST + 2} (broken) failed: ")
    assert str(info.value).endswith("; the ledger keeps its schema")
    assert versions(path) == [1]
    assert not tables(path) & {"fine", "half", "migrations_x"}
    assert "merged" not in _columns(path, "coins")
    assert digest(path) == before  # WAL mode: the rolled-back work never reached the file


def _columns(path: Path, table: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_migration_may_hold_semicolons_inside_a_statement(
    tmp_path: Path, opened: Callable
) -> None:
    trigger = """
        CREATE TABLE notes (text TEXT);
        CREATE TRIGGER no_empty BEFORE INSERT ON notes WHEN new.text = ''
        BEGIN SELECT RAISE(ABORT, 'empty; refused'); END;
    """
    db, _ = opened(tmp_path / "kiosk.db", migrations=[*MIGRATIONS, (NEWEST + 1, "notes", trigger)])
    with pytest.raises(sqlite3.IntegrityError, match="empty; refused"):
        db.execute("INSERT INTO notes VALUES ('')")


def test_migrate_on_an_open_connection_keeps_working(tmp_path: Path) -> None:
    """The current Ledger start-up (connect + quick_check + migrate) on a new file."""
    db = schema.connect(tmp_path / "kiosk.db")
    try:
        assert schema.migrate(db) == NEWEST
        assert schema.migrate(db) == NEWEST
    finally:
        db.close()
    assert versions(tmp_path / "kiosk.db") == list(range(1, NEWEST + 1))


def test_connections_carry_their_busy_timeout(tmp_path: Path) -> None:
    path = a_ledger(tmp_path / "kiosk.db")
    read_only = {"read_only": True}
    for kwargs in [{}, read_only, {**read_only, "immutable": True}]:
        db = schema.connect(path, busy_timeout_ms=250, **kwargs)
        try:
            assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 250
            assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        finally:
            db.close()
    with pytest.raises(ValueError, match="read-only"):
        schema.connect(path, immutable=True)


# --- the ledger lock ----------------------------------------------------------------------------

_HOLDER = """
import os, sys
from kiosk.lock import LedgerLock
LedgerLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.readline()
os._exit(0)  # dies holding the lock, without releasing it
"""


@contextlib.contextmanager
def held_elsewhere(ledger: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the ledger's lock until the block ends (then it dies)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(ledger)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_lock_holds_the_owners_pid_until_released(tmp_path: Path) -> None:
    ledger = tmp_path / "kiosk.db"
    lock = LedgerLock(ledger)
    assert holder(ledger) is None and not (tmp_path / "kiosk.db.lock").exists()
    with lock:
        assert lock.held
        assert (tmp_path / "kiosk.db.lock").read_text() == f"{os.getpid()}\n"
        assert holder(ledger) == os.getpid()
        assert lock.acquire() is lock  # already held: nothing changes
    assert not lock.held
    assert holder(ledger) is None
    assert (tmp_path / "kiosk.db.lock").read_text() == ""
    lock.release()  # idempotent
    assert listing(tmp_path) == ["kiosk.db.lock"]  # kept: removing it would race a new holder


def test_a_second_process_cannot_take_a_held_lock(tmp_path: Path) -> None:
    ledger = tmp_path / "kiosk.db"
    with held_elsewhere(ledger) as other:
        assert holder(ledger) == other.pid
        with pytest.raises(LedgerBusy) as info:
            LedgerLock(ledger).acquire()
        assert str(info.value) == (
            f"ledger {ledger} is in use by kiosk process {other.pid} (lock {ledger}.lock)"
        )
        assert info.value.pid == other.pid
        assert isinstance(info.value, KioskError)
    # The holder died without releasing: the kernel dropped its flock, the file still says its
    # PID, and the lock is simply taken over.
    assert (tmp_path / "kiosk.db.lock").read_text() == f"{other.pid}\n"
    assert holder(ledger) is None
    with LedgerLock(ledger):
        assert holder(ledger) == os.getpid()


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    with LedgerLock(tmp_path / "kiosk.db"), pytest.raises(LedgerBusy, match=str(os.getpid())):
        LedgerLock(tmp_path / "kiosk.db").acquire()


def test_a_passing_probe_does_not_make_the_ledger_busy(tmp_path: Path) -> None:
    """holder() takes a shared lock for an instant; an acquirer meeting it waits it out."""
    ledger = tmp_path / "kiosk.db"
    lock_file = tmp_path / "kiosk.db.lock"
    lock_file.write_text("")
    fd = os.open(lock_file, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    timer = threading.Timer(0.02, os.close, [fd])
    timer.start()
    try:
        with LedgerLock(ledger) as lock:
            assert lock.held
    finally:
        timer.join()


def test_a_lock_that_cannot_be_created_is_a_ledger_error(tmp_path: Path) -> None:
    ledger = tmp_path / "missing" / "kiosk.db"
    with pytest.raises(LedgerError) as info:
        LedgerLock(ledger).acquire()
    assert str(info.value) == (
        f"ledger {ledger}: cannot open its lock {ledger}.lock: No such file or directory"
    )
    assert not isinstance(info.value, LedgerBusy)
    assert lock_mod.lock_path(ledger) == Path(f"{ledger}.lock")
