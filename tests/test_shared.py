"""Shared turns, queue policies and waiting without a turn, on every backend (``where``).

Readers (``shared=True``) hold together when no exclusive ticket ahead of them is live;
writers hold alone (with ``slots=N``: at most N writers, never with a reader); strictly in
arrival order. ``max_waiting=N`` turns a joiner away when N already wait; ``newest_wins``
replaces the older such waiters (never a holder); ``Line.wait()`` / ``inturn wait`` waits
for everyone who was in line, without a ticket. A joiner whose ``slots`` differs from the
line's is refused.

Who was inside when is always taken from the independent observer (``observer.py``): each
stay inside is recorded as ``TICKET:WHO:MODE`` (``shared`` or ``exclusive``) by the process
that holds, and the checks compare the intervals afterwards. inturn's own status is used only
to know when a process is in line, never as the witness. Bursts of 50 starts come from
``burst.py`` (children forked from one warm parent and released by one gate).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    Run,
    Where,
    Worker,
    child_env,
    in_threads,
    one_line_error,
    read_lines,
    run_async,
    run_cli,
)
from observer import Interval, Recorder, command, crowds, read_intervals, ticket_of

HERE = Path(__file__).resolve().parent
BURST = 50  # simultaneous starts in the burst tests
EXIT_BUSY, EXIT_REPLACED, EXIT_INTERRUPTED = 75, 77, 130
SHARED, EXCLUSIVE = "shared", "exclusive"


# --------------------------------------------------------------------------- the witness


def mode_of(interval: Interval) -> str:
    mode = interval.who.rsplit(":", 1)[-1]
    assert mode in (SHARED, EXCLUSIVE), interval
    return mode


def overlap(a: Interval, b: Interval) -> bool:
    return a.start < b.end and b.start < a.end


def together(intervals: Sequence[Interval]) -> bool:
    """Whether all of ``intervals`` were inside at one same moment."""
    return max(i.start for i in intervals) < min(i.end for i in intervals)


def broken_rules(intervals: Sequence[Interval], slots: int = 1) -> list[str]:
    """Every way the recorded stays break the rules of shared turns (empty: none).

    Recorded stays lie within the real turns, so "y ended before x started" on the records
    implies it of the turns, and an overlap of records is a real overlap. The rules: a
    writer is never inside with a reader; with one slot, never with another writer; with
    ``slots`` N, at most N writers at once, and a writer has at most N-1 tickets ahead of it
    inside with it. Arrival order (tickets): a reader starts only after every writer ahead of
    it has left; a writer only after every reader ahead of it has left (and, with one slot,
    after everyone ahead), and a reader behind a writer starts only after the writer left.
    """
    problems = []
    for x in intervals:
        tx, mx = ticket_of(x.who), mode_of(x)
        ahead_inside = 0
        for y in intervals:
            if y is x:
                continue
            ty, my = ticket_of(y.who), mode_of(y)
            if ty < tx and overlap(x, y):
                ahead_inside += 1
            if mx == EXCLUSIVE and my == SHARED and overlap(x, y) and tx < ty:
                problems.append(f"writer {x} inside with reader {y}")
            if mx == EXCLUSIVE and my == EXCLUSIVE and slots == 1 and overlap(x, y) and tx < ty:
                problems.append(f"writer {x} inside with writer {y}")
            if ty < tx and (mx == SHARED) != (my == SHARED) and not y.end <= x.start:
                problems.append(f"{x} started before {y}, ahead of it, had left")
            if ty < tx and mx == my == EXCLUSIVE and slots == 1 and not y.end <= x.start:
                problems.append(f"writer {x} started before writer {y}, ahead of it, had left")
        if mx == EXCLUSIVE and ahead_inside > slots - 1:
            problems.append(f"writer {x} was inside with {ahead_inside} tickets ahead of it")
    writers = [i for i in intervals if mode_of(i) == EXCLUSIVE]
    for crowd in crowds(writers, slots)[:5]:
        problems.append(f"{len(crowd)} writers inside at once: " + "; ".join(map(str, crowd)))
    return problems


def assert_rules(intervals: Sequence[Interval], slots: int = 1) -> None:
    problems = broken_rules(intervals, slots)
    assert not problems, "\n".join(problems[:10])


def test_the_witness_finds_broken_rules() -> None:
    """The checker itself, on hand-made records."""

    def at(ticket: int, mode: str, start: int, end: int) -> Interval:
        return Interval(f"{ticket}:p:{mode}", start, end, True)

    fine = [at(1, SHARED, 0, 10), at(2, SHARED, 5, 15), at(3, EXCLUSIVE, 16, 20)]
    assert broken_rules(fine) == [] and together(fine[:2])
    assert broken_rules([at(1, EXCLUSIVE, 0, 10), at(2, SHARED, 5, 15)])  # reader with writer
    assert broken_rules([at(1, EXCLUSIVE, 10, 20), at(2, SHARED, 0, 5)])  # reader jumped ahead
    assert broken_rules([at(1, SHARED, 10, 20), at(2, EXCLUSIVE, 0, 5)])  # writer jumped ahead
    two = [at(1, EXCLUSIVE, 0, 10), at(2, EXCLUSIVE, 5, 15)]
    assert broken_rules(two) and broken_rules(two, slots=2) == []
    three = [*two, at(3, EXCLUSIVE, 6, 9)]
    assert broken_rules(three, slots=2)


# --------------------------------------------------------------------------- helpers


def start(
    workers: list[Worker], name: str, *options: str, env: dict[str, str] | None = None
) -> Worker:
    """A worker in line ``name``, past its ``joining`` report when it makes one."""
    worker = Worker(name, *options, env=env)
    workers.append(worker)
    if {"--shared", "--newest-wins", "--wait-line"} & set(options) or "--max-waiting" in options:
        worker.expect("joining")
    return worker


def queued(worker: Worker) -> int:
    """Wait until ``worker`` sleeps in line; its ticket."""
    return int(worker.expect("waiting")[1])


def fast_env(where: Where, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
             doomed: bool = False) -> dict[str, str]:  # fmt: skip
    """The environment of a crash test's processes: no lock delay after an unclean end (the
    delay is tested elsewhere), and on Redis a 1 s lease for the ones to be killed."""
    if where.kind == "local":
        return child_env()
    if where.kind == "postgresql":
        assert where.url is not None
        url = where.url + "&inturn_lock_delay=0"
    else:
        place = request.getfixturevalue("place")
        url = (place.url(lease=1) if doomed else place.url()) + "&lock_delay=0"
    if not doomed:
        monkeypatch.setenv("INTURN_BACKEND", url)
    return child_env(INTURN_BACKEND=url)


def snapshot(line: inturn.Line) -> tuple[tuple[tuple[int, int | None, bool], ...], ...]:
    status = line.status()
    return tuple(tuple((t.number, t.pid, t.holding) for t in part)
                 for part in (status.holders, status.waiters))  # fmt: skip


def until_empty(line: inturn.Line) -> None:
    """Watch (bounded) until nobody is in line: on Redis a killed one's ticket lives until its
    lease runs out."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while True:
        status = line.status()
        if not status.holders and not status.waiters:
            return
        assert time.monotonic() < deadline, f"still in line: {status}"
        time.sleep(0.02)


