"""A turn belongs to the acquire that took it, not to a thread id.

It may be handed to another thread and released there. The guard that refuses a wait which
could only end when the caller itself releases (turns are not re-entrant) still fires for a
thread, or a task, that really waits for itself with no timeout, and never otherwise. Each
test runs on the local folder, PostgreSQL and Redis (``where``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

import inturn

from conftest import REPORT_TIMEOUT, Where, run_async, until

HANG = 20.0  # a bound that only detects a hang: a refusal comes at once


def in_thread(work: Callable[[], object]) -> object:
    """Run ``work`` in a new thread to its end; what it returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(REPORT_TIMEOUT)
    assert not thread.is_alive(), "the thread hung"
    return outcome[0]


def assert_clean(line: inturn.Line) -> None:
    status = line.status()
    assert status.holders == () and status.waiters == (), status


# --------------------------------------------------------------------------- handing a turn on


def test_a_turn_taken_in_one_thread_is_released_in_another(where: Where) -> None:
    line = inturn.Line("handed")
    taken = in_thread(line.acquire)  # the thread exits, the turn stays held
    assert isinstance(taken, inturn.Turn) and taken.held
    assert [t.number for t in line.status().holders] == [taken.ticket]
    with pytest.raises(inturn.Busy):
        line.acquire(blocking=False)
    taken.release()  # here, in another thread
    assert_clean(line)
    # Whoever comes next, in any thread and without a timeout, is served at once.
    again = in_thread(lambda: line.acquire().release())
    assert again is None, again
    with line.acquire():
        pass
    assert_clean(line)


def test_a_turn_released_by_another_thread_frees_its_taker_to_wait_again(where: Where) -> None:
    """The taker hands its turn on; once that is released, the taker may wait in line with
    no timeout like anyone else (behind another holder), and is served."""
    line = inturn.Line("handed-back")
    mine = line.acquire()
    assert in_thread(mine.release) is None
    other_holds = threading.Event()
    other_may_leave = threading.Event()

    def other() -> None:
        with line.acquire():
            other_holds.set()
            other_may_leave.wait(REPORT_TIMEOUT)

    holder = threading.Thread(target=other)
    holder.start()
    assert other_holds.wait(REPORT_TIMEOUT)
    queued = threading.Event()
    waited: list[object] = []

    # This thread, which took ``mine``, waits; the other holder leaves once we are asleep.
    def leave_when_queued() -> None:
        queued.wait(REPORT_TIMEOUT)
        other_may_leave.set()

    releaser = threading.Thread(target=leave_when_queued)
    releaser.start()
    try:
        with line.acquire(on_progress=lambda _: queued.set()) as held:
            waited.append(held.ticket)
    finally:
        other_may_leave.set()
        holder.join(REPORT_TIMEOUT)
        releaser.join(REPORT_TIMEOUT)
    assert waited and queued.is_set()
    assert_clean(line)


def test_a_thread_that_handed_its_turn_on_may_wait_while_the_other_still_holds(
    where: Where,
) -> None:
    """The taker hands its turn to a worker thread that will release it later (``owner``
    says so), then waits in line with no timeout: a wait, not a refusal, served once the
    worker has released."""
    line = inturn.Line("handed-on")
    mine = line.acquire()
    assert mine.owner is threading.current_thread()
    queued = threading.Event()

    def worker(turn: inturn.Turn) -> None:
        queued.wait(REPORT_TIMEOUT)  # still holding while the taker goes to sleep in line
        turn.release()

    helper = threading.Thread(target=worker, args=(mine,))
    mine.owner = helper
    assert mine.owner is helper
    helper.start()
    try:
        with line.acquire(on_progress=lambda _: queued.set()) as again:
            assert again.ticket > mine.ticket and not mine.held
    finally:
        queued.set()
        helper.join(REPORT_TIMEOUT)
    assert_clean(line)


