"""Carrying out a technician's (or the city's) request: the ledger's part, the same whether the
daemon runs (the core calls it on its thread) or not (the CLI calls it, holding the ledger lock),
and the core's part: the rules of the state the kiosk is in, the hardware, the screen.

Rules: products go in or are counted, the cash box is emptied and a test vend is run only in
maintenance (the door open, or `kiosk service on`); nothing starts while a vend runs. A price,
a slot turned on or off, a coin turned off, a fault cleared or an audit read take effect at once
in any state. A request refused here changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivers.base import acceptor_class
from kiosk import __version__, outbox
from kiosk.config import Config
from kiosk.errors import Refused
from kiosk.events import Command
from kiosk.ledger import Actor, Ledger
from kiosk.machine import State
from kiosk.requests import Request

if TYPE_CHECKING:
    from kiosk.core import Controller

# In maintenance only: the technician's hands are in the kiosk.
HANDS_ON = frozenset({"refill", "count", "collect", "test_vend"})
REMOTE = "mqtt"
# Refused while a test vend runs: they would change what the vend's outcome is counted against,
# or end the visit with a motor running.
BUSY_DURING_TEST = HANDS_ON | {"service", "coin", "faults_clear"}
DEFAULT_COINS = (1, 2, 5)


def check_slot(slot: int, ids: list[int]) -> int:
    if slot not in ids:
        raise Refused(f"no slot {slot} (slots: {', '.join(map(str, ids)) or 'none'})")
    return slot


def apply(ledger: Ledger, config: Config | None, request: Request, by: Actor) -> dict[str, Any]:
    """The ledger's part of a request; returns the result to report. Without a profile (a
    ledger named by --db alone) the ledger's own slots and the usual coins stand in."""
    a = request.args
    if "slot" in a:
        ids = [s.id for s in config.slots] if config else [*ledger.slots()]
        check_slot(a["slot"], ids)
    coins = config.kiosk.accepted_coins_cents if config else DEFAULT_COINS
    match request.name:
        case "refill":
            added = ledger.refill(a["slot"], a["quantity"], by)
            return {"slot": a["slot"], "added": added, **_slot(ledger, a["slot"])}
        case "count":
            held = ledger.count_stock(a["slot"], a["quantity"], by)
            return {"slot": a["slot"], "was": held, "difference": a["quantity"] - held}
        case "price":
            old = ledger.set_price(a["slot"], a["price_cents"], by)
            return {"slot": a["slot"], "price_cents": a["price_cents"], "was_cents": old}
        case "slot":
            changed = ledger.set_enabled(a["slot"], a["enabled"], by)
            return {"slot": a["slot"], "enabled": a["enabled"], "changed": changed}
        case "coin":
            return _coin(ledger, config, coins, a["value_cents"], a["enabled"], by)
        case "collect":
            done = ledger.collect(a["counted_cents"], by)
            return {
                "at": done.at,
                "coins": {str(k): v for k, v in done.coins.items()},
                "value_cents": done.expected_cents,
                "counted_cents": done.counted_cents,
                "difference_cents": done.difference_cents,
            }
        case "faults_clear":
            cleared = ledger.clear_faults(a["device"], a["code"], by)
            return {"cleared": [f"{f.device}:{f.code}" for f in cleared]}
        case "audit":
            from kiosk import audit  # only an audit read needs it

            kiosk_id = config.kiosk.id if config else ledger.meta("kiosk_id") or "kiosk"
            name = config.kiosk.name if config else kiosk_id
            info = audit.AuditInfo(kiosk_id, name, __version__, coins)
            render = functools.partial(audit.render, info=info)
            return {"report": ledger.read_audit(a["reset"], by, render), "reset": a["reset"]}
        case "service":
            cleared = ledger.set_service_mode(a["on"], by)
            return {"service": a["on"], "cleared": [f"{f.device}:{f.code}" for f in cleared]}
    raise Refused(f"{request.name}: needs the kiosk daemon running")


