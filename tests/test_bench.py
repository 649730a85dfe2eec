"""The benchmarks keep working: each run with tiny sizes prints its figures (nothing about them is
asserted but that they are there and are numbers; performance is measured, not tested), and the
drain benchmark's backlog is made of payloads the kiosk's contract accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from payloads import validate_message

from sim import bench, bench_mqtt

MQTT_KEYS = {
    "cpu_count",
    "drain_events",
    "window",
    "drain_kiosk_events_per_s",
    "drain_bare_events_per_s",
    "drain_kiosk_cpu_us_per_event",
    "drain_bare_cpu_us_per_event",
    "mqtt_drain_ratio",
    "sales_per_side",
    "sale_on_p50_ms",
    "sale_on_p95_ms",
    "sale_on_cpu_p50_ms",
    "complete_sale_on_p50_ms",
    "sale_off_p50_ms",
    "sale_off_p95_ms",
    "sale_off_cpu_p50_ms",
    "complete_sale_off_p50_ms",
    "sale_latency_mqtt_ratio",
}
MACHINE_LINES = ("cpu_count", "python", "paho_mqtt", "mosquitto")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert bench.main(list(argv)) == 0
    return capsys.readouterr().out


def test_the_mqtt_benchmark_prints_one_json_object_of_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = json.loads(run(capsys, "mqtt", "--events", "30", "--sales", "2", "--json"))
    assert set(figures) == MQTT_KEYS
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in figures.values())
    assert figures["drain_events"] == 30
    assert figures["sales_per_side"] == 2
    assert figures["mqtt_drain_ratio"] > 0
    assert figures["sale_latency_mqtt_ratio"] > 0


def test_the_table_names_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "mqtt", "--events", "5", "--sales", "1")
    names = [line.split()[0] for line in out.splitlines()]
    assert names[: len(MACHINE_LINES)] == list(MACHINE_LINES)
    assert set(names) == MQTT_KEYS | set(MACHINE_LINES)


def test_the_drain_backlog_holds_sales_as_the_kiosk_publishes_them(tmp_path: Path) -> None:
    config = bench_mqtt.config_mod.load(bench_mqtt.config_mod.PULSE_PROFILE, env={})
    messages = bench_mqtt.write_backlog(config, tmp_path / "backlog.db", 4)
    assert [json.loads(payload)["seq"] for _, payload in messages] == [1, 2, 3, 4]
    for topic, payload in messages:
        assert validate_message(topic, payload.encode())["kind"] == "sale"


KIOSK_KEYS = {
    "coin_to_credit_p50_ms",
    "coin_to_credit_p99_ms",
    "poll_interval_ms",
    "stack_coins_per_s",
    "ledger_commit_ratio",
    "idle_cpu_ratio",
    "idle_rss_mb",
    "startup_s",
    "import_gpiozero_ms",
}


def test_the_kiosk_benchmark_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("kiosk", "--coins", "4", "--idle-s", "0.3", "--starts", "1", "--json")
    figures = json.loads(run(capsys, *argv))
    assert set(figures) >= KIOSK_KEYS
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in figures.values())
    assert figures["coins"] == 4 and figures["poll_interval_ms"] == 150
    assert 0 < figures["coin_to_credit_p50_ms"] <= figures["coin_to_credit_p99_ms"]
    assert figures["stack_coins_per_s"] > 0 and figures["startup_s"] > 0


def test_the_fleet_benchmark_counts_every_event(capsys: pytest.CaptureFixture[str]) -> None:
    sizes = ("--kiosks", "3", "--processes", "2", "--fleet-s", "2", "--speed-up", "2000")
    figures = json.loads(run(capsys, "fleet", *sizes, "--json"))
    assert figures["fleet_kiosks"] == 3 and figures["fleet_processes"] == 2
    assert figures["fleet_events"] > 0 and figures["fleet_missing"] == 0
    assert figures["fleet_p50_ms"] <= figures["fleet_p99_ms"]
    assert figures["fleet_broker_cpu_pct"] >= 0


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (("cctalk", "--polls", "5"), "ratio_to_wire"),
        (("demo", "--shoppers", "3", "--json"), "simulated_hours_per_s"),
    ],
)
def test_the_other_benchmarks_still_run(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], key: str
) -> None:
    assert key in run(capsys, *argv)


def test_sizes_below_one_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["mqtt", "--events", "0"])
    assert exit_.value.code == 2
    assert "at least 1" in capsys.readouterr().err
