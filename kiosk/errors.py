"""The kiosk's error types: one base, and specific errors that also subclass a builtin."""


class KioskError(Exception):
    """Base of every error the kiosk raises on purpose."""


class ConfigError(KioskError, ValueError):
    """A configuration file is unreadable or holds a wrong key, type or value."""


class LedgerError(KioskError, RuntimeError):
    """The ledger cannot be opened, migrated or written."""


class Refused(KioskError, ValueError):
    """A request the kiosk does not carry out (an unknown slot, a refill beyond capacity, a rule
    of the state it is in); the message says why, and nothing was changed."""
