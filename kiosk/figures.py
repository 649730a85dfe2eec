"""The technician's figures, read from the ledger: stock, cash box, sales, impact, faults, events.

Pure reads over a `sqlite_utils.Database` the caller opened (read-only for the CLI); nothing here
writes. Each figure is a frozen dataclass with `as_json()` giving plain JSON data: money in integer
cents, masses in grams, volumes in millilitres, a denomination map keyed by the value in cents as a
string ({"1": 120, "5": 30}). Rendering as text is kiosk/tables.py's.

Times are the ledger's UTC ISO-8601 text; a sale's day and hour are its UTC ones. The coin physics
(mass and volume per denomination) live in the one table below; a coin with no entry there counts
for value and is listed as unweighed rather than given a guessed mass.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

from sqlite_utils import Database

from kiosk.config import CashboxSection, ImpactSection
from kiosk.ledger_base import SlotState, cashbox_coins, read_slots
from kiosk.upkeep import Collection


@dataclass(frozen=True)
class CoinPhysics:
    diameter_mm: float
    thickness_mm: float
    mass_g: float

    @property
    def volume_ml(self) -> float:
        """A plain cylinder, ignoring rim and relief."""
        return math.pi * (self.diameter_mm / 2) ** 2 * self.thickness_mm / 1000


# EU Council Regulation 975/98, as summarised in shared/reference/pulse-and-dispensers.md §3.1.
COIN_PHYSICS: dict[int, CoinPhysics] = {
    1: CoinPhysics(16.25, 1.67, 2.30),
    2: CoinPhysics(18.75, 1.67, 3.06),
    5: CoinPhysics(21.25, 1.67, 3.92),
    10: CoinPhysics(19.75, 1.93, 4.10),
    20: CoinPhysics(22.25, 2.14, 5.74),
    50: CoinPhysics(24.25, 2.38, 7.80),
}
# Coins poured loose fill about 0.6 of the space they take: an assumption (same reference, §3.2),
# to be calibrated by filling the real cash box.
LOOSE_PACKING = 0.6
SALES_BY = ("day", "product", "hour")


def _denominations(counts: dict[int, int]) -> dict[str, int]:
    return {str(value): count for value, count in sorted(counts.items())}


def coins_mass_g(value_cents: int, count: int) -> float | None:
    """The mass of `count` coins of `value_cents`, to the centigram; None when none is known."""
    physics = COIN_PHYSICS.get(value_cents)
    return None if physics is None else round(count * physics.mass_g, 2)


def _mass_g(counts: dict[int, int]) -> float:
    """The mass of the coins whose physics is known."""
    return round(sum(coins_mass_g(v, n) or 0.0 for v, n in counts.items()), 2)


def _unweighed(counts: dict[int, int]) -> tuple[int, ...]:
    return tuple(sorted(v for v, n in counts.items() if n and v not in COIN_PHYSICS))


# --- stock -------------------------------------------------------------------------------------


StockRow = SlotState  # one slot's line: product, price, quantity, capacity, on sale, fault


def stock(db: Database) -> list[StockRow]:
    return list(read_slots(db).values())


# --- the cash box ------------------------------------------------------------------------------


LastCollection = Collection  # the last emptying of the cash box


@dataclass(frozen=True)
class Cashbox:
    coins: dict[int, int]  # denomination in cents -> count now in the box
    value_cents: int
    mass_g: float  # of the coins whose physics is known
    volume_ml: float  # loose, estimated from the coin volumes
    capacity_ml: float
    fill: float  # volume_ml / capacity_ml: 1.0 is full, more is overfull
    unweighed: tuple[int, ...]  # denominations in the box with no known mass or volume
    since: str | None  # the last collection, or the first coin ever
    last_collection: LastCollection | None

    @property
    def count(self) -> int:
        return sum(self.coins.values())

    def as_json(self) -> dict[str, Any]:
        last = self.last_collection
        return {
            "coins": _denominations(self.coins),
            "count": self.count,
            "value_cents": self.value_cents,
            "mass_g": self.mass_g,
            "volume_ml": self.volume_ml,
            "capacity_ml": self.capacity_ml,
            "fill": self.fill,
            "unweighed": list(self.unweighed),
            "since": self.since,
            "last_collection": None if last is None else last.as_json(),
        }


def cashbox(db: Database, section: CashboxSection) -> Cashbox:
    coins = cashbox_coins(db)
    solid_ml = sum(n * COIN_PHYSICS[v].volume_ml for v, n in coins.items() if v in COIN_PHYSICS)
    volume_ml = solid_ml / LOOSE_PACKING
    last = _last_collection(db)
    first_coin = db.execute("SELECT at FROM coins ORDER BY id LIMIT 1").fetchone()
    since = last.at if last is not None else (first_coin[0] if first_coin else None)
    return Cashbox(
        coins=coins,
        value_cents=sum(v * n for v, n in coins.items()),
        mass_g=_mass_g(coins),
        volume_ml=round(volume_ml, 1),
        capacity_ml=section.capacity_ml,
        fill=round(volume_ml / section.capacity_ml, 4),
        unweighed=_unweighed(coins),
        since=since,
        last_collection=last,
    )


def _last_collection(db: Database) -> LastCollection | None:
    rows = db.execute(
        "SELECT at, actor, expected_cents, counted_cents, last_coin_id FROM collections "
        "ORDER BY id DESC LIMIT 2"
    ).fetchall()
    if not rows:
        return None
    at, actor, expected, counted, last_coin = rows[0]
    after_coin = rows[1][4] if len(rows) > 1 else 0
    # The box held the coins accepted between the two collections: the ledger keeps no other
    # per-denomination record of what was taken out.
    coins = dict(
        db.execute(
            "SELECT value_cents, count(*) FROM coins WHERE id > ? AND id <= ? "
            "GROUP BY value_cents ORDER BY value_cents",
            [after_coin, last_coin],
        ).fetchall()
    )
    return LastCollection(at, actor, coins, expected, counted)


# --- sales -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SalesRow:
    key: str  # YYYY-MM-DD, a product name, or an hour "00".."23"
    count: int
    value_cents: int

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "count": self.count, "value_cents": self.value_cents}


_SALES_KEYS = {"day": "substr(at, 1, 10)", "product": "product", "hour": "substr(at, 12, 2)"}


def sales(
    db: Database, by: str, since: date | None = None, until: date | None = None
) -> list[SalesRow]:
    """Sales counted by UTC day, product or UTC hour, between `since` and `until` (inclusive
    dates, either open). By day, every day from `since` (else the first sale's) to `until`
    (else the last sale's) has a row, those without a sale at 0; by hour, all 24 hours have one;
    by product, the products sold, best seller first."""
    if by not in SALES_BY:
        raise ValueError(f"sales by {by!r}: by one of {', '.join(SALES_BY)}")
    if since is not None and until is not None and since > until:
        raise ValueError(f"sales since {since} until {until}: the range ends before it starts")
    where, params = [], []
    if since is not None:
        where.append("substr(at, 1, 10) >= ?")
        params.append(since.isoformat())
    if until is not None:
        where.append("substr(at, 1, 10) <= ?")
        params.append(until.isoformat())
    key = _SALES_KEYS[by]
    found = {
        k: SalesRow(k, n, cents)
        for k, n, cents in db.execute(
            f"SELECT {key}, count(*), sum(price_cents) FROM sales "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} GROUP BY {key}",
            params,
        )
    }
    if by == "product":
        return sorted(found.values(), key=lambda r: (-r.count, -r.value_cents, r.key))
    if by == "hour":
        keys = [f"{hour:02d}" for hour in range(24)]
    else:
        days = [date.fromisoformat(k) for k in found]
        first, last = since or min(days, default=None), until or max(days, default=None)
        if first is None or last is None:
            return []
        keys = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    return [found.get(k, SalesRow(k, 0, 0)) for k in keys]


# --- impact ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoinImpact:
    count: int
    value_cents: int
    mass_g: float | None  # None: no known mass for this denomination
    mint_cost_avoided_cents: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Donations:
    count: int
    amount_cents: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImpactPeriod:
    period: str  # "all" or YYYY-MM
    coins: dict[int, CoinImpact]  # denomination in cents -> what its coins amount to
    donations: dict[str, Donations]  # beneficiary -> donations
    unweighed: tuple[int, ...]  # denominations left out of mass_g

    @property
    def count(self) -> int:
        return sum(c.count for c in self.coins.values())

    @property
    def value_cents(self) -> int:
        return sum(c.value_cents for c in self.coins.values())

    @property
    def mass_g(self) -> float:
        return round(sum(c.mass_g or 0.0 for c in self.coins.values()), 2)

    @property
    def mint_cost_avoided_cents(self) -> float:
        return round(sum(c.mint_cost_avoided_cents for c in self.coins.values()), 2)

    @property
    def donated_cents(self) -> int:
        return sum(d.amount_cents for d in self.donations.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "coins": {str(v): c.as_json() for v, c in sorted(self.coins.items())},
            "count": self.count,
            "value_cents": self.value_cents,
            "mass_g": self.mass_g,
            "unweighed": list(self.unweighed),
            "mint_cost_avoided_cents": self.mint_cost_avoided_cents,
            "donations": {b: d.as_json() for b, d in sorted(self.donations.items())},
            "donated_cents": self.donated_cents,
        }


@dataclass(frozen=True)
class Impact:
    total: ImpactPeriod
    months: list[ImpactPeriod]  # oldest first, every month from the first coin or donation

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total.as_json(), "months": [m.as_json() for m in self.months]}


_COINS_BY = "SELECT {period}, value_cents, count(*) FROM coins GROUP BY 1, 2"
_DONATIONS_BY = (
    "SELECT {period}, beneficiary, count(*), sum(amount_cents) FROM donations GROUP BY 1, 2"
)


def impact(db: Database, section: ImpactSection) -> Impact:
    """Coins taken out of circulation (every coin ever accepted: none goes back), their mass and
    the minting cost they save, and the donations, over all time and per UTC month."""
    found: dict[str, tuple[dict[int, int], dict[str, Donations]]] = defaultdict(lambda: ({}, {}))
    for period in ("'all'", "substr(at, 1, 7)"):
        for key, value, count in db.execute(_COINS_BY.format(period=period)):
            found[key][0][value] = count
        for key, beneficiary, count, cents in db.execute(_DONATIONS_BY.format(period=period)):
            found[key][1][beneficiary] = Donations(count, cents)
    total = _period("all", *found.pop("all", ({}, {})), section)
    months = [_period(month, *found[month], section) for month in _months(set(found))]
    return Impact(total, months)


def _period(
    period: str, counts: dict[int, int], given: dict[str, Donations], section: ImpactSection
) -> ImpactPeriod:
    per_coin = {
        value: CoinImpact(
            count=count,
            value_cents=value * count,
            mass_g=coins_mass_g(value, count),
            mint_cost_avoided_cents=round(count * section.mint_cost_cents.get(value, 0.0), 2),
        )
        for value, count in sorted(counts.items())
    }
    return ImpactPeriod(period, per_coin, dict(sorted(given.items())), _unweighed(counts))


def _months(seen: set[str]) -> list[str]:
    """Every month from the first to the last seen, so a quiet month shows as one."""
    if not seen:
        return []
    year, month = map(int, min(seen).split("-"))
    last = max(seen)
    out = []
    while (key := f"{year:04d}-{month:02d}") <= last:
        out.append(key)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def coins_saved(db: Database) -> int:
    """Every coin ever accepted: each one is out of circulation for good."""
    return int(db.execute("SELECT count(*) FROM coins").fetchone()[0])


# --- faults and events -------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveFault:
    device: str
    code: str
    since: str
    detail: str
    slot: int | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EventRow:
    id: int
    at: str
    kind: str
    device: str | None
    code: str | None
    slot: int | None
    detail: str
    actor: str
    origin: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultsReport:
    active: list[ActiveFault]  # oldest first
    recent: list[EventRow]  # fault and fault_cleared events, newest first

    def as_json(self) -> dict[str, Any]:
        return {
            "active": [f.as_json() for f in self.active],
            "recent": [e.as_json() for e in self.recent],
        }


_EVENT_COLUMNS = "id, at, kind, device, code, slot, detail, actor, origin"


def faults(db: Database, recent: int = 20) -> FaultsReport:
    active = [
        ActiveFault(*row)
        for row in db.execute(
            "SELECT device, code, since, detail, slot FROM faults ORDER BY since, device, code"
        )
    ]
    history = [
        EventRow(*row)
        for row in db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE kind IN ('fault', 'fault_cleared') "
            "ORDER BY id DESC LIMIT ?",
            [max(recent, 0)],
        )
    ]
    return FaultsReport(active, history)


def events(db: Database, limit: int = 20, after_id: int | None = None) -> list[EventRow]:
    """Events oldest first: the newest `limit`, or with `after_id` every one after it (what a
    follower polling with the last id it saw has not seen yet; `limit` does not apply)."""
    if after_id is not None:
        rows = db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id", [after_id]
        ).fetchall()
    else:
        rows = db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", [max(limit, 0)]
        ).fetchall()[::-1]
    return [EventRow(*row) for row in rows]
