"""Never more than ``slots`` inside, whoever asks and however: a stress test of every entry point.

Each test runs on the local folder, PostgreSQL and Redis (``where``), with ``slots=1`` and
``slots=3``. The critical sections record their own entry and exit times (``observer.py``)
and the test compares the intervals afterwards: inturn's own status is never the witness.
Server backends get fewer threads and turns (every turn costs round trips and, on
PostgreSQL, a session of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    Run,
    Where,
    child_env,
    in_threads,
    inturn_cmd,
    read_lines,
    run_async,
)
from observer import (
    Recorder,
    assert_exclusive,
    command,
    max_inside,
    read_intervals,
    ticket_of,
)

# (threads or tasks, turns each) per backend; fewer on servers, where every turn costs round
# trips and, on PostgreSQL, a session of its own.
SCALE = {"local": (40, 25), "postgresql": (10, 6), "redis": (16, 10)}
WORK = 0.0005  # seconds spent inside each turn: simulated work, so that overlaps have room

slots_1_and_3 = pytest.mark.parametrize("slots", [1, 3], ids=["slots1", "slots3"])


def someone_in(line: inturn.Line) -> bool:
    status = line.status()
    return bool(status.holders or status.waiters)


def assert_free(name: str, slots: int = 1) -> None:
    """Nobody left in line, and the line can be taken (on a server, after the lock delay if
    the last turn ended uncleanly: a holder killed in the test)."""
    line = inturn.Line(name, slots)
    status = line.status()
    assert status.holders == () and status.waiters == (), status
    line.acquire(timeout=REPORT_TIMEOUT).release()


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("how", ["acquire", "with-line", "lock-style"])
@slots_1_and_3
def test_threads_sharing_one_line(where: Where, tmp_path: Path, slots: int, how: str) -> None:
    """Turns taken with ``with line.acquire():``, with ``with line:``, which holds a turn
    for the block as ``with lock:`` does, or with ``line.acquire()`` then ``line.release()``,
    as with a lock, the ``Turn`` not kept."""
    count, turns = SCALE[where.kind]
    log = tmp_path / "log"
    recorder = Recorder(log)
    line = inturn.Line("shared", slots)

    def body(index: int) -> None:
        for turn in range(turns):
            if how == "lock-style":
                line.acquire()
                try:
                    with recorder.inside(f"{turn}:t{index}"):
                        time.sleep(WORK)
                finally:
                    line.release()
                continue
            block = line.acquire() if how == "acquire" else line
            with block as held, recorder.inside(f"{held.ticket}:t{index}"):
                time.sleep(WORK)

    try:
        in_threads(count, body)
    finally:
        line.close()
    assert_exclusive(log, slots, expected=count * turns)
    assert_free("shared", slots)


@slots_1_and_3
def test_threads_with_a_line_each(where: Where, tmp_path: Path, slots: int) -> None:
    count, turns = SCALE[where.kind]
    log = tmp_path / "log"
    recorder = Recorder(log)

    def body(index: int) -> None:
        line = inturn.Line("own", slots)
        try:
            for _ in range(turns):
                with line.acquire() as held, recorder.inside(f"{held.ticket}:t{index}"):
                    time.sleep(WORK)
        finally:
            line.close()

    in_threads(count, body)
    assert_exclusive(log, slots, expected=count * turns)
    assert_free("own", slots)


@slots_1_and_3
def test_sync_decorator_called_from_many_threads(where: Where, tmp_path: Path, slots: int) -> None:
    count, turns = SCALE[where.kind]
    log = tmp_path / "log"
    recorder = Recorder(log)

    @inturn.turn("decorated", slots)
    def job(index: int, turn: int) -> int:
        with recorder.inside(f"t{index}-{turn}"):
            time.sleep(WORK)
        return index

    def body(index: int) -> None:
        for turn in range(turns):
            assert job(index, turn) == index

    in_threads(count, body)
    assert_exclusive(log, slots, expected=count * turns)
    assert_free("decorated", slots)


@slots_1_and_3
def test_decorated_generator_iterated_from_many_threads(
    where: Where, tmp_path: Path, slots: int
) -> None:
    """A decorated generator function's body runs when it is iterated, not when it is called:
    the turn is held from its first item to its end (or its ``close``)."""
    count, turns = SCALE[where.kind]
    log = tmp_path / "log"
    recorder = Recorder(log)

    @inturn.turn("generator", slots)
    def rows(index: int, turn: int) -> Iterator[int]:
        with recorder.inside(f"g{index}-{turn}"):
            for row in range(3):
                time.sleep(WORK / 3)
                yield row

    def body(index: int) -> None:
        for turn in range(turns):
            if turn % 2:
                assert list(rows(index, turn)) == [0, 1, 2]
            else:  # left after the first item: closing the generator gives the turn back
                with contextlib.closing(rows(index, turn)) as first_only:
                    assert next(first_only) == 0

    in_threads(count, body)
    assert_exclusive(log, slots, expected=count * turns)
    assert_free("generator", slots)


# --------------------------------------------------------------------------- asyncio


@slots_1_and_3
@pytest.mark.parametrize("kind", ["function", "object"])
def test_async_decorator_with_many_tasks(
    where: Where, tmp_path: Path, slots: int, kind: str
) -> None:
    """An ``async def`` decorated, or an object whose ``__call__`` is one: the turn is held
    across the await."""
    count = SCALE[where.kind][0]
    log = tmp_path / "log"
    recorder = Recorder(log)

    async def work(index: int) -> int:
        with recorder.inside(f"a{index}"):
            await asyncio.sleep(WORK)
        return index

    class Job:
        async def __call__(self, index: int) -> int:
            return await work(index)

    job = inturn.turn("adecorated", slots)(work if kind == "function" else Job())

    async def scenario() -> None:
        results = await asyncio.gather(*(job(i) for i in range(count)))
        assert sorted(results) == list(range(count))

    run_async(scenario)
    assert_exclusive(log, slots, expected=count)
    assert_free("adecorated", slots)


def test_a_decorated_plain_function_that_returns_an_awaitable_is_refused(lines_dir: Path) -> None:
    """``@inturn.turn`` over another decorator's plain wrapper of an ``async def``: the turn
    would end when the coroutine is made, before its body runs, and tasks would overlap. The
    call is refused with a line that says where the decorator belongs, and the coroutine is
    closed unrun."""
    ran: list[int] = []

    def passthrough(func: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            return func(*args)

        return wrapper

    @inturn.turn("wrapped")
    @passthrough
    async def job(index: int) -> None:
        ran.append(index)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        with pytest.raises(inturn.UsageError, match=r"right on the async def") as refused:
            job(1)
    assert "wrapper" in str(refused.value) and ran == []
    assert_free("wrapped", 1)


@slots_1_and_3
def test_decorated_async_generator_with_many_tasks(
    where: Where, tmp_path: Path, slots: int
) -> None:
    count = SCALE[where.kind][0]
    log = tmp_path / "log"
    recorder = Recorder(log)

    @inturn.turn("agenerator", slots)
    async def rows(index: int) -> AsyncIterator[int]:
        with recorder.inside(f"ag{index}"):
            for row in range(3):
                await asyncio.sleep(WORK / 3)
                yield row

    async def consume(index: int) -> list[int]:
        if index % 2:
            return [row async for row in rows(index)]
        generator = rows(index)
        try:  # left after the first item: closing the generator gives the turn back
            return [await generator.__anext__()]
        finally:
            await generator.aclose()

    async def scenario() -> None:
        results = await asyncio.gather(*(consume(i) for i in range(count)))
        assert results == [[0, 1, 2] if i % 2 else [0] for i in range(count)]

    run_async(scenario)
    assert_exclusive(log, slots, expected=count)
    assert_free("agenerator", slots)


@pytest.mark.parametrize("how", ["turn", "with-line"])
@slots_1_and_3
def test_async_with_tasks_arriving_all_at_once(
    where: Where, tmp_path: Path, slots: int, how: str
) -> None:
    """``async with inturn.turn(...)`` (a ``turn`` of each task's own), or ``async with line:``
    on one ``Line`` that every task shares."""
    count = SCALE[where.kind][0]
    log = tmp_path / "log"
    recorder = Recorder(log)
    line = inturn.Line("crowd", slots)

    async def task(index: int) -> None:
        block = inturn.turn("crowd", slots) if how == "turn" else line
        async with block as held:
            with recorder.inside(f"{held.ticket}:a{index}"):
                await asyncio.sleep(WORK)

    async def scenario() -> None:
        await asyncio.gather(*(task(i) for i in range(count)))

    try:
        run_async(scenario)
    finally:
        line.close()
    assert_exclusive(log, slots, expected=count)
    assert_free("crowd", slots)


@slots_1_and_3
def test_async_with_tasks_arriving_one_after_another(
    where: Where, tmp_path: Path, slots: int
) -> None:
    """Each task arrives while the one before it is inside, as tasks of one program do."""
    count = min(SCALE[where.kind][0], 16)
    log = tmp_path / "log"
    recorder = Recorder(log)

    async def task(index: int, inside: asyncio.Event) -> None:
        async with inturn.turn("stream", slots) as held:
            with recorder.inside(f"{held.ticket}:a{index}"):
                inside.set()
                await asyncio.sleep(0.01)  # work, during which the next one arrives

    async def scenario() -> None:
        tasks = []
        for index in range(count):
            inside = asyncio.Event()
            tasks.append(asyncio.create_task(task(index, inside)))
            entered = asyncio.create_task(inside.wait())
            await asyncio.wait({entered, tasks[-1]}, return_when=asyncio.FIRST_COMPLETED)
            entered.cancel()
            if tasks[-1].done():
                tasks[-1].result()  # raises what went wrong in it
        await asyncio.gather(*tasks)

    run_async(scenario)
    intervals = assert_exclusive(log, slots, expected=count)
    if slots == 1:
        assert [ticket_of(i.who) for i in intervals] == sorted(ticket_of(i.who) for i in intervals)
    assert_free("stream", slots)


def test_one_turn_object_entered_by_several_tasks(where: Where, tmp_path: Path) -> None:
    """``turn(name, slots=2)`` made once, entered by many tasks: each leaves with its own ticket."""
    count = 12 if where.kind == "local" else 6
    slots = 2
    log = tmp_path / "log"
    recorder = Recorder(log)
    shared = inturn.turn("object", slots=slots)
    rng = random.Random(7)
    pauses = [rng.choice([0, 0.001, 0.005, 0.02]) for _ in range(count)]
    problems: list[str] = []

    async def task(index: int) -> None:
        async with shared as held:
            with recorder.inside(f"{held.ticket}:a{index}"):
                await asyncio.sleep(pauses[index])
        if held.held:
            problems.append(f"task {index} left, but its own ticket {held.ticket} is still held")
        holders = [t.number for t in inturn.Line("object", slots).status().holders]
        if held.ticket in holders:
            problems.append(f"task {index} left, but the line still shows it holding: {holders}")

    async def scenario() -> None:
        await asyncio.gather(*(task(i) for i in range(count)))

    run_async(scenario)
    assert_exclusive(log, slots, expected=count)
    assert not problems, "\n".join(problems)
    assert_free("object", slots)


# --------------------------------------------------------------------------- the command line


@slots_1_and_3
def test_inturn_run_waiters_on_a_terminal(where: Where, tmp_path: Path, slots: int) -> None:
    """Several ``inturn run`` started together, each drawing its live status line (which,
    on the local backend, re-reads the line once a second beside the waiter)."""
    count = 8 if where.kind == "local" else 5
    log = tmp_path / "log"
    runs = [
        Run(
            "terminal",
            "--slots",
            str(slots),
            terminal=True,
            command=command(log, seconds=0.2 if where.kind == "local" else 0.05),
        )
        for _ in range(count)
    ]
    for run in runs:
        assert run.terminal is not None
        drain(run.terminal)
    codes = [run.wait() for run in runs]
    assert codes == [0] * count
    assert_exclusive(log, slots, expected=count)
    assert_free("terminal", slots)


@slots_1_and_3
def test_inturn_run_waiters_without_a_terminal(where: Where, tmp_path: Path, slots: int) -> None:
    """Several ``inturn run`` with no status line to draw (locally they sleep for their turn
    on their main thread), every third told SIGTERM once it is in line: those leave without
    running their command, and the others never overlap."""
    count = 9 if where.kind == "local" else 6
    log = tmp_path / "log"
    line = inturn.Line("plain", slots)
    gates = [line.acquire() for _ in range(slots)]  # everyone queues behind these
    try:
        runs = [
            Run("plain", "--slots", str(slots), command=command(log, seconds=0.02))
            for _ in range(count)
        ]
        waiting: set[int] = set()
        deadline = time.monotonic() + REPORT_TIMEOUT
        while len(waiting) < count:
            assert time.monotonic() < deadline, f"only {len(waiting)} of {count} in line"
            waiting = {t.pid for t in line.status().waiters}
            time.sleep(0.01)
        told = runs[::3]
        for run in told:
            run.proc.send_signal(signal.SIGTERM)
        assert [run.wait() for run in told] == [128 + signal.SIGTERM] * len(told)
    finally:
        for gate in gates:
            gate.release()
    rest = [run for run in runs if run not in told]
    assert [run.wait() for run in rest] == [0] * len(rest)
    assert_exclusive(log, slots, expected=len(rest))
    assert_free("plain", slots)


def drain(terminal: int, seen: queue.Queue[bytes] | None = None) -> None:
    """Read a pseudo-terminal's output in a thread, so its writer never blocks on it."""

    def pump() -> None:
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:
                chunk = b""
            if seen is not None:
                seen.put(chunk)
            if not chunk:
                return

    threading.Thread(target=pump, daemon=True).start()


# --------------------------------------------------------------------------- machine-wide


@slots_1_and_3
def test_a_machine_wide_line_from_every_entry_point_at_once(tmp_path: Path, slots: int) -> None:
    """A machine-wide line keeps its files side by side in a shared sticky folder, under a
    guard that every machine-wide line there shares: threads sharing one ``Line``, threads
    with a ``Line`` each, asyncio tasks and ``inturn run --machine`` commands take turns on
    one line at once, while a thread keeps taking turns in a neighbouring line."""
    folder = tmp_path / "machine"
    folder.mkdir()
    folder.chmod(0o1777)  # as /tmp: root's and sticky
    name, where = "everyone", {"scope": "machine", "directory": str(folder)}
    count, turns = SCALE["local"][0] // 2, SCALE["local"][1] // 2
    commands, tasks = 6, 10
    log = tmp_path / "log"
    recorder = Recorder(log)
    shared = inturn.Line(name, slots, **where)
    env = child_env(INTURN_MACHINE_DIR=str(folder))
    runs = [
        Run(name, "--machine", "--slots", str(slots), env=env, command=command(log, seconds=0.02))
        for _ in range(commands)
    ]

    async def task(index: int) -> None:
        async with inturn.turn(name, slots, **where) as held:
            with recorder.inside(f"{held.ticket}:a{index}"):
                await asyncio.sleep(WORK)

    async def crowd() -> None:
        await asyncio.gather(*(task(i) for i in range(tasks)))

    def body(index: int) -> None:
        if index == count:  # the tasks, all on one event loop
            run_async(crowd)
            return
        if index == count + 1:  # a neighbour: same guard, another line
            neighbour = inturn.Line("neighbour", **where)
            try:
                for _ in range(turns):
                    neighbour.acquire().release()
            finally:
                neighbour.close()
            return
        line = shared if index % 2 else inturn.Line(name, slots, **where)
        for _ in range(turns):
            with line.acquire() as held, recorder.inside(f"{held.ticket}:t{index}"):
                time.sleep(WORK)
        if line is not shared:
            line.close()

    in_threads(count + 2, body)
    assert [run.wait() for run in runs] == [0] * commands
    assert_exclusive(log, slots, expected=count * turns + tasks + commands)
    line = inturn.Line(name, slots, **where)
    assert line.status().holders == () and line.status().waiters == ()
    line.acquire(timeout=REPORT_TIMEOUT).release()


# --------------------------------------------------------------------------- a storm of signals


class Job:
    """``inturn run NAME -- observer command`` in a session of its own, stderr a terminal."""

    def __init__(self, name: str, log: Path, slots: int, env: dict[str, str], hold: bool) -> None:
        self.terminal, child_side = pty.openpty()
        self.proc = subprocess.Popen(
            inturn_cmd("run", "--slots", str(slots), name, "--", *command(log, hold=hold)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=child_side,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a signal can reach its command too
        )
        os.close(child_side)
        assert self.proc.stdout is not None
        self.reports = read_lines(self.proc.stdout)
        self._screen: queue.Queue[bytes] = queue.Queue()
        drain(self.terminal, self._screen)
        self.pid = self.proc.pid
        self.ticket = 0
        self.action = "work"

    def queued(self) -> None:
        """Wait for the status line, drawn just before inturn goes to sleep in line."""
        seen = b""
        while b"waiting for" not in seen:
            try:
                chunk = self._screen.get(timeout=REPORT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"inturn run {self.pid} never queued: {seen!r}") from None
            assert chunk, f"inturn run {self.pid} ended before queueing: {seen!r}"
            seen += chunk

    def inside(self) -> str:
        try:
            line = self.reports.get(timeout=REPORT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"the command of {self.pid} never got in") from None
        words = line.split()
        assert words[:1] == ["inside"], (line, self.proc.poll())
        return words[1]

    def signal(self, signum: int, group: bool = False) -> None:
        try:
            if group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def finish(self) -> None:
        """Let a holding command end (it reads a line from the stdin it shares with inturn)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT, group=True)
            self.signal(signal.SIGKILL, group=True)
        self.proc.wait(REPORT_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(OSError):
            os.close(self.terminal)


WAITING_ACTIONS = ["wait-kill", "wait-kill-group", "wait-term", "wait-stop"]
HOLDING_ACTIONS = ["hold-kill", "hold-kill-group", "hold-term", "hold-stop", "hold-stop-group"]


@slots_1_and_3
def test_storm_of_signals_never_overlaps_and_serves_survivors_in_order(
    where: Where, tmp_path: Path, slots: int, request: pytest.FixtureRequest
) -> None:
    """Random SIGKILL, SIGTERM and SIGSTOP/SIGCONT to ``inturn run`` while waiting and holding.

    A SIGSTOP on Redis stays under a quarter of the lease, the limit the README gives for
    a frozen holder; on the other backends a stopped holder just holds longer.
    """
    name = "storm"
    log = tmp_path / "log"
    count = 24 if where.kind == "local" else 12
    rng = random.Random(f"storm-{where.kind}-{slots}")
    lease = 2.0
    if where.kind == "redis":
        env = child_env(INTURN_BACKEND=request.getfixturevalue("place").url(lease=lease))
        longest_stop = lease / 4 * 0.6
    else:
        env = child_env()
        longest_stop = 0.5
    actions = ["work"] * count
    victims = rng.sample(range(count), count // 2)
    for index in victims:
        actions[index] = rng.choice(WAITING_ACTIONS + HOLDING_ACTIONS)
    gate = inturn.Line(name, slots)
    gates = [gate.acquire() for _ in range(slots)]
    jobs: list[Job] = []
    timers: list[threading.Timer] = []
    try:
        for action in actions:
            job = Job(name, log, slots, env, hold=action.startswith("hold"))
            job.action = action
            jobs.append(job)
            job.queued()  # in line before the next one starts: arrival order is known
        tickets = {t.pid: t.number for t in gate.status().waiters}
        for job in jobs:
            job.ticket = tickets[job.pid]
        assert [job.ticket for job in jobs] == sorted(tickets.values())

        for job in jobs:  # while waiting
            if job.action == "wait-kill":
                job.signal(signal.SIGKILL)
            elif job.action == "wait-kill-group":
                job.signal(signal.SIGKILL, group=True)
            elif job.action == "wait-term":
                job.signal(signal.SIGTERM)
            elif job.action == "wait-stop":
                job.signal(signal.SIGSTOP)
                pause = rng.uniform(0.05, longest_stop)
                timer = threading.Timer(pause, job.signal, (signal.SIGCONT,))
                timers.append(timer)
                timer.start()
        for held in gates:
            held.release()

        for job in jobs:  # while holding, in ticket order
            if job.action.startswith("wait") and job.action != "wait-stop":
                continue
            job.inside()
            if job.action == "hold-kill":
                job.signal(signal.SIGKILL)  # inturn only: its command may hold on (local, pg)
                job.finish()
            elif job.action == "hold-kill-group":
                job.signal(signal.SIGKILL, group=True)
            elif job.action == "hold-term":
                job.signal(signal.SIGTERM)  # passed on to the command, which dies of it
            elif job.action in ("hold-stop", "hold-stop-group"):
                group = job.action == "hold-stop-group"
                job.signal(signal.SIGSTOP, group=group)
                time.sleep(rng.uniform(0.05, longest_stop))  # the fault: a frozen holder
                job.signal(signal.SIGCONT, group=group)
                job.finish()
        codes = {job.ticket: job.proc.wait(REPORT_TIMEOUT) for job in jobs}
    finally:
        for timer in timers:
            timer.cancel()
        for job in jobs:
            job.close()

    survivors = [
        j for j in jobs if j.action in ("work", "wait-stop", "hold-stop", "hold-stop-group")
    ]
    wrong = {j.ticket: (j.action, codes[j.ticket]) for j in survivors if codes[j.ticket] != 0}
    assert not wrong, f"survivors that did not exit 0: {wrong}"
    for job in jobs:
        if job.action in ("wait-term", "hold-term"):
            assert codes[job.ticket] == 128 + signal.SIGTERM, (job.action, codes[job.ticket])
    entered = [j for j in jobs if not j.action.startswith("wait") or j.action == "wait-stop"]
    intervals = assert_exclusive(log, slots, expected=len(entered))
    seen = [ticket_of(i.who) for i in intervals]
    assert sorted(seen) == [j.ticket for j in entered]
    if slots == 1:
        assert seen == sorted(seen), f"not served in ticket order: {seen}"
    finished = {ticket_of(i.who) for i in intervals if i.exited}
    must_finish = {j.ticket for j in survivors} | {
        j.ticket for j in jobs if j.action == "hold-kill" and where.kind != "redis"
    }
    assert must_finish <= finished, f"these never finished: {sorted(must_finish - finished)}"
    with gate.acquire(timeout=REPORT_TIMEOUT):
        pass
    # A process killed in line or holding is gone at once on the local folder and on
    # PostgreSQL; on Redis its ticket lives until its lease runs out (watched, not guessed).
    deadline = time.monotonic() + REPORT_TIMEOUT
    while someone_in(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_free(name, slots)


# --------------------------------------------------------------------------- looking on


@slots_1_and_3
def test_status_in_a_tight_loop_never_lets_two_in(where: Where, tmp_path: Path, slots: int) -> None:
    """Threads and processes that only look (``Line.status()``, ``inturn status``) change
    nothing: the threads taking turns still never overlap.

    Each thread that takes turns has a ``Line`` of its own (sharing one is tested above);
    two lookers share the ``Line`` of a thread in line, as the live status line does.
    """
    count, turns = SCALE[where.kind]
    count, turns = min(count, 12), min(turns, 12)
    log = tmp_path / "log"
    recorder = Recorder(log)
    lines = [inturn.Line("looked-at", slots) for _ in range(count)]
    lines[0].status()
    stop = threading.Event()
    looks = [0, 0, 0]

    def look(index: int) -> None:
        line = lines[index] if index < 2 else inturn.Line("looked-at", slots)
        while not stop.is_set():
            line.status()
            looks[index] += 1

    lookers = [threading.Thread(target=look, args=(i,), daemon=True) for i in range(3)]
    loop = "import inturn, sys\nline = inturn.Line(sys.argv[1])\nprint('looking', flush=True)\n"
    loop += "while True:\n    line.status()\n"
    shell = 'echo looking; while :; do "$0" -m inturn status "$1" >/dev/null || exit 1; done'
    watchers = [
        subprocess.Popen(
            [sys.executable, "-c", loop, "looked-at"], stdout=subprocess.PIPE, text=True,
            env=child_env(),
        ),
        subprocess.Popen(
            ["sh", "-c", shell, sys.executable, "looked-at"], stdout=subprocess.PIPE, text=True,
            env=child_env(),
        ),
    ]  # fmt: skip
    try:
        for watcher in watchers:
            assert watcher.stdout is not None
            assert read_lines(watcher.stdout).get(timeout=REPORT_TIMEOUT).split() == ["looking"]
        for thread in lookers:
            thread.start()

        def body(index: int) -> None:
            for _ in range(turns):
                with lines[index].acquire() as held, recorder.inside(f"{held.ticket}:t{index}"):
                    time.sleep(WORK)

        in_threads(count, body)
        assert [w.poll() for w in watchers] == [None, None], "a status loop failed"
    finally:
        stop.set()
        for watcher in watchers:
            watcher.kill()
            watcher.wait(REPORT_TIMEOUT)
            if watcher.stdout is not None:
                watcher.stdout.close()
        for thread in lookers:
            thread.join(REPORT_TIMEOUT)
    assert all(looks), looks
    assert_exclusive(log, slots, expected=count * turns)
    assert_free("looked-at", slots)


LISTINGS = {"local": 400, "postgresql": 40, "redis": 60}  # looks per thread


def test_threads_looking_through_one_line_each_see_the_whole_line(where: Where) -> None:
    """The cause of overlaps among threads sharing a ``Line`` (and of a status line drawn
    beside its waiter): concurrent looks through one store must each see every ticket.
    Deterministic: with nothing else changing the line, every look has one right answer,
    and a listing cut short by another thread's shows up as a missing ticket."""
    slots = 6
    line = inturn.Line("listed", slots)
    held = [line.acquire() for _ in range(slots)]
    expected = sorted(turn.ticket for turn in held)
    store = line.store
    wrong: list[str] = []

    def body(index: int) -> None:
        for look in range(LISTINGS[where.kind]):
            if look % 2:
                seen = sorted(t.number for t in line.status().holders)
            else:
                seen = list(store.look(None).tickets)
            if seen != expected:
                wrong.append(f"thread {index}, look {look}: {seen}")

    try:
        in_threads(12, body)
    finally:
        for turn in held:
            turn.release()
    assert not wrong, f"{len(wrong)} looks saw part of the line {expected}:\n" + "\n".join(
        wrong[:10]
    )
    assert_free("listed", slots)


def test_observer_finds_overlaps(tmp_path: Path) -> None:
    """The witness itself: overlapping rows are found and named, touching ones are not."""
    log = tmp_path / "log"
    log.write_text(
        "enter a 10\nexit a 20\nenter b 20\nbeat b 25\nexit b 30\n"
        "enter c 28\nbeat c 35\nenter d 40\nexit d 50\nenter e 45\nenter f 60\nexit f 70\n"
    )
    intervals = read_intervals(log)
    assert [(i.who, i.start, i.end, i.exited) for i in intervals] == [
        ("a", 10, 20, True), ("b", 20, 30, True), ("c", 28, 35, False), ("d", 40, 50, True),
        ("e", 45, 45, False), ("f", 60, 70, True),
    ]  # fmt: skip
    with pytest.raises(AssertionError, match=r"2 entries found more than 1 inside, up to 2") as e:
        assert_exclusive(log, 1)
    assert "b [20 .. 30]" in str(e.value) and "c [28 .. 35]" in str(e.value)
    assert "d [40 .. 50]" in str(e.value) and "e [45 .. 45]" in str(e.value)
    assert assert_exclusive(log, 2) == intervals
    assert max_inside(intervals) == 2


def test_the_recording_command_beats_while_inside(tmp_path: Path) -> None:
    """The command given to ``inturn run``: enter, beats every few milliseconds, exit."""
    log = tmp_path / "log"
    done = subprocess.run(
        command(log, who="7:me", seconds=0.05), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "inside 7:me\n", done
    rows = [row.split() for row in log.read_text().splitlines()]
    assert rows[0][:2] == ["enter", "7:me"] and rows[-1][:2] == ["exit", "7:me"]
    assert len(rows) > 3 and {r[0] for r in rows[1:-1]} == {"beat"}
    stamps = [int(r[2]) for r in rows]
    assert stamps == sorted(stamps)
    (interval,) = read_intervals(log)
    assert interval.exited and ticket_of(interval.who) == 7
