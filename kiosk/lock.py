"""One daemon per ledger: an exclusive lock on `<ledger>.lock`, holding the owner's PID.

The lock is an `flock` on a file beside the ledger, so the kernel releases it when its process
dies, however it dies: a lock file left behind by a crash is simply taken over. The file is
never removed (removing it would let a second daemon lock a new file while the first still
holds the old one); it holds the PID of the live holder, and is emptied on release.

`holder()` tells a running daemon from a stale control socket without keeping the lock, and
without creating anything (the CLI may run on read-only media).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from kiosk.errors import LedgerError

# A `holder()` probe holds a shared lock for microseconds; an acquirer that meets one retries
# for this long before calling the ledger busy.
PROBE_GRACE_S = 0.2
RETRY_S = 0.005
# The holder writes its PID just after locking; a reader that finds the file empty looks again.
PID_WAIT_S = 0.2


class LedgerBusy(LedgerError):
    """Another live process holds the ledger's lock."""

    def __init__(self, ledger: str | Path, lock: str | Path, pid: int | None) -> None:
        by = f"kiosk process {pid}" if pid else "another process"
        super().__init__(f"ledger {ledger} is in use by {by} (lock {lock})")
        self.pid = pid


def lock_path(ledger: str | Path) -> Path:
    return Path(f"{ledger}.lock")


class LedgerLock:
    """`with LedgerLock(path):` holds the ledger for this process; release() is idempotent."""

    def __init__(self, ledger: str | Path) -> None:
        self.ledger = Path(ledger)
        self.path = lock_path(ledger)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> LedgerLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise LedgerError(
                f"ledger {self.ledger}: cannot open its lock {self.path}: {err.strerror}"
            ) from err
        try:
            _lock(fd, fcntl.LOCK_EX, PROBE_GRACE_S)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise LedgerBusy(self.ledger, self.path, pid) from None
        except OSError as err:
            os.close(fd)
            raise LedgerError(
                f"ledger {self.ledger}: cannot lock {self.path}: {err.strerror}"
            ) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # while still held: no reader sees a stale PID after this
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> LedgerLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder(ledger: str | Path) -> int | None:
    """The PID of the live process holding the ledger's lock, or None when none does.

    Probes with a shared lock taken and dropped at once, on a read-only descriptor. A holder
    that has not yet written its PID (it does so right after locking) reads as -1.
    """
    try:
        fd = os.open(lock_path(ledger), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + PID_WAIT_S
            pid = _read_pid(fd)
            while pid is None and time.monotonic() < deadline:
                time.sleep(RETRY_S)
                pid = _read_pid(fd)
            return -1 if pid is None else pid
        return None  # closing the descriptor drops the probe's lock
    finally:
        os.close(fd)


def _lock(fd: int, kind: int, grace_s: float) -> None:
    """flock without blocking, retried for `grace_s` so that a passing probe is not a holder."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_S)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
