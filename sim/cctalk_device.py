"""A simulated ccTalk coin acceptor speaking real bytes on a pseudo-terminal.

The kiosk's serial driver opens `device.path` exactly like /dev/ttyUSB0. The device answers the
coin-acceptor headers a host needs (identification, coin ids, self-check, inhibits, master
inhibit, 229 with its five-event buffer and 255 -> 1 counter, reset), echoes the host's bytes as a
single-wire bus does (optional), and can take the time 9600 baud would. An inhibited or unknown
coin is handed back with an event, never credited. Fault knobs: silence, corrupt checksums, noise
bytes, a chattering line, slow replies, bursts that overflow the buffer, power cycles, any event
code, a self-check fault. Ground truth: the coins it credited, and the events that fell off the
buffer unread, and those a power cycle wiped unread.

As its own process (`python -m sim.cctalk_device --link PATH --control SOCK`, like hardware on
its own supply) it symlinks PATH to its pseudo-terminal and takes orders on a Unix socket, one JSON
object a line: insert coins, power-cycle, forget what a killed host had read but not kept, wait for
the next read of new events or the first 229 after a host start, and tell its ground truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import select
import signal
import socket
import socketserver
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from drivers.cctalk_codec import HOST, Checksum, Frame, FrameParser, encode

log = logging.getLogger(__name__)

EURO_COIN_IDS = {1: "EU001A", 2: "EU002A", 3: "EU005A", 4: "EU010A", 5: "EU020A"}
INHIBITED_COIN, REJECT_COIN = 2, 1
CHATTER_S = 0.005


@dataclass
class DeviceTruth:
    credited: list[int] = field(default_factory=list)  # values of coins into the cash box
    returned: list[int] = field(default_factory=list)  # coins handed back
    lost: list[tuple[int, int]] = field(default_factory=list)  # events dropped unread (A, B)
    lost_cents: int = 0  # value of the credits among them
    lost_values: list[int] = field(default_factory=list)  # those credits, one value each
    wiped: list[int] = field(default_factory=list)  # credits unread when the power went

    @property
    def credited_cents(self) -> int:
        return sum(self.credited)


class SimCcTalkAcceptor:
    def __init__(
        self,
        *,
        address: int = 2,
        checksum: Checksum = Checksum.SIMPLE,
        echo: bool = True,
        wire_timing: bool = False,
        baud: int = 9600,
        coin_ids: dict[int, str] | None = None,
        serial_number: int = 12_345_678,
        seed: int = 0,
    ) -> None:
        self.address = address
        self.checksum = checksum
        self.echo = echo
        self.byte_s = 10 / baud if wire_timing else 0.0
        self.coin_ids = dict(EURO_COIN_IDS if coin_ids is None else coin_ids)
        self.serial_number = serial_number
        self.truth = DeviceTruth()
        # fault knobs
        self.silent = False
        self.corrupt_replies = 0  # the next N replies carry a wrong checksum
        self.noise_bytes = 0  # garbage bytes sent before the next reply
        self.reply_delay_s = 0.0
        self.chatter = False  # a noisy line: garbage every few ms, whatever the host sends
        self.self_check_fault = 0
        self.cvf = False  # option flag bit 0: credit codes are values, not positions
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._read = threading.Condition(self._lock)  # notified at every 229 answered
        self.reads = 0  # 229 replies that carried new events
        self.first_229_at: float | None = None  # monotonic time of the first 229 since a start
        self._history: deque[tuple[int, int]] = deque(maxlen=1024)  # (serial, counter) pushed
        self._power_up()
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        self.path = os.ttyname(slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sim-cctalk", daemon=True)
        self._thread.start()

    def _power_up(self) -> None:
        self.counter = 0
        self._serial_no = 0  # events ever pushed; the buffer holds the last five
        self._delivered = 0  # events the host has been sent in a 229 reply
        self.buffer: list[tuple[int, int, int]] = [(0, 0, 0)] * 5  # (A, B, serial), newest first
        self.masks = 0
        self.master_enabled = False

    # --- the world's side ------------------------------------------------------------------

    def position_of(self, value_cents: int) -> int | None:
        for position, coin_id in sorted(self.coin_ids.items()):
            if coin_id[2:5].isdigit() and int(coin_id[2:5]) == value_cents:
                return position
        return None

    def insert(self, value_cents: int) -> bool:
        """A coin dropped in; True if it went into the cash box (and was credited)."""
        with self._lock:
            position = self.position_of(value_cents)
            if self.self_check_fault:
                pass  # a faulty acceptor has inhibited itself: the coin falls back out
            elif position is None:
                self._push(0, REJECT_COIN)
            elif not self.master_enabled or not self.masks & (1 << (position - 1)):
                self._push(0, INHIBITED_COIN)
            else:
                code = position
                if self.cvf:  # Coin Value Format: the value itself, or tens with bit 7
                    code = value_cents if value_cents < 128 else 0x80 | value_cents // 10
                self._push(code, 0)
                self.truth.credited.append(value_cents)
                return True
            self.truth.returned.append(value_cents)
            return False

    def burst(self, values: list[int]) -> int:
        """Coins faster than the host polls (more than five overflow the buffer)."""
        return sum(self.insert(v) for v in values)

    def push_event(self, a: int, b: int) -> None:
        with self._lock:
            self._push(a, b)

    def power_cycle(self) -> None:
        with self._lock:
            for a, _, serial in self.buffer:
                if serial > self._delivered and a:
                    self.truth.wiped.append(self._credit_value(a))
            self._power_up()
            self._history.clear()

    def host_down(self, counter: int | None) -> None:
        """The host died having kept events up to `counter` (its ledger's cursor): those it read
        and did not keep are unread again, and lost if they fall off the buffer before the next
        host reads them."""
        with self._lock:
            kept = 0
            for serial, number in reversed(self._history):
                if serial <= self._delivered and number == counter:
                    kept = serial
                    break
            self._delivered = min(self._delivered, kept)

    def expect_start(self) -> None:
        """A host is about to start: the next 229 is timed as its first."""
        with self._lock:
            self.first_229_at = None

    def wait_read(self, after: int, timeout_s: float) -> int:
        """Until a 229 reply carrying new events makes `reads` exceed `after`; returns it."""
        with self._read:
            self._read.wait_for(lambda: self.reads > after, timeout_s)
            return self.reads

    def wait_first_229(self, timeout_s: float) -> float | None:
        with self._read:
            self._read.wait_for(lambda: self.first_229_at is not None, timeout_s)
            return self.first_229_at

    def _push(self, a: int, b: int) -> None:
        self.counter = self.counter % 255 + 1
        self._serial_no += 1
        dropped_a, dropped_b, dropped_serial = self.buffer[-1]
        self.buffer = [(a, b, self._serial_no), *self.buffer[:4]]
        self._history.append((self._serial_no, self.counter))
        if dropped_serial > self._delivered:
            self.truth.lost.append((dropped_a, dropped_b))
            if dropped_a:
                self.truth.lost_cents += self._credit_value(dropped_a)
                self.truth.lost_values.append(self._credit_value(dropped_a))

    @property
    def all_read(self) -> bool:
        with self._lock:
            return self._delivered == self._serial_no

    def _credit_value(self, code: int) -> int:
        if self.cvf:
            return (code & 0x7F) * (10 if code & 0x80 else 1)
        return int(self.coin_ids[code][2:5])

    # --- the wire --------------------------------------------------------------------------

    def _serve(self) -> None:
        parser = FrameParser(self.checksum, source=HOST)
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], CHATTER_S if self.chatter else 0.05)
            if self.chatter:
                os.write(self._master, bytes(self._rng.randrange(256) for _ in range(8)))
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 512)
            except OSError:
                return
            if self.echo:
                os.write(self._master, chunk)
            for frame in parser.feed(chunk, time.monotonic()):
                if frame.destination == self.address:
                    self._answer(frame)

    def _answer(self, request: Frame) -> None:
        wire_in = (len(request.data) + 5) * self.byte_s
        with self._lock:
            data = self._handle(request.header, request.data)
            if data is None or self.silent:
                return
            raw = bytearray(encode(Frame(HOST, 0, data, self.address), self.checksum))
            if self.corrupt_replies:
                self.corrupt_replies -= 1
                raw[-1] ^= 0x5A
            noise = bytes(self._rng.randrange(256) for _ in range(self.noise_bytes))
            self.noise_bytes = 0
        out = noise + bytes(raw)
        if wire_in + self.reply_delay_s:
            time.sleep(wire_in + self.reply_delay_s)
        if not self.byte_s:
            os.write(self._master, out)
            return
        started = time.monotonic()  # one byte at a time, as a UART delivers them
        for i, byte in enumerate(out, start=1):
            time.sleep(max(0.0, started + i * self.byte_s - time.monotonic()))
            os.write(self._master, bytes([byte]))

    def _handle(self, header: int, data: bytes) -> bytes | None:
        """The reply's data for a request, or None for silence (an unsupported header)."""
        text = {
            245: "Coin Acceptor",
            246: "Centimeo",
            244: "SIM-CA1",
            241: "SIM-1.0",
            192: "SIM01   ",
        }
        if header in text:
            return text[header].encode()
        if header == 254:
            return b""
        if header == 242:
            return self.serial_number.to_bytes(3, "little")
        if header == 4:
            return bytes([1, 4, 2])
        if header == 184 and len(data) == 1 and 1 <= data[0] <= 16:
            return self.coin_ids.get(data[0], "......").encode()
        if header == 213:
            return bytes([int(self.cvf)])
        if header == 232:
            return bytes([self.self_check_fault])
        if header == 229:
            if self.first_229_at is None:
                self.first_229_at = time.monotonic()
            if self._delivered != self._serial_no:
                self.reads += 1
            self._delivered = self._serial_no
            self._read.notify_all()
            return bytes([self.counter]) + bytes(x for a, b, _ in self.buffer for x in (a, b))
        if header == 231 and 1 <= len(data) <= 16:
            self.masks = int.from_bytes(data[:2], "little")
            return b""
        if header == 230:
            return self.masks.to_bytes(2, "little")
        if header == 228 and len(data) == 1:
            self.master_enabled = bool(data[0] & 1)
            return b""
        if header == 227:
            return bytes([int(self.master_enabled)])
        if header == 1:
            self._power_up()
            return b""
        return None

    def close(self) -> None:
        """Unplugged: the line goes dead for whoever has it open. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        os.close(self._master)
        os.close(self._slave)

    def truth_json(self) -> dict[str, Any]:
        with self._lock:
            truth = asdict(self.truth)
            truth.update(
                master_enabled=self.master_enabled,
                masks=self.masks,
                all_read=self._delivered == self._serial_no,
                reads=self.reads,
                first_229_at=self.first_229_at,
            )
            return truth


# --- as its own process -----------------------------------------------------------------------


class _Orders(socketserver.StreamRequestHandler):
    """One connection: an order a line, a JSON reply a line."""

    server: OrderServer

    def handle(self) -> None:
        for line in self.rfile:
            try:
                reply = self.server.order(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                reply = {"error": str(err)}
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class OrderServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Orders in JSON lines on a Unix socket, each answered by `order(message) -> reply`."""

    daemon_threads = True

    def __init__(self, path: str, order: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.order = order
        super().__init__(path, _Orders)


def device_orders(device: SimCcTalkAcceptor) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def order(message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        timeout_s = float(message.get("timeout_s", 10.0))
        if op == "insert":
            return {"credited": device.burst([int(v) for v in message["coins"]])}
        if op == "power_cycle":
            device.power_cycle()
        elif op == "host_down":
            device.host_down(message.get("counter"))
        elif op == "expect_start":
            device.expect_start()
        elif op == "wait_read":
            return {"reads": device.wait_read(int(message["after"]), timeout_s)}
        elif op == "wait_first_229":
            return {"at": device.wait_first_229(timeout_s)}
        elif op == "truth":
            return device.truth_json()
        else:
            raise ValueError(f"unknown order {op!r}")
        return {}

    return order


class OrderLink:
    """The other end of an order socket: `link(op, **args)` sends one order, returns the reply."""

    def __init__(self, path: str, timeout_s: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._sock.connect(path)
        self._file = self._sock.makefile("rwb")

    def __call__(self, op: str, **args: Any) -> dict[str, Any]:
        self._file.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self._file.flush()
        reply: dict[str, Any] = json.loads(self._file.readline())
        if "error" in reply:
            raise RuntimeError(f"order {op}: {reply['error']}")
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.cctalk_device", description="a simulated ccTalk coin acceptor"
    )
    parser.add_argument("--link", required=True, help="symlink to the pseudo-terminal's slave")
    parser.add_argument("--control", required=True, help="Unix socket for the world's orders")
    parser.add_argument("--checksum", default="8bit", choices=[c.value for c in Checksum])
    parser.add_argument("--no-echo", action="store_true")
    parser.add_argument("--address", type=int, default=2)
    args = parser.parse_args(argv)
    device = SimCcTalkAcceptor(
        address=args.address, checksum=Checksum(args.checksum), echo=not args.no_echo
    )
    for path in (args.link, args.control):
        if os.path.lexists(path):
            os.unlink(path)
    os.symlink(device.path, args.link)
    server = OrderServer(args.control, device_orders(device))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for path in (args.link, args.control):
            if os.path.lexists(path):
                os.unlink(path)
        device.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
