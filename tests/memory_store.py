"""A line kept in memory, for fast, deterministic tests of the queue algorithm alone.

Several ``MemoryStore`` objects on one ``World`` behave like processes sharing a line; ``kill``
frees a ticket's liveness lock without leaving, as a crash does. Every call is counted in
``calls``, so a test can check what the queue asked for, and ``wait`` records what it watched.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

from inturn.backends.base import (
    CancelToken,
    GuardTaken,
    LineStore,
    Membership,
    Patience,
    View,
    Woke,
)
from inturn.errors import Cancelled, Replaced
from inturn.records import Ticket


class World:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.next = 1
        self.records: dict[int, Ticket] = {}  # tickets present, live or dead
        self.live: set[int] = set()
        self.markers: dict[int, Ticket] = {}  # unclaimed
        self.left_cleanly: set[int] = set()
        self.guard_taken = False  # someone outside holds the guard
        self.replaced: dict[int, int] = {}  # ticket -> the newest_wins ticket that replaced it


class Member(Membership):
    def __init__(self, number: int) -> None:
        self.number = number


class MemoryStore(LineStore):
    def __init__(self, world: World, name: str = "memory", lock_delay: float = 0.0) -> None:
        self.world = world
        self.name = name
        self.lock_delay = lock_delay
        self.calls: Counter[str] = Counter()
        self.watched: list[tuple[int, ...]] = []

    def join(self, me: Ticket, patience: Patience) -> tuple[Membership, View | None]:
        self.calls["join"] += 1
        w = self.world
        with w.changed:
            if w.guard_taken:
                raise GuardTaken("its guard is held by another process")
            number, w.next = w.next, w.next + 1
            w.records[number] = me._replace(number=number)
            w.live.add(number)
            ahead = tuple(n for n in sorted(w.records) if n < number)
            member = Member(number)
            member.shared = me.shared
            return member, View(ahead, tuple(sorted(w.markers)), shared=self._shared())

    def _shared(self) -> frozenset[int]:
        return frozenset(n for n, t in self.world.records.items() if t.shared)

    def look(self, me: Membership | None) -> View:
        self.calls["look"] += 1
        w = self.world
        with w.changed:
            tickets = sorted(n for n in w.records if me is None or n < me.number)
            return View(tuple(tickets), tuple(sorted(w.markers)), shared=self._shared())

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        self.calls["alive"] += 1
        with self.world.changed:
            return [n in self.world.live for n in numbers]

    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        self.calls["bury"] += 1
        w = self.world
        with w.changed:
            record = w.records.get(number)
            if record is not None and number not in w.live:
                del w.records[number]
                if record.holding:
                    w.markers[number] = record
            return number in w.markers

    def wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool = False,
    ) -> Woke | None:
        self.calls["wait"] += 1
        self.watched.append(tuple(numbers))
        cancelled = threading.Event()
        if cancel is not None:
            with cancel.linked(cancelled):
                threading.Thread(target=self._relay, args=(cancelled,), daemon=True).start()
                return self._wait(me, numbers, timeout, cancelled, cancel)
        return self._wait(me, numbers, timeout, cancelled, cancel)

    def _relay(self, cancelled: threading.Event) -> None:
        cancelled.wait()
        with self.world.changed:
            self.world.changed.notify_all()

    def _wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancelled: threading.Event,
        cancel: CancelToken | None,
    ) -> Woke | None:
        w = self.world
        with w.changed:
            mine = -1 if me is None else me.number
            done = w.changed.wait_for(
                lambda: (
                    cancelled.is_set()
                    or mine in w.replaced
                    or any(n not in w.live for n in numbers)
                ),
                timeout,
            )
            if cancel is not None and cancel.cancelled:
                raise Cancelled("stopped waiting")
            if mine in w.replaced:
                raise Replaced(f"ticket {w.replaced[mine]} replaced this one")
            if not done:
                return None
            return Woke(left=tuple(n for n in numbers if n in w.left_cleanly))

    def mark_acquired(self, me: Membership, when: float, patience: Patience) -> None:
        with self.world.changed:
            self.world.records[me.number] = self.world.records[me.number]._replace(acquired_at=when)

    def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
        self.calls["claim"] += 1
        with self.world.changed:
            ours = [n for n, t in self.world.markers.items() if not (me.shared and t.shared)]
            return self.world.markers.pop(min(ours)) if ours else None

    def leave(self, me: Membership) -> None:
        w = self.world
        with w.changed:
            w.records.pop(me.number, None)
            if me.number in w.live:
                w.live.discard(me.number)
                w.left_cleanly.add(me.number)
            w.changed.notify_all()

    def replace(self, number: int, me: Membership) -> None:
        with self.world.changed:
            self.world.replaced[number] = me.number
            self.world.changed.notify_all()

    def forget(self, patience: Patience) -> bool:
        self.calls["forget"] += 1
        w = self.world
        with w.changed:
            if w.records:
                return False
            w.markers.clear()
            w.left_cleanly.clear()
            return True

    def kill(self, number: int) -> None:
        """The owner of ``number`` dies: its lock goes, its record stays until buried."""
        with self.world.changed:
            self.world.live.discard(number)
            self.world.changed.notify_all()

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        with self.world.changed:
            return [self.world.records.get(n) for n in numbers]
