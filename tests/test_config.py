"""Configuration loading: the sim profile into frozen dataclasses, every kind of error naming the
file, the key and the reason, and the precedence flag > KIOSK_* environment > file > default.

Variants of config/sim.toml are built by editing its parsed data at a dotted key such as
`slots[1].price_cents` and writing it back with a small TOML writer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.pulse import PulseSettings
from kiosk import config as config_mod
from kiosk.config import Config
from kiosk.errors import ConfigError, KioskError

SIM = config_mod.PULSE_PROFILE
SIM_DATA: dict[str, Any] = tomllib.loads(SIM.read_text())
DELETE = object()  # as a value: remove the key


# --- a small TOML writer and an editor of dotted keys -------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # nan, inf and -inf are TOML too
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"no TOML for {value!r}")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_toml(data: dict[str, Any]) -> str:
    """Top-level keys, then [tables], then [[arrays of tables]], as TOML requires."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and not _is_table_list(v)
    ]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    for name, tables in data.items():
        if _is_table_list(tables):
            for table in tables:
                lines += ["", f"[[{name}]]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def edited(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `dotted` ("credit.leftover", "slots[1].price_cents") set or deleted."""
    data = copy.deepcopy(data)
    *parents, last = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
    node: Any = data
    for token in parents:
        node = node[int(token[1:-1])] if token.startswith("[") else node.setdefault(token, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def write_profile(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "variant.toml"
    path.write_text(dump_toml(data))
    return path


def write_variant(tmp_path: Path, dotted: str, value: Any) -> Path:
    return write_profile(tmp_path, edited(SIM_DATA, dotted, value))


def load_error(path: Path, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, env={}, **overrides)
    return str(info.value)


# --- the sim profile ----------------------------------------------------------------------------


def test_sim_profile_loads_into_frozen_dataclasses() -> None:
    config = config_mod.load(SIM, env={})
    assert config.source == str(SIM)
    assert (config.kiosk.id, config.kiosk.language) == ("sim-001", "fr")
    assert config.kiosk.accepted_coins_cents == (1, 2, 5)
    assert config.credit.inactivity_timeout_s == 45.0
    assert isinstance(config.credit.inactivity_timeout_s, float)
    assert [s.id for s in config.slots] == [1, 2, 3]
    assert config.slot(2).price_cents == 10
    assert config.slot(1).initial_quantity is None
    assert config.coin_acceptor.driver == "pulse"
    settings = config.coin_acceptor.settings
    assert isinstance(settings, PulseSettings)
    assert settings.pulses == {1: 2, 2: 4, 5: 10}
    assert settings.pulse_ms == 50.0
    for part, name in [(config, "ledger"), (config.credit, "leftover"), (config.slots[0], "id")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, name, getattr(part, name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pulse_ms = 1.0


def test_the_variant_writer_round_trips_the_sim_profile(tmp_path: Path) -> None:
    copied = config_mod.load(write_profile(tmp_path, SIM_DATA), env={})
    assert dataclasses.replace(copied, source=str(SIM)) == config_mod.load(SIM, env={})


def test_optional_sections_fall_back_to_their_defaults(tmp_path: Path) -> None:
    data = {k: v for k, v in SIM_DATA.items() if k not in ("display", "ledger")}
    config = config_mod.load(write_profile(tmp_path, data), env={})
    assert (config.display.columns, config.display.message_s) == (20, 3.0)
    assert config.ledger.path == "kiosk.db"


# --- files that cannot be read or parsed --------------------------------------------------------


def test_a_missing_file_or_a_directory_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    assert load_error(path) == f"{path}: cannot read: No such file or directory"
    assert load_error(tmp_path).startswith(f"{tmp_path}: cannot read: ")
    assert issubclass(ConfigError, KioskError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "content",
    [
        b'[kiosk]\nname = "Centimeo\n',  # unterminated string
        b"[kiosk]\nid = sim-001\n",  # bare word
        b'[kiosk]\nname = "Cr\xeape"\n',  # Latin-1, not UTF-8
        b"[display]\ncolumns = " + b"1" * 5000 + b"\n",  # beyond int()'s digit limit
    ],
    ids=["unterminated", "bare-word", "latin-1", "huge-integer"],
)
def test_a_file_that_is_not_toml_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    assert load_error(path).startswith(f"{path}: not valid TOML")


# --- keys: unknown, wrong type, out of range, choices, missing ----------------------------------

PULSES = "coin_acceptor.pulses"
BAD_VALUES = [
    # (dotted key to set, and that the message names; value; reason)
    ("credit.refund", True, "unknown key"),
    ("slots[1].colour", "red", "unknown key"),
    ("coin_acceptor.baud", 9600, "unknown key"),
    ("display.columns", "20", "must be an integer"),
    ("dispenser.retry_turns", True, "must be an integer"),
    ("panel.cancel_pin", 26.0, "must be an integer"),
    ("display.message_s", "3 s", "must be a number"),
    ("dispenser.max_run_s", True, "must be a number"),
    ("coin_acceptor.inhibit_active_high", 1, "must be true or false"),
    ("kiosk.name", 5, "must be a string"),
    ("kiosk.accepted_coins_cents", [], "must be a non-empty list"),
    ("kiosk.accepted_coins_cents", [1, 1, 2, 5], "has duplicates"),
    ("kiosk.accepted_coins_cents", [0, 1, 2, 5], "must be at least 1"),
    ("slots[1].price_cents", 0, "must be at least 1"),
    ("slots[2].led_pin", 40, "must be at most 27"),
    ("coin_acceptor.coin_pin", -1, "must be at least 0"),
    ("credit.inactivity_timeout_s", 2, "must be at least 5.0"),
    ("credit.inactivity_timeout_s", math.inf, "must be a finite number"),
    ("credit.inactivity_timeout_s", math.nan, "must be a finite number"),
    ("coin_acceptor.pulse_ms", math.nan, "must be a finite number"),
    ("display.columns", 100, "must be at most 40"),
    ("kiosk.language", "de", "must be one of fr, en"),
    ("credit.leftover", "refund", "must be one of keep, donate"),
    ("kiosk.id", "sim 001", "must be ASCII letters, digits, '-' and '_'"),
    ("kiosk.id", "kiosk/1", "must be ASCII letters, digits, '-' and '_'"),
    ("kiosk.id", "kiosk-é", "must be ASCII letters, digits, '-' and '_'"),
    ("mqtt.prefix", "kiosk/#", "without wildcards or empty levels"),
    ("mqtt.prefix", "/kiosk", "without wildcards or empty levels"),
    ("mqtt.port", 0, "must be at least 1"),
    ("kiosk.name", DELETE, "missing"),
    ("slots[2].product", DELETE, "missing"),
    ("coin_acceptor.coin_pin", DELETE, "missing"),
    ("ledger", "kiosk.db", "must be a table"),
    ("slots", DELETE, "at least one [[slots]] table"),
    ("slots", [], "at least one [[slots]] table"),
    ("slots[2].id", 1, "slot 1 is defined twice"),
    ("slots[0].initial_quantity", 13, "more than the capacity"),
    ("credit.beneficiary", DELETE, 'required when leftover = "donate"'),
    ("coin_acceptor.driver", "mdb", "must be one of pulse"),
    ("coin_acceptor.driver", ["pulse"], "must be one of pulse"),
    ("coin_acceptor.driver", DELETE, "must be one of pulse"),
    (PULSES, {"1": 1, "2": 4, "5": 10}, "a one-pulse code cannot be told from noise"),
    (PULSES, {"1": 2, "2": 4}, "no pulse count for accepted coin(s) [5]"),
    (PULSES, {"1": 2, "2": 4, "5": 10, "10": 20}, "[10] c are not accepted coins"),
    (PULSES, {"1": 2, "2": 2, "5": 10}, "two coins share a pulse count"),
    (PULSES, {"1": 2, "01": 3, "2": 4, "5": 10}, "has keys that name the same value"),
    (PULSES, {"one": 2, "2": 4, "5": 10}, "keys must be int"),
    (PULSES, {}, "must be a non-empty table"),
    ("coin_acceptor.end_gap_ms", 150, "longer than the longest gap inside a train"),
    ("ledger.path", "", "must not be empty"),
    ("ledger.path", " \t", "must not be empty"),
    ("kiosk.name", "", "must not be empty"),
    ("slots[1].product", "", "must not be empty"),
]


@pytest.mark.parametrize(
    ("dotted", "value", "reason"),
    BAD_VALUES,
    ids=[f"{d}={'DELETE' if v is DELETE else v!r}"[:60] for d, v, _ in BAD_VALUES],
)
def test_a_bad_value_names_the_file_the_key_and_the_reason(
    tmp_path: Path, dotted: str, value: Any, reason: str
) -> None:
    path = write_variant(tmp_path, dotted, value)
    message = load_error(path)
    assert message.startswith(f"{path}: {dotted}")
    assert reason in message


def test_an_unknown_section_and_a_slot_that_is_no_table_are_named(tmp_path: Path) -> None:
    message = load_error(write_variant(tmp_path, "extras.foo", 1))
    assert message.startswith(f"{tmp_path / 'variant.toml'}: extras: unknown section (known: ")
    message = load_error(write_variant(tmp_path, "slots", [{**SIM_DATA["slots"][0]}, 7]))
    assert message.endswith(": slots[1]: must be a table")


@pytest.mark.parametrize(
    ("dotted", "pin", "first", "second"),
    [
        ("panel.door_pin", 17, "panel.door_pin", "coin_acceptor.coin_pin"),
        ("slots[2].motor_pin", 6, "slots[0].home_pin", "slots[2].motor_pin"),
        ("coin_acceptor.inhibit_pin", 4, "dispenser.drop_pin", "coin_acceptor.inhibit_pin"),
        ("slots[1].led_pin", 3, "display.i2c_bus", "slots[1].led_pin"),  # the LCD's SCL
    ],
)
def test_a_pin_used_twice_names_both_keys(
    tmp_path: Path, dotted: str, pin: int, first: str, second: str
) -> None:
    path = write_variant(tmp_path, dotted, pin)
    assert load_error(path) == f"{path}: {second}: GPIO{pin} is already used by {first}"


def test_the_lcd_takes_gpio2_and_3_only_on_the_pis_i2c_bus_1(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "slots[0].led_pin", 2)
    assert load_error(path) == f"{path}: slots[0].led_pin: GPIO2 is already used by display.i2c_bus"
    data = edited(edited(SIM_DATA, "slots[0].led_pin", 2), "display.i2c_bus", 0)
    assert config_mod.load(write_profile(tmp_path, data), env={}).slots[0].led_pin == 2
    data = edited(edited(SIM_DATA, "slots[0].led_pin", 2), "display.driver", "log")
    assert config_mod.load(write_profile(tmp_path, data), env={}).slots[0].led_pin == 2


def test_the_uart_pins_are_the_cctalk_lines_on_the_pl011_and_gpio0_1_stay_free(
    tmp_path: Path,
) -> None:
    uart = edited(CCTALK_DATA, "coin_acceptor.port", "/dev/ttyAMA0")
    path = write_profile(tmp_path, edited(uart, "panel.cancel_pin", 14))
    assert (
        load_error(path)
        == f"{path}: panel.cancel_pin: GPIO14 is already used by coin_acceptor.port"
    )
    usb = edited(CCTALK_DATA, "panel.cancel_pin", 14)  # a USB interface leaves GPIO14 free
    assert config_mod.load(write_profile(tmp_path, usb), env={}).panel.cancel_pin == 14
    path = write_profile(tmp_path, edited(CCTALK_DATA, "panel.cancel_pin", 0))
    assert load_error(path) == (
        f"{path}: panel.cancel_pin: GPIO0 is the HAT ID EEPROM's bus (GPIO0 and GPIO1): "
        "leave it free"
    )


def test_keep_policy_needs_no_beneficiary(tmp_path: Path) -> None:
    data = edited(edited(SIM_DATA, "credit.beneficiary", DELETE), "credit.leftover", "keep")
    assert config_mod.load(write_profile(tmp_path, data), env={}).credit.beneficiary == ""
    data = edited(data, "credit.beneficiary", "")  # its metadata allows an empty string
    assert config_mod.load(write_profile(tmp_path, data), env={}).credit.beneficiary == ""


CCTALK = config_mod.DEFAULT_PROFILE
CCTALK_DATA: dict[str, Any] = tomllib.loads(CCTALK.read_text())


@pytest.mark.parametrize("port", ["", "   "])
def test_an_empty_string_in_a_drivers_settings_is_an_error(tmp_path: Path, port: str) -> None:
    """The ccTalk driver's `port: str` has no metadata: the rule for strings is generic."""
    assert config_mod.load(CCTALK, env={}).coin_acceptor.driver == "cctalk"
    path = write_profile(tmp_path, edited(CCTALK_DATA, "coin_acceptor.port", port))
    assert load_error(path) == f"{path}: coin_acceptor.port: must not be empty (got {port!r})"
    message = load_error(CCTALK, **{"coin_acceptor.port": ""})
    assert message == "command line: coin_acceptor.port: must not be empty (got '')"


# --- precedence: keyword override > KIOSK_* environment > file > default ------------------------


def test_environment_overrides_the_file_and_is_checked_like_it() -> None:
    assert config_mod.load(SIM, env={}).credit.leftover == "donate"
    config = config_mod.load(SIM, env={"KIOSK_CREDIT_LEFTOVER": "keep"})
    assert config.credit.leftover == "keep"
    with pytest.raises(ConfigError, match=r"credit\.leftover: must be one of keep, donate"):
        config_mod.load(SIM, env={"KIOSK_CREDIT_LEFTOVER": "give"})


def test_an_error_from_the_environment_names_the_variable() -> None:
    env = {"KIOSK_CREDIT_INACTIVITY_TIMEOUT_S": "1"}
    with pytest.raises(ConfigError) as info:
        config_mod.load(SIM, env=env)
    assert str(info.value) == (
        "KIOSK_CREDIT_INACTIVITY_TIMEOUT_S: credit.inactivity_timeout_s: "
        "must be at least 5.0 (got 1.0)"
    )
    with pytest.raises(ConfigError) as info:
        config_mod.load(SIM, env={"KIOSK_LEDGER_PATH": '""'})
    assert str(info.value) == "KIOSK_LEDGER_PATH: ledger.path: must not be empty (got '')"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KIOSK_PANEL_CANCEL_PIN": "5"},
            "KIOSK_PANEL_CANCEL_PIN: slots[0].led_pin: GPIO5 is already used by panel.cancel_pin",
        ),
        (
            {"KIOSK_COIN_ACCEPTOR_DRIVER": "cctalk"},
            "KIOSK_COIN_ACCEPTOR_DRIVER: coin_acceptor.coin_pin: unknown key",
        ),
        (
            {"KIOSK_KIOSK_ACCEPTED_COINS_CENTS": "[1, 2]"},
            "KIOSK_KIOSK_ACCEPTED_COINS_CENTS: coin_acceptor.pulses: [5] c are not accepted",
        ),
        (
            {"KIOSK_COIN_ACCEPTOR_GAP_MS": "500"},
            "KIOSK_COIN_ACCEPTOR_GAP_MS: coin_acceptor.end_gap_ms: must be longer",
        ),
        (
            {"KIOSK_CREDIT_BENEFICIARY": "' '"},
            "KIOSK_CREDIT_BENEFICIARY: credit.beneficiary: required when",
        ),
    ],
    ids=["pin", "driver", "coins", "section-check", "cross-check"],
)
def test_a_check_across_keys_names_the_variable_that_took_part(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(SIM, env=env)
    assert str(info.value).startswith(message)


def test_a_check_across_keys_names_a_variable_even_for_a_key_of_the_file(tmp_path: Path) -> None:
    data = edited(edited(SIM_DATA, "credit.beneficiary", DELETE), "credit.leftover", "keep")
    path = write_profile(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, env={"KIOSK_CREDIT_LEFTOVER": "donate"})
    assert str(info.value).startswith("KIOSK_CREDIT_LEFTOVER: credit.beneficiary: required")


def test_environment_values_are_read_as_toml_values() -> None:
    env = {"KIOSK_COIN_ACCEPTOR_PULSE_MS": "40", "KIOSK_KIOSK_ACCEPTED_COINS_CENTS": "[1, 2]"}
    config = config_mod.load(SIM, env={**env, "KIOSK_COIN_ACCEPTOR_PULSES": "{ 1 = 2, 2 = 4 }"})
    assert config.coin_acceptor.settings.pulse_ms == 40.0
    assert config.kiosk.accepted_coins_cents == (1, 2)
    assert config.coin_acceptor.settings.pulses == {1: 2, 2: 4}


def test_environment_names_outside_the_sections_are_ignored() -> None:
    env = {"KIOSK_CONFIG": "other.toml", "KIOSK_DEBUG": "1", "CREDIT_LEFTOVER": "keep"}
    assert config_mod.load(SIM, env=env) == config_mod.load(SIM, env={})


def test_without_env_argument_the_process_environment_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("KIOSK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KIOSK_DISPLAY_COLUMNS", "24")
    assert config_mod.load(SIM).display.columns == 24


def test_a_keyword_override_beats_environment_and_file() -> None:
    env = {"KIOSK_LEDGER_PATH": "env.db"}
    assert config_mod.load(SIM, env={}).ledger.path == "kiosk.db"
    assert config_mod.load(SIM, env=env).ledger.path == "env.db"
    assert config_mod.load(SIM, env=env, **{"ledger.path": "x.db"}).ledger.path == "x.db"


def test_an_override_into_a_section_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "ledger", "kiosk.db")
    assert "ledger" in load_error(path, **{"ledger.path": "x.db"})
    with pytest.raises(ConfigError, match="ledger"):
        config_mod.load(path, env={"KIOSK_LEDGER_PATH": "x.db"})
    assert "slots" in load_error(SIM, **{"slots.price_cents": 5})


# --- any junk is a ConfigError; anything accepted honours its ranges ----------------------------

SECTION_KEYS = [
    f"{section}.{key}"
    for section, table in SIM_DATA.items()
    if isinstance(table, dict)
    for key in table
]
KEYS = [
    *SECTION_KEYS,
    *(f"slots[1].{key}" for key in SIM_DATA["slots"][1]),
    "slots[0].initial_quantity",
    "coin_acceptor.inhibit_active_high",
    "credit.unknown",
    *SIM_DATA,  # a whole section
    "extra",
]
ENV_NAMES = ["KIOSK_" + key.upper().replace(".", "_") for key in SECTION_KEYS]
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=8,
)


def _assert_in_range(config: Config) -> None:
    settings = config.coin_acceptor.settings
    for part in [*(getattr(config, name) for name in config_mod.SECTIONS), settings, *config.slots]:
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            items = value.values() if isinstance(value, dict) else value
            for item in items if isinstance(value, tuple | dict) else (value,):
                if "min" in f.metadata and item is not None:
                    assert item >= f.metadata["min"], f.name
                if "max" in f.metadata and item is not None:
                    assert item <= f.metadata["max"], f.name
                if isinstance(item, str) and not f.metadata.get("allow_empty"):
                    assert item.strip(), f.name
    assert set(settings.pulses) == set(config.kiosk.accepted_coins_cents)


@given(dotted=st.sampled_from(KEYS), value=JUNK)
def test_junk_for_a_key_is_a_config_error_or_a_valid_config(dotted: str, value: Any) -> None:
    try:
        config = config_mod.parse(edited(SIM_DATA, dotted, value), "junk.toml")
    except ConfigError as err:
        assert str(err).startswith("junk.toml: ")
    else:
        _assert_in_range(config)


@given(name=st.sampled_from(ENV_NAMES), raw=st.text(max_size=12))
def test_junk_in_the_environment_is_a_config_error_naming_it_or_a_valid_config(
    name: str, raw: str
) -> None:
    try:
        config = config_mod.load(SIM, env={name: raw})
    except ConfigError as err:
        origin = str(err).split(": ", 1)[0]
        assert name in origin.split(", "), str(err)
    else:
        _assert_in_range(config)


# --- which profile: -c > KIOSK_CONFIG > the installed kiosk's, never the simulator's --------------


def test_the_profile_is_the_flag_then_the_environment_then_the_installed_one(
    tmp_path: Path,
) -> None:
    system = tmp_path / "etc-kiosk.toml"
    system.write_text("")
    named = tmp_path / "named.toml"
    named.write_text("")
    env = {"KIOSK_CONFIG": str(named)}
    assert config_mod.find_profile("flag.toml", system, env) == Path("flag.toml")
    assert config_mod.find_profile(None, system, env) == named
    assert config_mod.find_profile(None, system, {}) == system
    assert config_mod.find_profile(None, system, {"KIOSK_CONFIG": ""}) == system


def test_without_any_profile_the_error_names_where_it_looked(tmp_path: Path) -> None:
    system = tmp_path / "etc" / "kiosk.toml"
    with pytest.raises(ConfigError) as info:
        config_mod.find_profile(None, system, {})
    assert str(info.value) == (
        f"no configuration: {system} does not exist and KIOSK_CONFIG is not set (or pass -c FILE)"
    )
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        config_mod.find_profile(None, system, {"KIOSK_CONFIG": str(missing)})
    assert str(info.value) == f"KIOSK_CONFIG={missing}: no such file"
    assert Path("/etc/kiosk/kiosk.toml") == config_mod.SYSTEM_PROFILE


def test_device_back_ends_are_chosen_by_name() -> None:
    config = config_mod.load(config_mod.DEFAULT_PROFILE, env={})
    assert (config.display.driver, config.panel.driver, config.dispenser.driver) == (
        "hd44780",
        "gpio",
        "spiral",
    )
    with pytest.raises(ConfigError, match=r"display\.driver: must be one of log, hd44780"):
        config_mod.load(config_mod.DEFAULT_PROFILE, env={"KIOSK_DISPLAY_DRIVER": "lcd"})


# --- profiles that include a common part --------------------------------------------------------

PI_PROFILES = {"pulse": "pi-pulse.toml", "cctalk": "pi-cctalk.toml"}


def included_parts() -> set[str]:
    """The files of config/ that another one includes: common parts, not profiles."""
    names = set()
    for path in config_mod.CONFIG_DIR.glob("*.toml"):
        name = tomllib.loads(path.read_text()).get("include")
        if name is not None:
            names.add(name)
    return names


PROFILE_FILES = sorted(
    p.name for p in config_mod.CONFIG_DIR.glob("*.toml") if p.name not in included_parts()
)


@pytest.mark.parametrize("name", PROFILE_FILES)
def test_every_profile_in_config_loads(name: str) -> None:
    config = config_mod.load(config_mod.CONFIG_DIR / name, env={})
    assert config.slots and config.source == str(config_mod.CONFIG_DIR / name)


def test_the_pi_profiles_share_their_common_part_and_differ_in_the_acceptor() -> None:
    assert included_parts() == {"pi-common.toml"}
    assert set(PI_PROFILES.values()) <= set(PROFILE_FILES)
    pulse, cctalk = (
        config_mod.load(config_mod.CONFIG_DIR / PI_PROFILES[k], env={}) for k in ("pulse", "cctalk")
    )
    assert cctalk.coin_acceptor.driver == "cctalk"
    assert cctalk.coin_acceptor.settings.port == "/dev/ttyUSB0"
    # The pulse acceptor's inhibit stays fail-safe: coins only while the pin is driven high.
    assert pulse.coin_acceptor.settings.inhibit_active_high is False
    assert "Fail-safe" in (config_mod.CONFIG_DIR / PI_PROFILES["pulse"]).read_text()
    assert pulse.ledger.path == "/var/lib/kiosk/kiosk.db"
    same = ("credit", "ledger", "control", "display", "panel", "dispenser", "slots")
    assert [getattr(pulse, s) for s in same] == [getattr(cctalk, s) for s in same]
    assert pulse.kiosk.name == cctalk.kiosk.name and pulse.kiosk.id != cctalk.kiosk.id
    common = tomllib.loads((config_mod.CONFIG_DIR / "pi-common.toml").read_text())
    for name in PI_PROFILES.values():
        own = tomllib.loads((config_mod.CONFIG_DIR / name).read_text())
        # Nothing repeated: a profile sets only what its common part does not.
        assert set(own) & set(common) <= {"kiosk"}
        assert set(own["kiosk"]) & set(common["kiosk"]) == set()


def test_config_check_passes_on_the_cctalk_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from kiosk import cli

    path = str(config_mod.CONFIG_DIR / PI_PROFILES["cctalk"])
    assert cli.main(["config", "check", path]) == 0
    assert capsys.readouterr().out == f"{path}: ok (3 slots, coin acceptor cctalk)\n"


def write_files(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)


def base_with(tmp_path: Path, top: str) -> Path:
    """A profile `top` over a common part made of the pulse sim profile (include added)."""
    write_files(tmp_path, {"common/base.toml": dump_toml(SIM_DATA), "kiosk.toml": top})
    return tmp_path / "kiosk.toml"


def test_tables_merge_key_by_key_and_slots_and_inline_tables_are_replaced_whole(
    tmp_path: Path,
) -> None:
    path = base_with(
        tmp_path,
        'include = "common/base.toml"\n'
        '[kiosk]\nid = "top-1"\n'
        "[coin_acceptor]\npulses = { 1 = 4, 2 = 6, 5 = 8 }\n"
        '[[slots]]\nid = 7\nproduct = "Thé"\nprice_cents = 5\ncapacity = 9\n'
        "motor_pin = 5\nhome_pin = 6\nbutton_pin = 13\nled_pin = 19\n",
    )
    config = config_mod.load(path, env={})
    assert (config.kiosk.id, config.kiosk.name) == ("top-1", SIM_DATA["kiosk"]["name"])
    assert config.coin_acceptor.settings.pulses == {1: 4, 2: 6, 5: 8}
    assert config.coin_acceptor.settings.coin_pin == SIM_DATA["coin_acceptor"]["coin_pin"]
    assert [(s.id, s.product) for s in config.slots] == [(7, "Thé")]
    assert config.credit == config_mod.load(SIM, env={}).credit
    assert config.source == str(path)


def test_includes_nest_each_relative_to_its_own_file(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "a/profile.toml": 'include = "../b/middle.toml"\n[kiosk]\nid = "top"\n',
            "b/middle.toml": 'include = "c/bottom.toml"\n[kiosk]\nname = "middle"\n',
            "b/c/bottom.toml": dump_toml(edited(SIM_DATA, "kiosk.language", "en")),
        },
    )
    kiosk = config_mod.load(tmp_path / "a" / "profile.toml", env={}).kiosk
    assert (kiosk.id, kiosk.name, kiosk.language) == ("top", "middle", "en")


