"""asyncio: one deterministic test for each way tasks used to break a line (and a thread id).

* a task that arrives while another task of the same loop holds the line waits its turn,
  and so does a new thread that happens to get an exited thread's id;
* one ``turn()`` object entered by two tasks: each leaves with its own ticket;
* more waiting tasks than the default executor has threads cannot starve the holder;
* cancellation, once or many times, at any moment, never leaks a turn.

Each runs on the local folder, PostgreSQL and Redis (``where``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import inturn

from conftest import REPORT_TIMEOUT, Where, run_async

# The most threads a default executor has (asyncio: ``min(32, os.cpu_count() + 4)``).
EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)
# A bound that only detects a hang: a thread of a free executor starts in microseconds.
HANG = 20.0


async def until(condition: Callable[[], bool], *tasks: asyncio.Task[Any]) -> None:
    """Watch (not guess) until ``condition()`` holds or one of ``tasks`` has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPORT_TIMEOUT
    while not condition() and not any(task.done() for task in tasks):
        assert loop.time() < deadline, "the line never reached the state the test waits for"
        await asyncio.sleep(0.002)


def in_line(line: inturn.Line, waiters: int) -> Callable[[], bool]:
    return lambda: len(line.status().waiters) >= waiters


def assert_waiting(task: asyncio.Task[Any]) -> None:
    """``task`` is still waiting in line; if it ended, what it raised is the failure.

    (Its exception is always retrieved here: an asyncio task that dies unretrieved logs from
    its finaliser, which on CPython 3.11 can break pytest's own error report.)
    """
    if task.done():
        task.result()
        raise AssertionError("the task got the turn while another task held it")


def assert_clean(line: inturn.Line, what: str = "") -> None:
    status = line.status()
    assert status.holders == () and status.waiters == (), f"{what}: left in line: {status}"


# --------------------------------------------------------------------------- (a) who waits for whom


@pytest.mark.parametrize("executor", ["default", "one thread"])
def test_a_task_arriving_while_another_task_holds_waits_its_turn(where: Where, executor: str):
    """Not "would wait for itself forever": the holder is another task, which will leave.

    With a one-thread executor (a choice a program may make) the second wait runs on the
    very thread that took the first turn, which is how a thread-keyed guard misfires.
    """
    line = inturn.Line("arrive")

    async def scenario() -> None:
        if executor == "one thread":
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        first = await inturn.acquire_async(line)
        second = asyncio.create_task(inturn.acquire_async(line))
        await until(in_line(line, 1), second)
        assert_waiting(second)
        first.release()
        held = await second
        assert held.held and held.ticket > first.ticket
        held.release()

    run_async(scenario)
    assert_clean(line)


def test_a_task_using_async_with_while_another_holds_waits_its_turn(where: Where):
    """The same through ``async with inturn.turn(...)``, the form programs write."""
    order: list[str] = []

    async def holder(inside: asyncio.Event, leave: asyncio.Event) -> None:
        async with inturn.turn("arrive-with"):
            order.append("first in")
            inside.set()
            await leave.wait()
            order.append("first out")

    async def second() -> None:
        async with inturn.turn("arrive-with"):
            order.append("second in")

    async def scenario() -> None:
        inside, leave = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(holder(inside, leave))
        await inside.wait()
        waiting = asyncio.create_task(second())
        line = inturn.Line("arrive-with")
        await until(in_line(line, 1), waiting)
        assert_waiting(waiting)
        leave.set()
        await asyncio.gather(first, waiting)

    run_async(scenario)
    assert order == ["first in", "first out", "second in"]
    assert_clean(inturn.Line("arrive-with"))


def test_a_new_thread_with_an_exited_threads_id_is_not_refused(where: Where):
    """A thread takes a turn, hands it out and exits; a new thread (often given the same
    id by the C library) waits for that turn without a timeout: it must simply wait."""
    line = inturn.Line("reuse")
    reused = 0
    for attempt in range(30):
        handed: list[inturn.Turn] = []

        def take(handed: list[inturn.Turn] = handed) -> None:
            handed.append(line.acquire())  # and exit, still holding: the turn is handed out

        taker = threading.Thread(target=take)
        taker.start()
        taker.join(REPORT_TIMEOUT)
        assert handed, "the first thread never got the free line"
        queued = threading.Event()
        outcome: list[object] = []

        def wait(queued: threading.Event = queued, outcome: list[object] = outcome) -> None:
            try:
                with line.acquire(on_progress=lambda _: queued.set()):
                    outcome.append("served")
            except BaseException as exc:
                outcome.append(exc)
                queued.set()

        waiter = threading.Thread(target=wait)
        waiter.start()
        same_id = waiter.ident == taker.ident
        assert queued.wait(REPORT_TIMEOUT), "the new thread never went to sleep in line"
        handed[0].release()
        waiter.join(REPORT_TIMEOUT)
        assert outcome == ["served"], (
            f"try {attempt}: new thread {waiter.ident} (the exited holder's id: {same_id}) "
            f"was not served: {outcome}"
        )
        reused += same_id
        if reused >= 3:
            break
    assert_clean(line)
    if not reused:
        pytest.skip("no new thread got an exited thread's id on this system")


