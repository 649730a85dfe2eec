"""The core: one thread, one event queue, the state machine and the ledger's only writer.

Devices, and later the control socket and MQTT, put events on the queue. The loop waits for the
next event or the nearest deadline (its own: inactivity, donation countdown, display messages;
and the devices'), handles it, and drives the outputs for the state it is in. Any unexpected
error stops selling safely (coins inhibited, motors off, out of service) until a technician
closes the door again.
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import (
    CancelPressed,
    Clock,
    CoinAccepted,
    CoinRejected,
    DeviceError,
    DeviceFault,
    DeviceNotice,
    DoorChanged,
    SelectPressed,
    VendFinished,
    VendOutcome,
    Wake,
)
from kiosk.config import Config
from kiosk.errors import LedgerError
from kiosk.hardware import Hardware
from kiosk.ledger import Ledger, SlotState
from kiosk.machine import ACCEPTING, KioskModel, State, build
from kiosk.texts import reason, text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refill:
    """A technician put `quantity` products in `slot` (accepted in maintenance only)."""

    slot: int
    quantity: int
    actor: str = "technician"


@dataclass(frozen=True)
class Shutdown:
    """Stop the loop; the owner then closes the hardware and the ledger."""


# A failed vend marks the slot with this fault; BLOCKED is the drop sensor's, not the slot's.
SLOT_FAULTS = {VendOutcome.JAMMED: "jammed", VendOutcome.NO_DROP: "no_drop"}


class Controller:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        hardware: Hardware,
        clock: Clock,
        events: queue.Queue[Any],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.hw = hardware
        self.clock = clock
        self.events = events
        self.model = KioskModel(self._entered)
        build(self.model)
        self.slots: dict[int, SlotState] = {}
        self._lang = config.kiosk.language
        self._vend: tuple[int, int] | None = None  # (vend id, slot)
        self._message: tuple[str, str] | None = None
        self._message_until: float | None = None
        self._inactive_at: float | None = None
        self._donate_at: float | None = None
        self._running = False
        self._stop_after_vend = False

    @property
    def state(self) -> State:
        return State(self.model.state)

    @property
    def credit_cents(self) -> int:
        return self.model.credit_cents

    @property
    def donation_pending(self) -> bool:
        return self._donate_at is not None

    @property
    def settled(self) -> bool:
        """Nothing under way: no vend, message, countdown, coin being read or motor deadline."""
        return (
            self._vend is None
            and self._message_until is None
            and self._inactive_at is None
            and self._donate_at is None
            and not self.hw.acceptor.reading
            and self.hw.dispenser.next_deadline() is None
        )

    # --- start-up ----------------------------------------------------------------------------

    def start(self) -> None:
        """The `starting` state's work: ledger checked, vends resolved, devices identified."""
        self.hw.display.show(*text(self._lang, "starting"))
        self.ledger.boot(self.config.kiosk.id)
        self.ledger.sync_slots(self.config.slots)
        for vend in self.ledger.resolve_interrupted_vends():
            log.warning("vend %d of slot %d was interrupted: not charged", vend.vend_id, vend.slot)
        try:
            self.hw.acceptor.resume_from(self.ledger.acceptor_cursor())
            self.hw.acceptor.start()
        except DeviceError as err:
            log.error("%s", err)
            self.model.faults.add("coin_acceptor")
            self.ledger.record_event("fault", f"coin_acceptor: {err}")
        self.model.credit_cents = self.ledger.credit_cents()
        self.model.door_open = self.hw.panel.door_is_open
        self._reload_slots()
        self.model.ready()
        log.info(
            "kiosk %s ready: %s, credit %d c", self.config.kiosk.id, self.state, self.credit_cents
        )

    # --- the loop ----------------------------------------------------------------------------

    def run(self, until: Callable[[], bool] | None = None) -> None:
        self._running = True
        try:
            while self._running and not (until and until()):
                self.step()
        except BaseException:  # e.g. KeyboardInterrupt: leave no motor running
            self.hw.dispenser.stop_all()
            raise

    def step(self) -> None:
        event = self.clock.wait(self.events, self._next_deadline())
        try:
            if event is not None:
                self.handle(event)
            self._service(self.clock.monotonic())
        except Exception as err:  # the top of the core thread: stop selling, keep the books
            log.exception("core error, going out of service")
            self._halt("storage" if isinstance(err, LedgerError) else "internal_error", err)

    def _next_deadline(self) -> float | None:
        candidates = [
            self._message_until,
            self._inactive_at,
            self._donation_tick(),
            self.hw.acceptor.next_deadline(),
            self.hw.dispenser.next_deadline(),
        ]
        return min((c for c in candidates if c is not None), default=None)

    def _donation_tick(self) -> float | None:
        """The countdown redraws each second, and ends at `_donate_at`."""
        if self._donate_at is None:
            return None
        remaining = self._donate_at - self.clock.monotonic()
        if remaining <= 0:
            return None  # held while a coin is read: the acceptor's deadline wakes the loop
        return self._donate_at - max(0, int(remaining - 1e-9))

    def _service(self, now: float) -> None:
        self.hw.acceptor.service(now)
        self.hw.dispenser.service(now)
        if self._message_until is not None and now >= self._message_until:
            self._message = self._message_until = None
            self._show_state()
        if self._donate_at is not None:
            if now < self._donate_at:
                self._show_state()
            elif not self.hw.acceptor.reading and self.events.empty():
                self._donate()  # not while a coin is being read, or read but not yet counted
        if self._inactive_at is not None and now >= self._inactive_at:
            self._inactive_at = None
            self._leave_credit("inactivity")

    def _halt(self, fault: str, err: Exception) -> None:
        self.hw.dispenser.stop_all()
        self.hw.acceptor.set_accepting(False)
        self.model.faults.add(fault)
        vend, self._vend = self._vend, None
        try:
            self.ledger.record_event("fault", f"{fault}: {err}")
            if vend is not None:
                self.ledger.interrupt_vend(vend[0], f"{fault} during the vend; not charged")
                self._reload_slots()
        except LedgerError:
            log.exception("cannot record the fault")
        self.model.halt()

    # --- events ------------------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        match event:
            case CoinAccepted():
                self._on_coin(event)
            case CoinRejected():
                self.ledger.record_event("coin_rejected", f"{event.reason}: {event.detail}")
            case SelectPressed():
                self._on_select(event.slot)
            case CancelPressed():
                if self.state is State.CREDIT and not self.donation_pending:
                    self._leave_credit("cancel")
            case VendFinished():
                self._on_vend_finished(event)
            case DoorChanged():
                self._on_door(event.is_open)
            case DeviceFault():
                self._on_fault(event)
            case DeviceNotice():
                self.ledger.record_event(f"{event.device}_{event.code}", event.detail)
            case Refill():
                self._on_refill(event)
            case Shutdown():
                # A vend ends within max_run_s: let it, so nothing is dispensed uncharged.
                self._stop_after_vend = self.state is State.VENDING
                self._running = self._stop_after_vend
            case Wake():
                pass
            case _:
                log.warning("unknown event %r ignored", event)

    def _on_coin(self, event: CoinAccepted) -> None:
        # The coin is in the cash box whatever the state: it is always credited.
        self.model.credit_cents = self.ledger.record_coin(
            event.value_cents, event.merged, event.cursor
        )
        log.info("coin %d c, credit %d c", event.value_cents, self.credit_cents)
        if self.state is State.IDLE:
            self.model.insert_coin()
        elif self.state is State.CREDIT:
            self._donate_at = None
            self._touch()
            self._show_state()

    def _on_select(self, slot_id: int) -> None:
        slot = self.slots.get(slot_id)
        if slot is None or self.state not in (State.IDLE, State.CREDIT):
            return
        if self.state is State.CREDIT:
            self._donate_at = None  # any selection: the shopper is still here
            self._touch()
        fields = {"product": slot.product, "price": slot.price_cents}
        if slot.quantity == 0:
            self._say("sold_out", **fields)
        elif not slot.sellable:
            self._say("unavailable", **fields)
        elif self.state is State.IDLE:
            self._say("price", **fields)
        elif self.credit_cents < slot.price_cents:
            self._say("missing", missing=slot.price_cents - self.credit_cents, **fields)
        else:
            self._vend = (self.ledger.start_vend(slot_id, slot.price_cents), slot_id)
            self._message = self._message_until = None
            self.model.select()
            self.hw.dispenser.vend(slot_id)

    def _on_vend_finished(self, event: VendFinished) -> None:
        if self._vend is None or self._vend[1] != event.slot:
            log.warning("vend result for slot %d with no vend running: ignored", event.slot)
            return
        vend_id, slot_id = self._vend
        self._vend = None
        product = self.slots[slot_id].product
        if event.outcome is VendOutcome.DELIVERED:
            self.model.credit_cents = self.ledger.complete_sale(vend_id, event.detail)
            log.info("sale: slot %d %s, credit left %d c", slot_id, product, self.credit_cents)
            self._say("thanks", product=product)
        else:
            self.ledger.fail_vend(
                vend_id, event.outcome, event.detail, SLOT_FAULTS.get(event.outcome)
            )
            self._say("vend_failed", credit=self.credit_cents)
        self._reload_slots()
        self.model.vend_done()
        if self._stop_after_vend:
            self._running = False

    def _on_door(self, is_open: bool) -> None:
        self.model.door_open = is_open
        self.ledger.record_event("door_opened" if is_open else "door_closed", actor="technician")
        if is_open and self.state in (State.IDLE, State.CREDIT, State.OUT_OF_SERVICE):
            self._donate_at = None
            self.model.open_door()
        elif not is_open and self.state is State.MAINTENANCE:
            # Closing the door ends a service visit: faults it repaired are cleared.
            self.ledger.clear_slot_faults("technician")
            self.model.faults.discard("internal_error")
            self.model.faults.discard("storage")
            self._reload_slots()
            self.model.close_door()

    def _on_fault(self, event: DeviceFault) -> None:
        kind = "fault" if event.active else "fault_cleared"
        self.ledger.record_event(kind, f"{event.device} {event.code}: {event.detail}")
        if event.active:
            self.model.faults.add(event.device)
            if self.state in (State.IDLE, State.CREDIT):
                self._donate_at = None
                self.model.fault()
        else:
            self.model.faults.discard(event.device)
            if self.state is State.OUT_OF_SERVICE:
                self.model.recover()

    def _on_refill(self, event: Refill) -> None:
        slot = self.slots.get(event.slot)
        if self.state is not State.MAINTENANCE or slot is None:
            why = "no such slot" if slot is None else f"door closed ({self.state})"
            self.ledger.record_event("refill_refused", why, event.slot, event.actor)
            return
        quantity = min(event.quantity, slot.capacity - slot.quantity)
        if quantity < event.quantity:
            detail = f"{event.quantity} asked, {quantity} fit (capacity {slot.capacity})"
            self.ledger.record_event("refill_capped", detail, event.slot, event.actor)
        if quantity > 0:
            self.ledger.refill(event.slot, quantity, event.actor)
            self._reload_slots()

    # --- credit policy -----------------------------------------------------------------------

    def _touch(self) -> None:
        self._inactive_at = self.clock.monotonic() + self.config.credit.inactivity_timeout_s

    def _leave_credit(self, why: str) -> None:
        """Inactivity or cancel: apply the leftover policy, announced first."""
        log.info("credit %d c left by %s: %s", self.credit_cents, why, self.config.credit.leftover)
        if self.config.credit.leftover == "donate":
            self._donate_at = self.clock.monotonic() + self.config.credit.donation_countdown_s
            self._message = self._message_until = None
            self._show_state()
        else:
            self._inactive_at = None
            self.ledger.record_event("credit_kept", f"{self.credit_cents} c after {why}")
            self._say("kept", credit=self.credit_cents)

    def _donate(self) -> None:
        self._donate_at = None
        amount = self.ledger.donate(self.config.credit.beneficiary)
        log.info("donation of %d c to %s", amount, self.config.credit.beneficiary)
        self.model.credit_cents = self.ledger.credit_cents()
        self._say("donated", beneficiary=self.config.credit.beneficiary)
        self.model.donate()

    # --- outputs -----------------------------------------------------------------------------

    def _reload_slots(self) -> None:
        configured = {slot.id for slot in self.config.slots}
        self.slots = {k: v for k, v in self.ledger.slots().items() if k in configured}
        self.model.sellable = any(s.sellable for s in self.slots.values())

    def _entered(self, state: State) -> None:
        log.info("state %s", state)
        self.hw.acceptor.set_accepting(state in ACCEPTING)
        for slot in self.slots.values():
            self.hw.panel.set_led(slot.slot, state in ACCEPTING and slot.sellable)
        if state is State.CREDIT:
            self._touch()
        else:
            self._inactive_at = self._donate_at = None
        self._show_state()

    def _say(self, key: str, **fields: Any) -> None:
        """A message over the state's screen for `display.message_s`."""
        self._message = text(self._lang, key, **fields)
        self._message_until = self.clock.monotonic() + self.config.display.message_s
        self.hw.display.show(*self._message)

    def _show_state(self) -> None:
        if self._message is not None:
            return
        self.hw.display.show(*self.screen())

    def screen(self) -> tuple[str, str]:
        lang, state = self._lang, self.state
        if state is State.CREDIT and self._donate_at is not None:
            seconds = max(0, math.ceil(self._donate_at - self.clock.monotonic()))
            return text(
                lang,
                "donating",
                credit=self.credit_cents,
                seconds=seconds,
                beneficiary=self.config.credit.beneficiary,
            )
        if state is State.CREDIT:
            return text(lang, "credit", credit=self.credit_cents)
        if state is State.IDLE:
            coins = " ".join(str(c) for c in self.config.kiosk.accepted_coins_cents)
            return text(lang, "idle", coins=coins)
        if state is State.VENDING and self._vend is not None:
            return text(lang, "vending", product=self.slots[self._vend[1]].product)
        if state is State.OUT_OF_SERVICE:
            code = min(self.model.faults) if self.model.faults else "sold_out"
            return text(lang, "out_of_service", reason=reason(lang, code))
        if state is State.MAINTENANCE:
            return text(lang, "maintenance")
        return text(lang, "wait")
