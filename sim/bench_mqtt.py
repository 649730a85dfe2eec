"""The telemetry benchmarks of `python -m sim.bench mqtt`: a private Mosquitto (sim/mosquitto.py),
and ratios to baselines run in the same invocation on the same broker.

  mqtt_drain_ratio: kiosk.telemetry draining a backlog of N outbox rows (until its in-memory
    watermark covers them all; the marks written are checked after), against a bare paho loop
    publishing the same N payloads at QoS 1 with the same window, from connecting to the last
    PUBACK (goal >= 0.8). Each runs twice, alternately, and the best of each is kept; the CPU
    time of the whole process per event is shown beside each rate.
  sale_latency_mqtt_ratio: the core thread's handling of a delivered vend on the simulated pulse
    kiosk (the sale written with synchronous=FULL, the slots, screen and telemetry updated), with
    telemetry publishing to the broker against none, in alternate blocks of five sales, each
    vend's end handled after 20 ms of real time with the publisher caught up (a real vend takes
    seconds: see SaleTimer); the ratio of the medians (goal <= 1.05), with p95, the core
    thread's CPU time and the ledger's complete_sale alone on each side.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import queue
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.base import VendFinished, VendOutcome
from kiosk import config as config_mod
from kiosk import outbox
from kiosk.events import Refill
from kiosk.ledger import Ledger
from kiosk.telemetry import WINDOW, Telemetry
from sim import mosquitto
from sim.rig import SimKiosk

WATCH_S = 0.01  # how often progress is looked at (a look costs about 0.1 ms)
ROUNDS = 2  # each side of the drain, alternately; the best of each kept
BLOCK = 5  # sales in a row with telemetry on, then as many off, and so on
VEND_GAP_S = 0.02  # real time given back before each timed vend end (see SaleTimer)
COIN_S = 2.5  # simulated: long enough for the longest pulse train (5 c) to be read
VEND_S = 12.0  # simulated: a vend and its drop, with room to spare


def mqtt_config(broker: mosquitto.Mosquitto, ledger: Path) -> config_mod.Config:
    at = {"mqtt.host": broker.host, "mqtt.port": broker.port, "ledger.path": str(ledger)}
    return config_mod.load(config_mod.PULSE_PROFILE, env={}, **at)


def write_backlog(config: config_mod.Config, path: Path, events: int) -> list[tuple[str, str]]:
    """A booted ledger holding `events` sale rows in its outbox, written as complete_sale writes
    them but in one transaction; returns each row's topic and payload as the kiosk sends it."""
    ledger = Ledger(path, lambda: datetime.now(UTC))
    try:
        ledger.boot(config.kiosk.id)
        ledger.sync_slots(config.slots)
        with ledger._tx() as at:
            for n in range(1, events + 1):
                slot = config.slots[n % len(config.slots)]
                body = {"sale_id": n, "vend_id": n, "slot": slot.id, "product": slot.product}
                money = {"price_cents": slot.price_cents, "credit_left_cents": 0}
                ledger._outbox(at, "sale", body | money)
        rows = outbox.rows_after(ledger.db, 0, events + 1)
    finally:
        ledger.close()
    base = f"{config.mqtt.prefix}/{config.kiosk.id}"
    return [
        (f"{base}/event/{row.kind}", json.dumps(row.message(config.kiosk.id, historical=True)))
        for row in rows
    ]


def kiosk_drain(config: config_mod.Config, ledger: Path, last_seq: int, timeout_s: float) -> float:
    """Seconds from starting Telemetry to the PUBACK that completes every row up to `last_seq`
    (as the bare loop is timed to its last PUBACK), watched in memory, which costs the publisher
    nothing; then, stopped, those rows must be marked sent, the marks read the way
    `kiosk telemetry` reads them."""
    submitted: queue.Queue[Any] = queue.Queue()  # the core's queue: a fault would land here
    telemetry = Telemetry(config, ledger, submitted.put)
    started = time.perf_counter()
    telemetry.start()
    try:
        while telemetry.status()["acked_up_to"] < last_seq:
            if time.perf_counter() - started > timeout_s:
                status = telemetry.status()
                raise TimeoutError(f"outbox not drained in {timeout_s} s: {status}")
            time.sleep(WATCH_S)
        elapsed = time.perf_counter() - started
    finally:
        telemetry.close()
    marked = outbox.sent_up_to(ledger)
    if marked != last_seq:
        raise RuntimeError(f"{last_seq} rows acknowledged but marks up to {marked} written")
    return elapsed


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """(seconds `run` reports, CPU seconds of this whole process meanwhile)."""
    cpu = time.process_time()
    elapsed = run()
    return elapsed, time.process_time() - cpu


