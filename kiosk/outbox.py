"""The publisher's side of the outbox: which rows are still to send, the marks of those the broker
acknowledged, the backlog a technician sees, and the message each row becomes.

The outbox rows live in the ledger, written in the transaction of the record they report
(ledger_base.py). The marks do not: they go to a small database of their own beside the ledger
(`<ledger>.sent`), which only the publisher writes, so marking a row sent never makes the core
wait on the ledger's write lock. Losing that file only means sending again what was sent (the
consumers drop duplicates by msg_id or seq). Rows are acknowledged out of order at times: the
marks keep a watermark (every seq up to it acknowledged) and the acknowledged seqs above it.
Sent rows older than `outbox_keep_days` are pruned by the core, which owns the ledger's writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from kiosk.errors import LedgerError
from kiosk.schema import connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    seq: int
    msg_id: str
    kind: str
    body_json: str  # the record's own fields, a JSON object
    at: str
    boot_id: str

    def message_json(self, kiosk_id: str, *, historical: bool) -> str:
        """message() as JSON, the stored body spliced in as it is (not parsed and written
        again: a backlog of thousands drains at the broker's pace, not the encoder's). The
        envelope's strings need no escaping: uuids, an ISO timestamp, a kind of ours and a
        kiosk id of [A-Za-z0-9_-] (kiosk/config.py)."""
        envelope = (
            f'{{"msg_id": "{self.msg_id}", "seq": {self.seq}, "boot_id": "{self.boot_id}", '
            f'"kiosk_id": "{kiosk_id}", "ts": "{self.at}", '
            f'"historical": {"true" if historical else "false"}, "kind": "{self.kind}"'
        )
        return f"{envelope}}}" if self.body_json == "{}" else f"{envelope}, {self.body_json[1:]}"

    def envelope(self, kiosk_id: str, *, historical: bool) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "seq": self.seq,
            "boot_id": self.boot_id,
            "kiosk_id": kiosk_id,
            "ts": self.at,
            "historical": historical,
            "kind": self.kind,
        }

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.body_json))

    def message(self, kiosk_id: str, *, historical: bool) -> dict[str, Any]:
        """The payload of event/<kind>: the envelope, then the record's own fields."""
        return self.envelope(kiosk_id, historical=historical) | self.body


def marks_path(ledger: str | Path) -> Path:
    return Path(f"{ledger}.sent")


class Marks:
    """The acknowledged seqs of the ledger `ledger_id`, in their own file; one writer (the
    publisher). Marks of another ledger (one made anew, or restored from a backup, beside an old
    marks file) or a damaged file are set aside: everything is sent again, nothing is skipped."""

    def __init__(self, ledger: str | Path, ledger_id: str) -> None:
        self.path = marks_path(ledger)
        try:
            self.db = self._open(ledger_id)
        except sqlite3.Error as err:
            log.warning("outbox marks %s: %s; set aside, everything is sent again", self.path, err)
            self._set_aside()
            try:
                self.db = self._open(ledger_id)
            except sqlite3.Error as again:
                raise LedgerError(f"outbox marks {self.path}: {again}") from again
        self.watermark = int(self.db.execute("SELECT seq FROM watermark").fetchone()[0])
        self.above = {int(s) for (s,) in self.db.execute("SELECT seq FROM acked")}
        self._dirty = False
        self.flushed_at = time.monotonic()

    def _open(self, ledger_id: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a lost mark is a duplicate, no more
            db.execute("CREATE TABLE IF NOT EXISTS acked (seq INTEGER PRIMARY KEY)")
            db.execute("CREATE TABLE IF NOT EXISTS watermark (seq INTEGER NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS ledger (id TEXT NOT NULL)")
            owner = db.execute("SELECT id FROM ledger").fetchone()
            if owner is None or owner[0] != ledger_id:
                if owner is not None:
                    log.warning("outbox marks %s belong to another ledger: reset", self.path)
                with db:
                    db.execute("BEGIN")
                    for table in ("acked", "watermark", "ledger"):
                        db.execute(f"DELETE FROM {table}")
                    db.execute("INSERT INTO watermark VALUES (0)")
                    db.execute("INSERT INTO ledger VALUES (?)", [ledger_id])
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{self.path}{suffix}.damaged")

    def close(self) -> None:
        self.flush()
        self.db.close()

    def acked(self, seq: int) -> None:
        """Acknowledged; written at the next flush()."""
        if seq <= self.watermark or seq in self.above:
            return
        self.above.add(seq)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)
        self._dirty = True

    def flush(self) -> None:
        """The acknowledgements since the last flush, in one transaction (a PUBACK each would
        be a commit each)."""
        self.flushed_at = time.monotonic()
        if not self._dirty:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE watermark SET seq = ?", [self.watermark])
            self.db.execute("DELETE FROM acked")
            self.db.executemany("INSERT INTO acked VALUES (?)", [(s,) for s in self.above])
        self._dirty = False

    def done(self, seq: int) -> bool:
        return seq <= self.watermark or seq in self.above


