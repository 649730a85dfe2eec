"""The whole kiosk on the simulator: buying, credit, messages, sold-out and faulty slots, the
leftover policies, the door, faults and the safe state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import KioskMaker, with_changes
from scenarios import broken_invariants, buy, event_codes, event_kinds, pay, service_visit

from kiosk.config import Config
from kiosk.events import Refill, Shutdown
from kiosk.machine import State
from sim.clock import SimClock
from sim.rig import SimKiosk
from sim.world import World


def test_a_shopper_buys_a_cookie(kiosk: SimKiosk) -> None:
    assert kiosk.controller.state is State.IDLE
    assert kiosk.display == ("Bonjour ! 1 2 5 c", "Monnaie non rendue")
    assert kiosk.hardware.acceptor.is_accepting
    pay(kiosk, 5, 5, 5, 5)
    assert kiosk.display == ("Crédit : 20 c", "Choisissez")
    kiosk.world.press(1)
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.VENDING
    assert kiosk.hardware.dispenser.motor_is_on(1)
    assert not kiosk.hardware.acceptor.is_accepting
    assert kiosk.display == ("Distribution...", "Cookie bio")
    kiosk.run_for(2)
    assert kiosk.display == ("Merci !", "Prenez Cookie bio")
    assert not kiosk.hardware.dispenser.motor_is_on(1)
    assert kiosk.world.truth.delivered[1] == 1
    assert kiosk.controller.state is State.IDLE
    assert kiosk.controller.credit_cents == 0
    assert kiosk.controller.slots[1].quantity == 11
    kiosk.run_for(5)
    assert kiosk.display == ("Bonjour ! 1 2 5 c", "Monnaie non rendue")
    assert broken_invariants(kiosk) == {}


def test_change_stays_as_credit(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5, 2)
    buy(kiosk, 2)
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == 2
    assert kiosk.display == ("Crédit : 2 c", "Choisissez")


def test_not_enough_credit_says_what_is_missing(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 2, 1)
    kiosk.world.press(1)
    kiosk.run_for(0.5)
    assert kiosk.display == ("Il manque 12 c", "Cookie bio 20 c")
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.ledger.db.execute("SELECT count(*) FROM vends").fetchone()[0] == 0
    kiosk.run_for(4)
    assert kiosk.display == ("Crédit : 8 c", "Choisissez")


def test_a_button_without_credit_shows_the_price(kiosk: SimKiosk) -> None:
    kiosk.world.press(3)
    kiosk.run_for(0.5)
    assert kiosk.display == ("Chocolat", "Prix : 15 c")
    assert kiosk.controller.state is State.IDLE


def test_a_sold_out_slot_goes_dark_and_says_so(make_kiosk: KioskMaker, config: Config) -> None:
    one_left = dataclasses.replace(config.slots[1], initial_quantity=1)
    kiosk = make_kiosk(
        dataclasses.replace(config, slots=(config.slots[0], one_left, config.slots[2]))
    )
    kiosk.world.spirals[2].stock = 1
    pay(kiosk, 5, 5, 5, 5)
    buy(kiosk, 2)
    assert kiosk.controller.slots[2].quantity == 0
    assert not kiosk.hardware.panel.led_is_lit(2)
    assert kiosk.hardware.panel.led_is_lit(1)
    kiosk.world.press(2)
    kiosk.run_for(0.5)
    assert kiosk.display == ("Chewing-gum", "Épuisé")
    assert kiosk.controller.credit_cents == 10


def test_a_jammed_slot_keeps_the_credit_and_is_refused(kiosk: SimKiosk) -> None:
    kiosk.world.jam(1)
    pay(kiosk, 5, 5, 5, 5)
    kiosk.world.press(1)
    kiosk.run_for(9)  # max_run_s is 8
    assert not kiosk.hardware.dispenser.motor_is_on(1)
    assert kiosk.display == ("Pas de produit", "Crédit gardé 20 c")
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == 20
    assert kiosk.controller.slots[1].fault == "jammed"
    assert not kiosk.hardware.panel.led_is_lit(1)
    kiosk.run_for(4)
    kiosk.world.press(1)
    kiosk.run_for(0.5)
    assert kiosk.display == ("Cookie bio", "Indisponible")
    buy(kiosk, 3)
    assert kiosk.world.truth.delivered[3] == 1
    assert kiosk.controller.credit_cents == 5
    assert "vend_failed dispenser:jammed" in event_codes(kiosk)
    assert "fault slot_1:jammed" in event_codes(kiosk)
    assert broken_invariants(kiosk) == {}


def test_an_empty_spiral_turns_twice_then_gives_up(kiosk: SimKiosk) -> None:
    kiosk.world.spirals[3].empty = True
    pay(kiosk, 5, 5, 5)
    buy(kiosk, 3, wait_s=15)
    assert kiosk.controller.slots[3].fault == "no_drop"
    assert kiosk.controller.credit_cents == 15
    outcome = kiosk.ledger.db.execute("SELECT outcome, detail FROM vends").fetchone()
    assert tuple(outcome) == ("no_drop", "no drop after 2 turn(s)")


def test_a_hanging_product_falls_on_the_second_turn(kiosk: SimKiosk) -> None:
    kiosk.world.spirals[2].hang_once = True
    pay(kiosk, 5, 5)
    buy(kiosk, 2)
    assert kiosk.world.truth.delivered[2] == 1
    assert kiosk.controller.credit_cents == 0
    assert kiosk.ledger.db.execute("SELECT count(*) FROM sales").fetchone()[0] == 1


def test_nothing_to_sell_is_out_of_service_until_serviced(kiosk: SimKiosk) -> None:
    for slot in (1, 2, 3):
        kiosk.world.jam(slot)
    pay(kiosk, 5, 5, 5, 5)
    for slot in (1, 2, 3):
        buy(kiosk, slot)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Hors service", "Tout est épuisé")
    assert not kiosk.hardware.acceptor.is_accepting
    assert not kiosk.world.insert_coin(5)  # handed back
    service_visit(kiosk)
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == 20
    assert all(s.sellable for s in kiosk.controller.slots.values())


@pytest.mark.parametrize("how", ["inactivity", "cancel"])
def test_keep_policy_keeps_the_credit(make_kiosk: KioskMaker, config: Config, how: str) -> None:
    kiosk = make_kiosk(with_changes(config, credit={"leftover": "keep"}))
    pay(kiosk, 5, 2)
    if how == "cancel":
        kiosk.world.cancel()
        kiosk.run_for(0.5)
    else:
        kiosk.run_for(45)
    assert kiosk.display == ("Crédit gardé", "7 c")
    kiosk.run_for(3600)
    assert kiosk.controller.credit_cents == 7
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.display == ("Crédit : 7 c", "Choisissez")
    assert "credit_kept" in event_kinds(kiosk)
    pay(kiosk, 5)
    assert kiosk.controller.credit_cents == 12


@pytest.mark.parametrize("how", ["inactivity", "cancel"])
def test_donate_policy_announces_then_donates(kiosk: SimKiosk, how: str) -> None:
    pay(kiosk, 5, 2)
    if how == "cancel":
        kiosk.world.cancel()
        kiosk.run_for(0.5)
    else:
        kiosk.run_for(40)
        assert not kiosk.controller.donation_pending
        while not kiosk.controller.donation_pending:
            kiosk.run_for(0.5)
    assert kiosk.display == ("Don 7 c dans 5s", "à Restos du Coeur")
    kiosk.run_for(2)
    assert kiosk.display[0] == "Don 7 c dans 3s"
    assert kiosk.controller.credit_cents == 7
    kiosk.run_for(3)
    assert kiosk.controller.state is State.IDLE
    assert kiosk.display == ("Merci pour le don", "à Restos du Coeur")
    row = kiosk.ledger.db.execute("SELECT amount_cents, beneficiary FROM donations").fetchone()
    assert tuple(row) == (7, "Restos du Coeur")
    assert broken_invariants(kiosk) == {}


def test_a_coin_stops_the_donation_countdown(kiosk: SimKiosk) -> None:
    pay(kiosk, 5)
    kiosk.world.cancel()
    kiosk.run_for(1)
    assert kiosk.controller.donation_pending
    pay(kiosk, 2)
    assert not kiosk.controller.donation_pending
    kiosk.run_for(20)
    assert kiosk.controller.credit_cents == 7
    assert kiosk.ledger.db.execute("SELECT count(*) FROM donations").fetchone()[0] == 0


def test_a_selection_stops_the_donation_countdown(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.cancel()
    kiosk.run_for(1)
    buy(kiosk, 2)
    assert kiosk.world.truth.delivered[2] == 1
    assert kiosk.ledger.db.execute("SELECT count(*) FROM donations").fetchone()[0] == 0


def test_the_door_puts_the_kiosk_in_maintenance(kiosk: SimKiosk) -> None:
    pay(kiosk, 5)
    kiosk.world.open_door()
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.MAINTENANCE
    assert kiosk.display == ("Maintenance", "Porte ouverte")
    assert kiosk.world.coins.inhibited
    assert not any(kiosk.hardware.panel.led_is_lit(s) for s in (1, 2, 3))
    kiosk.run_for(600)
    assert kiosk.controller.credit_cents == 5  # no inactivity in maintenance
    kiosk.world.close_door()
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.hardware.panel.led_is_lit(1)
    assert event_kinds(kiosk)[-2:] == ["door_opened", "door_closed"]


def test_a_door_opened_during_a_vend_waits_for_it(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(0.5)
    kiosk.world.open_door()
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.VENDING
    kiosk.run_for(5)
    assert kiosk.controller.state is State.MAINTENANCE
    assert kiosk.world.truth.delivered[2] == 1


def test_refills_only_with_the_door_open_and_up_to_capacity(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5, 5, 5)
    buy(kiosk, 1)
    kiosk.events.put(Refill(1, 5))
    kiosk.run_for(0.5)
    assert kiosk.controller.slots[1].quantity == 11
    kiosk.world.open_door()
    kiosk.run_for(0.5)
    kiosk.events.put(Refill(1, 5))
    kiosk.run_for(0.5)
    assert kiosk.controller.slots[1].quantity == 12
    assert broken_invariants(kiosk) == {}


def test_a_stuck_drop_sensor_stops_selling_until_it_clears(kiosk: SimKiosk) -> None:
    kiosk.world.stick_drop_sensor(True)
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(1)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Pas de produit", "Crédit gardé 10 c")
    kiosk.run_for(3)
    assert kiosk.display == ("Hors service", "Capteur de chute")
    assert not kiosk.hardware.dispenser.motor_is_on(2)
    assert kiosk.controller.credit_cents == 10
    kiosk.world.stick_drop_sensor(False)
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.CREDIT
    buy(kiosk, 2)
    assert kiosk.controller.credit_cents == 0
    assert event_kinds(kiosk).count("fault") == 1
    assert "fault_cleared" in event_kinds(kiosk)


def test_a_coin_read_during_a_vend_is_credited(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.insert_coin(2)  # its train starts after the selection below
    kiosk.world.press(2)
    kiosk.run_for(8)
    assert kiosk.world.truth.delivered[2] == 1
    assert kiosk.controller.credit_cents == 2
    assert broken_invariants(kiosk) == {}


def test_coins_in_a_burst_all_count(kiosk: SimKiosk) -> None:
    kiosk.world.burst([2, 2, 5], spacing_s=0.05)
    kiosk.run_for(6)
    assert kiosk.controller.credit_cents == 9
    assert broken_invariants(kiosk) == {}


def test_noise_on_the_coin_line_credits_nothing(kiosk: SimKiosk) -> None:
    kiosk.world.noise(0.005)  # a glitch
    kiosk.run_for(1)
    kiosk.world.noise(0.05)  # a full-width stray pulse
    kiosk.run_for(1)
    assert kiosk.controller.credit_cents == 0
    assert kiosk.controller.state is State.IDLE
    assert event_kinds(kiosk) == ["ledger_created", "coin_rejected"]


def test_english_texts(make_kiosk: KioskMaker, config: Config) -> None:
    kiosk = make_kiosk(with_changes(config, kiosk={"language": "en"}))
    assert kiosk.display == ("Hello! 1 2 5 c", "No change given")
    pay(kiosk, 5)
    kiosk.world.press(1)
    kiosk.run_for(0.5)
    assert kiosk.display == ("15 c missing", "Cookie bio 20 c")


def test_an_unexpected_error_stops_selling_safely(
    kiosk: SimKiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(0.3)
    assert kiosk.hardware.dispenser.motor_is_on(2)

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(kiosk.controller, "_on_vend_finished", broken)
    kiosk.run_for(5)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert not kiosk.hardware.dispenser.motor_is_on(2)
    assert not kiosk.hardware.acceptor.is_accepting
    assert kiosk.display == ("Hors service", "Erreur interne")
    assert kiosk.controller.credit_cents == 10  # nothing charged
    monkeypatch.undo()
    service_visit(kiosk)
    assert kiosk.controller.state is State.CREDIT


def test_a_coin_line_held_low_stops_taking_coins(kiosk: SimKiosk) -> None:
    kiosk.world.coins.line.drive(False)  # a short on the COIN wire
    kiosk.run_for(1)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Hors service", "Monnayeur")
    assert kiosk.world.coins.inhibited
    kiosk.world.coins.line.drive(True)
    kiosk.run_for(1)
    assert kiosk.controller.state is State.IDLE
    assert kiosk.hardware.acceptor.is_accepting
    assert event_kinds(kiosk)[-2:] == ["fault", "fault_cleared"]


def test_a_slot_dropped_from_the_config_is_no_longer_offered(
    make_kiosk: KioskMaker, config: Config, kiosk: SimKiosk
) -> None:
    kiosk.close()
    two_slots = dataclasses.replace(config, slots=config.slots[:2])
    kiosk = make_kiosk(two_slots)
    assert kiosk.controller.state is State.IDLE
    assert sorted(kiosk.controller.slots) == [1, 2]
    assert "slot_removed" in event_kinds(kiosk)
    assert broken_invariants(kiosk) == {}


def test_any_selection_stops_the_donation_countdown(kiosk: SimKiosk) -> None:
    pay(kiosk, 5)
    kiosk.world.cancel()
    kiosk.run_for(1)
    kiosk.world.press(1)  # 20 c: not enough, but the shopper is still there
    kiosk.run_for(0.5)
    assert kiosk.display == ("Il manque 15 c", "Cookie bio 20 c")
    assert not kiosk.controller.donation_pending
    kiosk.run_for(10)
    assert kiosk.controller.credit_cents == 5


def test_a_coin_being_read_holds_the_donation(kiosk: SimKiosk) -> None:
    pay(kiosk, 2)
    kiosk.world.cancel()
    kiosk.run_for(4.4)  # the countdown ends in 0.7 s; a 5 c train takes about 2 s to read
    kiosk.world.insert_coin(5)
    kiosk.run_for(5)
    assert kiosk.controller.credit_cents == 7
    assert kiosk.ledger.db.execute("SELECT count(*) FROM donations").fetchone()[0] == 0
    assert broken_invariants(kiosk) == {}


def test_a_shutdown_during_a_vend_lets_it_finish(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(0.5)
    kiosk.events.put(Shutdown())
    kiosk.run_for(10)
    assert kiosk.world.coins.inhibited  # the last vend ended: coins stay off on the way out
    assert kiosk.world.truth.delivered[2] == 1
    assert kiosk.ledger.db.execute("SELECT outcome FROM vends").fetchone()[0] == "delivered"
    assert kiosk.controller.credit_cents == 0


def test_an_error_during_a_vend_leaves_no_vend_open(
    kiosk: SimKiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(0.3)
    monkeypatch.setattr(kiosk.controller, "_on_vend_finished", lambda event: 1 / 0)
    kiosk.run_for(5)
    rows = kiosk.ledger.db.execute("SELECT outcome FROM vends").fetchall()
    assert [r[0] for r in rows] == ["interrupted"]
    assert kiosk.controller.slots[2].needs_recount


def test_refills_refused_or_cut_are_recorded(kiosk: SimKiosk) -> None:
    kiosk.events.put(Refill(1, 3))
    kiosk.run_for(0.5)
    kiosk.world.open_door()
    kiosk.run_for(0.5)
    kiosk.events.put(Refill(1, 3))
    kiosk.run_for(0.5)
    assert "refill_refused" in event_kinds(kiosk)
    assert "refill_capped" in event_kinds(kiosk)
    assert kiosk.controller.slots[1].quantity == 12


def test_coins_of_a_merged_train_are_flagged(kiosk: SimKiosk) -> None:
    kiosk.world.burst([5, 2], spacing_s=0.02)  # both validated before the first pulse
    kiosk.run_for(5)
    assert kiosk.controller.credit_cents == 7
    rows = kiosk.ledger.db.execute("SELECT value_cents, merged FROM coins ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(5, 1), (2, 1)]


@pytest.mark.parametrize(("pulse_ms", "gap_ms"), [(35.0, 70.0), (75.0, 150.0)])
def test_an_acceptor_off_its_nominal_timing_is_still_read(
    config: Config, db_path: Path, pulse_ms: float, gap_ms: float
) -> None:
    clock = SimClock()
    world = World(config, clock, pulse_ms=pulse_ms, gap_ms=gap_ms)
    kiosk = SimKiosk(config, db_path, world=world, clock=clock)
    try:
        for value in (5, 2, 1):
            assert kiosk.world.insert_coin(value)
            kiosk.run_for(4)
        assert kiosk.controller.credit_cents == 8
        assert broken_invariants(kiosk) == {}
    finally:
        kiosk.shutdown()


def test_an_error_during_a_service_visit_is_cleared_when_the_door_closes(
    kiosk: SimKiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    kiosk.world.open_door()
    kiosk.run_for(1)
    with monkeypatch.context() as patched:
        patched.setattr(kiosk.controller, "_on_refill", lambda event: 1 / 0)
        kiosk.events.put(Refill(1, 1))
        kiosk.run_for(1)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    kiosk.world.close_door()
    kiosk.run_for(1)
    assert kiosk.controller.state is State.IDLE
    assert kiosk.ledger.faults() == []
