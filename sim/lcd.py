"""A character LCD on the kiosk's I2C bus, as the bus sees it: a PCF8574 backpack at its address
driving an HD44780 with the A00 ROM, decoded byte by byte.

SMBus-like: `write_byte(address, value)` and `i2c_rdwr(*messages)` (smbus2's i2c_msg writes), each
byte the backpack's port (P0 RS, P1 RW, P2 E, P3 backlight, P4-P7 D4-D7). The module latches
D4-D7 as E falls: after power-on in 8-bit mode (one nibble an instruction, since the backpack
leaves D0-D3 unwired) until a function set asks for 4 bits, then two nibbles a byte, high first.
It carries out the instructions a kiosk uses: clear, home, entry mode, display on/off, cursor
moves, function set, set CGRAM or DDRAM address, and data written to either. Its time is the
bus's (9 clocks a byte at `bus_hz`, with a start, the address and a stop for each write) and the
driver's waits (`sleep`), so a write that comes before the module is ready is caught.

Misuse that a real module would garble raises LcdMisuse and is kept in `errors`: anything before
the initialisation (a write too soon after power-on, 4-bit mode asked before the three 0x3, data
or an instruction before the function set), a write while the module is busy, RS or the data
lines changing as E moves, a DDRAM address the module does not have. A byte to another address,
or while the module is unplugged, is not acknowledged: OSError, as smbus2 raises.

What the screen holds: `ddram`, `cgram`, each CGRAM slot's dots (`bitmap`) and `screen`, the rows
as a shopper reads them. A CGRAM glyph is read from its dots with this module's own table of what
accented letters look like, so a glyph drawn wrong reads as UNKNOWN.
"""

from __future__ import annotations

import collections
import errno
import functools
import os
from collections.abc import Sequence
from typing import Any, NoReturn

RS, RW, E, BACKLIGHT, DATA = 0x01, 0x02, 0x04, 0x08, 0xF0

POWER_ON_S = 40e-3
FIRST_S = 4.1e-3  # after the first 0x3 of the initialisation
SECOND_S = 100e-6  # after the second
SLOW_S = 1.52e-3  # clear, home
EXEC_S = 37e-6
BUS_HZ = 100_000  # the PCF8574's most (and a Raspberry Pi's I2C default)
I2C_M_RD = 0x0001  # a read, in an I2C message's flags
UNKNOWN = "\ufffd"  # what a code or a glyph nobody would recognise reads as
LINE_CELLS = 40  # each of the two lines of DDRAM (0x00-0x27, 0x40-0x67); one line has 80


def _rom() -> dict[int, str]:
    """The A00 ROM's characters as a reader names them, by code."""
    table = {code: chr(code) for code in range(0x20, 0x7E)}
    table.update({code: chr(0xFF61 + code - 0xA1) for code in range(0xA1, 0xE0)})  # kana
    table.update({0x5C: "¥", 0x7E: "→", 0x7F: "←", 0xA0: " ", 0xA5: "·", 0xDF: "°"})
    # 0xE0-0xFF: Greek letters, signs, and g j p q y drawn with their descenders.
    upper = "\N{GREEK SMALL LETTER ALPHA}äβεµ\N{GREEK SMALL LETTER SIGMA}\N{GREEK SMALL LETTER RHO}"
    upper += "g√?j?¢?ñöpqθ∞ΩüΣπ?y千万円÷ █"
    table.update({0xE0 + i: char for i, char in enumerate(upper) if char != "?"})
    return table


ROM = _rom()


# For bytes at once: RS in a port byte; by RS, a nibble's port byte with E low -> the same with E
# high (0 for any other byte); the nibble in a port byte; a nibble moved to the high half.
_RS_OF = bytes(v & RS for v in range(256))
_WITH_E = [
    bytes(v | E if v & RS == rs and not v & (E | RW) else 0 for v in range(256)) for rs in (0, RS)
]
_HIGH_NIBBLE = bytes(v >> 4 for v in range(256))
_SHIFTED = bytes((v << 4) & 0xFF for v in range(256))


