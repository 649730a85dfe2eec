"""The seam between the kiosk and its hardware.

Owns the events that devices put on the core's queue, the device error type, and the interfaces
the devices implement, with their back-ends chosen by name. Devices never call the kiosk: they
emit events, and run their own deadlines on workers of the injected clock (drivers.clock).
"""

from __future__ import annotations

import enum
import importlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.clock import Clock, Emit

log = logging.getLogger(__name__)


class DeviceError(OSError):
    """A device could not be opened or driven; the message names the device and its pin or port."""


def best_effort(what: str, action: Callable[[], object]) -> bool:
    """One step of a safe-state or close path: a failure is logged and never skips the next."""
    try:
        action()
    except Exception:  # whatever a failing device raises, the other safe actions still run
        log.exception("%s failed", what)
        return False
    return True


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
    """A coin the acceptor handed back, or a pulse train it could not read (noise, unknown
    count). `cursor`: where a ccTalk device stands once this event is counted."""

    reason: str
    detail: str
    at: float
    cursor: str = ""


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
    """Something a technician should know that blocks nothing: a reset, an alarm, a credit of
    no known value. `cursor` as for CoinRejected."""

    device: str
    code: str
    detail: str
    at: float
    cursor: str = ""


@dataclass(frozen=True)
class DeviceReady:
    """A device is identified and set up; `faults` are the codes of its faults active now, so
    that faults restored from the ledger but gone meanwhile are cleared. `identity`: what the
    device says it is, by key ("manufacturer", "product", "serial", "software", "coins", ...;
    empty for a device that tells nothing), for the ledger and the audit."""

    device: str
    detail: str
    at: float
    faults: frozenset[str] = field(default_factory=frozenset)
    # Left out of the hash (a mapping has none), so that the event stays hashable.
    identity: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class CursorAdvanced:
    """The acceptor handled events that call for no record (null events): where it stands."""

    cursor: str
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
    | DeviceReady
    | CursorAdvanced
)


# --- device interfaces --------------------------------------------------------------------------


def check_denominations(cents: frozenset[int], coins_cents: tuple[int, ...]) -> frozenset[int]:
    """`cents` if every value is one of the coins the kiosk accepts; ValueError naming the
    others."""
    asked = frozenset(cents)
    unknown = sorted(asked - set(coins_cents))
    if unknown:
        listed = ", ".join(str(c) for c in sorted(coins_cents))
        raise ValueError(
            f"{', '.join(str(c) for c in unknown)} c: not among the coins this kiosk accepts "
            f"({listed} c, kiosk.accepted_coins_cents)"
        )
    return asked


class CoinAcceptor(ABC):
    """A coin acceptor: emits DeviceReady once set up, then CoinAccepted, CoinRejected,
    DeviceNotice and DeviceFault events. Its deadlines run on a worker of the clock.

    A back-end (pulse, ccTalk) is chosen by name from ACCEPTOR_DRIVERS. Its constructor takes
    (settings, coins_cents, clock, emit, pin_factory); its settings class is a frozen dataclass the
    configuration loader fills from the `[coin_acceptor]` section.
    """

    name: str
    coins_cents: tuple[int, ...]  # the coins the kiosk accepts, as the constructor was given
    # Where a technician chooses the coins of an acceptor that takes or refuses all together.
    coin_choice = "see its manual"
    per_coin_inhibit = False  # True for a back-end that refuses one denomination on its own

    @abstractmethod
    def resume_from(self, cursor: str | None) -> None:
        """Before start(): the cursor of the last event the ledger holds, so that events the
        device reported but the kiosk never recorded (a crash in between) are counted after all."""

    @abstractmethod
    def start(self) -> None:
        """Begin: the device is set up apart from the caller, which never waits on it; the
        outcome is a DeviceReady or a DeviceFault. Raises DeviceError only for what no retry can
        mend (a port held by another process). Coins stay inhibited."""

    @abstractmethod
    def set_accepting(self, accepting: bool) -> None:
        """Enable or inhibit coin acceptance; never waits on the device."""

    @property
    @abstractmethod
    def is_accepting(self) -> bool: ...

    def set_denominations(self, cents: frozenset[int]) -> None:
        """Take only the coins of these values (some of `coins_cents`) from now on and refuse
        the others, whenever coins are accepted at all (set_accepting); never waits on the
        device. ValueError for a value the kiosk does not accept. This default is for an
        acceptor with one inhibit for all its coins: the full set only, else DeviceError."""
        if check_denominations(cents, self.coins_cents) != frozenset(self.coins_cents):
            raise DeviceError(self.all_or_none())

    @classmethod
    def all_or_none(cls) -> str:
        return (
            f"the {cls.name} coin acceptor takes or refuses all its coins together; choose "
            f"the coins it takes on the acceptor itself ({cls.coin_choice})"
        )

    @property
    def denominations(self) -> frozenset[int]:
        """The coin values asked of the acceptor now (all of `coins_cents` at first)."""
        return frozenset(self.coins_cents)

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


