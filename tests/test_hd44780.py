"""The character LCD: the HD44780 driver writing to the simulated PCF8574 backpack and module
(sim.lcd), which decodes every byte as a real module would and refuses what would garble it.

The set-up is the datasheet's, with its waits; every kiosk text fits its row and keeps one cell
for each character (French accents as CGRAM glyphs, the simulator reading the glyphs' dots with
a table of its own); only the cells that change are written again; a module that does not answer
is a fault the kiosk records while it sells on, and is set up again once it answers.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import logging
import string
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import charmap
from drivers.base import DeviceError, DeviceFault, DeviceReady, I2cBus
from drivers.hd44780 import (
    CLEAR_S,
    FIRST_WAIT_S,
    POWER_ON_S,
    RETRY_S,
    SECOND_WAIT_S,
    Hd44780Display,
    open_bus,
    row_addresses,
)
from drivers.panel import LogDisplay
from kiosk import commission_check
from kiosk.commission_check import Result
from kiosk.config import Config, DisplaySection
from kiosk.machine import State
from kiosk.texts import REASONS, TEXTS, count, text
from sim import lcd as sim_lcd
from sim.clock import SimClock
from sim.commissioning import simulated
from sim.lcd import UNKNOWN, LcdMisuse, SimCharLcd
from sim.rig import SimKiosk
from sim.world import World

SET_UP = [
    "function set 8-bit (1)",
    "function set 8-bit (2)",
    "function set 8-bit (3)",
    "function set 4-bit",
    "function set 4-bit, 2 line(s)",
    "display off",
    "clear",
    "entry mode increment",
    "CGRAM address 0x00",
    "display on",
]


class Module:
    """A driver on a simulated module, on simulated time; `run` lets its worker draw."""

    def __init__(
        self,
        columns: int = 20,
        rows: int = 2,
        *,
        address: int = 0x27,
        lcd: SimCharLcd | None = None,
        sleep: Callable[[float], None] | None = None,
        bus: Any = None,
    ) -> None:
        self.lcd = lcd or SimCharLcd(0x27, columns, rows)
        self.clock = SimClock()
        self.events: list[Any] = []
        settings = DisplaySection(driver="hd44780", columns=columns, rows=rows, address=address)
        i2c = I2cBus(bus or self.lcd, sleep or self.lcd.sleep)
        self.display = Hd44780Display(settings, self.clock, self.events.append, i2c)
        self.display.start()
        self.run()

    def show(self, line1: str, line2: str = "") -> list[str]:
        self.display.show(line1, line2)
        self.run()
        return self.lcd.screen

    def run(self, seconds: float = 0.0) -> None:
        end = self.clock.now + seconds
        while self.clock.next_at() <= end:
            self.clock.run_next()
        self.clock.now = end


class ByteBus:
    """A bus that has only write_byte: the driver writes a byte at a time."""

    def __init__(self, lcd: SimCharLcd) -> None:
        self.write_byte = lcd.write_byte


def folded(char: str) -> str:
    return unicodedata.normalize("NFD", char)[0]


# --- the set-up -----------------------------------------------------------------------------


def test_the_set_up_is_the_datasheets_initialisation_by_instruction() -> None:
    module = Module()
    lcd = module.lcd
    assert list(lcd.history) == SET_UP
    assert lcd.errors == []
    assert (lcd.display_on, lcd.two_lines, lcd.backlight, lcd.cursor_on) == (
        True,
        True,
        True,
        False,
    )
    assert lcd.screen == [" " * 20, " " * 20]
    [ready] = module.events
    assert isinstance(ready, DeviceReady)
    assert ready.detail == "HD44780 20x2 at 0x27 on I2C bus 1"


def test_the_glyphs_read_as_the_accented_letters_they_stand_for() -> None:
    lcd = Module().lcd
    assert [lcd.glyph(slot) for slot in range(8)] == list("éèàÉêçœ€")
    assert lcd.bitmap(0) == (0b00010, 0b00100, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0)
    lcd.cgram[0] ^= 0b00001  # one dot wrong: nobody reads it as é any more
    assert lcd.glyph(0) == UNKNOWN
    assert lcd.reading(0x08) == lcd.reading(0x00) == UNKNOWN  # codes 8-15 show slots 0-7


def test_a_module_left_in_4_bit_mode_out_of_step_is_set_up_again() -> None:
    """The kiosk restarted while the module kept its power, half a byte written."""
    module = Module()
    module.show("Bonjour", "")
    for port in (0x08, 0x0C, 0x08):  # RS down, then the high nibble of an instruction, no more
        module.lcd.write_byte(0x27, port)
    again = Module(lcd=module.lcd)
    assert again.show("Crédit : 5 c", "Choisissez")[0].rstrip() == "Crédit : 5 c"
    assert module.lcd.errors == []


@pytest.mark.parametrize(
    ("cut", "refusal"),
    [
        (POWER_ON_S, "after power-on (more than 40 ms needed)"),
        (FIRST_WAIT_S, "too early: still busy with function set 8-bit (1)"),
        (SECOND_WAIT_S, "too early: still busy with function set 8-bit (2)"),
        (CLEAR_S, "too early: still busy with clear"),
    ],
)
def test_each_wait_of_the_set_up_is_needed(cut: float, refusal: str) -> None:
    """On a 400 kHz bus, where the bytes alone leave the module too little time."""
    lcd = SimCharLcd(bus_hz=400_000)
    module = Module(lcd=lcd, sleep=lambda s: None if s == cut else lcd.sleep(s))
    assert refusal in lcd.errors[0]
    [fault] = module.events
    assert (fault.device, fault.code, fault.active) == ("display", "driver_error", True)


def test_the_waits_are_enough_on_a_400_khz_bus() -> None:
    module = Module(lcd=SimCharLcd(bus_hz=400_000))
    assert module.show("Crédit : 20 c", "Choisissez")[0].rstrip() == "Crédit : 20 c"
    assert module.lcd.errors == []


# --- what the module refuses ----------------------------------------------------------------


def test_the_module_refuses_what_a_real_one_would_garble() -> None:
    lcd = SimCharLcd()
    with pytest.raises(LcdMisuse, match="after power-on"):
        lcd.write_byte(0x27, 0x3C)
        lcd.write_byte(0x27, 0x38)
    lcd.sleep(0.05)
    with pytest.raises(LcdMisuse, match="data in 8-bit mode"):
        for port in (0x09, 0x4D, 0x49):  # RS up, then a nibble of data
            lcd.write_byte(0x27, port)
    with pytest.raises(LcdMisuse, match="RS or RW changed as E rose"):
        lcd.write_byte(0x27, 0x0C)
    module = Module()
    with pytest.raises(LcdMisuse, match="DDRAM address 0x28 does not exist"):
        for port in (0xAC, 0xA8, 0x8C, 0x88):  # set DDRAM address 0x28: past line 1's 40 cells
            module.lcd.write_byte(0x27, port)
    with pytest.raises(OSError) as info:
        module.lcd.write_byte(0x26, 0x08)
    assert info.value.errno == errno.EREMOTEIO  # nothing acknowledges at that address
    assert len(lcd.errors) == 3 and len(module.lcd.errors) == 1


def test_data_before_the_function_set_is_refused() -> None:
    lcd = SimCharLcd()
    lcd.sleep(0.05)
    for nibble, wait_s in ((0x3, FIRST_WAIT_S), (0x3, SECOND_WAIT_S), (0x3, 0), (0x2, 0)):
        lcd.write_byte(0x27, nibble << 4 | 0x0C)
        lcd.write_byte(0x27, nibble << 4 | 0x08)
        lcd.sleep(wait_s)
    with pytest.raises(LcdMisuse, match="data before the initialisation"):
        for port in (0x08, 0x09, 0x4D, 0x49, 0x1D, 0x19):
            lcd.write_byte(0x27, port)


# --- texts ----------------------------------------------------------------------------------

FIELDS = {
    "coins": "1 2 5",
    "credit": 1234,
    "price": 20,
    "missing": 15,
    "seconds": 5,
    "beneficiary": "Restos du Cœur",
    "count": count("fr", 31062),
}
PRODUCTS = [
    "Cookie bio",
    "Chewing-gum",
    "Crème brûlée à l'érable",
    "Pâte de fruits façon grand-mère",
]
MESSAGES = [(lang, key) for lang in TEXTS for key in TEXTS[lang]]


def fields_of(lang: str, key: str, product: str) -> dict[str, Any]:
    names = {f for line in TEXTS[lang][key] for _, f, _, _ in string.Formatter().parse(line) if f}
    every = {**FIELDS, "product": product, "reason": REASONS[lang]["sold_out"]}
    return {name: every[name] for name in names}


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize(("lang", "key"), MESSAGES, ids=[f"{lang}-{key}" for lang, key in MESSAGES])
def test_every_message_fits_and_keeps_one_cell_for_each_character(
    lang: str, key: str, product: str
) -> None:
    module = Module()
    lines = text(lang, key, **fields_of(lang, key, product))
    screen = module.show(*lines)
    for line, row in zip(lines, screen, strict=True):
        assert len(row) == 20  # nothing beyond the columns
        kept = line[:20]
        assert row == kept.ljust(20) or all(
            shown == char or shown == folded(char)
            for char, shown in zip(kept, row[: len(kept)], strict=True)
        ), (line, row)
        assert UNKNOWN not in row and charmap.REPLACEMENT not in row
        assert row[len(kept) :].strip() == ""
    assert module.lcd.errors == []


@pytest.mark.parametrize(
    ("lang", "code"), [(lang, code) for lang in REASONS for code in REASONS[lang]]
)
def test_the_reasons_and_accents_of_the_kiosks_texts_read_as_written(lang: str, code: str) -> None:
    module = Module()
    line = text(lang, "out_of_service", reason=REASONS[lang][code])[1]
    assert module.show("Hors service", line)[1].rstrip() == line


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("Restos du Cœur", "Restos du Cœur"),
        ("Œuf à 5 €", "œuf à 5 €"),
        ("Ça coûte où ? Goûtez", "Ca coute ou ? Goutez"),
        ("C:\\kiosk ~ 1", "C:/kiosk - 1"),
        ("25 °C, 5 µm, 3 ¢", "25 °C, 5 µm, 3 ¢"),
        ("Müsli · Straße", "Müsli · Straβe"),
        ("« l\N{RIGHT SINGLE QUOTATION MARK}été » \N{EN DASH} déjà", '" l\'été " - déjà'),
        ("1\u202f234 pièces", "1 234 pièces"),
        ("Ørsted 漢字\t", "?rsted ???"),
    ],
)
def test_characters_the_rom_lacks_take_one_cell_each(written: str, read: str) -> None:
    assert Module().show(written)[0] == read.ljust(20)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=20))
def test_no_character_is_lost_or_shifts_the_layout(line: str) -> None:
    shown = Module().show(line)[0]
    assert len(shown) == 20
    for char, cell in zip(line, shown[: len(line)], strict=True):
        assert cell != UNKNOWN
        assert (
            cell in (char, folded(char), charmap.REPLACEMENT)
            or char in charmap.SUBSTITUTES
            or unicodedata.normalize("NFKC", cell) == unicodedata.normalize("NFKC", char)
        )


# --- only what changed ----------------------------------------------------------------------


def test_only_the_cells_that_changed_are_written() -> None:
    module = Module()
    lcd = module.lcd
    module.show("Crédit : 20 c", "Choisissez")
    before, instructions = lcd.bytes_written, len(lcd.history)
    assert module.show("Crédit : 25 c", "Choisissez")[0].startswith("Crédit : 25 c")
    # One cell: RS down (1 byte), its address (4), RS up (1), the cell (4).
    assert lcd.bytes_written - before == 10
    assert list(lcd.history)[instructions:] == ["DDRAM address 0x0a"]
    before = lcd.bytes_written
    module.show("Crédit : 25 c", "Choisissez")
    assert lcd.bytes_written == before  # the same lines: nothing on the bus


def test_nearby_changes_are_one_write_and_distant_ones_two() -> None:
    module = Module()
    lcd = module.lcd
    module.show("abcdefgh", "")
    start = len(lcd.history)
    module.show("xbxdefgh", "")  # one unchanged cell between: rewritten with them
    assert list(lcd.history)[start:] == ["DDRAM address 0x00"]
    start = len(lcd.history)
    module.show("ybxdefgy", "")  # far apart: two runs
    assert list(lcd.history)[start:] == ["DDRAM address 0x00", "DDRAM address 0x07"]
    assert lcd.screen[0].rstrip() == "ybxdefgy"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=24), st.text(max_size=24)), min_size=1, max_size=6))
def test_a_byte_at_a_time_bus_shows_the_same_screen(screens: list[tuple[str, str]]) -> None:
    """One I2C write a change, which the simulated module takes at once where it can, or a
    write a byte, which it decodes byte by byte: the same module in the end."""
    fast, slow = SimCharLcd(), SimCharLcd()
    by_message, by_byte = Module(lcd=fast), Module(lcd=slow, bus=ByteBus(slow))
    for lines in screens:
        by_message.show(*lines)
        by_byte.show(*lines)
        assert (fast.ddram, fast.cgram, fast.history) == (slow.ddram, slow.cgram, slow.history)
        assert fast.screen == slow.screen
    assert fast.errors == slow.errors == []


def test_the_simulated_module_reads_its_glyphs_with_its_own_table() -> None:
    """Not the driver's: a glyph the driver draws wrong must read as nothing known."""
    tree = ast.parse(Path(sim_lcd.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not any(name.startswith("drivers") for name in imported)


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "starts"), [(20, (0x00, 0x40, 0x14, 0x54)), (16, (0x00, 0x40, 0x10, 0x50))]
)
def test_a_4_row_module_shows_the_two_lines_on_its_first_rows(
    columns: int, starts: tuple[int, ...]
) -> None:
    module = Module(columns, 4)
    assert row_addresses(columns, 4) == module.lcd.row_addresses == starts
    screen = module.show("Crédit : 20 c", "Choisissez")
    assert [row.rstrip() for row in screen] == ["Crédit : 20 c", "Choisissez", "", ""]
    assert module.lcd.ddram[starts[1] : starts[1] + 10] == b"Choisissez"


