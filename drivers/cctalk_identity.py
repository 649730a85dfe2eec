"""What a ccTalk coin acceptor says it is: its identity (category, make, model, serial, software,
comms revision, coin ids by position), and the coin values its coin ids and credit codes stand
for. Plain data, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def coin_value_cents(coin_id: str, *, whole_units: bool = False) -> int | None:
    """Cents from a coin id `CCVVVI`; None if unprogrammed or of no stated value (a taught coin,
    TK000A: the ledger refuses a 0 c coin). The value field counts in the currency's base unit:
    the cent for most euro tables (EU001A = 1 c), the euro for tables that write fractions
    (EU.05A = 5 c, EU10mA = 1 c, and then EU001A = 1 EUR = 100 c): `whole_units`."""
    match = re.fullmatch(r"[A-Z]{2}(\d{3}|\.\d\d|\d\dm)[A-Z]", coin_id)
    if match is None:
        return None
    code = match.group(1)
    if code.startswith("."):
        cents = int(code[1:])
    elif code.endswith("m"):  # thousandths of the unit: only whole cents make a coin here
        cents = int(code[:2]) // 10 if code[1] == "0" else 0
    else:
        cents = int(code) * (100 if whole_units else 1)
    return cents or None


def writes_fractions(coin_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Z]{2}(\.\d\d|\d\dm|\dm\d|\d\.\d)[A-Z]", coin_id))


def cvf_cents(code: int) -> int | None:
    """A Coin Value Format credit code: 7-bit value, times 10 when bit 7 is set; 255 is a token
    of no stated value."""
    value = (code & 0x7F) * (10 if code & 0x80 else 1)
    return None if code == 255 or value == 0 else value


@dataclass
class Identity:
    category: str = ""
    manufacturer: str = ""
    product: str = ""
    serial: int = 0
    software: str = ""
    comms: str = ""
    coin_ids: dict[int, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.manufacturer} {self.product} serial {self.serial}, software "
            f"{self.software}, comms {self.comms}"
        )

    def as_fields(self) -> dict[str, str]:
        """By key, for DeviceReady: the programmed coin ids by position, "1:EU001A 2:EU002A"."""
        coins = " ".join(f"{p}:{cid}" for p, cid in sorted(self.coin_ids.items()) if cid.strip("."))
        return {
            "manufacturer": self.manufacturer,
            "product": self.product,
            "serial": str(self.serial),
            "software": self.software,
            "category": self.category,
            "comms": self.comms,
            "coins": coins,
        }


def text(data: bytes) -> str:
    return data.decode("ascii", errors="replace").rstrip(" ")


def comms_text(data: bytes) -> str:
    if len(data) == 3 and all(b < 32 for b in data):
        return ".".join(str(b) for b in data)
    return text(data)  # some devices answer in ASCII
