"""The technician's subcommands of `kiosk`: status, stock, refill, price, slot, service,
test-vend, coins, cashbox, collect, faults, events, sales, impact and audit.

Each works with the daemon running (changes go through its control socket and the core applies
them with its rules) and with it stopped (reports read the ledger read-only; changes are made on
the ledger under its lock). Reports print a table, or JSON with --json; --verbose says which way a
command went. Arguments are checked before anything is sent: a quantity that is not a whole
number, a price that is not whole cents, an unknown slot is an error (status 1), and nothing
changes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from kiosk import client, figures, outbox, readonly, requests, tables
from kiosk import config as config_mod
from kiosk.client import Target
from kiosk.errors import ConfigError, KioskError, Refused
from kiosk.upkeep import INHIBITED_COINS, SERVICE_MODE

FOLLOW_POLL_S = 0.5
WHOLE = re.compile(r"[+-]?\d+")
FAULT_KEYS = ("device", "code", "since", "detail", "slot")


def target(args: argparse.Namespace) -> Target:
    """The kiosk the command acts on: the profile (-c, $KIOSK_CONFIG, the installed one) and its
    ledger, or a ledger named by --db alone when no profile is found."""
    try:
        path = config_mod.find_profile(args.config, config_mod.SYSTEM_PROFILE)
    except ConfigError:
        if args.db is None or args.config is not None:
            raise
        ledger = Path(args.db)
        return Target(ledger, f"{ledger}.sock", None)
    overrides = {"ledger.path": args.db} if args.db is not None else {}
    config = config_mod.load(path, **overrides)
    return Target(Path(config.ledger.path), config.control_socket, config)


def whole(text: str, what: str, unit: str = "") -> int:
    if not WHOLE.fullmatch(text.strip()):
        kind = "whole cents (integer cents: 20 for 0.20 €)" if unit else "a whole number"
        raise Refused(f"{what}: {text!r} is not {kind}")
    return int(text)


def _say(args: argparse.Namespace, how: str) -> None:
    if args.verbose:
        print(f"kiosk: {how}", file=sys.stderr)


def _report(
    args: argparse.Namespace, read: Callable[[Database, Target], Any], where: Target | None = None
) -> Any:
    where = where or target(args)
    if not where.ledger.exists():
        raise KioskError(f"ledger {where.ledger} does not exist")
    pid = where.daemon_pid()
    _say(args, f"read-only on {where.ledger}" + (f" (daemon PID {pid} running)" if pid else ""))
    return readonly.read(where.ledger, lambda db: read(db, where))


def change(
    args: argparse.Namespace, name: str, show: Callable[[dict[str, Any]], str], **a: Any
) -> int:
    request = requests.check(name, a)
    result, how = client.submit(target(args), request)
    _say(args, how)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else show(result))
    return 0


def _print(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> int:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text())
    return 0


# --- status and coins ------------------------------------------------------------------------


def _offline_status(db: Database, where: Target) -> dict[str, Any]:
    def meta(key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    credit = db.execute(
        "SELECT coalesce(sum(balance_cents), 0) FROM credit_sessions WHERE closed_at IS NULL"
    ).fetchone()[0]
    faults = db.execute("SELECT device, code, since, detail, slot FROM faults ORDER BY since")
    return {
        "running": False,
        "kiosk_id": meta("kiosk_id"),
        "state": "stopped",
        "credit_cents": int(credit),
        "service_mode": meta(SERVICE_MODE) == "1",
        "faults": [dict(zip(FAULT_KEYS, f, strict=True)) for f in faults],
        "ledger": str(where.ledger),
        "acceptor": _offline_coins(where, meta),
    }


def _offline_coins(where: Target, meta: Callable[[str], str | None]) -> dict[str, Any]:
    coins = where.config.kiosk.accepted_coins_cents if where.config else (1, 2, 5)
    off = json.loads(meta(INHIBITED_COINS) or "[]")
    return {
        "running": False,
        "driver": where.config.coin_acceptor.driver if where.config else None,
        "accepting": False,
        "coins_cents": list(coins),
        "enabled_cents": [c for c in coins if c not in off],
        "inhibited_cents": off,
        "identity": json.loads(meta("identity:coin_acceptor") or "{}"),
    }


def _ask(
    args: argparse.Namespace, name: str, offline: Callable[[Database, Target], dict[str, Any]]
) -> dict[str, Any]:
    """What the daemon says of itself (`name`) when it runs, else what the ledger holds."""
    where = target(args)
    if where.daemon_pid() is None:
        answer: dict[str, Any] = _report(args, offline, where)
        return answer
    answer, how = client.submit(where, requests.check(name, {}))
    _say(args, how)
    return answer


def _section(where: Target, name: str) -> Any:
    """A section of the profile, or its defaults when only --db named the ledger."""
    return getattr(where.config, name) if where.config else config_mod.SECTIONS[name]()


def cmd_status(args: argparse.Namespace) -> int:
    status = _ask(args, "status", _offline_status)
    return _print(args, status, lambda: tables.status_text(status))


def cmd_coins(args: argparse.Namespace) -> int:
    if args.action is not None:
        value = whole(args.cents, "CENTS", " c")
        enabled = args.action == "enable"
        return change(
            args,
            "coin",
            lambda r: (
                f"coins turned off: {', '.join(f'{c} c' for c in r['inhibited_cents']) or 'none'}"
            ),
            value_cents=value,
            enabled=enabled,
        )
    coins = _ask(args, "coins", lambda db, where: _offline_status(db, where)["acceptor"])
    return _print(args, coins, lambda: tables.coins_text(coins))


def cmd_telemetry(args: argparse.Namespace) -> int:
    link = _ask(args, "telemetry", _offline_telemetry)
    return _print(args, link, lambda: tables.telemetry_text(link))


def _offline_telemetry(db: Database, where: Target) -> dict[str, Any]:
    mqtt = where.config.mqtt if where.config else None
    broker = None if mqtt is None or not mqtt.enabled else mqtt.socket or f"{mqtt.host}:{mqtt.port}"
    backlog = outbox.backlog(db, where.ledger)
    faults = db.execute("SELECT code, detail FROM faults WHERE device = 'telemetry'")
    return {
        "running": False,
        "enabled": broker is not None,
        "connected": False,
        "broker": broker,
        "last_error": None,
        "faults": [f"{code}: {detail}" for code, detail in faults],
        "backlog": backlog.as_json(datetime.now(UTC)),
    }


# --- stock -------------------------------------------------------------------------------------


def cmd_stock(args: argparse.Namespace) -> int:
    if args.action == "count":
        quantity = whole(args.quantity, "QTY")
        return change(
            args,
            "count",
            lambda r: f"slot {r['slot']}: {quantity} counted ({r['difference']:+d} on the ledger)",
            slot=whole(args.slot, "SLOT"),
            quantity=quantity,
        )
    rows = _report(args, lambda db, where: figures.stock(db))
    return _print(args, [r.as_json() for r in rows], lambda: tables.stock_table(rows))


def cmd_refill(args: argparse.Namespace) -> int:
    quantity = None if args.full else whole(args.quantity, "QTY")
    return change(
        args,
        "refill",
        lambda r: f"slot {r['slot']}: +{r['added']}, {r['quantity']} of {r['capacity']}",
        slot=whole(args.slot, "SLOT"),
        quantity=quantity,
    )


def cmd_price(args: argparse.Namespace) -> int:
    return change(
        args,
        "price",
        lambda r: f"slot {r['slot']}: {r['price_cents']} c (was {r['was_cents']} c)",
        slot=whole(args.slot, "SLOT"),
        price_cents=whole(args.cents, "CENTS", " c"),
    )


def cmd_slot(args: argparse.Namespace) -> int:
    enabled = args.action == "enable"
    return change(
        args,
        "slot",
        lambda r: (
            f"slot {r['slot']} {'on sale' if enabled else 'off sale'}"
            + ("" if r["changed"] else " (it already was)")
        ),
        slot=whole(args.slot, "SLOT"),
        enabled=enabled,
    )


def cmd_service(args: argparse.Namespace) -> int:
    def show(r: dict[str, Any]) -> str:
        line = f"service mode {'on' if r['service'] else 'off'}"
        if r.get("state"):
            line += f": the kiosk is {r['state']}"
        if r["cleared"]:
            line += f"; faults cleared: {', '.join(r['cleared'])}"
        return line

    return change(args, "service", show, on=args.action == "on")


def cmd_test_vend(args: argparse.Namespace) -> int:
    return change(
        args,
        "test_vend",
        lambda r: f"slot {r['slot']}: {r['outcome']} ({r['detail']}); recorded as a test vend",
        slot=whole(args.slot, "SLOT"),
    )


# --- money -------------------------------------------------------------------------------------


def cmd_cashbox(args: argparse.Namespace) -> int:
    box = _report(args, lambda db, where: figures.cashbox(db, _section(where, "cashbox")))
    return _print(args, box.as_json(), lambda: tables.cashbox_text(box))


def cmd_collect(args: argparse.Namespace) -> int:
    counted = None if args.counted is None else whole(args.counted, "--counted", " c")

    def show(r: dict[str, Any]) -> str:
        line = f"cash box emptied: {tables.cents(r['value_cents'])} in the ledger"
        if r["counted_cents"] is not None:
            line += (
                f", {tables.cents(r['counted_cents'])} counted, "
                f"difference {r['difference_cents']:+d} c (kept in the ledger)"
            )
        return line

    return change(args, "collect", show, counted_cents=counted)


def cmd_sales(args: argparse.Namespace) -> int:
    since, until = _day(args.since, "--since"), _day(args.until, "--until")
    if since is not None and until is not None and since > until:
        raise Refused(f"--since {since} is after --until {until}")
    rows = _report(args, lambda db, where: figures.sales(db, args.by, since, until))
    if args.csv:
        print(tables.sales_csv(rows, args.by), end="")
        return 0
    return _print(args, [r.as_json() for r in rows], lambda: tables.sales_table(rows, args.by))


def _day(text: str | None, what: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refused(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None


def cmd_impact(args: argparse.Namespace) -> int:
    impact = _report(args, lambda db, where: figures.impact(db, _section(where, "impact")))
    return _print(args, impact.as_json(), lambda: tables.impact_text(impact))


def cmd_audit(args: argparse.Namespace) -> int:
    request = requests.check("audit", {"reset": args.reset})
    if args.output is None:
        result, how = client.submit(target(args), request)
        _say(args, how)
        sys.stdout.write(result["report"])
        return 0
    # The file is made before the read, so that a read with reset is never lost to a path
    # that cannot be written; it takes its name once whole.
    output = Path(args.output)
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or ".")
    except OSError as err:
        raise KioskError(f"{output}: cannot write: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="") as out:
            result, how = client.submit(target(args), request)
            out.write(result["report"])  # byte for byte: CR LF line ends, as audit tools read
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _say(args, how)
    print(f"audit written to {output}" + (" (interim counters reset)" if args.reset else ""))
    return 0


# --- faults and events -----------------------------------------------------------------------


def cmd_faults(args: argparse.Namespace) -> int:
    if args.action == "clear":
        device, _, code = (args.which or "").partition(":")
        return change(
            args,
            "faults_clear",
            lambda r: f"cleared: {', '.join(r['cleared'])}",
            device=device or None,
            code=code or None,
        )
    report = _report(args, lambda db, where: figures.faults(db))
    return _print(args, report.as_json(), lambda: tables.faults_text(report))


def cmd_events(args: argparse.Namespace) -> int:
    if args.lines < 1:
        raise Refused("-n: must be 1 or more")
    where = target(args)
    rows = _report(args, lambda db, _: figures.events(db, args.lines), where)
    _show_events(args, rows)
    if not args.follow:
        return 0
    last = rows[-1].id if rows else 0
    while True:
        sys.stdout.flush()
        time.sleep(FOLLOW_POLL_S)
        rows = readonly.read(where.ledger, functools.partial(_events_after, after_id=last))
        _show_events(args, rows)
        if rows:
            last = rows[-1].id


def _events_after(db: Database, after_id: int) -> list[figures.EventRow]:
    return figures.events(db, after_id=after_id)


def _show_events(args: argparse.Namespace, rows: list[figures.EventRow]) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(row.as_json(), ensure_ascii=False))
    elif rows:
        print("\n".join(tables.events_lines(rows)))


# --- the parser --------------------------------------------------------------------------------


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the subcommands; `add(name, help, func)` makes a parser with the common options
    (-c, --db, --json, --verbose)."""
    add("status", "the kiosk's state, credit, faults and acceptor, running or not", cmd_status)

    p = add("stock", "stock per slot; `stock count SLOT QTY` records a recount", cmd_stock)
    p.add_argument("action", nargs="?", choices=["count"], help="count: set the stock counted")
    p.add_argument("slot", nargs="?", metavar="SLOT")
    p.add_argument("quantity", nargs="?", metavar="QTY")
    p.set_defaults(check=_stock_args)

    p = add("refill", "add products to a slot (in maintenance)", cmd_refill)
    p.add_argument("slot", metavar="SLOT")
    p.add_argument("quantity", nargs="?", metavar="QTY", help="how many were put in")
    p.add_argument("--full", action="store_true", help="fill the slot to its capacity")
    p.set_defaults(check=_refill_args)

    p = add("price", "set a slot's price in cents (kept across restarts)", cmd_price)
    p.add_argument("slot", metavar="SLOT")
    p.add_argument("cents", metavar="CENTS")

    p = add("slot", "put a slot on sale or take it off", cmd_slot)
    p.add_argument("action", choices=["enable", "disable"])
    p.add_argument("slot", metavar="SLOT")

    p = add("service", "maintenance mode without opening the door: on or off", cmd_service)
    p.add_argument("action", choices=["on", "off"])

    p = add("test-vend", "run one vend of a slot in maintenance (never a sale)", cmd_test_vend)
    p.add_argument("slot", metavar="SLOT")

    p = add("coins", "the coin acceptor and its coins; `coins inhibit|enable CENTS`", cmd_coins)
    p.add_argument("action", nargs="?", choices=["inhibit", "enable"])
    p.add_argument("cents", nargs="?", metavar="CENTS")
    p.set_defaults(check=_coins_args)

    add("telemetry", "the link to the city's broker and the outbox backlog", cmd_telemetry)

    add("cashbox", "coins in the cash box, their value and how full it is", cmd_cashbox)

    p = add("collect", "record the cash box emptied (in maintenance)", cmd_collect)
    p.add_argument("--counted", metavar="CENTS", help="what you counted, in cents")

    p = add("faults", "active and recent faults; `faults clear [DEVICE[:CODE]]`", cmd_faults)
    p.add_argument("action", nargs="?", choices=["clear"])
    p.add_argument("which", nargs="?", metavar="DEVICE[:CODE]")

    p = add("events", "the ledger's events, newest last", cmd_events)
    p.add_argument("-n", dest="lines", type=int, default=20, metavar="N", help="how many")
    p.add_argument("--follow", action="store_true", help="keep printing new events")

    p = add("sales", "sales by day, product or hour, with a bar per line", cmd_sales)
    p.add_argument("--by", choices=["day", "product", "hour"], default="day")
    p.add_argument("--since", metavar="DATE", help="first day (YYYY-MM-DD, UTC)")
    p.add_argument("--until", metavar="DATE", help="last day (YYYY-MM-DD, UTC)")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")

    add("impact", "coins taken out of circulation, minting cost avoided, donations", cmd_impact)

    p = add("audit", "the EVA-DTS (DEX/UCS) audit report", cmd_audit)
    p.add_argument("-o", dest="output", metavar="FILE", help="write it to FILE")
    p.add_argument("--reset", action="store_true", help="start a new interim period")


def _stock_args(args: argparse.Namespace) -> str | None:
    if args.action is None and (args.slot or args.quantity):
        return "stock takes no SLOT or QTY; did you mean `stock count SLOT QTY`?"
    if args.action == "count" and args.quantity is None:
        return "stock count needs SLOT and QTY"
    return None


def _refill_args(args: argparse.Namespace) -> str | None:
    if args.full == (args.quantity is not None):
        return "refill needs QTY or --full (one of them)"
    return None


def _coins_args(args: argparse.Namespace) -> str | None:
    if (args.action is None) != (args.cents is None):
        return "coins inhibit|enable needs CENTS"
    return None
