"""An independent observer of critical sections: who was inside, from when to when.

Code under test appends one row per event to a shared log file::

    enter <who> <monotonic_ns>
    beat  <who> <monotonic_ns>     (optional: still inside)
    exit  <who> <monotonic_ns>

Each row is one ``os.write`` on a descriptor opened with ``O_APPEND``, so threads and
processes can share one file without mixing rows. ``time.monotonic_ns()`` reads
``CLOCK_MONOTONIC``, which on Linux is the same clock in every process of the machine, so
rows from different processes compare directly.

Every row is written while its writer is certainly inside (after the acquire returned and
before the release began), so a recorded interval lies within the real turn: an overlap of
recorded intervals is a real overlap, never an artefact. A writer killed inside leaves no
``exit`` row; its interval then ends at its last row (its last heartbeat), a lower bound
of when it really left. That is why a command that can be killed should beat.

Run as a program it is the command a test gives ``inturn run`` (see ``command()``): it
enters, says ``inside WHO`` on stdout, beats every few milliseconds while it works or holds,
and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

KINDS = ("enter", "beat", "exit")


def _open(path: str | os.PathLike[str]) -> int:
    private = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0)  # POSIX, Windows
    return os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | private, 0o644)


def write_row(fd: int, kind: str, who: str) -> None:
    """One row, one ``write``: rows from many writers never interleave."""
    assert kind in KINDS and who and not any(c.isspace() for c in who), (kind, who)
    os.write(fd, f"{kind} {who} {time.monotonic_ns()}\n".encode())


class Recorder:
    """Records critical sections into ``path``; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = _open(path)

    def enter(self, who: str) -> None:
        write_row(self._fd, "enter", who)

    def beat(self, who: str) -> None:
        write_row(self._fd, "beat", who)

    def exit(self, who: str) -> None:
        write_row(self._fd, "exit", who)

    @contextmanager
    def inside(self, who: str) -> Iterator[None]:
        """Wrap the body of a critical section (the code that runs while holding)."""
        self.enter(who)
        try:
            yield
        finally:
            self.exit(who)

    def close(self) -> None:
        os.close(self._fd)


class Interval(NamedTuple):
    """One stay inside: from ``enter`` to ``exit`` (or to the last sign of life)."""

    who: str
    start: int
    end: int
    exited: bool  # False when the writer never wrote ``exit`` (killed inside)

    def __str__(self) -> str:
        how = "" if self.exited else ", no exit row: ends at its last beat"
        return (
            f"{self.who} [{self.start} .. {self.end}] ({(self.end - self.start) / 1e6:.3f} ms{how})"
        )


def read_intervals(path: str | os.PathLike[str]) -> list[Interval]:
    """The intervals recorded in ``path``, by entry time. Each ``who`` enters at most once."""
    starts: dict[str, int] = {}
    last: dict[str, int] = {}
    exited: set[str] = set()
    text = Path(path).read_text() if Path(path).exists() else ""
    for number, row in enumerate(text.splitlines(), 1):
        words = row.split()
        assert len(words) == 3 and words[0] in KINDS, f"{path}:{number}: bad row {row!r}"
        kind, who, stamp = words[0], words[1], int(words[2])
        if kind == "enter":
            assert who not in starts, f"{path}:{number}: {who} entered twice"
            starts[who] = stamp
        else:
            assert who in starts, f"{path}:{number}: {kind} of {who} before it entered"
            assert who not in exited, f"{path}:{number}: {kind} of {who} after it exited"
            if kind == "exit":
                exited.add(who)
        last[who] = max(last.get(who, stamp), stamp)
    found = [Interval(who, start, last[who], who in exited) for who, start in starts.items()]
    return sorted(found, key=lambda interval: interval.start)


