"""The technician's figures (kiosk.figures) on ledgers written by the real ledger: a random
shopper run on the simulator across a month's end, checked against independent SQL and hand
counts, and small hand-made ledgers for day gaps, date bounds, impact arithmetic, collections and
coins with no known physics. Every figure is read through a read-only connection."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlite_utils import Database

from kiosk import config as config_mod
from kiosk import figures, reports, schema
from kiosk.config import CashboxSection, Config, ImpactSection
from kiosk.ledger import Actor, Fault, Ledger
from sim.clock import SimClock
from sim.rig import SimKiosk
from sim.shoppers import simulate

# Straight from the reference (EU Council Regulation 975/98), not from kiosk.figures.
MASS_G = {1: 2.30, 2: 3.06, 5: 3.92}
SIZE_MM = {1: (16.25, 1.67), 2: (18.75, 1.67), 5: (21.25, 1.67)}  # diameter, thickness
ALICE = Actor("alice", "cli")
ACCENTED = ("Crème brûlée", "Café équitable", "Thé")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def loose_ml(coins: dict[int, int]) -> float:
    solid_mm3 = 0.0
    for value, count in coins.items():
        diameter_mm, thickness_mm = SIZE_MM[value]
        solid_mm3 += count * math.pi * (diameter_mm / 2) ** 2 * thickness_mm
    return solid_mm3 / 1000 / 0.6


# --- a random shopper run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shoppers from the evening of 31 January into February, a collection half-way, a jam."""
    config = config_mod.load(config_mod.PULSE_PROFILE, env={})
    path = tmp_path_factory.mktemp("shopped") / "kiosk.db"
    rig = SimKiosk(config, path, clock=SimClock(utc("2026-01-31 18:00")))
    try:
        assert simulate(rig, 250, seed=11).ok
        rig.ledger.collect(1234, ALICE)
        simulate(rig, 120, seed=12)
        # The world's coins are counted since the start; the run's own truth check cannot know
        # of the collection, so the whole ledger is held against the whole world instead.
        assert all(check.ok for check in reports.verify(rig.ledger.db))
        assert rig.world.truth.cashbox_cents == reports.totals(rig.ledger.db).coins_cents
        rig.ledger.set_fault(Fault("slot_2", "jammed", "", "motor stalled", 2))
    finally:
        rig.shutdown()
        rig.world.factory.reset()
    return path


@pytest.fixture
def shop(shopped: Path) -> Iterator[Database]:
    db = schema.connect(shopped, read_only=True)
    yield db
    db.close()


def test_stock_is_the_stock_table_with_each_slots_fault(shop: Database) -> None:
    rows = figures.stock(shop)
    expected = shop.execute(
        "SELECT slot, product, price_cents, quantity, capacity, enabled, needs_recount "
        "FROM stock ORDER BY slot"
    ).fetchall()
    assert [
        (r.slot, r.product, r.price_cents, r.quantity, r.capacity, r.enabled, r.needs_recount)
        for r in rows
    ] == [(s, p, c, q, cap, bool(e), bool(n)) for s, p, c, q, cap, e, n in expected]
    active = dict(shop.execute("SELECT slot, code FROM faults WHERE slot IS NOT NULL").fetchall())
    assert active == {2: "jammed"}
    assert {r.slot: r.fault for r in rows} == {1: None, 2: "jammed", 3: None}


