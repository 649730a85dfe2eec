"""The `kiosk` command: run the daemon, demo it on the simulator, draw its state machine, verify
a ledger, check a configuration.

Results go to stdout, logs and errors to stderr as `kiosk: error: ...` with exit status 1
(2 for usage errors); a traceback only with KIOSK_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from drivers.base import DeviceError
from kiosk import config as config_mod
from kiosk import reports
from kiosk.errors import KioskError, LedgerError

log = logging.getLogger(__name__)


def _config_path(value: str | None, default: Path = config_mod.DEFAULT_PROFILE) -> Path:
    return Path(value or os.environ.get("KIOSK_CONFIG") or default)


def _load(
    args: argparse.Namespace, default: Path = config_mod.DEFAULT_PROFILE
) -> config_mod.Config:
    overrides = {"ledger.path": args.db} if getattr(args, "db", None) else {}
    return config_mod.load(_config_path(args.config, default), **overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from kiosk.daemon import run_daemon

    return run_daemon(_load(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from sim import demo  # the simulated world, only when a command asks for it

    if args.shoppers is not None:
        config = _load(args, config_mod.PULSE_PROFILE)
        return demo.headless(config, args.shoppers, args.seed, args.db, as_json=args.json)
    return demo.interactive(_load(args), args.db)


def cmd_diagram(args: argparse.Namespace) -> int:
    from kiosk.machine import mermaid

    print(mermaid(), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from kiosk.schema import connect

    path = Path(args.db) if args.db else Path(_load(args).ledger.path)
    if not path.exists():
        raise KioskError(f"ledger {path} does not exist")
    db = connect(path, read_only=True)
    try:
        checks = reports.verify(db)
    except sqlite3.Error as err:  # a database, but not a kiosk ledger
        raise LedgerError(f"ledger {path}: cannot verify: {err}") from err
    finally:
        db.close()
    if args.json:
        print(json.dumps({c.name: c.differences for c in checks}, indent=2))
    else:
        for check in checks:
            print(f"{check.name}: {'ok' if check.ok else 'FAILED'}")
            for line in check.differences:
                print(f"  {line}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    config = config_mod.load(args.file)
    print(
        f"{args.file}: ok ({len(config.slots)} slots, coin acceptor {config.coin_acceptor.driver})"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kiosk", description="Centimeo penny kiosk")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="configuration profile (default: $KIOSK_CONFIG or config/sim.toml)",
        )

    p = add("run", "run the kiosk daemon on the configured hardware", cmd_run)
    config_option(p)
    p.add_argument("--db", metavar="PATH", help="ledger file (overrides ledger.path)")

    p = add("demo", "run the kiosk on the simulator", cmd_demo)
    config_option(p)
    p.add_argument("--db", metavar="PATH", help="ledger file (default: a temporary one)")
    p.add_argument(
        "--shoppers",
        type=int,
        metavar="N",
        help="headless: N random shoppers on simulated time, then a summary "
        "(default profile: config/sim-pulse.toml)",
    )
    p.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    p.add_argument("--json", action="store_true", help="headless summary as JSON")

    add("diagram", "print the state machine as a mermaid diagram", cmd_diagram)

    p = add("verify", "check the ledger's money, cash box and stock invariants", cmd_verify)
    config_option(p)
    p.add_argument("--db", metavar="PATH", help="ledger file (default: ledger.path)")
    p.add_argument("--json", action="store_true", help="differences as JSON")

    p = add("config", "configuration tools", lambda args: 2)
    config_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="validate a configuration file", description="validate a configuration file"
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_config_check)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command != "run":  # the daemon configures its own logging
        debug = os.environ.get("KIOSK_DEBUG") == "1"
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.ERROR,
            format="kiosk: %(levelname)s: %(name)s: %(message)s",
        )
    if args.command == "demo" and args.shoppers is not None and args.shoppers < 0:
        parser().error("--shoppers must be 0 or more")
    try:
        return int(args.func(args))
    except (KioskError, DeviceError) as err:
        if os.environ.get("KIOSK_DEBUG") == "1":
            raise
        print(f"kiosk: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
