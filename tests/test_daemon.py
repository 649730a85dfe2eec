"""`kiosk run` as a process: the daemon on mock pins and the simulated ccTalk acceptor on a
pseudo-terminal, opened by path like any serial port; coins land in the ledger; SIGTERM and SIGHUP
stop it cleanly with coins inhibited, even when the acceptor was just lost; a second daemon on the
same acceptor is refused."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from broker import Broker
from daemons import Daemons
from peers import Subscriber

from kiosk import cli
from sim.bench_kiosk import profile
from sim.cctalk_device import SimCcTalkAcceptor

TIMEOUT_S = 20.0


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def query(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return int(conn.execute(sql).fetchone()[0] or 0)
        except sqlite3.OperationalError:
            return 0  # not migrated yet


def ledger_cents(db: Path) -> int:
    return query(db, "SELECT coalesce(sum(value_cents), 0) FROM coins")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_daemon_takes_coins_and_stops_with_coins_inhibited(
    tmp_path: Path, device: SimCcTalkAcceptor, daemons: Daemons, signum: int
) -> None:
    db = tmp_path / "kiosk.db"
    daemon = daemons(profile(tmp_path, device.path, db))
    wait_for(lambda: device.master_enabled, "the kiosk to enable coins")
    assert device.masks == 0b111
    for value in (5, 2, 1):
        assert device.insert(value)
    wait_for(lambda: ledger_cents(db) == 8, "8 c in the ledger")
    output = daemons.stop(daemon, signum)
    assert daemon.returncode == 0, output
    assert "Centimeo SIM-CA1 serial 12345678" in output
    assert f"signal {signal.Signals(signum).name}: stopping" in output
    assert not device.master_enabled  # inhibited on the way out
    assert cli.main(["verify", "--db", str(db)]) == 0


def test_the_technician_reaches_the_daemon_through_its_socket(
    tmp_path: Path,
    device: SimCcTalkAcceptor,
    daemons: Daemons,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "kiosk.db"
    config = profile(tmp_path, device.path, db)
    daemon = daemons(config)
    wait_for(lambda: device.master_enabled, "the kiosk to enable coins")
    assert cli.main(["coins", "inhibit", "2", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "coins turned off: 2 c\n"
    wait_for(lambda: device.masks == 0b101, "the 2 c coin inhibited on the device")
    assert cli.main(["status", "--json", "-c", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] and status["state"] == "idle"
    assert status["acceptor"]["enabled_cents"] == [1, 5]
    socket_path = Path(f"{db}.sock")
    assert socket_path.exists()
    output = daemons.stop(daemon)
    assert daemon.returncode == 0, output
    assert not socket_path.exists()  # removed on a clean stop
    assert cli.main(["status", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "stopped"


def test_a_stop_while_the_acceptor_is_lost_still_inhibits_it(
    tmp_path: Path, device: SimCcTalkAcceptor, daemons: Daemons
) -> None:
    db = tmp_path / "kiosk.db"
    daemon = daemons(profile(tmp_path, device.path, db))
    wait_for(lambda: device.master_enabled, "the kiosk to enable coins")
    device.silent = True
    lost = "SELECT count(*) FROM faults WHERE device = 'coin_acceptor' AND code = 'lost'"
    wait_for(lambda: query(db, lost) == 1, "the acceptor to be lost")
    device.silent = False  # answering again, before the kiosk has noticed
    output = daemons.stop(daemon)
    assert daemon.returncode == 0, output
    assert not device.master_enabled


def test_a_second_daemon_on_the_same_acceptor_is_refused(
    tmp_path: Path, device: SimCcTalkAcceptor, daemons: Daemons
) -> None:
    first = daemons(profile(tmp_path, device.path, tmp_path / "one.db"))
    wait_for(lambda: device.master_enabled, "the first kiosk to enable coins")
    second = daemons(profile(tmp_path, device.path, tmp_path / "two.db", name="two.toml"))
    output, _ = second.communicate(timeout=TIMEOUT_S)
    assert second.returncode == 1
    assert f"kiosk: error: ccTalk port {device.path} is in use by process {first.pid}" in output
    assert "Traceback" not in output
    assert device.insert(5)
    wait_for(lambda: ledger_cents(tmp_path / "one.db") == 5, "the coin in the first ledger")
    assert ledger_cents(tmp_path / "two.db") == 0
    daemons.stop(first)


def test_a_second_daemon_on_the_same_ledger_is_refused(
    tmp_path: Path, device: SimCcTalkAcceptor, daemons: Daemons
) -> None:
    db = tmp_path / "kiosk.db"
    first = daemons(profile(tmp_path, device.path, db))
    wait_for(lambda: device.master_enabled, "the first kiosk to enable coins")
    other = SimCcTalkAcceptor(echo=False)
    try:
        second = daemons(profile(tmp_path, other.path, db, name="two.toml"))
        output, _ = second.communicate(timeout=TIMEOUT_S)
    finally:
        other.close()
    assert second.returncode == 1
    assert f"kiosk: error: ledger {db} is in use by kiosk process {first.pid}" in output
    assert "Traceback" not in output
    assert not other.master_enabled  # refused before it touched its acceptor
    assert device.insert(2)
    wait_for(lambda: ledger_cents(db) == 2, "the coin counted once")
    daemons.stop(first)
    assert ledger_cents(db) == 2


@pytest.mark.parametrize("content", [b"", b"not a database, just some text\n"])
def test_a_ledger_that_is_not_one_is_refused_untouched(
    tmp_path: Path, device: SimCcTalkAcceptor, daemons: Daemons, content: bytes
) -> None:
    db = tmp_path / "kiosk.db"
    db.write_bytes(content)
    daemon = daemons(profile(tmp_path, device.path, db))
    output, _ = daemon.communicate(timeout=TIMEOUT_S)
    assert daemon.returncode == 1
    assert output.startswith(f"kiosk: error: ledger {db}")
    assert "Traceback" not in output
    assert db.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.toml", "kiosk.db", "kiosk.db.lock"]
    assert not device.master_enabled


def test_the_dashboard_sees_a_killed_kiosk_go_and_come_back_with_nothing_lost(
    tmp_path: Path,
    device: SimCcTalkAcceptor,
    daemons: Daemons,
    broker: Broker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "kiosk.db"
    config = profile(tmp_path, device.path, db)
    config.write_text(
        config.read_text() + f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    base = "kiosk/v1/bench-001"
    status = f"{base}/status"
    with Subscriber(broker, f"{base}/#") as dashboard:

        def last_status() -> bytes | None:
            said = dashboard.on(status)
            return said[-1].payload if said else None

        first = daemons(config)
        dashboard.wait_for(lambda seen: last_status() == b"online", TIMEOUT_S)
        assert cli.main(["price", "1", "25", "-c", str(config)]) == 0
        dashboard.wait_for(lambda seen: any("/event/service" in m.topic for m in seen), TIMEOUT_S)

        first.kill()  # a power cut: no clean stop, the broker says it with the last will
        first.communicate(timeout=TIMEOUT_S)
        dashboard.wait_for(lambda seen: last_status() == b"offline", TIMEOUT_S)
        assert cli.main(["price", "1", "30", "-c", str(config)]) == 0  # on the stopped kiosk
        capsys.readouterr()

        second = daemons(config)
        dashboard.wait_for(lambda seen: last_status() == b"online", TIMEOUT_S)
        events = dashboard.wait_for(
            lambda seen: (
                len({m.json()["seq"] for m in seen if "/event/" in m.topic})
                >= query(db, "SELECT count(*) FROM outbox")
            ),
            TIMEOUT_S,
        )
        output = daemons.stop(second)
        assert second.returncode == 0, output
        dashboard.wait_for(lambda seen: last_status() == b"offline", TIMEOUT_S)  # said itself
    stream = {m.json()["msg_id"]: m.json() for m in events if "/event/" in m.topic}
    seqs = sorted(e["seq"] for e in stream.values())
    assert seqs == list(range(1, len(seqs) + 1))
    [offline_change] = [e for e in stream.values() if "-> 30" in e.get("detail", "")]
    assert offline_change["historical"] is True and offline_change["origin"] == "cli"
