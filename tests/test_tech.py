"""The technician's subcommands, each against a running kiosk on the simulator (through its
control socket, as against `kiosk run`) and against a stopped one (on the ledger itself); bad
input gives a clear message, status 1, and leaves the ledger as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from evadts import parse
from scenarios import buy, pay

from kiosk import cli
from kiosk import config as config_mod
from kiosk.config import Config
from sim.live import LiveKiosk
from sim.rig import SimKiosk

PROFILE = str(config_mod.PULSE_PROFILE)


class Kiosk:
    """A kiosk with a few sales behind it, running (mode "running") or stopped."""

    def __init__(self, mode: str, db: Path, config: Config) -> None:
        self.mode, self.db, self.config = mode, db, config
        rig = SimKiosk(config, db)  # some history: coins, a sale, a refill due
        pay(rig, 5, 5, 5, 5, 2)
        buy(rig, 1)
        rig.shutdown()
        self.live = LiveKiosk(config, db) if mode == "running" else None

    def close(self) -> None:
        if self.live is not None:
            self.live.close()

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        status = cli.main([*argv, "-c", PROFILE, "--db", str(self.db)])
        out, err = capsys.readouterr()
        return status, out, err

    def json(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        status, out, err = self.run(capsys, *argv, "--json")
        assert status == 0, err
        return json.loads(out)

    def digest(self) -> str:
        """The ledger's content (not its bytes: a WAL may hold it)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()

    def in_service(self, capsys: pytest.CaptureFixture[str]) -> None:
        if self.mode == "running":
            assert self.run(capsys, "service", "on")[0] == 0


@pytest.fixture(params=["running", "stopped"])
def kiosk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kiosk]:
    db = tmp_path / "k.db"
    config = config_mod.load(PROFILE, env={}, **{"ledger.path": str(db)})
    made = Kiosk(request.param, db, config)
    yield made
    made.close()