def test_a_1_row_module_shows_each_line_in_turn() -> None:
    module = Module(16, 1)
    assert "function set 4-bit, 1 line(s)" in module.lcd.history
    assert module.show("Crédit : 20 c", "Choisissez")[0].rstrip() == "Crédit : 20 c"
    module.run(2.5)
    assert module.lcd.screen[0].rstrip() == "Choisissez"
    module.run(2.5)
    assert module.lcd.screen[0].rstrip() == "Crédit : 20 c"
    module.run(2.5)
    assert module.show("Merci !", "")[0].rstrip() == "Merci !"
    module.run(10)
    assert module.lcd.screen[0].rstrip() == "Merci !"


# --- faults ---------------------------------------------------------------------------------


def test_a_bus_that_cannot_be_opened_names_the_bus_and_the_address() -> None:
    with pytest.raises(DeviceError) as info:
        open_bus(99, 0x27)
    assert "/dev/i2c-99" in str(info.value) and "0x27" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    clock, events = SimClock(), []
    settings = DisplaySection(driver="hd44780", i2c_bus=99)
    display = Hd44780Display(settings, clock, events.append)
    display.start()
    display.show("Bonjour", "")
    clock.run_next()
    [fault] = events
    assert (fault.code, fault.active) == ("no_bus", True)
    assert "I2C bus 99 (/dev/i2c-99) for the HD44780 at 0x27" in fault.detail
    assert display.lines == ("Bonjour", "")
    display.close()


