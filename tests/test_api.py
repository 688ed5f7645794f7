"""The Python API: threads, decorators, asyncio, fork, re-entrance, and any name at all."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import shlex
import string
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inturn
from inturn.names import safe_file_name

from conftest import REPORT_TIMEOUT, child_env, run_cli, until


def test_threads_queue_like_processes_in_arrival_order(lines_dir):
    line = inturn.Line("threads")
    holder = line.acquire()
    order: list[int] = []
    threads = []
    for index in range(6):
        queued = threading.Event()

        def work(index: int = index, queued: threading.Event = queued) -> None:
            with line.acquire(on_progress=lambda _: queued.set()):
                order.append(index)

        thread = threading.Thread(target=work)
        thread.start()
        queued.wait()  # joined and asleep before the next one starts
        threads.append(thread)
    holder.release()
    for thread in threads:
        thread.join()
    assert order == list(range(6))


def test_a_waiter_is_told_its_place_and_a_cancel_token_takes_it_out_of_line(lines_dir):
    """``on_progress`` gets a ``Progress`` as the wait goes to sleep: the waiter's ticket,
    its place counting the holder, the live tickets ahead and the one whose leaving wakes it.
    ``CancelToken.cancel()`` from another thread ends the wait with ``Cancelled``, out of the
    line, and the others keep their places."""
    line = inturn.Line("told")
    holder = line.acquire()
    told: dict[str, list[inturn.Progress]] = {"first": [], "second": []}
    queued = {key: threading.Event() for key in told}
    token = inturn.CancelToken()
    ended: dict[str, object] = {}

    def wait(key: str, cancel: inturn.CancelToken | None) -> None:
        def progress(p: inturn.Progress) -> None:
            told[key].append(p)
            queued[key].set()

        try:
            with line.acquire(on_progress=progress, cancel=cancel) as turn:
                ended[key] = turn.ticket
        except inturn.Cancelled as exc:
            ended[key] = exc

    first = threading.Thread(target=wait, args=("first", None))
    first.start()
    assert queued["first"].wait(REPORT_TIMEOUT)
    second = threading.Thread(target=wait, args=("second", token))
    second.start()
    assert queued["second"].wait(REPORT_TIMEOUT)
    mine = told["first"][0].ticket
    assert told["first"][0] == (mine, 2, (holder.ticket,), (holder.ticket,))
    theirs = told["second"][0]
    assert theirs == (theirs.ticket, 3, (holder.ticket, mine), (mine,))
    token.cancel()
    second.join(REPORT_TIMEOUT)
    assert isinstance(ended["second"], inturn.Cancelled)
    assert [w.number for w in line.status().waiters] == [mine]
    holder.release()
    first.join(REPORT_TIMEOUT)
    assert ended["first"] == mine


def test_waiting_on_yourself_forever_is_refused(lines_dir):
    line = inturn.Line("self")
    with line.acquire(), pytest.raises(inturn.InturnError, match="not re-entrant"):
        line.acquire()
    with line.acquire(), pytest.raises(inturn.Timeout):
        line.acquire(timeout=0.05)  # with a timeout it simply times out
    assert line.status().holders == ()


def test_waiting_for_the_line_you_hold_forever_is_refused(lines_dir):
    """``line.wait()`` (the barrier) by the thread that holds the line would never end, as
    its ``acquire()`` would not: refused alike; with a timeout it times out; another thread
    waits until the holder releases."""
    line = inturn.Line("barrier")
    held = line.acquire()
    with pytest.raises(inturn.InturnError, match="would wait for itself forever"):
        inturn.Line("barrier").wait()
    with pytest.raises(inturn.Timeout):
        line.wait(timeout=0.05)
    waited: list[inturn.LineStatus] = []
    other = threading.Thread(target=lambda: (line.wait(), waited.append(line.status())))
    other.start()
    held.release()
    other.join(REPORT_TIMEOUT)
    assert waited and waited[0].holders == ()


def test_line_release_gives_back_the_callers_turn_like_a_lock(lines_dir):
    """``line.acquire()`` then ``line.release()``, as with filelock, fasteners or a
    ``threading.Lock``: the turn is released though its ``Turn`` was not kept; the latest of
    the caller's turns goes first; another thread's turn is not the caller's to release,
    unless handed to it; a release with nothing held says so."""
    line = inturn.Line("lock", slots=2)
    line.acquire()
    assert len(line.status().holders) == 1
    line.release()
    assert line.status().holders == ()
    with pytest.raises(inturn.InturnError, match="holds no turn taken through this Line"):
        line.release()
    first, second = line.acquire(), line.acquire()
    line.release()
    assert first.held and not second.held
    errors: list[BaseException] = []

    def other() -> None:
        try:
            line.release()
        except inturn.InturnError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and first.held  # not its turn
    thread = threading.Thread(target=other)
    first.owner = thread
    thread.start()
    thread.join()
    assert len(errors) == 1 and not first.held  # handed to it: its own
    assert line.status().holders == ()

    async def task() -> None:
        await inturn.acquire_async(line)
        assert len(line.status().holders) == 1
        line.release()  # the task's own turn

    asyncio.run(task())
    assert line.status().holders == ()

    async def siblings() -> None:
        taken = asyncio.Event()

        async def taker() -> None:
            line.acquire(blocking=False)  # sync code in a task: the thread owns it
            taken.set()
            await asyncio.sleep(0.05)
            line.release()  # this task's: released

        async def sibling() -> None:
            await taken.wait()
            with pytest.raises(inturn.InturnError, match="holds no turn"):
                line.release()  # another task of the same thread: not its turn

        await asyncio.gather(taker(), sibling())

    asyncio.run(siblings())
    assert line.status().holders == ()


def test_a_turn_taken_in_one_notebook_cell_is_released_in_the_next(lines_dir):
    """A notebook (ipykernel) runs each cell as an asyncio task of its own, one after
    another on one loop: ``line.acquire()`` (or ``await inturn.acquire_async(line)``) in a
    cell and ``line.release()`` in a later one give the turn back, as with a lock; the turn of
    a task that has ended is its thread's. A task still running keeps its own."""
    line = inturn.Line("cells")
    loop = asyncio.new_event_loop()

    def cell(code: Callable[[], Any]) -> Any:
        async def run() -> Any:
            outcome = code()
            return await outcome if asyncio.iscoroutine(outcome) else outcome

        return loop.run_until_complete(asyncio.ensure_future(run(), loop=loop))

    try:
        cell(line.acquire)
        cell(line.release)
        assert line.status().holders == ()
        cell(lambda: inturn.acquire_async(line))
        cell(line.release)
        assert line.status().holders == ()
        cell(line.acquire)
        line.release()  # outside any task, in the thread that ran the cell
        assert line.status().holders == ()

        async def siblings() -> None:  # a live task's turn is still not another's
            taken, done = asyncio.Event(), asyncio.Event()

            async def taker() -> None:
                await inturn.acquire_async(line)
                taken.set()
                await done.wait()
                line.release()

            async def sibling() -> None:
                await taken.wait()
                with pytest.raises(inturn.InturnError, match="holds no turn"):
                    line.release()
                done.set()

            await asyncio.gather(taker(), sibling())

        cell(siblings)
        assert line.status().holders == ()
    finally:
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX's")
def test_a_forked_child_has_no_turn_of_its_parent_to_release(lines_dir):
    line = inturn.Line("forked")
    held = line.acquire()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its release must say it holds nothing
        try:
            line.release()
            said = b"released"
        except inturn.InturnError as exc:
            said = b"refused" if "holds no turn" in str(exc) else str(exc).encode()
        os.write(writer, said)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as answer:
        assert answer.read() == b"refused"
    assert os.waitpid(pid, 0)[1] == 0
    assert held.held and [t.number for t in line.status().holders] == [held.ticket]
    line.release()


