"""Deploying on a Raspberry Pi: install.sh laid out under a temporary root (what it puts where,
with which modes, the unit's paths matching them, the installed kiosk running from its own
venv), an upgrade that keeps the ledger and an edited profile, uninstall and purge, its errors;
and the pin tables of docs/wiring.md agreeing with the Pi profiles.

The install runs with --offline: its venv is made by this test's Python and the kiosk built with
no package index, the test environment's packages (on PYTHONPATH) standing in for what pip would
download on a Pi. Under --root the script needs no root, so the same tests run as root in CI and
as anyone on a developer's machine.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from kiosk import config as config_mod
from kiosk.config import Config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "install.sh"
CONFIG = config_mod.CONFIG_DIR
VENV_KIOSK = "opt/kiosk/.venv/bin/kiosk"
TIMEOUT_S = 300  # a venv and a wheel build on a loaded 2-core machine take seconds, not minutes
ENV = {
    **os.environ,
    "PYTHONPATH": sysconfig.get_paths()["purelib"],  # the packages pip would download
    "PIP_CONFIG_FILE": os.devnull,  # no machine-wide index or wheel directory
}


def command(*args: str | Path, cwd: Path | str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=TIMEOUT_S,
        check=False,
    )


def run(*args: str | Path, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    if root is not None:
        args = (*args, "--root", root, "--python", sys.executable, "--offline")
    return command(SCRIPT, *args)


def installed(root: Path, *args: str) -> str:
    result = run(*args, root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def skipped(output: str) -> list[str]:
    return re.findall(r"^install\.sh: skipped under --root: (.*)$", output, re.MULTILINE)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unit(root: Path) -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parsed.read_string((root / "etc/systemd/system/kiosk.service").read_text())
    return parsed


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


@pytest.fixture(scope="module")
def cctalk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh install of the ccTalk profile: its root and what the script said."""
    root = tmp_path_factory.mktemp("install") / "root"
    return root, installed(root, "--profile", "cctalk")


# --- a fresh install ----------------------------------------------------------------------------


def test_an_install_under_a_root_says_each_step_it_skips(cctalk: tuple[Path, str]) -> None:
    _, output = cctalk
    steps = skipped(output)
    for expected in [
        "apt-get install",
        "useradd kiosk (groups dialout,gpio,i2c",
        "chown -R kiosk:kiosk /var/lib/kiosk",
        "raspi-config nonint do_i2c 0",
        "raspi-config nonint do_serial_hw 0",
        "raspi-config nonint do_serial_cons 1",
        "systemctl daemon-reload; systemctl enable kiosk; systemctl start kiosk",
    ]:
        assert any(step.startswith(expected) for step in steps), (expected, steps)


def test_the_install_lays_out_the_profile_its_common_part_the_unit_and_the_ledger_directory(
    cctalk: tuple[Path, str],
) -> None:
    root, _ = cctalk
    etc = root / "etc/kiosk"
    assert (etc / "kiosk.toml").read_bytes() == (CONFIG / "pi-cctalk.toml").read_bytes()
    assert (etc / "pi-common.toml").read_bytes() == (CONFIG / "pi-common.toml").read_bytes()
    service = root / "etc/systemd/system/kiosk.service"
    assert service.read_bytes() == (CONFIG / "kiosk.service").read_bytes()
    journald = root / "etc/systemd/journald.conf.d/50-kiosk.conf"
    assert "SystemMaxUse=" in journald.read_text()
    for path in (etc / "kiosk.toml", etc / "pi-common.toml", service, journald):
        assert mode(path) == 0o644, path
    assert mode(etc) == 0o755
    ledger_dir = root / "var/lib/kiosk"
    assert ledger_dir.is_dir() and mode(ledger_dir) == 0o750
    # Owners: who ran it (the kiosk user exists only on a real install).
    assert {p.stat().st_uid for p in (etc, ledger_dir, service)} == {os.getuid()}
    assert (root / "opt/kiosk/README.md").is_file() and (
        root / "opt/kiosk/docs/wiring.md"
    ).is_file()
    assert not list(etc.glob("*.new"))
    # The technician's `kiosk` on the PATH: the venv's, where it will be once the root is /.
    assert os.readlink(root / "usr/local/bin/kiosk") == "/" + VENV_KIOSK


