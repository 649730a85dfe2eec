"""A character LCD (HD44780 or compatible: 16x2, 20x2, 20x4, 40x2) behind a PCF8574 I2C backpack.

The backpack's port drives the module in 4-bit mode: P0 RS, P1 RW, P2 E, P3 the backlight, P4-P7
D4-D7. Each byte to the module is two nibbles, high first, each latched by a pulse on E (written
with E high, then low, RS set before E rises). The set-up is the datasheet's initialisation by
instruction, which works whatever state the module is in (just powered, or left in 4-bit mode by
an earlier run): 0x3 three times with its waits, 0x2 (4-bit), then function set, display off,
clear, entry mode, the CGRAM glyphs (drivers.charmap) and display on.

Port bytes go out in one I2C write for each change of the screen (smbus2's i2c_rdwr; one write a
byte on a bus that has only `write_byte`). Waits: on the bus each byte takes 9 clocks, 90 us at the
PCF8574's 100 kHz, and E falls at most every second byte, so the 37 us an instruction or a data
write takes has always passed before the next one; the longer waits (power-on, the start of the
initialisation, clear) are sleeps between writes, through an injected `sleep` (time.sleep).

The driver keeps what the module holds and rewrites only the cells that changed, each run of them
behind one set-address instruction, so a screen redrawn every few seconds costs a few bytes. The
bus is written on a worker of the clock (a thread on the Pi), never on the caller's: `show` only
records the lines. A module that does not answer (no bus, nothing at the address, unplugged) is a
DeviceFault that the kiosk records while it sells on; the worker tries again every RETRY_S and
sets the module up afresh once it answers, since it may have lost power meanwhile.

Rows: the kiosk's two lines go on rows 0 and 1; the rows below stay blank on a 4-row module. A
1-row module shows the first line, and the second in turn with it every ALTERNATE_S.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import smbus2

from drivers import charmap
from drivers.base import DeviceError, DeviceFault, DeviceReady, Display, I2cBus, best_effort
from drivers.clock import Clock, Emit

log = logging.getLogger(__name__)

DEVICE = "display"
NO_BUS = "no_bus"  # the I2C bus cannot be opened
NO_ANSWER = "no_answer"  # nothing answers at the address
DRIVER_ERROR = "driver_error"

# The PCF8574's port bits.
RS, RW, E, BACKLIGHT = 0x01, 0x02, 0x04, 0x08

# Instructions.
CLEAR = 0x01
ENTRY_MODE = 0x04
ENTRY_INCREMENT = 0x02
DISPLAY_CONTROL = 0x08
DISPLAY_ON = 0x04
FUNCTION_SET = 0x20  # with DL = 0: 4-bit interface; F = 0: 5x8 dots
TWO_LINES = 0x08
SET_CGRAM = 0x40
SET_DDRAM = 0x80

# The datasheet's waits (fosc 270 kHz); every other instruction and a data write take 37 us,
# less than two bytes on the bus.
POWER_ON_S = 0.050  # more than 40 ms after Vcc reaches 2.7 V
FIRST_WAIT_S = 4.1e-3  # after the first 0x3
SECOND_WAIT_S = 100e-6  # after the second
CLEAR_S = 1.52e-3  # clear display, return home

RETRY_S = 5.0  # a module that does not answer is tried again this often
ALTERNATE_S = 2.5  # a 1-row module shows each line this long
MERGE_GAP = 1  # unchanged cells rewritten rather than a new set-address (4 bytes a cell vs 6)


def row_addresses(columns: int, rows: int) -> tuple[int, ...]:
    """Where each row starts in the module's DDRAM: a 4-row module is a 2-line controller whose
    lines each run over two rows (0x00, 0x40, 0x14, 0x54 on a 20x4; 0x10 and 0x50 on a 16x4)."""
    return (0x00, 0x40, columns, 0x40 + columns)[:rows]


def _clocked(value: int, flags: int) -> bytes:
    """The port bytes that clock `value` into the module: each nibble with E high, then low."""
    high = value & 0xF0 | flags
    low = (value << 4) & 0xF0 | flags
    return bytes((high | E, high, low | E, low))


_COMMANDS = [_clocked(v, BACKLIGHT) for v in range(256)]
_DATA = [_clocked(v, RS | BACKLIGHT) for v in range(256)]
_CHANGED = bytes([0]) + bytes([1]) * 255  # a cell's old code XOR its new one -> changed or not
_RUN = re.compile(b"\x01(?:\x00{0,%d}\x01)*" % MERGE_GAP)


def open_bus(number: int, address: int) -> Any:
    """smbus2's SMBus on /dev/i2c-<number>; DeviceError naming the bus and the module's address."""
    try:
        return smbus2.SMBus(number)
    except OSError as err:
        raise DeviceError(
            f"display: cannot open I2C bus {number} (/dev/i2c-{number}) for the HD44780 at "
            f"{address:#04x}: {err.strerror or err} (is I2C enabled, and the kiosk's user in "
            "group i2c?)"
        ) from err


class Hd44780Display(Display):
    """`settings`: the [display] section (columns, rows, i2c_bus, address)."""

    def __init__(self, settings: Any, clock: Clock, emit: Emit, i2c: I2cBus | None = None) -> None:
        self.columns: int = settings.columns
        self.rows: int = settings.rows
        self.bus_number: int = settings.i2c_bus
        self.address: int = settings.address
        self._clock = clock
        self._emit = emit
        self._own_bus = i2c is None
        self._smbus: Any = None if i2c is None else i2c.smbus
        self._port = 0xFF  # the last written; the PCF8574's outputs are all high at power-on
        self._sleep = time.sleep if i2c is None else i2c.sleep
        self._starts = row_addresses(self.columns, self.rows)
        self._lock = threading.Lock()  # the lines, between the caller and the worker
        self.lines = ("", "")
        self._stale = True  # lines shown since the worker last drew
        self._second = False  # a 1-row module shows the second line now
        self._flip_at = 0.0  # when a 1-row module shows the other line
        self._shown: list[bytes] | None = None  # what the module holds; None: set it up
        self._fault: str | None = None
        self._retry_at = 0.0
        self._ready = False  # DeviceReady told
        self._worker: Any = None
        self._closed = False

    # --- the Display interface ---------------------------------------------------------------

    def start(self) -> None:
        self._worker = self._clock.start_worker("display", self, self._emit)

    def show(self, line1: str, line2: str = "") -> None:
        lines = (line1[: self.columns], line2[: self.columns])
        with self._lock:
            if lines == self.lines:
                return
            self.lines = lines
            self._stale = True
        if self._worker is not None:
            self._worker.wake()

    def close(self) -> None:
        """Stop drawing, then blank the module and switch its backlight off (a stopped kiosk
        shows nothing); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self._shown is not None:
            try:
                self._send((_COMMANDS, bytes([CLEAR])))
                self._write(bytes([0]))  # the backlight off, E low
            except DeviceError as err:
                log.warning("cannot blank the display: %s", err)
        self._drop_bus()
        self.lines = ("", "")

    # --- the worker's task -------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        with self._lock:
            if self._closed:
                return None
            if self._fault is not None:
                return self._retry_at
            if self._stale or self._shown is None:
                return self._clock.monotonic()
            return self._flip_at if self.rows == 1 and self.lines[1] else None

    def service(self, now: float) -> list[Any]:
        if self._fault is not None and now < self._retry_at:
            return []  # new lines while the module does not answer: drawn once it does
        with self._lock:
            stale, self._stale = self._stale, False
            lines = self.lines
        if self.rows == 1 and (stale or now >= self._flip_at):
            self._second = not stale and not self._second  # new lines: the first one first
            self._flip_at = now + ALTERNATE_S
        try:
            if self._smbus is None:
                self._smbus = open_bus(self.bus_number, self.address)
        except DeviceError as err:
            return self._failed(NO_BUS, err, now)
        try:
            if self._shown is None:
                self._set_up()
            self._draw(self._screen(lines))
        except DeviceError as err:
            return self._failed(NO_ANSWER, err, now)
        return self._answered(now)

    def safe_state(self, error: Exception) -> list[Any]:
        """The worker failed on something else than the bus: set up afresh after a while (the
        display has no output that could be unsafe)."""
        failure = DeviceError(f"display driver: {error}")
        return self._failed(DRIVER_ERROR, failure, self._clock.monotonic())

    # --- drawing -----------------------------------------------------------------------------

    def _screen(self, lines: tuple[str, str]) -> list[bytes]:
        """The codes of each row for these lines, each row padded to the width."""
        if self.rows == 1:
            texts = [lines[1] if self._second and lines[1] else lines[0]]
        else:
            texts = [*lines, *[""] * (self.rows - 2)]
        return [charmap.cells(text).ljust(self.columns) for text in texts]

    def _draw(self, screen: list[bytes]) -> None:
        """Rewrite the cells that differ from what the module holds."""
        assert self._shown is not None
        ports = _redraw(self._starts, tuple(self._shown), tuple(screen), self._port & RS)
        if ports:
            self._write(ports)
            self._shown = screen

    def _set_up(self) -> None:
        """The datasheet's initialisation by instruction, then the glyphs; the module blank."""
        self._write(bytes([BACKLIGHT]))  # E and RW low: whatever the port held since power-on
        self._sleep(POWER_ON_S)
        # Function set, 8-bit, three times puts the module in step whatever its state; then 4-bit.
        for nibble, wait_s in ((0x3, FIRST_WAIT_S), (0x3, SECOND_WAIT_S), (0x3, 0.0), (0x2, 0.0)):
            self._nibble(nibble, wait_s)
        lines = TWO_LINES if self.rows > 1 else 0
        self._send((_COMMANDS, bytes([FUNCTION_SET | lines, DISPLAY_CONTROL, CLEAR])))
        self._sleep(CLEAR_S)
        glyphs = bytes(row for glyph in charmap.GLYPHS.values() for row in glyph)
        self._send((_COMMANDS, bytes([ENTRY_MODE | ENTRY_INCREMENT, SET_CGRAM])), (_DATA, glyphs))
        self._send((_COMMANDS, bytes([DISPLAY_CONTROL | DISPLAY_ON])))
        self._shown = [b" " * self.columns for _ in self._starts]

    def _nibble(self, nibble: int, wait_s: float) -> None:
        """One nibble alone, as an 8-bit instruction (the start of the set-up)."""
        port = nibble << 4 | BACKLIGHT
        self._write(bytes((port | E, port)))
        if wait_s:
            self._sleep(wait_s)

    def _send(self, *parts: tuple[list[bytes], bytes]) -> None:
        """Instructions (table _COMMANDS) and data (_DATA), in turn, in one go."""
        self._write(_port_bytes(parts, self._port))

    def _write(self, ports: bytes) -> None:
        """Port bytes, in one I2C write where the bus can (smbus2 can), else byte by byte."""
        rdwr = getattr(self._smbus, "i2c_rdwr", None)
        try:
            if rdwr is None:
                for port in ports:
                    self._smbus.write_byte(self.address, port)
            else:
                rdwr(smbus2.i2c_msg.write(self.address, ports))
        except OSError as err:
            raise DeviceError(
                f"display: the HD44780 at {self.address:#04x} on I2C bus {self.bus_number} does "
                f"not answer: {err.strerror or err}"
            ) from err
        self._port = ports[-1]

    # --- faults ------------------------------------------------------------------------------

    def _failed(self, code: str, err: DeviceError, now: float) -> list[Any]:
        self._shown = None  # set up afresh once it answers
        self._port = 0xFF
        self._drop_bus()
        self._retry_at = now + RETRY_S
        if self._fault == code:
            return []
        log.warning("%s; the kiosk sells on, the display is tried again every %g s", err, RETRY_S)
        events: list[Any] = []
        if self._fault is not None:
            events.append(DeviceFault(DEVICE, self._fault, False, f"now {code}", now))
        self._fault = code
        events.append(DeviceFault(DEVICE, code, True, str(err), now))
        return events

    def _answered(self, now: float) -> list[Any]:
        events: list[Any] = []
        if self._fault is not None:
            log.info("display: the HD44780 at %#04x answers again", self.address)
            events.append(DeviceFault(DEVICE, self._fault, False, "answers again", now))
            self._fault = None
        if not self._ready:
            self._ready = True
            where = f"at {self.address:#04x} on I2C bus {self.bus_number}"
            events.append(DeviceReady(DEVICE, f"HD44780 {self.columns}x{self.rows} {where}", now))
        return events

    def _drop_bus(self) -> None:
        if self._own_bus and self._smbus is not None:
            best_effort("display: closing the I2C bus", self._smbus.close)
            self._smbus = None


