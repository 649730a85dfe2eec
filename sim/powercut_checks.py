"""What the power-cut harness looks at and what it concludes: the ledger read as the reports
read it (read-only, beside the running daemon), the dashboard's subscription to the kiosk's
events, the invariants checked after every restart, and the figures of a campaign.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.cctalk_device import OrderLink
from sim.powercut_world import replay

PHASES = ("burst", "ledger_write", "vend", "outbox")
SETTLE_S = 10.0  # ceiling for the ledger to catch up with what the acceptor reported
PRICES = {1: 10, 2: 15, 3: 20}
CAPACITY = 200
CUT_TRAIN_S = 1.0  # a pulse coin this close to a kill may have been cut with its train


@dataclass
class Figures:
    cycles: int = 0
    coins: int = 0  # coins dropped into an acceptor
    kills: Counter[str] = field(default_factory=Counter)  # aimed at each phase
    mid_vend: int = 0  # kills that left a vend pending in the ledger
    unsent: int = 0  # kills that left outbox rows not yet acknowledged
    lost_by_device: int = 0  # credits fallen off the acceptor's buffer while the kiosk was down
    wiped_by_power_cycle: int = 0
    cut_trains: int = 0  # pulse coins in the cash box whose train the kill cut
    interrupted_vends: int = 0
    sales: int = 0
    first_229_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(value, Counter):
                mine.update(value)
            elif isinstance(value, list):
                mine.extend(value)
            else:
                setattr(self, name, mine + value)

    def report(self) -> str:
        kills = ", ".join(f"{p} {self.kills[p]}" for p in PHASES)
        lines = [
            f"cycles: {self.cycles}",
            f"coins: {self.coins}",
            f"kills: {kills}",
            f"kills mid-vend (a vend pending in the ledger): {self.mid_vend}",
            f"kills with outbox rows unacknowledged: {self.unsent}",
            f"coins lost by the device while the kiosk was down: {self.lost_by_device}",
            f"coins wiped unread by acceptor power cycles: {self.wiped_by_power_cycle}",
            f"pulse coins whose train the kill cut: {self.cut_trains}",
            f"sales: {self.sales}, interrupted vends: {self.interrupted_vends}",
        ]
        if self.first_229_s:
            p50, top = statistics.median(self.first_229_s), max(self.first_229_s)
            lines.append(f"start to first 229: p50 {p50:.3f} s, max {top:.3f} s")
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  {v}" for v in self.violations]
        return "\n".join(lines)


def wait_until(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)
    return True


class Ledger:
    """The ledger read as the technician's reports read it: read-only, never blocking the
    daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            with self._conn() as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []  # not migrated yet
            raise

    def one(self, sql: str, *args: Any) -> Any:
        rows = self.rows(sql, *args)
        return rows[0][0] if rows else None

    def coins(self) -> Counter[int]:
        return Counter(dict(self.rows("SELECT value_cents, count(*) FROM coins GROUP BY 1")))

    def credit_cents(self) -> int:
        return int(
            self.one("SELECT balance_cents FROM credit_sessions WHERE closed_at IS NULL") or 0
        )

    def cursor_counter(self) -> int | None:
        cursor = self.one("SELECT value FROM meta WHERE key = 'acceptor_cursor'")
        return None if cursor is None else int(str(cursor).rpartition(":")[2])

    def unacked(self) -> int:
        top = int(self.one("SELECT max(seq) FROM outbox") or 0)
        marks = self.path.with_name(self.path.name + ".sent")
        watermark = 0
        if marks.exists():
            marks_db = contextlib.closing(sqlite3.connect(f"file:{marks}?mode=ro", uri=True))
            with marks_db as conn, contextlib.suppress(sqlite3.OperationalError):
                watermark = int(conn.execute("SELECT seq FROM watermark").fetchone()[0])
        return top - watermark