def state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as info:
            return info.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def until_asleep(pid: int) -> None:
    """Watch (bounded) until the process's main thread sleeps (state S): it has left the
    code that runs before inturn's command line starts and is blocked somewhere inside it."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while state(pid) != "S":
        assert state(pid) is not None, f"process {pid} ended"
        assert time.monotonic() < deadline, f"process {pid} never went to sleep"
        time.sleep(0.002)


class Burst:
    """``burst.py``: COUNT processes released together (see its docstring)."""

    def __init__(
        self,
        processes: list[subprocess.Popen[str]],
        folder: Path,
        count: int,
        mode: str,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        folder.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "burst.py"), str(count), str(folder), mode, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env or child_env(),
        )
        processes.append(self.proc)
        assert self.proc.stdout is not None
        self._reports = read_lines(self.proc.stdout)
        words = self.next()
        assert words[:1] == ["ready"], words
        self.pids = [int(pid) for pid in words[1:]]
        assert len(self.pids) == count
        self.codes: dict[int, int] = {}  # index -> exit code
        self.exited_at: dict[int, int] = {}
        self.reports: list[list[str]] = []  # the children's own (api mode)
        self.go_at = 0

    def next(self) -> list[str]:
        try:
            line = self._reports.get(timeout=REPORT_TIMEOUT)
        except Exception:
            raise AssertionError(f"no report from burst.py {self.proc.pid}") from None
        assert line, f"burst.py {self.proc.pid} ended (exit {self.proc.poll()})"
        return line.split()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        words = self.next()
        while words[0] != "go":
            self.reports.append(words)
            words = self.next()
        self.go_at = int(words[1])

    def until_exited(self, count: int) -> None:
        """Read reports until ``count`` children in all have exited."""
        while len(self.codes) < count:
            words = self.next()
            if words[0] == "exited":
                self.codes[int(words[1])] = int(words[3])
                self.exited_at[int(words[1])] = int(words[4])
            else:
                assert words[0] != "done", self.codes
                self.reports.append(words)

    def child_reports(self, kind: str) -> list[list[str]]:
        return [r for r in self.reports if r[0] == kind]

    def errors(self) -> list[str]:
        return [" ".join(r) for r in self.reports if r[0] == "error"]

    def text(self, index: int, stream: str) -> str:
        return (self.folder / f"{index}.{stream}").read_text()


# --------------------------------------------------------------------------- readers and writers


def test_readers_together_writers_alone_in_arrival_order(where, workers, tmp_path):
    """A writer holds; behind it, in this order: three readers, a writer, two readers, a
    writer. The three readers get in together when the first writer leaves, the second
    writer alone after them, the two readers behind it only after it, the last writer last."""
    log = str(tmp_path / "log")
    first = start(workers, "phases", "--hold", "--record", log)
    first.expect("acquired")
    plan = [SHARED, SHARED, SHARED, EXCLUSIVE, SHARED, SHARED, EXCLUSIVE]
    line: list[Worker] = []
    tickets = []
    for mode in plan:
        options = ("--shared",) if mode == SHARED else ()
        worker = start(workers, "phases", *options, "--hold", "--record", log)
        tickets.append(queued(worker))  # in line before the next one comes
        line.append(worker)
    assert tickets == sorted(tickets)
    readers, writer, late_readers, last = line[:3], line[3], line[4:6], line[6]

    first.send()
    for reader in readers:
        assert reader.acquired()[2] == "0"
    # All three hold now, none has left: their stays overlap by construction.
    status = inturn.Line("phases").status()
    assert [t.pid for t in status.holders] == [r.pid for r in readers]
    assert [t.pid for t in status.waiters] == [w.pid for w in (writer, *late_readers, last)]
    for reader in readers:
        reader.send()
        reader.expect("released")
    writer.acquired()
    writer.send()
    writer.expect("released")
    for reader in late_readers:
        reader.acquired()
    for reader in late_readers:
        reader.send()
    last.acquired()
    last.send()
    for worker in (first, *line):
        assert worker.wait() == 0

    intervals = read_intervals(log)
    assert len(intervals) == 8 and all(i.exited for i in intervals)
    assert_rules(intervals)
    by_ticket = {ticket_of(i.who): i for i in intervals}
    assert together([by_ticket[t] for t in tickets[:3]]), "adjacent readers did not overlap"
    assert together([by_ticket[t] for t in tickets[4:6]]), "adjacent readers did not overlap"
    # The reader that arrived after the waiting writer got in only after it.
    assert by_ticket[tickets[3]].end <= by_ticket[tickets[4]].start


def test_two_slots_let_two_writers_in_together_but_never_with_a_reader(where, workers, tmp_path):
    log = str(tmp_path / "log")
    two = ("--slots", "2")
    writers = [start(workers, "pair", *two, "--hold", "--record", log) for _ in range(2)]
    for writer in writers:
        writer.expect("acquired")  # the second holds while the first does: together
    reader = start(workers, "pair", *two, "--shared", "--hold", "--record", log)
    queued(reader)
    third = start(workers, "pair", *two, "--hold", "--record", log)
    queued(third)  # behind the reader, though a slot will be free before the reader's turn
    writers[0].send()
    writers[0].expect("released")
    # One writer still holds: the reader keeps waiting, and the writer behind it too.
    status = inturn.Line("pair", slots=2).status()
    assert [t.pid for t in status.waiters] == [reader.pid, third.pid]
    writers[1].send()
    reader.acquired()
    reader.send()
    third.acquired()
    third.send()
    for worker in (*writers, reader, third):
        assert worker.wait() == 0
    intervals = read_intervals(log)
    assert len(intervals) == 4
    assert_rules(intervals, slots=2)
    assert together(intervals[:2]), "two writers with two slots did not hold together"


# (threads, turns each) per backend: fewer on servers, where each turn costs round trips.
MIX = {"local": (10, 12), "postgresql": (5, 6), "redis": (6, 8)}


@pytest.mark.parametrize("slots", [1, 2], ids=["slots1", "slots2"])
def test_a_random_mix_of_readers_and_writers_keeps_the_rules(where, tmp_path, slots):
    """Threads sharing one ``Line`` take shared or exclusive turns at random."""
    count, turns = MIX[where.kind]
    log = tmp_path / "log"
    recorder = Recorder(log)
    line = inturn.Line("mix", slots)
    rng = random.Random(f"mix-{where.kind}-{slots}")
    plans = [[rng.random() < 0.7 for _ in range(turns)] for _ in range(count)]
    pauses = [[rng.choice([0.0, 0.0005, 0.002]) for _ in range(turns)] for _ in range(count)]

    def body(index: int) -> None:
        for turn, shared in enumerate(plans[index]):
            with line.acquire(shared=shared) as held:
                mode = SHARED if shared else EXCLUSIVE
                with recorder.inside(f"{held.ticket}:t{index}-{turn}:{mode}"):
                    time.sleep(pauses[index][turn])  # simulated work

    in_threads(count, body)  # released together; fails on any thread's error or a hang
    intervals = read_intervals(log)
    assert len(intervals) == count * turns
    assert_rules(intervals, slots)
    status = line.status()
    assert status.holders == () and status.waiters == ()


def test_inturn_run_shared(where, tmp_path):
    """``inturn run --shared``: three readers inside at once; a writer behind them waits, and
    a reader that arrives behind the waiting writer waits for it."""
    log = tmp_path / "log"
    modes: dict[str, str] = {}

    def inside(run: Run, mode: str) -> None:
        words = run.next_line()
        assert words[:1] == ["inside"], (words, run.errors() if not words else "")
        modes[words[1]] = mode

    readers = [Run("cli", "--shared", command=command(log, hold=True)) for _ in range(3)]
    for reader in readers:
        inside(reader, SHARED)  # each is inside while the others still are
    writer = Run("cli", terminal=True, command=command(log, hold=True))
    writer.queued()
    late = Run("cli", "--shared", terminal=True, command=command(log, hold=True))
    late.queued()
    for reader in readers:
        assert reader.finish() == 0
    inside(writer, EXCLUSIVE)
    assert writer.finish() == 0
    inside(late, SHARED)
    assert late.finish() == 0
    intervals = [i._replace(who=f"{i.who}:{modes[i.who]}") for i in read_intervals(log)]
    assert len(intervals) == 5
    assert_rules(intervals)
    assert together(intervals[:3]), "readers started by inturn run --shared did not overlap"


# --------------------------------------------------------------------------- crashes


def test_a_killed_reader_is_reported_to_the_next_writer_only(where, workers, tmp_path, request,
                                                            monkeypatch):  # fmt: skip
    """Two readers hold; one is killed with SIGKILL. A reader that gets in after that is told
    nothing; the next writer is told, with the dead reader's pid; the writer after it is not."""
    env = fast_env(where, request, monkeypatch)
    doomed_env = fast_env(where, request, monkeypatch, doomed=True)
    log = str(tmp_path / "log")
    reader = ("--shared", "--hold", "--record", log)
    doomed = start(workers, "rcrash", *reader, env=doomed_env)
    assert doomed.expect("acquired")[2] == "0"
    sharing = start(workers, "rcrash", *reader, env=env)
    assert sharing.expect("acquired")[2] == "0"
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.wait()
    after = start(workers, "rcrash", *reader, env=env)
    _, _, abandoned, dead = after.acquired()
    assert (abandoned, dead) == ("0", "-"), "a reader was told of a reader's death"
    writer = start(workers, "rcrash", "--hold", "--record", log, env=env)
    queued(writer)
    sharing.send()
    after.send()
    _, _, abandoned, dead = writer.acquired()
    assert (abandoned, dead) == ("1", str(doomed.pid))
    writer.send()
    assert writer.wait() == 0
    next_writer = start(workers, "rcrash", "--record", log, env=env)
    assert next_writer.acquired()[2:] == ["0", "-"]  # told once only
    assert next_writer.wait() == 0
    intervals = read_intervals(log)
    assert len(intervals) == 5 and [i.exited for i in intervals].count(False) == 1
    assert_rules(intervals)


