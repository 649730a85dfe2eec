"""A ccTalk coin acceptor on a serial port (SR5i, X6, RM5, G-13 and any conforming device).

Start-up: simple poll, equipment category, manufacturer, product code, serial number, software
and comms revisions, coin ids 1-16 (position -> value, cross-checked with the accepted coins),
self-check, one 229 read to seed the event counter (what is already buffered is never credited),
inhibit masks for the accepted coins. Then header 229 every `poll_interval_ms`, from the core
thread (the device's deadlines are serviced like any other): new events are counted with the
255 -> 1 wrap, more than five new events means lost events, a counter back at 0 means the device
was reset (inhibits and master enable are sent again). Only credit pairs credit. After
`lost_after` silent polls the device is lost: a simple poll each second until it answers and the
start-up runs again. While the self-check reports a fault, 232 is polled instead of 229.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from drivers.base import (
    Clock,
    CoinAccepted,
    CoinAcceptor,
    CoinRejected,
    DeviceError,
    DeviceFault,
    DeviceNotice,
    Emit,
)
from drivers.cctalk_codec import Checksum
from drivers.cctalk_events import EventClass, classify, fault_name
from drivers.cctalk_transport import NoReply, Refused, Transport

log = logging.getLogger(__name__)

SIMPLE_POLL, CATEGORY, MANUFACTURER, PRODUCT, SERIAL, SOFTWARE = 254, 245, 246, 244, 242, 241
COMMS, COIN_ID, SELF_CHECK, READ_EVENTS, MODIFY_INHIBIT, MASTER_INHIBIT = 4, 184, 232, 229, 231, 228
POSITIONS = range(1, 17)
OPTION_FLAGS = 213
REQUEST_INHIBIT = 230
INHIBITED_COIN = 2
RECOVERY_POLL_S = 1.0
FAULT_POLL_S = 1.0
DEVICE = "coin_acceptor"


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


def coin_value_cents(coin_id: str, *, whole_units: bool = False) -> int | None:
    """Cents from a coin id `CCVVVI`; None if unprogrammed or of no stated value (a taught coin,
    TK000A: the ledger refuses a 0 c coin). The value field counts in the currency's base unit:
    the cent for most euro tables (EU001A = 1 c), the euro for tables that write fractions
    (EU.05A = 5 c, EU10mA = 1 c, and then EU001A = 1 EUR = 100 c): `whole_units`."""
    match = re.fullmatch(r"[A-Z]{2}(\d{3}|\.\d\d|\d\dm)[A-Z]", coin_id)
    if match is None:
        return None
    code = match.group(1)
    if code.startswith("."):
        cents = int(code[1:])
    elif code.endswith("m"):  # thousandths of the unit: only whole cents make a coin here
        cents = int(code[:2]) // 10 if code[1] == "0" else 0
    else:
        cents = int(code) * (100 if whole_units else 1)
    return cents or None


def writes_fractions(coin_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Z]{2}(\.\d\d|\d\dm|\dm\d|\d\.\d)[A-Z]", coin_id))


def cvf_cents(code: int) -> int | None:
    """A Coin Value Format credit code: 7-bit value, times 10 when bit 7 is set; 255 is a token
    of no stated value."""
    value = (code & 0x7F) * (10 if code & 0x80 else 1)
    return None if code == 255 or value == 0 else value


@dataclass
class Identity:
    category: str = ""
    manufacturer: str = ""
    product: str = ""
    serial: int = 0
    software: str = ""
    comms: str = ""
    coin_ids: dict[int, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.manufacturer} {self.product} serial {self.serial}, software "
            f"{self.software}, comms {self.comms}"
        )


class CcTalkCoinAcceptor(CoinAcceptor):
    name = "cctalk"

    def __init__(
        self,
        settings: CcTalkSettings,
        coins_cents: tuple[int, ...],
        clock: Clock,
        emit: Emit,
        pin_factory: Any = None,  # no pins: the acceptor is on a serial port
    ) -> None:
        self._settings = settings
        self._coins = coins_cents
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
        self.identity = Identity()
        self.values: dict[int, int] = {}  # coin position -> cents
        self.cvf = False  # credit codes carry values, not positions
        self._mask_bytes = 2
        self._last_error = ""
        self._accepting = False
        self._last_counter = 0
        self._seeded = False  # the counter was seeded once; later start-ups keep counting
        self._resume: str | None = None
        self._failures = 0
        self._lost = False
        self._fault = 0  # last non-zero self-check code
        self._next_poll: float | None = None

    # --- start-up --------------------------------------------------------------------------

    def start(self) -> None:
        self.transport.open()
        try:
            self._start_up()
        except DeviceError as err:
            self.transport.dump(f"start-up failed: {err}")
            self._set_lost()
            raise

    def _start_up(self) -> None:
        t = self.transport
        t.request(SIMPLE_POLL)
        ident = Identity(
            category=_text(t.request(CATEGORY).data),
            manufacturer=_text(t.request(MANUFACTURER).data),
            product=_text(t.request(PRODUCT).data),
            serial=int.from_bytes(t.request(SERIAL).data, "little"),
            software=_text(t.request(SOFTWARE).data),
            comms=_comms(t.request(COMMS).data),
        )
        if ident.category != "Coin Acceptor":
            raise DeviceError(
                f"ccTalk {t.port_name} address {t.address} is a "
                f"{ident.category!r}, not a coin acceptor"
            )
        for position in POSITIONS:
            try:
                reply = t.request(COIN_ID, bytes([position]), retries=1, length=(6,))
                ident.coin_ids[position] = _text(reply.data)
            except (NoReply, Refused):
                ident.coin_ids[position] = "......"  # some devices stay silent for unfitted ones
        if all(cid == "......" for cid in ident.coin_ids.values()):
            raise NoReply(
                f"ccTalk {t.port_name}: no coin id (header 184) came back in time: a device "
                "with no coin programmed, or slower than coin_acceptor.reply_timeout_ms"
            )
        self._mask_bytes = self._inhibit_width()
        self.values = self._positions(ident.coin_ids)
        self.cvf = self._credit_codes_are_values()
        same_device = ident.serial == self.identity.serial and self._seeded
        self.identity = ident
        log.info("ccTalk coin acceptor on %s: %s", t.port_name, ident)
        self._self_check()
        events = t.request(READ_EVENTS, length=(11,)).data
        resumed = self._resume_counter(ident.serial, events[0])
        if same_device or resumed is not None:
            # Back after an outage, or after a restart of the kiosk: what the device reported
            # since the last coin counted still counts.
            if resumed is not None:
                self._last_counter = resumed
            self._read_events(events)
        else:
            self._last_counter = events[0]  # a new session: never credit what was buffered
        self._seeded = True
        self._apply_inhibits()
        self._failures = 0
        self._next_poll = self._clock.monotonic()

    def _positions(self, coin_ids: dict[int, str]) -> dict[int, int]:
        whole = any(writes_fractions(cid) for cid in coin_ids.values())
        values = {
            p: v
            for p, cid in coin_ids.items()
            if (v := coin_value_cents(cid, whole_units=whole)) is not None
        }
        missing = sorted(set(self._coins) - set(values.values()))
        if missing:
            listed = ", ".join(f"{p}={cid}" for p, cid in coin_ids.items() if cid.strip("."))
            raise DeviceError(
                f"ccTalk coin acceptor on {self.transport.port_name}: accepted coins "
                f"{missing} c (kiosk.accepted_coins_cents) have no coin position in the device "
                f"(coin ids: {listed or 'none programmed'})"
            )
        return values

    def resume_from(self, cursor: str | None) -> None:
        self._resume = cursor

    def _resume_counter(self, serial: int, counter: int) -> int | None:
        """The event counter of the last coin the ledger holds, if it is this device's and the
        device has not been reset since (its counter would be back at 0)."""
        match = re.fullmatch(r"cctalk:(\d+):(\d+)", self._resume or "")
        self._resume = None
        if match is None or int(match.group(1)) != serial or counter == 0:
            return None
        return int(match.group(2))

    def _credit_codes_are_values(self) -> bool:
        """Option flag bit 0: credit codes are coin values (CVF) rather than positions. Not in
        the minimum command set: a device that stays silent reports positions."""
        try:
            flags = self.transport.request(OPTION_FLAGS, retries=0).data
        except DeviceError:
            return False
        return bool(flags[:1] and flags[0] & 1)

    def _self_check(self) -> None:
        slow_s = self._settings.slow_reply_timeout_ms / 1000  # a self-check can take a while
        code = self.transport.request(SELF_CHECK, timeout_s=slow_s, length=(1, 2)).data[:1]
        fault = code[0] if code else 0
        if fault and not self._fault:
            self._emit(
                DeviceFault(
                    DEVICE, f"self_check_{fault}", True, fault_name(fault), self._clock.monotonic()
                )
            )
        elif not fault and self._fault:
            self._emit(
                DeviceFault(
                    DEVICE,
                    f"self_check_{self._fault}",
                    False,
                    "self-check ok",
                    self._clock.monotonic(),
                )
            )
        self._fault = fault

    def _inhibit_width(self) -> int:
        """How many mask bytes the device keeps: the length of its 230 reply (2 if unsure)."""
        try:
            width = len(self.transport.request(REQUEST_INHIBIT, retries=1).data)
        except DeviceError:
            return 2
        return width if 1 <= width <= 16 else 2

    def _apply_inhibits(self) -> None:
        mask = sum(1 << (p - 1) for p, v in self.values.items() if v in self._coins)
        self.transport.request(
            MODIFY_INHIBIT, mask.to_bytes(self._mask_bytes, "little"), length=(0,)
        )
        self._send_master()

    def _send_master(self) -> None:
        self.transport.request(MASTER_INHIBIT, bytes([1 if self._accepting else 0]), length=(0,))

    # --- the CoinAcceptor interface --------------------------------------------------------

    def set_accepting(self, accepting: bool) -> None:
        self._accepting = accepting
        if self._lost or self._fault:
            return  # sent again when the device is back
        try:
            self._send_master()
        except DeviceError as err:
            log.warning("%s", err)
            self._failed()

    @property
    def is_accepting(self) -> bool:
        return self._accepting and not self._lost and not self._fault

    def next_deadline(self) -> float | None:
        return self._next_poll

    def service(self, now: float) -> None:
        if self._next_poll is None or now < self._next_poll:
            return
        try:
            if self._lost:
                self._recover()
            elif self._fault:
                self._self_check()
                if not self._fault:
                    self._apply_inhibits()
            else:
                self._read_events(self.transport.request(READ_EVENTS, length=(11,)).data)
            self._failures = 0
            self._last_error = ""
        except DeviceError as err:
            if str(err) != self._last_error:  # say each new trouble once, not every second
                log.warning("%s", err)
                self._last_error = str(err)
            self._failed()
        self._next_poll = now + self._interval()

    def _interval(self) -> float:
        if self._lost:
            return RECOVERY_POLL_S
        if self._fault:
            return FAULT_POLL_S
        return self._settings.poll_interval_ms / 1000

    def _failed(self) -> None:
        self._failures += 1
        if not self._lost and self._failures >= self._settings.lost_after:
            self.transport.dump(f"no valid reply to {self._failures} polls")
            self._set_lost()

    def _set_lost(self) -> None:
        if not self._lost:
            self._lost = True
            self._emit(
                DeviceFault(
                    DEVICE,
                    "lost",
                    True,
                    f"no reply on {self.transport.port_name}",
                    self._clock.monotonic(),
                )
            )
        self._next_poll = self._clock.monotonic() + RECOVERY_POLL_S

    def _recover(self) -> None:
        self.transport.request(SIMPLE_POLL)
        self._start_up()
        self._lost = False
        self._emit(
            DeviceFault(
                DEVICE, "lost", False, f"answering again: {self.identity}", self._clock.monotonic()
            )
        )

    # --- header 229 ------------------------------------------------------------------------

    def _read_events(self, data: bytes) -> None:
        if len(data) != 11:
            raise DeviceError(f"ccTalk 229 reply of {len(data)} bytes (11 expected)")
        counter, last = data[0], self._last_counter
        now = self._clock.monotonic()
        if counter == last:
            return
        if counter == 0:
            self._notice(
                "reset",
                f"event counter back to 0 from {last}: device reset; "
                "inhibits sent again, credits since the last poll unknown",
                now,
            )
            self._last_counter = 0
            self._apply_inhibits()
            return
        new = counter - last if counter >= last else counter - last + 255
        if new > 5:
            detail = (
                f"{new - 5} event(s) lost (counter {last} -> {counter}); credits may be missing"
            )
            self.transport.dump(detail)
            self._emit(DeviceFault(DEVICE, "lost_events", True, detail, now))
            self._emit(DeviceFault(DEVICE, "lost_events", False, "the five newest were read", now))
        follow_up: set[str] = set()
        for i in range(min(new, 5) - 1, -1, -1):  # oldest new event first
            number = (counter - 1 - i) % 255 + 1  # this event's own counter value
            follow_up |= self._event(data[1 + 2 * i], data[2 + 2 * i], now, number)
            self._last_counter = number  # counted: never read twice, whatever happens next
        try:
            if "self_check" in follow_up:
                self._self_check()
            if "inhibits" in follow_up and self._accepting:
                # A true coin refused as inhibited while we accept: the device may have been
                # reset before its first event (counter still 0) and forgotten its masks.
                self._apply_inhibits()
        except DeviceError as err:
            log.warning("ccTalk coin acceptor: %s", err)

    def _event(self, a: int, b: int, now: float, number: int) -> set[str]:
        """Report one event; returns what it calls for next ("self_check", "inhibits")."""
        if a:
            value = cvf_cents(a) if self.cvf else self.values.get(a)
            if value is None:
                self._notice("unknown_credit", f"credit for coin position {a} with no value", now)
            else:
                cursor = f"cctalk:{self.identity.serial}:{number}"
                self._emit(CoinAccepted(value, now, cursor=cursor))
            return set()
        name, kind = classify(b)
        if kind is EventClass.REJECTED:
            self._emit(CoinRejected(f"cctalk_{b}", name, now))
            return {"inhibits"} if b == INHIBITED_COIN or 128 <= b <= 159 else set()
        if kind is EventClass.POSSIBLE:
            self._notice(f"event_{b}", f"{name}: a coin may be jammed or swallowed", now)
            return {"self_check"}
        if kind is EventClass.ALARM:
            self._notice(f"event_{b}", name, now)
        return set()

    def _notice(self, code: str, detail: str, now: float) -> None:
        log.warning("ccTalk coin acceptor: %s", detail)
        self._emit(DeviceNotice(DEVICE, code, detail, now))

    def close(self) -> None:
        if self.transport.is_open and not self._lost:
            self._accepting = False
            try:
                self._send_master()
            except DeviceError as err:
                log.warning("cannot inhibit the coin acceptor on close: %s", err)
        self.transport.close()


def _text(data: bytes) -> str:
    return data.decode("ascii", errors="replace").rstrip(" ")


def _comms(data: bytes) -> str:
    if len(data) == 3 and all(b < 32 for b in data):
        return ".".join(str(b) for b in data)
    return _text(data)  # some devices answer in ASCII
