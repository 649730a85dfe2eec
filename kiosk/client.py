"""The CLI's side of a request: through the running daemon's control socket, or, with no daemon,
on the ledger itself.

Whether a daemon runs is what the ledger lock says, not whether a socket file exists: a socket
left by a dead daemon is not answered, and a live daemon whose socket cannot be reached is an
error that says so, never a silent write beside it. With no daemon, the change is made holding
the ledger lock (a daemon starting meanwhile waits or is refused), through the same ledger
operations the core uses (kiosk/service.py), in short immediate transactions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiosk import lock, service
from kiosk.config import Config
from kiosk.control import check_path, reply_timeout_s
from kiosk.errors import KioskError, Refused
from kiosk.ledger import Actor, Ledger
from kiosk.lock import LedgerLock
from kiosk.requests import Request

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Target:
    """The kiosk a command acts on: its ledger, its control socket, its profile if one was
    found (None when only --db was given)."""

    ledger: Path
    socket: str
    config: Config | None

    def daemon_pid(self) -> int | None:
        try:
            return lock.holder(self.ledger)
        except PermissionError:
            raise KioskError(
                f"ledger lock {lock.lock_path(self.ledger)}: permission denied (the kiosk's "
                f"files are for the kiosk group: `sudo usermod -aG kiosk {os_user()}`)"
            ) from None


def os_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def call_socket(path: str, request: Request, timeout_s: float) -> dict[str, Any]:
    """One request to the daemon; its result, or Refused with the daemon's reason."""
    check_path(path)
    line = json.dumps({"request": request.name, "args": dict(request.args)}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(path)
            sock.settimeout(timeout_s + CONNECT_TIMEOUT_S)
            sock.sendall(line)
            with sock.makefile("rb") as replies:
                raw = replies.readline()
    except PermissionError:
        raise KioskError(
            f"control socket {path}: permission denied (it is for the kiosk group: "
            f"`sudo usermod -aG kiosk {os_user()}`, then log in again)"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise KioskError(
            f"control socket {path}: {err.strerror}; the daemon holds the ledger but does not "
            "answer there (is [control] socket the same in its profile?)"
        ) from None
    except TimeoutError:
        raise KioskError(f"control socket {path}: no answer from the daemon") from None
    except OSError as err:
        raise KioskError(f"control socket {path}: {err.strerror or err}") from None
    if not raw:
        raise KioskError(f"control socket {path}: the daemon closed the connection")
    reply = json.loads(raw)
    if not reply.get("ok"):
        raise Refused(str(reply.get("error", "refused")))
    result: dict[str, Any] = reply["result"]
    return result


@contextlib.contextmanager
def offline_ledger(target: Target) -> Iterator[Ledger]:
    """The ledger of a stopped kiosk, held for the length of a change."""
    if not os.path.lexists(target.ledger):
        raise KioskError(f"ledger {target.ledger} does not exist")
    with LedgerLock(target.ledger):
        ledger = Ledger(target.ledger, lambda: datetime.now(UTC))
        try:
            yield ledger
        finally:
            ledger.close()


def submit(target: Target, request: Request) -> tuple[dict[str, Any], str]:
    """Carry out a checked request on the kiosk, running or not. Returns the result and how it
    was done, for --verbose."""
    pid = target.daemon_pid()
    if pid is not None:
        how = f"through the daemon (PID {pid}) on {target.socket}"
        timeout_s = reply_timeout_s(target.config.dispenser if target.config else None)
        return call_socket(target.socket, request, timeout_s), how
    if request.name == "test_vend":
        raise KioskError("test-vend runs a motor: it needs the kiosk daemon running")
    with offline_ledger(target) as ledger:
        result = service.apply(ledger, target.config, request, Actor(os_user(), "cli"))
    return result, f"on the ledger {target.ledger} (no daemon running)"
