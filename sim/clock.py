"""Simulated time: a clock the kiosk's core waits on, and a scheduler for the world's doings.

The core calls `wait(queue, deadline)`. Instead of sleeping, the clock jumps to the next scheduled
world action (a pulse edge, a cam switch, a shopper's move) or to the core's deadline, whichever
comes first, so hours of kiosk life run in seconds. A `horizon` caps how far it may run ahead:
the interactive demo moves it with the wall clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@dataclass(order=True)
class _Entry:
    at: float
    seq: int
    action: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class Timer:
    """A scheduled action that can be called off."""

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry

    def cancel(self) -> None:
        self._entry.cancelled = True


class SimClock:
    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = 0.0
        self.horizon = math.inf
        self.exhausted = False  # set when nothing is scheduled and no deadline is pending
        self._start = start
        self._heap: list[_Entry] = []
        self._seq = itertools.count()

    # --- the Clock protocol ---------------------------------------------------------------

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self._start + timedelta(seconds=self.now)

    def wait(self, events: queue.Queue[Any], deadline: float | None) -> Any | None:
        while True:
            try:
                return events.get_nowait()
            except queue.Empty:
                pass
            nxt = self.next_at()
            limit = min(math.inf if deadline is None else deadline, self.horizon)
            if nxt <= limit:
                self.run_next()
                continue
            self.exhausted = nxt == math.inf and deadline is None
            if not self.exhausted:
                self.now = max(self.now, limit)
            return None

    # --- the world's scheduler ------------------------------------------------------------

    def call_at(self, at: float, action: Callable[[], object]) -> Timer:
        entry = _Entry(max(at, self.now), next(self._seq), action)
        heapq.heappush(self._heap, entry)
        self.exhausted = False
        return Timer(entry)

    def call_later(self, delay_s: float, action: Callable[[], object]) -> Timer:
        return self.call_at(self.now + delay_s, action)

    def next_at(self) -> float:
        """When the next world action is due (inf if none)."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].at if self._heap else math.inf

    def run_next(self) -> None:
        """Carry out the next scheduled world action (the core is not run)."""
        entry = heapq.heappop(self._heap)
        self.now = max(self.now, entry.at)
        entry.action()
