"""The queue algorithm, written once for every backend.

A joiner takes the next ticket. It holds the turn when fewer than ``slots`` live tickets are
ahead of it. Otherwise it sleeps until one of the ``slots`` live tickets *directly* ahead of it
dies or leaves, then looks again. That wake-up is necessary and sufficient: while those
``slots`` tickets live, at least ``slots`` are ahead, so nobody wakes for nothing beyond them,
and with ``slots=1`` only the waiter right behind a leaver wakes. Order is by ticket number, so
first come, first served holds on every backend by construction.

After a turn that ended uncleanly (an abandonment marker is waiting), the next holder waits the
store's *lock delay* before it starts, counted from the moment it first saw the marker, so that
a holder cut off from a server has stopped its work before anyone else begins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .backends.base import (
    BUSY_PATIENCE,
    CancelToken,
    GuardTaken,
    LineStore,
    Membership,
    Patience,
    View,
    pause,
)
from .errors import Busy, InturnError, Timeout
from .forks import forget_after_fork
from .records import Ticket, own_ticket_fields


class Progress(NamedTuple):
    """Where a waiter stands each time it goes back to sleep."""

    ticket: int  # the waiter's own ticket
    position: int  # 1-based place in the whole line, holders included
    ahead: tuple[int, ...]  # live tickets ahead, oldest first
    waiting_on: tuple[int, ...]  # the ones whose leaving wakes us


ProgressCallback = Callable[[Progress], None]


class Holdings:
    """Which owner (a thread for sync code, an ``asyncio`` task for async code) holds which
    tickets in this process, so that a wait that could only end when its own caller releases
    is refused instead of hanging. Owners are the objects themselves, never thread ids, which
    the system reuses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[tuple[str, str, int], object] = {}
        forget_after_fork(self)

    @staticmethod
    def _key(store: LineStore, number: int) -> tuple[str, str, int]:
        return (store.where, store.name, number)

    def add(self, store: LineStore, number: int, owner: object) -> None:
        with self._lock:
            self._owners[self._key(store, number)] = owner

    def discard(self, store: LineStore, number: int) -> None:
        with self._lock:
            self._owners.pop(self._key(store, number), None)

    def all_owned_by(self, store: LineStore, numbers: Sequence[int], owner: object) -> bool:
        with self._lock:
            return bool(numbers) and all(
                self._owners.get(self._key(store, n)) is owner for n in numbers
            )

    def after_fork_in_child(self) -> None:
        """The parent's turns are not the child's (``Membership``s close their copies)."""
        self._lock = threading.Lock()
        self._owners = {}


HOLDINGS = Holdings()


class Held(NamedTuple):
    """A turn just taken: the membership that keeps it, and the record of the holder that
    died holding it before (None after a clean hand-over)."""

    membership: Membership
    abandoned_by: Ticket | None


def take_turn(
    store: LineStore,
    *,
    slots: int = 1,
    timeout: float | None = None,
    blocking: bool = True,
    command: tuple[str, ...] | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    owner: object = None,
    holdings: Holdings = HOLDINGS,
) -> Held:
    """Join ``store``'s line and return once this caller holds the turn.

    ``owner`` is who will hold it (default: the calling thread). Any exception (timeout, busy,
    Ctrl-C, cancel) leaves the line before it propagates.
    """
    if owner is None:
        owner = threading.current_thread()
    start = time.monotonic()
    deadline = None if timeout is None else start + max(0.0, timeout)
    guard_deadline = deadline if blocking else start + BUSY_PATIENCE
    patience = Patience(guard_deadline, cancel)
    try:
        me, view = store.join(own_ticket_fields(command, slots), patience)
    except GuardTaken as exc:
        raise _impatient(store, blocking, timeout, str(exc)) from None
    try:
        if view is not None and not view.tickets and not view.markers:
            claim = False  # nobody ahead, nothing to claim: the turn is ours at once
        else:
            waiter = _Waiter(store, me, slots, deadline, blocking, patience)
            waiter.on_progress, waiter.owner, waiter.holdings = on_progress, owner, holdings
            claim = waiter.wait_for_front(view)
        store.mark_acquired(me, time.time())
        dead = store.claim_abandoned(me) if claim else None
    except GuardTaken as exc:
        store.leave(me)
        raise _impatient(store, blocking, timeout, str(exc)) from None
    except BaseException:
        store.leave(me)
        raise
    holdings.add(store, me.number, owner)
    return Held(me, dead)


def give_back(store: LineStore, me: Membership, holdings: Holdings = HOLDINGS) -> None:
    store.leave(me)  # first: the next in line wakes the moment this returns
    holdings.discard(store, me.number)


