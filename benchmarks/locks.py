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

The read-mostly benchmark (``readers.py``) has its own reader/writer contenders (``RW_KINDS``):
raw ``flock(LOCK_SH / LOCK_EX)``, inturn with ``shared=True`` for readers, fasteners'
``InterProcessReaderWriterLock`` and filelock's ``ReadWriteLock``, each with its defaults.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import inspect
import os
import struct
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
# Measured in the hand-off only: what any design with a file per ticket must do (see
# ``TicketFloor``), to tell the cost of inturn's design from the cost of its Python.
FLOOR = "ticket-floor"
LABELS[FLOOR] = "ticket floor (reference)"
HOW[FLOOR] = (
    "not a lock library: the fewest steps of a file-per-ticket hand-off that tells a clean "
    "release from a death and records who holds (see `TicketFloor` in `locks.py`)"
)

RANGE_FLOOR = "range-floor"
FLOORS = (FLOOR, RANGE_FLOOR)
LABELS[RANGE_FLOOR] = "byte-range floor (reference)"
HOW[RANGE_FLOOR] = (
    "not a lock library: the same steps with one file per line and a byte range per ticket "
    "(see `RangeFloor` in `locks.py`)"
)

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


class TicketFloor(Contender):
    """The fewest steps of a hand-off in a design with a file per ticket that keeps
    inturn's promises, in plain Python with no queue around them: under a guard lock the
    joiner takes the next number from a counter, lists the folder and creates and locks its
    ticket; the holder removes its ticket before closing it (so that the next can tell a
    clean release from a death); the waiter sleeps in ``flock(LOCK_SH)`` on the ticket ahead,
    reads ``st_nlink`` (0: released) and writes that it holds the turn before returning (so
    that its death is reported as an abandoned turn, and a waiter's death is not); a joiner
    with nobody ahead writes that it holds in its first record. Enough for one process alone
    or two taking turns, as the benchmarks run it; nothing else uses it."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.join(folder, "floor")
        os.makedirs(self.folder, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self.guard = os.open(os.path.join(self.folder, ".line"), flags, 0o644)
        self.name = ""
        self.fd = -1
        self.ahead = -1

    def acquire(self, on_queued: OnQueued | None = None) -> bool | None:
        guard = self.guard
        fcntl.flock(guard, fcntl.LOCK_EX)
        number = int(os.pread(guard, 20, 0) or b"0") + 1
        os.pwrite(guard, b"%020d" % number, 0)
        others = [name for name in os.listdir(self.folder) if name != ".line"]
        self.name = f"{number:020d}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self.fd = os.open(os.path.join(self.folder, self.name), flags, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        if not others:  # nobody ahead: it holds the turn from its first record
            os.write(self.fd, b'{"pid": %d, "acquired_at": 1}\n' % os.getpid())
            fcntl.flock(guard, fcntl.LOCK_UN)
            return False
        os.write(self.fd, b'{"pid": %d}\n' % os.getpid())
        fcntl.flock(guard, fcntl.LOCK_UN)
        for other in sorted(others, reverse=True):  # the nearest ahead first
            try:
                ahead = os.open(os.path.join(self.folder, other), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # it left while we looked
            fcntl.flock(ahead, fcntl.LOCK_SH)
            released = os.fstat(ahead).st_nlink == 0
            os.write(self.fd, b'{"acquired_at": 1}\n')
            self.ahead = ahead  # closed when we leave: closing now waits for its owner's close
            return not released
        os.write(self.fd, b'{"acquired_at": 1}\n')
        return False

    def release(self) -> None:
        os.unlink(os.path.join(self.folder, self.name))
        os.close(self.fd)
        if self.ahead >= 0:
            os.close(self.ahead)
            self.ahead = -1


class RangeFloor(Contender):
    """The same steps in the other layout the issue allows: one file per line, a byte range
    of it per ticket, locked with open-file-description locks (``F_OFD_SETLK``), so that no
    file is created or removed per turn. Under a guard range the joiner takes the next
    number from a counter in the file and write-locks its ticket's range through a new
    description of the file; it waits by read-locking the range of the ticket ahead through
    its process's own description, and a holder's state byte, written before its range is
    freed, tells a clean release (``R``) from a death. The ticket ahead being free and
    released means nobody is ahead, so an uncontended cycle lists nothing. Records sit in a
    ring of fixed slots. A reference like ``TicketFloor``, for one process alone or two taking
    turns; Linux only (open-file-description locks)."""

    GUARD, COUNTER, RECORDS, SLOT, SLOTS, LOCKS = 0, 8, 4096, 64, 1024, 1 << 40

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "range-floor.lock")
        self.line = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.ticket = -1
        self.number = 0

    def _lock(self, fd: int, kind: int, start: int, wait: bool = False) -> None:
        how = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
        fcntl.fcntl(fd, how, struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0))

    def _slot(self, number: int) -> int:
        return self.RECORDS + (number % self.SLOTS) * self.SLOT

    def acquire(self, on_queued: OnQueued | None = None) -> bool | None:
        line = self.line
        self._lock(line, fcntl.F_WRLCK, self.GUARD, wait=True)
        number = int.from_bytes(os.pread(line, 8, self.COUNTER), "little") + 1
        os.pwrite(line, number.to_bytes(8, "little"), self.COUNTER)
        self.ticket = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._lock(self.ticket, fcntl.F_WRLCK, self.LOCKS + number)
        self.number = number
        record = b'W{"pid": %d}\n' % os.getpid()
        try:
            self._lock(line, fcntl.F_RDLCK, self.LOCKS + number - 1)  # free: it has gone
            free = True
        except BlockingIOError:
            free = False
            os.pwrite(self.ticket, record, self._slot(number))
        self._lock(line, fcntl.F_UNLCK, self.GUARD)
        if not free:
            self._lock(line, fcntl.F_RDLCK, self.LOCKS + number - 1, wait=True)
        released = os.pread(line, 1, self._slot(number - 1)) in (b"R", b"\0", b"")
        os.pwrite(self.ticket, b"H" + record[1:], self._slot(number))
        return not released

    def release(self) -> None:
        os.pwrite(self.ticket, b"R", self._slot(self.number))
        os.close(self.ticket)  # frees its range
        self._lock(self.line, fcntl.F_UNLCK, self.LOCKS + self.number - 1)


def open_contender(kind: str, folder: str) -> Contender:
    """The contender ``kind`` (one of ``KINDS``), with its lock files in ``folder``."""
    if kind == "flock":
        return RawFlock(folder)
    if kind == "inturn":
        return Inturn(folder)
    if kind == FLOOR:
        return TicketFloor(folder)
    if kind == RANGE_FLOOR:
        return RangeFloor(folder)
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


# --------------------------------------------------------------------------- readers and writers

# The read-mostly benchmark (``readers.py``): the baseline first, then inturn, then the peers.
# ``inturn-exclusive`` (every turn exclusive) is only measured when asked for, for comparison.
RW_KINDS = ("flock", "inturn", "fasteners", "filelock")
RW_OPTIONAL = ("inturn-exclusive",)
RW_LABELS = {
    "flock": "raw flock",
    "inturn": "inturn (shared)",
    "inturn-exclusive": "inturn (all exclusive)",
    "fasteners": "fasteners",
    "filelock": "filelock",
}
RW_HOW = {
    "flock": "`open`, `fcntl.flock(fd, LOCK_SH)` or `flock(fd, LOCK_EX)`, `close`",
    "inturn": "`Line(name, directory=...).acquire(shared=True)` for readers, "
    "`.acquire()` for the writer, `Turn.release()`",
    "inturn-exclusive": "`Line(name, directory=...).acquire()` for everyone, `Turn.release()`",
    "fasteners": "`InterProcessReaderWriterLock(path)`: `with lock.read_lock():` / "
    "`with lock.write_lock():` (defaults: `fcntl.lockf` with `LOCK_NB`, retried after "
    "10 ms, 20 ms, ... up to 100 ms)",
    "filelock": "`ReadWriteLock(path)`: `with lock.read_lock():` / `with lock.write_lock():` "
    "(defaults: an SQLite database, waiting in SQLite's busy handler, which sleeps and retries)",
}


class SharedContender:
    """One reader/writer lock: ``acquire(shared=True)`` for a reader, ``False`` for a writer."""

    def acquire(self, shared: bool, on_queued: OnQueued | None = None) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class RawSharedFlock(SharedContender):
    """The baseline: the kernel's own shared and exclusive ``flock``, which lets a reader in
    beside other readers even while a writer waits."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "rw-raw.lock")
        self.fd = -1

    def acquire(self, shared: bool, on_queued: OnQueued | None = None) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        self.fd = fd

    def release(self) -> None:
        os.close(self.fd)


