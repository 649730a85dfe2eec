"""The outbox without a broker: each record and its message in one transaction, seq contiguous
and never reused, the marks of acknowledged rows kept apart with a watermark, pruning only what
was sent, and remote commands read and checked before they reach the core."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scenarios import buy, pay, service_visit

from kiosk import outbox, snapshots, telemetry
from kiosk.errors import Refused
from kiosk.ledger import Actor, Ledger
from kiosk.requests import Request
from sim.rig import SimKiosk

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
BY = Actor("alice", "cli")


def rows(kiosk: SimKiosk) -> list[outbox.Row]:
    return outbox.rows_after(kiosk.ledger.db, 0, 10_000)


def test_a_sale_and_its_message_commit_together(kiosk: SimKiosk) -> None:
    pay(kiosk, 5, 5, 5, 5, 2)
    buy(kiosk, 1)
    [sale] = [r for r in rows(kiosk) if r.kind == "sale"]
    db_sale = kiosk.ledger.db.execute("SELECT id, vend_id, price_cents FROM sales").fetchone()
    assert (sale.body["sale_id"], sale.body["vend_id"], sale.body["price_cents"]) == db_sale
    assert sale.body["credit_left_cents"] == 2
    message = sale.message("sim-001", historical=False)
    assert json.loads(sale.message_json("sim-001", historical=False)) == message
    assert message["seq"] == sale.seq and message["kind"] == "sale"
    assert message["boot_id"] == kiosk.ledger.boot_id


def test_failed_vends_faults_and_service_visits_are_streamed(kiosk: SimKiosk) -> None:
    kiosk.world.jam(2)
    pay(kiosk, 5, 5)
    buy(kiosk, 2, wait_s=30)
    service_visit(kiosk)
    kinds = [r.kind for r in rows(kiosk)]
    assert "vend_failed" in kinds and "fault" in kinds and "service" in kinds
    [failed] = [r for r in rows(kiosk) if r.kind == "vend_failed"]
    assert failed.body["outcome"] == "jammed" and failed.body["charged"] is False
    faults = [r.body for r in rows(kiosk) if r.kind == "fault"]
    assert [f["active"] for f in faults] == [True, False]  # raised, then cleared by the visit
    actions = [r.body["action"] for r in rows(kiosk) if r.kind == "service"]
    assert actions[0] == "door_opened" and actions[-1] == "door_closed"


@pytest.fixture
def books(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "k.db", lambda: NOW)
    ledger.boot("k1")
    yield ledger
    ledger.close()


def test_seq_is_contiguous_and_never_reused(books: Ledger) -> None:
    books.set_service_mode(True, BY)
    books.set_service_mode(False, BY)
    first = [r.seq for r in outbox.rows_after(books.db, 0, 100)]
    assert first == list(range(1, len(first) + 1)) and len(first) >= 2
    with books.db.conn:
        books.db.execute("DELETE FROM outbox")  # as pruning would
    books.set_service_mode(True, BY)
    assert outbox.rows_after(books.db, 0, 100)[0].seq == first[-1] + 1


def test_a_write_that_fails_leaves_no_message(books: Ledger) -> None:
    before = outbox.rows_after(books.db, 0, 100)
    with pytest.raises(Refused):
        books.refill(1, 1, BY)  # no such slot: refused inside the transaction
    assert outbox.rows_after(books.db, 0, 100) == before


@given(
    body=st.dictionaries(st.text(min_size=1), st.integers() | st.text() | st.booleans()),
    kiosk_id=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    historical=st.booleans(),
    seq=st.integers(min_value=1, max_value=2**62),
)
def test_a_message_spliced_as_text_is_the_message(
    body: dict[str, Any], kiosk_id: str, historical: bool, seq: int
) -> None:
    row = outbox.Row(
        seq, str(uuid.uuid4()), "sale", json.dumps(body, ensure_ascii=False),
        "2026-12-02T06:30:00.123Z", str(uuid.uuid4()),
    )  # fmt: skip
    text = row.message_json(kiosk_id, historical=historical)
    assert json.loads(text) == row.message(kiosk_id, historical=historical)


def test_marks_keep_a_watermark_over_acks_out_of_order(tmp_path: Path) -> None:
    marks = outbox.Marks(tmp_path / "k.db", "L1")
    for seq in (2, 3, 1, 5):
        marks.acked(seq)
    assert marks.watermark == 3 and marks.done(5) and not marks.done(4)
    marks.close()
    again = outbox.Marks(tmp_path / "k.db", "L1")  # after a restart
    assert again.watermark == 3 and again.done(5) and not again.done(4)
    again.acked(4)
    assert outbox.read_marks(tmp_path / "k.db", "L1") == (3, {5})  # written at the flush
    again.flush()
    assert again.watermark == 5 and outbox.read_marks(tmp_path / "k.db", "L1") == (5, set())
    again.close()
    other = outbox.Marks(tmp_path / "k.db", "L2")  # a new ledger beside old marks: reset
    assert other.watermark == 0 and not other.done(1)
    other.close()
    outbox.marks_path(tmp_path / "k.db").write_bytes(b"not a database at all" * 100)
    damaged = outbox.Marks(tmp_path / "k.db", "L2")  # set aside: everything sent again
    assert damaged.watermark == 0
    damaged.close()


def test_the_publisher_reads_ahead_and_sends_each_row_once(books: Ledger) -> None:
    """Rows read a hundred at a time are handed out in seq order, a window at a time; a row
    paho could not take rewinds the cursor (read again), a refused row comes back after its
    delay, and rows written meanwhile follow on."""
    for n in range(telemetry.READ_AHEAD + 30):
        books.set_service_mode(n % 2 == 0, BY)  # one outbox row each
    ledger_id = outbox.ledger_id(books.db)
    assert ledger_id is not None
    marks = outbox.Marks(books.path, ledger_id)
    link = telemetry._Link(marks)
    handed: list[int] = []
    with outbox.reading(books.path) as reader:
        first = [row.seq for row in link.due(reader, 7)]
        assert first == list(range(1, 8))
        link.not_sent(5)  # paho's queue was full from seq 5 on
        link.refused(3)  # and the broker refused seq 3: not before its delay
        handed += [1, 2, 4]
        while rows := link.due(reader, 7):
            handed += [row.seq for row in rows]
            if len(handed) == telemetry.READ_AHEAD:
                books.set_service_mode(True, BY)  # written while the backlog drains
        link.retry[3] = (0.0, link.retry[3][1])  # its delay is over
        handed += [row.seq for row in link.due(reader, 7)]
    last = books.db.execute("SELECT max(seq) FROM outbox").fetchone()[0]
    assert sorted(handed) == list(range(1, last + 1)) and handed[-1] == 3
    marks.close()


def test_only_sent_rows_are_pruned(books: Ledger, tmp_path: Path) -> None:
    for on in (True, False, True):
        books.set_service_mode(on, BY)
    ledger_id = outbox.ledger_id(books.db)
    assert ledger_id is not None
    marks = outbox.Marks(books.path, ledger_id)
    marks.acked(1)
    marks.close()
    later = Ledger(books.path, lambda: NOW + timedelta(days=40))
    assert later.prune_outbox(30) == 1
    assert outbox.rows_after(later.db, 0, 100)[0].seq == 2
    later.close()


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("set_price", b'{"cmd_id": "a", "slot": 1, "price_cents": 20.5}', "not whole cents"),
        ("set_price", b'{"cmd_id": "a", "slot": 1, "price_cents": -3}', "out of range"),
        ("set_price", b'{"cmd_id": "a", "slot": 1}', "price_cents is missing"),
        ("set_price", b'{"cmd_id": "a", "slot": "one", "price_cents": 20}', "whole number"),
        ("slot_enable", b'{"cmd_id": "a", "slot": 1, "extra": 1}', "unknown argument extra"),
        ("launch", b'{"cmd_id": "a"}', "unknown command"),
        ("refresh", b"{nope", "not JSON"),
        ("refresh", b"[]", "a JSON object"),
        ("refresh", b'{"cmd_id": 5}', "cmd_id"),
        ("refresh", b'{"cmd_id": "' + b"x" * 5000 + b'"}', "longer than 4096"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(name: str, payload: bytes, reason: str) -> None:
    read = snapshots.read_command(name, payload)
    assert read.request is None and read.refusal is not None and reason in read.refusal


def test_good_commands_become_requests() -> None:
    read = snapshots.read_command("slot_disable", b'{"cmd_id": "c-1", "slot": 2}')
    assert read.cmd_id == "c-1" and read.request == Request("slot", {"slot": 2, "enabled": False})
    read = snapshots.read_command("service_on", b'{"cmd_id": "c-2"}')
    assert read.request == Request("service", {"on": True})


@given(st.sampled_from([*sorted(snapshots.REMOTE), "x"]), st.binary(max_size=300))
def test_no_payload_gets_past_the_checks_unread(name: str, payload: bytes) -> None:
    read = snapshots.read_command(name, payload)
    assert (read.request is None) != (read.refusal is None)
