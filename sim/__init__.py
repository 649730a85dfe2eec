"""The world outside the kiosk's wires: simulated time, pins, coins, spirals and shoppers."""
