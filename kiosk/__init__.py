"""The Centimeo kiosk application: configuration, state machine, ledger, core loop and CLI."""

__version__ = "0.1.0"
