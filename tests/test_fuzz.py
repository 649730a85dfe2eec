"""Fuzzing the kiosk's doors (hypothesis): the ccTalk frame parser and session, the control
socket's request lines, the MQTT command payloads and the TOML profiles. Whatever comes in, the
answer is a frame with a good checksum, a counted event, a refusal that says why or a ConfigError
that names the key: never another exception, never a coin counted twice or out of nothing, and
nothing in the ledger changed by a refused request.

The per-module tests fuzz single pieces already (random bytes into the parser, junk for one key
of a profile, random replies over a pseudo-terminal); these go wider: streams cut anywhere and
compared with a byte-by-byte scan, a coin acceptor whose every event is known behind a line that
loses, refuses and damages replies, whole documents and whole request lines.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import json
import math
import re
import socket
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from drivers.base import (
    CoinAccepted,
    DeviceError,
    DeviceFault,
    DeviceNotice,
)
from drivers.cctalk_codec import BUSY, HOST, NAK, Checksum, Frame, FrameParser, decode, encode
from drivers.cctalk_session import CcTalkSession, Command, drive, new_events
from drivers.cctalk_transport import NoReply
from drivers.cctalk_transport import Refused as DeviceRefused
from kiosk import config as config_mod
from kiosk import requests, service, snapshots
from kiosk.config import Config
from kiosk.errors import ConfigError, Refused
from kiosk.events import Command as KioskCommand
from kiosk.ledger_base import Actor
from kiosk.machine import State
from sim.live import LiveKiosk
from sim.rig import SimKiosk

QUICK = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=25, deadline=None)  # a socket, a ledger, a simulated kiosk

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
    assert parser.discarded + taken + len(parser._buffer) == len(stream)


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
            213: b"\x00",
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


@settings(max_examples=200, deadline=None)
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


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 3, 200, 254, 255]), st.data())
def test_any_229_buffer_credits_only_the_pairs_it_shows_and_never_twice(
    start: int, data: st.DataObject
) -> None:
    device = Acceptor(Checksum.SIMPLE, start)
    s = fresh_session()
    run_step(s, device.answer, 0.0)
    assert s.is_accepting
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
            assert index < 5 and reply[1 + 2 * index] == coin.value_cents
            assert coin.value_cents in VALUED
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


@settings(max_examples=150, deadline=None)
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


# --- the control socket's request lines ---------------------------------------------------------

# Valid JSON as the escape \ud800, but no character: neither SQLite nor UTF-8 takes it.
LONE_SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=10)
    | LONE_SURROGATES
    | st.sampled_from(
        [0, 1, 2, 5, 99, 100, 200, 201, 10_000, 10_001, -1, 0.5, 20.0, "1", "slot_1"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
ARG_NAMES = sorted({arg for spec in requests.COMMANDS.values() for arg in spec} | {"x", ""})
REQUEST_NAMES = st.one_of(st.sampled_from(sorted(requests.COMMANDS)), JSON_VALUES)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """Request objects: known and unknown names, arguments right, wrong or missing."""
    message: dict[str, Any] = {}
    if draw(st.booleans()):
        message["request"] = draw(REQUEST_NAMES)
    if draw(st.booleans()):
        args = draw(st.dictionaries(st.sampled_from(ARG_NAMES), JSON_VALUES, max_size=4))
        message["args"] = draw(st.one_of(st.just(args), JSON_VALUES))
    if draw(st.booleans()):
        message["id"] = draw(JSON_VALUES)
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.text(max_size=5) | LONE_SURROGATES)] = draw(JSON_VALUES)
    return message


@st.composite
def damaged(draw: st.DrawFn, lines: st.SearchStrategy[bytes]) -> bytes:
    """A line, maybe damaged: a byte changed, a NUL put in, cut short, grown past the limit or
    written in another encoding."""
    line = draw(lines)
    how = draw(st.sampled_from(["as is", "as is", "byte", "nul", "cut", "long", "utf-16", "bom"]))
    if how == "byte" and line:
        i = draw(st.integers(0, len(line) - 1))
        line = line[:i] + bytes([draw(st.integers(0, 255))]) + line[i + 1 :]
    elif how == "nul":
        i = draw(st.integers(0, len(line)))
        line = line[:i] + b"\0" + line[i:]
    elif how == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif how == "long":
        line = line + b" " * (requests.MAX_REQUEST_BYTES + 1 - len(line))
    elif how == "utf-16":
        line = line.decode("utf-8", "replace").encode(draw(st.sampled_from(["utf-16", "utf-32"])))
    elif how == "bom":
        line = b"\xef\xbb\xbf" + line
    return line


PLAIN_LINES = damaged(
    st.one_of(
        messages().map(lambda m: json.dumps(m).encode()),
        st.binary(max_size=200),
        st.text(max_size=60).map(str.encode),
    )
)
# Nested ids: readable, or refused as too deep. Between the two the outcome depends on how
# deep the stack already is (and on the thread's recursion limit, which hypothesis raises
# while it runs a test): such lines go to parse_line only.
NESTED = (st.integers(1, 300) | st.integers(1300, 2030)).map(
    lambda depth: b'{"request": "status", "id": ' + b"[" * depth + b"]" * depth + b"}"
)
LINES = PLAIN_LINES | NESTED


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@QUICK
@given(LINES)
@example('{"request": "status"}'.encode("utf-16"))  # was taken: json.loads reads UTF-16 too
@example(b'{"request": "status", "id": "\\ud800"}')  # was taken: an id no reply can carry
def test_a_request_line_is_a_checked_request_or_a_refusal_that_says_why(line: bytes) -> None:
    try:
        request, request_id = requests.parse_line(line)
    except Refused as err:
        assert str(err).strip()
        return
    # What gets through is well formed, UTF-8 JSON of a size the socket reads, and checked.
    assert len(line) <= requests.MAX_REQUEST_BYTES
    assert is_utf8(line) and b"\0" not in line
    assert requests.check(request.name, dict(request.args)) == request
    json.dumps(request_id, ensure_ascii=False).encode()  # the reply can carry the id back
    spec = requests.COMMANDS[request.name]
    assert set(request.args) == set(spec)
    assert all(request.args[a] is not None for a, (_, required) in spec.items() if required)


def dump(db: Any, leave_out: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """Every row of every table of a ledger, but those of `leave_out`."""
    tables = [
        name
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if name not in leave_out
    ]
    return {
        name: db.execute(f"SELECT * FROM [{name}] ORDER BY rowid").fetchall() for name in tables
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKiosk]:
    """One simulated kiosk serving its control socket for all the examples of a test."""
    config = config_mod.load(config_mod.PULSE_PROFILE, env={})
    with LiveKiosk(config, tmp_path_factory.mktemp("live") / "kiosk.db") as kiosk:
        yield kiosk


def ask_socket(path: str, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30.0)
        sock.connect(path)
        sock.sendall(line + b"\n")
        with sock.makefile("rb") as replies:
            return replies.readline()


@settings(max_examples=40, deadline=None)
@given(PLAIN_LINES.map(lambda line: line.replace(b"\n", b" ")))
@example(b'{"request": "status", "id": "\\ud800"}')  # the client got no reply at all
@example(b'{"request": "refill", "args": {"slot": 1, "\\udfff": 2}}')
@example(b'{"request": "refill", "args": {"slot": 1, "quantity": 3}}')  # not in service
def test_the_socket_answers_any_bad_line_with_a_reason_and_changes_nothing(
    live: LiveKiosk, line: bytes
) -> None:
    try:
        request, _ = requests.parse_line(line.strip())
    except Refused:
        request = None
    # Lines that pass the checks are sent only when they change nothing: reads, and the
    # technician's hands-on requests, which an idle kiosk (not in service) refuses.
    assume(request is None or request.name in requests.READS | service.HANDS_ON)
    before = live.do(lambda rig: dump(rig.ledger.db))
    raw = ask_socket(live.server.path, line)
    reply = json.loads(raw)
    assert raw.endswith(b"\n")
    assert reply["ok"] is (request is not None and request.name in requests.READS)
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and reply["error"].strip()
    assert live.do(lambda rig: dump(rig.ledger.db)) == before
    assert json.loads(ask_socket(live.server.path, b'{"request": "status"}'))["ok"]


# --- MQTT command payloads ----------------------------------------------------------------------

COMMAND_NAMES = st.one_of(
    st.sampled_from([*snapshots.REMOTE, "launch", "set_price/x", "", "status"]),
    st.text(max_size=12),
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    message = draw(messages())
    for key in ("request", "args"):
        message.pop(key, None)
    if draw(st.booleans()):
        message["cmd_id"] = draw(st.one_of(st.text(max_size=70), JSON_VALUES))
    for arg in draw(
        st.lists(st.sampled_from(["slot", "price_cents", "on", "enabled"]), max_size=3)
    ):
        message[arg] = draw(JSON_VALUES)
    return json.dumps(message).encode()


PAYLOADS = damaged(st.one_of(payloads(), st.binary(max_size=100), st.just(b"")))


def check_read(name: str, payload: bytes) -> snapshots.RemoteCommand:
    read = snapshots.read_command(name, payload)
    assert (read.request is None) != (read.refusal is None)
    assert read.name == name if snapshots.COMMAND_NAME.fullmatch(name) else read.name == "unknown"
    if read.refusal is not None:
        assert read.refusal.strip()
        return read
    assert len(payload) <= requests.MAX_REQUEST_BYTES and is_utf8(payload)
    assert b"\0" not in payload
    request_name, takes, sets = snapshots.REMOTE[name]
    assert read.request is not None and read.request.name == request_name
    given_args = json.loads(payload)
    assert all(read.request.args[k] == given_args[k] for k in takes)
    assert requests.check(request_name, dict(read.request.args)) == read.request
    assert all(read.request.args[k] == v for k, v in sets.items())
    assert read.cmd_id is not None and 1 <= len(read.cmd_id) <= snapshots.MAX_CMD_ID
    read.cmd_id.encode()  # the ledger keeps it: UTF-8 text
    return read


@QUICK
@given(COMMAND_NAMES, PAYLOADS)
@example("refresh", '{"cmd_id": "a"}'.encode("utf-16"))  # was taken: json.loads reads UTF-16
@example("refresh", b'{"cmd_id": "\\ud800"}')  # took the kiosk out of service
def test_a_command_payload_is_a_checked_request_or_a_refusal_that_says_why(
    name: str, payload: bytes
) -> None:
    check_read(name, payload)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimKiosk]:
    kiosk = SimKiosk(
        config_mod.load(config_mod.PULSE_PROFILE, env={}),
        tmp_path_factory.mktemp("mqtt") / "kiosk.db",
    )
    kiosk.run_for(1.0)
    yield kiosk
    kiosk.shutdown()


# Where a refused command is recorded (its event, its message, its cmd_id), and only there.
AUDIT = ("events", "outbox", "sqlite_sequence", "commands")


@SLOW
@given(COMMAND_NAMES, PAYLOADS)
@example("refresh", b'{"cmd_id": "\\ud800"}')
@example("slot_enable", b'{"cmd_id": "a", "slot": 1, "\\udfff": 1}')
def test_a_refused_command_is_answered_and_changes_nothing_but_the_audit(
    rig: SimKiosk, name: str, payload: bytes
) -> None:
    read = check_read(name, payload)
    assume(read.refusal is not None)
    before = dump(rig.ledger.db, AUDIT)
    audited = rig.ledger.db.execute("SELECT count(*) FROM events").fetchone()[0]
    fresh = read.cmd_id is None or rig.ledger.command_done(read.cmd_id) is None
    replies: list[dict[str, Any]] = []
    request = read.request or requests.Request(read.name)
    rig.events.put(
        KioskCommand(request, Actor("city", "mqtt"), replies.append, read.cmd_id, read.refusal)
    )
    rig.run_for(0.2)
    [reply] = replies
    assert reply["ok"] is False and reply["error"].strip()
    assert reply["error"] == read.refusal or not fresh  # a cmd_id used before: answered so
    assert dump(rig.ledger.db, AUDIT) == before
    kinds = rig.ledger.db.execute("SELECT kind FROM events WHERE rowid > ?", [audited]).fetchall()
    assert kinds == ([("command",)] if fresh else [])
    assert rig.controller.state is not State.OUT_OF_SERVICE


def test_a_cmd_id_that_is_no_text_is_refused_and_the_kiosk_sells_on(rig: SimKiosk) -> None:
    # The escape passed the checks; looking the cmd_id up in SQLite then raised in the core,
    # which went out of service without answering.
    read = snapshots.read_command("service_on", b'{"cmd_id": "\\ud800"}')
    assert read.request is None and read.refusal is not None and "surrogate" in read.refusal
    replies: list[dict[str, Any]] = []
    by = Actor("city", "mqtt")
    rig.events.put(
        KioskCommand(requests.Request(read.name), by, replies.append, None, read.refusal)
    )
    rig.run_for(0.2)
    assert replies == [{"ok": False, "error": read.refusal}]
    assert rig.controller.state is State.IDLE


# --- TOML profiles ------------------------------------------------------------------------------

PROFILES = {
    path.name: tomllib.loads(path.read_text()) for path in config_mod.CONFIG_DIR.glob("*.toml")
}


def toml_value(value: Any) -> str:
    """A value as TOML writes it inline (tables as inline tables, so any nesting goes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # nan, inf and -inf are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in data.items())


def keys_of(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a document: ("kiosk", "id"), ("slots", 1, "price_cents"), ..."""
    if isinstance(data, dict):
        items: Iterator[tuple[Any, Any]] = iter(data.items())
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return []
    paths = []
    for key, value in items:
        paths += [(*prefix, key), *keys_of(value, (*prefix, key))]
    return paths


TOML_VALUES = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(st.characters(codec="utf-8", exclude_characters="\x7f"), max_size=8)
    | st.datetimes()
    | st.dates()
    | st.times()
    | st.sampled_from(
        [0, 1, 2, 5, 27, 28, 99, 100, 200, 201, 65535, 65536, -1, 0.5, "", " ", "pulse"]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
DELETE = object()


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped profile with a few keys changed, added or taken out."""
    data = copy.deepcopy(PROFILES[draw(st.sampled_from(sorted(PROFILES)))])
    for _ in range(draw(st.integers(1, 4))):
        paths = keys_of(data)
        path = draw(st.sampled_from(paths)) if paths else ("kiosk",)
        if draw(st.integers(0, 4)) == 0:  # a new key beside it
            path = (*path[:-1], draw(st.sampled_from(["extra", "Port", "slots", "kiosk", ""])))
        value = draw(st.one_of(st.just(DELETE), TOML_VALUES))
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            if isinstance(node, dict):
                node.pop(path[-1], None)
            elif isinstance(node, list) and isinstance(path[-1], int):
                del node[path[-1]]
        elif isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int)):
            node[path[-1]] = value
    return data


