"""The payload contract: the schemas in docs/schemas/ are valid JSON Schema, every example in
docs/telemetry.md is valid against its schema and topic, and payloads that break the contract
are refused (tests/payloads.py)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from payloads import (
    SCHEMAS,
    InvalidPayload,
    load,
    schema_for,
    schema_names,
    validate,
    validate_message,
)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "telemetry.md"
BASE_ID = "https://centimeo.example/schemas/"
MARKER = re.compile(r"<!-- (?P<what>schema: (?P<schema>\S+)|text); topic: (?P<topic>\S+) -->")
EVENTS = [n for n in schema_names() if n.startswith("event-")]


@dataclass(frozen=True)
class Example:
    line: int
    schema: str | None  # None: a plain text payload, or "none" (Home Assistant's own format)
    topic: str
    body: str

    def __str__(self) -> str:
        return f"telemetry.md:{self.line} {self.topic}"


def examples() -> list[Example]:
    """Every fenced block of the page, with the marker line that must precede it."""
    lines = PAGE.read_text().splitlines()
    found = []
    for n, line in enumerate(lines):
        if not line.startswith("```") or line == "```":
            continue
        marker = MARKER.fullmatch(lines[n - 1]) if n else None
        assert marker, f"telemetry.md:{n + 1}: a {line} block without a marker line before it"
        end = lines.index("```", n + 1)
        schema = marker["schema"] if marker["what"] != "text" else None
        found.append(Example(n + 1, schema, marker["topic"], "\n".join(lines[n + 1 : end])))
    return found


EXAMPLES = examples()
JSON_EXAMPLES = [e for e in EXAMPLES if e.schema not in (None, "none")]


# --- the schemas themselves ----------------------------------------------------------------


@pytest.mark.parametrize("name", schema_names())
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == BASE_ID + name
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["title"] and schema["description"]


def test_there_is_a_schema_for_every_json_payload_of_the_contract() -> None:
    kinds = ["sale", "vend_failed", "fault", "donation", "collection", "service"]
    commands = ["refresh", "set_price", "slot_enable", "slot_disable", "service_on", "service_off"]
    expected = {f"event-{k}.json" for k in kinds} | {f"cmd-{c}.json" for c in commands}
    expected |= {f"{r}.json" for r in ("state", "stock", "cashbox", "impact", "fault")}
    assert set(schema_names()) == expected | {"cmd_result.json"}


def test_every_event_schema_has_the_one_envelope() -> None:
    sale = load("event-sale")["properties"]
    envelope = {k: sale[k] for k in ("msg_id", "seq", "boot_id", "kiosk_id", "ts", "historical")}
    for name in EVENTS:
        props = load(name)["properties"]
        assert {k: props[k] for k in envelope} == envelope, name
        assert props["kind"]["const"] == name.removeprefix("event-").removesuffix(".json")


@pytest.mark.parametrize("name", [n for n in schema_names() if n != "cmd_result.json"])
def test_every_key_is_required(name: str) -> None:
    schema = load(name)
    assert sorted(schema["required"]) == sorted(schema["properties"])


def test_every_schema_stands_alone() -> None:
    for path in SCHEMAS.glob("*.json"):
        assert "$ref" not in path.read_text(), path.name


# --- the page's examples -------------------------------------------------------------------


def test_the_page_has_an_example_for_every_schema_and_links_it() -> None:
    page = PAGE.read_text()
    assert {e.schema for e in JSON_EXAMPLES} == set(schema_names())
    for name in schema_names():
        assert name in page, name


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_each_example_is_valid_for_its_topic(example: Example) -> None:
    expected = None if example.schema in (None, "none") else example.schema
    assert schema_for(example.topic) == expected
    payload = example.body.encode()
    decoded = validate_message(example.topic, payload)
    if example.schema is None:
        assert decoded in ("online", "offline")
    else:
        assert decoded == json.loads(payload)


@pytest.mark.parametrize("example", JSON_EXAMPLES, ids=str)
def test_each_example_breaks_without_any_of_its_required_keys(example: Example) -> None:
    assert example.schema is not None
    payload = json.loads(example.body)
    for key in load(example.schema)["required"]:
        broken = {k: v for k, v in payload.items() if k != key}
        with pytest.raises(InvalidPayload, match=f"'{key}' is a required property"):
            validate(example.schema, broken)
    with pytest.raises(InvalidPayload, match="'surprise' was unexpected"):
        validate(example.schema, payload | {"surprise": 1})


# --- payloads the contract refuses ---------------------------------------------------------


def example(schema: str) -> dict[str, Any]:
    """A fresh copy of the page's first example for `schema`."""
    first = next(e for e in JSON_EXAMPLES if e.schema == schema)
    payload: dict[str, Any] = json.loads(first.body)
    return copy.deepcopy(payload)


