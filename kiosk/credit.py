"""The credit timers: the inactivity deadline while a shopper has credit, and the donation
countdown announced on the display before a leftover credit is given away (a new coin or a
selection interrupts it). The inactivity deadline lives in the core's registry; the countdown
keeps its own end, which may be held past (while a coin is read) and is woken by its ticks."""

from __future__ import annotations

import math

from kiosk.deadlines import Deadlines

INACTIVE = "inactive"
HOLD_S = 0.05  # a donation due while a coin is being read waits this long, then looks again


class CreditTimers:
    def __init__(self, deadlines: Deadlines, inactivity_s: float, countdown_s: float) -> None:
        self._deadlines = deadlines
        self._inactivity_s = inactivity_s
        self._countdown_s = countdown_s
        self._donate_at: float | None = None

    def touch(self, now: float) -> None:
        """The shopper did something: the inactivity deadline starts again."""
        self._deadlines.set(INACTIVE, now + self._inactivity_s)

    def stop(self) -> None:
        self._deadlines.clear(INACTIVE)
        self._donate_at = None

    def start_countdown(self, now: float) -> None:
        self._deadlines.clear(INACTIVE)
        self._donate_at = now + self._countdown_s

    def cancel_countdown(self) -> None:
        self._donate_at = None

    @property
    def counting_down(self) -> bool:
        return self._donate_at is not None

    def seconds_left(self, now: float) -> int | None:
        at = self._donate_at
        return None if at is None else max(0, math.ceil(at - now))

    def next_tick(self, now: float) -> float | None:
        """The countdown redraws each second and ends at its deadline."""
        at = self._donate_at
        if at is None:
            return None
        remaining = at - now
        if remaining <= 0:
            return now + HOLD_S  # held while a coin is read or waits to be counted
        return at - max(0, int(remaining - 1e-9))

    def inactive(self, now: float) -> bool:
        return self._deadlines.take(INACTIVE, now)

    def donation_due(self, now: float) -> bool:
        return self._donate_at is not None and now >= self._donate_at
