"""What the shopper reads: the state's screen, and messages shown over it for a while.

The state's screen is drawn from what the core tells it (state, credit, countdown, product,
fault); a message (a price, "thank you", "sold out") covers it for `display.message_s`, then the
state's screen comes back. Texts are in kiosk.texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.base import Display
from kiosk.deadlines import Deadlines
from kiosk.machine import State
from kiosk.texts import reason, text

MESSAGE = "message"


@dataclass(frozen=True)
class View:
    """What the state's screen depends on."""

    state: State
    credit_cents: int
    donation_seconds: int | None  # a donation countdown is running
    beneficiary: str
    product: str | None  # the product being vended
    fault: tuple[str, str] | None  # the fault the out-of-service screen names
    coins_cents: tuple[int, ...]


class Screen:
    def __init__(
        self, display: Display, language: str, message_s: float, deadlines: Deadlines
    ) -> None:
        self._display = display
        self._lang = language
        self._message_s = message_s
        self._deadlines = deadlines
        self._message: tuple[str, str] | None = None

    def say(self, now: float, key: str, **fields: Any) -> None:
        """A message over the state's screen for `display.message_s`."""
        self._message = text(self._lang, key, **fields)
        self._deadlines.set(MESSAGE, now + self._message_s)
        self._display.show(*self._message)

    def drop_message(self) -> None:
        self._message = None
        self._deadlines.clear(MESSAGE)

    def expire(self, now: float) -> bool:
        """True when a message just ended (the state's screen must be drawn again)."""
        if self._deadlines.take(MESSAGE, now):
            self._message = None
            return True
        return False

    def show(self, view: View) -> None:
        if self._message is None:
            self._display.show(*self.state_lines(view))

    def state_lines(self, view: View) -> tuple[str, str]:
        lang, state = self._lang, view.state
        if state is State.CREDIT and view.donation_seconds is not None:
            return text(
                lang,
                "donating",
                credit=view.credit_cents,
                seconds=view.donation_seconds,
                beneficiary=view.beneficiary,
            )
        if state is State.CREDIT:
            return text(lang, "credit", credit=view.credit_cents)
        if state is State.IDLE:
            return text(lang, "idle", coins=" ".join(str(c) for c in view.coins_cents))
        if state is State.VENDING and view.product is not None:
            return text(lang, "vending", product=view.product)
        if state is State.OUT_OF_SERVICE:
            if view.fault is None:
                return text(lang, "out_of_service", reason=reason(lang, "sold_out"))
            device, code = view.fault
            return text(
                lang, "out_of_service", reason=reason(lang, code if device == "kiosk" else device)
            )
        if state is State.MAINTENANCE:
            return text(lang, "maintenance")
        if state is State.STARTING:
            return text(lang, "starting")
        return text(lang, "wait")
