"""Devices on real pseudo-terminals for the ccTalk tests: the simulated acceptor, a scripted
responder, transports and acceptors, all closed newest first."""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from typing import Any

from drivers.cctalk import CcTalkCoinAcceptor, CcTalkSettings
from drivers.cctalk_transport import Transport
from drivers.clock import SystemClock
from sim.cctalk_device import SimCcTalkAcceptor


def ignore(event: Any) -> None:
    """An emit for drivers whose events the test takes from `service` instead."""


class Responder:
    """A device on a pseudo-terminal that answers every request with scripted (delay, bytes)."""

    def __init__(self, *parts: tuple[float, bytes]) -> None:
        self.parts = list(parts)
        self.requests = 0
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="responder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._master], [], [], 0.01)[0]:
                continue
            os.read(self._master, 512)
            self.requests += 1
            for delay_s, data in self.parts:
                time.sleep(delay_s)  # in the device's thread, never the test's
                os.write(self._master, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._master)
        os.close(self._slave)


class Bench:
    """Opens simulated devices, responders, transports and acceptors; closes them newest first."""

    def __init__(self) -> None:
        self._opened: list[Any] = []

    def keep(self, thing: Any) -> Any:
        self._opened.append(thing)
        return thing

    def sim(self, kind: type[SimCcTalkAcceptor] = SimCcTalkAcceptor, **options: Any) -> Any:
        return self.keep(kind(**{"echo": False, **options}))

    def responder(self, *parts: tuple[float, bytes]) -> Responder:
        return self.keep(Responder(*parts))

    def transport(self, port: str, **options: Any) -> Transport:
        # Long enough for a loaded machine; the tests that expect silence shorten it.
        defaults = {"echo": "off", "reply_timeout_s": 0.2, "retries": 0}
        transport = self.keep(Transport(port, 2, **{**defaults, **options}))
        transport.open()
        return transport

    def acceptor(self, port: str, **options: Any) -> CcTalkCoinAcceptor:
        """A ccTalk acceptor with its port open, not started: the test drives `service`."""
        config = CcTalkSettings(port=port, **{"reply_timeout_ms": 200, "retries": 1, **options})
        acceptor = self.keep(CcTalkCoinAcceptor(config, (1, 2, 5), SystemClock(), ignore))
        acceptor.transport.open()
        return acceptor

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        for thing in reversed(self._opened):
            thing.close()