def test_cashbox_holds_the_coins_accepted_since_the_last_collection(
    shop: Database, config: Config
) -> None:
    box = figures.cashbox(shop, config.cashbox)
    collected_at, last_coin = shop.execute("SELECT at, last_coin_id FROM collections").fetchone()
    since = Counter(
        v for (v,) in shop.execute("SELECT value_cents FROM coins WHERE id > ?", [last_coin])
    )
    assert box.coins == dict(since) and box.coins
    assert box.value_cents == sum(v * n for v, n in since.items())
    assert box.mass_g == pytest.approx(sum(n * MASS_G[v] for v, n in since.items()), abs=0.005)
    assert box.volume_ml == pytest.approx(loose_ml(since), abs=0.05)
    assert box.fill == pytest.approx(loose_ml(since) / config.cashbox.capacity_ml, abs=1e-4)
    assert box.since == collected_at and box.unweighed == ()
    last = box.last_collection
    assert last is not None and last.at == collected_at and last.actor == "alice"
    before = Counter(
        v for (v,) in shop.execute("SELECT value_cents FROM coins WHERE id <= ?", [last_coin])
    )
    assert last.coins == dict(before)
    assert last.expected_cents == sum(v * n for v, n in before.items())
    assert (last.counted_cents, last.difference_cents) == (1234, 1234 - last.expected_cents)


def sales_of(db: Database) -> list[tuple[datetime, str, int]]:
    return [
        (datetime.fromisoformat(at).astimezone(UTC), product, price)
        for at, product, price in db.execute("SELECT at, product, price_cents FROM sales")
    ]


@pytest.mark.parametrize(
    ("by", "key"),
    [
        ("day", lambda at, product: at.date().isoformat()),
        ("hour", lambda at, product: f"{at.hour:02d}"),
        ("product", lambda at, product: product),
    ],
)
def test_sales_add_up_to_the_sales_table(
    shop: Database, by: str, key: Callable[[datetime, str], str]
) -> None:
    counts: Counter[str] = Counter()
    cents: Counter[str] = Counter()
    for at, product, price in sales_of(shop):
        k = key(at, product)
        counts[k] += 1
        cents[k] += price
    rows = figures.sales(shop, by, None, None)
    assert {r.key: (r.count, r.value_cents) for r in rows if r.count} == {
        k: (counts[k], cents[k]) for k in counts
    }
    assert sum(r.count for r in rows) == len(sales_of(shop)) > 100


def test_sales_by_day_run_from_the_first_sale_to_the_last(shop: Database) -> None:
    rows = figures.sales(shop, "day", None, None)
    days = sorted({at.date() for at, _, _ in sales_of(shop)})
    assert [r.key for r in rows] == [d.isoformat() for d in days]  # consecutive: no quiet day
    assert rows[0].key == "2026-01-31" and len(rows) >= 2
    assert [r.key for r in figures.sales(shop, "hour", None, None)] == [
        f"{h:02d}" for h in range(24)
    ]
    by_product = figures.sales(shop, "product", None, None)
    assert [r.count for r in by_product] == sorted((r.count for r in by_product), reverse=True)


def test_impact_counts_every_coin_ever_accepted(shop: Database, config: Config) -> None:
    found = figures.impact(shop, config.impact)
    coins = Counter(v for (v,) in shop.execute("SELECT value_cents FROM coins"))
    total = found.total
    assert {v: c.count for v, c in total.coins.items()} == dict(coins)
    assert total.count == sum(coins.values()) == figures.coins_saved(shop)
    assert total.mass_g == pytest.approx(sum(n * MASS_G[v] for v, n in coins.items()), abs=0.01)
    assert total.mint_cost_avoided_cents == pytest.approx(4.0 * coins[1])
    assert [m.period for m in found.months] == ["2026-01", "2026-02"]
    assert sum(m.count for m in found.months) == total.count
    donated = shop.execute("SELECT sum(amount_cents) FROM donations").fetchone()[0]
    assert total.donated_cents == donated == sum(m.donated_cents for m in found.months)


def test_faults_and_events_read_the_events_table(shop: Database) -> None:
    report = figures.faults(shop, recent=3)
    assert [(f.device, f.code, f.slot) for f in report.active] == [("slot_2", "jammed", 2)]
    newest = shop.execute(
        "SELECT id, kind, code FROM events WHERE kind IN ('fault', 'fault_cleared') "
        "ORDER BY id DESC LIMIT 3"
    ).fetchall()
    assert [(e.id, e.kind, e.code) for e in report.recent] == [tuple(r) for r in newest]
    last_ids = [r[0] for r in shop.execute("SELECT id FROM events ORDER BY id DESC LIMIT 5")]
    assert [e.id for e in figures.events(shop, limit=5)] == last_ids[::-1]


