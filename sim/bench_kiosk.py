"""The kiosk's own benchmarks of `python -m sim.bench kiosk`, each against a baseline run in the
same invocation on the same machine and disk:

  coin_to_credit_p50_ms, _p99_ms: `kiosk run` as its own process (mock pins) polling the
    simulated ccTalk acceptor on a pseudo-terminal at 9600-baud byte timing; from the acceptor
    crediting a coin (at a random moment of the poll cycle) to the coin's row committed, as a
    reader of the ledger sees it (goal: p99 <= poll interval + 229 wire time + 5 ms).
  stack_coins_per_s: coins handed to the core as fast as it takes them, each written with
    synchronous=FULL, none lost (goal >= 100); ledger_commit_ratio: the median coin's write
    against a bare sqlite3 insert and commit with the same pragmas on the same disk, in
    alternate blocks, each side past its first WAL checkpoint (goal <= 1.5).
  idle_cpu_ratio, idle_rss_mb: the daemon polling an idle acceptor for `idle_s`, against a bare
    pyserial loop sending the same 229 poll at the same interval to the same simulated acceptor
    (goal <= 2.0, <= 45 MB).
  startup_s: from the daemon's process start to the first 229 poll the acceptor receives
    (goal <= 1.5), with the import time of each dependency.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drivers.base import CoinAccepted
from drivers.cctalk_codec import Checksum, Frame, encode
from kiosk import config as config_mod
from sim.bench_mqtt import percentile
from sim.cctalk_device import SimCcTalkAcceptor
from sim.rig import SimKiosk

BAUD = 9600
POLL_BYTES = 5 + 16  # the 229 request and its reply of 11 data bytes
WATCH_S = 0.001  # how often the ledger is looked at for a new coin
START_TIMEOUT_S = 30.0
SETTLE_S = 1.0  # after a start, before the idle time is measured
BLOCKS = 4  # alternate blocks of kiosk and bare writes
# Writes before the timed ones, on each side: enough for either WAL to fill to SQLite's checkpoint
# (1000 pages) and start again from its beginning, as on a kiosk that has run for a while. A WAL
# still growing costs each commit a file extension, and the kiosk's WAL, a few pages a coin, gets
# past that sooner than the bare one, a page a commit: timed cold, the two were not alike.
WARM_UP_WRITES = 1500
DEPENDENCIES = {  # what the daemon imports of each (paho only where telemetry is on)
    "pyserial": "serial",
    "gpiozero": "gpiozero",
    "transitions": "transitions",
    "sqlite_utils": "sqlite_utils",
    "paho": "paho.mqtt.client",
}
PAGE_KB = os.sysconf("SC_PAGE_SIZE") / 1024
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


class TimedAcceptor(SimCcTalkAcceptor):
    """The simulated acceptor, noting when it hears its first 229 poll."""

    first_poll_at: float | None = None

    def _handle(self, header: int, data: bytes) -> bytes | None:
        if header == 229 and self.first_poll_at is None:
            self.first_poll_at = time.monotonic()
        return super()._handle(header, data)


def profile(
    tmp: Path, port: str, db: Path, poll_ms: int | None = None, name: str = "bench.toml"
) -> Path:
    """config/cctalk-bench.toml on `port` with its ledger at `db` (and its poll interval), written
    to `tmp`/`name`."""
    text = (config_mod.CONFIG_DIR / "cctalk-bench.toml").read_text()
    text = text.replace('port = "/dev/ttyUSB0"', f'port = "{port}"')
    text = text.replace('path = "bench.db"', f'path = "{db}"')
    if poll_ms is not None:
        text = re.sub(r"poll_interval_ms = \d+", f"poll_interval_ms = {poll_ms}", text)
    path = tmp / name
    path.write_text(text)
    return path


@contextmanager
def daemon(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "run", "-c", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Any, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        time.sleep(0.005)


def coins_in(db: sqlite3.Connection) -> int:
    try:
        return int(db.execute("SELECT count(*) FROM coins").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE_KB / 1024


# --- a coin's way to the ledger -------------------------------------------------------------


def bench_coin_to_credit(coins: int, poll_ms: int, seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        device = TimedAcceptor(echo=False, wire_timing=True, baud=BAUD)
        db_path = tmp / "kiosk.db"
        try:
            with daemon(profile(tmp, device.path, db_path, poll_ms)):
                wait_for(lambda: device.master_enabled and db_path.exists(), "coins enabled")
                ledger = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
                try:
                    for n in range(coins):
                        time.sleep(rng.uniform(0, 2 * poll_ms / 1000))  # any moment of a cycle
                        before, credited_at = coins_in(ledger), time.monotonic()
                        if not device.insert(rng.choice((1, 2, 5))):
                            raise RuntimeError(f"coin {n} handed back: is the kiosk accepting?")
                        while coins_in(ledger) == before:
                            if time.monotonic() - credited_at > START_TIMEOUT_S:
                                raise TimeoutError(f"coin {n} never reached the ledger")
                            time.sleep(WATCH_S)
                        latencies.append(time.monotonic() - credited_at)
                finally:
                    ledger.close()
        finally:
            device.close()
    wire_ms = POLL_BYTES * 10 / BAUD * 1000
    return {
        "coins": coins,
        "poll_interval_ms": poll_ms,
        "wire_229_ms": wire_ms,
        "coin_to_credit_p50_ms": statistics.median(latencies) * 1000,
        "coin_to_credit_p99_ms": percentile(latencies, 0.99) * 1000,
        "coin_to_credit_max_ms": max(latencies) * 1000,
        "coin_to_credit_goal_ms": poll_ms + wire_ms + 5,
    }


# --- the ledger under a stack of coins ------------------------------------------------------


BARE_PRAGMAS = (
    "journal_mode=WAL",
    "journal_size_limit=4194304",
    "synchronous=FULL",
    "foreign_keys=ON",
)


def bare_writes(db: sqlite3.Connection, count: int) -> list[float]:
    """A bare sqlite3 insert and commit per coin on `db` (see bare_ledger)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO coins (at, v) VALUES (?, ?)", ["2026-12-02T10:00:00Z", 5])
        db.execute("COMMIT")
        times.append(time.perf_counter() - started)
    return times


