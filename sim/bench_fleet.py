"""A city's fleet on one broker, `python -m sim.bench fleet`: N kiosks, each with its own ledger,
outbox and MQTT client (kiosk.telemetry.Telemetry, as the daemon runs it), spread over a few
processes, publishing to one private Mosquitto at ten times a busy kiosk's sales rate (30 an
hour: one every 12 s at ten times). Each sale is written as the core writes it (its outbox row in
the sale's transaction) and the publisher told, as the core tells it after each change of state.
A dashboard subscribed to every kiosk's events times each sale from its commit to its arrival
(the two clocks are the same machine's).

Figures: fleet_kiosks, fleet_msgs_per_s (events delivered a second), fleet_p50_ms and
fleet_p99_ms (commit to subscriber; goal p99 <= 250 ms at 200 kiosks), fleet_broker_cpu_pct (of
one core, over the measured time), fleet_missing (events committed and never delivered: 0).
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import random
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kiosk import config as config_mod
from kiosk.ledger import Ledger
from kiosk.telemetry import Telemetry
from sim import mosquitto
from sim.bench_kiosk import cpu_s
from sim.bench_mqtt import percentile

BUSY_SALES_PER_HOUR = 30.0
SPEED_UP = 10.0
CONNECT_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 60.0


def kiosk_id(n: int) -> str:
    return f"fleet-{n:04d}"


def _kiosks(
    first: int,
    count: int,
    broker: tuple[str, int],
    tmp: str,
    seconds: float,
    speed_up: float,
    seed: int,
    ready: EventType,
    go: EventType,
    results: Any,
) -> None:
    """One process's share of the fleet: its kiosks connect, then sell for `seconds` (each
    sale's commit time noted), then drain; the commit times go to `results`."""
    host, port = broker
    rng = random.Random(seed + first)
    kiosks: list[tuple[str, Ledger, Telemetry]] = []
    committed: dict[tuple[str, int], float] = {}
    try:
        for n in range(first, first + count):
            path = Path(tmp) / f"{kiosk_id(n)}.db"
            at = {"kiosk.id": kiosk_id(n), "mqtt.host": host, "mqtt.port": port}
            config = config_mod.load(config_mod.PULSE_PROFILE, env={}, **at)
            ledger = Ledger(path, lambda: datetime.now(UTC))
            ledger.boot(config.kiosk.id)
            ledger.sync_slots(config.slots)
            telemetry = Telemetry(config, path, lambda event: None)
            telemetry.start()
            kiosks.append((config.kiosk.id, ledger, telemetry))
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not all(t.status()["connected"] for _, _, t in kiosks):
            if time.monotonic() > deadline:
                raise TimeoutError(f"kiosks {first}-{first + count - 1} not all connected")
            time.sleep(0.05)
        ready.set()
        go.wait()
        mean_gap_s = 3600 / (BUSY_SALES_PER_HOUR * speed_up)
        started = time.monotonic()
        due = [started + rng.expovariate(1 / mean_gap_s) for _ in kiosks]
        sales = [0] * len(kiosks)  # each kiosk's sale ids
        while True:
            i = min(range(len(kiosks)), key=due.__getitem__)
            if due[i] > started + seconds:
                break
            time.sleep(max(0.0, due[i] - time.monotonic()))
            name, ledger, telemetry = kiosks[i]
            sales[i] += 1
            body = {"sale_id": sales[i], "vend_id": sales[i], "slot": 1, "product": "Cookie bio"}
            with ledger._tx() as at_iso:
                ledger._outbox(at_iso, "sale", body | {"price_cents": 20, "credit_left_cents": 0})
            committed[(name, sales[i])] = time.time()
            telemetry.state_changed(idle(ledger, started))
            due[i] += rng.expovariate(1 / mean_gap_s)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for _, ledger, telemetry in kiosks:
            last = ledger.db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
            while telemetry.status()["acked_up_to"] < last and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        for _, ledger, telemetry in kiosks:
            telemetry.close()
            ledger.close()
        results.put(committed)


def idle(ledger: Ledger, started: float) -> dict[str, Any]:
    """The core's state as it tells the publisher after a sale (Controller._show_state)."""
    return {
        "boot_id": ledger.boot_id,
        "state": "idle",
        "credit_cents": 0,
        "service_mode": False,
        "uptime_s": round(time.monotonic() - started, 1),
    }


class Dashboard:
    """Every kiosk's events, each noted with its arrival time (the first copy of it)."""

    def __init__(self, broker: mosquitto.Mosquitto) -> None:
        self.arrived: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fleet-dashboard", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("kiosk/v1/+/event/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(CONNECT_TIMEOUT_S):
            raise TimeoutError("the dashboard did not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        event = json.loads(message.payload)
        with self._lock:
            self.arrived.setdefault((event["kiosk_id"], event["sale_id"]), now)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bench_fleet(
    kiosks: int, processes: int, seconds: float, speed_up: float = SPEED_UP, seed: int = 7
) -> dict[str, float]:
    processes = max(1, min(processes, kiosks))
    spawn = multiprocessing.get_context("spawn")
    results: Any = spawn.Queue()
    with (
        tempfile.TemporaryDirectory() as name,
        mosquitto.Mosquitto(Path(name) / "broker") as broker,
    ):
        dashboard = Dashboard(broker)
        shares = [kiosks // processes + (p < kiosks % processes) for p in range(processes)]
        firsts = [sum(shares[:p]) for p in range(processes)]
        go = spawn.Event()
        readies = [spawn.Event() for _ in shares]
        workers = [
            spawn.Process(
                target=_kiosks,
                args=(first, share, (broker.host, broker.port), name, seconds, speed_up, seed),
                kwargs={"ready": ready, "go": go, "results": results},
                daemon=True,
            )
            for first, share, ready in zip(firsts, shares, readies, strict=True)
        ]
        try:
            for worker in workers:
                worker.start()
            for ready, worker in zip(readies, workers, strict=True):
                while not ready.wait(0.5):
                    if not worker.is_alive():
                        raise RuntimeError("a process of the fleet stopped before it was ready")
            broker_cpu, started = cpu_s(broker.pid), time.monotonic()
            go.set()
            committed: dict[tuple[str, int], float] = {}
            for _ in workers:
                committed |= results.get(timeout=seconds + DRAIN_TIMEOUT_S + CONNECT_TIMEOUT_S)
            elapsed = time.monotonic() - started
            broker_cpu = cpu_s(broker.pid) - broker_cpu
            for worker in workers:
                worker.join(timeout=DRAIN_TIMEOUT_S)
        except queue.Empty as err:
            raise TimeoutError("the fleet did not report its sales") from err
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
            dashboard.close()
    latencies = [
        dashboard.arrived[key] - at for key, at in committed.items() if key in dashboard.arrived
    ]
    return {
        "fleet_kiosks": kiosks,
        "fleet_processes": processes,
        "fleet_sales_per_hour_each": BUSY_SALES_PER_HOUR * speed_up,
        "fleet_events": len(committed),
        "fleet_missing": len(committed) - len(latencies),
        "fleet_msgs_per_s": len(latencies) / elapsed,
        "fleet_p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "fleet_p99_ms": percentile(latencies, 0.99) * 1000 if latencies else 0.0,
        "fleet_broker_cpu_pct": broker_cpu / elapsed * 100,
    }
