"""The EVA-DTS audit report (kiosk.audit), read back with the strict reader in tests/evadts.py: the
reference's CRC vectors and computed example, the envelope checks failing on damaged files, exact
counters on a hand-built ledger across reads with and without reset, a simulated shopper day whose
report matches the ledger's own figures, and any product or kiosk name giving a file that parses.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import evadts
import pytest
from evadts import Dex, DexError, Segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiosk as kiosk_pkg
from kiosk.audit import (
    EURO,
    AuditInfo,
    ascii_field,
    communication_id,
    crc16_arc,
    envelope,
    render,
    segment,
)
from kiosk.config import SlotConfig
from kiosk.ledger import Ledger
from kiosk.ledger_base import Actor, Fault
from kiosk.migrations import MIGRATIONS
from sim.clock import SimClock
from sim.rig import SimKiosk
from sim.shoppers import simulate

TECH = Actor("tech", "cli")
PANEL = Actor("technician", "panel")
INFO = AuditInfo("sim-001", "Centimeo", kiosk_pkg.__version__)
CHOCOLATE = "Chocolat noir à 70 %"
SLOTS = (
    SlotConfig(1, "Cookie bio", 20, 12, 5, 6, 13, 19),
    SlotConfig(2, CHOCOLATE, 15, 10, 12, 16, 20, 18),
)
# shared/reference/eva-dts.md, section 4: the computed example, every line ended by CR LF.
EXAMPLE_SET = [
    "ST*001*0001",
    "ID1*KIOSK0001*CENTIMEO*1*0**0",
    "ID4*2*1978*EUR",
    "VA1*150*12*150*12",
]
EXAMPLE = "".join(
    line + "\r\n"
    for line in ["DXS*XYZ0000001*VA*V0/6*1", *EXAMPLE_SET, "G85*44BF", "SE*6*0001", "DXE*1*1"]
)


def read(ledger: Ledger, reset: bool = False, info: AuditInfo = INFO, by: Actor = TECH) -> Dex:
    return evadts.parse(ledger.read_audit(reset, by, functools.partial(render, info=info)))


# --- the CRC and the envelope ----------------------------------------------------------------


@pytest.mark.parametrize("crc", [crc16_arc, evadts.crc16_arc], ids=["kiosk", "reader"])
def test_crc16_arc_gives_the_reference_vectors(crc: Callable[[bytes], int]) -> None:
    assert crc(b"123456789") == 0xBB3D
    assert crc(b"") == 0
    checked = "".join(line + "\r\n" for line in EXAMPLE_SET)
    assert crc(checked.encode("ascii")) == 0x44BF
    assert crc(checked.replace("\r\n", "\n").encode("ascii")) == 0xA7B7


def test_the_reference_example_is_built_byte_for_byte() -> None:
    body = [
        segment("ID1", "KIOSK0001", "CENTIMEO", 1, 0, None, 0),
        segment("ID4", *EURO),
        segment("VA1", 150, 12, 150, 12),
    ]
    assert envelope("XYZ0000001", body) == EXAMPLE
    dex = evadts.parse(EXAMPLE)
    assert dex.one("G85")[1] == "44BF"
    assert dex.one("SE").numbers(1) == (6,)
    assert dex.as_dict()["VA1"] == [["150", "12", "150", "12"]]


@pytest.mark.parametrize(
    ("damage", "complaint"),
    [
        (lambda t: t.replace("\r\n", "\n"), "CR LF"),
        (lambda t: t.replace("EUR\r\n", "EUR\rX\r\n"), "not CR LF"),
        (lambda t: t.replace("VA1*150", "VA1*151"), "G85 says"),
        (lambda t: t.replace("G85*44BF", "G85*44bf"), "G85 says"),
        (lambda t: t.replace("SE*6*", "SE*7*"), "SE01"),
        (lambda t: t.replace("SE*6*0001", "SE*6*0002"), "SE02"),
        (lambda t: t.replace("DXE*1*1\r\n", ""), "not DXS, ST"),
        (lambda t: t.replace("DXE*1*1", "DXE*2*1"), "does not close"),
        (lambda t: t.replace("CENTIMEO", "CENTIMÉO"), "not ASCII"),
        (lambda t: t.replace("ID4", "id4"), "no segment tag"),
    ],
)
def test_the_reader_refuses_a_damaged_file(damage: Callable[[str], str], complaint: str) -> None:
    damaged = damage(EXAMPLE)
    assert damaged != EXAMPLE
    with pytest.raises(DexError, match=complaint):
        evadts.parse(damaged)


def test_the_reader_groups_products_and_refuses_a_stray_segment() -> None:
    good = evadts.parse(envelope("CTM0000001", ["PA1*1*20*A", "PA2*1*20*1*20", "PA1*2*10*B"]))
    assert {n: sorted(g) for n, g in good.groups("PA").items()} == {
        1: ["PA1", "PA2"],
        2: ["PA1"],
    }
    for body in (["PA2*1*20*1*20", "PA1*1*20*A"], ["PA1*1*20*A", "PA2*1", "PA2*1"]):
        with pytest.raises(DexError, match="outside"):
            evadts.parse(envelope("CTM0000001", body)).groups("PA")


def test_a_segment_leaves_out_trailing_empty_fields_only() -> None:
    assert segment("EA1", "EGS", "20260105", "080000", None, "", "") == "EA1*EGS*20260105*080000"
    assert segment("PA5", "", "", 0) == "PA5***0"
    assert segment("CA1", None, None) == "CA1"
    with pytest.raises(ValueError, match="not a segment"):
        envelope("CTM0000001", ["PA1*1*20*two\r\nlines"])


@pytest.mark.parametrize(
    ("name", "field"),
    [
        (CHOCOLATE, "Chocolat noir a 70 %"),
        ("Crème brûlée*2", "Creme brulee-2"),
        ("Œuf  de\r\nPâques\t", "OEuf de Paques"),
        ("Straße ½ “bio”", 'Strasse 1/2 "bio"'),
        ("日本 茶", "?? ?"),
        ("\x00\x7f", ""),
    ],
)
def test_names_become_ascii_fields(name: str, field: str) -> None:
    assert ascii_field(name) == field


def test_the_communication_id_comes_from_the_kiosk_id() -> None:
    assert communication_id("sim-001") == "CTM0000001"
    assert communication_id("KIOSK-12345678") == "CTM2345678"
    lettered = communication_id("paris-nord")
    assert re.fullmatch(r"CTM\d{7}", lettered)
    assert lettered == communication_id("paris-nord") != communication_id("lyon-sud")


# --- counters on a ledger built by hand ------------------------------------------------------


@pytest.fixture
def books(ledger: Ledger) -> Ledger:
    ledger.boot(INFO.kiosk_id)
    ledger.sync_slots(SLOTS)
    return ledger


def sell(ledger: Ledger, slot: int, price_cents: int, *coins: int) -> None:
    for value in coins:
        ledger.record_coin(value)
    ledger.complete_sale(ledger.start_vend(slot, price_cents), "dropped")


def products(dex: Dex) -> dict[int, dict[str, Segment]]:
    return dex.groups("PA")


def events(dex: Dex) -> dict[str, Segment]:
    return {s[1]: s for s in dex.all("EA2")}


def test_a_report_lays_out_the_recommended_segments(books: Ledger, clock: SimClock) -> None:
    clock.now = 3723.5  # 09:02:03 on the simulated day
    sell(books, 2, 15, 5, 5, 5)
    dex = read(books)
    assert dex.tags == [
        *("DXS", "ST", "ID1", "ID4", "ID5", "CB1", "VA1", "VA2", "VA3"),
        *("CA1", "CA2", "CA3", "CA4", "CA10", "CA11", "CA11", "CA11"),
        *("PA1", "PA2", "PA3", "PA4", "PA5") * 2,
        *("EA2", "EA2", "EA2", "EA2", "EA3", "MA5", "MA5", "MA5", "MA5"),
        *("G85", "SE", "DXE"),
    ]
    assert [s[1] for s in dex.all("EA2")] == ["EGS", "EAR", "ELA", "EJL"]
    assert dex.one("DXS").fields == ("CTM0000001", "VA", "V0/6", "1")
    assert dex.one("ID1").fields == ("sim-001", "CENTIMEO", "1", "Centimeo")
    assert dex.one("ID4").fields == ("2", "1978", "EUR")
    assert dex.one("ID5").fields == ("20260105", "090203")
    assert dex.one("CB1").fields == ("sim-001", "CENTIMEO", kiosk_pkg.__version__)
    assert [s.fields[:2] for s in dex.all("CA11")] == [("1", "0"), ("2", "0"), ("5", "3")]
    assert products(dex)[2]["PA1"].fields == ("2", "15", "Chocolat noir a 70 %")
    assert products(dex)[2]["PA5"].fields == ("20260105", "090203", "0")
    assert products(dex)[1]["PA5"].fields == ("", "", "0")
    schema = str(len(MIGRATIONS))
    assert [s[2] for s in dex.all("MA5")] == [kiosk_pkg.__version__, schema, "0", "0"]


def test_a_read_with_reset_closes_its_period(books: Ledger, clock: SimClock) -> None:
    sell(books, 1, 20, 5, 5, 5, 5)
    sell(books, 2, 15, 5, 5, 5)
    first = read(books, reset=True)
    assert first.one("VA1").numbers(1, 2, 3, 4) == (35, 2, 35, 2)
    assert first.one("CA3").numbers(1, 2, 3, 4, 5, 6, 7, 8) == (35, 35, 0, 0, 35, 35, 0, 0)
    assert first.all("CA11")[2].numbers(1, 2, 3, 4, 5, 6, 7) == (5, 7, 7, 0, 7, 7, 0)
    assert first.one("EA3").fields == ("1", "20260105", "080000", "tech", "", "", "", "", "1", "1")

    clock.now = 3600
    sell(books, 1, 20, *[2] * 10)
    second = read(books, by=Actor("auditor", "cli"))
    assert second.one("VA1").numbers(1, 2, 3, 4) == (55, 3, 20, 1)
    assert second.one("CA2").numbers(1, 2, 3, 4) == (55, 3, 20, 1)
    assert second.one("CA3").numbers(1, 5) == (20, 55)
    assert [s.numbers(1, 2, 5) for s in second.all("CA11")] == [(1, 0, 0), (2, 10, 10), (5, 0, 7)]
    assert products(second)[1]["PA2"].numbers(1, 2, 3, 4) == (2, 40, 1, 20)
    assert products(second)[2]["PA2"].numbers(1, 2, 3, 4) == (1, 15, 0, 0)
    ea3 = second.one("EA3")
    assert ea3.fields[:7] == ("1", "20260105", "090000", "auditor", "20260105", "080000", "tech")
    assert ea3.numbers(9, 10) == (2, 1)

    third = read(books, reset=True)  # a read without reset started no period: still from first
    assert third.one("VA1").numbers(3, 4) == (20, 1)
    assert third.one("EA3").numbers(1, 9, 10) == (2, 3, 2)
    sell(books, 2, 15, 5, 5, 5)
    fourth = read(books)
    assert fourth.one("VA1").numbers(1, 2, 3, 4) == (70, 4, 15, 1)
    assert fourth.one("EA3")[7] == "tech"


def test_test_vends_failures_door_and_acceptor_faults_are_counted(books: Ledger) -> None:
    books.record_event("door_opened", by=PANEL, device="door")
    test_id = books.start_test_vend(1, TECH)
    books.finish_test_vend(test_id, "delivered", "dropped", None)
    test_id = books.start_test_vend(2, TECH)
    books.finish_test_vend(test_id, "no_drop", "nothing fell", "no_drop")
    books.record_coin(20)
    books.fail_vend(books.start_vend(1, 20), "jammed", "spiral stalled", "jammed")
    books.set_fault(Fault("coin_acceptor", "line_stuck", "", "coin line held low"))
    during = read(books, reset=True)
    assert during.one("VA2").numbers(1, 2, 3, 4) == (0, 1, 0, 1)
    assert products(during)[1]["PA3"].numbers(1, 2, 3, 4) == (1, 0, 1, 0)
    assert products(during)[2]["PA3"].numbers(1, 2, 3, 4) == (0, 0, 0, 0)
    assert during.one("VA1").numbers(2) == (0,)
    assert {k: s.numbers(2, 3, 5) for k, s in events(during).items()} == {
        "EGS": (1, 1, 1),
        "EAR": (1, 1, 1),
        "ELA": (1, 1, 1),
        "EJL": (1, 1, 1),
    }
    assert {s[1]: s[6] for s in during.all("EA1")} == {
        "EGS": "",
        "EAR": "line_stuck",
        "ELA": "jammed",
        "EJL": "no_drop",
    }

    books.close_door(PANEL)  # the visit ends: the slots' faults are cleared
    books.clear_fault("coin_acceptor", "line_stuck", "coin line released")
    books.record_event("door_opened", by=PANEL, device="door")
    books.record_event("door_closed", by=PANEL, device="door")
    after = read(books)
    assert {k: s.numbers(2, 3, 5) for k, s in events(after).items()} == {
        "EGS": (1, 2, 0),
        "EAR": (0, 1, 0),
        "ELA": (0, 1, 0),
        "EJL": (0, 1, 0),
    }


def test_the_acceptor_identity_fills_ca1(books: Ledger) -> None:
    identity = {"serial": "00511000", "product": "SR5*i", "software": "1003", "coins": "1 c"}
    books.db.execute(
        "INSERT INTO meta VALUES ('identity:coin_acceptor', ?)", [json.dumps(identity)]
    )
    books.db.conn.commit()
    assert read(books).one("CA1").fields == ("00511000", "SR5-i", "1003")
    books.db.execute("UPDATE meta SET value = '{not json' WHERE key = 'identity:coin_acceptor'")
    books.db.conn.commit()
    assert read(books).one("CA1").fields == ()


def test_a_coin_value_outside_the_usual_three_gets_its_line(books: Ledger) -> None:
    books.record_coin(10)
    dex = read(books)
    assert [s.numbers(1, 2, 5) for s in dex.all("CA11")] == [
        (1, 0, 0),
        (2, 0, 0),
        (5, 0, 0),
        (10, 1, 1),
    ]
    assert dex.all("MA5")[-1].fields == ("CREDIT", "10")


def test_an_unknown_read_is_refused(books: Ledger) -> None:
    with pytest.raises(ValueError, match="no audit read 7"):
        render(books.db, 7, INFO)


# --- a simulated shopper day -----------------------------------------------------------------


def audit(rig: SimKiosk, reset: bool) -> Dex:
    k = rig.config.kiosk
    info = AuditInfo(k.id, k.name, kiosk_pkg.__version__, k.accepted_coins_cents)
    return read(rig.ledger, reset, info)


def last_ids(rig: SimKiosk) -> tuple[int, int]:
    """The newest coin and sale: what a period after now starts after."""
    row = rig.ledger.db.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM coins), (SELECT coalesce(max(id), 0) FROM sales)"
    ).fetchone()
    return int(row[0]), int(row[1])


def assert_report_matches_the_ledger(dex: Dex, rig: SimKiosk, after: tuple[int, int]) -> None:
    """The report's since-init figures are the whole ledger's, its since-reset ones those of the
    coins and sales after `after`, as the ledger's own SQL counts them."""
    db = rig.ledger.db
    coin_after, sale_after = after

    def sales(since: int, slot: int | None = None) -> tuple[int, int]:
        row = db.execute(
            "SELECT coalesce(sum(price_cents), 0), count(*) FROM sales "
            "WHERE id > ? AND slot = coalesce(?, slot)",
            [since, slot],
        ).fetchone()
        return int(row[0]), int(row[1])

    def coins(since: int) -> dict[int, int]:
        counted = {v: 0 for v in rig.config.kiosk.accepted_coins_cents}
        query = "SELECT value_cents, count(*) FROM coins WHERE id > ? GROUP BY value_cents"
        counted.update(db.execute(query, [since]).fetchall())
        return counted

    everything, period = sales(0), sales(sale_after)
    assert dex.one("VA1").numbers(1, 2, 3, 4) == (*everything, *period)
    assert dex.one("CA2").numbers(1, 2, 3, 4) == (*everything, *period)
    cash = sum(v * n for v, n in coins(0).items())
    cash_r = sum(v * n for v, n in coins(coin_after).items())
    assert dex.one("CA3").numbers(1, 2, 3, 4, 5, 6, 7, 8) == (
        cash_r,
        cash_r,
        0,
        0,
        cash,
        cash,
        0,
        0,
    )
    period_coins = coins(coin_after)
    assert {s.number(1): s.numbers(2, 3, 4, 5, 6, 7) for s in dex.all("CA11")} == {
        value: (period_coins.get(value, 0), period_coins.get(value, 0), 0, count, count, 0)
        for value, count in coins(0).items()
    }
    slots = [slot for (slot,) in db.execute("SELECT slot FROM stock ORDER BY slot")]
    assert sorted(products(dex)) == slots
    for slot, group in products(dex).items():
        (value, count), (value_r, count_r) = sales(0, slot), sales(sale_after, slot)
        assert group["PA2"].numbers(1, 2, 3, 4) == (count, value, count_r, value_r)
    extras = {s[1]: s for s in dex.all("MA5")}
    donated, credit = extras["DONATIONS"].number(2), extras["CREDIT"].number(2)
    assert cash == everything[0] + donated + credit  # every cent in the cash box accounted for


