"""Real Mosquitto brokers for the tests, and MQTT v5 clients that talk to them.

`Broker` runs one Mosquitto of a test's own, in a directory of its own: a TCP listener on a free
port of 127.0.0.1 (or a Unix socket), anonymous clients allowed unless logins are asked for, the
log in the directory. It can be stopped, restarted on the same port with the same persistence (a
broker outage) or killed. Fixtures, each function-scoped and stopping every broker it started:

    broker              a started broker, anonymous, no persistence
    persistent_broker   the same with persistence, whose retained messages and sessions survive
                        `restart()`
    acl_broker          the example configuration's acl file (config/mosquitto/acl) as is, with
                        logins for kiosks k1 and k2 and the users dashboard and operator
                        (passwords in LOGINS)
    make_broker         a callable taking Broker's keyword arguments, for other variants

`Peer` is a connected paho-mqtt client (callback API 2, MQTT v5) that publishes and waits for the
broker's reason code, subscribes and waits for the SUBACK, and keeps every message it receives.
`Subscriber` is a Peer subscribed to one topic filter on every (re)connect, which outlives a broker
restart. Both are context managers and close cleanly (disconnect, then loop_stop).

Mosquitto comes from Debian's package (`./dev test` installs it where missing); the binary is
found on PATH or in /usr/sbin. Run as root, a broker is told `user root`, or it would drop to the
`mosquitto` user and could not write in the test's private directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ACL = REPO / "config" / "mosquitto" / "acl"
EXAMPLE_CONF = REPO / "config" / "mosquitto" / "kiosk-broker.conf"
# The logins of `acl_broker`: two kiosks and the city's two users of the example acl file.
LOGINS: dict[str, str] = {
    "k1": "k1-secret",
    "k2": "k2-secret",
    "dashboard": "dashboard-secret",
    "operator": "operator-secret",
}
TIMEOUT_S = 20.0  # a ceiling for anything the tests wait for, never a delay
POLL_S = 0.01
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


def program(name: str) -> str:
    """The path of a Mosquitto program: on PATH, else in /usr/sbin or /usr/bin (Debian's)."""
    for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if found and os.access(found, os.X_OK):
            return found
    raise FileNotFoundError(f"{name} not found: ./dev test installs Debian's mosquitto package")


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (Mosquitto cannot pick one itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_passwords(path: Path, logins: Mapping[str, str]) -> Path:
    """A Mosquitto password file for `logins` (username -> password), made by mosquitto_passwd."""
    tool = program("mosquitto_passwd")
    path.unlink(missing_ok=True)
    for n, (user, password) in enumerate(logins.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run(
            [tool, *create, "-b", str(path), user, password],
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    return path


class BrokerError(RuntimeError):
    """A broker that did not start (or stop) as asked; the message carries its log."""


class ConnectRefused(ConnectionRefusedError):
    """A CONNECT the broker refused; `reason` is the CONNACK's reason code (0x87 "Not
    authorized" for a wrong login on Mosquitto 2.0)."""

    def __init__(self, message: str, reason: ReasonCode) -> None:
        super().__init__(message)
        self.reason = reason


class Broker:
    """One Mosquitto for one test, in `directory` (created if missing).

    unix_socket   listen on `<directory>/mqtt.sock` instead of a TCP port
    persistence   keep retained messages and sessions in `<directory>/` across restart()
    logins        username -> password: a password file, and anonymous clients refused
    acl_file      an acl file used as is (anonymous clients are refused too)
    config        a whole configuration instead of the generated one: a function of the broker
                  (use its port and directory), e.g. the example configuration adapted to a test.
                  start() waits for the "running" line, logged at the information level (a
                  default type) to log_path or, without a log_dest, to standard error
    verbose       `log_type all` (every packet and every ACL denial in the log)

    Attributes: host ("127.0.0.1", None on a Unix socket), port (0 on a Unix socket),
    socket_path (None on TCP), directory, conf_path, log_path.
    """

    def __init__(
        self,
        directory: Path,
        *,
        unix_socket: bool = False,
        persistence: bool = False,
        logins: Mapping[str, str] | None = None,
        acl_file: Path | None = None,
        config: Callable[[Broker], str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.unix_socket = unix_socket
        self.persistence = persistence
        self.logins = dict(logins or {})
        self.acl_file = acl_file
        self.verbose = verbose
        self.conf_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.out_path = directory / "mosquitto.out"  # what it says before its log is open
        self.socket_path: Path | None = directory / "mqtt.sock" if unix_socket else None
        if self.socket_path is not None and len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise BrokerError(f"socket path too long for a Unix socket: {self.socket_path}")
        self.host: str | None = None if unix_socket else "127.0.0.1"
        self.port = 0 if unix_socket else free_port()
        self.password_file: Path | None = None
        if self.logins:
            self.password_file = write_passwords(directory / "passwd", self.logins)
        self.conf_path.write_text(config(self) if config else self._config())
        self._process: subprocess.Popen[bytes] | None = None
        self._log_from = self._out_from = 0

    def _config(self) -> str:
        if self.socket_path is not None:
            lines = [f"listener 0 {self.socket_path}"]
        else:
            lines = [f"listener {self.port} 127.0.0.1"]
        secured = self.password_file is not None or self.acl_file is not None
        lines.append(f"allow_anonymous {'false' if secured else 'true'}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.directory}/"]
        else:
            lines.append("persistence false")
        lines.append(f"log_dest file {self.log_path}")
        lines += ["log_type all"] if self.verbose else []
        lines += run_as_root()
        return "\n".join(lines) + "\n"

    # --- life -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self, timeout_s: float = TIMEOUT_S) -> Broker:
        """Start Mosquitto and return once it accepts connections. Raises BrokerError with its
        log if it exits first or is not ready within `timeout_s`."""
        if self.running:
            return self
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._out_from = self.out_path.stat().st_size if self.out_path.exists() else 0
        with self.out_path.open("ab") as out:
            self._process = subprocess.Popen(
                [program("mosquitto"), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._process.poll() is not None:
                code = self._process.returncode
                raise BrokerError(f"mosquitto exited with status {code}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"mosquitto not ready after {timeout_s} s:\n{self.output()}")
            time.sleep(POLL_S)
        return self

    def _ready(self) -> bool:
        # "running" is logged once every listener is open, so a connection that succeeds after
        # it reaches this broker, not whatever else took a free port first. Both files grow at
        # every start: only this start's part counts.
        said = b"".join(
            path.read_bytes()[start:] if path.exists() else b""
            for path, start in ((self.log_path, self._log_from), (self.out_path, self._out_from))
        )
        if b" running" not in said:
            return False
        family = socket.AF_UNIX if self.socket_path is not None else socket.AF_INET
        address: Any = str(self.socket_path) if self.socket_path else (self.host, self.port)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(address)
            except OSError:
                return False
        return True

    def stop(self, timeout_s: float = TIMEOUT_S) -> None:
        """A clean stop (SIGTERM): Mosquitto saves its persistence. Idempotent."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """A crash (SIGKILL): nothing saved since the last autosave. Idempotent."""
        self._end(signal.SIGKILL, TIMEOUT_S)

    def restart(self, timeout_s: float = TIMEOUT_S) -> Broker:
        """Stop cleanly and start again on the same port, socket and persistence."""
        self.stop(timeout_s)
        return self.start(timeout_s)

    def _end(self, how: signal.Signals, timeout_s: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(how)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
                raise BrokerError(f"mosquitto ignored {how.name}:\n{self.output()}") from None

    def log(self) -> str:
        """The broker's log so far ("" before it opens it)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        """What it printed (errors before its log opens) and its log, for error messages."""
        said = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        return f"{said}{self.log()}" or "(nothing printed, no log)"

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients ----------------------------------------------------------------------------

    @property
    def transport(self) -> Literal["tcp", "unix"]:
        """paho's transport for this broker: "tcp" or "unix"."""
        return "unix" if self.socket_path is not None else "tcp"

    def mqtt_config(self) -> dict[str, Any]:
        """The [mqtt] keys that point a kiosk at this broker: host and port, or socket."""
        if self.socket_path is not None:
            return {"socket": str(self.socket_path)}
        return {"host": self.host, "port": self.port}

    def client(self, client_id: str = "") -> mqtt.Client:
        """A new paho client for this broker (callback API 2, MQTT v5), not connected."""
        return mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            transport=self.transport,
        )

    def connect(self, client: mqtt.Client, keepalive_s: int = 60, **kwargs: Any) -> None:
        """client.connect() to this broker, by host and port or by socket path."""
        host = str(self.socket_path) if self.socket_path is not None else str(self.host)
        client.connect(host, self.port or 1883, keepalive_s, **kwargs)

    def connect_async(self, client: mqtt.Client, keepalive_s: int = 60, **kwargs: Any) -> None:
        """client.connect_async() to this broker (the connection is made by loop_start())."""
        host = str(self.socket_path) if self.socket_path is not None else str(self.host)
        client.connect_async(host, self.port or 1883, keepalive_s, **kwargs)


def run_as_root() -> list[str]:
    """The config lines that keep a root-started Mosquitto from dropping to user mosquitto."""
    return ["user root"] if os.geteuid() == 0 else []


# --- clients for tests -------------------------------------------------------------------------


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


# --- fixtures ----------------------------------------------------------------------------------


class BrokerMaker:
    """Starts brokers in numbered directories under `root`; stops every one at close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Broker] = []

    def __call__(self, **options: Any) -> Broker:
        broker = Broker(self.root / f"broker{len(self.made)}", **options)
        self.made.append(broker)
        return broker.start()

    def close(self) -> None:
        errors = []
        for broker in self.made:
            try:
                broker.stop()
            except BrokerError as err:
                errors.append(err)
        if errors:
            raise errors[0]


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[BrokerMaker]:
    maker = BrokerMaker(tmp_path)
    try:
        yield maker
    finally:
        maker.close()


@pytest.fixture
def broker(make_broker: BrokerMaker) -> Broker:
    """A started Mosquitto on a free port of 127.0.0.1: anonymous, no persistence."""
    return make_broker()


@pytest.fixture
def persistent_broker(make_broker: BrokerMaker) -> Broker:
    """A started Mosquitto with persistence: restart() keeps retained messages and sessions."""
    return make_broker(persistence=True)


@pytest.fixture
def acl_broker(make_broker: BrokerMaker) -> Broker:
    """A started Mosquitto with the example acl file and the LOGINS (k1, k2, dashboard,
    operator); anonymous clients refused."""
    return make_broker(acl_file=EXAMPLE_ACL, logins=LOGINS)
