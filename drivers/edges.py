"""A pulse coin acceptor's COIN line, edge by edge: the raw recorder `kiosk hw pulses` times the
acceptor's trains with, to tune the pulse decoder (drivers.pulse).

Each edge is timed by the pin factory's own ticks, which gpiozero hands to the pin's
`when_changed(ticks, state)` callback: on lgpio that is the kernel's timestamp of the edge, taken
when the line changed, not when Python got round to it, so the widths hold however late the
callback runs. Ticks are compared only through the factory's `ticks_diff`, as gpiozero requires
(they may wrap). No debounce is set: every edge the line makes is recorded, glitches included.

While recording, the acceptor's inhibit line (if wired) is released so that it takes coins;
it is inhibited again on close, whatever happened.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from gpiozero import DigitalOutputDevice, InputDevice

from drivers.base import DeviceError, best_effort
from drivers.clock import Clock, Emit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edge:
    """One change of the coin line. `at_s`: seconds since the first edge recorded, by the pin
    factory's ticks; `low`: the line went low (a pulse begins); `seen_at`: the injected clock's
    monotonic time when the callback ran (only for deciding that the line has gone quiet)."""

    at_s: float
    low: bool
    seen_at: float


class CoinLineRecorder:
    """Records every edge of `coin_pin` (pulled up, pulses pull it low). Each edge is also
    emitted, so that a waiting caller wakes up; `edges()` is the record so far."""

    def __init__(
        self,
        coin_pin: int,
        clock: Clock,
        emit: Emit,
        *,
        inhibit_pin: int | None = None,
        inhibit_active_high: bool = True,
        pin_factory: Any = None,
    ) -> None:
        self.coin_pin = coin_pin
        self._clock = clock
        self._emit = emit
        self._lock = threading.Lock()
        self._edges: list[Edge] = []
        self._first_ticks: Any = None
        self._factory: Any = pin_factory
        self._line: InputDevice | None = None
        self._inhibit: DigitalOutputDevice | None = None
        try:
            if inhibit_pin is not None:
                self._inhibit = DigitalOutputDevice(
                    inhibit_pin,
                    active_high=inhibit_active_high,
                    initial_value=True,  # inhibited until recording begins
                    pin_factory=pin_factory,
                )
            self._line = InputDevice(coin_pin, pull_up=True, pin_factory=pin_factory)
            self._factory = self._line.pin_factory
            self._line.pin.bounce = None
            self._line.pin.edges = "both"
            self._line.pin.when_changed = self._changed
        except Exception as err:  # gpiozero raises many unrelated types for a bad pin
            self.close()
            raise DeviceError(f"coin line GPIO{coin_pin}: {err}") from err

    @property
    def idles_low(self) -> bool:
        """The line is low now: with no coin going through, a short, a missing pull-up or an
        acceptor that is off or faulty."""
        return self._line is not None and not self._line.pin.state

    def accept(self, accepting: bool) -> None:
        """Release (True) or set (False) the acceptor's inhibit; nothing without an inhibit pin."""
        if self._inhibit is not None:
            self._inhibit.value = not accepting

    def edges(self) -> list[Edge]:
        with self._lock:
            return list(self._edges)

    def _changed(self, ticks: Any, state: Any) -> None:
        seen_at = self._clock.monotonic()
        with self._lock:
            if self._first_ticks is None:
                self._first_ticks = ticks
            at_s = float(self._factory.ticks_diff(ticks, self._first_ticks))
            edge = Edge(at_s, not state, seen_at)
            self._edges.append(edge)
        self._emit(edge)

    def close(self) -> None:
        """Inhibit the acceptor and release both pins; idempotent."""
        line, self._line = self._line, None
        inhibit, self._inhibit = self._inhibit, None
        if inhibit is not None:
            best_effort("coin acceptor inhibit", inhibit.on)
            best_effort("coin acceptor inhibit close", inhibit.close)
        if line is not None:
            best_effort("coin line callback off", lambda: setattr(line.pin, "when_changed", None))
            best_effort("coin line close", line.close)

    def __enter__(self) -> CoinLineRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
