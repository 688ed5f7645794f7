"""The queue algorithm alone, on a line kept in memory: fast, and the same on every run."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from memory_store import MemoryStore, World

import inturn
from inturn.backends.base import Patience
from inturn.queue import Held, Holdings, Progress, give_back, take_turn
from inturn.records import Ticket

WAIT = 60.0  # how long a test waits for a thread it expects to finish (a hang fails)


class Waiter:
    """``take_turn`` in a thread of its own; ``queued`` is set once it sleeps in line."""

    def __init__(self, store: MemoryStore, **options: object) -> None:
        self.store = store
        self.queued = threading.Event()
        self.progress: list[Progress] = []
        self.result: Held | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(options,), daemon=True)
        self.thread.start()

    def _run(self, options: dict[str, object]) -> None:
        def on_progress(progress: Progress) -> None:
            self.progress.append(progress)
            self.queued.set()

        try:
            self.result = take_turn(self.store, on_progress=on_progress, **options)
        except BaseException as exc:
            self.error = exc
        self.queued.set()

    def held(self) -> Held:
        self.thread.join(WAIT)
        assert not self.thread.is_alive() and self.error is None, self.error
        assert self.result is not None
        return self.result


def line(**options: object) -> tuple[World, Callable[[], MemoryStore]]:
    world = World()
    return world, lambda: MemoryStore(world, **options)


def test_the_one_behind_a_clean_leaver_takes_over_without_looking_again():
    _, store = line()
    first = take_turn(store())
    behind = store()
    waiter = Waiter(behind)
    assert waiter.queued.wait(WAIT)
    looks = behind.calls["look"]
    give_back(store(), first.membership)
    held = waiter.held()
    assert held.abandoned_by is None
    assert behind.calls["look"] == looks  # the wait said the one ahead left cleanly
    assert behind.calls["claim"] == 0  # and no marker was seen: nothing to claim


def test_a_dead_holder_is_reported_once_to_the_next_holder_only():
    _, store = line()
    dead = take_turn(store(), command=("crashed",))
    next_store, last_store = store(), store()
    nxt = Waiter(next_store)
    assert nxt.queued.wait(WAIT)
    last = Waiter(last_store)
    assert last.queued.wait(WAIT)
    next_store.kill(dead.membership.number)
    held = nxt.held()
    assert held.abandoned_by is not None and held.abandoned_by.command == ("crashed",)
    give_back(next_store, held.membership)
    assert last.held().abandoned_by is None


def test_a_dead_waiter_abandons_nothing():
    _, store = line()
    holder_store = store()
    holder = take_turn(holder_store)
    doomed_store, behind_store = store(), store()
    doomed, _ = doomed_store.join(Ticket(0), Patience())  # in line, not holding
    behind = Waiter(behind_store)
    assert behind.queued.wait(WAIT)
    doomed_store.kill(doomed.number)
    give_back(holder_store, holder.membership)
    assert behind.held().abandoned_by is None


def test_with_slots_a_waiter_watches_the_n_live_tickets_right_ahead():
    _, store = line(lock_delay=0.0)
    holders = [take_turn(store(), slots=2) for _ in range(2)]
    first_store = store()
    first = Waiter(first_store, slots=2)
    assert first.queued.wait(WAIT)
    second_store = store()
    second = Waiter(second_store, slots=2)
    assert second.queued.wait(WAIT)
    numbers = [h.membership.number for h in holders]
    assert first_store.watched[-1] == tuple(numbers)
    assert second_store.watched[-1] == (numbers[1], first.progress[0].ticket)
    give_back(store(), holders[1].membership)  # the younger holder leaves first
    assert first.held().abandoned_by is None
    assert second.thread.is_alive()  # still two ahead of it: the first holder and `first`


def test_two_dead_holders_are_claimed_one_each_lowest_first():
    _, store = line()
    holders = [take_turn(store(), slots=2, command=(f"h{i}",)) for i in range(2)]
    stores = [store(), store()]
    waiters = []
    for each in stores:
        waiter = Waiter(each, slots=2)
        assert waiter.queued.wait(WAIT)
        waiters.append(waiter)
    for held in holders:
        stores[0].kill(held.membership.number)
    told = [w.held().abandoned_by for w in waiters]
    assert sorted(t.command for t in told if t is not None) == [("h0",), ("h1",)]


def test_waiting_on_yourself_forever_is_refused_but_another_owner_waits():
    _, store = line()
    owner = object()
    holdings = Holdings()
    held = take_turn(store(), owner=owner, holdings=holdings)
    with pytest.raises(inturn.InturnError, match="not re-entrant"):
        take_turn(store(), owner=owner, holdings=holdings)
    with pytest.raises(inturn.Timeout):
        take_turn(store(), owner=owner, holdings=holdings, timeout=0.01)
    other = Waiter(store(), owner=object(), holdings=holdings)
    assert other.queued.wait(WAIT)
    give_back(store(), held.membership, holdings)
    assert other.held().abandoned_by is None


def test_busy_at_once_and_the_line_left_clean():
    world, store = line()
    held = take_turn(store())
    with pytest.raises(inturn.Busy, match="busy"):
        take_turn(store(), blocking=False)
    assert sorted(world.records) == [held.membership.number]


def test_a_guard_held_elsewhere_is_busy_or_a_timeout_not_a_hang():
    world, store = line()
    world.guard_taken = True
    with pytest.raises(inturn.Busy, match="guard"):
        take_turn(store(), blocking=False)
    with pytest.raises(inturn.Timeout, match="guard"):
        take_turn(store(), timeout=0.01)


def test_after_an_unclean_end_the_next_holder_waits_the_lock_delay():
    _, store = line(lock_delay=0.2)
    dead_store = store()
    dead = take_turn(dead_store)
    dead_store.kill(dead.membership.number)
    with pytest.raises(inturn.Busy, match="lock delay"):
        take_turn(store(), blocking=False)
    with pytest.raises(inturn.Timeout):
        take_turn(store(), timeout=0.01)
    holder = store()
    held = take_turn(holder)
    assert held.abandoned_by is not None  # told, once the delay had passed
    give_back(holder, held.membership)
    assert take_turn(store(), blocking=False).abandoned_by is None


def test_a_cancelled_wait_leaves_the_line():
    world, store = line()
    take_turn(store())
    token = inturn.CancelToken()
    waiter = Waiter(store(), cancel=token)
    assert waiter.queued.wait(WAIT)
    token.cancel()
    waiter.thread.join(WAIT)
    assert isinstance(waiter.error, inturn.Cancelled)
    assert len(world.records) == 1