def test_a_module_that_does_not_answer_is_a_fault_until_it_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lcd = SimCharLcd()
    lcd.unplug()
    with caplog.at_level(logging.WARNING, logger="drivers.hd44780"):
        module = Module(lcd=lcd)
    [fault] = module.events
    assert isinstance(fault, DeviceFault)
    assert (fault.device, fault.code, fault.active) == ("display", "no_answer", True)
    assert "the HD44780 at 0x27 on I2C bus 1 does not answer" in fault.detail
    assert "the kiosk sells on" in caplog.text
    module.display.show("Crédit : 7 c", "Choisissez")
    module.run(RETRY_S)  # tried again, still nothing: no second fault
    assert len(module.events) == 1
    assert module.display.lines == ("Crédit : 7 c", "Choisissez")
    lcd.plug()
    module.run(RETRY_S)
    assert [(e.code, e.active) for e in module.events[1:] if isinstance(e, DeviceFault)] == [
        ("no_answer", False)
    ]
    assert isinstance(module.events[-1], DeviceReady)
    assert lcd.screen[0].rstrip() == "Crédit : 7 c"


def test_a_module_unplugged_and_plugged_again_is_set_up_afresh() -> None:
    module = Module()
    module.show("Crédit : 7 c", "Choisissez")
    module.lcd.unplug()
    module.show("Crédit : 9 c", "Choisissez")
    assert [(e.code, e.active) for e in module.events[1:]] == [("no_answer", True)]
    module.lcd.plug()  # powered again: blank, in 8-bit mode
    module.run(RETRY_S)
    assert [row.rstrip() for row in module.lcd.screen] == ["Crédit : 9 c", "Choisissez"]
    assert module.lcd.errors == []