def test_a_with_block_of_a_line_holds_a_turn_like_a_lock(lines_dir):
    """``with line:`` (and ``async with line:``) waits in line and binds the ``Turn``, as
    ``with lock:`` does for a ``threading.Lock``, so that code written for filelock or
    portalocker takes its turn; the turn is released when the block ends, however it ends,
    and the ``Line`` stays open for the next block."""
    line = inturn.Line("block")
    with line as held:
        assert isinstance(held, inturn.Turn) and held.held
        assert [t.number for t in line.status().holders] == [held.ticket]
        with pytest.raises(inturn.InturnError, match="not re-entrant"):
            line.__enter__()  # a second block in the same thread would wait for itself
    assert not held.held and line.status().holders == ()
    with pytest.raises(RuntimeError, match="inside"), line:
        raise RuntimeError("inside")
    assert line.status().holders == ()

    async def block() -> int:
        async with line as turn:
            assert turn.held
            return turn.ticket

    ticket = asyncio.run(block())
    assert ticket > held.ticket and line.status().holders == ()
    line.close()


def test_decorator_runs_calls_one_at_a_time(lines_dir):
    inside = 0
    most = 0
    guard = threading.Lock()

    @inturn.turn("decorated")
    def job(value: int) -> int:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        with guard:
            inside -= 1
        return value * 2

    results: list[int] = []
    threads = [threading.Thread(target=lambda v=v: results.append(job(v))) for v in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [v * 2 for v in range(8)] and most == 1
    assert job.__name__ == "job"


def test_async_with_and_cancellation_leave_the_line_clean(lines_dir):
    async def scenario() -> None:
        holder = inturn.Line("async").acquire()
        waiting = asyncio.create_task(waiter())
        while not inturn.Line("async").status().waiters:
            await asyncio.sleep(0.01)  # the test's own loop; the waiter itself sleeps in the kernel
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert inturn.Line("async").status().waiters == ()
        holder.release()
        async with inturn.turn("async") as held:
            assert held.held

    async def waiter() -> None:
        async with inturn.turn("async"):
            raise AssertionError("should have been cancelled while waiting")

    asyncio.run(scenario())


def test_async_decorator(lines_dir):
    @inturn.turn("adeco")
    async def job() -> str:
        return "done"

    assert asyncio.run(job()) == "done"


def test_decorated_generators_hold_the_turn_while_their_body_runs(lines_dir):
    """From the first item to the end, with values, exceptions and the return value passed
    through both ways; not at all before the first item, nor after ``close``."""
    line = inturn.Line("gen")

    def holders() -> int:
        return len(line.status().holders)

    @inturn.turn("gen")
    def echo() -> Iterator[int]:
        got = yield holders()
        try:
            yield got
        except KeyError:
            yield -1
        return 7

    generator = echo()
    assert holders() == 0  # called, not started: nothing taken yet
    assert next(generator) == 1
    assert generator.send(5) == 5
    assert generator.throw(KeyError) == -1
    with pytest.raises(StopIteration) as ended:
        next(generator)
    assert ended.value.value == 7 and holders() == 0
    started = echo()
    next(started)
    started.close()
    assert holders() == 0

    @inturn.turn("gen")
    async def aecho() -> AsyncIterator[int]:
        got = yield holders()
        try:
            yield got
        except KeyError:
            yield -1

    async def scenario() -> None:
        agenerator = aecho()
        assert holders() == 0
        assert await agenerator.__anext__() == 1
        assert await agenerator.asend(5) == 5
        assert await agenerator.athrow(KeyError) == -1
        with pytest.raises(StopAsyncIteration):
            await agenerator.__anext__()
        assert holders() == 0
        astarted = aecho()
        await astarted.__anext__()
        await astarted.aclose()
        assert holders() == 0

    asyncio.run(scenario())


def _take_turn(line: inturn.Line) -> tuple[str, int, int]:
    """Run in another process: take a turn on ``line`` as it arrived there."""
    with line.acquire(timeout=REPORT_TIMEOUT) as held:
        return line.name, line.slots, held.ticket


def test_a_line_passed_to_another_process_opens_the_same_line_there(lines_dir):
    """``multiprocessing`` and ``concurrent.futures`` pickle what they pass: a ``Line`` goes
    as what it names; a held ``Turn`` cannot leave its process, and says so."""
    import multiprocessing
    import pickle

    from inturn.backends import open_backend

    line = inturn.Line("travels", slots=2)
    held = line.acquire()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        name, slots, ticket = pool.apply(_take_turn, (line,))
    assert (name, slots) == ("travels", 2) and ticket > held.ticket  # beside ours: slots=2
    with pytest.raises(TypeError, match="belongs to the process that took it"):
        pickle.dumps(held)
    held.release()
    with pytest.raises(TypeError, match="as a URL"):
        pickle.dumps(inturn.Line("x", backend=open_backend("local")))


def test_a_forked_child_does_not_keep_or_free_the_parents_turn(lines_dir):
    held = inturn.Line("fork").acquire()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the turn is already closed
        try:
            inturn.Line("fork").acquire(blocking=False)
            verdict = b"free"
        except inturn.Busy:
            verdict = b"busy"
        held.release()  # must not remove the parent's ticket
        os.write(writer, verdict)
        os._exit(0)
    os.close(writer)
    assert os.read(reader, 10) == b"busy"
    os.waitpid(pid, 0)
    assert [t.number for t in inturn.Line("fork").status().holders] == [held.ticket]
    held.release()
    assert inturn.Line("fork").status().holders == ()


def test_single_instance(lines_dir):
    first = inturn.single_instance("app")
    with pytest.raises(inturn.Busy):
        inturn.single_instance("app")
    first.release()
    inturn.single_instance("app").release()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": ""}, "name is empty"),
        ({"slots": 0}, "slots must be a whole number of at least 1, not 0"),
        ({"slots": True}, "slots must be a whole number of at least 1, not True"),
        ({"slots": "2"}, "slots must be a whole number of at least 1, not '2'"),
        ({"scope": "bogus"}, "unknown scope 'bogus': use 'user' or 'machine'"),
        ({"backend": "mysql://db/x"}, "unknown backend 'mysql'"),
        ({"backend": "redis://127.0.0.1:1/0?bogus=1"}, "unknown parameter bogus"),
        ({"backend": "postgresql://127.0.0.1:1/x?lock_delay=soon"}, "lock_delay"),
        ({"directory": 7}, "directory must be a path, not 7"),
        (
            {"directory": "lines", "backend": "redis://127.0.0.1:1/0"},
            "give a folder (directory=) or a server (backend=), not both",
        ),
    ],
)
def test_bad_arguments_are_refused_by_the_constructor(lines_dir, arguments, message):
    """One ``UsageError`` (a ``ValueError`` too) naming the argument, before anything is
    opened or created: no call to acquire() is needed to learn of it."""
    given = {"name": "x", **arguments}
    with pytest.raises(inturn.UsageError) as refused:
        inturn.Line(**given)
    assert isinstance(refused.value, ValueError)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not lines_dir.exists()