# --------------------------------------------------------------------------- (b) one turn object


def test_one_turn_object_entered_by_two_tasks_releases_each_ones_own_ticket(where: Where):
    shared = inturn.turn("object", slots=2)
    line = inturn.Line("object", slots=2)
    turns: dict[str, inturn.Turn] = {}

    async def task(who: str, inside: asyncio.Event, leave: asyncio.Event) -> None:
        async with shared as held:
            turns[who] = held
            inside.set()
            await leave.wait()

    async def scenario() -> None:
        a_in, a_leave, b_in, b_leave = (asyncio.Event() for _ in range(4))
        a = asyncio.create_task(task("a", a_in, a_leave))
        await a_in.wait()
        b = asyncio.create_task(task("b", b_in, b_leave))
        await b_in.wait()
        a_leave.set()  # the first in leaves first, while the other is still inside
        await a
        assert not turns["a"].held, "the task that left still holds its ticket"
        assert turns["b"].held, "the task still inside lost its ticket to the one that left"
        assert [t.number for t in line.status().holders] == [turns["b"].ticket]
        b_leave.set()
        await b
        assert not turns["b"].held

    run_async(scenario)
    assert_clean(line)


# --------------------------------------------------------------------------- (c) thread starvation


def test_more_waiting_tasks_than_executor_threads_cannot_starve_the_holder(where: Where):
    """The holder needs ``asyncio.to_thread`` to finish; every waiting task must not have
    taken a thread of the default executor for its wait."""
    line = inturn.Line("starve")
    holder = line.acquire()  # held by this thread, so no task waits for itself
    served: list[int] = []
    count = EXECUTOR_THREADS + 2

    async def waiter(index: int) -> None:
        async with inturn.turn("starve"):
            served.append(index)

    async def scenario() -> None:
        tasks = [asyncio.create_task(waiter(i)) for i in range(count)]
        await until(in_line(line, EXECUTOR_THREADS), *tasks)
        try:
            done = await asyncio.wait_for(asyncio.to_thread(lambda: "done"), HANG)
        except TimeoutError:
            done = "hung"
        finally:
            holder.release()  # in any case, so that the waiting threads can end
        await asyncio.gather(*tasks)
        assert done == "done", (
            f"asyncio.to_thread did not run within {HANG:g}s while {count} tasks waited: "
            f"the waits took every thread of the default executor ({EXECUTOR_THREADS})"
        )

    run_async(scenario)
    assert sorted(served) == list(range(count))
    assert_clean(line)


# --------------------------------------------------------------------------- (d) cancellation

TRIES = {"local": 150, "postgresql": 30, "redis": 40}


async def cancel_race(line: inturn.Line, rng: random.Random, cancels: int) -> str:
    """One race: a task waits behind a holder; the holder leaves and the task is cancelled
    ``cancels`` times at random moments around the hand-off. What happened, and the line
    must be clean once the task has ended (a turn that came anyway was released by it)."""
    holder = line.acquire(blocking=False)  # the line is free after every race
    task = asyncio.create_task(inturn.acquire_async(line))
    if rng.random() < 0.8:
        await until(in_line(line, 1), task)
    holder.release()
    if rng.random() < 0.3:
        await until(lambda: bool(line.status().holders), task)  # the turn has been handed on
    for _ in range(cancels):
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            await asyncio.sleep(0)
        task.cancel()
    try:
        held = await task
    except asyncio.CancelledError:
        return "cancelled"
    held.release()  # it was served before any cancel reached it: that is allowed
    return "served"


@pytest.mark.parametrize("cancels", [1, 2, 3], ids=["once", "twice", "three-times"])
def test_cancelling_around_the_hand_off_never_leaks_the_turn(where: Where, cancels: int):
    line = inturn.Line("cancel")
    rng = random.Random(f"cancel-{where.kind}-{cancels}")
    outcomes: dict[str, int] = {"cancelled": 0, "served": 0}

    async def scenario() -> None:
        for attempt in range(TRIES[where.kind]):
            outcome = await cancel_race(line, rng, cancels)
            outcomes[outcome] += 1
            status = line.status()
            assert status.holders == () and status.waiters == (), (
                f"try {attempt} ({outcome}, {outcomes}): the cancelled task left "
                f"{status.holders or status.waiters} in line"
            )
            line.acquire(blocking=False).release()  # free at once, for anyone

    run_async(scenario)
    assert outcomes["cancelled"] > 0, outcomes


