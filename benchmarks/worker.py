"""A benchmark process that takes a lock on command and reports each step with a timestamp.

Commands, one per line on stdin: ``use KIND FOLDER`` (choose the contender and take it once
while it is free), ``acquire``, ``release``, ``cycle`` (acquire, report, release at once),
``quit``. Reports on stdout: ``ready``, ``using``, ``trying T`` (just before acquire is called),
``queued`` (inturn only: in line and about to sleep), ``acquired T ABANDONED CPU``,
``released T``, ``error MESSAGE``.

``T`` is ``time.monotonic_ns()``, one clock for every process on Linux: the acquire stamp is
taken as the call returns, the release stamp just before release is called. ``CPU`` is this
process's own user + system time spent inside acquire (``getrusage``), in nanoseconds.
``ABANDONED`` is ``1``/``0``, or ``-`` when the library cannot tell.

For the read-mostly benchmark (``readers.py``): ``shared KIND FOLDER`` chooses a reader/writer
contender (taken once, exclusively, while it is free; reports ``using``), then
``rounds MODE COUNT HOLD_MIN HOLD_MAX PAUSE_MIN PAUSE_MAX START SEED`` (``MODE`` is ``read`` or
``write``, times in microseconds, ``START`` a ``monotonic_ns`` stamp) waits until ``START``
and takes ``COUNT`` turns on its own, each after a random pause and held (asleep) for a random
time, then reports ``rounds`` and one ``REQUEST,INLINE,GRANTED,RELEASED`` group per turn:
``INLINE`` is when inturn said the waiter was in line, ``0`` when it was not told.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time

from locks import Contender, SharedContender, open_contender, open_shared_contender


def say(*words: object) -> None:
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


def cpu_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round((usage.ru_utime + usage.ru_stime) * 1e9)


def acquire(lock: Contender) -> None:
    say("trying", time.monotonic_ns())
    before = cpu_ns()
    abandoned = lock.acquire(on_queued=lambda: say("queued"))
    now = time.monotonic_ns()
    spent = cpu_ns() - before
    say("acquired", now, "-" if abandoned is None else int(abandoned), spent)


def release(lock: Contender) -> None:
    now = time.monotonic_ns()
    lock.release()
    say("released", now)


def rounds(lock: SharedContender, words: list[str]) -> None:
    """Take turns on the reader/writer ``lock`` as ``words`` say; report every turn at the end.

    Nothing is said until the last turn, so the pipe costs nothing while the turns are timed.
    """
    mode, count = words[0], int(words[1])
    hold_min, hold_max, pause_min, pause_max = (int(w) / 1e6 for w in words[2:6])
    start, rng = int(words[6]), random.Random(int(words[7]))
    if mode not in ("read", "write"):
        raise ValueError(f"mode must be read or write, not {mode!r}")
    shared = mode == "read"
    clock = time.monotonic_ns
    turns = []
    time.sleep(max(0, start - clock()) / 1e9)
    for _ in range(count):
        time.sleep(rng.uniform(pause_min, pause_max))
        inline = 0

        def queued() -> None:
            nonlocal inline
            inline = clock()

        requested = clock()
        lock.acquire(shared, on_queued=queued)
        granted = clock()
        time.sleep(rng.uniform(hold_min, hold_max))  # the simulated work
        released = clock()
        lock.release()
        turns.append(f"{requested},{inline},{granted},{released}")
    say("rounds", *turns)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    lock: Contender | None = None
    shared_lock: SharedContender | None = None
    say("ready", os.getpid())
    for command in sys.stdin:
        words = command.split()
        try:
            if words[0] == "use":
                lock = open_contender(words[1], words[2])
                lock.acquire()  # once while free: first-use costs stay out of the figures
                lock.release()
                say("using")
            elif words[0] == "shared":
                shared_lock = open_shared_contender(words[1], words[2])
                shared_lock.acquire(shared=False)  # once while free, as for ``use``
                shared_lock.release()
                say("using")
            elif words[0] == "rounds":
                if shared_lock is None:
                    say("error no reader/writer contender: send 'shared KIND FOLDER' first")
                else:
                    rounds(shared_lock, words[1:])
            elif words[0] == "quit":
                return 0
            elif lock is None:
                say("error no contender chosen: send 'use KIND FOLDER' first")
            elif words[0] == "acquire":
                acquire(lock)
            elif words[0] == "release":
                release(lock)
            elif words[0] == "cycle":
                acquire(lock)
                release(lock)
            else:
                say(f"error unknown command {words[0]!r}")
        except Exception as exc:  # reported to the harness, which stops with the message
            say(f"error {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