def changed(schema: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    payload = example(schema)
    change(payload)
    return payload


def put(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.__setitem__(key, value)


REFUSED = [
    ("event-sale.json", put("price_cents", 20.5), "not of type 'integer'"),
    ("event-sale.json", put("price_cents", 20.0), "not of type 'integer'"),
    ("event-sale.json", put("price_cents", 0), "less than the minimum of 1"),
    ("event-sale.json", put("price_cents", "20"), "not of type 'integer'"),
    ("event-sale.json", put("credit_left_cents", -1), "less than the minimum of 0"),
    ("event-sale.json", put("historical", 0), "not of type 'boolean'"),
    ("event-sale.json", put("seq", 0), "less than the minimum of 1"),
    ("event-sale.json", put("seq", True), "not of type 'integer'"),
    ("event-sale.json", put("msg_id", "6F1C2D3E-4A5B-4C6D-8E9F-0A1B2C3D4E5F"), "does not match"),
    ("event-sale.json", put("msg_id", "sale-311"), "does not match"),
    ("event-sale.json", put("boot_id", "3f2a9c1e5b7d4f60a8e2c4b6d8f01a2"), "does not match"),
    ("event-sale.json", put("kiosk_id", "mairie/01"), "does not match"),
    ("event-sale.json", put("ts", "2025-03-14T09:26:53+00:00"), "does not match"),
    ("event-sale.json", put("ts", "2025-03-14 09:26:53Z"), "does not match"),
    ("event-sale.json", put("ts", "2025-02-30T09:26:53Z"), "is not a 'date-time'"),
    ("event-sale.json", put("kind", "vend_failed"), "'sale' was expected"),
    ("event-sale.json", put("slot", 100), "greater than the maximum of 99"),
    ("event-vend_failed.json", put("charged", True), "False was expected"),
    ("event-vend_failed.json", put("outcome", ""), "should be non-empty"),
    ("event-fault.json", put("device", "slot:3"), "does not match"),
    ("event-fault.json", put("slot", "3"), "not of type 'integer', 'null'"),
    ("event-collection.json", lambda p: p["coins"].update({"01": 3}), "does not match"),
    ("event-collection.json", lambda p: p["coins"].update({"2": -1}), "less than the minimum"),
    ("event-collection.json", put("coins", {"1": 2.5}), "not of type 'integer'"),
    ("event-donation.json", put("amount_cents", 0), "less than the minimum of 1"),
    ("state.json", put("state", "asleep"), "is not one of"),
    ("state.json", put("uptime_s", -1), "less than the minimum of 0"),
    ("state.json", lambda p: p["faults"][0].pop("since"), "'since' is a required property"),
    ("state.json", lambda p: p["faults"][0].update(slot=3), "'slot' was unexpected"),
    ("stock.json", lambda p: p["slots"][0].update(quantity=-1), "less than the minimum of 0"),
    ("stock.json", lambda p: p["slots"][0].update(enabled="yes"), "not of type 'boolean'"),
    ("cashbox.json", put("capacity_ml", 0), "less than or equal to the minimum of 0"),
    ("cashbox.json", put("fill", -0.1), "less than the minimum of 0"),
    ("impact.json", lambda p: p["coins"]["1"].pop("mass_g"), "'mass_g' is a required"),
    ("impact.json", lambda p: p["donations"]["Restos du Cœur"].update(amount_cents=1.5), "int"),
    ("fault.json", put("since", None), "not of type 'string'"),
    ("cmd-set_price.json", put("price_cents", 12.5), "not of type 'integer'"),
    ("cmd-set_price.json", put("price_cents", 10_001), "greater than the maximum of 10000"),
    ("cmd-set_price.json", put("cmd_id", ""), "should be non-empty"),
    ("cmd-set_price.json", put("cmd_id", "x" * 65), "is too long"),
    ("cmd-set_price.json", lambda p: p.pop("slot"), "'slot' is a required property"),
    ("cmd-refresh.json", put("slot", 1), "'slot' was unexpected"),
    ("cmd_result.json", lambda p: p.update(error="but"), "should not be valid"),
    ("cmd_result.json", lambda p: p.update(ok=False), "'error' is a required property"),
    ("cmd_result.json", lambda p: p.pop("cmd_id"), "'cmd_id' is a required property"),
]


@pytest.mark.parametrize(
    ("schema", "change", "why"), REFUSED, ids=[f"{s}: {w}" for s, _, w in REFUSED]
)
def test_a_payload_that_breaks_the_contract_is_refused(
    schema: str, change: Callable[[dict[str, Any]], None], why: str
) -> None:
    validate(schema, example(schema))  # the unchanged example passes
    with pytest.raises(InvalidPayload, match=re.escape(why)):
        validate(schema, changed(schema, change))


def test_a_refusal_names_every_error_and_where() -> None:
    payload = example("event-sale.json") | {"price_cents": 20.5, "slot": 0}
    with pytest.raises(InvalidPayload) as refused:
        validate("event-sale", payload)
    assert "$.price_cents: 20.5 is not of type 'integer'" in str(refused.value)
    assert "$.slot: 0 is less than the minimum of 1" in str(refused.value)


SALE_TOPIC = "kiosk/v1/mairie-01/event/sale"


def raw(schema: str, **changes: Any) -> bytes:
    return json.dumps(example(schema) | changes).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("kiosk/v1/other-02/event/sale", raw("event-sale.json"), "kiosk_id 'mairie-01' is not"),
        ("kiosk/v1/mairie-01/event/donation", raw("event-sale.json"), "'donation' was expected"),
        ("kiosk/v1/mairie-01/fault/slot_3:jammed", raw("fault.json"), "device and code"),
        ("kiosk/v1/mairie-01/status", b"Online", "neither online nor offline"),
        ("kiosk/v1/mairie-01/status", b"", "neither online nor offline"),
        ("kiosk/v1/mairie-01/event/refund", raw("event-sale.json"), "not a topic of the contract"),
        ("kiosk/v1/mairie-01/cmd/reboot", b'{"cmd_id": "a"}', "not a topic of the contract"),
        ("kiosk/v2/mairie-01/state", raw("state.json"), "not under kiosk/v1/<kiosk_id>/"),
        ("kiosk/v1/mairie-01", raw("state.json"), "not under kiosk/v1/<kiosk_id>/"),
        (SALE_TOPIC, b"\xff{}", "not UTF-8 JSON"),
        (SALE_TOPIC, b'{"msg_id": ', "not UTF-8 JSON"),
        (SALE_TOPIC, b"[]", "is not of type 'object'"),
        (SALE_TOPIC, b"", "not UTF-8 JSON"),
        (
            "kiosk/v1/mairie-01/cmd/refresh",
            json.dumps({"cmd_id": "a" * 64, "pad": " " * 4096}).encode(),
            "more than 4096",
        ),
        ("homeassistant/device/mairie-01/config", b'{"device": {}, "origin": {}}', "components"),
    ],
)
def test_a_message_that_breaks_the_contract_is_refused(
    topic: str, payload: bytes, why: str
) -> None:
    with pytest.raises(InvalidPayload, match=re.escape(why)):
        validate_message(topic, payload)


def test_an_empty_fault_message_clears_and_an_empty_discovery_message_removes() -> None:
    assert validate_message("kiosk/v1/mairie-01/fault/slot_3:no_drop", b"") is None
    assert validate_message("homeassistant/device/mairie-01/config", b"") is None


def test_another_prefix_is_checked_as_such() -> None:
    topic = "city/kiosks/mairie-01/event/sale"
    assert validate_message(topic, raw("event-sale.json"), prefix="city/kiosks")["seq"] == 1042
    with pytest.raises(InvalidPayload, match="not under kiosk/v1/"):
        validate_message(topic, raw("event-sale.json"))


def test_an_unknown_schema_name_says_which_there_are() -> None:
    with pytest.raises(KeyError, match=r"event-sale\.json"):
        validate("event-refund", {})