def _port_bytes(parts: Iterable[tuple[list[bytes], bytes]], last: int) -> bytes:
    """The port bytes for instructions (table _COMMANDS) and data (_DATA) in turn, after the
    port byte `last`."""
    ports = bytearray()
    for table, values in parts:
        clocked = b"".join(map(table.__getitem__, values))
        if (last ^ clocked[1]) & RS:
            ports.append(clocked[1])  # RS settles before E rises
        ports += clocked
        last = clocked[-1]
    return bytes(ports)


@functools.lru_cache(maxsize=256)  # a kiosk turns through the same few screens all day
def _redraw(
    starts: tuple[int, ...], held: tuple[bytes, ...], new: tuple[bytes, ...], last: int
) -> bytes:
    """The port bytes that turn the rows `held` into `new`: each run of changed cells behind
    the instruction that sets its address."""
    parts = []
    for start, old, row in zip(starts, held, new, strict=True):
        if old != row:
            for first, end in _runs(old, row):
                parts += [
                    (_COMMANDS, bytes([SET_DDRAM | (start + first)])),
                    (_DATA, row[first:end]),
                ]
    return _port_bytes(parts, last) if parts else b""


def _runs(held: bytes, new: bytes) -> list[tuple[int, int]]:
    """(first, end) of each run of cells to rewrite: the changed ones, with gaps of up to
    MERGE_GAP unchanged cells rewritten too."""
    size = len(new)
    changed = (int.from_bytes(held, "big") ^ int.from_bytes(new, "big")).to_bytes(size, "big")
    return [m.span() for m in _RUN.finditer(changed.translate(_CHANGED))]
