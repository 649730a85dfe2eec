"""What the commissioning commands (`kiosk hw check`, kiosk/commission_check.py, and `kiosk hw
pulses`, kiosk/commission_pulses.py) share: what they run on, the technician they ask, the
kiosk's hardware held while they drive it, and waiting for devices on the injected clock.

They need the hardware to themselves. They take the lock the daemon takes for its life
(kiosk/lock.py: one kiosk per ledger; the serial port is opened exclusively as well), and refuse
while the daemon holds either. What they run on comes from the caller as a `Setup` (the profile,
a clock, a pin factory, the technician): the Pi's own, or the simulator's (sim/commissioning.py):
no command knows which. Prompts go to the technician, who on a terminal reads them on stderr;
results go back to the caller.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from drivers.base import I2cBus
from drivers.clock import Clock
from kiosk.config import Config
from kiosk.errors import KioskError
from kiosk.lock import LedgerBusy, LedgerLock

STOP_THE_KIOSK = "stop the kiosk first: systemctl stop kiosk"


@dataclass(frozen=True)
class Wanted:
    """What the technician is asked to do: press a slot's button ("button"), the cancel button
    ("cancel"), work the door ("door"), or drop `count` coins ("coins"; None: as many as they
    like while the recording lasts)."""

    kind: str
    text: str
    slot: int | None = None
    count: int | None = None


class Technician(Protocol):
    """The person at the kiosk (or the simulator's stand-in)."""

    def tell(self, text: str) -> None:
        """Say what is happening (watch the display, keep hands clear of the spirals)."""
        ...

    def ask(self, wanted: Wanted, skip: Callable[[], None]) -> None:
        """Ask for something to be done; never waits for it. `skip()`, from any thread, gives
        up on it (it is then reported as no answer)."""
        ...


@dataclass(frozen=True)
class Setup:
    """What a commissioning command runs on: the profile, the clock, the pin factory (None:
    gpiozero's default), the technician, and the display's I2C bus (None: the profile's)."""

    config: Config
    clock: Clock
    pin_factory: Any
    technician: Technician
    i2c: I2cBus | None = None


def interactive(env: Mapping[str, str] | None = None) -> bool:
    """A technician at a terminal can answer (skip with Enter); not under CI or without one."""
    env = os.environ if env is None else env
    return sys.stdin.isatty() and env.get("CI", "").lower() not in ("true", "1")


class TerminalTechnician:
    """Prompts on `stream` (stderr: stdout carries the results). When `interactive`, a line on
    stdin (Enter) skips what is being asked."""

    def __init__(self, stream: TextIO, *, interactive: bool) -> None:
        self._stream = stream
        self._interactive = interactive
        self._skip: Callable[[], None] | None = None
        self._reader: threading.Thread | None = None

    def tell(self, text: str) -> None:
        self._stream.write(f"kiosk: {text}\n")
        self._stream.flush()

    def ask(self, wanted: Wanted, skip: Callable[[], None]) -> None:
        self.tell(wanted.text + (" (Enter to skip)" if self._interactive else ""))
        if not self._interactive:
            return
        self._skip = skip
        if self._reader is None:  # blocks on stdin for the process's life: a daemon thread
            self._reader = threading.Thread(target=self._read, name="technician", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        for _ in sys.stdin:
            skip, self._skip = self._skip, None
            if skip is not None:
                skip()


@contextlib.contextmanager
def hardware_held(config: Config) -> Iterator[None]:
    """The daemon's own lock on the kiosk's ledger, held while the hardware is driven: refused
    while the daemon runs (and a daemon starting meanwhile is refused)."""
    try:
        lock = LedgerLock(config.ledger.path).acquire()
    except LedgerBusy as err:
        by = f"the kiosk daemon (PID {err.pid})" if err.pid else "another kiosk process"
        raise KioskError(
            f"{by} holds the hardware (ledger {config.ledger.path}): {STOP_THE_KIOSK}"
        ) from None
    try:
        yield
    finally:
        lock.release()


class Waiter:
    """The devices' events on one queue, waited for on the setup's clock (simulated time runs
    while it waits)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: queue.Queue[Any] = queue.Queue()

    def flush(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def pause(self, seconds: float) -> None:
        """Let `seconds` pass; what comes meanwhile is not asked for and is dropped."""
        deadline = self.clock.monotonic() + seconds
        while self.clock.monotonic() < deadline:
            self.clock.wait(self.events, deadline)

    def wait_for(self, match: Callable[[Any], bool], timeout_s: float) -> Any | None:
        """The first event `match` takes within `timeout_s`, else None."""
        deadline = self.clock.monotonic() + timeout_s
        while True:
            event = self.clock.wait(self.events, deadline)
            if event is None or match(event):
                return event
