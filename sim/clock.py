"""Simulated time: a clock the kiosk's core waits on, and a scheduler for the world's doings.

The core calls `wait(queue, deadline)`. Instead of sleeping, the clock jumps to the next scheduled
world action (a pulse edge, a cam switch, a shopper's move) or to the core's deadline, whichever
comes first, so hours of kiosk life run in seconds. A `horizon` caps how far it may run ahead:
the interactive demo moves it with the wall clock. Device workers (a serial poller, a motor's
on-time guard) are scheduled here too, as background entries: they run at their deadlines in
simulated time, in order with the world, so a run is the same for the same seed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.clock import Emit, Task, fail_safe

log = logging.getLogger(__name__)

EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@dataclass(order=True)
class _Entry:
    at: float
    seq: int
    action: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    background: bool = field(default=False, compare=False)  # a device worker, not the world


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
            if nxt <= limit and nxt != math.inf:  # with nothing scheduled, nothing to run
                self.run_next()
                continue
            self.exhausted = nxt == math.inf and deadline is None
            if not self.exhausted:
                self.now = max(self.now, limit)
            return None

    def start_worker(self, name: str, task: Task, emit: Emit) -> SimWorker:
        return SimWorker(self, task, emit)

    # --- the world's scheduler ------------------------------------------------------------

    def call_at(
        self, at: float, action: Callable[[], object], *, background: bool = False
    ) -> Timer:
        entry = _Entry(max(at, self.now), next(self._seq), action, background=background)
        heapq.heappush(self._heap, entry)
        self.exhausted = False
        return Timer(entry)

    def call_later(self, delay_s: float, action: Callable[[], object]) -> Timer:
        return self.call_at(self.now + delay_s, action)

    def world_pending(self) -> bool:
        """Something other than a device worker is scheduled: the world is still moving."""
        return any(not e.cancelled and not e.background for e in self._heap)

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


class SimWorker:
    """A device worker on simulated time: one background entry at the task's next deadline."""

    def __init__(self, clock: SimClock, task: Task, emit: Emit) -> None:
        self._clock = clock
        self._task = task
        self._emit = emit
        self._timer: Timer | None = None
        self._stopped = False
        self.wake()

    def wake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = None if self._stopped else self._task.next_deadline()
        if deadline is not None:
            self._timer = self._clock.call_at(deadline, self._run, background=True)

    def _run(self) -> None:
        self._timer = None
        try:
            events = self._task.service(self._clock.now)
        except Exception as err:  # as on a thread: the device goes to its safe state
            log.exception("simulated worker failed; outputs put in their safe state")
            events = fail_safe("simulated", self._task, err)
        for event in events:
            self._emit(event)
        self.wake()

    def stop(self) -> None:
        self._stopped = True
        self.wake()
