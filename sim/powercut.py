"""The power-cut harness: the real daemon in its own process, killed with SIGKILL at random moments,
restarted, and checked against the ground truth of a world that kept its own power.

    python -m sim.powercut [--cycles N] [--seed S] [--profile cctalk|pulse|both] [--dir D]

ccTalk: the simulated acceptor runs as its own process (sim.cctalk_device, a pseudo-terminal at a
fixed path, orders on a Unix socket) and keeps crediting coins while the kiosk is down: more than
five and the oldest fall off its buffer. Pulse: the acceptor is wired to the kiosk's pins and
sends trains in the kiosk's process, so a train cut by the kill is a coin no kiosk can count.
Both have spirals and a drop beam (sim.powercut_world), and telemetry to a private Mosquitto.

Each cycle starts the daemon, waits for coins to be enabled, checks every invariant, then kills
the daemon in one of these moments: a burst of coins; the ledger write of a coin just read; a
vend in progress; the outbox send after a sale. While it is down, coins may arrive (ccTalk) and
the acceptor may be power-cycled. Checked after every restart: `kiosk verify`; every coin the
acceptor credited in the ledger exactly once, unless it fell off the buffer while the kiosk was
down (then the kiosk reported lost events) or its train was cut (pulse); no sale without a
product fallen; nothing charged for an interrupted vend (no sale for it, and a recount flagged);
stock against the products really left. At the end, every outbox row reached the broker. The
checks and the figures are in sim.powercut_checks.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sim.cctalk_device import OrderLink
from sim.powercut_checks import (
    CAPACITY,
    PHASES,
    PRICES,
    SETTLE_S,
    Figures,
    Inspector,
    Ledger,
    Subscriber,
    wait_until,
)
from sim.powercut_world import REVOLUTION_S

READY_S = 20.0  # ceiling for a daemon to start and enable coins (a loaded machine)
SHOPPER_S = 0.15  # between two coins from a shopper in a hurry
# Slow trains: the mock pins see an edge when the world's thread gets to it, so a busy machine
# stretches gaps by tens of milliseconds (lgpio on a Pi timestamps edges in the kernel instead).
END_GAP_MS = 500


def profile_text(kind: str, db: Path, port: Path, broker: tuple[str, int] | None) -> str:
    slots = "".join(
        f"""
[[slots]]
id = {slot}
product = "Product {slot}"
price_cents = {price}
capacity = {CAPACITY}
motor_pin = {motor}
home_pin = {home}
button_pin = {button}
led_pin = {led}
"""
        for (slot, price), (motor, home, button, led) in zip(
            PRICES.items(), [(5, 6, 13, 19), (12, 16, 20, 18), (22, 23, 24, 25)], strict=True
        )
    )
    if kind == "cctalk":
        acceptor = f"""driver = "cctalk"
port = "{port}"
address = 2
checksum = "8bit"
echo = "auto"
poll_interval_ms = 150
"""
    else:
        acceptor = f"""driver = "pulse"
coin_pin = 17
inhibit_pin = 27
pulse_ms = 100
gap_ms = 200
end_gap_ms = {END_GAP_MS}
pulses = {{ 1 = 2, 2 = 3, 5 = 4 }}
"""
    mqtt = "" if broker is None else f'\n[mqtt]\nhost = "{broker[0]}"\nport = {broker[1]}\n'
    return f"""[kiosk]
id = "powercut-{kind}"
name = "Centimeo"
language = "en"
accepted_coins_cents = [1, 2, 5]

[credit]
inactivity_timeout_s = 3600
leftover = "keep"

[ledger]
path = "{db}"

[panel]
cancel_pin = 26