def test_a_shopper_day_audited_around_a_reset(kiosk: SimKiosk) -> None:
    assert simulate(kiosk, 40, seed=3).ok  # each run on its own
    first = audit(kiosk, reset=False)
    assert first.one("VA1").number(2) > 0
    assert_report_matches_the_ledger(first, kiosk, (0, 0))

    assert simulate(kiosk, 30, seed=4).ok  # each run on its own
    closing = audit(kiosk, reset=True)  # the first read had no reset: its period is all so far
    assert_report_matches_the_ledger(closing, kiosk, (0, 0))
    after_reset = last_ids(kiosk)

    assert simulate(kiosk, 30, seed=5).ok  # each run on its own
    last = audit(kiosk, reset=False)
    assert_report_matches_the_ledger(last, kiosk, after_reset)
    assert 0 < last.one("VA1").number(4) < last.one("VA1").number(2)
    assert [d.one("EA3").numbers(1, 9, 10) for d in (first, closing, last)] == [
        (0, 1, 0),
        (1, 2, 1),
        (1, 3, 1),
    ]
    assert last.one("EA3").fields[4:6] == closing.one("ID5").fields


# --- any names -------------------------------------------------------------------------------

names = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    product_names=st.lists(names, min_size=1, max_size=3),
    kiosk_id=names,
    kiosk_name=names,
    serial=names,
)
def test_any_names_give_a_report_that_parses(
    product_names: list[str], kiosk_id: str, kiosk_name: str, serial: str
) -> None:
    slots = tuple(
        SlotConfig(i, name, 10 * i, 5, 0, 0, 0, 0) for i, name in enumerate(product_names, 1)
    )
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "kiosk.db", SimClock().wall)
        try:
            ledger.sync_slots(slots)
            identity = json.dumps({"serial": serial, "product": kiosk_name})
            ledger.db.execute("INSERT INTO meta VALUES ('identity:coin_acceptor', ?)", [identity])
            ledger.db.conn.commit()
            dex = read(
                ledger, info=AuditInfo(kiosk_id, kiosk_name, serial), by=Actor(serial, "cli")
            )
        finally:
            ledger.close()
    assert re.fullmatch(r"CTM\d{7}", dex.one("DXS")[1])
    id1 = dex.one("ID1")
    assert [id1[n] for n in range(1, 6)] == [
        ascii_field(kiosk_id),
        "CENTIMEO",
        "1",
        ascii_field(kiosk_name),
        "",
    ]
    assert [(s[1], s[3]) for s in dex.all("PA1")] == [
        (str(i), ascii_field(name)) for i, name in enumerate(product_names, 1)
    ]
    assert dex.one("CA1")[1] == ascii_field(serial)
    assert dex.one("EA3")[4] == ascii_field(serial)
    for s in dex.segments:
        assert all(f == ascii_field(f) for f in s.fields), s


@given(names)
def test_an_ascii_field_is_printable_ascii_without_separators(name: str) -> None:
    field = ascii_field(name)
    assert re.fullmatch(r"[ -)+-~]*", field)
    assert field == field.strip() and "  " not in field
    assert ascii_field(field) == field
