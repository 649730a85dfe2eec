"""When the kiosk must not sell: device faults (each one blocks selling until it clears, but the
advisory ones), the ledger refusing writes (coins inhibited at once, the pending events written
again every second until it takes them) and an unexpected error in the core (every safe action
tried on its own, then out of service until a technician mends it). The core's loop hands these
here; the state and the pending events stay the core's."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from drivers.base import DeviceFault, DeviceReady, best_effort
from kiosk.errors import LedgerError
from kiosk.ledger import Fault
from kiosk.machine import State
from kiosk.upkeep import INTERNAL

if TYPE_CHECKING:
    from kiosk.core import Controller

log = logging.getLogger(__name__)

STORAGE_RETRY_S = 1.0
RETRY = "storage_retry"
ACCEPTOR = "coin_acceptor"
STORAGE = ("kiosk", "storage")
# Devices whose faults do not stop the kiosk selling: coins are still counted and kept, whatever
# the city's link or the shopper's screen does.
ADVISORY = frozenset({"telemetry", "display"})


class Safety:
    def __init__(self, core: Controller) -> None:
        self.core = core
        self.storage_error: tuple[str, str] | None = None  # (since, what failed)

    def storage_failed(self, err: LedgerError) -> None:
        core = self.core
        now = core.clock.monotonic()
        core.deadlines.set(RETRY, now + STORAGE_RETRY_S)
        if self.storage_error is not None:
            return
        log.error("%s: coins inhibited until the ledger takes writes again", err)
        self.storage_error = (core.ledger.now_iso(), str(err))
        core.hw.acceptor.set_accepting(False)  # at once, whatever the state
        self.block(STORAGE)

    def retry_storage(self, now: float) -> None:
        core = self.core
        try:
            while core.pending:
                event = core.pending[0]
                try:
                    core.handle(event)
                except LedgerError:
                    raise
                except Exception:  # not storage: this one cannot be handled, the rest still can
                    core.pending.popleft()
                    core.deadlines.set(RETRY, now)
                    raise
                core.pending.popleft()
            if self.storage_error is not None:
                since, detail = self.storage_error
                core.ledger.record_outage(Fault(*STORAGE, since, detail), "writes succeed again")
        except LedgerError as err:
            self.storage_failed(err)
            return
        if self.storage_error is not None:
            log.info("the ledger takes writes again")
            self.storage_error = None
            self.unblock(STORAGE)

    def block(self, key: tuple[str, str]) -> None:
        core = self.core
        core.model.faults.add(key)
        if core.state in (State.IDLE, State.CREDIT):
            core.credit.stop()
            core.model.fault()
        else:
            core.outputs(core.state)  # LEDs and coins follow the new fault

    def unblock(self, key: tuple[str, str]) -> None:
        core = self.core
        core.model.faults.discard(key)
        if core.state is State.OUT_OF_SERVICE:
            core.model.recover()

    def on_fault(self, event: DeviceFault) -> None:
        core = self.core
        key = (event.device, event.code)
        if event.device in ADVISORY:  # recorded and reported; selling goes on
            if event.active:
                core.ledger.set_fault(Fault(*key, "", event.detail))
            else:
                core.ledger.clear_fault(*key, event.detail)
            return
        if event.active:
            core.ledger.set_fault(Fault(*key, "", event.detail))
            self.block(key)
        else:
            core.ledger.clear_fault(*key, event.detail)
            self.unblock(key)
        if core.state is State.STARTING and event.device == ACCEPTOR and event.active:
            core.model.ready()  # the acceptor cannot be set up: out of service, it retries

    def on_ready(self, event: DeviceReady) -> None:
        core = self.core
        log.info("%s ready: %s", event.device, event.detail)
        if event.device == ACCEPTOR and event.identity:
            core.ledger.set_identity(ACCEPTOR, event.identity)
            core.identity = dict(event.identity)
        for fault in core.ledger.faults():
            if fault.device == event.device and fault.code not in event.faults:
                core.ledger.clear_fault(fault.device, fault.code, "not present at start")
                self.unblock((fault.device, fault.code))
        if core.state is State.STARTING and event.device == ACCEPTOR:
            core.model.ready()

    def halt(self, err: Exception) -> None:
        """Unexpected error: every safe action tried on its own, then out of service."""
        core = self.core
        best_effort("motors off", core.hw.dispenser.stop_all)
        best_effort("coins inhibited", lambda: core.hw.acceptor.set_accepting(False))
        core.model.faults.add(INTERNAL)
        vend, core.vend = core.vend, None
        fault = Fault(*INTERNAL, "", str(err))
        try:
            if vend is not None:
                core.ledger.interrupt_vend(vend[0], "internal error during the vend", fault)
            else:
                core.ledger.set_fault(fault)
        except LedgerError:
            log.exception("cannot record the fault")
        core.desk.abort("the kiosk stopped selling on an internal error")
        best_effort("slots reloaded", core.reload_slots)
        core.model.halt()
