"""The ledger: every coin, credit, vend, sale, donation, stock movement and event, in SQLite.

This class is the only writer. Each public write is one transaction (`_tx`), so a coin and its
credit, or a sale with its debit and stock decrement, land together or not at all; an outbox for
telemetry joins these same transactions. Reads for reports and `kiosk verify` live in reports.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from kiosk.config import SlotConfig
from kiosk.errors import LedgerError
from kiosk.schema import connect, migrate

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class InterruptedVend:
    vend_id: int
    slot: int
    price_cents: int


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Ledger:
    """The kiosk's books, opened on `path`; `now` gives the wall-clock time of each record."""

    def __init__(self, path: str | Path, now: Callable[[], datetime]) -> None:
        self.path = str(path)
        self._now = now
        self.db: Database = connect(path)
        ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise LedgerError(f"ledger {path}: quick_check failed: {ok}")
        self.schema_version = migrate(self.db)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[str]:
        """One transaction; yields its timestamp."""
        try:
            with self.db.atomic():
                yield iso(self._now())
        except LedgerError:
            raise
        except Exception as err:
            raise LedgerError(f"ledger {self.path}: write failed: {err}") from err

    def _one(self, sql: str, params: Any = ()) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --- start-up ----------------------------------------------------------------------------

    def boot(self, kiosk_id: str) -> int:
        """Record a start; the ledger belongs to one kiosk. Returns the boot count."""
        with self._tx():
            owner = self._one("SELECT value FROM meta WHERE key = 'kiosk_id'")
            if owner is None:
                self.db.execute("INSERT INTO meta VALUES ('kiosk_id', ?)", [kiosk_id])
            elif owner != kiosk_id:
                raise LedgerError(f"ledger {self.path} belongs to kiosk {owner}, not {kiosk_id}")
            boots = int(self._one("SELECT value FROM meta WHERE key = 'boot_count'") or 0) + 1
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_count', ?)", [str(boots)])
        return boots

    def sync_slots(self, slots: tuple[SlotConfig, ...]) -> None:
        """Add configured slots the ledger lacks (with a first count), follow product and price,
        and disable slots the configuration no longer has (their history stays)."""
        with self._tx() as at:
            for slot in slots:
                row = self.db.execute(
                    "SELECT product, price_cents, capacity FROM stock WHERE slot = ?", [slot.id]
                ).fetchone()
                if row is None:
                    quantity = (
                        slot.capacity if slot.initial_quantity is None else slot.initial_quantity
                    )
                    self.db.execute(
                        "INSERT INTO stock (slot, product, price_cents, quantity, capacity) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [slot.id, slot.product, slot.price_cents, quantity, slot.capacity],
                    )
                    self._count(at, slot.id, "count", quantity, "config")
                elif tuple(row) != (slot.product, slot.price_cents, slot.capacity):
                    self.db.execute(
                        "UPDATE stock SET product = ?, price_cents = ?, capacity = ? "
                        "WHERE slot = ?",
                        [slot.product, slot.price_cents, slot.capacity, slot.id],
                    )
                    detail = f"{row[0]} {row[1]} c -> {slot.product} {slot.price_cents} c"
                    self._event(at, "slot_changed", detail, slot.id, "config")
            configured = [slot.id for slot in slots]
            marks = ", ".join("?" for _ in configured)
            gone = self.db.execute(
                f"SELECT slot FROM stock WHERE enabled AND slot NOT IN ({marks})", configured
            ).fetchall()
            for (slot_id,) in gone:
                self.db.execute("UPDATE stock SET enabled = 0 WHERE slot = ?", [slot_id])
                self._event(at, "slot_removed", "no longer in the configuration", slot_id, "config")

    def resolve_interrupted_vends(self) -> list[InterruptedVend]:
        """Vends cut short by a crash: never charged; their slot is flagged for a recount."""
        found = [
            InterruptedVend(*row)
            for row in self.db.execute(
                "SELECT id, slot, price_cents FROM vends WHERE outcome = 'pending' ORDER BY id"
            )
        ]
        for vend in found:
            self.interrupt_vend(vend.vend_id, "kiosk restarted during the vend; not charged")
        return found

    def interrupt_vend(self, vend_id: int, detail: str) -> None:
        """A vend that never got its outcome: not charged, and since the product may have
        fallen, its slot is flagged for a recount."""
        with self._tx() as at:
            slot = self._one("SELECT slot FROM vends WHERE id = ?", [vend_id])
            self.db.execute(
                "UPDATE vends SET outcome = 'interrupted', ended_at = ?, detail = ? "
                "WHERE id = ? AND outcome = 'pending'",
                [at, detail, vend_id],
            )
            self.db.execute("UPDATE stock SET needs_recount = 1 WHERE slot = ?", [slot])
            self._event(at, "vend_interrupted", f"vend {vend_id}: {detail}; recount", slot)

    # --- reads the core needs ----------------------------------------------------------------

    def acceptor_cursor(self) -> str | None:
        cursor = self._one("SELECT value FROM meta WHERE key = 'acceptor_cursor'")
        return None if cursor is None else str(cursor)

    def credit_cents(self) -> int:
        return int(
            self._one("SELECT balance_cents FROM credit_sessions WHERE closed_at IS NULL") or 0
        )

    def slots(self) -> dict[int, SlotState]:
        rows = self.db.execute(
            "SELECT slot, product, price_cents, quantity, capacity, enabled, fault, needs_recount "
            "FROM stock ORDER BY slot"
        )
        return {
            r[0]: SlotState(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], bool(r[7]))
            for r in rows
        }

    # --- money -------------------------------------------------------------------------------

    def record_coin(self, value_cents: int, merged: bool = False, cursor: str = "") -> int:
        """A coin, the credit it adds and the acceptor's cursor, in one transaction. Returns the
        new credit."""
        with self._tx() as at:
            if cursor:
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('acceptor_cursor', ?)", [cursor]
                )
            session = self._open_session(at)
            self.db.execute(
                "INSERT INTO coins (at, session_id, value_cents, merged) VALUES (?, ?, ?, ?)",
                [at, session, value_cents, merged],
            )
            self.db.execute(
                "UPDATE credit_sessions SET balance_cents = balance_cents + ? WHERE id = ?",
                [value_cents, session],
            )
            self.db.execute(
                "INSERT INTO cashbox VALUES (?, 1) "
                "ON CONFLICT (value_cents) DO UPDATE SET count = count + 1",
                [value_cents],
            )
        return self.credit_cents()

    def _open_session(self, at: str) -> int:
        session = self._one("SELECT id FROM credit_sessions WHERE closed_at IS NULL")
        if session is None:
            cursor = self.db.execute(
                "INSERT INTO credit_sessions (opened_at, balance_cents) VALUES (?, 0)", [at]
            )
            session = cursor.lastrowid
        return int(session)

    def start_vend(self, slot: int, price_cents: int) -> int:
        """Hold the price for a vend (nothing charged yet). Returns the vend id."""
        with self._tx() as at:
            session = self._one("SELECT id FROM credit_sessions WHERE closed_at IS NULL")
            if session is None or self.credit_cents() < price_cents:
                raise LedgerError(f"vend of slot {slot}: credit below {price_cents} c")
            cursor = self.db.execute(
                "INSERT INTO vends (session_id, slot, price_cents, started_at) VALUES (?, ?, ?, ?)",
                [session, slot, price_cents, at],
            )
        return int(cursor.lastrowid or 0)

    def complete_sale(self, vend_id: int, detail: str) -> int:
        """Drop confirmed: outcome, sale, debit and stock decrement together. Returns credit."""
        with self._tx() as at:
            session, slot, price = self.db.execute(
                "SELECT session_id, slot, price_cents FROM vends WHERE id = ? "
                "AND outcome = 'pending'",
                [vend_id],
            ).fetchone()
            product = self._one("SELECT product FROM stock WHERE slot = ?", [slot])
            self.db.execute(
                "UPDATE vends SET outcome = 'delivered', ended_at = ?, detail = ? WHERE id = ?",
                [at, detail, vend_id],
            )
            self.db.execute(
                "INSERT INTO sales (at, vend_id, session_id, slot, product, price_cents) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [at, vend_id, session, slot, product, price],
            )
            self.db.execute(
                "UPDATE credit_sessions SET balance_cents = balance_cents - ? WHERE id = ?",
                [price, session],
            )
            self.db.execute("UPDATE stock SET quantity = quantity - 1 WHERE slot = ?", [slot])
            self._close_if_empty(at, session, "spent")
        return self.credit_cents()

    def fail_vend(self, vend_id: int, outcome: str, detail: str, fault: str | None) -> None:
        """No drop confirmed: nothing charged; the slot is marked faulty when `fault` is given."""
        with self._tx() as at:
            slot = self._one("SELECT slot FROM vends WHERE id = ?", [vend_id])
            self.db.execute(
                "UPDATE vends SET outcome = ?, ended_at = ?, detail = ? WHERE id = ?",
                [outcome, at, detail, vend_id],
            )
            if fault is not None:
                self.db.execute("UPDATE stock SET fault = ? WHERE slot = ?", [fault, slot])
            self._event(at, f"vend_{outcome}", detail, slot)

    def donate(self, beneficiary: str) -> int:
        """Give the open credit to `beneficiary`; returns the amount donated (0 if none)."""
        with self._tx() as at:
            row = self.db.execute(
                "SELECT id, balance_cents FROM credit_sessions WHERE closed_at IS NULL"
            ).fetchone()
            if row is None or row[1] == 0:
                return 0
            session, amount = row
            self.db.execute(
                "INSERT INTO donations (at, session_id, amount_cents, beneficiary) "
                "VALUES (?, ?, ?, ?)",
                [at, session, amount, beneficiary],
            )
            self.db.execute("UPDATE credit_sessions SET balance_cents = 0 WHERE id = ?", [session])
            self._close_if_empty(at, session, "donated")
        return int(amount)

    def _close_if_empty(self, at: str, session: int, reason: str) -> None:
        self.db.execute(
            "UPDATE credit_sessions SET closed_at = ?, close_reason = ? "
            "WHERE id = ? AND balance_cents = 0",
            [at, reason, session],
        )

    # --- stock and events --------------------------------------------------------------------

    def refill(self, slot: int, quantity: int, actor: str) -> int:
        """Add `quantity` products to `slot` (capped by nothing: the caller checks capacity)."""
        with self._tx() as at:
            self.db.execute(
                "UPDATE stock SET quantity = quantity + ? WHERE slot = ?", [quantity, slot]
            )
            self._count(at, slot, "refill", quantity, actor)
            return int(self._one("SELECT quantity FROM stock WHERE slot = ?", [slot]))

    def clear_slot_faults(self, actor: str) -> list[int]:
        """A technician serviced the kiosk: faulty slots are offered again."""
        with self._tx() as at:
            slots = [
                r[0] for r in self.db.execute("SELECT slot FROM stock WHERE fault IS NOT NULL")
            ]
            for slot in slots:
                self.db.execute("UPDATE stock SET fault = NULL WHERE slot = ?", [slot])
                self._event(at, "slot_fault_cleared", "", slot, actor)
        return slots

    def record_event(
        self, kind: str, detail: str = "", slot: int | None = None, actor: str = "kiosk"
    ) -> None:
        with self._tx() as at:
            self._event(at, kind, detail, slot, actor)

    def _event(
        self, at: str, kind: str, detail: str, slot: int | None, actor: str = "kiosk"
    ) -> None:
        self.db.execute(
            "INSERT INTO events (at, kind, slot, detail, actor) VALUES (?, ?, ?, ?, ?)",
            [at, kind, slot, detail, actor],
        )

    def _count(self, at: str, slot: int, kind: str, quantity: int, actor: str) -> None:
        last_sale = self._one("SELECT coalesce(max(id), 0) FROM sales")
        self.db.execute(
            "INSERT INTO stock_counts (at, slot, kind, quantity, last_sale_id, actor) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [at, slot, kind, quantity, last_sale, actor],
        )