class SharedInturn(SharedContender):
    """inturn's line; ``all_exclusive`` makes every turn exclusive (the comparison row)."""

    def __init__(self, folder: str, all_exclusive: bool = False) -> None:
        import inturn

        self.line = inturn.Line("bench-rw", directory=os.path.join(folder, "inturn-rw"))
        self.all_exclusive = all_exclusive
        self.turn: Any = None

    def acquire(self, shared: bool, on_queued: OnQueued | None = None) -> None:
        reported = False

        def progress(_: object) -> None:
            nonlocal reported
            if on_queued is not None and not reported:
                reported = True
                on_queued()

        if self.all_exclusive:
            self.turn = self.line.acquire(on_progress=progress)
        else:
            acquire: Any = self.line.acquire  # shared= arrives with shared turns
            self.turn = acquire(shared=shared, on_progress=progress)

    def release(self) -> None:
        self.turn.release()


class SharedLibrary(SharedContender):
    """A peer whose lock has the context managers ``read_lock()`` and ``write_lock()``, called
    with their defaults; held open across ``acquire`` and ``release``."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.held = contextlib.ExitStack()

    def acquire(self, shared: bool, on_queued: OnQueued | None = None) -> None:
        self.held.enter_context(self.lock.read_lock() if shared else self.lock.write_lock())

    def release(self) -> None:
        self.held.close()


def shared_unavailable(kind: str) -> str | None:
    """Why contender ``kind`` of the read-mostly benchmark cannot be measured here, or None."""
    if kind == "inturn":
        import inturn

        if "shared" not in inspect.signature(inturn.Line.acquire).parameters:
            return f"inturn {inturn.__version__} has no shared turns (`acquire(shared=...)`)"
    if kind == "filelock":
        try:
            import filelock
        except ImportError:
            return "filelock is not installed"
        if not hasattr(filelock, "ReadWriteLock"):
            return (
                f"filelock {filelock.__version__} has no `ReadWriteLock` (added in filelock 3.21.0)"
            )
    if kind == "fasteners" and importlib.util.find_spec("fasteners") is None:
        return "fasteners is not installed"
    return None


def open_shared_contender(kind: str, folder: str) -> SharedContender:
    """The reader/writer contender ``kind`` (of ``RW_KINDS`` or ``RW_OPTIONAL``) in ``folder``."""
    if kind == "flock":
        return RawSharedFlock(folder)
    if kind in ("inturn", "inturn-exclusive"):
        return SharedInturn(folder, all_exclusive=kind == "inturn-exclusive")
    if kind == "fasteners":
        import fasteners  # type: ignore[import-untyped]

        return SharedLibrary(
            fasteners.InterProcessReaderWriterLock(os.path.join(folder, "fasteners-rw.lock"))
        )
    if kind == "filelock":
        import filelock

        return SharedLibrary(filelock.ReadWriteLock(os.path.join(folder, "filelock-rw.db")))
    choices = ", ".join((*RW_KINDS, *RW_OPTIONAL))
    raise ValueError(f"unknown reader/writer contender {kind!r}: use one of {choices}")