def test_a_value_is_named_by_the_file_it_was_written_in(tmp_path: Path) -> None:
    base = tmp_path / "common" / "base.toml"
    write_files(tmp_path, {"common/base.toml": dump_toml(edited(SIM_DATA, "slots[1].led_pin", 40))})
    (tmp_path / "kiosk.toml").write_text('include = "common/base.toml"\n')
    assert load_error(tmp_path / "kiosk.toml") == (
        f"{base}: slots[1].led_pin: must be at most 27 (got 40)"
    )
    path = base_with(tmp_path, 'include = "common/base.toml"\n[panel]\ncancel_pin = 4\n')
    assert load_error(path) == (  # a clash between the files names both
        f"{base}, {path}: dispenser.drop_pin: GPIO4 is already used by panel.cancel_pin"
    )
    path = base_with(tmp_path, 'include = "common/base.toml"\n[display]\ncolumns = 99\n')
    assert load_error(path).startswith(f"{path}: display.columns: must be at most 40")
    with pytest.raises(ConfigError, match=r"^KIOSK_DISPLAY_COLUMNS: display\.columns"):
        config_mod.load(path, env={"KIOSK_DISPLAY_COLUMNS": "9"})
    config = config_mod.load(path, env={"KIOSK_DISPLAY_COLUMNS": "16"})  # the variable wins
    assert config.display.columns == 16
    (tmp_path / "common" / "base.toml").write_text("[kiosk\n")
    assert load_error(path).startswith(f"{base}: not valid TOML")


