"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING, one datagram each to the
socket named by $NOTIFY_SOCKET (an address starting with `@` is an abstract socket). Without that
variable every call does nothing, so the daemon is the same under systemd, in a terminal and in
the tests.

The keep-alives are the core's to send (Controller.watch): from its own loop, after a health
check, so that a core stuck in a handler, or one whose ledger no longer takes writes, stops them
and systemd restarts the daemon. A timer thread of its own would keep a dead kiosk "alive".
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ, pid: int | None = None) -> None:
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self.keepalive_s: float | None = None  # half the watchdog's timeout, when one is set
        usec, watched = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        for_us = watched is None or watched == str(os.getpid() if pid is None else pid)
        if address is not None and usec and for_us:
            try:
                self.keepalive_s = int(usec) / 2e6
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number: no keep-alives", usec)
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **keys: str) -> None:
        """One datagram of KEY=value lines; a failure is logged once, never raised (the kiosk
        sells without systemd)."""
        if self.address is None:
            return
        payload = "\n".join(f"{key}={value}" for key, value in keys.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as err:
            if not self._failing:
                log.warning("systemd notification to %r failed: %s", self.address, err)
            self._failing = True
            return
        self._failing = False

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def alive(self, status: str) -> None:
        self.send(WATCHDOG="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping")
