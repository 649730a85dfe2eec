"""The `kiosk` command, called in-process through `main(argv)`: results on stdout, errors on
stderr as `kiosk: error: ...` with status 1, usage errors with status 2, `--help` everywhere.

One headless demo writes a ledger that the verify tests copy and tamper with.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import KioskMaker, subcommands

from kiosk import cli, lock, readonly, schema
from kiosk import config as config_mod
from kiosk.errors import ConfigError
from kiosk.lock import LedgerLock
from kiosk.machine import TRANSITIONS, State
from sim.rig import SimKiosk

ROOT = Path(__file__).resolve().parents[1]
SIM = config_mod.PULSE_PROFILE


@pytest.fixture(autouse=True, scope="module")
def _no_kiosk_environment() -> Iterator[None]:
    """The developer's own KIOSK_* settings must not leak into these tests, the demo's included."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("KIOSK_")]:
            patch.delenv(name)
        yield


def run_main(argv: list[str]) -> tuple[int, str]:
    """main() with stdout captured, for module-scoped fixtures where capsys is not available."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(argv)
    return status, out.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    status, out = run_main(["demo", "--shoppers", "30", "--seed", "3", "--db", str(db)])
    return status, out, db


@pytest.fixture(scope="module")
def demo_json() -> tuple[int, dict]:
    status, out = run_main(["demo", "--shoppers", "30", "--seed", "3", "--json"])
    return status, json.loads(out)


@pytest.fixture
def ledger_copy(demo_run: tuple[int, str, Path], tmp_path: Path) -> Path:
    """A private copy of the demo's ledger, safe to tamper with."""
    copy = tmp_path / "copy.db"
    with (
        contextlib.closing(sqlite3.connect(demo_run[2])) as src,
        contextlib.closing(sqlite3.connect(copy)) as dst,
    ):
        src.backup(dst)
    return copy


