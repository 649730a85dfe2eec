"""Spiral dispenser on simulated pins: every vend outcome (delivered during the turn or during the
wait after it, jammed, no drop after the retry turns, a product caught for one turn, a blocked drop
sensor), a vend refused while busy or for an unknown slot, stop_all and close mid-turn, and that no
motor is ever left on. sim.world.World turns the spirals and drops the products; `Rig.run` services
the dispenser the way the core does (waiting on the events queue and the dispenser's deadline).
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import drain, with_changes
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceError, DeviceFault, VendFinished, VendOutcome
from drivers.spiral import SpiralDispenser, SpiralPins
from kiosk import config as config_mod
from kiosk.config import Config
from sim.clock import SimClock
from sim.world import Spiral, World

# sim.toml: max_run_s 8, drop_wait_s 1.5, retry_turns 1; the world's spirals turn in 2 s, leave
# home at 0.1 s and drop the front product at 1.7 s.
REVOLUTION_S = 2.0
Turn = tuple[float, float | None]  # motor switched on, switched off (None: still on)


@dataclass
class Rig:
    world: World
    clock: SimClock
    dispenser: SpiralDispenser
    events: queue.Queue[Any]
    motor_log: dict[int, list[tuple[float, bool]]] = field(default_factory=dict)

    def spiral(self, slot: int) -> Spiral:
        return self.world.spirals[slot]

    def motor_pin_on(self, slot: int) -> bool:
        return bool(self.world.factory.gpio(self.world.config.slot(slot).motor_pin).state)

    def turns(self, slot: int) -> list[Turn]:
        """The motor's runs, from the levels its pin really took (times rounded to the µs)."""
        runs: list[Turn] = []
        for t, on in self.motor_log[slot]:
            at = round(t, 6)
            if on:
                runs.append((at, None))
            else:
                runs[-1] = (runs[-1][0], at)
        return runs

    def run(self, limit_s: float = 60.0) -> list[Any]:
        """Run until a VendFinished arrives or `limit_s` passes; return the events."""
        end = self.clock.now + limit_s
        seen: list[Any] = []
        while self.clock.now < end and not any(isinstance(e, VendFinished) for e in seen):
            seen.append(self.clock.wait(self.events, end))
            seen += drain(self.events)
        return [e for e in seen if e is not None]

    def close(self) -> None:
        self.dispenser.close()
        self.world.factory.reset()


def recording(
    log: list[tuple[float, bool]], clock: SimClock, motor: Callable[[bool], None]
) -> Callable[[bool], None]:
    def listener(on: bool) -> None:
        log.append((clock.now, on))
        motor(on)

    return listener


def make_rig(config: Config, clock: SimClock) -> Rig:
    world = World(config, clock, revolution_s=REVOLUTION_S)
    events: queue.Queue[Any] = queue.Queue()
    d = config.dispenser
    dispenser = SpiralDispenser(
        {s.id: SpiralPins(s.motor_pin, s.home_pin) for s in config.slots},
        d.drop_pin,
        clock,
        events.put,
        max_run_s=d.max_run_s,
        drop_wait_s=d.drop_wait_s,
        retry_turns=d.retry_turns,
        pin_factory=world.factory,
    )
    rig = Rig(world, clock, dispenser, events)
    for s in config.slots:
        rig.motor_log[s.id] = []
        listener = recording(rig.motor_log[s.id], clock, world.spirals[s.id].motor)
        world.factory.listen(s.motor_pin, listener)
    return rig


@pytest.fixture
def rig(config: Config, clock: SimClock) -> Iterator[Rig]:
    made = make_rig(config, clock)
    yield made
    made.close()


def finished(events: list[Any]) -> VendFinished:
    [result] = [e for e in events if isinstance(e, VendFinished)]
    return result


def assert_all_motors_off(rig: Rig) -> None:
    assert not any(rig.motor_pin_on(slot) for slot in rig.world.spirals)
    assert not rig.dispenser.busy


# --- outcomes ------------------------------------------------------------------------------


def test_a_product_dropped_during_the_turn_is_delivered(rig: Rig) -> None:
    rig.dispenser.vend(1)
    assert rig.motor_pin_on(1)
    assert rig.dispenser.busy
    events = rig.run()
    assert events == [VendFinished(1, VendOutcome.DELIVERED, "dropped during the turn", 2.0)]
    assert rig.turns(1) == [(0.0, 2.0)]
    assert rig.world.truth.delivered[1] == 1
    assert_all_motors_off(rig)


