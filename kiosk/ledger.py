"""The ledger: every coin, credit, vend, sale, donation, stock movement, fault and event, in SQLite.

This class is the only writer. Each public write is one transaction (`_tx`) holding the business
record and the event rows that describe it (a sale and its debit and stock decrement, a refill and
its cap, a fault and the vend it interrupts, the door closing and the faults it clears), so an
outbox joining these transactions can neither lose nor invent an event. Faults are rows keyed by
(device, code), set and cleared one by one with their event. The ledger owns live products and
prices: a profile value is applied only when the profile changed it since it was last applied.
Reads for reports and `kiosk verify` live in reports.py.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kiosk.config import SlotConfig
from kiosk.errors import LedgerError
from kiosk.schema import open_ledger, schema_version

log = logging.getLogger(__name__)

CORE_BUSY_TIMEOUT_MS = 250  # the core never waits seconds on a lock: it retries instead
PROFILE_KEYS = ("product", "price_cents", "capacity")


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
class Fault:
    device: str
    code: str
    since: str
    detail: str
    slot: int | None = None


@dataclass(frozen=True)
class InterruptedVend:
    vend_id: int
    slot: int
    price_cents: int


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def slot_device(slot: int) -> str:
    """The device name of a slot's spiral in the faults table."""
    return f"slot_{slot}"