def tamper(db: Path, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute(sql).rowcount == 1


# --- config check -------------------------------------------------------------------------------


def test_config_check_accepts_the_sim_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(SIM)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SIM}: ok (3 slots, coin acceptor pulse)\n"
    assert err == ""


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("price_cents = 10", "price_cents = 0", "slots[1].price_cents"),
        ('language = "fr"', 'language = "de"', "kiosk.language"),
        ('name = "Centimeo"', 'name = "Centimeo', "not valid TOML"),
        ('name = "Centimeo"', 'name = "Cr\xeape"', "not valid TOML"),
    ],
    ids=["range", "choice", "toml", "latin-1"],
)
def test_config_check_reports_a_broken_file_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, named: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(SIM.read_text().replace(old, new).encode("latin-1"))
    assert cli.main(["config", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kiosk: error: {path}: ")
    assert named in err
    assert "Traceback" not in err


def test_config_check_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.toml"
    assert cli.main(["config", "check", str(missing)]) == 1
    assert (
        capsys.readouterr().err
        == f"kiosk: error: {missing}: cannot read: No such file or directory\n"
    )


def test_kiosk_debug_lets_the_error_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(SIM.read_text().replace('language = "fr"', 'language = "de"'))
    monkeypatch.setenv("KIOSK_DEBUG", "1")
    with pytest.raises(ConfigError, match=r"kiosk\.language"):
        cli.main(["config", "check", str(path)])


# --- diagram ------------------------------------------------------------------------------------


def _expected_edges() -> set[tuple[str, str, str]]:
    edges = set()
    for t in TRANSITIONS:
        sources = t["source"]
        if sources == "*":
            sources = list(State)
        elif isinstance(sources, State):
            sources = [sources]
        edges |= {(s.value, t["dest"].value, t["trigger"]) for s in sources}
    return edges


def test_diagram_draws_every_state_and_transition(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["diagram"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "stateDiagram-v2"
    drawn = set()
    for line in lines:
        match = re.fullmatch(r"\s*(\w+) --> (\w+): (.+)", line)
        if match:
            source, dest, label = match.groups()
            drawn |= {(source.lower(), dest.lower(), part.split()[0]) for part in label.split("|")}
    assert drawn == _expected_edges()
    declared = {m.lower() for m in re.findall(r"^\s*state \"\w+\" as (\w+)$", out, re.M)}
    assert declared == {s.value for s in State}
    assert re.search(r"\[\*\] --> starting$", out, re.M | re.I)


def test_the_readme_shows_the_diagram_the_machine_draws(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["diagram"]) == 0
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"```mermaid\n{capsys.readouterr().out}```" in readme


def test_diagram_runs_as_a_module_in_a_fresh_interpreter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [sys.executable, "-m", "kiosk.cli", "diagram"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    cli.main(["diagram"])
    assert done.stdout == capsys.readouterr().out


# --- verify -------------------------------------------------------------------------------------


def test_verify_a_fresh_ledger(ledger_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--db", str(ledger_copy)]) == 0
    assert capsys.readouterr().out == "money: ok\ncash box: ok\nstock: ok\n"
    assert cli.main(["verify", "--db", str(ledger_copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"money": [], "cash box": [], "stock": []}


TAMPERING = [
    (
        "INSERT INTO collections (at, last_coin_id, actor, expected_cents, origin) "
        "VALUES ('2026-01-01T00:00:00Z', (SELECT max(id) FROM coins), 'x', 1, 'cli')",
        "cash box",
        r"collection 1: 1 c taken out, the coins accepted since the collection before add up "
        r"to \d+ c",
    ),
    (
        "UPDATE stock SET quantity = quantity + 1 WHERE slot = 2",
        "stock",
        r"slot 2: count \d+ \+ refills \d+ - delivered \d+ = \d+, stock says \d+",
    ),
    (
        "UPDATE coins SET value_cents = 2"
        " WHERE id = (SELECT min(id) FROM coins WHERE value_cents = 5)",
        "money",
        r"coins \d+ c != sales \d+ c \+ donations \d+ c \+ open credit \d+ c",
    ),
]


@pytest.mark.parametrize(("sql", "check", "difference"), TAMPERING, ids=[t[1] for t in TAMPERING])
def test_verify_reports_a_tampered_ledger(
    ledger_copy: Path, capsys: pytest.CaptureFixture[str], sql: str, check: str, difference: str
) -> None:
    tamper(ledger_copy, sql)
    assert cli.main(["verify", "--db", str(ledger_copy)]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^{check}: FAILED\n  {difference}$", out, re.M), out
    if check == "stock":
        assert "money: ok" in out and "cash box: ok" in out


def test_verify_json_lists_the_differences(
    ledger_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(ledger_copy, TAMPERING[1][0])
    assert cli.main(["verify", "--db", str(ledger_copy), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert (found["money"], found["cash box"]) == ([], [])
    assert len(found["stock"]) == 1 and found["stock"][0].startswith("slot 2:")


def test_verify_reads_the_ledger_path_from_config_and_environment(
    ledger_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(SIM.read_text().replace('path = "kiosk.db"', f'path = "{ledger_copy}"'))
    monkeypatch.chdir(tmp_path)  # where the sim profile's own kiosk.db does not exist
    assert cli.main(["verify", "-c", str(profile)]) == 0
    monkeypatch.setenv("KIOSK_CONFIG", str(profile))
    assert cli.main(["verify"]) == 0
    monkeypatch.setenv("KIOSK_LEDGER_PATH", "elsewhere.db")
    assert cli.main(["verify"]) == 1


def test_verify_a_missing_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    assert cli.main(["verify", "--db", str(missing)]) == 1
    assert capsys.readouterr().err == f"kiosk: error: ledger {missing} does not exist\n"
    assert not missing.exists()


@pytest.mark.parametrize("content", [b"", b"not a database\n"], ids=["empty", "text"])
def test_verify_a_file_that_is_not_a_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "other.db"
    path.write_bytes(content)
    assert cli.main(["verify", "--db", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kiosk: error: ledger {path}: ")
    assert "Traceback" not in err


# --- demo ---------------------------------------------------------------------------------------


def test_headless_demo_prints_a_summary_with_every_invariant_ok(
    demo_run: tuple[int, str, Path],
) -> None:
    status, out, db = demo_run
    assert status == 0
    assert out.startswith("kiosk sim-001: 30 shoppers, seed 3, ")
    invariants = out.split("\ninvariants\n", 1)[1].splitlines()
    assert {line.split(":")[0].strip() for line in invariants} >= {"money", "cash box", "stock"}
    assert all(line.endswith(": ok") for line in invariants), invariants
    assert db.exists()


def test_headless_demo_as_json(demo_json: tuple[int, dict]) -> None:
    status, summary = demo_json
    assert status == 0
    assert summary["ok"] is True
    assert (summary["shoppers"], summary["seed"]) == (30, 3)
    assert summary["sales"] > 0
    assert all(diffs == [] for diffs in summary["invariants"].values())


def test_the_same_seed_gives_the_same_numbers(
    demo_run: tuple[int, str, Path], demo_json: tuple[int, dict]
) -> None:
    out, numbers = demo_run[1], demo_json[1]
    coins = ", ".join(f"{v} c x {n}" for v, n in numbers["coins_by_value"].items())
    assert f"coins      {coins} = {numbers['coins_cents']} c" in out
    assert f"({numbers['coins_from_merged_trains']} read from merged trains)" in out
    assert f"sales      {numbers['sales']} ({numbers['sales_cents']} c)\n" in out
    assert f"donations  {numbers['donations']} ({numbers['donations_cents']} c) to " in out
    assert f"credit     {numbers['open_credit_cents']} c open\n" in out
    assert f"{numbers['products_fallen']} products fell" in out


def test_interactive_demo_needs_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    db = tmp_path / "demo.db"
    assert cli.main(["demo", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kiosk: error: ") and "needs a terminal" in err
    assert "--shoppers" in err
    assert not db.exists()


# --- usage and help -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["config"],
        ["config", "check"],
        ["verify", "--nope"],
        ["demo", "--shoppers", "many"],
        ["demo", "--shoppers", "-1"],
    ],
    ids=lambda argv: " ".join(argv) or "no-arguments",
)
def test_usage_errors_exit_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: kiosk" in err


COMMANDS = [(), *subcommands(cli.parser())]


def test_the_parser_knows_the_commands_this_file_tests() -> None:
    assert {"run", "demo", "diagram", "verify", "config"} <= {path[0] for path in COMMANDS[1:]}
    assert ("config", "check") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "kiosk")
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(["usage: kiosk", *path]))


# --- verify without touching the ledger's directory ---------------------------------------------


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_verify_of_a_checkpointed_ledger_creates_no_file(
    ledger_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain read-only connection would create (and leave) the -wal and -shm files here."""
    before = listing(ledger_copy.parent)
    assert before == ["copy.db"]
    assert cli.main(["verify", "--db", str(ledger_copy)]) == 0
    assert capsys.readouterr().out == "money: ok\ncash box: ok\nstock: ok\n"
    assert listing(ledger_copy.parent) == before


def test_verify_reads_what_a_running_daemon_committed(
    ledger_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the daemon's connection open and its lock held, the commits still in the -wal count."""
    with LedgerLock(ledger_copy), contextlib.closing(schema.connect(ledger_copy)) as daemon:
        daemon.execute("UPDATE stock SET quantity = quantity + 1 WHERE slot = 2")
        daemon.conn.commit()
        before = listing(ledger_copy.parent)
        assert "copy.db-wal" in before
        assert cli.main(["verify", "--db", str(ledger_copy)]) == 1
        assert "stock: FAILED\n  slot 2: " in capsys.readouterr().out
        assert listing(ledger_copy.parent) == before


def test_verify_reads_the_wal_a_crashed_daemon_left(
    ledger_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crash = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "conn.execute('UPDATE stock SET quantity = quantity + 1 WHERE slot = 2')\n"
        "conn.commit()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(ledger_copy)], check=True, timeout=60)
    before = listing(ledger_copy.parent)
    assert "copy.db-wal" in before and lock.holder(ledger_copy) is None
    assert cli.main(["verify", "--db", str(ledger_copy)]) == 1
    assert "stock: FAILED\n  slot 2: " in capsys.readouterr().out
    assert listing(ledger_copy.parent) == before


def test_verify_reads_again_if_the_ledger_changed_during_an_immutable_read(
    ledger_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[bool] = []
    real_run = readonly._run

    def run_while_a_daemon_starts(path: Path, report: Any, *, immutable: bool) -> Any:
        reads.append(immutable)
        if immutable:
            os.utime(path, ns=(0, 0))  # the file changed under the immutable read
        return real_run(path, report, immutable=immutable)

    monkeypatch.setattr(readonly, "_run", run_while_a_daemon_starts)
    assert cli.main(["verify", "--db", str(ledger_copy)]) == 0
    assert reads == [True, False]


@pytest.fixture
def read_only_media(ledger_copy: Path, tmp_path: Path) -> Path:
    """The ledger alone in a directory of its own, to be mounted read-only for verify."""
    media = tmp_path / "media"
    media.mkdir()
    path = media / "kiosk.db"
    path.write_bytes(ledger_copy.read_bytes())
    return path


def test_verify_works_on_read_only_media(read_only_media: Path) -> None:
    path = read_only_media
    # A read-only bind mount in a mount namespace of our own: even root cannot write there, as
    # on a write-protected card (file modes would not stop root).
    mount_ro = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    argv = ["unshare", "--map-root-user", "--mount", "sh", "-c", mount_ro, str(path.parent)]
    argv += [sys.executable, "-m", "kiosk.cli", "verify", "--db", str(path)]
    done = subprocess.run(argv, cwd=path.parent, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "money: ok\ncash box: ok\nstock: ok\n"
    assert listing(path.parent) == ["kiosk.db"]


BAD_LEDGERS = [
    ("another program's", "CREATE TABLE photos (id INTEGER)", "not a kiosk ledger"),
    ("half-migrated", "DROP TABLE migrations", "half-migrated: kiosk tables ("),
    ("newer", "INSERT INTO migrations VALUES (99, 'future', 'now')", "newer than this kiosk"),
]


@pytest.mark.parametrize(
    ("sql", "reason"), [b[1:] for b in BAD_LEDGERS], ids=[b[0] for b in BAD_LEDGERS]
)
def test_verify_refuses_what_is_not_a_sound_ledger(
    ledger_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], sql: str, reason: str
) -> None:
    path = ledger_copy
    if sql.startswith("CREATE"):
        path = tmp_path / "photos.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(sql)
    else:
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(sql)
    assert cli.main(["verify", "--db", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kiosk: error: ledger {path}: ") and reason in err, err


def test_verify_of_a_damaged_ledger_is_an_error(
    ledger_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(ledger_copy.read_bytes())
    data[4096:12288] = bytes(range(256)) * 32
    ledger_copy.write_bytes(bytes(data))
    assert cli.main(["verify", "--db", str(ledger_copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kiosk: error: ledger {ledger_copy}: damaged")
    assert "Traceback" not in err


# --- run: the installed kiosk's profile, one daemon per ledger, a clear word about pins ---------


@pytest.fixture
def daemon_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[config_mod.Config]]:
    """kiosk run up to the daemon's loop, which records its configuration instead; mock
    pins, and gpiozero's default factory put back after."""
    from gpiozero import Device

    import kiosk.daemon

    started: list[config_mod.Config] = []

    def run(config: config_mod.Config, pins: object) -> int:
        started.append(config)
        assert lock.holder(config.ledger.path) == os.getpid()
        assert pins is not None
        return 0

    monkeypatch.setattr(kiosk.daemon, "_run", run)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(Device, "pin_factory", None)
    yield started
    if Device.pin_factory is not None:
        Device.pin_factory.close()


def bench_profile(tmp_path: Path) -> Path:
    profile = tmp_path / "bench.toml"
    text = (config_mod.CONFIG_DIR / "cctalk-bench.toml").read_text()
    profile.write_text(text.replace('path = "bench.db"', f'path = "{tmp_path / "bench.db"}"'))
    return profile


def test_run_without_a_profile_says_where_it_looked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    daemon_runs: list,
) -> None:
    system = tmp_path / "etc" / "kiosk.toml"
    monkeypatch.setattr(config_mod, "SYSTEM_PROFILE", system)
    assert cli.main(["run"]) == 1
    assert capsys.readouterr().err == (
        f"kiosk: error: no configuration: {system} does not exist and KIOSK_CONFIG is not set "
        "(or pass -c FILE)\n"
    )
    assert daemon_runs == []


def test_run_uses_the_installed_profile_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon_runs: list
) -> None:
    system = bench_profile(tmp_path)
    monkeypatch.setattr(config_mod, "SYSTEM_PROFILE", system)
    assert cli.main(["run"]) == 0
    named = tmp_path / "named.toml"
    named.write_text(system.read_text().replace('id = "bench-001"', 'id = "bench-002"'))
    monkeypatch.setenv("KIOSK_CONFIG", str(named))
    assert cli.main(["run"]) == 0
    assert [c.source for c in daemon_runs] == [str(system), str(named)]
    assert [c.kiosk.id for c in daemon_runs] == ["bench-001", "bench-002"]
    assert lock.holder(tmp_path / "bench.db") is None  # released when the daemon returned


def test_a_second_daemon_on_a_ledger_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon_runs: list
) -> None:
    ledger = tmp_path / "bench.db"
    with LedgerLock(ledger):
        assert cli.main(["run", "-c", str(bench_profile(tmp_path))]) == 1
    assert capsys.readouterr().err == (
        f"kiosk: error: ledger {ledger} is in use by kiosk process {os.getpid()} "
        f"(lock {ledger}.lock)\n"
    )
    assert daemon_runs == []


def test_pin_factory_follows_gpiozero_pin_factory(daemon_runs: list) -> None:
    from gpiozero.pins.mock import MockFactory

    from kiosk.pins import pin_factory

    assert isinstance(pin_factory(), MockFactory)


def test_run_with_a_bogus_pin_factory_says_how_to_proceed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    daemon_runs: list,
) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "bogus")
    assert cli.main(["run", "-c", str(bench_profile(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kiosk: error: GPIOZERO_PIN_FACTORY=bogus: no such pin factory (known: ")
    assert "pip install lgpio" in err and "GPIOZERO_PIN_FACTORY=mock" in err
    assert err.count("\n") == 1
    assert daemon_runs == []
    assert lock.holder(tmp_path / "bench.db") is None


def test_run_off_a_pi_prints_one_error_and_no_fallback_warnings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIOSK_", "GPIOZERO_"))}
    env["PYTHONWARNINGS"] = "always"  # would show every fallback warning gpiozero raises
    try:
        import lgpio  # noqa: F401
    except ImportError:
        pass
    else:
        env["GPIOZERO_PIN_FACTORY"] = "bogus"  # lgpio installed: make the factory fail anyway
    argv = [sys.executable, "-m", "kiosk.cli", "run", "-c", str(bench_profile(tmp_path))]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("kiosk: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr
    assert "GPIOZERO_PIN_FACTORY=mock" in done.stderr


# --- output that cannot be written --------------------------------------------------------------


def run_into(argv: list[str], stdout: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
    return subprocess.run(
        [sys.executable, "-m", "kiosk.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "argv", [["diagram"], ["demo", "--shoppers", "50"]], ids=["diagram", "demo"]
)
def test_a_reader_that_went_away_ends_the_command_quietly(argv: list[str]) -> None:
    """As `kiosk demo --shoppers 50 | head -1` once head has exited: every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = run_into(argv, write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")


def test_a_full_disk_under_stdout_is_an_error_without_traceback() -> None:
    with open("/dev/full", "w") as full:
        done = run_into(["diagram"], full.fileno())
    assert done.returncode == 1
    assert done.stderr == "kiosk: error: cannot write the results: No space left on device\n"


# --- the demo: its own ledger, its terminal, its signals ----------------------------------------


def test_a_headless_run_on_an_existing_ledger_checks_what_it_added(tmp_path: Path) -> None:
    db = tmp_path / "twice.db"
    argv = ["demo", "--shoppers", "8", "--seed", "5", "--db", str(db), "--json"]
    first = run_main(argv)
    second = run_main(argv)
    assert (first[0], second[0]) == (0, 0)
    summaries = [json.loads(out) for _, out in (first, second)]
    assert summaries[1]["coins_cents"] > summaries[0]["coins_cents"] > 0  # the ledger grew
    assert summaries[1]["invariants"]["ground truth"] == []


def test_the_headless_demo_refuses_a_profile_without_a_door(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = config_mod.CONFIG_DIR / "cctalk-bench.toml"
    db = tmp_path / "bench.db"
    assert cli.main(["demo", "--shoppers", "5", "-c", str(bench), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kiosk: error: {bench}: the headless demo needs a door switch")
    assert "panel.door_pin" in err and f"kiosk demo -c {bench}" in err
    assert not db.exists()


def test_a_temporary_demo_ledger_is_memory_backed_unless_tmpdir_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim import demo

    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.delenv("TMPDIR", raising=False)
    assert demo.scratch_dir(memory) == str(memory)
    assert demo.scratch_dir(tmp_path / "none") is None
    monkeypatch.setattr(demo, "MEMORY_FS", memory)
    with demo._ledger_path(None) as path:
        assert path.parent.parent == memory
    assert listing(memory) == []
    with demo._ledger_path(str(tmp_path / "mine.db")) as path:
        assert path == tmp_path / "mine.db"  # an explicit --db stays where it was put
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert demo.scratch_dir(memory) is None


def test_in_the_terminal_demo_any_other_key_cancels_a_jam(kiosk: SimKiosk) -> None:
    from sim.demo import Screen

    screen = Screen(kiosk)
    screen.key("j")
    screen.key("1")
    assert (screen.note, screen.jam_next) == ("jam cancelled", False)
    assert not kiosk.world.truth.cashbox  # the key did nothing else
    screen.key("a")
    assert not kiosk.world.spirals[1].jammed
    assert screen.note == "button 1 pressed"
    screen.key("j")
    screen.key("a")
    assert kiosk.world.spirals[1].jammed and screen.note == "slot 1 jammed"


def test_the_terminal_demo_door_key_without_a_door(make_kiosk: KioskMaker) -> None:
    from sim.demo import Screen

    bench = config_mod.load(config_mod.CONFIG_DIR / "cctalk-bench.toml", env={})
    screen = Screen(make_kiosk(bench))
    screen.key("d")
    assert screen.note == "this kiosk has no door switch (panel.door_pin)"


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def demo_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("kiosk-demo-*"))


def test_sigterm_ends_a_headless_demo_and_removes_its_ledger(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
    env["TMPDIR"] = str(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "demo", "--shoppers", "1000000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: any(d.glob("demo.db") for d in demo_dirs(tmp_path)), "the demo ledger")
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert (demo.returncode, err) == (128 + signal.SIGTERM, "")
    assert demo_dirs(tmp_path) == []


def test_sigterm_ends_the_terminal_demo_restoring_the_terminal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
    env.update(TMPDIR=str(tmp_path), TERM="xterm")
    controller, terminal = pty.openpty()
    cooked = termios.tcgetattr(terminal)
    output = bytearray()

    def read_screen() -> None:
        with contextlib.suppress(OSError):  # EIO once the demo is gone
            while chunk := os.read(controller, 4096):
                output.extend(chunk)

    demo = subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "demo"],
        cwd=ROOT,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"state idle" in output, "the demo's screen")
        assert len(demo_dirs(tmp_path)) == 1
        assert termios.tcgetattr(terminal)[3] != cooked[3]  # curses: no echo, no line editing
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=30) == 128 + signal.SIGTERM
        assert termios.tcgetattr(terminal)[3] == cooked[3]  # echo and line editing are back
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    assert b"Traceback" not in output
    assert b"\x1b[?1049l" in output  # curses left the alternate screen
    assert demo_dirs(tmp_path) == []