def test_a_task_that_handed_its_turn_on_may_wait_while_the_other_still_holds(
    where: Where,
) -> None:
    """The same between tasks: the task that took the turn hands it to another task, then
    waits for the line as itself (``owner``), as ``acquire_async`` does in its thread."""
    line = inturn.Line("handed-task")
    outcome: list[str] = []

    async def scenario() -> None:
        mine = await inturn.acquire_async(line)
        me = asyncio.current_task()
        assert mine.owner is me
        queued = threading.Event()
        loop = asyncio.get_running_loop()
        asleep = asyncio.Event()

        async def worker() -> None:
            await asleep.wait()
            mine.release()

        helper = asyncio.create_task(worker())
        mine.owner = helper

        def in_line(progress: inturn.Progress) -> None:
            if not queued.is_set():
                queued.set()
                loop.call_soon_threadsafe(asleep.set)

        held = await asyncio.to_thread(line.acquire, owner=me, on_progress=in_line)
        outcome.append("served" if queued.is_set() and not mine.held else "not queued")
        held.release()
        await helper

    run_async(scenario)
    assert outcome == ["served"]
    assert_clean(line)


def test_slots_held_by_yourself_and_another_thread_is_a_wait_not_a_refusal(where: Where) -> None:
    """With ``slots=2``, holding one slot while another thread holds the other: a third
    acquire by this thread waits for the other thread, which will leave."""
    line = inturn.Line("half-mine", slots=2)
    mine = line.acquire()
    other_holds = threading.Event()
    other_may_leave = threading.Event()

    def other() -> None:
        with line.acquire():
            other_holds.set()
            other_may_leave.wait(REPORT_TIMEOUT)

    holder = threading.Thread(target=other)
    holder.start()
    assert other_holds.wait(REPORT_TIMEOUT)
    try:
        with line.acquire(on_progress=lambda _: other_may_leave.set()) as second:
            assert second.held and mine.held
    finally:
        other_may_leave.set()
        holder.join(REPORT_TIMEOUT)
    mine.release()
    assert_clean(line)


# --------------------------------------------------------------------------- waiting for yourself


@pytest.mark.parametrize("slots", [1, 2])
def test_a_thread_waiting_for_itself_is_refused(where: Where, slots: int) -> None:
    """In any thread (not only the main one), and when it holds every slot itself."""
    line = inturn.Line("self", slots)

    def hold_and_wait_again() -> object:
        held = [line.acquire() for _ in range(slots)]
        try:
            with pytest.raises(inturn.InturnError, match="not re-entrant"):
                line.acquire()
            with pytest.raises(inturn.Timeout):
                line.acquire(timeout=0.05)  # with a timeout it simply times out
            return "refused"
        finally:
            for turn in held:
                turn.release()

    assert in_thread(hold_and_wait_again) == "refused"
    assert_clean(line)


def test_a_decorated_function_calling_itself_is_refused(where: Where) -> None:
    @inturn.turn("recursive")
    def job(depth: int) -> int:
        return depth if depth == 0 else job(depth - 1)

    with pytest.raises(inturn.InturnError, match="not re-entrant"):
        job(1)
    assert job(0) == 0
    assert_clean(inturn.Line("recursive"))


def test_a_task_waiting_for_itself_is_refused(where: Where) -> None:
    """``async with`` nested in one task: the inner wait could only end when this very task
    leaves the outer block, so it is refused, as in a thread (and never hangs)."""
    line = inturn.Line("self-task")
    outer: list[inturn.Turn] = []
    outcome: list[str] = []

    async def nested() -> None:
        async with inturn.turn("self-task") as held:
            outer.append(held)
            try:
                async with inturn.turn("self-task"):
                    outcome.append("entered twice")
            except inturn.InturnError as exc:
                outcome.append("refused" if "not re-entrant" in str(exc) else str(exc))

    async def scenario() -> None:
        task = asyncio.create_task(nested())
        done, _ = await asyncio.wait({task}, timeout=HANG)
        if not done:  # it waits for itself: free it, then fail
            outer[0].release()
            await asyncio.wait_for(task, REPORT_TIMEOUT)
            raise AssertionError("the task waited for itself instead of being refused")
        task.result()

    run_async(scenario)
    assert outcome == ["refused"]
    assert_clean(line)