def bare_ledger(path: Path) -> sqlite3.Connection:
    """The baseline's database, with the ledger's pragmas (kiosk.schema.connect). It stays open
    for the whole benchmark, as the kiosk's ledger does: the last connection to close deletes
    the WAL, and the next would time a new one growing."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in BARE_PRAGMAS:
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE IF NOT EXISTS coins (id INTEGER PRIMARY KEY, at TEXT, v INTEGER)")
    return db


def hand_over(rig: SimKiosk, coins: int) -> None:
    for _ in range(coins):
        rig.events.put(CoinAccepted(5, rig.clock.monotonic()))
    rig.run_for(0)  # every coin handled, none left in the queue


def bench_stack(coins: int) -> dict[str, float]:
    config = config_mod.load(config_mod.DEFAULT_PROFILE, env={})
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rig = SimKiosk(config, tmp / "kiosk.db")
        writes: list[float] = []
        record = rig.ledger.record_coin

        def timed_record(*args: Any) -> int:
            started = time.perf_counter()
            try:
                return record(*args)
            finally:
                writes.append(time.perf_counter() - started)

        bare: list[float] = []
        elapsed = 0.0
        baseline = bare_ledger(tmp / "bare.db")
        try:
            hand_over(rig, WARM_UP_WRITES)
            bare_writes(baseline, WARM_UP_WRITES)
            rig.ledger.record_coin = timed_record  # type: ignore[method-assign,assignment]
            per_block = max(1, coins // BLOCKS)
            for _ in range(BLOCKS):
                started = time.perf_counter()
                hand_over(rig, per_block)
                elapsed += time.perf_counter() - started
                bare += bare_writes(baseline, per_block)
            stored = rig.ledger.db.execute("SELECT count(*) FROM coins").fetchone()[0]
        finally:
            baseline.close()
            rig.shutdown()
    taken = per_block * BLOCKS
    if stored != WARM_UP_WRITES + taken:
        raise RuntimeError(f"{taken} coins handed to the core, {stored} in the ledger")
    return {
        "stack_coins": taken,
        "stack_coins_per_s": taken / elapsed,
        "coin_write_p50_ms": statistics.median(writes) * 1000,
        "bare_commit_p50_ms": statistics.median(bare) * 1000,
        "ledger_commit_ratio": statistics.median(writes) / statistics.median(bare),
    }


# --- idle, and back after a start ------------------------------------------------------------

BARE_POLLER = """
import sys, time, serial
port, request = sys.argv[1], bytes.fromhex(sys.argv[2])
period, seconds = float(sys.argv[3]), float(sys.argv[4])
line = serial.Serial(port, 9600, timeout=0.5)
due = time.monotonic()
end = due + seconds
while due < end:
    line.write(request)
    line.read(16)
    due += period
    time.sleep(max(0.0, due - time.monotonic()))