def test_a_line_uses_inturn_backend_unless_given_a_backend_or_a_folder(
    lines_dir, tmp_path, monkeypatch
):
    """Without ``backend=``, a ``Line`` takes ``INTURN_BACKEND``, as the command does, and a
    bad URL there is refused when the ``Line`` is made, not at its first use; a folder given
    (``directory=``) beats it, as ``--dir`` does."""
    monkeypatch.setenv("INTURN_BACKEND", "mysql://db/x")
    for make in (lambda: inturn.Line("x"), lambda: inturn.turn("x")):
        with pytest.raises(inturn.UsageError, match="unknown backend 'mysql'"):
            make()
    folder = tmp_path / "given"
    with inturn.Line("x", directory=folder) as held:
        assert held.ticket == 1 and (folder / "x").is_dir()
    assert inturn.Line("x", backend="local").status().holders == ()
    with pytest.raises(inturn.UsageError, match="directory is empty"):
        inturn.Line("x", directory="")  # not the default folder while INTURN_BACKEND says else
    for local in ("LOCAL", " Local "):  # a scheme is read whatever its case, as URLs' are
        monkeypatch.setenv("INTURN_BACKEND", local)
        assert inturn.Line("x").status().holders == ()
    inturn.Line("x", backend="POSTGRESQL://127.0.0.1:1/x")  # parsed, not refused by libpq
    inturn.Line("x", backend="Redis://127.0.0.1:1/0")


