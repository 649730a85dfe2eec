"""`python -m sim.soak`: many random shoppers and random faults on simulated time, the kiosk's
invariants checked throughout, figures printed at the end (exit status 1 on any violation).

The shoppers and the technician are those of `kiosk demo --shoppers` (sim/shoppers.py), with
their faults (jams, empty spirals, hanging products, a stuck drop sensor, noise on the coin line,
coin bursts). The soak adds its own, between and during shoppers, at rates per shopper arrival:
corrupt ccTalk replies and garbage on the serial line, acceptor power cycles, bursts that
overflow the acceptor's five-event buffer (lost events), a silent acceptor, door openings (a
technician's visit with refills whatever the kiosk's state) and power cuts of the kiosk (a restart
on the same ledger and world). With `--mqtt`, telemetry publishes to a private Mosquitto that is
stopped and started at random (sim/soak_mqtt.py).

Every `--check-every` shoppers, once the kiosk has settled, and at the end:
- the ledger's own invariants (money, cash box, stock: what `kiosk verify` checks);
- the ledger against the world (every coin in the cash box counted, but those the acceptor lost
  unread; no slot sold more products than fell from it);
- ccTalk: every coin the acceptor credited is in the ledger once, per value, or was lost unread,
  and each loss was reported by the kiosk (a lost_events fault);
- per slot, the ledger's stock less what the spiral holds = the products that fell unpaid since
  the technician last filled both; after every visit they agree;
and at the end `kiosk verify` on the ledger file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk import cli, reports
from kiosk import config as config_mod
from kiosk.config import Config
from sim.demo import scratch_dir
from sim.rig import SimKiosk
from sim.shoppers import FAULT_ODDS, Population, ground_truth
from sim.soak_mqtt import OUTAGE_S, SoakTelemetry
from sim.world import CcTalkCoinMech

CCTALK_ODDS = {  # per shopper arrival; faults only a ccTalk acceptor has
    "corrupt_replies": 0.01,
    "serial_noise": 0.01,
    "acceptor_reset": 0.003,
    "lost_events": 0.003,
    "acceptor_silence": 0.001,
}
SOAK_ODDS = {
    **FAULT_ODDS,
    **CCTALK_ODDS,
    "door_opening": 0.003,
    "restart": 0.002,
}
ARRIVAL_MEAN_S = 10.0  # a busy kiosk: idle polling between shoppers is most of a run's wall time
TRAVEL_S = 60.0
SERVICE_S = 10.0
DURING_S = 20.0  # a fault "during" a shopper comes within this much of the arrival
SETTLE_LIMIT_S = 3600.0
READ_WAIT_S = 0.05  # a power cycle or a burst waits for the host to have read every event


@dataclass
class Figures:
    restarts: int = 0
    checks: int = 0
    lost_incidents: int = 0  # bursts that pushed unread events off the acceptor's buffer
    violations: list[str] = field(default_factory=list)


class Soak(Population):
    """The shoppers of sim/shoppers.py, moved one step at a time from here (not from inside the
    kiosk's loop), so that a restart can replace the kiosk between two steps."""

    def __init__(
        self,
        rig: SimKiosk,
        count: int,
        seed: int,
        *,
        odds: dict[str, float],
        arrival_mean_s: float = ARRIVAL_MEAN_S,
        travel_s: float = TRAVEL_S,
        check_every: int = 1000,
        on_restart: Callable[[SimKiosk], None] = lambda rig: None,
    ) -> None:
        cctalk = isinstance(rig.world.coins, CcTalkCoinMech)
        odds = {k: v for k, v in odds.items() if cctalk or k not in CCTALK_ODDS}
        super().__init__(
            rig,
            count,
            seed,
            odds=odds,
            arrival_mean_s=arrival_mean_s,
            travel_s=travel_s,
            service_s=SERVICE_S,
        )
        self.check_every = check_every
        self.on_restart = on_restart
        self.on_shopper: Callable[[], None] = lambda: None
        self.progress: Callable[[str], None] = lambda line: None
        self._started = time.perf_counter()
        self.figures = Figures()
        self._restart_due = False
        self._marks = self._stock_marks()

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        for delay in self._day():
            self.rig.run_for(delay)
            if self._restart_due and self._may_restart():
                self._restart()
            if self.figures.violations:
                return
        self.settle()
        self.check("at the end")

    def _after_shopper(self) -> Iterator[float]:
        self.on_shopper()
        if self.tally.shoppers % self.check_every == 0:
            self.settle()
            self.check(f"after shopper {self.tally.shoppers}")
            wall_s = time.perf_counter() - self._started
            self.progress(
                f"soak: {self.tally.shoppers} of {self.count} shoppers, "
                f"{self.rig.clock.now / 3600:.1f} h simulated, {wall_s:.0f} s, "
                f"{len(self.figures.violations)} violations"
            )
        return iter(())

    def _may_restart(self) -> bool:
        """A ccTalk acceptor keeps its events through the kiosk's power cut (the kiosk reads
        them after its restart); a pulse acceptor's train cut short is a coin no host can count,
        so a power cut waits until no train is on the line."""
        coins = self.rig.world.coins
        return isinstance(coins, CcTalkCoinMech) or coins.quiet

    def _restart(self) -> None:
        self._restart_due = False
        self.figures.restarts += 1
        self.rig = self.rig.restarted()
        self.on_restart(self.rig)

    def settle(self) -> None:
        """Run until the kiosk is idle and the acceptor's events are all read: a moment when the
        ledger and the world can be compared."""
        self.rig.run_until_quiet(limit_s=SETTLE_LIMIT_S)
        coins = self.rig.world.coins
        for _ in range(100):
            if coins.quiet:
                break
            self.rig.run_for(1.0)
        if self._restart_due:
            self._restart()
            self.rig.run_until_quiet(limit_s=SETTLE_LIMIT_S)

    # --- faults ------------------------------------------------------------------------------

    def _inject_faults(self) -> None:
        super()._inject_faults()
        world, rng, clock = self.rig.world, self.rng, self.rig.clock

        def during(action: Callable[[], object]) -> None:
            clock.call_later(rng.uniform(0, DURING_S), action)

        if self._fault("restart"):
            during(self._want_restart)
        if not isinstance(world.coins, CcTalkCoinMech):
            return
        device = world.coins.device
        if self._fault("corrupt_replies"):
            corrupt = rng.choice([1, 2, 4, 24])  # 24: more than the retries of five polls (lost)
            during(lambda: setattr(device, "corrupt_replies", device.corrupt_replies + corrupt))
        if self._fault("serial_noise"):
            garbage = rng.randint(1, 60)
            during(lambda: setattr(device, "noise_bytes", device.noise_bytes + garbage))
        if self._fault("acceptor_reset"):
            during(lambda: self._when_all_read(device.power_cycle))
        if self._fault("lost_events"):
            values = [rng.choice([1, 2, 5]) for _ in range(rng.randint(6, 9))]
            during(lambda: self._when_all_read(lambda: self._overflow(values)))
        if self._fault("acceptor_silence"):
            # Each exchange with a silent acceptor waits out its reply timeouts in real time:
            # long silences would cost wall time, not test anything more (lost after five polls).
            silent_s = rng.uniform(0.2, 3.0)

            def silence() -> None:
                device.silent = True
                clock.call_later(silent_s, lambda: setattr(device, "silent", False))

            during(silence)

    def _want_restart(self) -> None:
        self._restart_due = True

    def _when_all_read(self, action: Callable[[], None]) -> None:
        """Now if the host has read every event, else a little later: a power cycle then loses
        nothing unread, and two bursts are never read in one poll (each loss is reported)."""
        if self.rig.world.coins.quiet:
            action()
        else:
            self.rig.clock.call_later(READ_WAIT_S, lambda: self._when_all_read(action))

    def _overflow(self, values: list[int]) -> None:
        world = self.rig.world
        assert isinstance(world.coins, CcTalkCoinMech)
        lost = len(world.coins.device.truth.lost)
        for value in values:  # all in one instant: the host cannot poll in between
            world.insert_coin(value)
        if len(world.coins.device.truth.lost) > lost:
            self.figures.lost_incidents += 1

    def _needs_technician(self) -> bool:
        return super()._needs_technician() or self._fault("door_opening")

    def _technician(self) -> Iterator[float]:
        yield from super()._technician()
        # Both were filled to capacity: from here the ledger and the spirals agree again.
        check = self._stock_check()
        self._record(check, f"after the service visit following shopper {self.tally.shoppers}")
        self._marks = self._stock_marks()

    # --- checks ------------------------------------------------------------------------------

    def check(self, when: str) -> None:
        self.figures.checks += 1
        checks = [
            *reports.verify(self.rig.ledger.db),
            ground_truth(self.rig),
            self._acceptor_check(),
            self._stock_check(),
        ]
        for check in checks:
            self._record(check, when)

    def _record(self, check: reports.Check, when: str) -> None:
        at = f"{when}, {self.rig.clock.now:.1f} s simulated"
        self.figures.violations += [f"{at}: {check.name}: {d}" for d in check.differences]

    def _acceptor_check(self) -> reports.Check:
        check = reports.Check("acceptor")
        coins = self.rig.world.coins
        if not isinstance(coins, CcTalkCoinMech):
            return check
        device, db = coins.device, self.rig.ledger.db
        credited = Counter(device.truth.credited)
        lost = Counter(int(device.coin_ids[a][2:5]) for a, _ in device.truth.lost if a)
        ledger = Counter(
            dict(db.execute("SELECT value_cents, count(*) FROM coins GROUP BY value_cents"))
        )
        for value in sorted(set(credited) | set(ledger)):
            if credited[value] - lost[value] != ledger[value]:
                check.differences.append(
                    f"{value} c: the acceptor credited {credited[value]}, {lost[value]} of them "
                    f"lost unread; the ledger has {ledger[value]}"
                )
        reported = db.execute(
            "SELECT count(*) FROM events WHERE kind = 'fault' AND code = 'lost_events'"
        ).fetchone()[0]
        if reported != self.figures.lost_incidents:
            check.differences.append(
                f"{self.figures.lost_incidents} bursts lost events unread; the kiosk reported "
                f"{reported}"
            )
        return check

    def _stock_marks(self) -> dict[int, tuple[int, int]]:
        """Per slot: products fallen and sales so far, at a moment the ledger and spiral agree."""
        sales = _sales_by_slot(self.rig)
        delivered = self.rig.world.truth.delivered
        return {slot: (delivered[slot], sales.get(slot, 0)) for slot in self.rig.world.spirals}

    def _stock_check(self) -> reports.Check:
        check = reports.Check("stock against the spirals")
        db, world = self.rig.ledger.db, self.rig.world
        held = dict(db.execute("SELECT slot, quantity FROM stock").fetchall())
        now = self._stock_marks()
        for slot, spiral in sorted(world.spirals.items()):
            fallen = now[slot][0] - self._marks[slot][0]
            sold = now[slot][1] - self._marks[slot][1]
            if held[slot] - spiral.stock != fallen - sold:
                check.differences.append(
                    f"slot {slot}: the ledger holds {held[slot]}, the spiral {spiral.stock}; "
                    f"{fallen} fell and {sold} were sold since they last agreed"
                )
        return check


def _sales_by_slot(rig: SimKiosk) -> dict[int, int]:
    rows = rig.ledger.db.execute("SELECT slot, count(*) FROM sales GROUP BY slot").fetchall()
    return dict(rows)


# --- the command ---------------------------------------------------------------------------


def verify_file(path: Path) -> tuple[bool, str]:
    """`kiosk verify --db PATH`, as a technician would run it: (ok, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["verify", "--db", str(path)])
    return status == 0, out.getvalue()


@dataclass(frozen=True)
class Result:
    figures: dict[str, Any]
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


def soak(
    config: Config,
    shoppers: int,
    seed: int,
    *,
    odds: dict[str, float] | None = None,
    arrival_mean_s: float = ARRIVAL_MEAN_S,
    travel_s: float = TRAVEL_S,
    check_every: int = 1000,
    mqtt: bool = False,
    outages: float = 0.002,
    outage_s: tuple[float, float] = OUTAGE_S,
    progress: Callable[[str], None] = lambda line: None,
) -> Result:
    odds = dict(SOAK_ODDS if odds is None else odds)
    with tempfile.TemporaryDirectory(prefix="kiosk-soak-", dir=scratch_dir()) as tmp:
        path = Path(tmp) / "soak.db"
        started = time.perf_counter()
        telemetry: Any = contextlib.nullcontext()
        if mqtt:
            telemetry = SoakTelemetry(Path(tmp), seed, outages, outage_s)
            config = telemetry.configure(config)
        with telemetry:
            rig = SimKiosk(config, path)
            run = Soak(
                rig,
                shoppers,
                seed,
                odds=odds,
                arrival_mean_s=arrival_mean_s,
                travel_s=travel_s,
                check_every=max(1, check_every),
                on_restart=telemetry.attach if mqtt else lambda rig: None,
            )
            run.progress = progress
            try:
                if mqtt:
                    telemetry.attach(rig)
                    run.on_shopper = telemetry.maybe_outage
                run.run()
                wall_s = time.perf_counter() - started
                figures = _figures(run, shoppers, seed, wall_s)
                violations = list(run.figures.violations)
                if mqtt:
                    figures["telemetry"], lines = telemetry.finish(run.rig)
                    violations += lines
            finally:
                run.rig.shutdown()
        ok, printed = verify_file(path)
        if not ok:
            violations += [f"kiosk verify: {line.strip()}" for line in printed.splitlines()]
        figures["violations"] = len(violations)
    return Result(figures, violations)


def _figures(run: Soak, shoppers: int, seed: int, wall_s: float) -> dict[str, Any]:
    db, rig = run.rig.ledger.db, run.rig
    totals = reports.totals(db)
    raised = dict(
        db.execute(
            "SELECT device || ':' || code, count(*) FROM events WHERE kind = 'fault' "
            "GROUP BY device, code ORDER BY device, code"
        ).fetchall()
    )
    injected = {name: run.tally.faults.get(name, 0) for name in sorted(run.odds)}
    return {
        "profile": str(rig.config.source),
        "acceptor": rig.config.coin_acceptor.driver,
        "shoppers": run.tally.shoppers,
        "asked": shoppers,
        "seed": seed,
        "simulated_hours": round(rig.clock.now / 3600, 2),
        "wall_seconds": round(wall_s, 1),
        "shoppers_per_wall_second": round(run.tally.shoppers / wall_s, 1) if wall_s else 0,
        "sales": totals.sales,
        "sales_cents": totals.sales_cents,
        "coins": sum(totals.coins_by_value.values()),
        "coins_cents": totals.coins_cents,
        "coins_by_value": {str(k): v for k, v in sorted(totals.coins_by_value.items())},
        "donations_cents": totals.donations_cents,
        "open_credit_cents": totals.open_credit_cents,
        "vends_by_outcome": totals.vends_by_outcome,
        "turned_away": run.tally.turned_away,
        "technician_visits": run.tally.technician_visits,
        "faults_injected": injected,
        "restarts": run.figures.restarts,
        "bursts_that_lost_events": run.figures.lost_incidents,
        "credits_lost_unread_cents": rig.world.lost_cents,
        "faults_raised_by_kiosk": raised,
        "final_state": str(rig.controller.state),
        "checks": run.figures.checks,
    }


def summary(result: Result) -> str:
    f = result.figures
    lines = [
        f"soak: {f['shoppers']} shoppers ({f['acceptor']}, {f['profile']}, seed {f['seed']}): "
        f"{f['simulated_hours']} h simulated in {f['wall_seconds']} s "
        f"({f['shoppers_per_wall_second']} shoppers per wall second)",
        f"sales      {f['sales']} ({f['sales_cents']} c); vends "
        + ", ".join(f"{k} {v}" for k, v in sorted(f["vends_by_outcome"].items())),
        f"coins      {f['coins']} ({f['coins_cents']} c): "
        + ", ".join(f"{k} c x {v}" for k, v in f["coins_by_value"].items()),
        f"credit     {f['donations_cents']} c donated, {f['open_credit_cents']} c open; "
        f"{f['credits_lost_unread_cents']} c lost unread by the acceptor in "
        f"{f['bursts_that_lost_events']} bursts",
        f"shoppers   {f['turned_away']} turned away; technician visits "
        f"{f['technician_visits']}; restarts {f['restarts']}",
        "injected   " + ", ".join(f"{k} {v}" for k, v in f["faults_injected"].items()),
        "raised     " + (", ".join(f"{k} {v}" for k, v in f["faults_raised_by_kiosk"].items())),
    ]
    if "telemetry" in f:
        lines.append("telemetry  " + ", ".join(f"{k} {v}" for k, v in f["telemetry"].items()))
    lines.append(f"checks     {f['checks']}; final state {f['final_state']}")
    lines.append(f"violations {len(result.violations)}")
    lines += [f"  {v}" for v in result.violations[:50]]
    return "\n".join(lines)


def _rate(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in SOAK_ODDS:
        raise argparse.ArgumentTypeError(f"no fault {name!r}; faults: {', '.join(SOAK_ODDS)}")
    try:
        odds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=ODDS, e.g. jam=0.01") from None
    if not 0 <= odds <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: odds are between 0 and 1")
    return name, odds


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--shoppers", type=int, default=100_000, metavar="N")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile",
        default=str(config_mod.DEFAULT_PROFILE),
        help="kiosk profile (default: %(default)s, ccTalk; config/sim-pulse.toml for pulse)",
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        action="append",
        default=[],
        metavar="FAULT=ODDS",
        help="odds of a fault per shopper arrival (repeatable); faults: " + ", ".join(SOAK_ODDS),
    )
    parser.add_argument(
        "--fault-scale", type=float, default=1.0, help="multiply every fault's odds (default 1)"
    )
    parser.add_argument("--arrival-s", type=float, default=ARRIVAL_MEAN_S, metavar="S")
    parser.add_argument("--check-every", type=int, default=1000, metavar="N")
    parser.add_argument(
        "--mqtt", action="store_true", help="telemetry to a private Mosquitto, with outages"
    )
    parser.add_argument(
        "--outages", type=float, default=0.002, help="--mqtt: broker outage odds per shopper"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="the kiosk's warnings too")
    args = parser.parse_args(argv)
    # The kiosk logs every fault it meets (with the ccTalk traffic around it): a soak's worth of
    # them would bury the figures. Errors are always shown.
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:  # a broker outage is a socket error to paho, by design here
        logging.getLogger("kiosk.telemetry.paho").setLevel(logging.CRITICAL)
    odds = {k: min(1.0, v * args.fault_scale) for k, v in SOAK_ODDS.items()}
    odds.update(dict(args.rate))
    config = config_mod.load(Path(args.profile))
    if config.panel.door_pin is None:
        parser.error(f"{args.profile}: the soak needs a door switch (panel.door_pin)")
    result = soak(
        config,
        args.shoppers,
        args.seed,
        odds=odds,
        arrival_mean_s=args.arrival_s,
        check_every=args.check_every,
        mqtt=args.mqtt,
        outages=args.outages,
        progress=(lambda line: None) if args.quiet else _say,
    )
    if args.json:
        print(json.dumps({**result.figures, "violation_lines": result.violations}, indent=2))
    else:
        print(summary(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
