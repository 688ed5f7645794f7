"""fork(): a child starts with none of the parent's places in line or watches, and can use
inturn normally. (``test_api.py`` checks that a child neither keeps nor frees a held turn on
the local backend; these add waiting places, timed waits, and every backend.)

The child reports on a pipe and always ends with ``os._exit``: it must never run the rest
of the test suite it was forked from.
"""

from __future__ import annotations

import fcntl
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import inturn

from conftest import REPORT_TIMEOUT, Where, read_lines

HANG = 20.0  # the child's timeout: only a stale watch could make it wait that long
# How long the parent waits for a child's next report: past the child's own timeout, so
# only a child stuck for good (on a lock held at the fork by a thread it does not have).
CHILD_BOUND = HANG + 20.0


class Child:
    """A forked child running ``body(say)``; ``say(words)`` sends one report to the parent."""

    def __init__(self, body: Callable[[Callable[[str], None]], None]) -> None:
        reader, writer = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 0
            try:
                os.close(reader)

                def say(words: str) -> None:
                    os.write(writer, (words + "\n").encode())

                body(say)
            except BaseException as exc:
                os.write(writer, f"error {type(exc).__name__}: {exc}\n".encode())
                code = 1
            finally:
                os._exit(code)
        os.close(writer)
        self._stream = os.fdopen(reader)
        self._reports = read_lines(self._stream)
        self._last = ""

    def next(self) -> str:
        """The next report that differs from the last one (a waiter that wakes and goes
        back to sleep in the same place reports the same words again)."""
        while True:
            try:
                report = self._reports.get(timeout=CHILD_BOUND).strip()
            except queue.Empty:
                raise AssertionError(
                    f"child {self.pid} is stuck: no report in {CHILD_BOUND:g}s"
                ) from None
            assert not report.startswith("error"), report
            if report != self._last:
                self._last = report
                return report

    def wait(self) -> int:
        deadline = time.monotonic() + REPORT_TIMEOUT
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._stream.close()
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)  # polling a child's exit: waitpid has no timeout
        raise AssertionError(f"child {self.pid} did not exit")

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@contextmanager
def child(body: Callable[[Callable[[str], None]], None]) -> Iterator[Child]:
    forked = Child(body)
    try:
        yield forked
    finally:
        forked.kill()


class TimedWaiter:
    """A thread of the parent waiting in line with a timeout (so with a watch of its own)."""

    def __init__(self, line: inturn.Line) -> None:
        self.cancel = inturn.CancelToken()
        self.queued = threading.Event()
        self.outcome: list[object] = []
        before = set(threading.enumerate())
        self.thread = threading.Thread(target=self._wait, args=(line,), daemon=True)
        self.thread.start()
        assert self.queued.wait(REPORT_TIMEOUT), "the parent's waiter never went to sleep"
        # It reports just before it goes to sleep; give it a moment to start the thread that
        # watches the holder, where a backend uses one. Not needed for correctness (a fork
        # at any moment must work), only so that the fork usually finds a watch running.
        deadline = time.monotonic() + 1.0
        while not self._watching(before) and time.monotonic() < deadline:
            time.sleep(0.001)

    @staticmethod
    def _watching(before: set[threading.Thread]) -> bool:
        return any("watch" in t.name for t in set(threading.enumerate()) - before)

    def _wait(self, line: inturn.Line) -> None:
        try:
            held = line.acquire(
                timeout=REPORT_TIMEOUT, cancel=self.cancel, on_progress=lambda _: self.queued.set()
            )
            self.outcome.append(held)
        except BaseException as exc:
            self.outcome.append(exc)

    def result(self) -> object:
        self.thread.join(REPORT_TIMEOUT)
        assert not self.thread.is_alive(), "the parent's waiter hung"
        return self.outcome[0]


