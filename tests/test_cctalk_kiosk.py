"""The kiosk with the real ccTalk driver talking to the simulated acceptor over a real
pseudo-terminal: every fault knob, counter wrap, lost events and device reset, each ending with
the ledger's coins equal to what the device credited (less what it reports as lost)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import with_changes
from scenarios import event_codes, event_kinds

from drivers.cctalk import REOPEN_S
from kiosk import config as config_mod
from kiosk import reports
from kiosk.config import Config
from kiosk.machine import State
from sim.cctalk_device import SimCcTalkAcceptor
from sim.clock import SimClock
from sim.rig import SimKiosk
from sim.shoppers import simulate
from sim.world import CcTalkCoinMech, World


@pytest.fixture
def cctalk_config() -> Config:
    config = config_mod.load(config_mod.DEFAULT_PROFILE, env={})
    # Short real-time timeouts: a silent device costs 2 x 20 ms per poll, not 4 x 100 ms.
    return config.with_acceptor(reply_timeout_ms=20, retries=1)


Prepare = Callable[[SimCcTalkAcceptor], None]


@pytest.fixture
def start(cctalk_config: Config, db_path: Path) -> Iterator[Callable[..., SimKiosk]]:
    """Starts a kiosk (on a new world unless given one), after `prepare` set up its device."""
    started: list[SimKiosk] = []

    def start_kiosk(
        config: Config | None = None, prepare: Prepare | None = None, world: World | None = None
    ) -> SimKiosk:
        config = config or cctalk_config
        world = world or World(config, SimClock())
        if prepare is not None:
            assert isinstance(world.coins, CcTalkCoinMech)
            prepare(world.coins.device)
        rig = SimKiosk(config, db_path, world=world, clock=world.clock)
        started.append(rig)
        return rig

    yield start_kiosk
    for rig in started:
        rig.close()
    for world in {id(rig.world): rig.world for rig in started}.values():
        world.close()
        world.factory.reset()


@pytest.fixture
def kiosk(start: Callable[..., SimKiosk]) -> SimKiosk:
    return start()


def device(kiosk: SimKiosk) -> SimCcTalkAcceptor:
    assert isinstance(kiosk.world.coins, CcTalkCoinMech)
    return kiosk.world.coins.device


def ledger_cents(kiosk: SimKiosk) -> int:
    return reports.totals(kiosk.ledger.db).coins_cents


def assert_books_match_the_device(kiosk: SimKiosk) -> None:
    truth = device(kiosk).truth
    assert ledger_cents(kiosk) == truth.credited_cents - truth.lost_cents
    assert all(c.ok for c in reports.verify(kiosk.ledger.db))


def test_coins_are_credited_from_the_event_buffer(kiosk: SimKiosk) -> None:
    assert kiosk.hardware.acceptor.is_accepting
    assert device(kiosk).master_enabled
    assert device(kiosk).masks == 0b111  # 1, 2 and 5 c; 10 and 20 c stay inhibited
    for value in (5, 2, 1):
        assert kiosk.world.insert_coin(value)
        kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 8
    assert not kiosk.world.insert_coin(10)  # programmed in the device, not accepted here
    kiosk.run_for(0.5)
    assert "coin_rejected" in event_kinds(kiosk)
    assert_books_match_the_device(kiosk)


def test_the_kiosk_identifies_the_device(kiosk: SimKiosk) -> None:
    identity = kiosk.hardware.acceptor.identity  # type: ignore[attr-defined]
    assert (identity.manufacturer, identity.product, identity.serial) == (
        "Centimeo",
        "SIM-CA1",
        12_345_678,
    )
    assert identity.comms == "1.4.2"
    assert kiosk.hardware.acceptor.values == {1: 1, 2: 2, 3: 5, 4: 10, 5: 20}  # type: ignore[attr-defined]


def test_a_coin_value_refused_at_run_time_is_handed_back_the_others_credited(
    kiosk: SimKiosk,
) -> None:
    acceptor, dev = kiosk.hardware.acceptor, device(kiosk)
    acceptor.set_denominations(frozenset({1, 5}))
    kiosk.run_for(0.5)
    assert acceptor.denominations == frozenset({1, 5})
    assert dev.masks == 0b101 and dev.master_enabled
    assert not kiosk.world.insert_coin(2)  # handed back with an "inhibited coin" event
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 0
    assert event_kinds(kiosk).count("coin_rejected") == 1
    for value in (5, 1):
        assert kiosk.world.insert_coin(value)
        kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 6
    dev.power_cycle()
    kiosk.run_for(0.5)
    assert "notice coin_acceptor:reset" in event_codes(kiosk)
    assert dev.masks == 0b101  # sent again after the reset, still without the 2 c
    assert not kiosk.world.insert_coin(2)
    acceptor.set_denominations(frozenset({1, 2, 5}))
    kiosk.run_for(0.5)
    assert dev.masks == 0b111
    assert kiosk.world.insert_coin(2)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 8
    assert dev.truth.returned == [2, 2]
    assert_books_match_the_device(kiosk)


def test_coins_are_inhibited_while_vending(kiosk: SimKiosk) -> None:
    for value in (5, 5):
        kiosk.world.insert_coin(value)
        kiosk.run_for(0.5)
    kiosk.world.press(2)
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.VENDING
    assert not device(kiosk).master_enabled
    assert not kiosk.world.insert_coin(5)  # handed back with an "inhibited coin" event
    kiosk.run_for(5)
    assert kiosk.controller.credit_cents == 0
    assert device(kiosk).master_enabled
    assert_books_match_the_device(kiosk)


def test_what_was_buffered_before_the_start_is_never_credited(
    start: Callable[..., SimKiosk],
) -> None:
    def earlier_coin(dev: SimCcTalkAcceptor) -> None:
        dev.masks, dev.master_enabled = 0xFF, True
        dev.insert(5)  # a coin from before this start

    kiosk = start(prepare=earlier_coin)
    kiosk.run_for(1)
    assert kiosk.controller.credit_cents == 0
    kiosk.world.insert_coin(2)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 2


def test_the_counter_wraps_from_255_to_1(kiosk: SimKiosk) -> None:
    dev = device(kiosk)
    for _ in range(50):
        for _ in range(5):  # null events push the counter on without credit
            dev.push_event(0, 0)
        kiosk.run_for(0.2)
    assert dev.counter < 255  # it went round
    for value in (5, 2):
        kiosk.world.insert_coin(value)
        kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 7
    assert_books_match_the_device(kiosk)


def test_more_than_five_new_events_are_lost_events(kiosk: SimKiosk) -> None:
    assert device(kiosk).burst([1, 1, 2, 2, 5, 5, 5]) == 7  # between two polls
    kiosk.run_for(1)
    assert device(kiosk).truth.lost == [(1, 0), (1, 0)]
    assert kiosk.controller.credit_cents == 21 - 2
    lost = kiosk.ledger.db.execute("SELECT detail FROM events WHERE kind = 'fault'").fetchone()
    assert lost[0].startswith("2 event(s) lost")
    assert event_kinds(kiosk)[-1] == "fault_cleared"
    assert_books_match_the_device(kiosk)


def test_a_device_reset_is_noticed_and_inhibits_sent_again(kiosk: SimKiosk) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    device(kiosk).power_cycle()
    assert not device(kiosk).master_enabled
    kiosk.run_for(0.5)
    assert "notice coin_acceptor:reset" in event_codes(kiosk)
    assert device(kiosk).master_enabled and device(kiosk).masks == 0b111
    kiosk.world.insert_coin(2)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 7
    assert_books_match_the_device(kiosk)


def test_a_silent_device_is_lost_then_found(kiosk: SimKiosk) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    device(kiosk).silent = True
    kiosk.world.insert_coin(2)  # in the buffer, unread while the line is dead
    kiosk.run_for(2)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Hors service", "Monnayeur")
    device(kiosk).silent = False
    kiosk.run_for(2)
    assert kiosk.controller.state is State.CREDIT
    assert kiosk.controller.credit_cents == 7  # the coin read late still counts
    kinds = event_kinds(kiosk)
    assert kinds.count("fault") == 1 and kinds.count("fault_cleared") == 1
    assert_books_match_the_device(kiosk)


@pytest.mark.parametrize("knob", ["corrupt", "noise", "slow"])
def test_line_trouble_is_retried_and_costs_nothing(kiosk: SimKiosk, knob: str) -> None:
    dev = device(kiosk)
    for value in (5, 2, 1):
        kiosk.world.insert_coin(value)
        if knob == "corrupt":
            dev.corrupt_replies = 1
        elif knob == "noise":
            dev.noise_bytes = 7
        else:
            dev.reply_delay_s = 0.03  # longer than the 20 ms reply timeout, once
            kiosk.run_for(0.15)
            dev.reply_delay_s = 0.0
        kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 8
    assert kiosk.controller.state is State.CREDIT
    assert_books_match_the_device(kiosk)


def test_a_self_check_fault_stops_selling_until_it_clears(kiosk: SimKiosk) -> None:
    dev = device(kiosk)
    dev.self_check_fault = 3  # credit sensor
    dev.push_event(0, 6)  # credit sensor timeout: possibly swallowed
    kiosk.run_for(0.5)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert not kiosk.hardware.acceptor.is_accepting
    assert "notice coin_acceptor:event_6" in event_codes(kiosk)
    dev.self_check_fault = 0
    kiosk.run_for(1.5)
    assert kiosk.controller.state is State.IDLE
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 5
    assert_books_match_the_device(kiosk)


@pytest.mark.parametrize(("code", "kind"), [(20, "event_20"), (254, "event_254"), (36, "event_36")])
def test_alarm_events_are_recorded_and_never_credit(kiosk: SimKiosk, code: int, kind: str) -> None:
    device(kiosk).push_event(0, code)
    kiosk.run_for(0.5)
    assert f"notice coin_acceptor:{kind}" in event_codes(kiosk)
    assert kiosk.controller.credit_cents == 0


def test_a_coin_table_without_an_accepted_coin_is_a_clear_error(
    start: Callable[..., SimKiosk],
) -> None:
    kiosk = start(prepare=lambda dev: setattr(dev, "coin_ids", {1: "EU001A", 2: "EU002A"}))
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    detail = kiosk.ledger.db.execute("SELECT detail FROM events WHERE kind = 'fault'")
    text = detail.fetchone()[0]
    assert "accepted coins [5] c" in text and "1=EU001A, 2=EU002A" in text


@pytest.mark.parametrize(
    ("checksum", "echo"), [("crc16", "auto"), ("8bit", "off"), ("8bit", "on"), ("crc16", "on")]
)
def test_checksum_and_echo_modes(
    start: Callable[..., SimKiosk], cctalk_config: Config, checksum: str, echo: str
) -> None:
    kiosk = start(cctalk_config.with_acceptor(checksum=checksum, echo=echo))
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 5
    assert kiosk.hardware.acceptor.transport.echo is (echo != "off")  # type: ignore[attr-defined]


def test_a_donation_policy_works_the_same_on_cctalk(
    start: Callable[..., SimKiosk], cctalk_config: Config
) -> None:
    kiosk = start(with_changes(cctalk_config, credit={"leftover": "donate"}))
    kiosk.world.insert_coin(2)
    kiosk.run_for(0.5)
    kiosk.world.cancel()
    kiosk.run_for(6)
    assert kiosk.ledger.db.execute("SELECT sum(amount_cents) FROM donations").fetchone()[0] == 2


def test_random_shoppers_on_cctalk_keep_every_invariant(kiosk: SimKiosk) -> None:
    outcome = simulate(kiosk, 10, seed=5)
    assert outcome.ok, [c.differences for c in outcome.checks]
    assert outcome.totals.sales > 0
    assert_books_match_the_device(kiosk)


def test_a_device_reporting_coin_values_is_read_by_value(
    start: Callable[..., SimKiosk],
) -> None:
    kiosk = start(prepare=lambda dev: setattr(dev, "cvf", True))
    assert kiosk.hardware.acceptor.cvf  # type: ignore[attr-defined]
    for value in (5, 2, 1):
        kiosk.world.insert_coin(value)
        kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 8
    assert_books_match_the_device(kiosk)


def test_coins_read_but_not_recorded_before_a_crash_are_counted_after_it(
    kiosk: SimKiosk, start: Callable[..., SimKiosk]
) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    for value in (2, 1):
        kiosk.world.insert_coin(value)
    # The driver reads the two coins, then the power goes before the core records them.
    read = kiosk.hardware.acceptor.service(kiosk.clock.now + 1)  # type: ignore[attr-defined]
    assert [e.value_cents for e in read] == [2, 1]
    kiosk.close()
    again = start(world=kiosk.world)
    again.run_for(0.5)
    assert again.controller.credit_cents == 8
    assert_books_match_the_device(again)


def test_a_new_device_after_a_restart_starts_afresh(
    kiosk: SimKiosk, start: Callable[..., SimKiosk]
) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    kiosk.close()
    dev = device(kiosk)
    dev.serial_number = 999  # the acceptor was swapped while the kiosk was off
    dev.push_event(1, 0)  # whatever it buffered belongs to its former life
    again = start(world=kiosk.world)
    again.run_for(0.5)
    assert again.controller.credit_cents == 5


def test_a_reset_before_any_event_is_caught_by_the_first_refused_coin(kiosk: SimKiosk) -> None:
    device(kiosk).power_cycle()  # its counter was 0 and stays 0: the host cannot see it
    kiosk.run_for(0.5)
    assert not kiosk.world.insert_coin(5)  # the device forgot its masks: "inhibited coin"
    kiosk.run_for(0.5)
    assert device(kiosk).master_enabled and device(kiosk).masks == 0b111
    assert kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 5
    assert_books_match_the_device(kiosk)


# --- a port that comes and goes, faults that outlive outages, restarts ------------------------


def linked(kiosk_world: World, link: Path) -> World:
    """The world's kiosk opens its acceptor through `link`, as a udev symlink would name it."""
    kiosk_world.config = kiosk_world.config.with_acceptor(port=str(link))
    return kiosk_world


