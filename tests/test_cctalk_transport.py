"""The ccTalk transport over a real pseudo-terminal (echo, retries, NAK and BUSY, timeouts, the
traffic ring buffer, a port that fails or is held) against the simulated acceptor and a scripted
pty responder; random and damaged replies fuzzed with hypothesis. The device logic is tested
without a port in test_cctalk_session.py."""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext

import pytest
from benches import Bench
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceError
from drivers.cctalk_codec import HOST, Checksum, Frame, FrameParser, encode
from drivers.cctalk_transport import NoReply, PortBusy, PortGone, Refused, Transport
from sim.cctalk_device import SimCcTalkAcceptor

POLL, ACK = bytes.fromhex("02 00 01 FE FF"), bytes.fromhex("01 00 02 00 FD")


def reply(header: int = 0, data: bytes = b"", source: int = 2) -> bytes:
    return encode(Frame(HOST, header, data, source))


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
    hasty.close()
    patient = bench.transport(device.path, reply_timeout_s=0.02, command_gap_s=0.035)
    for _ in range(3):
        assert patient.request(254).is_ack


def test_a_port_held_by_another_kiosk_is_refused_with_its_process(bench: Bench) -> None:
    path = bench.sim().path
    bench.transport(path)
    second = bench.keep(Transport(path, 2))
    with pytest.raises(PortBusy, match=f"{path} is in use by process {os.getpid()}"):
        second.open()
    assert not second.is_open


def test_a_port_that_fails_under_us_is_port_gone(bench: Bench) -> None:
    device = bench.sim()
    t = bench.transport(device.path, reply_timeout_s=0.05)
    assert t.request(254).is_ack
    device.close()  # the other end of the line is gone, as when a USB interface is unplugged
    with pytest.raises(PortGone):
        t.request(254)
    t.close()
    assert not t.is_open
