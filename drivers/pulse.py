"""Pulse-output coin acceptors (CH-92x, DG600F and kin) on a GPIO input.

The acceptor pulls its COIN line low for a number of pulses per coin. The decoder is sans-IO: it
takes timestamped edges and a clock reading and returns decoded trains. It checks every pulse width
against a window around the configured width, drops short glitches, ends a train after a quiet gap,
refuses one-pulse trains, and splits trains merged by coins in quick succession when the pulse
counts allow it (make counts proportional to value, e.g. 2/4/10 for 1/2/5 c, for that).
The driver inhibits the acceptor from the first pulse of a train until the train is decoded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from drivers.base import (
    Clock,
    CoinAcceptor,
    CoinAccepted,
    CoinRejected,
    DeviceError,
    Emit,
    Wake,
)

log = logging.getLogger(__name__)

WIDTH_MIN = 0.6  # accepted pulse width window, as a fraction of the configured width
WIDTH_MAX = 1.6
ISOLATED = 1.5  # a pulse this many typical periods from its neighbour is not part of the train


@dataclass(frozen=True)
class PulseSettings:
    """`[coin_acceptor]` settings of the pulse driver."""

    coin_pin: int = field(metadata={"min": 0, "max": 27})
    pulses: dict[int, int] = field(metadata={"doc": "pulse count per coin value in cents"})
    inhibit_pin: int | None = field(default=None, metadata={"min": 0, "max": 27})
    inhibit_active_high: bool = True
    pulse_ms: float = field(default=50.0, metadata={"min": 5.0, "max": 500.0})
    end_gap_ms: float = field(default=250.0, metadata={"min": 20.0, "max": 2000.0})

    def __post_init__(self) -> None:
        for value, count in self.pulses.items():
            if count < 2:
                raise ValueError(
                    f"pulses: {value} c has {count} pulse(s); a one-pulse code cannot be told "
                    "from noise, use 2 or more"
                )
        counts = list(self.pulses.values())
        if len(set(counts)) != len(counts):
            raise ValueError("pulses: two coins share a pulse count")
        if self.end_gap_ms <= self.pulse_ms * WIDTH_MAX:
            raise ValueError("end_gap_ms must be longer than the longest accepted pulse")

    def check_coins(self, coins_cents: tuple[int, ...]) -> None:
        """The configured pulse codes must be exactly the accepted coins."""
        missing = sorted(set(coins_cents) - set(self.pulses))
        extra = sorted(set(self.pulses) - set(coins_cents))
        if missing:
            raise ValueError(f"pulses: no pulse count for accepted coin(s) {missing} c")
        if extra:
            raise ValueError(f"pulses: {extra} c are not accepted coins")


@dataclass(frozen=True)
class Train:
    """One decoded pulse train: coins it carried, or the reason it was refused."""

    pulses: int
    coins: tuple[int, ...]
    reason: str = ""
    glitches: int = 0


class PulseDecoder:
    """Edges in (monotonic seconds, line low or not), trains out. Not thread-safe by itself."""

    def __init__(self, pulses: dict[int, int], pulse_ms: float, end_gap_ms: float) -> None:
        self._by_count = {count: value for value, count in pulses.items()}
        self._min_s = pulse_ms * WIDTH_MIN / 1000
        self._max_s = pulse_ms * WIDTH_MAX / 1000
        self._end_gap_s = end_gap_ms / 1000
        self._reset()

    def _reset(self) -> None:
        self.active = False  # a train is in progress
        self._low_since: float | None = None
        self._last_edge = 0.0
        self._starts: list[float] = []  # start time of each valid pulse
        self._glitches = 0
        self._bad = ""

    def edge(self, at: float, low: bool) -> None:
        if low:
            if self._low_since is None:
                self._low_since = at
                self.active = True
            return
        if self._low_since is None:
            return  # a release we never saw start, e.g. a line stuck low that we gave up on
        width = at - self._low_since
        self._low_since = None
        self._last_edge = at
        if width < self._min_s:
            self._glitches += 1
        elif width > self._max_s:
            self._bad = self._bad or f"pulse of {width * 1000:.0f} ms"
        else:
            self._starts.append(at - width)

    def next_deadline(self) -> float | None:
        if not self.active:
            return None
        if self._low_since is not None:
            return self._low_since + self._max_s + self._end_gap_s  # line stuck low
        return self._last_edge + self._end_gap_s

    def expire(self, now: float) -> Train | None:
        """Close the train if its end-of-train gap has passed; return it (None for pure noise)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        if self._low_since is not None:
            self._bad = "line held low"
        starts, glitches, bad = self._starts, self._glitches, self._bad
        count = len(starts)
        self._reset()
        if bad:
            return Train(count, (), bad, glitches)
        if count == 0:
            return None
        if count == 1:
            return Train(1, (), "single pulse (noise)", glitches)
        coins = self._split(count)
        if coins is None and self._isolated_end_pulse(starts):
            coins = self._split(count - 1)  # a noise pulse just before or after a coin's train
        if coins is None:
            return Train(count, (), f"{count} pulses match no coin", glitches)
        return Train(count, coins, "", glitches)

    @staticmethod
    def _isolated_end_pulse(starts: list[float]) -> bool:
        """True when the first or last pulse stands apart from an otherwise regular train."""
        if len(starts) < 3:
            return False
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        inner = sorted(gaps[1:-1]) or [min(gaps)]
        typical = inner[len(inner) // 2]
        return max(gaps[0], gaps[-1]) > ISOLATED * typical

    def _split(self, count: int) -> tuple[int, ...] | None:
        """Coins whose pulse counts add up to `count`, fewest coins first (a merged train)."""
        if count in self._by_count:
            return (self._by_count[count],)
        best: dict[int, tuple[int, ...]] = {0: ()}
        for total in range(1, count + 1):
            options = [
                best[total - c] + (v,) for c, v in self._by_count.items() if total - c in best
            ]
            if options:
                best[total] = min(options, key=len)
        found = best.get(count)
        return tuple(sorted(found, reverse=True)) if found else None


class PulseCoinAcceptor(CoinAcceptor):
    """A pulse acceptor on `coin_pin`, with an optional inhibit output on `inhibit_pin`."""

    name = "pulse"

    def __init__(
        self,
        settings: PulseSettings,
        coins_cents: tuple[int, ...],
        clock: Clock,
        emit: Emit,
        pin_factory: Any = None,
    ) -> None:
        settings.check_coins(coins_cents)
        self._settings = settings
        self._clock = clock
        self._emit = emit
        self._factory = pin_factory
        self._decoder = PulseDecoder(settings.pulses, settings.pulse_ms, settings.end_gap_ms)
        self._lock = threading.Lock()
        self._accepting = False
        self._line: DigitalInputDevice | None = None
        self._inhibit: DigitalOutputDevice | None = None

    def start(self) -> None:
        s = self._settings
        try:
            if s.inhibit_pin is not None:
                self._inhibit = DigitalOutputDevice(
                    s.inhibit_pin,
                    active_high=s.inhibit_active_high,
                    initial_value=True,
                    pin_factory=self._factory,
                )
            self._line = DigitalInputDevice(s.coin_pin, pull_up=True, pin_factory=self._factory)
        except Exception as err:  # gpiozero raises many unrelated types for a bad pin
            self.close()
            raise DeviceError(f"pulse coin acceptor on GPIO{s.coin_pin}: {err}") from err
        self._line.when_activated = self._on_low
        self._line.when_deactivated = self._on_high

    def _on_low(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._decoder.edge(now, low=True)
            self._apply_inhibit()
        self._emit(Wake(now))

    def _on_high(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._decoder.edge(now, low=False)
        self._emit(Wake(now))

    def _apply_inhibit(self) -> None:
        # Inhibited while a train is being read, so that a second coin cannot merge into it.
        if self._inhibit is not None:
            self._inhibit.value = not self._accepting or self._decoder.active

    def set_accepting(self, accepting: bool) -> None:
        with self._lock:
            self._accepting = accepting
            self._apply_inhibit()

    @property
    def is_accepting(self) -> bool:
        return self._accepting

    def next_deadline(self) -> float | None:
        with self._lock:
            return self._decoder.next_deadline()

    def service(self, now: float) -> None:
        with self._lock:
            train = self._decoder.expire(now)
            self._apply_inhibit()
        if train is None:
            return
        if train.reason:
            log.warning("pulse train refused: %s", train.reason)
            self._emit(CoinRejected("pulse_train", train.reason, now))
            return
        if len(train.coins) > 1:
            log.warning("merged train of %d pulses read as %s c", train.pulses, train.coins)
        for value in train.coins:
            self._emit(CoinAccepted(value, now))

    def close(self) -> None:
        if self._inhibit is not None:
            self._inhibit.on()
            self._inhibit.close()
        if self._line is not None:
            self._line.close()
        self._inhibit = self._line = None
        self._accepting = False

