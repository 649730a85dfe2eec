"""Builds the kiosk's devices from its configuration: coin acceptor (by driver name), spiral
dispenser, panel and display, all on one pin factory (gpiozero's default on a Pi; the simulator
passes its own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.base import Clock, CoinAcceptor, Emit, acceptor_class
from drivers.panel import Panel, TextDisplay
from drivers.spiral import SpiralDispenser, SpiralPins
from kiosk.config import Config


@dataclass
class Hardware:
    acceptor: CoinAcceptor
    dispenser: SpiralDispenser
    panel: Panel
    display: TextDisplay

    def close(self) -> None:
        """Safe state: coins inhibited, motors off, devices released."""
        self.acceptor.close()
        self.dispenser.close()
        self.panel.close()
        self.display.close()


def build_hardware(config: Config, clock: Clock, emit: Emit, pin_factory: Any = None) -> Hardware:
    acceptor = acceptor_class(config.coin_acceptor.driver)(
        config.coin_acceptor.settings,
        config.kiosk.accepted_coins_cents,
        clock,
        emit,
        pin_factory,
    )
    opened: list[Any] = [acceptor]
    try:
        dispenser = SpiralDispenser(
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
        panel = Panel(
            {s.id: s.button_pin for s in config.slots},
            config.panel.cancel_pin,
            config.panel.door_pin,
            {s.id: s.led_pin for s in config.slots},
            clock,
            emit,
            pin_factory,
        )
    except BaseException:
        for device in opened:
            device.close()
        raise
    return Hardware(acceptor, dispenser, panel, TextDisplay(config.display.columns))
