"""Read-only views of the ledger: the invariant checks behind `kiosk verify`, and totals.

Invariants:
- money: coins accepted = sales + donations + open credit, and every credit session's balance
  equals its coins less its sales and donations;
- cash box: each collection took out what the coins accepted since the one before add up to,
  and no collection stands after a coin that is not in the ledger (the cash box itself is the
  coins since the last collection: kiosk.ledger_base.cashbox_coins);
- stock: per slot, last count + refills since - sales and test vends delivered since = stock
  now, never below zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database


@dataclass
class Check:
    name: str
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _scalar(db: Database, sql: str, params: Any = ()) -> int:
    return int(db.execute(sql, params).fetchone()[0] or 0)


# Each table summed per session once, then joined: a subquery per session would scan the coins
# once per session (no index on session_id), and take hours on a ledger of a few years.
SESSION_BALANCES = """
    SELECT s.id, s.balance_cents, s.closed_at,
        coalesce(c.paid, 0), coalesce(x.spent, 0), coalesce(d.given, 0)
    FROM credit_sessions s
    LEFT JOIN (SELECT session_id, sum(value_cents) AS paid FROM coins GROUP BY session_id) c
        ON c.session_id = s.id
    LEFT JOIN (SELECT session_id, sum(price_cents) AS spent FROM sales GROUP BY session_id) x
        ON x.session_id = s.id
    LEFT JOIN (SELECT session_id, sum(amount_cents) AS given FROM donations GROUP BY session_id) d
        ON d.session_id = s.id
"""


def check_money(db: Database) -> Check:
    check = Check("money")
    coins = _scalar(db, "SELECT sum(value_cents) FROM coins")
    sales = _scalar(db, "SELECT sum(price_cents) FROM sales")
    donations = _scalar(db, "SELECT sum(amount_cents) FROM donations")
    open_credit = _scalar(db, "SELECT sum(balance_cents) FROM credit_sessions")
    if coins != sales + donations + open_credit:
        check.differences.append(
            f"coins {coins} c != sales {sales} c + donations {donations} c "
            f"+ open credit {open_credit} c"
        )
    rows = db.execute(SESSION_BALANCES)
    for session, balance, closed_at, paid, spent, given in rows:
        if paid - spent - given != balance:
            check.differences.append(
                f"credit session {session}: coins {paid} - sales {spent} - donations {given} "
                f"!= balance {balance}"
            )
        if closed_at is not None and balance != 0:
            check.differences.append(f"credit session {session}: closed with {balance} c left")
    open_sessions = _scalar(db, "SELECT count(*) FROM credit_sessions WHERE closed_at IS NULL")
    if open_sessions > 1:
        check.differences.append(f"{open_sessions} credit sessions open at once")
    return check


# Each collection with the coins between it and the one before, the coins read once.
COLLECTIONS = """
    WITH c AS (
        SELECT id, expected_cents, last_coin_id,
            coalesce(lag(last_coin_id) OVER (ORDER BY id), 0) AS after_coin
        FROM collections
    )
    SELECT c.id, c.expected_cents, c.after_coin, c.last_coin_id, coalesce(sum(k.value_cents), 0)
    FROM c LEFT JOIN coins k ON k.id > c.after_coin AND k.id <= c.last_coin_id
    GROUP BY c.id ORDER BY c.id
"""


def check_cashbox(db: Database) -> Check:
    check = Check("cash box")
    last_coin = _scalar(db, "SELECT max(id) FROM coins")
    for collection, expected, after_coin, upto, coins in db.execute(COLLECTIONS):
        if upto < after_coin or upto > last_coin:
            check.differences.append(
                f"collection {collection}: up to coin {upto}, after coin {after_coin} "
                f"(the ledger's last coin is {last_coin})"
            )
        elif expected != coins:
            check.differences.append(
                f"collection {collection}: {expected} c taken out, the coins accepted since the "
                f"collection before add up to {coins} c"
            )
    return check


def check_stock(db: Database) -> Check:
    check = Check("stock")
    for slot, quantity in db.execute("SELECT slot, quantity FROM stock ORDER BY slot"):
        last = db.execute(
            "SELECT id, quantity, last_sale_id, last_test_vend_id FROM stock_counts "
            "WHERE slot = ? AND kind = 'count' ORDER BY id DESC LIMIT 1",
            [slot],
        ).fetchone()
        if last is None:
            check.differences.append(f"slot {slot}: never counted")
            continue
        count_id, counted, last_sale, last_test = last
        refills = _scalar(
            db,
            "SELECT sum(quantity) FROM stock_counts WHERE slot = ? AND kind = 'refill' AND id > ?",
            [slot, count_id],
        )
        sold = _scalar(
            db, "SELECT count(*) FROM sales WHERE slot = ? AND id > ?", [slot, last_sale]
        ) + _scalar(
            db,
            "SELECT count(*) FROM test_vends WHERE slot = ? AND id > ? AND outcome = 'delivered'",
            [slot, last_test],
        )
        expected = counted + refills - sold
        if expected != quantity:
            check.differences.append(
                f"slot {slot}: count {counted} + refills {refills} - delivered {sold} "
                f"= {expected}, stock says {quantity}"
            )
        if quantity < 0:
            check.differences.append(f"slot {slot}: stock below zero ({quantity})")
    return check


def verify(db: Database) -> list[Check]:
    return [check_money(db), check_cashbox(db), check_stock(db)]


@dataclass(frozen=True)
class Totals:
    coins_by_value: dict[int, int]
    coins_merged: int  # read from merged pulse trains: denomination estimated
    coins_cents: int
    sales: int
    sales_cents: int
    donations: int
    donations_cents: int
    open_credit_cents: int
    vends_by_outcome: dict[str, int]
    events_by_kind: dict[str, int]


def totals(db: Database) -> Totals:
    coins = dict(
        db.execute("SELECT value_cents, count(*) FROM coins GROUP BY value_cents").fetchall()
    )
    return Totals(
        coins_by_value=coins,
        coins_merged=_scalar(db, "SELECT count(*) FROM coins WHERE merged"),
        coins_cents=sum(v * n for v, n in coins.items()),
        sales=_scalar(db, "SELECT count(*) FROM sales"),
        sales_cents=_scalar(db, "SELECT sum(price_cents) FROM sales"),
        donations=_scalar(db, "SELECT count(*) FROM donations"),
        donations_cents=_scalar(db, "SELECT sum(amount_cents) FROM donations"),
        open_credit_cents=_scalar(db, "SELECT sum(balance_cents) FROM credit_sessions"),
        vends_by_outcome=dict(
            db.execute("SELECT outcome, count(*) FROM vends GROUP BY outcome").fetchall()
        ),
        events_by_kind=dict(
            db.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall()
        ),
    )


def recent_events(db: Database, limit: int = 5) -> list[tuple[str, str, int | None, str]]:
    """The newest ledger lines of any kind (coins, sales, donations, events), newest first."""
    return [
        tuple(row)
        for row in db.execute(
            """
            SELECT at, what, slot, detail FROM (
                SELECT id, at, 'coin' AS what, NULL AS slot, value_cents || ' c' AS detail, 1 AS k
                    FROM coins
                UNION ALL SELECT id, at, 'sale', slot, product || ' ' || price_cents || ' c', 2
                    FROM sales
                UNION ALL SELECT id, at, 'donation', NULL, amount_cents || ' c', 3 FROM donations
                UNION ALL SELECT id, at, kind, slot, detail, 4 FROM events
            ) ORDER BY at DESC, k DESC, id DESC LIMIT ?
            """,
            [limit],
        )
    ]