@pytest.mark.parametrize("timeout", ["5", b"5", [5], float("nan"), True])
def test_a_timeout_that_is_not_a_number_is_one_usage_error(lines_dir, timeout):
    line = inturn.Line("x")
    for call in (line.acquire, line.wait):
        with pytest.raises(inturn.UsageError, match="timeout must be a number of seconds or None"):
            call(timeout=timeout)
    assert line.status().holders == ()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"command": "echo hi"}, "command must be a list or tuple of words"),
        ({"command": ["echo", 1]}, "command must be a list or tuple of str"),
        ({"cancel": "x"}, "cancel must be an inturn.CancelToken or None"),
        ({"on_progress": 5}, "on_progress must be a function or None"),
        ({"max_waiting": 1, "newest_wins": True}, "two rules for who may wait: give one"),
    ],
)
def test_bad_arguments_to_acquire_are_refused_even_when_the_line_is_free(
    lines_dir, arguments, message
):
    """Refused at once, on a free line too: not only later, on a busy one, as a TypeError."""
    line = inturn.Line("x")
    with pytest.raises(inturn.UsageError, match=re.escape(message)):
        line.acquire(**arguments)
    assert line.status().holders == ()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_waiting": 1, "newest_wins": True}, "max_waiting and newest_wins"),
        ({"timeout": "5"}, "timeout must be a number of seconds or None, not '5'"),
        ({"blocking": 1}, "blocking must be True or False, not 1"),
        ({"shared": 1}, "shared must be True or False, not 1"),
    ],
)
def test_a_turn_with_bad_arguments_is_refused_when_made(lines_dir, arguments, message):
    """As a decorator too: a mistake shows where the turn is made, not at its first call."""
    with pytest.raises(inturn.UsageError, match=re.escape(message)):
        inturn.turn("x", **arguments)


