"""A process that takes a turn in a line and reports each step on stdout (one line each).

Tests start several of these, read their reports through pipes and steer them with stdin, so
they never guess with sleeps. Usage: ``python worker.py NAME [--slots N] [--timeout S]
[--no-wait] [--hold] [--log FILE] [--work SECONDS] [--machine]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import inturn


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
    args = parser.parse_args()
    line = inturn.Line(args.name, slots=args.slots, scope="machine" if args.machine else "user")
    say("started", os.getpid())

    def progress(p: inturn.Progress) -> None:
        say("waiting", p.ticket, p.position)

    try:
        turn = line.acquire(args.timeout, not args.no_wait, on_progress=progress)
    except inturn.Busy:
        say("busy")
        return 75
    except inturn.Timeout:
        say("timeout")
        return 75
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    dead = turn.abandoned_by.pid if turn.abandoned_by else "-"
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
    turn.release()
    say("released", turn.ticket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
