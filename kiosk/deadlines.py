"""A small registry of the core's named deadlines (monotonic seconds): the loop waits for the
nearest one, and each is taken once it is due. No timer threads."""

from __future__ import annotations


class Deadlines:
    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._background: set[str] = set()

    def set(self, name: str, at: float, *, background: bool = False) -> None:
        """`background`: a deadline that recurs for ever (the idle screen's pages), which the
        kiosk having settled does not wait for."""
        self._at[name] = at
        if background:
            self._background.add(name)

    def clear(self, *names: str) -> None:
        for name in names:
            self._at.pop(name, None)
            self._background.discard(name)

    def has(self, name: str) -> bool:
        return name in self._at

    def next(self) -> float | None:
        return min(self._at.values(), default=None)

    def take(self, name: str, now: float) -> bool:
        """True, and forgotten, if `name` is due at `now`."""
        at = self._at.get(name)
        if at is None or now < at:
            return False
        del self._at[name]
        self._background.discard(name)
        return True

    @property
    def empty(self) -> bool:
        """No deadline but background ones."""
        return self._at.keys() <= self._background
