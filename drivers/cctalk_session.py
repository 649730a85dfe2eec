"""A ccTalk coin acceptor's device logic, sans-IO: what to ask it, and what its answers mean.

The session never touches a port. Its procedures are generators that yield the next `Command` and
receive the reply's data (or have the transport's DeviceError thrown in); the serial shell in
drivers.cctalk drives them on the poller's thread, and the tests drive them with scripted replies.

Start-up: simple poll, equipment category, manufacturer, product code, serial number, software
and comms revisions, coin ids 1-16 (position -> value, cross-checked with the accepted coins),
option flags (credit codes as values), inhibit width, self-check, one 229 read to seed the event
counter (what is already buffered is never credited, unless the ledger's cursor says it was read
by this kiosk from this device), inhibit masks and master inhibit. The inhibit mask enables the
coin positions whose value the kiosk takes now (`denominations`: all the accepted coins unless
the technician narrowed them); a change is sent at the next exchange, and every re-send (after a
reset, a fault, a lost device) carries the same mask. Then header 229 every `poll_interval_s`:
new events are counted with the 255 -> 1 wrap; more than five new events are lost events, unless
the counter and the empty pairs say the device was reset meanwhile; a counter back at 0 is a
reset (inhibits and master enable are sent again). Only credit pairs credit. Every event handled
moves the cursor, so a restart neither re-reads nor misses one. After `lost_after` failed
exchanges the device is lost: a start-up is tried each second until it answers. While the
self-check reports a fault, 232 is polled instead of 229.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from drivers.base import (
    CoinAccepted,
    CoinRejected,
    CursorAdvanced,
    DeviceError,
    DeviceFault,
    DeviceNotice,
    DeviceReady,
    check_denominations,
)
from drivers.cctalk_events import EventClass, classify, fault_name
from drivers.cctalk_identity import (
    Identity,
    coin_value_cents,
    comms_text,
    cvf_cents,
    text,
    writes_fractions,
)

log = logging.getLogger(__name__)

SIMPLE_POLL, CATEGORY, MANUFACTURER, PRODUCT, SERIAL, SOFTWARE = 254, 245, 246, 244, 242, 241
COMMS, COIN_ID, SELF_CHECK, READ_EVENTS, MODIFY_INHIBIT, MASTER_INHIBIT = 4, 184, 232, 229, 231, 228
OPTION_FLAGS, REQUEST_INHIBIT = 213, 230
POSITIONS = range(1, 17)
INHIBITED_COIN = 2
RECOVERY_POLL_S = 1.0
FAULT_POLL_S = 1.0
BUFFER = 5  # events the device keeps
DEVICE = "coin_acceptor"
UNPROGRAMMED = "......"


@dataclass(frozen=True)
class Command:
    """One request: header, data, and how to wait for the reply."""

    header: int
    data: bytes = b""
    slow: bool = False  # may take the slow reply timeout (a self-check)
    retries: int | None = None  # None: the transport's own
    lengths: tuple[int, ...] | None = None  # the reply data lengths that are valid


# A procedure yields commands, is sent each reply's data, and may have a DeviceError thrown in.
Procedure = Generator[Command, bytes, None]


def drive(
    procedure: Procedure,
    request: Callable[[Command], bytes],
    fatal: tuple[type[Exception], ...] = (),
) -> None:
    """Run a procedure to its end over `request`: each reply's data is sent in, each DeviceError
    thrown in, except `fatal` ones (a failing port): the procedure is then abandoned and the
    error raised."""
    try:
        command = next(procedure)
        while True:
            try:
                data = request(command)
            except fatal:
                procedure.close()
                raise
            except DeviceError as err:
                command = procedure.throw(err)
            else:
                command = procedure.send(data)
    except StopIteration:
        return


def new_events(counter: int, last: int) -> int:
    """Events since `last` by the counter, which skips 0 when it wraps (255 -> 1)."""
    return counter - last if counter >= last else counter - last + 255


class CcTalkSession:
    """The state of one coin acceptor as the host knows it. Not thread-safe: one owner."""

    def __init__(
        self,
        coins_cents: tuple[int, ...],
        *,
        where: str,
        poll_interval_s: float,
        lost_after: int,
    ) -> None:
        self._coins = coins_cents
        self._where = where  # for messages: "ccTalk /dev/ttyUSB0"
        self._poll_interval_s = poll_interval_s
        self._lost_after = lost_after
        self.identity = Identity()
        self.values: dict[int, int] = {}  # coin position -> cents
        self.cvf = False  # credit codes carry values, not positions
        self.wanted = False  # accepting, as the kiosk asks
        self._asked = frozenset(coins_cents)  # the coin values to take, as the kiosk asks
        self._mask_sent: int | None = None  # the inhibit mask the device last acknowledged
        self.accepting = False  # accepting, as last confirmed by the device
        self.lost = False
        self.fault = 0  # last non-zero self-check code
        self._ready = False  # set up at least once
        self._mask_bytes = 2
        self._counter = 0
        self._resume: str | None = None
        self._counting: int | None = None  # serial number of the device whose events we count
        self._pairs: bytes | None = None  # the event pairs of the last 229 read, newest first
        self._failures = 0
        self._next_poll = 0.0
        self._events: list[Any] = []

    # --- what the shell asks -------------------------------------------------------------------

    def resume_from(self, cursor: str | None) -> None:
        self._resume = cursor

    def take_events(self) -> list[Any]:
        events, self._events = self._events, []
        return events

    def next_due(self) -> float:
        """When the session wants the line next (now, if the master inhibit or the inhibit mask
        must change)."""
        if self._in_service() and (self.wanted != self.accepting or self._mask_due()):
            return 0.0
        return self._next_poll

    @property
    def denominations(self) -> frozenset[int]:
        return self._asked

    def set_denominations(self, cents: frozenset[int]) -> None:
        """Take only coins of these values (some of the accepted coins) from now on: the mask is
        sent at the next exchange. ValueError for a value the kiosk does not accept."""
        self._asked = check_denominations(cents, self._coins)

    @property
    def is_accepting(self) -> bool:
        return self.accepting and not self.lost and not self.fault

    def step(self, now: float) -> Procedure:
        """The exchanges due at `now`: a start-up, a self-check or a 229 poll, then the master
        inhibit if the kiosk changed its mind."""
        if now >= self._next_poll:
            self._next_poll = now + self._interval()
            if self.lost or not self._ready:
                yield from self._start_up(now)
            elif self.fault:
                yield from self._self_check(now, retries=1)
                if not self.fault:
                    yield from self._apply_inhibits()
            else:
                yield from self._read_events((yield self._read_command()), now)
            self._failures = 0
            self._next_poll = now + self._interval()
        if self._in_service() and self._mask_due():
            yield from self._send_mask()
        if self._in_service() and self.wanted != self.accepting:
            yield from self._send_master(self.wanted)

    def _in_service(self) -> bool:
        """Set up and answering with no fault: what the kiosk asks can be sent."""
        return self._ready and not self.lost and not self.fault

    def _mask_due(self) -> bool:
        return self._mask() != self._mask_sent

    def failed(self, error: DeviceError, now: float) -> bool:
        """An exchange failed after the transport's retries. True when the device is now lost."""
        self._failures += 1
        self._next_poll = now + self._interval()
        if self.lost:
            return False
        if not self._ready or self._failures >= self._lost_after:
            self.set_lost(str(error), now)
            return True
        return False

    def set_lost(self, detail: str, now: float) -> None:
        """No answer (or no port): coins count as inhibited until a start-up succeeds again."""
        self.accepting = False
        self._next_poll = now + RECOVERY_POLL_S
        if not self.lost:
            self.lost = True
            self._events.append(DeviceFault(DEVICE, "lost", True, detail, now))

    # --- start-up ------------------------------------------------------------------------------

    def _start_up(self, now: float) -> Procedure:
        yield Command(SIMPLE_POLL)
        ident = Identity(
            category=text((yield Command(CATEGORY))),
            manufacturer=text((yield Command(MANUFACTURER))),
            product=text((yield Command(PRODUCT))),
            serial=int.from_bytes((yield Command(SERIAL)), "little"),
            software=text((yield Command(SOFTWARE))),
            comms=comms_text((yield Command(COMMS))),
        )
        if ident.category != "Coin Acceptor":
            raise DeviceError(f"{self._where} is a {ident.category!r}, not a coin acceptor")
        for position in POSITIONS:
            try:
                coin_id = yield Command(COIN_ID, bytes([position]), retries=1, lengths=(6,))
                ident.coin_ids[position] = text(coin_id)
            except DeviceError:
                ident.coin_ids[position] = UNPROGRAMMED  # some stay silent for unfitted ones
        if all(cid == UNPROGRAMMED for cid in ident.coin_ids.values()):
            raise DeviceError(
                f"{self._where}: no coin id (header 184) came back in time: a device with no "
                "coin programmed, or slower than coin_acceptor.reply_timeout_ms"
            )
        self._mask_bytes = yield from self._inhibit_width()
        self.values = self._positions(ident.coin_ids)
        self.cvf = yield from self._credit_codes_are_values()
        self.identity = ident
        log.info("ccTalk coin acceptor %s: %s", self._where, ident)
        yield from self._self_check(now)
        events = yield self._read_command()
        if ident.serial == self._counting:
            # Back after an outage (or a retried start-up): what the device reported since the
            # last event handled still counts, or its reset is reported.
            yield from self._read_events(events, now)
        else:
            resumed = self._resumed_counter(ident.serial)
            self._resume = None  # the ledger's cursor is for the first device counted only
            self._counting = ident.serial
            if resumed is None:
                self._counter = events[0]  # a new session: never credit what was buffered
                self._pairs = bytes(events[1:])
            else:  # the kiosk restarted: carry on from the last event the ledger holds
                self._counter, self._pairs = resumed, None  # what it held then is unknown
                yield from self._read_events(events, now)
        yield from self._apply_inhibits()
        self._ready = True
        if self.lost:
            self.lost = False
            self._events.append(DeviceFault(DEVICE, "lost", False, f"answering: {ident}", now))
        faults = frozenset({f"self_check_{self.fault}"} if self.fault else ())
        self._events.append(DeviceReady(DEVICE, str(ident), now, faults, ident.as_fields()))

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
                f"{self._where}: accepted coins {missing} c (kiosk.accepted_coins_cents) have "
                f"no coin position in the device (coin ids: {listed or 'none programmed'})"
            )
        return values

    def _resumed_counter(self, serial: int) -> int | None:
        """The event counter of the last event the ledger holds, if it is this device's."""
        match = re.fullmatch(r"cctalk:(\d+):(\d+)", self._resume or "")
        if match is None or int(match.group(1)) != serial:
            return None
        return int(match.group(2))

    def _credit_codes_are_values(self) -> Generator[Command, bytes, bool]:
        """Option flag bit 0: credit codes are coin values (CVF) rather than positions. Not in
        the minimum command set: a device that stays silent reports positions."""
        try:
            flags = yield Command(OPTION_FLAGS, retries=0)
        except DeviceError:
            return False
        return bool(flags[:1] and flags[0] & 1)

    def _inhibit_width(self) -> Generator[Command, bytes, int]:
        """How many mask bytes the device keeps: the length of its 230 reply (2 if unsure)."""
        try:
            width = len((yield Command(REQUEST_INHIBIT, retries=1)))
        except DeviceError:
            return 2
        return width if 1 <= width <= 16 else 2

    def _self_check(self, now: float, retries: int | None = None) -> Procedure:
        code = (yield Command(SELF_CHECK, slow=True, retries=retries, lengths=(1, 2)))[:1]
        fault = code[0] if code else 0
        if fault != self.fault:
            if self.fault:
                self._events.append(
                    DeviceFault(DEVICE, f"self_check_{self.fault}", False, "self-check ok", now)
                )
            if fault:
                self.accepting = False  # a faulty acceptor inhibits itself
                self._events.append(
                    DeviceFault(DEVICE, f"self_check_{fault}", True, fault_name(fault), now)
                )
        self.fault = fault

    def _apply_inhibits(self) -> Procedure:
        yield from self._send_mask()
        yield from self._send_master(self.wanted)

    def _mask(self) -> int:
        """Inhibit bits (1 = enabled): the positions of the coin values asked now. Positions of
        other values (coins the kiosk does not take, or not now) stay inhibited."""
        asked = self._asked  # one reading: the kiosk's thread may change it meanwhile
        return sum(1 << (p - 1) for p, v in self.values.items() if v in asked)

    def _send_mask(self) -> Procedure:
        mask = self._mask()
        yield Command(MODIFY_INHIBIT, mask.to_bytes(self._mask_bytes, "little"), lengths=(0,))
        self._mask_sent = mask

    def _send_master(self, accepting: bool) -> Procedure:
        yield Command(MASTER_INHIBIT, bytes([1 if accepting else 0]), lengths=(0,))
        self.accepting = accepting

    def inhibit(self) -> Procedure:
        """The master inhibit on its own, whatever the session believes (used on close)."""
        self.wanted = False
        yield from self._send_master(False)

    # --- header 229 ----------------------------------------------------------------------------

    @staticmethod
    def _read_command() -> Command:
        return Command(READ_EVENTS, lengths=(11,))

    def _read_events(self, data: bytes, now: float) -> Procedure:
        counter, last = data[0], self._counter
        before, self._pairs = self._pairs, bytes(data[1:])
        if counter == last and before in (None, self._pairs):
            return  # nothing new (the same counter over other pairs: a reset, then events)
        serial = self.identity.serial
        if counter == 0:
            self._counter = 0
            self._notice(
                "reset",
                f"event counter back to 0 from {last}: device reset; inhibits sent again, "
                "credits since the last read unknown",
                now,
                f"cctalk:{serial}:0",
            )
            yield from self._apply_inhibits()
            return
        new = new_events(counter, last)
        reset = self._reset_since(data, new, before)
        if reset:
            self._notice(
                "reset",
                f"event counter at {counter} after {last}, the older pairs not those read "
                f"before: device reset, then {counter} event(s); inhibits sent again",
                now,
            )
            new = counter
        if new > BUFFER:
            detail = (
                f"{new - BUFFER} event(s) lost (counter {last} -> {counter}); "
                "credits may be missing"
            )
            self._events.append(DeviceFault(DEVICE, "lost_events", True, detail, now))
            self._events.append(
                DeviceFault(DEVICE, "lost_events", False, "the five newest were read", now)
            )
        follow_up: set[str] = set()
        recorded = True
        for i in range(min(new, BUFFER) - 1, -1, -1):  # oldest new event first
            number = (counter - 1 - i) % 255 + 1  # this event's own counter value
            cursor = f"cctalk:{serial}:{number}"
            wants, recorded = self._event(data[1 + 2 * i], data[2 + 2 * i], now, cursor)
            follow_up |= wants
            self._counter = number  # counted: never read twice, whatever happens next
        if not recorded:  # the newest was a null event: its place is kept all the same
            self._events.append(CursorAdvanced(f"cctalk:{serial}:{self._counter}", now))
        try:
            if "self_check" in follow_up:
                yield from self._self_check(now)
            if reset or ("inhibits" in follow_up and self.wanted):
                # A true coin refused as inhibited while we accept: the device may have been
                # reset before its first event (counter still 0) and forgotten its masks.
                yield from self._apply_inhibits()
        except DeviceError as err:  # the events are counted; the follow-up comes next time
            log.warning("%s: %s", self._where, err)

    @staticmethod
    def _reset_since(data: bytes, new: int, before: bytes | None) -> bool:
        """The device was reset since the last read although its counter is not 0 (events came
        after the reset). Without a reset, the pairs older than the new ones are those of the
        last read, shifted (all of them when the counter did not move); after one, the buffer
        was cleared: a counter below five with the older pairs empty, where more than five
        events would otherwise be lost."""
        counter = data[0]
        if new <= BUFFER and before is not None:
            return data[1 + 2 * new :] != before[: 2 * (BUFFER - new)]
        return new > BUFFER and counter < BUFFER and not any(data[1 + 2 * counter :])

    def _event(self, a: int, b: int, now: float, cursor: str) -> tuple[set[str], bool]:
        """Report one event; returns what it calls for next ("self_check", "inhibits") and
        whether it was reported (a null event is not)."""
        if a:
            value = cvf_cents(a) if self.cvf else self.values.get(a)
            if value is None:
                detail = f"credit for coin position {a} with no value"
                self._notice("unknown_credit", detail, now, cursor)
            else:
                self._events.append(CoinAccepted(value, now, cursor=cursor))
            return set(), True
        name, kind = classify(b)
        if kind is EventClass.REJECTED:
            self._events.append(CoinRejected(f"cctalk_{b}", name, now, cursor))
            return ({"inhibits"} if b == INHIBITED_COIN or 128 <= b <= 159 else set()), True
        if kind is EventClass.POSSIBLE:
            self._notice(f"event_{b}", f"{name}: a coin may be jammed or swallowed", now, cursor)
            return {"self_check"}, True
        if kind is EventClass.ALARM:
            self._notice(f"event_{b}", name, now, cursor)
            return set(), True
        return set(), False

    def _notice(self, code: str, detail: str, now: float, cursor: str = "") -> None:
        log.warning("ccTalk coin acceptor: %s", detail)
        self._events.append(DeviceNotice(DEVICE, code, detail, now, cursor))

    def _interval(self) -> float:
        if self.lost or not self._ready:
            return RECOVERY_POLL_S
        if self.fault:
            return FAULT_POLL_S
        return self._poll_interval_s