def test_a_product_dropped_during_the_wait_after_home_is_delivered(rig: Rig) -> None:
    rig.spiral(2).empty = True  # the world drops nothing; the beam is cut by hand after home
    rig.clock.call_at(2.5, lambda: rig.world.product_falls(2))
    rig.dispenser.vend(2)
    result = finished(rig.run())
    assert (result.slot, result.outcome) == (2, VendOutcome.DELIVERED)
    assert result.detail == "dropped after 1 turn(s)"
    assert result.at == pytest.approx(2.54)  # when the product has passed the beam
    assert rig.turns(2) == [(0.0, 2.0)]
    assert_all_motors_off(rig)


def test_a_jammed_spiral_is_stopped_at_max_run(rig: Rig) -> None:
    rig.world.jam(3)
    rig.dispenser.vend(3)
    result = finished(rig.run())
    assert (result.slot, result.outcome) == (3, VendOutcome.JAMMED)
    assert "not home after 8 s" in result.detail
    assert rig.turns(3) == [(0.0, 8.0)]
    assert_all_motors_off(rig)


def test_a_product_that_fell_before_the_stop_is_delivered(config: Config, clock: SimClock) -> None:
    # The product falls at 1.7 s, the cam would reach home at 2.0 s: max_run_s stops it first.
    rig = make_rig(with_changes(config, dispenser={"max_run_s": 1.8}), clock)
    try:
        rig.dispenser.vend(1)
        result = finished(rig.run())
        assert (result.slot, result.outcome) == (1, VendOutcome.DELIVERED)
        assert "not home after 1.8 s" in result.detail
        assert rig.turns(1) == [(0.0, 1.8)]
        assert_all_motors_off(rig)
    finally:
        rig.close()


@pytest.mark.parametrize("retry_turns", [0, 1, 3])
@pytest.mark.parametrize("fault", ["empty", "sold_out"])
def test_an_empty_spiral_turns_once_plus_retries_then_no_drop(
    config: Config, clock: SimClock, retry_turns: int, fault: str
) -> None:
    rig = make_rig(with_changes(config, dispenser={"retry_turns": retry_turns}), clock)
    try:
        if fault == "empty":
            rig.spiral(1).empty = True
        else:
            rig.spiral(1).stock = 0
        rig.dispenser.vend(1)
        result = finished(rig.run())
        # each turn: 2 s of motor, then 1.5 s of waiting for the drop
        turns = [(3.5 * i, 3.5 * i + REVOLUTION_S) for i in range(1 + retry_turns)]
        assert rig.turns(1) == turns
        assert result.outcome is VendOutcome.NO_DROP
        assert result.detail == f"no drop after {1 + retry_turns} turn(s)"
        assert result.at == pytest.approx(3.5 * (1 + retry_turns))
        assert_all_motors_off(rig)
    finally:
        rig.close()


def test_a_product_caught_for_one_turn_is_delivered_on_the_retry(rig: Rig) -> None:
    rig.spiral(1).hang_once = True
    rig.dispenser.vend(1)
    result = finished(rig.run())
    assert result.outcome is VendOutcome.DELIVERED
    assert result.at == pytest.approx(5.5)
    assert rig.turns(1) == [(0.0, 2.0), (3.5, 5.5)]
    assert rig.world.truth.delivered[1] == 1
    assert_all_motors_off(rig)


def test_a_blocked_drop_sensor_refuses_the_vend_until_it_clears(rig: Rig) -> None:
    rig.world.stick_drop_sensor(True)
    assert rig.dispenser.drop_sensor_blocked
    rig.dispenser.vend(1)
    fault, result = drain(rig.events)
    assert isinstance(fault, DeviceFault)
    assert (fault.device, fault.code, fault.active) == ("drop_sensor", "blocked", True)
    assert (result.slot, result.outcome) == (1, VendOutcome.BLOCKED)
    assert rig.motor_log[1] == []  # the motor never moved
    assert_all_motors_off(rig)

    rig.clock.call_at(4.0, lambda: rig.world.stick_drop_sensor(False))
    assert rig.run(limit_s=5.0) == [
        DeviceFault("drop_sensor", "blocked", False, "drop sensor clear", 4.0)
    ]
    rig.dispenser.vend(1)
    assert finished(rig.run()).outcome is VendOutcome.DELIVERED


