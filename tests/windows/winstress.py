"""A Windows process that takes many turns at once, one way, and records each stay (under Wine).

Usage: ``python.exe winstress.py HOW NAME_HEX LOG SLOTS COUNT TURNS``. ``HOW`` is one of the
entry points of ``test_exclusion.py``: ``threads-one-line``, ``threads-line-each``,
``sync-decorator``, ``async-decorator``, ``generator``, ``async-generator``,
``tasks-at-once``, ``tasks-one-by-one``, ``turn-object`` and ``lookers`` (threads with a
``Line`` each while other threads look at the line through those same ``Line``s). Each
critical section takes its entry and exit times (``time.monotonic_ns``, one clock in one
process) while it is certainly inside; the rows are kept in memory and written to ``LOG`` in
``observer.py``'s format at the end, for the test to compare. Reports on stdout:
``done ENTRIES`` or ``error ...``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import inturn

WORK = 0.0005  # seconds inside each turn: room for an overlap to show
HANG = 300.0  # a bound that only detects a hang


class Rows:
    """Rows of ``observer.py``'s log, taken inside the turn, written out at the end."""

    def __init__(self) -> None:
        self.rows: list[str] = []  # list.append is atomic: threads share it

    @contextmanager
    def inside(self, who: str) -> Iterator[None]:
        self.rows.append(f"enter {who} {time.monotonic_ns()}")
        try:
            yield
        finally:
            self.rows.append(f"exit {who} {time.monotonic_ns()}")

    def save(self, path: str) -> int:
        with open(path, "w", encoding="ascii") as log:
            log.write("".join(row + "\n" for row in self.rows))
        return sum(row.startswith("enter") for row in self.rows)


def in_threads(count: int, body: Callable[[int], None]) -> None:
    start = threading.Barrier(count)
    errors: list[str] = []

    def run(index: int) -> None:
        try:
            start.wait(HANG)
            body(index)
        except BaseException as exc:
            errors.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"threads still running after {HANG:g}s: {errors}")
    if errors:
        raise RuntimeError("; ".join(errors[:5]))


