"""Text for the technician: plain-text tables, bars, money, CSV, and the figures of
kiosk/figures.py turned into the text `kiosk stock`, `cashbox`, `sales`, `impact`, `faults` and
`events` print, so the CLI only chooses between this text, JSON and CSV.

Widths are terminal columns, not characters or bytes: an accented letter takes one (precomposed
or not), an East Asian wide character two. Times are shown as the ledger holds them, in UTC, to
the second. Nothing here prints.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Sequence
from datetime import date
from typing import Any

from kiosk.figures import (
    Cashbox,
    EventRow,
    FaultsReport,
    Impact,
    LastCollection,
    SalesRow,
    StockRow,
    coins_mass_g,
)
from kiosk.ledger_base import slot_device

GAP = "  "  # between columns
FULL_BLOCK = "█"
PARTIAL_BLOCKS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")  # 0/8 .. 7/8 of a cell
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # not %a: no locale in a report


def text_width(text: str) -> int:
    """The columns `text` takes on a terminal."""
    return sum(_char_width(ch) for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0  # an accent written as a mark after its letter
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1  # wide, fullwidth


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _side(column: Sequence[object]) -> str:
    """Right for a column of numbers, empty cells aside; left for any other."""
    cells = [c for c in column if c not in (None, "")]
    return "r" if cells and all(_numeric(c) for c in cells) else "l"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """Columns under a header and a rule. `align` has one letter per column, `l` or `r`; without
    it a column of numbers (empty cells aside) is right-aligned and any other left-aligned."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"table: every row needs {len(headers)} cells")
    if align is None:
        align = "".join(_side([row[i] for row in rows]) for i in range(len(headers)))
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"table: align needs one of 'l' or 'r' per column, not {align!r}")
    text = [[str(h) for h in headers], *([_cell(c) for c in row] for row in rows)]
    widths = [max(text_width(line[i]) for line in text) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            " " * (w - text_width(c)) + c if side == "r" else c + " " * (w - text_width(c))
            for c, w, side in zip(cells, widths, align, strict=True)
        )
        return GAP.join(padded).rstrip()

    rule = GAP.join("-" * w for w in widths)
    return "\n".join([line(text[0]), rule, *(line(cells) for cells in text[1:])])


def bar(value: float, largest: float, width: int = 20) -> str:
    """`value` as a bar of `width` cells at most, `largest` filling them all, in eighths of a
    cell. Zero (or less) is no bar; any positive value shows at least an eighth, so a quiet day
    is told from a day without a sale."""
    if width <= 0 or not value > 0 or not largest > 0:  # `not >` also turns NaN away
        return ""
    ratio = 1.0 if value >= largest else value / largest
    eighths = max(1, round(ratio * width * 8))
    full, rest = divmod(eighths, 8)
    return FULL_BLOCK * full + PARTIAL_BLOCKS[rest]


def cents(value: int) -> str:
    """1234 -> "12.34 €"."""
    euros, rest = divmod(abs(value), 100)
    return f"{'-' if value < 0 else ''}{euros}.{rest:02d} €"


def signed_cents(value: int) -> str:
    """A difference: -5 -> "-0.05 €", 5 -> "+0.05 €"."""
    return cents(value) if value < 0 else "+" + cents(value)


def grams(mass_g: float | None) -> str:
    if mass_g is None:
        return "?"
    return f"{mass_g / 1000:.2f} kg" if mass_g >= 1000 else f"{mass_g:.1f} g"


def when(at: str | None) -> str:
    """A ledger time, "2026-01-05T08:01:03.931Z", as "2026-01-05 08:01:03"."""
    return "" if at is None else at[:19].replace("T", " ")


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # text on stdout; spreadsheets read it too
    writer.writerow(headers)
    writer.writerows([["" if c is None else c for c in row] for row in rows])
    return out.getvalue()


# --- the figures as text -----------------------------------------------------------------------


def _slot_state(row: StockRow) -> str:
    notes = [
        note
        for note, applies in (
            ("off", not row.enabled),
            (f"fault {row.fault}", row.fault is not None),
            ("empty", row.quantity == 0),
            ("recount", row.needs_recount),
        )
        if applies
    ]
    return ", ".join(notes) or "ok"


def stock_table(rows: Sequence[StockRow]) -> str:
    if not rows:
        return "no slot in the ledger"
    return table(
        ("slot", "product", "price", "stock", "state"),
        [
            (r.slot, r.product, cents(r.price_cents), f"{r.quantity}/{r.capacity}", _slot_state(r))
            for r in rows
        ],
        align="rlrrl",
    )


