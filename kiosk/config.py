"""Configuration: TOML profiles loaded into frozen dataclasses.

Sections are the architecture: [kiosk], [credit], [ledger], [display], [panel], [dispenser],
[control], [cashbox], [impact], [mqtt], [[slots]] and [coin_acceptor] (whose keys belong to
the driver it names). Every key is checked against the dataclass field it fills: unknown keys,
wrong types, out-of-range values, duplicate pins and duplicate slots are a ConfigError naming
the file, the key and the reason; an empty string is an error too, unless the field's metadata
says `allow_empty`. A value that came from a KIOSK_* environment variable is named by that
variable instead of the file, one from an included file by that file.
A profile may share a common part: `include = "pi-common.toml"` at its top merges it in, the
profile's tables key by key over the common part's, its [[slots]] replacing them whole
(kiosk.includes has the rule).
Precedence: command-line flag > KIOSK_<SECTION>_<KEY> environment variable > file (over the
files it includes) > default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import (
    ACCEPTOR_DRIVERS,
    DISPENSER_DRIVERS,
    DISPLAY_DRIVERS,
    PANEL_DRIVERS,
    acceptor_settings_class,
)
from kiosk import includes
from kiosk.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_PROFILE = CONFIG_DIR / "sim.toml"
# Headless runs of hours of simulated time: a pulse acceptor costs no serial round trips.
PULSE_PROFILE = CONFIG_DIR / "sim-pulse.toml"
# The installed kiosk's profile, for `kiosk run` and the technician's commands.
SYSTEM_PROFILE = Path("/etc/kiosk/kiosk.toml")
PROFILE_ENV = "KIOSK_CONFIG"
COMMAND_LINE = "command line"
LANGUAGES = ("fr", "en")
LEFTOVER_POLICIES = ("keep", "donate")
ID = re.compile(r"[A-Za-z0-9_-]+")
HAT_EEPROM_PINS = (0, 1)  # the Pi's ID_SD and ID_SC: the bus a HAT's EEPROM is read on at boot
PL011_PORTS = ("/dev/ttyAMA0", "/dev/serial0")  # the UART on GPIO14 (TXD) and GPIO15 (RXD)
TOPIC = re.compile(r"[^/#+\x00]+(/[^/#+\x00]+)*")


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
    beneficiary: str = field(default="", metadata={"allow_empty": True})
    donation_countdown_s: float = field(default=5.0, metadata={"min": 1.0, "max": 60.0})


@dataclass(frozen=True)
class LedgerSection:
    path: str = "kiosk.db"


@dataclass(frozen=True)
class DisplaySection:
    # Back-ends by name (drivers.base registries): "log" writes the lines to the log, "hd44780"
    # drives a character LCD behind a PCF8574 I2C backpack (i2c_bus, address, rows are its).
    driver: str = field(default="log", metadata={"choices": tuple(DISPLAY_DRIVERS)})
    columns: int = field(default=20, metadata={"min": 16, "max": 40})
    rows: int = field(default=2, metadata={"choices": (1, 2, 4)})
    i2c_bus: int = field(default=1, metadata={"min": 0, "max": 255})  # /dev/i2c-1: GPIO2 and 3
    # PCF8574 backpacks answer at 0x20-0x27 (0x27 with no jumper), PCF8574A ones at 0x38-0x3F.
    address: int = 0x27
    message_s: float = field(default=3.0, metadata={"min": 0.5, "max": 30.0})

    def __post_init__(self) -> None:
        if not 0x03 <= self.address <= 0x77:
            raise ValueError(
                "address: must be a 7-bit I2C device address, 0x03 to 0x77 "
                f"(got {self.address:#04x})"
            )
        if self.columns * self.rows > 80:  # the controller's display memory
            raise ValueError(
                f"rows: {self.rows} rows of {self.columns} columns are more than an HD44780 "
                "holds (80 characters)"
            )


@dataclass(frozen=True)
class PanelSection:
    cancel_pin: int = field(metadata={"min": 0, "max": 27})
    # Omitted: no door switch (a bench or a kiosk serviced through the CLI only).
    door_pin: int | None = field(default=None, metadata={"min": 0, "max": 27})
    driver: str = field(default="gpio", metadata={"choices": tuple(PANEL_DRIVERS)})


@dataclass(frozen=True)
class DispenserSection:
    drop_pin: int = field(metadata={"min": 0, "max": 27})
    driver: str = field(default="spiral", metadata={"choices": tuple(DISPENSER_DRIVERS)})
    max_run_s: float = field(default=8.0, metadata={"min": 0.5, "max": 60.0})
    drop_wait_s: float = field(default=1.5, metadata={"min": 0.1, "max": 10.0})
    retry_turns: int = field(default=1, metadata={"min": 0, "max": 3})


@dataclass(frozen=True)
class ControlSection:
    # Omitted: beside the ledger (`<ledger.path>.sock`); a Pi profile names /run/kiosk/kiosk.sock.
    socket: str | None = None


@dataclass(frozen=True)
class CashboxSection:
    capacity_ml: float = field(default=1500.0, metadata={"min": 10.0, "max": 100_000.0})


@dataclass(frozen=True)
class ImpactSection:
    # What minting one coin costs the State, in cents, per denomination; a denomination left out
    # is counted as costing nothing (no figure is assumed where none is known).
    mint_cost_cents: dict[int, float] = field(
        default_factory=lambda: {1: 4.0}, metadata={"min": 0.0, "max": 100.0}
    )


@dataclass(frozen=True)
class MqttSection:
    # No host and no socket: telemetry off; events still wait in the outbox.
    host: str | None = None
    port: int = field(default=1883, metadata={"min": 1, "max": 65535})
    socket: str | None = None  # a Unix socket path instead of host and port
    prefix: str = field(default="kiosk/v1", metadata={"pattern": "topic"})
    keepalive_s: int = field(default=30, metadata={"min": 5, "max": 3600})
    username: str | None = None  # default: the kiosk id (the broker's ACLs key on it)
    password_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    ha_discovery: bool = False
    outbox_keep_days: float = field(default=30.0, metadata={"min": 1.0, "max": 3650.0})

    def __post_init__(self) -> None:
        if self.host is not None and self.socket is not None:
            raise ValueError("socket: give a host or a socket, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_key: tls_cert and tls_key go together")

    @property
    def enabled(self) -> bool:
        return self.host is not None or self.socket is not None


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
    control: ControlSection
    cashbox: CashboxSection
    impact: ImpactSection
    mqtt: MqttSection
    slots: tuple[SlotConfig, ...]
    coin_acceptor: CoinAcceptorSection

    @property
    def control_socket(self) -> str:
        return self.control.socket or f"{self.ledger.path}.sock"

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
    "control": ControlSection,
    "cashbox": CashboxSection,
    "impact": ImpactSection,
    "mqtt": MqttSection,
}


ENV_SECTIONS = (*SECTIONS, "coin_acceptor")


def find_profile(flag: str | None, fallback: Path, env: Mapping[str, str] | None = None) -> Path:
    """The profile to load: `-c FILE`, else $KIOSK_CONFIG, else `fallback` where it exists.

    For `kiosk run` the fallback is SYSTEM_PROFILE, never the simulator's profile: a kiosk
    started without its configuration stops and says where it looked.
    """
    if flag is not None:
        return Path(flag)
    named = (os.environ if env is None else env).get(PROFILE_ENV)
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"{PROFILE_ENV}={named}: no such file")
        return Path(named)
    if fallback.is_file():
        return fallback
    raise ConfigError(
        f"no configuration: {fallback} does not exist and {PROFILE_ENV} is not set "
        "(or pass -c FILE)"
    )


@dataclass(frozen=True)
class _Source:
    """Where values came from: the file, except keys set by the environment or a flag, and keys
    written in a file it includes."""

    file: str
    origins: Mapping[str, str] = field(default_factory=dict)  # "section.key" -> variable
    included: Mapping[str, str] = field(default_factory=dict)  # "section.key" -> file

    def of(self, *keys: str) -> str:
        """The variables that set any of `keys` (or a table above one), else the files that
        they are written in."""
        named = []
        for key in keys:
            while key:
                if key in self.origins:
                    named.append(self.origins[key])
                key = key.rpartition(".")[0]
        return ", ".join(dict.fromkeys(named)) or ", ".join(
            dict.fromkeys(self._written_in(key) for key in keys or [""])
        )

    def _written_in(self, key: str) -> str:
        while key:
            if key in self.included:
                return self.included[key]
            key = key.rpartition(".")[0]
        return self.file


def load(path: str | Path, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read a profile; `overrides` maps "section.key" to a value given on the command line."""
    path = Path(path)
    data, included = includes.read(path)
    origins: dict[str, str] = {}
    for name, dotted, value in _environment(os.environ if env is None else env):
        _override(data, dotted, value, name)
        origins[dotted] = name
    for dotted, value in overrides.items():
        _override(data, dotted, value, COMMAND_LINE)
        origins[dotted] = COMMAND_LINE
    return _parse(data, _Source(str(path), origins, included))


