"""Ctrl-C (any exception raised asynchronously: KeyboardInterrupt, a signal handler's) in the
middle of taking or giving back a turn, in a process that lives on (a REPL, a notebook, a
service): no ticket is left behind, so the next in line gets the turn and the same process
can take it again, and a release cut short can be finished by releasing again.

Each test has one function that runs inside such a window raise ``KeyboardInterrupt`` once
(before or after doing its work), on every backend (``where``) or on the one it belongs to;
another process then shows that the line is free within a generous bound.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import inturn
import inturn.line
import inturn.queue

from conftest import Where, Worker, run_cli, until

BOUND = "10"  # seconds another process may wait for a line that must be free at once


def interrupt_once(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, after: bool = False, times: int = 1
) -> list[bool]:
    """Make ``owner.name`` raise ``KeyboardInterrupt`` the first time it is called (the
    first ``times`` times): before it does anything, or ``after`` it did its work. The list
    says how often it fired."""
    real: Callable[..., Any] = getattr(owner, name)
    fired: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if len(fired) >= times:
            return real(*args, **kwargs)
        fired.append(True)
        if after:
            real(*args, **kwargs)
        raise KeyboardInterrupt(f"injected in {name}")

    monkeypatch.setattr(owner, name, interrupted)
    return fired


class InterruptedLock:
    """A real lock whose first ``with`` raises ``KeyboardInterrupt`` once it is taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fired = False

    def __enter__(self) -> bool:
        self.lock.acquire()
        if not self.fired:
            self.fired = True
            self.lock.release()
            raise KeyboardInterrupt("injected in a with block's bookkeeping")
        return True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.lock.release()


def assert_free(name: str) -> None:
    """Another process gets the turn at once, and so does this one, twice."""
    other = run_cli("run", "--timeout", BOUND, name, "--", "true")
    assert other.returncode == 0, other.stderr
    line = inturn.Line(name)
    try:
        with line.acquire(timeout=float(BOUND)):
            pass
        with line:
            pass
        assert line.status().holders == line.status().waiters == ()
    finally:
        line.close()


def assert_interrupted_join_leaves(fired: list[bool], name: str) -> None:
    """An ``acquire`` of line ``name``, interrupted where ``fired`` says it was, leaves
    nothing behind."""
    line = inturn.Line(name)
    with pytest.raises(KeyboardInterrupt):
        line.acquire()
    assert fired
    assert_free(name)


def assert_interrupted_release_can_be_finished(
    held: inturn.Turn, fired: list[bool], name: str
) -> BaseException:
    """The release of ``held``, interrupted where ``fired`` says it was, is finished by
    releasing again; the interrupt, for a look at it."""
    with pytest.raises(KeyboardInterrupt) as caught:
        held.release()
    assert fired
    held.release()
    assert not held.held
    assert_free(name)
    return caught.value


# --------------------------------------------------------------------------- acquire


def test_interrupt_as_the_turn_is_recorded_leaves_the_line(where: Where, monkeypatch):
    fired = interrupt_once(monkeypatch, inturn.queue.Holdings, "add")
    assert_interrupted_join_leaves(fired, "recorded")


def test_interrupt_as_the_turn_is_handed_over_leaves_the_line(where: Where, monkeypatch):
    fired = interrupt_once(monkeypatch, inturn.line.Turn, "__init__", after=True)
    assert_interrupted_join_leaves(fired, "handed")


@pytest.mark.parametrize("make", [inturn.Line, inturn.turn], ids=["Line", "turn"])
def test_interrupt_as_a_with_block_notes_its_turn_leaves_the_line(where: Where, make):
    block = make("block")
    block._blocks._lock = InterruptedLock()
    with pytest.raises(KeyboardInterrupt), block:
        raise AssertionError("the block ran without its turn noted")
    assert_free("block")
    with block:  # the same object goes on working
        pass


# --------------------------------------------------------------------------- release


def test_a_release_interrupted_before_it_left_is_finished(where: Where, monkeypatch):
    line = inturn.Line("finish")
    held = line.acquire()
    fired = interrupt_once(monkeypatch, type(line.store), "leave")
    with pytest.raises(KeyboardInterrupt):
        held.release()
    assert fired
    assert not held.held
    assert_free("finish")


def test_a_release_interrupted_twice_can_be_finished(where: Where, monkeypatch):
    line = inturn.Line("again")
    held = line.acquire()
    fired = interrupt_once(monkeypatch, type(line.store), "leave", times=2)
    with pytest.raises(KeyboardInterrupt):
        held.release()
    assert len(fired) == 2
    assert held.held  # it was not given back: still held, and says so
    held.release()
    assert not held.held
    assert_free("again")


