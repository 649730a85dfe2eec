"""The test brokers (tests/broker.py) and the example broker configuration (config/mosquitto/):
real Mosquitto, real paho-mqtt v5 clients."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from broker import (
    EXAMPLE_ACL,
    EXAMPLE_CONF,
    LOGINS,
    TIMEOUT_S,
    Broker,
    BrokerError,
    BrokerMaker,
    free_port,
    run_as_root,
)
from peers import ConnectRefused, Peer, Subscriber, request_properties

NOT_AUTHORIZED = 0x87


def refuses_connections(broker: Broker) -> bool:
    assert broker.host is not None
    with socket.socket() as probe:
        return probe.connect_ex((broker.host, broker.port)) != 0


# --- the Broker helper -------------------------------------------------------------------------


def test_a_broker_carries_messages_and_stops(broker: Broker) -> None:
    with Subscriber(broker, "t/#") as sub, Peer(broker) as pub:
        assert not pub.publish("t/1", b"one").is_failure
        got = sub.wait_for_one("t/1")
        with pytest.raises(TimeoutError, match=re.escape("1 messages came, on ['t/1']")):
            sub.wait_for_one("t/2", timeout_s=0.2)
    assert (got.payload, got.qos, got.retain) == (b"one", 1, False)
    broker.stop()
    assert not broker.running
    assert refuses_connections(broker)
    broker.stop()  # idempotent


def test_restart_keeps_retained_messages_and_the_port(persistent_broker: Broker) -> None:
    port = persistent_broker.port
    with Peer(persistent_broker) as pub:
        assert not pub.publish("kiosk/v1/k1/status", b"online", retain=True).is_failure
    first = persistent_broker.pid
    persistent_broker.restart()
    assert persistent_broker.pid != first
    assert persistent_broker.port == port
    with Subscriber(persistent_broker, "kiosk/v1/+/status") as sub:
        kept = sub.wait_for_one("kiosk/v1/k1/status")
    assert (kept.payload, kept.retain) == (b"online", True)


def test_without_persistence_a_restart_forgets(broker: Broker) -> None:
    with Peer(broker) as pub:
        assert not pub.publish("r/kept", b"x", retain=True).is_failure
        assert not pub.publish("r/marker", b"m", retain=True).is_failure
    with Subscriber(broker, "r/#") as sub:
        assert len(sub.wait_for(lambda ms: len(ms) == 2)) == 2
    broker.restart()
    with Peer(broker) as pub, Subscriber(broker, "r/#") as sub:
        assert not pub.publish("r/after", b"a").is_failure
        sub.wait_for_one("r/after")
        assert [m.topic for m in sub.messages] == ["r/after"]


def test_a_subscriber_gets_what_came_while_the_broker_restarted(persistent_broker: Broker) -> None:
    with Subscriber(persistent_broker, "kiosk/v1/+/event/#") as sub:
        persistent_broker.restart()
        # Published at once: the subscriber may not be back yet, its session queues the event.
        with Peer(persistent_broker) as kiosk:
            assert not kiosk.publish("kiosk/v1/k1/event/sale", b"{}").is_failure
        sub.wait_for_one("kiosk/v1/k1/event/sale")
        sub.wait_connects(2)
        assert sub.connects == 2


def test_a_subscriber_subscribes_again_after_a_broker_forgot_it(broker: Broker) -> None:
    with Subscriber(broker, "t/#") as sub:
        broker.restart()
        sub.wait_connects(2)  # subscribed again: the broker had no session to keep
        with Peer(broker) as pub:
            assert not pub.publish("t/back", b"b").is_failure
        assert sub.wait_for_one("t/back").payload == b"b"


def test_kill_is_a_crash_and_the_broker_starts_again(broker: Broker) -> None:
    broker.kill()
    assert not broker.running
    assert refuses_connections(broker)
    broker.start()
    with Subscriber(broker, "t/#") as sub, Peer(broker) as pub:
        pub.publish("t/again", b"x")
        assert sub.wait_for_one("t/again").payload == b"x"


def test_a_unix_socket_broker_serves_paho_over_transport_unix(make_broker: BrokerMaker) -> None:
    local = make_broker(unix_socket=True)
    assert local.socket_path is not None and local.socket_path.is_socket()
    assert (local.host, local.port, local.transport) == (None, 0, "unix")
    assert local.mqtt_config() == {"socket": str(local.socket_path)}
    with Subscriber(local, "u/#") as sub, Peer(local) as pub:
        assert not pub.publish("u/1", b"over the socket").is_failure
        assert sub.wait_for_one("u/1").payload == b"over the socket"
    local.kill()  # its socket file stays behind, and Mosquitto binds over it
    assert local.socket_path.is_socket()
    local.start()
    with Subscriber(local, "u/#") as sub, Peer(local) as pub:
        pub.publish("u/2", b"again")
        assert sub.wait_for_one("u/2").payload == b"again"


def test_a_raw_paho_client_connects_through_the_broker(make_broker: BrokerMaker) -> None:
    for local in (make_broker(), make_broker(unix_socket=True)):
        client = local.client("raw")
        local.connect(client)
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not client.is_connected() and time.monotonic() < deadline:
                client.loop(timeout=0.01)
            assert client.is_connected()
        finally:
            client.disconnect()
        assert "as raw (p5" in local.log()  # MQTT v5


def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    broken = Broker(tmp_path / "b", config=lambda b: f"listener {b.port}\nno_such_option 1\n")
    with pytest.raises(BrokerError, match="no_such_option"):
        broken.start()
    assert not broken.running


def test_a_port_taken_meanwhile_is_a_failure_not_someone_elses_broker(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        taken = Broker(
            tmp_path / "b",
            config=lambda b: (
                f"listener {port} 127.0.0.1\nlog_dest file {b.log_path}\n"
                + "\n".join(run_as_root())
            ),
        )
        with pytest.raises(BrokerError, match="Address already in use"):
            taken.start()


def test_free_ports_are_free() -> None:
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


# --- the example ACL ---------------------------------------------------------------------------


def login(broker: Broker, user: str, *, password: str | None = None) -> Peer:
    secret = LOGINS[user] if password is None else password
    return Peer(broker, f"{user}-{free_port()}", username=user, password=secret)


def watch(broker: Broker, user: str, topic_filter: str) -> Subscriber:
    return Subscriber(
        broker, topic_filter, client_id=f"{user}-watch", username=user, password=LOGINS[user]
    )


def test_a_kiosk_publishes_its_own_topics_and_the_dashboard_sees_them(acl_broker: Broker) -> None:
    with watch(acl_broker, "dashboard", "kiosk/v1/#") as dashboard, login(acl_broker, "k1") as k1:
        assert not k1.publish("kiosk/v1/k1/state", b'{"state": "idle"}', retain=True).is_failure
        assert not k1.publish("kiosk/v1/k1/event/sale", b"{}").is_failure
        dashboard.wait_for_one("kiosk/v1/k1/event/sale")
        assert [m.topic for m in dashboard.messages] == [
            "kiosk/v1/k1/state",
            "kiosk/v1/k1/event/sale",
        ]


def test_a_kiosk_cannot_publish_as_another(acl_broker: Broker) -> None:
    with watch(acl_broker, "dashboard", "#") as dashboard, login(acl_broker, "k1") as k1:
        refused = k1.publish("kiosk/v1/k2/state", b'{"state": "idle"}', retain=True)
        assert (refused.value, refused.getName()) == (NOT_AUTHORIZED, "Not authorized")
        assert k1.publish("homeassistant/device/k2/config", b"{}").value == NOT_AUTHORIZED
        assert k1.publish("kiosk/v1/k2", b"x").value == NOT_AUTHORIZED
        assert k1.publish("elsewhere/k1/state", b"x").value == NOT_AUTHORIZED
        assert not k1.publish("homeassistant/device/k1/config", b"{}").is_failure
        # Sent after the refused ones on the same connection: once it is here, they would be too.
        assert not k1.publish("kiosk/v1/k1/state", b"marker").is_failure
        dashboard.wait_for_one("kiosk/v1/k1/state")
        assert [m.topic for m in dashboard.messages] == [
            "homeassistant/device/k1/config",
            "kiosk/v1/k1/state",
        ]


def test_a_kiosk_gets_its_own_commands_and_no_other_kiosks(acl_broker: Broker) -> None:
    with (
        watch(acl_broker, "k2", "kiosk/v1/k2/cmd/#") as k2,
        login(acl_broker, "k1") as k1,
        login(acl_broker, "operator") as operator,
    ):
        # Mosquitto grants a subscription the acl file forbids, and then withholds the messages.
        assert [c.value for c in k1.subscribe("kiosk/v1/k2/cmd/#")] == [1]
        assert not k1.subscribe("kiosk/v1/k1/cmd/#")[0].is_failure
        assert not operator.publish("kiosk/v1/k2/cmd/refresh", b'{"cmd_id": "a"}').is_failure
        assert not operator.publish("kiosk/v1/k1/cmd/refresh", b'{"cmd_id": "b"}').is_failure
        k2.wait_for_one("kiosk/v1/k2/cmd/refresh")
        k1.wait_for_one("kiosk/v1/k1/cmd/refresh")
        assert [m.topic for m in k1.messages] == ["kiosk/v1/k1/cmd/refresh"]


def test_the_operator_commands_a_kiosk_and_reads_the_answer(acl_broker: Broker) -> None:
    with (
        watch(acl_broker, "k1", "kiosk/v1/k1/cmd/#") as k1,
        watch(acl_broker, "operator", "kiosk/v1/k1/cmd_result/#") as operator,
    ):
        ask = request_properties("kiosk/v1/k1/cmd_result/ops", b"corr-7")
        body = b'{"cmd_id": "c1", "slot": 2, "price_cents": 25}'
        assert not operator.publish("kiosk/v1/k1/cmd/set_price", body, properties=ask).is_failure
        command = k1.wait_for_one("kiosk/v1/k1/cmd/set_price")
        assert command.json() == {"cmd_id": "c1", "slot": 2, "price_cents": 25}
        reply_to = command.property("ResponseTopic")
        assert (reply_to, command.property("CorrelationData")) == (
            "kiosk/v1/k1/cmd_result/ops",
            b"corr-7",
        )
        # The answer on the Response Topic: within the kiosk's subtree, so the acl lets it out.
        answer = request_properties(reply_to, b"corr-7")
        reply = b'{"cmd_id": "c1", "ok": true}'
        assert not k1.publish(reply_to, reply, properties=answer).is_failure
        got = operator.wait_for_one(reply_to)
        assert got.property("CorrelationData") == b"corr-7"
        assert got.json() == {"cmd_id": "c1", "ok": True}


def test_the_dashboard_reads_and_cannot_write(acl_broker: Broker) -> None:
    with watch(acl_broker, "k1", "kiosk/v1/k1/cmd/#") as k1, login(acl_broker, "operator") as op:
        with login(acl_broker, "dashboard") as dashboard:
            for topic in (
                "kiosk/v1/k1/cmd/set_price",
                "kiosk/v1/k1/state",
                "kiosk/v1/dashboard/state",  # as if it were a kiosk named dashboard
                "homeassistant/device/dashboard/config",
                "homeassistant/status",
            ):
                assert dashboard.publish(topic, b"{}").value == NOT_AUTHORIZED, topic
        assert op.publish("kiosk/v1/operator/state", b"{}").value == NOT_AUTHORIZED
        assert not op.publish("kiosk/v1/k1/cmd/refresh", b'{"cmd_id": "m"}').is_failure
        k1.wait_for_one("kiosk/v1/k1/cmd/refresh")
        assert [m.topic for m in k1.messages] == ["kiosk/v1/k1/cmd/refresh"]


@pytest.mark.parametrize(
    ("user", "password"),
    [("k1", "k2-secret"), ("k1", ""), ("k3", "k3-secret"), ("dashboard", "guess")],
)
def test_a_wrong_login_is_refused(acl_broker: Broker, user: str, password: str) -> None:
    with pytest.raises(ConnectRefused, match="Not authorized") as refused:
        login(acl_broker, user, password=password).close()
    assert refused.value.reason.value == NOT_AUTHORIZED


def test_anonymous_clients_are_refused(acl_broker: Broker) -> None:
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        Peer(acl_broker).close()


# --- the example configuration ---------------------------------------------------------------

TLS_FILES = ("cafile", "certfile", "keyfile")


def adapted_example(broker: Broker) -> str:
    """kiosk-broker.conf for a test: its listener on the test's port without the TLS files
    (there are no certificates here), its paths in the test's directory; everything else as is."""
    paths = {
        "pid_file": broker.directory / "mosquitto.pid",
        "persistence_location": f"{broker.directory}/",
        "password_file": broker.password_file,
        "acl_file": EXAMPLE_ACL,
        "log_dest": f"file {broker.log_path}",
    }
    lines = []
    for line in EXAMPLE_CONF.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {broker.port} 127.0.0.1"
        elif key in TLS_FILES:
            continue
        elif key in paths:
            line = f"{key} {paths[key]}"
        lines.append(line)
    return "\n".join([*lines, *run_as_root()]) + "\n"