@pytest.mark.parametrize("value", ["3", "[]", '["a.toml"]', '""', "{ file = 'a.toml' }"])
def test_an_include_that_is_no_file_name_is_named(tmp_path: Path, value: str) -> None:
    path = base_with(tmp_path, f"include = {value}\n")
    assert load_error(path).startswith(f"{path}: include: must be the name of a file")


def test_an_include_that_cannot_be_read_names_the_including_file(tmp_path: Path) -> None:
    path = base_with(tmp_path, 'include = "common/gone.toml"\n')
    assert load_error(path) == (
        f"{path}: include: {tmp_path / 'common' / 'gone.toml'}: cannot read: "
        "No such file or directory"
    )
    path = base_with(tmp_path, 'include = "common"\n')
    assert load_error(path).startswith(f"{path}: include: {tmp_path / 'common'}: cannot read: ")
    path = base_with(tmp_path, 'include = "a\\u0000b"\n')
    assert load_error(path).startswith(f"{path}: include: ")


def test_an_include_cycle_is_named_with_its_files(tmp_path: Path) -> None:
    path = base_with(tmp_path, 'include = "kiosk.toml"\n')
    assert load_error(path) == (f"{path}: include: kiosk.toml includes itself ({path} -> {path})")
    write_files(
        tmp_path,
        {"a.toml": 'include = "sub/b.toml"\n', "sub/b.toml": 'include = "../a.toml"\n'},
    )
    a, b = tmp_path / "a.toml", tmp_path / "sub" / "b.toml"
    assert load_error(a) == (
        f"{b}: include: ../a.toml includes itself ({a} -> {b} -> {tmp_path / 'sub' / '../a.toml'})"
    )