def test_a_release_interrupted_after_it_left_frees_nobody_else_when_repeated(
    where: Where, monkeypatch, workers
):
    """The promise kept by the fix above: releasing again gives back nothing twice."""
    line = inturn.Line("once")
    held = line.acquire()
    fired = interrupt_once(monkeypatch, inturn.queue.Holdings, "discard", times=2)
    with pytest.raises(KeyboardInterrupt):
        held.release()
    assert len(fired) == 2
    assert held.held  # not known to be given back
    other = Worker("once", "--hold", "--timeout", BOUND)
    workers.append(other)
    other.expect("acquired")  # it was given back before the interrupt
    held.release()  # finishing it gives nothing back twice: the other one keeps its turn
    assert not held.held
    with pytest.raises(inturn.Busy):
        line.acquire(blocking=False)
    assert [t.pid for t in line.status().holders] == [other.pid]
    other.proc.stdin.write("go\n")  # type: ignore[union-attr]
    other.proc.stdin.flush()  # type: ignore[union-attr]
    other.expect("released")
    assert other.proc.wait() == 0
    assert_free("once")


def test_a_with_block_finishes_a_release_interrupted_in_it(where: Where, monkeypatch):
    line = inturn.Line("exit")
    with pytest.raises(KeyboardInterrupt), line as held:
        interrupt_once(monkeypatch, type(line.store), "leave")
    assert not held.held
    assert_free("exit")


def test_a_turn_block_finishes_a_release_interrupted_in_it(where: Where, monkeypatch):
    with pytest.raises(KeyboardInterrupt), inturn.turn("turn-exit") as held:
        interrupt_once(monkeypatch, type(held.line.store), "leave")
    assert not held.held
    assert_free("turn-exit")


# --------------------------------------------------------------------------- each backend


def test_local_interrupt_after_the_ticket_is_made_takes_it_away(lines_dir, monkeypatch):
    from inturn.backends.posix import PosixStore

    fired = interrupt_once(monkeypatch, PosixStore, "_tidy_litter")
    assert_interrupted_join_leaves(fired, "made")


def hold_the_guard(lines_dir: Path, name: str) -> int:
    """Line ``name``'s guard, locked as another process would hold it for a moment."""
    inturn.Line(name).acquire().release()  # the line's folder and guard exist
    guard = os.open(lines_dir / name / ".line", os.O_RDONLY)
    fcntl.flock(guard, fcntl.LOCK_EX)
    return guard


def once_a_join_waits_for_the_guard(then: Callable[[], None]) -> None:
    """Call ``then`` in a thread once a join of this process waits for a guard."""
    before = set(threading.enumerate())

    def watch() -> None:
        deadline = time.monotonic() + float(BOUND)
        while not any(t.name == "inturn-guard" for t in set(threading.enumerate()) - before):
            if time.monotonic() > deadline:
                return  # the join never waited for the guard: the test fails on its own
            time.sleep(0.001)
        then()

    threading.Thread(target=watch, daemon=True).start()