KNOWN = {*config_mod.SECTIONS, "slots", "coin_acceptor"}


def check_loaded(path: Path, sections: Iterable[str] = ()) -> None:
    """A profile loads into a config in range, or fails with a ConfigError that says the file,
    then the key (a section of the document's, or one the profile needs) or that it is not
    TOML, then why."""
    try:
        config = config_mod.load(path, env={})
    except ConfigError as err:
        message = str(err)
        assert message.startswith(f"{path}: "), message
        key, _, reason = message.removeprefix(f"{path}: ").partition(": ")
        assert reason.strip(), message
        top = re.split(r"[.\[]", key)[0]
        assert key == "not valid TOML" or top in {*KNOWN, *sections}, message
    else:
        assert isinstance(config, Config) and config.slots
        parts: list[Any] = [config.kiosk, config.dispenser, config.display, *config.slots]
        for part in parts:
            for f in dataclasses.fields(part):
                value = getattr(part, f.name)
                if isinstance(value, int | float) and "min" in f.metadata:
                    assert f.metadata["min"] <= value <= f.metadata.get("max", math.inf)


@settings(max_examples=200, deadline=None)
@given(documents())
def test_a_profile_with_keys_changed_loads_or_names_the_key_and_why(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]
) -> None:
    path = tmp_path_factory.mktemp("profile") / "kiosk.toml"
    path.write_text(toml_document(data))
    check_loaded(path, data)