USER_PROGRAM = """
import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import inturn

line = inturn.Line("typed", directory=Path("/tmp"))
with line.acquire(timeout=5, command=["backup", "--all"]) as held:
    number: int = held.ticket
    abandoned: bool = held.abandoned
    previous: inturn.Ticket | None = held.abandoned_by
with line as blocked:
    still: bool = blocked.held
status: inturn.LineStatus = line.status()
waiters: list[int | None] = [ticket.pid for ticket in status.waiters]


def progress(update: inturn.Progress) -> None:
    ahead: tuple[int, ...] = update.ahead
    print(update.position, ahead)


line.acquire(on_progress=progress, cancel=inturn.CancelToken()).release()
try:
    line.acquire(blocking=False)
except (inturn.Busy, inturn.Timeout) as busy:
    shown: inturn.LineStatus | None = busy.status


@inturn.turn("typed", directory=Path("/tmp"))
def job(x: int) -> str:
    return str(x)


@inturn.turn("typed")
async def task(x: int) -> int:
    async with inturn.turn("other") as inner:
        mine: int = inner.ticket
    return x + mine


@inturn.turn("typed")
def rows(count: int) -> Iterator[int]:
    yield from range(count)


@inturn.turn("typed")
async def items(count: int) -> AsyncIterator[str]:
    for number in range(count):
        yield str(number)


class Service:
    @inturn.turn("typed")
    def run(self, x: int) -> float:
        return x / 2

    @inturn.turn("typed")
    @classmethod
    def build(cls, x: int) -> str:
        return str(x)


async def consume() -> list[str]:
    held = await inturn.acquire_async(line, timeout=5)
    held.release()
    return [item async for item in items(2)]


def on_next(message: inturn.Message) -> dict[str, int]:
    return {"opened": len(message.argv) - 1}


try:
    app: inturn.Turn = inturn.single_instance("typed-app", on_message=on_next)
except inturn.AlreadyRunning as running:
    pid: int | None = running.pid
reply = inturn.send("typed-app", ["typed-app", "notes.txt"], data={"line": 12}, timeout=5)

text: str = job(1)
value: int = asyncio.run(task(2))
total: int = sum(rows(3))
listed: list[str] = asyncio.run(consume())
half: float = Service().run(4)
built: str = Service.build(5)
# The decorators keep the parameters' types: each call below is refused, and an unused
# ignore is itself an error under --strict.
job("1")  # type: ignore[arg-type]
rows("3")  # type: ignore[arg-type]
items("2")  # type: ignore[arg-type]
Service().run("4")  # type: ignore[arg-type]
Service.build("5")  # type: ignore[arg-type]
"""


