"""The pin factory for `kiosk run`: gpiozero's default, or a clear error instead of a screen of
fallback warnings and a traceback.

gpiozero picks its factory from GPIOZERO_PIN_FACTORY, or else tries lgpio, RPi.GPIO, pigpio and
its native driver in turn, warning at each miss. Off a Raspberry Pi every one misses, once per
device built. Here the misses are caught and become one KioskError that says how to proceed.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib.metadata import entry_points
from typing import Any

from gpiozero import Device
from gpiozero.exc import NativePinFactoryFallback, PinFactoryFallback

from kiosk.errors import KioskError

log = logging.getLogger(__name__)

ENV = "GPIOZERO_PIN_FACTORY"
HOW_TO_PROCEED = (
    "on a Raspberry Pi, install lgpio (pip install lgpio, or the kiosk's [pi] extra: "
    "pip install 'centimeo-kiosk[pi]'); on a PC, set GPIOZERO_PIN_FACTORY=mock to run "
    "with mock pins"
)


def pin_factory() -> Any:
    """gpiozero's default pin factory (GPIOZERO_PIN_FACTORY respected), made once per process."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
        # Each factory fails in its own way (ImportError, OSError, lgpio.error, RuntimeError):
        # gpiozero's own fallback loop catches Exception for the same reason.
        except Exception as err:
            raise KioskError(_failure(err, caught)) from err
    for warning in caught:
        if isinstance(warning.message, NativePinFactoryFallback):
            log.warning("GPIO through gpiozero's experimental native driver: %s", HOW_TO_PROCEED)
    return Device.pin_factory


def _failure(err: Exception, caught: list[warnings.WarningMessage]) -> str:
    name = os.environ.get(ENV)
    if name is not None:
        known = sorted({ep.name for ep in entry_points(group="gpiozero_pin_factories")})
        if name not in known and name.lower() not in known:
            return (
                f"{ENV}={name}: no such pin factory (known: {', '.join(known)}); {HOW_TO_PROCEED}"
            )
        return f"{ENV}={name}: that pin factory does not work here: {err}; {HOW_TO_PROCEED}"
    misses = [
        str(w.message).removeprefix("Falling back from ")
        for w in caught
        if isinstance(w.message, PinFactoryFallback)
    ]
    tried = f" (tried {'; '.join(misses)})" if misses else ""
    return f"no GPIO pin factory works on this machine{tried}: {HOW_TO_PROCEED}"
