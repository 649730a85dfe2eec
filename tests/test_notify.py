"""systemd's notify protocol over a real datagram socket: READY and STATUS, keep-alives sent from
the core loop while it is healthy or holds a coin the ledger refused, none while the loop is
stalled or the ledger refuses writes with no coin at stake, and nothing at all without
$NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Daemons
from scenarios import COIN_S
from test_failed_writes import lock

from kiosk.config import Config
from kiosk.machine import State
from kiosk.notify import Notifier
from sim.bench_kiosk import profile
from sim.cctalk_device import SimCcTalkAcceptor
from sim.live import LiveKiosk
from sim.rig import SimKiosk

CEILING_S = 30.0  # a generous ceiling for what must arrive on a loaded machine
QUIET_S = 0.5  # ten keep-alive periods of the real-time test with nothing sent


class Listener:
    """The systemd side: a datagram socket bound in a temporary directory (or abstract)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def next(self, timeout_s: float = CEILING_S) -> dict[str, str]:
        self.sock.settimeout(timeout_s)
        lines = self.sock.recv(4096).decode().split("\n")
        return dict(line.split("=", 1) for line in lines)

    def drain(self) -> list[dict[str, str]]:
        got = []
        while True:
            try:
                got.append(self.next(timeout_s=0.001))
            except TimeoutError:
                return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Listener, str]]:
    path = str(tmp_path / "notify.sock")
    got = Listener(path)
    yield got, path
    got.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled and notifier.keepalive_s is None
    notifier.ready("started")  # no socket, no error


def test_ready_and_status_reach_a_path_or_an_abstract_socket(
    listener: tuple[Listener, str],
) -> None:
    got, path = listener
    Notifier({"NOTIFY_SOCKET": path}).ready("sim-001 started")
    assert got.next() == {"READY": "1", "STATUS": "sim-001 started"}
    name = f"kiosk-test-{os.getpid()}"
    abstract = Listener(f"\0{name}")
    try:
        Notifier({"NOTIFY_SOCKET": f"@{name}"}).stopping()
        assert abstract.next() == {"STOPPING": "1", "STATUS": "stopping"}
    finally:
        abstract.close()


def test_the_watchdog_is_kept_only_for_its_own_process(listener: tuple[Listener, str]) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert Notifier(env).keepalive_s == 15.0
    assert Notifier(env | {"WATCHDOG_PID": str(os.getpid())}).keepalive_s == 15.0
    assert Notifier(env | {"WATCHDOG_PID": "1"}, pid=4242).keepalive_s is None
    assert Notifier(env | {"WATCHDOG_USEC": "soon"}).keepalive_s is None


def test_a_gone_socket_is_logged_and_selling_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    notifier.status("one")
    notifier.status("two")
    assert len(caplog.records) == 1 and "nobody.sock" in caplog.text  # said once


def test_keep_alives_stop_while_the_ledger_refuses_writes(
    kiosk: SimKiosk, listener: tuple[Listener, str], db_path: Path
) -> None:
    got, path = listener
    kiosk.controller.watch(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}))
    kiosk.run_for(10)  # one a second of simulated time
    healthy = got.drain()
    assert len(healthy) >= 9 and all(m["WATCHDOG"] == "1" for m in healthy)
    assert healthy[-1]["STATUS"] == "idle, 0 c of credit, faults: none"
    other = lock(db_path)
    kiosk.world.open_door()  # its event cannot be written
    kiosk.run_for(5)
    assert kiosk.controller.storage_error is not None
    sick = got.drain()[-4:]
    assert len(sick) == 4 and not any("WATCHDOG" in m for m in sick)
    assert all(m["STATUS"].startswith("unhealthy: the ledger refuses writes") for m in sick)
    other.rollback()
    other.close()
    kiosk.run_for(3)
    assert got.drain()[-1]["WATCHDOG"] == "1"


def test_keep_alives_go_on_while_only_memory_holds_a_coin(
    kiosk: SimKiosk, listener: tuple[Listener, str], db_path: Path
) -> None:
    """A restart would lose the coin the ledger refused: the loop retrying it is kept alive."""
    got, path = listener
    kiosk.controller.watch(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}))
    kiosk.run_for(2)
    other = lock(db_path)
    kiosk.world.insert_coin(5)
    kiosk.run_for(COIN_S + 5)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    held = got.drain()[-4:]
    assert len(held) == 4 and all(m["WATCHDOG"] == "1" for m in held)
    assert all(m["STATUS"].startswith("unhealthy: the ledger refuses writes") for m in held)
    assert all(m["STATUS"].endswith("; holding 1 coin, 5 c") for m in held)
    other.rollback()
    other.close()
    kiosk.run_for(3)
    assert got.drain()[-1] == {"WATCHDOG": "1", "STATUS": "credit, 5 c of credit, faults: none"}


def test_a_stalled_core_loop_stops_the_keep_alives(
    config: Config, tmp_path: Path, listener: tuple[Listener, str]
) -> None:
    """On real time: a keep-alive every 50 ms while the loop turns, none while a handler
    holds the core thread, and again once it lets go."""
    got, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    stalled, release = threading.Event(), threading.Event()

    def stall(rig: SimKiosk) -> None:
        stalled.set()
        release.wait(CEILING_S)

    with LiveKiosk(config, tmp_path / "kiosk.db") as live:
        live.do(lambda rig: rig.controller.watch(notifier))
        for _ in range(3):
            assert got.next()["WATCHDOG"] == "1"
        staller = threading.Thread(target=live.do, args=(stall,))
        staller.start()
        try:
            assert stalled.wait(CEILING_S)
            got.drain()  # sent before the stall began
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                got.next(timeout_s=QUIET_S)
            assert time.monotonic() - started >= QUIET_S
        finally:
            release.set()
            staller.join(CEILING_S)
        assert got.next()["WATCHDOG"] == "1"


def test_the_daemon_says_ready_keeps_alive_and_says_stopping(
    tmp_path: Path,
    listener: tuple[Listener, str],
    device: SimCcTalkAcceptor,
    daemons: Daemons,
) -> None:
    got, path = listener
    config = profile(tmp_path, device.path, tmp_path / "kiosk.db")
    daemon = daemons(config, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    ready = got.next()
    assert ready["READY"] == "1" and ready["STATUS"].startswith("bench-001 started")
    for _ in range(2):
        assert got.next()["WATCHDOG"] == "1"
    output = daemons.stop(daemon)
    assert daemon.returncode == 0, output
    assert {"STOPPING": "1", "STATUS": "stopping"} in got.drain()
