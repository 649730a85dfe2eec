"""The core: one thread, one event queue, the state machine and the ledger's only writer.

Devices (on workers of their own), and later the control socket and MQTT, put events on the
queue. The loop waits for the next event or the nearest of its own deadlines (messages, credit
timers, a storage retry), handles it, and drives the outputs for the state it is in; it never
waits on a device. An event that must be recorded (a coin, a vend's outcome, a fault) stays
pending until its ledger write commits: on a write failure coins are inhibited at once and the
pending events are written again, in order, until storage answers. Any other unexpected error
stops selling safely (coins inhibited, motors off, out of service) until a technician closes the
door again. Faults, storage and halts are kiosk/safety.py's; what the screen, telemetry and
systemd are told is kiosk/outward.py's.
"""

from __future__ import annotations

import collections
import logging
import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, assert_never

from drivers.base import (
    CancelPressed,
    CoinAccepted,
    CoinRejected,
    CursorAdvanced,
    DeviceError,
    DeviceFault,
    DeviceNotice,
    DeviceReady,
    DoorChanged,
    SelectPressed,
    VendFinished,
    VendOutcome,
)
from drivers.clock import Clock
from kiosk import figures
from kiosk.config import Config
from kiosk.credit import CreditTimers
from kiosk.deadlines import Deadlines
from kiosk.errors import LedgerError
from kiosk.events import DURABLE, Command, CoreEvent, Refill, Shutdown
from kiosk.hardware import Hardware
from kiosk.ledger import Actor, Ledger, SlotState
from kiosk.machine import ACCEPTING, KioskModel, State, build
from kiosk.outward import KEEPALIVE, Outward
from kiosk.safety import ACCEPTOR, ADVISORY, RETRY, Safety
from kiosk.screen import Screen
from kiosk.service import Desk

if TYPE_CHECKING:
    from kiosk.notify import Notifier
    from kiosk.telemetry import Telemetry

log = logging.getLogger(__name__)

