"""A whole kiosk on the simulator: the real core, ledger and drivers wired to the simulated world.

Used by `kiosk demo`, the tests and the benchmarks. `restarted()` abandons the running core as a
power cut would (nothing flushed beyond what the ledger already committed) and starts a new one on
the same ledger file and the same physical world.
"""

from __future__ import annotations

import math
import queue
from pathlib import Path
from typing import Any

from kiosk.config import Config
from kiosk.core import Controller
from kiosk.hardware import Hardware, build_hardware
from kiosk.ledger import Ledger
from kiosk.machine import State
from sim.clock import SimClock
from sim.world import World

START_LIMIT_S = 60.0  # simulated: a device that never answers makes the start-up give up


class SimKiosk:
    def __init__(
        self,
        config: Config,
        db_path: str | Path,
        *,
        start: bool = True,
        world: World | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.db_path = str(db_path)
        self.clock = clock or SimClock()
        self.world = world or World(config, self.clock)
        self.config = config = self.world.config  # with the simulated serial port, if any
        self.events: queue.Queue[Any] = queue.Queue()
        self.hardware: Hardware = build_hardware(
            config, self.clock, self.events.put, self.world.factory, self.world.i2c
        )
        self.ledger = Ledger(self.db_path, self.clock.wall)
        self.controller = Controller(config, self.ledger, self.hardware, self.clock, self.events)
        if start:
            self.start()

    def start(self) -> None:
        """Start the kiosk and run it until it has left `starting` (its acceptor reported)."""
        self.controller.start()
        self.clock.horizon = self.clock.now + START_LIMIT_S
        self.controller.run(
            until=lambda: self.controller.state is not State.STARTING or self._reached_horizon()
        )
        self.clock.horizon = math.inf
        self.run_for(0)  # what the start set in motion at this instant (coins enabled)

    @property
    def display(self) -> tuple[str, str]:
        return self.hardware.display.lines

    def run_for(self, seconds: float) -> None:
        """Run the kiosk and the world for `seconds` of simulated time."""
        self.clock.horizon = self.clock.now + seconds
        self.clock.exhausted = False
        self.controller.run(until=self._reached_horizon)
        self.clock.now = max(self.clock.now, self.clock.horizon)  # idle time passes too
        self.clock.horizon = math.inf

    def run_until_quiet(self, limit_s: float = 24 * 3600) -> None:
        """Run until the world has nothing scheduled and the kiosk has settled: no vend, no
        message, no countdown, no coin being read (periodic polling goes on) - or `limit_s`."""
        self.clock.horizon = self.clock.now + limit_s
        self.clock.exhausted = False
        self.controller.run(until=lambda: self._reached_horizon() or self._quiet())
        self.clock.horizon = math.inf

    def _quiet(self) -> bool:
        return not self.clock.world_pending() and self.controller.settled and self.events.empty()

    def _reached_horizon(self) -> bool:
        clock = self.clock
        reached = clock.now >= clock.horizon and clock.next_at() > clock.horizon
        return (clock.exhausted or reached) and self.events.empty()

    def restarted(self) -> SimKiosk:
        """Power cut, then a new kiosk on the same ledger and world; the motors stop, and only
        what the ledger had committed survives."""
        self.close()
        return SimKiosk(self.config, self.db_path, world=self.world, clock=self.clock)

    def close(self) -> None:
        """The kiosk stops (as at a power cut); the world stays, for a restart."""
        self.hardware.close()
        self.ledger.close()

    def shutdown(self) -> None:
        """The kiosk and its world, for good."""
        self.close()
        self.world.close()
