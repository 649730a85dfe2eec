"""The events the core handles: the devices' (drivers.base), and its own (a technician's refill, a
stop). Those the books must hold are DURABLE: kept, in order, until their write commits."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Refill:
    """A technician put `quantity` products in `slot` (accepted in maintenance only)."""

    slot: int
    quantity: int


@dataclass(frozen=True)
class Shutdown:
    """Stop the loop; the owner then closes the hardware and the ledger."""


CoreEvent = Event | Refill | Shutdown
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