def main() -> int:
    how, name_hex, log, slots_text, count_text, turns_text = sys.argv[1:]
    name = bytes.fromhex(name_hex).decode("utf-8", "surrogatepass")
    slots, count, turns = int(slots_text), int(count_text), int(turns_text)
    rows = Rows()
    try:
        SCENARIOS[how](name, rows, slots, count, turns)
    except BaseException as exc:
        print("error", f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        return 1
    print("done", rows.save(log), flush=True)
    return 0


def threads_one_line(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    line = inturn.Line(name, slots)

    def body(index: int) -> None:
        for _ in range(turns):
            with line.acquire() as held, rows.inside(f"{held.ticket}:t{index}"):
                time.sleep(WORK)

    in_threads(count, body)


def threads_line_each(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    def body(index: int) -> None:
        line = inturn.Line(name, slots)
        try:
            for _ in range(turns):
                with line as held, rows.inside(f"{held.ticket}:t{index}"):
                    time.sleep(WORK)
        finally:
            line.close()

    in_threads(count, body)


def sync_decorator(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    @inturn.turn(name, slots)
    def job(index: int, turn: int) -> None:
        with rows.inside(f"t{index}-{turn}"):
            time.sleep(WORK)

    in_threads(count, lambda index: [job(index, turn) for turn in range(turns)])


def async_decorator(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    @inturn.turn(name, slots)
    async def job(index: int, turn: int) -> None:
        with rows.inside(f"a{index}-{turn}"):
            await asyncio.sleep(WORK)

    async def scenario() -> None:
        for turn in range(turns):
            await asyncio.gather(*(job(i, turn) for i in range(count)))

    asyncio.run(asyncio.wait_for(scenario(), HANG))


def generator(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    @inturn.turn(name, slots)
    def items(index: int, turn: int) -> Iterator[int]:
        with rows.inside(f"g{index}-{turn}"):
            for item in range(3):
                time.sleep(WORK / 3)
                yield item

    in_threads(count, lambda index: [list(items(index, turn)) for turn in range(turns)])


def async_generator(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    @inturn.turn(name, slots)
    async def items(index: int, turn: int) -> AsyncIterator[int]:
        with rows.inside(f"ag{index}-{turn}"):
            for item in range(3):
                await asyncio.sleep(WORK / 3)
                yield item

    async def drain(index: int, turn: int) -> list[int]:
        return [item async for item in items(index, turn)]

    async def scenario() -> None:
        for turn in range(turns):
            await asyncio.gather(*(drain(i, turn) for i in range(count)))

    asyncio.run(asyncio.wait_for(scenario(), HANG))


def tasks_at_once(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    async def task(index: int, turn: int) -> None:
        async with inturn.turn(name, slots) as held:
            with rows.inside(f"{held.ticket}:a{index}-{turn}"):
                await asyncio.sleep(WORK)

    async def scenario() -> None:
        for turn in range(turns):
            await asyncio.gather(*(task(i, turn) for i in range(count)))

    asyncio.run(asyncio.wait_for(scenario(), HANG))


def tasks_one_by_one(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    """Each task arrives while the one before it is inside."""

    async def task(index: int, inside: asyncio.Event) -> None:
        async with inturn.turn(name, slots) as held:
            with rows.inside(f"{held.ticket}:a{index}"):
                inside.set()
                await asyncio.sleep(0.01)

    async def scenario() -> None:
        tasks = []
        for index in range(count * turns):
            inside = asyncio.Event()
            tasks.append(asyncio.create_task(task(index, inside)))
            entered = asyncio.create_task(inside.wait())
            await asyncio.wait({entered, tasks[-1]}, return_when=asyncio.FIRST_COMPLETED)
            entered.cancel()
            if tasks[-1].done():
                tasks[-1].result()
        await asyncio.gather(*tasks)

    asyncio.run(asyncio.wait_for(scenario(), HANG))


def turn_object(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    """One ``turn()`` entered by many tasks: each must leave with its own ticket."""
    shared = inturn.turn(name, slots)
    rng = random.Random(7)
    problems: list[str] = []

    async def task(index: int, turn: int) -> None:
        async with shared as held:
            with rows.inside(f"{held.ticket}:a{index}-{turn}"):
                await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
        if held.held:
            problems.append(f"task {index} left, but its ticket {held.ticket} is still held")

    async def scenario() -> None:
        for turn in range(turns):
            await asyncio.gather(*(task(i, turn) for i in range(count)))

    asyncio.run(asyncio.wait_for(scenario(), HANG))
    if problems:
        raise RuntimeError("; ".join(problems[:5]))


def lookers(name: str, rows: Rows, slots: int, count: int, turns: int) -> None:
    """Threads take turns, each through a ``Line`` of its own, while two other threads look
    at the line through two of those same ``Line``s, as the status line of a waiter does."""
    lines = [inturn.Line(name, slots) for _ in range(count)]
    stop = threading.Event()
    looks = [0, 0]

    def look(index: int) -> None:
        while not stop.is_set():
            lines[index].status()
            looks[index] += 1

    watchers = [threading.Thread(target=look, args=(i,), daemon=True) for i in range(2)]
    lines[0].status()
    for watcher in watchers:
        watcher.start()

    def body(index: int) -> None:
        for _ in range(turns):
            with lines[index].acquire() as held, rows.inside(f"{held.ticket}:t{index}"):
                time.sleep(WORK)

    try:
        in_threads(count, body)
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join(HANG)
    if not all(looks):
        raise RuntimeError(f"the lookers never looked: {looks}")


SCENARIOS: dict[str, Callable[[str, Rows, int, int, int], None]] = {
    "threads-one-line": threads_one_line,
    "threads-line-each": threads_line_each,
    "sync-decorator": sync_decorator,
    "async-decorator": async_decorator,
    "generator": generator,
    "async-generator": async_generator,
    "tasks-at-once": tasks_at_once,
    "tasks-one-by-one": tasks_one_by_one,
    "turn-object": turn_object,
    "lookers": lookers,
}


if __name__ == "__main__":
    sys.exit(main())
