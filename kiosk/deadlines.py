"""A small registry of the core's named deadlines (monotonic seconds): the loop waits for the
nearest one, and each is taken once it is due. No timer threads."""

from __future__ import annotations


class Deadlines:
    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def set(self, name: str, at: float) -> None:
        self._at[name] = at

    def clear(self, *names: str) -> None:
        for name in names:
            self._at.pop(name, None)

    def next(self) -> float | None:
        return min(self._at.values(), default=None)

    def take(self, name: str, now: float) -> bool:
        """True, and forgotten, if `name` is due at `now`."""
        at = self._at.get(name)
        if at is None or now < at:
            return False
        del self._at[name]
        return True

    @property
    def empty(self) -> bool:
        return not self._at