def test_a_killed_writer_is_reported_to_exactly_one_next_holder(where, workers, tmp_path, request,
                                                               monkeypatch):  # fmt: skip
    """A writer holds, two readers and a writer wait; the holder is killed with SIGKILL. The
    two readers get in together and exactly one of them is told; the writer after them not."""
    env = fast_env(where, request, monkeypatch)
    doomed_env = fast_env(where, request, monkeypatch, doomed=True)
    log = str(tmp_path / "log")
    doomed = start(workers, "wcrash", "--hold", "--record", log, env=doomed_env)
    doomed.expect("acquired")
    readers = []
    for _ in range(2):
        reader = start(workers, "wcrash", "--shared", "--hold", "--record", log, env=env)
        queued(reader)
        readers.append(reader)
    writer = start(workers, "wcrash", "--record", log, env=env)
    queued(writer)
    doomed.proc.send_signal(signal.SIGKILL)
    told = []
    for reader in readers:
        _, _, abandoned, dead = reader.acquired()
        told.append((abandoned, dead))
    assert sorted(told) == [("0", "-"), ("1", str(doomed.pid))], told
    for reader in readers:
        reader.send()
    assert writer.acquired()[2:] == ["0", "-"]
    assert writer.wait() == 0
    intervals = read_intervals(log)
    assert len(intervals) == 4
    assert_rules(intervals)
    assert together([i for i in intervals if mode_of(i) == SHARED])


