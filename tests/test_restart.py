"""Power cuts: a restart on the same ledger in the middle of a credit, a vend or a donation
countdown keeps the shopper's credit and charges nothing without a confirmed drop."""

from __future__ import annotations

from conftest import KioskMaker
from scenarios import broken_invariants, event_kinds, pay

from kiosk.machine import State
from sim.rig import SimKiosk


def test_credit_survives_a_restart(make_kiosk: KioskMaker, kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 2)
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == 7
    assert kiosk.display == ("Crédit : 7 c", "Choisissez")
    pay(kiosk, 5, 5, 1, 2)
    kiosk.world.press(1)
    kiosk.run_for(10)
    assert kiosk.controller.credit_cents == 0
    assert kiosk.ledger.db.execute("SELECT count(*) FROM credit_sessions").fetchone()[0] == 1
    assert broken_invariants(kiosk) == {}


def test_a_vend_cut_before_the_drop_is_not_charged(make_kiosk: KioskMaker, kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5, 5, 5)
    kiosk.world.press(1)
    kiosk.run_for(0.5)
    assert kiosk.hardware.dispenser.motor_is_on(1)
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.world.truth.delivered[1] == 0
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == 20
    assert not kiosk.hardware.dispenser.motor_is_on(1)
    vend = kiosk.ledger.db.execute("SELECT outcome FROM vends").fetchone()[0]
    assert vend == "interrupted"
    assert kiosk.controller.slots[1].needs_recount
    assert kiosk.controller.slots[1].quantity == 12
    assert "vend_interrupted" in event_kinds(kiosk)
    assert broken_invariants(kiosk) == {}
    # The shopper tries again: the spiral resumes its turn and the product falls.
    kiosk.world.press(1)
    kiosk.run_for(10)
    assert kiosk.world.truth.delivered[1] == 1
    assert kiosk.controller.credit_cents == 0


def test_a_drop_not_yet_recorded_is_not_charged(make_kiosk: KioskMaker, kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(0.5)
    # Let the world move on, but cut the power before the core hears of the drop.
    while kiosk.world.truth.delivered[2] == 0:
        kiosk.clock.run_next()
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.ledger.db.execute("SELECT count(*) FROM sales").fetchone()[0] == 0
    assert kiosk.controller.credit_cents == 10
    assert kiosk.controller.slots[2].needs_recount
    assert broken_invariants(kiosk) == {}


def test_a_donation_countdown_cut_short_keeps_the_credit(
    make_kiosk: KioskMaker, kiosk: SimKiosk
) -> None:
    pay(kiosk, 2)
    kiosk.world.cancel()
    kiosk.run_for(1)
    assert kiosk.controller.donation_pending
    kiosk = make_kiosk.restart(kiosk)
    assert not kiosk.controller.donation_pending
    assert kiosk.controller.credit_cents == 2
    assert kiosk.ledger.db.execute("SELECT count(*) FROM donations").fetchone()[0] == 0


def test_a_restart_with_the_door_open_is_maintenance(
    make_kiosk: KioskMaker, kiosk: SimKiosk
) -> None:
    kiosk.world.open_door()
    kiosk.run_for(0.5)
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.controller.state is State.MAINTENANCE
    assert not kiosk.hardware.acceptor.is_accepting


def test_every_restart_is_counted(make_kiosk: KioskMaker, kiosk: SimKiosk) -> None:
    for _ in range(3):
        kiosk = make_kiosk.restart(kiosk)
    boots = kiosk.ledger.db.execute("SELECT value FROM meta WHERE key = 'boot_count'").fetchone()[0]
    assert boots == "4"
