"""The soak's telemetry (`python -m sim.soak --mqtt`): a private Mosquitto that goes away and
comes back at random, a subscriber on the kiosk's event stream, and the check at the end.

The kiosk publishes through its real Telemetry (a new one after each restart). Between shoppers
the broker is stopped at random and started again a few shoppers later. At the end, with the
broker up, the outbox must drain; then every outbox event must have reached the subscriber (once,
after de-duplication by msg_id) or at least have been acknowledged by the broker. The subscriber
keeps a persistent session that the broker saves across its restarts, so it should hear them
all; the kiosk's own promise ends at the PUBACK, which is what the check insists on.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kiosk import config as config_mod
from kiosk import outbox
from kiosk.config import Config
from kiosk.telemetry import Telemetry
from sim.mosquitto import Mosquitto
from sim.rig import SimKiosk

SESSION_S = 24 * 3600  # the subscriber's session outlives any outage
DRAIN_S = 120.0  # wall time for the outbox to be sent at the end
QUIET_S = 1.0  # the subscriber has heard nothing new for this long: it has it all
OUTAGE_S = (0.1, 2.0)  # wall seconds the broker stays away (simulated time runs far faster)


class SoakTelemetry:
    def __init__(
        self,
        directory: Path,
        seed: int,
        outage_odds: float,
        outage_s: tuple[float, float] = OUTAGE_S,
    ) -> None:
        self.broker = Mosquitto(directory / "broker")
        self.rng = random.Random(f"broker {seed}")
        self.outage_odds = outage_odds
        self.outage_s = outage_s
        self.outages = 0
        self.telemetry: Telemetry | None = None
        self.received: Counter[str] = Counter()  # msg_id -> copies heard
        self._heard_at = time.monotonic()
        self._lock = threading.Lock()
        self._back_at: float | None = None  # when the broker is started again (None: it is up)
        self._subscriber: mqtt.Client | None = None
        self._topic = ""

    def configure(self, config: Config) -> Config:
        """The profile again, pointed at the private broker."""
        at = {"mqtt.host": self.broker.host, "mqtt.port": self.broker.port}
        config = config_mod.load(config.source, env={}, **at)
        self._topic = f"{config.mqtt.prefix}/{config.kiosk.id}/event/#"
        return config

    def __enter__(self) -> SoakTelemetry:
        # The subscriber's session, and the events queued for it while it reconnects, survive
        # the broker's restarts: the broker saves them when stopped and reads them back.
        conf = self.broker.conf_path.read_text().replace(
            "persistence false",
            f"persistence true\npersistence_location {self.broker.directory}/\n"
            "max_queued_messages 0",
        )
        self.broker.conf_path.write_text(conf)
        self.broker.start()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="soak-dashboard", protocol=mqtt.MQTTv5
        )
        client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(self._topic, qos=1)
        client.on_message = self._message
        client.reconnect_delay_set(1, 2)
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = SESSION_S
        client.connect_async(
            self.broker.host, self.broker.port, keepalive=30, clean_start=False, properties=session
        )
        client.loop_start()
        self._subscriber = client
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_telemetry()
        if self._subscriber is not None:
            self._subscriber.disconnect()
            self._subscriber.loop_stop()
        self.broker.stop()

    def _message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        msg_id = str(json.loads(message.payload).get("msg_id"))
        with self._lock:
            self.received[msg_id] += 1
            self._heard_at = time.monotonic()

    # --- during the run -------------------------------------------------------------------

    def attach(self, rig: SimKiosk) -> None:
        """Telemetry for this kiosk (a restarted one gets a new client, as after a reboot)."""
        self._close_telemetry()
        self.telemetry = Telemetry(rig.config, rig.db_path, rig.events.put)
        rig.controller.attach(self.telemetry)
        self.telemetry.start()

    def _close_telemetry(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
            self.telemetry = None

    def maybe_outage(self) -> None:
        """Between two shoppers: the broker may go away, or come back."""
        if self._back_at is not None:
            if time.monotonic() >= self._back_at:
                self._back_at = None
                self.broker.start()
        elif self.rng.random() < self.outage_odds:
            self.broker.stop()
            self.outages += 1
            self._back_at = time.monotonic() + self.rng.uniform(*self.outage_s)

    # --- at the end -----------------------------------------------------------------------

    def finish(self, rig: SimKiosk) -> tuple[dict[str, Any], list[str]]:
        """Drain the outbox with the broker up; figures, and a line per violation."""
        if self._back_at is not None:
            self._back_at = None
            self.broker.start()
        started = time.monotonic()
        while outbox.backlog(rig.ledger.db, rig.db_path).unsent:
            if time.monotonic() - started > DRAIN_S:
                break
            time.sleep(0.05)
        while time.monotonic() - self._heard_at < QUIET_S:
            time.sleep(0.05)
        self._close_telemetry()
        db = rig.ledger.db
        rows = dict(db.execute("SELECT seq, msg_id FROM outbox ORDER BY seq").fetchall())
        watermark, above = outbox.read_marks(rig.db_path, outbox.ledger_id(db))
        with self._lock:
            received = Counter(self.received)
        violations = []
        missing = acked_only = 0
        for seq, msg_id in rows.items():
            acked = seq <= watermark or seq in above
            if msg_id in received:
                continue
            if acked:
                acked_only += 1
            else:
                missing += 1
        if missing:
            violations.append(
                f"telemetry: {missing} outbox events neither heard by the subscriber nor "
                f"acknowledged after {DRAIN_S:.0f} s with the broker up"
            )
        strangers = set(received) - set(rows.values())
        if strangers:
            violations.append(f"telemetry: {len(strangers)} events heard that the outbox lacks")
        figures = {
            "broker_outages": self.outages,
            "outbox_events": len(rows),
            "heard": len(set(received) & set(rows.values())),
            "duplicates_dropped": sum(received.values()) - len(received),
            "acknowledged_not_heard": acked_only,
            "lost": missing,
        }
        return figures, violations
