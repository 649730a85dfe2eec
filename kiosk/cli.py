"""The `kiosk` command: run the daemon, demo it on the simulator, draw its state machine, verify
a ledger, check a configuration, commission the hardware (`kiosk hw check`, `kiosk hw pulses`).

Results go to stdout, logs and errors to stderr as `kiosk: error: ...` with exit status 1
(2 for usage errors); a traceback only with KIOSK_DEBUG=1. A reader that goes away early
(`kiosk demo --shoppers 50 | head -1`) ends the command quietly with status 141, as SIGPIPE would;
a full disk under stdout is an error like any other.

`kiosk run`, `kiosk verify` and `kiosk hw` act on the installed kiosk: without `-c` they read
$KIOSK_CONFIG, else /etc/kiosk/kiosk.toml, and never fall back to the simulator's profile
(`kiosk hw --sim` runs on the simulator, with its profiles).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from drivers.base import DeviceError
from kiosk import config as config_mod
from kiosk import readonly, reports, tech
from kiosk.errors import KioskError

if TYPE_CHECKING:
    from kiosk.commission import Setup

log = logging.getLogger(__name__)


def _load(args: argparse.Namespace, fallback: Path) -> config_mod.Config:
    overrides = {"ledger.path": args.db} if getattr(args, "db", None) is not None else {}
    return config_mod.load(config_mod.find_profile(args.config, fallback), **overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from kiosk.daemon import run_daemon

    return run_daemon(_load(args, config_mod.SYSTEM_PROFILE))


def cmd_demo(args: argparse.Namespace) -> int:
    from sim import demo  # the simulated world, only when a command asks for it

    if args.shoppers is not None:
        config = _load(args, config_mod.PULSE_PROFILE)
        return demo.headless(config, args.shoppers, args.seed, args.db, as_json=args.json)
    return demo.interactive(_load(args, config_mod.DEFAULT_PROFILE), args.db)


def cmd_diagram(args: argparse.Namespace) -> int:
    from kiosk.machine import mermaid

    print(mermaid(), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.db is not None:
        path = Path(args.db)
    else:
        path = Path(_load(args, config_mod.SYSTEM_PROFILE).ledger.path)
    if not os.path.lexists(path):
        raise KioskError(f"ledger {path} does not exist")
    checks = readonly.read(path, reports.verify)
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


@contextlib.contextmanager
def _hw_setup(
    args: argparse.Namespace, sim_profile: Path, require: Callable[[config_mod.Config], object]
) -> Iterator[Setup]:
    """What `kiosk hw` runs on, the kiosk's hardware held (its daemon's lock): the Pi's pins
    and clock, or with --sim the simulated world (its ledger a temporary one unless --db)."""
    from kiosk import commission

    with contextlib.ExitStack() as stack:
        db = args.db
        if args.sim and db is None:
            db = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "kiosk.db")
        overrides = {"ledger.path": db} if db is not None else {}
        fallback = sim_profile if args.sim else config_mod.SYSTEM_PROFILE
        config = config_mod.load(config_mod.find_profile(args.config, fallback), **overrides)
        require(config)  # a command refused by the profile is said before anything is held
        stack.enter_context(commission.hardware_held(config))
        technician = commission.TerminalTechnician(
            sys.stderr, interactive=not args.sim and commission.interactive()
        )
        if args.sim:
            from sim.commissioning import simulated  # the simulated world, only when asked for

            yield stack.enter_context(simulated(config, echo=technician)).setup
            return
        from drivers.clock import SystemClock
        from kiosk.pins import pin_factory

        yield commission.Setup(config, SystemClock(), pin_factory(), technician)


def cmd_hw_check(args: argparse.Namespace) -> int:
    from kiosk import commission_check

    only = [c for c in args.only if not (args.no_motors and c == "motors")]
    with _hw_setup(args, config_mod.DEFAULT_PROFILE, lambda config: None) as setup:
        report = commission_check.check(setup, only, args.timeout_s)
    print(
        json.dumps(report.as_json(), indent=2, ensure_ascii=False) if args.json else report.text()
    )
    return 0 if report.ok else 1


def cmd_hw_pulses(args: argparse.Namespace) -> int:
    from kiosk import commission_pulses as pulses

    def show(number: int, train: pulses.Train) -> None:
        if not args.json:
            print(pulses.train_line(number, train), flush=True)

    with _hw_setup(args, config_mod.PULSE_PROFILE, pulses.pulse_settings) as setup:
        report = pulses.record(
            setup,
            duration_s=args.duration_s,
            coins=args.coins,
            end_gap_ms=args.end_gap_ms,
            on_train=show,
        )
    print(json.dumps(report.as_json(), indent=2) if args.json else report.text())
    return 0 if report.trains else 1


def _hw_checks(text: str) -> list[str]:
    from kiosk.commission_check import CHECKS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: not among {','.join(CHECKS)}"
        )
    return names


def _hw_check_args(args: argparse.Namespace) -> str | None:
    if not args.timeout_s > 0:
        return "--timeout-s must be more than 0"
    return None


def _hw_pulses_args(args: argparse.Namespace) -> str | None:
    if args.duration_s is None and args.coins is None:
        return "hw pulses needs --duration-s N or --coins N (or both: whichever comes first)"
    if args.duration_s is not None and not args.duration_s > 0:
        return "--duration-s must be more than 0"
    if args.coins is not None and args.coins < 1:
        return "--coins must be 1 or more"
    if args.end_gap_ms is not None and not args.end_gap_ms > 0:
        return "--end-gap-ms must be more than 0"
    return None


def _hw_commands(add: Callable[..., argparse.ArgumentParser], installed: str) -> None:
    p = add(
        "hw", "commissioning: check the hardware, time a pulse acceptor's coin line", lambda args: 2
    )
    hw_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def hw(name: str, help_text: str, func: object, sim_profile: str) -> argparse.ArgumentParser:
        q = hw_sub.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(func=func)
        q.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"configuration profile (default: $KIOSK_CONFIG, else {installed}; "
            f"with --sim, {sim_profile})",
        )
        q.add_argument(
            "--db", metavar="PATH", help="the ledger whose lock is held (default: ledger.path)"
        )
        q.add_argument("--sim", action="store_true", help="on the simulator, which answers")
        q.add_argument("--json", action="store_true", help="the result as JSON")
        return q

    q = hw(
        "check",
        "identify the acceptor, test the display, LEDs, buttons, switches and motors",
        cmd_hw_check,
        "config/sim.toml",
    )
    q.add_argument(
        "--only",
        type=_hw_checks,
        default="acceptor,display,leds,inputs,motors",
        metavar="LIST",
        help="some of acceptor,display,leds,inputs,motors (default: all)",
    )
    q.add_argument("--no-motors", action="store_true", help="leave the motors alone")
    q.add_argument(
        "--timeout-s",
        type=float,
        default=10.0,
        metavar="S",
        help="how long each button or switch is waited for (default 10)",
    )
    q.set_defaults(check=_hw_check_args)

    q = hw(
        "pulses",
        "log a pulse acceptor's raw pulse widths and gaps, and propose decoder values",
        cmd_hw_pulses,
        "config/sim-pulse.toml",
    )
    q.add_argument("--duration-s", type=float, metavar="S", help="record for S seconds")
    q.add_argument("--coins", type=int, metavar="N", help="record until N trains were seen")
    q.add_argument(
        "--end-gap-ms",
        type=float,
        metavar="MS",
        help="tell trains apart by this quiet (default: coin_acceptor.end_gap_ms)",
    )
    q.set_defaults(check=_hw_pulses_args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kiosk", description="Centimeo penny kiosk")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def config_option(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"configuration profile (default: $KIOSK_CONFIG, else {default})",
        )

    installed = str(config_mod.SYSTEM_PROFILE)
    p = add("run", "run the kiosk daemon on the configured hardware", cmd_run)
    config_option(p, installed)
    p.add_argument("--db", metavar="PATH", help="ledger file (overrides ledger.path)")

    p = add("demo", "run the kiosk on the simulator", cmd_demo)
    config_option(p, "config/sim.toml")
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

    def technician(name: str, help_text: str, func: object) -> argparse.ArgumentParser:
        p = add(name, help_text, func)
        config_option(p, installed)
        p.add_argument("--db", metavar="PATH", help="ledger file (default: ledger.path)")
        p.add_argument("--json", action="store_true", help="the result as JSON")
        p.add_argument("-v", "--verbose", action="store_true", help="say how it was done")
        return p

    technician("verify", "check the ledger's money, cash box and stock invariants", cmd_verify)
    tech.add_commands(technician)

    _hw_commands(add, installed)

    p = add("config", "configuration tools", lambda args: 2)
    config_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="validate a configuration file", description="validate a configuration file"
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_config_check)
    return top


class _OutputFailed(Exception):
    """Writing the results failed (a closed pipe, a full disk): not the command's own error."""

    def __init__(self, err: OSError) -> None:
        super().__init__(err.strerror or str(err))
        self.err = err


