"""Telemetry against a real Mosquitto the tests start: a shopper run watched by a real subscriber
(every sale once after de-duplication, seq contiguous, every payload valid against its schema),
a broker outage mid-run (sales go on, every event arrives, the replayed ones flagged), remote
commands (checked, done once per cmd_id, answered on the response topic), retained state, and the
example ACL refusing a kiosk that publishes as another."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import LOGINS, Broker
from conftest import with_changes
from payloads import validate_message
from peers import Received, Subscriber, request_properties

from kiosk import cli, requests
from kiosk import config as config_mod
from kiosk.config import Config
from kiosk.events import Command
from kiosk.ledger import Actor
from kiosk.telemetry import Telemetry
from sim.rig import SimKiosk
from sim.shoppers import simulate

TIMEOUT_S = 60.0


class Watched:
    """A simulated kiosk publishing through `broker`, and a dashboard subscribed to it all."""

    def __init__(
        self,
        config: Config,
        db: Path,
        broker: Broker,
        dashboard: tuple[str, str] | None = None,
        online: bool = True,
        **mqtt: Any,
    ) -> None:
        self.config = with_changes(config, mqtt=broker.mqtt_config() | mqtt)
        self.rig = SimKiosk(self.config, db)
        self.telemetry = Telemetry(self.config, db, self.rig.events.put)
        self.rig.controller.attach(self.telemetry)
        self.base = f"kiosk/v1/{self.config.kiosk.id}"
        user, password = dashboard or (None, None)
        self.dashboard = Subscriber(broker, f"{self.base}/#", username=user, password=password)
        self.telemetry.start()
        status = f"{self.base}/status"
        # Online once it has subscribed to its commands (the broker keeps a connection's order).
        if online:
            self.until(lambda s: any(m.topic == status and m.payload == b"online" for m in s))

    def until(self, done: Callable[[list[Received]], bool], timeout_s: float = TIMEOUT_S) -> None:
        """Run the kiosk (0.05 s of its time at each look) until the dashboard has seen `done`."""

        def check(seen: list[Received]) -> bool:
            self.rig.run_for(0.05)
            return done(seen)

        self.dashboard.wait_for(check, timeout_s)

    def events(self) -> dict[str, dict[str, Any]]:
        """The events received, de-duplicated by msg_id."""
        return {
            m.json()["msg_id"]: m.json() for m in self.dashboard.messages if "/event/" in m.topic
        }

    def outbox_size(self) -> int:
        return int(self.rig.ledger.db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self.telemetry.close()
        self.dashboard.close()
        self.rig.shutdown()


@pytest.fixture
def watched(config: Config, tmp_path: Path, broker: Broker) -> Iterator[Watched]:
    kiosk = Watched(config, tmp_path / "k.db", broker)
    yield kiosk
    kiosk.close()


def all_arrived(kiosk: Watched) -> Callable[[list[Received]], bool]:
    return lambda seen: len(kiosk.events()) >= kiosk.outbox_size()


def test_a_shopper_run_arrives_whole_and_valid(watched: Watched) -> None:
    outcome = simulate(watched.rig, 120, seed=11)
    assert outcome.ok
    state = f"{watched.base}/state"
    watched.until(lambda seen: all_arrived(watched)(seen) and any(m.topic == state for m in seen))
    for message in watched.dashboard.messages:
        validate_message(message.topic, message.payload)
    events = watched.events()
    seqs = sorted(e["seq"] for e in events.values())
    assert seqs == list(range(1, len(seqs) + 1))  # contiguous, nothing missing
    sales = {e["sale_id"]: e for e in events.values() if e["kind"] == "sale"}
    ledger = dict(watched.rig.ledger.db.execute("SELECT id, price_cents FROM sales").fetchall())
    assert {k: v["price_cents"] for k, v in sales.items()} == ledger
    assert len(ledger) > 50
    assert watched.dashboard.on(f"{watched.base}/status")[-1].text() == "online"
    state = watched.dashboard.on(f"{watched.base}/state")[-1].json()
    assert state["boot_id"] == watched.rig.ledger.boot_id


def test_sales_go_on_while_the_broker_is_away(
    config: Config, tmp_path: Path, persistent_broker: Broker
) -> None:
    kiosk = Watched(config, tmp_path / "k.db", persistent_broker)
    try:
        simulate(kiosk.rig, 30, seed=3)
        kiosk.until(all_arrived(kiosk))
        before = kiosk.outbox_size()
        persistent_broker.stop()
        assert simulate(kiosk.rig, 30, seed=4).ok  # the kiosk sells on
        during = kiosk.outbox_size()
        assert during > before
        persistent_broker.start()
        kiosk.until(all_arrived(kiosk))
        events = kiosk.events()
        seqs = sorted(e["seq"] for e in events.values())
        assert seqs == list(range(1, during + 1))
        replayed = [e for e in events.values() if e["seq"] > before]
        assert replayed and all(e["historical"] for e in replayed)
        assert not any(e["historical"] for e in events.values() if e["seq"] <= before)
    finally:
        kiosk.close()


def command(kiosk: Watched, name: str, payload: Any, correlation: bytes = b"c1") -> dict[str, Any]:
    reply_topic = f"{kiosk.base}/cmd_result/dashboard-{correlation.decode()}"
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    kiosk.dashboard.publish(
        f"{kiosk.base}/cmd/{name}", body, properties=request_properties(reply_topic, correlation)
    )
    kiosk.until(lambda seen: any(m.topic == reply_topic for m in seen))
    [reply] = kiosk.dashboard.on(reply_topic)
    assert reply.property("CorrelationData") == correlation
    validate_message(f"{kiosk.base}/cmd_result", reply.payload)
    answer: dict[str, Any] = reply.json()
    return answer


def books(kiosk: Watched) -> list[Any]:
    db = kiosk.rig.ledger.db
    return [db.execute(f"SELECT * FROM {t}").fetchall() for t in ("stock", "faults", "meta")]


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("set_price", {"cmd_id": "a1", "slot": 1, "price_cents": -5}, "out of range"),
        ("set_price", {"cmd_id": "a2", "slot": 1, "price_cents": 19.5}, "not whole cents"),
        ("set_price", {"cmd_id": "a3", "slot": 1, "price_cents": 10**7}, "out of range"),
        ("set_price", {"cmd_id": "a4", "slot": 9, "price_cents": 20}, "no slot 9"),
        ("set_price", {"cmd_id": "a5", "slot": "1", "price_cents": 20}, "whole number"),
        ("slot_enable", {"cmd_id": "a6"}, "slot is missing"),
        ("fly", {"cmd_id": "a7"}, "unknown command"),
        ("refresh", b"{not json", "not JSON"),
        ("refresh", b'{"cmd_id": "a8", "pad": "' + b"x" * 5000 + b'"}', "longer than 4096"),
    ],
)
def test_bad_commands_are_refused_and_change_nothing(
    watched: Watched, name: str, payload: Any, reason: str
) -> None:
    before = books(watched)
    answer = command(watched, name, payload)
    assert answer["ok"] is False and reason in answer["error"], answer
    assert books(watched) == before


def test_a_command_is_done_once_and_answered_the_same(watched: Watched) -> None:
    first = command(watched, "set_price", {"cmd_id": "p-1", "slot": 1, "price_cents": 25}, b"x")
    again = command(watched, "set_price", {"cmd_id": "p-1", "slot": 1, "price_cents": 25}, b"y")
    assert first == again and first["ok"] and first["cmd_id"] == "p-1"
    other = command(watched, "slot_disable", {"cmd_id": "p-1", "slot": 1}, b"z")
    assert other["ok"] is False and "already used for another command" in other["error"]
    db = watched.rig.ledger.db
    changes = db.execute(
        "SELECT actor, origin FROM events WHERE kind = 'slot_changed' AND origin = 'mqtt'"
    ).fetchall()
    assert len(changes) == 1 and watched.rig.controller.slots[1].price_cents == 25

    def new_price_shown(seen: list[Received]) -> bool:
        stock = [m for m in seen if m.topic == f"{watched.base}/stock"]
        return bool(stock) and stock[-1].json()["slots"][0]["price_cents"] == 25

    watched.until(new_price_shown)


def test_service_by_remote_and_a_retained_command_ignored(watched: Watched) -> None:
    assert command(watched, "service_on", {"cmd_id": "s-1"})["ok"]
    assert watched.rig.controller.state.value == "maintenance"
    watched.dashboard.publish(
        f"{watched.base}/cmd/service_off", json.dumps({"cmd_id": "s-2"}), retain=True
    )
    # Any command after it is answered after it: by then the retained one was seen (and left).
    assert command(watched, "refresh", {"cmd_id": "s-3"})["ok"]
    assert watched.rig.controller.state.value == "maintenance"  # a left-over order is not one
    assert not watched.rig.ledger.command_done("s-2")
    watched.dashboard.publish(f"{watched.base}/cmd/service_off", b"", retain=True)  # cleaned


def test_a_fault_has_its_retained_topic_until_it_clears(watched: Watched) -> None:
    topic = f"{watched.base}/fault/slot_3:jammed"
    watched.rig.world.jam(3)
    watched.rig.world.insert_coin(5)
    watched.rig.world.insert_coin(5)
    watched.rig.world.insert_coin(5)
    watched.rig.run_for(8)
    watched.rig.world.press(3)
    watched.until(lambda seen: any(m.topic == topic and m.payload for m in seen))
    watched.rig.world.repair()
    watched.rig.world.open_door()
    watched.rig.run_for(1)
    watched.rig.world.close_door()
    watched.until(lambda seen: any(m.topic == topic and m.payload == b"" for m in seen))


def test_a_kiosk_publishing_as_another_is_refused_and_says_so(
    config: Config, tmp_path: Path, acl_broker: Broker
) -> None:
    password = tmp_path / "k1.password"
    password.write_text(LOGINS["k1"] + "\n")
    as_k2 = with_changes(config, kiosk={"id": "k2"})  # k1's login, k2's topics
    kiosk = Watched(
        as_k2,
        tmp_path / "k.db",
        acl_broker,
        dashboard=("dashboard", LOGINS["dashboard"]),
        online=False,
        username="k1",
        password_file=str(password),
    )
    try:
        faults = "SELECT count(*) FROM faults WHERE device = 'telemetry' AND code = 'refused'"
        db = kiosk.rig.ledger.db
        kiosk.until(lambda seen: db.execute(faults).fetchone()[0] == 1)
        assert kiosk.rig.controller.state.value == "idle"  # selling goes on
        replies: list[dict[str, Any]] = []
        kiosk.rig.events.put(
            Command(requests.check("telemetry", {}), Actor("tech", "socket"), replies.append)
        )
        kiosk.rig.run_for(0.5)
        [answer] = replies
        assert "Not authorized" in answer["result"]["last_error"]
        assert answer["result"]["faults"][0].startswith("refused: ")
        assert answer["result"]["backlog"]["unsent"] >= 1
        assert not [m for m in kiosk.dashboard.messages if "/event/" in m.topic]
    finally:
        kiosk.close()


def test_home_assistant_finds_the_kiosk_and_loses_it_when_turned_off(
    config: Config, tmp_path: Path, broker: Broker
) -> None:
    topic = "homeassistant/device/sim-001/config"
    with Subscriber(broker, topic) as home:
        kiosk = Watched(config, tmp_path / "k.db", broker, ha_discovery=True)
        try:
            found = home.wait_for_one(lambda m: m.topic == topic and bool(m.payload))
        finally:
            kiosk.close()
        validate_message(found.topic, found.payload)
        device = found.json()
        assert device["availability_topic"] == "kiosk/v1/sim-001/status"
        names = set(device["components"])
        assert {
            "state",
            "credit",
            "cashbox_value",
            "cashbox_fill",
            "coins_saved",
            "faults",
        } <= names
        assert {f"stock_{s.id}" for s in config.slots} <= names
        again = Watched(config, tmp_path / "k.db", broker)  # ha_discovery off
        try:
            home.wait_for_one(lambda m: m.topic == topic and m.payload == b"")
        finally:
            again.close()


def test_kiosk_telemetry_shows_the_backlog(
    config: Config, tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "k.db"
    kiosk = Watched(config, db, broker)
    try:
        simulate(kiosk.rig, 20, seed=5)
        kiosk.until(all_arrived(kiosk))
    finally:
        kiosk.close()
    broker.stop()
    rig = SimKiosk(with_changes(config, mqtt=broker.mqtt_config()), db)  # no telemetry running
    simulate(rig, 10, seed=6)
    waiting = int(rig.ledger.db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    rig.shutdown()
    profile = tmp_path / "p.toml"
    profile.write_text(
        config_mod.PULSE_PROFILE.read_text()
        + f'\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    )
    assert cli.main(["telemetry", "--json", "-c", str(profile), "--db", str(db)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["running"] is False and shown["broker"] == f"127.0.0.1:{broker.port}"
    assert 0 < shown["backlog"]["unsent"] <= waiting
    assert shown["backlog"]["oldest_unsent_age_s"] is not None
    assert cli.main(["telemetry", "-c", str(profile), "--db", str(db)]) == 0
    assert f"{shown['backlog']['unsent']} event(s) unsent" in capsys.readouterr().out


def test_a_clean_stop_logs_no_error(
    config: Config, tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while connected, again and again: `offline` said, nothing logged as an error
    (paho's network thread turning once more after the socket closed is not one)."""
    kiosk = Watched(config, tmp_path / "k.db", broker)
    try:
        for round_ in range(2, 5):
            kiosk.telemetry.close()
            kiosk.telemetry = Telemetry(kiosk.config, tmp_path / "k.db", kiosk.rig.events.put)
            kiosk.telemetry.start()
            kiosk.until(lambda seen, n=round_: [m.payload for m in seen].count(b"online") >= n)
    finally:
        kiosk.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    status = [m.payload for m in kiosk.dashboard.messages if m.topic.endswith("/status")]
    assert status.count(b"offline") >= 3