"""


def bench_idle(idle_s: float, poll_ms: int) -> dict[str, float]:
    request = encode(Frame(2, 229), Checksum.SIMPLE).hex()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        device = TimedAcceptor(echo=False, wire_timing=True, baud=BAUD)
        try:
            with daemon(profile(tmp, device.path, tmp / "kiosk.db", poll_ms)) as kiosk:
                wait_for(lambda: device.master_enabled, "coins enabled")
                time.sleep(SETTLE_S)  # the start-up's work done
                before = cpu_s(kiosk.pid)
                time.sleep(idle_s)
                kiosk_cpu, kiosk_rss = cpu_s(kiosk.pid) - before, rss_mb(kiosk.pid)
            args = [device.path, request, str(poll_ms / 1000), str(idle_s + 2 * SETTLE_S)]
            bare = subprocess.Popen([sys.executable, "-c", BARE_POLLER, *args])
            time.sleep(SETTLE_S)  # its imports done, as the daemon's start-up was
            before = cpu_s(bare.pid)
            time.sleep(idle_s)
            bare_cpu, bare_rss = cpu_s(bare.pid) - before, rss_mb(bare.pid)
            bare.wait(START_TIMEOUT_S)
        finally:
            device.close()
    return {
        "idle_s": idle_s,
        "idle_cpu_pct": kiosk_cpu / idle_s * 100,
        "idle_bare_cpu_pct": bare_cpu / idle_s * 100,
        "idle_cpu_ratio": kiosk_cpu / max(TICK_S, bare_cpu),
        "idle_rss_mb": kiosk_rss,
        "idle_bare_rss_mb": bare_rss,
    }


def bench_startup(starts: int, poll_ms: int) -> dict[str, float]:
    times = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for _ in range(starts):
            device = TimedAcceptor(echo=False, wire_timing=True, baud=BAUD)
            try:
                spawned = time.monotonic()
                with daemon(profile(tmp, device.path, tmp / "kiosk.db", poll_ms)):
                    wait_for(lambda d=device: d.first_poll_at is not None, "229 poll")
                    assert device.first_poll_at is not None
                    times.append(device.first_poll_at - spawned)
            finally:
                device.close()
    figures = {"starts": starts, "startup_s": statistics.median(times), "startup_max_s": max(times)}
    return figures | import_times()


def import_times() -> dict[str, float]:
    """Each dependency's import time on its own (ms, with what it imports), from
    `python -X importtime` in a fresh interpreter each."""
    found = {}
    for name, module in DEPENDENCIES.items():
        said = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        last = said.strip().splitlines()[-1]  # the module itself, everything it needed inside
        found[f"import_{name}_ms"] = int(last.split("|")[1]) / 1000
    return found
