"""The ccTalk transport over a real pseudo-terminal (echo, retries, NAK and BUSY, timeouts, the
traffic ring buffer) against the simulated acceptor and a scripted pty responder; the coin
acceptor driver at unit level (start-up, coin ids, header 229 counter arithmetic and event classes
with the reference vectors); random and damaged replies fuzzed with hypothesis."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import (
    CoinAccepted,
    CoinRejected,
    DeviceError,
    DeviceFault,
    DeviceNotice,
    SystemClock,
)
from drivers.cctalk import CcTalkCoinAcceptor, CcTalkSettings, coin_value_cents, cvf_cents
from drivers.cctalk_codec import HOST, Checksum, Frame, FrameParser, encode
from drivers.cctalk_transport import NoReply, Refused, Transport
from sim.cctalk_device import SimCcTalkAcceptor

POLL, ACK = bytes.fromhex("02 00 01 FE FF"), bytes.fromhex("01 00 02 00 FD")


def reply(header: int = 0, data: bytes = b"", source: int = 2) -> bytes:
    return encode(Frame(HOST, header, data, source))


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

    def acceptor(self, port: str, emitted: list[Any]) -> CcTalkCoinAcceptor:
        config = CcTalkSettings(port=port, reply_timeout_ms=200, retries=1)
        return self.keep(CcTalkCoinAcceptor(config, (1, 2, 5), SystemClock(), emitted.append))

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        for thing in reversed(self._opened):
            thing.close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    with Bench() as made:
        yield made


# --- transport --------------------------------------------------------------------------------


def test_simple_poll_and_data_replies(bench: Bench) -> None:
    t = bench.transport(bench.sim().path)
    assert t.request(254) == Frame(HOST, 0, b"", 2)
    assert t.request(245).data == b"Coin Acceptor"
    assert t.request(184, b"\x03").data == b"EU005A"
    assert int.from_bytes(t.request(242).data, "little") == 12_345_678


@pytest.mark.parametrize("echo", [True, False])
def test_auto_echo_is_detected_on_the_first_exchange(bench: Bench, echo: bool) -> None:
    t = bench.transport(bench.sim(echo=echo).path, echo="auto")
    assert t.echo is None
    assert t.request(254).is_ack
    assert t.echo is echo
    assert t.request(245).data == b"Coin Acceptor"
    assert [x.direction for x in t.recent].count("echo") == 2 * echo


def test_echo_on_without_an_echo_fails_after_every_retry(bench: Bench) -> None:
    t = bench.transport(bench.sim(echo=False).path, echo="on", retries=2)
    with pytest.raises(NoReply, match="echo differs"):
        t.request(254)
    assert [x.direction for x in t.recent].count("tx") == 3


def test_echo_off_on_an_echoing_line_fails_clearly(bench: Bench) -> None:
    t = bench.transport(bench.sim(echo=True).path, echo="off", retries=1)
    with pytest.raises(DeviceError, match="line echoes but echo is off") as raised:
        t.request(254)  # before the fix: a reply within 50 ms passed, a slower one timed out
    assert not isinstance(raised.value, NoReply)  # a wrong setting: not retried
    assert [(x.direction, x.data) for x in t.recent] == [("tx", POLL)]


def test_the_traffic_ring_buffer_is_bounded_and_dumped(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    t = bench.transport(bench.sim(echo=True).path, echo="auto", history=5)
    for header in (254, 245, 254):
        t.request(header)
    assert [x.direction for x in t.recent] == ["echo", "rx", "tx", "echo", "rx"]
    assert t.recent[2].data == t.recent[3].data == POLL and t.recent[4].data == ACK
    assert [x.at for x in t.recent] == sorted(x.at for x in t.recent)
    with caplog.at_level(logging.WARNING, logger="drivers.cctalk_transport"):
        t.dump("testing the dump")
    [record] = caplog.records
    text = record.getMessage()
    assert "testing the dump" in text and t.port_name in text
    assert len(text.splitlines()) == 1 + 5
    assert text.splitlines()[-1].endswith("rx 01 00 02 00 fd")


@pytest.mark.parametrize(("retries", "works"), [(1, True), (0, False)])
def test_a_corrupted_reply_is_retried(bench: Bench, retries: int, works: bool) -> None:
    device = bench.sim()
    device.corrupt_replies = 1
    t = bench.transport(device.path, retries=retries)
    with nullcontext() if works else pytest.raises(NoReply):
        assert t.request(245).data == b"Coin Acceptor"
    assert [x.direction for x in t.recent].count("tx") == 1 + retries


@pytest.mark.parametrize(
    ("header", "error", "message"),
    [(5, Refused, "header 167: NAK"), (6, Refused, "header 167: BUSY"), (7, NoReply, "header 7")],
)
def test_nak_busy_and_other_headers_fail(
    bench: Bench, header: int, error: type, message: str
) -> None:
    device = bench.responder((0, reply(header)))
    t = bench.transport(device.path, retries=1)
    with pytest.raises(error, match=message):
        t.request(167, b"\x01")
    assert device.requests == 2  # retried once


def test_a_reply_from_another_address_is_ignored(bench: Bench) -> None:
    t = bench.transport(bench.responder((0, reply(source=3))).path, reply_timeout_s=0.02)
    with pytest.raises(NoReply):
        t.request(254)
    assert t.recent[-1].direction == "rx" and t.recent[-1].data == reply(source=3)


@pytest.mark.parametrize(("gap_s", "works"), [(0.01, True), (0.06, False)])
def test_a_gap_over_50_ms_inside_a_reply_is_no_reply(
    bench: Bench, gap_s: float, works: bool
) -> None:
    raw = reply(data=b"Coin Acceptor")
    t = bench.transport(bench.responder((0, raw[:7]), (gap_s, raw[7:])).path)
    with nullcontext() if works else pytest.raises(NoReply, match="no reply"):
        assert t.request(245).data == b"Coin Acceptor"


def test_an_unopened_or_closed_transport_raises(bench: Bench) -> None:
    t = bench.keep(Transport(bench.sim().path, 2, retries=3))
    with pytest.raises(DeviceError, match="is not open") as raised:
        t.request(254)
    assert not isinstance(raised.value, NoReply)
    t.open()
    assert t.request(254).is_ack
    t.close()
    t.close()  # idempotent
    assert not t.is_open
    with pytest.raises(DeviceError, match="is not open"):
        t.request(254)


def test_a_missing_port_is_named() -> None:
    t = Transport("/dev/no-such-cctalk-port", 2)
    with pytest.raises(DeviceError, match="/dev/no-such-cctalk-port"):
        t.open()
    assert not t.is_open
    with pytest.raises(ValueError, match="echo must be"):
        Transport("/dev/null", 2, echo="maybe")


# --- the coin acceptor driver ------------------------------------------------------------------


def test_start_up_reads_identity_and_the_position_table(bench: Bench) -> None:
    ids = {1: "EU005A", 2: "EU001A", 3: "EU002A", 4: "TK000A", 9: "EU200A"}
    device, emitted = bench.sim(coin_ids=ids), []
    acceptor = bench.acceptor(device.path, emitted)
    acceptor.start()
    ident = acceptor.identity
    assert (ident.category, ident.software, ident.comms) == ("Coin Acceptor", "SIM-1.0", "1.4.2")
    assert ident.coin_ids[4] == "TK000A" and ident.coin_ids[16] == "......"
    assert acceptor.values == {1: 5, 2: 1, 3: 2, 9: 200}
    assert device.masks == 0b111 and not device.master_enabled
    acceptor.set_accepting(True)
    device.push_event(4, 0)  # a taught coin credited anyway: no value, so no 0 c coin
    device.push_event(1, 0)
    acceptor.service(time.monotonic())
    assert [e.value_cents for e in emitted if isinstance(e, CoinAccepted)] == [5]
    assert [e.code for e in emitted if isinstance(e, DeviceNotice)] == ["unknown_credit"]


class NotAnAcceptor(SimCcTalkAcceptor):
    def _handle(self, header: int, data: bytes) -> bytes | None:
        return b"Payout" if header == 245 else super()._handle(header, data)


def test_another_equipment_category_is_refused(bench: Bench) -> None:
    device, emitted = bench.sim(NotAnAcceptor), []
    with pytest.raises(DeviceError, match="'Payout', not a coin acceptor"):
        bench.acceptor(device.path, emitted).start()
    assert [(e.code, e.active) for e in emitted if isinstance(e, DeviceFault)] == [("lost", True)]


@pytest.mark.parametrize(
    ("coin_id", "cents"),
    [("EU001A", 1), ("EU.05A", 5), ("EU.50A", 50), ("EU200A", 200), ("GB010B", 10)]
    + [("EU10mA", 1), ("EU50mA", 5), ("EU25mA", None)]
    + [(bad, None) for bad in ("......", "TK000A", "EU.00A", "", "eu001a", "EU01A", "EU2.5A")]
    + [(bad, None) for bad in ("EU5m0A", "EU001AB", "\xff" * 6)],
)
def test_coin_values_from_coin_ids(coin_id: str, cents: int | None) -> None:
    assert coin_value_cents(coin_id) == cents


def test_a_table_that_writes_fractions_counts_in_euros(bench: Bench) -> None:
    ids = {1: "EU.01A", 2: "EU.02A", 3: "EU.05A", 4: "EU.10A", 7: "EU001A", 8: "EU002A"}
    device, emitted = bench.sim(coin_ids=ids), []
    acceptor = bench.acceptor(device.path, emitted)
    acceptor.start()
    assert acceptor.values == {1: 1, 2: 2, 3: 5, 4: 10, 7: 100, 8: 200}
    assert device.masks == 0b111  # never the 1 and 2 euro coins


class FakeTransport:
    """Answers every command at once: ACK, or the self-check fault for header 232."""

    port_name, address = "fake", 2

    def __init__(self, fault: int = 0) -> None:
        self.fault = fault
        self.silent: set[int] = set()
        self.sent: list[tuple[int, bytes]] = []

    def request(self, header: int, data: bytes = b"", **options: object) -> Frame:
        self.sent.append((header, bytes(data)))
        if header in self.silent:
            raise NoReply(f"fake: header {header}: no reply")
        return Frame(HOST, 0, bytes([self.fault]) if header == 232 else b"", 2)

    def dump(self, reason: str) -> None:
        self.sent.append((-1, reason.encode()))


def unit(fault: int = 0) -> tuple[CcTalkCoinAcceptor, FakeTransport, list[Any]]:
    emitted: list[Any] = []
    config = CcTalkSettings(port="unused")
    acceptor = CcTalkCoinAcceptor(config, (1, 2, 5), SystemClock(), emitted.append)
    acceptor.transport = fake = FakeTransport(fault)  # type: ignore[assignment]
    acceptor.values = {p: p for p in range(1, 17)}  # position p is worth p cents: order shows
    return acceptor, fake, emitted


BUFFER = bytes([1, 0, 2, 0, 3, 0, 4, 0, 5, 0])  # newest first: positions 1 .. 5


@pytest.mark.parametrize(
    ("cur", "last", "credits"),
    [
        (23, 23, []),
        (104, 102, [2, 1]),
        (1, 255, [1]),
        (3, 253, [5, 4, 3, 2, 1]),
        (54, 48, [5, 4, 3, 2, 1]),
    ],
)
def test_new_events_from_the_counter(cur: int, last: int, credits: list[int]) -> None:
    acceptor, _, emitted = unit()
    acceptor._last_counter = last
    acceptor._read_events(bytes([cur]) + BUFFER)
    assert [e.value_cents for e in emitted if isinstance(e, CoinAccepted)] == credits
    faults = [(e.code, e.active) for e in emitted if isinstance(e, DeviceFault)]
    assert faults == ([("lost_events", True), ("lost_events", False)] if cur == 54 else [])
    if cur == 54:
        assert "1 event(s) lost (counter 48 -> 54)" in emitted[0].detail
    assert acceptor._last_counter == cur


def test_a_counter_back_at_zero_is_a_reset_and_inhibits_are_sent_again() -> None:
    acceptor, fake, emitted = unit()
    acceptor._last_counter, acceptor._accepting = 67, True
    acceptor.values = {1: 1, 2: 2, 3: 5, 4: 10}
    acceptor._read_events(bytes(11))
    assert [(type(e), e.code) for e in emitted] == [(DeviceNotice, "reset")]
    assert fake.sent == [(231, b"\x07\x00"), (228, b"\x01")]
    assert acceptor._last_counter == 0


# Reference table 2: class R, the coin came back (128-159: inhibited coin types 1-32), and
# class P, the coin may be jammed or swallowed (160-191: reserved, treated as P).
REJECTED = {1, 2, 3, *range(8, 16), 22, 24, 25, 30, 32, 33, 37, 38, *range(128, 160)}
POSSIBLE = {4, 5, 6, 21, 34, 35, *range(160, 192)}


def test_every_event_code_is_classified_and_never_credits() -> None:
    acceptor, fake, emitted = unit(fault=3)
    for code in range(256):
        emitted.clear()
        fake.sent.clear()
        acceptor._fault = 0  # so that every possible jam raises the self-check fault anew
        acceptor._read_events(bytes([code % 255 + 1, 0, code]) + bytes(8))
        if code in REJECTED:
            assert emitted == [CoinRejected(f"cctalk_{code}", emitted[0].detail, emitted[0].at)]
        else:
            assert [e.code for e in emitted] == [f"event_{code}"] * bool(code) + [
                "self_check_3"
            ] * (code in POSSIBLE)
        assert fake.sent == [(232, b"")] * (code in POSSIBLE)
        if code == 130:
            assert emitted[0].detail == "inhibited coin (type 3)"


def test_the_p3_appendix_11_sequence_yields_one_event_per_read() -> None:
    acceptor, _, emitted = unit()
    seen = []
    for rx in (
        "01 0B 02 00 00 00 00 00 00 00 00 00 00 00 00 F2",
        "01 0B 02 00 01 01 05 00 00 00 00 00 00 00 00 EB",
        "01 0B 02 00 02 01 05 01 05 00 00 00 00 00 00 E4",
        "01 0B 02 00 03 05 05 01 05 01 05 00 00 00 00 D9",
        "01 0B 02 00 04 00 01 05 05 01 05 01 05 00 00 D7",
    ):
        acceptor._read_events(bytes.fromhex(rx)[4:-1])  # data bytes of the published frame
        seen.append([getattr(e, "value_cents", getattr(e, "reason", None)) for e in emitted])
        emitted.clear()
    assert seen == [[], [1], [1], [5], ["cctalk_1"]]


# --- fuzzing ---------------------------------------------------------------------------------


@st.composite
def damaged_229(draw: st.DrawFn, mode: Checksum = Checksum.SIMPLE) -> bytes:
    raw = bytearray(encode(Frame(HOST, 0, draw(st.binary(min_size=11, max_size=11)), 2), mode))
    if draw(st.booleans()):
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(raw)
    return bytes(raw[: draw(st.integers(0, len(raw) - 1))])


@given(st.sampled_from(list(Checksum)), st.data())
def test_a_damaged_229_reply_is_never_accepted(mode: Checksum, data: st.DataObject) -> None:
    parser = FrameParser(mode, source=2)
    assert all(len(frame.data) != 11 for frame in parser.feed(data.draw(damaged_229(mode)), 0.0))


replies = st.one_of(st.binary(max_size=40), damaged_229())
fuzz = settings(max_examples=30, deadline=None)


@fuzz
@given(replies)
def test_random_replies_only_raise_device_errors(raw: bytes) -> None:
    with Bench() as bench:
        t = bench.transport(bench.responder((0, raw)).path, echo="auto", reply_timeout_s=0.02)
        try:
            frame = t.request(229)
        except DeviceError:
            return  # what the transport may raise; anything else fails the test
    assert (frame.destination, frame.source, frame.header) == (HOST, 2, 0)
    assert encode(frame) in raw


@fuzz
@given(replies)
def test_random_replies_never_credit(raw: bytes) -> None:
    emitted: list[Any] = []
    with Bench() as bench:
        config = CcTalkSettings(bench.responder((0, raw)).path, reply_timeout_ms=20, retries=0)
        acceptor = CcTalkCoinAcceptor(config, (1, 2, 5), SystemClock(), emitted.append)
        bench.keep(acceptor.transport).open()
        acceptor.values, acceptor._next_poll = {p: 1 for p in range(1, 17)}, 0.0
        acceptor.service(time.monotonic())
    found = FrameParser().feed(raw, 0.0)
    valid = [f for f in found if f == Frame(HOST, 0, f.data, 2) and len(f.data) == 11]
    assert valid or not [e for e in emitted if isinstance(e, CoinAccepted)]
    assert valid or acceptor._failures == 1  # without a real 229 reply the poll failed


@pytest.mark.parametrize(
    ("code", "cents"),
    [
        (1, 1),
        (2, 2),
        (5, 5),
        (10, 10),
        (148, 200),
        (153, 250),
        (178, 500),
        (228, 1000),
        (254, 1260),
        (255, None),
        (0, None),
        (128, None),
    ],
)
def test_coin_value_format_codes(code: int, cents: int | None) -> None:
    assert cvf_cents(code) == cents


class SlowFirstReply(SimCcTalkAcceptor):
    """Answers its first request after the host has given up on it, the rest at once."""

    late = True

    def _answer(self, request: Frame) -> None:
        self.reply_delay_s, self.late = (0.065 if self.late else 0.0), False
        super()._answer(request)


def test_a_late_reply_is_never_taken_for_the_next_one(bench: Bench) -> None:
    device = bench.sim(SlowFirstReply, echo=False)
    # Late by 15 ms; the line must then stay quiet for a reply timeout (50 ms) before the retry.
    t = bench.transport(device.path, reply_timeout_s=0.05, retries=1)
    assert t.request(184, b"\x01", length=(6,)).data == b"EU001A"
    assert t.request(184, b"\x02", length=(6,)).data == b"EU002A"
    assert t.request(184, b"\x03", length=(6,)).data == b"EU005A"


def test_a_reply_of_the_wrong_length_is_refused(bench: Bench) -> None:
    t = bench.transport(bench.sim(echo=False).path, retries=1)
    with pytest.raises(NoReply, match="reply of 6 bytes"):
        t.request(184, b"\x01", length=(11,))


def test_a_failing_self_check_after_an_event_never_credits_twice() -> None:
    acceptor, fake, emitted = unit()
    fake.silent = {232}
    data = bytes([2, 0, 6, 1, 0]) + bytes(6)  # oldest: a 1 c credit; newest: event 6 (possible)
    acceptor._read_events(data)  # the self-check it calls for gets no answer
    acceptor._read_events(data)  # the same reply again: nothing new
    assert [e.value_cents for e in emitted if isinstance(e, CoinAccepted)] == [1]
    assert acceptor._last_counter == 2


class NeedsAPause(SimCcTalkAcceptor):
    """Ignores a command that comes less than 30 ms after its last reply."""

    replied_at = 0.0

    def _answer(self, request: Frame) -> None:
        if time.monotonic() - self.replied_at < 0.03:
            return
        super()._answer(request)
        self.replied_at = time.monotonic()


def test_a_pause_between_commands_serves_devices_that_need_one(bench: Bench) -> None:
    device = bench.sim(NeedsAPause, echo=False)
    hasty = bench.transport(device.path, reply_timeout_s=0.02)
    with pytest.raises(NoReply):
        for _ in range(3):
            hasty.request(254)
    patient = bench.transport(device.path, reply_timeout_s=0.02, command_gap_s=0.035)
    for _ in range(3):
        assert patient.request(254).is_ack
