"""Random shoppers, random faults and a technician, on simulated time, for `kiosk demo --shoppers`.

Shoppers come one after another. Most buy something; some are short of coins, some walk away
with credit left, some cancel, some press a sold-out or faulty slot first. Faults arrive at random:
jams, empty spirals, a product hanging on the coil, a stuck drop sensor, noise on the coin line,
bursts of coins. A technician visits when the kiosk is out of service or low on stock: opens the
door, repairs, refills, closes it. The result compares the ledger with the world's ground truth.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlite_utils import Database

from kiosk import reports
from kiosk.core import Controller
from kiosk.events import Refill
from kiosk.machine import State
from sim.clock import SimClock
from sim.rig import SimKiosk

ARRIVAL_MEAN_S = 120.0
TRAVEL_S = 1800.0  # the technician's, to the kiosk
SERVICE_S = 60.0  # the technician's, with the door open before the refills, and after
FAULT_ODDS = {  # per shopper arrival
    "jam": 0.004,
    "empty_spiral": 0.004,
    "hanging_product": 0.01,
    "stuck_drop_sensor": 0.003,
    "noise_glitches": 0.04,
    "noise_pulse": 0.01,
    "coin_burst": 0.03,
}


@dataclass
class Tally:
    shoppers: int = 0
    turned_away: int = 0
    purchases_tried: int = 0
    walked_away: int = 0
    cancelled: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    technician_visits: int = 0


class Process:
    """Runs a generator that yields delays (seconds) on the simulated clock."""

    def __init__(
        self, clock: SimClock, steps: Iterator[float], on_done: Callable[[], None] = lambda: None
    ) -> None:
        self.clock = clock
        self.steps = steps
        self.on_done = on_done
        self.done = False
        clock.call_later(0, self._step)

    def _step(self) -> None:
        try:
            delay = next(self.steps)
        except StopIteration:
            self.done = True
            self.on_done()
            return
        self.clock.call_later(delay, self._step)


class Population:
    """The shoppers of a run. Knobs: the odds of each fault per arrival, the mean time between
    arrivals and the technician's travel time. The kiosk is looked up at every move (`rig` may be
    replaced by a restarted one between two moves)."""

    def __init__(
        self,
        rig: SimKiosk,
        count: int,
        seed: int,
        *,
        odds: dict[str, float] | None = None,
        arrival_mean_s: float = ARRIVAL_MEAN_S,
        travel_s: float = TRAVEL_S,
        service_s: float = SERVICE_S,
    ) -> None:
        self.rig = rig
        self.count = count
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.odds = dict(FAULT_ODDS if odds is None else odds)
        self.arrival_mean_s = arrival_mean_s
        self.travel_s = travel_s
        self.service_s = service_s

    @property
    def ctl(self) -> Controller:
        return self.rig.controller

    # --- the day ----------------------------------------------------------------------------

    def run(self) -> None:
        process = Process(self.rig.clock, self._day())
        while not process.done:
            self.rig.run_until_quiet(limit_s=6 * 3600)
        self.rig.run_until_quiet()

    def _day(self) -> Iterator[float]:
        for _ in range(self.count):
            yield self.rng.expovariate(1 / self.arrival_mean_s)
            self._inject_faults()
            self.tally.shoppers += 1
            yield from self._shopper()
            if self._needs_technician():
                yield from self._technician()
            yield from self._after_shopper()

    def _after_shopper(self) -> Iterator[float]:
        """What else happens between two shoppers (nothing here; a soak checks the ledger)."""
        return iter(())

    # --- one shopper ------------------------------------------------------------------------

    def _shopper(self) -> Iterator[float]:
        world, rng = self.rig.world, self.rng
        if self.ctl.state not in (State.IDLE, State.CREDIT):
            self.tally.turned_away += 1
            return
        mood = rng.choices(["buyer", "short", "walk_away", "canceller"], [75, 10, 8, 7])[0]
        slot = rng.choice(sorted(self.ctl.slots))
        if not self.ctl.slots[slot].sellable or rng.random() < 0.15:
            world.press(slot)  # reads the price, or learns it is sold out
            yield 2.0
            choices = [s for s, state in self.ctl.slots.items() if state.sellable]
            if not choices:
                self.tally.turned_away += 1
                return
            slot = rng.choice(choices)
        price = self.ctl.slots[slot].price_cents
        budget = price if mood != "short" else rng.randint(1, max(1, price - 1))
        yield from self._pay(budget)
        yield 2.0
        if mood == "walk_away":
            self.tally.walked_away += 1
            return
        if mood == "canceller":
            world.cancel()
            self.tally.cancelled += 1
            return
        for _ in range(3):  # after a failed vend, try another product
            world.press(slot)
            if self.ctl.credit_cents < price:
                self.tally.walked_away += 1
                return
            self.tally.purchases_tried += 1
            yield 1.0
            while self.ctl.state is State.VENDING:
                yield 1.0
            choices = [
                s
                for s, state in self.ctl.slots.items()
                if state.sellable and state.price_cents <= self.ctl.credit_cents
            ]
            if self.ctl.state is not State.CREDIT or not choices:
                return
            if rng.random() < 0.5:
                return  # leaves the rest of the credit
            slot = rng.choice(choices)
            price = self.ctl.slots[slot].price_cents

    def _pay(self, budget_cents: int) -> Iterator[float]:
        world, rng = self.rig.world, self.rng
        coins = [1, 2, 5]
        while self.ctl.credit_cents < budget_cents and self.ctl.state in (State.IDLE, State.CREDIT):
            if self._fault("coin_burst"):
                world.burst([rng.choice(coins) for _ in range(rng.randint(2, 4))])
                yield 3.0
                continue
            value = rng.choices(coins, [2, 3, 5])[0]
            for _ in range(4):  # a coin handed back is tried again
                if world.insert_coin(value):
                    break
                yield 1.5
            yield from self._watch_credit(self.ctl.credit_cents)
            yield rng.uniform(0.3, 2.0)

    def _watch_credit(self, before: int) -> Iterator[float]:
        """Most shoppers wait to see the coin on the display before the next one."""
        for _ in range(12):
            if self.ctl.credit_cents != before or self.rng.random() < 0.1:
                return
            yield 0.25

    # --- the world's misfortunes ------------------------------------------------------------

    def _fault(self, name: str) -> bool:
        if self.rng.random() < self.odds.get(name, 0.0):
            self.tally.faults[name] += 1
            return True
        return False

    def _inject_faults(self) -> None:
        world, rng = self.rig.world, self.rng
        if self._fault("jam"):
            world.jam(rng.choice(sorted(world.spirals)))
        if self._fault("empty_spiral"):
            world.spirals[rng.choice(sorted(world.spirals))].empty = True
        if self._fault("hanging_product"):
            world.spirals[rng.choice(sorted(world.spirals))].hang_once = True
        if self._fault("stuck_drop_sensor"):
            world.stick_drop_sensor(True)
            world.clock.call_later(rng.uniform(30, 600), lambda: world.stick_drop_sensor(False))
        if self._fault("noise_glitches"):
            for _ in range(rng.randint(1, 5)):
                world.clock.call_later(
                    rng.uniform(0, 5), lambda: world.noise(rng.uniform(0.001, 0.02))
                )
        if self._fault("noise_pulse"):
            world.noise(0.05)

    # --- the technician ---------------------------------------------------------------------

    def _needs_technician(self) -> bool:
        if self.ctl.state is State.OUT_OF_SERVICE:
            return True
        low = [s for s in self.ctl.slots.values() if s.quantity < s.capacity // 3 or s.fault]
        return len(low) >= 2

    def _technician(self) -> Iterator[float]:
        world = self.rig.world
        yield self.travel_s
        while self.ctl.state is State.VENDING:
            yield 5.0
        self.tally.technician_visits += 1
        world.open_door()
        yield self.service_s
        world.repair()
        for slot in sorted(world.spirals):
            added = world.refill(slot)
            if added:
                self.rig.events.put(Refill(slot, added))
        yield self.service_s
        world.close_door()
        yield 5.0


@dataclass(frozen=True)
class Outcome:
    tally: Tally
    totals: reports.Totals
    checks: list[reports.Check]
    simulated_s: float
    wall_s: float
    truth_cashbox_cents: int
    truth_returned: int
    truth_delivered: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass(frozen=True)
class LedgerMark:
    """What the ledger and the world held before a run: what the run added to each is compared
    (a headless run may continue an existing --db; a test may run shoppers twice on one world)."""

    coins_cents: int = 0
    sales_by_slot: dict[int, int] = field(default_factory=dict)
    cashbox_cents: int = 0  # the world's
    delivered: dict[int, int] = field(default_factory=dict)  # the world's, per slot
    lost_cents: int = 0  # the world's: credits dropped unread by the acceptor

    @classmethod
    def of(cls, rig: SimKiosk) -> LedgerMark:
        truth = rig.world.truth
        return cls(
            reports.totals(rig.ledger.db).coins_cents,
            _sales_by_slot(rig.ledger.db),
            truth.cashbox_cents,
            dict(truth.delivered),
            rig.world.lost_cents,
        )


def _sales_by_slot(db: Database) -> dict[int, int]:
    return dict(db.execute("SELECT slot, count(*) FROM sales GROUP BY slot").fetchall())


def ground_truth(rig: SimKiosk, before: LedgerMark | None = None) -> reports.Check:
    """The ledger against the world: every coin in the cash box is counted (but those whose
    events the acceptor lost unread), and no slot has sold more products than fell from it, since
    `before`."""
    before = before or LedgerMark()
    check = reports.Check("ground truth")
    truth, db = rig.world.truth, rig.ledger.db
    counted = reports.totals(db).coins_cents - before.coins_cents
    fallen = truth.cashbox_cents - before.cashbox_cents
    lost = rig.world.lost_cents - before.lost_cents
    if fallen - lost != counted:
        check.differences.append(
            f"the cash box took {fallen} c"
            + (f" ({lost} c of them lost unread by the acceptor)" if lost else "")
            + f", the ledger counts {counted} c"
            + (" in this run" if before.coins_cents else "")
        )
    for slot, sales in sorted(_sales_by_slot(db).items()):
        sales -= before.sales_by_slot.get(slot, 0)
        delivered = truth.delivered[slot] - before.delivered.get(slot, 0)
        if sales > delivered:
            check.differences.append(f"slot {slot}: {sales} sales but {delivered} products fell")
    return check


def simulate(rig: SimKiosk, shoppers: int, seed: int) -> Outcome:
    started = time.perf_counter()
    before = LedgerMark.of(rig)
    population = Population(rig, shoppers, seed)
    population.run()
    wall_s = time.perf_counter() - started
    db = rig.ledger.db
    checks = [*reports.verify(db), ground_truth(rig, before)]
    truth = rig.world.truth
    totals = reports.totals(db)
    return Outcome(
        tally=population.tally,
        totals=totals,
        checks=checks,
        simulated_s=rig.clock.now,
        wall_s=wall_s,
        truth_cashbox_cents=truth.cashbox_cents,
        truth_returned=len(truth.returned),
        truth_delivered=sum(truth.delivered.values()),
    )