def test_killed_waiters_abandon_nothing(where, workers, tmp_path, request, monkeypatch):
    env = fast_env(where, request, monkeypatch)
    doomed_env = fast_env(where, request, monkeypatch, doomed=True)
    log = str(tmp_path / "log")
    holder = start(workers, "wkill", "--hold", "--record", log, env=env)
    holder.expect("acquired")
    doomed_reader = start(workers, "wkill", "--shared", env=doomed_env)
    queued(doomed_reader)
    doomed_writer = start(workers, "wkill", env=doomed_env)
    queued(doomed_writer)
    reader = start(workers, "wkill", "--shared", "--hold", "--record", log, env=env)
    queued(reader)
    writer = start(workers, "wkill", "--record", log, env=env)
    queued(writer)
    for doomed in (doomed_reader, doomed_writer):
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.wait()
    holder.send()
    assert reader.acquired()[2:] == ["0", "-"]
    reader.send()
    assert writer.acquired()[2:] == ["0", "-"]
    assert writer.wait() == 0
    intervals = read_intervals(log)
    assert len(intervals) == 3
    assert_rules(intervals)


# --------------------------------------------------------------------------- max_waiting


@pytest.mark.parametrize("most", [1, 3], ids=["max1", "max3"])
def test_max_waiting_under_a_burst_of_starts(where, tmp_path, processes, most):
    """50 ``inturn run --max-waiting N`` released together behind a holder: exactly N stay in
    line (and later run, in arrival order); the others exit 75 at once, with one line each,
    without running their command."""
    log = tmp_path / "log"
    line = inturn.Line("burst")
    holder = line.acquire()
    burst = Burst(
        processes, tmp_path / "burst", BURST, "run",
        "run", "--max-waiting", str(most), "burst", "--", *command(log, seconds=0.01),
    )  # fmt: skip
    burst.go()
    burst.until_exited(BURST - most)  # while the holder holds: at once, not at its release
    assert not burst.errors(), burst.errors()
    assert set(burst.codes.values()) == {EXIT_BUSY}, burst.codes
    for index in burst.codes:
        lines = burst.text(index, "err").strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("inturn: "), lines
        said = re.search(r"already has (\d+) waiting", lines[0])
        assert said and int(said.group(1)) >= most, lines[0]
        assert burst.text(index, "out") == ""
    status = line.status()
    assert [t.number for t in status.holders] == [holder.ticket]
    staying = [t.pid for t in status.waiters]
    assert len(staying) == most and set(staying) <= set(burst.pids), status
    assert not log.exists(), "a command ran while the holder held"
    holder.release()
    burst.until_exited(BURST)
    ran = [i for i, pid in enumerate(burst.pids) if pid in staying]
    assert [burst.codes[i] for i in ran] == [0] * most
    intervals = read_intervals(log)
    assert len(intervals) == most and crowds(intervals, 1) == []
    assert [ticket_of(i.who) for i in intervals] == [t.number for t in status.waiters]


