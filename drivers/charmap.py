"""What a character LCD with the HD44780's common A00 ROM shows of a text: one cell per character.

The A00 ROM holds ASCII at its own codes, except backslash and tilde (the ROM has ¥ and → there),
a few other characters in its upper half (°, µ, ¢, ä, ö, ü, ñ, Greek letters) and Japanese kana,
but no French accented letter. The eight CGRAM slots hold glyphs of our own: é, è, à and É (every
accented letter in kiosk/texts.py: é 11 times, è and à twice, É once; the product names have
none), ê and ç (the next most frequent in French), and œ and €, which have no one-cell
transliteration (Œ is shown as œ). Every other accented letter loses its accent (ù -> u, â -> a,
Ç -> C); typographic marks become their ASCII look-alikes; anything else becomes REPLACEMENT. A
text of n characters is always n cells, so a layout never shifts.
"""

from __future__ import annotations

import unicodedata

REPLACEMENT = "?"  # what a character the module cannot show becomes

# The CGRAM glyphs, slot by slot (character codes 0-7): 5x8 dots, one row per byte, bit 4 the
# leftmost dot; row 7 is the cursor line, left dark but for the cedilla's tail.
GLYPHS: dict[str, tuple[int, ...]] = {
    "é": (0b00010, 0b00100, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000),
    "è": (0b01000, 0b00100, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000),
    "à": (0b01000, 0b00100, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000),
    "É": (0b00010, 0b00100, 0b11111, 0b10000, 0b11110, 0b10000, 0b11111, 0b00000),
    "ê": (0b00100, 0b01010, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000),
    "ç": (0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00100, 0b01100),
    "œ": (0b00000, 0b00000, 0b01010, 0b10101, 0b10111, 0b10100, 0b01011, 0b00000),
    "€": (0b00111, 0b01000, 0b11110, 0b01000, 0b11110, 0b01000, 0b00111, 0b00000),
}
SLOTS = {char: slot for slot, char in enumerate(GLYPHS)}

# Characters the A00 ROM has outside ASCII, by code.
ROM = {
    "¥": 0x5C,
    "→": 0x7E,
    "←": 0x7F,
    "·": 0xA5,
    "°": 0xDF,
    "\N{GREEK SMALL LETTER ALPHA}": 0xE0,
    "ä": 0xE1,
    "β": 0xE2,
    "ε": 0xE3,
    "µ": 0xE4,  # the micro sign
    "μ": 0xE4,  # the Greek letter
    "\N{GREEK SMALL LETTER SIGMA}": 0xE5,
    "\N{GREEK SMALL LETTER RHO}": 0xE6,
    "√": 0xE8,
    "¢": 0xEC,
    "ñ": 0xEE,
    "ö": 0xEF,
    "θ": 0xF2,
    "∞": 0xF3,
    "Ω": 0xF4,
    "ü": 0xF5,
    "Σ": 0xF6,
    "π": 0xF7,
    "÷": 0xFD,
    "█": 0xFF,
}

# Characters shown as another one (which the module has): one cell for one.
SUBSTITUTES = {
    "\\": "/",  # A00 has ¥ at 0x5C
    "~": "-",  # and → at 0x7E
    "Œ": "œ",
    "ß": "β",  # the ROM's beta is drawn like a sharp s
    "\u00a0": " ",  # no-break spaces, as French typography puts before : ! ?
    "\u202f": " ",
    "\N{LEFT SINGLE QUOTATION MARK}": "'",
    "\N{RIGHT SINGLE QUOTATION MARK}": "'",
    "\N{SINGLE LOW-9 QUOTATION MARK}": ",",
    "“": '"',
    "”": '"',
    "„": '"',
    "«": '"',
    "»": '"',
    "\N{HYPHEN}": "-",
    "\N{NON-BREAKING HYPHEN}": "-",
    "\N{EN DASH}": "-",
    "—": "-",
    "\N{MINUS SIGN}": "-",
    "•": "·",
}


def code(char: str) -> int:
    """The character code that shows `char` (one character) on the module."""
    if char in SLOTS:
        return SLOTS[char]
    if char in ROM:
        return ROM[char]
    if char in SUBSTITUTES:
        return code(SUBSTITUTES[char])
    if " " <= char <= "}":
        return ord(char)
    base = unicodedata.normalize("NFD", char)[0]
    if base != char and " " <= base <= "}":
        return code(base)  # an accented letter without a glyph of its own: its letter
    return ord(REPLACEMENT)


class _Codes(dict[int, str]):
    """str.translate's table: a character's code as a one-character string, found once."""

    def __missing__(self, point: int) -> str:
        cell = self[point] = chr(code(chr(point)))
        return cell


_CODES = _Codes()


def cells(text: str) -> bytes:
    """The character codes that show `text`, one per character."""
    return text.translate(_CODES).encode("latin-1")
