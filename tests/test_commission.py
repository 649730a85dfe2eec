"""Commissioning: `kiosk hw check` and `kiosk hw pulses` against the simulated ccTalk and pulse
worlds (sim/commissioning.py, on simulated time), the raw edge recorder, the train analysis and
its proposals fed back into the real pulse driver, and the refusals (a running daemon, its port
held, a ccTalk profile for pulses, bad options)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Daemons

from drivers.base import CoinAccepted
from drivers.edges import CoinLineRecorder, Edge
from drivers.pulse import PulseCoinAcceptor, PulseSettings
from kiosk import cli, commission, lock
from kiosk import commission_check as hw
from kiosk import commission_pulses as pulses
from kiosk import config as config_mod
from kiosk.commission import Setup, TerminalTechnician, Wanted
from kiosk.commission_check import Report, Result
from kiosk.config import Config
from kiosk.errors import KioskError
from kiosk.lock import LedgerLock
from sim.bench_kiosk import profile
from sim.cctalk_device import SimCcTalkAcceptor
from sim.clock import SimClock
from sim.commissioning import ClockedFactory, SimSite, simulated

TIMEOUT_S = 20.0  # a generous ceiling for what happens in other processes


@pytest.fixture(autouse=True)
def _no_kiosk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("KIOSK_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def cctalk_config(tmp_path: Path) -> Config:
    return config_mod.load(
        config_mod.DEFAULT_PROFILE, {}, **{"ledger.path": str(tmp_path / "k.db")}
    )


@pytest.fixture
def pulse_config(tmp_path: Path) -> Config:
    return config_mod.load(config_mod.PULSE_PROFILE, {}, **{"ledger.path": str(tmp_path / "k.db")})


def rows(report: Report) -> dict[tuple[str, str], hw.Row]:
    return {(r.device, r.check): r for r in report.rows}


def results(report: Report) -> dict[tuple[str, str], Result]:
    return {key: row.result for key, row in rows(report).items()}


# --- hw check on the simulated worlds ------------------------------------------------------


def test_on_the_simulated_cctalk_kiosk_everything_answers(cctalk_config: Config) -> None:
    with simulated(cctalk_config) as site:
        report = hw.check(site.setup)
        asked = [w.kind for w in site.technician.asked]
    assert report.ok
    found = rows(report)
    identity = found["coin acceptor", "identity"]
    assert identity.result is Result.OK
    assert identity.data["manufacturer"] == "Centimeo"
    assert identity.data["product"] == "SIM-CA1"
    assert identity.data["serial"] == "12345678"
    assert identity.data["software"] == "SIM-1.0"
    assert identity.data["category"] == "Coin Acceptor"
    assert "3:EU005A" in found["coin acceptor", "coin table"].detail
    assert found["coin acceptor", "self-check"].result is Result.OK
    assert asked == ["button", "button", "button", "cancel", "door"]
    for slot in (1, 2, 3):
        assert found[f"slot {slot} LED", "blink"].result is Result.OK
        assert found[f"slot {slot} button", "press"].result is Result.OK
        motor = found[f"slot {slot} motor", "one turn"]
        assert motor.result is Result.OK and "home switch seen" in motor.detail
        assert motor.data["turn_s"] == pytest.approx(2.0, abs=0.01)  # the world's revolution
        drop = found[f"slot {slot} drop", "drop sensor"]
        assert drop.result is Result.INFO and drop.data["dropped"] is False
    assert found["door switch", "open/close"].detail.startswith("opened")
    assert results(report)["display", "all cells"] is Result.OK


def test_on_the_simulated_pulse_kiosk_the_profile_and_the_idle_line_are_told(
    pulse_config: Config,
) -> None:
    with simulated(pulse_config) as site:
        report = hw.check(site.setup, ["acceptor"])
    found = rows(report)
    assert found["coin acceptor", "identity"].result is Result.INFO
    assert "GPIO17" in found["coin acceptor", "identity"].detail
    assert (
        found["coin acceptor", "coin table"].detail
        == "1 c: 2 pulses, 2 c: 4 pulses, 5 c: 10 pulses"
    )
    line = found["coin acceptor", "coin line"]
    assert line.result is Result.OK and "idles high" in line.detail
    assert report.ok and len(report.rows) == 3


def test_a_coin_line_held_low_at_rest_fails(pulse_config: Config) -> None:
    with simulated(pulse_config) as site:
        site.world.factory.gpio(17).drive(False)
        report = hw.check(site.setup, ["acceptor"])
    line = rows(report)["coin acceptor", "coin line"]
    assert line.result is Result.FAILED and "pull-up" in line.detail
    assert not report.ok


def test_a_silent_cctalk_acceptor_fails_without_a_crash(cctalk_config: Config) -> None:
    with simulated(cctalk_config) as site:
        site.world.coins.device.silent = True  # type: ignore[union-attr]
        report = hw.check(site.setup, ["acceptor"])
    identity = rows(report)["coin acceptor", "identity"]
    assert identity.result is Result.FAILED
    assert identity.detail.startswith("no answer (") and "coin_acceptor" in identity.detail


def test_a_button_nobody_presses_is_no_answer(pulse_config: Config) -> None:
    with simulated(pulse_config, ignore=["button 2", "door"]) as site:
        started = site.clock.now
        report = hw.check(site.setup, ["inputs"], timeout_s=5)
        waited_s = site.clock.now - started
    found = rows(report)
    assert found["slot 2 button", "press"].result is Result.NO_ANSWER
    assert found["slot 2 button", "press"].detail.startswith("nothing within 5 s on GPIO20")
    assert found["door switch", "open/close"].result is Result.NO_ANSWER
    assert found["slot 1 button", "press"].result is Result.OK
    assert found["cancel button", "press"].result is Result.OK
    assert not report.ok
    assert waited_s >= 10  # both timeouts ran their course, in simulated time


def test_a_kiosk_without_a_door_switch_is_told_so(pulse_config: Config) -> None:
    doorless = dataclasses.replace(
        pulse_config, panel=dataclasses.replace(pulse_config.panel, door_pin=None)
    )
    with simulated(doorless) as site:
        report = hw.check(site.setup, ["inputs"])
        asked = [w.kind for w in site.technician.asked]
    door = rows(report)["door switch", "open/close"]
    assert door.result is Result.INFO and "panel.door_pin" in door.detail
    assert "door" not in asked and report.ok


class Skipper:
    """A technician who skips the cancel button and leaves the rest to the simulated one."""

    def __init__(self, site: SimSite) -> None:
        self.site = site

    def tell(self, text: str) -> None:
        self.site.technician.tell(text)

    def ask(self, wanted: Wanted, skip: Callable[[], None]) -> None:
        if wanted.kind == "cancel":
            skip()
        else:
            self.site.technician.ask(wanted, skip)


def test_a_skipped_input_is_no_answer(pulse_config: Config) -> None:
    with simulated(pulse_config) as site:
        setup = dataclasses.replace(site.setup, technician=Skipper(site))
        report = hw.check(setup, ["inputs"], timeout_s=5)
    found = rows(report)
    assert found["cancel button", "press"].result is Result.NO_ANSWER
    assert found["cancel button", "press"].detail == "skipped by the technician"
    assert found["door switch", "open/close"].result is Result.OK


def test_a_jammed_motor_fails_and_the_others_turn(pulse_config: Config) -> None:
    with simulated(pulse_config) as site:
        site.world.jam(2)
        report = hw.check(site.setup, ["motors"])
    found = rows(report)
    jammed = found["slot 2 motor", "one turn"]
    assert jammed.result is Result.FAILED
    assert "home switch (GPIO16) not seen within 8 s" in jammed.detail
    assert found["slot 1 motor", "one turn"].result is Result.OK
    assert found["slot 3 motor", "one turn"].result is Result.OK
    assert not report.ok


def test_a_product_that_falls_is_information(pulse_config: Config) -> None:
    with simulated(pulse_config, stocked=True) as site:
        report = hw.check(site.setup, ["motors"])
        fallen = dict(site.world.truth.delivered)
    drop = rows(report)["slot 1 drop", "drop sensor"]
    assert drop.result is Result.INFO and drop.data["dropped"] is True
    assert "recount slot 1" in drop.detail
    assert fallen == {1: 1, 2: 1, 3: 1}  # one revolution each, not a retry turn more
    assert report.ok


def test_a_blocked_drop_sensor_fails_and_runs_no_motor(pulse_config: Config) -> None:
    with simulated(pulse_config, stocked=True) as site:
        site.world.stick_drop_sensor()
        report = hw.check(site.setup, ["motors"])
        fallen = sum(site.world.truth.delivered.values())
    found = rows(report)
    assert found["drop sensor", "at rest"].result is Result.FAILED
    assert found["slot 1 motor", "one turn"].result is Result.FAILED
    assert fallen == 0


def test_the_display_shows_every_cell_then_the_line_numbers(
    pulse_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[tuple[str, str]] = []
    build = hw.build_hardware

    def watched(*args: Any, **kwargs: Any) -> Any:
        """The devices as built, their display (whatever its back-end) watched."""
        hardware = build(*args, **kwargs)
        show = hardware.display.show

        def spy(line1: str, line2: str = "") -> None:
            shown.append((line1, line2))
            show(line1, line2)

        monkeypatch.setattr(hardware.display, "show", spy)
        return hardware

    monkeypatch.setattr(hw, "build_hardware", watched)
    with simulated(pulse_config) as site:
        report = hw.check(site.setup, ["display"])
    columns = pulse_config.display.columns
    assert shown[0] == ("█" * columns, "█" * columns)
    assert shown[1] == (hw.ruler(1, columns), hw.ruler(2, columns))
    assert hw.ruler(2, 20) == "22345678901234567890"
    assert shown[-1] == ("", "")
    assert [r.check for r in report.rows] == ["all cells", "line numbers"]


def test_unknown_checks_are_refused(pulse_config: Config) -> None:
    with simulated(pulse_config) as site, pytest.raises(ValueError, match="unknown checks"):
        hw.check(site.setup, ["lights"])


# --- hw check through the command ------------------------------------------------------------


def test_hw_check_sim_prints_the_table_and_prompts_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["hw", "check", "--sim", "--no-motors"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["device", "check", "result", "detail"]
    assert "slot 1 motor" not in out
    assert out.rstrip().endswith("kiosk sim-001: everything answered")
    assert "kiosk: press the button of slot 1 (Cookie bio) within 10 s\n" in err
    assert "kiosk: press" not in out


def test_hw_check_sim_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hw", "check", "--sim", "--json", "--only", "acceptor,leds"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["kiosk_id"] == "sim-001"
    first = report["checks"][0]
    assert first["device"] == "coin acceptor" and first["result"] == "ok"
    assert first["data"]["serial"] == "12345678"
    assert {c["device"] for c in report["checks"]} == {
        "coin acceptor",
        "slot 1 LED",
        "slot 2 LED",
        "slot 3 LED",
    }


def test_hw_check_exits_1_when_something_did_not_answer(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sim.commissioning

    real = sim.commissioning.simulated

    def nobody_cancels(config: Config, **options: Any) -> Any:
        return real(config, **options, ignore=["cancel"])

    monkeypatch.setattr(sim.commissioning, "simulated", nobody_cancels)
    argv = ["hw", "check", "--sim", "--only", "inputs", "--timeout-s", "3", "--json"]
    assert cli.main(argv) == 1
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert [c["result"] for c in checks if c["device"] == "cancel button"] == ["no answer"]


@pytest.mark.parametrize(
    "argv",
    [
        ["hw"],
        ["hw", "check", "--only", "lights"],
        ["hw", "check", "--only", ","],
        ["hw", "check", "--timeout-s", "0"],
        ["hw", "pulses", "--sim"],
        ["hw", "pulses", "--sim", "--coins", "0"],
        ["hw", "pulses", "--sim", "--duration-s", "-1"],
    ],
    ids=" ".join,
)
def test_bad_hw_options_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: kiosk" in capsys.readouterr().err


def test_the_only_option_names_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["hw", "check", "--help"])
    assert "acceptor,display,leds,inputs,motors" in capsys.readouterr().out
    assert ",".join(hw.CHECKS) == "acceptor,display,leds,inputs,motors"


def test_a_held_ledger_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "kiosk.db"
    with LedgerLock(db):
        assert cli.main(["hw", "check", "--sim", "--db", str(db)]) == 1
        assert cli.main(["hw", "pulses", "--sim", "--db", str(db), "--coins", "1"]) == 1
    err = capsys.readouterr().err
    refusal = (
        f"kiosk: error: the kiosk daemon (PID {os.getpid()}) holds the hardware (ledger {db}): "
        "stop the kiosk first: systemctl stop kiosk\n"
    )
    assert err == refusal * 2


@pytest.fixture
def mock_pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gpiozero's default factory as `kiosk hw` meets it off a Pi with mock pins; put back."""
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(Device, "pin_factory", None)
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(int(TIMEOUT_S / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError(f"no {what} within {TIMEOUT_S} s")


def test_a_running_daemon_is_refused_on_its_ledger_and_on_its_port(
    tmp_path: Path,
    device: SimCcTalkAcceptor,
    daemons: Daemons,
    mock_pins: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "kiosk.db"
    config = profile(tmp_path, device.path, db)
    daemon = daemons(config)
    wait_until(lambda: (lock.holder(db) or 0) > 0 and device.master_enabled, "daemon started")
    assert cli.main(["hw", "check", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"kiosk: error: the kiosk daemon (PID {daemon.pid}) holds the hardware (ledger {db}): "
        "stop the kiosk first: systemctl stop kiosk\n"
    )
    other = tmp_path / "other.db"  # another ledger, the same acceptor: its port is held
    assert (
        cli.main(["hw", "check", "-c", str(config), "--db", str(other), "--only", "acceptor"]) == 1
    )
    err = capsys.readouterr().err
    assert f"ccTalk port {device.path} is in use by process {daemon.pid}" in err
    assert err.endswith("; stop the kiosk first: systemctl stop kiosk\n")
    assert daemon.poll() is None  # the daemon never noticed


def test_hw_check_on_the_system_clock_identifies_an_acceptor_on_its_port(
    tmp_path: Path, device: SimCcTalkAcceptor, mock_pins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = profile(tmp_path, device.path, tmp_path / "kiosk.db")
    assert cli.main(["hw", "check", "-c", str(config), "--only", "acceptor", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert [(c["check"], c["result"]) for c in checks] == [
        ("identity", "ok"),
        ("coin table", "ok"),
        ("self-check", "ok"),
    ]
    assert not device.master_enabled  # coins stayed inhibited
    assert lock.holder(tmp_path / "kiosk.db") is None  # the lock went with the command


# --- the technician at a terminal ---------------------------------------------------------------


def test_a_terminal_technician_skips_with_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    prompts = io.StringIO()
    skipped = threading.Event()
    technician = TerminalTechnician(prompts, interactive=True)
    technician.ask(Wanted("cancel", "press the cancel button within 10 s"), skipped.set)
    assert skipped.wait(TIMEOUT_S)
    assert prompts.getvalue() == "kiosk: press the cancel button within 10 s (Enter to skip)\n"


def test_without_a_terminal_nothing_is_read_and_ci_is_never_interactive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    prompts = io.StringIO()
    technician = TerminalTechnician(prompts, interactive=False)
    technician.ask(Wanted("door", "open or close the door within 10 s"), pytest.fail)
    assert prompts.getvalue() == "kiosk: open or close the door within 10 s\n"
    assert commission.interactive({}) is False  # stdin is no terminal
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert commission.interactive({}) is True
    assert commission.interactive({"CI": "true"}) is False


# --- hw pulses ---------------------------------------------------------------------------------


def test_hw_pulses_reports_the_trains_and_proposes_values_that_decode_the_same_coins(
    pulse_config: Config,
) -> None:
    # The acceptor fitted is quicker than the profile says: its 25 ms pulses are glitches to
    # a decoder set for 50 ms (which takes 30-80 ms).
    seen: list[int] = []
    with simulated(pulse_config, pulse_ms=25, gap_ms=60) as site:
        report = pulses.record(site.setup, coins=5, on_train=lambda n, t: seen.append(n))
        dropped = list(site.technician.inserted)
    assert dropped == [1, 2, 5, 1, 2] and seen == [1, 2, 3, 4, 5]
    assert [len(t.pulses) for t in report.trains] == [2, 4, 10, 2, 4]
    assert all(w == pytest.approx(25) for t in report.trains for w in t.widths_ms)
    assert all(g == pytest.approx(60) for t in report.trains for g in t.gaps_ms)
    proposal = report.proposal
    assert proposal.pulse_ms == 26 and proposal.gap_ms == 60
    assert proposal.end_gap_ms is not None and 1.6 * 60 < proposal.end_gap_ms < 2400
    assert report.read_proposed == (1, 2, 5, 1, 2)
    assert report.read_now == ()  # to the profile's decoder, 25 ms pulses are glitches
    assert not report.unfinished
    tuned = dataclasses.replace(
        pulse_config.coin_acceptor.settings,
        pulse_ms=proposal.pulse_ms,
        gap_ms=proposal.gap_ms,
        end_gap_ms=proposal.end_gap_ms,
    )
    assert credited(pulse_config, tuned, dropped) == dropped


def credited(config: Config, settings: PulseSettings, coins: list[int]) -> list[int]:
    """The coins the real pulse driver credits, set with `settings`, when `coins` are dropped into
    a simulated acceptor of the same timing (25 ms pulses, 60 ms gaps)."""
    events: queue.Queue[Any] = queue.Queue()
    with simulated(config, pulse_ms=25, gap_ms=60) as site:
        acceptor = PulseCoinAcceptor(
            settings, (1, 2, 5), site.clock, events.put, site.world.factory
        )
        acceptor.start()
        acceptor.set_accepting(True)
        for i, value in enumerate(coins):
            site.clock.call_later(i * 3.0, lambda v=value: site.world.insert_coin(v))
        credited = []
        while (event := site.clock.wait(events, site.clock.now + 60)) is not None:
            if isinstance(event, CoinAccepted):
                credited.append(event.value_cents)
        acceptor.close()
    return credited


def test_hw_pulses_for_a_duration_leaves_out_a_train_cut_short(pulse_config: Config) -> None:
    with simulated(pulse_config) as site:
        # Coins at 0.6, 3.6 and 6.6 s: the third (5 c) is still pulsing at 7 s.
        report = pulses.record(site.setup, duration_s=7)
    assert [len(t.pulses) for t in report.trains] == [2, 4]
    assert report.unfinished
    assert report.read_now == (1, 2)


def test_hw_pulses_sim_prints_each_train_then_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["hw", "pulses", "--sim", "--coins", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "train 1: 2 pulses; widths 50.0 50.0 ms; gaps 100.0 ms"
    assert lines[2].startswith("train 3: 10 pulses;")
    assert "pulses per train: 2 (x1), 4 (x1), 10 (x1); the profile has pulses = " in out
    assert "  pulse_ms = 51\n  gap_ms = 100\n  end_gap_ms = 240\n" in out
    assert "read by the decoder with the proposed values:  1 c, 2 c, 5 c" in out
    assert "drop coins into the acceptor one by one (3 coin(s))" in err


def test_hw_pulses_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hw", "pulses", "--sim", "--coins", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pulses_per_train"] == {"2": 1, "4": 1}
    assert report["widths_ms"] == {"min": 50.0, "median": 50.0, "max": 50.0}
    assert report["proposal"]["gap_ms"] == 100
    assert report["read_with_proposal"] == [1, 2]


def test_hw_pulses_refuses_a_cctalk_profile(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["hw", "pulses", "--sim", "-c", str(config_mod.DEFAULT_PROFILE), "--coins", "1"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"kiosk: error: {config_mod.DEFAULT_PROFILE}: coin_acceptor.driver is cctalk, not pulse: "
        "kiosk hw pulses times a pulse acceptor's coin line"
    )
    assert err.count("\n") == 1  # refused before anything was asked of the technician


def test_hw_pulses_refuses_a_line_low_at_rest(pulse_config: Config) -> None:
    with simulated(pulse_config) as site:
        site.world.factory.gpio(17).drive(False)
        with pytest.raises(KioskError, match="coin line GPIO17 is low at rest"):
            pulses.record(site.setup, coins=1)
        inhibited = site.world.coins.inhibited
    assert inhibited  # the acceptor was left inhibited


def test_with_nobody_dropping_coins_the_recording_ends_with_nothing(pulse_config: Config) -> None:
    with simulated(pulse_config, ignore=["coins"]) as site:
        report = pulses.record(site.setup, coins=3)
    assert report.trains == () and report.edges == 0
    assert report.proposal.notes == ("no pulse seen: nothing to propose",)


# --- the recorder and the analysis -----------------------------------------------------------


def test_the_recorder_times_edges_by_the_factorys_ticks_and_inhibits_on_close() -> None:
    clock = SimClock()
    factory = ClockedFactory(clock)
    line, inhibit = factory.gpio(17), factory.gpio(27)
    line.drive(True)
    seen: list[Any] = []
    recorder = CoinLineRecorder(
        17, clock, seen.append, inhibit_pin=27, inhibit_active_high=False, pin_factory=factory
    )
    try:
        recorder.accept(True)
        assert inhibit.state  # active low: driven high, coins taken
        for at, level in ((1.0, False), (1.05, True), (1.15, False), (1.2, True)):
            clock.call_at(at, lambda lv=level: line.drive(lv))
        while clock.next_at() < float("inf"):
            clock.run_next()
        assert [(round(e.at_s, 6), e.low) for e in recorder.edges()] == [
            (0.0, True),
            (0.05, False),
            (0.15, True),
            (0.2, False),
        ]
        assert seen == recorder.edges()
    finally:
        recorder.close()
        factory.reset()
    assert not inhibit.state  # inhibited again


def edges(*stretches: tuple[float, float]) -> list[Edge]:
    """Low stretches (start, width), in ms, as edges."""
    out = []
    for start_ms, width_ms in stretches:
        out += [Edge(start_ms / 1000, True, 0.0), Edge((start_ms + width_ms) / 1000, False, 0.0)]
    return out


def test_bounce_joins_a_pulse_and_glitches_are_left_out() -> None:
    found = pulses.split_trains(
        edges((0, 20), (20.5, 30), (150, 1), (200, 50), (2000, 50), (2150, 50)),
        end_gap_ms=250,
        closed=True,
    )
    assert [len(t.pulses) for t in found] == [2, 2]
    assert found[0].widths_ms == pytest.approx([50.5, 50])
    assert found[0].gaps_ms == pytest.approx([149.5])
    assert found[0].glitches == 1
    assert found[1].pause_before_ms == pytest.approx(1750)


def test_the_last_train_counts_only_once_closed() -> None:
    recorded = edges((0, 50), (150, 50))
    assert pulses.split_trains(recorded, 250, closed=False) == []
    assert len(pulses.split_trains(recorded, 250, closed=True)) == 1
    assert pulses.split_trains(recorded[:-1], 250, closed=True) == []  # still low


def test_the_proposal_keeps_room_on_every_side() -> None:
    settings = PulseSettings(coin_pin=17, pulses={1: 2, 2: 4, 5: 10})
    jittery = pulses.split_trains(
        edges((0, 40), (130, 60), (240, 45), (1000, 55), (1110, 50)), 250, closed=True
    )
    proposal = pulses.propose(jittery, settings)
    assert proposal.pulse_ms is not None and proposal.gap_ms is not None
    assert 0.6 * proposal.pulse_ms < 40 and 1.6 * proposal.pulse_ms > 60
    gaps = [g for t in jittery for g in t.gaps_ms]
    assert min(gaps) <= proposal.gap_ms <= max(gaps)
    assert 1.6 * proposal.gap_ms >= 1.25 * max(gaps)
    assert proposal.end_gap_ms is not None and proposal.end_gap_ms % 10 == 0
    assert proposal.end_gap_ms > 1.6 * proposal.gap_ms
    assert proposal.notes == ()
    close = pulses.split_trains(edges((0, 50), (150, 50), (500, 50), (650, 50)), 250, closed=True)
    assert "too close" in pulses.propose(close, settings).notes[0]


class Listener:
    """A technician who only listens."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def tell(self, text: str) -> None:
        self.told.append(text)

    def ask(self, wanted: Wanted, skip: Callable[[], None]) -> None:
        self.told.append(wanted.text)


def test_a_check_runs_on_whatever_clock_pins_and_technician_it_is_given(
    pulse_config: Config,
) -> None:
    clock = SimClock()
    factory = ClockedFactory(clock)
    listener = Listener()
    try:
        report = hw.check(Setup(pulse_config, clock, factory, listener), ["leds"])
    finally:
        factory.reset()
    assert report.ok
    assert listener.told == [
        f"slot {s.id} LED (GPIO{s.led_pin}): 3 blinks" for s in pulse_config.slots
    ]
    assert clock.now == pytest.approx(3 * 2 * hw.BLINKS * hw.BLINK_S)