@pytest.mark.parametrize(
    ("moment", "which"),
    [
        ("during a timed wait", "inherited Line"),
        ("after a timed wait gave up", "inherited Line"),
        ("after a timed wait gave up", "new Line"),
    ],
)
def test_a_forked_child_is_served_when_the_holder_leaves(
    where: Where, moment: str, which: str
) -> None:
    """The parent forks while a thread of it waits in line with a timeout (watching the
    holder's ticket), or just after such a wait gave up (a watch may outlive it). The child
    ends up asleep on the holder's ticket, the very one the parent watched; when the holder
    leaves, the child must be served, not sleep on a watch it does not have until its
    timeout, nor hang on a lock that a thread of the parent held at the fork.
    """
    line = inturn.Line("forked")
    holder = line.acquire()
    waiter = None
    if moment == "during a timed wait":
        waiter = TimedWaiter(line)
    else:
        with pytest.raises(inturn.Timeout):
            line.acquire(timeout=0.2)

    def body(say: Callable[[str], None]) -> None:
        mine = line if which == "inherited Line" else inturn.Line("forked")
        say("forked")
        started = time.monotonic()
        try:
            held = mine.acquire(
                timeout=HANG, on_progress=lambda p: say(f"waiting {p.position} {len(p.ahead)}")
            )
        except inturn.Timeout:
            say(f"timeout after {time.monotonic() - started:.1f}s")
            return
        say(f"served {held.ticket} {int(held.abandoned)}")
        held.release()

    with child(body) as forked:
        assert forked.next() == "forked"
        if waiter is not None:
            assert forked.next() == "waiting 3 2"  # behind the holder and the parent's waiter
            waiter.cancel.cancel()
            assert isinstance(waiter.result(), inturn.Cancelled), waiter.outcome
        assert forked.next() == "waiting 2 1"  # asleep on the holder's ticket alone
        holder.release()
        report = forked.next()
        assert report.startswith("served "), f"the child was not served: {report}"
        assert report.endswith(" 0"), f"a clean release was reported as abandoned: {report}"
        assert forked.wait() == 0
    line.acquire(blocking=False).release()
    assert line.status().holders == line.status().waiters == ()


def test_a_child_has_none_of_the_parents_places_in_line(where: Where) -> None:
    """The parent holds a turn and has a thread waiting in line when it forks. The child can
    neither use nor free either place; once it exits, both are still the parent's."""
    line = inturn.Line("places")
    holder = line.acquire()
    waiter = TimedWaiter(line)
    before = line.status()

    def body(say: Callable[[str], None]) -> None:
        try:
            line.acquire(blocking=False)
            say("free")
        except inturn.Busy:
            say("busy")
        holder.release()  # the parent's turn: releasing it here must do nothing
        say("released")

    with child(body) as forked:
        assert forked.next() == "busy"
        assert forked.next() == "released"
        assert forked.wait() == 0
    after = line.status()
    assert [t.number for t in after.holders] == [t.number for t in before.holders]
    assert [t.number for t in after.waiters] == [t.number for t in before.waiters]
    assert holder.held and not holder.lost
    holder.release()
    served = waiter.result()
    assert isinstance(served, inturn.Turn), served
    assert not served.abandoned, "the parent's clean release was reported as abandoned"
    served.release()
    assert line.status().holders == line.status().waiters == ()


