"""Benchmarks that print figures (they assert nothing): `python -m sim.bench [WHAT]`, a table,
or with --json one object of the numbers. With no WHAT: `kiosk`, `mqtt` and `fleet`, with the
machine.

cctalk: the 229 poll round trip of the real driver against the simulated acceptor on a
pseudo-terminal at 9600-baud timing, next to the wire time of the bytes exchanged (goal: within
1.15 x), and the host's CPU time per poll (the driver's thread only, not the simulated device's).
demo: the headless shopper simulation on the pulse profile, in simulated hours per second.
kiosk: a coin's way to the ledger, the ledger under a stack of coins, the idle daemon and its
start (sim/bench_kiosk.py).
mqtt: telemetry against a private Mosquitto (sim/bench_mqtt.py).
fleet: many kiosks publishing to one broker (sim/bench_fleet.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drivers.base import CoinAccepted
from drivers.cctalk import CcTalkCoinAcceptor, CcTalkSettings
from drivers.clock import SystemClock
from kiosk import config as config_mod
from sim import bench_fleet, bench_kiosk, bench_mqtt, mosquitto
from sim.cctalk_device import SimCcTalkAcceptor
from sim.rig import SimKiosk
from sim.shoppers import simulate

POLL_BYTES = 5 + 16  # the 229 request and its 11-data-byte reply; the echo rides on the request


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count() or 0,
        "python": platform.python_version(),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "mosquitto": mosquitto.version(),
    }


def bench_cctalk(polls: int, baud: int = 9600) -> dict[str, float]:
    device = SimCcTalkAcceptor(echo=True, wire_timing=True, baud=baud)
    events: queue.Queue[Any] = queue.Queue()
    acceptor = CcTalkCoinAcceptor(
        CcTalkSettings(port=device.path, baud=baud), (1, 2, 5), SystemClock(), events.put
    )
    credits = 0
    try:
        # Driven here rather than on its worker: each poll is timed on this thread, back to back
        # (the poller's own schedule is passed in as `now`).
        acceptor.transport.open()
        acceptor.set_accepting(True)
        acceptor.service(0.0)  # start-up
        acceptor.service(acceptor.next_deadline() or 0.0)  # master enable
        round_trips, cpu = [], []
        for i in range(polls):
            if i % 10 == 0:
                device.insert(5)  # some polls carry a credit
            due = acceptor.next_deadline() or 0.0
            started, cpu_started = time.perf_counter(), time.thread_time()
            found = acceptor.service(due)
            cpu.append(time.thread_time() - cpu_started)
            round_trips.append(time.perf_counter() - started)
            credits += sum(isinstance(e, CoinAccepted) for e in found)
    finally:
        acceptor.close()
        device.close()
    wire_s = POLL_BYTES * 10 / baud
    mean = statistics.fmean(round_trips)
    return {
        "polls": polls,
        "wire_ms": wire_s * 1000,
        "round_trip_mean_ms": mean * 1000,
        "round_trip_p95_ms": statistics.quantiles(round_trips, n=20)[18] * 1000,
        "ratio_to_wire": mean / wire_s,
        "host_cpu_per_poll_us": statistics.fmean(cpu) * 1e6,
        "credits": credits,
    }


def bench_demo(shoppers: int, seed: int) -> dict[str, float]:
    config = config_mod.load(config_mod.PULSE_PROFILE, env={})
    with tempfile.TemporaryDirectory() as tmp:
        rig = SimKiosk(config, Path(tmp) / "bench.db")
        try:
            outcome = simulate(rig, shoppers, seed)
        finally:
            rig.shutdown()
    return {
        "shoppers": shoppers,
        "simulated_hours": outcome.simulated_s / 3600,
        "wall_s": outcome.wall_s,
        "simulated_hours_per_s": outcome.simulated_s / 3600 / outcome.wall_s,
        "invariants_ok": float(outcome.ok),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    choices = ["all", "cctalk", "demo", "kiosk", "mqtt", "fleet"]
    parser.add_argument("what", nargs="?", choices=choices)
    parser.add_argument("--polls", type=int, default=200, help="cctalk: polls to time")
    parser.add_argument("--shoppers", type=int, default=2000, help="demo: shoppers")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--events", type=positive, default=10_000, help="mqtt: outbox backlog")
    parser.add_argument(
        "--sales", type=positive, default=200, help="mqtt: sales timed with telemetry on, and off"
    )
    parser.add_argument("--coins", type=positive, default=200, help="kiosk: coins timed")
    parser.add_argument("--poll-ms", type=positive, default=150, help="kiosk: the 229 interval")
    parser.add_argument("--idle-s", type=float, default=60.0, help="kiosk: idle time measured")
    parser.add_argument("--starts", type=positive, default=5, help="kiosk: daemon starts timed")
    parser.add_argument("--kiosks", type=positive, default=200, help="fleet: kiosks")
    parser.add_argument("--processes", type=positive, default=4, help="fleet: processes")
    parser.add_argument("--fleet-s", type=float, default=60.0, help="fleet: seconds of sales")
    parser.add_argument(
        "--speed-up", type=float, default=10.0, help="fleet: times a busy kiosk's sales rate"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object of the numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the figures only
    figures: dict[str, Any]
    what = args.what or "all"
    figures = {}
    if what == "cctalk":
        figures = bench_cctalk(args.polls)
    elif what == "demo":
        figures = bench_demo(args.shoppers, args.seed)
    if what in ("all", "kiosk"):
        figures |= bench_kiosk.bench_coin_to_credit(args.coins, args.poll_ms, args.seed)
        figures |= bench_kiosk.bench_stack(args.coins)
        figures |= bench_kiosk.bench_idle(args.idle_s, args.poll_ms)
        figures |= bench_kiosk.bench_startup(args.starts, args.poll_ms)
    if what in ("all", "mqtt"):
        figures |= bench_mqtt.bench_mqtt(args.events, args.sales)
    if what in ("all", "fleet"):
        fleet = (args.kiosks, args.processes, args.fleet_s, args.speed_up, args.seed)
        figures |= bench_fleet.bench_fleet(*fleet)
    if what in ("all", "kiosk", "mqtt", "fleet"):
        figures = machine() | figures
    if args.json:
        print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, str)}))
        return 0
    for name, value in figures.items():
        shown = f"{value:10.3f}" if isinstance(value, float) else f"{value:>10}"
        print(f"{name:<30} {shown}")
    return 0


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
