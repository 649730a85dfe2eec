"""Shopper and technician moves for end-to-end tests on the simulated kiosk."""

from __future__ import annotations

from kiosk import reports
from kiosk.events import Refill
from sim.rig import SimKiosk
from sim.shoppers import ground_truth

COIN_S = 2.5  # long enough for the longest train (5 c) to be read


def pay(kiosk: SimKiosk, *coins: int) -> None:
    for value in coins:
        assert kiosk.world.insert_coin(value), f"{value} c coin handed back"
        kiosk.run_for(COIN_S)


def buy(kiosk: SimKiosk, slot: int, wait_s: float = 12.0) -> None:
    kiosk.world.press(slot)
    kiosk.run_for(wait_s)


def service_visit(kiosk: SimKiosk) -> None:
    """Door open, repairs, refill to capacity, door closed."""
    kiosk.world.open_door()
    kiosk.run_for(1)
    kiosk.world.repair()
    for slot in sorted(kiosk.world.spirals):
        added = kiosk.world.refill(slot)
        if added:
            kiosk.events.put(Refill(slot, added))
    kiosk.run_for(1)
    kiosk.world.close_door()
    kiosk.run_for(1)


def event_kinds(kiosk: SimKiosk) -> list[str]:
    return [r[0] for r in kiosk.ledger.db.execute("SELECT kind FROM events ORDER BY id")]


def event_codes(kiosk: SimKiosk) -> list[str]:
    """The events as "kind device:code", for those that name a device."""
    rows = kiosk.ledger.db.execute(
        "SELECT kind, device, code FROM events WHERE device IS NOT NULL ORDER BY id"
    )
    return [f"{kind} {device}:{code}" for kind, device, code in rows]


def broken_invariants(kiosk: SimKiosk) -> dict[str, list[str]]:
    """Ledger invariants, and the ledger against the world's ground truth."""
    checks = [*reports.verify(kiosk.ledger.db), ground_truth(kiosk)]
    return {c.name: c.differences for c in checks if not c.ok}
