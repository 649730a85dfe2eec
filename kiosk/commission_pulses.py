"""`kiosk hw pulses`: the raw pulse widths and gaps of a pulse acceptor's coin line, to tune the
pulse decoder (drivers.pulse) to the acceptor actually fitted.

Every edge is recorded with the pin factory's timestamps (drivers.edges), for `duration_s` or
until `coins` trains have been seen. Low stretches are pulses; a high shorter than GLITCH_MS
inside one is contact bounce (the pulse goes on), a low shorter than GLITCH_MS is a glitch (left
out and counted). Pulses form a train while the quiet between them stays within the decoder's
end gap (the profile's `end_gap_ms`, or the one given): a longer quiet ends a coin. Each train is
told as it ends (pulse count, widths, gaps), then a summary (min/median/max), and values for
`pulse_ms`, `gap_ms` and `end_gap_ms` proposed from what was seen (`propose` says how), with the
pulse counts seen per train for `pulses = {...}`. The recorded edges are then fed to the real
decoder, with the profile's values and with the proposed ones, to show which coins each reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.edges import CoinLineRecorder, Edge
from drivers.pulse import TOLERANCE_MAX, TOLERANCE_MIN, PulseDecoder, PulseSettings
from kiosk.commission import Setup, Waiter, Wanted
from kiosk.config import Config
from kiosk.errors import KioskError

log = logging.getLogger(__name__)

GLITCH_MS = 2.0  # an acceptor's pulses last tens of ms; a stretch this short is bounce or noise
GAP_MARGIN = 1.25  # the longest gap seen, this far inside the decoder's 1.6 x gap_ms limit
END_GAP_MARGIN = 1.5  # the end gap this far above the longest gap the decoder takes in a train
END_GAP_STEP_MS = 10.0


@dataclass(frozen=True)
class Pulse:
    start_s: float
    end_s: float

    @property
    def width_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000


@dataclass(frozen=True)
class Train:
    pulses: tuple[Pulse, ...]
    glitches: int = 0
    pause_before_ms: float | None = None  # quiet since the previous train (None: the first)

    @property
    def widths_ms(self) -> list[float]:
        return [p.width_ms for p in self.pulses]

    @property
    def gaps_ms(self) -> list[float]:
        return [(b.start_s - a.end_s) * 1000 for a, b in itertools.pairwise(self.pulses)]

    def as_json(self) -> dict[str, Any]:
        return {
            "pulses": len(self.pulses),
            "widths_ms": [round(w, 2) for w in self.widths_ms],
            "gaps_ms": [round(g, 2) for g in self.gaps_ms],
            "glitches": self.glitches,
            "pause_before_ms": _round(self.pause_before_ms),
        }


def widths_of(trains: Sequence[Train]) -> list[float]:
    return [w for t in trains for w in t.widths_ms]


def gaps_of(trains: Sequence[Train]) -> list[float]:
    return [g for t in trains for g in t.gaps_ms]


def pauses_of(trains: Sequence[Train]) -> list[float]:
    return [t.pause_before_ms for t in trains if t.pause_before_ms is not None]


def split_trains(edges: Sequence[Edge], end_gap_ms: float, closed: bool) -> list[Train]:
    """The trains in `edges`; the last one only if `closed` (the line has been quiet for the end
    gap since) and the line is high again."""
    stretches: list[list[float]] = []  # [start, end] of each low stretch, bounce merged
    glitches: list[int] = []  # per stretch: glitches just before it
    low_since: float | None = None
    pending_glitches = 0
    for edge in edges:
        if edge.low and low_since is None:
            low_since = edge.at_s
            if stretches and (edge.at_s - stretches[-1][1]) * 1000 < GLITCH_MS:
                low_since = stretches.pop()[0]  # bounce: the pulse goes on
                pending_glitches += glitches.pop()
        elif not edge.low and low_since is not None:
            if (edge.at_s - low_since) * 1000 < GLITCH_MS:
                pending_glitches += 1
            else:
                stretches.append([low_since, edge.at_s])
                glitches.append(pending_glitches)
                pending_glitches = 0
            low_since = None
    trains: list[Train] = []
    group: list[Pulse] = []
    group_glitches = 0
    end_gap_s = end_gap_ms / 1000
    for (start, end), before in zip(stretches, glitches, strict=True):
        if group and start - group[-1].end_s > end_gap_s:
            trains.append(_train(group, group_glitches, trains))
            group, group_glitches = [], 0
        group.append(Pulse(start, end))
        group_glitches += before
    if group and closed and low_since is None:
        trains.append(_train(group, group_glitches, trains))
    return trains


def _train(pulses: list[Pulse], glitches: int, before: list[Train]) -> Train:
    pause = (pulses[0].start_s - before[-1].pulses[-1].end_s) * 1000 if before else None
    return Train(tuple(pulses), glitches, pause)


@dataclass(frozen=True)
class Spread:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        return cls(min(values), statistics.median(values), max(values)) if values else None

    def as_json(self) -> dict[str, float]:
        return {
            "min": round(self.min, 2),
            "median": round(self.median, 2),
            "max": round(self.max, 2),
        }

    def __str__(self) -> str:
        return f"min {self.min:.1f}  median {self.median:.1f}  max {self.max:.1f} ms"


@dataclass(frozen=True)
class Proposal:
    """Values for the profile; None where nothing seen tells (keep the profile's)."""

    pulse_ms: float | None
    gap_ms: float | None
    end_gap_ms: float | None
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"notes": list(self.notes)}