def test_a_port_absent_at_start_is_used_as_soon_as_it_appears(
    start: Callable[..., SimKiosk], cctalk_config: Config, tmp_path: Path
) -> None:
    link = tmp_path / "ttyUSB0"
    kiosk = start(world=linked(World(cctalk_config, SimClock()), link))
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert kiosk.display == ("Hors service", "Monnayeur")
    kiosk.run_for(5)
    assert kiosk.controller.state is State.OUT_OF_SERVICE  # still tried, still absent
    link.symlink_to(device(kiosk).path)  # the USB interface is enumerated at last
    kiosk.run_for(REOPEN_S + 1)
    assert kiosk.controller.state is State.IDLE
    assert kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 5
    assert "fault_cleared coin_acceptor:lost" in event_codes(kiosk)
    assert_books_match_the_device(kiosk)


def test_a_port_that_vanishes_is_reopened_on_the_same_path(
    start: Callable[..., SimKiosk], cctalk_config: Config, tmp_path: Path
) -> None:
    link = tmp_path / "ttyUSB0"
    world = linked(World(cctalk_config, SimClock()), link)
    assert isinstance(world.coins, CcTalkCoinMech)
    link.symlink_to(world.coins.device.path)
    kiosk = start(world=world)
    for value in (5, 2):
        kiosk.world.insert_coin(value)
        kiosk.run_for(0.5)
    first = device(kiosk)
    first.close()  # unplugged: the port fails under the driver
    kiosk.run_for(1)
    assert kiosk.controller.state is State.OUT_OF_SERVICE
    assert not kiosk.hardware.acceptor.is_accepting
    second = SimCcTalkAcceptor(address=2, echo=True)  # plugged in again: a new device node
    world.coins.device = second
    link.unlink()
    link.symlink_to(second.path)
    kiosk.run_for(REOPEN_S + 2)
    assert kiosk.controller.state is State.CREDIT
    assert second.master_enabled
    assert kiosk.world.insert_coin(1)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 8
    assert ledger_cents(kiosk) == first.truth.credited_cents + second.truth.credited_cents
    assert all(c.ok for c in reports.verify(kiosk.ledger.db))