def test_the_units_paths_are_where_the_install_put_things(cctalk: tuple[Path, str]) -> None:
    root, _ = cctalk
    service = unit(root)["Service"]
    program, verb, flag, profile = service["ExecStart"].split()
    assert under(root, program) == root / VENV_KIOSK and os.access(root / VENV_KIOSK, os.X_OK)
    assert (verb, flag) == ("run", "-c") and under(root, profile).is_file()
    config = config_mod.load(under(root, profile), env={})
    ledger_dir = Path(config.ledger.path).parent
    assert (
        str(ledger_dir) in service["ReadWritePaths"].split()
        and under(root, str(ledger_dir)).is_dir()
    )
    assert ledger_dir == Path("/var/lib") / service["StateDirectory"]
    assert Path(config.control_socket).parent == Path("/run") / service["RuntimeDirectory"]
    documentation = unit(root)["Unit"]["Documentation"].removeprefix("file://")
    assert under(root, documentation).is_file()


def test_the_installed_kiosk_runs_from_its_venv_and_checks_the_installed_profile(
    cctalk: tuple[Path, str],
) -> None:
    root, output = cctalk
    kiosk = root / VENV_KIOSK
    helped = command(kiosk, "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: kiosk"), helped.stderr
    profile = root / "etc/kiosk/kiosk.toml"
    checked = command(kiosk, "config", "check", profile)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"{profile}: ok (3 slots, coin acceptor cctalk)\n"
    assert checked.stdout in output  # the install checked it too
    # Installed, not linked to the clone: the clone may be removed.
    where = command(
        root / "opt/kiosk/.venv/bin/python", "-c", "import kiosk; print(kiosk.__file__)"
    )
    assert Path(where.stdout.strip()).is_relative_to(root / "opt/kiosk/.venv"), where


# --- upgrade, uninstall, purge ------------------------------------------------------------------