def test_max_waiting_counts_only_those_that_wait(where, workers):
    """Holders are not counted, and neither are readers that hold together; a joiner without
    ``max_waiting`` is never turned away; ``-E`` changes the exit code."""
    line = inturn.Line("counted")
    readers = [start(workers, "counted", "--shared", "--hold", "--max-waiting", "1")]
    readers.append(start(workers, "counted", "--shared", "--hold", "--max-waiting", "1"))
    for reader in readers:
        reader.expect("acquired")  # holding: nobody waits
    writer = start(workers, "counted", "--max-waiting", "1", "--hold")
    queued(writer)  # none waiting ahead of it
    refused = start(workers, "counted", "--shared", "--max-waiting", "1")
    words = refused.expect("busy")
    assert "already has 1 waiting" in " ".join(words), words
    assert refused.wait() == EXIT_BUSY
    patient = start(workers, "counted", "--hold")
    queued(patient)  # no max_waiting: it joins whatever the line looks like
    three = start(workers, "counted", "--max-waiting", "3", "--hold")
    queued(three)  # two wait ahead of it
    assert start(workers, "counted", "--max-waiting", "3").expect("busy")
    result = run_cli("run", "--max-waiting", "2", "-E", "9", "counted", "--", "true")
    assert result.returncode == 9, result
    assert len(result.stderr.strip().splitlines()) == 1 and "already has" in result.stderr
    assert [t.pid for t in line.status().waiters] == [writer.pid, patient.pid, three.pid]
    for reader in readers:
        reader.send()
    for worker in (writer, patient, three):
        worker.acquired()
        worker.send()
        assert worker.wait() == 0


# --------------------------------------------------------------------------- newest_wins


def test_newest_wins_under_a_burst_of_starts(where, tmp_path, processes):
    """50 ``acquire(newest_wins=True)`` released together behind a holder: 49 are replaced
    while the holder holds (``Replaced``), and when it leaves exactly one runs: the newest."""
    log = tmp_path / "log"
    line = inturn.Line("newest")
    holder = line.acquire()
    burst = Burst(processes, tmp_path / "burst", BURST, "api", "newest", "--newest-wins",
                  "--record", str(log))  # fmt: skip
    burst.go()
    burst.until_exited(BURST - 1)  # while the holder holds
    assert not burst.errors(), burst.errors()
    assert set(burst.codes.values()) == {EXIT_REPLACED}, burst.codes
    replaced = {int(r[1]) for r in burst.child_reports("replaced")}
    assert replaced == set(burst.codes)
    (survivor,) = set(range(BURST)) - set(burst.codes)
    status = line.status()
    assert [t.pid for t in status.waiters] == [burst.pids[survivor]]
    assert [t.number for t in status.holders] == [holder.ticket]
    holder.release()
    burst.until_exited(BURST)
    assert burst.codes[survivor] == 0
    (acquired,) = burst.child_reports("acquired")
    assert int(acquired[1]) == survivor
    ticket = int(acquired[2])
    others = {int(r[2]) for r in burst.child_reports("waiting") if int(r[1]) != survivor}
    assert all(other < ticket for other in others), (ticket, sorted(others))
    intervals = read_intervals(log)
    assert [ticket_of(i.who) for i in intervals] == [ticket]  # the replaced never got in


def test_inturn_run_newest_wins_under_a_burst_of_starts(where, tmp_path, processes):
    """The same with 50 ``inturn run --newest-wins``: the replaced exit 77 with one line,
    their commands never started."""
    log = tmp_path / "log"
    line = inturn.Line("newest")
    holder = line.acquire()
    burst = Burst(processes, tmp_path / "burst", BURST, "run",
                  "run", "--newest-wins", "newest", "--", *command(log, seconds=0.01))  # fmt: skip
    burst.go()
    burst.until_exited(BURST - 1)
    assert set(burst.codes.values()) == {EXIT_REPLACED}, burst.codes
    for index in burst.codes:
        lines = burst.text(index, "err").strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("inturn: "), lines
        assert burst.text(index, "out") == ""
    (survivor,) = set(range(BURST)) - set(burst.codes)
    (waiting,) = line.status().waiters
    assert waiting.pid == burst.pids[survivor]
    assert not log.exists(), "a replaced command ran"
    holder.release()
    burst.until_exited(BURST)
    assert burst.codes[survivor] == 0
    assert burst.text(survivor, "out").split()[:1] == ["inside"]
    assert [ticket_of(i.who) for i in read_intervals(log)] == [waiting.number]


