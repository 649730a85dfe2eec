"""Reading a ledger without touching it: for `kiosk verify` and the technician's reports, on a
ledger that may be on read-only media or in use by a running daemon."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database

from kiosk import lock, schema
from kiosk.errors import LedgerError

T = TypeVar("T")


def read(path: Path, report: Callable[[Database], T]) -> T:
    """`report` run on a read-only connection to the ledger at `path`, creating no file
    beside it.

    A plain read-only SQLite connection to a WAL ledger creates its -wal and -shm files when they
    are missing (and leaves them), and fails where the directory is read-only. An immutable one
    creates nothing and takes no locks, but reads the main file alone: right only when no -wal
    holds commits (none exists) and no daemon can write meanwhile (nobody holds the ledger lock).
    Then the file is read as immutable, and if its identity, size or mtime changed by the end,
    or a -wal or a lock holder appeared, the read is done again the ordinary way. Otherwise (a
    daemon running, or one that crashed and left its -wal) the ordinary read-only connection is
    used: the -wal and -shm files it needs are already there.
    """
    quiet = _quiet_state(path)
    if quiet is not None:
        try:
            result = _run(path, report, immutable=True)
        except LedgerError:
            if _quiet_state(path) == quiet:
                raise
        else:
            if _quiet_state(path) == quiet:
                return result
    return _run(path, report, immutable=False)


def _quiet_state(path: Path) -> tuple[int, int, int] | None:
    """The file's (inode, size, mtime) while nothing can be writing it, else None."""
    if any(os.path.lexists(f"{path}{suffix}") for suffix in ("-wal", "-journal")):
        return None
    if lock.holder(path) is not None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone or unreadable: the ordinary read says why
    return st.st_ino, st.st_size, st.st_mtime_ns


def _run(path: Path, report: Callable[[Database], T], *, immutable: bool) -> T:
    schema.check_header(path)
    db = schema.connect(path, read_only=True, immutable=immutable)
    try:
        schema.check_ledger(db, path)
        return report(db)
    except sqlite3.Error as err:  # a kiosk ledger, but not one these checks can read
        raise LedgerError(f"ledger {path}: cannot read: {err}") from err
    finally:
        db.close()
