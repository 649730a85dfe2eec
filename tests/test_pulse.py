"""Pulse coin acceptor: the sans-IO PulseDecoder (widths, end of train, noise, merged trains,
deadlines), PulseSettings validation, and the PulseCoinAcceptor driver on simulated pins (coin
events, the inhibit output, refused trains, close). Property tests feed the decoder random edges
and random sequences of clean trains.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import drain
from gpiozero import DigitalInputDevice, DigitalOutputDevice
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import CoinAccepted, CoinRejected, DeviceError, DeviceFault, DeviceReady
from drivers.pulse import PulseCoinAcceptor, PulseDecoder, PulseSettings, Train
from kiosk import config as config_mod
from sim.clock import SimClock
from sim.world import PulseCoinMech, SimFactory, Truth

PULSES = {1: 2, 2: 4, 5: 10}
COINS = (1, 2, 5)
SETTINGS = PulseSettings(
    coin_pin=17, pulses=PULSES, inhibit_pin=27, pulse_ms=50.0, gap_ms=100.0, end_gap_ms=250.0
)
W = 0.050  # configured pulse width, s
GAP = 0.100  # typical gap between the pulses of a train, s
END = 0.250  # end-of-train gap, s
MAX = 1.6 * W  # widest accepted pulse

Edges = list[tuple[float, bool]]  # (time s, line low)


def pulse(start: float, width: float = W) -> Edges:
    return [(start, True), (start + width, False)]


def train(start: float, count: int, width: float = W, gap: float = GAP) -> Edges:
    return [e for i in range(count) for e in pulse(start + i * (width + gap), width)]


def decode(edges: Edges) -> list[Train]:
    """Feed `edges` in order, closing trains before each edge as the driver's service would."""
    decoder = PulseDecoder(SETTINGS)
    trains = []
    for at, low in [*edges, (math.inf, False)]:
        trains += decoder.expire(at)
        if at < math.inf:
            decoder.edge(at, low)
    assert decoder.next_deadline() is None
    return trains


# --- the decoder ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "count"), PULSES.items())
def test_every_configured_coin_decodes(value: int, count: int) -> None:
    assert decode(train(0.0, count)) == [Train(count, (value,))]


@pytest.mark.parametrize("width", [0.032, 0.040, 0.060, 0.078])
def test_widths_inside_the_window_are_pulses(width: float) -> None:
    assert decode(train(1.0, 4, width=width)) == [Train(4, (2,))]


def test_a_lone_glitch_is_dropped_silently() -> None:
    assert decode(pulse(0.0, width=0.028)) == []


def test_a_glitch_inside_a_train_is_ignored() -> None:
    edges = pulse(0.0) + pulse(0.09, width=0.005) + pulse(0.15)
    assert decode(edges) == [Train(2, (1,), glitches=1)]


def test_a_pulse_too_wide_refuses_the_train() -> None:
    edges = pulse(0.0) + pulse(0.15, width=0.082) + pulse(0.33)
    [refused] = decode(edges)
    assert refused.coins == ()
    assert refused.reason == "pulse of 82 ms"


def test_a_line_held_low_refuses_the_train_after_its_deadline() -> None:
    decoder = PulseDecoder(SETTINGS)
    for at, low in train(0.0, 2):
        decoder.edge(at, low)
    decoder.edge(0.3, True)
    deadline = 0.3 + MAX + END
    assert decoder.next_deadline() == pytest.approx(deadline)
    assert decoder.expire(deadline - 0.001) == []
    assert decoder.expire(deadline) == [Train(2, (), "line held low")]
    decoder.edge(5.0, False)  # the line comes back long after: not a pulse
    assert decoder.next_deadline() is None
    assert decoder.expire(10.0) == []


def test_a_single_pulse_is_noise() -> None:
    assert decode(pulse(0.0)) == [Train(1, (), "single pulse (noise)")]


@pytest.mark.parametrize("count", [3, 5, 7])
def test_an_unknown_count_is_refused(count: int) -> None:
    assert decode(train(0.0, count)) == [Train(count, (), f"{count} pulses match no coin")]


@pytest.mark.parametrize("values", [(1, 1), (2, 1), (5, 2), (5, 5), (1, 2, 5), (2, 2, 2)])
def test_merged_trains_split_into_coins_that_add_up(values: tuple[int, ...]) -> None:
    edges: Edges = []
    for value in values:  # trains back to back, one ordinary gap apart
        start = edges[-1][0] + GAP if edges else 0.0
        edges += train(start, PULSES[value])
    [merged] = decode(edges)
    assert merged.pulses == sum(PULSES[v] for v in values)
    assert sum(merged.coins) == sum(values)
    assert merged.reason == ""


