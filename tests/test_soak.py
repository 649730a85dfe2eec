"""The soak harness (sim/soak.py): short runs with high fault rates on both acceptors and with a
broker that comes and goes, every fault kind injected and no invariant broken; and the checks
themselves, which must catch a coin or a product the ledger does not account for."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiosk import config as config_mod
from kiosk.config import Config
from sim import soak
from sim.rig import SimKiosk
from sim.soak import CCTALK_ODDS, SOAK_ODDS, Soak

HIGH = {name: 0.08 for name in SOAK_ODDS}
HIGH.update(acceptor_silence=0.05, door_opening=0.05, restart=0.06, coin_burst=0.15)


@pytest.fixture
def cctalk_config() -> Config:
    config = config_mod.load(config_mod.DEFAULT_PROFILE, env={})
    # Short real-time timeouts: a silent acceptor costs 2 x 20 ms per poll, not 4 x 100 ms.
    return config.with_acceptor(reply_timeout_ms=20, retries=1)


@pytest.fixture
def pulse_config() -> Config:
    return config_mod.load(config_mod.PULSE_PROFILE, env={})


def assert_clean(result: soak.Result, kinds: set[str]) -> None:
    figures = result.figures
    assert result.violations == []
    assert figures["violations"] == 0
    assert figures["shoppers"] == figures["asked"]
    assert set(figures["faults_injected"]) == kinds
    never = [name for name, count in figures["faults_injected"].items() if not count]
    assert never == [], f"never injected: {never}"
    assert figures["restarts"] > 0
    assert figures["technician_visits"] > 0
    assert figures["sales"] > 0
    assert figures["checks"] > 1


def test_cctalk_soak_with_every_fault(cctalk_config: Config) -> None:
    result = soak.soak(cctalk_config, 150, 11, odds=HIGH, check_every=30)
    assert_clean(result, set(SOAK_ODDS))
    figures = result.figures
    assert figures["bursts_that_lost_events"] > 0
    assert figures["credits_lost_unread_cents"] > 0  # so the coin check had losses to allow for
    raised = figures["faults_raised_by_kiosk"]
    assert raised["coin_acceptor:lost_events"] == figures["bursts_that_lost_events"]
    assert raised.get("coin_acceptor:lost", 0) > 0  # silences and corrupt replies were noticed


def test_pulse_soak_with_every_fault(pulse_config: Config) -> None:
    result = soak.soak(pulse_config, 400, 12, odds=HIGH, check_every=50)
    assert_clean(result, set(SOAK_ODDS) - set(CCTALK_ODDS))
    assert result.figures["bursts_that_lost_events"] == 0


def test_soak_with_broker_outages(pulse_config: Config) -> None:
    # Fewer restarts: each one stops the kiosk's telemetry, which waits (up to 3 s of real time)
    # for its `offline` to be acknowledged when the broker is away.
    odds = {**HIGH, "restart": 0.02}
    result = soak.soak(
        pulse_config,
        300,
        13,
        odds=odds,
        check_every=100,
        mqtt=True,
        outages=0.2,
        outage_s=(0.02, 0.2),
    )
    assert_clean(result, set(SOAK_ODDS) - set(CCTALK_ODDS))
    telemetry = result.figures["telemetry"]
    assert telemetry["broker_outages"] > 0
    assert telemetry["outbox_events"] > 0
    assert telemetry["lost"] == 0
    assert telemetry["heard"] + telemetry["acknowledged_not_heard"] == telemetry["outbox_events"]


def run_with(
    config: Config, tmp_path: Path, mischief: str, shoppers: int = 30
) -> tuple[Soak, SimKiosk]:
    rig = SimKiosk(config, tmp_path / "soak.db")
    run = Soak(rig, shoppers, 3, odds={}, check_every=10)
    world = rig.world
    if mischief == "coin":  # a coin in the cash box that the ledger never heard of
        world.truth.cashbox[5] += 1
    elif mischief == "product":  # a product gone from a spiral, sold to nobody
        world.spirals[2].stock -= 1
    try:
        run.run()
    finally:
        run.rig.shutdown()
    return run, rig


@pytest.mark.parametrize(
    ("mischief", "check"), [("coin", "ground truth"), ("product", "stock against the spirals")]
)
def test_the_checks_catch_what_the_ledger_misses(
    pulse_config: Config, tmp_path: Path, mischief: str, check: str
) -> None:
    run, _ = run_with(pulse_config, tmp_path, mischief)
    assert run.figures.violations
    assert all(f": {check}: " in line for line in run.figures.violations), run.figures.violations
    assert run.tally.shoppers == 10  # the run stopped at the first failing check


def test_an_undisturbed_soak_passes_its_checks(pulse_config: Config, tmp_path: Path) -> None:
    run, _ = run_with(pulse_config, tmp_path, "none")
    assert run.figures.violations == []
    assert run.figures.checks == 4  # every ten shoppers, and at the end


def test_the_command_prints_figures_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status = soak.main(
        ["--shoppers", "40", "--seed", "5", "--profile", str(config_mod.PULSE_PROFILE)]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.startswith("soak: 40 shoppers (pulse")
    for heading in ("sales", "coins", "injected", "raised", "checks", "violations 0"):
        assert f"\n{heading}" in out, out


def test_an_unknown_fault_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        soak.main(["--rate", "meteor=0.1"])
    assert exit_.value.code == 2
    assert "no fault 'meteor'" in capsys.readouterr().err
