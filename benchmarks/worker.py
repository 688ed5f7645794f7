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
"""

from __future__ import annotations

import os
import resource
import sys
import time

from locks import Contender, open_contender


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


def main() -> int:
    lock: Contender | None = None
    say("ready", os.getpid())
    for command in sys.stdin:
        words = command.split()
        try:
            if words[0] == "use":
                lock = open_contender(words[1], words[2])
                lock.acquire()  # once while free: first-use costs stay out of the figures
                lock.release()
                say("using")
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
