"""Outputs safe by themselves, on real threads and the system clock: a motor stops within its
maximum on-time (+ 50 ms) while the ccTalk acceptor is silent or its line chatters, whatever the
core is doing; the core never waits on the line."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import with_changes

from drivers.base import I2cBus
from drivers.clock import SystemClock
from kiosk import config as config_mod
from kiosk.core import Controller
from kiosk.events import Shutdown
from kiosk.hardware import build_hardware
from kiosk.ledger import Ledger
from kiosk.machine import State
from sim.cctalk_device import SimCcTalkAcceptor
from sim.lcd import SimCharLcd
from sim.world import SimFactory

MAX_RUN_S = 0.5
MARGIN_S = 0.05
WAIT_S = 20.0  # a generous ceiling for what is awaited by event, never a sleep


class Daemon:
    """The real core, ledger and drivers on the system clock, in a thread of this process; the
    spirals are bare mock pins, so a motor never comes home and must be cut at its limit."""

    def __init__(self, db_path: Path) -> None:
        self.device = SimCcTalkAcceptor(echo=True, wire_timing=True)
        config = config_mod.load(config_mod.DEFAULT_PROFILE, env={})
        config = with_changes(config, dispenser={"max_run_s": MAX_RUN_S})
        self.config = config.with_acceptor(port=self.device.path, reply_timeout_ms=50, retries=1)
        self.factory = SimFactory()
        self.lcd = SimCharLcd()  # the profile's display, on a bus of its own
        self.motor_runs: list[list[float]] = []
        self.factory.listen(self.config.slot(2).motor_pin, self._motor)
        for pin in (self.config.slot(2).home_pin, self.config.slot(2).button_pin):
            self.factory.gpio(pin).drive(True)
        self.factory.gpio(self.config.dispenser.drop_pin).drive(True)
        self.factory.gpio(self.config.panel.cancel_pin).drive(True)
        self.factory.gpio(self.config.panel.door_pin).drive(False)  # closed
        self.stopped = threading.Event()
        self.started = threading.Event()
        self.events: queue.Queue[Any] = queue.Queue()
        self.db_path = db_path
        books = Ledger(db_path, SystemClock().wall)
        for _ in range(2):
            books.record_coin(5)  # the credit for one chewing-gum, 10 c
        books.close()
        self.controller: Controller

    def _motor(self, on: bool) -> None:
        if on:
            self.motor_runs.append([time.monotonic()])
        else:
            self.motor_runs[-1].append(time.monotonic())
            self.stopped.set()

    def run(self) -> None:
        """The core thread: it owns the ledger's connection, as in the daemon."""
        clock = SystemClock()
        ledger = Ledger(self.db_path, clock.wall)
        i2c = I2cBus(self.lcd, self.lcd.sleep)
        hardware = build_hardware(self.config, clock, self.events.put, self.factory, i2c)
        self.controller = Controller(self.config, ledger, hardware, clock, self.events)
        self.started.set()
        try:
            self.controller.start()
            self.controller.run()
        finally:
            hardware.close()
            ledger.close()

    def wait_for(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.stopped.wait(0.01)

    def press(self, slot: int) -> None:
        pin = self.factory.gpio(self.config.slot(slot).button_pin)
        pin.drive(False)
        self.stopped.wait(0.03)
        pin.drive(True)

    def close(self) -> None:
        self.device.close()
        self.factory.reset()


@pytest.fixture
def daemon(db_path: Path) -> Iterator[Daemon]:
    made = Daemon(db_path)
    core = threading.Thread(target=made.run, name="core", daemon=True)
    core.start()
    assert made.started.wait(WAIT_S)
    yield made
    made.events.put(Shutdown())
    core.join(WAIT_S)
    made.close()


@pytest.mark.parametrize("trouble", ["silent", "chatter"])
def test_a_motor_stops_within_its_limit_while_the_line_is_in_trouble(
    daemon: Daemon, trouble: str
) -> None:
    daemon.wait_for(lambda: daemon.device.master_enabled, "coins enabled")
    assert daemon.controller.state is State.CREDIT
    setattr(daemon.device, trouble, True)
    daemon.press(2)
    daemon.wait_for(lambda: daemon.stopped.is_set(), "the motor to stop")
    [(on, off)] = daemon.motor_runs
    assert off - on <= MAX_RUN_S + MARGIN_S
    assert off - on >= MAX_RUN_S - MARGIN_S  # cut by its limit, not by chance
    daemon.wait_for(lambda: daemon.controller.state is not State.VENDING, "the vend to end")
    assert daemon.controller.credit_cents == 10  # jammed: nothing charged