def test_status(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    status = kiosk.json(capsys, "status")
    assert status["credit_cents"] == 2
    assert status["state"] == ("credit" if kiosk.mode == "running" else "stopped")
    assert status["running"] is (kiosk.mode == "running")
    code, out, err = kiosk.run(capsys, "status", "--verbose")
    assert code == 0 and "credit     0.02 €" in out
    assert ("through the daemon" if kiosk.mode == "running" else "read-only") in err


def test_stock_refill_count(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    stock = {row["slot"]: row for row in kiosk.json(capsys, "stock")}
    assert stock[1]["quantity"] == 11 and stock[1]["price_cents"] == 20
    kiosk.in_service(capsys)
    code, out, err = kiosk.run(capsys, "refill", "1", "--full", "-v")
    assert code == 0, err
    assert "slot 1: +1, 12 of 12" in out
    assert kiosk.run(capsys, "stock", "count", "2", "7")[0] == 0
    stock = {row["slot"]: row for row in kiosk.json(capsys, "stock")}
    assert stock[1]["quantity"] == 12 and stock[2]["quantity"] == 7
    code, out, _ = kiosk.run(capsys, "stock")
    assert "Chewing-gum" in out
    assert kiosk.run(capsys, "verify")[0] == 0


def test_price_and_slot(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    assert kiosk.json(capsys, "price", "1", "25") == {
        "slot": 1,
        "price_cents": 25,
        "was_cents": 20,
    }
    assert kiosk.json(capsys, "slot", "disable", "3")["changed"] is True
    stock = {row["slot"]: row for row in kiosk.json(capsys, "stock")}
    assert stock[1]["price_cents"] == 25 and stock[3]["enabled"] is False
    assert kiosk.json(capsys, "slot", "enable", "3")["changed"] is True


def test_cashbox_and_collect(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    box = kiosk.json(capsys, "cashbox")
    assert box["value_cents"] == 22 and box["coins"] == {"2": 1, "5": 4}
    kiosk.in_service(capsys)
    code, out, err = kiosk.run(capsys, "collect", "--counted", "20")
    assert code == 0, err
    assert "difference -2 c" in out
    assert kiosk.json(capsys, "cashbox")["value_cents"] == 0


def test_service_and_test_vend(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    assert kiosk.run(capsys, "service", "on")[0] == 0
    code, out, err = kiosk.run(capsys, "test-vend", "2")
    if kiosk.mode == "stopped":
        assert code == 1 and "needs the kiosk daemon running" in err
        return
    assert code == 0, err
    assert "slot 2: delivered" in out
    stock = {row["slot"]: row for row in kiosk.json(capsys, "stock")}
    assert stock[2]["quantity"] == 14
    assert kiosk.run(capsys, "service", "off")[0] == 0
    assert kiosk.json(capsys, "status")["state"] == "credit"


def test_coins(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    coins = kiosk.json(capsys, "coins")
    assert coins["running"] is (kiosk.mode == "running")
    assert coins["coins_cents"] == [1, 2, 5] and coins["enabled_cents"] == [1, 2, 5]
    assert coins["inhibited_cents"] == [] and coins["driver"] == "pulse"
    before = kiosk.digest()
    code, _, err = kiosk.run(capsys, "coins", "inhibit", "2")
    assert code == 1 and "takes or refuses all its coins together" in err  # either way
    assert kiosk.digest() == before


def test_coins_turned_off_on_a_stopped_cctalk_kiosk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "k.db"
    profile = str(config_mod.DEFAULT_PROFILE)
    SimKiosk(config_mod.load(profile, env={}), db).shutdown()

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main([*argv, "-c", profile, "--db", str(db)])
        return code, capsys.readouterr().err

    assert run("coins", "inhibit", "1") == (0, "")
    assert run("coins", "inhibit", "2") == (0, "")
    code, err = run("coins", "inhibit", "5")
    assert code == 1 and "every coin off" in err
    assert cli.main(["coins", "--json", "-c", profile, "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["enabled_cents"] == [5]


def test_faults_events_sales_impact(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    assert kiosk.json(capsys, "faults")["active"] == []
    code, _, err = kiosk.run(capsys, "faults", "clear")
    assert code == 1 and "no active fault" in err
    assert "ledger_created" in kiosk.run(capsys, "events")[1]
    assert kiosk.run(capsys, "price", "2", "12")[0] == 0
    [last] = kiosk.run(capsys, "events", "-n", "1")[1].strip().splitlines()
    assert "slot_changed" in last and "price_cents 10 -> 12" in last
    code, out, _ = kiosk.run(capsys, "sales", "--by", "product", "--csv")
    assert code == 0 and out.splitlines()[1].startswith("Cookie bio,1,20")
    impact = kiosk.json(capsys, "impact")
    assert json.dumps(impact)  # shape checked in test_figures
    code, out, _ = kiosk.run(capsys, "impact")
    assert code == 0 and "5" in out


def test_audit(kiosk: Kiosk, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "audit.dex"
    code, _, err = kiosk.run(capsys, "audit", "-o", str(out_file), "--reset")
    assert code == 0, err
    report = parse(out_file.read_bytes().decode("ascii"))
    assert report.one("VA1").numbers(1, 2) == (20, 1)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["refill", "1", "-2"], "out of range"),
        (["refill", "1", "2.5"], "not a whole number"),
        (["refill", "9", "1"], "no slot 9"),
        (["refill", "1", "5"], "more fit, not 5"),
        (["price", "1", "0.20"], "not whole cents"),
        (["price", "1", "1000000"], "out of range"),
        (["stock", "count", "1", "-1"], "out of range"),
        (["slot", "disable", "x"], "not a whole number"),
        (["collect", "--counted", "abc"], "not whole cents"),
        (["sales", "--since", "yesterday"], "not a date"),
        (["sales", "--since", "2026-02-01", "--until", "2026-01-01"], "is after --until"),
    ],
)
def test_bad_input_changes_nothing(
    kiosk: Kiosk, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    kiosk.in_service(capsys)
    before = kiosk.digest()
    code, _, err = kiosk.run(capsys, *argv)
    assert code == 1 and reason in err and err.startswith("kiosk: error: "), err
    assert kiosk.digest() == before


def test_usage_errors_exit_2(kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["refill", "1"], ["refill", "1", "2", "--full"], ["stock", "count", "1"]):
        with pytest.raises(SystemExit) as stopped:
            kiosk.run(capsys, *argv)
        assert stopped.value.code == 2, argv


def test_an_audit_to_a_file_that_cannot_be_written_resets_nothing(
    kiosk: Kiosk, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = kiosk.digest()
    code, _, err = kiosk.run(capsys, "audit", "--reset", "-o", str(tmp_path / "no" / "a.dex"))
    assert code == 1 and "cannot write" in err, err
    assert kiosk.digest() == before


def test_a_refill_with_the_door_closed_is_refused(tmp_path: Path, capsys: Any) -> None:
    made = Kiosk(
        "running",
        tmp_path / "k.db",
        config_mod.load(PROFILE, env={}, **{"ledger.path": str(tmp_path / "k.db")}),
    )
    try:
        before = made.digest()
        code, _, err = made.run(capsys, "refill", "2", "1")
        assert code == 1 and "the kiosk is credit; open the door" in err
        assert made.digest() == before
    finally:
        made.close()


def test_a_price_set_by_hand_survives_a_restart(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "k.db"
    config = config_mod.load(PROFILE, env={}, **{"ledger.path": str(db)})
    made = Kiosk("running", db, config)
    assert made.run(capsys, "price", "3", "17")[0] == 0
    made.close()
    again = LiveKiosk(config, db)
    try:
        assert again.do(lambda rig: rig.controller.slots[3].price_cents) == 17
    finally:
        again.close()


def as_nobody(argv: list[str]) -> tuple[int, str]:
    """cli.main(argv) in a child process that dropped to user nobody: its status and stderr."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork beside the kiosk's threads
        pid = os.fork()
    if pid == 0:  # the child: only this call, then out
        code = 70
        try:
            sys.stderr = os.fdopen(write_end, "w")
            os.environ.pop(config_mod.PROFILE_ENV, None)
            os.setgid(65534)
            os.setuid(65534)
            code = cli.main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as err:
        text = err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_a_socket_the_user_may_not_open(capsys: Any) -> None:
    home = Path(tempfile.mkdtemp(prefix="kiosk-perm-"))
    try:
        home.chmod(0o755)  # anyone may look in; the socket itself is owner and group only
        db = home / "k.db"
        made = Kiosk("running", db, config_mod.load(PROFILE, env={}, **{"ledger.path": str(db)}))
        try:
            before = made.digest()
            if os.getuid() == 0:  # root opens anything: ask as nobody
                # --db alone: nobody may not be able to read the profile where the tests run
                code, err = as_nobody(["price", "1", "30", "--db", str(db)])
            else:
                os.chmod(f"{db}.sock", 0)
                code = cli.main(["price", "1", "30", "-c", PROFILE, "--db", str(db)])
                err = capsys.readouterr().err
            assert code == 1 and "permission denied" in err, err
            assert made.digest() == before
        finally:
            made.close()
    finally:
        shutil.rmtree(home)
