"""The ledger: every coin, credit, vend, sale, donation, stock movement, fault and event, in SQLite.

This class is the only writer. Each public write is one transaction (`_tx`) holding the business
record and the event rows that describe it (a sale and its debit and stock decrement, a refill and
its cap, a fault and the vend it interrupts, the door closing and the faults it clears), so an
outbox joining these transactions can neither lose nor invent an event. Faults are rows keyed by
(device, code), set and cleared one by one with their event. The ledger owns live products and
prices: a profile value is applied only when the profile changed it since it was last applied.
The technician's writes are in upkeep.py, the primitives in ledger_base.py; reads for reports and
`kiosk verify` live in reports.py.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from kiosk import outbox
from kiosk.config import SlotConfig
from kiosk.errors import LedgerError
from kiosk.ledger_base import KIOSK, Actor, Fault, SlotState, iso, slot_device
from kiosk.upkeep import Upkeep

__all__ = [
    "KIOSK",
    "Actor",
    "Fault",
    "InterruptedVend",
    "Ledger",
    "SlotState",
    "iso",
    "slot_device",
]

log = logging.getLogger(__name__)

PROFILE_KEYS = ("product", "price_cents", "capacity")


@dataclass(frozen=True)
class InterruptedVend:
    vend_id: int
    slot: int
    price_cents: int


class Ledger(Upkeep):
    """The kiosk's books, opened on `path`; `now` gives the wall-clock time of each record."""

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
            if self._one("SELECT value FROM meta WHERE key = 'ledger_id'") is None:
                self._set_meta("ledger_id", uuid.uuid4().hex)  # the outbox marks name it
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
                detail = "no longer in the configuration"
                self._event(at, "slot_removed", detail, slot_id, "config", origin="config")

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
                    self._event(
                        at, "slot_changed", detail, slot.id, "config", code=key, origin="config"
                    )
        self.db.execute(
            "INSERT OR REPLACE INTO slot_profile VALUES (?, ?, ?, ?)",
            [slot.id, slot.product, slot.price_cents, slot.capacity],
        )

    def prune_outbox(self, keep_days: float) -> int:
        """Forget outbox rows the broker acknowledged more than `keep_days` ago."""
        before = iso(self._now() - timedelta(days=keep_days))
        with self._tx():
            watermark, _ = outbox.read_marks(self.path, outbox.ledger_id(self.db))
            return outbox.prune(self.db, watermark, before)

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
        with self._tx() as at:
            for test_id, slot in self.db.execute(
                "SELECT id, slot FROM test_vends WHERE outcome = 'pending'"
            ).fetchall():
                self.db.execute(
                    "UPDATE test_vends SET outcome = 'interrupted', ended_at = ? WHERE id = ?",
                    [at, test_id],
                )
                self.db.execute("UPDATE stock SET needs_recount = 1 WHERE slot = ?", [slot])
                detail = f"test vend {test_id}: kiosk restarted during it; recount"
                self._event(at, "vend_interrupted", detail, slot)
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
            self._vend_failed(at, vend_id, slot, "interrupted", detail)

    # --- reads the core needs ----------------------------------------------------------------

    def acceptor_cursor(self) -> str | None:
        cursor = self._one("SELECT value FROM meta WHERE key = 'acceptor_cursor'")
        return None if cursor is None else str(cursor)

    def credit_cents(self) -> int:
        return int(
            self._one("SELECT balance_cents FROM credit_sessions WHERE closed_at IS NULL") or 0
        )

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
            sale = self.db.execute(
                "INSERT INTO sales (at, vend_id, session_id, slot, product, price_cents) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [at, vend_id, session, slot, product, price],
            ).lastrowid
            self.db.execute(
                "UPDATE credit_sessions SET balance_cents = balance_cents - ? WHERE id = ?",
                [price, session],
            )
            self.db.execute("UPDATE stock SET quantity = quantity - 1 WHERE slot = ?", [slot])
            self._close_if_empty(at, session, "spent")
            left = self.credit_cents()
            self._outbox(
                at,
                "sale",
                {
                    "sale_id": sale,
                    "vend_id": vend_id,
                    "slot": slot,
                    "product": product,
                    "price_cents": price,
                    "credit_left_cents": left,
                },
            )
        return left

    def fail_vend(self, vend_id: int, outcome: str, detail: str, fault: str | None) -> None:
        """No drop confirmed: nothing charged; the slot gets fault `fault` when given."""
        with self._tx() as at:
            slot = self._one("SELECT slot FROM vends WHERE id = ?", [vend_id])
            self.db.execute(
                "UPDATE vends SET outcome = ?, ended_at = ?, detail = ? WHERE id = ?",
                [outcome, at, detail, vend_id],
            )
            self._event(at, "vend_failed", detail, slot, device="dispenser", code=outcome)
            self._vend_failed(at, vend_id, slot, outcome, detail)
            if fault is not None:
                self._set_fault(at, Fault(slot_device(slot), fault, at, detail, slot))

    def _vend_failed(self, at: str, vend_id: int, slot: int, outcome: str, detail: str) -> None:
        body = {"vend_id": vend_id, "slot": slot, "outcome": outcome, "detail": detail}
        self._outbox(at, "vend_failed", body | {"charged": False})

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
            self._outbox(at, "donation", {"amount_cents": amount, "beneficiary": beneficiary})
        return int(amount)

    def _close_if_empty(self, at: str, session: int, reason: str) -> None:
        self.db.execute(
            "UPDATE credit_sessions SET closed_at = ?, close_reason = ? "
            "WHERE id = ? AND balance_cents = 0",
            [at, reason, session],
        )

    # --- faults and events -------------------------------------------------------------------

    def set_fault(self, fault: Fault, cursor: str = "") -> bool:
        """Raise a fault with its event; False (and nothing written) if it is already active."""
        with self._tx() as at:
            self._advance(cursor)
            return self._set_fault(at, fault)

    def clear_fault(self, device: str, code: str, detail: str, by: Actor = KIOSK) -> bool:
        """Clear one fault with its event; False if it was not active."""
        with self._tx() as at:
            return self._clear_fault(at, device, code, detail, by)

    def close_door(self, by: Actor) -> list[Fault]:
        """The door closed after a service visit: the faults a technician repairs are cleared
        with the door's event. Returns the faults cleared."""
        with self._tx() as at:
            self._event(at, "door_closed", "", None, by.user, device="door", origin=by.origin)
            return self._end_visit(at, by)

    def record_outage(self, fault: Fault, cleared: str) -> None:
        """A fault that could not be written while it lasted (storage): set and cleared now."""
        with self._tx() as at:
            self._set_fault(at, fault)
            self._clear_fault(at, fault.device, fault.code, cleared)

    def record_event(
        self,
        kind: str,
        detail: str = "",
        slot: int | None = None,
        by: Actor = KIOSK,
        *,
        device: str | None = None,
        code: str | None = None,
        cursor: str = "",
    ) -> None:
        with self._tx() as at:
            self._advance(cursor)
            self._event(at, kind, detail, slot, by.user, device=device, code=code, origin=by.origin)

    def advance_cursor(self, cursor: str) -> None:
        with self._tx():
            self._advance(cursor)
