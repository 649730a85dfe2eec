"""The shopper's and technician's panel: selection and cancel buttons, door switch, slot LEDs and
the two-line text display.

Buttons and the door only emit events; LEDs and the display are outputs the core sets. The display
interface keeps its two lines so the demo screen and tests can read what a shopper would see; the
"log" back-end writes each change to the log (the character LCD is drivers/hd44780.py).
"""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import LED, DigitalInputDevice

from drivers.base import (
    CancelPressed,
    DeviceError,
    Display,
    DoorChanged,
    Panel,
    SelectPressed,
    best_effort,
)
from drivers.clock import Clock, Emit

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.02  # switches bounce for a few ms; on lgpio this is the kernel's debounce


class GpioPanel(Panel):
    """Buttons (one per slot plus cancel), the door switch and one LED per slot."""

    def __init__(
        self,
        buttons: dict[int, int],
        cancel_pin: int,
        door_pin: int | None,
        leds: dict[int, int],
        clock: Clock,
        emit: Emit,
        pin_factory: Any = None,
    ) -> None:
        self._clock = clock
        self._emit = emit
        self._buttons: dict[int, DigitalInputDevice] = {}
        self._leds: dict[int, LED] = {}
        self._cancel: DigitalInputDevice | None = None
        self._door: DigitalInputDevice | None = None
        try:
            for slot, pin in buttons.items():
                button = DigitalInputDevice(
                    pin, pull_up=True, bounce_time=DEBOUNCE_S, pin_factory=pin_factory
                )
                button.when_activated = self._select_handler(slot)
                self._buttons[slot] = button
            self._cancel = DigitalInputDevice(
                cancel_pin, pull_up=True, bounce_time=DEBOUNCE_S, pin_factory=pin_factory
            )
            self._cancel.when_activated = self._on_cancel
            if door_pin is not None:
                # The door switch is held closed by the door: released (line high) means open.
                self._door = DigitalInputDevice(
                    door_pin, pull_up=True, bounce_time=DEBOUNCE_S, pin_factory=pin_factory
                )
                self._door.when_deactivated = self._on_door_open
                self._door.when_activated = self._on_door_closed
            for slot, pin in leds.items():
                self._leds[slot] = LED(pin, initial_value=False, pin_factory=pin_factory)
        except Exception as err:  # gpiozero raises many unrelated types for a bad pin
            self.close()
            raise DeviceError(f"panel: {err}") from err

    def _select_handler(self, slot: int) -> Any:
        def pressed() -> None:
            self._emit(SelectPressed(slot, self._clock.monotonic()))

        return pressed

    def _on_cancel(self) -> None:
        self._emit(CancelPressed(self._clock.monotonic()))

    def _on_door_open(self) -> None:
        self._emit(DoorChanged(True, self._clock.monotonic()))

    def _on_door_closed(self) -> None:
        self._emit(DoorChanged(False, self._clock.monotonic()))

    @property
    def door_is_open(self) -> bool:
        return self._door is not None and not self._door.is_active

    def set_led(self, slot: int, lit: bool) -> None:
        self._leds[slot].value = lit

    def led_is_lit(self, slot: int) -> bool:
        return bool(self._leds[slot].value)

    def close(self) -> None:
        for device in [*self._buttons.values(), *self._leds.values(), self._cancel, self._door]:
            if device is not None:
                best_effort(f"panel: closing {device!r}", device.close)
        self._buttons.clear()
        self._leds.clear()
        self._cancel = self._door = None


class LogDisplay(Display):
    """A two-line display written to the log; lines longer than `display.columns` are cut."""

    def __init__(
        self, settings: Any, clock: Clock | None = None, emit: Emit | None = None, i2c: Any = None
    ) -> None:
        self.columns: int = settings.columns
        self.lines = ("", "")

    def start(self) -> None:
        """Nothing to set up: the log is always there."""

    def show(self, line1: str, line2: str = "") -> None:
        lines = (line1[: self.columns], line2[: self.columns])
        if lines != self.lines:
            self.lines = lines
            self._write(lines)

    def _write(self, lines: tuple[str, str]) -> None:
        log.info("display: %s | %s", *lines)

    def close(self) -> None:
        self.show("", "")