def test_a_user_program_type_checks_under_mypy_strict(tmp_path):
    """The public API as a user writes it (paths as ``Path``, commands as lists, decorators
    on functions, methods, generators and coroutines keeping their parameters' and return
    types) passes ``mypy --strict`` through the package's ``py.typed``."""
    program = tmp_path / "program.py"
    program.write_text(USER_PROGRAM)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(program),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=REPORT_TIMEOUT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("timeout", [-1, -0.5, float("-inf"), float("inf"), None])
def test_a_negative_or_infinite_timeout_waits_for_ever(lines_dir, timeout):
    """As in ``threading`` and filelock: -1 is "no limit", not "give up at once"."""
    line = inturn.Line("forever")
    holder = line.acquire()
    got: list[inturn.Turn] = []
    waiter = threading.Thread(target=lambda: got.append(inturn.Line("forever").acquire(timeout)))
    waiter.start()
    until(lambda: len(line.status().waiters) == 1, "the waiter to be in line")
    assert not got  # still waiting, with no Timeout
    holder.release()
    waiter.join(REPORT_TIMEOUT)
    assert len(got) == 1
    got[0].release()


def test_a_python_programs_ticket_records_its_whole_command_line(lines_dir):
    code = "import inturn, sys\nt = inturn.Line('py').acquire()\nprint('held', flush=True)\ninput()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        shown = json.loads(run_cli("status", "--json", "py").stdout)
        assert shown["holders"][0]["command"] == [sys.executable, "-c", code]
        row = run_cli("status", "py").stdout.splitlines()[2]
        assert row.endswith(f"{sys.executable} -c {shlex.quote(code)}".replace("\n", "\\x0a"))
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


@given(st.text(max_size=600))
def test_any_name_maps_to_one_safe_file_name(name):
    if not name:
        return
    stored = safe_file_name(name)
    assert "/" not in stored and "\x00" not in stored and stored not in (".", "..")
    assert stored.isascii() and len(stored.encode()) <= 255
    assert set(stored) <= set(string.ascii_lowercase + string.digits + "._-~")


@given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True))
def test_plain_names_are_kept_unless_windows_reserves_them(name):
    """Lowercase ASCII names stay readable in the folder, except those Windows takes for a
    device (``nul``, ``com1.txt``) and those ending in ``.``, which it would trim."""
    device = re.match(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)", name)
    assert (safe_file_name(name) == name) == (not name.endswith(".") and not device)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        *[("nul", False), ("com1.txt", False), ("lpt9", False), ("aux.tar.gz", False)],
        *[("com10", True), ("coma", True), ("nul_x", True), ("a" * 64, True), ("a" * 65, False)],
    ],
)
def test_device_names_and_long_names_get_a_slug(name, kept):
    assert (safe_file_name(name) == name) == kept


