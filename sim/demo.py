"""`kiosk demo`: the kiosk on the simulator, headless with random shoppers or in the terminal.

Interactive keys: 1 2 5 insert a coin, a b c ... press a slot button, x cancel, d open or close
the door, j then a slot key jams that slot (any other key cancels the j), q quit; with a ccTalk
acceptor also s (silence it or wake it) and r (power-cycle it). Simulated time follows the wall
clock. The display is what the simulated character LCD holds (sim.lcd), as its driver wrote it.

The demo answers the technician's commands as a daemon does (`kiosk status --db LEDGER` from
another terminal, the path shown at the bottom). Without --db the ledger is temporary, on a
memory-backed filesystem where there is one; SIGTERM and SIGHUP end either demo like a quit: the
terminal is restored and the temporary ledger removed.
"""

from __future__ import annotations

import contextlib
import curses
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from kiosk import outbox, reports
from kiosk.config import Config
from kiosk.errors import KioskError
from sim.live import catch_up, served
from sim.rig import SimKiosk
from sim.shoppers import Outcome, simulate
from sim.world import CcTalkCoinMech

SLOT_KEYS = "abcdefghijklmnop"
MEMORY_FS = Path("/dev/shm")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
DRAIN_S = 120.0  # at the end of a headless run with a broker, for the outbox to be sent


def scratch_dir(memory_fs: Path | None = None) -> str | None:
    """Where a throwaway ledger goes: $TMPDIR when the user set one, else a memory-backed
    filesystem where there is one, else the system's temporary directory (None).

    Every commit of the ledger is fsynced (synchronous=FULL): on a disk shared with other work,
    those waits made `--shoppers 2000` ten times slower. A demo's ledger need not survive a
    power cut; an explicit --db stays where the user put it.
    """
    if os.environ.get("TMPDIR"):
        return None
    memory_fs = memory_fs or MEMORY_FS
    if memory_fs.is_dir() and os.access(memory_fs, os.W_OK | os.X_OK):
        return str(memory_fs)
    return None


@contextlib.contextmanager
def _ledger_path(db: str | None) -> Iterator[Path]:
    if db:
        yield Path(db)
        return
    with tempfile.TemporaryDirectory(prefix="kiosk-demo-", dir=scratch_dir()) as tmp:
        yield Path(tmp) / "demo.db"


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM or SIGHUP unwind the demo as an exception would, through every `finally`: curses
    restores the terminal, the kiosk shuts down, the temporary ledger directory goes."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def headless(
    config: Config, shoppers: int, seed: int, db: str | None, *, as_json: bool = False
) -> int:
    if config.panel.door_pin is None:
        # The simulated technician repairs and refills through the door (maintenance is the only
        # state that takes a refill); a run without one would sell out and stay out of service.
        raise KioskError(
            f"{config.source}: the headless demo needs a door switch (panel.door_pin) for the "
            f"technician's visits; try this profile by hand with `kiosk demo -c {config.source}` "
            "in a terminal, or run --shoppers on config/sim.toml (also ccTalk)"
        )
    with _stopped_by_signals(), _ledger_path(db) as path:
        rig = SimKiosk(config, path)
        telemetry = _telemetry(rig)
        try:
            outcome = simulate(rig, shoppers, seed)
            if telemetry is not None:
                _drain(rig, telemetry)
        finally:
            if telemetry is not None:
                telemetry.close()
            rig.shutdown()
    print(
        json.dumps(_as_dict(outcome, shoppers, seed), indent=2)
        if as_json
        else summary(outcome, config, shoppers, seed)
    )
    return 0 if outcome.ok else 1


def _telemetry(rig: SimKiosk) -> Any:
    """The profile's broker, if it names one: the run publishes through it as a kiosk would."""
    if not rig.config.mqtt.enabled:
        return None
    from kiosk.telemetry import Telemetry

    telemetry = Telemetry(rig.config, rig.db_path, rig.events.put)
    rig.controller.attach(telemetry)
    telemetry.start()
    return telemetry


