"""A process that takes a turn in a line and reports each step on stdout (one line each).

Tests start several of these, read their reports through pipes and steer them with stdin, so
they never guess with sleeps. Usage: ``python worker.py NAME [--slots N] [--timeout S]
[--no-wait] [--hold] [--log FILE] [--work SECONDS] [--machine] [--shared] [--max-waiting N]
[--newest-wins] [--record FILE] [--wait-line]``.

Reports: ``started PID``; ``joining MONOTONIC_NS`` (just before it asks for the turn, only
with one of the options of shared turns); ``waiting TICKET POSITION``; ``acquired TICKET
ABANDONED DEAD_PID``; ``released TICKET``; ``busy`` (with ``--max-waiting``, followed by the
message); ``timeout``; ``interrupted``; ``replaced MONOTONIC_NS`` (exit 77); with
``--wait-line``, ``waited MONOTONIC_NS`` once ``Line.wait()`` returned.

``--record FILE`` writes the stay inside into FILE for the independent observer
(``observer.py``): ``enter``, a ``beat`` every few milliseconds while holding, ``exit``; the
name it records under is ``TICKET:PID:MODE`` (``shared`` or ``exclusive``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

import inturn

EXIT_REPLACED = 77


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def others_inside(log: str) -> list[int]:
    """Pids logged as entering the turn, not yet leaving, and still able to run code.

    A killed holder frees its ticket lock in the kernel's exit path, after its memory is
    already gone; it counts as out once it has no address space (vsize 0) or is a zombie.
    """
    inside: set[int] = set()
    with open(log) as rows:
        for row in rows:
            kind, _, pid = row.split()[:3]
            if kind == "enter":
                inside.add(int(pid))
            elif kind == "exit":
                inside.discard(int(pid))
    running = []
    for pid in inside - {os.getpid()}:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, vsize = fields[0], int(fields[20])
        if state not in ("Z", "X") and vsize != 0:
            running.append(pid)
    return running


class Beating:
    """Records the stay inside for the observer, beating while inside so that a holder
    killed there still leaves a lower bound of when it left."""

    def __init__(self, path: str, who: str) -> None:
        from observer import Recorder

        self.recorder = Recorder(path)
        self.who = who
        self.done = threading.Event()
        self.recorder.enter(who)
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(0.005):  # sampling, not synchronisation
            self.recorder.beat(self.who)

    def exit(self) -> None:
        self.done.set()
        self.thread.join()
        self.recorder.exit(self.who)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--hold", action="store_true", help="hold until a line arrives on stdin")
    parser.add_argument("--log")
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--machine", action="store_true", help="the line every user shares")
    parser.add_argument("--shared", action="store_true", help="a shared turn (a reader)")
    parser.add_argument("--max-waiting", type=int, help="leave at once if N already wait")
    parser.add_argument("--newest-wins", action="store_true", help="replace older such waiters")
    parser.add_argument("--record", help="observer log of the stay inside (observer.py)")
    parser.add_argument("--wait-line", action="store_true", help="Line.wait() instead of a turn")
    args = parser.parse_args()
    line = inturn.Line(args.name, slots=args.slots, scope="machine" if args.machine else "user")
    say("started", os.getpid())

    def progress(p: inturn.Progress) -> None:
        say("waiting", p.ticket, p.position)

    # Only the options asked for are passed, so that the worker keeps working where the
    # options of shared turns do not exist.
    options: dict[str, Any] = {}
    if args.shared:
        options["shared"] = True
    if args.max_waiting is not None:
        options["max_waiting"] = args.max_waiting
    if args.newest_wins:
        options["newest_wins"] = True
    if options or args.wait_line:
        line.status()  # the backend is open: the next report comes right before the request
        say("joining", time.monotonic_ns())
    replaced = getattr(inturn, "Replaced", None)
    try:
        if args.wait_line:
            line.wait(args.timeout)
            say("waited", time.monotonic_ns())
            return 0
        turn = line.acquire(args.timeout, not args.no_wait, on_progress=progress, **options)
    except inturn.Busy as exc:
        if args.max_waiting is not None:
            say("busy", str(exc).replace("\n", " "))
        else:
            say("busy")
        return 75
    except inturn.Timeout:
        say("timeout")
        return 75
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except inturn.InturnError as exc:
        if replaced is not None and isinstance(exc, replaced):
            say("replaced", time.monotonic_ns())
            return EXIT_REPLACED
        raise
    dead = turn.abandoned_by.pid if turn.abandoned_by else "-"
    mode = "shared" if args.shared else "exclusive"
    beating = Beating(args.record, f"{turn.ticket}:{os.getpid()}:{mode}") if args.record else None
    if args.log:
        append(args.log, f"enter {turn.ticket} {os.getpid()} {time.monotonic_ns()}")
        if args.slots == 1 and sys.platform.startswith("linux"):
            overlap = others_inside(args.log)
            if overlap:
                append(args.log, f"overlap {turn.ticket} {os.getpid()} {overlap}")
    say("acquired", turn.ticket, int(turn.abandoned), dead)
    if args.hold:
        sys.stdin.readline()
    if args.work:
        time.sleep(args.work)  # simulated work, not synchronisation
    if args.log:
        append(args.log, f"exit {turn.ticket} {os.getpid()} {time.monotonic_ns()}")
    if beating is not None:
        beating.exit()
    turn.release()
    say("released", turn.ticket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
