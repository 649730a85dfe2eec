"""The control socket, spoken to byte for byte: a simulated kiosk serving it on wall-clock time
answers good lines, refuses bad ones with a reason and keeps serving; the socket's mode, its
replacement when a dead daemon left it, its removal on a clean stop; who asked is the peer."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk import control
from kiosk.config import Config
from kiosk.control import MAX_CLIENTS, SUN_PATH_MAX, ControlServer
from kiosk.errors import KioskError
from sim.live import LiveKiosk

TIMEOUT_S = 30.0


@pytest.fixture
def live(config: Config, tmp_path: Path) -> Iterator[LiveKiosk]:
    with LiveKiosk(config, tmp_path / "kiosk.db") as kiosk:
        yield kiosk


class Line:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(path)
        self.replies = self.sock.makefile("rb")

    def send(self, raw: bytes) -> dict[str, Any]:
        self.sock.sendall(raw)
        reply: dict[str, Any] = json.loads(self.replies.readline())
        return reply

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


@pytest.fixture
def line(live: LiveKiosk) -> Iterator[Line]:
    connection = Line(live.server.path)
    yield connection
    connection.close()


def test_a_request_is_answered_with_its_id(line: Line) -> None:
    reply = line.send(b'{"request": "status", "id": 7}\n')
    assert reply["ok"] and reply["id"] == 7
    assert reply["result"]["state"] == "idle"


def test_bad_lines_get_a_reason_and_the_connection_goes_on(line: Line, live: LiveKiosk) -> None:
    stock_before = live.do(lambda rig: rig.ledger.db.execute("SELECT * FROM stock").fetchall())
    for raw, reason in [
        (b"{oops\n", "not a JSON request"),
        (b'{"request": "explode"}\n', "unknown request"),
        (b'{"request": "refill", "args": {"slot": 1, "quantity": -3}}\n', "out of range"),
        (b'{"request": "price", "args": {"slot": 1, "price_cents": 19.5}}\n', "whole cents"),
        (b'{"request": "refill", "args": {"slot": 1, "quantity": 2}}\n', "service on"),
    ]:
        reply = line.send(raw)
        assert reply["ok"] is False and reason in reply["error"], reply
    assert line.send(b'{"request": "status"}\n')["ok"]
    stock_after = live.do(lambda rig: rig.ledger.db.execute("SELECT * FROM stock").fetchall())
    assert stock_after == stock_before


def test_an_oversized_line_is_refused_and_the_connection_closed(line: Line) -> None:
    reply = line.send(b'{"request": "status", "pad": "' + b"x" * 10_000 + b'"}\n')
    assert reply == {"ok": False, "error": "request longer than 4096 bytes"}
    try:
        rest = line.replies.readline()
    except ConnectionResetError:  # closed with the rest of the line unread
        rest = b""
    assert rest == b""


def test_the_peer_is_who_asked(line: Line, live: LiveKiosk) -> None:
    assert line.send(b'{"request": "service", "args": {"on": true}}\n')["ok"]
    row = live.do(
        lambda rig: rig.ledger.db.execute(
            "SELECT actor, origin FROM events WHERE kind = 'service_on'"
        ).fetchone()
    )
    assert row == (pwd.getpwuid(os.getuid()).pw_name, "socket")


def test_the_socket_is_for_owner_and_group_only(live: LiveKiosk) -> None:
    mode = os.stat(live.server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def test_a_dead_daemons_socket_is_replaced_and_a_clean_stop_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "k.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    requests: list[Any] = []
    server = ControlServer(str(path), requests.append, 5.0)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
    finally:
        server.close()
    assert not path.exists()
    server.close()  # idempotent


def test_a_socket_path_too_long_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KioskError, match="holds at most 107"):
        ControlServer(str(tmp_path / ("x" * SUN_PATH_MAX)), lambda command: None, 5.0)


def test_connections_beyond_the_limit_are_turned_away(live: LiveKiosk) -> None:
    held = [Line(live.server.path) for _ in range(MAX_CLIENTS)]
    try:
        assert held[0].send(b'{"request": "status"}\n')["ok"]
        extra = Line(live.server.path)
        assert json.loads(extra.replies.readline()) == {
            "ok": False,
            "error": "too many connections; try again",
        }
        extra.close()
        held.pop().close()
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # the freed place is taken again once its thread has ended
            again = Line(live.server.path)
            try:
                reply = again.send(b'{"request": "status"}\n')
            except (BrokenPipeError, ConnectionResetError):  # turned away before it asked
                reply = {"ok": False}
            finally:
                again.close()
            if reply["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert reply["ok"]
    finally:
        for line in held:
            line.close()


def test_a_silent_client_loses_its_place(live: LiveKiosk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 0.2)
    silent = Line(live.server.path)
    try:
        assert silent.replies.readline() == b""  # closed by the kiosk, well before TIMEOUT_S
    finally:
        silent.close()