def test_local_interrupt_while_waiting_for_the_guard_leaves_it_free(lines_dir):
    """A timed join waits for the line's guard (held by another process for a moment) in a
    helper thread; a Ctrl-C then must not leave that helper to take the guard for good, which
    kept every joiner of the line waiting for as long as this process lived."""
    guard = hold_the_guard(lines_dir, "guarded")
    main = threading.get_ident()

    def ctrl_c(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("injected while waiting for the guard")

    previous = signal.signal(signal.SIGUSR1, ctrl_c)
    try:
        once_a_join_waits_for_the_guard(lambda: signal.pthread_kill(main, signal.SIGUSR1))
        with pytest.raises(KeyboardInterrupt, match="waiting for the guard"):
            inturn.Line("guarded").acquire(timeout=float(BOUND))
    finally:
        signal.signal(signal.SIGUSR1, previous)
        fcntl.flock(guard, fcntl.LOCK_UN)  # the moment is over
        os.close(guard)
    assert_free("guarded")


def test_local_interrupt_as_a_waited_for_guard_comes_lets_it_go(lines_dir, monkeypatch):
    from inturn.backends.posix import _GuardWait

    guard = hold_the_guard(lines_dir, "came")
    fired = interrupt_once(monkeypatch, _GuardWait, "wait", after=True)
    try:
        once_a_join_waits_for_the_guard(lambda: fcntl.flock(guard, fcntl.LOCK_UN))
        with pytest.raises(KeyboardInterrupt):
            inturn.Line("came").acquire(timeout=float(BOUND))
    finally:
        os.close(guard)
    assert fired
    assert_free("came")


@pytest.mark.parametrize("whose", ["kept", "own"])
def test_local_interrupt_just_after_the_guard_is_taken_lets_it_go(lines_dir, monkeypatch, whose):
    """Where a signal's handler runs most often: just after a system call returned; on the
    guard file the line's opening keeps, or on one of the join's own (another thread of the
    process is using the kept one)."""
    line = inturn.Line("taken")
    line.acquire().release()  # its guard is open: the next join takes it at once
    opening = line.store._opening  # type: ignore[attr-defined]
    real = fcntl.flock
    fired: list[bool] = []

    def flock(fd: int, operation: int) -> None:
        real(fd, operation)
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB and not fired:
            fired.append(True)
            raise KeyboardInterrupt("injected as the guard is taken")

    monkeypatch.setattr(fcntl, "flock", flock)
    with (
        opening.guard_lock if whose == "own" else contextlib.nullcontext(),
        pytest.raises(KeyboardInterrupt),
    ):
        line.acquire()
    assert fired
    assert_free("taken")


def test_postgresql_interrupt_as_the_ticket_is_made_closes_its_session(pg_url, monkeypatch):
    from inturn.backends.postgres import store

    fired = interrupt_once(monkeypatch, store.PostgresMembership, "__init__", after=True)
    assert_interrupted_join_leaves(fired, "made")


def test_postgresql_leave_interrupted_in_its_statement_ends_the_session(pg_url, monkeypatch):
    from inturn.backends.postgres import store

    line = inturn.Line("left")
    held = line.acquire()
    fired = interrupt_once(monkeypatch, store, "_despite_cancels")
    # Kept, as a REPL keeps the last exception (sys.last_exc), with its frames' sessions.
    caught = assert_interrupted_release_can_be_finished(held, fired, "left")
    assert "injected" in str(caught)


@pytest.mark.parametrize("window", ["_learn", "keeper"])
def test_redis_interrupt_as_the_ticket_is_made_takes_it_out(place, monkeypatch, window):
    from inturn.backends.redis.membership import LeaseKeeper
    from inturn.backends.redis.store import RedisStore

    # A lease longer than the bound: an unrenewed ticket left behind would outlast it.
    monkeypatch.setenv("INTURN_BACKEND", place.url(lease=60))
    if window == "keeper":
        fired = interrupt_once(monkeypatch, LeaseKeeper, "add")
    else:
        fired = interrupt_once(monkeypatch, RedisStore, "_learn")
    assert_interrupted_join_leaves(fired, "made")


def test_redis_leave_interrupted_before_the_lease_stops_can_be_finished(place, monkeypatch):
    from inturn.backends.redis.membership import LeaseKeeper

    line = inturn.Line("left")
    held = line.acquire()
    fired = interrupt_once(monkeypatch, LeaseKeeper, "remove")
    assert_interrupted_release_can_be_finished(held, fired, "left")


# --------------------------------------------------------------------------- single_instance


def listening_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("inturn-listen", "inturn-on-message")]