class _Stdout:
    """sys.stdout while a command runs, telling a failed write of its results from any other
    OSError the command might meet."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as err:
            raise _OutputFailed(err) from err

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            raise _OutputFailed(err) from err

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    debug = os.environ.get("KIOSK_DEBUG") == "1"
    if args.command != "run":  # the daemon configures its own logging
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.ERROR,
            format="kiosk: %(levelname)s: %(name)s: %(message)s",
        )
    if args.command == "demo" and args.shoppers is not None and args.shoppers < 0:
        parser().error("--shoppers must be 0 or more")
    misuse = args.check(args) if hasattr(args, "check") else None
    if misuse:
        parser().error(misuse)
    stdout = sys.stdout
    sys.stdout = cast(TextIO, _Stdout(stdout))
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not after main returns
        return status
    except _OutputFailed as failed:
        _discard(stdout)
        if isinstance(failed.err, BrokenPipeError):
            return 128 + signal.SIGPIPE  # the reader went away: quietly, as SIGPIPE would
        if debug:
            raise
        print(f"kiosk: error: cannot write the results: {failed}", file=sys.stderr)
        return 1
    except (KioskError, DeviceError) as err:
        if debug:
            raise
        print(f"kiosk: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout = stdout


def _discard(stdout: TextIO) -> None:
    """Point stdout's descriptor at /dev/null: the interpreter's last flush at exit then has
    nowhere to fail (and nothing more to say)."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a test's capture, or already closed
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


if __name__ == "__main__":
    sys.exit(main())
