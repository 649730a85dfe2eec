"""`kiosk run`: the daemon on real hardware, with the system clock and gpiozero's pin factory.

The only place that configures logging handlers. SIGTERM and SIGINT put a Shutdown on the core's
queue; the core stops, and the hardware is left in its safe state (coins inhibited, motors off).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
from types import FrameType
from typing import Any

from drivers.base import SystemClock
from kiosk.config import Config
from kiosk.core import Controller, Shutdown
from kiosk.hardware import build_hardware
from kiosk.ledger import Ledger

log = logging.getLogger(__name__)


def run_daemon(config: Config) -> int:
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("KIOSK_DEBUG") == "1" else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    clock = SystemClock()
    events: queue.Queue[Any] = queue.Queue()
    hardware = build_hardware(config, clock, events.put)
    try:
        ledger = Ledger(config.ledger.path, clock.wall)
    except BaseException:
        hardware.close()
        raise
    controller = Controller(config, ledger, hardware, clock, events)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        events.put(Shutdown())

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        controller.start()
        controller.run()
    finally:
        hardware.close()
        ledger.close()
    log.info("stopped")
    return 0