def bench_drain(broker: mosquitto.Mosquitto, events: int, tmp: Path) -> dict[str, float]:
    backlog = tmp / "backlog.db"
    config = mqtt_config(broker, backlog)
    messages = write_backlog(config, backlog, events)
    last_seq = len(messages)
    timeout_s = 30 + events / 100
    kiosk, bare = [], []
    for n in range(ROUNDS):
        ledger = tmp / f"drain{n}.db"  # a fresh copy: nothing marked sent yet
        shutil.copyfile(backlog, ledger)
        config = mqtt_config(broker, ledger)
        kiosk.append(timed(functools.partial(kiosk_drain, config, ledger, last_seq, timeout_s)))
        publish = functools.partial(mosquitto.bare_publish, broker.host, broker.port)
        bare.append(timed(functools.partial(publish, messages, WINDOW, timeout_s)))
    (kiosk_s, kiosk_cpu_s), (bare_s, bare_cpu_s) = min(kiosk), min(bare)
    return {
        "drain_events": events,
        "window": WINDOW,
        "drain_kiosk_events_per_s": events / kiosk_s,
        "drain_bare_events_per_s": events / bare_s,
        "drain_kiosk_cpu_us_per_event": kiosk_cpu_s / events * 1e6,
        "drain_bare_cpu_us_per_event": bare_cpu_s / events * 1e6,
        "mqtt_drain_ratio": bare_s / kiosk_s,
    }


class SaleTimer:
    """Stands in for the controller's `handle` and times the core thread's handling of each
    delivered vend: the sale written (synchronous=FULL), the slots reloaded, the screen and the
    telemetry told. The ledger's complete_sale is timed on its own too.

    A real vend takes seconds, by which time the publisher has long sent what the coins and the
    selection set off; simulated time runs far faster, so before each timed vend end that time
    is given back in real time (untimed): VEND_GAP_S, after the publisher has caught up."""

    def __init__(self, rig: SimKiosk) -> None:
        self.rig = rig
        self.handle = rig.controller.handle
        self.complete_sale = rig.ledger.complete_sale
        self.telemetry: Telemetry | None = None
        self.samples: dict[bool, list[float]] = {True: [], False: []}  # by telemetry on
        self.cpu_samples: dict[bool, list[float]] = {True: [], False: []}
        self.ledger_samples: dict[bool, list[float]] = {True: [], False: []}

    def __call__(self, event: Any) -> None:
        if not (isinstance(event, VendFinished) and event.outcome is VendOutcome.DELIVERED):
            self.handle(event)
            return
        on = self.telemetry is not None
        if self.telemetry is not None:
            caught_up(self.rig, self.telemetry, timeout_s=5.0)
        time.sleep(VEND_GAP_S)
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            self.handle(event)
        finally:
            self.samples[on].append(time.perf_counter() - started)
            self.cpu_samples[on].append(time.thread_time() - cpu)

    def timed_complete_sale(self, vend_id: int, detail: str) -> int:
        started = time.perf_counter()
        try:
            return self.complete_sale(vend_id, detail)
        finally:
            self.ledger_samples[self.telemetry is not None].append(time.perf_counter() - started)


def last_seq(rig: SimKiosk) -> int:
    return int(rig.ledger.db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])


