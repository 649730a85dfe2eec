"""The state machine alone: every transition of the table, first-match settling, invalid
triggers, and the diagram drawn from the machine."""

from __future__ import annotations

from typing import Any

import pytest
from transitions import MachineError

from kiosk.machine import TRANSITIONS, KioskModel, State, build, mermaid

# What makes each condition true; conditions are tried in table order, first match wins.
SETUP: dict[str | None, dict[str, Any]] = {
    "in_service": {"door_open": True},
    "is_blocked": {"faults": {"coin_acceptor"}},
    "has_credit": {"credit_cents": 7},
    None: {},
}


def _cases() -> list[tuple[str, State, State, str | None]]:
    cases = []
    for row in TRANSITIONS:
        sources = list(State) if row["source"] == "*" else row["source"]
        for source in sources if isinstance(sources, list) else [sources]:
            cases.append((row["trigger"], source, row["dest"], row.get("conditions")))
    return cases


@pytest.mark.parametrize(("trigger", "source", "dest", "condition"), _cases())
def test_every_transition(trigger: str, source: State, dest: State, condition: str | None) -> None:
    entered: list[State] = []
    model = KioskModel(entered.append)
    machine = build(model)
    machine.set_state(source, model)
    for key, value in SETUP[condition].items():
        setattr(model, key, value)
    getattr(model, trigger)()
    assert model.state == dest
    assert entered == [dest]


def test_settling_prefers_the_door_then_faults_then_credit() -> None:
    model = KioskModel()
    build(model)
    model.door_open, model.faults, model.credit_cents = True, {"drop_sensor"}, 5
    model.ready()
    assert model.state == State.MAINTENANCE
    model.door_open = False
    model.end_service()
    assert model.state == State.OUT_OF_SERVICE
    model.faults.clear()
    model.recover()
    assert model.state == State.CREDIT


def test_nothing_sellable_blocks_selling() -> None:
    model = KioskModel()
    build(model)
    model.sellable = False
    model.ready()
    assert model.state == State.OUT_OF_SERVICE


@pytest.mark.parametrize(
    ("source", "trigger"),
    [
        (State.IDLE, "select"),
        (State.VENDING, "insert_coin"),
        (State.VENDING, "begin_service"),
        (State.MAINTENANCE, "insert_coin"),
        (State.OUT_OF_SERVICE, "select"),
        (State.STARTING, "donate"),
    ],
)
def test_invalid_triggers_raise(source: State, trigger: str) -> None:
    model = KioskModel()
    machine = build(model)
    machine.set_state(source, model)
    with pytest.raises(MachineError):
        getattr(model, trigger)()
    assert model.state == source


def test_conditions_name_real_model_methods() -> None:
    for row in TRANSITIONS:
        if "conditions" in row:
            assert callable(getattr(KioskModel, row["conditions"]))


def test_diagram_shows_every_state_and_transition() -> None:
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    for state in State:
        assert f'state "{state.name}" as {state.name}' in diagram
    for trigger, source, dest, _ in _cases():
        line = next(
            (
                ln
                for ln in diagram.splitlines()
                if ln.strip().startswith(f"{source.name} --> {dest.name}:")
            ),
            "",
        )
        assert trigger in line, (trigger, source, dest)
    assert "[*] --> STARTING" in diagram
