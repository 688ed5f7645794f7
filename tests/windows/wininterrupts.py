"""Ctrl-C at chosen points of a Windows join, release or ``single_instance`` start, in one
Windows process that lives on afterwards, as a REPL or a service does (runs under Wine).

Usage: ``python.exe wininterrupts.py CASE...`` runs each case on a line of its own: one
function raises ``KeyboardInterrupt`` once (before or after doing its work), then the case
looks for what was left behind: a ticket mutex owner thread, a listener thread, a ticket file
in the lines folder, a named pipe, a mutex this process took and kept, a line another thread
cannot take. Says ``case CASE LINE ok`` or ``case CASE LINE left WHAT; ...``, then ``done``,
and stays until a line comes on stdin, so that its leftovers are there for another process.

``python.exe wininterrupts.py --check LINE...`` is that other process: it takes each line
(all at once, each within ``BOUND`` seconds) and says ``free LINE`` or ``taken LINE WHY``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import inturn
import inturn.line
import inturn.messages
from inturn import win32
from inturn.backends import pipe_channel, windows
from inturn.backends.folders import SHARED, TICKET

BOUND = 10.0  # seconds a line that must be free may take to be had
LEFTOVER_THREADS = ("inturn-ticket", "inturn-listen", "inturn-on-message")


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def interrupted(
    owner: object,
    name: str,
    after: bool = False,
    times: int = 1,
    when: Callable[..., bool] = lambda *args, **kwargs: True,
    first: Callable[[], object] = lambda: None,
) -> Iterator[list[bool]]:
    """``owner.name`` raises ``KeyboardInterrupt`` the first ``times`` times it is called
    with arguments ``when`` accepts (``first`` runs before the first of them): before it does
    anything, or ``after`` it did its work. The list says how often it fired."""
    real: Callable[..., Any] = getattr(owner, name)
    fired: list[bool] = []

    def interrupting(*args: Any, **kwargs: Any) -> Any:
        if len(fired) >= times or not when(*args, **kwargs):
            return real(*args, **kwargs)
        if not fired:
            first()
        fired.append(True)
        if after:
            real(*args, **kwargs)
        raise KeyboardInterrupt(f"injected in {name}")

    setattr(owner, name, interrupting)
    try:
        yield fired
    finally:
        setattr(owner, name, real)


def expect_interrupt(action: Callable[[], object], fired: list[bool]) -> None:
    try:
        action()
    except KeyboardInterrupt:
        assert fired, "interrupted, but not where the case says"
        return
    raise AssertionError("not interrupted")


def in_thread(action: Callable[[], object]) -> object:
    """What ``action`` returns (or raises) when another thread of this process runs it:
    mutexes belong to threads, so one this thread kept by mistake is still seen as taken."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(action())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]


def take(name: str, bound: float = BOUND) -> str | None:
    """Take line ``name`` and give it back: None, or why that failed."""
    line = inturn.Line(name)
    try:
        with line.acquire(timeout=bound):
            pass
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        line.close()
    return None


def held_in_thread(name: str) -> inturn.Turn:
    """A turn of line ``name`` taken by another thread (this one may then queue behind it)."""
    turn = in_thread(lambda: inturn.Line(name).acquire())
    assert isinstance(turn, inturn.Turn), turn
    return turn


def ticket_mutex(turn: inturn.Turn) -> int:
    """A handle of our own on the mutex of ``turn``'s ticket, which keeps it in existence."""
    membership = turn._membership
    assert isinstance(membership, windows.WindowsMembership)
    handle = win32.OpenMutexW(win32.SYNCHRONIZE, False, membership.owner.name)
    assert handle
    return int(handle)


def mutex_free(handle: int) -> bool:
    def look() -> bool:
        if win32.WaitForSingleObject(handle, 0) in (win32.WAIT_OBJECT_0, win32.WAIT_ABANDONED_0):
            win32.ReleaseMutex(handle)
            return True
        return False

    return in_thread(look) is True


def pipe_exists(address: str) -> bool:
    handle = win32.CreateFileW(address, win32.GENERIC_READ, 0, None, win32.OPEN_EXISTING, 0, None)
    if handle is None or handle == win32.INVALID_HANDLE_VALUE:
        return win32.last_error() != win32.ERROR_FILE_NOT_FOUND
    win32.CloseHandle(handle)
    return True


def tickets() -> set[str]:
    """The ticket files in the lines folder."""
    found = set()
    for where, _, files in os.walk(os.environ["INTURN_DIR"]):
        found |= {os.path.join(where, f) for f in files if f.endswith((TICKET, SHARED))}
    return found


class Case:
    """One case's line, and what it asks to be looked at besides the usual."""

    def __init__(self, name: str) -> None:
        self.line = f"ctrl-c-{name}"
        self.mutexes: list[int] = []
        self.pipes: list[str] = []
        self.kept: list[inturn.Line] = []  # kept, as a REPL keeps its variables
        self.threads = set(threading.enumerate())  # an earlier case's are not this one's
        self.files = tickets()

    def new_line(self) -> inturn.Line:
        line = inturn.Line(self.line)
        self.kept.append(line)
        return line

    def leftovers(self) -> list[str]:
        threads = set(threading.enumerate()) - self.threads
        left = [f"thread {t.name}" for t in threads if t.name in LEFTOVER_THREADS]
        left += [f"file {f}" for f in sorted(tickets() - self.files)]
        left += [f"pipe {p}" for p in self.pipes if pipe_exists(p)]
        left += ["a ticket's mutex kept taken" for m in self.mutexes if not mutex_free(m)]
        why = in_thread(lambda: take(self.line))
        if why is not None:
            left.append(f"the line cannot be taken ({why})")
        return left


