"""Requests carried out by the core on simulated time: the rules of the state (refills, recounts,
collections and test vends only in maintenance), service mode without the door, test vends
recorded apart from sales, coins turned off, faults cleared; and the checks of kiosk/requests.py,
which refuse bad input before anything runs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scenarios import broken_invariants, buy, event_kinds, pay

from kiosk import config as config_mod
from kiosk import requests
from kiosk.errors import Refused
from kiosk.events import Command, Refill
from kiosk.ledger import Actor
from kiosk.ledger_base import cashbox_coins
from kiosk.machine import State
from sim.rig import SimKiosk

TECH = Actor("alice", "socket")


def ask(kiosk: SimKiosk, name: str, wait_s: float = 0.5, **args: Any) -> dict[str, Any]:
    replies: list[dict[str, Any]] = []
    kiosk.events.put(Command(requests.check(name, args), TECH, replies.append))
    kiosk.run_for(wait_s)
    assert len(replies) == 1, replies
    return replies[0]


def ok(kiosk: SimKiosk, name: str, wait_s: float = 0.5, **args: Any) -> dict[str, Any]:
    reply = ask(kiosk, name, wait_s, **args)
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


def refused(kiosk: SimKiosk, name: str, **args: Any) -> str:
    reply = ask(kiosk, name, **args)
    assert not reply["ok"], reply
    return str(reply["error"])


def books(kiosk: SimKiosk) -> list[Any]:
    db = kiosk.ledger.db
    return [
        db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("stock", "stock_counts", "collections", "test_vends", "faults")
    ]


def test_hands_on_requests_wait_for_maintenance(kiosk: SimKiosk) -> None:
    before = books(kiosk)
    for name, args in [
        ("refill", {"slot": 1, "quantity": 1}),
        ("count", {"slot": 1, "quantity": 3}),
        ("collect", {}),
        ("test_vend", {"slot": 1}),
    ]:
        reason = refused(kiosk, name, **args)
        assert "idle" in reason and "service on" in reason
    assert books(kiosk) == before


def test_service_mode_is_maintenance_without_the_door_and_survives_a_restart(
    kiosk: SimKiosk, make_kiosk: Any
) -> None:
    assert ok(kiosk, "service", on=True)["state"] == "maintenance"
    assert kiosk.controller.state is State.MAINTENANCE
    assert not kiosk.hardware.acceptor.is_accepting
    assert kiosk.display == ("Maintenance", "Service en cours")
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.controller.state is State.MAINTENANCE
    kiosk.world.open_door()
    kiosk.run_for(0.5)
    kiosk.world.close_door()
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.MAINTENANCE  # the visit goes on until service off
    ok(kiosk, "service", on=False)
    assert kiosk.controller.state is State.IDLE
    assert kiosk.hardware.acceptor.is_accepting
    kinds = event_kinds(kiosk)
    assert kinds.count("service_on") == 1 and "service_off" in kinds
    actor = kiosk.ledger.db.execute(
        "SELECT actor, origin FROM events WHERE kind = 'service_on'"
    ).fetchone()
    assert actor == ("alice", "socket")


def test_refill_count_and_collect_in_maintenance(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5, 5, 5, 2)
    buy(kiosk, 1)
    ok(kiosk, "service", on=True)
    assert "12 more fit" not in refused(kiosk, "refill", slot=1, quantity=5)
    assert ok(kiosk, "refill", slot=1, quantity=1) == {
        "slot": 1,
        "added": 1,
        "quantity": 12,
        "capacity": 12,
    }
    assert ok(kiosk, "refill", slot=2)["added"] == 0  # --full on a full slot
    assert ok(kiosk, "count", slot=3, quantity=7) == {"slot": 3, "was": 10, "difference": -3}
    collected = ok(kiosk, "collect", counted_cents=20)
    assert collected["coins"] == {"2": 1, "5": 4} and collected["value_cents"] == 22
    assert collected["difference_cents"] == -2
    assert cashbox_coins(kiosk.ledger.db) == {}
    assert broken_invariants(kiosk) == {}


def test_refill_beyond_capacity_changes_nothing(kiosk: SimKiosk) -> None:
    ok(kiosk, "service", on=True)
    before = books(kiosk)
    assert refused(kiosk, "refill", slot=1, quantity=1) == (
        "slot 1 holds 12 of 12: 0 more fit, not 1"
    )
    assert "no slot 9" in refused(kiosk, "refill", slot=9, quantity=1)
    assert books(kiosk) == before


def test_a_test_vend_is_no_sale_and_takes_a_product(kiosk: SimKiosk) -> None:
    ok(kiosk, "service", on=True)
    result = ok(kiosk, "test_vend", wait_s=15, slot=2)
    assert result["outcome"] == "delivered"
    assert kiosk.world.truth.delivered[2] == 1
    db = kiosk.ledger.db
    assert db.execute("SELECT count(*) FROM sales").fetchone()[0] == 0
    assert db.execute("SELECT outcome, actor FROM test_vends").fetchall() == [
        ("delivered", "alice")
    ]
    assert kiosk.controller.slots[2].quantity == 14
    assert broken_invariants(kiosk) == {}


def test_nothing_changes_under_a_test_vend(kiosk: SimKiosk) -> None:
    kiosk.world.open_door()
    kiosk.world.jam(2)  # a long vend: every turn to the motor limit
    kiosk.run_for(0.5)
    replies: list[dict[str, Any]] = []
    kiosk.events.put(Command(requests.check("test_vend", {"slot": 2}), TECH, replies.append))
    kiosk.run_for(0.2)
    assert kiosk.controller.desk.testing
    for name, args in [
        ("count", {"slot": 2, "quantity": 0}),
        ("refill", {"slot": 1}),
        ("service", {"on": False}),
        ("collect", {}),
    ]:
        assert "test vend is under way" in refused(kiosk, name, **args)
    kiosk.world.close_door()  # the visit ends with the vend, not with the motor running
    kiosk.run_for(0.2)
    assert kiosk.controller.state is State.MAINTENANCE
    kiosk.run_for(30)
    assert replies and replies[0]["result"]["outcome"] == "jammed"
    assert kiosk.controller.state is State.IDLE  # the visit ended: the jam it found cleared
    assert event_kinds(kiosk).count("door_closed") == 1
    assert broken_invariants(kiosk) == {}


def test_service_off_mends_a_halt(kiosk: SimKiosk, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(kiosk.controller, "_on_select", broken)
    kiosk.world.press(1)
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    monkeypatch.undo()
    ok(kiosk, "service", on=True)
    assert ok(kiosk, "service", on=False)["cleared"] == ["kiosk:internal_error"]
    assert kiosk.controller.state is State.IDLE
    assert kiosk.hardware.acceptor.is_accepting


def test_a_command_that_breaks_the_core_is_still_answered(kiosk: SimKiosk) -> None:
    """A cmd_id the ledger cannot even look up (a lone surrogate, which the readers refuse
    before this point): the caller hears why, and the kiosk is out of service as for any bug."""
    replies: list[dict[str, Any]] = []
    by = Actor("city", "mqtt")
    kiosk.events.put(Command(requests.check("refresh", {}), by, replies.append, "\ud800"))
    kiosk.run_for(0.5)
    [reply] = replies
    assert not reply["ok"] and reply["error"].startswith("not done: ")
    assert kiosk.controller.state is State.OUT_OF_SERVICE


def test_requests_that_write_wait_for_storage(kiosk: SimKiosk) -> None:
    kiosk.controller.pending.append(Refill(1, 1))  # a write the ledger has not yet taken
    assert "storage" in refused(kiosk, "price", slot=1, price_cents=30)
    assert ok(kiosk, "status")["state"] == "idle"
    kiosk.controller.pending.clear()


def test_a_jammed_test_vend_marks_the_slot_and_a_technician_clears_it(kiosk: SimKiosk) -> None:
    ok(kiosk, "service", on=True)
    kiosk.world.jam(3)
    assert ok(kiosk, "test_vend", wait_s=20, slot=3)["outcome"] == "jammed"
    assert kiosk.controller.slots[3].fault == "jammed"
    kiosk.world.repair()
    assert ok(kiosk, "faults_clear", device="slot_3") == {"cleared": ["slot_3:jammed"]}
    assert kiosk.controller.slots[3].fault is None
    assert "no active fault" in refused(kiosk, "faults_clear")


def test_a_device_fault_is_not_cleared_by_hand(kiosk: SimKiosk) -> None:
    kiosk.world.stick_drop_sensor()
    pay(kiosk, 5, 5)
    kiosk.world.press(2)  # the sensor is found blocked when a vend starts
    kiosk.run_for(5)
    assert ("drop_sensor", "blocked") in kiosk.controller.model.faults
    reason = refused(kiosk, "faults_clear", device="drop_sensor")
    assert "clears by itself" in reason
    assert ("drop_sensor", "blocked") in kiosk.controller.model.faults


def test_a_price_and_a_slot_off_take_effect_at_once(kiosk: SimKiosk) -> None:
    assert ok(kiosk, "price", slot=1, price_cents=25) == {
        "slot": 1,
        "price_cents": 25,
        "was_cents": 20,
    }
    assert kiosk.controller.slots[1].price_cents == 25
    ok(kiosk, "slot", slot=2, enabled=False)
    assert not kiosk.hardware.panel.led_is_lit(2)
    pay(kiosk, 5, 5)
    kiosk.world.press(2)
    kiosk.run_for(1)
    assert kiosk.display[1] == "Indisponible"
    assert ok(kiosk, "slot", slot=2, enabled=False)["changed"] is False


@pytest.fixture
def on_cctalk(make_kiosk: Any) -> SimKiosk:
    config = config_mod.load(config_mod.DEFAULT_PROFILE, env={})
    rig: SimKiosk = make_kiosk(config)
    return rig


def test_a_coin_turned_off_is_handed_back_and_stays_off(
    make_kiosk: Any, on_cctalk: SimKiosk
) -> None:
    kiosk = on_cctalk
    assert ok(kiosk, "coin", value_cents=2, enabled=False) == {
        "inhibited_cents": [2],
        "enabled_cents": [1, 5],
    }
    pay(kiosk, 5)
    kiosk.world.insert_coin(2)  # handed back by the acceptor itself
    kiosk.run_for(3)
    assert kiosk.ledger.credit_cents() == 5
    assert "10 c is not a coin" in refused(kiosk, "coin", value_cents=10, enabled=False)
    kiosk = make_kiosk.restart(kiosk)
    assert kiosk.hardware.acceptor.denominations == {1, 5}
    ok(kiosk, "service", on=True)
    ok(kiosk, "service", on=False)
    assert kiosk.controller.state is State.CREDIT  # the shopper's 5 c outlived it all
    assert ok(kiosk, "coins")["enabled_cents"] == [1, 5]


def test_a_pulse_acceptor_cannot_turn_one_coin_off(kiosk: SimKiosk) -> None:
    before = books(kiosk)
    assert "takes or refuses all its coins together" in refused(
        kiosk, "coin", value_cents=2, enabled=False
    )
    assert books(kiosk) == before
    assert kiosk.ledger.inhibited_coins() == frozenset()


def test_status_reports_the_core_as_it_is(on_cctalk: SimKiosk) -> None:
    kiosk = on_cctalk
    pay(kiosk, 5)
    status = ok(kiosk, "status")
    assert status["state"] == "credit" and status["credit_cents"] == 5
    assert status["running"] is True and status["faults"] == []
    assert status["acceptor"]["identity"]["serial"]
    assert status["acceptor"]["enabled_cents"] == [1, 2, 5]


def test_the_idle_screen_turns_its_pages(kiosk: SimKiosk) -> None:
    seen = set()
    for _ in range(6):
        seen.add(kiosk.display)
        kiosk.run_for(4)
    assert ("Cookie bio", "20 c") in seen
    assert any(line1.startswith("Bonjour") for line1, _ in seen)
    pay(kiosk, 1, 1)
    kiosk.run_for(60)  # the credit is kept or donated; back to idle
    pages = set()
    for _ in range(6):
        pages.add(kiosk.display)
        kiosk.run_for(4)
    assert ("2 pièces", "sauvées, merci !") in pages


# --- checks on the request itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("fly", {}, "unknown request"),
        ("refill", {"slot": 1, "quantity": -2}, "out of range"),
        ("refill", {"slot": 1, "quantity": 1.5}, "whole number"),
        ("refill", {"slot": "1"}, "whole number"),
        ("refill", {"quantity": 1}, "slot is missing"),
        ("price", {"slot": 1, "price_cents": 0.5}, "not whole cents"),
        ("price", {"slot": 1, "price_cents": 10**9}, "out of range"),
        ("price", {"slot": 1, "price_cents": True}, "whole number"),
        ("slot", {"slot": 1, "enabled": "yes"}, "true or false"),
        ("refill", {"slot": 1, "colour": "red"}, "unknown argument colour"),
        ("faults_clear", {"code": "jammed"}, "needs its device"),
        ("faults_clear", {"device": "x;DROP"}, "must be a name"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(name: str, args: Any, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        requests.check(name, args)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not a JSON request"),
        (b"[1, 2]", "a request is a JSON object"),
        (b'{"request": "status", "who": "root"}', "unknown field who"),
        (b"\xff\xfe", "not a JSON request"),
        (b'{"request": "status", "args": 5}', "arguments must be an object"),
        (b" " * 5000, "longer than"),
        (b'{"request": "status", "id": ' + b"[" * 17 + b"]" * 17 + b"}", "nested deeper than 16"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        requests.parse_line(line)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_no_line_gets_past_the_checks_unless_it_is_a_request(line: bytes) -> None:
    try:
        request, _ = requests.parse_line(line)
    except Refused as err:
        assert str(err)
    else:
        assert request.name in requests.COMMANDS


@given(st.integers(min_value=1, max_value=1500), st.sampled_from(["[", '{"a": ']))
def test_how_deep_a_line_may_nest_does_not_depend_on_the_stack(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = f"{opener * (depth - 1)}0{closer * (depth - 1)}"
    line = f'{{"request": "status", "id": {inner}}}'.encode()
    if depth > requests.MAX_DEPTH or len(line) > requests.MAX_REQUEST_BYTES:
        with pytest.raises(Refused):
            requests.parse_line(line)
    else:
        assert requests.parse_line(line)[0].name == "status"
