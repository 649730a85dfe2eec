"""Spiral (coil) dispenser: one motor and one home (cam) switch per slot, one drop sensor per bin.

A vend turns the slot's motor until the cam switch leaves home and comes back (one revolution),
then waits for the drop sensor to see the product fall. If nothing falls it turns once more (a
product caught on the coil end), up to `retry_turns` times. The motor is switched off when the
revolution ends, after `max_run_s` whatever happens, and on close. The dispenser keeps that limit
itself, on a worker of its own (a thread on the Pi), whatever the core loop or the coin acceptor
is doing. Outcomes are reported as a VendFinished event: delivered, jammed, no drop, or blocked
(the drop sensor was interrupted before the vend began, so a drop could not be confirmed).
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from drivers.base import (
    DeviceError,
    DeviceFault,
    DeviceReady,
    Dispenser,
    VendFinished,
    VendOutcome,
    best_effort,
)
from drivers.clock import Clock, Emit

log = logging.getLogger(__name__)

DROP_MAX_S = 0.5  # a product falls through the beam in tens of ms; longer is a blocked sensor


@dataclass(frozen=True)
class SpiralPins:
    motor_pin: int
    home_pin: int


class _Phase(enum.Enum):
    IDLE = enum.auto()
    TURNING = enum.auto()
    AWAIT_DROP = enum.auto()


class SpiralDispenser(Dispenser):
    """The slots' spirals and the shared drop sensor."""

    def __init__(
        self,
        slots: dict[int, SpiralPins],
        drop_pin: int,
        clock: Clock,
        emit: Emit,
        *,
        max_run_s: float,
        drop_wait_s: float,
        retry_turns: int,
        pin_factory: Any = None,
    ) -> None:
        self._clock = clock
        self._emit = emit
        self._max_run_s = max_run_s
        self._drop_wait_s = drop_wait_s
        self._retry_turns = retry_turns
        self._lock = threading.Lock()
        self._motors: dict[int, DigitalOutputDevice] = {}
        self._homes: dict[int, DigitalInputDevice] = {}
        self._drop: DigitalInputDevice | None = None
        self._phase = _Phase.IDLE
        self._slot = 0
        self._turns = 0
        self._left_home = False
        self._dropped = False
        self._deadline: float | None = None
        self._blocked_reported = False
        self._beam_since: float | None = None  # the drop beam is cut since then, during a vend
        self._turn_started = 0.0
        self._turn_s: dict[int, float] = {}  # per slot: the last turn of its latest vend
        self._worker = clock.start_worker("dispenser", self, emit)
        try:
            for slot, pins in slots.items():
                self._motors[slot] = DigitalOutputDevice(
                    pins.motor_pin, initial_value=False, pin_factory=pin_factory
                )
                # The cam closes the home switch to ground: active (low) means at home.
                home = DigitalInputDevice(pins.home_pin, pull_up=True, pin_factory=pin_factory)
                home.when_deactivated = self._on_left_home
                home.when_activated = self._on_home
                self._homes[slot] = home
            self._drop = DigitalInputDevice(drop_pin, pull_up=True, pin_factory=pin_factory)
        except Exception as err:  # gpiozero raises many unrelated types for a bad pin
            self.close()
            raise DeviceError(f"spiral dispenser: {err}") from err
        self._drop.when_activated = self._on_drop
        self._drop.when_deactivated = self._on_drop_clear

    def start(self) -> None:
        """Report the drop sensor as it is now (a fault restored from before a restart is
        cleared if the beam is clear again)."""
        now = self._clock.monotonic()
        with self._lock:
            blocked = self._blocked_reported = self.drop_sensor_blocked
        if blocked:
            detail = "drop sensor interrupted at start"
            self._emit(DeviceFault("drop_sensor", "blocked", True, detail, now))
        self._emit(DeviceReady("dispenser", f"{len(self._motors)} spirals", now))
        faults = frozenset({"blocked"} if blocked else ())
        self._emit(DeviceReady("drop_sensor", "drop sensor", now, faults))

    @property
    def busy(self) -> bool:
        return self._phase is not _Phase.IDLE

    def motor_is_on(self, slot: int) -> bool:
        return bool(self._motors[slot].value)

    def last_turn_s(self, slot: int) -> float | None:
        with self._lock:
            return self._turn_s.get(slot)

    @property
    def drop_sensor_blocked(self) -> bool:
        return self._drop is not None and self._drop.is_active

    def vend(self, slot: int) -> None:
        """Start dispensing one product from `slot`; the outcome arrives as a VendFinished."""
        now = self._clock.monotonic()
        with self._lock:
            if self._phase is not _Phase.IDLE:
                raise DeviceError(f"spiral dispenser: slot {self._slot} is still vending")
            if slot not in self._motors:
                raise DeviceError(f"spiral dispenser: no slot {slot}")
            if self.drop_sensor_blocked:
                self._blocked_reported = True
                blocked = True
            else:
                blocked = False
                self._slot, self._turns, self._dropped = slot, 0, False
                self._turn_s.pop(slot, None)
                self._start_turn(now)
        self._worker.wake()
        if blocked:
            detail = "drop sensor interrupted before the vend"
            self._emit(DeviceFault("drop_sensor", "blocked", True, detail, now))
            self._emit(VendFinished(slot, VendOutcome.BLOCKED, detail, now))

    def _start_turn(self, now: float) -> None:
        self._phase = _Phase.TURNING
        self._left_home = not self._homes[self._slot].is_active
        self._deadline = now + self._max_run_s
        self._turn_started = now
        self._motors[self._slot].on()
        log.debug("slot %d: motor on (turn %d)", self._slot, self._turns + 1)

    def _on_left_home(self, switch: DigitalInputDevice) -> None:
        with self._lock:
            if self._phase is _Phase.TURNING and switch is self._homes[self._slot]:
                self._left_home = True

    def _on_home(self, switch: DigitalInputDevice) -> None:
        now = self._clock.monotonic()
        with self._lock:
            if not (self._phase is _Phase.TURNING and switch is self._homes[self._slot]):
                return
            if not self._left_home:
                return
            self._motors[self._slot].off()
            self._turns += 1
            self._turn_s[self._slot] = now - self._turn_started
            if self._dropped:
                finished = self._finish(VendOutcome.DELIVERED, "dropped during the turn", now)
            else:
                self._phase = _Phase.AWAIT_DROP
                self._deadline = now + self._drop_wait_s
                finished = None
        self._worker.wake()
        self._report(finished)

    def _on_drop(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            if self._phase is _Phase.IDLE:
                return
            self._beam_since = now
        self._worker.wake()  # the beam now has a deadline of its own

    def _on_drop_clear(self) -> None:
        now = self._clock.monotonic()
        finished = None
        with self._lock:
            cleared, self._blocked_reported = self._blocked_reported, False
            since, self._beam_since = self._beam_since, None
            # A falling product cuts the beam briefly; only that confirms a drop.
            if self._phase is not _Phase.IDLE and since is not None:
                self._dropped = True
                if self._phase is _Phase.AWAIT_DROP:
                    finished = self._finish(
                        VendOutcome.DELIVERED, f"dropped after {self._turns} turn(s)", now
                    )
        self._report(finished)
        if cleared:
            self._emit(DeviceFault("drop_sensor", "blocked", False, "drop sensor clear", now))

    def next_deadline(self) -> float | None:
        with self._lock:
            if self._beam_since is not None and self._deadline is not None:
                return min(self._deadline, self._beam_since + DROP_MAX_S)
            return self._deadline

    def service(self, now: float) -> list[Any]:
        with self._lock:
            finished = self._check(now)
        if finished is None:
            return []
        log.info("slot %d: %s (%s)", finished.slot, finished.outcome, finished.detail)
        if finished.outcome is VendOutcome.BLOCKED:
            return [DeviceFault("drop_sensor", "blocked", True, finished.detail, now), finished]
        return [finished]

    def safe_state(self, error: Exception) -> list[Any]:
        slot = self._slot if self.busy else None
        self.stop_all()
        now = self._clock.monotonic()
        events: list[Any] = [DeviceFault("dispenser", "driver_error", True, str(error), now)]
        if slot is not None:  # the core learns the vend is over: not charged
            events.append(VendFinished(slot, VendOutcome.JAMMED, f"dispenser error: {error}", now))
        return events

    def _check(self, now: float) -> VendFinished | None:
        if self._phase is _Phase.IDLE:
            return None
        if self._beam_since is not None and now >= self._beam_since + DROP_MAX_S:
            self._motors[self._slot].off()
            self._beam_since = None
            self._blocked_reported = True
            return self._finish(
                VendOutcome.BLOCKED, "drop beam cut for too long during the vend", now
            )
        if self._deadline is None or now < self._deadline:
            return None
        if self._phase is _Phase.TURNING:
            self._motors[self._slot].off()
            stopped = f"not home after {self._max_run_s:g} s; motor stopped"
            # The shopper has the product if it fell: that is a sale, whatever the cam says.
            outcome = VendOutcome.DELIVERED if self._dropped else VendOutcome.JAMMED
            return self._finish(outcome, stopped, now)
        if self._turns <= self._retry_turns:
            self._start_turn(now)
            return None
        return self._finish(VendOutcome.NO_DROP, f"no drop after {self._turns} turn(s)", now)

    def _finish(self, outcome: VendOutcome, detail: str, now: float) -> VendFinished:
        self._phase = _Phase.IDLE
        self._deadline = self._beam_since = None
        return VendFinished(self._slot, outcome, detail, now)

    def _report(self, finished: VendFinished | None) -> None:
        if finished is not None:
            log.info("slot %d: %s (%s)", finished.slot, finished.outcome, finished.detail)
            self._emit(finished)

    def stop_all(self) -> None:
        """Every motor off and any vend abandoned: the safe state. Each motor is switched off
        even if another one fails to."""
        with self._lock:
            for slot, motor in self._motors.items():
                best_effort(f"slot {slot} motor off", motor.off)
            self._phase = _Phase.IDLE
            self._deadline = self._beam_since = None

    def close(self) -> None:
        self._worker.stop()
        self.stop_all()
        for device in [*self._motors.values(), *self._homes.values(), self._drop]:
            if device is not None:
                best_effort(f"dispenser: closing {device!r}", device.close)
        self._motors.clear()
        self._homes.clear()
        self._drop = None