[dispenser]
drop_pin = 4
max_run_s = 8
drop_wait_s = 1.5
retry_turns = 1
{slots}
[coin_acceptor]
{acceptor}{mqtt}"""


class Campaign:
    """One kiosk (one ledger, one world, one acceptor) through `cycles` power cuts."""

    def __init__(
        self,
        kind: str,
        directory: Path,
        seed: int,
        broker: tuple[str, int] | None = None,
        downtime_coins: int | None = None,
    ) -> None:
        self.kind = kind
        self.downtime_coins = downtime_coins  # coins after every kill; None: now and then
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.figures = Figures()
        self.db = self.dir / "kiosk.db"
        self.ledger = Ledger(self.db)
        self.journal = self.dir / "world.jsonl"
        self.world_sock = str(self.dir / "world.sock")
        self.port = self.dir / "ttyCCTALK"
        self.profile = self.dir / "kiosk.toml"
        self.profile.write_text(profile_text(kind, self.db, self.port, broker))
        self.log = (self.dir / "daemon.log").open("a")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.device: subprocess.Popen[bytes] | None = None
        self.acceptor: OrderLink | None = None
        self.world: OrderLink | None = None
        self.cycle = 0
        self.subscriber = None if broker is None else Subscriber(*broker, f"powercut-{kind}")
        if kind == "cctalk":
            self._start_device()
        self.inspector = Inspector(
            kind, self.ledger, self.journal, self.acceptor, self.figures, self.violation
        )

    # --- processes -----------------------------------------------------------------------

    def _start_device(self) -> None:
        control = str(self.dir / "acceptor.sock")
        self.device = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim.cctalk_device",
                "--link",
                str(self.port),
                "--control",
                control,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.device.stdout is not None
        if self.device.stdout.readline() != b"ready\n":
            raise RuntimeError("the simulated acceptor did not start")
        self.acceptor = OrderLink(control)

    def _spawn(self) -> float:
        if self.acceptor is not None:
            self.acceptor("expect_start")
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        spawned = time.monotonic()
        self.daemon = subprocess.Popen(
            [
                *(sys.executable, "-m", "sim.powercut_world", str(self.profile)),
                *("--journal", str(self.journal), "--world", self.world_sock),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return spawned

    def _connect_world(self) -> bool:
        def up() -> bool:
            if self.daemon is not None and self.daemon.poll() is not None:
                return True
            try:
                self.world = OrderLink(self.world_sock)
            except OSError:
                return False
            return True

        return wait_until(up, READY_S) and self.world is not None

    def _kill(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()
        with self.journal.open("a") as fh:
            fh.write(json.dumps({"t": time.monotonic(), "ev": "power_cut"}) + "\n")
        if self.world is not None:
            self.world.close()
            self.world = None

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=READY_S)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.world is not None:
            self.world.close()
        if self.acceptor is not None:
            self.acceptor.close()
        if self.device is not None:
            self.device.send_signal(signal.SIGTERM)
            try:
                self.device.wait(timeout=READY_S)
            except subprocess.TimeoutExpired:
                self.device.kill()
                self.device.wait()
        if self.subscriber is not None:
            self.subscriber.close()
        self.log.close()

    # --- one cycle -----------------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.figures.violations.append(f"{self.kind} cycle {self.cycle}: {text}")

    def run(self, cycles: int, phases: list[str] | None = None, first: int = 0) -> Figures:
        """`cycles` lives of the daemon, each killed in a phase drawn at random, or taken in turn
        from `phases` (starting at index `first`)."""
        for self.cycle in range(1, cycles + 1):
            if not self._start():
                self._kill()
                continue
            self.inspector.check()
            if phases:
                phase = phases[(first + self.cycle - 1) % len(phases)]
            else:
                phase = self.rng.choice(PHASES)
            self.figures.kills[phase] += 1
            getattr(self, f"_kill_{phase}")()
            self._after_kill()
            self.figures.cycles += 1
        self._final()
        return self.figures

    def _start(self) -> bool:
        spawned = self._spawn()
        if self.acceptor is not None:
            at = self.acceptor("wait_first_229", timeout_s=READY_S)["at"]
            if at is None:
                self.violation("no 229 from the daemon")
                return False
            self.figures.first_229_s.append(at - spawned)
        if not self._connect_world() or not wait_until(self._coins_enabled, READY_S, 0.03):
            self.violation("the daemon did not enable coins after its start")
            return False
        return True

    def _coins_enabled(self) -> bool:
        if self.daemon is not None and self.daemon.poll() is not None:
            return True  # it died: the check says so
        if self.kiosk_state() not in ("idle", "credit"):
            return False
        if self.acceptor is not None:
            truth = self.acceptor("truth")
            return bool(truth["master_enabled"] and truth["masks"] and truth["all_read"])
        assert self.world is not None
        return bool(self.world("truth")["coins_enabled"])

    def kiosk_state(self) -> str | None:
        """The daemon's state, as `kiosk status` tells it through the control socket."""
        from kiosk import cli

        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(io.StringIO()):
            status = cli.main(["status", "--json", "-c", str(self.profile)])
        if status != 0:
            return None
        state: str | None = json.loads(said.getvalue()).get("state")
        return state

    def _after_kill(self) -> None:
        if self.acceptor is None:
            return
        self.acceptor("host_down", counter=self.ledger.cursor_counter())
        if self.rng.random() < 0.05:
            self.acceptor("power_cycle")
        count = self.downtime_coins
        if count is None:
            count = self.rng.randint(1, 9) if self.rng.random() < 0.5 else 0
        if count:
            coins = [self.rng.choice((1, 2, 5)) for _ in range(count)]
            self.acceptor("insert", coins=coins)
            self.figures.coins += len(coins)

    # --- the kills -----------------------------------------------------------------------

    def _insert(self, coins: list[int]) -> list[float | None]:
        """Coins into the acceptor; for a pulse acceptor, when each train ends."""
        self.figures.coins += len(coins)
        if self.acceptor is not None:
            self.acceptor("insert", coins=coins)
            return [None] * len(coins)
        assert self.world is not None
        done: list[float | None] = self.world("insert", coins=coins)["done"]
        return done

    def _kill_burst(self) -> None:
        coins = [self.rng.choice((1, 2, 5)) for _ in range(self.rng.randint(3, 10))]
        if self.acceptor is not None:
            spacing_s = self.rng.uniform(0.1, 0.4)  # a shopper feeding coins fast
            cut_at = time.monotonic() + self.rng.uniform(0, spacing_s * len(coins))
            for coin in coins:
                if time.monotonic() >= cut_at:
                    break
                self._insert([coin])
                time.sleep(min(spacing_s, max(0.0, cut_at - time.monotonic())))
        else:
            ends = [d for d in self._insert(coins) if d is not None]
            if ends:
                time.sleep(self.rng.uniform(0, max(0.0, max(ends) - time.monotonic())))
        self._kill_noting()

    def _kill_ledger_write(self) -> None:
        coins = [self.rng.choice((1, 2, 5)) for _ in range(self.rng.randint(1, 2))]
        if self.acceptor is not None:
            reads = int(self.acceptor("truth")["reads"])
            self._insert(coins)
            self.acceptor("wait_read", after=reads, timeout_s=READY_S)
            time.sleep(self.rng.uniform(0, 0.015))  # the coin is being written
        else:
            ends = [d for d in self._insert(coins) if d is not None]
            if ends:
                decoded = max(ends) + END_GAP_MS / 1000
                time.sleep(max(0.0, decoded - time.monotonic()) + self.rng.uniform(0, 0.03))
        self._kill_noting()

    def _pay_and_press(self) -> int | None:
        """Credit for a product in stock, then its button: the drops before the vend."""
        assert self.world is not None
        truth = self.world("truth")
        slots = [int(s) for s, n in truth["stock"].items() if n > 0]
        if not slots:
            return None
        slot = self.rng.choice(slots)
        price = PRICES[slot]
        missing = price - self.ledger.credit_cents()
        coins: list[int] = []
        while sum(coins) < missing:
            coins.append(self.rng.choice((1, 2, 5, 5)))
        if coins:
            if self.acceptor is not None:
                for coin in coins:  # a shopper's pace: the acceptor keeps five events
                    self._insert([coin])
                    time.sleep(SHOPPER_S)
            else:
                self._insert(coins)  # the pulse acceptor takes one coin at a time
            if not wait_until(lambda: self.ledger.credit_cents() >= price, SETTLE_S + 20):
                self.violation(f"credit {self.ledger.credit_cents()} c never reached {price} c")
                return None
        drops = int(truth["drops"])
        self.world("press", slot=slot)
        return drops

    def _kill_vend(self) -> None:
        assert self.world is not None
        if self._pay_and_press() is not None:
            self.world("wait_turning", timeout_s=SETTLE_S)
            # Before the cam is home again, when the sale would be recorded: still mid-vend,
            # and from 0.85 of the turn on, the product has fallen.
            time.sleep(self.rng.uniform(0, REVOLUTION_S * 0.95))
        self._kill_noting()

    def _kill_outbox(self) -> None:
        assert self.world is not None
        sales = int(self.ledger.one("SELECT count(*) FROM sales") or 0)
        if self._pay_and_press() is not None:
            wait_until(
                lambda: int(self.ledger.one("SELECT count(*) FROM sales") or 0) > sales,
                SETTLE_S,
                0.005,
            )
            time.sleep(self.rng.uniform(0, 0.03))  # the publisher sends the sale's rows
        self._kill_noting()

    def _kill_noting(self) -> None:
        self._kill()
        if self.ledger.one("SELECT count(*) FROM vends WHERE outcome = 'pending'"):
            self.figures.mid_vend += 1
        if self.ledger.unacked() > 0:
            self.figures.unsent += 1
        self.inspector.note_kill()

    # --- the checks ----------------------------------------------------------------------

    def _final(self) -> None:
        """A last start: every invariant once more, then the outbox drained to the broker."""
        self.cycle += 1
        if not self._start():
            self._kill()
            return
        self.inspector.check()
        if self.subscriber is not None:
            subscriber = self.subscriber
            rows = {int(s) for (s,) in self.ledger.rows("SELECT seq FROM outbox")}
            if not wait_until(lambda: rows <= subscriber.seen(), SETTLE_S * 3, 0.05):
                missing = sorted(rows - subscriber.seen())
                self.violation(f"outbox rows never delivered: {missing[:20]}")


