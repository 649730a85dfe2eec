"""The systemd unit in config/ agrees with the Raspberry Pi profile and with the daemon: notify
with a watchdog the core keeps alive, always restarted within a second, hardened, writing only
where the profile puts the ledger and the control socket, and given time to stop after a vend."""

from __future__ import annotations

import configparser
from pathlib import Path

from kiosk import config as config_mod
from kiosk.notify import Notifier
from kiosk.telemetry import STOP_WAIT_S

UNIT = config_mod.CONFIG_DIR / "kiosk.service"
PI_PROFILE = config_mod.CONFIG_DIR / "pi-pulse.toml"


def unit() -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parsed.read_string(UNIT.read_text())
    return parsed


def test_the_unit_is_notify_with_a_watchdog_and_comes_back_at_once() -> None:
    service = unit()["Service"]
    assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
    assert (service["Restart"], service["RestartSec"]) == ("always", "1")
    watchdog_s = int(service["WatchdogSec"])
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": str(watchdog_s * 10**6)}
    assert Notifier(env).keepalive_s == watchdog_s / 2
    limits = unit()["Unit"]
    assert int(limits["StartLimitBurst"]) >= 10 and int(limits["StartLimitIntervalSec"]) > 0


def test_the_unit_runs_the_pi_profile_where_it_may_write() -> None:
    service = unit()["Service"]
    command = service["ExecStart"].split()
    assert command[1:3] == ["run", "-c"] and command[3] == str(config_mod.SYSTEM_PROFILE)
    config = config_mod.load(PI_PROFILE, env={})
    assert str(Path(config.ledger.path).parent) in service["ReadWritePaths"].split()
    assert Path(config.ledger.path).parent == Path("/var/lib") / service["StateDirectory"]
    assert Path(config.control_socket).parent == Path("/run") / service["RuntimeDirectory"]
    assert (service["User"], service["ProtectSystem"], service["NoNewPrivileges"]) == (
        "kiosk",
        "strict",
        "yes",
    )
    # Stopping lets a vend end (the motor's longest run and the drop wait), then says offline.
    vend_s = config.dispenser.max_run_s + config.dispenser.drop_wait_s
    assert int(service["TimeoutStopSec"]) > vend_s + STOP_WAIT_S