# --------------------------------------------------------------------------- joins


def owner_starting(case: Case) -> None:
    """As the ticket's owner thread is started, before it said it made the mutex."""
    starting = windows._Owner.__init__.__code__
    with interrupted(
        threading.Event, "wait", when=lambda *a, **k: sys._getframe(2).f_code is starting
    ) as fired:
        expect_interrupt(case.new_line().acquire, fired)


def tidying(case: Case) -> None:
    """After the ticket is published, as the line's litter is tidied."""
    with interrupted(windows.WindowsStore, "_tidy_litter") as fired:
        expect_interrupt(case.new_line().acquire, fired)


def membership_made(case: Case) -> None:
    """As the membership is made."""
    with interrupted(windows.WindowsMembership, "__init__", after=True) as fired:
        expect_interrupt(case.new_line().acquire, fired)


def guard_taken(case: Case) -> None:
    """As the wait for the line's guard returns with it, no deadline given."""
    forever = lambda handle, ms: ms == win32.INFINITE  # noqa: E731
    with interrupted(win32, "WaitForSingleObject", after=True, when=forever) as fired:
        expect_interrupt(case.new_line().acquire, fired)


def guard_taken_by_a_timed_wait(case: Case) -> None:
    """As the wait for the line's guard returns with it, with a deadline."""
    with interrupted(win32, "wait_handles", after=True) as fired:
        expect_interrupt(lambda: case.new_line().acquire(timeout=60), fired)


def ahead_gone(case: Case) -> None:
    """As the wait for the one ahead returns with its mutex (it just left)."""
    holder = held_in_thread(case.line)
    case.mutexes.append(ticket_mutex(holder))
    with interrupted(win32, "wait_handles", after=True, first=holder.release) as fired:
        expect_interrupt(case.new_line().acquire, fired)


def ahead_judged_dead(case: Case) -> None:
    """As a look at the ticket ahead takes its mutex, to find its owner gone."""
    holder = held_in_thread(case.line)
    case.mutexes.append(ticket_mutex(holder))
    membership = holder._membership
    assert isinstance(membership, windows.WindowsMembership)
    membership.owner.release()  # its mutex free, its record there: a dead ticket
    at_once = lambda handle, ms: ms == 0  # noqa: E731
    with interrupted(win32, "WaitForSingleObject", after=True, when=at_once) as fired:
        expect_interrupt(case.new_line().acquire, fired)
    holder.release()


# --------------------------------------------------------------------------- releases


def release_interrupted(case: Case, owner: object, name: str, times: int = 1) -> None:
    turn = case.new_line().acquire()
    with interrupted(owner, name, times=times) as fired:
        expect_interrupt(turn.release, fired)
    assert len(fired) == times
    assert turn.held == (times == 2), "held after a release finished, or freed when cut short"
    turn.release()
    assert not turn.held


def leave_before_the_mutex(case: Case) -> None:
    """Once the record is gone, before the mutex is released."""
    release_interrupted(case, windows._Owner, "release")


def leave_before_the_record(case: Case) -> None:
    """Once the ticket file is closed, before it is removed."""
    release_interrupted(case, os, "unlink")


def leave_twice(case: Case) -> None:
    """Twice before the mutex is released: still held, and a release again finishes it."""
    release_interrupted(case, windows._Owner, "release", times=2)


# --------------------------------------------------------------------------- single_instance


def instance_at(owner: object, name: str) -> Callable[[Case], None]:
    def case(case: Case) -> None:
        real = pipe_channel.PipeChannel.__init__

        def noted(channel: Any, address: str, *args: Any) -> None:
            case.pipes.append(address)
            real(channel, address, *args)

        pipe_channel.PipeChannel.__init__ = noted  # type: ignore[method-assign]
        try:
            with interrupted(owner, name, after=True) as fired:
                start = lambda: inturn.single_instance(case.line, on_message=print)  # noqa: E731
                expect_interrupt(start, fired)
        finally:
            pipe_channel.PipeChannel.__init__ = real  # type: ignore[method-assign]

    return case


CASES: dict[str, Callable[[Case], None]] = {
    "owner-starting": owner_starting,
    "tidying": tidying,
    "membership-made": membership_made,
    "guard-taken": guard_taken,
    "guard-taken-timed": guard_taken_by_a_timed_wait,
    "ahead-gone": ahead_gone,
    "ahead-judged-dead": ahead_judged_dead,
    "leave-before-mutex": leave_before_the_mutex,
    "leave-before-record": leave_before_the_record,
    "leave-twice": leave_twice,
    "instance-pipe-made": instance_at(pipe_channel.PipeChannel, "__init__"),
    "instance-take-turn": instance_at(inturn.line, "take_turn"),
    "instance-listener": instance_at(inturn.messages.Listener, "__init__"),
    "instance-handed-over": instance_at(inturn.line.Turn, "__init__"),
    "instance-listening": instance_at(inturn.messages.Listener, "start"),
}


def check(lines: list[str]) -> None:
    found: dict[str, str | None] = {}
    threads = [threading.Thread(target=lambda n=n: found.update({n: take(n)})) for n in lines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for line in lines:
        say("free", line) if found[line] is None else say("taken", line, found[line])


def main() -> None:
    if sys.argv[1] == "--check":
        check(sys.argv[2:])
        return
    for name in sys.argv[1:]:
        case = Case(name)
        try:
            CASES[name](case)
            left = case.leftovers()
        except Exception as exc:  # said, so that the other cases still run
            left = [f"failed: {type(exc).__name__}: {exc}"]
        say("case", name, case.line, "left " + "; ".join(left) if left else "ok")
    say("done")
    sys.stdin.readline()


if __name__ == "__main__":
    main()