def test_cancellation_at_any_moment_leaves_the_line_clean(where: Where):
    """Cancelled before it joins, while it waits, or as its turn comes: nothing is left."""
    line = inturn.Line("any-moment")
    rng = random.Random(f"any-moment-{where.kind}")

    async def scenario() -> None:
        # Before it even starts: the task never runs.
        task = asyncio.create_task(inturn.acquire_async(line))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_clean(line, "cancelled before it ran")
        # While it waits behind a holder that stays.
        with line.acquire():
            task = asyncio.create_task(inturn.acquire_async(line))
            await until(in_line(line, 1), task)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert [t.pid for t in line.status().waiters] == []
        assert_clean(line, "cancelled while waiting")
        # After a random number of steps of the loop, with or without a holder.
        for attempt in range(TRIES[where.kind] // 3):
            holder = line.acquire(blocking=False) if rng.random() < 0.5 else None
            task = asyncio.create_task(inturn.acquire_async(line))
            for _ in range(rng.randrange(12)):
                await asyncio.sleep(0)
            if holder is not None and rng.random() < 0.5:
                holder.release()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                (await task).release()  # served before the cancel reached it
            if holder is not None:
                holder.release()
            assert_clean(line, f"try {attempt}")

    run_async(scenario)
    line.acquire(blocking=False).release()


def test_a_turn_handed_to_a_task_of_a_loop_closed_meanwhile_is_released(where: Where):
    """The turn comes while the task's loop is not running, and the loop is then closed with
    the task still waiting (``loop.close()`` without ``asyncio.run``'s tidying): nobody will
    ever take that turn, so it is released, not held until the process exits."""
    line = inturn.Line("closed-loop")
    holder = line.acquire()
    loop = asyncio.new_event_loop()

    async def waiter() -> None:
        async with line:
            pass

    task = loop.create_task(waiter())
    loop.run_until_complete(asyncio.sleep(0))  # the task starts: its thread joins the line

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + REPORT_TIMEOUT
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.002)

    wait_for(in_line(line, 1), "the task in line")
    (waiting,) = line.status().waiters
    holder.release()
    wait_for(lambda: [t.number for t in line.status().holders] == [waiting.number], "its turn")
    loop.close()  # the turn, on its way to the task, is dropped with the loop's callbacks
    del task
    wait_for(lambda: not line.status().holders, "the dropped turn released")
    line.acquire(blocking=False).release()


def test_a_burst_of_tasks_takes_turns_one_at_a_time_in_ticket_order(tmp_path):
    """Hundreds of tasks of one process join a local line at once: the critical section
    records when each enters and leaves, and afterwards no two stays overlap and the turns
    went by ticket number."""
    log = tmp_path / "stays"
    folder = tmp_path / "lines"
    count = 200

    async def one() -> None:
        async with inturn.turn("burst", directory=folder) as held:
            entered = time.monotonic_ns()
            await asyncio.sleep(0)  # let the other tasks run while this one holds
            with open(log, "a") as out:
                out.write(f"{held.ticket} {entered} {time.monotonic_ns()}\n")

    async def scenario() -> None:
        await asyncio.gather(*(one() for _ in range(count)))

    run_async(scenario)
    stays = sorted(tuple(map(int, row.split())) for row in log.read_text().splitlines())
    assert len(stays) == count
    by_entry = sorted(stays, key=lambda stay: stay[1])
    assert by_entry == stays, "turns did not go by ticket number"
    for before, after in itertools.pairwise(by_entry):
        assert after[1] >= before[2], f"ticket {after[0]} entered while {before[0]} held"
    assert_clean(inturn.Line("burst", directory=folder))


def test_the_async_api_outside_asyncio_says_so_in_one_line(tmp_path):
    """Driven by another event loop (trio's) or by hand, where no asyncio loop runs, every
    way into the async API raises one error that names what it needs, not asyncio's own
    "no running event loop" from deep inside; nothing is joined or left behind."""
    folder = tmp_path / "lines"
    line = inturn.Line("elsewhere", directory=folder)
    decorated = inturn.turn("elsewhere", directory=folder)

    @decorated
    async def call() -> None:
        raise AssertionError("the body ran")

    async def block_of_turn() -> None:
        async with inturn.turn("elsewhere", directory=folder):
            raise AssertionError("the block ran")

    async def block_of_line() -> None:
        async with line:
            raise AssertionError("the block ran")

    for way in (block_of_turn, block_of_line, call, lambda: inturn.acquire_async(line)):
        coroutine = way()
        with pytest.raises(RuntimeError, match=r"must run in an asyncio task.*trio is not"):
            coroutine.send(None)  # as another loop's scheduler would run it
        coroutine.close()
    assert not line.status().holders and not line.status().waiters
