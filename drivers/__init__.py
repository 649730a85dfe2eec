"""Hardware I/O: device interfaces, the pulse coin acceptor, the spiral dispenser and the panel.

Imports the standard library, pyserial and gpiozero only; never the kiosk or the simulator.
"""
