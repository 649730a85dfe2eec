"""A small, strict EVA-DTS (DEX/UCS) reader for the tests: splits a report into segments and checks
its envelope the way an auditor's software would, independently of kiosk.audit (its own
table-driven CRC-16/ARC).

Checked: ASCII only, every line ended by CR LF (no lone CR or LF anywhere), tags, the order
DXS, ST, ..., G85, SE, DXE with one of each, G85 recomputed over the bytes from the first
character of ST through the CR LF of the segment before G85, SE01 = segments from ST to SE
inclusive, SE02 = ST02, DXE01 = DXS04 and DXE02 = 1 transaction set. A real reader should
tolerate a wrong SE01 (some machines write one); this one is for our own generator, so it does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CRLF = "\r\n"
TAG = re.compile(r"[A-Z][A-Z0-9]{1,3}")
ENVELOPE = ("DXS", "ST", "G85", "SE", "DXE")


class DexError(ValueError):
    """The text is not a sound EVA-DTS report; the message says where."""


def _crc_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CRC_TABLE = _crc_table()


def crc16_arc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


@dataclass(frozen=True)
class Segment:
    tag: str
    fields: tuple[str, ...]

    def __getitem__(self, position: int) -> str:
        """Field `position`, counted from 1 as in VA101 = segment VA1's field 1; a trailing
        field left out reads as empty."""
        if position < 1:
            raise IndexError(position)
        return self.fields[position - 1] if position <= len(self.fields) else ""

    def number(self, position: int) -> int:
        text = self[position]
        if not text.isdigit():
            raise DexError(f"{self.tag}{position:02d} is not a number: {text!r}")
        return int(text)

    def numbers(self, *positions: int) -> tuple[int, ...]:
        return tuple(self.number(p) for p in positions)


@dataclass(frozen=True)
class Dex:
    segments: tuple[Segment, ...]

    def all(self, tag: str) -> list[Segment]:
        return [s for s in self.segments if s.tag == tag]

    def one(self, tag: str) -> Segment:
        found = self.all(tag)
        if len(found) != 1:
            raise DexError(f"{len(found)} {tag} segments, not one")
        return found[0]

    def __contains__(self, tag: object) -> bool:
        return any(s.tag == tag for s in self.segments)

    @property
    def tags(self) -> list[str]:
        return [s.tag for s in self.segments]

    def groups(self, family: str) -> dict[int, dict[str, Segment]]:
        """The repeated groups of a family ("PA": one per product), keyed by the number in the
        group's first segment (PA101), each segment by tag."""
        found: dict[int, dict[str, Segment]] = {}
        group: dict[str, Segment] | None = None
        for s in self.segments:
            if not s.tag.startswith(family):
                continue
            if s.tag == f"{family}1":
                if s.number(1) in found:
                    raise DexError(f"{family}1 {s[1]} twice")
                group = found[s.number(1)] = {}
            elif group is None or s.tag in group:
                raise DexError(f"{s.tag} outside a {family}1 group of its own")
            group[s.tag] = s
        return found

    def as_dict(self) -> dict[str, list[list[str]]]:
        """Tag -> the field lists of its segments, in order."""
        view: dict[str, list[list[str]]] = {}
        for s in self.segments:
            view.setdefault(s.tag, []).append(list(s.fields))
        return view


def _lines(text: str) -> list[str]:
    if not text.isascii():
        bad = next(i for i, c in enumerate(text) if not c.isascii())
        raise DexError(f"not ASCII at character {bad}: {text[bad]!r}")
    if not text.endswith(CRLF):
        raise DexError("the last line is not ended by CR LF")
    lines = text[: -len(CRLF)].split(CRLF)
    for number, line in enumerate(lines, 1):
        if "\r" in line or "\n" in line:
            raise DexError(f"line {number}: a line end that is not CR LF: {line!r}")
    return lines


def parse(text: str) -> Dex:
    lines = _lines(text)
    segments = []
    for number, line in enumerate(lines, 1):
        tag, *fields = line.split("*")
        if not TAG.fullmatch(tag):
            raise DexError(f"line {number}: no segment tag: {line!r}")
        segments.append(Segment(tag, tuple(fields)))
    tags = [s.tag for s in segments]
    if len(tags) < 5 or (tags[0], tags[1], *tags[-3:]) != ENVELOPE:
        raise DexError(f"not DXS, ST, ..., G85, SE, DXE: {tags[:2]} ... {tags[-3:]}")
    for tag in ENVELOPE:
        if tags.count(tag) != 1:
            raise DexError(f"{tags.count(tag)} {tag} segments")
    dex = Dex(tuple(segments))
    _check_crc(lines, dex.one("G85"))
    st, se, dxs, dxe = dex.one("ST"), dex.one("SE"), dex.one("DXS"), dex.one("DXE")
    if se.number(1) != len(lines) - 2:
        raise DexError(f"SE01 says {se[1]} segments from ST to SE; there are {len(lines) - 2}")
    if se[2] != st[2]:
        raise DexError(f"SE02 {se[2]!r} is not ST02 {st[2]!r}")
    if dxe[1] != dxs[4] or dxe[2] != "1":
        raise DexError(f"DXE {dxe.fields} does not close DXS {dxs.fields} (one set)")
    return dex


def _check_crc(lines: list[str], g85: Segment) -> None:
    # Lines 1 to the one before G85 (the third from the end): ST through the last data segment.
    checked = "".join(line + CRLF for line in lines[1:-3]).encode("ascii")
    expected = f"{crc16_arc(checked):04X}"
    if g85[1] != expected:
        raise DexError(
            f"G85 says {g85[1]!r}; the CRC of ST through the segment before is {expected}"
        )
