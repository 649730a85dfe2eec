"""A ccTalk coin acceptor on a serial port (SR5i, X6, RM5, G-13 and any conforming device).

The serial shell around the sans-IO session (drivers.cctalk_session): one poller worker owns the
port and drives the session's procedures over the transport; the core only sets what it wants
(accepting or not, which coin values) and receives events, and never waits on the line. The port
may come and go: absent at start, it is tried again every `REOPEN_S`; failing under us (an
unplugged USB interface), it is closed, the device reported lost, and reopened until the device
answers, its identity is checked again and coins are enabled again. Each recovery attempt
reopens the port, so a device node that was replaced (same path, new device) is picked up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from drivers.base import CoinAcceptor, DeviceError, DeviceFault
from drivers.cctalk_codec import Checksum
from drivers.cctalk_session import DEVICE, CcTalkSession, Command, Procedure, drive
from drivers.cctalk_transport import PortGone, Transport
from drivers.clock import Clock, Emit

log = logging.getLogger(__name__)

REOPEN_S = 2.0
CLOSE_RETRIES = 1


@dataclass(frozen=True)
class CcTalkSettings:
    """`[coin_acceptor]` settings of the ccTalk driver."""

    port: str
    address: int = field(default=2, metadata={"min": 2, "max": 255})
    checksum: str = field(default="8bit", metadata={"choices": ("8bit", "crc16")})
    echo: str = field(default="auto", metadata={"choices": ("auto", "on", "off")})
    poll_interval_ms: int = field(default=150, metadata={"min": 100, "max": 200})
    reply_timeout_ms: int = field(default=100, metadata={"min": 10, "max": 2000})
    slow_reply_timeout_ms: int = field(default=1000, metadata={"min": 10, "max": 5000})
    retries: int = field(default=3, metadata={"min": 0, "max": 5})
    baud: int = field(default=9600, metadata={"choices": (4800, 9600, 19200, 38400, 115200)})
    lost_after: int = field(default=5, metadata={"min": 2, "max": 50})
    command_gap_ms: float = field(default=0.0, metadata={"min": 0.0, "max": 100.0})


class CcTalkCoinAcceptor(CoinAcceptor):
    name = "cctalk"
    per_coin_inhibit = True  # modify inhibit status (231), position by position

    def __init__(
        self,
        settings: CcTalkSettings,
        coins_cents: tuple[int, ...],
        clock: Clock,
        emit: Emit,
        pin_factory: Any = None,  # no pins: the acceptor is on a serial port
    ) -> None:
        self.coins_cents = coins_cents
        self._settings = settings
        self._clock = clock
        self._emit = emit
        self.transport = Transport(
            settings.port,
            settings.address,
            checksum=Checksum(settings.checksum),
            echo=settings.echo,
            reply_timeout_s=settings.reply_timeout_ms / 1000,
            retries=settings.retries,
            baud=settings.baud,
            command_gap_s=settings.command_gap_ms / 1000,
        )
        self.session = CcTalkSession(
            coins_cents,
            where=f"ccTalk {settings.port}",
            poll_interval_s=settings.poll_interval_ms / 1000,
            lost_after=settings.lost_after,
        )
        self._reopen_at: float | None = None
        self._last_error = ""
        self._worker: Any = None

    @property
    def identity(self) -> Any:
        return self.session.identity

    @property
    def values(self) -> dict[int, int]:
        return self.session.values

    @property
    def cvf(self) -> bool:
        return self.session.cvf

    # --- the CoinAcceptor interface --------------------------------------------------------

    def resume_from(self, cursor: str | None) -> None:
        self.session.resume_from(cursor)

    def start(self) -> None:
        try:
            self.transport.open()  # PortBusy (another kiosk) goes to the caller
        except PortGone as err:  # not there yet: the poller keeps trying
            self._port_failed(err, self._clock.monotonic())
        self._emit_all(self.session.take_events())
        self._worker = self._clock.start_worker(f"cctalk {self._settings.port}", self, self._emit)

    def set_accepting(self, accepting: bool) -> None:
        self.session.wanted = accepting
        if self._worker is not None:
            self._worker.wake()

    @property
    def is_accepting(self) -> bool:
        return self.session.is_accepting

    def set_denominations(self, cents: frozenset[int]) -> None:
        """Per coin position: the poller sends the inhibit mask at its next exchange."""
        self.session.set_denominations(cents)
        if self._worker is not None:
            self._worker.wake()

    @property
    def denominations(self) -> frozenset[int]:
        return self.session.denominations

    def close(self) -> None:
        """Stop polling, then inhibit the device: tried even if it was lost, since it may
        answer again; the port is released whatever happens."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        try:
            if not self.transport.is_open:
                self.transport.open()
            self._run(self.session.inhibit(), retries=CLOSE_RETRIES)
        except DeviceError as err:
            log.warning("cannot inhibit the coin acceptor on close: %s", err)
        finally:
            self.transport.close()

    # --- the poller (a worker of the clock) ------------------------------------------------

    def next_deadline(self) -> float | None:
        if not self.transport.is_open:
            return self._reopen_at
        return self.session.next_due()

    def service(self, now: float) -> list[Any]:
        reopened = False
        if not self.transport.is_open and self._reopen_at is not None and now >= self._reopen_at:
            self._reopen(now)
            reopened = True
        if self.transport.is_open and now >= self.session.next_due():
            if self.session.lost and not reopened:
                self._reopen(now)  # a replaced device node is only seen by opening it again
            if self.transport.is_open:
                self._poll(now)
        return self.session.take_events()

    def safe_state(self, error: Exception) -> list[Any]:
        """The poller failed: the inhibit is sent here, not left to a poll that may fail again."""
        try:
            self._run(self.session.inhibit(), retries=CLOSE_RETRIES)
        except DeviceError as err:
            log.warning("cannot inhibit the coin acceptor: %s", err)
        now = self._clock.monotonic()
        return [DeviceFault(DEVICE, "driver_error", True, f"ccTalk driver: {error}", now)]

    def _poll(self, now: float) -> None:
        try:
            self._run(self.session.step(now))
            self._last_error = ""
        except PortGone as err:
            self._port_failed(err, now)
        except DeviceError as err:
            self._say_once(err)
            if self.session.failed(err, now):
                self.transport.dump(f"device lost: {err}")

    def _reopen(self, now: float) -> None:
        self.transport.close()
        try:
            self.transport.open()
            self._reopen_at = None
        except DeviceError as err:  # busy or still absent: try again later
            self._port_failed(err, now)

    def _port_failed(self, err: DeviceError, now: float) -> None:
        self._say_once(err)
        self.transport.close()
        self._reopen_at = now + REOPEN_S
        self.session.set_lost(str(err), now)

    def _say_once(self, err: DeviceError) -> None:
        if str(err) != self._last_error:  # each new trouble once, not every second
            log.warning("%s", err)
            self._last_error = str(err)

    def _run(self, procedure: Procedure, retries: int | None = None) -> None:
        """A session procedure over the transport; a failing port abandons it (PortGone)."""
        drive(procedure, lambda command: self._request(command, retries), fatal=(PortGone,))

    def _request(self, command: Command, retries: int | None) -> bytes:
        timeout_s = self._settings.slow_reply_timeout_ms / 1000 if command.slow else None
        reply = self.transport.request(
            command.header,
            command.data,
            timeout_s=timeout_s,
            retries=command.retries if retries is None else retries,
            length=command.lengths,
        )
        return reply.data

    def _emit_all(self, events: list[Any]) -> None:
        for event in events:
            self._emit(event)
