"""The simulated world for `kiosk hw check --sim` and `kiosk hw pulses --sim`: the kiosk's world
(sim/world.py) on pins whose edges are timed in simulated time, and a simulated technician who
does what the commissioning commands ask (presses each button, works the door, drops coins),
after a human's reaction time, unless told to leave some inputs alone.

The spirals start empty, as on a kiosk being commissioned before it is loaded (`stocked=True`
fills them). The simulated ccTalk acceptor answers on its pseudo-terminal, the pulse acceptor
sends its trains at its own timing (`pulse_ms`, `gap_ms`: other than the profile's to see the
tuning at work), and the jam knobs of the world stay at hand (`site.world.jam(slot)`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from kiosk.commission import Setup, Technician, Wanted
from kiosk.config import Config
from sim.clock import SimClock
from sim.world import SimFactory, SimPin, World

REACTION_S = 0.6  # from the question to the finger on the button
DOOR_OPEN_S = 1.0  # a door opened to answer is closed again after this
# Between the coins a technician drops one by one: more than a 10-pulse train lasts, since the
# simulated acceptor queues a coin's train right behind the one it is sending.
COIN_SPACING_S = 3.0
DEFAULT_COINS = 5  # dropped when the recording asks for no particular number


class ClockedPin(SimPin):
    """A simulated pin whose edges carry simulated time, as lgpio's carry the kernel's."""

    def _change_state(self, value: bool) -> bool:
        changed = super()._change_state(value)
        if changed:
            self._last_change = self.factory.clock.now  # the ticks when_changed is given
        return changed


class ClockedFactory(SimFactory):
    """SimFactory whose ticks are the simulated clock's seconds."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__()
        self.pin_class = ClockedPin
        self.clock = clock

    def ticks(self) -> float:
        return self.clock.now

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier


class SimTechnician:
    """Does what is asked on the world. `ignore`: what nobody answers, by kind ("cancel",
    "door", "coins") or kind and slot ("button 2"). `echo` also hears everything (the
    terminal's prompts)."""

    def __init__(
        self, world: World, *, ignore: Collection[str] = (), echo: Technician | None = None
    ) -> None:
        self.world = world
        self.ignore = frozenset(ignore)
        self.echo = echo
        self.inserted: list[int] = []  # coins dropped that the acceptor took, in order
        self.asked: list[Wanted] = []

    def tell(self, text: str) -> None:
        if self.echo is not None:
            self.echo.tell(text)

    def ask(self, wanted: Wanted, skip: Callable[[], None]) -> None:
        if self.echo is not None:
            self.echo.ask(wanted, skip)
        self.asked.append(wanted)
        key = wanted.kind if wanted.slot is None else f"{wanted.kind} {wanted.slot}"
        if key in self.ignore or wanted.kind in self.ignore:
            return
        clock = self.world.clock
        if wanted.kind == "coins":
            coins = sorted(self.world.config.kiosk.accepted_coins_cents)
            for i in range(wanted.count or DEFAULT_COINS):
                value = coins[i % len(coins)]
                clock.call_later(
                    REACTION_S + i * COIN_SPACING_S, functools.partial(self._drop, value)
                )
        else:
            clock.call_later(REACTION_S, functools.partial(self._answer, wanted))

    def _drop(self, value_cents: int) -> None:
        if self.world.insert_coin(value_cents):
            self.inserted.append(value_cents)

    def _answer(self, wanted: Wanted) -> None:
        world = self.world
        if wanted.kind == "button" and wanted.slot is not None:
            world.press(wanted.slot)
        elif wanted.kind == "cancel":
            world.cancel()
        elif wanted.kind == "door":
            world.open_door()
            world.clock.call_later(DOOR_OPEN_S, world.close_door)


@dataclass
class SimSite:
    """A simulated kiosk being commissioned: the setup the commands run on, and its world."""

    clock: SimClock
    world: World
    technician: SimTechnician
    setup: Setup = field(init=False)

    def __post_init__(self) -> None:
        world = self.world
        self.setup = Setup(world.config, self.clock, world.factory, self.technician, world.i2c)


@contextlib.contextmanager
def simulated(
    config: Config,
    *,
    echo: Technician | None = None,
    ignore: Collection[str] = (),
    stocked: bool = False,
    pulse_ms: float | None = None,
    gap_ms: float | None = None,
) -> Iterator[SimSite]:
    """The world for `config` (its ccTalk port replaced by the simulated device's) and its
    technician; released afterwards."""
    clock = SimClock()
    factory = ClockedFactory(clock)
    world = World(config, clock, factory, pulse_ms=pulse_ms, gap_ms=gap_ms)
    try:
        if not stocked:
            for spiral in world.spirals.values():
                spiral.stock = 0
        yield SimSite(clock, world, SimTechnician(world, ignore=ignore, echo=echo))
    finally:
        world.close()
        factory.reset()
