"""The queue algorithm, written once for every backend.

A joiner takes the next ticket. It holds the turn when fewer than ``slots`` live tickets are
ahead of it. Otherwise it sleeps until one of the ``slots`` live tickets *directly* ahead of it
dies or leaves, then looks again. That wake-up is necessary and sufficient: while those
``slots`` tickets live, at least ``slots`` are ahead, so nobody wakes for nothing beyond them,
and with ``slots=1`` only the waiter right behind a leaver wakes. Order is by ticket number, so
first come, first served holds on every backend by construction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .errors import Busy, InturnError, Timeout
from .records import LineStatus, Ticket, own_ticket_fields
from .store import CancelToken, LineStore, Membership


class Progress(NamedTuple):
    """Where a waiter stands each time it goes back to sleep."""

    ticket: int  # the waiter's own ticket
    position: int  # 1-based place in the whole line, holders included
    ahead: tuple[int, ...]  # live tickets ahead, oldest first
    waiting_on: tuple[int, ...]  # the ones whose leaving wakes us


ProgressCallback = Callable[[Progress], None]

# Tickets held by each thread, to refuse a wait that could only end when this thread releases.
_held_by_thread: dict[tuple[str, str, int], int] = {}
_held_lock = threading.Lock()


def _key(store: LineStore, number: int) -> tuple[str, str, int]:
    return (store.where, store.name, number)


def take_turn(
    store: LineStore,
    *,
    slots: int = 1,
    timeout: float | None = None,
    blocking: bool = True,
    command: tuple[str, ...] | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[Membership, bool, Ticket | None]:
    """Join ``store``'s line and return once this caller holds the turn.

    Returns the membership, whether the previous holder abandoned the turn, and its record.
    Any exception (timeout, busy, Ctrl-C) leaves the line before it propagates.
    """
    if slots < 1:
        raise ValueError("slots must be at least 1")
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    me = store.join(own_ticket_fields(command, slots))
    try:
        abandoned_seen = _wait_for_front(store, me, slots, deadline, blocking, on_progress, cancel)
        store.mark_acquired(me, time.time())
        dead = store.claim_abandoned() if abandoned_seen else None
    except BaseException:
        store.leave(me)
        raise
    with _held_lock:
        _held_by_thread[_key(store, me.number)] = threading.get_ident()
    return me, dead is not None, dead


def give_back(store: LineStore, me: Membership) -> None:
    store.leave(me)  # first: the next in line wakes the moment this returns
    with _held_lock:
        _held_by_thread.pop(_key(store, me.number), None)


def _wait_for_front(
    store: LineStore,
    me: Membership,
    slots: int,
    deadline: float | None,
    blocking: bool,
    on_progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> bool:
    """Sleep until fewer than ``slots`` live tickets are ahead; True if markers may be waiting.

    Tickets only ever join behind us, so when every ticket ahead was live and watched, the
    ones ahead after waking are among those: a local store then skips listing the line
    again (a remote one reads the line and its liveness in one round trip anyway).
    """
    only_watched: list[int] | None = None
    markers = False
    while True:
        if only_watched is None:
            snap = store.snapshot()
            ahead = [n for n in snap.tickets if n < me.number]
            markers = bool(snap.abandoned)
        else:
            ahead = only_watched
        live = []
        if ahead:
            # Check even when fewer than ``slots`` are present, so that a dead holder ahead of
            # us is buried (and reported as abandoned) before we take its place.
            for number, ok in zip(ahead, store.alive(ahead), strict=True):
                if ok:
                    live.append(number)
                elif store.bury(number):
                    markers = True
        if len(live) < slots:
            return markers
        if not blocking:
            raise Busy(_full_message(store, live, slots), store.status())
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(f"gave up waiting for line {store.name!r}", store.status())
        watch = live[-slots:]
        if remaining is None:
            _refuse_self_wait(store, watch)
        if on_progress is not None:
            on_progress(Progress(me.number, len(live) + 1, tuple(live), tuple(watch)))
        if not store.wait_any(watch, remaining, cancel):
            raise Timeout(f"gave up waiting for line {store.name!r}", store.status())
        everyone_watched = live == ahead == watch and not markers
        only_watched = watch if everyone_watched and not store.remote else None


def _refuse_self_wait(store: LineStore, watch: list[int]) -> None:
    me = threading.get_ident()
    with _held_lock:
        if all(_held_by_thread.get(_key(store, n)) == me for n in watch):
            raise InturnError(
                f"this thread already holds line {store.name!r} and would wait for itself "
                "forever: turns are not re-entrant (release the first, or use slots=2)"
            )


def _full_message(store: LineStore, live: list[int], slots: int) -> str:
    holders = [t for t in store.read(live[:slots]) if t is not None]
    who = ", ".join(f"{t.describe()}{_since(t)}" for t in holders) or "another process"
    return f"line {store.name!r} is busy: held by {who}"


def _since(ticket: Ticket) -> str:
    if ticket.acquired_at is None:
        return ""
    return f" since {time.strftime('%H:%M:%S', time.localtime(ticket.acquired_at))}"


def status_of(store: LineStore) -> LineStatus:
    return store.status()