def exit_handlers(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """The exit handlers registered from now on and not unregistered (``atexit`` lists none;
    its count counts the unregistered too)."""
    live: list[Callable[..., Any]] = []
    register, unregister = atexit.register, atexit.unregister

    def registered(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        live.append(func)
        return register(func, *args, **kwargs)

    def unregistered(func: Callable[..., Any]) -> None:
        unregister(func)
        live[:] = [f for f in live if f != func]

    monkeypatch.setattr(atexit, "register", registered)
    monkeypatch.setattr(atexit, "unregister", unregistered)
    return live


def assert_instance_interrupted_leaves_nothing(
    handlers: list[Callable[..., Any]],
    fired: list[bool],
    name: str,
    folder: Path | None = None,
    **how: Any,
) -> None:
    """A ``single_instance(name, **how)`` interrupted where ``fired`` says it was leaves no
    ticket (another start becomes the instance), none of the exit ``handlers``, no listener
    and, in the local ``folder``, no socket."""
    with pytest.raises(KeyboardInterrupt):
        inturn.single_instance(name, **how)
    assert fired
    assert handlers == []
    for thread in listening_threads():  # the accepting thread ends as its channel is closed
        thread.join(float(BOUND))
    assert not listening_threads()
    if folder is not None:
        assert not list(folder.rglob("*.sock"))
    assert_free(name)
    inturn.single_instance(name, **how).release()


@pytest.mark.parametrize("wait", [False, True])
def test_single_instance_interrupted_as_its_turn_comes_leaves_the_line(where, monkeypatch, wait):
    handlers = exit_handlers(monkeypatch)
    fired = interrupt_once(monkeypatch, inturn.line, "take_turn", after=True)
    assert_instance_interrupted_leaves_nothing(handlers, fired, "instance", wait=wait)


def test_single_instance_interrupted_as_it_is_handed_over_leaves_the_line(where, monkeypatch):
    handlers = exit_handlers(monkeypatch)
    fired = interrupt_once(monkeypatch, inturn.line.Turn, "__init__", after=True)
    assert_instance_interrupted_leaves_nothing(handlers, fired, "instance")


@pytest.mark.parametrize(
    "window", ["take_turn", "Listener.__init__", "atexit.register", "Turn.__init__", "start"]
)
def test_single_instance_interrupted_as_it_starts_listening_leaves_nothing(
    lines_dir, monkeypatch, window
):
    import inturn.messages

    owners = {
        "take_turn": (inturn.line, "take_turn"),
        "Listener.__init__": (inturn.messages.Listener, "__init__"),
        "atexit.register": (atexit, "register"),
        "Turn.__init__": (inturn.line.Turn, "__init__"),
        "start": (inturn.messages.Listener, "start"),
    }
    handlers = exit_handlers(monkeypatch)
    fired = interrupt_once(monkeypatch, *owners[window], after=True)
    assert_instance_interrupted_leaves_nothing(
        handlers, fired, "listening", lines_dir, on_message=lambda message: None
    )


@pytest.mark.parametrize("window", ["_bind", "UnixChannel.__init__"])
def test_single_instance_interrupted_as_its_socket_is_made_removes_it(
    lines_dir, monkeypatch, window
):
    from inturn.backends import unix_channel

    handlers = exit_handlers(monkeypatch)
    if window == "_bind":
        fired = interrupt_once(monkeypatch, unix_channel, "_bind", after=True)
    else:
        fired = interrupt_once(monkeypatch, unix_channel.UnixChannel, "__init__", after=True)
    assert_instance_interrupted_leaves_nothing(
        handlers, fired, "socket", lines_dir, on_message=lambda message: None
    )


# --------------------------------------------------------------------------- PostgreSQL watchdog


def watchdogs() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "inturn-pg-watchdog"}


@pytest.mark.parametrize("after", ["forget_after_fork", "__init__", "watch"])
def test_postgresql_interrupt_as_the_membership_is_made_ends_its_watchdog(
    pg_url, pg_server, monkeypatch, after
):
    """Interrupted as the membership is made (in its ``__init__``, as that returns, as its
    watchdog has just started): no watchdog thread is left, and the session is closed."""
    import psycopg

    from inturn.backends.postgres import membership, store

    sessions: list[int] = []
    join_on = store.PostgresStore._join_on

    def recorded(self: Any, conn: Any, me: Any) -> int:
        sessions.append(conn.info.backend_pid)
        return join_on(self, conn, me)

    monkeypatch.setattr(store.PostgresStore, "_join_on", recorded)
    if after == "forget_after_fork":
        fired = interrupt_once(monkeypatch, membership, "forget_after_fork", after=True)
    else:
        fired = interrupt_once(monkeypatch, store.PostgresMembership, after, after=True)
    before = watchdogs()
    line = inturn.Line("watched")
    with pytest.raises(KeyboardInterrupt):
        line.acquire()
    assert fired
    assert watchdogs() == before
    with psycopg.connect(pg_server, autocommit=True) as conn:
        query = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
        # Closed by the client at once; the server's process ends a moment later.
        until(lambda: conn.execute(query, [sessions[0]]).fetchall() == [], "the session to end")
    assert_free("watched")
    line.close()


def test_a_second_signal_that_cancels_inside_the_first_ones_cancel_does_not_hang():
    """``inturn run`` cancels its wait from a signal handler on the main thread; a second
    signal can come while the first one's handler is inside the token's ``fire`` (a shell
    hanging up sends its stopped jobs SIGHUP and SIGCONT, and then SIGHUP again): its handler
    fires the same token there. With a plain lock the waiter slept on itself for ever."""
    from inturn.backends.base import CancelToken

    token = CancelToken(by_signal=True)
    woken = threading.Event()
    done = threading.Event()

    def first_handler_interrupted_by_a_second() -> None:
        with token.linked(woken), token._lock:  # as the first handler holds it in ``fire``
            token.cancel()  # the second handler's
        done.set()

    threading.Thread(target=first_handler_interrupted_by_a_second, daemon=True).start()
    assert done.wait(float(BOUND)), "the second cancel waited for a lock held by itself"
    assert token.cancelled and woken.is_set()