def read_marks(ledger: str | Path, ledger_id: str | None) -> tuple[int, set[int]]:
    """The watermark and the seqs acknowledged above it, as last written, read-only; nothing
    when there are none, or they are another ledger's (`ledger_id`) or unreadable."""
    path = marks_path(ledger)
    if not path.exists():
        return 0, set()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            owner = db.execute("SELECT id FROM ledger").fetchone()
            if owner is None or owner[0] != ledger_id:
                return 0, set()
            row = db.execute("SELECT seq FROM watermark").fetchone()
            above = {int(s) for (s,) in db.execute("SELECT seq FROM acked")}
    except sqlite3.Error:
        return 0, set()
    return (0 if row is None else int(row[0])), above


def sent_up_to(ledger: str | Path) -> int:
    """The watermark of the ledger at `ledger`: every seq up to it acknowledged."""
    with reading(ledger) as reader:
        found = ledger_id(reader.db)
    return read_marks(ledger, found)[0]


def ledger_id(db: Database) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()
    return None if row is None else str(row[0])


class Reader:
    """The publisher's own read-only connection to the ledger's outbox."""

    def __init__(self, ledger: str | Path) -> None:
        self.db: Database = connect(ledger, read_only=True)

    def close(self) -> None:
        self.db.close()

    def after(self, seq: int, limit: int) -> list[Row]:
        return rows_after(self.db, seq, limit)

    def last_seq(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])

    def ledger_id(self) -> str:
        found = ledger_id(self.db)
        if found is None:
            raise LedgerError("the ledger has no id yet (it was never started)")
        return found


def rows_after(db: Database, seq: int, limit: int) -> list[Row]:
    return [
        Row(s, m, k, b, a, boot)
        for s, m, k, b, a, boot in db.execute(
            "SELECT seq, msg_id, kind, body, at, boot_id FROM outbox WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            [seq, limit],
        )
    ]


@dataclass(frozen=True)
class Backlog:
    unsent: int
    oldest_unsent_at: str | None
    last_seq: int
    rows: int  # in the outbox now, sent or not (sent ones go after outbox_keep_days)

    def as_json(self, now: datetime) -> dict[str, Any]:
        age = None
        if self.oldest_unsent_at is not None:
            oldest = datetime.fromisoformat(self.oldest_unsent_at.replace("Z", "+00:00"))
            age = round((now - oldest).total_seconds(), 1)
        return {
            "unsent": self.unsent,
            "oldest_unsent_at": self.oldest_unsent_at,
            "oldest_unsent_age_s": age,
            "last_seq": self.last_seq,
        }


def backlog(db: Database, ledger: str | Path) -> Backlog:
    """What waits to be sent: rows above the watermark not acknowledged out of order."""
    watermark, above = read_marks(ledger, ledger_id(db))
    rows = db.execute("SELECT seq, at FROM outbox WHERE seq > ? ORDER BY seq", [watermark])
    waiting = [(seq, at) for seq, at in rows if seq not in above]
    last, count = db.execute("SELECT coalesce(max(seq), 0), count(*) FROM outbox").fetchone()
    return Backlog(len(waiting), waiting[0][1] if waiting else None, int(last), int(count))


def prune(db: Database, watermark: int, before: str) -> int:
    """Delete sent rows recorded before `before` (the caller's transaction). Returns how many."""
    return int(
        db.execute("DELETE FROM outbox WHERE seq <= ? AND at < ?", [watermark, before]).rowcount
    )


@contextlib.contextmanager
def reading(ledger: str | Path) -> Iterator[Reader]:
    reader = Reader(ledger)
    try:
        yield reader
    finally:
        reader.close()
