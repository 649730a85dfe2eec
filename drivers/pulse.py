"""Pulse-output coin acceptors (CH-92x, DG600F and kin) on a GPIO input.

The acceptor pulls its COIN line low for a number of pulses per coin. The decoder is sans-IO: it
takes timestamped edges and a clock reading and returns decoded trains. A pulse counts when its
width lies within 0.6-1.6 x `pulse_ms` (shorter ones are glitches and are ignored, a longer one
refuses the train). Pulses belong to one train while the gaps between them stay within
1.6 x `gap_ms`; a longer pause starts a new train, so a stray pulse just before or after a coin is
read as a separate one-pulse train and refused as noise. A train is closed after `end_gap_ms` of
quiet. Trains of coins validated together run into each other; with pulse counts proportional to
value (e.g. 2/4/10 for 1/2/5 c) such a train is split into coins that add up to the right amount.
The driver inhibits the acceptor from the first pulse of a train until the train is decoded.
Edges arrive on gpiozero's threads; the end gaps are met by a worker of the clock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from drivers.base import (
    CoinAccepted,
    CoinAcceptor,
    CoinRejected,
    DeviceError,
    DeviceFault,
    DeviceReady,
)
from drivers.clock import Clock, Emit, Worker

log = logging.getLogger(__name__)

DEVICE = "coin_acceptor"

TOLERANCE_MIN = 0.6  # accepted pulse width (and gap) window, as a fraction of the nominal value
TOLERANCE_MAX = 1.6
BOUNCE = 0.2  # a high shorter than this fraction of the width or gap is contact bounce
LINE_HELD_LOW = "line held low"


@dataclass(frozen=True)
class PulseSettings:
    """`[coin_acceptor]` settings of the pulse driver."""

    coin_pin: int = field(metadata={"min": 0, "max": 27})
    pulses: dict[int, int] = field(metadata={"doc": "pulse count per coin value in cents"})
    inhibit_pin: int | None = field(default=None, metadata={"min": 0, "max": 27})
    inhibit_active_high: bool = True
    pulse_ms: float = field(default=50.0, metadata={"min": 5.0, "max": 500.0})
    gap_ms: float = field(default=100.0, metadata={"min": 5.0, "max": 1000.0})
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
        longest_gap_ms = self.gap_ms * TOLERANCE_MAX
        if self.end_gap_ms <= longest_gap_ms:
            raise ValueError(
                f"end_gap_ms: must be longer than the longest gap inside a train "
                f"({longest_gap_ms:g} ms)"
            )

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

    def __init__(self, settings: PulseSettings) -> None:
        self._by_count = {count: value for value, count in settings.pulses.items()}
        self._min_s = settings.pulse_ms * TOLERANCE_MIN / 1000
        self._max_s = settings.pulse_ms * TOLERANCE_MAX / 1000
        self._max_gap_s = settings.gap_ms * TOLERANCE_MAX / 1000
        self._end_gap_s = settings.end_gap_ms / 1000
        self._bounce_s = min(settings.pulse_ms, settings.gap_ms) * BOUNCE / 1000
        self._done: list[Train] = []
        self._reset()

    def _reset(self) -> None:
        self.active = False  # a train is in progress
        self._low_since: float | None = None
        self._segment: tuple[float, float] | None = None  # the last low stretch, not yet judged
        self._last_edge = 0.0
        self._pulses: list[tuple[float, float]] = []  # (start, end) of each valid pulse
        self._glitches = 0
        self._bad = ""

    def edge(self, at: float, low: bool) -> None:
        if low:
            if self._low_since is not None:
                return
            if self._segment is not None and at - self._segment[1] < self._bounce_s:
                self._low_since, self._segment = self._segment[0], None  # contact bounce
                return
            self._judge()
            if self.active and at >= self._last_edge + self._end_gap_s:
                self._close()  # the previous train ended before anyone asked
            self._low_since = at
            self.active = True
            return
        if self._low_since is None:
            return  # a release we never saw start, e.g. a line stuck low that we gave up on
        self._segment = (self._low_since, at)
        self._low_since = None
        self._last_edge = at

    def _judge(self) -> None:
        """Classify the last low stretch: a pulse, a glitch, or too wide."""
        if self._segment is None:
            return
        start, end = self._segment
        self._segment = None
        width = end - start
        if width < self._min_s:
            self._glitches += 1
        elif width > self._max_s:
            self._bad = self._bad or f"pulse of {width * 1000:.0f} ms"
        else:
            self._pulses.append((start, end))

    def next_deadline(self) -> float | None:
        if not self.active:
            return None
        if self._low_since is not None:
            return self._low_since + self._max_s + self._end_gap_s  # line stuck low
        return self._last_edge + self._end_gap_s

    def expire(self, now: float) -> list[Train]:
        """The trains closed by `now`: one that reached its end gap, and any closed earlier."""
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            if self._low_since is not None:
                self._bad = LINE_HELD_LOW
            self._close()
        done, self._done = self._done, []
        return done

    def _close(self) -> None:
        self._judge()
        pulses, glitches, bad = self._pulses, self._glitches, self._bad
        self._reset()
        if bad:
            self._done.append(Train(len(pulses), (), bad, glitches))
            return
        for group in self._groups(pulses):
            self._done.append(self._decode(len(group), glitches))
            glitches = 0

    def _groups(self, pulses: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
        """Split at pauses longer than any gap inside a train."""
        groups: list[list[tuple[float, float]]] = []
        for pulse in pulses:
            if groups and pulse[0] - groups[-1][-1][1] <= self._max_gap_s:
                groups[-1].append(pulse)
            else:
                groups.append([pulse])
        return groups

    def _decode(self, count: int, glitches: int) -> Train:
        if count == 1:
            return Train(1, (), "single pulse (noise)", glitches)
        coins = self._split(count)
        if coins is None:
            return Train(count, (), f"{count} pulses match no coin", glitches)
        return Train(count, coins, "", glitches)

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
    """A pulse acceptor on `coin_pin`, with an optional inhibit output on `inhibit_pin`. Its one
    inhibit line holds back every coin at once, so it takes all the configured denominations or
    none (set_denominations accepts the full set only)."""

    name = "pulse"
    coin_choice = "its DIP switches or teach mode"

    def __init__(
        self,
        settings: PulseSettings,
        coins_cents: tuple[int, ...],
        clock: Clock,
        emit: Emit,
        pin_factory: Any = None,
    ) -> None:
        settings.check_coins(coins_cents)
        self.coins_cents = coins_cents
        self._settings = settings
        self._clock = clock
        self._emit = emit
        self._factory = pin_factory
        self._decoder = PulseDecoder(settings)
        self._lock = threading.Lock()
        self._accepting = False
        self._stuck = False
        self._line: DigitalInputDevice | None = None
        self._inhibit: DigitalOutputDevice | None = None
        self._worker: Worker | None = None

    def resume_from(self, cursor: str | None) -> None:
        """A pulse line keeps nothing to read again: each train is seen once, as it comes."""

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
        self._worker = self._clock.start_worker("pulse acceptor", self, self._emit)
        now = self._clock.monotonic()
        stuck = frozenset({"line_stuck"} if self._line.is_active else ())
        detail = f"pulse acceptor on GPIO{s.coin_pin}"
        self._emit(DeviceReady(DEVICE, detail, now, stuck, self._identity()))
        if self._line.is_active:  # held low already: the decoder's deadline will say so
            self._on_low()

    def _identity(self) -> dict[str, str]:
        """All a pulse acceptor can tell of itself: its pulse code, as configured."""
        coins = ", ".join(f"{v} c: {n} pulses" for v, n in sorted(self._settings.pulses.items()))
        return {"product": "pulse coin acceptor", "coins": coins}

    def _on_low(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._decoder.edge(now, low=True)
            self._apply_inhibit()
        self._wake()

    def _on_high(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._decoder.edge(now, low=False)
            released, self._stuck = self._stuck, False
        if released:
            self._emit(DeviceFault(DEVICE, "line_stuck", False, "coin line released", now))
        self._wake()

    def _wake(self) -> None:
        if self._worker is not None:
            self._worker.wake()

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

    @property
    def reading(self) -> bool:
        with self._lock:
            return self._decoder.active

    def next_deadline(self) -> float | None:
        with self._lock:
            return self._decoder.next_deadline()

    def service(self, now: float) -> list[Any]:
        with self._lock:
            trains = self._decoder.expire(now)
            self._apply_inhibit()
        events: list[Any] = []
        for train in trains:
            if train.reason == LINE_HELD_LOW:
                # A shorted or stuck line would swallow every coin: stop taking them.
                with self._lock:
                    self._stuck = True
                detail = f"GPIO{self._settings.coin_pin} held low"
                events.append(DeviceFault(DEVICE, "line_stuck", True, detail, now))
            elif train.reason:
                log.warning("pulse train refused: %s", train.reason)
                events.append(CoinRejected("pulse_train", train.reason, now))
            else:
                merged = len(train.coins) > 1
                if merged:
                    log.warning("merged train of %d pulses read as %s c", train.pulses, train.coins)
                events.extend(CoinAccepted(value, now, merged) for value in train.coins)
        return events

    def safe_state(self, error: Exception) -> list[Any]:
        self.set_accepting(False)
        now = self._clock.monotonic()
        return [DeviceFault(DEVICE, "driver_error", True, f"pulse driver: {error}", now)]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self._inhibit is not None:
            self._inhibit.on()
            self._inhibit.close()
        if self._line is not None:
            self._line.close()
        self._inhibit = self._line = None
        self._accepting = False