def test_a_beam_that_stays_cut_during_a_vend_confirms_nothing(rig: Rig) -> None:
    rig.spiral(2).empty = True
    rig.clock.call_at(0.5, lambda: rig.world.stick_drop_sensor(True))
    rig.dispenser.vend(2)
    fault, result = rig.run()
    assert (fault.device, fault.code, fault.active) == ("drop_sensor", "blocked", True)
    assert (result.slot, result.outcome) == (2, VendOutcome.BLOCKED)
    assert result.at == pytest.approx(1.0)
    assert rig.turns(2) == [(0.0, 1.0)]
    assert_all_motors_off(rig)


# --- refusals and the safe state -----------------------------------------------------------


@pytest.mark.parametrize("second", [1, 2])
def test_a_vend_while_busy_is_refused_and_the_first_goes_on(rig: Rig, second: int) -> None:
    rig.dispenser.vend(1)
    with pytest.raises(DeviceError, match="slot 1 is still vending"):
        rig.dispenser.vend(second)
    assert not rig.motor_pin_on(2)
    assert finished(rig.run()).outcome is VendOutcome.DELIVERED
    assert rig.turns(1) == [(0.0, 2.0)]


def test_an_unknown_slot_is_refused_and_leaves_the_dispenser_idle(rig: Rig) -> None:
    with pytest.raises(DeviceError, match="no slot 9"):
        rig.dispenser.vend(9)
    assert not rig.dispenser.busy
    assert rig.dispenser.next_deadline() is None
    rig.dispenser.vend(1)
    assert finished(rig.run()).outcome is VendOutcome.DELIVERED


def test_stop_all_switches_the_motor_off_mid_turn(rig: Rig) -> None:
    rig.dispenser.vend(1)
    assert rig.run(limit_s=1.0) == []
    rig.dispenser.stop_all()
    assert rig.turns(1) == [(0.0, 1.0)]
    assert rig.dispenser.next_deadline() is None
    assert rig.run(limit_s=20.0) == []  # the vend is abandoned: no verdict, no motor
    assert rig.turns(1) == [(0.0, 1.0)]
    assert_all_motors_off(rig)


def test_close_switches_the_motor_off_mid_turn_and_is_idempotent(rig: Rig) -> None:
    rig.dispenser.vend(2)
    rig.run(limit_s=1.2)
    assert rig.motor_pin_on(2)
    rig.dispenser.close()
    rig.dispenser.close()
    assert rig.turns(2) == [(0.0, 1.2)]
    assert not rig.motor_pin_on(2)
    assert rig.world.factory.gpio(rig.world.config.slot(2).motor_pin).function == "input"


# --- whatever happens ----------------------------------------------------------------------

CONFIG = config_mod.load(config_mod.PULSE_PROFILE, env={})


@settings(max_examples=40, deadline=None)
@given(
    slot=st.sampled_from([1, 2, 3]),
    max_run_s=st.floats(REVOLUTION_S + 0.1, 12.0),
    drop_wait_s=st.floats(0.1, 3.0),
    retry_turns=st.integers(0, 3),
    faults=st.sets(st.sampled_from(["jammed", "empty", "hang_once", "stuck_beam"])),
    stop_after_s=st.none() | st.floats(0.0, 20.0),
)
def test_no_motor_is_ever_left_on(
    slot: int,
    max_run_s: float,
    drop_wait_s: float,
    retry_turns: int,
    faults: set[str],
    stop_after_s: float | None,
) -> None:
    dispenser = dataclasses.replace(
        CONFIG.dispenser, max_run_s=max_run_s, drop_wait_s=drop_wait_s, retry_turns=retry_turns
    )
    # one slot: every gpiozero Button costs up to 0.1 s of real time to close
    one_slot = dataclasses.replace(CONFIG, dispenser=dispenser, slots=(CONFIG.slot(slot),))
    rig = make_rig(one_slot, SimClock())
    try:
        spiral = rig.spiral(slot)
        spiral.jammed, spiral.empty, spiral.hang_once = (
            f in faults for f in ("jammed", "empty", "hang_once")
        )
        rig.world.stick_drop_sensor("stuck_beam" in faults)
        rig.dispenser.vend(slot)
        if stop_after_s is None:
            events = rig.run()
            result = finished(events)
            assert result.slot == slot
            beam_saw_it = rig.world.truth.delivered[slot] == 1 and "stuck_beam" not in faults
            assert (result.outcome is VendOutcome.DELIVERED) == beam_saw_it
        else:
            rig.run(limit_s=stop_after_s)
            rig.dispenser.stop_all()
        runs = rig.turns(slot)
        assert len(runs) <= 1 + retry_turns
        assert all(off is not None and off - on <= max_run_s + 1e-6 for on, off in runs)
        assert_all_motors_off(rig)
    finally:
        rig.close()
