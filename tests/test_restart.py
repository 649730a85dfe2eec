"""Power cuts: a restart on the same ledger in the middle of a credit, a vend or a donation
countdown keeps the shopper's credit and charges nothing without a confirmed drop; live prices,
and faults, are the ledger's across restarts."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import KioskMaker
from scenarios import broken_invariants, event_codes, event_kinds, pay, service_visit

from kiosk.config import Config
from kiosk.ledger import Actor
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


def test_a_live_price_survives_a_restart_until_the_profile_changes_it(
    make_kiosk: KioskMaker, kiosk: SimKiosk, config: Config
) -> None:
    kiosk.ledger.set_price(1, 25, Actor("technician", "cli"))
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.controller.slots[1].price_cents == 25  # the profile's 20 c is not re-applied
    kiosk.close()
    cheaper = dataclasses.replace(config.slots[0], price_cents=18)
    again = make_kiosk(dataclasses.replace(config, slots=(cheaper, *config.slots[1:])))
    assert again.controller.slots[1].price_cents == 18  # the profile changed it: applied
    changes = again.ledger.db.execute(
        "SELECT detail, actor FROM events WHERE kind = 'slot_changed' ORDER BY id"
    ).fetchall()
    assert changes == [
        ("price_cents 20 -> 25", "technician"),
        ("price_cents 25 -> 18 (profile)", "config"),
    ]


def test_faults_are_restored_at_start_and_cleared_by_what_is_found(
    make_kiosk: KioskMaker, kiosk: SimKiosk
) -> None:
    kiosk.world.jam(1)
    pay(kiosk, 5, 5, 5, 5)
    kiosk.world.press(1)
    kiosk.run_for(9)
    kiosk.world.stick_drop_sensor(True)
    kiosk.world.press(2)
    kiosk.run_for(1)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    kiosk.world.stick_drop_sensor(False)
    kiosk.close()  # before the beam cleared could be seen
    kiosk = make_kiosk.restart(kiosk)
    active = [(f.device, f.code) for f in kiosk.ledger.faults()]
    assert active == [("slot_1", "jammed")]  # the drop sensor is clear at start: cleared
    assert "fault_cleared drop_sensor:blocked" in event_codes(kiosk)
    assert kiosk.controller.slots[1].fault == "jammed"
    assert kiosk.controller.state is State.CREDIT


def test_an_internal_error_outlives_a_restart_until_a_service_visit(
    make_kiosk: KioskMaker, kiosk: SimKiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kiosk.controller, "_on_select", lambda slot: 1 / 0)
    kiosk.world.press(1)
    kiosk.run_for(1)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Hors service", "Erreur interne")
    service_visit(kiosk)
    assert kiosk.controller.state is State.IDLE
    assert kiosk.ledger.faults() == []
