"""MQTT v5 clients for the tests, talking to the brokers of tests/broker.py.

`Peer` is a connected paho-mqtt client (callback API 2, MQTT v5) that publishes and waits for the
broker's reason code, subscribes and waits for the SUBACK, and keeps every message it receives.
`Subscriber` is a Peer subscribed to one topic filter on every (re)connect, which outlives a broker
restart. Both are context managers and close cleanly (disconnect, then loop_stop).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from broker import TIMEOUT_S, Broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class ConnectRefused(ConnectionRefusedError):
    """A CONNECT the broker refused; `reason` is the CONNACK's reason code (0x87 "Not
    authorized" for a wrong login on Mosquitto 2.0)."""

    def __init__(self, message: str, reason: ReasonCode) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Received:
    """One message as a client received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool  # True when the broker sent it from its retained store
    properties: Properties | None

    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)

    def property(self, name: str) -> Any:
        """A v5 property by paho's name (e.g. "CorrelationData"), or None."""
        return getattr(self.properties, name, None) if self.properties is not None else None


def request_properties(response_topic: str, correlation_data: bytes) -> Properties:
    """PUBLISH properties of a command that wants its reply on `response_topic`."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation_data
    return props


class Peer:
    """A connected MQTT v5 client for tests; every message it receives is kept in `messages`.

    `publish()` and `subscribe()` wait for the broker's answer and return its reason code(s), so
    a test sees an ACL refusal (0x87 "Not authorized" on PUBACK). A refused CONNECT raises
    ConnectRefused (a ConnectionRefusedError) carrying the CONNACK reason code as `.reason`.
    Subscriptions made with subscribe() are not renewed after a reconnect; a Subscriber's are.
    """

    def __init__(
        self,
        broker: Broker,
        client_id: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 0,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.broker = broker
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:10]}"
        self.timeout_s = timeout_s
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._acks: dict[int, Any] = {}  # mid -> PUBACK reason code, or SUBACK reason codes
        self._connack: ReasonCode | None = None
        self._connects = 0
        self.client = broker.client(self.client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        self._closed = False
        # A session meant to last starts without clean start: Mosquitto 2.0.11 does not save,
        # across its restart, a session whose first connection had clean start on. Without one,
        # clean start on the first connection only (paho's default).
        clean: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY if session_expiry_s == 0 else False
        broker.connect_async(self.client, clean_start=clean, properties=props)
        self.client.loop_start()
        try:
            self._wait(lambda: self._connack is not None, "the CONNACK")
        except BaseException:
            self.close()
            raise
        if self._connack is not None and self._connack.is_failure:
            reason = self._connack
            self.close()
            raise ConnectRefused(f"{self.client_id}: connection refused: {reason}", reason)

    # --- paho's thread: record and notify, never block ---------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        ready = not rc.is_failure and self._connected(client, flags)
        with self._lock:
            self._connack = rc
            self._connects += ready
            self._lock.notify_all()
        if rc.is_failure:
            client.disconnect()  # or paho's loop would log in again and again

    def _connected(self, client: mqtt.Client, flags: Any) -> bool:
        """Called on paho's thread after every successful CONNACK: True when the client is
        ready for use (a Subscriber is once subscribed, later)."""
        return True

    def _count_ready(self) -> None:
        with self._lock:
            self._connects += 1
            self._lock.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        got = Received(
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.retain),
            message.properties,
        )
        with self._lock:
            self._messages.append(got)
            self._lock.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            self._acks[mid] = rc
            self._lock.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, rcs: Any, _p: Any) -> None:
        with self._lock:
            self._acks[mid] = list(rcs)
            self._lock.notify_all()

    # --- the test's side --------------------------------------------------------------------

    def _wait(self, done: Callable[[], bool], what: str, timeout_s: float | None = None) -> None:
        limit = self.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            if not self._lock.wait_for(done, limit):
                raise TimeoutError(f"{self.client_id}: no {what} within {limit} s")

    def _ack(self, mid: int, what: str) -> Any:
        # on_publish may run before publish() has returned the mid: the ack waits in _acks.
        self._wait(lambda: mid in self._acks, what)
        with self._lock:
            return self._acks.pop(mid)

    @property
    def connects(self) -> int:
        """How many times this client has been connected and ready, reconnects included (a
        Subscriber is ready once its subscription is granted, or kept by the broker)."""
        with self._lock:
            return self._connects

    def wait_connects(self, count: int, timeout_s: float | None = None) -> None:
        """Wait until the client has been connected and ready `count` times in all (e.g. 2:
        back after a broker restart)."""
        self._wait(lambda: self._connects >= count, f"connection number {count}", timeout_s)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish and return the broker's reason code once acknowledged (QoS 1 or 2; QoS 0
        gets paho's made-up Success once sent). Raises if the client is not connected."""
        info = self.client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            why = mqtt.error_string(info.rc)
            raise ConnectionError(f"{self.client_id}: publish on {topic}: {why}")
        code: ReasonCode = self._ack(info.mid, f"PUBACK for {topic}")
        return code

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and return the SUBACK's reason codes (one per filter)."""
        rc, mid = self.client.subscribe(topic_filter, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"{self.client_id}: subscribe {topic_filter}: {rc}")
        codes: list[ReasonCode] = self._ack(mid, f"SUBACK for {topic_filter}")
        return codes

    @property
    def messages(self) -> list[Received]:
        """Every message received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._messages)

    def on(self, topic: str) -> list[Received]:
        """The messages received on exactly `topic`."""
        return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = TIMEOUT_S
    ) -> list[Received]:
        """Wait until `predicate(messages)` holds (messages: everything received so far, in
        order) and return those messages. The predicate is tried again at every message and at
        least every 50 ms, so it may look at other things too (a ledger, a process). Raises
        TimeoutError listing what did arrive."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.messages
            if predicate(seen):  # outside the lock: paho's thread goes on receiving
                return seen
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._lock:
                if len(self._messages) == len(seen):
                    self._lock.wait(min(left, 0.05))
        topics = sorted({m.topic for m in seen})
        raise TimeoutError(
            f"{self.client_id}: not there within {timeout_s} s; {len(seen)} messages came, "
            f"on {topics}"
        )

    def wait_for_one(
        self, match: Callable[[Received], bool] | str, timeout_s: float = TIMEOUT_S
    ) -> Received:
        """Wait for the first message that `match` accepts (or the first on the topic `match`)
        and return it."""
        accept = (lambda m: m.topic == match) if isinstance(match, str) else match
        found = self.wait_for(lambda ms: any(accept(m) for m in ms), timeout_s)
        return next(m for m in found if accept(m))

    def close(self) -> None:
        """Disconnect and stop paho's thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber(Peer):
    """A Peer subscribed to `topic_filter` from the start and after every reconnect.

    By default its session outlives a dropped connection for an hour (Session Expiry 3600 s,
    clean start off), as the city's dashboard would have it: on a persistent broker it gets the
    messages published while it was away, broker restart included. Its default client id is new
    for each Subscriber, so it never resumes another's session; give the same client_id twice
    to resume one on purpose. The constructor returns once the subscription is granted.
    """

    def __init__(
        self,
        broker: Broker,
        topic_filter: str = "#",
        *,
        qos: int = 1,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 3600,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.granted: list[ReasonCode] | None = None  # the SUBACK of the latest subscription
        self._own_mid: int | None = None
        super().__init__(
            broker,
            client_id,
            username=username,
            password=password,
            session_expiry_s=session_expiry_s,
            timeout_s=timeout_s,
        )
        try:
            self._wait(lambda: self.granted is not None, f"SUBACK for {topic_filter}")
        except BaseException:
            self.close()
            raise
        assert self.granted is not None
        if any(code.is_failure for code in self.granted):
            self.close()
            raise PermissionError(f"{self.client_id}: subscribe {topic_filter}: {self.granted}")

    def _connected(self, client: mqtt.Client, flags: Any) -> bool:
        if flags.session_present and self.granted is not None:
            return True  # the broker kept the subscription (and queued what came meanwhile)
        # The SUBACK is handled later on this same thread, so the mid is known by then.
        self._own_mid = client.subscribe(self.topic_filter, self.qos)[1]
        return False

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
        if mid != self._own_mid:
            super()._on_subscribe(c, u, mid, rcs, p)
            return
        with self._lock:
            self.granted = list(rcs)
        self._count_ready()
