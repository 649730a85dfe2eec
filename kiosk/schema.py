"""The connection settings every opener of the ledger applies, the start-up rules for the ledger
file, and the running of its migrations (kept in kiosk.migrations).

A migration is applied once, in order, and recorded in `migrations`; all pending migrations run in
one transaction, so a ledger is at one recorded version or the one before, never in between.

`open_ledger` creates a ledger only where no file exists, and builds it beside its final path so
that a failure (or a power cut) never leaves a half-created ledger there. Any existing file that is
not a sound kiosk ledger at a known version is refused untouched: the kiosk would rather stop than
write its money records into something it does not understand.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlite_utils import Database

from kiosk.errors import LedgerError
from kiosk.migrations import MIGRATIONS, Migration

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
SQLITE_HEADER = b"SQLite format 3\x00"


def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    immutable: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> Database:
    """Open the ledger with the durability settings every connection needs.

    `read_only` never creates the file. `immutable` (read-only only) takes no locks and never
    creates -wal or -shm files, but ignores a WAL: only for a file nothing writes to and whose
    WAL has been checkpointed (see `kiosk verify`).
    """
    if immutable and not read_only:
        raise ValueError("an immutable connection is read-only")
    timeout_s = busy_timeout_ms / 1000
    try:
        if read_only:
            conn = sqlite3.connect(_uri(path, immutable), uri=True, timeout=timeout_s)
        else:
            conn = sqlite3.connect(str(path), timeout=timeout_s)
    except sqlite3.Error as err:
        raise LedgerError(f"ledger {path}: cannot open: {err}") from err
    db = Database(conn)
    try:
        if not read_only:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA journal_size_limit=4194304")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    except sqlite3.Error as err:
        db.close()
        raise LedgerError(f"ledger {path}: cannot open: {err}") from err
    return db


def _uri(path: str | Path, immutable: bool) -> str:
    # Quoted and absolute, so a name with '?', '#' or '%' is still a file name.
    uri = "file://" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    return uri + "&immutable=1" if immutable else uri


# --- what a file holds ---------------------------------------------------------------------------


def _kiosk_tables(migrations: Sequence[Migration]) -> set[str]:
    sql = "\n".join(m[2] for m in migrations)
    return {name.lower() for name in re.findall(r"CREATE\s+TABLE\s+(\w+)", sql, re.IGNORECASE)}


def schema_version(
    db: Database, path: str | Path, migrations: Sequence[Migration] | None = None
) -> int:
    """The version a sound kiosk ledger records (0 for a database without kiosk tables).

    LedgerError for anything else: the tables of another program, kiosk tables without their
    migrations record, a record that is not versions 1..n in order, or a newer schema.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    tables = {
        row[0].lower()
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if "migrations" not in tables:
        ours = sorted(tables & _kiosk_tables(migrations))
        if ours:
            raise LedgerError(
                f"ledger {path}: half-migrated: kiosk tables ({', '.join(ours)}) "
                "but no migrations record"
            )
        if tables:
            raise LedgerError(
                f"ledger {path}: not a kiosk ledger (its tables: {', '.join(sorted(tables))})"
            )
        return 0
    try:
        versions = [int(v) for (v,) in db.execute("SELECT version FROM migrations ORDER BY 1")]
    except (sqlite3.Error, TypeError, ValueError) as err:
        raise LedgerError(f"ledger {path}: unreadable migrations record: {err}") from err
    known = [version for version, _, _ in migrations]
    if versions and versions[-1] > known[-1]:
        raise LedgerError(
            f"ledger {path}: schema version {versions[-1]} is newer than this kiosk ({known[-1]})"
        )
    if versions != known[: len(versions)] or (not versions and tables != {"migrations"}):
        recorded = ", ".join(map(str, versions)) or "none"
        raise LedgerError(
            f"ledger {path}: half-migrated: its migrations record holds versions {recorded} "
            f"(a kiosk ledger records 1 to n in order, n at most {known[-1]})"
        )
    return len(versions)


def check_header(path: str | Path) -> None:
    """LedgerError unless `path` is a readable, non-empty SQLite file (read without SQLite, which
    would create -wal and -shm files beside a file it cannot use)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except IsADirectoryError as err:
        raise LedgerError(f"ledger {path}: is a directory, not a ledger file") from err
    except OSError as err:
        raise LedgerError(f"ledger {path}: cannot read: {err.strerror}") from err
    if not header:
        raise LedgerError(
            f"ledger {path}: is an empty file, not a kiosk ledger "
            "(a new ledger is created only where no file exists)"
        )
    if header != SQLITE_HEADER:
        raise LedgerError(f"ledger {path}: not an SQLite database, so not a kiosk ledger")


def check_ledger(
    db: Database, path: str | Path, migrations: Sequence[Migration] | None = None
) -> int:
    """`PRAGMA quick_check` and the schema check; returns the schema version."""
    try:
        result = [row[0] for row in db.execute("PRAGMA quick_check")]
        if result != ["ok"]:
            raise LedgerError(f"ledger {path}: damaged: quick_check: {'; '.join(result[:3])}")
        version = schema_version(db, path, migrations)
    except sqlite3.DatabaseError as err:  # "file is not a database", "disk image is malformed"
        raise LedgerError(f"ledger {path}: damaged: {err}") from err
    if version == 0:
        raise LedgerError(f"ledger {path}: no kiosk tables, so not a kiosk ledger")
    return version


def inspect_ledger(path: str | Path, migrations: Sequence[Migration] | None = None) -> int:
    """Check an existing file without changing it, and return its schema version.

    The caller holds the ledger lock (or nothing else writes the file): with no journal beside
    it, the file is read as immutable, so SQLite creates no -wal or -shm file for a database it
    then refuses. A -wal or -journal beside it may hold committed data, so it is read normally.
    """
    check_header(path)
    journal = any(os.path.lexists(f"{path}{suffix}") for suffix in ("-wal", "-journal"))
    db = connect(path, read_only=True, immutable=not journal)
    try:
        return check_ledger(db, path, migrations)
    finally:
        db.close()


# --- migrations ----------------------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, step: str, err: sqlite3.Error) -> None:
        super().__init__(f"{step} failed: {err}")


def _statements(sql: str) -> Iterator[str]:
    """The statements of a migration; a ';' inside a trigger body or a string does not end one."""
    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                yield buffer
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        yield buffer  # incomplete: SQLite reports what is wrong with it


def _run_migrations(db: Database, path: str | Path, migrations: Sequence[Migration]) -> int:
    """Every pending migration in one IMMEDIATE transaction; returns the version before.

    DDL is transactional in SQLite, so a failure anywhere (a bad statement, a full disk) rolls
    the schema back to the version it had. sqlite-utils' atomic() is not used: it begins a
    deferred transaction, which another writer could slip ahead of between check and apply.
    """
    conn = db.conn
    step = "the schema check"
    try:
        conn.execute("BEGIN IMMEDIATE")
        current = schema_version(db, path, migrations)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for version, name, sql in migrations[current:]:
            step = f"migration {version} ({name})"
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO migrations VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                [version, name],
            )
        step = "the commit"
        conn.execute("COMMIT")
    except BaseException as err:
        if conn.in_transaction:
            # A rollback that fails too leaves the first error the one worth reporting.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.Error):
            raise _StepFailed(step, err) from err
        raise
    return current


def migrate(
    db: Database, *, path: str | Path | None = None, migrations: Sequence[Migration] | None = None
) -> int:
    """Apply the migrations not yet recorded, all or none; return the schema version."""
    migrations = MIGRATIONS if migrations is None else migrations
    where = path if path is not None else db.execute("PRAGMA database_list").fetchone()[2]
    try:
        before = _run_migrations(db, where, migrations)
    except _StepFailed as failed:
        raise LedgerError(f"ledger {where}: {failed}; the ledger keeps its schema") from failed
    newest = len(migrations)
    if before < newest:
        log.info("ledger %s: schema version %d -> %d", where, before, newest)
    return newest


# --- start-up ------------------------------------------------------------------------------------


def open_ledger(
    path: str | Path,
    *,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    migrations: Sequence[Migration] | None = None,
) -> tuple[Database, bool]:
    """The ledger's write connection, migrated; True if this call created the ledger.

    A ledger is created only where no file exists. An existing file is inspected first and
    refused untouched unless it is a sound kiosk ledger at a version this kiosk knows.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    if not os.path.lexists(path):
        _create(Path(path), migrations)
        log.info("ledger %s: created at schema version %d", path, len(migrations))
        return connect(path, busy_timeout_ms=busy_timeout_ms), True
    version = inspect_ledger(path, migrations)
    db = connect(path, busy_timeout_ms=busy_timeout_ms)
    if version < len(migrations):
        try:
            migrate(db, path=path, migrations=migrations)
        except BaseException:
            db.close()
            raise
    return db, False


def _create(path: Path, migrations: Sequence[Migration]) -> None:
    """Build the ledger under a temporary name beside `path`, then link it into place: a failed
    migration, a full disk or a power cut never leaves a half-created ledger at `path` (which
    the next start would refuse)."""
    for suffix in ("-wal", "-journal"):
        # SQLite would replay a leftover journal into the new ledger.
        if os.path.lexists(f"{path}{suffix}"):
            raise LedgerError(
                f"ledger {path}: does not exist but {path}{suffix} does; move that journal "
                "away (it belongs to a ledger that is gone) before a new ledger is created"
            )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as err:
        raise LedgerError(f"ledger {path}: cannot create: {err.strerror}") from err
    try:
        db = connect(tmp)
        try:
            _run_migrations(db, path, migrations)
            # Everything into the main file, so the file linked into place is the whole ledger.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        _link(tmp, path)
    except _StepFailed as failed:
        raise LedgerError(f"ledger {path}: not created: {failed}") from failed
    except sqlite3.Error as err:
        raise LedgerError(f"ledger {path}: not created: {err}") from err
    except OSError as err:
        raise LedgerError(f"ledger {path}: not created: {err.strerror}") from err
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{tmp}{suffix}")
    _sync_directory(path.parent)


def _link(tmp: Path, path: Path) -> None:
    """`path` becomes the new ledger, unless a file appeared there meanwhile."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        pass
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # No hard links (FAT, some network filesystems): a rename could replace a file that
        # appears in between, but the ledger lock keeps other kiosk processes away.
        if not os.path.lexists(path):
            os.rename(tmp, path)
            return
    raise LedgerError(f"ledger {path}: appeared while a new one was built; left as it is")


def _sync_directory(directory: Path) -> None:
    """Make the new name durable, so a power cut right after start-up keeps the ledger. Some
    filesystems cannot sync a directory; the ledger exists all the same."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        log.warning("ledger directory %s: cannot sync: %s", directory, err.strerror)