def test_every_figure_reads_on_a_read_only_connection(shop: Database, config: Config) -> None:
    found = [
        figures.stock(shop),
        figures.cashbox(shop, config.cashbox),
        figures.sales(shop, "day", None, None),
        figures.impact(shop, config.impact),
        figures.faults(shop),
        figures.events(shop),
    ]
    assert all(found) and figures.coins_saved(shop) > 0
    assert shop.conn.total_changes == 0


# --- hand-made ledgers --------------------------------------------------------------------------


@dataclass
class Wall:
    """The ledger's wall clock, set by the test before each write."""

    at: datetime

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def wall() -> Wall:
    return Wall(utc("2026-03-02 09:00"))


@pytest.fixture
def books(db_path: Path, wall: Wall, config: Config) -> Iterator[Ledger]:
    slots = tuple(replace(s, product=name) for s, name in zip(config.slots, ACCENTED, strict=True))
    ledger = Ledger(db_path, wall)
    ledger.boot("test-001")
    ledger.sync_slots(slots)
    yield ledger
    ledger.close()


@pytest.fixture
def ro(books: Ledger, db_path: Path) -> Iterator[Database]:
    db = schema.connect(db_path, read_only=True)
    yield db
    db.close()


def pay(books: Ledger, wall: Wall, at: str, *coins: int) -> None:
    wall.at = utc(at)
    for value in coins:
        books.record_coin(value)


