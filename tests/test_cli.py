"""The `kiosk` command, called in-process through `main(argv)`: results on stdout, errors on
stderr as `kiosk: error: ...` with status 1, usage errors with status 2, `--help` everywhere.

One headless demo writes a ledger that the verify tests copy and tamper with.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import subcommands

from kiosk import cli
from kiosk import config as config_mod
from kiosk.errors import ConfigError
from kiosk.machine import TRANSITIONS, State

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
        "UPDATE cashbox SET count = count + 1 WHERE value_cents = 5",
        "cash box",
        r"5 c coins: \d+ accepted since the last collection, \d+ in the cash box",
    ),
    (
        "UPDATE stock SET quantity = quantity + 1 WHERE slot = 2",
        "stock",
        r"slot 2: count \d+ \+ refills \d+ - sales \d+ = \d+, stock says \d+",
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
