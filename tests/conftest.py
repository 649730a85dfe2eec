"""Shared fixtures: the sim profile, an injected clock, mock pins, a temporary ledger and a whole
simulated kiosk; real Mosquitto brokers come from tests/broker.py. Every pin factory and ledger a
test opens is closed after it."""

from __future__ import annotations

import argparse
import dataclasses
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benches import Bench

from kiosk import config as config_mod
from kiosk.config import Config
from kiosk.ledger import Ledger
from sim.clock import SimClock
from sim.rig import SimKiosk
from sim.world import SimFactory

# The Mosquitto fixtures: broker, persistent_broker, acl_broker, make_broker (tests/broker.py).
pytest_plugins = ["broker", "daemons"]


@pytest.fixture
def config() -> Config:
    return config_mod.load(config_mod.PULSE_PROFILE, env={})


def with_changes(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `config` with keys of some sections changed: credit={"leftover": "keep"}."""
    changed = {
        name: dataclasses.replace(getattr(config, name), **keys) for name, keys in sections.items()
    }
    return dataclasses.replace(config, **changed)


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple]:
    """Every subcommand path of the parser, e.g. ("demo",) and ("config", "check")."""
    paths: list[tuple] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(subcommands(sub, (*prefix, name)))
    return paths


@pytest.fixture
def bench() -> Iterator[Bench]:
    """Pseudo-terminal devices, transports and acceptors, closed after the test."""
    with Bench() as made:
        yield made


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def factory() -> Iterator[SimFactory]:
    pins = SimFactory()
    yield pins
    pins.reset()


@pytest.fixture
def events() -> queue.Queue[Any]:
    return queue.Queue()


def drain(events: queue.Queue[Any]) -> list[Any]:
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kiosk.db"


@pytest.fixture
def ledger(db_path: Path, clock: SimClock) -> Iterator[Ledger]:
    books = Ledger(db_path, clock.wall)
    yield books
    books.close()


class KioskMaker:
    """Builds simulated kiosks on one ledger file, and restarts them; closes them all after."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.opened: list[SimKiosk] = []

    def __call__(self, cfg: Config) -> SimKiosk:
        rig = SimKiosk(cfg, self.db_path)
        self.opened.append(rig)
        return rig

    def restart(self, rig: SimKiosk) -> SimKiosk:
        """A power cut and a restart on the same ledger and physical world."""
        new = rig.restarted()
        self.opened.append(new)
        return new

    def close(self) -> None:
        for rig in self.opened:
            rig.close()
        for world in {id(rig.world): rig.world for rig in self.opened}.values():
            world.close()
            world.factory.reset()


@pytest.fixture
def make_kiosk(db_path: Path) -> Iterator[KioskMaker]:
    maker = KioskMaker(db_path)
    yield maker
    maker.close()


@pytest.fixture
def kiosk(make_kiosk: KioskMaker, config: Config) -> SimKiosk:
    return make_kiosk(config)
