"""ccTalk over a serial port: one request, one reply, with local echo, timeouts and retries.

The port is opened with pyserial's `serial_for_url`, so a device path, a pseudo-terminal or a
`loop://` URL all work. On a single-wire ccTalk bus the host hears its own bytes: they are read
back and compared with what was sent (echo "on"), not expected ("off"), or detected on the first
exchange ("auto"). A reply must start within the command's reply timeout and its bytes must follow
each other within 50 ms. A failed exchange is tried again up to `retries` times. The last frames
exchanged are kept in a ring buffer and written to the log when something goes wrong.

The port is opened exclusively (a second kiosk on the same port is refused, naming the process
that holds it). A port that fails under us (EIO from an unplugged USB interface, a tty that
vanished) raises PortGone from any operation; the owner closes it and opens it again later.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import termios
import time
from dataclasses import dataclass
from typing import Any

import serial

from drivers.base import DeviceError
from drivers.cctalk_codec import (
    BUSY,
    HOST,
    INTER_BYTE_S,
    NAK,
    Checksum,
    Frame,
    FrameParser,
    encode,
)

log = logging.getLogger(__name__)

BAUD = 9600
POLL_SLICE_S = 0.25  # longest single wait, so a closed port is noticed
SETTLE_MAX_S = 2.0


class NoReply(DeviceError, TimeoutError):
    """The device stayed silent, or answered with something that is not a valid reply."""


class Refused(DeviceError):
    """The device answered NAK or BUSY to every try."""


class PortGone(DeviceError):
    """The port itself failed or is absent (not the device's silence): close, reopen later."""


class PortBusy(DeviceError):
    """The port is held by another process: a second kiosk on the same acceptor."""


# What a failing port raises underneath pyserial's own SerialException.
PORT_ERRORS = (OSError, termios.error, serial.SerialException)


@dataclass(frozen=True)
class Traffic:
    at: float
    direction: str  # "tx", "rx" or "echo"
    data: bytes

    def __str__(self) -> str:
        return f"{self.at:.3f} {self.direction:>4} {self.data.hex(' ')}"


class Transport:
    def __init__(
        self,
        port: str,
        address: int,
        *,
        checksum: Checksum = Checksum.SIMPLE,
        echo: str = "auto",
        reply_timeout_s: float = 0.1,
        retries: int = 3,
        baud: int = BAUD,
        history: int = 32,
        command_gap_s: float = 0.0,
    ) -> None:
        if echo not in ("auto", "on", "off"):
            raise ValueError(f"echo must be auto, on or off (got {echo!r})")
        self.port_name = port
        self.address = address
        self.checksum = checksum
        self._echo_setting: bool | None = None if echo == "auto" else echo == "on"
        self.echo = self._echo_setting
        self.reply_timeout_s = reply_timeout_s
        self.retries = retries
        self.baud = baud
        self.recent: collections.deque[Traffic] = collections.deque(maxlen=history)
        self.command_gap_s = command_gap_s  # some devices need a pause before the next command
        self._last_reply_at = 0.0
        self._serial: Any = None

    def open(self) -> None:
        """Open the port for this process alone; PortBusy if another holds it, PortGone if it
        cannot be opened (absent, not yet enumerated, no permission). An echo learnt on the
        line before is forgotten: the port may now lead to another interface."""
        self.echo = self._echo_setting
        try:
            self._serial = serial.serial_for_url(
                self.port_name, baudrate=self.baud, timeout=0, write_timeout=1.0, exclusive=True
            )
        except serial.SerialException as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                holder = lock_holder(self.port_name)
                by = f"process {holder}" if holder else "another process"
                raise PortBusy(
                    f"ccTalk port {self.port_name} is in use by {by}: is another kiosk running "
                    "on this acceptor?"
                ) from err
            raise PortGone(f"ccTalk port {self.port_name}: {err}") from err
        except (OSError, ValueError) as err:
            raise PortGone(f"ccTalk port {self.port_name}: {err}") from err

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def close(self) -> None:
        """Release the port; a port that already failed is let go all the same."""
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except PORT_ERRORS as err:
                log.debug("ccTalk port %s: closing: %s", self.port_name, err)

    def request(
        self,
        header: int,
        data: bytes = b"",
        timeout_s: float | None = None,
        retries: int | None = None,
        length: tuple[int, ...] | None = None,
    ) -> Frame:
        """Send a command to the device; return its reply (header 0, with one of the `length`s
        of data if given) or raise after retries: NoReply or Refused from the device, PortGone
        from the port."""
        try:
            return self._request(header, data, timeout_s, retries, length)
        except DeviceError:
            raise
        except PORT_ERRORS as err:
            raise PortGone(f"ccTalk port {self.port_name}: {err}") from err

    def _request(
        self,
        header: int,
        data: bytes,
        timeout_s: float | None,
        retries: int | None,
        length: tuple[int, ...] | None,
    ) -> Frame:
        problem: DeviceError = NoReply(f"ccTalk {self.port_name}: header {header}: no reply")
        for attempt in range(1 + (self.retries if retries is None else retries)):
            timeout = timeout_s or self.reply_timeout_s
            try:
                reply = self._exchange(header, data, timeout)
            except (NoReply, Refused) as err:
                problem = err
                log.debug("ccTalk header %d, try %d: %s", header, attempt + 1, err)
                self._settle(timeout)
                continue
            if length is None or len(reply.data) in length:
                return reply
            problem = NoReply(
                f"ccTalk {self.port_name}: header {header}: reply of {len(reply.data)} bytes"
            )
            self._settle(timeout)
        raise problem

    def _settle(self, quiet_s: float) -> None:
        """After a failed exchange, wait until the line has been quiet for a reply timeout: a
        late reply must not be taken for the answer to the retry, or to the next command (a
        device slower than the timeout then fails plainly). It is also the back-off."""
        if self._serial is None:
            return
        limit = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < limit and self._read_until(time.monotonic() + quiet_s):
            pass

    def _exchange(self, header: int, data: bytes, timeout_s: float) -> Frame:
        if self._serial is None:
            raise PortGone(f"ccTalk port {self.port_name} is not open")
        tx = encode(Frame(self.address, header, data, HOST), self.checksum)
        pause = self._last_reply_at + self.command_gap_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self._serial.reset_input_buffer()
        self._serial.write(tx)
        self._note("tx", tx)
        raw = self._read_reply(tx, timeout_s)
        if raw.header in (NAK, BUSY):
            raise Refused(
                f"ccTalk {self.port_name}: header {header}: "
                f"{'NAK' if raw.header == NAK else 'BUSY'}"
            )
        if raw.header != 0:
            raise NoReply(f"ccTalk {self.port_name}: reply with header {raw.header}")
        return raw

    def _read_reply(self, tx: bytes, timeout_s: float) -> Frame:
        parser = FrameParser(self.checksum, source=self.address, destination=HOST)
        deadline = time.monotonic() + timeout_s
        # The first bytes are looked at as a possible echo whatever the setting: an echo where
        # none is expected is a wrong setting, which is said at once.
        echo: bytearray | None = bytearray()
        started = False
        while True:
            # The first byte may take the reply timeout; each next one at most 50 ms.
            limit = time.monotonic() + INTER_BYTE_S if started else deadline
            chunk = self._read_until(limit)
            if not chunk:
                raise NoReply(f"ccTalk {self.port_name}: no reply")
            started = True
            if echo is not None:
                echo += chunk
                if len(echo) < len(tx) and tx.startswith(echo):
                    continue
                if echo.startswith(tx):
                    if self.echo is False:
                        raise DeviceError(
                            f"ccTalk {self.port_name}: the line echoes but echo is off "
                            "(set it to on or auto)"
                        )
                    self._note("echo", tx)
                    self.echo = True
                    chunk = bytes(echo[len(tx) :])
                elif self.echo:
                    raise NoReply(f"ccTalk {self.port_name}: echo differs from what was sent")
                else:  # "auto" on a link without echo, or "off": this is the reply
                    self.echo = False
                    chunk = bytes(echo)
                echo = None
                started = bool(chunk)
                if not started:
                    deadline = time.monotonic() + timeout_s
                    continue
            for frame in parser.feed(chunk, time.monotonic()):
                raw = encode(frame, self.checksum)
                self._note("rx", raw)
                if frame.source == self.address:
                    self._last_reply_at = time.monotonic()
                    return frame
            # The rest of the frame needs this long on the wire: no use waking up for each byte.
            time.sleep(min(parser.missing * 10 / self.baud, INTER_BYTE_S / 2))

    def _read_until(self, limit: float) -> bytes:
        """Whatever arrives before `limit` (monotonic), returned as soon as anything arrives."""
        port = self._serial
        while True:
            waiting = port.in_waiting
            if waiting:
                return bytes(port.read(waiting))
            remaining = limit - time.monotonic()
            if remaining <= 0:
                return b""
            self._wait_readable(min(remaining, POLL_SLICE_S))

    def _wait_readable(self, timeout_s: float) -> None:
        # select() on the descriptor: changing pyserial's timeout would reprogram the tty.
        fileno = getattr(self._serial, "fileno", None)
        if fileno is None:  # a URL port without a descriptor (loop://, socket:// ...)
            time.sleep(min(timeout_s, 0.001))
            return
        select.select([fileno()], [], [], timeout_s)

    def _note(self, direction: str, data: bytes) -> None:
        self.recent.append(Traffic(time.monotonic(), direction, data))

    def dump(self, reason: str) -> None:
        """Write the recent traffic to the log, oldest first."""
        log.warning(
            "ccTalk %s: %s; recent traffic:\n%s",
            self.port_name,
            reason,
            "\n".join(str(t) for t in self.recent),
        )


def lock_holder(path: str) -> int | None:
    """The process holding a flock on the device node at `path`, from /proc/locks (Linux)."""
    try:
        node = os.stat(path)
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5 0 EOF": the pid, then major:minor:inode (hex:hex:dec)
    where = f"{os.major(node.st_dev):02x}:{os.minor(node.st_dev):02x}:{node.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            return int(fields[4])
    return None