class Dispenser(ABC):
    """Dispenses one product at a time and reports a VendFinished; keeps every motor's maximum
    on-time itself, whatever its caller does. Emits DeviceReady for itself and its drop sensor
    at start()."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def vend(self, slot: int) -> None:
        """Start dispensing from `slot`; raises DeviceError if it cannot start."""

    @property
    @abstractmethod
    def busy(self) -> bool: ...

    @abstractmethod
    def motor_is_on(self, slot: int) -> bool: ...

    def last_turn_s(self, slot: int) -> float | None:
        """How long the last turn of `slot`'s latest vend took, from its motor on to the home
        switch; None while none has come home (a jam) or for a back-end that cannot tell."""
        return None

    @abstractmethod
    def stop_all(self) -> None:
        """Every motor off, any vend abandoned: the safe state."""

    @abstractmethod
    def close(self) -> None: ...


class Panel(ABC):
    """The shopper's buttons, the door switch and the slot LEDs: emits SelectPressed,
    CancelPressed and DoorChanged."""

    @property
    @abstractmethod
    def door_is_open(self) -> bool: ...

    @abstractmethod
    def set_led(self, slot: int, lit: bool) -> None: ...

    @abstractmethod
    def led_is_lit(self, slot: int) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class I2cBus:
    """An I2C bus handed to a device instead of the one it would open itself (the simulator's):
    an SMBus-like object (`write_byte(address, value)` at least) and how to wait on that bus. A
    simulated module keeps time of its own, so its waits cost nothing and are checked."""

    smbus: Any
    sleep: Callable[[float], None] = time.sleep


class Display(ABC):
    """A two-line text display; `lines` is what it shows now (what a shopper reads), each line
    cut to the display's width.

    A back-end is chosen by name from DISPLAY_DRIVERS; its constructor takes (settings, clock,
    emit, i2c): the `[display]` section, the kiosk's clock and event sink, and an I2cBus to use
    instead of the one it would open (None on a kiosk). A display that fails never stops the
    kiosk: it reports a DeviceFault, which the kiosk records while it sells on.
    """

    lines: tuple[str, str]

    @abstractmethod
    def start(self) -> None:
        """Begin driving the device; never waits on it (a DeviceReady or a DeviceFault tells)."""

    @abstractmethod
    def show(self, line1: str, line2: str = "") -> None:
        """Show two lines from now on; never waits on the device."""

    @abstractmethod
    def close(self) -> None: ...


# Back-ends by name, imported lazily: "module:Class" and its settings class.
ACCEPTOR_DRIVERS: dict[str, tuple[str, str]] = {
    "pulse": ("drivers.pulse:PulseCoinAcceptor", "drivers.pulse:PulseSettings"),
    "cctalk": ("drivers.cctalk:CcTalkCoinAcceptor", "drivers.cctalk:CcTalkSettings"),
}
DISPENSER_DRIVERS = {"spiral": "drivers.spiral:SpiralDispenser"}
PANEL_DRIVERS = {"gpio": "drivers.panel:GpioPanel"}
DISPLAY_DRIVERS = {"log": "drivers.panel:LogDisplay", "hd44780": "drivers.hd44780:Hd44780Display"}


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


def device_class(registry: dict[str, str], driver: str) -> Any:
    """The back-end class named `driver` in a registry (DISPENSER_DRIVERS, ...)."""
    return _load(registry[driver])
