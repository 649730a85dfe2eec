"""The kiosk under the power-cut harness: the real daemon (`kiosk.daemon.run_daemon`, system
clock, control socket, ledger lock) in a process of its own, its pins gpiozero MockFactory pins
driven by a world on real time: spiral motors turning cam switches, products falling through the
drop beam and, in the pulse profile, a pulse coin acceptor.

The world's physical truth outlives the process, as products in a bin and coins in a cash box
outlive a power cut: each fact is appended to a journal and flushed before the pin edge that
reports it (a product falls, then the beam breaks; a coin drops, then its train starts). The
harness appends `power_cut` when it kills the process; the next world replays the journal to find
each spiral's stock and where its turn stopped.

    python -m sim.powercut_world PROFILE --journal FILE --world SOCK

The harness drives the world through SOCK (JSON lines): press a button, drop pulse coins, read the
truth, wait for a motor to start or a product to fall.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.pulse import PulseSettings
from kiosk.config import Config, SlotConfig
from sim.cctalk_device import OrderServer
from sim.world import DROP_PULSE_S, PRESS_S, SimFactory, SimPin, Spiral

REVOLUTION_S = 1.0
VALIDATE_S = 0.3  # a pulse acceptor's time to validate a coin before its train


class Journal:
    """Facts of the physical world, one JSON object a line, flushed as they are written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, **fact: Any) -> None:
        with self._lock:
            self._file.write(json.dumps({"t": time.monotonic(), **fact}) + "\n")
            self._file.flush()  # in the kernel's hands: a SIGKILL no longer loses it

    def close(self) -> None:
        self._file.close()


@dataclass
class Physical:
    """What the journal says is true: products fallen and coins in the cash box, and where each
    spiral's turn stands (fraction of a turn, and since when it has been turning)."""

    drops: Counter[int] = field(default_factory=Counter)
    cashbox: list[tuple[int, float]] = field(default_factory=list)  # (value, train done at)
    returned: list[int] = field(default_factory=list)
    progress: dict[int, float] = field(default_factory=dict)
    turning_since: dict[int, float] = field(default_factory=dict)
    power_cuts: list[float] = field(default_factory=list)


def replay(path: str | Path, revolution_s: float = REVOLUTION_S) -> Physical:
    truth = Physical()
    if not os.path.exists(path):
        return truth
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn by the kill: the fact never happened
            fact = json.loads(line)
            kind, t = fact["ev"], fact["t"]
            slot = fact.get("slot")
            if kind == "on":
                truth.progress[slot], truth.turning_since[slot] = fact["progress"], t
            elif kind == "off":
                truth.progress[slot] = fact["progress"]
                truth.turning_since.pop(slot, None)
            elif kind == "home":
                truth.progress[slot], truth.turning_since[slot] = 0.0, t
            elif kind == "drop":
                truth.drops[slot] += 1
            elif kind == "coin":
                truth.cashbox.append((fact["value"], fact["done"]))
            elif kind == "returned":
                truth.returned.append(fact["value"])
            elif kind == "power_cut":
                truth.power_cuts.append(t)
                for turning, since in truth.turning_since.items():
                    moved = (t - since) / revolution_s
                    truth.progress[turning] = min(0.99, truth.progress.get(turning, 0) + moved)
                truth.turning_since.clear()
    return truth


