"""The ledger refuses writes (disk full, locked by another process) while coins arrive: coins are
inhibited at once, every coin already taken stays pending and is written once storage answers,
in order; the storage fault is shown, then cleared by itself and recorded."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scenarios import COIN_S, broken_invariants, event_codes

from kiosk.events import Shutdown
from kiosk.machine import State
from sim.rig import SimKiosk


def lock(db_path: Path) -> sqlite3.Connection:
    """Another process takes the ledger's write lock (ROLLBACK lets go)."""
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


@pytest.fixture
def locked(db_path: Path) -> Iterator[sqlite3.Connection]:
    other = lock(db_path)
    yield other
    other.close()


def fill_the_disk(kiosk: SimKiosk) -> None:
    """The ledger may not grow by a page: the write that needs one fails as on a full disk."""
    pages = kiosk.ledger.db.execute("PRAGMA page_count").fetchone()[0]
    kiosk.ledger.db.execute(f"PRAGMA max_page_count = {pages}")


def make_room(kiosk: SimKiosk) -> None:
    kiosk.ledger.db.execute("PRAGMA max_page_count = 1073741823")


def test_coins_during_a_full_disk_are_kept_and_written_when_room_returns(
    kiosk: SimKiosk,
) -> None:
    fill_the_disk(kiosk)
    for _ in range(500):  # coins keep coming until one no longer fits
        if not kiosk.world.insert_coin(1):
            break
        kiosk.run_for(COIN_S)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Hors service", "Stockage")
    assert kiosk.world.coins.inhibited
    assert not kiosk.world.insert_coin(5)  # handed back: nothing more is taken
    kiosk.run_for(5)  # retried every second, still full
    make_room(kiosk)
    kiosk.run_for(2)
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == kiosk.world.truth.cashbox_cents
    codes = event_codes(kiosk)
    assert codes[-2:] == ["fault kiosk:storage", "fault_cleared kiosk:storage"]
    assert broken_invariants(kiosk) == {}


def test_a_locked_ledger_holds_the_coins_then_takes_them_in_order(
    kiosk: SimKiosk, locked: sqlite3.Connection
) -> None:
    kiosk.world.burst([5, 2, 1])
    kiosk.run_for(COIN_S * 3)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.controller.credit_cents == 0
    locked.execute("ROLLBACK")  # the other process lets go
    kiosk.run_for(2)
    values = [r[0] for r in kiosk.ledger.db.execute("SELECT value_cents FROM coins ORDER BY id")]
    assert values == [5, 2, 1]
    assert kiosk.controller.state is State.CREDIT
    assert broken_invariants(kiosk) == {}


def test_a_vend_ending_while_the_ledger_is_locked_is_charged_once_it_returns(
    kiosk: SimKiosk, db_path: Path
) -> None:
    for value in (5, 5):
        kiosk.world.insert_coin(value)
        kiosk.run_for(COIN_S)
    kiosk.world.press(2)
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.VENDING
    other = lock(db_path)
    kiosk.run_for(5)  # the product falls; its sale cannot be written yet
    assert kiosk.world.truth.delivered[2] == 1
    assert kiosk.controller.state is State.VENDING
    other.execute("ROLLBACK")
    other.close()
    kiosk.run_for(2)
    assert kiosk.controller.credit_cents == 0
    assert kiosk.ledger.db.execute("SELECT count(*) FROM sales").fetchone()[0] == 1
    assert kiosk.controller.state is State.IDLE
    assert broken_invariants(kiosk) == {}


def test_a_stop_while_the_ledger_refuses_writes_does_not_wait_for_it(
    kiosk: SimKiosk, locked: sqlite3.Connection
) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(COIN_S)
    kiosk.events.put(Shutdown())
    kiosk.run_for(60)
    assert not kiosk.controller.running
    assert kiosk.world.coins.inhibited


def test_an_event_that_fails_for_another_reason_does_not_hold_the_others(
    kiosk: SimKiosk, locked: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    kiosk.world.burst([5, 2])
    kiosk.run_for(COIN_S * 2)
    calls = []
    real = kiosk.controller._on_coin

    def first_fails(event: Any) -> None:
        calls.append(event.value_cents)
        if len(calls) == 1:
            raise RuntimeError("a bug in handling one coin")
        real(event)

    monkeypatch.setattr(kiosk.controller, "_on_coin", first_fails)
    locked.execute("ROLLBACK")
    kiosk.run_for(3)
    values = [r[0] for r in kiosk.ledger.db.execute("SELECT value_cents FROM coins")]
    assert values == [2]  # the other coin was still written
    assert kiosk.controller.state is State.OUT_OF_SERVICE  # the bug: internal error
    assert ("kiosk", "internal_error") in kiosk.controller.model.faults


def test_a_donation_due_while_the_ledger_is_locked_waits_for_it(
    kiosk: SimKiosk, db_path: Path
) -> None:
    kiosk.world.insert_coin(2)
    kiosk.run_for(COIN_S)
    kiosk.world.cancel()
    kiosk.run_for(3)  # the countdown runs; it ends while the ledger is locked
    other = lock(db_path)
    kiosk.run_for(5)
    assert ("kiosk", "internal_error") not in kiosk.controller.model.faults
    assert kiosk.controller.state is State.OUT_OF_SERVICE  # storage, not a bug
    other.execute("ROLLBACK")
    other.close()
    kiosk.run_for(60)  # back in credit; the leftover policy applies again
    assert kiosk.ledger.db.execute("SELECT sum(amount_cents) FROM donations").fetchone()[0] == 2
    assert kiosk.controller.state is State.IDLE
    assert broken_invariants(kiosk) == {}
