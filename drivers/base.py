"""The seam between the kiosk and its hardware.

Owns the events that devices put on the core's queue, the clock every device and the core share,
the device error type, and the interfaces a coin acceptor and a dispenser implement. Devices never
call the kiosk: they emit events, and the core thread services their deadlines.
"""

from __future__ import annotations

import enum
import importlib
import queue
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol


class DeviceError(OSError):
    """A device could not be opened or driven; the message names the device and its pin or port."""


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoinAccepted:
    """A coin credited. `merged`: read from a train that several coins ran into, so its value
    is certain but its denomination is a best guess (the total of the train is right)."""

    value_cents: int
    at: float
    merged: bool = False
    # Where the device stands once this coin is counted, kept with the coin so that a restart
    # can carry on from it (opaque to the kiosk; see CoinAcceptor.resume_from).
    cursor: str = ""


@dataclass(frozen=True)
class CoinRejected:
    """A pulse train or frame the acceptor could not turn into coins (noise, unknown count)."""

    reason: str
    detail: str
    at: float


@dataclass(frozen=True)
class SelectPressed:
    slot: int
    at: float


@dataclass(frozen=True)
class CancelPressed:
    at: float


@dataclass(frozen=True)
class DoorChanged:
    is_open: bool
    at: float


class VendOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    JAMMED = "jammed"
    NO_DROP = "no_drop"
    BLOCKED = "blocked"  # the drop sensor was already interrupted: nothing could be confirmed


@dataclass(frozen=True)
class VendFinished:
    slot: int
    outcome: VendOutcome
    detail: str
    at: float


@dataclass(frozen=True)
class DeviceFault:
    """A device fault raised (active) or cleared; `code` is stable, `detail` is for people."""

    device: str
    code: str
    active: bool
    detail: str
    at: float


@dataclass(frozen=True)
class DeviceNotice:
    """Something a technician should know that blocks nothing: a reset, lost events, an alarm."""

    device: str
    code: str
    detail: str
    at: float


@dataclass(frozen=True)
class Wake:
    """A device changed its deadlines from another thread: the core recomputes its wait."""

    at: float


Event = (
    CoinAccepted
    | CoinRejected
    | SelectPressed
    | CancelPressed
    | DoorChanged
    | VendFinished
    | DeviceFault
    | DeviceNotice
    | Wake
)
Emit = Callable[[Any], None]


# --- clock --------------------------------------------------------------------------------------


class Clock(Protocol):
    """Time for control logic (monotonic seconds), for records (UTC), and the core's wait."""

    def monotonic(self) -> float: ...

    def wall(self) -> datetime: ...

    def wait(self, events: queue.Queue[Any], deadline: float | None) -> Any | None:
        """Return the next event, or None once `deadline` (monotonic) has passed."""
        ...


class SystemClock:
    """The machine's own clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, events: queue.Queue[Any], deadline: float | None) -> Any | None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return events.get(timeout=timeout)
        except queue.Empty:
            return None


# --- device interfaces --------------------------------------------------------------------------


class Timed:
    """A device with deadlines that the core thread services (no timer threads)."""

    def next_deadline(self) -> float | None:
        return None

    def service(self, now: float) -> None:
        """Act on every deadline at or before `now`; called from the core thread."""


class CoinAcceptor(Timed, ABC):
    """A coin acceptor: emits CoinAccepted, CoinRejected and DeviceFault events.

    A back-end (pulse, ccTalk) is chosen by name from ACCEPTOR_DRIVERS. Its constructor takes
    (settings, coins_cents, clock, emit, pin_factory); its settings class is a frozen dataclass the
    configuration loader fills from the `[coin_acceptor]` section.
    """

    name: str

    def resume_from(self, cursor: str | None) -> None:
        """Before start(): the cursor of the last coin the ledger holds, so that coins the device
        reported but the kiosk never recorded (a crash in between) are counted after all."""

    @abstractmethod
    def start(self) -> None:
        """Open the device and identify it; raises DeviceError. Coins stay inhibited."""

    @abstractmethod
    def set_accepting(self, accepting: bool) -> None:
        """Enable or inhibit coin acceptance."""

    @property
    @abstractmethod
    def is_accepting(self) -> bool: ...

    @property
    def reading(self) -> bool:
        """A coin is being read and will be reported shortly."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Inhibit coins and release the device; idempotent."""

    def __enter__(self) -> CoinAcceptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Back-ends by name, imported lazily: "module:Class" and its settings class.
ACCEPTOR_DRIVERS: dict[str, tuple[str, str]] = {
    "pulse": ("drivers.pulse:PulseCoinAcceptor", "drivers.pulse:PulseSettings"),
    "cctalk": ("drivers.cctalk:CcTalkCoinAcceptor", "drivers.cctalk:CcTalkSettings"),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# What a back-end's class is called with: (settings, coins_cents, clock, emit, pin_factory).
AcceptorFactory = Callable[[Any, tuple[int, ...], Clock, Emit, Any], CoinAcceptor]


def acceptor_class(driver: str) -> AcceptorFactory:
    factory: AcceptorFactory = _load(ACCEPTOR_DRIVERS[driver][0])
    return factory


def acceptor_settings_class(driver: str) -> type:
    settings: type = _load(ACCEPTOR_DRIVERS[driver][1])
    return settings
