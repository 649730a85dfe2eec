"""Requests from outside the kiosk (the control socket, the CLI on a stopped kiosk, later MQTT):
what each one is called, which arguments it takes, and their checks.

A request is checked whole before anything runs: an unknown name, a missing, unknown or
mistyped argument, a quantity that is not a whole number, a price that is not whole cents or is
absurd, a line too long or not JSON: each raises Refused with the reason, and nothing changes.
The rules of the kiosk's state (a refill only in maintenance) come later, in kiosk/service.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiosk.errors import Refused

MAX_REQUEST_BYTES = 4096
MAX_DEPTH = 16  # arrays and objects within one another; a request needs three
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')  # JSON string literals, escapes included
MAX_PRICE_CENTS = 10_000  # as a profile's slots[].price_cents
MAX_QUANTITY = 200  # as a profile's slots[].capacity
MAX_COUNTED_CENTS = 10_000_000
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True)
class Request:
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


def _whole(name: str, low: int, high: int, unit: str = "") -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and unit:
            raise Refused(
                f"{name}: {value} is not whole cents (money is integer cents: 20 = 0.20 €)"
            )
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refused(f"{name}: must be a whole number, not {json.dumps(value)}")
        if not low <= value <= high:
            raise Refused(f"{name}: {value}{unit} is out of range ({low} to {high}{unit})")
        return value

    return check


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Refused(f"{name}: must be true or false, not {json.dumps(value)}")
        return value

    return check


def _word(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise Refused(f"{name}: must be a name such as slot_1 or jammed")
        return value

    return check


# name -> argument -> (check, required)
Spec = dict[str, tuple[Callable[[Any], Any], bool]]
SLOT: Spec = {"slot": (_whole("slot", 1, 99), True)}
COMMANDS: dict[str, Spec] = {
    "status": {},
    "coins": {},
    "telemetry": {},
    "refresh": {},
    "refill": SLOT | {"quantity": (_whole("quantity", 1, MAX_QUANTITY), False)},
    "count": SLOT | {"quantity": (_whole("quantity", 0, MAX_QUANTITY), True)},
    "price": SLOT | {"price_cents": (_whole("price_cents", 1, MAX_PRICE_CENTS, " c"), True)},
    "slot": SLOT | {"enabled": (_flag("enabled"), True)},
    "service": {"on": (_flag("on"), True)},
    "test_vend": SLOT,
    "coin": {
        "value_cents": (_whole("value_cents", 1, 500, " c"), True),
        "enabled": (_flag("enabled"), True),
    },
    "collect": {"counted_cents": (_whole("counted_cents", 0, MAX_COUNTED_CENTS, " c"), False)},
    "faults_clear": {"device": (_word("device"), False), "code": (_word("code"), False)},
    "audit": {"reset": (_flag("reset"), True)},
}
# Those that change nothing: answered with the kiosk in any state.
READS = frozenset({"status", "coins", "telemetry"})


def check(name: Any, args: Any) -> Request:
    if not isinstance(name, str) or name not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        raise Refused(f"unknown request {json.dumps(name)} (known: {known})")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise Refused(f"{name}: arguments must be an object")
    spec = COMMANDS[name]
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise Refused(f"{name}: unknown argument {', '.join(unknown)}")
    checked: dict[str, Any] = {}
    for arg, (check_value, required) in spec.items():
        if args.get(arg) is None:
            if required:
                raise Refused(f"{name}: {arg} is missing")
            checked[arg] = None
            continue
        checked[arg] = check_value(args[arg])
    if name == "faults_clear" and checked["code"] is not None and checked["device"] is None:
        raise Refused("faults_clear: a code needs its device (DEVICE:CODE)")
    return Request(name, checked)


def read_json(raw: bytes) -> Any:
    """JSON text in UTF-8, as RFC 8259 wants it between systems (a UTF-8 byte order mark is let
    pass). ValueError otherwise: json.loads would take UTF-16 and UTF-32 as well, so that a
    line of NUL-laden bytes could still be run as a request. ValueError too for a string with
    a lone surrogate (the escape \\ud800 is valid JSON but no character): SQLite could not
    record it nor the socket send it back; and for arrays or objects nested deeper than
    MAX_DEPTH (whether json.loads would recurse too deep depends on the caller's stack)."""
    text = raw.decode("utf-8-sig")  # UnicodeDecodeError is a ValueError
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    message = json.loads(text)
    try:
        json.dumps(message, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (an escape such as \\ud800)") from None
    return message


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings left out)."""
    depth = deepest = 0
    for char in STRINGS.sub('""', text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_line(line: bytes) -> tuple[Request, Any]:
    """A request line of the control socket: {"request": NAME, "args": {...}, "id": ANY}.
    Returns the request and its id (echoed in the reply)."""
    if len(line) > MAX_REQUEST_BYTES:
        raise Refused(f"request longer than {MAX_REQUEST_BYTES} bytes")
    try:
        message = read_json(line)
    except ValueError as err:
        raise Refused(f"not a JSON request: {err}") from None
    if not isinstance(message, dict):
        raise Refused('a request is a JSON object: {"request": NAME, "args": {...}}')
    unknown = sorted(set(message) - {"request", "args", "id"})
    if unknown:
        raise Refused(f"unknown field {', '.join(unknown)} in the request")
    return check(message.get("request"), message.get("args")), message.get("id")
