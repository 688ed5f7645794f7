"""Many waiters in one process: a burst of asyncio tasks, or of threads, taking turns at once.

    .venv/bin/python benchmarks/burst.py

An async service that guards something with ``async with inturn.turn(...)`` may see hundreds
of requests arrive together, each a task waiting in line in the same process. This starts
50, 200 and 500 tasks at once on one local line (a folder on tmpfs) and times how fast the
line drains, with the most threads and descriptors the process had meanwhile; then the same
with threads sharing one ``Line``. README, "Many waiters in one process", quotes it. It
prints only; it sets no target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time

from common import markdown_table

import inturn

SIZES = (50, 200, 500)


class Peak:
    """The most threads and open descriptors seen, sampled by each waiter as its turn comes."""

    def __init__(self) -> None:
        self.threads = 0
        self.descriptors = 0

    def sample(self) -> None:
        self.threads = max(self.threads, threading.active_count())
        self.descriptors = max(self.descriptors, len(os.listdir("/proc/self/fd")))


def tasks_at_once(count: int, folder: str, peak: Peak) -> float:
    """Seconds for ``count`` tasks started together to take one turn each."""

    async def one() -> None:
        async with inturn.turn("burst-tasks", directory=folder):
            peak.sample()

    async def every() -> float:
        start = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.monotonic() - start

    return asyncio.run(every())


def threads_at_once(count: int, folder: str, peak: Peak) -> float:
    """Seconds for ``count`` threads sharing one ``Line``, started together, to take one turn
    each."""
    line = inturn.Line("burst-threads", directory=folder)
    gate = threading.Barrier(count + 1)

    def one() -> None:
        gate.wait()
        with line:
            peak.sample()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    start = time.monotonic()
    gate.wait()
    for thread in threads:
        thread.join()
    took = time.monotonic() - start
    line.close()
    return took


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    folder = tempfile.mkdtemp(prefix="inturn-bench-burst-", dir="/dev/shm")
    rows = []
    try:
        for how, run in (("asyncio tasks", tasks_at_once), ("threads, one Line", threads_at_once)):
            for count in SIZES:
                peak = Peak()
                took = run(count, folder, peak)
                rows.append((how, count, f"{count / took:.0f}", peak.threads, peak.descriptors))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("Waiters started together in one process, one turn each, a local line on tmpfs")
    headers = ("waiters", "how many", "turns a second", "most threads", "most descriptors")
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