def _coin(
    ledger: Ledger,
    config: Config | None,
    coins: tuple[int, ...],
    value_cents: int,
    enabled: bool,
    by: Actor,
) -> dict[str, Any]:
    if value_cents not in coins:
        named = ", ".join(f"{c} c" for c in coins)
        raise Refused(f"{value_cents} c is not a coin this kiosk takes ({named})")
    if config is not None:
        acceptor: Any = acceptor_class(config.coin_acceptor.driver)
        if not acceptor.per_coin_inhibit:
            raise Refused(acceptor.all_or_none())
    off = ledger.inhibited_coins()
    off = off | {value_cents} if not enabled else off - {value_cents}
    if set(coins) <= off:
        raise Refused("that would turn every coin off; use `kiosk service on` instead")
    ledger.set_coin_inhibited(value_cents, not enabled, by)
    return {"inhibited_cents": sorted(off), "enabled_cents": sorted(set(coins) - off)}


def _slot(ledger: Ledger, slot: int) -> dict[str, Any]:
    state = ledger.slots()[slot]
    return {"quantity": state.quantity, "capacity": state.capacity}


class Desk:
    """The core's side of requests: on the core thread only."""

    def __init__(self, core: Controller) -> None:
        self.core = core
        self._test_vend: tuple[int, int, Callable[[dict[str, Any]], None]] | None = None

    @property
    def testing(self) -> bool:
        return self._test_vend is not None

    def handle(self, command: Command) -> None:
        try:
            reply = self._answer(command)
        except Exception as err:  # storage or worse: the core handles it, the caller hears
            command.reply({"ok": False, "error": f"not done: {err}"})
            raise
        if reply is not None:  # None: a test vend, answered when it ends
            command.reply(reply)

    def _answer(self, command: Command) -> dict[str, Any] | None:
        ledger = self.core.ledger
        request = json.dumps([command.request.name, dict(command.request.args)], sort_keys=True)
        if command.cmd_id is not None:
            done = ledger.command_done(command.cmd_id)
            if done is not None and done[0] == request:  # delivered again: answered again
                return dict(done[1])
            if done is not None:
                why = f"cmd_id {command.cmd_id} was already used for another command"
                return {"ok": False, "error": why}
        reply = self._reply(command)
        if reply is not None and command.by.origin == REMOTE:
            final = reply["ok"] or command.refusal is not None
            name = command.request.name
            ledger.record_command(command.cmd_id, name, request, reply, command.by, final=final)
        return reply

    def _reply(self, command: Command) -> dict[str, Any] | None:
        if command.refusal is not None:
            return {"ok": False, "error": command.refusal}
        try:
            result = self._run(command)
        except Refused as err:
            return {"ok": False, "error": str(err)}
        return None if result is None else {"ok": True, "result": result}

    def _run(self, command: Command) -> dict[str, Any] | None:
        core, request, by = self.core, command.request, command.by
        name, args = request.name, request.args
        if name == "status":
            return self.status()
        if name == "coins":
            return self.coins()
        if name == "telemetry":
            return self.telemetry()
        if name == "refresh":
            if core.telemetry is None:
                raise Refused("telemetry is off ([mqtt] has no host or socket)")
            core.telemetry.refresh()
            return {"refresh": True}
        if core.storage_failing:
            raise Refused("the ledger takes no writes now (a storage fault); try again later")
        if self.testing and name in BUSY_DURING_TEST:
            raise Refused("a test vend is under way; try again in a few seconds")
        if name in HANDS_ON and core.state is not State.MAINTENANCE:
            raise Refused(
                f"{name.replace('_', '-')}: the kiosk is {core.state}; open the door or run "
                "`kiosk service on` first"
            )
        if core.state is State.VENDING and name in ("service", "test_vend"):
            raise Refused("a vend is under way; try again in a few seconds")
        if name == "test_vend":
            self._start_test_vend(args["slot"], by, command.reply)
            return None  # answered when the vend ends
        if name == "service":
            return self._service(args["on"], by)
        result = apply(core.ledger, core.config, request, by)
        if name == "coin":
            core.apply_coins()
        if name == "faults_clear":
            for key in result["cleared"]:
                device, _, code = key.partition(":")
                core.model.faults.discard((device, code))
        core.resettle()
        return result

    def _service(self, on: bool, by: Actor) -> dict[str, Any]:
        core = self.core
        ends_visit = not on and not core.model.door_open
        cleared = core.ledger.set_service_mode(on, by, ends_visit=ends_visit)
        core.model.service_mode = on
        for fault in cleared:
            core.model.faults.discard((fault.device, fault.code))
        core.reload_slots()
        if on and core.state in (State.IDLE, State.CREDIT, State.OUT_OF_SERVICE):
            core.credit.stop()
            core.model.begin_service()
        elif ends_visit and core.state is State.MAINTENANCE:
            core.model.end_service()
        else:
            core.resettle()  # e.g. out of service after a halt that the visit has mended
        return {
            "service": on,
            "state": str(core.state),
            "cleared": [f"{f.device}:{f.code}" for f in cleared],
        }

    def _start_test_vend(
        self, slot_id: int, by: Actor, reply: Callable[[dict[str, Any]], None]
    ) -> None:
        core = self.core
        check_slot(slot_id, [s.id for s in core.config.slots])
        if self._test_vend is not None or core.hw.dispenser.busy:
            raise Refused("a test vend is under way")
        if core.slots[slot_id].quantity == 0:
            raise Refused(f"slot {slot_id} is empty; refill it first")
        test_id = core.ledger.start_test_vend(slot_id, by)
        core.hw.dispenser.vend(slot_id)
        self._test_vend = (test_id, slot_id, reply)  # only once the motor is asked to run

    def test_vend_finished(self, slot: int, outcome: str, detail: str, fault: str | None) -> bool:
        """The dispenser's outcome, if it is the test vend's: recorded and answered."""
        if self._test_vend is None or self._test_vend[1] != slot:
            return False
        test_id, _, reply = self._test_vend
        self.core.ledger.finish_test_vend(test_id, outcome, detail, fault)
        self._test_vend = None
        reply({"ok": True, "result": {"slot": slot, "outcome": outcome, "detail": detail}})
        self.core.after_test_vend()
        return True

    def abort(self, why: str) -> None:
        """The core halted: a test vend under way is answered now (the ledger keeps it pending,
        and the next start resolves it as interrupted)."""
        if self._test_vend is not None:
            self._test_vend[2]({"ok": False, "error": why})
            self._test_vend = None

    def status(self) -> dict[str, Any]:
        core = self.core
        faults = core.ledger.faults()
        return {
            "running": True,
            "kiosk_id": core.config.kiosk.id,
            "state": str(core.state),
            "credit_cents": core.credit_cents,
            "service_mode": core.model.service_mode,
            "door_open": core.model.door_open,
            "faults": [dataclasses.asdict(f) for f in faults],
            "uptime_s": round(core.clock.monotonic() - core.started_at, 1),
            "ledger": core.ledger.path,
            "acceptor": self.coins(),
        }

    def telemetry(self) -> dict[str, Any]:
        core = self.core
        link = core.telemetry.status() if core.telemetry is not None else {"enabled": False}
        backlog = outbox.backlog(core.ledger.db, core.ledger.path)
        faults = [f"{f.code}: {f.detail}" for f in core.ledger.faults() if f.device == "telemetry"]
        return {
            "running": True,
            **link,
            "faults": faults,
            "backlog": backlog.as_json(core.clock.wall()),
        }

    def coins(self) -> dict[str, Any]:
        core = self.core
        acceptor = core.hw.acceptor
        return {
            "running": True,
            "driver": core.config.coin_acceptor.driver,
            "accepting": acceptor.is_accepting,
            "coins_cents": list(core.config.kiosk.accepted_coins_cents),
            "enabled_cents": sorted(acceptor.denominations),
            "inhibited_cents": sorted(core.ledger.inhibited_coins()),
            "identity": core.identity,
        }