@given(st.text(min_size=1), st.text(min_size=1))
def test_different_names_never_share_a_file(first, second):
    if first != second:
        assert safe_file_name(first) != safe_file_name(second)


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_any_name_takes_turns_and_reads_back(tmp_path_factory, name):
    folder = tmp_path_factory.mktemp("names")
    line = inturn.Line(name, directory=str(folder))
    with line.acquire() as held:
        assert [t.number for t in line.status().holders] == [held.ticket]
    assert inturn.backends.posix.PosixBackend(directory=str(folder)).names() == [name]


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"USERNAME": "u4"},
        {"LNAME": "u3", "USERNAME": "u4"},
        {"USER": "u2", "LNAME": "u3"},
        {"LOGNAME": "u1", "USER": "u2"},
        {"LOGNAME": "", "USER": "u2"},
    ],
    ids=["none", "USERNAME", "LNAME", "USER", "LOGNAME", "empty LOGNAME"],
)
def test_a_ticket_names_its_user_as_getpass_would(variables):
    """The user recorded in a ticket is found without importing ``getpass`` (its import costs
    every start), the same way: the first of its variables set, else the password database."""
    probe = "import getpass, inturn.records as r; print(r.this_user(), getpass.getuser())"
    env = {k: v for k, v in child_env().items() if k not in ("LOGNAME", "USER", "LNAME")}
    env.pop("USERNAME", None)
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env, **variables},
        timeout=60,
    )
    ours, theirs = result.stdout.split()
    assert ours == theirs and result.stderr == "", result


def _time_out_once_on_a_fresh_line(how: str, name: str) -> None:
    """One wait of 10 ms on a ``Line`` (or ``turn``) made for it, which times out."""
    if how == "turn":
        with pytest.raises(inturn.Timeout), inturn.turn(name, timeout=0.01):
            pass
    elif how == "acquire":
        line = inturn.Line(name)
        with pytest.raises(inturn.Timeout):
            line.acquire(timeout=0.01)
        line.close()
    elif how == "wait":
        line = inturn.Line(name)
        with pytest.raises(inturn.Timeout):
            line.wait(timeout=0.01)
        line.close()
    elif how == "async with":

        async def block() -> None:
            async with inturn.turn(name, timeout=0.01):
                pass

        with pytest.raises(inturn.Timeout):
            asyncio.run(block())
    else:

        async def wait_for() -> None:
            line = inturn.Line(name)
            try:
                await asyncio.wait_for(inturn.acquire_async(line), 0.01)
            finally:
                line.close()

        with pytest.raises(asyncio.TimeoutError):  # not yet the builtin before Python 3.11
            asyncio.run(wait_for())


def _watch_threads() -> int:
    return sum(thread.name == "inturn-watch" for thread in threading.enumerate())


@contextmanager
def held_by_another_thread(line: inturn.Line) -> Iterator[None]:
    """``line`` held by another thread of this process while the block runs."""
    held, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with line.acquire():
            held.set()
            leave.wait(REPORT_TIMEOUT)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(REPORT_TIMEOUT)
        yield
    finally:
        leave.set()
        holder.join()


@pytest.mark.skipif(sys.platform == "win32", reason="counts POSIX descriptors")
@pytest.mark.parametrize("how", ["turn", "acquire", "wait", "async with", "wait_for"])
def test_polling_a_long_held_line_with_short_waits_leaves_nothing_behind(lines_dir, how):
    """Trying for 10 ms and retrying later against one long holder: each try on a fresh ``Line``
    must not leave a thread and a descriptor behind until the holder leaves (the kernel wait
    on the holder's ticket is shared by the whole process, not kept per ``Line``)."""
    name = "polled"
    with held_by_another_thread(inturn.Line(name)):
        _time_out_once_on_a_fresh_line(how, name)  # the one shared watch, if any
        descriptors = len(os.listdir("/proc/self/fd" if sys.platform == "linux" else "/dev/fd"))
        for _ in range(30):
            _time_out_once_on_a_fresh_line(how, name)
        assert _watch_threads() <= 1
        now = len(os.listdir("/proc/self/fd" if sys.platform == "linux" else "/dev/fd"))
        assert now <= descriptors + 2
    until(lambda: _watch_threads() == 0, "the watch on the holder's ticket ends with it")


