"""A simulated kiosk on wall-clock time, run as a daemon is: it holds its ledger's lock and
answers on its control socket, so the technician's `kiosk` commands reach it exactly as they
reach `kiosk run`. The interactive demo serves it this way; the CLI tests run it in a thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiosk.config import Config
from kiosk.control import ControlServer, reply_timeout_s
from kiosk.lock import LedgerLock
from sim.rig import SimKiosk

STEP_S = 0.02  # how often simulated time catches up with the wall clock


@contextlib.contextmanager
def served(rig: SimKiosk) -> Iterator[ControlServer]:
    """The rig's control socket, open while the block runs (its ledger's lock held): the
    profile's, else beside the rig's ledger (which may be a demo's temporary one)."""
    with LedgerLock(rig.db_path):
        path = rig.config.control.socket or f"{rig.db_path}.sock"
        server = ControlServer(path, rig.events.put, reply_timeout_s(rig.config.dispenser))
        server.start()
        try:
            yield server
        finally:
            server.close()


def catch_up(rig: SimKiosk, started: float) -> None:
    """Run the rig until its simulated time reaches the wall clock's (from `started`)."""
    rig.run_for(max(0.0, time.monotonic() - started - rig.clock.now))


class LiveKiosk:
    """A SimKiosk in a thread of its own (which opens its ledger: SQLite connections stay on the
    thread that made them), with its control socket. `do(fn)` runs fn(rig) on that thread
    between steps (the simulated world is not thread-safe) and returns its result."""

    def __init__(self, config: Config, db_path: str | Path, start_timeout_s: float = 60.0) -> None:
        self._jobs: queue.Queue[tuple[Callable[[SimKiosk], Any], queue.Queue[Any]]] = queue.Queue()
        self._stop = threading.Event()
        started: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, args=(config, db_path, started), name="live-kiosk", daemon=True
        )
        self._thread.start()
        err = started.get(timeout=start_timeout_s)
        if err is not None:
            raise err

    def _run(
        self, config: Config, db_path: str | Path, started: queue.Queue[BaseException | None]
    ) -> None:
        try:
            rig = SimKiosk(config, db_path)
        except BaseException as err:  # handed to the caller
            started.put(err)
            return
        try:
            with served(rig) as server:
                self.rig, self.server = rig, server
                started.put(None)
                begun = time.monotonic() - rig.clock.now
                while not self._stop.is_set():
                    self._run_jobs(rig)
                    catch_up(rig, begun)
                    time.sleep(STEP_S)
        finally:
            rig.shutdown()

    def _run_jobs(self, rig: SimKiosk) -> None:
        while not self._jobs.empty():
            job, answer = self._jobs.get()
            try:
                answer.put((job(rig), None))
            except Exception as err:  # handed back to the caller
                answer.put((None, err))

    def do(self, job: Callable[[SimKiosk], Any], timeout_s: float = 30.0) -> Any:
        answer: queue.Queue[Any] = queue.Queue()
        self._jobs.put((job, answer))
        result, err = answer.get(timeout=timeout_s)
        if err is not None:
            raise err
        return result

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> LiveKiosk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
