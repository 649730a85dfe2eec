"""Real Mosquitto brokers for the tests.

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

The clients the tests talk to these brokers with are in tests/peers.py.

Mosquitto comes from Debian's package (`./dev test` installs it where missing); the binary is
found on PATH or in /usr/sbin. Run as root, a broker is told `user root`, or it would drop to the
`mosquitto` user and could not write in the test's private directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sim.mosquitto import BrokerError, free_port, program

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
