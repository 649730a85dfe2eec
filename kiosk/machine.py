"""The kiosk's state machine: the states and the transition table are the readable spec.

Triggers are verbs the core fires from its one thread. "Settling" triggers (ready, vend_done,
end_service, recover) pick their destination from the model's conditions, first match wins:
in service (the door open, or service mode set from the CLI) -> maintenance, a blocking fault
or nothing to sell -> out_of_service, credit left -> credit, else idle.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any

from transitions import Machine


class State(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    CREDIT = "credit"
    VENDING = "vending"
    OUT_OF_SERVICE = "out_of_service"
    MAINTENANCE = "maintenance"


S = State


def _settle(trigger: str, source: list[State], *, service: bool) -> list[dict[str, Any]]:
    branches: list[tuple[State, str | None]] = [
        (S.OUT_OF_SERVICE, "is_blocked"),
        (S.CREDIT, "has_credit"),
        (S.IDLE, None),
    ]
    if service:
        branches.insert(0, (S.MAINTENANCE, "in_service"))
    return [
        {"trigger": trigger, "source": source, "dest": dest}
        | ({"conditions": condition} if condition else {})
        for dest, condition in branches
    ]


TRANSITIONS: list[dict[str, Any]] = [
    *_settle("ready", [S.STARTING], service=True),
    {"trigger": "insert_coin", "source": S.IDLE, "dest": S.CREDIT},
    {"trigger": "select", "source": S.CREDIT, "dest": S.VENDING},
    *_settle("vend_done", [S.VENDING], service=True),
    {"trigger": "donate", "source": S.CREDIT, "dest": S.IDLE},
    {
        "trigger": "begin_service",
        "source": [S.IDLE, S.CREDIT, S.OUT_OF_SERVICE],
        "dest": S.MAINTENANCE,
    },
    *_settle("end_service", [S.MAINTENANCE], service=False),
    {"trigger": "fault", "source": [S.IDLE, S.CREDIT], "dest": S.OUT_OF_SERVICE},
    *_settle("recover", [S.OUT_OF_SERVICE], service=False),
    {"trigger": "halt", "source": "*", "dest": S.OUT_OF_SERVICE},
]

# Coins are enabled only where a shopper may be adding credit.
ACCEPTING = frozenset({S.IDLE, S.CREDIT})


class KioskModel:
    """What the conditions read; the core keeps it current. `on_enter` runs after each change."""

    state: State

    def __init__(self, on_enter: Callable[[State], None] = lambda state: None) -> None:
        self.door_open = False
        self.service_mode = False  # maintenance asked from the CLI, the door closed
        self.faults: set[tuple[str, str]] = set()  # blocking faults: (device, code)
        self.sellable = True
        self.credit_cents = 0
        self._on_enter = on_enter

    def in_service(self) -> bool:
        return self.door_open or self.service_mode

    def is_blocked(self) -> bool:
        return bool(self.faults) or not self.sellable

    def has_credit(self) -> bool:
        return self.credit_cents > 0

    def entered(self) -> None:
        self._on_enter(State(self.state))

    # Triggers, added by the machine; declared for type checkers.
    ready: Callable[[], bool]
    insert_coin: Callable[[], bool]
    select: Callable[[], bool]
    vend_done: Callable[[], bool]
    donate: Callable[[], bool]
    begin_service: Callable[[], bool]
    end_service: Callable[[], bool]
    fault: Callable[[], bool]
    recover: Callable[[], bool]
    halt: Callable[[], bool]


def build(model: KioskModel) -> Machine:
    return Machine(
        model=model,
        states=list(State),
        transitions=TRANSITIONS,
        initial=S.STARTING,
        queued=True,
        auto_transitions=False,
        after_state_change="entered",
    )


def mermaid() -> str:
    """The machine as a plain mermaid state diagram, drawn from the machine itself."""
    from transitions.extensions import GraphMachine

    graph = GraphMachine(
        model=KioskModel(),
        states=list(State),
        transitions=TRANSITIONS,
        initial=S.STARTING,
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
    )
    source = graph.get_graph().draw(None)
    keep = [
        line
        for line in source.splitlines()
        if line.strip() and not re.match(r"\s*(classDef|Class|---|title:)", line)
    ]
    return "\n".join(line for line in keep if line.strip() != graph.title) + "\n"