def run(
    cycles: int,
    seed: int,
    profiles: list[str],
    directory: Path,
    broker: bool = True,
    phases: list[str] | None = None,
    downtime_coins: int | None = None,
) -> Figures:
    """The cycles shared among the profiles in turn; `phases`, if given, taken in turn across
    them."""
    figures = Figures()
    with contextlib.ExitStack() as stack:
        address = None
        if broker:
            from sim.mosquitto import Mosquitto

            mosquitto = stack.enter_context(Mosquitto(directory / "mosquitto"))
            address = (mosquitto.host, mosquitto.port)
        done = 0
        for i, kind in enumerate(profiles):
            share = cycles // len(profiles) + (1 if i < cycles % len(profiles) else 0)
            campaign = Campaign(kind, directory / kind, seed + i, address, downtime_coins)
            stack.callback(campaign.close)
            figures.add(campaign.run(share, phases, done))
            done += share
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.powercut", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", choices=["cctalk", "pulse", "both"], default="both")
    parser.add_argument(
        "--dir", help="where the ledgers, journals and logs go (default: a temporary one)"
    )
    parser.add_argument("--no-broker", action="store_true", help="telemetry off")
    parser.add_argument(
        "--phases", help=f"kill in these phases in turn (comma-separated, of {', '.join(PHASES)})"
    )
    parser.add_argument(
        "--downtime", type=int, help="coins into the acceptor after every kill (default: random)"
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args(argv)
    phases = args.phases.split(",") if args.phases else None
    if phases and not set(phases) <= set(PHASES):
        parser.error(f"--phases: choose among {', '.join(PHASES)}")
    profiles = ["cctalk", "pulse"] if args.profile == "both" else [args.profile]
    with contextlib.ExitStack() as stack:
        if args.dir is None:
            import tempfile

            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="powercut-")))
        else:
            directory = Path(args.dir)
        figures = run(
            args.cycles,
            args.seed,
            profiles,
            directory,
            not args.no_broker,
            phases,
            args.downtime,
        )
    print(json.dumps(vars(figures), indent=2) if args.json else figures.report())
    return 1 if figures.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
