"""The EVA-DTS (DEX/UCS) audit report: the ledger's counters as the text file a route auditor's
handheld or back office reads, byte for byte (shared/reference/eva-dts.md, section 6).

This module owns the report's content and syntax: which segments, in which order, with which
counters; the text of every field (ASCII only, no '*', no line breaks); the envelope (DXS, ST,
G85, SE, DXE) and its CRC-16/ARC. It only reads: `Upkeep.read_audit` records the read and calls
`render` inside that write transaction, so the read being rendered is already in `audit_reads`.

Periods. "Since initialisation" counts every row up to this read's marks (inside the read's
transaction, that is every row). "Since reset" counts the rows after the marks of the latest
earlier read with reset; a read with reset reports the period it closes. A sale falls in the
period its sale row was committed in (`audit_reads` marks sale ids), whenever its vend began.

Choices where the reference is silent or marks a field unconfirmed:
- DXS01 "CTM" + 7 digits: the kiosk id's ASCII digits, zero-filled, or if it has none a CRC-32 of
  it modulo 10**7. ID103 (build standard) "1": one hardware build so far. ID105, ID106 empty.
- ID402 "1978" as in every sample with EUR (prefix rule unconfirmed). ID5, EA1, EA3 and PA5 dates
  YYYYMMDD and times HHMMSS, in UTC; ID503/ID504 (daylight saving, zone codes) left out.
- VA2 and PA3 count delivered test vends with value 0: no money changes hands and the ledger keeps
  no price for them. VA3, PA4, CA4, CA10: zeros (no free vends, no change, no tubes).
- CA102 (model) is the acceptor's "product"; CA101 "serial", CA103 "software", from the meta key
  `identity:coin_acceptor` (a JSON object); empty when absent or unreadable.
- A PA group for every slot the ledger holds, in slot order, taken off or not (its history stays);
  PA1 with the live price and product only (the configuration fields' positions are unconfirmed).
- PA5 order taken as date, time, sold-out selections; the last is 0, the ledger records none.
- Event ids, from the reference's "Event id families" line (section 5.5): EGS door open, ELA failed
  vend and EJL failed drop (named on that line); EAR for coin mechanism faults, a letter of the
  "EA... coin mechanism" family that the reference does not name (unconfirmed). EJL counts the
  vends (shoppers' and test vends) that ended `no_drop`; ELA the others that failed (`jammed`,
  `blocked`) or were interrupted. EA1 is the latest occurrence (EA106: its ledger code), EA2 the
  counts and EA205 whether it lasts now (the door open; an acceptor fault; a slot's `jammed` or
  `no_drop` fault). Other faults (drop sensor, storage) have no EVA-DTS id here.
- EA3: EA301 = EA310 (a reset only happens with a read); EA304/EA307 the reading user. EA7
  (power outages) is left out: the ledger counts boots but not clean stops.
- MA5 lines: FIRMWARE, SCHEMA (ledger schema version), DONATIONS (value and number, since init
  then since reset, as VA1) and CREDIT (credit held for shoppers), so that CA305 = CA201 +
  donations + credit can be checked on the report alone.
- Field lengths are not capped: the maxima are unconfirmed.
"""

from __future__ import annotations

import json
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database

CRLF = "\r\n"
MANUFACTURER_CODE = "CTM"
MODEL = "CENTIMEO"
BUILD_STANDARD = "1"
SET_CONTROL = "0001"
EURO = ("2", "1978", "EUR")  # ID401 decimal places (money in cents), ID402, ID403
ACCEPTOR_IDENTITY_KEY = "identity:coin_acceptor"

Field = str | int | None

# Letters NFKD does not decompose into ASCII, and punctuation worth keeping readable.
_SPELLED = str.maketrans(
    {
        "œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss", "ø": "o", "Ø": "O", "ł": "l",
        "Ł": "L", "đ": "d", "Đ": "D", "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D", "€": "EUR",
        "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201c": '"', "\u201d": '"',
        "\u201e": '"', "«": '"', "»": '"', "\u2013": "-", "\u2014": "-", "\u2212": "-",
        "…": "...", "\u2044": "/", "\u00d7": "x", "°": "o",
        "*": "-",  # the field separator
    }
)  # fmt: skip