@st.composite
def garbled(draw: st.DrawFn) -> bytes:
    """Text that may or may not be TOML: a shipped profile with bytes changed, cut or moved,
    random text and bytes, nesting deeper than any parser likes."""
    profile = (config_mod.CONFIG_DIR / draw(st.sampled_from(sorted(PROFILES)))).read_bytes()
    kind = draw(st.sampled_from(["edit", "edit", "cut", "text", "bytes", "deep"]))
    if kind == "edit":
        raw = bytearray(profile)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i : i + draw(st.integers(0, 3))] = draw(st.binary(max_size=3))
        return bytes(raw)
    if kind == "cut":
        return profile[: draw(st.integers(0, len(profile)))]
    if kind == "text":
        return draw(st.text(max_size=200)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    opening, closing = draw(st.sampled_from([("[", "]"), ("{a = ", "}")]))
    depth = draw(st.integers(1, 3000))
    return b"[kiosk]\nid = " + (opening * depth + closing * depth).encode() + b"\n"


@settings(max_examples=200, deadline=None)
@given(garbled())
@example(b"a = " + b"[" * 3000 + b"]" * 3000)  # tomllib recursed until RecursionError
def test_any_text_in_a_profile_loads_or_is_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("profile") / "kiosk.toml"
    path.write_bytes(raw)
    try:
        sections = set(tomllib.loads(raw.decode()))
    except (ValueError, RecursionError):
        sections = set()  # then the error can only say that it is not TOML
    check_loaded(path, sections)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["KIOSK_KIOSK_NAME", "KIOSK_DISPLAY_COLUMNS", "KIOSK_SLOTS_X", "KIOSK_KIOSK_"]),
    st.one_of(
        st.text(max_size=30),
        TOML_VALUES.map(toml_value),
        st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
    ),
)
@example("KIOSK_DISPLAY_COLUMNS", "[" * 3000 + "]" * 3000)  # as in a file: RecursionError
def test_any_environment_value_loads_or_is_a_config_error_naming_the_variable(
    name: str, raw: str
) -> None:
    try:
        config_mod.load(config_mod.PULSE_PROFILE, env={name: raw})
    except ConfigError as err:
        assert str(err).startswith(f"{name}: "), str(err)
