"""ccTalk framing, sans-IO: frames to bytes and bytes to frames, without touching a port.

A frame is [destination][n][source or CRC low][header][n data bytes][checksum or CRC high].
The 8-bit form makes all bytes sum to 0 modulo 256; the CRC-16 form carries CRC-16/XMODEM
(`binascii.crc_hqx`, initial 0) of destination, n, header and data, low byte at offset 2 and high
byte last, with the host implicitly at address 1. The parser takes timestamped chunks of bytes and
returns the frames it finds; it resynchronises after garbage, corrupted or truncated frames and
after a gap of more than 50 ms between bytes (the ccTalk inter-byte timeout).
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass

HOST = 1
ACK = 0  # the header of every reply: an ACK when it carries no data
NAK = 5
BUSY = 6
INTER_BYTE_S = 0.050
MAX_DATA = 255


class Checksum(enum.StrEnum):
    SIMPLE = "8bit"
    CRC16 = "crc16"


@dataclass(frozen=True)
class Frame:
    destination: int
    header: int
    data: bytes = b""
    source: int = HOST  # in the CRC-16 form the source is implicit: HOST or the polled device

    @property
    def is_ack(self) -> bool:
        return self.header == ACK and not self.data


def checksum8(body: bytes) -> int:
    return -sum(body) & 0xFF


def encode(frame: Frame, mode: Checksum = Checksum.SIMPLE) -> bytes:
    if len(frame.data) > MAX_DATA:
        raise ValueError(f"ccTalk frame with {len(frame.data)} data bytes (at most {MAX_DATA})")
    n = len(frame.data)
    if mode is Checksum.SIMPLE:
        body = bytes([frame.destination, n, frame.source, frame.header]) + frame.data
        return body + bytes([checksum8(body)])
    crc = binascii.crc_hqx(bytes([frame.destination, n, frame.header]) + frame.data, 0)
    return bytes([frame.destination, n, crc & 0xFF, frame.header]) + frame.data + bytes([crc >> 8])


def decode(raw: bytes, mode: Checksum = Checksum.SIMPLE, source: int = HOST) -> Frame | None:
    """One whole frame, or None if its length or checksum is wrong. `source` fills the CRC-16
    form's implicit source address."""
    if len(raw) < 5 or len(raw) != raw[1] + 5:
        return None
    data = bytes(raw[4:-1])
    if mode is Checksum.SIMPLE:
        if sum(raw) & 0xFF:
            return None
        return Frame(raw[0], raw[3], data, raw[2])
    crc = binascii.crc_hqx(bytes([raw[0], raw[1], raw[3]]) + data, 0)
    if raw[2] != crc & 0xFF or raw[-1] != crc >> 8:
        return None
    return Frame(raw[0], raw[3], data, source)


class FrameParser:
    """Bytes in, frames out. Never raises on bad input; counts what it had to throw away."""

    def __init__(
        self, mode: Checksum = Checksum.SIMPLE, source: int = HOST, destination: int | None = None
    ) -> None:
        self.mode = mode
        self.source = source
        self.destination = destination  # if given, a frame can only start with this byte
        self.discarded = 0  # bytes thrown away: garbage, corrupted or truncated frames
        self._buffer = bytearray()
        self._last_at: float | None = None

    def feed(self, chunk: bytes, at: float) -> list[Frame]:
        if self._last_at is not None and at - self._last_at > INTER_BYTE_S:
            self._drop(len(self._buffer))  # a frame cut short: the next byte starts anew
        if chunk:
            self._last_at = at
        self._buffer += chunk
        frames: list[Frame] = []
        while self._buffer:
            if self.destination is not None and self._buffer[0] != self.destination:
                self._drop(1)  # cannot start a frame for us: garbage
                continue
            if len(self._buffer) < 2:
                break
            size = self._buffer[1] + 5
            if len(self._buffer) < size:
                break  # the rest is on its way, or the 50 ms gap will drop it
            frame = decode(bytes(self._buffer[:size]), self.mode, self.source)
            if frame is None:
                self._drop(1)  # slide one byte and look for a frame start again
                continue
            del self._buffer[:size]
            frames.append(frame)
        return frames

    def _drop(self, count: int) -> None:
        del self._buffer[:count]
        self.discarded += count

    @property
    def missing(self) -> int:
        """Bytes still to come for the frame begun in the buffer (0 if none is begun)."""
        if len(self._buffer) < 2:
            return 0
        return max(0, self._buffer[1] + 5 - len(self._buffer))
