"""What the shopper reads: the state's screen, and messages shown over it for a while.

The state's screen is drawn from what the core tells it (state, credit, countdown, product,
fault). The idle screen turns its pages every few seconds: the welcome with the coins taken,
each product with its price, and the coins this kiosk has saved from circulation. A message (a
price, "thank you", "sold out") covers the state's screen for `display.message_s`, then the
state's screen comes back. Texts are in kiosk.texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.base import Display
from kiosk.deadlines import Deadlines
from kiosk.machine import State
from kiosk.texts import count, reason, text

MESSAGE = "message"
IDLE_PAGE = "idle_page"
IDLE_PAGE_S = 4.0


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
    offers: tuple[tuple[str, int], ...] = ()  # (product, price) of what can be bought now
    coins_saved: int = 0  # coins ever taken out of circulation here
    door_open: bool = True


class Screen:
    def __init__(
        self, display: Display, language: str, message_s: float, deadlines: Deadlines
    ) -> None:
        self._display = display
        self._lang = language
        self._message_s = message_s
        self._deadlines = deadlines
        self._message: tuple[str, str] | None = None
        self._page = 0  # the idle screen's page: welcome, each offer, the coins saved

    def say(self, now: float, key: str, **fields: Any) -> None:
        """A message over the state's screen for `display.message_s`."""
        self._message = text(self._lang, key, **fields)
        self._deadlines.set(MESSAGE, now + self._message_s)
        self._deadlines.clear(IDLE_PAGE)
        self._display.show(*self._message)

    def drop_message(self) -> None:
        self._message = None
        self._deadlines.clear(MESSAGE)

    def expire(self, now: float) -> bool:
        """True when a message just ended or the idle screen turns a page (the state's screen
        must be drawn again)."""
        if self._deadlines.take(MESSAGE, now):
            self._message = None
            return True
        if self._deadlines.take(IDLE_PAGE, now):
            self._page += 1
            self._deadlines.set(IDLE_PAGE, now + IDLE_PAGE_S, background=True)
            return True
        return False

    def show(self, view: View, now: float = 0.0) -> None:
        if view.state is not State.IDLE:
            self._page = 0
            self._deadlines.clear(IDLE_PAGE)
        elif self._message is not None:
            self._deadlines.clear(IDLE_PAGE)  # the pages turn again once the message is gone
        elif not self._deadlines.has(IDLE_PAGE):
            self._deadlines.set(IDLE_PAGE, now + IDLE_PAGE_S, background=True)
        if self._message is None:
            self._display.show(*self.state_lines(view))

    def idle_pages(self, view: View) -> list[tuple[str, str]]:
        lang = self._lang
        pages = [text(lang, "idle", coins=" ".join(str(c) for c in view.coins_cents))]
        pages += [text(lang, "offer", product=p, price=c) for p, c in view.offers]
        if view.coins_saved == 1:
            pages.append(text(lang, "saved_one"))
        elif view.coins_saved > 1:
            pages.append(text(lang, "saved", count=count(lang, view.coins_saved)))
        return pages

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
            pages = self.idle_pages(view)
            return pages[self._page % len(pages)]
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
            return text(lang, "maintenance" if view.door_open else "service")
        if state is State.STARTING:
            return text(lang, "starting")
        return text(lang, "wait")