def test_a_pause_longer_than_any_gap_separates_trains() -> None:
    first = train(0.0, PULSES[2])
    second = train(first[-1][0] + 0.2, PULSES[5])  # before the end gap, after the longest gap
    assert decode(first + second) == [Train(4, (2,)), Train(10, (5,))]


@pytest.mark.parametrize("value", COINS)
def test_a_stray_pulse_before_a_train_is_refused_alone(value: int) -> None:
    edges = pulse(0.0) + train(W + 0.22, PULSES[value])
    noise, coin = decode(edges)
    assert noise == Train(1, (), "single pulse (noise)")
    assert coin == Train(PULSES[value], (value,))


@pytest.mark.parametrize("value", COINS)
def test_a_stray_pulse_after_a_train_is_refused_alone(value: int) -> None:
    edges = train(0.0, PULSES[value])
    edges += pulse(edges[-1][0] + 0.22)
    assert [t.coins for t in decode(edges)] == [(value,), ()]


def test_two_stray_pulses_never_make_a_coin() -> None:
    assert [t.coins for t in decode(pulse(0.0) + pulse(0.3))] == [(), ()]


def test_a_regularly_spaced_extra_pulse_is_not_taken_for_noise() -> None:
    [refused] = decode(train(0.0, 5))
    assert refused.coins == ()


def test_a_late_service_does_not_merge_two_trains() -> None:
    decoder = PulseDecoder(SETTINGS)
    for at, low in train(0.0, 4) + train(2.0, 2):  # nobody called expire in between
        decoder.edge(at, low)
    assert decoder.expire(5.0) == [Train(4, (2,)), Train(2, (1,))]


def test_next_deadline_follows_the_edges() -> None:
    decoder = PulseDecoder(SETTINGS)
    assert decoder.next_deadline() is None
    decoder.edge(1.0, True)
    assert decoder.next_deadline() == pytest.approx(1.0 + MAX + END)
    decoder.edge(1.05, False)
    assert decoder.next_deadline() == pytest.approx(1.05 + END)
    decoder.edge(1.15, True)
    decoder.edge(1.20, False)
    assert decoder.next_deadline() == pytest.approx(1.20 + END)
    assert decoder.expire(1.20 + END - 0.001) == []  # not yet: the train stays open
    assert decoder.expire(1.20 + END) == [Train(2, (1,))]
    assert decoder.next_deadline() is None


# --- properties ----------------------------------------------------------------------------


@given(st.lists(st.tuples(st.floats(0.0, 0.5), st.booleans()), max_size=80))
def test_random_edges_never_raise_and_yield_only_configured_coins(
    steps: list[tuple[float, bool]],
) -> None:
    edges, at = [], 0.0
    for delay, low in steps:
        at += delay
        edges.append((at, low))
    for decoded in decode(edges):
        assert set(decoded.coins) <= set(COINS)
        if decoded.coins:
            assert sum(PULSES[v] for v in decoded.coins) == decoded.pulses
        else:
            assert decoded.reason


clean_coin = st.tuples(
    st.sampled_from(COINS),
    st.floats(0.04, 0.06),  # pulse width, inside the ±20 % a DG600F promises
    st.floats(0.08, 0.12),  # gap between pulses
    st.floats(END + 0.001, 3.0),  # quiet time before the train, longer than the end gap
)


@given(st.lists(clean_coin, min_size=1, max_size=10))
def test_clean_trains_decode_to_exactly_the_coins_sent(
    coins: list[tuple[int, float, float, float]],
) -> None:
    edges: Edges = []
    for value, width, gap, quiet in coins:
        start = (edges[-1][0] if edges else 0.0) + quiet
        edges += train(start, PULSES[value], width, gap)
    assert [t.coins for t in decode(edges)] == [(value,) for value, *_ in coins]


# --- settings ------------------------------------------------------------------------------


def settings(**changes: Any) -> PulseSettings:
    return PulseSettings(**{"coin_pin": 17, "pulses": PULSES, **changes})


def test_a_one_pulse_code_is_refused() -> None:
    with pytest.raises(ValueError, match="one-pulse"):
        settings(pulses={1: 1, 2: 4})


def test_two_coins_sharing_a_count_are_refused() -> None:
    with pytest.raises(ValueError, match="share a pulse count"):
        settings(pulses={1: 2, 2: 2})


def test_an_end_gap_no_longer_than_the_longest_gap_is_refused() -> None:
    with pytest.raises(ValueError, match=r"end_gap_ms: must be longer .* \(160 ms\)"):
        settings(gap_ms=100.0, end_gap_ms=160.0)
    assert settings(gap_ms=100.0, end_gap_ms=161.0).end_gap_ms == 161.0


