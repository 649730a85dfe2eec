"""Fuzzing the ccTalk side of the kiosk (hypothesis): the frame parser and the session. Whatever
the line brings, the parser yields only frames with a good checksum, the same ones however the
bytes are cut, and finds a frame in noise unless an earlier frame overlaps it; the session never
credits a coin twice or one its buffer did not show, and says so (a reset, lost events, a fault)
when it may have missed one. tests/test_fuzz_inputs.py does the same for the kiosk's other doors.

The per-module tests fuzz single pieces already (random bytes into the parser, random replies
over a pseudo-terminal); these go wider: streams cut anywhere and compared with a byte-by-byte
scan, and a coin acceptor whose every event is known behind a line that loses, refuses and
damages replies.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.base import (
    CoinAccepted,
    DeviceError,
    DeviceFault,
    DeviceNotice,
)
from drivers.cctalk_codec import BUSY, HOST, NAK, Checksum, Frame, FrameParser, decode, encode
from drivers.cctalk_identity import cvf_cents
from drivers.cctalk_session import CcTalkSession, Command, drive, new_events
from drivers.cctalk_transport import NoReply
from drivers.cctalk_transport import Refused as DeviceRefused

QUICK = settings(max_examples=150, deadline=None)
SESSION = settings(max_examples=120, deadline=None)  # each example a whole start-up, then polls

MODES = st.sampled_from(list(Checksum))


# --- the frame parser ---------------------------------------------------------------------------


def scan(stream: bytes, mode: Checksum, destination: int | None) -> list[tuple[int, Frame]]:
    """What the parser must find in a stream that arrives without a pause: from each position,
    a whole frame with a good checksum is taken, anything else slides one byte. (offset, frame)."""
    found, i = [], 0
    while i < len(stream):
        if destination is not None and stream[i] != destination:
            i += 1
            continue
        if i + 1 >= len(stream) or i + stream[i + 1] + 5 > len(stream):
            break  # an unfinished frame: the parser waits for the rest
        size = stream[i + 1] + 5
        frame = decode(stream[i : i + size], mode)
        if frame is None:
            i += 1
            continue
        found.append((i, frame))
        i += size
    return found


def cut(data: st.DataObject, stream: bytes) -> list[bytes]:
    """The stream in pieces, cut at points hypothesis picks."""
    points = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def frames_of(mode: Checksum, destination: int | None = None) -> st.SearchStrategy[Frame]:
    return st.builds(
        Frame,
        st.integers(0, 255) if destination is None else st.just(destination),
        st.integers(0, 255),
        st.binary(max_size=16),
        st.integers(0, 255) if mode is Checksum.SIMPLE else st.just(HOST),
    )


@QUICK
@given(MODES, st.sampled_from([None, HOST]), st.binary(max_size=300), st.data())
@example(Checksum.SIMPLE, HOST, bytes.fromhex("01 0B 02 00 01 01 05" + " 00" * 8 + " EB"), None)
def test_a_stream_cut_anywhere_yields_what_a_byte_by_byte_scan_finds(
    mode: Checksum, destination: int | None, stream: bytes, data: st.DataObject | None
) -> None:
    parser = FrameParser(mode, destination=destination)
    pieces = [stream] if data is None else cut(data, stream)
    found: list[Frame] = []
    for n, piece in enumerate(pieces):
        found += parser.feed(piece, n * 0.01)  # pauses within the 50 ms inter-byte timeout
    expected = scan(stream, mode, destination)
    assert found == [frame for _, frame in expected]
    for offset, frame in expected:  # every frame given is the bytes it came from, checksum good
        assert encode(frame, mode) == stream[offset : offset + len(frame.data) + 5]
    taken = sum(len(f.data) + 5 for f in found)
    assert parser.feed(b"", len(pieces) * 0.01 + 1.0) == []  # a pause: the unfinished rest goes
    assert parser.discarded + taken == len(stream)  # every byte a frame's or counted thrown away


@QUICK
@given(MODES, st.data())
def test_a_frame_in_noise_is_found_unless_a_frame_before_it_overlaps_it(
    mode: Checksum, data: st.DataObject
) -> None:
    frame = data.draw(frames_of(mode))
    noise = data.draw(st.binary(max_size=40))
    # After it, enough quiet bytes to finish any frame begun in the noise (at most 260 long).
    tail = data.draw(st.binary(min_size=260, max_size=270))
    raw = encode(frame, mode)
    stream = noise + raw + tail
    parser = FrameParser(mode)
    found: list[Frame] = []
    for n, piece in enumerate(cut(data, stream)):
        found += parser.feed(piece, n * 0.02)
    expected = scan(stream, mode, None)
    assert found == [f for _, f in expected]
    start = len(noise)
    overlapping = [(o, f) for o, f in expected if o < start < o + len(f.data) + 5]
    assert (start, frame) in expected or overlapping


@QUICK
@given(MODES, st.binary(max_size=60), st.data())
def test_frames_after_noise_and_a_pause_are_all_found_whatever_the_cuts(
    mode: Checksum, noise: bytes, data: st.DataObject
) -> None:
    frames = data.draw(st.lists(frames_of(mode), min_size=1, max_size=6))
    parser = FrameParser(mode)
    parser.feed(noise, 0.0)
    found: list[Frame] = []
    for n, piece in enumerate(cut(data, b"".join(encode(f, mode) for f in frames))):
        found += parser.feed(piece, 1.0 + n * 0.04)
    assert found == frames
    assert parser.missing == 0


@QUICK
@given(MODES, st.data())
def test_one_damaged_byte_or_a_cut_never_yields_a_frame_that_was_not_sent(
    mode: Checksum, data: st.DataObject
) -> None:
    frame = data.draw(frames_of(mode, HOST))
    raw = bytearray(encode(frame, mode))
    if data.draw(st.booleans()):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    found = FrameParser(mode, destination=HOST).feed(bytes(raw), 0.0)
    # A frame hidden inside the damaged one may come out, never the damaged one itself.
    assert all(len(f.data) < len(frame.data) for f in found)
    assert all(encode(f, mode) in bytes(raw) for f in found)


@QUICK
@given(
    st.integers(-2, 300), st.integers(-2, 300), st.binary(max_size=300), st.integers(-2, 300), MODES
)
def test_encoding_any_frame_gives_bytes_that_decode_back_or_a_value_error(
    destination: int, header: int, payload: bytes, source: int, mode: Checksum
) -> None:
    frame = Frame(destination, header, payload, source if mode is Checksum.SIMPLE else HOST)
    try:
        raw = encode(frame, mode)
    except ValueError:
        fits = all(0 <= b <= 255 for b in (destination, header, source)) and len(payload) <= 255
        assert not fits
        return
    assert decode(raw, mode) == frame


# --- the ccTalk session -------------------------------------------------------------------------

SERIAL = 777
VALUED = range(1, 10)  # position p holds a p cent coin; 10-16 are unprogrammed


@dataclass
class Fate:
    """What the line does to one reply."""

    kind: str  # "ok", "silent", "nak", "busy", "flip", "cut"
    at: int = 0
    xor: int = 1


FATES = st.one_of(
    st.just(Fate("ok")),
    st.sampled_from([Fate("silent"), Fate("nak"), Fate("busy")]),
    st.builds(Fate, st.just("flip"), st.integers(0, 300), st.integers(1, 255)),
    st.builds(Fate, st.just("cut"), st.integers(0, 300)),
)


@dataclass(frozen=True)
class Read:
    data: bytes  # the 229 reply: counter, then five pairs, newest first
    ids: list[int]  # the event behind each pair (-1: empty)
    seen: int  # how many events the device had had then
    turn: int


@dataclass
class Acceptor:
    """A coin acceptor at address 2 whose every event is known, behind a line that loses,
    refuses and damages replies. The line does what the serial transport promises: a reply is
    a frame from address 2 with header 0 and one of the lengths the command allows, else
    NoReply or DeviceRefused."""

    mode: Checksum
    counter: int = 0
    fault: int = 0
    flags: int = 0  # option flags (213): bit 0 set, credit codes are coin values (CVF)
    buffer: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, 0, -1)] * 5)
    log: list[tuple[int, int]] = field(default_factory=list)  # every event: (A, B); id = index
    fates: list[Fate] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)  # every 229 reply delivered
    turn = 0

    def event(self, a: int, b: int) -> None:
        self.counter = self.counter % 255 + 1
        self.buffer = [(a, b, len(self.log)), *self.buffer[:4]]
        self.log.append((a, b))

    def reset(self) -> None:
        self.counter, self.buffer = 0, [(0, 0, -1)] * 5

    def reply_data(self, command: Command) -> bytes:
        header = command.header
        if header == 184:
            position = command.data[0]
            return f"EU00{position}A".encode() if position in VALUED else b"......"
        if header == 229:
            return bytes([self.counter, *(x for a, b, _ in self.buffer for x in (a, b))])
        replies = {
            245: b"Coin Acceptor",
            246: b"Fuzz",
            244: b"F1",
            242: SERIAL.to_bytes(3, "little"),
            241: b"1.0",
            4: bytes([1, 4, 2]),
            213: bytes([self.flags]),
            230: b"\x00\x00",
            232: bytes([self.fault]),
        }
        return replies.get(header, b"")

    def answer(self, command: Command) -> bytes:
        fate = self.fates.pop(0) if self.fates else Fate("ok")
        if fate.kind == "silent":
            raise NoReply(f"header {command.header}: no reply")
        header = {"nak": NAK, "busy": BUSY}.get(fate.kind, 0)
        raw = bytearray(encode(Frame(HOST, header, self.reply_data(command), 2), self.mode))
        if fate.kind == "flip":
            raw[fate.at % len(raw)] ^= fate.xor
        elif fate.kind == "cut":
            raw = raw[: fate.at % len(raw)]
        frames = FrameParser(self.mode, source=2, destination=HOST).feed(bytes(raw), 0.0)
        reply = next((f for f in frames if f.source == 2), None)
        if reply is None:
            raise NoReply(f"header {command.header}: no valid reply")
        if reply.header in (NAK, BUSY):
            raise DeviceRefused(f"header {command.header}: refused")
        if reply.header != 0:
            raise NoReply(f"header {command.header}: reply header {reply.header}")
        if command.lengths is not None and len(reply.data) not in command.lengths:
            raise NoReply(f"header {command.header}: {len(reply.data)} bytes")
        if command.header == 229:
            ids = [i for _, _, i in self.buffer]
            self.reads.append(Read(reply.data, ids, len(self.log), self.turn))
        return reply.data


def fresh_session() -> CcTalkSession:
    s = CcTalkSession((1, 2, 5), where="fuzz", poll_interval_s=0.2, lost_after=3)
    s.wanted = True
    return s


def run_step(s: CcTalkSession, answer: Any, now: float) -> list[Any]:
    """One turn of the poller, as drivers.cctalk runs it: a DeviceError is a failed exchange."""
    try:
        drive(s.step(now), answer)
    except DeviceError as err:
        s.failed(err, now)
    return s.take_events()


def number(cursor: str) -> int:
    match = re.fullmatch(rf"cctalk:{SERIAL}:(\d+)", cursor)
    assert match is not None, cursor
    return int(match.group(1))


def lost_count(events: list[Any]) -> int:
    """Events the session said it lost (its lost_events faults)."""
    return sum(
        int(e.detail.split(" ", 1)[0])
        for e in events
        if isinstance(e, DeviceFault) and e.code == "lost_events" and e.active
    )


DEVICE_ACTIONS = st.one_of(
    st.tuples(st.just("coin"), st.integers(1, 12), st.integers(0, 3)),
    st.tuples(st.just("error"), st.integers(0, 255), st.just(0)),
    st.tuples(st.just("reset"), st.just(0), st.just(0)),
    st.tuples(st.just("fault"), st.sampled_from([0, 0, 3, 255]), st.just(0)),
)
TURNS = st.lists(
    st.tuples(st.lists(DEVICE_ACTIONS, max_size=7), st.lists(FATES, max_size=4)),
    min_size=1,
    max_size=12,
)


def looks_unreset(before: bytes, after: bytes) -> bool:
    """`after` reads as `before` with at most five events on top: nothing in the buffer shows
    that the device was reset in between (§7.3: a reset can go unseen)."""
    new = new_events(after[0], before[0])
    return new <= 5 and after[1 + 2 * new :] == before[1 : 11 - 2 * new]


@SESSION
@given(MODES, st.sampled_from([0, 1, 40, 250, 255]), TURNS)
def test_a_known_acceptor_behind_a_bad_line_is_counted_once_and_losses_are_said(
    mode: Checksum, counter: int, turns: list[tuple[list[tuple[str, int, int]], list[Fate]]]
) -> None:
    device = Acceptor(mode, counter)
    s = fresh_session()
    credited: set[int] = set()
    said: list[list[Any]] = []
    active: set[str] = set()
    resets = False
    for t, (actions, fates) in enumerate([*turns, ([], []), ([], []), ([], []), ([], [])]):
        for kind, a, b in actions:
            if kind == "coin":
                device.event(a, b)
            elif kind == "error":
                device.event(0, a)
            elif kind == "reset":
                device.reset()
                resets = True
            else:
                device.fault = a
        if t >= len(turns):
            device.fault = 0  # the flush at the end: a clean line and a healthy device
        device.fates, device.turn = list(fates), t
        events = run_step(s, device.answer, float(t))
        said.append(events)
        for e in events:  # faults are data: each one raised and cleared as the session sees it
            if isinstance(e, DeviceFault) and e.code != "lost_events":
                assert (e.code in active) is not e.active, e
                active.symmetric_difference_update({e.code})
        expected = {"lost"} if s.lost else set()
        if s.fault:
            expected.add(f"self_check_{s.fault}")
        assert active == expected
        reads = [r for r in device.reads if r.turn == t]
        for coin in (e for e in events if isinstance(e, CoinAccepted)):
            assert len(reads) == 1, "a credit without a read of the buffer"
            index = (reads[0].data[0] - number(coin.cursor)) % 255
            assert index < 5, "a credit for an event the buffer does not hold"
            event_id = reads[0].ids[index]
            assert event_id >= 0, "a credit for an empty pair"
            a, _ = device.log[event_id]
            assert a in VALUED and coin.value_cents == a, "a credit the pair does not say"
            assert event_id not in credited, "a coin credited twice"
            credited.add(event_id)
    assert device.reads, "the session never read the buffer"
    first = device.reads[0]  # the events before the first read are never credited
    taken = {i for i, (a, _) in enumerate(device.log) if i >= first.seen and a in VALUED}
    assert credited <= taken
    for missed in sorted(taken - credited):
        # The reads just before and just after the coin: the session heard of it at the second.
        before = next(r for r in reversed(device.reads) if r.seen <= missed)
        after = next(r for r in device.reads if r.seen > missed)
        told = said[after.turn]
        losses = lost_count(told)
        reset = any(isinstance(e, DeviceNotice) and e.code == "reset" for e in told)
        assert losses or reset or (resets and looks_unreset(before.data, after.data)), (
            f"coin {missed} missed unsaid between {before} and {after}"
        )
    if not resets:
        assert len(taken - credited) <= sum(lost_count(events) for events in said)
    assert s.is_accepting  # after the flush, the device answers and takes coins


def test_a_reset_then_as_many_events_as_before_is_a_reset_not_nothing() -> None:
    # Found by the test above: the counter back where it was, over other pairs. Reading only
    # the counter, the coin after the reset went uncredited and unsaid.
    device = Acceptor(Checksum.SIMPLE)
    device.event(5, 0)
    s = fresh_session()
    run_step(s, device.answer, 0.0)  # start-up: counter 1, the 5 c coin from before
    device.reset()
    device.event(2, 0)  # counter 1 again
    events = run_step(s, device.answer, 1.0)
    assert [type(e) for e in events] == [DeviceNotice, CoinAccepted]
    assert events[0].code == "reset" and events[1].value_cents == 2
    assert run_step(s, device.answer, 2.0) == []  # read again: nothing twice


@functools.cache  # one strategy per counter: built and validated once
def buffers(last: int) -> st.SearchStrategy[bytes]:
    """229 replies of no device at all: counters near the last one, wrapped, back at 0 or
    anything; pairs of credits (valued or not) and event codes in and out of the table."""
    counter = st.one_of(
        st.integers(0, 7).map(lambda k: (last + k - 1) % 256),
        st.sampled_from([0, 1, 5, 6, 254, 255]),
        st.integers(0, 255),
    )
    pair = st.tuples(st.sampled_from([0, 0, 1, 2, 5, 9, 13, 200, 255]), st.integers(0, 255))
    return st.tuples(counter, st.lists(pair, min_size=5, max_size=5)).map(
        lambda c: bytes([c[0], *(x for p in c[1] for x in p)])
    )


@SESSION
@given(st.sampled_from([0, 3, 200, 254, 255]), st.booleans(), st.data())
def test_any_229_buffer_credits_only_the_pairs_it_shows_and_never_twice(
    start: int, cvf: bool, data: st.DataObject
) -> None:
    device = Acceptor(Checksum.SIMPLE, start, flags=int(cvf))
    s = fresh_session()
    run_step(s, device.answer, 0.0)
    assert s.is_accepting and s.cvf is cvf
    delivered = [device.reply_data(Command(229))]
    for t in range(1, data.draw(st.integers(1, 10)) + 1):
        last = delivered[-1]
        reply = data.draw(st.one_of(buffers(last[0]), st.just(last)), label="229")
        fault = data.draw(st.sampled_from([b"\x00", b"\x00", b"\x03", b"\xff\x01"]), label="232")

        def answer(command: Command, reply: bytes = reply, fault: bytes = fault) -> bytes:
            if command.header == 229:
                delivered.append(reply)
                return reply
            if command.header == 232:
                return fault
            return device.answer(command)

        events = run_step(s, answer, float(t))
        coins = [e for e in events if isinstance(e, CoinAccepted)]
        for coin in coins:
            index = (reply[0] - number(coin.cursor)) % 255
            assert index < 5
            code = reply[1 + 2 * index]  # position, or value in CVF
            assert coin.value_cents == (cvf_cents(code) if cvf else code)
            assert cvf or code in VALUED
        assert len({c.cursor for c in coins}) == len(coins)
        if delivered[-1] is not reply:
            assert not coins  # a self-check fault: the buffer is not read
            continue
        counted = [e for e in events if not isinstance(e, DeviceFault)]
        if reply == last:
            assert counted == [], "the same buffer read twice yields nothing"
        if reply[0] == 0 and last[0] != 0:
            assert [(type(e), e.code) for e in counted] == [(DeviceNotice, "reset")]


REPLIES = st.one_of(st.none(), st.binary(max_size=20), st.sampled_from([b"Coin Acceptor"]))


@SESSION
@given(st.dictionaries(st.sampled_from([245, 246, 244, 242, 241, 4, 213, 230, 232, 229]), REPLIES))
def test_a_start_up_on_any_answers_fails_plainly_or_credits_nothing(
    answers: dict[int, bytes | None],
) -> None:
    device = Acceptor(Checksum.SIMPLE, 7)
    device.event(1, 0)

    def answer(command: Command) -> bytes:
        if command.header not in answers:
            return device.answer(command)
        reply = answers[command.header]
        if reply is None:
            raise NoReply(f"header {command.header}: no reply")
        if command.lengths is not None and len(reply) not in command.lengths:
            raise NoReply(f"header {command.header}: {len(reply)} bytes")
        return reply

    s = fresh_session()
    for t in range(3):
        events = run_step(s, answer, float(t))
        assert not any(isinstance(e, CoinAccepted) for e in events)  # only what was buffered
        if s.lost:
            assert not s.is_accepting
    faults = [(e.code, e.active) for e in events if isinstance(e, DeviceFault)]
    assert s.is_accepting or s.lost or s.fault, faults