class Timeline:
    """Calls at monotonic times, on one thread (the world's own time, not the kiosk's)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        threading.Thread(target=self._serve, name="world-time", daemon=True).start()

    def call_at(self, at: float, action: Callable[[], None]) -> None:
        with self._cv:
            heapq.heappush(self._due, (at, next(self._order), action))
            self._cv.notify()

    def call_later(self, delay_s: float, action: Callable[[], None]) -> None:
        self.call_at(time.monotonic() + delay_s, action)

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._due or self._due[0][0] > time.monotonic():
                    wait = None if not self._due else self._due[0][0] - time.monotonic()
                    self._cv.wait(wait)
                _, _, action = heapq.heappop(self._due)
            action()


class RealSpiral:
    """A spiral on real time: its cam leaves home early in the turn, the front product falls
    near its end (journaled before the beam breaks), the cam closes home at a full turn."""

    def __init__(self, slot: SlotConfig, world: RealWorld, stock: int, progress: float) -> None:
        self.slot = slot.id
        self.world = world
        self.stock = stock
        self.progress = progress
        self.home = world.factory.gpio(slot.home_pin)
        self._since: float | None = None
        self._turn = 0  # a new number each time the motor starts: stale calls do nothing
        self.home.drive(not (progress < Spiral.LEAVE_AT))  # closed (low) at home

    @property
    def turning(self) -> bool:
        return self._since is not None

    def motor(self, on: bool) -> None:
        with self.world.lock:
            now = time.monotonic()
            if on and self._since is None:
                self._since = now
                self._turn += 1
                self.world.journal.write(ev="on", slot=self.slot, progress=self.progress)
                self._schedule(self._turn)
                self.world.changed.notify_all()
            elif not on and self._since is not None:
                self.progress = min(0.99, self.progress + (now - self._since) / REVOLUTION_S)
                self._since = None
                self._turn += 1
                self.world.journal.write(ev="off", slot=self.slot, progress=self.progress)

    def _schedule(self, turn: int) -> None:
        def at(fraction: float, action: Callable[[], None]) -> None:
            if fraction > self.progress:
                delay = (fraction - self.progress) * REVOLUTION_S
                self.world.time.call_later(delay, lambda: self._if_turning(turn, action))

        at(Spiral.LEAVE_AT, lambda: self.home.drive(True))
        at(Spiral.DROP_AT, self._front_product)
        at(1.0, self._home)

    def _if_turning(self, turn: int, action: Callable[[], None]) -> None:
        # Pins are driven outside the world's lock: the kiosk's callbacks on them take the
        # dispenser's lock, whose holder may be switching a motor into this world.
        with self.world.lock:
            still = turn == self._turn and self._since is not None
        if still:
            action()

    def _front_product(self) -> None:
        with self.world.lock:
            if self.stock == 0:
                return
            self.stock -= 1
            self.world.journal.write(ev="drop", slot=self.slot)
            self.world.drops[self.slot] += 1
            self.world.changed.notify_all()
        self.world.drop.drive(False)
        self.world.time.call_later(DROP_PULSE_S, lambda: self.world.drop.drive(True))

    def _home(self) -> None:
        with self.world.lock:
            self.progress = 0.0
            self._since = time.monotonic()
            self.world.journal.write(ev="home", slot=self.slot)
            self._schedule(self._turn)  # if the kiosk lets it run on, the next turn comes
        self.home.drive(False)  # the kiosk switches the motor off from this edge


class RealPulseMech:
    """A pulse acceptor on real time, one coin at a time: as a coin's train begins it is journaled
    into the cash box; an inhibited or unknown coin is handed back."""

    def __init__(self, settings: PulseSettings, world: RealWorld) -> None:
        self.settings = settings
        self.world = world
        self.line = world.factory.gpio(settings.coin_pin)
        self.line.drive(True)
        pin = settings.inhibit_pin
        self._inhibit = None if pin is None else world.factory.gpio(pin)
        self._free_at = 0.0

    @property
    def inhibited(self) -> bool:
        if self._inhibit is None:
            return False
        return bool(self._inhibit.state) == self.settings.inhibit_active_high

    def insert(self, value_cents: int) -> float | None:
        """The time its train ends, or None if the coin was handed back."""
        count = self.settings.pulses.get(value_cents)
        if count is None or self.inhibited:
            self.world.journal.write(ev="returned", value=value_cents)
            return None
        width_s, gap_s = self.settings.pulse_ms / 1000, self.settings.gap_ms / 1000
        # A coin is validated after the previous one's train: trains never run together.
        between_s = self.settings.end_gap_ms / 1000 + VALIDATE_S
        start = max(time.monotonic() + VALIDATE_S, self._free_at + between_s)
        period = width_s + gap_s
        done = start + count * period - gap_s
        self._free_at = done

        def drops_in() -> None:
            # Into the cash box as its train begins: a coin still waiting in the shopper's
            # hand when the power goes never went in.
            self.world.journal.write(ev="coin", value=value_cents, done=done)
            self.line.drive(False)

        self.world.time.call_at(start, drops_in)
        for i in range(count):
            if i:
                self.world.time.call_at(start + i * period, lambda: self.line.drive(False))
            self.world.time.call_at(start + i * period + width_s, lambda: self.line.drive(True))
        return done


class RealWorld:
    def __init__(self, config: Config, journal_path: str | Path) -> None:
        truth = replay(journal_path)
        self.config = config
        self.factory = SimFactory()
        self.journal = Journal(journal_path)
        self.time = Timeline()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.drops: Counter[int] = Counter(truth.drops)
        self.spirals: dict[int, RealSpiral] = {}
        for slot in config.slots:
            full = slot.capacity if slot.initial_quantity is None else slot.initial_quantity
            stock = full - truth.drops[slot.id]
            spiral = RealSpiral(slot, self, stock, truth.progress.get(slot.id, 0.0))
            self.spirals[slot.id] = spiral
            self.factory.listen(slot.motor_pin, spiral.motor)
            self.factory.gpio(slot.button_pin).drive(True)
        self.drop: SimPin = self.factory.gpio(config.dispenser.drop_pin)
        self.drop.drive(True)
        self.factory.gpio(config.panel.cancel_pin).drive(True)
        if config.panel.door_pin is not None:
            self.factory.gpio(config.panel.door_pin).drive(False)  # closed
        settings = config.coin_acceptor.settings
        self.coins = RealPulseMech(settings, self) if isinstance(settings, PulseSettings) else None

    def press(self, slot: int) -> None:
        pin = self.factory.gpio(self.config.slot(slot).button_pin)
        pin.drive(False)
        self.time.call_later(PRESS_S, lambda: pin.drive(True))

    def order(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        timeout_s = float(message.get("timeout_s", 10.0))
        if op == "press":
            self.press(int(message["slot"]))
            return {}
        if op == "insert":
            if self.coins is None:
                raise ValueError("no pulse acceptor in this world")
            return {"done": [self.coins.insert(int(v)) for v in message["coins"]]}
        if op == "wait_turning":
            with self.changed:
                self.changed.wait_for(
                    lambda: any(s.turning for s in self.spirals.values()), timeout_s
                )
        elif op == "wait_drops":
            after = int(message["after"])
            with self.changed:
                self.changed.wait_for(lambda: sum(self.drops.values()) > after, timeout_s)
        elif op != "truth":
            raise ValueError(f"unknown order {op!r}")
        with self.lock:
            return {
                "stock": {str(k): s.stock for k, s in self.spirals.items()},
                "drops": sum(self.drops.values()),
                "turning": [k for k, s in self.spirals.items() if s.turning],
                "coins_enabled": self.coins is not None and not self.coins.inhibited,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.powercut_world")
    parser.add_argument("profile")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--world", required=True, help="Unix socket for the harness's orders")
    args = parser.parse_args(argv)
    from gpiozero import Device

    from kiosk import config as config_mod
    from kiosk.daemon import run_daemon

    # Hand the interpreter lock over sooner than the default 5 ms: the world's thread times the
    # coin pulses the kiosk's driver measures, on the same interpreter.
    sys.setswitchinterval(0.0005)
    config = config_mod.load(args.profile)
    world = RealWorld(config, args.journal)
    Device.pin_factory = world.factory  # what kiosk.pins hands the daemon
    if os.path.lexists(args.world):
        os.unlink(args.world)
    server = OrderServer(args.world, world.order)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return run_daemon(config)


if __name__ == "__main__":
    raise SystemExit(main())