def _coins(value_cents: int) -> str:
    return f"{value_cents} c"


def _collection_line(last: LastCollection) -> str:
    if last.counted_cents is None or last.difference_cents is None:
        counted = "not counted"
    else:
        difference = signed_cents(last.difference_cents)
        counted = f"{cents(last.counted_cents)} counted, difference {difference}"
    return (
        f"last collection  {when(last.at)} UTC by {last.actor}: "
        f"{cents(last.expected_cents)} expected, {counted}"
    )


def cashbox_text(box: Cashbox) -> str:
    lines = ["the cash box is empty"]
    if box.coins:
        rows: list[tuple[object, ...]] = [
            (
                _coins(v),
                n,
                cents(v * n),
                grams(coins_mass_g(v, n)),
            )
            for v, n in box.coins.items()
        ]
        rows.append(("total", box.count, cents(box.value_cents), grams(box.mass_g)))
        lines = [table(("coin", "count", "value", "mass"), rows, align="rrrr")]
    full = ": full, collect it" if box.fill >= 1.0 else ""
    lines += [
        "",
        f"fill             about {box.fill:.0%} of {box.capacity_ml:g} ml{full}",
        f"                 ({box.volume_ml:g} ml of loose coins, estimated)",
    ]
    if box.unweighed:
        which = ", ".join(_coins(v) for v in box.unweighed)
        lines.append(f"                 {which}: no known mass or volume, left out of both")
    if box.since is not None:
        lines.append(f"since            {when(box.since)} UTC")
    if box.last_collection is not None:
        lines.append(_collection_line(box.last_collection))
    return "\n".join(lines)


_SALES_HEADERS = {"day": "day (UTC)", "product": "product", "hour": "hour (UTC)"}


def _sales_key(key: str, by: str) -> str:
    if by == "day":
        return f"{key} {WEEKDAYS[date.fromisoformat(key).weekday()]}"
    return f"{key}:00" if by == "hour" else key


def sales_table(rows: Sequence[SalesRow], by: str = "day") -> str:
    """Sales with a bar of their count each, and a total."""
    if not rows:
        return "no sale"
    largest = max(r.count for r in rows)
    body = [
        (_sales_key(r.key, by), r.count, cents(r.value_cents), bar(r.count, largest)) for r in rows
    ]
    total = ("total", sum(r.count for r in rows), cents(sum(r.value_cents for r in rows)), "")
    return table((_SALES_HEADERS.get(by, by), "sales", "value", ""), [*body, total], "lrrl")


def sales_csv(rows: Sequence[SalesRow], by: str = "day") -> str:
    return csv_text((by, "count", "value_cents"), [(r.key, r.count, r.value_cents) for r in rows])


def _mint_cost(cents_float: float) -> str:
    return cents(round(cents_float))


def impact_text(impact: Impact) -> str:
    total = impact.total
    if not total.coins and not total.donations:
        return "no coin accepted yet"
    given = sum(d.count for d in total.donations.values())
    lines = [
        f"coins out of circulation  {total.count} ({cents(total.value_cents)}, "
        f"{grams(total.mass_g)})",
        f"minting cost avoided      {_mint_cost(total.mint_cost_avoided_cents)}",
        f"donations                 {given} ({cents(total.donated_cents)})",
    ]
    if total.unweighed:
        which = ", ".join(_coins(v) for v in total.unweighed)
        lines.append(f"                          {which}: no known mass, left out of the mass")
    per_coin = [
        (
            _coins(v),
            c.count,
            cents(c.value_cents),
            grams(c.mass_g),
            _mint_cost(c.mint_cost_avoided_cents),
        )
        for v, c in total.coins.items()
    ]
    lines += ["", table(("coin", "count", "value", "mass", "mint cost avoided"), per_coin, "rrrrr")]
    per_month = [
        (
            m.period,
            m.count,
            cents(m.value_cents),
            grams(m.mass_g),
            _mint_cost(m.mint_cost_avoided_cents),
            cents(m.donated_cents),
        )
        for m in impact.months
    ]
    headers = ("month (UTC)", "coins", "value", "mass", "mint cost avoided", "donated")
    lines += ["", table(headers, per_month, "lrrrrr")]
    if total.donations:
        gifts = [(b, d.count, cents(d.amount_cents)) for b, d in total.donations.items()]
        lines += ["", table(("beneficiary", "donations", "amount"), gifts, "lrr")]
    return "\n".join(lines)


def _by(row: EventRow) -> str:
    return f"{row.actor} ({row.origin})"


