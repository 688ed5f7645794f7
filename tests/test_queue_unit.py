"""The queue algorithm alone, on a line kept in memory: fast, and the same on every run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest
from memory_store import MemoryStore, World

import inturn
from inturn.backends.base import Membership, Patience
from inturn.queue import Held, Holdings, give_back, take_turn
from inturn.records import Progress, Ticket

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


def test_two_dead_holders_are_claimed_one_each_by_the_waiters_behind():
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


def test_markers_found_together_are_claimed_oldest_first_one_per_holder():
    """Three holders die before anyone looks: the next holder buries all three and is told of
    the oldest; each holder after it of the next one; then nobody."""
    world, store = line()
    holders = [take_turn(store(), slots=3, command=(f"h{i}",)) for i in range(3)]
    for held in holders:
        store().kill(held.membership.number)
    told = []
    for _ in range(4):
        each = store()
        held = take_turn(each, slots=3)
        told.append(held.abandoned_by.command if held.abandoned_by is not None else None)
        give_back(each, held.membership)
    assert told == [("h0",), ("h1",), ("h2",), None]
    assert world.markers == {} and world.records == {}


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
    with pytest.raises(inturn.Timeout):
        take_turn(store(), timeout=0.01)
    holder = store()
    started = time.monotonic()
    held = take_turn(holder, blocking=False)  # nobody holds: the delay is waited out
    assert time.monotonic() - started >= 0.2
    assert held.abandoned_by is not None  # told, once the delay had passed
    give_back(holder, held.membership)
    assert take_turn(store(), blocking=False).abandoned_by is None


def test_a_turn_won_after_the_callers_patience_still_has_time_to_claim_the_dead():
    """A non-blocking caller waits out the lock delay (longer here than its patience for a
    guard), then claims the dead holder's marker under the line's guard: the claim gets time
    of its own, or a guard held for a moment by anyone would make it give the won turn back."""
    world, store = line(lock_delay=1.2)
    dead_store = store()
    dead_store.kill(take_turn(dead_store).membership.number)
    given: list[float | None] = []

    class Recording(MemoryStore):
        def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
            given.append(patience.remaining())
            return super().claim_abandoned(me, patience)

    held = take_turn(Recording(world, lock_delay=1.2), blocking=False)
    assert held.abandoned_by is not None
    assert given and given[0] is not None and given[0] > 0


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


# --------------------------------------------------------------------------- shared turns


def test_readers_behind_a_writer_go_in_together_and_a_later_reader_waits_for_a_writer():
    _, store = line()
    writer_store = store()
    writer = take_turn(writer_store)
    readers = []
    for _ in range(3):
        reader = Waiter(store(), shared=True)
        assert reader.queued.wait(WAIT)
        readers.append(reader)
    second_writer = Waiter(store())
    assert second_writer.queued.wait(WAIT)
    late_reader = Waiter(store(), shared=True)
    assert late_reader.queued.wait(WAIT)
    # Each reader sleeps on the writer ahead of it, the second writer on the last reader.
    assert {r.store.watched[-1] for r in readers} == {(writer.membership.number,)}
    assert second_writer.store.watched[-1] == (readers[-1].progress[0].ticket,)
    assert late_reader.store.watched[-1] == (second_writer.progress[0].ticket,)
    give_back(writer_store, writer.membership)
    held = [r.held() for r in readers]  # all three hold at once
    assert second_writer.thread.is_alive() and late_reader.thread.is_alive()
    for reader, turn in zip(readers, held, strict=True):
        give_back(reader.store, turn.membership)
    give_back(second_writer.store, second_writer.held().membership)
    late_reader.held()


def test_policies_decided_by_arrival_order():
    _, store = line()
    holder = take_turn(store())
    first = Waiter(store(), max_waiting=1)
    assert first.queued.wait(WAIT)
    with pytest.raises(inturn.Busy, match="already has 1 waiting"):
        take_turn(store(), max_waiting=1)
    with pytest.raises(inturn.UsageError, match=r"slots=1.*not slots=2"):
        take_turn(store(), slots=2)
    replaceable = Waiter(store(), newest_wins=True)
    assert replaceable.queued.wait(WAIT)
    newest = Waiter(store(), newest_wins=True)
    assert newest.queued.wait(WAIT)
    replaceable.thread.join(WAIT)
    assert isinstance(replaceable.error, inturn.Replaced)
    assert first.thread.is_alive()  # it did not ask for newest_wins: not replaced
    give_back(store(), holder.membership)
    give_back(store(), first.held().membership)
    newest.held()


def test_slots_are_checked_against_every_ticket_ahead_not_only_the_nearest():
    """A ticket of another slots that has joined but not yet been refused (its first look
    comes after ours) must not vouch for ours: the holder ahead gave slots=1, and a run with
    slots=2 behind both would otherwise hold beside it."""
    _, store = line()
    holder = take_turn(store())
    odd_store = store()
    odd, _ = odd_store.join(Ticket(0, slots=2), Patience())  # in line, not yet refused
    with pytest.raises(inturn.UsageError, match=r"slots=1.*not slots=2"):
        take_turn(store(), slots=2, blocking=False)
    odd_store.leave(odd)
    give_back(store(), holder.membership)


def test_a_long_timeout_is_slept_in_steps_that_each_end_in_a_look(monkeypatch):
    """A timeout longer than ``LONGEST_SLEEP`` (a day) is slept in steps: each step that ends
    with the turn still taken looks at the line again and sleeps on; the timeout itself still
    ends the wait with ``Timeout``. (The step is made short here.)"""
    import inturn.backends.base

    monkeypatch.setattr(inturn.backends.base, "LONGEST_SLEEP", 0.01)
    _, store = line()
    holder = take_turn(store())
    with pytest.raises(inturn.Timeout):
        take_turn(store(), timeout=0.1)
    behind = store()
    waiter = Waiter(behind, timeout=WAIT)
    assert waiter.queued.wait(WAIT)
    looks = behind.calls["look"]
    deadline = time.monotonic() + WAIT
    while behind.calls["look"] < looks + 3:  # steps come and go; it stays in line
        assert waiter.thread.is_alive() and time.monotonic() < deadline
        waiter.thread.join(0.01)
    give_back(store(), holder.membership)
    waiter.held()


def test_a_dead_reader_is_told_to_the_next_writer_not_to_a_reader():
    _, store = line()
    reader_store = store()
    dead = take_turn(reader_store, shared=True, command=("reader",))
    alongside_store = store()
    alongside = take_turn(alongside_store, shared=True)
    reader_store.kill(dead.membership.number)
    third_store = store()
    third = take_turn(third_store, shared=True)
    assert third.abandoned_by is None  # readers share the turn: not told
    writer = Waiter(store())
    assert writer.queued.wait(WAIT)
    give_back(alongside_store, alongside.membership)
    give_back(third_store, third.membership)
    told = writer.held().abandoned_by
    assert told is not None and told.command == ("reader",)


def test_a_barrier_waits_for_those_in_line_only():
    from inturn.queue import wait_for_everyone

    _, store = line()
    first_store = store()
    first = take_turn(first_store)
    done = threading.Event()
    barrier = threading.Thread(target=lambda: (wait_for_everyone(store()), done.set()))
    barrier.start()
    later = Waiter(store())  # arrives after the barrier began: not waited for
    assert later.queued.wait(WAIT)
    assert not done.is_set()
    give_back(first_store, first.membership)
    assert done.wait(WAIT)
    later.held()
    with pytest.raises(inturn.Timeout):
        wait_for_everyone(store(), timeout=0.01)


class _PlaceLostWhileLooking(MemoryStore):
    """A server store whose waiter loses its place in the middle of a look (its lease ran
    out, its session ended) and takes a new one at the back, as the Redis and PostgreSQL
    stores do: ``meanwhile`` is what the others did while it was away."""

    def __init__(self, world: World, meanwhile: Callable[[], None]) -> None:
        super().__init__(world)
        self.meanwhile: Callable[[], None] | None = meanwhile

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        if self.meanwhile is not None and me is not None:
            happen, self.meanwhile = self.meanwhile, None
            self.kill(me.number)  # the old place is gone
            happen()
            again, _ = self.join(Ticket.from_header(0, {}, None), Patience())
            me.number, me.lost_track_at = again.number, time.monotonic()
        return super().alive(numbers, me)


def test_a_waiter_that_took_a_new_place_during_a_look_looks_again_before_holding():
    """With the lock delay off, a look that answered for the old place (nobody alive ahead
    of it) must not hand the turn to the new place: those who joined in between, one of
    whom took the turn meanwhile, are ahead of it now."""
    world, store = line()
    holder_store = store()
    holder = take_turn(holder_store)
    between: list[Held] = []

    def meanwhile() -> None:
        give_back(holder_store, holder.membership)  # the holder leaves cleanly
        later = take_turn(store(), owner=object())  # another process, in truth
        between.append(later)  # it came later, buried our place, and holds

    moving = _PlaceLostWhileLooking(world, meanwhile)
    waiter = Waiter(moving)
    assert waiter.queued.wait(WAIT) and waiter.error is None, waiter.error
    assert waiter.result is None  # asleep behind the one who holds
    (took,) = between
    assert moving.watched[-1] == (took.membership.number,)
    give_back(store(), took.membership)
    assert waiter.held().membership.number > took.membership.number


class _HandedOverWhileReading(MemoryStore):
    """A store that reads a status's records one by one, as the local one does, while the
    turn passes between the first record and the next (``meanwhile``)."""

    def __init__(self, world: World, meanwhile: Callable[[], None]) -> None:
        super().__init__(world)
        self.meanwhile: Callable[[], None] | None = meanwhile

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        found: list[Ticket | None] = []
        for number in numbers:
            found += super().read([number], me)
            if self.meanwhile is not None:
                happen, self.meanwhile = self.meanwhile, None
                happen()
        return found


def test_a_status_read_as_the_turn_passes_never_shows_two_holders_of_one_slot():
    """The holder is read, then leaves, and the next one is marked holding before its record
    is read: the status shows one holder (the one holding by the end), never both."""
    world, store = line()
    holder_store = store()
    holder = take_turn(holder_store)
    next_store = store()
    waiter = Waiter(next_store)
    assert waiter.queued.wait(WAIT) and waiter.result is None

    def meanwhile() -> None:
        give_back(holder_store, holder.membership)
        waiter.held()

    status = _HandedOverWhileReading(world, meanwhile).status()
    assert [t.number for t in status.holders] == [waiter.held().membership.number]


class _Asking(MemoryStore):
    """Counts the tickets whose liveness it is asked, and the waits that began."""

    def __init__(self, world: World, asked: list[int], waits: threading.Semaphore) -> None:
        super().__init__(world)
        self.asked = asked
        self.waits = waits

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        self.asked.append(len(numbers))
        return super().alive(numbers, me)

    def wait(self, me, numbers, timeout, cancel, then_holds=False):  # type: ignore[no-untyped-def]
        self.waits.release()
        return super().wait(me, numbers, timeout, cancel, then_holds)


def test_a_burst_of_waiters_asks_about_a_few_tickets_each_not_every_one_ahead():
    """N waiters joining one line at once: each asks about the nearest live ticket (and the
    oldest, for the slots check), not about all those ahead, at its join and at each wake;
    N * N questions in all made a burst of a few hundred waiters in one process crawl."""
    world = World()
    asked: list[int] = []
    waits = threading.Semaphore(0)
    holder = take_turn(MemoryStore(world))
    count = 60
    helds: list[Held] = []

    def one() -> None:
        held = take_turn(_Asking(world, asked, waits))
        helds.append(held)
        give_back(MemoryStore(world), held.membership)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for _ in range(count):
        assert waits.acquire(timeout=WAIT)
    assert sum(asked) <= 3 * count, sum(asked)  # all asleep in line: at most a few each
    give_back(MemoryStore(world), holder.membership)
    for thread in threads:
        thread.join(WAIT)
    assert len(helds) == count
    assert [h.membership.number for h in helds] == sorted(h.membership.number for h in helds)
    assert sum(asked) <= 6 * count, sum(asked)
    assert not world.records


def test_a_ticket_of_other_slots_is_refused_before_it_holds_beside_one_it_never_read():
    """Refused tickets still in line (their refusal not yet acted on) can be the oldest and
    the nearest ones when a ticket joins, so that they vouch for its slots while a live
    ticket between them gave another: that ticket must be read before this one holds beside
    it, or slots=2 holds beside a run that asked for slots=1."""
    world, store = line()
    joined = {}
    for name, slots in (("oldest", 2), ("single", 1), ("near", 2), ("nearest", 2)):
        joined[name] = store().join(Ticket(0, slots=slots), Patience())[0]
    waits = threading.Semaphore(0)
    errors: list[BaseException] = []

    def join() -> None:
        try:
            give_back(store(), take_turn(_Asking(world, [], waits), slots=2).membership)
        except inturn.UsageError as exc:
            errors.append(exc)

    thread = threading.Thread(target=join, daemon=True)
    thread.start()
    if waits.acquire(timeout=WAIT):  # asleep in line: the refusals are acted on
        for name in ("oldest", "near", "nearest"):
            store().leave(joined[name])
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(errors) == 1 and "slots=1" in str(errors[0]), errors
    store().leave(joined["single"])
    assert not world.records


class _Remote(MemoryStore):
    """A store whose every question is a round trip: counts the liveness questions."""

    remote = True

    def __init__(self, world: World, asked: list[int]) -> None:
        super().__init__(world)
        self.asked = asked

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        self.asked.append(len(numbers))
        return super().alive(numbers, me)


def test_a_reader_on_a_server_asks_about_the_readers_ahead_in_one_question():
    """On a server one question about many tickets costs what one about one ticket does: a
    reader behind many readers asks once, not once for each of them."""
    world, store = line()
    readers = [take_turn(store(), shared=True) for _ in range(20)]
    asked: list[int] = []
    held = take_turn(_Remote(world, asked), shared=True, timeout=WAIT)
    assert len(asked) == 1, asked
    for turn in [*readers, held]:
        give_back(store(), turn.membership)
    assert not world.records
