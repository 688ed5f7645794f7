"""The contenders, each called the way its documentation says to wait for a lock.

Every contender gets its own lock file in the same folder (on the same file system), opens it
per acquire and closes it on release, as the libraries themselves do:

* raw flock: ``open`` + ``fcntl.flock(LOCK_EX)`` (sleeps in the kernel) + ``close``.
* filelock: ``FileLock(path)`` with its defaults: no timeout, a retry every 50 ms
  (``poll_interval=0.05``).
* portalocker (blocking): ``portalocker.Lock(path, flags=LockFlags.EXCLUSIVE)``: without
  ``LOCK_NB`` the first attempt sleeps in the kernel (no timeout is possible then).
* portalocker (timeout): ``portalocker.Lock(path, timeout=3600)``: its default flags
  ``LOCK_EX | LOCK_NB`` and ``check_interval=0.25``, i.e. a retry every 250 ms. The timeout is
  raised from the default 5 s only so that the 100th waiter of a drain does not give up.
* fasteners: ``InterProcessLock(path).acquire()`` with its defaults: retries after 10 ms,
  20 ms, ... up to 100 ms between tries (``delay=0.01, max_delay=0.1``).
* inturn: ``inturn.Line(name, directory=folder).acquire()`` and ``Turn.release()``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any

# Order of rows in every table: the baseline first, then inturn, then the other libraries.
KINDS = ("flock", "inturn", "filelock", "portalocker", "portalocker-timeout", "fasteners")
LABELS = {
    "flock": "raw flock",
    "inturn": "inturn",
    "filelock": "filelock",
    "portalocker": "portalocker (blocking)",
    "portalocker-timeout": "portalocker (timeout)",
    "fasteners": "fasteners",
}
HOW = {
    "flock": "`open`, `fcntl.flock(fd, LOCK_EX)`, `close`",
    "inturn": "`Line(name, directory=...).acquire()`, `Turn.release()`",
    "filelock": "`FileLock(path).acquire()` (defaults: no timeout, `poll_interval=0.05`)",
    "portalocker": "`portalocker.Lock(path, flags=LockFlags.EXCLUSIVE).acquire()`",
    "portalocker-timeout": "`portalocker.Lock(path, timeout=3600).acquire()` "
    "(default `LOCK_EX|LOCK_NB`, `check_interval=0.25`)",
    "fasteners": "`InterProcessLock(path).acquire()` (defaults: `delay=0.01`, `max_delay=0.1`)",
}
# Whether the library can tell the next holder that the previous one died holding the lock.
REPORTS_ABANDONED = {"inturn"}

OnQueued = Callable[[], None]


class Contender:
    """One lock, acquired and released the same way in every benchmark."""

    def acquire(self, on_queued: OnQueued | None = None) -> bool | None:
        """Wait for the lock. Returns whether the previous holder died holding it, or None
        when the library cannot tell."""
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class RawFlock(Contender):
    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "raw.lock")
        self.fd = -1

    def acquire(self, on_queued: OnQueued | None = None) -> bool | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd
        return None

    def release(self) -> None:
        os.close(self.fd)


class Inturn(Contender):
    def __init__(self, folder: str) -> None:
        import inturn

        self.line = inturn.Line("bench", directory=os.path.join(folder, "inturn"))
        self.turn: Any = None

    def acquire(self, on_queued: OnQueued | None = None) -> bool | None:
        reported = False

        def progress(_: object) -> None:
            nonlocal reported
            if on_queued is not None and not reported:
                reported = True
                on_queued()

        self.turn = self.line.acquire(on_progress=progress)
        return bool(self.turn.abandoned)

    def release(self) -> None:
        self.turn.release()


class Library(Contender):
    """A peer library whose lock object has ``acquire()`` and ``release()``."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def acquire(self, on_queued: OnQueued | None = None) -> bool | None:
        self.lock.acquire()
        return None

    def release(self) -> None:
        self.lock.release()


def open_contender(kind: str, folder: str) -> Contender:
    """The contender ``kind`` (one of ``KINDS``), with its lock files in ``folder``."""
    if kind == "flock":
        return RawFlock(folder)
    if kind == "inturn":
        return Inturn(folder)
    path = os.path.join(folder, f"{kind}.lock")
    if kind == "filelock":
        import filelock

        return Library(filelock.FileLock(path))
    if kind == "portalocker":
        import portalocker

        return Library(portalocker.Lock(path, flags=portalocker.LockFlags.EXCLUSIVE))
    if kind == "portalocker-timeout":
        import portalocker

        return Library(portalocker.Lock(path, timeout=3600))
    if kind == "fasteners":
        import fasteners  # type: ignore[import-untyped]

        return Library(fasteners.InterProcessLock(path))
    raise ValueError(f"unknown contender {kind!r}: use one of {', '.join(KINDS)}")