class _Waiter:
    """One caller's wait for the front of the line."""

    on_progress: ProgressCallback | None = None
    owner: object = None
    holdings: Holdings = HOLDINGS

    def __init__(
        self,
        store: LineStore,
        me: Membership,
        slots: int,
        deadline: float | None,
        blocking: bool,
        patience: Patience,
    ) -> None:
        self.store = store
        self.me = me
        self.slots = slots
        self.deadline = deadline
        self.blocking = blocking
        self.patience = patience
        self.first_seen: dict[int, float] = {}  # unclaimed marker -> when we first saw it

    def wait_for_front(self, view: View | None) -> bool:
        """Sleep until fewer than ``slots`` live tickets are ahead; True if a marker waits.

        Tickets only ever join behind us, so when every ticket ahead was live and watched, the
        ones ahead after waking are among those, less the ones the wait saw leave cleanly:
        the next look is then skipped.
        """
        store, me, slots = self.store, self.me, self.slots
        while True:
            if view is None:
                view = store.look(me)
            now = time.monotonic()
            pending = set(view.markers)
            ahead = view.tickets
            if view.alive is not None:
                liveness: Sequence[bool] = view.alive
            else:
                liveness = store.alive(ahead, me) if ahead else []
            live: list[int] = []
            for number, ok in zip(ahead, liveness, strict=True):
                if ok:
                    live.append(number)
                elif store.bury(number, me, self.patience):
                    pending.add(number)
            for marker in pending:
                self.first_seen.setdefault(marker, now)
            if len(live) < slots:
                if self._lock_delay(pending):
                    view = None
                    continue
                return bool(pending)
            if not self.blocking:
                raise Busy(_full_message(store, me, live, slots), store.status())
            remaining = self._remaining()
            watch = live[-slots:]
            if remaining is None and self.holdings.all_owned_by(store, watch, self.owner):
                raise InturnError(
                    f"this {_kind(self.owner)} already holds line {store.name!r} and would wait "
                    "for itself forever: turns are not re-entrant (release the first, or use "
                    "slots=2)"
                )
            if self.on_progress is not None:
                self.on_progress(Progress(me.number, len(live) + 1, tuple(live), tuple(watch)))
            number = me.number
            woke = store.wait(me, watch, remaining, self.patience.cancel)
            if woke is None:
                raise Timeout(f"gave up waiting for line {store.name!r}", store.status())
            if woke.view is not None:
                view = woke.view
            elif me.number != number:  # it took a new place (a lost connection): look again
                view = None
            elif list(ahead) == live == watch and not pending:
                view = View(tuple(n for n in watch if n not in woke.left))
            else:
                view = None

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"gave up waiting for line {self.store.name!r}", self.store.status())
        return remaining

    def _lock_delay(self, pending: set[int]) -> bool:
        """Wait out the lock delay after an unclean end (or after losing sight of the line);
        True if it waited (look again)."""
        delay = self.store.lock_delay
        if delay <= 0:
            return False
        since = [self.first_seen[m] for m in pending]
        if self.me.lost_track_at is not None:
            since.append(self.me.lost_track_at)
        if not since:
            return False
        until = max(since) + delay
        left = until - time.monotonic()
        if left <= 0:
            return False
        name = self.store.name
        if not self.blocking:
            raise Busy(
                f"line {name!r} is free in {left:.1f}s: the last turn ended uncleanly and "
                f"the line waits {delay:g}s (lock delay) for its holder to have stopped",
                self.store.status(),
            )
        remaining = self._remaining()
        if remaining is not None and remaining < left:
            pause(remaining, self.patience.cancel, name)
            raise Timeout(f"gave up waiting for line {name!r}", self.store.status())
        pause(left, self.patience.cancel, name)
        return True


def _kind(owner: object) -> str:
    return "thread" if isinstance(owner, threading.Thread) else "task"


def _impatient(store: LineStore, blocking: bool, timeout: float | None, why: str) -> Exception:
    if blocking:
        return Timeout(f"gave up waiting for line {store.name!r} ({why})", store.status())
    return Busy(f"line {store.name!r} is busy: {why}", store.status())


def _full_message(store: LineStore, me: Membership, live: list[int], slots: int) -> str:
    holders = [t for t in store.read(live[:slots], me) if t is not None]
    who = ", ".join(f"{t.describe()}{_since(t)}" for t in holders) or "another process"
    return f"line {store.name!r} is busy: held by {who}"


def _since(ticket: Ticket) -> str:
    if ticket.acquired_at is None:
        return ""
    return f" since {time.strftime('%H:%M:%S', time.localtime(ticket.acquired_at))}"