PRUNE = "outbox_prune"
PRUNE_EVERY_S = 24 * 3600.0
PANEL = Actor("technician", "panel")  # at the kiosk itself: the door, products put in by hand


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
        self.deadlines = Deadlines()
        self.screen = Screen(
            hardware.display, config.kiosk.language, config.display.message_s, self.deadlines
        )
        self.credit = CreditTimers(
            self.deadlines,
            config.credit.inactivity_timeout_s,
            config.credit.donation_countdown_s,
        )
        self.vend: tuple[int, int] | None = None  # (vend id, slot)
        self.pending: collections.deque[CoreEvent] = collections.deque()
        self._running = False
        self._stop_after_vend = False
        self.desk = Desk(self)
        self._door_closed_in_test = False
        self.started_at = clock.monotonic()
        self.identity: dict[str, str] = {}  # the coin acceptor's, as it last reported
        self.coins_saved = 0  # coins ever taken here: the idle screen says so
        self.safety = Safety(self)  # faults, the ledger refusing writes, unexpected errors
        self.outward = Outward(self)  # the screen, telemetry and systemd, told of each change

    @property
    def state(self) -> State:
        return State(self.model.state)

    @property
    def storage_error(self) -> tuple[str, str] | None:
        """(since, what failed) while the ledger refuses writes."""
        return self.safety.storage_error

    @property
    def running(self) -> bool:
        return self._running

    @property
    def credit_cents(self) -> int:
        return self.model.credit_cents

    @property
    def storage_failing(self) -> bool:
        """Writes are waiting for the ledger to take them again."""
        return self.storage_error is not None or bool(self.pending)

    @property
    def donation_pending(self) -> bool:
        return self.credit.counting_down

    @property
    def settled(self) -> bool:
        """Nothing under way: no vend, message, timer, pending write or coin being read."""
        return (
            self.vend is None
            and self.deadlines.empty
            and not self.credit.counting_down
            and not self.pending
            and not self.hw.acceptor.reading
            and not self.hw.dispenser.busy
            and not self.desk.testing
        )

    # --- start-up ----------------------------------------------------------------------------

    def start(self) -> None:
        """The `starting` state's work: ledger checked, vends resolved, faults restored, devices
        started. The kiosk is ready once the coin acceptor reports in (ready or faulty)."""
        self._show_state()
        self.ledger.boot(self.config.kiosk.id)
        self._prune(self.clock.monotonic())
        self.ledger.sync_slots(self.config.slots)
        for vend in self.ledger.resolve_interrupted_vends():
            log.warning("vend %d of slot %d was interrupted: not charged", vend.vend_id, vend.slot)
        for fault in self.ledger.faults():
            if not fault.device.startswith("slot_") and fault.device not in ADVISORY:
                self.model.faults.add((fault.device, fault.code))
        self.model.credit_cents = self.ledger.credit_cents()
        self.model.door_open = self.hw.panel.door_is_open
        self.model.service_mode = self.ledger.service_mode()
        self.identity = self.ledger.identity(ACCEPTOR)
        self.coins_saved = figures.coins_saved(self.ledger.db)
        self.reload_slots()
        self.apply_coins()
        self.hw.acceptor.resume_from(self.ledger.acceptor_cursor())
        self.hw.start()

    def apply_coins(self) -> None:
        """The acceptor takes the coins the ledger says are on (a technician's choice stays
        across restarts)."""
        off = self.ledger.inhibited_coins()
        acceptor = self.hw.acceptor
        try:
            acceptor.set_denominations(frozenset(acceptor.coins_cents) - off)
        except (DeviceError, ValueError) as err:  # a profile changed to an acceptor without
            log.warning("coins %s stay on: %s", sorted(off), err)  # per-coin inhibits
        self._show_state()

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
        event = self.clock.wait(self.events, self.deadlines_next())
        try:
            if event is not None:
                self._dispatch(event)
            self._service(self.clock.monotonic())
        except LedgerError as err:  # a timer's write (a donation): retried when storage is back
            self.safety.storage_failed(err)
        except Exception as err:  # the top of the core thread: stop selling, keep the books
            log.exception("core error, going out of service")
            self.safety.halt(err)

    def deadlines_next(self) -> float | None:
        candidates = [self.deadlines.next(), self.credit.next_tick(self.clock.monotonic())]
        return min((c for c in candidates if c is not None), default=None)

    def _dispatch(self, event: CoreEvent) -> None:
        durable = isinstance(event, DURABLE)
        if self.pending and durable:
            self.pending.append(event)  # after those still waiting: the books keep the order
            return
        try:
            self.handle(event)
        except LedgerError as err:
            if durable:
                self.pending.append(event)
            self.safety.storage_failed(err)

    def _service(self, now: float) -> None:
        if self.deadlines.take(RETRY, now):
            self.safety.retry_storage(now)
        if self.deadlines.take(PRUNE, now):
            self._prune(now)
        if self.deadlines.take(KEEPALIVE, now):
            self.outward.keepalive(now)
        if self.screen.expire(now):
            self._show_state()
        if self.credit.counting_down:
            if not self.credit.donation_due(now):
                self._show_state()
            elif not self.hw.acceptor.reading and self.events.empty() and not self.pending:
                self._donate()  # not while a coin is being read, or read but not yet counted
        if self.credit.inactive(now):
            self._leave_credit("inactivity")

    def _prune(self, now: float) -> None:
        """Outbox rows sent long ago go, at start and once a day."""
        self.ledger.prune_outbox(self.config.mqtt.outbox_keep_days)
        self.deadlines.set(PRUNE, now + PRUNE_EVERY_S, background=True)

    def attach(self, telemetry: Telemetry | None) -> None:
        self.outward.attach(telemetry)

    def watch(self, notifier: Notifier) -> None:
        self.outward.watch(notifier)

    @property
    def telemetry(self) -> Telemetry | None:
        return self.outward.telemetry

    @telemetry.setter
    def telemetry(self, telemetry: Telemetry | None) -> None:
        self.outward.telemetry = telemetry

    # --- events ------------------------------------------------------------------------------

    def handle(self, event: CoreEvent) -> None:
        match event:
            case CoinAccepted():
                self._on_coin(event)
            case CoinRejected():
                self.ledger.record_event(
                    "coin_rejected",
                    event.detail,
                    device=ACCEPTOR,
                    code=event.reason,
                    cursor=event.cursor,
                )
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
                self.safety.on_fault(event)
            case DeviceReady():
                self.safety.on_ready(event)
            case DeviceNotice():
                self.ledger.record_event(
                    "notice",
                    event.detail,
                    device=event.device,
                    code=event.code,
                    cursor=event.cursor,
                )
            case CursorAdvanced():
                self.ledger.advance_cursor(event.cursor)
            case Refill():
                self._on_refill(event)
            case Command():
                self.desk.handle(event)
            case Shutdown():
                self._shutdown()
            case _:
                assert_never(event)

    def _shutdown(self) -> None:
        if self.pending:  # storage is failing: waiting for it could take for ever
            log.error("stopping with %d event(s) not written to the ledger", len(self.pending))
            self._running = False
            return
        # A vend ends within max_run_s: let it, so nothing is dispensed uncharged.
        self._stop_after_vend = self.state is State.VENDING
        self._running = self._stop_after_vend

    def _on_coin(self, event: CoinAccepted) -> None:
        # The coin is in the cash box whatever the state: it is always credited.
        self.model.credit_cents = self.ledger.record_coin(
            event.value_cents, event.merged, event.cursor
        )
        self.coins_saved += 1
        log.info("coin %d c, credit %d c", event.value_cents, self.credit_cents)
        if self.state is State.IDLE:
            self.model.insert_coin()
        elif self.state is State.CREDIT:
            self.credit.cancel_countdown()
            self.credit.touch(self.clock.monotonic())
            self._show_state()

    def _on_select(self, slot_id: int) -> None:
        slot = self.slots.get(slot_id)
        if slot is None or self.state not in (State.IDLE, State.CREDIT):
            return
        now = self.clock.monotonic()
        if self.state is State.CREDIT:
            self.credit.cancel_countdown()  # any selection: the shopper is still here
            self.credit.touch(now)
        fields = {"product": slot.product, "price": slot.price_cents}
        if slot.quantity == 0:
            self.screen.say(now, "sold_out", **fields)
        elif not slot.sellable:
            self.screen.say(now, "unavailable", **fields)
        elif self.state is State.IDLE:
            self.screen.say(now, "price", **fields)
        elif self.credit_cents < slot.price_cents:
            self.screen.say(now, "missing", missing=slot.price_cents - self.credit_cents, **fields)
        else:
            self.vend = (self.ledger.start_vend(slot_id, slot.price_cents), slot_id)
            self.screen.drop_message()
            self.model.select()
            self.hw.dispenser.vend(slot_id)

    def _on_vend_finished(self, event: VendFinished) -> None:
        if self.vend is None and self.desk.test_vend_finished(
            event.slot, event.outcome, event.detail, SLOT_FAULTS.get(event.outcome)
        ):
            return
        if self.vend is None or self.vend[1] != event.slot:
            log.warning("vend result for slot %d with no vend running: ignored", event.slot)
            return
        vend_id, slot_id = self.vend
        product = self.slots[slot_id].product
        now = self.clock.monotonic()
        if event.outcome is VendOutcome.DELIVERED:
            self.model.credit_cents = self.ledger.complete_sale(vend_id, event.detail)
            log.info("sale: slot %d %s, credit left %d c", slot_id, product, self.credit_cents)
            self.screen.say(now, "thanks", product=product)
        else:
            fault = SLOT_FAULTS.get(event.outcome)
            self.ledger.fail_vend(vend_id, event.outcome, event.detail, fault)
            self.screen.say(now, "vend_failed", credit=self.credit_cents)
        self.vend = None
        self.reload_slots()
        self.model.vend_done()
        if self._stop_after_vend:
            self._running = False

    def _on_door(self, is_open: bool) -> None:
        if is_open:
            self.ledger.record_event("door_opened", by=PANEL, device="door")
            self.model.door_open = True
            if self.state in (State.IDLE, State.CREDIT, State.OUT_OF_SERVICE):
                self.credit.stop()
                self.model.begin_service()
            return
        if self.model.service_mode:  # the visit goes on until `kiosk service off`
            self.ledger.record_event("door_closed", by=PANEL, device="door")
            self.model.door_open = False
            return
        if self.desk.testing:  # the visit ends with the test vend, not with a motor running
            self._door_closed_in_test = True
            return
        self._end_visit()

    def after_test_vend(self) -> None:
        """The test vend ended: a door closed meanwhile ends the visit now."""
        self.reload_slots()
        if self._door_closed_in_test:
            self._door_closed_in_test = False
            self._end_visit()

    def _end_visit(self) -> None:
        # An error during the visit halts the kiosk with the door still open: out of service.
        visit = self.state is State.MAINTENANCE or (
            self.state is State.OUT_OF_SERVICE and self.model.door_open
        )
        if not visit:
            self.ledger.record_event("door_closed", by=PANEL, device="door")
            self.model.door_open = False
            return
        # Closing the door ends a service visit: the faults it repaired are cleared with it.
        cleared = self.ledger.close_door(PANEL)
        self.model.door_open = False
        for fault in cleared:
            self.model.faults.discard((fault.device, fault.code))
        self.reload_slots()
        if self.state is State.MAINTENANCE:
            self.model.end_service()
        else:
            self.model.recover()

    def _on_refill(self, event: Refill) -> None:
        slot = self.slots.get(event.slot)
        if self.state is not State.MAINTENANCE or slot is None:
            why = "no such slot" if slot is None else f"door closed ({self.state})"
            self.ledger.record_event("refill_refused", why, event.slot, PANEL)
            return
        if self.ledger.refill(event.slot, event.quantity, PANEL, capped=True):
            self.reload_slots()

    # --- credit policy -----------------------------------------------------------------------

    def _leave_credit(self, why: str) -> None:
        """Inactivity or cancel: apply the leftover policy, announced first."""
        log.info("credit %d c left by %s: %s", self.credit_cents, why, self.config.credit.leftover)
        now = self.clock.monotonic()
        if self.config.credit.leftover == "donate":
            self.credit.start_countdown(now)
            self.screen.drop_message()
            self._show_state()
        else:
            self.credit.stop()
            self.ledger.record_event("credit_kept", f"{self.credit_cents} c after {why}")
            self.screen.say(now, "kept", credit=self.credit_cents)

    def _donate(self) -> None:
        amount = self.ledger.donate(self.config.credit.beneficiary)
        self.credit.cancel_countdown()
        log.info("donation of %d c to %s", amount, self.config.credit.beneficiary)
        self.model.credit_cents = self.ledger.credit_cents()
        self.screen.say(
            self.clock.monotonic(), "donated", beneficiary=self.config.credit.beneficiary
        )
        self.model.donate()

    # --- outputs -----------------------------------------------------------------------------

    def resettle(self) -> None:
        """After a change from outside (a slot, a price, a fault cleared): the state, LEDs and
        coins follow."""
        self.reload_slots()
        if self.state in (State.IDLE, State.CREDIT) and self.model.is_blocked():
            self.credit.stop()
            self.model.fault()
        elif self.state is State.OUT_OF_SERVICE and not self.model.is_blocked():
            self.model.recover()
        else:
            self.outputs(self.state)
            self._show_state()

    def reload_slots(self) -> None:
        configured = {slot.id for slot in self.config.slots}
        self.slots = {k: v for k, v in self.ledger.slots().items() if k in configured}
        self.model.sellable = any(s.sellable for s in self.slots.values())

    def _entered(self, state: State) -> None:
        log.info("state %s", state)
        self.outputs(state)
        if state is State.CREDIT:
            self.credit.touch(self.clock.monotonic())
        elif state is not State.STARTING:
            self.credit.stop()
        self._show_state()

    def outputs(self, state: State) -> None:
        stopping = self._stop_after_vend  # the vend that ends now is the last
        accepting = state in ACCEPTING and self.storage_error is None and not stopping
        self.hw.acceptor.set_accepting(accepting)
        for slot in self.slots.values():
            self.hw.panel.set_led(slot.slot, accepting and slot.sellable)

    def _show_state(self) -> None:
        self.outward.show()

    @property
    def vending_slot(self) -> SlotState | None:
        return None if self.vend is None else self.slots.get(self.vend[1])