def test_the_example_configuration_runs_in_mosquitto(make_broker: BrokerMaker) -> None:
    settings = [
        line.split(" ", 1)[0]
        for line in EXAMPLE_CONF.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert settings.count("listener") == 1 and "8883" in EXAMPLE_CONF.read_text()
    assert {"allow_anonymous", "password_file", "acl_file", "persistence"} <= set(settings)
    assert {"max_queued_messages", "persistent_client_expiration", *TLS_FILES} <= set(settings)
    example = make_broker(config=adapted_example, logins=LOGINS)
    assert "require_certificate" in example.conf_path.read_text()
    with pytest.raises(ConnectionRefusedError):
        Peer(example).close()
    with watch(example, "dashboard", "kiosk/v1/#") as dashboard, login(example, "k1") as k1:
        assert not k1.publish("kiosk/v1/k1/status", b"online", retain=True).is_failure
        assert k1.publish("kiosk/v1/k2/status", b"online").value == NOT_AUTHORIZED
        dashboard.wait_for_one("kiosk/v1/k1/status")
    example.restart()
    assert (example.directory / "mosquitto.db").is_file()
    with watch(example, "dashboard", "kiosk/v1/+/status") as dashboard:
        assert dashboard.wait_for_one("kiosk/v1/k1/status").retain