def propose(trains: Sequence[Train], current: PulseSettings) -> Proposal:
    """Values the decoder reads these trains with, each with room to spare:

    - pulse_ms: the decoder takes widths from 0.6 to 1.6 x pulse_ms; the value that leaves the
      same ratio of room below the narrowest pulse seen as above the widest is
      sqrt(min x max / (0.6 x 1.6)).
    - gap_ms: the decoder takes gaps up to 1.6 x gap_ms; the median gap seen, raised if needed
      so that the longest gap seen stays GAP_MARGIN inside that limit (so it lies within the
      gaps seen), rounded up to keep that room.
    - end_gap_ms: END_GAP_MARGIN above the longest gap the decoder then takes inside a train
      (1.6 x gap_ms), rounded up to 10 ms; as short as that, since it is also how long a coin
      waits to be credited. It should stay below the shortest quiet seen between two coins
      (by END_GAP_MARGIN): a note says when it cannot.
    """
    notes: list[str] = []
    widths, gaps = Spread.of(widths_of(trains)), Spread.of(gaps_of(trains))
    pauses = Spread.of(pauses_of(trains))
    if widths is None:
        return Proposal(None, None, None, ("no pulse seen: nothing to propose",))
    pulse_ms = _clamp(round(math.sqrt(widths.min * widths.max / (TOLERANCE_MIN * TOLERANCE_MAX))))
    if widths.max / widths.min > TOLERANCE_MAX / TOLERANCE_MIN:
        notes.append(
            f"the widths spread more than the decoder takes ({widths}): some pulses will be "
            "refused whatever pulse_ms is; look for noise on the coin line"
        )
    gap_ms = None
    if gaps is None:
        notes.append("no gap seen (one-pulse trains only): keep gap_ms")
    else:
        gap_ms = _clamp(_ceil(max(gaps.median, gaps.max * GAP_MARGIN / TOLERANCE_MAX)), 1000)
    longest_gap_ms = TOLERANCE_MAX * (gap_ms or current.gap_ms)
    step = END_GAP_STEP_MS
    end_gap_ms = min(2000.0, _ceil(longest_gap_ms * END_GAP_MARGIN / step) * step)
    if pauses is not None and end_gap_ms * END_GAP_MARGIN > pauses.min:
        notes.append(
            f"two coins came {pauses.min:.0f} ms apart, too close for an end gap of "
            f"{end_gap_ms:g} ms to keep them apart: coins dropped that fast run into one train "
            "(read right only when pulse counts add up, as 2/4/10 for 1/2/5 c do)"
        )
    try:
        dataclasses.replace(
            current, pulse_ms=pulse_ms, gap_ms=gap_ms or current.gap_ms, end_gap_ms=end_gap_ms
        )
    except ValueError as err:
        notes.append(f"the profile refuses these values: {err}")
    return Proposal(pulse_ms, gap_ms, end_gap_ms, tuple(notes))


def _ceil(value: float) -> int:
    """Rounded up, but not for the last bits of a float: timestamps of 60 ms gaps come out as
    60.000000001 ms."""
    return math.ceil(round(value, 6))