def faults_text(report: FaultsReport) -> str:
    if report.active:
        active = [(f.device, f.code, when(f.since), f.slot, f.detail) for f in report.active]
        lines = [
            "active faults",
            table(("device", "code", "since (UTC)", "slot", "detail"), active),
        ]
    else:
        lines = ["no active fault"]
    lines.append("")
    if report.recent:
        recent = [
            (
                when(e.at),
                "set" if e.kind == "fault" else "cleared",
                e.device,
                e.code,
                _by(e),
                e.detail,
            )
            for e in report.recent
        ]
        headers = ("at (UTC)", "fault", "device", "code", "by", "detail")
        lines += ["recent fault events, newest first", table(headers, recent)]
    else:
        lines.append("no fault recorded")
    return "\n".join(lines)


KIND_WIDTH = 16  # the longest usual kinds (vend_interrupted): columns line up across polls


def event_line(row: EventRow) -> str:
    """One event on one line, for `kiosk events` and each new one under `--follow`."""
    subject = ":".join(part for part in (row.device, row.code) if part)
    if row.slot is not None and row.device != slot_device(row.slot):
        subject = f"{subject} slot {row.slot}".strip()
    by = "" if (row.actor, row.origin) == ("kiosk", "kiosk") else f"  [{_by(row)}]"
    fields = (f"{row.id:>6}", when(row.at), f"{row.kind:<{KIND_WIDTH}}", subject, row.detail)
    return (GAP.join(f for f in fields if f) + by).rstrip()


def events_lines(rows: Sequence[EventRow]) -> list[str]:
    return [event_line(row) for row in rows]


# --- what the daemon says of itself -----------------------------------------------------------


def status_text(s: dict[str, Any]) -> str:
    lines = [
        f"kiosk      {s.get('kiosk_id') or '?'}",
        f"daemon     {'running' if s['running'] else 'not running'}",
        f"state      {s['state']}" + (" (service mode)" if s.get("service_mode") else ""),
        f"credit     {cents(s['credit_cents'])}",
    ]
    if "uptime_s" in s:
        lines.append(f"uptime     {_duration(s['uptime_s'])}")
    lines.append(f"ledger     {s['ledger']}")
    identity = s["acceptor"].get("identity") or {}
    if identity:
        lines.append(f"acceptor   {_identity(identity)}")
    if s["faults"]:
        lines.append("faults")
        for f in s["faults"]:
            lines.append(f"  {f['device']}:{f['code']}  since {f['since']}  {f['detail']}".rstrip())
    else:
        lines.append("faults     none")
    return "\n".join(lines)


def coins_text(c: dict[str, Any]) -> str:
    lines = []
    if c.get("identity"):
        lines.append(f"acceptor   {_identity(c['identity'])}")
    lines.append(f"driver     {c['driver'] or '?'}")
    if c["running"]:
        lines.append(f"accepting  {'yes' if c['accepting'] else 'no (inhibited)'}")
    else:
        lines.append("daemon     not running (the acceptor is told at the next start)")
    on = set(c["enabled_cents"])
    lines.append(
        "coins      " + "  ".join(f"{v} c {'on' if v in on else 'off'}" for v in c["coins_cents"])
    )
    return "\n".join(lines)


def _identity(identity: dict[str, str]) -> str:
    parts = [identity.get(k, "") for k in ("manufacturer", "product")]
    text = " ".join(p for p in parts if p) or "?"
    if identity.get("serial"):
        text += f", serial {identity['serial']}"
    if identity.get("software"):
        text += f", software {identity['software']}"
    return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days} d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def telemetry_text(t: dict[str, Any]) -> str:
    if not t["running"]:
        link = "daemon not running"
    elif not t["enabled"]:
        link = "off ([mqtt] has no host or socket): events wait in the outbox"
    else:
        link = "connected" if t["connected"] else "not connected (retrying)"
    lines = [f"telemetry  {link}"]
    if t.get("broker"):
        lines.append(f"broker     {t['broker']}")
    backlog = t["backlog"]
    age = backlog["oldest_unsent_age_s"]
    waiting = f"{backlog['unsent']} event(s) unsent"
    if age is not None:
        waiting += f", the oldest {age:.0f} s old"
    lines.append(f"outbox     {waiting} (last seq {backlog['last_seq']})")
    if t.get("last_error"):
        lines.append(f"last error {t['last_error']}")
    for fault in t.get("faults", []):
        lines.append(f"fault      telemetry:{fault}")
    return "\n".join(lines)
