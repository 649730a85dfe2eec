"""The technician's writes: refills, recounts, prices, slots on and off, the cash box emptied,
faults cleared, service mode, coins a technician turned off, test vends and audit reads.

Each is one transaction holding the change and the event that records who made it (the
operating-system user and the way the request came: the control socket, the CLI on a stopped
kiosk, later MQTT). A request that breaks a rule raises Refused before anything is written. The
rules of the kiosk's state (a refill only in maintenance, a test vend only with coins off) are the
core's: kiosk/service.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from kiosk.errors import Refused
from kiosk.ledger_base import Actor, Fault, LedgerBase, cashbox_coins, slot_device

INTERNAL = ("kiosk", "internal_error")
SERVICE_MODE = "service_mode"
INHIBITED_COINS = "inhibited_coins"


def clearable(fault: Fault) -> bool:
    """Faults a technician clears: a slot's (a jam, a missing drop) and the kiosk's internal
    error. A device's own fault (an acceptor lost, a blocked drop sensor) lasts while the device
    reports it and clears when it recovers."""
    return fault.device.startswith("slot_") or (fault.device, fault.code) == INTERNAL


@dataclass(frozen=True)
class Collection:
    at: str
    actor: str
    coins: dict[int, int]  # denomination in cents -> count taken out
    expected_cents: int  # what the ledger said was in the box
    counted_cents: int | None  # what the technician counted, if given

    @property
    def difference_cents(self) -> int | None:
        return None if self.counted_cents is None else self.counted_cents - self.expected_cents

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "coins": {str(k): v for k, v in sorted(self.coins.items())},
            "expected_cents": self.expected_cents,
            "counted_cents": self.counted_cents,
            "difference_cents": self.difference_cents,
        }


class Upkeep(LedgerBase):
    def _stock(self, slot: int) -> tuple[int, int]:
        row = self.db.execute(
            "SELECT quantity, capacity FROM stock WHERE slot = ?", [slot]
        ).fetchone()
        if row is None:
            raise Refused(f"no slot {slot}")
        return int(row[0]), int(row[1])

    # --- stock and prices --------------------------------------------------------------------

    def refill(self, slot: int, asked: int | None, by: Actor, *, capped: bool = False) -> int:
        """Add `asked` products to `slot` (None: fill it). More than fit is refused, or with
        `capped` (products already in the spiral) cut to what fits and the cut recorded.
        Returns how many were added."""
        with self._tx() as at:
            quantity, capacity = self._stock(slot)
            room = capacity - quantity
            wanted = room if asked is None else asked
            if wanted > room and not capped:
                raise Refused(
                    f"slot {slot} holds {quantity} of {capacity}: {room} more fit, not {wanted}"
                )
            added = max(0, min(wanted, room))
            if added < wanted:
                detail = f"{wanted} asked, {added} fit (capacity {capacity})"
                self._event(at, "refill_capped", detail, slot, by.user, origin=by.origin)
            if added:
                self.db.execute(
                    "UPDATE stock SET quantity = quantity + ? WHERE slot = ?", [added, slot]
                )
                self._count(at, slot, "refill", added, by.user)
                detail = f"+{added}: {quantity + added} of {capacity}"
                self._event(at, "refill", detail, slot, by.user, origin=by.origin)
        return added

    def count_stock(self, slot: int, quantity: int, by: Actor) -> int:
        """A recount: the stock is what the technician counted, the recount flag goes, and the
        difference is recorded. Returns what the ledger held before."""
        with self._tx() as at:
            held, capacity = self._stock(slot)
            if quantity > capacity:
                raise Refused(f"slot {slot} holds at most {capacity}, not {quantity}")
            self.db.execute(
                "UPDATE stock SET quantity = ?, needs_recount = 0 WHERE slot = ?", [quantity, slot]
            )
            self._count(at, slot, "count", quantity, by.user)
            detail = f"counted {quantity}, the ledger held {held} ({quantity - held:+d})"
            self._event(at, "stock_counted", detail, slot, by.user, origin=by.origin)
        return held

    def set_price(self, slot: int, price_cents: int, by: Actor) -> int:
        """A live price (a technician's or the city's); a restart keeps it. Returns the old."""
        with self._tx() as at:
            old = self._one("SELECT price_cents FROM stock WHERE slot = ?", [slot])
            if old is None:
                raise Refused(f"no slot {slot}")
            self.db.execute("UPDATE stock SET price_cents = ? WHERE slot = ?", [price_cents, slot])
            detail = f"price_cents {old} -> {price_cents}"
            self._event(
                at, "slot_changed", detail, slot, by.user, code="price_cents", origin=by.origin
            )
        return int(old)

    def set_enabled(self, slot: int, enabled: bool, by: Actor) -> bool:
        """Offer a slot for sale or take it off; False if it already was."""
        with self._tx() as at:
            self._stock(slot)
            changed = self.db.execute(
                "UPDATE stock SET enabled = ? WHERE slot = ? AND enabled != ?",
                [enabled, slot, enabled],
            ).rowcount
            if changed:
                kind = "slot_enabled" if enabled else "slot_disabled"
                self._event(at, kind, "", slot, by.user, origin=by.origin)
        return bool(changed)

    # --- the cash box ------------------------------------------------------------------------

    def collect(self, counted_cents: int | None, by: Actor) -> Collection:
        """The cash box emptied: what the ledger says was in it is taken out, and what the
        technician counted, if given, is kept beside it with the difference."""
        with self._tx() as at:
            coins = cashbox_coins(self.db)
            expected = sum(value * count for value, count in coins.items())
            self.db.execute(
                "INSERT INTO collections (at, last_coin_id, actor, expected_cents, counted_cents, "
                "origin) VALUES (?, (SELECT coalesce(max(id), 0) FROM coins), ?, ?, ?, ?)",
                [at, by.user, expected, counted_cents, by.origin],
            )
            collection = Collection(at, by.user, coins, expected, counted_cents)
            detail = f"{expected} c in the ledger"
            if counted_cents is not None:
                detail += f", {counted_cents} c counted ({collection.difference_cents:+d} c)"
            self._event(at, "collection", detail, None, by.user, origin=by.origin)
            body = {
                "coins": {str(k): v for k, v in coins.items()},
                "value_cents": expected,
                "counted_cents": counted_cents,
                "difference_cents": collection.difference_cents,
            }
            self._outbox(at, "collection", body | {"actor": by.user, "origin": by.origin})
        return collection

    # --- faults, service mode, coins ---------------------------------------------------------

    def clear_faults(self, device: str | None, code: str | None, by: Actor) -> list[Fault]:
        """Clear the active faults a technician may clear that match `device` (and `code`);
        every one when both are None. Refused when none matches."""
        with self._tx() as at:
            matching = [
                f for f in self._faults() if device in (None, f.device) and code in (None, f.code)
            ]
            cleared = [f for f in matching if clearable(f)]
            if not cleared:
                held = ", ".join(f"{f.device}:{f.code}" for f in matching)
                if held:
                    raise Refused(
                        f"{held}: reported by the device while it lasts; it clears by itself "
                        "when the device recovers"
                    )
                what = "" if device is None else f" matching {device}{':' + code if code else ''}"
                raise Refused(f"no active fault{what}")
            for f in cleared:
                self._clear_fault(at, f.device, f.code, "cleared by a technician", by)
        return cleared

    def service_mode(self) -> bool:
        return self.meta(SERVICE_MODE) == "1"

    def set_service_mode(self, on: bool, by: Actor, *, ends_visit: bool = True) -> list[Fault]:
        """Maintenance without opening the door, kept across a restart. Turned off with the
        door closed, it ends a service visit as closing the door does: returns the faults that
        clears."""
        with self._tx() as at:
            self._set_meta(SERVICE_MODE, "1" if on else "0")
            kind = "service_on" if on else "service_off"
            self._event(at, kind, "", None, by.user, origin=by.origin)
            return self._end_visit(at, by) if not on and ends_visit else []

    def _end_visit(self, at: str, by: Actor) -> list[Fault]:
        cleared = [f for f in self._faults() if clearable(f)]
        for f in cleared:
            self._clear_fault(at, f.device, f.code, "serviced", by)
        return cleared

    def set_identity(self, device: str, identity: Mapping[str, str]) -> None:
        """What a device said it is (make, model, serial, software), for status and the audit."""
        text = json.dumps(dict(identity), sort_keys=True)
        if self.meta(f"identity:{device}") != text:
            with self._tx():
                self._set_meta(f"identity:{device}", text)

    def identity(self, device: str) -> dict[str, str]:
        return dict(json.loads(self.meta(f"identity:{device}") or "{}"))

    def inhibited_coins(self) -> frozenset[int]:
        """Denominations a technician turned off, kept across restarts."""
        return frozenset(json.loads(self.meta(INHIBITED_COINS) or "[]"))

    def set_coin_inhibited(self, value_cents: int, inhibited: bool, by: Actor) -> frozenset[int]:
        """Turn one denomination off or on again. Returns the denominations now off."""
        with self._tx() as at:
            before = self.inhibited_coins()
            after = before | {value_cents} if inhibited else before - {value_cents}
            if after != before:
                self._set_meta(INHIBITED_COINS, json.dumps(sorted(after)))
                kind = "coin_inhibited" if inhibited else "coin_enabled"
                self._event(
                    at,
                    kind,
                    f"{value_cents} c",
                    None,
                    by.user,
                    code=str(value_cents),
                    origin=by.origin,
                )
        return after

    # --- test vends --------------------------------------------------------------------------

    def start_test_vend(self, slot: int, by: Actor) -> int:
        with self._tx() as at:
            self._stock(slot)
            cursor = self.db.execute(
                "INSERT INTO test_vends (slot, started_at, actor) VALUES (?, ?, ?)",
                [slot, at, by.user],
            )
            self._event(at, "test_vend", "started", slot, by.user, origin=by.origin)
        return int(cursor.lastrowid or 0)

    def finish_test_vend(self, test_id: int, outcome: str, detail: str, fault: str | None) -> None:
        """A test vend's outcome: a product that fell leaves the stock (never a sale); a failed
        one marks its slot with `fault`, as a shopper's would."""
        with self._tx() as at:
            slot = self._one("SELECT slot FROM test_vends WHERE id = ?", [test_id])
            self.db.execute(
                "UPDATE test_vends SET outcome = ?, ended_at = ?, detail = ? WHERE id = ?",
                [outcome, at, detail, test_id],
            )
            if outcome == "delivered":
                self.db.execute("UPDATE stock SET quantity = quantity - 1 WHERE slot = ?", [slot])
            elif fault is not None:
                self._set_fault(at, Fault(slot_device(slot), fault, at, detail, slot))
            self._event(at, "test_vend", detail, slot, code=outcome, device="dispenser")

    # --- remote commands ---------------------------------------------------------------------

    def command_done(self, cmd_id: str) -> tuple[str, dict[str, Any]] | None:
        """The request (as JSON text) and the reply of a remote command already answered."""
        row = self.db.execute(
            "SELECT request, reply FROM commands WHERE cmd_id = ?", [cmd_id]
        ).fetchone()
        return None if row is None else (str(row[0]), dict(json.loads(row[1])))

    def record_command(
        self,
        cmd_id: str | None,
        name: str,
        request: str,
        reply: dict[str, Any],
        by: Actor,
        *,
        final: bool,
    ) -> None:
        """A remote command answered, in the events; kept by its cmd_id when the answer is
        final (done, or refused for what it says), so that it is done once. A refusal for the
        kiosk's state of the moment is not kept: the same command may succeed later."""
        with self._tx() as at:
            if cmd_id is not None and final:
                self.db.execute(
                    "INSERT OR IGNORE INTO commands VALUES (?, ?, ?, ?, ?)",
                    [cmd_id, at, name, request, json.dumps(reply)],
                )
            outcome = "done" if reply.get("ok") else f"refused: {reply.get('error')}"
            detail = f"{cmd_id or 'no cmd_id'}: {outcome}"
            self._event(at, "command", detail, None, by.user, code=name, origin=by.origin)

    # --- audit -------------------------------------------------------------------------------

    def read_audit(self, reset: bool, by: Actor, render: Callable[[Database, int], str]) -> str:
        """An audit read, recorded first so that the report counts it; `render(db, read_id)`
        writes the report in the same transaction. With `reset` the read also starts a new
        interim period: what follows is counted since this read."""
        with self._tx() as at:
            cursor = self.db.execute(
                "INSERT INTO audit_reads (at, reset, actor, origin, last_coin_id, last_sale_id, "
                "last_test_vend_id, last_event_id, last_donation_id) VALUES (?, ?, ?, ?, "
                + ", ".join(
                    f"(SELECT coalesce(max(id), 0) FROM {table})"
                    for table in ("coins", "sales", "test_vends", "events", "donations")
                )
                + ")",
                [at, reset, by.user, by.origin],
            )
            read_id = int(cursor.lastrowid or 0)
            text = render(self.db, read_id)
            kind = "audit_reset" if reset else "audit_read"
            self._event(at, kind, f"audit read {read_id}", None, by.user, origin=by.origin)
        return text