def _override(data: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    section, _, key = dotted.partition(".")
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: {section}: must be a table to set {dotted}")
    table[key] = value


def _environment(env: Mapping[str, str]) -> Iterable[tuple[str, str, Any]]:
    """(variable, "section.key", value) for each KIOSK_<SECTION>_<KEY> variable."""
    for name, raw in env.items():
        if not name.startswith("KIOSK_"):
            continue
        rest = name[len("KIOSK_") :].lower()
        section = next((s for s in ENV_SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except (ValueError, RecursionError):  # not a TOML value (or one nested too deep)
            value = raw
        yield name, f"{section}.{rest[len(section) + 1 :]}", value


def parse(data: dict[str, Any], source: str) -> Config:
    return _parse(data, _Source(source))


def _parse(data: dict[str, Any], src: _Source) -> Config:
    known = {*SECTIONS, "slots", "coin_acceptor"}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{src.of(key)}: {key}: unknown section (known: {', '.join(sorted(known))})"
            )
    sections = {
        name: _build(cls, _table(data, name, src), name, src) for name, cls in SECTIONS.items()
    }
    raw_slots = data.get("slots", [])
    if not isinstance(raw_slots, list) or not raw_slots:
        raise ConfigError(f"{src.file}: slots: at least one [[slots]] table is required")
    slots = tuple(
        _build(SlotConfig, _as_table(raw, f"slots[{i}]", src), f"slots[{i}]", src)
        for i, raw in enumerate(raw_slots)
    )
    acceptor = _coin_acceptor(_table(data, "coin_acceptor", src), sections["kiosk"], src)
    config = Config(source=src.file, slots=slots, coin_acceptor=acceptor, **sections)
    _check_whole(config, src)
    return config


def _table(data: dict[str, Any], name: str, src: _Source) -> dict[str, Any]:
    return _as_table(data.get(name, {}), name, src)


def _as_table(value: Any, where: str, src: _Source) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{src.of(where)}: {where}: must be a table")
    return value


def _coin_acceptor(table: dict[str, Any], kiosk: KioskSection, src: _Source) -> CoinAcceptorSection:
    table = dict(table)
    driver = table.pop("driver", None)
    if not isinstance(driver, str) or driver not in ACCEPTOR_DRIVERS:
        raise ConfigError(
            f"{src.of('coin_acceptor.driver')}: coin_acceptor.driver: must be one of "
            f"{', '.join(ACCEPTOR_DRIVERS)} (got {driver!r})"
        )
    # The driver decides which keys belong here: a driver set from the environment is named
    # in errors about the file's keys too.
    settings = _build(
        acceptor_settings_class(driver), table, "coin_acceptor", src, "coin_acceptor.driver"
    )
    check = getattr(settings, "check_coins", None)
    if check is not None:
        try:
            check(kiosk.accepted_coins_cents)
        except ValueError as err:
            keys = ["kiosk.accepted_coins_cents", *(f"coin_acceptor.{k}" for k in table)]
            raise ConfigError(f"{src.of(*keys)}: coin_acceptor.{err}") from err
    return CoinAcceptorSection(driver, settings)


def _build(cls: type, table: dict[str, Any], where: str, src: _Source, *causes: str) -> Any:
    """`cls` from a table; `causes` are other keys whose origin an error here also names."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(
                f"{src.of(f'{where}.{key}', *causes)}: {where}.{key}: unknown key "
                f"(known: {', '.join(fields)})"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{src.of(*causes)}: {key}: missing")
            continue
        values[name] = _check_value(table[name], hints[name], f.metadata, key, src.of(key))
    try:
        return cls(**values)
    except ValueError as err:  # a check across the section's keys, in the class itself
        keys = [f"{where}.{k}" for k in table]
        raise ConfigError(f"{src.of(*keys, *causes)}: {where}.{err}") from err


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
    # A blank port, path or product name is a mistake found only later, far from the file.
    if hint is str and not value.strip() and not meta.get("allow_empty"):
        raise fail("must not be empty")
    if "min" in meta and value < meta["min"]:
        raise fail(f"must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise fail(f"must be at most {meta['max']}")
    if "choices" in meta and value not in meta["choices"]:
        raise fail(f"must be one of {', '.join(map(str, meta['choices']))}")
    if meta.get("pattern") == "id" and not ID.fullmatch(value):
        # The MQTT client id, username and topic level; Home Assistant's id rule too.
        raise fail("must be ASCII letters, digits, '-' and '_'")
    if meta.get("pattern") == "topic" and not TOPIC.fullmatch(value):
        raise fail("must be topic levels separated by '/', without wildcards or empty levels")
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _check_whole(config: Config, src: _Source) -> None:
    seen_slots: set[int] = set()
    for i, slot in enumerate(config.slots):
        if slot.id in seen_slots:
            raise ConfigError(
                f"{src.of(f'slots[{i}]')}: slots[{i}].id: slot {slot.id} is defined twice"
            )
        seen_slots.add(slot.id)
        if slot.initial_quantity is not None and slot.initial_quantity > slot.capacity:
            raise ConfigError(
                f"{src.of(f'slots[{i}]')}: slots[{i}].initial_quantity: more than the capacity"
            )
    if config.credit.leftover == "donate" and not config.credit.beneficiary.strip():
        raise ConfigError(
            f"{src.of('credit.beneficiary', 'credit.leftover')}: credit.beneficiary: "
            'required when leftover = "donate"'
        )
    unknown = sorted(set(config.impact.mint_cost_cents) - set(config.kiosk.accepted_coins_cents))
    if unknown:
        raise ConfigError(
            f"{src.of('impact.mint_cost_cents')}: impact.mint_cost_cents: "
            f"{', '.join(f'{c} c' for c in unknown)} not among kiosk.accepted_coins_cents"
        )
    for key, pin in _pins(config):
        if pin in HAT_EEPROM_PINS:
            raise ConfigError(
                f"{src.of(key)}: {key}: GPIO{pin} is the HAT ID EEPROM's bus (GPIO0 and GPIO1): "
                "leave it free"
            )
    owners: dict[int, str] = {}
    if config.display.driver == "hd44780" and config.display.i2c_bus == 1:
        owners |= {2: "display.i2c_bus", 3: "display.i2c_bus"}  # the Pi's bus 1: SDA, SCL
    if getattr(config.coin_acceptor.settings, "port", None) in PL011_PORTS:
        owners |= {14: "coin_acceptor.port", 15: "coin_acceptor.port"}  # the UART's TXD, RXD
    for key, pin in _pins(config):
        if pin in owners:
            raise ConfigError(
                f"{src.of(key, owners[pin])}: {key}: GPIO{pin} is already used by {owners[pin]}"
            )
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