def test_newest_wins_replaces_older_such_waiters_at_once_and_no_one_else(where, workers, tmp_path):
    """A holder (itself ``newest_wins``) holds; a plain waiter sits among ``newest_wins`` ones
    that arrive one after another. Each newcomer replaces the previous newest_wins waiter at
    once, while the holder still holds; the plain waiter and the holder are never replaced.
    Reports the time from a newcomer's request to the replaced one's ``Replaced``."""
    rounds = 8 if where.kind == "local" else 5
    log = str(tmp_path / "log")
    line = inturn.Line("chain")
    holder = line.acquire(newest_wins=True)
    previous = start(workers, "chain", "--newest-wins", "--record", log)
    queued(previous)
    plain = start(workers, "chain", "--record", log)
    queued(plain)
    woken_after: list[float] = []
    for _ in range(rounds):
        newcomer = Worker("chain", "--newest-wins", "--record", log)
        workers.append(newcomer)
        joined = int(newcomer.expect("joining")[1])
        replaced_at = int(previous.expect("replaced", skip=("waiting",))[1])
        assert previous.wait() == EXIT_REPLACED
        woken_after.append((replaced_at - joined) / 1e6)
        queued(newcomer)
        previous = newcomer
    status = line.status()
    assert [t.number for t in status.holders] == [holder.ticket]
    assert [t.pid for t in status.waiters] == [plain.pid, previous.pid]
    holder.release()
    plain.acquired()
    assert plain.wait() == 0
    previous.acquired()
    assert previous.wait() == 0
    intervals = read_intervals(log)
    assert [i.who.split(":")[1] for i in intervals] == [str(plain.pid), str(previous.pid)]
    assert_rules(intervals)
    print(
        f"\n[{where.kind}] newest_wins: newcomer's request to the replaced waiter's Replaced, "
        f"median {statistics.median(woken_after):.2f} ms over {rounds} "
        f"(max {max(woken_after):.2f} ms)"
    )


@pytest.mark.parametrize(
    "how",
    [("--slots", "2"), ("--slots", "2", "--shared"), ("--timeout", "600")],
    ids=["slots2", "slots2-reader", "timeout"],
)
def test_a_replaced_waiter_is_woken_at_once_however_it_waits(where, workers, tmp_path, how):
    """The other ways of waiting: on several tickets at once (``slots=2``, while two writers
    hold), as a reader behind them, or with a timeout. Each time the newcomer replaces the
    older ``newest_wins`` waiter while the holders still hold, and then takes its place."""
    slots = 2 if "--slots" in how else 1
    log = str(tmp_path / "log")
    line = inturn.Line("ways", slots=slots)
    holders = [line.acquire() for _ in range(slots)]
    older = start(workers, "ways", *how, "--newest-wins", "--record", log)
    queued(older)
    for _ in range(2):
        newcomer = start(workers, "ways", *how, "--newest-wins", "--record", log)
        older.expect("replaced", skip=("waiting",))
        assert older.wait() == EXIT_REPLACED
        queued(newcomer)
        older = newcomer
    status = line.status()
    assert [t.number for t in status.holders] == [h.ticket for h in holders]
    assert [t.pid for t in status.waiters] == [older.pid]
    for held in holders:
        held.release()
    older.acquired()
    assert older.wait() == 0
    assert [i.who.split(":")[1] for i in read_intervals(log)] == [str(older.pid)]


# --------------------------------------------------------------------------- slots


def test_a_joiner_with_other_slots_is_refused_and_changes_nothing(where, workers, tmp_path):
    line = inturn.Line("slotted", slots=3)
    held = [line.acquire() for _ in range(3)]
    waiter = start(workers, "slotted", "--slots", "3", "--hold")
    queued(waiter)
    before = snapshot(line)
    log = tmp_path / "log"
    result = run_cli("run", "--slots", "2", "--timeout", "10", "slotted", "--", *command(log))
    message = one_line_error(result)
    assert re.search(r"\b2\b", message) and re.search(r"\b3\b", message), message
    assert not log.exists(), "the refused command ran"
    for slots, blocking in ((2, True), (4, False), (1, True)):
        with pytest.raises(inturn.UsageError) as refused:
            inturn.Line("slotted", slots=slots).acquire(timeout=10, blocking=blocking)
        text = str(refused.value)
        assert re.search(rf"\b{slots}\b", text) and re.search(r"\b3\b", text), text
    assert snapshot(line) == before
    held[0].release()
    waiter.acquired()  # the line works as before
    waiter.send()
    assert waiter.wait() == 0
    for turn in held[1:]:
        turn.release()
    with inturn.Line("slotted", slots=2).acquire(timeout=REPORT_TIMEOUT):
        pass  # nobody left in line: any number of slots is fine again


# --------------------------------------------------------------------------- waiting without a turn

# ``inturn wait`` through the same code as the console script, saying ``ready`` just before
# it starts, and when it returned (its clock is the observer's).
WAIT = """
import sys, time
import inturn.cli
from inturn.cli.parser import build_parser
build_parser()
print("ready", flush=True)
code = inturn.cli.main(sys.argv[1:])
print("returned", time.monotonic_ns(), code, flush=True)
sys.exit(code)
"""