class Subscriber:
    """The dashboard's side: every event seq the broker delivered."""

    def __init__(self, host: str, port: int, kiosk_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.seqs: set[int] = set()
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dashboard-{kiosk_id}")
        self._client.on_message = self._message
        self._client.connect(host, port)
        self._client.subscribe(f"kiosk/v1/{kiosk_id}/event/#", qos=1)
        self._client.loop_start()

    def _message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            seq = int(json.loads(message.payload)["seq"])
            with self._lock:
                self.seqs.add(seq)

    def seen(self) -> set[int]:
        with self._lock:
            return set(self.seqs)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Inspector:
    """The checks after a restart, against the acceptor's and the world's ground truth."""

    def __init__(
        self,
        kind: str,
        ledger: Ledger,
        journal: Path,
        acceptor: OrderLink | None,
        figures: Figures,
        violation: Callable[[str], None],
    ) -> None:
        self.kind = kind
        self.ledger = ledger
        self.journal = journal
        self.acceptor = acceptor
        self.figures = figures
        self.violation = violation
        self.cut_allowance: Counter[int] = Counter()  # pulse coins a kill may have cut
        self.lost_seen = 0  # lost events the kiosk has been checked to report
        self.lost_reports = 0

    def note_kill(self) -> None:
        """Just after a kill: the pulse coins whose train it may have cut."""
        if self.kind == "pulse":
            cut_at = time.monotonic()
            recent = Counter(
                v for v, done in replay(self.journal).cashbox if done > cut_at - CUT_TRAIN_S
            )
            self.cut_allowance.update(recent)

    def check(self) -> None:
        self._check_coins()
        self._check_vends()
        self._check_verify()

    def _check_coins(self) -> None:
        if self.acceptor is not None:
            truth = self.acceptor("truth")
            expected = (
                Counter(truth["credited"]) - Counter(truth["lost_values"]) - Counter(truth["wiped"])
            )
            self.figures.lost_by_device = len(truth["lost_values"])
            self.figures.wiped_by_power_cycle = len(truth["wiped"])
            if not wait_until(lambda: self.ledger.coins() == expected, SETTLE_S, 0.02):
                self.violation(
                    f"coins in the ledger {dict(self.ledger.coins())}, "
                    f"credited by the acceptor {dict(expected)}"
                )
            if len(truth["lost"]) > self.lost_seen:
                reports = int(
                    self.ledger.one("SELECT count(*) FROM events WHERE code = 'lost_events'") or 0
                )
                if reports <= self.lost_reports:
                    self.violation("events lost by the acceptor, and no lost_events reported")
                self.lost_seen, self.lost_reports = len(truth["lost"]), reports
            return
        cashbox = Counter(v for v, _ in replay(self.journal).cashbox)

        def settled() -> bool:
            return cashbox - self.ledger.coins() <= self.cut_allowance

        if not wait_until(settled, SETTLE_S, 0.02):
            self.violation(
                f"coins in the ledger {dict(self.ledger.coins())}, in the cash box {dict(cashbox)}"
            )
        counted = self.ledger.coins()
        if counted - cashbox:
            self.violation(f"coins counted that never fell: {dict(counted - cashbox)}")
        missing = cashbox - counted
        self.figures.cut_trains = sum(missing.values())
        self.cut_allowance = missing  # what is missing now stays missing

    def _check_vends(self) -> None:
        if not wait_until(
            lambda: not self.ledger.one("SELECT count(*) FROM vends WHERE outcome = 'pending'"),
            SETTLE_S,
        ):
            self.violation("a vend still pending after the start")
        drops = replay(self.journal).drops
        charged = self.ledger.rows(
            "SELECT v.id, v.outcome FROM sales s JOIN vends v ON v.id = s.vend_id "
            "WHERE v.outcome != 'delivered'"
        )
        if charged:
            self.violation(f"sales for vends not delivered: {charged}")
        self.figures.sales = int(self.ledger.one("SELECT count(*) FROM sales") or 0)
        self.figures.interrupted_vends = int(
            self.ledger.one("SELECT count(*) FROM vends WHERE outcome = 'interrupted'") or 0
        )
        for slot in PRICES:
            sold = int(self.ledger.one("SELECT count(*) FROM sales WHERE slot = ?", slot) or 0)
            unsold = int(
                self.ledger.one(
                    "SELECT count(*) FROM vends WHERE slot = ? AND outcome != 'delivered'", slot
                )
                or 0
            )
            found = self.ledger.rows(
                "SELECT quantity, needs_recount FROM stock WHERE slot = ?", slot
            )
            if not found:
                self.violation(f"slot {slot}: not in the ledger's stock")
                continue
            quantity, recount = found[0]
            fell = drops[slot]
            if sold > fell:
                self.violation(f"slot {slot}: {sold} sales, {fell} products fell")
            if fell - sold > unsold:
                self.violation(
                    f"slot {slot}: {fell - sold} products fell unsold, "
                    f"only {unsold} vends not delivered"
                )
            if fell > sold and not recount:
                self.violation(f"slot {slot}: {fell - sold} unsold products fell, no recount")
            if quantity != CAPACITY - sold:
                self.violation(
                    f"slot {slot}: stock {quantity}, capacity less sales {CAPACITY - sold}"
                )

    def _check_verify(self) -> None:
        from kiosk import cli

        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            status = cli.main(["verify", "--db", str(self.ledger.path)])
        if status != 0:
            self.violation(f"kiosk verify: {said.getvalue().strip()}")
