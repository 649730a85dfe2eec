"""The telemetry payload contract, for tests: validate what the kiosk publishes against the JSON
Schemas in docs/schemas/ (draft 2020-12), which docs/telemetry.md describes.

    validate("event-sale", payload)                  one payload against one schema
    validate_message(topic, payload_bytes)           a message as received: its schema found from
                                                     the topic, and the topic's kiosk id, kind,
                                                     device and code checked against the payload
    schema_for("kiosk/v1/k1/event/sale")             "event-sale.json" (None: plain text or HA)

Stricter than a stock validator in two ways, both on the kiosk's side of the contract: an
integer must be a JSON integer (a stock validator also takes 5.0), and every `format` is checked
(a date-time must parse, a uuid must be one). Each failure raises InvalidPayload listing every
error with its JSON path.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
PREFIX = "kiosk/v1"
MAX_COMMAND_BYTES = 4096
KIOSK_ID = re.compile(r"[A-Za-z0-9_-]+")
STATUS = (b"online", b"offline")
HA_TOPIC = re.compile(r"homeassistant/device/([A-Za-z0-9_-]+)/config")


class InvalidPayload(ValueError):
    """A payload that breaks the contract; the message says where and why."""


def _strict_integer(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _formats() -> FormatChecker:
    checker = FormatChecker()  # every format jsonschema knows (uuid among them)

    # jsonschema checks date-time only with an extra package; Python's own parser does here
    # (the schemas' patterns already ask for UTC with a Z).
    @checker.checks("date-time", raises=ValueError)
    def _date_time(instance: object) -> bool:
        if isinstance(instance, str):
            datetime.fromisoformat(instance)
        return True

    return checker


StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)
FORMATS = _formats()


def schema_names() -> list[str]:
    """Every schema file in docs/schemas/, e.g. "event-sale.json"."""
    return sorted(p.name for p in SCHEMAS.glob("*.json"))


@functools.cache
def load(name: str) -> dict[str, Any]:
    """A schema by file name, with or without ".json"."""
    file = name if name.endswith(".json") else f"{name}.json"
    path = SCHEMAS / file
    if not path.is_file():
        raise KeyError(f"no schema {file} in {SCHEMAS} (there are: {', '.join(schema_names())})")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@functools.cache
def _validator(name: str) -> Any:
    return StrictValidator(load(name), format_checker=FORMATS)


def validate(name: str, payload: Any) -> None:
    """Raise InvalidPayload unless `payload` (decoded JSON) is valid against the schema `name`
    ("event-sale" or "event-sale.json")."""
    errors = sorted(_validator(name).iter_errors(payload), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "; ".join(f"{e.json_path}: {e.message}" for e in errors)
        raise InvalidPayload(f"{name}: {lines}") from errors[0]


def schema_for(topic: str, prefix: str = PREFIX) -> str | None:
    """The schema file of a kiosk topic; None for `status` (plain text) and for Home
    Assistant's discovery topic (HA's format). `cmd_result/<anything>` (a Response Topic the
    telemetry page recommends) is an answer too. Raises InvalidPayload for any other topic."""
    if HA_TOPIC.fullmatch(topic):
        return None
    _kiosk, rest = _split(topic, prefix)
    if rest == "status":
        return None
    if rest.startswith("fault/"):
        return "fault.json"
    if rest.startswith("cmd_result/"):  # a Response Topic in the kiosk's subtree
        return "cmd_result.json"
    name = rest.replace("/", "-") + ".json"
    if name not in schema_names():
        raise InvalidPayload(f"{topic}: not a topic of the contract")
    return name


def _split(topic: str, prefix: str) -> tuple[str, str]:
    head = f"{prefix}/"
    kiosk, _, rest = topic.removeprefix(head).partition("/")
    if not topic.startswith(head) or not KIOSK_ID.fullmatch(kiosk) or not rest:
        raise InvalidPayload(f"{topic}: not under {head}<kiosk_id>/")
    return kiosk, rest


def validate_message(topic: str, payload: bytes, prefix: str = PREFIX) -> Any:
    """Check one message as it came off the broker and return its decoded payload (text for
    `status`, None for a cleared fault or a removed HA device, else the JSON value).

    Beyond the schema: the payload's kiosk_id is the topic's, an event's kind is the topic's,
    a fault's device and code are the topic's `<device>:<code>`, a command fits in 4096 bytes.
    """
    ha = HA_TOPIC.fullmatch(topic)
    if ha:
        return None if payload == b"" else _ha_config(topic, _decode(topic, payload))
    kiosk, rest = _split(topic, prefix)
    if rest == "status":
        if payload not in STATUS:
            raise InvalidPayload(f"{topic}: {payload!r} is neither online nor offline")
        return payload.decode()
    if rest.startswith("fault/") and payload == b"":
        return None  # the fault cleared
    name = schema_for(topic, prefix)
    assert name is not None
    if rest.startswith("cmd/") and len(payload) > MAX_COMMAND_BYTES:
        raise InvalidPayload(f"{topic}: {len(payload)} bytes, more than {MAX_COMMAND_BYTES}")
    value = _decode(topic, payload)
    validate(name, value)
    if "kiosk_id" in value and value["kiosk_id"] != kiosk:
        raise InvalidPayload(f"{topic}: kiosk_id {value['kiosk_id']!r} is not the topic's")
    if rest.startswith("event/") and value["kind"] != rest.removeprefix("event/"):
        raise InvalidPayload(f"{topic}: kind {value['kind']!r} is not the topic's")
    if rest.startswith("fault/") and rest != f"fault/{value['device']}:{value['code']}":
        raise InvalidPayload(f"{topic}: device and code {value['device']}:{value['code']}")
    return value


def _decode(topic: str, payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is a ValueError
        raise InvalidPayload(f"{topic}: not UTF-8 JSON: {err}") from None


def _ha_config(topic: str, config: Any) -> Any:
    """Home Assistant's device discovery: only what HA needs to take it (its own format)."""
    if not isinstance(config, dict):
        raise InvalidPayload(f"{topic}: a discovery message is a JSON object")
    for one, short in (("device", "dev"), ("origin", "o"), ("components", "cmps")):
        if one not in config and short not in config:
            raise InvalidPayload(f"{topic}: no {one} block")
    components = config.get("components", config.get("cmps"))
    if not isinstance(components, dict):
        raise InvalidPayload(f"{topic}: components is not an object")
    for key, component in components.items():
        if not isinstance(component, dict) or (
            "platform" not in component and "p" not in component
        ):
            raise InvalidPayload(f"{topic}: component {key} has no platform")
        if "unique_id" not in component and "uniq_id" not in component:
            raise InvalidPayload(f"{topic}: component {key} has no unique_id")
    return config
