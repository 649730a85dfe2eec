"""The ledger: connection settings, migrations, one transaction per write, and the invariant
checks catching each kind of tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kiosk import reports
from kiosk.config import Config
from kiosk.errors import LedgerError
from kiosk.ledger import Actor, Ledger
from kiosk.ledger_base import CORE_BUSY_TIMEOUT_MS, cashbox_coins
from kiosk.migrations import MIGRATIONS
from kiosk.schema import connect
from sim.clock import SimClock

TECH = Actor("technician", "panel")


@pytest.fixture
def books(ledger: Ledger, config: Config) -> Ledger:
    ledger.boot(config.kiosk.id)
    ledger.sync_slots(config.slots)
    return ledger


def failed(db_path: Path) -> dict[str, list[str]]:
    db = connect(db_path, read_only=True)
    try:
        return {c.name: c.differences for c in reports.verify(db) if not c.ok}
    finally:
        db.close()


def test_every_connection_is_durable(books: Ledger, db_path: Path) -> None:
    for db, busy_ms in ((books.db, CORE_BUSY_TIMEOUT_MS), (connect(db_path), 5000)):
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == busy_ms


def test_migrations_are_recorded_once(books: Ledger, db_path: Path, clock: SimClock) -> None:
    versions = [r[0] for r in books.db.execute("SELECT version FROM migrations")]
    assert versions == [v for v, _, _ in MIGRATIONS]
    again = Ledger(db_path, clock.wall)
    try:
        assert [r[0] for r in again.db.execute("SELECT version FROM migrations")] == versions
        assert again.boot("sim-001") == 2
    finally:
        again.close()


def test_a_ledger_belongs_to_one_kiosk(books: Ledger) -> None:
    with pytest.raises(LedgerError, match="belongs to kiosk sim-001"):
        books.boot("other-kiosk")


def test_a_newer_schema_is_refused(books: Ledger, db_path: Path, clock: SimClock) -> None:
    books.db.execute("INSERT INTO migrations VALUES (99, 'future', '2030-01-01')")
    with pytest.raises(LedgerError, match="newer"):
        Ledger(db_path, clock.wall)


def test_a_coin_and_its_credit_commit_together(books: Ledger) -> None:
    assert books.record_coin(5) == 5
    assert books.record_coin(2) == 7
    assert books.db.execute("SELECT count(*) FROM credit_sessions").fetchone()[0] == 1
    assert cashbox_coins(books.db) == {2: 1, 5: 1}
    books.collect(None, TECH)
    books.record_coin(1)
    assert cashbox_coins(books.db) == {1: 1}


def test_a_failing_write_leaves_nothing_behind(books: Ledger) -> None:
    books.record_coin(5)
    # A trigger makes the credit step of the next coin fail after its coin row was inserted.
    books.db.execute(
        "CREATE TRIGGER boom BEFORE UPDATE ON credit_sessions "
        "BEGIN SELECT RAISE(ABORT, 'disk'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk"):  # not storage: no retry
        books.record_coin(5)
    assert books.db.execute("SELECT count(*) FROM coins").fetchone()[0] == 1
    assert books.credit_cents() == 5
    books.db.execute("DROP TRIGGER boom")
    books.db.execute("PRAGMA query_only = ON")  # a write the storage refuses is a LedgerError
    with pytest.raises(LedgerError, match="write failed"):
        books.record_coin(5)


def test_a_sale_debits_and_decrements_at_once(books: Ledger, db_path: Path) -> None:
    for _ in range(5):
        books.record_coin(5)
    vend = books.start_vend(1, 20)
    assert books.credit_cents() == 25  # held, not charged
    assert books.complete_sale(vend, "dropped") == 5
    assert books.slots()[1].quantity == 11
    assert failed(db_path) == {}


def test_a_vend_needs_the_credit(books: Ledger) -> None:
    books.record_coin(5)
    with pytest.raises(LedgerError, match="credit below 20 c"):
        books.start_vend(1, 20)


def test_a_failed_vend_charges_nothing_and_marks_the_slot(books: Ledger, db_path: Path) -> None:
    for _ in range(4):
        books.record_coin(5)
    vend = books.start_vend(1, 20)
    books.fail_vend(vend, "jammed", "not home", "jammed")
    assert books.credit_cents() == 20
    assert books.slots()[1].fault == "jammed"
    assert not books.slots()[1].sellable
    assert failed(db_path) == {}
    [cleared] = books.close_door(TECH)
    assert (cleared.device, cleared.code, cleared.slot) == ("slot_1", "jammed", 1)
    assert books.slots()[1].sellable
    kinds = [r[0] for r in books.db.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds == ["ledger_created", "vend_failed", "fault", "door_closed", "fault_cleared"]


def test_donation_closes_the_credit(books: Ledger, db_path: Path) -> None:
    books.record_coin(2)
    assert books.donate("Restos") == 2
    assert books.donate("Restos") == 0
    assert books.credit_cents() == 0
    assert failed(db_path) == {}


def test_interrupted_vends_are_resolved_without_charge(books: Ledger, db_path: Path) -> None:
    for _ in range(4):
        books.record_coin(5)
    vend = books.start_vend(2, 10)
    [found] = books.resolve_interrupted_vends()
    assert (found.vend_id, found.slot) == (vend, 2)
    assert books.credit_cents() == 20
    assert books.slots()[2].needs_recount
    assert books.resolve_interrupted_vends() == []
    assert failed(db_path) == {}


def test_slot_changes_in_the_config_are_followed_and_recorded(
    books: Ledger, config: Config
) -> None:
    import dataclasses

    cheaper = dataclasses.replace(config.slots[0], price_cents=18)
    books.sync_slots((cheaper, *config.slots[1:]))
    assert books.slots()[1].price_cents == 18
    detail = books.db.execute("SELECT detail FROM events WHERE kind = 'slot_changed'").fetchone()[0]
    assert detail == "price_cents 20 -> 18 (profile)"


def test_refills_keep_the_stock_invariant(books: Ledger, db_path: Path) -> None:
    for _ in range(4):
        books.record_coin(5)
    books.complete_sale(books.start_vend(1, 20), "dropped")
    assert books.refill(1, 2, TECH, capped=True) == 1  # one fits: the spiral holds 12
    assert books.slots()[1].quantity == 12
    capped = books.db.execute("SELECT detail FROM events WHERE kind = 'refill_capped'")
    assert capped.fetchone()[0] == "2 asked, 1 fit (capacity 12)"
    assert failed(db_path) == {}


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        ("UPDATE coins SET value_cents = 2 WHERE id = 1", "money"),
        ("UPDATE credit_sessions SET balance_cents = balance_cents + 1", "money"),
        ("UPDATE collections SET expected_cents = expected_cents + 1", "cash box"),
        ("UPDATE collections SET last_coin_id = 99", "cash box"),
        ("UPDATE stock SET quantity = quantity - 1 WHERE slot = 1", "stock"),
        ("DELETE FROM sales", "money"),
    ],
)
def test_verify_catches_tampering(books: Ledger, db_path: Path, tamper: str, check: str) -> None:
    for _ in range(5):
        books.record_coin(5)
    books.complete_sale(books.start_vend(1, 20), "dropped")
    books.collect(None, TECH)
    books.record_coin(2)
    assert failed(db_path) == {}
    books.db.execute("PRAGMA foreign_keys=OFF")
    with sqlite3.connect(db_path) as conn:
        conn.execute(tamper)
    assert check in failed(db_path)


def test_verify_reads_each_table_once_not_once_per_session(books: Ledger, db_path: Path) -> None:
    plan = [row[3] for row in books.db.execute("EXPLAIN QUERY PLAN " + reports.SESSION_BALANCES)]
    assert not [step for step in plan if "CORRELATED" in step], plan
    assert sum("SCAN coins" in step for step in plan) == 1, plan


def test_verify_names_the_session_whose_balance_is_off(books: Ledger, db_path: Path) -> None:
    books.record_coin(5)
    books.record_coin(2)
    books.complete_sale(books.start_vend(2, 7), "dropped")  # a session without donations
    books.record_coin(1)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE coins SET session_id = 1 WHERE id = 3")  # the new session's coin
    money = failed(db_path)["money"]
    assert any(line.startswith("credit session 1: coins 8 - sales 7") for line in money), money