def sell(books: Ledger, wall: Wall, at: str, slot: int) -> None:
    """A sale of `slot` paid in 5 c coins (every price of the profile is a multiple of 5)."""
    price = books.slots()[slot].price_cents
    pay(books, wall, at, *[5] * (price // 5))
    books.complete_sale(books.start_vend(slot, price), "dropped")


@pytest.fixture
def week(books: Ledger, wall: Wall) -> Ledger:
    """Sales on Monday 2 March (two), Wednesday, at Saturday's last second, at Sunday's first."""
    sell(books, wall, "2026-03-02 09:15", 1)
    sell(books, wall, "2026-03-02 17:40", 2)
    sell(books, wall, "2026-03-04 12:00", 3)
    sell(books, wall, "2026-03-07 23:59:59", 2)
    sell(books, wall, "2026-03-08 00:00", 1)
    return books


def days(rows: list[figures.SalesRow]) -> list[tuple[str, int]]:
    return [(r.key, r.count) for r in rows]


def test_days_without_a_sale_show_as_zero(week: Ledger, ro: Database) -> None:
    assert days(figures.sales(ro, "day", None, None)) == [
        ("2026-03-02", 2),
        ("2026-03-03", 0),
        ("2026-03-04", 1),
        ("2026-03-05", 0),
        ("2026-03-06", 0),
        ("2026-03-07", 1),
        ("2026-03-08", 1),
    ]
    assert [r.value_cents for r in figures.sales(ro, "day", None, None)][:3] == [30, 0, 15]


def test_since_and_until_are_inclusive_utc_dates(week: Ledger, ro: Database) -> None:
    assert days(figures.sales(ro, "day", date(2026, 3, 3), date(2026, 3, 7))) == [
        ("2026-03-03", 0),
        ("2026-03-04", 1),
        ("2026-03-05", 0),
        ("2026-03-06", 0),
        ("2026-03-07", 1),
    ]
    assert days(figures.sales(ro, "day", date(2026, 3, 6), None)) == [
        ("2026-03-06", 0),
        ("2026-03-07", 1),
        ("2026-03-08", 1),
    ]
    assert days(figures.sales(ro, "day", None, date(2026, 3, 2))) == [("2026-03-02", 2)]
    assert days(figures.sales(ro, "day", date(2026, 2, 27), date(2026, 3, 1))) == [
        ("2026-02-27", 0),
        ("2026-02-28", 0),
        ("2026-03-01", 0),
    ]
    assert figures.sales(ro, "day", None, date(2026, 3, 1)) == []
    sunday = figures.sales(ro, "hour", date(2026, 3, 8), date(2026, 3, 8))
    assert [(r.key, r.count) for r in sunday if r.count] == [("00", 1)] and len(sunday) == 24


def test_sales_by_product_name_the_product_sold(week: Ledger, ro: Database) -> None:
    assert [(r.key, r.count, r.value_cents) for r in figures.sales(ro, "product")] == [
        ("Crème brûlée", 2, 40),  # as many sold as the Café: the larger takings first
        ("Café équitable", 2, 20),
        ("Thé", 1, 15),
    ]
    weekend = figures.sales(ro, "product", date(2026, 3, 7), date(2026, 3, 8))
    assert [(r.key, r.count) for r in weekend] == [("Crème brûlée", 1), ("Café équitable", 1)]


def test_bad_groupings_and_ranges_are_refused(ro: Database) -> None:
    with pytest.raises(ValueError, match="week"):
        figures.sales(ro, "week", None, None)
    with pytest.raises(ValueError, match="ends before"):
        figures.sales(ro, "day", date(2026, 3, 8), date(2026, 3, 7))


@pytest.fixture
def quarter(books: Ledger, wall: Wall) -> Ledger:
    """Coins given away in January (twice) and March; nothing in February."""
    pay(books, wall, "2026-01-10 10:00", 1, 1, 2)
    books.donate("Restos du Cœur")
    pay(books, wall, "2026-01-20 10:00", 1, 2, 5)
    books.donate("Restos du Cœur")
    pay(books, wall, "2026-03-03 10:00", 1, 1, 1, 1)
    books.donate("Secours populaire")
    return books


def test_impact_weighs_and_prices_each_denomination(quarter: Ledger, ro: Database) -> None:
    found = figures.impact(ro, ImpactSection(mint_cost_cents={1: 4.0, 2: 1.65}))
    assert found.total.coins == {
        1: figures.CoinImpact(7, 7, 16.1, 28.0),
        2: figures.CoinImpact(2, 4, 6.12, 3.3),
        5: figures.CoinImpact(1, 5, 3.92, 0.0),  # no minting cost configured: none counted
    }
    total = found.total
    assert (total.count, total.value_cents, total.mass_g) == (10, 16, 26.14)
    assert total.mint_cost_avoided_cents == 31.3
    assert total.donations == {
        "Restos du Cœur": figures.Donations(2, 12),
        "Secours populaire": figures.Donations(1, 4),
    }
    assert [(m.period, m.count, m.value_cents, m.donated_cents) for m in found.months] == [
        ("2026-01", 6, 12, 12),
        ("2026-02", 0, 0, 0),
        ("2026-03", 4, 4, 4),
    ]
    assert found.months[2].mint_cost_avoided_cents == 16.0
    assert figures.coins_saved(ro) == 10


def test_the_default_minting_cost_is_the_one_cent_coins(quarter: Ledger, ro: Database) -> None:
    found = figures.impact(ro, ImpactSection())
    assert found.total.mint_cost_avoided_cents == 7 * 4.0
    assert [c.mint_cost_avoided_cents for c in found.total.coins.values()] == [28.0, 0.0, 0.0]


def test_an_empty_ledger_has_no_figures(ro: Database, config: Config) -> None:
    box = figures.cashbox(ro, config.cashbox)
    assert (box.coins, box.value_cents, box.mass_g, box.fill) == ({}, 0, 0.0, 0.0)
    assert box.since is None and box.last_collection is None
    found = figures.impact(ro, config.impact)
    assert found.months == [] and found.total.count == 0 and figures.coins_saved(ro) == 0
    assert figures.sales(ro, "day", None, None) == []
    assert [e.kind for e in figures.events(ro)] == ["ledger_created"]


def test_a_collection_empties_the_cash_box_and_is_reported(
    books: Ledger, wall: Wall, ro: Database, config: Config
) -> None:
    pay(books, wall, "2026-03-02 09:00", 1, 2, 2, 5)
    full = figures.cashbox(ro, config.cashbox)
    assert full.coins == {1: 1, 2: 2, 5: 1} and full.value_cents == 10
    assert full.since == "2026-03-02T09:00:00.000Z" and full.last_collection is None
    wall.at = utc("2026-03-03 18:30")
    books.collect(9, ALICE)
    empty = figures.cashbox(ro, config.cashbox)
    assert (empty.coins, empty.value_cents, empty.mass_g, empty.volume_ml) == ({}, 0, 0.0, 0.0)
    assert empty.since == "2026-03-03T18:30:00.000Z"
    assert empty.last_collection == figures.LastCollection(
        "2026-03-03T18:30:00.000Z", "alice", {1: 1, 2: 2, 5: 1}, 10, 9
    )
    assert empty.last_collection.difference_cents == -1
    pay(books, wall, "2026-03-04 08:00", 5)
    wall.at = utc("2026-03-05 08:00")
    books.collect(None, ALICE)
    last = figures.cashbox(ro, config.cashbox).last_collection
    assert last is not None and last.coins == {5: 1}  # only what came in since the first one
    assert (last.expected_cents, last.counted_cents, last.difference_cents) == (5, None, None)


def test_cash_box_volume_matches_the_reference_coins_per_litre(
    books: Ledger, wall: Wall, ro: Database
) -> None:
    # The reference's loose figures: about 1730, 1300 and 1010 coins per litre.
    pay(books, wall, "2026-03-02 09:00", *[1] * 173, *[2] * 130, *[5] * 101)
    box = figures.cashbox(ro, CashboxSection(capacity_ml=250.0))
    assert box.volume_ml == pytest.approx(300.0, rel=0.01)
    assert box.mass_g == pytest.approx(173 * 2.30 + 130 * 3.06 + 101 * 3.92, abs=1e-9)
    assert box.fill == pytest.approx(box.volume_ml / 250.0, abs=1e-4) and box.fill > 1.0


def test_a_coin_with_no_known_physics_counts_for_value_only(
    books: Ledger, wall: Wall, ro: Database, config: Config
) -> None:
    pay(books, wall, "2026-03-02 09:00", 1, 100)
    box = figures.cashbox(ro, config.cashbox)
    assert box.value_cents == 101 and box.unweighed == (100,)
    assert box.mass_g == 2.30 and box.volume_ml == pytest.approx(loose_ml({1: 1}), abs=0.05)
    total = figures.impact(ro, config.impact).total
    assert total.coins[100].mass_g is None and total.unweighed == (100,)
    assert total.mass_g == 2.30 and total.value_cents == 101


def test_faults_active_and_their_history_newest_first(
    books: Ledger, wall: Wall, ro: Database
) -> None:
    moments = iter(f"2026-03-02 10:0{n}" for n in range(10))
    for write in (
        lambda: books.set_fault(Fault("slot_3", "no_drop", "", "no drop after 2 turns", 3)),
        lambda: books.set_fault(Fault("slot_1", "jammed", "", "not home after 8 s", 1)),
        lambda: books.set_fault(Fault("drop_sensor", "blocked", "", "beam cut", None)),
        lambda: books.record_event("door_opened", by=ALICE, device="door"),
        lambda: books.clear_fault("drop_sensor", "blocked", "beam clear"),
        lambda: books.set_fault(Fault("coin_acceptor", "lost", "", "no answer", None)),
        lambda: books.clear_faults("slot_1", None, ALICE),
    ):
        wall.at = utc(next(moments))
        write()
    report = figures.faults(ro)
    assert [(f.device, f.code, f.since, f.slot) for f in report.active] == [
        ("slot_3", "no_drop", "2026-03-02T10:00:00.000Z", 3),  # oldest first
        ("coin_acceptor", "lost", "2026-03-02T10:05:00.000Z", None),
    ]
    assert [(e.kind, e.device, e.code, e.actor, e.origin) for e in report.recent] == [
        ("fault_cleared", "slot_1", "jammed", "alice", "cli"),
        ("fault", "coin_acceptor", "lost", "kiosk", "kiosk"),
        ("fault_cleared", "drop_sensor", "blocked", "kiosk", "kiosk"),
        ("fault", "drop_sensor", "blocked", "kiosk", "kiosk"),
        ("fault", "slot_1", "jammed", "kiosk", "kiosk"),
        ("fault", "slot_3", "no_drop", "kiosk", "kiosk"),
    ]
    assert report.recent[-2].slot == 1 and report.recent[-2].detail == "not home after 8 s"
    assert [e.code for e in figures.faults(ro, recent=2).recent] == ["jammed", "lost"]


def test_events_newest_in_order_and_after_an_id(books: Ledger, wall: Wall, ro: Database) -> None:
    for n in range(6):
        wall.at = utc(f"2026-03-02 11:0{n}")
        books.record_event("note", f"note {n}", by=ALICE)
    every = [e.id for e in figures.events(ro, limit=100)]
    assert every == sorted(every) and len(every) == 7  # with the ledger's creation
    newest = figures.events(ro, limit=3)
    assert [e.detail for e in newest] == ["note 3", "note 4", "note 5"]
    assert [e.detail for e in figures.events(ro, after_id=newest[0].id)] == ["note 4", "note 5"]
    assert figures.events(ro, after_id=every[-1]) == []
    books.record_event("note", "note 6")
    assert [e.detail for e in figures.events(ro, after_id=every[-1])] == ["note 6"]
    first = figures.events(ro, limit=1)[0]
    assert (first.kind, first.actor, first.origin, first.at) == (
        "note",
        "kiosk",
        "kiosk",
        "2026-03-02T11:05:00.000Z",
    )


def test_json_is_plain_data_with_string_denominations(
    week: Ledger, wall: Wall, ro: Database, config: Config
) -> None:
    wall.at = utc("2026-03-09 08:00")
    week.collect(75, ALICE)
    pay(week, wall, "2026-03-09 09:00", 1, 2, 2)
    stock = json.loads(json.dumps([r.as_json() for r in figures.stock(ro)]))
    assert stock[0]["slot"] == 1 and stock[0]["quantity"] == 10 and stock[0]["price_cents"] == 20
    assert stock[0]["product"] == "Crème brûlée" and stock[0]["fault"] is None
    box = json.loads(json.dumps(figures.cashbox(ro, config.cashbox).as_json()))
    assert box["coins"] == {"1": 1, "2": 2} and box["value_cents"] == 5
    assert box["last_collection"]["coins"] == {"5": 15}
    assert box["last_collection"]["difference_cents"] == 0
    found = json.loads(json.dumps(figures.impact(ro, config.impact).as_json()))
    assert found["total"]["coins"]["1"] == {
        "count": 1,
        "value_cents": 1,
        "mass_g": 2.3,
        "mint_cost_avoided_cents": 4.0,
    }
    assert found["total"]["value_cents"] == 80 and found["months"][0]["period"] == "2026-03"
    sales = [r.as_json() for r in figures.sales(ro, "day", None, None)]
    assert sales[0] == {"key": "2026-03-02", "count": 2, "value_cents": 30}
    events = [e.as_json() for e in figures.events(ro, limit=1)]
    assert set(events[0]) == {
        "id",
        "at",
        "kind",
        "device",
        "code",
        "slot",
        "detail",
        "actor",
        "origin",
    }
    assert json.loads(json.dumps(figures.faults(ro).as_json())) == {"active": [], "recent": []}
