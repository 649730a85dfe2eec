"""The ccTalk codec against every verified vector of the reference (8-bit and CRC-16 frames, raw
CRC strings), and the parser's resynchronisation, fuzzed with hypothesis."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.cctalk_codec import Checksum, Frame, FrameParser, checksum8, decode, encode

S, C = Checksum.SIMPLE, Checksum.CRC16

# (tx, rx) pairs of reference section 13.1 (coin acceptor at address 2) and 13.2 (hopper at 3).
EXCHANGES = [
    ("02 00 01 FE FF", "01 00 02 00 FD"),
    ("02 00 01 F5 08", "01 0D 02 00 43 6F 69 6E 20 41 63 63 65 70 74 6F 72 16"),
    ("02 00 01 F4 09", "01 04 02 00 53 52 35 69 B6"),
    ("02 00 01 C0 3D", "01 08 02 00 53 54 44 30 31 20 20 20 49"),
    ("02 00 01 F6 07", "01 0E 02 00 4D 6F 6E 65 79 20 43 6F 6E 74 72 6F 6C 73 73"),
    ("02 00 01 F2 0B", "01 03 02 00 4E 61 BC 8F"),
    ("02 00 01 F1 0C", "01 0C 02 00 43 52 53 2D 46 31 2D 56 31 2E 30 39 1A"),
    ("02 00 01 04 F9", "01 03 02 00 01 04 02 F3"),
    ("02 01 01 B8 01 43", "01 06 02 00 47 42 32 30 30 41 9B"),
    ("02 01 01 B8 07 3D", "01 06 02 00 2E 2E 2E 2E 2E 2E E3"),
    ("02 02 01 E7 FF FF 16", "01 00 02 00 FD"),
    ("02 00 01 E5 18", "01 0B 02 00 00 00 00 00 00 00 00 00 00 00 00 F2"),
    ("02 00 01 E5 18", "01 0B 02 00 01 01 05 00 00 00 00 00 00 00 00 EB"),
    ("02 00 01 E5 18", "01 0B 02 00 02 01 05 01 05 00 00 00 00 00 00 E4"),
    ("02 00 01 E5 18", "01 0B 02 00 03 05 05 01 05 01 05 00 00 00 00 D9"),
    ("02 00 01 E5 18", "01 0B 02 00 04 00 01 05 05 01 05 01 05 00 00 D7"),
    ("02 00 01 E5 18", "01 0B 02 00 06 06 04 00 14 00 17 06 04 0D 02 9E"),
    ("02 01 01 FB 03 FE", "01 00 02 00 FD"),
    ("02 01 01 64 FF 99", "01 08 02 00 31 32 33 34 35 36 37 38 51"),
    ("02 02 01 B1 01 01 48", None),
    ("02 02 01 B1 01 05 44", None),
    ("03 00 01 04 F8", "01 06 03 00 31 33 32 2D 49 54 96"),
    ("03 00 01 01 FB", "01 00 03 00 FC"),
    ("03 00 01 F6 06", "01 09 03 00 53 75 7A 6F 2D 48 61 70 70 8C"),
    ("03 00 01 F2 0A", "01 03 03 00 4E 46 05 60"),
    ("03 01 01 A4 A5 B2", "01 00 03 00 FC"),
    ("03 00 01 A3 59", "01 02 03 00 80 80 FA"),
    ("03 08 01 A1 5B DA AA 6F 9A 5D C5 06 43", None),
    ("03 00 01 A0 5C", "01 08 03 00 B9 FE 5F AC 75 0A 7B 98 A0"),
    ("03 09 01 A7 63 D9 2A 95 BA D4 35 82 03 09", "01 01 03 00 01 FA"),
    ("03 04 01 A7 DF D7 0A 01 90", None),
    ("03 00 01 EC 10", "01 01 03 00 03 F8"),
    ("03 00 01 A0 5C", "01 08 03 00 61 A2 39 42 70 E6 4C 0B C9"),
    ("03 09 01 A7 00 00 00 00 00 00 00 00 05 47", "01 01 03 00 08 F3"),
]

# Reference section 13.4: (header, data, 8-bit frame, CRC-16 frame) for address 2.
COMPUTED = [
    (254, "", "02 00 01 FE FF", "02 00 B1 FE 60"),
    (249, "", "02 00 01 F9 04", "02 00 56 F9 10"),
    (248, "", "02 00 01 F8 05", "02 00 77 F8 00"),
    (246, "", "02 00 01 F6 07", "02 00 B9 F6 E1"),
    (245, "", "02 00 01 F5 08", "02 00 DA F5 D1"),
    (244, "", "02 00 01 F4 09", "02 00 FB F4 C1"),
    (242, "", "02 00 01 F2 0B", "02 00 3D F2 A1"),
    (241, "", "02 00 01 F1 0C", "02 00 5E F1 91"),
    (236, "", "02 00 01 EC 11", "02 00 C2 EC 52"),
    (232, "", "02 00 01 E8 15", "02 00 46 E8 12"),
    (231, "07 00", "02 02 01 E7 07 00 0D", "02 02 DD E7 07 00 15"),
    (231, "FF FF", "02 02 01 E7 FF FF 16", "02 02 45 E7 FF FF 91"),
    (230, "", "02 00 01 E6 17", "02 00 88 E6 F3"),
    (229, "", "02 00 01 E5 18", "02 00 EB E5 C3"),
    (228, "01", "02 01 01 E4 01 17", "02 01 0F E4 01 16"),
    (228, "00", "02 01 01 E4 00 18", "02 01 2E E4 00 06"),
    (227, "", "02 00 01 E3 1A", "02 00 2D E3 A3"),
    (213, "", "02 00 01 D5 28", "02 00 B8 D5 F5"),
    (209, "01", "02 01 01 D1 01 2A", "02 01 6F D1 01 EC"),
    (192, "", "02 00 01 C0 3D", "02 00 2C C0 B7"),
    (184, "01", "02 01 01 B8 01 43", "02 01 DD B8 01 5D"),
    (170, "", "02 00 01 AA 53", "02 00 C0 AA 7A"),
    (4, "", "02 00 01 04 F9", "02 00 E4 04 2E"),
    (1, "", "02 00 01 01 FC", "02 00 41 01 7E"),
]

CRC_STRINGS = [
    ("49 D5 F2", 0xA6B3),
    ("2F BD 9D", 0x90B2),
    ("D9 53 D1", 0x7BB5),
    ("70 B8 D9 64 04 15", 0xFB00),
    ("72 61 B9 4E D0 78", 0x93E3),
    ("63 FA D1 9F E6 19", 0x5BB3),
]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.mark.parametrize(("tx", "rx"), EXCHANGES)
def test_published_frames_decode_and_encode_back(tx: str, rx: str | None) -> None:
    for raw in [h(tx)] + ([h(rx)] if rx else []):
        frame = decode(raw, S)
        assert frame is not None
        assert encode(frame, S) == raw


@pytest.mark.parametrize(("header", "data", "simple", "crc"), COMPUTED)
def test_computed_frames_in_both_forms(header: int, data: str, simple: str, crc: str) -> None:
    frame = Frame(2, header, h(data))
    assert encode(frame, S) == h(simple)
    assert encode(frame, C) == h(crc)
    assert decode(h(crc), C) == frame


def test_crc16_frames_of_the_specification() -> None:
    assert encode(Frame(40, 1), C) == bytes([40, 0, 70, 1, 63])
    assert encode(Frame(1, 0, source=40), C) == bytes([1, 0, 48, 0, 55])
    assert encode(Frame(40, 254), C) == bytes([40, 0, 182, 254, 33])
    assert decode(bytes([1, 0, 48, 0, 55]), C, source=40) == Frame(1, 0, b"", 40)


@pytest.mark.parametrize(("data", "crc"), CRC_STRINGS)
def test_crc_verification_strings(data: str, crc: int) -> None:
    assert binascii.crc_hqx(h(data), 0) == crc
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3


def test_the_checksum_wraps_to_zero_not_256() -> None:
    assert checksum8(bytes([0x80, 0x80])) == 0
    assert encode(Frame(0x80, 0x7F, source=0x01)).endswith(b"\x00")


@pytest.mark.parametrize(
    "wrong", ["02 00 01 E5 12", "01 0B 02 00 00", "01 03 02 00 4E 61 BC 8E", "01 00 02 00"]
)
def test_bad_frames_are_refused(wrong: str) -> None:
    assert decode(h(wrong), S) is None


def test_the_parser_finds_frames_split_across_reads() -> None:
    parser = FrameParser()
    raw = h("01 0B 02 00 01 01 05 00 00 00 00 00 00 00 00 EB")
    assert parser.feed(raw[:3], 0.0) == []
    assert parser.feed(raw[3:9], 0.01) == []
    [frame] = parser.feed(raw[9:] + h("01 00 02 00 FD"), 0.02)[:1]
    assert frame.data[:3] == bytes([1, 1, 5])


def test_the_parser_skips_garbage_and_corrupted_frames() -> None:
    parser = FrameParser(destination=1)
    garbage = h("FF 00 13 37")
    corrupted = h("01 00 02 00 FE")
    frames = parser.feed(garbage + corrupted + h("01 00 02 00 FD"), 0.0)
    assert frames == [Frame(1, 0, b"", 2)]
    assert parser.discarded == len(garbage) + len(corrupted)


def test_a_reply_arriving_byte_by_byte_is_not_cut_by_its_own_zeros() -> None:
    # Empty event pairs hold "00 00 00 00 00", itself a valid frame in both forms.
    for mode, raw in [
        (S, h("01 0B 02 00 01 01 05 00 00 00 00 00 00 00 00 EB")),
        (C, encode(Frame(1, 0, bytes(11), 2), C)),
    ]:
        parser, found = FrameParser(mode, source=2, destination=1), []
        for i, byte in enumerate(raw):
            found += parser.feed(bytes([byte]), i * 0.00104)
        assert found == [decode(raw, mode, source=2)]
        assert parser.discarded == 0


def test_a_gap_longer_than_50_ms_drops_a_truncated_frame() -> None:
    parser = FrameParser()
    assert parser.feed(h("01 0B 02 00 01 01"), 0.0) == []
    assert parser.feed(h("01 00 02 00 FD"), 0.051) == [Frame(1, 0, b"", 2)]
    assert parser.discarded == 6


def test_a_gap_of_50_ms_is_allowed() -> None:
    parser = FrameParser()
    assert parser.feed(h("01 00 02"), 0.0) == []
    assert parser.feed(h("00 FD"), 0.05) == [Frame(1, 0, b"", 2)]


def test_frames_too_long_are_refused() -> None:
    with pytest.raises(ValueError, match="256 data bytes"):
        encode(Frame(2, 1, bytes(256)))


@given(
    st.lists(st.tuples(st.binary(max_size=40), st.floats(0, 0.2)), max_size=30),
    st.sampled_from(list(Checksum)),
)
def test_random_bytes_never_raise(chunks: list[tuple[bytes, float]], mode: Checksum) -> None:
    parser, at = FrameParser(mode), 0.0
    for chunk, delay in chunks:
        at += delay
        for frame in parser.feed(chunk, at):
            assert decode(encode(frame, mode), mode) == frame


valid_frames = st.builds(
    Frame,
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=20),
    st.integers(0, 255),
)


@given(st.lists(valid_frames, min_size=1, max_size=8), st.data())
def test_damaged_streams_yield_only_frames_that_were_sent(
    frames: list[Frame], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(encode(f) for f in frames))
    for _ in range(data.draw(st.integers(0, 3))):
        if stream:
            i = data.draw(st.integers(0, len(stream) - 1))
            stream[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(stream)))
    parser = FrameParser()
    found = parser.feed(bytes(stream[:cut]), 0.0)
    for frame in found:
        assert encode(frame) in bytes(stream)


@given(st.lists(valid_frames, min_size=1, max_size=8), st.binary(max_size=10))
def test_clean_frames_after_garbage_and_a_pause_are_all_found(
    frames: list[Frame], junk: bytes
) -> None:
    parser = FrameParser()
    parser.feed(junk, 0.0)
    found = parser.feed(b"".join(encode(f) for f in frames), 1.0)
    assert found == frames
