"""What the core tells the world outside it, after each change of state: the screen's view, the
city's telemetry (never waited on) and systemd's watchdog (a keep-alive from the core's own loop,
only while it is healthy). The core owns the state; this only reads it (`core`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.base import CoinAccepted
from kiosk.screen import View

if TYPE_CHECKING:
    from kiosk.core import Controller
    from kiosk.notify import Notifier
    from kiosk.telemetry import Telemetry

KEEPALIVE = "watchdog"  # the core's deadline for the next keep-alive


class Outward:
    def __init__(self, core: Controller) -> None:
        self.core = core
        self.telemetry: Telemetry | None = None  # told of each change of state
        self.notifier: Notifier | None = None

    def attach(self, telemetry: Telemetry | None) -> None:
        """Telemetry from now on (or none), told the state at once."""
        self.telemetry = telemetry
        self.show()

    def watch(self, notifier: Notifier) -> None:
        """systemd's watchdog kept alive from the core's loop from now on (when it has one)."""
        self.notifier = notifier
        if notifier.keepalive_s is not None:
            self.core.deadlines.set(KEEPALIVE, self.core.clock.monotonic(), background=True)

    def keepalive(self, now: float) -> None:
        """A keep-alive only while healthy: the loop turned (it is this call, on time or late)
        and the ledger takes writes; else the status says why, and systemd restarts the
        daemon once the watchdog's time is up. A restart might mend the storage, but not at
        the price of coins only this process holds: while the ledger refuses a coin, the loop
        that keeps retrying it is kept alive."""
        core, notifier = self.core, self.notifier
        assert notifier is not None and notifier.keepalive_s is not None
        core.deadlines.set(KEEPALIVE, now + notifier.keepalive_s, background=True)
        if core.storage_error is not None:
            since, what = core.storage_error
            refused = f"the ledger refuses writes since {since} ({what})"
            held = [e.value_cents for e in core.pending if isinstance(e, CoinAccepted)]
            if held:
                coins = f"{len(held)} coin" + ("s" if len(held) > 1 else "")
                notifier.alive(f"unhealthy: {refused}; holding {coins}, {sum(held)} c")
            else:
                notifier.status(f"unhealthy: {refused}")
            return
        faults = ", ".join(f"{d}:{c}" for d, c in sorted(core.model.faults)) or "none"
        notifier.alive(f"{core.state}, {core.credit_cents} c of credit, faults: {faults}")

    def show(self) -> None:
        core = self.core
        now = core.clock.monotonic()
        core.screen.show(self.view(), now)
        if self.telemetry is not None:
            self.telemetry.state_changed(
                {
                    "boot_id": core.ledger.boot_id,
                    "state": str(core.state),
                    "credit_cents": core.credit_cents,
                    "service_mode": core.model.service_mode,
                    "uptime_s": round(now - core.started_at, 1),
                }
            )

    def view(self) -> View:
        core = self.core
        vending = core.vending_slot
        return View(
            state=core.state,
            credit_cents=core.credit_cents,
            donation_seconds=core.credit.seconds_left(core.clock.monotonic()),
            beneficiary=core.config.credit.beneficiary,
            product=None if vending is None else vending.product,
            fault=min(core.model.faults) if core.model.faults else None,
            coins_cents=tuple(sorted(core.hw.acceptor.denominations)),
            offers=tuple((s.product, s.price_cents) for s in core.slots.values() if s.sellable),
            coins_saved=core.coins_saved,
            door_open=core.model.door_open,
        )
