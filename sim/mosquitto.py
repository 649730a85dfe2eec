"""A private Mosquitto for the benchmarks, and the bare paho publisher they measure the kiosk
against.

`Mosquitto(directory).start()` runs Debian's broker (found on PATH or in /usr/sbin) on a free
port of 127.0.0.1 with a configuration of its own: anonymous clients, no persistence, and
`user root` when started as root (else it would drop to the `mosquitto` user and could not
write its log in a root-owned temporary directory). Mosquitto cannot pick a free port itself, so
one is found first; start() waits for the broker's "running" line and a connection that
succeeds. `bare_publish` is the baseline of the drain benchmark: paho-mqtt alone, QoS 1, at most
`window` unacknowledged, nothing read or written around it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

START_TIMEOUT_S = 10.0
POLL_S = 0.01


class BrokerError(RuntimeError):
    """A broker that did not start; the message carries what it said."""


def program(name: str = "mosquitto") -> str:
    """The path of a Mosquitto program: on PATH, else where Debian puts it (/usr/sbin, /usr/bin),
    which a non-root PATH often lacks."""
    for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if found and os.access(found, os.X_OK):
            return found
    raise BrokerError(f"{name} not found: ./dev test installs Debian's mosquitto package")


def version() -> str:
    """The broker's version, e.g. "2.0.11" (`mosquitto -h` says it on its first line)."""
    said = subprocess.run(
        [program(), "-h"], capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
    ).stdout
    first = said.splitlines()[0] if said else ""
    return first.rpartition(" ")[2] or "unknown"


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (Mosquitto cannot pick one itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Mosquitto:
    """One broker in `directory`, on `host`:`port`; a context manager."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {self.log_path}",
        ]
        lines += ["user root"] if os.geteuid() == 0 else []
        self.conf_path.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self._process = subprocess.Popen(
            [program(), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self._process.poll() is not None:
                said = self._process.stderr.read().decode() if self._process.stderr else ""
                raise BrokerError(f"mosquitto exited ({self._process.returncode}): {said}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto not ready after {START_TIMEOUT_S} s")
            time.sleep(POLL_S)
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerError("mosquitto is not running")
        return self._process.pid

    def _ready(self) -> bool:
        # "running" is logged once the listener is open: a connection after it reaches this
        # broker, not whatever else may have taken the free port meanwhile.
        log = self.log_path.read_bytes() if self.log_path.exists() else b""
        if b" running" not in log:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect((self.host, self.port))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(START_TIMEOUT_S)
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bare_publish(
    host: str, port: int, messages: Sequence[tuple[str, str]], window: int, timeout_s: float
) -> float:
    """Publish `messages` (topic, payload) at QoS 1, at most `window` unacknowledged, and return
    the seconds from connecting to the last PUBACK. Raises TimeoutError if they are not all
    acknowledged within `timeout_s`."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(2 * window)  # as the kiosk sets it; the window binds first
    room = threading.Semaphore(window)
    connected, done = threading.Event(), threading.Event()
    acked = 0

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, rc: object, _p: object) -> None:
        nonlocal acked
        acked += 1  # only paho's network thread counts
        room.release()
        if acked == len(messages):
            done.set()

    client.on_connect = lambda _c, _u, _f, _rc, _p: connected.set()
    client.on_publish = on_publish
    started = time.perf_counter()
    client.connect_async(host, port, keepalive=60, clean_start=True)
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise TimeoutError(f"no connection to {host}:{port} within {timeout_s} s")
        deadline = started + timeout_s
        for topic, payload in messages:
            if not room.acquire(timeout=max(0.0, deadline - time.perf_counter())):
                raise TimeoutError(f"{acked} of {len(messages)} acknowledged in {timeout_s} s")
            client.publish(topic, payload, qos=1)
        if not done.wait(max(0.0, deadline - time.perf_counter())):
            raise TimeoutError(f"{acked} of {len(messages)} acknowledged in {timeout_s} s")
        return time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()