def test_wrong_address_is_reported_with_it() -> None:
    module = Module(address=0x3F)
    [fault] = module.events
    assert "the HD44780 at 0x3f on I2C bus 1 does not answer: Remote I/O error" in fault.detail


def test_close_blanks_the_module_and_switches_its_backlight_off() -> None:
    module = Module()
    module.show("Au revoir", "")
    module.display.close()
    module.display.close()
    assert (module.lcd.screen[0].strip(), module.lcd.backlight) == ("", False)
    assert module.display.lines == ("", "")


def test_the_log_display_cuts_its_lines(caplog: pytest.LogCaptureFixture) -> None:
    display = LogDisplay(DisplaySection(columns=16))
    with caplog.at_level(logging.INFO, logger="drivers.panel"):
        display.show("Crédit gardé 20 c de plus", "x")
    assert display.lines == ("Crédit gardé 20 ", "x")
    assert "display: Crédit gardé 20  | x" in caplog.text


# --- in the kiosk ---------------------------------------------------------------------------


def test_the_module_shows_what_the_kiosk_shows(config: Config, db_path: Path) -> None:
    rig = SimKiosk(config, db_path)
    try:
        seen = []
        for act in [lambda: None, lambda: rig.world.insert_coin(5), lambda: rig.world.press(1)]:
            act()
            for _ in range(8):
                rig.run_for(0.5)
                assert [row.rstrip() for row in rig.world.lcd.screen] == list(rig.display)
                seen.append(rig.display)
        assert ("Crédit : 5 c", "Choisissez") in seen
        assert ("Il manque 15 c", "Cookie bio 20 c") in seen
        assert rig.world.lcd.errors == []
    finally:
        rig.shutdown()