def test_check_coins_wants_exactly_the_accepted_coins() -> None:
    SETTINGS.check_coins((5, 2, 1))
    with pytest.raises(ValueError, match=r"no pulse count for accepted coin\(s\) \[10\]"):
        SETTINGS.check_coins((1, 2, 5, 10))
    with pytest.raises(ValueError, match=r"\[5\] c are not accepted"):
        SETTINGS.check_coins((1, 2))


def test_the_driver_checks_the_coins(
    clock: SimClock, factory: SimFactory, events: queue.Queue[Any]
) -> None:
    with pytest.raises(ValueError, match="no pulse count"):
        PulseCoinAcceptor(SETTINGS, (1, 2, 5, 10), clock, events.put, factory)


# --- the driver on simulated pins ----------------------------------------------------------


@pytest.fixture
def acceptor(
    clock: SimClock, factory: SimFactory, events: queue.Queue[Any]
) -> Iterator[PulseCoinAcceptor]:
    device = PulseCoinAcceptor(SETTINGS, COINS, clock, events.put, factory)
    device.start()
    assert [type(e) for e in drain(events)] == [DeviceReady]
    yield device
    device.close()


@pytest.fixture
def mech(clock: SimClock, factory: SimFactory) -> PulseCoinMech:
    return PulseCoinMech(SETTINGS, factory, clock, Truth())


def run(
    clock: SimClock, acceptor: PulseCoinAcceptor, events: queue.Queue[Any], for_s: float
) -> list[Any]:
    """Run the world and the acceptor's worker for `for_s`; return the events."""
    end = clock.now + for_s
    seen: list[Any] = []
    while clock.now < end:
        seen.append(clock.wait(events, end))
    seen += drain(events)
    return [e for e in seen if e is not None]


def inhibit_asserted(factory: SimFactory) -> bool:
    return bool(factory.gpio(27).state)  # active high


def test_coins_arrive_as_events_after_their_train(
    clock: SimClock, acceptor: PulseCoinAcceptor, mech: PulseCoinMech, events: queue.Queue[Any]
) -> None:
    acceptor.set_accepting(True)
    got = []
    for value in (1, 5, 2):
        ends = clock.now + mech.validate_s + PULSES[value] * (W + GAP) - GAP  # last rising edge
        assert mech.insert(value)
        got += run(clock, acceptor, events, 3.0)
        assert got[-1].at == pytest.approx(ends + END)
    assert [type(e) for e in got] == [CoinAccepted] * 3
    assert [e.value_cents for e in got] == [1, 5, 2]


def test_a_pulse_acceptor_takes_all_its_coins_or_none(
    clock: SimClock, acceptor: PulseCoinAcceptor, mech: PulseCoinMech, events: queue.Queue[Any]
) -> None:
    acceptor.set_accepting(True)
    acceptor.set_denominations(frozenset(COINS))  # the full set: nothing to change
    with pytest.raises(DeviceError) as refused:
        acceptor.set_denominations(frozenset({1, 5}))
    assert str(refused.value) == (
        "the pulse coin acceptor takes or refuses all its coins together; choose the coins it "
        "takes on the acceptor itself (its DIP switches or teach mode)"
    )
    with pytest.raises(ValueError, match=r"^10 c: not among the coins this kiosk accepts"):
        acceptor.set_denominations(frozenset({1, 2, 5, 10}))
    assert acceptor.denominations == frozenset(COINS)
    assert mech.insert(2)
    assert [e.value_cents for e in run(clock, acceptor, events, 3.0)] == [2]


def test_the_ready_event_tells_the_pulse_code(
    clock: SimClock, factory: SimFactory, events: queue.Queue[Any]
) -> None:
    with PulseCoinAcceptor(SETTINGS, COINS, clock, events.put, factory) as device:
        device.start()
        [ready] = drain(events)
    assert ready.identity == {
        "product": "pulse coin acceptor",
        "coins": "1 c: 2 pulses, 2 c: 4 pulses, 5 c: 10 pulses",
    }


def test_the_inhibit_is_asserted_until_accepting(
    acceptor: PulseCoinAcceptor, mech: PulseCoinMech, factory: SimFactory
) -> None:
    assert inhibit_asserted(factory)
    assert not mech.insert(1)
    acceptor.set_accepting(True)
    assert acceptor.is_accepting
    assert not inhibit_asserted(factory)
    acceptor.set_accepting(False)
    assert inhibit_asserted(factory)
    assert mech.truth.returned == [1]


