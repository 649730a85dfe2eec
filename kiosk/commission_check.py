"""`kiosk hw check`: commissioning a kiosk's hardware, device by device, with a technician beside
it: what answered, as a table of (device, check, result, detail).

The coin acceptor is identified (a ccTalk device by what it says of itself and its coin table;
a pulse acceptor by what the profile says, and whether its coin line idles high), the display
shows a test pattern through the configured back-end, each LED blinks, the technician is asked
to press each button and work each switch within a timeout (none is a "no answer", never a
crash), and each motor runs one revolution with the drop sensor watched. It runs as in
maintenance: coins inhibited throughout, never a sale, nothing written to the ledger. The
caller holds the hardware (commission.hardware_held) and gives the Setup it runs on.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.base import (
    CancelPressed,
    DeviceError,
    DeviceFault,
    DeviceReady,
    DoorChanged,
    SelectPressed,
    VendFinished,
    VendOutcome,
)
from drivers.cctalk_transport import PortBusy
from kiosk.commission import STOP_THE_KIOSK, Setup, Technician, Waiter, Wanted
from kiosk.config import Config
from kiosk.errors import KioskError
from kiosk.hardware import Hardware, build_hardware
from kiosk.tables import FULL_BLOCK, table

CHECKS = ("acceptor", "display", "leds", "inputs", "motors")
ACCEPTOR_WAIT_S = 15.0  # a ccTalk start-up: identity, 16 coin ids, a slow self-check
PATTERN_S = 2.0  # each display pattern stays this long, for the technician to look at it
BLINKS = 3
BLINK_S = 0.3
VEND_MARGIN_S = 2.0  # beyond the dispenser's own limits, before its outcome is given up on
REST_CHECKS = {  # what an acceptor with no fault at start has shown, by back-end
    "pulse": ("coin line", "idles high, as it should with no coin going through"),
    "cctalk": ("self-check", "no fault"),
}
FAULT_HINTS = {
    "line_stuck": "the coin line is low at rest: check the wiring, the pull-up and the "
    "acceptor's supply",
}


class Result(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    NO_ANSWER = "no answer"
    INFO = "info"  # worth knowing, neither a pass nor a failure


@dataclass(frozen=True)
class Row:
    device: str
    check: str
    result: Result
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "check": self.check,
            "result": str(self.result),
            "detail": self.detail,
            **({"data": dict(self.data)} if self.data else {}),
        }


@dataclass(frozen=True)
class Report:
    kiosk_id: str
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        """Everything answered: no failure, no input left without an answer."""
        return all(r.result in (Result.OK, Result.INFO) for r in self.rows)

    def as_json(self) -> dict[str, Any]:
        return {
            "kiosk_id": self.kiosk_id,
            "ok": self.ok,
            "checks": [r.as_json() for r in self.rows],
        }

    def text(self) -> str:
        body = table(
            ("device", "check", "result", "detail"),
            [(r.device, r.check, str(r.result), r.detail) for r in self.rows],
        )
        failed = sum(r.result in (Result.FAILED, Result.NO_ANSWER) for r in self.rows)
        verdict = "everything answered" if self.ok else f"{failed} check(s) did not pass"
        return f"{body}\n\nkiosk {self.kiosk_id}: {verdict}"


@dataclass(frozen=True)
class Skipped:
    wanted: Wanted


def check(setup: Setup, only: Collection[str] = CHECKS, timeout_s: float = 10.0) -> Report:
    """Run the checks named in `only` (CHECKS, in that order); the caller holds the hardware
    (commission.hardware_held). What fails is a row of the report; only what stops the whole
    check raises: the acceptor's port held by another process (KioskError), a pin that cannot
    be had (DeviceError, from building the devices)."""
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown} (known: {', '.join(CHECKS)})")
    # One revolution per motor: the dispenser's own retry turns are for shoppers.
    config = setup.config
    config = dataclasses.replace(
        config, dispenser=dataclasses.replace(config.dispenser, retry_turns=0)
    )
    waiter = Waiter(setup.clock)
    hardware = build_hardware(config, setup.clock, waiter.events.put, setup.pin_factory, setup.i2c)
    run = _Checks(config, hardware, waiter, setup.technician, timeout_s)
    steps = {
        "acceptor": run.acceptor,
        "display": run.display,
        "leds": run.leds,
        "inputs": run.inputs,
        "motors": run.motors,
    }
    try:
        for name in CHECKS:
            if name in only:
                steps[name]()
    finally:
        hardware.close()
    return Report(config.kiosk.id, tuple(run.rows))


class _Checks:
    def __init__(
        self,
        config: Config,
        hardware: Hardware,
        waiter: Waiter,
        technician: Technician,
        timeout_s: float,
    ) -> None:
        self.config = config
        self.hw = hardware
        self.waiter = waiter
        self.technician = technician
        self.timeout_s = timeout_s
        self.rows: list[Row] = []

    def add(self, device: str, check: str, result: Result, detail: str, **data: Any) -> None:
        self.rows.append(Row(device, check, result, detail, data))

    # --- the coin acceptor ---------------------------------------------------------------

    def acceptor(self) -> None:
        acceptor = self.hw.acceptor
        self.technician.tell("coin acceptor: asking what it is (coins stay inhibited)")
        self.waiter.flush()
        try:
            acceptor.start()  # coins stay inhibited: nothing here ever enables them
        except PortBusy as err:
            raise KioskError(f"{err}; {STOP_THE_KIOSK}") from err
        except DeviceError as err:
            self.add("coin acceptor", "identity", Result.FAILED, str(err))
            return
        faults: list[DeviceFault] = []

        def settled(event: Any) -> bool:
            if isinstance(event, DeviceFault) and event.device == "coin_acceptor":
                faults.append(event)
                return event.active and event.code == "lost"
            return isinstance(event, DeviceReady) and event.device == "coin_acceptor"

        ready = self.waiter.wait_for(settled, ACCEPTOR_WAIT_S)
        if not isinstance(ready, DeviceReady):
            why = faults[-1].detail if ready is not None else f"none within {ACCEPTOR_WAIT_S:g} s"
            self.add(
                "coin acceptor",
                "identity",
                Result.FAILED,
                f"no answer ({why}): check coin_acceptor in {self.config.source}, the cable "
                "and the acceptor's supply",
            )
            return
        self._identity(acceptor.name, ready, faults)

    def _identity(self, name: str, ready: DeviceReady, faults: list[DeviceFault]) -> None:
        identity = dict(ready.identity)
        coins = identity.get("coins", "")
        takes = ", ".join(str(c) for c in self.config.kiosk.accepted_coins_cents)
        if "manufacturer" in identity:  # the device told who it is
            said = (
                f"{identity['manufacturer']} {identity.get('product', '')}, "
                f"{identity.get('category', '')}, serial {identity.get('serial', '?')}, "
                f"software {identity.get('software', '?')}"
            )
            self.add("coin acceptor", "identity", Result.OK, said, **identity)
            self.add(
                "coin acceptor", "coin table", Result.OK, f"{coins} (the kiosk takes {takes} c)"
            )
        else:
            said = f"{ready.detail}, as the profile says (it tells nothing of itself)"
            self.add("coin acceptor", "identity", Result.INFO, said, **identity)
            self.add("coin acceptor", "coin table", Result.INFO, coins or "-")
        rest, fine = REST_CHECKS.get(name, ("at rest", "no fault"))
        if not ready.faults:
            self.add("coin acceptor", rest, Result.OK, fine)
            return
        told = {f.code: f.detail for f in faults if f.active}
        details = [
            f"{code}: {FAULT_HINTS.get(code) or told.get(code, '')}" for code in ready.faults
        ]
        self.add("coin acceptor", rest, Result.FAILED, "; ".join(sorted(details)))

    # --- outputs -------------------------------------------------------------------------

    def display(self) -> None:
        columns = self.config.display.columns
        display = self.hw.display
        self.technician.tell(
            f"display ({self.config.display.driver}): every cell lit, then each line's number "
            f"and its columns 1-{columns}: look at it"
        )
        try:
            display.start()
            display.show(FULL_BLOCK * columns, FULL_BLOCK * columns)
            self._looked_at()
            self.add("display", "all cells", Result.OK, f"2 lines of {columns} cells lit")
            display.show(ruler(1, columns), ruler(2, columns))
            self._looked_at()
            said = f"line 1: {ruler(1, columns)}, line 2: {ruler(2, columns)}"
            self.add("display", "line numbers", Result.OK, said)
            display.show("", "")
        except DeviceError as err:
            self.add("display", "pattern", Result.FAILED, str(err))

    def _looked_at(self) -> None:
        """PATTERN_S for the technician to look at the display; a fault it reports meanwhile
        (a module on I2C that does not answer) is the pattern's failure."""
        fault = self.waiter.wait_for(
            lambda e: isinstance(e, DeviceFault) and e.device == "display" and e.active, PATTERN_S
        )
        if fault is not None:
            raise DeviceError(fault.detail)

    def leds(self) -> None:
        panel = self.hw.panel
        for slot in self.config.slots:
            self.technician.tell(f"slot {slot.id} LED (GPIO{slot.led_pin}): {BLINKS} blinks")
            try:
                lit = True
                for _ in range(BLINKS):
                    panel.set_led(slot.id, True)
                    lit = lit and panel.led_is_lit(slot.id)
                    self.waiter.pause(BLINK_S)
                    panel.set_led(slot.id, False)
                    self.waiter.pause(BLINK_S)
            except DeviceError as err:
                self.add(f"slot {slot.id} LED", "blink", Result.FAILED, str(err))
                continue
            result = Result.OK if lit else Result.FAILED
            said = f"blinked {BLINKS} times on GPIO{slot.led_pin}" if lit else "did not turn on"
            self.add(f"slot {slot.id} LED", "blink", result, said)

    # --- inputs --------------------------------------------------------------------------

    def inputs(self) -> None:
        within = f"within {self.timeout_s:g} s"
        for slot in self.config.slots:
            self._input(
                f"slot {slot.id} button",
                Wanted(
                    "button",
                    f"press the button of slot {slot.id} ({slot.product}) {within}",
                    slot.id,
                ),
                functools.partial(_pressed, slot.id),
                slot.button_pin,
            )
        panel = self.config.panel
        self._input(
            "cancel button",
            Wanted("cancel", f"press the cancel button {within}"),
            lambda e: isinstance(e, CancelPressed),
            panel.cancel_pin,
        )
        if panel.door_pin is None:
            said = "none fitted (panel.door_pin not set)"
            self.add("door switch", "open/close", Result.INFO, said)
            return
        self._input(
            "door switch",
            Wanted("door", f"open or close the door {within}"),
            lambda e: isinstance(e, DoorChanged),
            panel.door_pin,
        )

    def _input(self, device: str, wanted: Wanted, match: Callable[[Any], bool], pin: int) -> None:
        waiter = self.waiter
        check = "open/close" if wanted.kind == "door" else "press"
        waiter.flush()  # a press before the question is not its answer
        asked_at = waiter.clock.monotonic()
        self.technician.ask(wanted, lambda: waiter.events.put(Skipped(wanted)))
        answer = waiter.wait_for(
            lambda e: match(e) or (isinstance(e, Skipped) and e.wanted is wanted), self.timeout_s
        )
        if answer is None:
            said = f"nothing within {self.timeout_s:g} s on GPIO{pin}: check its wiring"
            self.add(device, check, Result.NO_ANSWER, said)
        elif isinstance(answer, Skipped):
            self.add(device, check, Result.NO_ANSWER, "skipped by the technician")
        else:
            how = ""
            if isinstance(answer, DoorChanged):
                how = "opened, " if answer.is_open else "closed, "
            said = f"{how}answered after {answer.at - asked_at:.1f} s on GPIO{pin}"
            self.add(device, check, Result.OK, said)

    # --- motors --------------------------------------------------------------------------

    def motors(self) -> None:
        dispenser = self.hw.dispenser
        self.waiter.flush()
        dispenser.start()
        sensor = self.waiter.wait_for(
            lambda e: isinstance(e, DeviceReady) and e.device == "drop_sensor", 0
        )
        pin = self.config.dispenser.drop_pin
        if sensor is not None and "blocked" in sensor.faults:
            self.add("drop sensor", "at rest", Result.FAILED, f"beam interrupted (GPIO{pin})")
        else:
            self.add("drop sensor", "at rest", Result.OK, f"beam clear (GPIO{pin})")
        for slot in self.config.slots:
            self._turn(slot.id, slot.motor_pin, slot.home_pin)

    def _turn(self, slot: int, motor_pin: int, home_pin: int) -> None:
        dispenser, limits = self.hw.dispenser, self.config.dispenser
        device = f"slot {slot} motor"
        self.technician.tell(f"slot {slot}: one turn of its motor (GPIO{motor_pin}); hands clear")
        self.waiter.flush()
        try:
            dispenser.vend(slot)
        except DeviceError as err:
            self.add(device, "one turn", Result.FAILED, str(err))
            return
        done = self.waiter.wait_for(
            lambda e: isinstance(e, VendFinished) and e.slot == slot,
            limits.max_run_s + limits.drop_wait_s + VEND_MARGIN_S,
        )
        if done is None:
            dispenser.stop_all()
            self.add(device, "one turn", Result.FAILED, "the dispenser gave no outcome; stopped")
            return
        if done.outcome is VendOutcome.BLOCKED:
            self.add(device, "one turn", Result.FAILED, f"not run: {done.detail}")
            return
        turn_s = dispenser.last_turn_s(slot)
        if turn_s is None:
            said = (
                f"home switch (GPIO{home_pin}) not seen within {limits.max_run_s:g} s "
                "(dispenser.max_run_s): jammed, or the switch or the motor is not wired; "
                "motor stopped"
            )
            self.add(device, "one turn", Result.FAILED, said, outcome=str(done.outcome))
        else:
            said = f"home switch seen (GPIO{home_pin}), one turn in {turn_s:.2f} s"
            self.add(device, "one turn", Result.OK, said, turn_s=round(turn_s, 3))
        if done.outcome is VendOutcome.DELIVERED:
            said = f"a product fell and the drop sensor saw it: recount slot {slot}"
            self.add(f"slot {slot} drop", "drop sensor", Result.INFO, said, dropped=True)
        else:
            said = "no drop seen (as expected with the spiral empty)"
            self.add(f"slot {slot} drop", "drop sensor", Result.INFO, said, dropped=False)


def _pressed(slot: int, event: Any) -> bool:
    return isinstance(event, SelectPressed) and event.slot == slot


def ruler(line: int, columns: int) -> str:
    """Line `line`'s number in its first cell, then the last digit of each column's number."""
    return str(line) + "".join(str(c % 10) for c in range(2, columns + 1))