def _clamp(value_ms: float, most_ms: float = 500.0) -> float:
    return float(min(most_ms, max(5.0, value_ms)))  # PulseSettings' ranges


def replay(edges: Sequence[Edge], settings: PulseSettings) -> list[Any]:
    """The coin values (or refusals, as text) the pulse decoder reads from `edges`, as the
    acceptor driver's worker would have met its deadlines."""
    decoder = PulseDecoder(settings)
    read: list[Any] = []
    for edge in edges:
        deadline = decoder.next_deadline()
        if deadline is not None and edge.at_s >= deadline:
            read += decoder.expire(edge.at_s)
        decoder.edge(edge.at_s, edge.low)
    read += decoder.expire(math.inf)
    return [value for train in read for value in (train.coins or (f"refused: {train.reason}",))]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass(frozen=True)
class PulseReport:
    settings: PulseSettings
    end_gap_ms: float  # the one trains were told apart by
    trains: tuple[Train, ...]
    edges: int
    proposal: Proposal
    read_now: tuple[Any, ...]  # what the decoder reads with the profile's values
    read_proposed: tuple[Any, ...]  # and with the proposed ones
    unfinished: bool  # a train was still going when the recording ended (left out)

    def counts(self) -> Counter[int]:
        return Counter(len(t.pulses) for t in self.trains)

    def as_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "coin_pin": s.coin_pin,
            "profile": {"pulse_ms": s.pulse_ms, "gap_ms": s.gap_ms, "end_gap_ms": s.end_gap_ms},
            "grouped_by_end_gap_ms": self.end_gap_ms,
            "edges": self.edges,
            "trains": [t.as_json() for t in self.trains],
            "widths_ms": _spread_json(widths_of(self.trains)),
            "gaps_ms": _spread_json(gaps_of(self.trains)),
            "pauses_ms": _spread_json(pauses_of(self.trains)),
            "pulses_per_train": {str(n): c for n, c in sorted(self.counts().items())},
            "proposal": self.proposal.as_json(),
            "read_with_profile": list(self.read_now),
            "read_with_proposal": list(self.read_proposed),
            "unfinished_train": self.unfinished,
        }

    def text(self) -> str:
        s, p = self.settings, self.proposal
        lines = [f"{len(self.trains)} train(s), {self.edges} edges on GPIO{s.coin_pin}"]
        for name, values in (
            ("widths", widths_of(self.trains)),
            ("gaps", gaps_of(self.trains)),
            ("between coins", pauses_of(self.trains)),
        ):
            spread = Spread.of(values)
            lines.append(f"  {name:<15}{spread if spread else '-'}")
        glitches = sum(t.glitches for t in self.trains)
        if glitches:
            lines.append(f"  {'glitches':<15}{glitches} (shorter than {GLITCH_MS:g} ms, left out)")
        if self.unfinished:
            lines.append("  a train was still going when the recording ended (left out)")
        seen = ", ".join(f"{n} (x{c})" for n, c in sorted(self.counts().items())) or "none"
        known = ", ".join(f"{v} = {n}" for v, n in sorted(s.pulses.items()))
        lines += [
            f"pulses per train: {seen}; the profile has pulses = {{ {known} }}",
            "",
            f"proposed for [coin_acceptor] (the profile has pulse_ms = {s.pulse_ms:g}, "
            f"gap_ms = {s.gap_ms:g}, end_gap_ms = {s.end_gap_ms:g}):",
        ]
        for key in ("pulse_ms", "gap_ms", "end_gap_ms"):
            value = getattr(p, key)
            lines.append(f"  {key} = {value:g}" if value is not None else f"  {key}: keep")
        lines += [f"  note: {note}" for note in p.notes]
        lines += [
            "read by the decoder with the profile's values: " + _coins(self.read_now),
            "read by the decoder with the proposed values:  " + _coins(self.read_proposed),
        ]
        return "\n".join(lines)


def _spread_json(values: Sequence[float]) -> dict[str, float] | None:
    spread = Spread.of(values)
    return None if spread is None else spread.as_json()


def _coins(read: Sequence[Any]) -> str:
    return ", ".join(f"{r} c" if isinstance(r, int) else str(r) for r in read) or "nothing"


