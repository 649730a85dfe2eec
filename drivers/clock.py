"""Time, and the workers that run devices beside the core.

The core and every device share one injected clock: monotonic seconds for control logic, UTC for
records, the core's wait for its next event, and `start_worker`, which runs a device's deadlines
apart from the core. On the system clock a worker is a thread of its own, so a motor's maximum
on-time or a serial poll never waits for the core loop (nor the core for them); the simulator's
clock runs the same worker on simulated time, deterministically.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]
STOP_WAIT_S = 10.0  # a worker finishes what it is doing (a ccTalk start-up, at worst)
RETRY_AFTER_ERROR_S = 1.0


class Task(Protocol):
    """What a worker runs: deadlines, and the work due at them."""

    def next_deadline(self) -> float | None: ...

    def service(self, now: float) -> list[Any]:
        """Act on every deadline at or before `now`; return the events it produced."""
        ...

    def safe_state(self, error: Exception) -> list[Any]:
        """`service` raised `error`: the task's outputs in their safe state (motors off, the
        acceptor inhibited), as far as the failing device allows; returns events reporting it."""
        ...


class Worker(Protocol):
    def wake(self) -> None:
        """The task's deadlines changed (from any thread): look at them again."""
        ...

    def stop(self) -> None:
        """No more service; returns once the worker is idle. Idempotent."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> datetime: ...

    def wait(self, events: queue.Queue[Any], deadline: float | None) -> Any | None:
        """Return the next event, or None once `deadline` (monotonic) has passed."""
        ...

    def start_worker(self, name: str, task: Task, emit: Emit) -> Worker:
        """Run `task` at its deadlines apart from the core; its events go to `emit`."""
        ...


class SystemClock:
    """The machine's own clocks; workers are threads."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, events: queue.Queue[Any], deadline: float | None) -> Any | None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return events.get(timeout=timeout)
        except queue.Empty:
            return None

    def start_worker(self, name: str, task: Task, emit: Emit) -> Worker:
        return ThreadWorker(name, task, emit)


class ThreadWorker:
    """A daemon thread that sleeps until the task's next deadline or a wake-up."""

    def __init__(self, name: str, task: Task, emit: Emit) -> None:
        self.name = name
        self._task = task
        self._emit = emit
        self._woken = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def stop(self) -> None:
        self._stopping = True
        self._woken.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                log.error("worker %s did not stop within %g s", self.name, STOP_WAIT_S)

    def _run(self) -> None:
        while not self._stopping:
            try:
                deadline = self._task.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._woken.wait(timeout)
                self._woken.clear()  # a wake-up after this is seen: the deadline is read again
                if self._stopping:
                    return
                for event in self._task.service(time.monotonic()):
                    self._emit(event)
            except Exception as err:  # the top of the worker's thread: safe state, carry on
                log.exception(
                    "worker %s failed; its outputs are put in their safe state", self.name
                )
                self._fail_safe(err)
                self._woken.wait(RETRY_AFTER_ERROR_S)

    def _fail_safe(self, error: Exception) -> None:
        for event in fail_safe(self.name, self._task, error):
            self._emit(event)


def fail_safe(name: str, task: Task, error: Exception) -> list[Any]:
    """The events of a task's safe state after `error`; never raises (the top of a worker)."""
    try:
        return task.safe_state(error)
    except Exception:
        log.exception("worker %s: the safe state failed too", name)
        return []