def test_the_kiosk_sells_on_while_its_display_does_not_answer(
    config: Config, db_path: Path
) -> None:
    clock = SimClock()
    world = World(config, clock)
    assert world.lcd is not None
    world.lcd.unplug()
    rig = SimKiosk(config, db_path, world=world, clock=clock)
    try:
        for _ in range(2):
            world.insert_coin(5)
            rig.run_for(3)  # a pulse train of 10 pulses
        assert rig.controller.credit_cents == 10
        world.press(2)
        rig.run_until_quiet(60)
        assert world.truth.delivered[2] == 1
        assert (rig.controller.state, rig.controller.credit_cents) == (State.IDLE, 0)
        assert ("display", "no_answer") in [(f.device, f.code) for f in rig.ledger.faults()]
        world.lcd.plug()
        rig.run_for(RETRY_S + 1)
        assert rig.ledger.faults() == []
        assert [row.rstrip() for row in world.lcd.screen] == list(rig.display)
    finally:
        rig.shutdown()


def test_the_world_builds_the_module_the_profile_describes(config: Config) -> None:
    four = dataclasses.replace(config, display=dataclasses.replace(config.display, rows=4))
    world = World(four, SimClock())
    assert world.lcd is not None and world.lcd.row_addresses == (0x00, 0x40, 0x14, 0x54)


@pytest.mark.parametrize("plugged", [True, False])
def test_hw_check_shows_its_pattern_on_the_simulated_module(config: Config, plugged: bool) -> None:
    with simulated(config) as site:
        assert site.world.lcd is not None
        if not plugged:
            site.world.lcd.unplug()
        report = commission_check.check(site.setup, ["display"])
        lcd = site.world.lcd
        found = {row.check: row for row in report.rows}
        if plugged:
            assert [row.result for row in report.rows] == [Result.OK, Result.OK]
            assert list(lcd.history)[: len(SET_UP)] == SET_UP and lcd.errors == []
            assert lcd.screen[0].strip() == ""  # the pattern over, the display blank again
        else:
            assert found["pattern"].result is Result.FAILED
            assert "the HD44780 at 0x27 on I2C bus 1 does not answer" in found["pattern"].detail