def _an_instance_of(kind: type[BaseException], status: inturn.LineStatus) -> BaseException:
    """``kind`` made with every attribute it keeps set to a value of its own."""
    if kind is inturn.AlreadyRunning:
        return kind("already running", status, reply={"answer": 42}, pid=7)
    if kind is inturn.MessageError:
        return kind("it failed", "ValueError", pid=7)
    if kind is inturn.NotRunning:
        return kind("nobody listens", pid=7)
    if kind in (inturn.Busy, inturn.Timeout):
        return kind("line 'x' is busy", status)
    return kind("something went wrong")


EXCEPTIONS = [
    getattr(inturn, name)
    for name in inturn.__all__
    if isinstance(getattr(inturn, name), type) and issubclass(getattr(inturn, name), BaseException)
]


@pytest.mark.parametrize("kind", EXCEPTIONS, ids=lambda kind: kind.__name__)
def test_every_exception_crosses_pickle_with_its_attributes(lines_dir, kind):
    """A worker of a process pool raising one hands it to the parent through pickle: one that
    cannot be rebuilt there breaks the whole pool."""
    with inturn.Line("pickled").acquire():
        status = inturn.Line("pickled").status()
    error = _an_instance_of(kind, status)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is kind
    assert str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)
    if isinstance(error, inturn.Busy):
        assert copy.holders == error.holders and copy.holders


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need a privilege there")
def test_waiting_on_yourself_through_a_symbolic_link_to_the_folder_is_refused(tmp_path):
    """One folder reached through a link to it is one line: waiting on yourself there is
    refused as through the folder's own path, not a wait for ever."""
    real = tmp_path / "real"
    real.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    give_up = inturn.CancelToken()
    cancelling = threading.Timer(10.0, give_up.cancel)  # before the fix: a wait for ever
    cancelling.start()
    try:
        with inturn.turn("x", directory=str(real)):
            line = inturn.Line("x", directory=str(alias))
            with pytest.raises(inturn.InturnError, match="not re-entrant"):
                line.acquire(cancel=give_up)
            line.close()
    finally:
        cancelling.cancel()
    assert inturn.Line("x", directory=str(alias)).status().holders == ()


def test_a_timeout_says_how_long_it_waited_and_who_holds_the_line(lines_dir):
    """As ``Busy`` names the holder, so does ``Timeout``, with the time the caller gave."""
    line = inturn.Line("timed")
    with held_by_another_thread(line):
        busy = f"held by pid {os.getpid()} ("
        with pytest.raises(inturn.Timeout) as waiting:
            line.acquire(timeout=0.2)
        assert str(waiting.value).startswith(f"gave up waiting for line 'timed' after 0.2s; {busy}")
        assert waiting.value.status is not None
        assert waiting.value.status.holders == line.status().holders
        with pytest.raises(inturn.Timeout) as emptying:
            line.wait(timeout=0.2)
        assert str(emptying.value).startswith(
            f"gave up waiting for line 'timed' to empty after 0.2s; {busy}"
        )
        with pytest.raises(inturn.Timeout) as short:
            line.acquire(timeout=0.01)
        assert str(short.value).startswith(f"gave up waiting for line 'timed' after 10ms; {busy}")


def test_a_turn_above_classmethod_or_staticmethod_holds_the_turn_for_each_call(lines_dir):
    """``@inturn.turn`` written above ``@classmethod`` or ``@staticmethod`` wraps the function
    inside and keeps its kind, from the class and from an instance alike."""
    held: list[bool] = []

    def holding() -> bool:
        return bool(inturn.Line("methods").status().holders)

    class Job:
        @inturn.turn("methods")
        @classmethod
        def of_class(cls, value: int) -> tuple[type, int]:
            held.append(holding())
            return cls, value

        @inturn.turn("methods")
        @staticmethod
        def static(value: int) -> int:
            held.append(holding())
            return value

    assert Job.of_class(1) == (Job, 1) and Job().of_class(2) == (Job, 2)
    assert Job.static(3) == 3 and Job().static(4) == 4
    assert held == [True] * 4 and not holding()