def train_line(number: int, train: Train) -> str:
    widths = " ".join(f"{w:.1f}" for w in train.widths_ms)
    gaps = " ".join(f"{g:.1f}" for g in train.gaps_ms) or "-"
    after = (
        "" if train.pause_before_ms is None else f", {train.pause_before_ms:.0f} ms after the last"
    )
    glitches = f", {train.glitches} glitch(es)" if train.glitches else ""
    return (
        f"train {number}: {len(train.pulses)} pulses; widths {widths} ms; gaps {gaps} ms"
        f"{after}{glitches}"
    )


def pulse_settings(config: Config) -> PulseSettings:
    """The profile's pulse acceptor settings; KioskError for an acceptor of another kind."""
    settings = config.coin_acceptor.settings
    if not isinstance(settings, PulseSettings):
        raise KioskError(
            f"{config.source}: coin_acceptor.driver is {config.coin_acceptor.driver}, not "
            "pulse: kiosk hw pulses times a pulse acceptor's coin line, and a ccTalk acceptor "
            "has none (it tells its coins over the serial line; `kiosk hw check --only "
            "acceptor` identifies it)"
        )
    return settings


def record(
    setup: Setup,
    *,
    duration_s: float | None = None,
    coins: int | None = None,
    end_gap_ms: float | None = None,
    on_train: Callable[[int, Train], None] = lambda number, train: None,
) -> PulseReport:
    """Record the coin line until `duration_s` has passed or `coins` trains were seen (at least
    one of them), or once the clock has nothing more to bring; Ctrl-C ends it early.
    The caller holds the hardware (commission.hardware_held)."""
    settings = pulse_settings(setup.config)
    if duration_s is None and coins is None:
        raise ValueError("record: give duration_s, coins or both")
    end_gap_ms = end_gap_ms or settings.end_gap_ms
    waiter = Waiter(setup.clock)
    clock = setup.clock
    with CoinLineRecorder(
        settings.coin_pin,
        clock,
        waiter.events.put,
        inhibit_pin=settings.inhibit_pin,
        inhibit_active_high=settings.inhibit_active_high,
        pin_factory=setup.pin_factory,
    ) as recorder:
        if recorder.idles_low:
            raise KioskError(
                f"coin line GPIO{settings.coin_pin} is low at rest: no pulse can be timed; "
                "check the wiring, the pull-up and the acceptor's supply"
            )
        how_long = f"{coins} coin(s)" if coins else f"{duration_s:g} s"
        recorder.accept(True)
        setup.technician.ask(
            Wanted(
                "coins",
                f"drop coins into the acceptor one by one ({how_long}); they fall into the cash "
                "box and are not in the ledger: take them out afterwards",
                count=coins,
            ),
            lambda: None,
        )
        told = 0
        stop_at = math.inf if duration_s is None else clock.monotonic() + duration_s
        try:
            while clock.monotonic() < stop_at:
                edges = recorder.edges()
                quiet_at = edges[-1].seen_at + end_gap_ms / 1000 if edges else math.inf
                closed = clock.monotonic() >= quiet_at
                for train in split_trains(edges, end_gap_ms, closed)[told:]:
                    told += 1
                    on_train(told, train)
                if coins is not None and told >= coins:
                    break
                deadline = stop_at if closed else min(stop_at, quiet_at)
                waited = clock.wait(waiter.events, None if deadline == math.inf else deadline)
                if waited is None and deadline == math.inf:
                    break  # nothing to wait for, and nothing more will come
        except KeyboardInterrupt:
            log.info("recording ended early")
        recorder.accept(False)
        edges = recorder.edges()
    trains = split_trains(edges, end_gap_ms, closed=True)
    unfinished = len(trains) > told or bool(edges and edges[-1].low)
    trains = trains[:told]
    # The decoder reads what the trains told were made of, not a train cut short at the end.
    end_s = trains[-1].pulses[-1].end_s if trains else -math.inf
    told_edges = [e for e in edges if e.at_s <= end_s]
    proposal = propose(trains, settings)
    tuned = dataclasses.replace(
        settings,
        pulse_ms=proposal.pulse_ms or settings.pulse_ms,
        gap_ms=proposal.gap_ms or settings.gap_ms,
        end_gap_ms=proposal.end_gap_ms or settings.end_gap_ms,
    )
    return PulseReport(
        settings,
        end_gap_ms,
        tuple(trains),
        len(edges),
        proposal,
        tuple(replay(told_edges, settings)),
        tuple(replay(told_edges, tuned)),
        unfinished,
    )
