"""The control socket: the daemon's door for the `kiosk` CLI, a Unix socket speaking JSON lines.

Each line is a request (kiosk/requests.py), checked, then queued to the core as a Command and
answered with its reply on one line: {"ok": true, "result": ...} or {"ok": false, "error": ...}.
A malformed, oversized or unknown request is answered with the reason and never reaches the core.
Who asks is the peer's operating-system user (SO_PEERCRED), not anything the client claims.

The socket is mode 0660, group `kiosk` where that group exists. Only a daemon holding the ledger
lock opens it, so a socket file found at start is a dead daemon's and is replaced; it is removed
on a clean stop. The caller's connection threads are daemons: a client that never reads cannot
hold up a stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import logging
import os
import pwd
import queue
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiosk.config import DispenserSection
from kiosk.errors import KioskError, Refused
from kiosk.events import Command
from kiosk.ledger_base import Actor
from kiosk.requests import MAX_REQUEST_BYTES, parse_line

log = logging.getLogger(__name__)

GROUP = "kiosk"
MODE = 0o660
IDLE_TIMEOUT_S = 30.0  # a client that neither sends nor reads lets its place go
MARGIN_S = 10.0
SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less its terminating NUL
MAX_CLIENTS = 16  # each has one request at most in the core's queue: coins never wait behind many
ORIGIN = "socket"


def reply_timeout_s(dispenser: DispenserSection | None) -> float:
    """How long an answer may take: a test vend's longest run (every turn to its motor limit,
    each with its wait for the drop), and a margin. Without a profile, the longest allowed."""
    if dispenser is None:
        most = {f.name: f.metadata.get("max", 0) for f in dataclasses.fields(DispenserSection)}
        turns, run_s, wait_s = most["retry_turns"], most["max_run_s"], most["drop_wait_s"]
    else:
        turns, run_s = dispenser.retry_turns, dispenser.max_run_s
        wait_s = dispenser.drop_wait_s
    return float((turns + 1) * (run_s + wait_s) + MARGIN_S)


def check_path(path: str) -> None:
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise KioskError(
            f"control socket {path}: {len(os.fsencode(path))} bytes long; a Unix socket path "
            f"holds at most {SUN_PATH_MAX} (set [control] socket to a shorter one)"
        )


def peer_user(conn: socket.socket) -> str:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class ControlServer:
    def __init__(self, path: str, submit: Callable[[Command], None], reply_timeout: float) -> None:
        check_path(path)
        self.path = path
        self._submit = submit
        self._reply_timeout_s = reply_timeout
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def start(self) -> None:
        """Bind (replacing a dead daemon's socket file), set its mode and group, and serve."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_mask = os.umask(0o117)  # never world-accessible, not even between bind and chmod
            try:
                sock.bind(self.path)
            finally:
                os.umask(old_mask)
            os.chmod(self.path, MODE)
            self._give_to_group()
            sock.listen(4 * MAX_CLIENTS)
        except OSError as err:
            sock.close()
            raise KioskError(f"control socket {self.path}: {err.strerror or err}") from err
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)

    def _give_to_group(self) -> None:
        try:
            gid = grp.getgrnam(GROUP).gr_gid
        except KeyError:
            return  # no such group here (a laptop, a test): owner only
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            log.warning("control socket %s: cannot give it to group %s", self.path, GROUP)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError), conn:
                    conn.sendall(_encode(_refusal("too many connections; try again")))
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="control-client", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(IDLE_TIMEOUT_S)
            with conn, conn.makefile("rb") as lines:
                user = peer_user(conn)
                while True:
                    line = lines.readline(MAX_REQUEST_BYTES + 2)
                    if not line:
                        return
                    if not line.endswith(b"\n") and len(line) > MAX_REQUEST_BYTES:
                        conn.sendall(
                            _encode(_refusal(f"request longer than {MAX_REQUEST_BYTES} bytes"))
                        )
                        return  # the rest of that line is not a request either
                    conn.sendall(_encode(self._answer(line, user)))
        except OSError as err:  # the client went away, or sat idle too long
            log.debug("control client: %s", err)
        except Exception:  # the top of this thread: one client's trouble, never the daemon's
            log.exception("control client")
        finally:
            self._slots.release()

    def _answer(self, line: bytes, user: str) -> dict[str, Any]:
        try:
            request, request_id = parse_line(line.strip())
        except Refused as err:
            return _refusal(str(err))
        replies: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        self._submit(Command(request, Actor(user, ORIGIN), replies.put_nowait))
        try:
            reply = replies.get(timeout=self._reply_timeout_s)
        except queue.Empty:
            reply = _refusal("the kiosk did not answer in time")
        return reply if request_id is None else {**reply, "id": request_id}


def _refusal(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": reason}


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, ensure_ascii=False).encode() + b"\n"
