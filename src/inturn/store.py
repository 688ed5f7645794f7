"""The primitives a backend supplies; the queue algorithm (``queue.py``) is built on these only.

A line is a set of numbered tickets. Each backend keeps, per line:

* a counter that hands out ticket numbers, strictly increasing for the life of the line
  (they double as fencing tokens);
* for each ticket, a record of its owner (``records.Ticket``) and a *liveness lock* that the
  owner holds from ``join`` until ``leave`` and that the operating system or server frees the
  moment the owner dies (a ``flock``, a named mutex, a session advisory lock);
* *abandonment markers*: a record that a ticket died while it held the turn, consumed by the
  next holder so that exactly one of them is told.

Everything else (who is ahead, who to wait for, first come first served, slots) is decided in
``queue.py`` from these primitives and is the same on every backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import NamedTuple

from .errors import BackendError, Cancelled
from .records import LineStatus, Ticket


class Snapshot(NamedTuple):
    """What a line holds right now: ticket numbers (live or dead), and abandonment markers."""

    tickets: tuple[int, ...]
    abandoned: tuple[int, ...] = ()


class CancelToken:
    """Lets another thread (an ``asyncio`` task being cancelled) end a wait at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: set[threading.Event] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for event in self._events:
                event.set()

    @contextmanager
    def linked(self, event: threading.Event) -> Iterator[None]:
        """Set ``event`` when cancelled, for as long as the ``with`` block runs."""
        with self._lock:
            self._events.add(event)
            if self.cancelled:
                event.set()
        try:
            yield
        finally:
            with self._lock:
                self._events.discard(event)


def wait_woken(
    woken: threading.Event,
    timeout: float | None,
    cancel: CancelToken | None,
    fired: Callable[[], bool],
    name: str,
) -> bool:
    """Sleep until ``woken`` is set (True) or ``timeout`` runs out (False), for backends whose
    watchers set ``woken`` from other threads; ``fired()`` says whether one really did, since
    a cancel sets ``woken`` too, and then ``Cancelled`` is raised."""
    if cancel is None:
        return woken.wait(timeout)
    with cancel.linked(woken):
        woken.wait(timeout)
        if fired():
            return True
        if cancel.cancelled:
            raise Cancelled(f"stopped waiting for line {name!r}")
        return False


class Membership(ABC):
    """The caller's own ticket: it keeps the liveness lock held until ``LineStore.leave``."""

    number: int

    @property
    def lost(self) -> bool:
        """True once the backend knows the liveness lock is gone (a dropped server connection)."""
        return False

    def on_lost(self, callback: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Run ``callback`` (from another thread) if the turn is lost; local locks never are."""

    def inheritable_handles(self) -> list[int]:
        """OS handles a child process may inherit to keep the turn held (``inturn run``)."""
        return []


class LineStore(ABC):
    """One named line in one backend."""

    name: str
    scope: str = "user"
    remote = False  # True when every look costs a server round trip

    @property
    def where(self) -> str:
        """Where the line lives, for messages (a folder, a server address without password)."""
        return ""

    @abstractmethod
    def join(self, me: Ticket) -> Membership:
        """Take the next ticket number, publish ``me`` under it and hold its liveness lock.

        Taking the number and publishing it must be one atomic step with respect to other
        joiners: once ``join`` returns, anyone who joins later sees this ticket in ``snapshot``.
        """

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """Every ticket present (including dead ones not yet buried), ascending."""

    @abstractmethod
    def alive(self, numbers: Sequence[int]) -> list[bool]:
        """Whether each ticket's owner still holds its liveness lock (asks the kernel/server)."""

    @abstractmethod
    def bury(self, number: int) -> bool:
        """Remove a ticket found dead; turn it into an abandonment marker if it was holding.

        Must re-check death under the backend's own exclusion, so that a live ticket is never
        removed. Returns True when a marker was left.
        """

    @abstractmethod
    def wait_any(
        self, numbers: Sequence[int], timeout: float | None, cancel: CancelToken | None
    ) -> bool:
        """Sleep until one of these tickets is gone or dead. False when ``timeout`` ran out.

        No polling: the caller sleeps in the kernel or the server. Raise ``Cancelled`` if
        ``cancel`` gets set; KeyboardInterrupt must get through on the main thread.
        """

    @abstractmethod
    def mark_acquired(self, me: Membership, when: float) -> None:
        """Record that ``me`` now holds the turn (status shows it; death now means abandoned)."""

    @abstractmethod
    def claim_abandoned(self) -> Ticket | None:
        """Consume one abandonment marker atomically; the dead holder's record, or None."""

    @abstractmethod
    def leave(self, me: Membership) -> None:
        """Remove the caller's ticket and free its liveness lock (clean release or giving up)."""

    @abstractmethod
    def read(self, numbers: Sequence[int]) -> list[Ticket | None]:
        """The records of these tickets (None where gone or unreadable)."""

    def status(self) -> LineStatus:
        """Live holders and waiters in ticket order; buries the dead it finds on the way
        (when it may: an observer without write access leaves them to others)."""
        present = self.snapshot().tickets
        live: list[int] = []
        for number, ok in zip(present, self.alive(present), strict=True):
            if ok:
                live.append(number)
            else:
                with suppress(BackendError):
                    self.bury(number)
        holders: list[Ticket] = []
        waiters: list[Ticket] = []
        for ticket in self.read(live):
            if ticket is not None:
                (holders if ticket.holding else waiters).append(ticket)
        return LineStatus(self.name, tuple(holders), tuple(waiters), self.scope, self.where)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the store keeps open between calls."""


class Backend(ABC):
    """A place where lines live: a folder on this machine, a database server."""

    scope: str = "user"

    @abstractmethod
    def line(self, name: str) -> LineStore:
        """The store of one line (created on first use)."""

    @abstractmethod
    def names(self) -> list[str]:
        """The names of every line that exists here, sorted."""

    @property
    def where(self) -> str:
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free connections or handles."""