def test_the_character_display_keys_and_their_defaults(tmp_path: Path) -> None:
    display = config_mod.load(SIM, env={}).display
    assert (display.driver, display.i2c_bus, display.address) == ("hd44780", 1, 0x27)
    assert (display.columns, display.rows) == (20, 2)
    data = edited(SIM_DATA, "display", {"driver": "log"})
    assert config_mod.load(write_profile(tmp_path, data), env={}).display == (
        config_mod.DisplaySection(driver="log", columns=20, rows=2, i2c_bus=1, address=0x27)
    )
    four = config_mod.load(SIM, env={"KIOSK_DISPLAY_ROWS": "4", "KIOSK_DISPLAY_ADDRESS": "0x3F"})
    assert (four.display.rows, four.display.address) == (4, 0x3F)


@pytest.mark.parametrize(
    ("keys", "named", "reason"),
    [
        ({"rows": 3}, "rows", "must be one of 1, 2, 4 (got 3)"),
        ({"rows": "2"}, "rows", "must be an integer"),
        ({"columns": 8}, "columns", "must be at least 16"),
        ({"columns": 40, "rows": 4}, "rows", "4 rows of 40 columns are more than an HD44780"),
        ({"columns": 24, "rows": 4}, "rows", "(80 characters)"),
        ({"address": 0x78}, "address", "0x03 to 0x77 (got 0x78)"),
        ({"address": 2}, "address", "7-bit I2C device address"),
        ({"address": "0x27"}, "address", "must be an integer"),
        ({"address": True}, "address", "must be an integer"),
        ({"i2c_bus": -1}, "i2c_bus", "must be at least 0"),
        ({"i2c_bus": 1.5}, "i2c_bus", "must be an integer"),
        ({"backlight": False}, "backlight", "unknown key"),
    ],
)
def test_a_bad_display_key_is_named(
    tmp_path: Path, keys: dict[str, Any], named: str, reason: str
) -> None:
    data = copy.deepcopy(SIM_DATA)
    data["display"].update(keys)
    path = write_profile(tmp_path, data)
    message = load_error(path)
    assert message.startswith(f"{path}: display.{named}: ")
    assert reason in message
