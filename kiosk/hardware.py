"""Builds the kiosk's devices from its configuration: coin acceptor, dispenser, panel and display,
each back-end chosen by name from the drivers' registries, all on one pin factory (gpiozero's on
a Pi; the simulator passes its own) and, for a display on I2C, the bus the profile names (the
simulator passes its own bus instead)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.base import (
    DISPENSER_DRIVERS,
    DISPLAY_DRIVERS,
    PANEL_DRIVERS,
    CoinAcceptor,
    Dispenser,
    Display,
    I2cBus,
    Panel,
    acceptor_class,
    best_effort,
    device_class,
)
from drivers.clock import Clock, Emit
from drivers.spiral import SpiralPins
from kiosk.config import Config


@dataclass
class Hardware:
    acceptor: CoinAcceptor
    dispenser: Dispenser
    panel: Panel
    display: Display

    def start(self) -> None:
        """Devices begin; each reports DeviceReady (or a fault) on its own, the caller waits on
        none of them."""
        self.display.start()
        self.dispenser.start()
        self.acceptor.start()

    def close(self) -> None:
        """Safe state: motors off, coins inhibited, devices released; each step is tried even
        if another one fails."""
        best_effort("motors off", self.dispenser.stop_all)
        best_effort("coin acceptor close", self.acceptor.close)
        best_effort("dispenser close", self.dispenser.close)
        best_effort("panel close", self.panel.close)
        best_effort("display close", self.display.close)


def build_hardware(
    config: Config, clock: Clock, emit: Emit, pin_factory: Any = None, i2c: I2cBus | None = None
) -> Hardware:
    acceptor = acceptor_class(config.coin_acceptor.driver)(
        config.coin_acceptor.settings,
        config.kiosk.accepted_coins_cents,
        clock,
        emit,
        pin_factory,
    )
    opened: list[Any] = [acceptor]
    try:
        dispenser = device_class(DISPENSER_DRIVERS, config.dispenser.driver)(
            {s.id: SpiralPins(s.motor_pin, s.home_pin) for s in config.slots},
            config.dispenser.drop_pin,
            clock,
            emit,
            max_run_s=config.dispenser.max_run_s,
            drop_wait_s=config.dispenser.drop_wait_s,
            retry_turns=config.dispenser.retry_turns,
            pin_factory=pin_factory,
        )
        opened.append(dispenser)
        panel = device_class(PANEL_DRIVERS, config.panel.driver)(
            {s.id: s.button_pin for s in config.slots},
            config.panel.cancel_pin,
            config.panel.door_pin,
            {s.id: s.led_pin for s in config.slots},
            clock,
            emit,
            pin_factory,
        )
        opened.append(panel)
        display = device_class(DISPLAY_DRIVERS, config.display.driver)(
            config.display, clock, emit, i2c
        )
    except BaseException:
        for device in opened:
            best_effort(f"closing {device!r}", device.close)
        raise
    return Hardware(acceptor, dispenser, panel, display)
