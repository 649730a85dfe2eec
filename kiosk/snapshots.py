"""What the city's dashboard reads: the retained topics (state, stock, cash box, impact, one topic
per active fault, Home Assistant's discovery message), built from the ledger and the core's last
state, and the remote commands it may send, read and checked into requests for the core.

Payloads follow docs/schemas/*.json (docs/telemetry.md). Every retained payload carries the kiosk
id and the time it was built; whether one changed is judged without that time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from kiosk import __version__, figures
from kiosk.config import Config
from kiosk.errors import Refused
from kiosk.requests import MAX_REQUEST_BYTES, Request, check, read_json

CASHBOX_KEYS = ("coins", "count", "value_cents", "mass_g", "volume_ml", "capacity_ml", "fill")
IMPACT_KEYS = (
    "coins",
    "count",
    "value_cents",
    "mass_g",
    "mint_cost_avoided_cents",
    "donations",
    "donated_cents",
)
MAX_CMD_ID = 64
COMMAND_NAME = re.compile(r"[a-z_]{1,32}")

# Remote command -> (request, arguments it takes, arguments it sets)
REMOTE: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "refresh": ("refresh", (), {}),
    "set_price": ("price", ("slot", "price_cents"), {}),
    "slot_enable": ("slot", ("slot",), {"enabled": True}),
    "slot_disable": ("slot", ("slot",), {"enabled": False}),
    "service_on": ("service", (), {"on": True}),
    "service_off": ("service", (), {"on": False}),
}


def fault_topic(device: str, code: str) -> str:
    return f"fault/{device}:{code}"


def retained(db: Database, config: Config, core: dict[str, Any], ts: str) -> dict[str, Any]:
    """Every retained JSON topic (relative to the kiosk's prefix) and its payload."""
    head = {"kiosk_id": config.kiosk.id, "ts": ts}
    faults = [
        {"device": d, "code": c, "since": s, "detail": detail, "slot": slot}
        for d, c, s, detail, slot in db.execute(
            "SELECT device, code, since, detail, slot FROM faults ORDER BY since, device, code"
        )
    ]
    cashbox = figures.cashbox(db, config.cashbox).as_json()
    impact = figures.impact(db, config.impact).as_json()["total"]
    topics: dict[str, Any] = {
        "stock": head | {"slots": [row.as_json() for row in figures.stock(db)]},
        "cashbox": head | {k: cashbox[k] for k in CASHBOX_KEYS},
        "impact": head | {k: impact[k] for k in IMPACT_KEYS},
    }
    if core:  # the state once the core has told it
        topics["state"] = head | {
            "boot_id": core.get("boot_id", ""),
            "firmware": __version__,
            "state": core.get("state", "starting"),
            "credit_cents": core.get("credit_cents", 0),
            "uptime_s": core.get("uptime_s", 0.0),
            "service_mode": core.get("service_mode", False),
            "faults": [{k: f[k] for k in ("device", "code", "since", "detail")} for f in faults],
        }
    for fault in faults:
        topics[fault_topic(fault["device"], fault["code"])] = head | fault
    return topics


def past_faults(db: Database) -> list[str]:
    """The fault topics of every fault this ledger ever recorded."""
    rows = db.execute("SELECT DISTINCT device, code FROM events WHERE kind = 'fault'")
    return [fault_topic(device, code) for device, code in rows]


def same(a: Any, b: Any) -> bool:
    """Two payloads alike but for the time they were built (and the uptime, which changes at
    every look: the state is sent again for it at least every minute)."""

    def bare(payload: Any) -> Any:
        if not isinstance(payload, dict):
            return payload
        return {k: v for k, v in payload.items() if k not in ("ts", "uptime_s")}

    return bool(bare(a) == bare(b))


def discovery(config: Config, base: str, slots: list[int]) -> dict[str, Any]:
    """Home Assistant's device-based discovery message for this kiosk."""
    kiosk_id = config.kiosk.id

    def sensor(key: str, name: str, topic: str, template: str, **extra: Any) -> dict[str, Any]:
        return {
            "p": "sensor",
            "name": name,
            "unique_id": f"{kiosk_id}_{key}",
            "state_topic": f"{base}/{topic}",
            "value_template": template,
            **extra,
        }

    components = {
        "state": sensor("state", "State", "state", "{{ value_json.state }}"),
        "credit": sensor(
            "credit",
            "Credit",
            "state",
            "{{ value_json.credit_cents / 100 }}",
            device_class="monetary",
            unit_of_measurement="EUR",
        ),
        "faults": sensor(
            "faults",
            "Active faults",
            "state",
            "{{ value_json.faults | length }}",
            state_class="measurement",
        ),
        "cashbox_value": sensor(
            "cashbox_value",
            "Cash box value",
            "cashbox",
            "{{ value_json.value_cents / 100 }}",
            device_class="monetary",
            unit_of_measurement="EUR",
        ),
        "cashbox_fill": sensor(
            "cashbox_fill",
            "Cash box fill",
            "cashbox",
            "{{ (value_json.fill * 100) | round(1) }}",
            unit_of_measurement="%",
            state_class="measurement",
        ),
        "coins_saved": sensor(
            "coins_saved",
            "Coins saved",
            "impact",
            "{{ value_json.count }}",
            state_class="total_increasing",
        ),
    }
    for slot in slots:
        components[f"stock_{slot}"] = sensor(
            f"stock_{slot}",
            f"Stock slot {slot}",
            "stock",
            "{{ (value_json.slots | selectattr('slot', 'eq', "
            + str(slot)
            + ") | first).quantity }}",
            state_class="measurement",
        )
    return {
        "device": {
            "identifiers": [kiosk_id],
            "name": config.kiosk.name,
            "manufacturer": "Centimeo",
            "model": "penny kiosk",
            "sw_version": __version__,
        },
        "origin": {"name": "centimeo-kiosk", "sw_version": __version__},
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "components": components,
    }


@dataclass(frozen=True)
class RemoteCommand:
    name: str
    cmd_id: str | None
    request: Request | None  # None: refused, for `refusal`
    refusal: str | None = None


def read_command(name: str, payload: bytes) -> RemoteCommand:
    """A `cmd/<name>` message, checked whole: a request for the core, or the reason it is not
    one (and the cmd_id, when one could be read, to answer with). A name that is no command's
    is recorded as "unknown", not as whatever the topic said."""
    if not COMMAND_NAME.fullmatch(name):
        name = "unknown"
    if len(payload) > MAX_REQUEST_BYTES:
        return RemoteCommand(name, None, None, f"payload longer than {MAX_REQUEST_BYTES} bytes")
    try:
        message = read_json(payload) if payload.strip() else {}
    except ValueError as err:
        return RemoteCommand(name, None, None, f"not JSON: {err}")
    if not isinstance(message, dict):
        return RemoteCommand(name, None, None, "a command is a JSON object")
    cmd_id = message.pop("cmd_id", None)
    if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= MAX_CMD_ID:
        return RemoteCommand(name, None, None, f"cmd_id: a string of 1 to {MAX_CMD_ID} characters")
    try:
        if name not in REMOTE:
            raise Refused(f"unknown command {name!r} (known: {', '.join(sorted(REMOTE))})")
        request_name, takes, sets = REMOTE[name]
        unknown = sorted(set(message) - set(takes))
        if unknown:
            raise Refused(f"{name}: unknown argument {', '.join(unknown)}")
        for arg in takes:
            if arg not in message:
                raise Refused(f"{name}: {arg} is missing")
        return RemoteCommand(name, cmd_id, check(request_name, message | sets))
    except Refused as err:
        return RemoteCommand(name, cmd_id, None, str(err))
