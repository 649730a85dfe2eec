"""`kiosk run`: the daemon on real hardware, with the system clock and gpiozero's pin factory, and
the control socket the technician's commands reach it through.

The only place that configures logging handlers. SIGTERM, SIGINT and SIGHUP put a Shutdown on the
core's queue; the core stops (after a vend in progress), and the hardware is left in its safe
state (motors off, coins inhibited, tried even if the acceptor was lost). SIGUSR1 and SIGUSR2,
which would otherwise kill the process with coins enabled, log a status line instead. Under
systemd (`Type=notify`) it says READY once started, and the core keeps the watchdog alive.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from types import FrameType
from typing import Any

from drivers.clock import SystemClock
from kiosk.config import Config
from kiosk.control import ControlServer, reply_timeout_s
from kiosk.core import Controller
from kiosk.events import Shutdown
from kiosk.hardware import build_hardware
from kiosk.ledger import Ledger
from kiosk.lock import LedgerLock
from kiosk.notify import Notifier
from kiosk.pins import pin_factory

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STATUS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def run_daemon(config: Config) -> int:
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("KIOSK_DEBUG") == "1" else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One daemon per ledger, decided before any port or pin is touched; held for its life.
    with LedgerLock(config.ledger.path):
        return _run(config, pin_factory())


def _run(config: Config, pins: Any) -> int:
    clock = SystemClock()
    events: queue.Queue[Any] = queue.Queue()
    ledger = Ledger(config.ledger.path, clock.wall)
    try:
        hardware = build_hardware(config, clock, events.put, pins)
    except BaseException:
        ledger.close()
        raise
    controller = Controller(config, ledger, hardware, clock, events)
    control = ControlServer(config.control_socket, events.put, reply_timeout_s(config.dispenser))

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        # Not put from the handler: it runs on the core thread, which may hold the queue's lock.
        threading.Thread(target=events.put, args=(Shutdown(),), name="stop").start()

    def status(signum: int, frame: FrameType | None) -> None:
        log.info(
            "status: %s, credit %d c, faults %s",
            controller.state,
            controller.credit_cents,
            sorted(controller.model.faults) or "none",
        )

    for number in STOP_SIGNALS:
        signal.signal(number, stop)
    for number in STATUS_SIGNALS:
        signal.signal(number, status)
    telemetry = None
    notifier = Notifier()
    controller.watch(notifier)
    try:
        controller.start()  # the acceptor polled from here on: nothing else before it
        control.start()
        if config.mqtt.enabled:
            from kiosk.telemetry import Telemetry  # paho is loaded only where telemetry is on

            telemetry = Telemetry(config, config.ledger.path, events.put)
            controller.attach(telemetry)
            telemetry.start()
        notifier.ready(f"{config.kiosk.id} started, {controller.state}")
        controller.run()
    finally:
        notifier.stopping()
        control.close()  # no request is taken once the core stops
        if telemetry is not None:
            telemetry.close()  # `offline`, acknowledged, then the connection closed
        hardware.close()
        ledger.close()
    log.info("stopped")
    return 0
