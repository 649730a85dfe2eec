"""The events the core handles: the devices' (drivers.base), and its own (products put in by
hand, a request from the control socket or MQTT, a stop). Those the books must hold are DURABLE:
kept, in order, until their write commits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import (
    CoinAccepted,
    CoinRejected,
    CursorAdvanced,
    DeviceFault,
    DeviceNotice,
    DeviceReady,
    DoorChanged,
    Event,
    VendFinished,
)
from kiosk.ledger_base import Actor
from kiosk.requests import Request


@dataclass(frozen=True)
class Refill:
    """A technician put `quantity` products in `slot` (accepted in maintenance only)."""

    slot: int
    quantity: int


@dataclass(frozen=True)
class Command:
    """A checked request from outside (kiosk/requests.py) and where to send its one reply:
    {"ok": true, "result": ...} or {"ok": false, "error": reason}. `reply` never blocks."""

    request: Request
    by: Actor
    reply: Callable[[dict[str, Any]], None]
    cmd_id: str | None = None  # a remote command's: done once, answered the same after
    refusal: str | None = None  # refused before it came here (a bad remote command): why


@dataclass(frozen=True)
class Shutdown:
    """Stop the loop; the owner then closes the hardware and the ledger."""


CoreEvent = Event | Refill | Command | Shutdown
DURABLE = (
    CoinAccepted,
    CoinRejected,
    VendFinished,
    DeviceFault,
    DeviceNotice,
    DeviceReady,
    CursorAdvanced,
    DoorChanged,
    Refill,
)
