"""ccTalk coin-acceptor event codes (header 229, A = 0) and fault codes (header 232), classified.

Classes: REJECTED (the coin went back to the shopper), POSSIBLE (the coin may be jammed or
swallowed: worth a self-check), ALARM (fraud, flight deck open, a status or a notification; no
coin came back). Only pairs with A != 0 are credits; an error event never credits.
"""

from __future__ import annotations

import enum


class EventClass(enum.StrEnum):
    IGNORE = "ignore"
    REJECTED = "rejected"
    POSSIBLE = "possible"
    ALARM = "alarm"


R, P, N = EventClass.REJECTED, EventClass.POSSIBLE, EventClass.ALARM

EVENTS: dict[int, tuple[str, EventClass]] = {
    0: ("null event", EventClass.IGNORE),
    1: ("reject coin", R),
    2: ("inhibited coin", R),
    3: ("multiple window", R),
    4: ("wake-up timeout", P),
    5: ("validation timeout", P),
    6: ("credit sensor timeout", P),
    7: ("sorter opto timeout", N),
    8: ("2nd close coin error", R),
    9: ("accept gate not ready", R),
    10: ("credit sensor not ready", R),
    11: ("sorter not ready", R),
    12: ("reject coin not cleared", R),
    13: ("validation sensor not ready", R),
    14: ("credit sensor blocked", R),
    15: ("sorter opto blocked", R),
    16: ("credit sequence error", N),
    17: ("coin going backwards", N),
    18: ("coin too fast over credit sensor", N),
    19: ("coin too slow over credit sensor", N),
    20: ("coin on string mechanism activated", N),
    21: ("DCE opto timeout", P),
    22: ("DCE opto not seen", R),
    23: ("credit sensor reached too early", N),
    24: ("reject coin (repeated sequential trip)", R),
    25: ("reject slug", R),
    26: ("reject sensor blocked", N),
    27: ("games overload", N),
    28: ("max coin meter pulses exceeded", N),
    29: ("accept gate open not closed", N),
    30: ("accept gate closed not open", R),
    31: ("manifold opto timeout", N),
    32: ("manifold opto blocked", R),
    33: ("manifold not ready", R),
    34: ("security status changed", P),
    35: ("motor exception", P),
    36: ("swallowed coin", N),
    37: ("coin too fast over validation sensor", R),
    38: ("coin too slow over validation sensor", R),
    39: ("coin incorrectly sorted", N),
    40: ("external light attack", N),
    253: ("data block request", N),
    254: ("coin return mechanism activated (flight deck open)", N),
    255: ("unspecified alarm code", N),
}


def classify(code: int) -> tuple[str, EventClass]:
    if code in EVENTS:
        return EVENTS[code]
    if 128 <= code <= 159:
        return f"inhibited coin (type {code - 127})", R
    if 160 <= code <= 191:
        return f"reserved event {code}", P
    return f"unknown event {code}", N


FAULTS: dict[int, str] = {
    1: "EEPROM checksum corrupted",
    2: "fault on inductive coils",
    3: "fault on credit sensor",
    4: "fault on piezo sensor",
    5: "fault on reflective sensor",
    6: "fault on diameter sensor",
    7: "fault on wake-up sensor",
    8: "fault on sorter exit sensors",
    9: "NVRAM checksum corrupted",
    17: "coin auditing error",
    18: "fault on reject sensor",
    19: "fault on coin return mechanism (flight deck)",
    20: "fault on C.O.S. mechanism",
    21: "fault on rim sensor",
    22: "fault on thermistor",
    29: "personality checksum corrupted",
    30: "ROM checksum mismatch",
    32: "internal comms bad",
    33: "supply voltage outside operating limits",
    34: "temperature outside operating limits",
    35: "D.C.E. fault",
    40: "RAM test fail",
    41: "fault on string sensor",
    42: "accept gate failed open",
    43: "accept gate failed closed",
    46: "flash memory erase fail",
    47: "flash memory write fail",
    49: "fault on opto sensor",
    51: "door open",
    52: "microswitch fault",
    54: "firmware error",
    55: "initialisation error",
    56: "supply current outside operating limits",
    255: "unspecified fault code",
}


def fault_name(code: int) -> str:
    return FAULTS.get(code, f"fault code {code}")
