"""Text for the technician (kiosk.tables): columns that line up whatever the product's accents,
bars that read at a glance (hypothesis: never wider than asked, growing with the value), money,
CSV, and each figure's text."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk import tables
from kiosk.figures import (
    ActiveFault,
    Cashbox,
    CoinImpact,
    Donations,
    EventRow,
    FaultsReport,
    Impact,
    ImpactPeriod,
    LastCollection,
    SalesRow,
    StockRow,
)

BLOCKS = {"█": 8, **{ch: n for n, ch in enumerate(tables.PARTIAL_BLOCKS) if ch}}


def eighths(bar: str) -> int:
    return sum(BLOCKS[ch] for ch in bar)


def columns_at(line: str, cell: str) -> int:
    """The terminal column where `cell` starts on `line`."""
    return tables.text_width(line[: line.index(cell)])


# --- tables -------------------------------------------------------------------------------------


def test_accented_names_take_one_column_a_letter() -> None:
    text = tables.table(("product", "price", "left"), [("Crème brûlée", 120, 3), ("Thé", 5, 12)])
    assert text.splitlines() == [
        "product       price  left",
        "------------  -----  ----",
        "Crème brûlée    120     3",
        "Thé               5    12",
    ]


def test_widths_are_terminal_columns() -> None:
    assert tables.text_width("Crème brûlée") == 12
    assert tables.text_width("Cafe\u0301") == 4  # e and a combining accent: one column
    assert tables.text_width("抹茶") == 4  # East Asian wide: two columns each
    assert tables.text_width("\uff21\uff22") == 4  # fullwidth A and B too
    text = tables.table(("product", "n"), [("Cafe\u0301", 1), ("抹茶", 2), ("Thé", 3)])
    lines = text.splitlines()
    assert {tables.text_width(line) for line in lines} == {len("product  n")}
    assert {columns_at(line, digit) for line, digit in zip(lines[2:], "123", strict=True)} == {9}


def test_numbers_go_right_text_left_and_no_line_ends_in_a_space() -> None:
    text = tables.table(
        ("slot", "product", "on", "note"),
        [(1, "Cookie", True, "long note here"), (12, "Chocolat noir", False, None)],
    )
    lines = text.splitlines()
    assert lines[2] == "   1  Cookie         yes  long note here"
    assert lines[3] == "  12  Chocolat noir  no"
    assert not any(line.endswith(" ") for line in lines)


def test_a_column_with_empty_cells_and_numbers_is_still_numeric() -> None:
    text = tables.table(("slot", "n"), [(None, 7), (3, 10)])
    assert text.splitlines()[2:] == ["       7", "   3  10"]


def test_alignment_can_be_chosen() -> None:
    text = tables.table(("price", "n"), [("0.20 €", 1), ("10.00 €", 22)], align="rl")
    assert text.splitlines()[2:] == [" 0.20 €  1", "10.00 €  22"]


def test_a_table_needs_one_cell_and_one_side_per_column() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        tables.table(("a", "b"), [(1,)])
    with pytest.raises(ValueError, match="align"):
        tables.table(("a", "b"), [(1, 2)], align="lc")
    with pytest.raises(ValueError, match="align"):
        tables.table(("a", "b"), [(1, 2)], align="l")
    assert tables.table(("a", "bb"), []) == "a  bb\n-  --"


# --- bars ---------------------------------------------------------------------------------------


def test_bars_are_empty_at_zero_full_at_the_largest_in_eighths_between() -> None:
    assert tables.bar(0, 10) == ""
    assert tables.bar(10, 10) == "█" * 20
    assert tables.bar(5, 10) == "█" * 10
    assert tables.bar(1, 16, width=10) == "▋"  # 10 cells x 8 / 16 = 5 eighths
    assert tables.bar(1, 1000) == "▏"  # a sale, however small against the best day, shows
    assert tables.bar(3, 8, width=4) == "█▌"
    assert tables.bar(20, 10) == "█" * 20  # more than the largest: full, never wider
    assert tables.bar(1, 0) == "" and tables.bar(-1, 10) == "" and tables.bar(1, 2, 0) == ""
    assert tables.bar(float("nan"), 10) == "" and tables.bar(1, float("nan")) == ""


values = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@given(values, values, st.floats(min_value=1e-6, max_value=1e9), st.integers(0, 80))
def test_a_bar_never_outgrows_its_width_and_grows_with_the_value(
    a: float, b: float, largest: float, width: int
) -> None:
    low, high = sorted((a, b))
    short, long = tables.bar(low, largest, width), tables.bar(high, largest, width)
    assert len(short) <= width and len(long) <= width
    assert eighths(short) <= eighths(long)
    if high >= largest:
        assert eighths(long) == 8 * width
    exact = min(high / largest, 1.0) * width * 8
    assert abs(eighths(long) - exact) <= 0.5 or (eighths(long) == 1 and exact < 1)
    assert (short == "") == (low == 0 or width == 0)


# --- money and CSV ------------------------------------------------------------------------------


def test_cents_read_as_euros() -> None:
    assert [tables.cents(v) for v in (1234, 5, 0, 100, -5, -1250, 123456)] == [
        "12.34 €",
        "0.05 €",
        "0.00 €",
        "1.00 €",
        "-0.05 €",
        "-12.50 €",
        "1234.56 €",
    ]
    assert [tables.signed_cents(v) for v in (3, 0, -3)] == ["+0.03 €", "+0.00 €", "-0.03 €"]


def test_csv_quotes_what_needs_it_and_reads_back() -> None:
    rows = [("Thé, citron", 2, 30), ('Cookie "bio"', 1, None), ("Crème brûlée", 0, 0)]
    text = tables.csv_text(("product", "count", "value_cents"), rows)
    assert text.splitlines()[1] == '"Thé, citron",2,30'
    assert list(csv.reader(io.StringIO(text))) == [
        ["product", "count", "value_cents"],
        ["Thé, citron", "2", "30"],
        ['Cookie "bio"', "1", ""],
        ["Crème brûlée", "0", "0"],
    ]


# --- the figures as text ------------------------------------------------------------------------


def test_stock_shows_each_slots_state() -> None:
    rows = [
        StockRow(1, "Crème brûlée", 20, 3, 12, True, None, False),
        StockRow(2, "Thé", 150, 0, 15, False, "jammed", True),
    ]
    assert tables.stock_table(rows).splitlines() == [
        "slot  product        price  stock  state",
        "----  ------------  ------  -----  ---------------------------------",
        "   1  Crème brûlée  0.20 €   3/12  ok",
        "   2  Thé           1.50 €   0/15  off, fault jammed, empty, recount",
    ]
    assert tables.stock_table([]) == "no slot in the ledger"


def box(coins: dict[int, int], last: LastCollection | None = None, fill: float = 0.1) -> Cashbox:
    return Cashbox(
        coins=coins,
        value_cents=sum(v * n for v, n in coins.items()),
        mass_g=round(sum(n * {1: 2.30, 2: 3.06, 5: 3.92}.get(v, 0) for v, n in coins.items()), 2),
        volume_ml=150.0,
        capacity_ml=1500.0,
        fill=fill,
        unweighed=tuple(v for v in coins if v not in (1, 2, 5)),
        since="2026-03-02T09:00:00.123Z",
        last_collection=last,
    )


def test_the_cash_box_lists_its_coins_and_its_last_collection() -> None:
    last = LastCollection("2026-03-02T09:00:00.123Z", "alice", {5: 4}, 20, 25)
    text = tables.cashbox_text(box({1: 10, 5: 400}, last))
    assert text.splitlines()[:5] == [
        " coin  count    value     mass",
        "-----  -----  -------  -------",
        "  1 c     10   0.10 €   23.0 g",
        "  5 c    400  20.00 €  1.57 kg",
        "total    410  20.10 €  1.59 kg",
    ]
    assert "about 10% of 1500 ml" in text and "150 ml of loose coins" in text
    assert "since            2026-03-02 09:00:00 UTC" in text
    assert "by alice: 0.20 € expected, 0.25 € counted, difference +0.05 €" in text
    assert "full" not in text


def test_an_empty_full_or_odd_cash_box_says_so() -> None:
    assert tables.cashbox_text(box({})).startswith("the cash box is empty\n")
    assert "about 104% of 1500 ml: full, collect it" in tables.cashbox_text(box({5: 9}, fill=1.04))
    odd = tables.cashbox_text(box({1: 1, 100: 2}))
    assert "100 c      2  2.00 €      ?" in odd
    assert "100 c: no known mass or volume" in odd
    uncounted = LastCollection("2026-03-02T09:00:00Z", "bob", {}, 0, None)
    assert "0.00 € expected, not counted" in tables.cashbox_text(box({}, uncounted))


def test_sales_by_day_read_at_a_glance() -> None:
    rows = [
        SalesRow("2026-03-02", 8, 120),
        SalesRow("2026-03-03", 0, 0),
        SalesRow("2026-03-04", 2, 30),
    ]
    lines = tables.sales_table(rows, "day").splitlines()
    assert lines[0].startswith("day (UTC)       sales   value")
    assert lines[2] == "2026-03-02 Mon      8  1.20 €  " + "█" * 20
    assert lines[3] == "2026-03-03 Tue      0  0.00 €"
    assert lines[4] == "2026-03-04 Wed      2  0.30 €  " + "█" * 5
    assert lines[5] == "total              10  1.50 €"
    assert tables.sales_table([], "day") == "no sale"
    hours = tables.sales_table([SalesRow("07", 1, 10)], "hour").splitlines()
    assert hours[0].startswith("hour (UTC)") and hours[2].startswith("07:00")


def test_sales_csv_keeps_integer_cents() -> None:
    text = tables.sales_csv([SalesRow("Thé", 3, 45)], "product")
    assert text == "product,count,value_cents\nThé,3,45\n"


def period(
    name: str, coins: dict[int, CoinImpact], donations: dict[str, Donations]
) -> ImpactPeriod:
    return ImpactPeriod(name, coins, donations, ())


def test_impact_totals_per_coin_and_per_month() -> None:
    coins = {1: CoinImpact(700, 700, 1610.0, 2800.0), 5: CoinImpact(3, 15, 11.76, 0.0)}
    gifts = {"Restos du Cœur": Donations(2, 12)}
    text = tables.impact_text(
        Impact(period("all", coins, gifts), [period("2026-01", coins, gifts)])
    )
    assert "coins out of circulation  703 (7.15 €, 1.62 kg)" in text
    assert "minting cost avoided      28.00 €" in text
    assert "donations                 2 (0.12 €)" in text
    assert " 1 c    700  7.00 €  1.61 kg            28.00 €" in text
    assert "2026-01        703  7.15 €  1.62 kg            28.00 €   0.12 €" in text
    assert "Restos du Cœur          2  0.12 €" in text
    empty = Impact(period("all", {}, {}), [])
    assert tables.impact_text(empty) == "no coin accepted yet"


def event(
    n: int, kind: str, device: str | None, code: str | None, slot: int | None, **kw: str
) -> EventRow:
    fields = {"detail": "", "actor": "kiosk", "origin": "kiosk", **kw}
    return EventRow(n, f"2026-03-02T10:0{n}:00.000Z", kind, device, code, slot, **fields)


def test_faults_list_the_active_and_the_history() -> None:
    report = FaultsReport(
        [ActiveFault("slot_1", "jammed", "2026-03-02T10:01:00.000Z", "not home", 1)],
        [
            event(2, "fault_cleared", "drop_sensor", "blocked", None, actor="alice", origin="cli"),
            event(1, "fault", "slot_1", "jammed", 1, detail="not home"),
        ],
    )
    lines = tables.faults_text(report).splitlines()
    assert lines[0] == "active faults"
    assert lines[3] == "slot_1  jammed  2026-03-02 10:01:00     1  not home"
    assert lines[5] == "recent fault events, newest first"
    assert lines[8].startswith("2026-03-02 10:02:00  cleared  drop_sensor  blocked  alice (cli)")
    assert lines[9].endswith("set      slot_1       jammed   kiosk (kiosk)  not home")
    assert tables.faults_text(FaultsReport([], [])) == "no active fault\n\nno fault recorded"


def test_an_event_is_one_line_and_kinds_line_up() -> None:
    lines = tables.events_lines(
        [
            event(1, "vend_failed", "dispenser", "jammed", 2, detail="not home"),
            event(2, "fault", "slot_2", "jammed", 2),
            event(3, "refill", None, None, 2, detail="+5: 12 of 12", actor="bob", origin="panel"),
        ]
    )
    assert lines[0] == (
        "     1  2026-03-02 10:01:00  vend_failed       dispenser:jammed slot 2  not home"
    )
    assert lines[1] == "     2  2026-03-02 10:02:00  fault             slot_2:jammed"
    assert lines[2].endswith("refill            slot 2  +5: 12 of 12  [bob (panel)]")
    assert len({columns_at(line, "2026") for line in lines}) == 1
