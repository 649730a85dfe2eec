"""Configuration: TOML profiles loaded into frozen dataclasses.

Sections are the architecture: [kiosk], [credit], [ledger], [display], [panel], [dispenser],
[[slots]] and [coin_acceptor] (whose keys belong to the driver it names). Every key is checked
against the dataclass field it fills: unknown keys, wrong types, out-of-range values, duplicate
pins and duplicate slots are a ConfigError naming the file, the key and the reason.
Precedence: command-line flag > KIOSK_<SECTION>_<KEY> environment variable > file > default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import ACCEPTOR_DRIVERS, acceptor_settings_class
from kiosk.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_PROFILE = CONFIG_DIR / "sim.toml"
# Headless runs of hours of simulated time: a pulse acceptor costs no serial round trips.
PULSE_PROFILE = CONFIG_DIR / "sim-pulse.toml"
LANGUAGES = ("fr", "en")
LEFTOVER_POLICIES = ("keep", "donate")


@dataclass(frozen=True)
class KioskSection:
    id: str = field(metadata={"pattern": "id"})
    name: str
    language: str = field(default="fr", metadata={"choices": LANGUAGES})
    accepted_coins_cents: tuple[int, ...] = field(default=(1, 2, 5), metadata={"min": 1})


@dataclass(frozen=True)
class CreditSection:
    inactivity_timeout_s: float = field(default=60.0, metadata={"min": 5.0, "max": 3600.0})
    leftover: str = field(default="keep", metadata={"choices": LEFTOVER_POLICIES})
    beneficiary: str = ""
    donation_countdown_s: float = field(default=5.0, metadata={"min": 1.0, "max": 60.0})


@dataclass(frozen=True)
class LedgerSection:
    path: str = "kiosk.db"


@dataclass(frozen=True)
class DisplaySection:
    columns: int = field(default=20, metadata={"min": 16, "max": 40})
    message_s: float = field(default=3.0, metadata={"min": 0.5, "max": 30.0})


@dataclass(frozen=True)
class PanelSection:
    cancel_pin: int = field(metadata={"min": 0, "max": 27})
    # Omitted: no door switch (a bench or a kiosk serviced through the CLI only).
    door_pin: int | None = field(default=None, metadata={"min": 0, "max": 27})


@dataclass(frozen=True)
class DispenserSection:
    drop_pin: int = field(metadata={"min": 0, "max": 27})
    max_run_s: float = field(default=8.0, metadata={"min": 0.5, "max": 60.0})
    drop_wait_s: float = field(default=1.5, metadata={"min": 0.1, "max": 10.0})
    retry_turns: int = field(default=1, metadata={"min": 0, "max": 3})


@dataclass(frozen=True)
class SlotConfig:
    id: int = field(metadata={"min": 1, "max": 99})
    product: str
    price_cents: int = field(metadata={"min": 1, "max": 10_000})
    capacity: int = field(metadata={"min": 1, "max": 200})
    motor_pin: int = field(metadata={"min": 0, "max": 27})
    home_pin: int = field(metadata={"min": 0, "max": 27})
    button_pin: int = field(metadata={"min": 0, "max": 27})
    led_pin: int = field(metadata={"min": 0, "max": 27})
    initial_quantity: int | None = field(default=None, metadata={"min": 0})


@dataclass(frozen=True)
class CoinAcceptorSection:
    driver: str
    settings: Any


@dataclass(frozen=True)
class Config:
    source: str
    kiosk: KioskSection
    credit: CreditSection
    ledger: LedgerSection
    display: DisplaySection
    panel: PanelSection
    dispenser: DispenserSection
    slots: tuple[SlotConfig, ...]
    coin_acceptor: CoinAcceptorSection

    def slot(self, slot_id: int) -> SlotConfig:
        return next(s for s in self.slots if s.id == slot_id)

    def with_acceptor(self, **keys: Any) -> Config:
        """A copy with some coin acceptor settings changed (e.g. the port of a simulated one)."""
        settings = dataclasses.replace(self.coin_acceptor.settings, **keys)
        acceptor = dataclasses.replace(self.coin_acceptor, settings=settings)
        return dataclasses.replace(self, coin_acceptor=acceptor)


SECTIONS: dict[str, type] = {
    "kiosk": KioskSection,
    "credit": CreditSection,
    "ledger": LedgerSection,
    "display": DisplaySection,
    "panel": PanelSection,
    "dispenser": DispenserSection,
}


ENV_SECTIONS = (*SECTIONS, "coin_acceptor")


def load(path: str | Path, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read a profile; `overrides` maps "section.key" to a value given on the command line."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    except ValueError as err:  # TOMLDecodeError, UnicodeDecodeError, an over-long integer
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    _apply_environment(data, os.environ if env is None else env, str(path))
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        _override(data, section, key, value, str(path))
    return parse(data, str(path))


def _override(data: dict[str, Any], section: str, key: str, value: Any, source: str) -> None:
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {section}: must be a table to set {section}.{key}")
    table[key] = value


def _apply_environment(data: dict[str, Any], env: Mapping[str, str], source: str) -> None:
    for name, raw in env.items():
        if not name.startswith("KIOSK_"):
            continue
        rest = name[len("KIOSK_") :].lower()
        section = next((s for s in ENV_SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :]
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except ValueError:
            value = raw
        _override(data, section, key, value, source)


def parse(data: dict[str, Any], source: str) -> Config:
    known = {*SECTIONS, "slots", "coin_acceptor"}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{source}: {key}: unknown section (known: {', '.join(sorted(known))})"
            )
    sections = {
        name: _build(cls, _table(data, name, source), name, source)
        for name, cls in SECTIONS.items()
    }
    raw_slots = data.get("slots", [])
    if not isinstance(raw_slots, list) or not raw_slots:
        raise ConfigError(f"{source}: slots: at least one [[slots]] table is required")
    slots = tuple(
        _build(SlotConfig, _as_table(raw, f"slots[{i}]", source), f"slots[{i}]", source)
        for i, raw in enumerate(raw_slots)
    )
    acceptor = _coin_acceptor(_table(data, "coin_acceptor", source), sections["kiosk"], source)
    config = Config(source=source, slots=slots, coin_acceptor=acceptor, **sections)
    _check_whole(config)
    return config


def _table(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    return _as_table(data.get(name, {}), name, source)


def _as_table(value: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    return value


def _coin_acceptor(table: dict[str, Any], kiosk: KioskSection, source: str) -> CoinAcceptorSection:
    table = dict(table)
    driver = table.pop("driver", None)
    if not isinstance(driver, str) or driver not in ACCEPTOR_DRIVERS:
        raise ConfigError(
            f"{source}: coin_acceptor.driver: must be one of {', '.join(ACCEPTOR_DRIVERS)} "
            f"(got {driver!r})"
        )
    settings = _build(acceptor_settings_class(driver), table, "coin_acceptor", source)
    check = getattr(settings, "check_coins", None)
    if check is not None:
        try:
            check(kiosk.accepted_coins_cents)
        except ValueError as err:
            raise ConfigError(f"{source}: coin_acceptor.{err}") from err
    return CoinAcceptorSection(driver, settings)


def _build(cls: type, table: dict[str, Any], where: str, source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(f"{source}: {where}.{key}: unknown key (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {key}: missing")
            continue
        values[name] = _check_value(table[name], hints[name], f.metadata, key, source)
    try:
        return cls(**values)
    except ValueError as err:
        raise ConfigError(f"{source}: {where}.{err}") from err


def _check_value(value: Any, hint: Any, meta: Mapping[str, Any], key: str, source: str) -> Any:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {reason} (got {value!r})")

    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _check_value(value, hint, meta, key, source)
    if origin is tuple:
        if not isinstance(value, list) or not value:
            raise fail("must be a non-empty list")
        item = typing.get_args(hint)[0]
        items = tuple(_check_value(v, item, meta, key, source) for v in value)
        if len(set(items)) != len(items):
            raise fail("has duplicates")
        return items
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise fail("must be a non-empty table")
        k_type, v_type = typing.get_args(hint)
        try:
            keys = [k_type(k) for k in value]
        except ValueError:
            raise fail(f"keys must be {k_type.__name__}") from None
        if len(set(keys)) != len(keys):
            raise fail("has keys that name the same value")
        return {
            k: _check_value(v, v_type, meta, f"{key}.{k}", source)
            for k, v in zip(keys, value.values(), strict=True)
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is bool and not isinstance(value, bool):
        raise fail("must be true or false")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise fail(f"must be {_type_name(hint)}")
    if hint is float and not math.isfinite(value):
        raise fail("must be a finite number")  # NaN would slip past every range check
    if "min" in meta and value < meta["min"]:
        raise fail(f"must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise fail(f"must be at most {meta['max']}")
    if "choices" in meta and value not in meta["choices"]:
        raise fail(f"must be one of {', '.join(map(str, meta['choices']))}")
    if meta.get("pattern") == "id" and not (value and value.replace("-", "").isalnum()):
        raise fail("must be letters, digits and dashes")
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _check_whole(config: Config) -> None:
    src = config.source
    seen_slots: set[int] = set()
    for i, slot in enumerate(config.slots):
        if slot.id in seen_slots:
            raise ConfigError(f"{src}: slots[{i}].id: slot {slot.id} is defined twice")
        seen_slots.add(slot.id)
        if slot.initial_quantity is not None and slot.initial_quantity > slot.capacity:
            raise ConfigError(f"{src}: slots[{i}].initial_quantity: more than the capacity")
    if config.credit.leftover == "donate" and not config.credit.beneficiary:
        raise ConfigError(f'{src}: credit.beneficiary: required when leftover = "donate"')
    owners: dict[int, str] = {}
    for key, pin in _pins(config):
        if pin in owners:
            raise ConfigError(f"{src}: {key}: GPIO{pin} is already used by {owners[pin]}")
        owners[pin] = key


def _pins(config: Config) -> list[tuple[str, int]]:
    pins = [("panel.cancel_pin", config.panel.cancel_pin)]
    if config.panel.door_pin is not None:
        pins.append(("panel.door_pin", config.panel.door_pin))
    pins.append(("dispenser.drop_pin", config.dispenser.drop_pin))
    for i, slot in enumerate(config.slots):
        for name in ("motor_pin", "home_pin", "button_pin", "led_pin"):
            pins.append((f"slots[{i}].{name}", getattr(slot, name)))
    settings = config.coin_acceptor.settings
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name.endswith("_pin") and value is not None:
            pins.append((f"coin_acceptor.{f.name}", value))
    return pins