class Ledger:
    """The kiosk's books, opened on `path`; `now` gives the wall-clock time of each record."""

    def __init__(self, path: str | Path, now: Callable[[], datetime]) -> None:
        self.path = str(path)
        self._now = now
        self.db, self.created = open_ledger(path, busy_timeout_ms=CORE_BUSY_TIMEOUT_MS)
        self.schema_version = schema_version(self.db, path)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[str]:
        """One transaction; yields its timestamp."""
        try:
            with self.db.atomic():
                yield iso(self._now())
        except sqlite3.OperationalError as err:  # locked, full, I/O: storage, worth a retry
            raise LedgerError(f"ledger {self.path}: write failed: {err}") from err

    def _one(self, sql: str, params: Any = ()) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --- start-up ----------------------------------------------------------------------------

    def boot(self, kiosk_id: str) -> int:
        """Record a start; the ledger belongs to one kiosk. Returns the boot count."""
        with self._tx() as at:
            owner = self._one("SELECT value FROM meta WHERE key = 'kiosk_id'")
            if owner is None:
                self.db.execute("INSERT INTO meta VALUES ('kiosk_id', ?)", [kiosk_id])
            elif owner != kiosk_id:
                raise LedgerError(f"ledger {self.path} belongs to kiosk {owner}, not {kiosk_id}")
            if self.created:
                self._event(at, "ledger_created", f"new ledger {self.path}", None)
                self.created = False
            boots = int(self._one("SELECT value FROM meta WHERE key = 'boot_count'") or 0) + 1
            self._set_meta("boot_count", str(boots))
        return boots

    def sync_slots(self, slots: tuple[SlotConfig, ...]) -> None:
        """Add configured slots the ledger lacks (with a first count); apply a profile's product,
        price or capacity only where the profile changed it since it was last applied (a price
        set since by a technician or the city stays); disable slots the profile no longer has
        (their history stays)."""
        with self._tx() as at:
            for slot in slots:
                self._sync_slot(at, slot)
            configured = [slot.id for slot in slots]
            marks = ", ".join("?" for _ in configured)
            gone = self.db.execute(
                f"SELECT slot FROM stock WHERE enabled AND slot NOT IN ({marks})", configured
            ).fetchall()
            for (slot_id,) in gone:
                self.db.execute("UPDATE stock SET enabled = 0 WHERE slot = ?", [slot_id])
                self._event(at, "slot_removed", "no longer in the configuration", slot_id, "config")

    def _sync_slot(self, at: str, slot: SlotConfig) -> None:
        if self._one("SELECT count(*) FROM stock WHERE slot = ?", [slot.id]) == 0:
            quantity = slot.capacity if slot.initial_quantity is None else slot.initial_quantity
            self.db.execute(
                "INSERT INTO stock (slot, product, price_cents, quantity, capacity) "
                "VALUES (?, ?, ?, ?, ?)",
                [slot.id, slot.product, slot.price_cents, quantity, slot.capacity],
            )
            self._count(at, slot.id, "count", quantity, "config")
        else:
            applied = self.db.execute(
                "SELECT product, price_cents, capacity FROM slot_profile WHERE slot = ?", [slot.id]
            ).fetchone()
            last = dict(zip(PROFILE_KEYS, applied, strict=True)) if applied else {}
            for key in PROFILE_KEYS:
                value = getattr(slot, key)
                if key in last and last[key] == value:
                    continue  # unchanged in the profile: the ledger's live value stands
                old = self._one(f"SELECT {key} FROM stock WHERE slot = ?", [slot.id])
                if old != value:
                    self.db.execute(f"UPDATE stock SET {key} = ? WHERE slot = ?", [value, slot.id])
                    detail = f"{key} {old} -> {value} (profile)"
                    self._event(at, "slot_changed", detail, slot.id, "config", code=key)
        self.db.execute(
            "INSERT OR REPLACE INTO slot_profile VALUES (?, ?, ?, ?)",
            [slot.id, slot.product, slot.price_cents, slot.capacity],
        )

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

    def interrupt_vend(self, vend_id: int, detail: str, fault: Fault | None = None) -> None:
        """A vend that never got its outcome: not charged, and since the product may have
        fallen, its slot is flagged for a recount; with the fault that cut it short, if any."""
        with self._tx() as at:
            if fault is not None:
                self._set_fault(at, fault)
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
            "SELECT s.slot, product, price_cents, quantity, capacity, enabled, "
            "(SELECT min(code) FROM faults f WHERE f.device = 'slot_' || s.slot), needs_recount "
            "FROM stock s ORDER BY s.slot"
        )
        return {
            r[0]: SlotState(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], bool(r[7]))
            for r in rows
        }

    def faults(self) -> list[Fault]:
        """The active faults, oldest first."""
        return [
            Fault(*row)
            for row in self.db.execute(
                "SELECT device, code, since, detail, slot FROM faults ORDER BY since, device, code"
            )
        ]

    # --- money -------------------------------------------------------------------------------

    def record_coin(self, value_cents: int, merged: bool = False, cursor: str = "") -> int:
        """A coin, the credit it adds and the acceptor's cursor, in one transaction. Returns the
        new credit."""
        with self._tx() as at:
            self._advance(cursor)
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
        """No drop confirmed: nothing charged; the slot gets fault `fault` when given."""
        with self._tx() as at:
            slot = self._one("SELECT slot FROM vends WHERE id = ?", [vend_id])
            self.db.execute(
                "UPDATE vends SET outcome = ?, ended_at = ?, detail = ? WHERE id = ?",
                [outcome, at, detail, vend_id],
            )
            self._event(at, "vend_failed", detail, slot, device="dispenser", code=outcome)
            if fault is not None:
                self._set_fault(at, Fault(slot_device(slot), fault, at, detail, slot))

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

    # --- stock -------------------------------------------------------------------------------

    def refill(self, slot: int, asked: int, actor: str) -> int:
        """Add up to `asked` products to `slot`, as many as fit; a cap is recorded with the
        refill. Returns how many were added."""
        with self._tx() as at:
            quantity, capacity = self.db.execute(
                "SELECT quantity, capacity FROM stock WHERE slot = ?", [slot]
            ).fetchone()
            added = max(0, min(asked, capacity - quantity))
            if added < asked:
                detail = f"{asked} asked, {added} fit (capacity {capacity})"
                self._event(at, "refill_capped", detail, slot, actor)
            if added:
                self.db.execute(
                    "UPDATE stock SET quantity = quantity + ? WHERE slot = ?", [added, slot]
                )
                self._count(at, slot, "refill", added, actor)
        return int(added)

    def set_price(self, slot: int, price_cents: int, actor: str) -> None:
        """A live price (a technician's or the city's); a restart keeps it."""
        with self._tx() as at:
            old = self._one("SELECT price_cents FROM stock WHERE slot = ?", [slot])
            if old is None:
                raise LedgerError(f"no slot {slot}")
            self.db.execute("UPDATE stock SET price_cents = ? WHERE slot = ?", [price_cents, slot])
            detail = f"price_cents {old} -> {price_cents}"
            self._event(at, "slot_changed", detail, slot, actor, code="price_cents")

    def _count(self, at: str, slot: int, kind: str, quantity: int, actor: str) -> None:
        last_sale = self._one("SELECT coalesce(max(id), 0) FROM sales")
        self.db.execute(
            "INSERT INTO stock_counts (at, slot, kind, quantity, last_sale_id, actor) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [at, slot, kind, quantity, last_sale, actor],
        )

    # --- faults and events -------------------------------------------------------------------

    def set_fault(self, fault: Fault, cursor: str = "") -> bool:
        """Raise a fault with its event; False (and nothing written) if it is already active."""
        with self._tx() as at:
            self._advance(cursor)
            return self._set_fault(at, fault)

    def clear_fault(self, device: str, code: str, detail: str, actor: str = "kiosk") -> bool:
        """Clear one fault with its event; False if it was not active."""
        with self._tx() as at:
            return self._clear_fault(at, device, code, detail, actor)

    def close_door(self, clears: list[tuple[str, str]], actor: str) -> list[Fault]:
        """The door closed after a service visit: the faults a technician repairs (every slot's,
        and those in `clears`) are cleared with the door's event. Returns the faults cleared."""
        with self._tx() as at:
            self._event(at, "door_closed", "", None, actor, device="door")
            cleared = [
                f
                for f in self._faults()
                if f.device.startswith("slot_") or (f.device, f.code) in clears
            ]
            for f in cleared:
                self._clear_fault(at, f.device, f.code, "serviced", actor)
        return cleared

    def record_outage(self, fault: Fault, cleared: str) -> None:
        """A fault that could not be written while it lasted (storage): set and cleared now."""
        with self._tx() as at:
            self._set_fault(at, fault)
            self._clear_fault(at, fault.device, fault.code, cleared, "kiosk")

    def now_iso(self) -> str:
        return iso(self._now())

    def record_event(
        self,
        kind: str,
        detail: str = "",
        slot: int | None = None,
        actor: str = "kiosk",
        *,
        device: str | None = None,
        code: str | None = None,
        cursor: str = "",
    ) -> None:
        with self._tx() as at:
            self._advance(cursor)
            self._event(at, kind, detail, slot, actor, device=device, code=code)

    def advance_cursor(self, cursor: str) -> None:
        with self._tx():
            self._advance(cursor)

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

    def _clear_fault(self, at: str, device: str, code: str, detail: str, actor: str) -> bool:
        slot = self._one("SELECT slot FROM faults WHERE device = ? AND code = ?", [device, code])
        gone = self.db.execute(
            "DELETE FROM faults WHERE device = ? AND code = ?", [device, code]
        ).rowcount
        if gone:
            self._event(at, "fault_cleared", detail, slot, actor, device=device, code=code)
        return bool(gone)

    def _faults(self) -> list[Fault]:
        return [
            Fault(*row)
            for row in self.db.execute("SELECT device, code, since, detail, slot FROM faults")
        ]

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
    ) -> None:
        self.db.execute(
            "INSERT INTO events (at, kind, device, code, slot, detail, actor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [at, kind, device, code, slot, detail, actor],
        )

    def _advance(self, cursor: str) -> None:
        """The acceptor's cursor moves with the record of the event it stands after."""
        if cursor:
            self._set_meta("acceptor_cursor", cursor)

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