def test_a_self_check_fault_outlives_a_line_outage(kiosk: SimKiosk) -> None:
    dev = device(kiosk)
    dev.self_check_fault = 3
    dev.push_event(0, 6)
    kiosk.run_for(0.5)
    dev.silent = True
    kiosk.run_for(8)  # five failed self-checks, a second apart
    assert {"fault coin_acceptor:self_check_3", "fault coin_acceptor:lost"} <= set(
        event_codes(kiosk)
    )
    dev.silent = False
    kiosk.run_for(2)
    assert "fault_cleared coin_acceptor:lost" in event_codes(kiosk)
    assert kiosk.controller.state is State.OUT_OF_SERVICE  # the self-check fault still holds
    assert not dev.master_enabled and not kiosk.hardware.acceptor.is_accepting
    assert not kiosk.hardware.panel.led_is_lit(1)
    assert kiosk.display == ("Hors service", "Monnayeur")
    dev.self_check_fault = 0
    kiosk.run_for(1.5)
    assert kiosk.controller.state is State.IDLE and dev.master_enabled
    assert kiosk.world.insert_coin(2)
    kiosk.run_for(0.5)
    assert kiosk.controller.credit_cents == 2


def test_a_restart_after_rejects_only_logs_nothing_twice(
    kiosk: SimKiosk, start: Callable[..., SimKiosk]
) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    for _ in range(8):  # more rejects than the buffer holds, each read as it comes
        assert not kiosk.world.insert_coin(10)
        kiosk.run_for(0.5)
    kiosk.close()
    again = start(world=kiosk.world)
    again.run_for(1)
    assert event_kinds(again).count("coin_rejected") == 8
    assert not any("lost_events" in code for code in event_codes(again))
    assert_books_match_the_device(again)


def test_a_reset_while_the_kiosk_was_down_is_reported_as_a_reset(
    kiosk: SimKiosk, start: Callable[..., SimKiosk]
) -> None:
    kiosk.world.insert_coin(5)
    kiosk.run_for(0.5)
    kiosk.close()
    device(kiosk).power_cycle()
    again = start(world=kiosk.world)
    again.run_for(0.5)
    assert "notice coin_acceptor:reset" in event_codes(again)
    assert not any("lost_events" in code for code in event_codes(again))
    assert again.world.insert_coin(2)
    again.run_for(0.5)
    assert again.controller.credit_cents == 7
    assert_books_match_the_device(again)