@functools.lru_cache(maxsize=1024)  # a kiosk writes the same few screens all day
def _decoded(data: bytes) -> tuple[int, bytes] | None:
    """What bytes with one RS clock in when they are regular (maybe a byte that sets RS, then
    whole bytes, each nibble with E high, then low): (1 if that first byte is there else 0,
    the bytes clocked in); None for any other bytes."""
    skip = 0 if data[0] & E else 1
    pairs = data[skip:]
    if not pairs or len(pairs) % 4 or data[0] & RW:
        return None
    if pairs[1::2].translate(_WITH_E[data[0] & RS]) != pairs[0::2]:
        return None
    nibbles = pairs[1::2].translate(_HIGH_NIBBLE)
    highs = int.from_bytes(nibbles[0::2].translate(_SHIFTED), "big")
    return skip, (highs | int.from_bytes(nibbles[1::2], "big")).to_bytes(len(pairs) // 4, "big")


def _dots(*rows: str) -> tuple[int, ...]:
    return tuple(int(row.replace(".", "0").replace("#", "1"), 2) for row in rows)


# Accented letters as people recognise them on a 5x8 cell.
READINGS: dict[tuple[int, ...], str] = {
    _dots("...#.", "..#..", ".###.", "#...#", "#####", "#....", ".###.", "....."): "é",
    _dots(".#...", "..#..", ".###.", "#...#", "#####", "#....", ".###.", "....."): "è",
    _dots("..#..", ".#.#.", ".###.", "#...#", "#####", "#....", ".###.", "....."): "ê",
    _dots(".#...", "..#..", ".###.", "....#", ".####", "#...#", ".####", "....."): "à",
    _dots("...#.", "..#..", "#####", "#....", "####.", "#....", "#####", "....."): "É",
    _dots(".....", ".###.", "#....", "#....", "#...#", ".###.", "..#..", ".##.."): "ç",
    _dots(".....", ".....", ".#.#.", "#.#.#", "#.###", "#.#..", ".#.##", "....."): "œ",
    _dots("..###", ".#...", "####.", ".#...", "####.", ".#...", "..###", "....."): "€",
}


class LcdMisuse(RuntimeError):
    """The module was driven in a way a real one would garble."""


class SimCharLcd:
    """The backpack at `address` and a `columns` x `rows` module behind it, on a bus clocked at
    `bus_hz`."""

    def __init__(
        self, address: int = 0x27, columns: int = 20, rows: int = 2, bus_hz: float = BUS_HZ
    ) -> None:
        self.address = address
        self._bit_s = 1 / bus_hz
        # A bus so fast that E could fall again before a write is done: every byte in turn.
        self._bus_outpaces = 2 * 9 * self._bit_s < EXEC_S
        self.columns = columns
        # A 4-row module is a 2-line controller whose lines each run on over a second row.
        self.row_addresses = (0x00, 0x40, columns, 0x40 + columns)[:rows]
        self.plugged = True
        self.now_s = 0.0  # the module's own time, moved on by the bus and by `sleep`
        self.errors: list[str] = []
        self.history: collections.deque[str] = collections.deque(maxlen=200)  # instructions
        self.bytes_written = 0
        self.power_on()

    def power_on(self) -> None:
        """Power comes (back): the state of the module's internal reset."""
        self._powered_at = self.now_s
        self._port = 0xFF  # the PCF8574's outputs are all high at power-on
        self._eight_bit = True
        self._resets = 0  # 0x3 instructions seen in 8-bit mode since power-on
        self._set = False  # a 4-bit function set has been given
        self._high: tuple[int, int] | None = None  # (nibble, RS) waiting for its low half
        self._busy_until = 0.0
        self._busy_with = ""
        self.ddram = bytearray(b" " * 0x80)
        self.cgram = bytearray(64)
        self._ac = 0
        self._in_cgram = False
        self._step = 1
        self.display_on = self.cursor_on = self.blink_on = False
        self.two_lines = False

    def unplug(self) -> None:
        """The backpack is gone from the bus (a loose cable): nothing acknowledges."""
        self.plugged = False

    def plug(self) -> None:
        """Back on the bus, and powered anew."""
        self.plugged = True
        self.power_on()

    # --- the bus ---------------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """The driver waits: the module's time moves on."""
        self.now_s += seconds

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self._write(i2c_addr, (value,))

    def i2c_rdwr(self, *messages: Any) -> None:
        """I2C transfers (smbus2.i2c_msg): writes, each the port's bytes in turn."""
        for message in messages:
            if message.flags & I2C_M_RD:
                raise OSError(errno.EOPNOTSUPP, "reading the port is not simulated")
            self._write(message.addr, bytes(message))

    def _write(self, i2c_addr: int, values: Sequence[int]) -> None:
        byte_s = 9 * self._bit_s
        self.now_s += self._bit_s + byte_s  # the start and the address
        if i2c_addr != self.address or not self.plugged:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))  # no acknowledge
        data = bytes(values)  # ValueError for a value beyond 0-255
        self.bytes_written += len(data)
        # Each run of bytes with one RS (instructions, or text) at once where it can be.
        rs, at = data.translate(_RS_OF), 0
        while at < len(data):
            end = rs.find(rs[at] ^ 1, at) % (len(data) + 1)  # -1 (none) is the end
            if not self._clocked(data[at:end], rs[at], byte_s):
                self._write_bytes(data[at:end], byte_s)
            at = end
        self.now_s += self._bit_s  # the stop

    def _write_bytes(self, data: bytes, byte_s: float) -> None:
        for value in data:
            self.now_s += byte_s  # the port takes the byte as it is acknowledged
            before, self._port = self._port, value
            if not before & E:
                if value & E and (before ^ value) & (RS | RW):
                    self._misuse("RS or RW changed as E rose (no set-up time)")
            elif before & RW:
                pass  # a read cycle (the port's power-on state is all high) changes nothing
            elif (before ^ value) & (RS | RW):
                self._misuse("RS or RW changed while E was high")
            elif not value & E:
                if (before ^ value) & DATA:
                    self._misuse("D4-D7 changed as E fell (no hold time)")
                self._latch(before >> 4, before & RS)

    def _clocked(self, data: bytes, rs: int, byte_s: float) -> bool:
        """Bytes with one RS, maybe the first setting it, then whole bytes clocked the usual way
        (each nibble with E high, then low) into a module in step: instructions none of which
        keeps it busy past the next, or text into DDRAM within a line. Carried out at once, to
        the same effect as byte by byte; False, and nothing done, for any other bytes."""
        decoded = _decoded(data)
        if decoded is None:
            return False
        skip, values = decoded
        count = len(values)
        if (
            self._port & E
            or (not skip and (self._port ^ rs) & (RS | RW))  # as E rises
            or self._eight_bit
            or not self._set
            or self._high is not None
            or self._bus_outpaces
            or self.now_s + (skip + 2) * byte_s < self._busy_until  # the first E fall
        ):
            return False
        if rs:
            line_end = (self._ac & 0x40) + LINE_CELLS if self.two_lines else 2 * LINE_CELLS
            if self._in_cgram or self._step != 1 or self._ac + count > line_end:
                return False
            self.ddram[self._ac : self._ac + count] = values
            self._move(count)
            self._busy_until = self.now_s + len(data) * byte_s + EXEC_S  # from the last E fall
            self._busy_with = "a data write"
        else:
            if count > 1 and any(0x01 <= value <= 0x03 for value in values[:-1]):
                return False  # clear or home, then more: too soon
            start_s = self.now_s
            for i, value in enumerate(values):
                self.now_s = start_s + (skip + 4 * i + 4) * byte_s  # its second E fall
                self._instruction(value)
            self.now_s = start_s
        self._port = data[-1]
        self.now_s += len(data) * byte_s
        return True

    # --- the controller --------------------------------------------------------------------

    def _latch(self, nibble: int, rs: int) -> None:
        if self.now_s < self._busy_until:
            early_us = (self._busy_until - self.now_s) * 1e6
            self._misuse(f"written {early_us:.0f} us too early: still busy with {self._busy_with}")
        if self._eight_bit:
            self._latch_8bit(nibble, rs)
        elif self._high is None:
            self._high = (nibble, rs)
        else:
            high, high_rs = self._high
            self._high = None
            if high_rs != rs:
                self._misuse("RS changed between the two nibbles of a byte")
            if rs:
                self._data(high << 4 | nibble)
            else:
                self._instruction(high << 4 | nibble)

    def _latch_8bit(self, nibble: int, rs: int) -> None:
        since_ms = (self.now_s - self._powered_at) * 1e3
        if since_ms < POWER_ON_S * 1e3:
            self._misuse(f"written {since_ms:.1f} ms after power-on (more than 40 ms needed)")
        if rs:
            self._misuse("data in 8-bit mode, before the 4-bit initialisation")
        if nibble == 0x3:
            self._resets += 1
            self._set = False
            wait_s = (FIRST_S, SECOND_S)[self._resets - 1] if self._resets <= 2 else EXEC_S
            self._did(f"function set 8-bit ({self._resets})", wait_s)
        elif nibble == 0x2:
            if self._resets < 3:
                self._misuse(f"4-bit mode asked after {self._resets} of the three 0x3")
            self._eight_bit = False
            self._did("function set 4-bit", EXEC_S)
        else:
            self._misuse(f"instruction {nibble:#x}0 in 8-bit mode: D0-D3 are not wired")

    def _instruction(self, value: int) -> None:
        wait_s = EXEC_S
        if value & 0x80:
            address = value & 0x7F
            if not self._exists(address):
                self._misuse(f"DDRAM address {address:#04x} does not exist")
            self._ac, self._in_cgram = address, False
            what = f"DDRAM address {address:#04x}"
        elif value & 0x40:
            self._ac, self._in_cgram = value & 0x3F, True
            what = f"CGRAM address {self._ac:#04x}"
        elif value & 0x20:
            self._eight_bit = bool(value & 0x10)
            self._set = not self._eight_bit
            self.two_lines = bool(value & 0x08)
            bits = 8 if self._eight_bit else 4
            what = f"function set {bits}-bit, {2 if self.two_lines else 1} line(s)"
        elif not self._set:
            self._misuse(f"instruction {value:#04x} before the function set")
        elif value & 0x10:
            if value & 0x08:
                self._misuse("display shift is not simulated")
            self._move(1 if value & 0x04 else -1)
            what = "cursor move"
        elif value & 0x08:
            self.display_on, self.cursor_on, self.blink_on = (bool(value & b) for b in (4, 2, 1))
            what = f"display {'on' if self.display_on else 'off'}"
        elif value & 0x04:
            if value & 0x01:
                self._misuse("entry mode with display shift is not simulated")
            self._step = 1 if value & 0x02 else -1
            what = f"entry mode {'increment' if self._step > 0 else 'decrement'}"
        elif value & 0x02:
            self._ac, self._in_cgram, wait_s, what = 0, False, SLOW_S, "home"
        elif value & 0x01:
            self.ddram[:] = b" " * len(self.ddram)
            self._ac, self._in_cgram, self._step, wait_s, what = 0, False, 1, SLOW_S, "clear"
        else:
            what = "no instruction (0x00)"
        self._did(what, wait_s)

    def _data(self, value: int) -> None:
        if not self._set:
            self._misuse("data before the initialisation")
        if self._in_cgram:
            self.cgram[self._ac] = value
            self._ac = (self._ac + self._step) & 0x3F
        else:
            self.ddram[self._ac] = value
            self._move(self._step)
        self._busy_until = self.now_s + EXEC_S
        self._busy_with = "a data write"

    def _did(self, what: str, wait_s: float) -> None:
        self.history.append(what)
        self._busy_until = self.now_s + wait_s
        self._busy_with = what

    def _exists(self, address: int) -> bool:
        if self.two_lines:
            return address & 0x3F < LINE_CELLS
        return address < 2 * LINE_CELLS

    def _move(self, step: int) -> None:
        """The address counter moves on in DDRAM: in 2-line mode 0x27 is followed by 0x40 and
        0x67 by 0x00."""
        if self._in_cgram:
            self._ac = (self._ac + step) & 0x3F
        elif self.two_lines:
            cell = (self._ac & 0x3F) + (LINE_CELLS if self._ac & 0x40 else 0)
            cell = (cell + step) % (2 * LINE_CELLS)
            self._ac = cell if cell < LINE_CELLS else 0x40 + cell - LINE_CELLS
        else:
            self._ac = (self._ac + step) % (2 * LINE_CELLS)

    def _misuse(self, what: str) -> NoReturn:
        """Refused; the module is left out of step, as a garbled one would be, until it is set
        up again by instruction (the three 0x3 put it in step whatever its state)."""
        self.errors.append(what)
        self._eight_bit, self._resets, self._set, self._high = True, 3, False, None
        raise LcdMisuse(f"LCD at {self.address:#04x}: {what}")

    # --- what the screen holds -------------------------------------------------------------

    @property
    def backlight(self) -> bool:
        return bool(self._port & BACKLIGHT)

    def bitmap(self, slot: int) -> tuple[int, ...]:
        """The dots of a CGRAM slot (0-7), a row a number, bit 4 the leftmost dot."""
        return tuple(row & 0x1F for row in self.cgram[slot * 8 : slot * 8 + 8])

    def glyph(self, slot: int) -> str:
        """What a reader takes a CGRAM slot's dots for."""
        return READINGS.get(self.bitmap(slot), UNKNOWN)

    def reading(self, code: int) -> str:
        """What a reader takes the character at `code` for."""
        if code < 0x10:
            return self.glyph(code & 0x07)  # 0x08-0x0F show the same eight slots
        return ROM.get(code, UNKNOWN)

    @property
    def screen(self) -> list[str]:
        """The rows as a shopper reads them (blank while the display is off; the rows a 1-line
        set-up does not drive stay blank too)."""
        blank = " " * self.columns
        if not self.display_on:
            return [blank for _ in self.row_addresses]
        rows = self.row_addresses if self.two_lines else self.row_addresses[:1]
        read = [
            "".join(self.reading(code) for code in self.ddram[start : start + self.columns])
            for start in rows
        ]
        return read + [blank] * (len(self.row_addresses) - len(read))
