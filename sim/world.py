"""The world outside the kiosk's wires, on gpiozero MockFactory pins and simulated time.

A pulse coin acceptor that validates coins and sends pulse trains (honouring its inhibit line),
spiral motors that turn their cam switch after a revolution and drop a product while stock
remains, a drop sensor, buttons and a door. Fault knobs: jam a slot, an empty spiral (turns,
nothing drops), a product that hangs for one turn, a stuck drop sensor, noise on the coin line,
coin bursts. A character LCD on a simulated I2C bus (sim.lcd), when the profile has one. The
world keeps ground truth (coins that went into the cash box, products that fell) to compare with
the ledger.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from drivers.base import I2cBus
from drivers.cctalk import CcTalkSettings
from drivers.cctalk_codec import Checksum
from drivers.pulse import PulseSettings
from kiosk.config import Config
from sim.cctalk_device import SimCcTalkAcceptor
from sim.clock import SimClock, Timer
from sim.lcd import SimCharLcd

log = logging.getLogger(__name__)

PRESS_S = 0.08  # how long a finger holds a button
DROP_PULSE_S = 0.04  # how long a falling product interrupts the drop beam


class SimPin(MockPin):
    """A mock pin whose outputs are watched by the world, and whose inputs, once driven by the
    world, keep their level whatever pull the device sets (a closed switch beats a pull-up)."""

    def __init__(self, factory: SimFactory, info: Any) -> None:
        self._forced: bool | None = None
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed and self._function == "output":
            self.factory.output_changed(self.info.name, value)
        return changed

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self._forced is not None:
            self._change_state(self._forced)

    def drive(self, level: bool) -> None:
        self._forced = level
        if level:
            self.drive_high()
        else:
            self.drive_low()


class SimFactory(MockFactory):
    """MockFactory of SimPins with listeners on output changes."""

    def __init__(self) -> None:
        super().__init__(pin_class=SimPin)
        self._listeners: dict[str, Callable[[bool], None]] = {}

    def gpio(self, number: int) -> SimPin:
        pin: SimPin = self.pin(f"GPIO{number}")
        return pin

    def listen(self, number: int, listener: Callable[[bool], None]) -> None:
        self._listeners[f"GPIO{number}"] = listener

    def output_changed(self, name: str, value: bool) -> None:
        listener = self._listeners.get(name)
        if listener is not None:
            listener(value)


@dataclass
class Truth:
    """What really happened, for comparison with the ledger."""

    cashbox: Counter[int] = field(default_factory=Counter)  # coins that fell into the cash box
    returned: list[int] = field(default_factory=list)  # coins the acceptor gave back
    delivered: Counter[int] = field(default_factory=Counter)  # products that fell, by slot

    @property
    def cashbox_cents(self) -> int:
        return sum(value * n for value, n in self.cashbox.items())


class PulseCoinMech:
    """A pulse acceptor: accepts a programmed coin unless inhibited, then sends its train."""

    def __init__(
        self,
        settings: PulseSettings,
        factory: SimFactory,
        clock: SimClock,
        truth: Truth,
        *,
        validate_s: float = 0.3,
        pulse_ms: float | None = None,
        gap_ms: float | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.truth = truth
        self.width_s = (pulse_ms or settings.pulse_ms) / 1000  # the acceptor's own timing
        self.gap_s = (gap_ms or settings.gap_ms) / 1000
        self.validate_s = validate_s
        self.line = factory.gpio(settings.coin_pin)
        self.line.drive(True)
        self._inhibit = None if settings.inhibit_pin is None else factory.gpio(settings.inhibit_pin)
        self._free_at = -math.inf  # when the output line is free for the next train

    @property
    def inhibited(self) -> bool:
        if self._inhibit is None:
            return False
        return bool(self._inhibit.state) == self.settings.inhibit_active_high

    @property
    def quiet(self) -> bool:
        """No train on the line, and the last one is at least an end gap old."""
        return self.clock.now >= self._free_at + self.settings.end_gap_ms / 1000

    def insert(self, value_cents: int) -> bool:
        """A coin dropped in the slot; True if accepted into the cash box."""
        count = self.settings.pulses.get(value_cents)
        if count is None or self.inhibited:
            self.truth.returned.append(value_cents)
            return False
        self.truth.cashbox[value_cents] += 1
        start = max(self.clock.now + self.validate_s, self._free_at + self.gap_s)
        self._train(start, count, self.width_s)
        return True

    def _train(self, start: float, count: int, width_s: float) -> None:
        period = width_s + self.gap_s
        for i in range(count):
            self.clock.call_at(start + i * period, lambda: self.line.drive(False))
            self.clock.call_at(start + i * period + width_s, lambda: self.line.drive(True))
        self._free_at = start + count * period - self.gap_s

    def noise(self, width_s: float) -> bool:
        """A spurious low pulse on an idle line. Noise on top of, or right next to, a coin's train
        corrupts that train in a way no host can undo (the kiosk refuses the train and records
        it), so the simulated noise keeps an end gap away from trains."""
        if not self.quiet:
            return False
        self._train(self.clock.now, 1, width_s)
        return True


class CcTalkCoinMech:
    """The coin slot of a simulated ccTalk acceptor, which answers on its own pseudo-terminal."""

    def __init__(self, settings: CcTalkSettings, truth: Truth) -> None:
        self.device = SimCcTalkAcceptor(
            address=settings.address,
            checksum=Checksum(settings.checksum),
            echo=settings.echo != "off",
            baud=settings.baud,
        )
        self.path = self.device.path
        self.truth = truth

    def insert(self, value_cents: int) -> bool:
        accepted = self.device.insert(value_cents)
        if accepted:
            self.truth.cashbox[value_cents] += 1
        else:
            self.truth.returned.append(value_cents)
        return accepted

    @property
    def inhibited(self) -> bool:
        return not self.device.master_enabled

    @property
    def quiet(self) -> bool:
        """Every event has been read by the host (a restart now loses nothing)."""
        return self.device.all_read

    def noise(self, width_s: float) -> bool:
        """Line noise: garbage bytes ahead of the next reply."""
        self.device.noise_bytes += max(1, round(width_s * 100))
        return True

    def close(self) -> None:
        self.device.close()


class Spiral:
    """One spiral: a motor turning a cam (home) switch; products fall near the end of a turn."""

    DROP_AT = 0.85  # fraction of a turn at which the front product falls
    LEAVE_AT = 0.05  # fraction of a turn at which the cam releases the home switch

    def __init__(
        self, slot: int, home: SimPin, world: World, stock: int, revolution_s: float
    ) -> None:
        self.slot = slot
        self.home = home
        self.world = world
        self.stock = stock
        self.revolution_s = revolution_s
        self.jammed = False
        self.empty = False  # turns, nothing falls (products wedged, or a wrong count)
        self.hang_once = False  # the next product stays on the coil end for one turn
        self.progress = 0.0  # fraction of a turn since home
        self._since: float | None = None
        self._timers: list[Timer] = []
        home.drive(False)  # at home: the cam holds the switch closed

    def motor(self, on: bool) -> None:
        clock = self.world.clock
        if on and self._since is None:
            self._since = clock.now
            if not self.jammed:
                self._schedule(clock)
        elif not on and self._since is not None:
            if not self.jammed:
                self.progress = (self.progress + (clock.now - self._since) / self.revolution_s) % 1
            self._since = None
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()

    def _schedule(self, clock: SimClock) -> None:
        def at(fraction: float, action: Callable[[], None]) -> None:
            if fraction > self.progress:
                delay = (fraction - self.progress) * self.revolution_s
                self._timers.append(clock.call_later(delay, action))

        at(self.LEAVE_AT, lambda: self.home.drive(True))
        at(self.DROP_AT, self._front_product)
        at(1.0, self._home)

    def _front_product(self) -> None:
        if self.stock == 0 or self.empty:
            return
        if self.hang_once:
            self.hang_once = False
            return
        self.stock -= 1
        self.world.product_falls(self.slot)

    def _home(self) -> None:
        self.progress = 0.0
        self._since = self.world.clock.now
        self._timers.clear()
        self.home.drive(False)  # the kiosk may switch the motor off right here
        if self._since is not None:
            self._schedule(self.world.clock)  # still on: it keeps turning


class World:
    """Everything outside the kiosk for one configuration, on one SimFactory and SimClock."""

    def __init__(
        self,
        config: Config,
        clock: SimClock,
        factory: SimFactory | None = None,
        *,
        revolution_s: float = 2.0,
        pulse_ms: float | None = None,
        gap_ms: float | None = None,
    ) -> None:
        self.clock = clock
        self.factory = factory or SimFactory()
        self.truth = Truth()
        self.coins: PulseCoinMech | CcTalkCoinMech
        settings = config.coin_acceptor.settings
        if isinstance(settings, PulseSettings):
            self.coins = PulseCoinMech(
                settings, self.factory, clock, self.truth, pulse_ms=pulse_ms, gap_ms=gap_ms
            )
        else:
            self.coins = CcTalkCoinMech(settings, self.truth)
            # The kiosk opens the simulated acceptor's pseudo-terminal like any serial port.
            config = config.with_acceptor(port=self.coins.path)
        self.config = config
        self.spirals: dict[int, Spiral] = {}
        for slot in config.slots:
            stock = slot.capacity if slot.initial_quantity is None else slot.initial_quantity
            spiral = Spiral(slot.id, self.factory.gpio(slot.home_pin), self, stock, revolution_s)
            self.spirals[slot.id] = spiral
            self.factory.listen(slot.motor_pin, spiral.motor)
            self.factory.gpio(slot.button_pin).drive(True)
        self.drop = self.factory.gpio(config.dispenser.drop_pin)
        self.drop.drive(True)
        self.drop_stuck = False
        self.cancel_pin = self.factory.gpio(config.panel.cancel_pin)
        self.cancel_pin.drive(True)
        self.door: SimPin | None = None
        if config.panel.door_pin is not None:
            self.door = self.factory.gpio(config.panel.door_pin)
            self.door.drive(False)  # closed: the door holds its switch down
        self.lcd: SimCharLcd | None = None
        if config.display.driver == "hd44780":
            display = config.display
            self.lcd = SimCharLcd(display.address, display.columns, display.rows)

    @property
    def i2c(self) -> I2cBus | None:
        """The bus the kiosk's display is on, if it is an I2C one: the simulated module's."""
        return None if self.lcd is None else I2cBus(self.lcd, self.lcd.sleep)

    # --- shoppers ---------------------------------------------------------------------------

    def insert_coin(self, value_cents: int) -> bool:
        return self.coins.insert(value_cents)

    def press(self, slot: int) -> None:
        self._press(self.factory.gpio(self.config.slot(slot).button_pin))

    def cancel(self) -> None:
        self._press(self.cancel_pin)

    def _press(self, pin: SimPin) -> None:
        pin.drive(False)
        self.clock.call_later(PRESS_S, lambda: pin.drive(True))

    # --- technician -------------------------------------------------------------------------

    @property
    def door_open(self) -> bool:
        return self.door is not None and bool(self.door.state)

    def open_door(self) -> None:
        self._door_switch().drive(True)

    def close_door(self) -> None:
        self._door_switch().drive(False)

    def _door_switch(self) -> SimPin:
        if self.door is None:
            raise RuntimeError("this kiosk has no door switch (panel.door_pin)")
        return self.door

    def repair(self) -> None:
        """What a technician fixes with the door open: jams, wedged products, the drop beam."""
        for spiral in self.spirals.values():
            spiral.jammed = spiral.empty = spiral.hang_once = False
        self.stick_drop_sensor(False)

    def refill(self, slot: int) -> int:
        """Fill a spiral to capacity; returns how many products were added."""
        spiral = self.spirals[slot]
        added = self.config.slot(slot).capacity - spiral.stock
        spiral.stock += added
        return added

    # --- faults -----------------------------------------------------------------------------

    def jam(self, slot: int, jammed: bool = True) -> None:
        self.spirals[slot].jammed = jammed

    def stick_drop_sensor(self, stuck: bool = True) -> None:
        self.drop_stuck = stuck
        self.drop.drive(not stuck)

    def noise(self, width_s: float) -> bool:
        return self.coins.noise(width_s)

    @property
    def lost_cents(self) -> int:
        """Credits in the cash box that no host can count: a ccTalk acceptor dropped their events
        from its buffer unread (the kiosk reports that events were lost, not which)."""
        if isinstance(self.coins, CcTalkCoinMech):
            return self.coins.device.truth.lost_cents
        return 0

    def close(self) -> None:
        """Release what the world holds outside the pins (a simulated serial device)."""
        if isinstance(self.coins, CcTalkCoinMech):
            self.coins.close()

    def burst(self, values: list[int], spacing_s: float = 0.05) -> None:
        """Coins dropped in quick succession, faster than the acceptor sends their trains."""
        for i, value in enumerate(values):
            self.clock.call_later(i * spacing_s, functools.partial(self.insert_coin, value))

    def product_falls(self, slot: int) -> None:
        self.truth.delivered[slot] += 1
        if self.drop_stuck:
            return
        self.drop.drive(False)
        self.clock.call_later(
            DROP_PULSE_S, lambda: None if self.drop_stuck else self.drop.drive(True)
        )