@pytest.mark.parametrize(
    ("first", "again", "between"),
    [(False, False, False), (True, True, False), (True, True, True), (True, False, True)],
    ids=["exclusive-twice", "shared-twice-writer-between", "shared-twice-reader-between",
         "shared-then-exclusive"],
)  # fmt: skip
def test_asking_again_behind_someone_who_waits_for_you_is_refused(
    lines_dir, first: bool, again: bool, between: bool
) -> None:
    """A thread holds the line, someone else waits behind it, and the thread asks again
    (without a timeout): the one between waits for the thread's turn, the thread for it.
    Refused (it hung when the one between was not itself the thread's: only the nearest
    ticket was looked at). A reader between two reads of the thread is no such wait."""
    line = inturn.Line("between")
    outer = [line.acquire(shared=first)]
    done = threading.Event()

    def take_a_turn() -> None:
        with line.acquire(shared=between):
            done.wait(REPORT_TIMEOUT)

    other = threading.Thread(target=take_a_turn)
    other.start()
    until(lambda: len(line.status().waiters) + len(line.status().holders) == 2, "the other")
    if first and again and between:  # readers all: it holds beside the thread; so does this
        line.acquire(shared=True).release()
    else:
        with pytest.raises(inturn.InturnError, match="not re-entrant"):
            _refused_or_rescued(outer, lambda: line.acquire(shared=again))
    outer[0].release()
    done.set()
    other.join(REPORT_TIMEOUT)
    assert line.status().holders == () and line.status().waiters == ()


def _refused_or_rescued(outer: list[inturn.Turn], body: Callable[[], object]) -> None:
    """Run ``body`` (which hangs on a wait for itself unless refused): after ``HANG`` seconds a
    timer releases the outer turn from another thread, so a hang ends as a failure."""
    rescue = threading.Timer(HANG, lambda: outer[0].release() if outer else None)
    rescue.start()
    try:
        body()
    finally:
        rescue.cancel()


@pytest.mark.parametrize("outer", ["async-with", "with"])
def test_a_task_waiting_inside_its_own_turn_in_the_other_style_is_refused(
    where: Where, outer: str
) -> None:
    """``async with`` in a task, then a decorated sync function called in it (the sync wait
    blocks the loop, and only this task could release); or ``with`` in a coroutine, then a
    decorated async function awaited in it (the task would wait for itself). Both refused, as
    ``async with`` nested twice is."""
    name = f"mixed-{outer}"
    held_outside: list[inturn.Turn] = []
    outcome: list[str] = []

    @inturn.turn(name)
    def sync_helper() -> None:
        outcome.append("entered twice")

    @inturn.turn(name)
    async def async_helper() -> None:
        outcome.append("entered twice")

    async def inner() -> None:
        try:
            if outer == "async-with":
                sync_helper()
            else:
                await async_helper()
        except inturn.InturnError as exc:
            outcome.append("refused" if "not re-entrant" in str(exc) else str(exc))

    async def nested() -> None:
        if outer == "async-with":
            async with inturn.turn(name) as held:
                held_outside.append(held)
                await inner()
        else:
            with inturn.turn(name) as held:
                held_outside.append(held)
                await inner()

    _refused_or_rescued(held_outside, lambda: run_async(nested))
    assert outcome == ["refused"]
    assert_clean(inturn.Line(name))


def test_sync_code_waiting_for_another_task_of_its_loop_is_refused(where: Where) -> None:
    """One task holds a turn with ``async with`` and awaits; another task of the same loop
    calls a decorated sync function of that line: its wait blocks the loop, so the holder
    could never resume to release."""
    outer: list[inturn.Turn] = []
    outcome: list[str] = []
    inside = asyncio.Event()

    @inturn.turn("mixed-loop")
    def helper() -> None:
        outcome.append("entered beside")

    async def holder() -> None:
        async with inturn.turn("mixed-loop") as held:
            outer.append(held)
            inside.set()
            await asyncio.sleep(0.05)

    async def other() -> None:
        await inside.wait()
        try:
            helper()
        except inturn.InturnError as exc:
            outcome.append("refused" if "event loop" in str(exc) else str(exc))

    async def scenario() -> None:
        await asyncio.gather(holder(), other())

    _refused_or_rescued(outer, lambda: run_async(scenario))
    assert outcome == ["refused"]
    assert_clean(inturn.Line("mixed-loop"))


def test_a_task_waits_for_a_sync_block_another_task_holds(where: Where) -> None:
    """Not refused: a ``with`` block of one task, held across an ``await``, is released when
    that task resumes, and another task's ``async with`` waits for it in a thread of its own."""
    order: list[str] = []
    inside = asyncio.Event()

    async def first() -> None:
        with inturn.turn("mixed-ok"):
            order.append("first")
            inside.set()
            await asyncio.sleep(0.05)

    async def second() -> None:
        await inside.wait()
        async with inturn.turn("mixed-ok"):
            order.append("second")

    async def scenario() -> None:
        await asyncio.gather(first(), second())

    run_async(scenario)
    assert order == ["first", "second"]
    assert_clean(inturn.Line("mixed-ok"))