def caught_up(rig: SimKiosk, telemetry: Telemetry, timeout_s: float) -> None:
    """Wait until the broker has acknowledged every outbox row written so far."""
    deadline, target = time.monotonic() + timeout_s, last_seq(rig)
    while telemetry.status()["acked_up_to"] < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"telemetry not caught up with seq {target} in {timeout_s} s")
        time.sleep(WATCH_S)


def connected(telemetry: Telemetry, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not telemetry.status()["connected"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"telemetry not connected in {timeout_s} s: {telemetry.status()}")
        time.sleep(WATCH_S)


def sell(rig: SimKiosk, slot: int) -> None:
    """Pay a slot's price in coins, largest first, and buy it; refill the spiral when empty."""
    if rig.world.spirals[slot].stock == 0:
        service_visit(rig)
    left = rig.config.slot(slot).price_cents
    for coin in sorted(rig.config.kiosk.accepted_coins_cents, reverse=True):
        while left >= coin:
            if not rig.world.insert_coin(coin):
                raise RuntimeError(f"{coin} c coin handed back")
            rig.run_for(COIN_S)
            left -= coin
    rig.world.press(slot)
    rig.run_for(VEND_S)


def service_visit(rig: SimKiosk) -> None:
    rig.world.open_door()
    rig.run_for(1)
    for slot in sorted(rig.world.spirals):
        added = rig.world.refill(slot)
        if added:
            rig.events.put(Refill(slot, added))
    rig.run_for(1)
    rig.world.close_door()
    rig.run_for(1)


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextlib.contextmanager
def publishing(rig: SimKiosk, timer: SaleTimer, on: bool) -> Iterator[None]:
    """Telemetry running and told by the core (once connected and caught up), or none."""
    telemetry = Telemetry(rig.config, rig.db_path, rig.events.put) if on else None
    try:
        if telemetry is not None:
            telemetry.start()
            connected(telemetry, timeout_s=10.0)
            caught_up(rig, telemetry, timeout_s=10.0)
        rig.controller.telemetry = timer.telemetry = telemetry
        yield
    finally:
        rig.controller.telemetry = timer.telemetry = None
        if telemetry is not None:
            telemetry.close()


def bench_sales(broker: mosquitto.Mosquitto, sales: int, tmp: Path) -> dict[str, float]:
    tmp.mkdir(exist_ok=True)
    db = tmp / "sales.db"
    rig = SimKiosk(mqtt_config(broker, db), db)
    timer = SaleTimer(rig)
    rig.controller.handle = timer  # type: ignore[method-assign]
    rig.ledger.complete_sale = timer.timed_complete_sale  # type: ignore[method-assign]
    slot = min(rig.config.slots, key=lambda s: s.price_cents).id
    try:
        while min(len(timer.samples[True]), len(timer.samples[False])) < sales:
            for on in (True, False):
                goal = min(sales, len(timer.samples[on]) + BLOCK)
                with publishing(rig, timer, on):
                    while len(timer.samples[on]) < goal:
                        before = len(timer.samples[on])
                        sell(rig, slot)
                        if len(timer.samples[on]) == before:
                            raise RuntimeError(f"no sale from slot {slot}: {rig.display}")
    finally:
        rig.shutdown()
    figures: dict[str, float] = {"sales_per_side": sales}
    for on, name in ((True, "on"), (False, "off")):
        figures[f"sale_{name}_p50_ms"] = statistics.median(timer.samples[on]) * 1000
        figures[f"sale_{name}_p95_ms"] = percentile(timer.samples[on], 0.95) * 1000
        figures[f"sale_{name}_cpu_p50_ms"] = statistics.median(timer.cpu_samples[on]) * 1000
        figures[f"complete_sale_{name}_p50_ms"] = statistics.median(timer.ledger_samples[on]) * 1000
    figures["sale_latency_mqtt_ratio"] = figures["sale_on_p50_ms"] / figures["sale_off_p50_ms"]
    return figures


def bench_mqtt(events: int, sales: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        with mosquitto.Mosquitto(tmp / "broker") as broker:
            drain = bench_drain(broker, events, tmp)
            latency = bench_sales(broker, sales, tmp)
    return drain | latency