def test_an_upgrade_keeps_the_ledger_and_the_edited_profile_and_uninstall_keeps_them_until_purge(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    first = installed(root, "--profile", "pulse")
    assert not any("do_serial" in step for step in skipped(first))  # no UART for a pulse acceptor
    etc, ledger = root / "etc/kiosk", root / "var/lib/kiosk/kiosk.db"
    ledger.write_bytes(b"SQLite format 3\x00 the kiosk's money")
    profile = etc / "kiosk.toml"
    edited = profile.read_text().replace('id = "paris-11-001"', 'id = "lyon-3-007"')
    assert edited != profile.read_text()
    profile.write_text(edited)
    module = next((root / "opt/kiosk/.venv/lib").glob("python3*/site-packages/kiosk/__init__.py"))
    shipped = module.read_text()
    module.write_text(shipped + "# changed\n")

    again = installed(root, "--profile", "cctalk")  # the clone pulled, the command run again
    assert "upgrading the kiosk" in again
    assert ledger.read_bytes() == b"SQLite format 3\x00 the kiosk's money"
    assert profile.read_text() == edited
    assert (etc / "kiosk.toml.new").read_bytes() == (CONFIG / "pi-cctalk.toml").read_bytes()
    assert not (etc / "pi-common.toml.new").exists()  # unchanged: nothing beside it
    assert module.read_text() == shipped  # the code itself was installed again

    gone = installed(root, "--uninstall")
    assert {"systemctl disable --now kiosk", "systemctl daemon-reload; userdel kiosk"} <= set(
        skipped(gone)
    )
    assert not (root / "opt/kiosk").exists() and not (root / "usr/local/bin/kiosk").is_symlink()
    assert not (root / "etc/systemd/system/kiosk.service").exists()
    assert not (root / "etc/systemd/journald.conf.d/50-kiosk.conf").exists()
    assert ledger.read_bytes().endswith(b"money") and profile.read_text() == edited

    installed(root, "--uninstall", "--purge")
    assert not (root / "var/lib/kiosk").exists() and not etc.exists()


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--frobnicate"], 2, "unknown option --frobnicate"),
        (["--profile", "coins"], 2, "unknown profile 'coins' (one of: cctalk pulse)"),
        (["--profile", "common"], 2, "unknown profile 'common'"),
        (["--profile"], 2, "--profile needs a value"),
        (["--purge"], 2, "--purge goes with --uninstall"),
        (["--uninstall", "--profile", "pulse"], 2, "--profile goes with an install"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(
    tmp_path: Path, args: list[str], status: int, message: str
) -> None:
    result = run("--root", tmp_path, *args)
    assert result.returncode == status and f"install.sh: error: {message}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_first_install_needs_a_profile(tmp_path: Path) -> None:
    result = run(root=tmp_path / "root")
    assert result.returncode == 2
    assert "first install: choose the coin acceptor with --profile" in result.stderr


def test_without_root_and_without_a_root_directory_it_refuses() -> None:
    if os.getuid() != 0:
        result = command(SCRIPT, "--profile", "pulse")
    else:  # CI runs as root: try it as nobody, on a copy nobody can read wherever the clone is
        with tempfile.TemporaryDirectory(dir="/tmp") as name:
            staged = Path(name)
            staged.chmod(0o755)
            shutil.copy2(SCRIPT, staged / SCRIPT.name)
            shutil.copytree(ROOT / "config", staged / "config")
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            result = command(*nobody, staged / SCRIPT.name, "--profile", "pulse")
    assert result.returncode == 1 and "install.sh: error: run as root" in result.stderr


def test_help_names_every_option() -> None:
    result = run("--help")
    assert result.returncode == 0
    for option in ("--profile", "--python", "--offline", "--root", "--uninstall", "--purge"):
        assert option in result.stdout


# --- the wiring page ----------------------------------------------------------------------------

WIRING = ROOT / "docs" / "wiring.md"
# The 40-pin header, pin 1 to 40: a power or ground pin, or the BCM number of its GPIO.
PINOUT = (
    "3V3 5V 2 5V 3 GND 4 14 GND 15 17 18 27 GND 22 23 3V3 24 10 GND "
    "9 25 11 8 GND 7 0 1 5 GND 6 12 13 GND 19 16 26 20 GND 21"
)
HEADER = {int(name): pin for pin, name in enumerate(PINOUT.split(), 1) if name.isdigit()}


def wiring_tables() -> dict[str, list[tuple[str, int, int]]]:
    """{"pi-common.toml": [(key, BCM, header pin), ...], ...} from the headings naming a file."""
    tables: dict[str, list[tuple[str, int, int]]] = {}
    rows: list[tuple[str, int, int]] | None = None
    for line in WIRING.read_text().splitlines():
        if line.startswith("#"):
            named = re.search(r"\(config/([\w-]+\.toml)\)", line)
            rows = tables.setdefault(named.group(1), []) if named else None
        elif rows is not None and (row := re.match(r"\|(.+?)\| GPIO(\d+) \| (\d+) \|", line)):
            rows.append((row.group(1).strip(), int(row.group(2)), int(row.group(3))))
    return tables


def profile_pins(config: Config) -> dict[str, int]:
    pins = {
        "panel.cancel_pin": config.panel.cancel_pin,
        "dispenser.drop_pin": config.dispenser.drop_pin,
    }
    if config.panel.door_pin is not None:
        pins["panel.door_pin"] = config.panel.door_pin
    for i, slot in enumerate(config.slots):
        for name in ("motor_pin", "home_pin", "button_pin", "led_pin"):
            pins[f"slots[{i}].{name}"] = getattr(slot, name)
    settings = config.coin_acceptor.settings
    for name in ("coin_pin", "inhibit_pin"):
        if getattr(settings, name, None) is not None:
            pins[f"coin_acceptor.{name}"] = getattr(settings, name)
    return pins


@pytest.mark.parametrize("profile", ["pi-pulse.toml", "pi-cctalk.toml"])
def test_the_wiring_page_shows_the_profiles_pins(profile: str) -> None:
    tables = wiring_tables()
    rows = tables["pi-common.toml"] + tables[profile]
    assert all(HEADER[bcm] == pin for _, bcm, pin in rows), rows
    keyed = {key.strip("`"): bcm for key, bcm, _ in rows if re.fullmatch(r"`[\w.\[\]]+_pin`", key)}
    assert keyed == profile_pins(config_mod.load(CONFIG / profile, env={}))
    used = [bcm for _, bcm, _ in rows]
    assert len(used) == len(set(used)), "a GPIO in two rows"
    assert {2, 3} <= set(used)  # the display's I2C pins are shown, and nothing else takes them