def test_forks_at_random_moments_while_threads_wait_never_leave_a_child_stuck(where: Where) -> None:
    """Threads of the parent keep making short timed waits (starting and ending watches)
    while the parent forks; each child must still be able to wait in line and give up."""
    line = inturn.Line("fork-any-moment")
    holder = line.acquire()
    stop = threading.Event()
    waits = [0]

    def keep_waiting() -> None:
        mine = inturn.Line("fork-any-moment")
        while not stop.is_set():
            try:
                mine.acquire(timeout=0.002).release()
            except inturn.Timeout:
                waits[0] += 1

    def body(say: Callable[[str], None]) -> None:
        try:
            inturn.Line("fork-any-moment").acquire(timeout=0.05)
            say("served")
        except inturn.Timeout:
            say("timeout")

    threads = [threading.Thread(target=keep_waiting, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for attempt in range(20 if where.kind == "local" else 8):
            with child(body) as forked:
                report = forked.next()
                assert report == "timeout", f"fork {attempt}: {report}"
                assert forked.wait() == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(REPORT_TIMEOUT)
        holder.release()
    assert not any(thread.is_alive() for thread in threads), "a waiting thread hung"
    assert waits[0] > 0
    line.acquire(blocking=False).release()


def test_a_child_forked_while_a_thread_waited_for_the_guard_does_not_keep_it(
    lines_dir: Path,
) -> None:
    """A join that gave up waiting for the guard leaves a helper waiting for it on an
    open file of its own, which a child forked then shares. When the helper gets the guard
    and lets it go, the guard must be free: not held for as long as the child lives, which
    kept every joiner of the line waiting for the child (and a non-blocking one busy)."""
    line = inturn.Line("guarded")
    line.acquire().release()  # the line's folder and guard exist
    guard = os.open(lines_dir / "guarded" / ".line", os.O_RDONLY)
    fcntl.flock(guard, fcntl.LOCK_EX)  # someone holds the guard
    try:
        cancel = inturn.CancelToken()
        outcome: list[BaseException] = []
        before = set(threading.enumerate())

        def join() -> None:
            try:
                line.acquire(cancel=cancel).release()
            except BaseException as exc:
                outcome.append(exc)

        joiner = threading.Thread(target=join, daemon=True)
        joiner.start()
        deadline = time.monotonic() + REPORT_TIMEOUT
        while not any(t.name == "inturn-guard" for t in set(threading.enumerate()) - before):
            assert time.monotonic() < deadline, "the join never waited for the guard"
            time.sleep(0.001)
        cancel.cancel()  # the join gives up; its helper still waits for the guard
        joiner.join(REPORT_TIMEOUT)
        assert isinstance(outcome[0], inturn.Cancelled), outcome
        stay_read, stay_write = os.pipe()

        def body(say: Callable[[str], None]) -> None:
            os.close(stay_write)
            os.read(stay_read, 1)  # lives until the parent closes its end

        with child(body) as forked:
            os.close(stay_read)
            fcntl.flock(guard, fcntl.LOCK_UN)  # the helper gets the guard, then lets it go
            try:
                line.acquire(blocking=False).release()
            finally:
                os.close(stay_write)
            assert forked.wait() == 0
    finally:
        os.close(guard)


HOLD_AND_FORK = """
import os, sys, inturn
held = inturn.Line("forked").acquire()
if os.fork() == 0:  # a helper that outlives its parent, and never execs
    os.read(0, 1)  # until the test closes our stdin
    os._exit(0)
print("held", held.ticket, flush=True)
os.read(0, 1)
"""


def test_a_child_that_outlives_a_dead_holder_does_not_keep_its_turn(where: Where) -> None:
    """A holder forks a helper (no exec) and is killed: the turn passes on as for any dead
    holder, while the helper still runs. (On PostgreSQL the helper's copy of the session's
    socket kept the session, and so the turn, until the helper ended.)"""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_FORK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=where.crash_env(),
    )
    try:
        assert holder.stdout is not None
        words = holder.stdout.readline().split()
        assert words[:1] == ["held"], words
        holder.kill()
        holder.wait(REPORT_TIMEOUT)
        with inturn.Line("forked").acquire(timeout=REPORT_TIMEOUT) as after:
            assert after.abandoned and after.ticket > int(words[1])
    finally:
        holder.kill()
        assert holder.stdin is not None
        holder.stdin.close()  # the helper, which shares it, ends


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_child_forked_as_a_thread_takes_and_gives_turns_keeps_no_ticket(
    lines_dir: Path,
) -> None:
    """A thread takes and gives back turns as fast as it can while the parent forks: no child
    may start with a copy of a ticket's file. A copy made as the ticket was opened (before
    its membership was recorded) or closed (after it was marked closed) was never closed,
    and its lock held the turn, or kept the next one waiting, for as long as the child lived."""
    line = inturn.Line("churned")
    line.acquire().release()  # the line's folder exists
    folder = os.path.realpath(lines_dir / "churned")
    stop = threading.Event()
    cycled = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            line.acquire().release()
            cycled.set()

    def body(say: Callable[[str], None]) -> None:
        kept = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # the listing's own descriptor, closed by now
            folder_of, _, name = target.partition(" (deleted)")[0].rpartition("/")
            if folder_of == folder and name[:12].isdigit():
                kept.append(name)
        say(f"kept {' '.join(kept)}" if kept else "none")

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    kept: list[str] = []
    try:
        assert cycled.wait(REPORT_TIMEOUT), "the thread never took a turn"
        for _ in range(300):
            with child(body) as forked:
                report = forked.next()
                assert forked.wait() == 0
            if report != "none":
                kept.append(report)
    finally:
        stop.set()
        churner.join(REPORT_TIMEOUT)
    assert not churner.is_alive(), "the thread taking turns hung"
    assert not kept, f"{len(kept)} of 300 children kept a ticket: {kept[:3]}"
    line.acquire(blocking=False).release()