class Waiting:
    """``inturn wait ARGS``, once it has started and gone to sleep."""

    def __init__(self, processes: list[subprocess.Popen[str]], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WAIT, "wait", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        processes.append(self.proc)
        assert self.proc.stdout is not None
        self.reports = read_lines(self.proc.stdout)
        assert self.reports.get(timeout=REPORT_TIMEOUT).split() == ["ready"]
        until_asleep(self.proc.pid)

    def returned(self) -> tuple[int, int]:
        """When it returned (monotonic ns), and its exit code."""
        line = self.reports.get(timeout=REPORT_TIMEOUT)
        words = line.split()
        assert words[:1] == ["returned"], (line, self.proc.poll())
        assert self.proc.wait(REPORT_TIMEOUT) == int(words[2])
        return int(words[1]), int(words[2])


def test_inturn_wait_is_a_barrier_for_those_in_line_only(where, workers, tmp_path, processes):
    """``inturn wait`` returns once the holder and the waiter that were in line when it was
    called have left, while one that arrived after it still holds; it takes no ticket."""
    log = str(tmp_path / "log")
    line = inturn.Line("barrier")
    holder = start(workers, "barrier", "--hold", "--record", log)
    holder.expect("acquired")
    waiter = start(workers, "barrier", "--shared", "--hold", "--record", log)
    queued(waiter)
    waiting = Waiting(processes, "barrier")
    late = start(workers, "barrier", "--hold", "--record", log)  # after the wait began
    queued(late)
    status = line.status()
    assert [t.pid for t in (*status.holders, *status.waiters)] == [
        holder.pid, waiter.pid, late.pid
    ]  # fmt: skip  # no ticket for the wait
    holder.send()
    waiter.acquired()
    assert waiting.proc.poll() is None, "it returned while one that was in line still was"
    waiter.send()
    waiter.expect("released")
    late.acquired()
    returned, code = waiting.returned()  # while the late one holds
    assert code == 0, waiting.proc.stderr.read() if waiting.proc.stderr else ""
    late.send()
    assert late.wait() == 0
    stays = {i.who.split(":")[1]: i for i in read_intervals(log)}
    assert stays[str(holder.pid)].end < returned and stays[str(waiter.pid)].end < returned
    assert returned < stays[str(late.pid)].end
    assert_rules(list(stays.values()))


def test_line_wait_is_a_barrier_and_takes_no_ticket(where, workers, tmp_path):
    """``Line.wait()``: readers hold and a writer waits; the wait returns once all three have
    left, not waiting for a reader that arrived after it was called."""
    log = str(tmp_path / "log")
    line = inturn.Line("pywait")
    readers = [start(workers, "pywait", "--shared", "--hold", "--record", log) for _ in range(2)]
    for reader in readers:
        reader.expect("acquired")
    writer = start(workers, "pywait", "--hold", "--record", log)
    queued(writer)
    waiting = start(workers, "pywait", "--wait-line")  # Line.wait() in another process
    until_asleep(waiting.pid)
    late = start(workers, "pywait", "--shared", "--hold", "--record", log)
    queued(late)
    status = line.status()
    assert waiting.pid not in [t.pid for t in (*status.holders, *status.waiters)]
    assert len(status.holders) == 2 and len(status.waiters) == 2
    for reader in readers:
        reader.send()
    writer.acquired()
    assert waiting.proc.poll() is None, "it returned while the writer that was in line held"
    writer.send()
    late.acquired()
    returned = int(waiting.expect("waited")[1])
    assert waiting.wait() == 0
    late.send()
    assert late.wait() == 0
    stays = {i.who.split(":")[1]: i for i in read_intervals(log)}
    assert all(stays[str(w.pid)].end < returned for w in (*readers, writer))
    assert_rules(list(stays.values()))


def test_wait_times_out_and_ctrl_c_ends_it(where, workers, processes):
    line = inturn.Line("await")
    assert run_cli("wait", "await").returncode == 0  # nobody in line: at once
    line.wait(timeout=REPORT_TIMEOUT)
    holder = start(workers, "await", "--hold")
    holder.expect("acquired")
    result = run_cli("wait", "--timeout", "0.3", "await")
    assert result.returncode == EXIT_BUSY, result
    with pytest.raises(inturn.Timeout):
        line.wait(timeout=0.2)
    interrupted = Waiting(processes, "await")
    status = line.status()
    assert [t.pid for t in (*status.holders, *status.waiters)] == [holder.pid]
    interrupted.proc.send_signal(signal.SIGINT)
    _, code = interrupted.returned()
    assert code == EXIT_INTERRUPTED
    holder.send()
    assert holder.wait() == 0
    line.wait(timeout=REPORT_TIMEOUT)


# --------------------------------------------------------------------------- status


def test_status_shows_each_tickets_mode(where, workers):
    readers = [start(workers, "modes", "--shared", "--hold") for _ in range(3)]
    for reader in readers:
        reader.expect("acquired")
    writer = start(workers, "modes", "--hold")
    queued(writer)

    status = inturn.Line("modes").status()
    assert [t.shared for t in status.holders] == [True, True, True]
    assert [t.shared for t in status.waiters] == [False]
    text = run_cli("status", "modes").stdout
    rows = text.splitlines()
    header = next(row for row in rows if "TICKET" in row)
    assert "MODE" in header.split(), header
    for worker, mode in [*((r, SHARED) for r in readers), (writer, EXCLUSIVE)]:
        (row,) = [row for row in rows if str(worker.pid) in row.split()]
        assert mode in row.split(), row
    data = json.loads(run_cli("status", "--json", "modes").stdout)
    assert [t["mode"] for t in data["holders"]] == [SHARED] * 3
    assert [t["mode"] for t in data["waiters"]] == [EXCLUSIVE]
    every = json.loads(run_cli("status", "--json").stdout)
    (described,) = [d for d in every["lines"] if d["name"] == "modes"]
    assert [t["mode"] for t in described["holders"]] == [SHARED] * 3

    for options in ((), ("--shared",)):  # busy: every holder named, and for a reader the
        busy = run_cli("run", "-n", *options, "modes", "--", "true")  # writer it must follow
        assert busy.returncode == 75 and len(busy.stderr.splitlines()) == 1, busy
        for reader in readers:
            assert f"pid {reader.pid} " in busy.stderr, busy.stderr
        follows = f"pid {writer.pid} " in busy.stderr and "waits to write first" in busy.stderr
        assert follows == bool(options), busy.stderr

    run = Run("modes", terminal=True)  # a writer on a terminal: its live status line
    assert run.terminal is not None
    seen = b""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while b"held by 3 sharing" not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no 'held by 3 sharing' in the status line: {seen[-300:]!r}"
        ready, _, _ = select.select([run.terminal], [], [], left)
        if ready:
            chunk = os.read(run.terminal, 4096)
            assert chunk, seen
            seen += chunk
    for reader in readers:
        reader.send()
    writer.acquired()
    writer.send()
    run.running()
    assert run.finish() == 0


# --------------------------------------------------------------------------- asyncio, decorators

READERS = 4


def test_async_readers_share_and_a_writer_waits_for_them(where, tmp_path):
    """Four tasks hold a shared turn at once (each waits inside until all four are in, so
    without sharing this would never end); a writer task that arrives meanwhile waits for
    them, and a reader task behind the writer waits for it."""
    log = tmp_path / "log"
    recorder = Recorder(log)
    line = inturn.Line("areaders")

    async def scenario() -> None:
        inside = 0
        all_in, leave = asyncio.Event(), asyncio.Event()

        async def inside_together(held: inturn.Turn, index: int) -> None:
            nonlocal inside
            with recorder.inside(f"{held.ticket}:a{index}:{SHARED}"):
                inside += 1
                if inside == READERS:
                    all_in.set()
                await all_in.wait()
                await leave.wait()

        async def reader(index: int) -> None:
            if index % 2:
                held = await inturn.acquire_async(line, shared=True)
                try:
                    await inside_together(held, index)
                finally:
                    held.release()
            else:
                async with inturn.turn("areaders", shared=True) as held:
                    await inside_together(held, index)

        async def writer() -> None:
            async with inturn.turn("areaders") as held:
                with recorder.inside(f"{held.ticket}:w:{EXCLUSIVE}"):
                    await asyncio.sleep(0.005)

        async def late_reader() -> None:
            async with inturn.turn("areaders", shared=True) as held:
                with recorder.inside(f"{held.ticket}:late:{SHARED}"):
                    pass

        tasks = [asyncio.ensure_future(reader(i)) for i in range(READERS)]
        try:
            await until(all_in.is_set, tasks)
            tasks.append(asyncio.ensure_future(writer()))
            await until(waiting(line, 1), tasks)
            tasks.append(asyncio.ensure_future(late_reader()))
            await until(waiting(line, 2), tasks)
            leave.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # every outcome retrieved

    run_async(scenario)
    intervals = read_intervals(log)
    assert len(intervals) == READERS + 2
    assert_rules(intervals)
    assert together([i for i in intervals if ":a" in i.who])


def waiting(line: inturn.Line, count: int) -> Callable[[], bool]:
    return lambda: len(line.status().waiters) >= count


async def until(condition: Callable[[], bool], tasks: list[asyncio.Future[None]]) -> None:
    """Watch (bounded) until ``condition()`` holds; a task that ended meanwhile (it failed,
    or got in where it should wait) is the failure."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while not await asyncio.to_thread(condition):
        for task in tasks:
            if task.done():
                task.result()
                raise AssertionError("a task ended before the line reached the state expected")
        assert time.monotonic() < deadline, "the line never reached the state expected"
        await asyncio.sleep(0.005)


def test_shared_decorators_let_calls_in_together(where, tmp_path):
    """``@inturn.turn(name, shared=True)`` on an async function and on a sync one: calls made
    together are inside together (each waits inside for all the others)."""
    log = tmp_path / "log"
    recorder = Recorder(log)
    arrived = 0
    all_in: asyncio.Event | None = None

    @inturn.turn("decorated", shared=True)
    async def read_async(index: int) -> int:
        nonlocal arrived
        assert all_in is not None
        with recorder.inside(f"{index}:async{index}:{SHARED}"):
            arrived += 1
            if arrived == READERS:
                all_in.set()
            await all_in.wait()
        return index

    async def scenario() -> list[int]:
        nonlocal all_in
        all_in = asyncio.Event()
        return list(await asyncio.gather(*(read_async(i) for i in range(READERS))))

    assert run_async(scenario) == list(range(READERS))
    barrier = threading.Barrier(READERS, timeout=REPORT_TIMEOUT)

    @inturn.turn("decorated", shared=True)
    def read_sync(index: int) -> None:
        with recorder.inside(f"{100 + index}:sync{index}:{SHARED}"):
            barrier.wait()  # broken (an error) unless all are inside at once

    in_threads(READERS, read_sync)  # fails on any thread's error (a broken barrier) or a hang
    intervals = read_intervals(log)
    assert together([i for i in intervals if "async" in i.who])
    assert together([i for i in intervals if "sync" in i.who and "async" not in i.who])