def crowds(intervals: Sequence[Interval], limit: int) -> list[list[Interval]]:
    """Every moment more than ``limit`` were inside: the intervals open at that moment.

    A sweep over entries and exits in time order. At equal times exits count first, so
    intervals that merely touch do not overlap; but an interval of no length (a writer
    killed right after its ``enter`` row) leaves only after its own entry, so it still
    counts against whoever was inside at that moment.
    """
    enter, exit_first, exit_last = 1, 0, 2  # the order of events at one moment
    events = sorted(
        [(i.start, enter, n) for n, i in enumerate(intervals)]
        + [
            (i.end, exit_first if i.end > i.start else exit_last, n)
            for n, i in enumerate(intervals)
        ]
    )
    inside: set[int] = set()
    found = []
    for _, kind, index in events:
        if kind == enter:
            inside.add(index)
            if len(inside) > limit:
                found.append([intervals[n] for n in sorted(inside)])
        else:
            inside.discard(index)
    return found


def max_inside(intervals: Sequence[Interval]) -> int:
    """The largest number of intervals open at one moment."""
    most = 0
    for crowd in crowds(intervals, 0):
        most = max(most, len(crowd))
    return most


def assert_exclusive(
    path: str | os.PathLike[str], slots: int = 1, expected: int | None = None
) -> list[Interval]:
    """Fail, naming the overlapping intervals, if more than ``slots`` were ever inside.

    ``expected`` is how many entries the test made, to catch a test that observed nothing.
    Returns the intervals, by entry time.
    """
    intervals = read_intervals(path)
    if expected is not None:
        assert len(intervals) == expected, f"{len(intervals)} entries recorded, not {expected}"
    found = crowds(intervals, slots)
    if found:
        most = max(len(crowd) for crowd in found)
        shown = "\n".join(
            f"  {len(crowd)} inside: " + "; ".join(str(i) for i in crowd) for crowd in found[:5]
        )
        raise AssertionError(
            f"{len(found)} entries found more than {slots} inside, up to {most} at once:\n{shown}"
        )
    return intervals


# --------------------------------------------------------------------------- the command


HERE = Path(__file__).resolve().parent


def command(
    log: str | os.PathLike[str],
    *,
    who: str | None = None,
    seconds: float = 0.0,
    every: float = 0.005,
    hold: bool = False,
) -> list[str]:
    """The argv of a command for ``inturn run`` that records its own stay in ``log``.

    It enters, says ``inside WHO`` on stdout, beats every ``every`` seconds for ``seconds``
    (or, with ``hold``, until a line or end of file arrives on its stdin, or reading it
    fails, as a hung-up terminal's does), then exits 0.
    ``who`` defaults to ``TICKET:PID`` from ``$INTURN_TICKET``, so rows sort by ticket.
    """
    argv = [sys.executable, str(HERE / "observer.py"), os.fspath(log)]
    argv += ["--seconds", repr(seconds), "--every", repr(every)]
    if who is not None:
        argv += ["--who", who]
    if hold:
        argv.append("--hold")
    return argv


def ticket_of(who: str) -> int:
    """The ticket in a ``TICKET:PID`` name written by the command."""
    return int(who.split(":", 1)[0])


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="record a stay inside a turn")
    parser.add_argument("log")
    parser.add_argument("--who")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--every", type=float, default=0.005)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args(argv)
    who = args.who or f"{os.environ.get('INTURN_TICKET', '0')}:{os.getpid()}"
    fd = _open(args.log)
    write_row(fd, "enter", who)
    sys.stdout.write(f"inside {who}\n")
    sys.stdout.flush()
    done = threading.Event()
    if args.hold:

        def wait_for_stdin() -> None:
            with contextlib.suppress(OSError):  # a hung-up terminal (EIO) ends input too
                sys.stdin.readline()
            done.set()

        threading.Thread(target=wait_for_stdin, daemon=True).start()
    deadline = time.monotonic() + args.seconds
    # The beat is sampling, not synchronisation: it only bounds how much of a killed
    # command's stay the log can miss.
    while not done.wait(args.every):
        write_row(fd, "beat", who)
        if not args.hold and time.monotonic() >= deadline:
            break
    write_row(fd, "exit", who)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