def _drain(rig: SimKiosk, telemetry: Any) -> None:
    """Wait (bounded) for the outbox to be sent, with a line of progress on stderr."""
    deadline = time.monotonic() + DRAIN_S
    while True:
        backlog = outbox.backlog(rig.ledger.db, rig.db_path)
        sent = backlog.rows - backlog.unsent
        print(
            f"\rtelemetry: {sent} of {backlog.rows} events sent to {telemetry.status()['broker']}",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if backlog.unsent == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(file=sys.stderr)
    if backlog.unsent:
        print(
            f"telemetry: {backlog.unsent} events still in the outbox after {DRAIN_S:.0f} s "
            "(the next run, or the daemon, sends them)",
            file=sys.stderr,
        )


def _as_dict(o: Outcome, shoppers: int, seed: int) -> dict[str, Any]:
    t = o.totals
    return {
        "shoppers": shoppers,
        "seed": seed,
        "simulated_hours": round(o.simulated_s / 3600, 2),
        "wall_seconds": round(o.wall_s, 2),
        "coins_by_value": {str(k): v for k, v in sorted(t.coins_by_value.items())},
        "coins_cents": t.coins_cents,
        "coins_from_merged_trains": t.coins_merged,
        "sales": t.sales,
        "sales_cents": t.sales_cents,
        "donations": t.donations,
        "donations_cents": t.donations_cents,
        "open_credit_cents": t.open_credit_cents,
        "vends_by_outcome": t.vends_by_outcome,
        "ledger_events": t.events_by_kind,
        "injected_faults": dict(o.tally.faults),
        "technician_visits": o.tally.technician_visits,
        "coins_returned_by_acceptor": o.truth_returned,
        "products_fallen": o.truth_delivered,
        "invariants": {c.name: c.differences for c in o.checks},
        "ok": o.ok,
    }


def summary(o: Outcome, config: Config, shoppers: int, seed: int) -> str:
    t, tally = o.totals, o.tally
    coins = ", ".join(f"{v} c x {n}" for v, n in sorted(t.coins_by_value.items())) or "none"
    failed = {k: v for k, v in t.vends_by_outcome.items() if k != "delivered"}
    lines = [
        f"kiosk {config.kiosk.id}: {shoppers} shoppers, seed {seed}, "
        f"{o.simulated_s / 3600:.1f} h simulated in {o.wall_s:.1f} s",
        f"coins      {coins} = {t.coins_cents} c"
        + (f" ({t.coins_merged} read from merged trains)" if t.coins_merged else ""),
        f"sales      {t.sales} ({t.sales_cents} c)",
        f"donations  {t.donations} ({t.donations_cents} c) to {config.credit.beneficiary or '-'}",
        f"credit     {t.open_credit_cents} c open",
        "failed     " + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"),
        "faults     " + (", ".join(f"{k} {v}" for k, v in sorted(tally.faults.items())) or "none"),
        f"shoppers   {tally.turned_away} turned away, {tally.walked_away} walked away, "
        f"{tally.cancelled} cancelled; technician visits {tally.technician_visits}",
        f"world      {o.truth_cashbox_cents} c in the cash box, {o.truth_returned} coins handed "
        f"back, {o.truth_delivered} products fell",
        "ledger     " + ", ".join(f"{k} {v}" for k, v in t.events_by_kind.items()),
        "invariants",
    ]
    for check in o.checks:
        lines.append(f"  {check.name}: {'ok' if check.ok else 'FAILED'}")
        lines.extend(f"    {d}" for d in check.differences)
    return "\n".join(lines)


# --- the terminal demo ------------------------------------------------------------------------


def interactive(config: Config, db: str | None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise KioskError("kiosk demo needs a terminal; for a headless run use --shoppers N")
    with _stopped_by_signals(), _ledger_path(db) as path:
        rig = SimKiosk(config, path)
        try:
            with served(rig):
                curses.wrapper(Screen(rig).loop)
        finally:
            rig.shutdown()
    return 0


class Screen:
    """The terminal demo: keys in, the kiosk's display, slots and ledger out."""

    def __init__(self, rig: SimKiosk) -> None:
        self.rig = rig
        self.slot_keys = {SLOT_KEYS[i]: s.id for i, s in enumerate(rig.config.slots)}
        self.jam_next = False
        self.note = ""

    def loop(self, screen: Any) -> None:
        curses.curs_set(0)
        screen.timeout(50)
        started = time.monotonic() - self.rig.clock.now
        while True:
            key = screen.getch()
            if key == ord("q"):
                return
            if key != -1:
                self.key(chr(key) if 0 <= key < 256 else "")
            catch_up(self.rig, started)
            self.draw(screen)

    def key(self, key: str) -> None:
        world = self.rig.world
        if self.jam_next and key not in self.slot_keys:
            # The key answered "jam which slot?": it cancels the jam and does nothing else.
            self.jam_next = False
            self.note = "jam cancelled"
            return
        if key in "125":
            accepted = world.insert_coin(int(key))
            self.note = f"{key} c coin " + ("accepted" if accepted else "handed back")
        elif key in self.slot_keys:
            slot = self.slot_keys[key]
            if self.jam_next:
                world.jam(slot, not world.spirals[slot].jammed)
                self.note = f"slot {slot} " + ("jammed" if world.spirals[slot].jammed else "freed")
                self.jam_next = False
            else:
                world.press(slot)
                self.note = f"button {slot} pressed"
        elif key == "x":
            world.cancel()
            self.note = "cancel pressed"
        elif key == "d" and world.door is None:
            self.note = "this kiosk has no door switch (panel.door_pin)"
        elif key == "d":
            if world.door_open:
                world.close_door()
                self.note = "door closed"
            else:
                world.open_door()
                world.repair()
                self.note = "door open (jams repaired)"
        elif key == "j":
            self.jam_next = True
            self.note = "jam which slot?"
        elif key in "sr" and isinstance(world.coins, CcTalkCoinMech):
            device = world.coins.device
            if key == "s":
                device.silent = not device.silent
                self.note = "acceptor " + ("silent" if device.silent else "answering")
            else:
                device.power_cycle()
                self.note = "acceptor power-cycled"

    def draw(self, screen: Any) -> None:
        rig, ctl = self.rig, self.rig.controller
        screen.erase()
        # What the simulated module shows, read from its memory; else the lines the kiosk set.
        lcd = rig.world.lcd
        shown = list(rig.display) if lcd is None else lcd.screen
        width = rig.config.display.columns
        rows = [
            f"Centimeo {rig.config.kiosk.id}   simulated {rig.clock.now:7.1f} s   "
            f"coin acceptor: {rig.config.coin_acceptor.driver}   "
            f"display: {rig.config.display.driver}",
            "+" + "-" * (width + 2) + "+",
            *(f"| {row:<{width}} |" for row in shown),
            "+" + "-" * (width + 2) + "+" + ("" if lcd is None or lcd.backlight else " (dark)"),
            f"state {ctl.state}   credit {ctl.credit_cents} c   "
            f"coins {'enabled' if rig.hardware.acceptor.is_accepting else 'inhibited'}",
            "",
        ]
        for i, slot in enumerate(ctl.slots.values()):
            led = "*" if rig.hardware.panel.led_is_lit(slot.slot) else "."
            fault = f" fault: {slot.fault}" if slot.fault else ""
            rows.append(
                f" [{SLOT_KEYS[i]}] LED {led} {slot.product:<14} {slot.price_cents:>3} c  "
                f"stock {slot.quantity}/{slot.capacity}{fault}"
            )
        rows += ["", "ledger, newest first:"]
        rows += [
            f"  {at[11:19]} {what:<18} {'' if s is None else 'slot ' + str(s)} {detail}"
            for at, what, s, detail in reports.recent_events(rig.ledger.db, 6)
        ]
        door = "  d door" if rig.world.door is not None else ""
        keys = f"keys: 1 2 5 coin  a b c.. slot  x cancel{door}  j jam  q quit"
        if isinstance(rig.world.coins, CcTalkCoinMech):
            keys += "  s silence  r reset acceptor"
        rows += ["", keys, f"technician, from another terminal: kiosk status --db {rig.db_path}"]
        rows += [self.note]
        height, cols = screen.getmaxyx()
        for y, row in enumerate(rows[: height - 1]):
            screen.addstr(y, 0, row[: cols - 1])
        screen.refresh()