@pytest.mark.parametrize("accepting_after", [True, False])
def test_the_inhibit_is_asserted_while_a_train_is_read(
    clock: SimClock,
    acceptor: PulseCoinAcceptor,
    mech: PulseCoinMech,
    factory: SimFactory,
    events: queue.Queue[Any],
    accepting_after: bool,
) -> None:
    acceptor.set_accepting(True)
    mech.insert(5)  # the train runs from 0.3 s to 1.7 s
    during: list[bool] = []
    clock.call_at(0.31, lambda: during.append(inhibit_asserted(factory)))
    clock.call_at(1.0, lambda: during.append(mech.insert(1)))  # a second coin is refused
    clock.call_at(1.9, lambda: during.append(inhibit_asserted(factory)))  # after the last pulse
    clock.call_at(1.9, lambda: acceptor.set_accepting(accepting_after))
    got = run(clock, acceptor, events, 3.0)
    assert during == [True, False, True]
    assert [e.value_cents for e in got] == [5]
    assert inhibit_asserted(factory) is not accepting_after
    assert mech.truth.returned == [1]


def test_noise_is_rejected_and_the_inhibit_released(
    clock: SimClock,
    acceptor: PulseCoinAcceptor,
    mech: PulseCoinMech,
    factory: SimFactory,
    events: queue.Queue[Any],
) -> None:
    acceptor.set_accepting(True)
    mech.noise(W)
    [rejected] = run(clock, acceptor, events, 1.0)
    assert isinstance(rejected, CoinRejected)
    assert (rejected.reason, rejected.detail) == ("pulse_train", "single pulse (noise)")
    assert rejected.at == pytest.approx(W + END)
    assert not inhibit_asserted(factory)


def test_a_line_stuck_low_is_a_fault_until_released(
    clock: SimClock, acceptor: PulseCoinAcceptor, factory: SimFactory, events: queue.Queue[Any]
) -> None:
    acceptor.set_accepting(True)
    line = factory.gpio(17)
    line.drive(False)
    [fault] = run(clock, acceptor, events, 2.0)
    assert fault == DeviceFault("coin_acceptor", "line_stuck", True, "GPIO17 held low", MAX + END)
    clock.call_later(0.5, lambda: line.drive(True))
    [cleared] = run(clock, acceptor, events, 2.0)  # the release is no pulse
    assert (cleared.code, cleared.active) == ("line_stuck", False)


@pytest.mark.parametrize(("value", "bounces"), [(2, 1), (5, 2), (5, 10)])
def test_contact_bounce_inside_a_pulse_is_one_pulse(value: int, bounces: int) -> None:
    edges = train(0.0, PULSES[value])
    for i in range(bounces):  # the line lifts for 1 ms in the middle of a pulse
        start = edges[2 * (i % PULSES[value])][0]
        edges += [(start + 0.02, False), (start + 0.021, True)]
    assert decode(sorted(edges)) == [Train(PULSES[value], (value,))]


def test_close_asserts_the_inhibit_releases_the_pins_and_is_idempotent(
    acceptor: PulseCoinAcceptor, factory: SimFactory
) -> None:
    acceptor.set_accepting(True)
    with acceptor:
        assert not inhibit_asserted(factory)
    assert inhibit_asserted(factory)
    assert not acceptor.is_accepting
    acceptor.close()
    for pin in (17, 27):  # free again: a device can claim them
        assert factory.gpio(pin).function == "input"
        DigitalInputDevice(pin, pin_factory=factory).close()


@pytest.mark.parametrize("profile", ["pi-pulse.toml", "sim-pulse.toml"])
def test_the_pulse_profiles_wire_the_inhibit_fail_safe(
    profile: str, clock: SimClock, factory: SimFactory, events: queue.Queue[Any]
) -> None:
    """Coins are taken only while the kiosk drives the inhibit line high: a line at rest (a Pi
    off or rebooting; pins released, pulled low) leaves the acceptor refusing every coin."""
    settings = config_mod.load(config_mod.CONFIG_DIR / profile, env={}).coin_acceptor.settings
    assert isinstance(settings, PulseSettings) and settings.inhibit_pin is not None
    line = factory.gpio(settings.inhibit_pin)
    mech = PulseCoinMech(settings, factory, clock, Truth())
    assert not line.state and mech.inhibited  # before the kiosk starts
    with PulseCoinAcceptor(settings, COINS, clock, events.put, factory) as device:
        device.start()
        assert not line.state and mech.inhibited  # started, not yet accepting
        device.set_accepting(True)
        assert line.state and not mech.inhibited
        assert mech.insert(5)
    assert line.function == "input" and not line.state  # released at the stop
    assert mech.inhibited and not mech.insert(1)


def test_a_pin_in_use_is_a_device_error_and_frees_the_others(
    clock: SimClock, factory: SimFactory, events: queue.Queue[Any]
) -> None:
    squatter = DigitalOutputDevice(17, pin_factory=factory)
    device = PulseCoinAcceptor(SETTINGS, COINS, clock, events.put, factory)
    with pytest.raises(DeviceError, match="GPIO17"):
        device.start()
    squatter.close()
    DigitalOutputDevice(27, pin_factory=factory).close()  # the inhibit output was released
