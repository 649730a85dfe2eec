"""The ccTalk device logic without a port: the session's procedures driven by a scripted device
(start-up, coin ids, header 229 counter arithmetic with the reference vectors, resets, the cursor
across restarts, lost devices, self-check faults, event classes); then the serial shell over a
real pseudo-terminal (identity, coin tables, random replies)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from benches import Bench
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import (
    CoinAccepted,
    CoinRejected,
    CursorAdvanced,
    DeviceError,
    DeviceFault,
    DeviceNotice,
    DeviceReady,
)
from drivers.cctalk import CcTalkCoinAcceptor, CcTalkSettings
from drivers.cctalk_codec import HOST, Frame, FrameParser, encode
from drivers.cctalk_identity import coin_value_cents, cvf_cents
from drivers.cctalk_session import CcTalkSession, Command, drive, new_events
from drivers.cctalk_transport import NoReply
from drivers.clock import SystemClock
from sim.cctalk_device import SimCcTalkAcceptor

SERIAL = 4242


class Device:
    """Answers a session's commands as a coin acceptor would; `silent` headers get no reply.
    Position p is worth p cents, so the order of credits shows."""

    def __init__(self, counter: int = 0, fault: int = 0) -> None:
        self.counter = counter
        self.pairs = [(0, 0)] * 5  # newest first
        self.fault = fault
        self.silent: set[int] = set()
        self.sent: list[tuple[int, bytes]] = []

    def events(self, *pairs: tuple[int, int]) -> None:
        for pair in pairs:
            self.counter = self.counter % 255 + 1
            self.pairs = [pair, *self.pairs[:4]]

    def reset(self) -> None:
        self.counter, self.pairs = 0, [(0, 0)] * 5

    def answer(self, command: Command) -> bytes:
        self.sent.append((command.header, command.data))
        if command.header in self.silent:
            raise NoReply(f"header {command.header}: no reply")
        replies: dict[int, bytes] = {
            245: b"Coin Acceptor",
            246: b"Test",
            244: b"T1",
            242: SERIAL.to_bytes(3, "little"),
            241: b"1.0",
            4: bytes([1, 4, 2]),
            213: b"\x00",
            230: b"\x00\x00",
            232: bytes([self.fault]),
            229: bytes([self.counter, *(x for pair in self.pairs for x in pair)]),
        }
        if command.header == 184:
            position = command.data[0]
            return f"EU00{position}A".encode() if position <= 9 else b"......"
        return replies.get(command.header, b"")


def started(device: Device, cursor: str | None = None) -> tuple[CcTalkSession, list[Any]]:
    """A session through its start-up, accepting coins, and what the start-up reported."""
    s = CcTalkSession((1, 2, 5), where="test", poll_interval_s=0.15, lost_after=3)
    s.resume_from(cursor)
    s.wanted = True
    return s, step(s, device, 0.0)


def session(device: Device, cursor: str | None = None) -> CcTalkSession:
    return started(device, cursor)[0]


def step(s: CcTalkSession, device: Device, now: float) -> list[Any]:
    try:
        drive(s.step(now), device.answer)
    except DeviceError as err:
        s.failed(err, now)
    return s.take_events()


def credits(events: list[Any]) -> list[int]:
    return [e.value_cents for e in events if isinstance(e, CoinAccepted)]


def test_start_up_identifies_seeds_the_counter_and_enables_coins() -> None:
    device = Device(counter=40)
    device.pairs = [(5, 0)] * 5  # from before this start: never credited
    s = CcTalkSession((1, 2, 5), where="test", poll_interval_s=0.15, lost_after=3)
    s.wanted = True
    drive(s.step(0.0), device.answer)
    [ready] = s.take_events()
    assert isinstance(ready, DeviceReady) and ready.faults == frozenset()
    assert s.identity.serial == SERIAL and s.identity.comms == "1.4.2"
    assert s.values == {p: p for p in range(1, 10)}
    assert device.sent[-2:] == [(231, b"\x13\x00"), (228, b"\x01")]  # positions 1, 2, 5
    assert s.is_accepting


@pytest.mark.parametrize(
    ("cur", "last", "expected"),
    [(23, 23, []), (104, 102, [2, 1]), (1, 255, [1]), (3, 253, [5, 4, 3, 2, 1]), (54, 48, None)],
)
def test_new_events_from_the_counter(cur: int, last: int, expected: list[int] | None) -> None:
    pairs = [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]  # newest first, as read at `cur`
    device = Device(counter=last)
    shift = new_events(cur, last)
    device.pairs = (pairs[shift:] + [(9, 0)] * 5)[:5]  # what the device held at `last`
    s = session(device)
    device.counter, device.pairs = cur, pairs
    events = step(s, device, 1.0)
    assert credits(events) == ([5, 4, 3, 2, 1] if expected is None else expected)
    faults = [(e.code, e.active) for e in events if isinstance(e, DeviceFault)]
    assert faults == ([("lost_events", True), ("lost_events", False)] if expected is None else [])
    if expected is None:
        assert events[0].detail.startswith("1 event(s) lost (counter 48 -> 54)")
    cursors = [e.cursor for e in events if isinstance(e, CoinAccepted)]
    assert cursors[-1:] == ([f"cctalk:{SERIAL}:{cur}"] if cur != last else [])


def test_a_counter_back_at_zero_is_a_reset_and_inhibits_are_sent_again() -> None:
    device = Device(counter=67)
    s = session(device)
    device.reset()
    device.sent.clear()
    events = step(s, device, 1.0)
    assert [(type(e), e.code) for e in events] == [(DeviceNotice, "reset")]
    assert events[0].cursor == f"cctalk:{SERIAL}:0"  # a restart after it reads nothing twice
    assert device.sent == [(229, b""), (231, b"\x13\x00"), (228, b"\x01")]


def test_a_reset_then_an_event_before_the_next_read_is_a_reset_not_lost_events() -> None:
    device = Device(counter=33)
    s = session(device)
    device.reset()
    device.events((5, 0))
    device.sent.clear()
    events = step(s, device, 1.0)
    assert [type(e) for e in events] == [DeviceNotice, CoinAccepted]
    assert events[0].code == "reset" and credits(events) == [5]
    assert (231, b"\x13\x00") in device.sent


# Reference table 2: class R, the coin came back (128-159: inhibited coin types 1-32), and
# class P, the coin may be jammed or swallowed (160-191: reserved, treated as P).
REJECTED = {1, 2, 3, *range(8, 16), 22, 24, 25, 30, 32, 33, 37, 38, *range(128, 160)}
POSSIBLE = {4, 5, 6, 21, 34, 35, *range(160, 192)}


def test_every_event_code_is_classified_and_never_credits() -> None:
    for code in range(256):
        device = Device(counter=10)
        s = session(device)
        device.fault = 3
        device.events((0, code))
        device.sent.clear()
        events = step(s, device, 1.0)
        assert credits(events) == []
        kinds = [type(e) for e in events]
        if code in REJECTED:
            assert kinds[0] is CoinRejected and events[0].reason == f"cctalk_{code}"
        elif code == 0:
            assert kinds == [CursorAdvanced]  # a null event: only its place is kept
        else:
            assert kinds[0] is DeviceNotice and events[0].code == f"event_{code}"
        assert ((232, b"") in device.sent) is (code in POSSIBLE)
        if code == 130:
            assert events[0].detail == "inhibited coin (type 3)"


def test_the_p3_appendix_11_sequence_yields_one_event_per_read() -> None:
    device = Device()
    s = session(device)
    seen = []
    for rx in (
        "01 0B 02 00 00 00 00 00 00 00 00 00 00 00 00 F2",
        "01 0B 02 00 01 01 05 00 00 00 00 00 00 00 00 EB",
        "01 0B 02 00 02 01 05 01 05 00 00 00 00 00 00 E4",
        "01 0B 02 00 03 05 05 01 05 01 05 00 00 00 00 D9",
        "01 0B 02 00 04 00 01 05 05 01 05 01 05 00 00 D7",
    ):
        data = bytes.fromhex(rx)[4:-1]  # data bytes of the published frame
        device.counter, device.pairs = data[0], [(data[i], data[i + 1]) for i in range(1, 11, 2)]
        events = step(s, device, len(seen) + 1.0)
        seen.append([getattr(e, "value_cents", getattr(e, "reason", None)) for e in events])
    assert seen == [[], [1], [1], [5], ["cctalk_1"]]


def test_a_failing_self_check_after_an_event_never_credits_twice() -> None:
    device = Device()
    s = session(device)
    device.events((1, 0), (0, 6))  # a 1 c credit, then event 6 (possibly swallowed)
    device.silent = {232}
    assert credits(step(s, device, 1.0)) == [1]  # the self-check it calls for gets no answer
    assert credits(step(s, device, 2.0)) == []  # the same reply again: nothing new


def test_a_restart_after_rejects_only_reads_nothing_twice() -> None:
    device = Device(counter=9)
    s = session(device)
    for t in range(1, 8):  # more rejects than the buffer holds, each read as it comes
        device.events((0, 1))
        [rejected] = step(s, device, float(t))
    again, events = started(device, cursor=rejected.cursor)
    assert [type(e) for e in events] == [DeviceReady]  # no reject twice, no lost events
    device.events((2, 0))
    assert credits(step(again, device, 1.0)) == [2]


def test_events_while_the_kiosk_was_down_are_read_from_the_cursor() -> None:
    device = Device(counter=20)
    s = session(device)
    device.events((1, 0))
    [coin] = step(s, device, 1.0)
    device.events((2, 0), (5, 0))  # the kiosk is down
    again = CcTalkSession((1, 2, 5), where="test", poll_interval_s=0.15, lost_after=3)
    again.resume_from(coin.cursor)
    drive(again.step(0.0), device.answer)
    assert credits(again.take_events()) == [2, 5]


def test_a_reset_while_the_kiosk_was_down_is_reported_as_a_reset() -> None:
    device = Device(counter=33)
    s = session(device)
    device.events((1, 0))
    [coin] = step(s, device, 1.0)
    device.reset()
    device.events((2, 0), (2, 0))  # two coins after the reset, the kiosk still down
    events = started(device, cursor=coin.cursor)[1]
    assert [type(e) for e in events] == [DeviceNotice, CoinAccepted, CoinAccepted, DeviceReady]
    assert events[0].code == "reset" and credits(events) == [2, 2]
    assert not any(isinstance(e, DeviceFault) for e in events)


def test_a_device_lost_then_found_keeps_its_self_check_fault() -> None:
    device = Device()
    s = session(device)
    device.fault = 3
    device.events((0, 6))
    events = step(s, device, 1.0)
    assert [(e.code, e.active) for e in events if isinstance(e, DeviceFault)] == [
        ("self_check_3", True)
    ]
    assert not s.is_accepting
    device.silent = set(range(256))
    lost = [e for t in (2.0, 3.0, 4.0) for e in step(s, device, t)]
    assert [(e.code, e.active) for e in lost] == [("lost", True)]
    device.silent = set()
    found = step(s, device, 5.0)
    ready = next(e for e in found if isinstance(e, DeviceReady))
    assert ready.faults == frozenset({"self_check_3"})  # the fault outlived the outage
    assert [(e.code, e.active) for e in found if isinstance(e, DeviceFault)] == [("lost", False)]
    assert not s.is_accepting
    device.fault = 0
    cleared = step(s, device, 7.0)
    assert [(e.code, e.active) for e in cleared] == [("self_check_3", False)]
    assert s.is_accepting


def test_the_master_inhibit_follows_the_kiosk_at_once() -> None:
    device = Device()
    s = session(device)
    s.wanted = False
    assert s.next_due() == 0.0  # due now, not at the next poll
    device.sent.clear()
    step(s, device, 0.01)
    assert device.sent == [(228, b"\x00")] and not s.is_accepting


# --- coin values taken at run time and the identity by key ------------------------------------


def inhibit_masks(device: Device) -> list[bytes]:
    return [data for header, data in device.sent if header == 231]


def test_the_coin_values_asked_are_sent_as_the_inhibit_mask_at_once() -> None:
    device = Device()
    s = session(device)
    device.sent.clear()
    s.set_denominations(frozenset({1, 5}))
    assert s.denominations == frozenset({1, 5})
    assert s.next_due() == 0.0  # not at the next poll
    step(s, device, 0.01)
    assert device.sent == [(231, b"\x11\x00")]  # positions 1 and 5; the master inhibit stays
    assert s.is_accepting and s.next_due() == 0.15
    s.set_denominations(frozenset({1, 2, 5}))
    step(s, device, 0.02)
    assert inhibit_masks(device) == [b"\x11\x00", b"\x13\x00"]


def test_every_resend_of_the_inhibits_carries_the_coin_values_asked() -> None:
    device = Device(counter=30)
    s = CcTalkSession((1, 2, 5), where="test", poll_interval_s=0.15, lost_after=3)
    s.wanted = True
    s.set_denominations(frozenset({2}))  # before the start-up: its own mask says so
    step(s, device, 0.0)
    device.reset()  # the counter back at 0
    step(s, device, 1.0)
    device.events((0, 2))  # an inhibited coin while accepting: the masks are sent again
    step(s, device, 2.0)
    device.fault = 3
    device.events((0, 6))
    step(s, device, 3.0)
    s.set_denominations(frozenset({2, 5}))  # the device has inhibited itself: nothing to send
    assert s.next_due() == 4.0
    device.fault = 0
    step(s, device, 4.0)  # the fault cleared: the inhibits again
    device.silent = set(range(256))
    for t in (5.0, 6.0, 7.0):
        step(s, device, t)
    assert s.lost
    device.silent = set()
    step(s, device, 8.0)  # found again: a start-up
    assert inhibit_masks(device) == [b"\x02\x00"] * 3 + [b"\x12\x00"] * 2
    assert s.is_accepting


def test_a_mask_the_device_did_not_acknowledge_is_sent_again() -> None:
    device = Device()
    s = session(device)
    s.set_denominations(frozenset({5}))
    device.silent = {231}
    step(s, device, 0.01)
    assert s.next_due() == 0.0  # still owed to the device
    device.silent = set()
    device.sent.clear()
    step(s, device, 0.02)
    assert device.sent == [(231, b"\x10\x00")]


def test_a_coin_value_the_kiosk_does_not_accept_is_refused() -> None:
    s = session(Device())
    with pytest.raises(ValueError, match=r"^10, 20 c: not among the coins this kiosk accepts"):
        s.set_denominations(frozenset({1, 10, 20}))
    assert s.denominations == frozenset({1, 2, 5}) and s.next_due() == 0.15


def test_the_ready_event_tells_the_identity_by_key() -> None:
    ready = next(e for e in started(Device())[1] if isinstance(e, DeviceReady))
    assert ready.identity == {
        "manufacturer": "Test",
        "product": "T1",
        "serial": "4242",
        "software": "1.0",
        "category": "Coin Acceptor",
        "comms": "1.4.2",
        "coins": " ".join(f"{p}:EU00{p}A" for p in range(1, 10)),
    }
    assert len({ready, ready}) == 1  # still hashable


@pytest.mark.parametrize(
    ("coin_id", "cents"),
    [("EU001A", 1), ("EU.05A", 5), ("EU.50A", 50), ("EU200A", 200), ("GB010B", 10)]
    + [("EU10mA", 1), ("EU50mA", 5), ("EU25mA", None)]
    + [(bad, None) for bad in ("......", "TK000A", "EU.00A", "", "eu001a", "EU01A", "EU2.5A")]
    + [(bad, None) for bad in ("EU5m0A", "EU001AB", "\xff" * 6)],
)
def test_coin_values_from_coin_ids(coin_id: str, cents: int | None) -> None:
    assert coin_value_cents(coin_id) == cents


@pytest.mark.parametrize(
    ("code", "cents"),
    [
        *[(1, 1), (2, 2), (5, 5), (10, 10), (148, 200), (153, 250), (178, 500), (228, 1000)],
        *[(254, 1260), (255, None), (0, None), (128, None)],
    ],
)
def test_coin_value_format_codes(code: int, cents: int | None) -> None:
    assert cvf_cents(code) == cents


# --- the serial shell over a pseudo-terminal ---------------------------------------------------


def test_start_up_reads_identity_and_the_position_table(bench: Bench) -> None:
    ids = {1: "EU005A", 2: "EU001A", 3: "EU002A", 4: "TK000A", 9: "EU200A"}
    device = bench.sim(coin_ids=ids)
    acceptor = bench.acceptor(device.path)
    acceptor.service(0.0)
    ident = acceptor.identity
    assert (ident.category, ident.software, ident.comms) == ("Coin Acceptor", "SIM-1.0", "1.4.2")
    assert ident.coin_ids[4] == "TK000A" and ident.coin_ids[16] == "......"
    assert acceptor.values == {1: 5, 2: 1, 3: 2, 9: 200}
    assert device.masks == 0b111 and not device.master_enabled
    acceptor.set_accepting(True)
    device.push_event(4, 0)  # a taught coin credited anyway: no value, so no 0 c coin
    device.push_event(1, 0)
    found = acceptor.service(1.0)
    assert credits(found) == [5]
    assert [e.code for e in found if isinstance(e, DeviceNotice)] == ["unknown_credit"]
    assert device.master_enabled


def test_the_ready_event_carries_the_identity_of_the_simulated_device(bench: Bench) -> None:
    ids = {1: "EU001A", 2: "EU002A", 3: "EU005A", 6: "TK000A"}
    device = bench.sim(coin_ids=ids, serial_number=654_321)
    acceptor = bench.acceptor(device.path)
    [ready] = [e for e in acceptor.service(0.0) if isinstance(e, DeviceReady)]
    assert ready.identity == {
        "manufacturer": "Centimeo",
        "product": "SIM-CA1",
        "serial": "654321",
        "software": "SIM-1.0",
        "category": "Coin Acceptor",
        "comms": "1.4.2",
        "coins": "1:EU001A 2:EU002A 3:EU005A 6:TK000A",
    }


class NotAnAcceptor(SimCcTalkAcceptor):
    def _handle(self, header: int, data: bytes) -> bytes | None:
        return b"Payout" if header == 245 else super()._handle(header, data)


def test_another_equipment_category_is_a_lost_device_that_says_why(bench: Bench) -> None:
    acceptor = bench.acceptor(bench.sim(NotAnAcceptor).path)
    [fault] = acceptor.service(0.0)
    assert (fault.code, fault.active) == ("lost", True)
    assert "'Payout', not a coin acceptor" in fault.detail


def test_a_table_that_writes_fractions_counts_in_euros(bench: Bench) -> None:
    ids = {1: "EU.01A", 2: "EU.02A", 3: "EU.05A", 4: "EU.10A", 7: "EU001A", 8: "EU002A"}
    device = bench.sim(coin_ids=ids)
    acceptor = bench.acceptor(device.path)
    acceptor.service(0.0)
    assert acceptor.values == {1: 1, 2: 2, 3: 5, 4: 10, 7: 100, 8: 200}
    assert device.masks == 0b111  # never the 1 and 2 euro coins


def damaged_229(draw: st.DrawFn) -> bytes:
    raw = bytearray(encode(Frame(HOST, 0, draw(st.binary(min_size=11, max_size=11)), 2)))
    if draw(st.booleans()):
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(raw)
    return bytes(raw[: draw(st.integers(0, len(raw) - 1))])


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.composite(damaged_229)()))
def test_random_replies_never_credit(raw: bytes) -> None:
    with Bench() as bench:
        responder = bench.responder((0, raw))
        config = CcTalkSettings(responder.path, reply_timeout_ms=20, retries=0, lost_after=2)
        acceptor = CcTalkCoinAcceptor(config, (1, 2, 5), SystemClock(), lambda event: None)
        bench.keep(acceptor)
        acceptor.transport.open()
        found = acceptor.service(time.monotonic())
    valid = [f for f in FrameParser().feed(raw, 0.0) if f == Frame(HOST, 0, f.data, 2) and f.data]
    assert not credits(found)  # a start-up from random bytes never gets as far as a 229
    assert valid or [(e.code, e.active) for e in found] == [("lost", True)]


def test_a_reset_then_a_few_events_is_seen_by_the_pairs_that_moved() -> None:
    device = Device(counter=1)
    s = session(device)
    device.events((1, 0), (2, 0))
    step(s, device, 1.0)
    device.reset()
    device.events((5, 0), (5, 0), (2, 0), (1, 0))  # counter 4 after 3: one event, it seems
    events = step(s, device, 2.0)
    assert [type(e) for e in events][:1] == [DeviceNotice] and events[0].code == "reset"
    assert credits(events) == [5, 5, 2, 1]


def test_a_wrap_to_five_with_events_lost_is_not_taken_for_a_reset() -> None:
    device = Device(counter=200)
    s = session(device)
    for _ in range(60):
        device.events((1, 0))
    assert device.counter == 5
    events = step(s, device, 1.0)
    assert not any(isinstance(e, DeviceNotice) for e in events)
    assert [(e.code, e.active) for e in events if isinstance(e, DeviceFault)][:1] == [
        ("lost_events", True)
    ]
    assert credits(events) == [1] * 5


def test_a_device_swapped_out_and_back_is_not_credited_twice() -> None:
    device = Device(counter=50)
    s = session(device, cursor=f"cctalk:{SERIAL}:50")
    device.events((1, 0), (2, 0))
    assert credits(step(s, device, 1.0)) == [1, 2]
    spare = Device(counter=9)
    s.set_lost("unplugged", 2.0)
    spare_serial = SERIAL + 1
    spare_answer = spare.answer

    def spare_device(command: Command) -> bytes:
        if command.header == 242:
            return spare_serial.to_bytes(3, "little")
        return spare_answer(command)

    drive(s.step(3.5), spare_device)
    s.take_events()
    s.set_lost("unplugged again", 4.0)
    drive(s.step(5.5), device.answer)
    assert credits(s.take_events()) == []
