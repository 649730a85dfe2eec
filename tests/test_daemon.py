"""`kiosk run` as a process: the daemon on mock pins and the simulated ccTalk acceptor on a
pseudo-terminal, opened by path like any serial port; coins land in the ledger and SIGTERM stops
it cleanly with coins inhibited."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from kiosk import cli
from kiosk.config import CONFIG_DIR
from sim.cctalk_device import SimCcTalkAcceptor

TIMEOUT_S = 20.0


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ledger_cents(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return int(
                conn.execute("SELECT coalesce(sum(value_cents), 0) FROM coins").fetchone()[0]
            )
        except sqlite3.OperationalError:
            return 0  # not migrated yet


def test_the_daemon_takes_coins_from_a_cctalk_acceptor(tmp_path: Path) -> None:
    device = SimCcTalkAcceptor(echo=False)
    db = tmp_path / "kiosk.db"
    profile = tmp_path / "bench.toml"
    text = (CONFIG_DIR / "cctalk-bench.toml").read_text()
    profile.write_text(
        text.replace('port = "/dev/ttyUSB0"', f'port = "{device.path}"').replace(
            'path = "bench.db"', f'path = "{db}"'
        )
    )
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONWARNINGS": "ignore"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "run", "-c", str(profile)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: device.master_enabled, "the kiosk to enable coins")
        assert device.masks == 0b111
        for value in (5, 2, 1):
            assert device.insert(value)
        wait_for(lambda: ledger_cents(db) == 8, "8 c in the ledger")
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=TIMEOUT_S)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        device.close()
    assert daemon.returncode == 0, output
    assert "Centimeo SIM-CA1 serial 12345678" in output
    assert not device.master_enabled  # inhibited on the way out
    assert cli.main(["verify", "--db", str(db)]) == 0
