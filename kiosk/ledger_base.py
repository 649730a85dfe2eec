"""The ledger's foundation: the write connection, one transaction per public write, and the
record primitives every write is built of (an event row, a fault set or cleared, a stock count,
a meta value). The writes themselves are the kiosk's (ledger.py) and the technician's (upkeep.py);
reads for reports live in reports.py.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from kiosk.errors import LedgerError
from kiosk.schema import open_ledger, schema_version

CORE_BUSY_TIMEOUT_MS = 250  # the core never waits seconds on a lock: it retries instead


@dataclass(frozen=True)
class Actor:
    """Who asked for a change: an operating-system user (or the kiosk itself), and the way the
    request came (`kiosk`, `panel`, `config`, `socket`, `cli`, `mqtt`)."""

    user: str
    origin: str


KIOSK = Actor("kiosk", "kiosk")
# Events with an outbox message of their own kind: not repeated as a service event.
OWN_STREAM = frozenset({"collection"})


@dataclass(frozen=True)
class SlotState:
    slot: int
    product: str
    price_cents: int
    quantity: int
    capacity: int
    enabled: bool
    fault: str | None
    needs_recount: bool

    @property
    def sellable(self) -> bool:
        return self.enabled and self.fault is None and self.quantity > 0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_slots(db: Database) -> dict[int, SlotState]:
    """Every slot the ledger holds, with its active fault code (the first by name)."""
    rows = db.execute(
        "SELECT s.slot, product, price_cents, quantity, capacity, enabled, "
        "(SELECT min(code) FROM faults f WHERE f.device = 'slot_' || s.slot), needs_recount "
        "FROM stock s ORDER BY s.slot"
    )
    return {
        r[0]: SlotState(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], bool(r[7])) for r in rows
    }


def cashbox_coins(db: Database) -> dict[int, int]:
    """What the cash box holds, by denomination: the coins accepted since the last collection.
    Derived from the coins themselves, so a coin's transaction writes no count beside it."""
    rows = db.execute(
        "SELECT value_cents, count(*) FROM coins "
        "WHERE id > (SELECT coalesce(max(last_coin_id), 0) FROM collections) "
        "GROUP BY value_cents ORDER BY value_cents"
    )
    return dict(rows.fetchall())


@dataclass(frozen=True)
class Fault:
    device: str
    code: str
    since: str
    detail: str
    slot: int | None = None


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def slot_device(slot: int) -> str:
    """The device name of a slot's spiral in the faults table."""
    return f"slot_{slot}"


class LedgerBase:
    """The kiosk's books, opened on `path`; `now` gives the wall-clock time of each record."""

    def __init__(
        self,
        path: str | Path,
        now: Callable[[], datetime],
        busy_timeout_ms: int = CORE_BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = str(path)
        self._now = now
        self.boot_id = uuid.uuid4().hex  # this process's: every outbox row carries it
        self.db, self.created = open_ledger(path, busy_timeout_ms=busy_timeout_ms)
        self.schema_version = schema_version(self.db, path)

    def close(self) -> None:
        self.db.close()

    def now_iso(self) -> str:
        return iso(self._now())

    @contextmanager
    def _tx(self) -> Iterator[str]:
        """One transaction, taking the write lock at its start; yields its timestamp."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # a writer elsewhere: wait here, not mid-way
            try:
                yield iso(self._now())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except sqlite3.OperationalError as err:  # locked, full, I/O: storage, worth a retry
            raise LedgerError(f"ledger {self.path}: write failed: {err}") from err

    def _one(self, sql: str, params: Any = ()) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --- reads -------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        value = self._one("SELECT value FROM meta WHERE key = ?", [key])
        return None if value is None else str(value)

    def slots(self) -> dict[int, SlotState]:
        return read_slots(self.db)

    def faults(self) -> list[Fault]:
        """The active faults, oldest first."""
        return [
            Fault(*row)
            for row in self.db.execute(
                "SELECT device, code, since, detail, slot FROM faults ORDER BY since, device, code"
            )
        ]

    # --- record primitives, inside a transaction -----------------------------------------------

    def _event(
        self,
        at: str,
        kind: str,
        detail: str,
        slot: int | None,
        actor: str = "kiosk",
        *,
        device: str | None = None,
        code: str | None = None,
        origin: str = "kiosk",
    ) -> None:
        self.db.execute(
            "INSERT INTO events (at, kind, device, code, slot, detail, actor, origin) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [at, kind, device, code, slot, detail, actor, origin],
        )
        if kind in ("fault", "fault_cleared"):
            body: dict[str, Any] = {"device": device, "code": code, "active": kind == "fault"}
            body |= {"detail": detail, "slot": slot, "actor": actor, "origin": origin}
            self._outbox(at, "fault", body)
        elif origin != "kiosk" and kind not in OWN_STREAM:  # a person's (or the city's) doing
            body = {"action": kind, "slot": slot, "code": code, "detail": detail}
            self._outbox(at, "service", body | {"actor": actor, "origin": origin})

    def _outbox(self, at: str, kind: str, body: dict[str, Any]) -> None:
        """An event for the city, in the transaction of the record it reports; the publisher
        sends it (telemetry.py), numbered by its row: `seq`, contiguous and never reused."""
        self.db.execute(
            "INSERT INTO outbox (msg_id, kind, body, at, boot_id) VALUES (?, ?, ?, ?, ?)",
            [str(uuid.uuid4()), kind, json.dumps(body, ensure_ascii=False), at, self.boot_id],
        )

    def _set_fault(self, at: str, fault: Fault) -> bool:
        if self._one(
            "SELECT count(*) FROM faults WHERE device = ? AND code = ?", [fault.device, fault.code]
        ):
            return False
        self.db.execute(
            "INSERT INTO faults (device, code, since, detail, slot) VALUES (?, ?, ?, ?, ?)",
            [fault.device, fault.code, fault.since or at, fault.detail, fault.slot],
        )
        self._event(at, "fault", fault.detail, fault.slot, device=fault.device, code=fault.code)
        return True

    def _clear_fault(self, at: str, device: str, code: str, detail: str, by: Actor = KIOSK) -> bool:
        slot = self._one("SELECT slot FROM faults WHERE device = ? AND code = ?", [device, code])
        gone = self.db.execute(
            "DELETE FROM faults WHERE device = ? AND code = ?", [device, code]
        ).rowcount
        if gone:
            self._event(
                at,
                "fault_cleared",
                detail,
                slot,
                by.user,
                device=device,
                code=code,
                origin=by.origin,
            )
        return bool(gone)

    def _faults(self) -> list[Fault]:
        return [
            Fault(*row)
            for row in self.db.execute("SELECT device, code, since, detail, slot FROM faults")
        ]

    def _count(self, at: str, slot: int, kind: str, quantity: int, actor: str) -> None:
        """A stock count or refill, marked with the last sale and test vend it follows."""
        self.db.execute(
            "INSERT INTO stock_counts (at, slot, kind, quantity, last_sale_id, actor, "
            "last_test_vend_id) VALUES (?, ?, ?, ?, "
            "(SELECT coalesce(max(id), 0) FROM sales), ?, "
            "(SELECT coalesce(max(id), 0) FROM test_vends))",
            [at, slot, kind, quantity, actor],
        )

    def _advance(self, cursor: str) -> None:
        """The acceptor's cursor moves with the record of the event it stands after."""
        if cursor:
            self._set_meta("acceptor_cursor", cursor)

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