@dataclass(frozen=True)
class AuditInfo:
    """What the report says that the ledger does not hold."""

    kiosk_id: str
    kiosk_name: str
    firmware: str  # kiosk.__version__
    coins_cents: tuple[int, ...] = (1, 2, 5)  # the coins the kiosk takes: a CA11 line each


# --- syntax --------------------------------------------------------------------------------------


def ascii_field(text: str) -> str:
    """`text` as a field: accents dropped, other letters spelt in ASCII, '*' as '-', any run of
    white space or control characters as one space, anything else as '?'."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPELLED)).translate(_SPELLED)
    kept = []
    for char in decomposed:
        if unicodedata.combining(char):
            continue
        if char.isspace() or unicodedata.category(char) == "Cc":
            kept.append(" ")
        else:
            kept.append(char if " " < char <= "~" else "?")
    return " ".join("".join(kept).split())


def segment(tag: str, *fields: Field) -> str:
    """One segment without its CR LF; numbers as integers, None as an empty field, trailing
    empty fields left out."""
    texts = ["" if f is None else str(f) if isinstance(f, int) else ascii_field(f) for f in fields]
    while texts and not texts[-1]:
        texts.pop()
    return "*".join([tag, *texts])


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC: reflected polynomial 0xA001, initial value 0, no final XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def communication_id(kiosk_id: str) -> str:
    """DXS01: the manufacturer code and 7 digits that stay the same for a kiosk."""
    digits = "".join(c for c in kiosk_id if c in "0123456789")
    if not digits:
        digits = str(zlib.crc32(kiosk_id.encode("utf-8")) % 10**7)
    return MANUFACTURER_CODE + digits[-7:].zfill(7)


def envelope(sender_id: str, body: Sequence[str]) -> str:
    """The whole file around the data segments `body`: DXS, ST, body, G85 (over ST through the
    last body segment, CR LF included), SE (ST to SE counted) and DXE."""
    for line in body:
        if "\r" in line or "\n" in line or not line.isascii():
            raise ValueError(f"not a segment: {line!r}")
    checked = [segment("ST", "001", SET_CONTROL), *body]
    crc = crc16_arc("".join(line + CRLF for line in checked).encode("ascii"))
    closed = [*checked, segment("G85", f"{crc:04X}")]
    closed.append(segment("SE", len(closed) + 1, SET_CONTROL))
    lines = [segment("DXS", sender_id, "VA", "V0/6", 1), *closed, segment("DXE", 1, 1)]
    return "".join(line + CRLF for line in lines)


def _stamp(at: str | None) -> tuple[str, str]:
    """A ledger time as (YYYYMMDD, HHMMSS) in UTC; empty fields for none."""
    if not at:
        return "", ""
    moment = datetime.fromisoformat(at)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


# --- the ledger's counters -----------------------------------------------------------------------

_MARKS = "last_coin_id, last_sale_id, last_test_vend_id, last_event_id, last_donation_id"


@dataclass(frozen=True)
class _Marks:
    coin: int = 0
    sale: int = 0
    test_vend: int = 0
    event: int = 0
    donation: int = 0


class _Books:
    """The counters of one read: each query runs for (since init, since reset)."""

    def __init__(self, db: Database, read_id: int) -> None:
        self.db = db
        row = db.execute(
            f"SELECT at, actor, {_MARKS} FROM audit_reads WHERE id = ?", [read_id]
        ).fetchone()
        if row is None:
            raise ValueError(f"no audit read {read_id}")
        self.read_id = read_id
        self.at, self.actor = row[0], row[1]
        self.upto = _Marks(*row[2:])
        reset = db.execute(
            f"SELECT {_MARKS} FROM audit_reads WHERE reset = 1 AND id < ? ORDER BY id DESC LIMIT 1",
            [read_id],
        ).fetchone()
        self.reset = _Marks(*reset) if reset else _Marks()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        return list(self.db.execute(sql, params).fetchall())

    def one(self, sql: str, **params: Any) -> tuple[int, ...]:
        return tuple(int(v or 0) for v in self.db.execute(sql, params).fetchone())

    def both(self, sql: str, mark: str, **params: Any) -> tuple[tuple[int, ...], ...]:
        """`sql` over rows with id in (:low, :high], the marks named `mark`: since init, then
        since the last reset."""
        high = getattr(self.upto, mark)
        return tuple(
            self.one(sql, low=low, high=high, **params) for low in (0, getattr(self.reset, mark))
        )


_SALES = (
    "SELECT sum(price_cents), count(*) FROM sales "
    "WHERE id > :low AND id <= :high AND slot = coalesce(:slot, slot)"
)
_TEST_VENDS = (
    "SELECT count(*) FROM test_vends WHERE id > :low AND id <= :high "
    "AND outcome = 'delivered' AND slot = coalesce(:slot, slot)"
)
_COINS = (
    "SELECT sum(value_cents), count(*) FROM coins "
    "WHERE id > :low AND id <= :high AND value_cents = coalesce(:value, value_cents)"
)


def _identification(books: _Books, info: AuditInfo) -> Iterator[str]:
    yield segment("ID1", info.kiosk_id, MODEL, BUILD_STANDARD, info.kiosk_name)
    yield segment("ID4", *EURO)
    yield segment("ID5", *_stamp(books.at))
    yield segment("CB1", info.kiosk_id, MODEL, info.firmware)


def _vends(books: _Books) -> Iterator[str]:
    (sold, count), (sold_r, count_r) = books.both(_SALES, "sale", slot=None)
    yield segment("VA1", sold, count, sold_r, count_r)
    (tests,), (tests_r,) = books.both(_TEST_VENDS, "test_vend", slot=None)
    yield segment("VA2", 0, tests, 0, tests_r)
    yield segment("VA3", 0, 0, 0, 0)


def _acceptor_identity(books: _Books) -> dict[str, str]:
    found = books.rows("SELECT value FROM meta WHERE key = :key", key=ACCEPTOR_IDENTITY_KEY)
    try:
        identity = json.loads(found[0][0]) if found else {}
    except ValueError:
        identity = {}  # a damaged record must not stop the audit: the fields stay empty
    return {str(k): str(v) for k, v in identity.items()} if isinstance(identity, dict) else {}


def _cash(books: _Books, info: AuditInfo) -> Iterator[str]:
    identity = _acceptor_identity(books)
    yield segment("CA1", identity.get("serial"), identity.get("product"), identity.get("software"))
    (sold, count), (sold_r, count_r) = books.both(_SALES, "sale", slot=None)
    yield segment("CA2", sold, count, sold_r, count_r)
    # Every coin drops into the cash box: no tubes, no bills.
    (cash, _), (cash_r, _) = books.both(_COINS, "coin", value=None)
    yield segment("CA3", cash_r, cash_r, 0, 0, cash, cash, 0, 0)
    yield segment("CA4", 0, 0, 0, 0)
    yield segment("CA10", 0, 0)
    seen = books.rows(
        "SELECT DISTINCT value_cents FROM coins WHERE id <= :high", high=books.upto.coin
    )
    for value in sorted(set(info.coins_cents) | {v for (v,) in seen}):
        (_, coins), (_, coins_r) = books.both(_COINS, "coin", value=value)
        yield segment("CA11", value, coins_r, coins_r, 0, coins, coins, 0)


def _products(books: _Books) -> Iterator[str]:
    for slot, product, price in books.rows(
        "SELECT slot, product, price_cents FROM stock ORDER BY slot"
    ):
        yield segment("PA1", slot, price, product)
        (sold, count), (sold_r, count_r) = books.both(_SALES, "sale", slot=slot)
        yield segment("PA2", count, sold, count_r, sold_r)
        (tests,), (tests_r,) = books.both(_TEST_VENDS, "test_vend", slot=slot)
        yield segment("PA3", tests, 0, tests_r, 0)
        yield segment("PA4", 0, 0, 0, 0)
        last = books.rows(
            "SELECT max(at) FROM sales WHERE slot = :slot AND id <= :high",
            slot=slot,
            high=books.upto.sale,
        )
        yield segment("PA5", *_stamp(last[0][0]), 0)


@dataclass(frozen=True)
class _EventType:
    id: str
    counted: str  # SQL condition on an events row
    active: str  # SQL giving 1 while the event's condition lasts


EVENT_TYPES = (
    _EventType(
        "EGS",
        "kind = 'door_opened'",
        "SELECT coalesce((SELECT kind = 'door_opened' FROM events WHERE id <= :high "
        "AND kind IN ('door_opened', 'door_closed') ORDER BY id DESC LIMIT 1), 0)",
    ),
    _EventType(
        "EAR",
        "kind = 'fault' AND device = 'coin_acceptor'",
        "SELECT count(*) > 0 FROM faults WHERE device = 'coin_acceptor'",
    ),
    _EventType(
        "ELA",
        "kind = 'vend_interrupted' "
        "OR (kind IN ('vend_failed', 'test_vend') AND code NOT IN ('delivered', 'no_drop'))",
        "SELECT count(*) > 0 FROM faults WHERE device LIKE 'slot%' AND code = 'jammed'",
    ),
    _EventType(
        "EJL",
        "kind IN ('vend_failed', 'test_vend') AND code = 'no_drop'",
        "SELECT count(*) > 0 FROM faults WHERE device LIKE 'slot%' AND code = 'no_drop'",
    ),
)


def _events(books: _Books) -> Iterator[str]:
    high = books.upto.event
    for event in EVENT_TYPES:
        last = books.rows(
            f"SELECT at, coalesce(code, '') FROM events WHERE id <= :high AND ({event.counted}) "
            "ORDER BY id DESC LIMIT 1",
            high=high,
        )
        if last:
            yield segment("EA1", event.id, *_stamp(last[0][0]), None, None, last[0][1])
        count_sql = (
            f"SELECT count(*) FROM events WHERE id > :low AND id <= :high AND ({event.counted})"
        )
        (count,), (count_r,) = books.both(count_sql, "event")
        (active,) = books.one(event.active, high=high)
        yield segment("EA2", event.id, count_r, count, None, active)
    reads, resets = books.one(
        "SELECT count(*), sum(reset) FROM audit_reads WHERE id <= :id", id=books.read_id
    )
    before = books.rows(
        "SELECT at, actor FROM audit_reads WHERE id < :id ORDER BY id DESC LIMIT 1",
        id=books.read_id,
    )
    previous_at, previous_by = before[0] if before else (None, None)
    yield segment(
        "EA3",
        resets,
        *_stamp(books.at),
        books.actor,
        *_stamp(previous_at),
        previous_by,
        None,
        reads,
        resets,
    )


def _extras(books: _Books, info: AuditInfo) -> Iterator[str]:
    yield segment("MA5", "FIRMWARE", info.firmware)
    (schema,) = books.one("SELECT max(version) FROM migrations")
    yield segment("MA5", "SCHEMA", schema)
    donations = "SELECT sum(amount_cents), count(*) FROM donations WHERE id > :low AND id <= :high"
    (given, count), (given_r, count_r) = books.both(donations, "donation")
    yield segment("MA5", "DONATIONS", given, count, given_r, count_r)
    (credit,) = books.one("SELECT sum(balance_cents) FROM credit_sessions WHERE closed_at IS NULL")
    yield segment("MA5", "CREDIT", credit)


def render(db: Database, read_id: int, info: AuditInfo) -> str:
    """The report of audit read `read_id` (already recorded), every line ended by CR LF. For
    `Upkeep.read_audit`: `functools.partial(render, info=info)`."""
    books = _Books(db, read_id)
    body = [
        *_identification(books, info),
        *_vends(books),
        *_cash(books, info),
        *_products(books),
        *_events(books),
        *_extras(books, info),
    ]
    return envelope(communication_id(info.kiosk_id), body)
