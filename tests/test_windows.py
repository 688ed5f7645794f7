"""The Windows backend and ``inturn run`` on real Windows CPython processes, under Wine.

Every Windows process here is a real ``python.exe`` (the official embeddable CPython 3.13) run
by Wine; they share kernel objects through one wineserver, as processes share them on Windows.
``tests/windows/wine.py`` provisions Wine and that Python (see its docstring); without them these
tests skip, saying how to enable them, except with ``CI=true``, where that is a failure.

Ctrl-C: a Windows process that Wine runs without a console gets a console control event
(``CTRL_C_EVENT``, through ``SetConsoleCtrlHandler`` handlers) when its Linux process receives
SIGINT, which is what these tests send. ``GenerateConsoleCtrlEvent`` has no console to work on
under Wine, so the console broadcast that would reach ``inturn run``'s command as well on Windows
is not exercised here: the tests check that inturn survives it and waits for its command.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import under_ci

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "windows"))

from wine import (  # noqa: E402
    NETWORK_DRIVE,
    NETWORK_UNC,
    Unavailable,
    Wine,
    WinProcess,
    windows_path,
)

WORKER = windows_path(HERE / "windows" / "winworker.py")


@pytest.fixture(scope="session")
def wine(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Wine]:
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base  # one prefix per run, not per worker
    try:
        session = Wine(shared)
    except Unavailable as exc:
        if under_ci():
            pytest.fail(f"Windows tests cannot run: {exc}")
        pytest.skip(f"Windows tests skipped: {exc}")
    yield session
    session.close()


class Win:
    """One test's private lines folder, and Windows processes that use it."""

    def __init__(self, wine: Wine, folder: Path) -> None:
        self.wine = wine
        self.folder = folder
        self.env = {"INTURN_DIR": windows_path(folder)}
        self.python = windows_path(wine.python)
        self.started: list[WinProcess] = []

    def start(self, *args: str, terminal: bool = False) -> WinProcess:
        process = self.wine.start(*args, env=self.env, terminal=terminal)
        self.started.append(process)
        return process

    def worker(self, name: str, *options: str) -> WinProcess:
        """A ``winworker.py`` on line ``name``, once it has started (``pid`` is its own)."""
        process = self.start(WORKER, hexname(name), *options)
        process.pid = int(process.expect("started")[1])
        return process

    def inturn(self, *args: str, terminal: bool = False) -> WinProcess:
        """``python.exe -m inturn ARGS``; with ``terminal``, stderr is a terminal (status line)."""
        return self.start("-m", "inturn", *args, terminal=terminal)

    def run(self, *args: str) -> tuple[int, str, str]:
        """``python.exe ARGS`` to the end: exit code, stdout, stderr."""
        return self.start(*args).finish()

    def status(self, name: str) -> dict[str, Any]:
        """``inturn status --json NAME``, run as a Windows process."""
        code, out, err = self.run("-m", "inturn", "status", "--json", name)
        assert code == 0, (code, out, err)
        document: dict[str, Any] = json.loads(out)
        return document

    def terminate(self, pid: str | int) -> None:
        """``TerminateProcess`` from another Windows process (``os.kill`` does that on Windows)."""
        exited(self.run("-c", f"import os; os.kill({int(pid)}, 9)"), 0)


def exited(result: tuple[int, str, str], code: int) -> None:
    """That a finished process exited with ``code``; if not, the failure shows what it said."""
    assert result[0] == code, result


def hexname(name: str) -> str:
    return name.encode("utf-8", "surrogatepass").hex()


def pids(tickets: list[dict[str, Any]]) -> list[int]:
    return [ticket["pid"] for ticket in tickets]


@pytest.fixture
def win(wine: Wine, tmp_path: Path) -> Iterator[Win]:
    state = Win(wine, tmp_path / "lines")
    yield state
    for process in state.started:
        process.kill()


# --------------------------------------------------------------------------- the queue


def test_waiters_take_turns_first_come_first_served(win: Win) -> None:
    log = windows_path(win.folder.parent / "turns.log")
    holder = win.worker("fifo", "--hold", "--log", log)
    first = int(holder.expect("acquired")[1])
    waiters = []
    for _ in range(8):
        waiter = win.worker("fifo", "--log", log)
        waiter.expect("waiting")  # in line and asleep before the next one comes
        waiters.append(waiter)
    holder.send("release")
    holder.expect("released")
    tickets = [int(w.expect("acquired", skip=("waiting",))[1]) for w in waiters]
    for waiter in waiters:
        waiter.expect("released")
    assert tickets == sorted(tickets) and tickets[0] > first
    rows = (win.folder.parent / "turns.log").read_text().split("\n")[:-1]
    kinds = [row.split()[0] for row in rows]
    assert kinds == ["enter", "exit"] * 9  # one at a time, never overlapping
    order = [int(row.split()[1]) for row in rows if row.startswith("enter")]
    assert order == [first, *tickets]  # in the order they arrived
    assert win.status("fifo")["holders"] == []


def test_a_holder_that_dies_hands_over_an_abandoned_turn(win: Win) -> None:
    holder = win.worker("crash", "--hold")
    holder.expect("acquired")
    first = win.worker("crash", "--hold")
    first.expect("waiting")
    second = win.worker("crash")
    second.expect("waiting")

    holder.send("exit")  # os._exit while holding
    _, _, abandoned, dead = first.expect("acquired", skip=("waiting",))
    assert (abandoned, int(dead)) == ("1", holder.pid)
    assert holder.wait() == 3

    win.terminate(first.pid)  # TerminateProcess while holding
    _, _, abandoned, dead = second.expect("acquired", skip=("waiting",))
    assert (abandoned, int(dead)) == ("1", first.pid)
    second.expect("released")

    after = win.worker("crash")  # a clean release is not reported as abandoned
    assert after.expect("acquired")[2:] == ["0", "-"]
    exited(after.finish(), 0)


def test_a_waiter_that_dies_loses_its_place(win: Win) -> None:
    holder = win.worker("lost", "--hold")
    holder.expect("acquired")
    doomed = win.worker("lost")
    doomed.expect("waiting")
    behind = win.worker("lost")
    behind.expect("waiting")
    doomed.kill()  # SIGKILL to the Linux process Wine runs it in: gone without a word
    assert pids(win.status("lost")["waiters"]) == [behind.pid]
    holder.send("release")
    assert behind.expect("acquired", skip=("waiting",))[2:] == ["0", "-"]


def test_timeouts_and_busy_leave_the_line(win: Win) -> None:
    holder = win.worker("busy", "--hold")
    holder.expect("acquired")
    holder_pid = holder.pid
    py = win.python
    timed = win.worker("busy", "--timeout", "0.3")
    refused = win.worker("busy", "--no-wait")
    cli_busy = win.inturn("run", "--no-wait", "busy", "--", py, "-c", "pass")
    cli_code = win.inturn("run", "-n", "-E", "9", "busy", "--", py, "-c", "pass")
    cli_timeout = win.inturn("run", "--timeout", "0.3", "busy", "--", py, "-c", "pass")
    timed.expect("timeout", skip=("waiting",))
    refused.expect("busy")
    code, _, err = cli_busy.finish()
    assert code == 75 and f"held by pid {holder_pid}" in err, (code, err)
    exited(cli_code.finish(), 9)
    code, _, err = cli_timeout.finish()
    assert code == 75 and "gave up" in err, (code, err)
    assert (timed.wait(), refused.wait()) == (75, 75)
    status = win.status("busy")
    assert pids(status["holders"]) == [holder_pid] and status["waiters"] == []
    holder.send("release")
    holder.expect("released")
    exited(win.run("-m", "inturn", "run", "--no-wait", "busy", "--", py, "-c", "pass"), 0)


def test_slots_let_n_hold_at_once(win: Win) -> None:
    first = win.worker("pair", "--slots", "2", "--hold")
    second = win.worker("pair", "--slots", "2", "--hold")
    first.expect("acquired")
    second.expect("acquired")
    third = win.worker("pair", "--slots", "2", "--hold")
    third.expect("waiting")
    assert win.worker("pair", "--slots", "2", "--no-wait").expect("busy")
    assert len(win.status("pair")["holders"]) == 2
    second.send("release")  # either holder leaving lets the next one in
    assert third.expect("acquired", skip=("waiting",))[2] == "0"
    first.send("release")
    third.send("release")
    third.expect("released")


# Waits on the mutex of line argv[1]'s ticket argv[2] as a plain waiter with no ticket (as a
# status look or another waiter probing it does), says what the wait returned (128:
# WAIT_ABANDONED), and lets go once a line comes on stdin.
TAKES_THE_MUTEX = (
    "import ctypes, sys, inturn; k = ctypes.windll.kernel32; "
    "k.OpenMutexW.restype = ctypes.c_void_p; "
    "name = inturn.Line(sys.argv[1], slots=2).store.object_name(int(sys.argv[2])); "
    "h = ctypes.c_void_p(k.OpenMutexW(0x100001, 0, name)); "
    "print('watching', int(bool(h.value)), flush=True); "
    "print('took', k.WaitForSingleObject(h, 0xFFFFFFFF), flush=True); "
    "sys.stdin.readline(); print('gave', k.ReleaseMutex(h), flush=True); sys.stdin.readline()"
)


def test_a_death_seen_first_by_another_is_still_told_to_the_next_holder(win: Win) -> None:
    """Windows says ``WAIT_ABANDONED`` to the first that takes a dead owner's mutex only. With
    slots=2, a waiter whose wait ended on a dead holder's mutex taken by someone else first
    took that for a clean leave: it held the turn untold, and a later holder was told instead.
    Here a process waiting on that mutex before the waiter (Wine wakes waiters in the order
    they came) takes the abandoned mutex first."""
    first = win.worker("seen", "--slots", "2", "--hold")
    first.expect("acquired")
    doomed = win.worker("seen", "--slots", "2", "--hold")
    ticket = doomed.expect("acquired")[1]
    taker = win.start("-c", TAKES_THE_MUTEX, "seen", ticket)
    assert taker.expect("watching")[1] == "1"
    waiter = win.worker("seen", "--slots", "2", "--hold")
    waiter.expect("waiting")
    doomed.kill()  # SIGKILL to the Linux process Wine runs it in: its mutex is abandoned
    assert taker.expect("took")[1] == "128", "the taker was not the first to take it"
    taker.send("give")
    assert taker.expect("gave")[1] == "1"
    _, _, abandoned, dead = waiter.expect("acquired", skip=("waiting",))
    assert (abandoned, dead) == ("1", str(doomed.pid))
    for holder in (first, waiter):
        holder.send("release")
        holder.expect("released")
    after = win.worker("seen", "--slots", "2")
    assert after.expect("acquired")[2:] == ["0", "-"]  # told once only
    exited(after.finish(), 0)


# --------------------------------------------------------------------------- threads, cancel


@pytest.mark.parametrize("acquire_in", ["thread", "async"])
def test_a_turn_outlives_the_thread_that_took_it(win: Win, acquire_in: str) -> None:
    line = f"owner-{acquire_in}"
    holder = win.worker(line, "--hold", "--acquire-in", acquire_in)
    holder.expect("acquired")  # the acquiring thread (or the loop's executor) has ended
    assert win.worker(line, "--no-wait").expect("busy")
    waiter = win.worker(line)
    waiter.expect("waiting")
    holder.send("release")  # released from another thread than the one that took it
    holder.expect("released")
    assert waiter.expect("acquired", skip=("waiting",))[2:] == ["0", "-"]


def test_a_cancelled_wait_leaves_the_line(win: Win) -> None:
    holder = win.worker("cancel", "--hold")
    holder.expect("acquired")
    cancelled = win.worker("cancel", "--cancellable")
    cancelled.expect("waiting")
    behind = win.worker("cancel")
    behind.expect("waiting")
    cancelled.send("cancel")  # sets the kernel event that is part of the wait
    cancelled.expect("cancelled")
    assert len(win.status("cancel")["waiters"]) == 1
    holder.send("release")
    assert behind.expect("acquired", skip=("waiting",))[2] == "0"


def test_ctrl_c_interrupts_a_wait(win: Win) -> None:
    holder = win.worker("ctrlc", "--hold")
    holder.expect("acquired")
    waiter = win.worker("ctrlc")
    waiter.expect("waiting")
    cli = win.inturn("run", "ctrlc", "--", win.python, "-c", "pass", terminal=True)
    cli.queued()  # its status line says it is in line, asleep
    behind = win.worker("ctrlc")
    behind.expect("waiting")
    os.kill(waiter.unix_pid, signal.SIGINT)  # Wine turns it into CTRL_C_EVENT
    os.kill(cli.unix_pid, signal.SIGINT)
    waiter.expect("interrupted")
    assert waiter.wait() == 130
    exited(cli.finish(), 130)
    assert pids(win.status("ctrlc")["waiters"]) == [behind.pid]
    holder.send("release")
    assert behind.expect("acquired", skip=("waiting",))[2] == "0"


# --------------------------------------------------------------------------- inturn run


def test_run_passes_the_exit_code_and_environment(win: Win) -> None:
    script = (
        "import os, sys; e = os.environ; "
        "print('running', e['INTURN_NAME'], e['INTURN_TICKET'], e['INTURN_ABANDONED'], "
        "os.getppid(), flush=True); sys.exit(int(sys.stdin.readline()))"
    )
    run = win.inturn("run", "env", "--", win.python, "-c", script)
    _, name, ticket, abandoned, _ = run.expect("running")
    assert (name, abandoned) == ("env", "0") and int(ticket) >= 1
    status = win.status("env")
    assert status["holders"][0]["command"][-2:] == ["-c", script]
    run.send("7")
    exited(run.finish(), 7)
    assert win.status("env")["holders"] == []


# Runs ``inturn run`` on commands that end with codes above a C int's range (after Ctrl-C,
# ``STATUS_CONTROL_C_EXIT``; -1, as a DWORD; ``STATUS_ACCESS_VIOLATION``), and prints, for
# each, the exit code a Windows parent sees and what inturn wrote on stderr ("-": nothing).
LARGE_EXIT_CODES = """
import subprocess, sys
for code in (-1073741510, -1, -1073741819):
    command = [sys.executable, "-c", f"import os; os._exit({code})"]
    done = subprocess.run(
        [sys.executable, "-m", "inturn", "run", "codes", "--", *command],
        stderr=subprocess.PIPE, text=True,
    )
    print(done.returncode, done.stderr.strip().replace("\\n", " | ") or "-", flush=True)
"""


def test_a_run_nested_in_a_turn_of_its_own_line_says_so(win: Win) -> None:
    """Windows has no ``/proc``; under Wine, ``/proc`` is Linux's, whose pids are not Windows
    ones: it must not be asked whether the outer run is an ancestor, or the warning is lost."""
    py = win.python
    code, _, err = win.run(
        "-m", "inturn", "run", "nest", "--", py, "-m", "inturn", "run", "-w", "1", "nest", "--",
        py, "-c", "pass",
    )  # fmt: skip
    assert code == 75, err
    assert "warning: this command runs inside turn 1 of line 'nest'" in err, err


def test_run_passes_exit_codes_above_a_c_int(win: Win) -> None:
    """A command's exit code is a DWORD on Windows: 0xC000013A made ``inturn run`` fail with
    an OverflowError traceback and exit 1. Its parent now sees the command's own code."""
    code, out, err = win.run("-c", LARGE_EXIT_CODES)
    assert code == 0, (code, out, err)
    expected = [f"{c & 0xFFFFFFFF} -" for c in (-1073741510, -1, -1073741819)]
    assert out.splitlines() == expected


# Starts ``pythonw.exe -m inturn`` (a GUI program: no standard handles, so Python's
# ``sys.stdout`` and ``sys.stderr`` are None, as for a desktop app's launcher) and prints its
# exit code. ``argv[1]`` is where the command writes what it saw.
WITHOUT_STREAMS = """
import subprocess, sys
pythonw = sys.executable[: -len("python.exe")] + "pythonw.exe"
seen = sys.argv[1]
command = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('ran'); sys.exit(3)"]
none = subprocess.STARTUPINFO(dwFlags=subprocess.STARTF_USESTDHANDLES)  # null handles, all 3
for args in (["run", "gui", "--", *command, seen], ["status"], ["run", "--slots", "0", "x"]):
    print(subprocess.run([pythonw, "-m", "inturn", *args], startupinfo=none).returncode, flush=True)
"""


def test_a_command_windows_cannot_start_is_refused_before_joining(win: Win) -> None:
    """Every file passes the "executable" check on Windows: a document given as the command
    waited in line, then failed with exit 2 and "Bad EXE format for %1". Now it is refused at
    once (126), as a command not found is (127), while someone else holds the line."""
    holder = win.worker("notexe", "--hold")
    holder.expect("acquired")
    notes = win.folder.parent / "notes.txt"
    notes.write_text("not a program\n")
    code, out, err = win.run("-m", "inturn", "run", "notexe", "--", windows_path(notes))
    said = err.strip().splitlines()
    assert (code, out) == (126, ""), (code, out, err)
    assert len(said) == 1 and "is not a program Windows can start" in said[0], said
    code, _, err = win.run("-m", "inturn", "run", "notexe", "--", "no-such-program-here")
    assert code == 127 and "command not found" in err, (code, err)
    assert win.status("notexe")["waiters"] == []
    holder.send("release")
    holder.expect("released")


def test_run_from_a_program_without_standard_handles(win: Win) -> None:
    seen = win.folder.parent / "seen"
    code, out, err = win.run("-c", WITHOUT_STREAMS, windows_path(seen))
    assert (code, out.split()) == (0, ["3", "0", "2"]), err
    assert seen.read_text() == "ran"


def test_run_survives_ctrl_c_and_waits_for_its_command(win: Win) -> None:
    script = (
        "import sys; print('running', flush=True); line = sys.stdin.readline(); "
        "print('finishing', flush=True); sys.exit(int(line))"
    )
    run = win.inturn("run", "keep", "--", win.python, "-c", script)
    run.expect("running")
    os.kill(run.unix_pid, signal.SIGINT)  # inturn gets Ctrl-C; its command did not here
    assert win.worker("keep", "--no-wait").expect("busy")  # still holding for its command
    run.send("5")
    run.expect("finishing")
    exited(run.finish(), 5)


def test_a_dead_inturn_takes_its_command_along(win: Win) -> None:
    script = (
        "import os, time; print('running', os.getpid(), os.getppid(), flush=True); time.sleep(600)"
    )
    run = win.inturn("run", "job", "--", win.python, "-c", script)
    _, _, inturn_pid = run.expect("running")
    waiter = win.worker("job")
    waiter.expect("waiting")
    win.terminate(inturn_pid)  # TerminateProcess on inturn: the job object kills the command
    _, _, abandoned, dead = waiter.expect("acquired", skip=("waiting",))
    assert (abandoned, int(dead)) == ("1", int(inturn_pid))
    # The command shared inturn's stdout: the pipe's end means it is gone too.
    assert run.output() == []


# The command keeps a handle to its own job (named after its turn), so the system cannot end the
# job when inturn's handles close: here only the next holder can. On Windows the system closes
# a killed inturn's handles only after its mutexes are abandoned, so the next holder would
# otherwise start beside a command still being ended.
KEEPS_ITS_JOB = (
    "import ctypes, os, time, inturn; k = ctypes.windll.kernel32; "
    "k.OpenJobObjectW.restype = ctypes.c_void_p; "
    "store = inturn.Line(os.environ['INTURN_NAME']).store; "
    "job = k.OpenJobObjectW(0x0004, 0, store.job_name(int(os.environ['INTURN_TICKET']))); "
    "print('running', os.getpid(), os.getppid(), int(bool(job)), flush=True); time.sleep(600)"
)
STILL_RUNS = (
    "import ctypes, sys; k = ctypes.windll.kernel32; k.OpenProcess.restype = ctypes.c_void_p; "
    "h = k.OpenProcess(0x00100000, 0, int(sys.argv[1])); "
    "sys.exit(1 if h and k.WaitForSingleObject(ctypes.c_void_p(h), 0) == 0x102 else 0)"
)


def test_the_next_holder_ends_a_dead_inturns_command_before_it_returns(win: Win) -> None:
    run = win.inturn("run", "job", "--", win.python, "-c", KEEPS_ITS_JOB)
    _, command, inturn_pid, has_job = run.expect("running")
    assert has_job == "1", "the command's job is named after its turn"
    waiter = win.worker("job", "--hold")
    waiter.expect("waiting")
    win.terminate(inturn_pid)
    _, _, abandoned, dead = waiter.expect("acquired", skip=("waiting",))
    assert (abandoned, int(dead)) == ("1", int(inturn_pid))
    # Asked after the turn came: the command cannot have ended later, as nothing else ends it.
    exited(win.run("-c", STILL_RUNS, command), 0)
    waiter.send("release")
    waiter.expect("released")


# Takes line argv[1]'s first turn, then holds job objects under the names of its next tickets;
# once a line comes on stdin, says how many processes ever were in them.
SQUATS_JOBS = (
    "import ctypes, sys, inturn; k = ctypes.windll.kernel32; "
    "k.CreateJobObjectW.restype = ctypes.c_void_p; line = inturn.Line(sys.argv[1]); "
    "line.acquire().release(); "
    "jobs = [k.CreateJobObjectW(None, line.store.job_name(n)) for n in range(2, 6)]; "
    "print('squatting', int(all(jobs)), flush=True); sys.stdin.readline(); "
    "counts = [(ctypes.c_uint32 * 12)() for _ in jobs]; q = k.QueryInformationJobObject; "
    "[q(ctypes.c_void_p(j), 1, c, 48, None) for j, c in zip(jobs, counts)]; "
    "print('processes', sum(c[9] for c in counts), flush=True)"  # TotalProcesses
)


def test_a_job_name_taken_already_is_not_shared(win: Win) -> None:
    squatter = win.start("-c", SQUATS_JOBS, "squat")
    assert squatter.expect("squatting")[1] == "1"
    command = [win.python, "-c", "import sys; sys.exit(5)"]
    exited(win.run("-m", "inturn", "run", "squat", "--", *command), 5)
    squatter.send("count")
    assert squatter.expect("processes")[1] == "0", "the command went in its own job"


# The command starts a process that outlives it, then exits 4. The leftover waits on a named
# event (``release``) until the test sets it; the command waits until the leftover is ready.
LEFTOVER = (
    "import ctypes, sys; k = ctypes.windll.kernel32; "
    "release = k.OpenEventW(0x100000, 0, sys.argv[1]); "
    "ready = k.OpenEventW(0x1F0003, 0, sys.argv[2]); "
    "k.SetEvent(ready); k.WaitForSingleObject(release, 0xFFFFFFFF)"
)
LEAVES_A_PROCESS = (
    "import ctypes, subprocess, sys; k = ctypes.windll.kernel32; "
    "release = k.CreateEventW(None, 1, 0, sys.argv[1]); "
    "ready = k.CreateEventW(None, 1, 0, sys.argv[2]); d = subprocess.DEVNULL; "
    "subprocess.Popen([sys.executable, '-c', sys.argv[3], *sys.argv[1:3]], "
    "stdin=d, stdout=d, stderr=d); "
    "k.WaitForSingleObject(ready, 0xFFFFFFFF); print('spawned', flush=True); sys.exit(4)"
)
SET_EVENT = (
    "import ctypes, sys; k = ctypes.windll.kernel32; h = k.OpenEventW(0x1F0003, 0, sys.argv[1]); "
    "sys.exit(0 if h and k.SetEvent(h) else 1)"
)


def test_ctrl_c_ends_what_the_command_left_running_before_the_turn_passes(win: Win) -> None:
    unique = uuid.uuid4().hex
    release, ready = (f"Local\\inturn-test-{unique}-{kind}" for kind in ("go", "up"))
    run = win.inturn(
        "run", "left", "--", win.python, "-c", LEAVES_A_PROCESS, release, ready, LEFTOVER
    )
    run.expect("spawned")
    assert win.worker("left", "--no-wait").expect("busy")  # the leftover holds the turn
    os.kill(run.unix_pid, signal.SIGINT)
    assert run.wait() == 4
    exited(win.run("-c", SET_EVENT, release), 1)  # nobody has the event open: the leftover is gone
    assert win.worker("left", "--no-wait").expect("acquired")


@pytest.mark.parametrize("close", [False, True])
def test_what_the_command_leaves_running_holds_the_turn_unless_close(win: Win, close: bool) -> None:
    unique = uuid.uuid4().hex  # events are machine-wide names: unique across xdist workers
    release, ready = (f"Local\\inturn-test-{unique}-{kind}" for kind in ("go", "up"))
    options = ["--close"] if close else []
    line = f"leftover-{close}"
    run = win.inturn(
        "run", *options, line, "--", win.python, "-c", LEAVES_A_PROCESS, release, ready, LEFTOVER
    )
    run.expect("spawned")
    if close:
        # Back at once; what it started runs on, outside the turn. (Only the exit code: under
        # Wine the leftover also inherits inturn's stderr, so that pipe stays open meanwhile.)
        assert run.wait() == 4
        assert win.worker(line, "--no-wait").expect("acquired")
        exited(win.run("-c", SET_EVENT, release), 0)  # it was still there
    else:
        assert win.worker(line, "--no-wait").expect("busy")  # the leftover holds the turn
        exited(win.run("-c", SET_EVENT, release), 0)
        exited(run.finish(), 4)  # the command's own code, once the leftover ended


def test_status_json_lists_holders_then_waiters(win: Win) -> None:
    holder = win.worker("seen", "--hold")
    holder.expect("acquired")
    waiters = []
    for _ in range(2):
        waiter = win.worker("seen")
        waiter.expect("waiting")
        waiters.append(waiter)
    status = win.status("seen")
    assert status["name"] == "seen" and status["scope"] == "user"
    assert str(status["where"]).startswith(windows_path(win.folder))
    holders, waiting = status["holders"], status["waiters"]
    assert [t["state"] for t in holders] == ["holding"]
    assert [t["state"] for t in waiting] == ["waiting", "waiting"]
    tickets = [t["ticket"] for t in [*holders, *waiting]]
    assert tickets == sorted(tickets)
    assert holders[0]["user"] and holders[0]["host"]
    code, out, err = win.run("-m", "inturn", "status", "--json")
    assert code == 0, err
    overview = json.loads(out)
    assert [line["name"] for line in overview["lines"]] == ["seen"]
    code, out, _ = win.run("-m", "inturn", "status", "seen")
    assert code == 0 and "1 holding, 2 waiting" in out
    # A spoilt .name: the listing skips the line with one warning. Its name leads to it, and
    # there, since the record holds the id of the line's kernel objects, to what to do: a
    # look does not take the holder for dead (the line free, its tickets buried).
    (win.folder / "seen" / ".name").write_bytes(b"\x00garbage")
    code, out, err = win.run("-m", "inturn", "status", "--json")
    assert code == 0 and json.loads(out)["lines"] == [], (code, out, err)
    record = windows_path(win.folder / "seen" / ".name")
    assert err.splitlines() == [
        f"inturn: warning: skipping {record}: it does not hold a line's name; "
        "look the line up by name"
    ]
    tickets = sorted(path.name for path in (win.folder / "seen").glob("*.ticket"))
    assert len(tickets) == 3
    corrupt = f"inturn: {record} is corrupt: remove the folder"
    for command in (("status", "seen"), ("run", "-n", "seen", "--", win.python, "-V")):
        code, out, err = win.run("-m", "inturn", *command)
        assert code == 2 and err.startswith(corrupt) and "Python" not in out, (out, err)
    assert sorted(path.name for path in (win.folder / "seen").glob("*.ticket")) == tickets


def test_status_prints_what_a_pipe_in_the_ansi_code_page_cannot_hold(win: Win) -> None:
    """A Windows pipe or file takes only the ANSI code page: a line's name, a holder's command
    and the lines folder beyond it are still printed, JSON with ``\\u`` escapes (parsed back
    as they were), text with backslash escapes; and a holder's command is quoted as Windows
    splits a command line, not as a POSIX shell would (``'"'"'``)."""
    win.folder = win.folder.parent / "ユーザー" / "lines"  # as under C:\\Users\\ユーザー
    win.env = {"INTURN_DIR": windows_path(win.folder)}
    name = "ビルド-😀"
    code, encoding, _ = win.run("-c", "import sys; print(sys.stdout.encoding)")
    assert code == 0 and encoding.lower() not in ("utf-8", "utf8"), encoding
    argument = "it's 報告.txt"
    shown, shown_argument = (
        text.encode(encoding, "backslashreplace").decode(encoding) for text in (name, argument)
    )
    assert shown != name  # the code page cannot hold it: what this test is about
    hold = "import sys; print('in', flush=True); sys.stdin.readline()"
    holder = win.inturn("run", name, "--", win.python, "-c", hold, argument)
    holder.expect("in")
    code, out, err = win.run("-m", "inturn", "status", "--json", name)
    assert code == 0, (out, err)
    status = json.loads(out)
    assert status["name"] == name and str(status["where"]).startswith(windows_path(win.folder))
    assert status["holders"][0]["command"][-1] == argument
    code, out, err = win.run("-m", "inturn", "status", "--json")
    assert code == 0, (out, err)
    assert [line["name"] for line in json.loads(out)["lines"]] == [name]
    code, out, err = win.run("-m", "inturn", "status", "--names")
    assert (code, out) == (0, shown), err
    code, out, err = win.run("-m", "inturn", "status")
    assert code == 0 and shown in out, (out, err)
    code, out, err = win.run("-m", "inturn", "status", name)
    assert code == 0 and out.startswith(f"{shown}: 1 holding, 0 waiting"), (out, err)
    assert f'"{shown_argument}"' in out and "'\"'\"'" not in out, out
    holder.send()
    exited(holder.finish(), 0)


def test_a_held_line_whose_name_record_was_removed_is_refused_not_taken(win: Win) -> None:
    """``.name`` holds the id the line's kernel objects are named by: removed while the line
    is held, a new id would take the holder for dead. Runs and looks are refused instead, and
    the line works again, with a new record, once its tickets are gone."""
    holder = win.worker("unnamed", "--hold")
    holder.expect("acquired")
    record = win.folder / "unnamed" / ".name"
    record.unlink()
    missing = f"inturn: {windows_path(record)} is missing, yet line 'unnamed' has tickets"
    run = ("run", "-n", "unnamed", "--", win.python, "-c", "print('ran')")
    for command in (("status", "unnamed"), run):
        code, out, err = win.run("-m", "inturn", *command)
        assert code == 2 and err.startswith(missing) and "ran" not in out, (code, out, err)
    holder.send("release")
    holder.expect("released")
    assert holder.wait() == 0
    code, out, err = win.run("-m", "inturn", *run)
    assert (code, out) == (0, "ran"), err
    assert record.exists()


# --------------------------------------------------------------------------- shared turns


def stays(log: Path) -> list[tuple[str, int]]:
    """The log's rows in the order they were written: (``enter``/``exit``, ticket). Each row
    is written while its writer holds, so the order of rows is the order of events."""
    return [(row.split()[0], int(row.split()[1])) for row in log.read_text().splitlines()]


def test_readers_hold_together_and_a_writer_alone_in_arrival_order(win: Win) -> None:
    """Two readers hold at once; a writer behind them waits, and so does a reader that
    arrives after the waiting writer: it gets in only once the writer has left."""
    path = win.folder.parent / "shared.log"
    log = windows_path(path)
    readers = [win.worker("rw", "--shared", "--hold", "--log", log) for _ in range(2)]
    tickets = [int(reader.expect("acquired")[1]) for reader in readers]  # both hold: together
    writer = win.worker("rw", "--hold", "--log", log)
    tickets.append(int(writer.expect("waiting")[1]))
    late = win.worker("rw", "--shared", "--hold", "--log", log)
    tickets.append(int(late.expect("waiting")[1]))
    status = win.status("rw")
    assert [t["mode"] for t in status["holders"]] == ["shared", "shared"]
    assert [t["mode"] for t in status["waiters"]] == ["exclusive", "shared"]
    for reader in readers:
        reader.send("release")
        reader.expect("released")
    writer.expect("acquired", skip=("waiting",))
    writer.send("release")
    writer.expect("released")
    late.expect("acquired", skip=("waiting",))
    late.send("release")
    late.expect("released")
    first, second, writer_ticket, late_ticket = tickets
    assert stays(path) == [
        ("enter", first), ("enter", second), ("exit", first), ("exit", second),
        ("enter", writer_ticket), ("exit", writer_ticket),
        ("enter", late_ticket), ("exit", late_ticket),
    ]  # fmt: skip


def test_a_replaced_waiter_is_woken_at_once(win: Win) -> None:
    """``newest_wins``: each newcomer replaces the older such waiter while the holder still
    holds (a worker, then ``inturn run --newest-wins``, which exits 77 without running its
    command); a plain waiter is left alone."""
    holder = win.worker("newest", "--hold")
    holder.expect("acquired")
    older = win.worker("newest", "--newest-wins")
    older.expect("waiting")
    plain = win.worker("newest")
    plain.expect("waiting")
    cli = win.inturn("run", "--newest-wins", "newest", "--", win.python, "-c", "print('ran')",
                     terminal=True)  # fmt: skip
    cli.queued()
    older.expect("replaced", skip=("waiting",))
    assert older.wait() == 77
    newest = win.worker("newest", "--newest-wins")
    newest.expect("waiting")
    code, out, err = cli.finish()  # replaced while the holder still holds
    assert code == 77 and "ran" not in out, (code, out, err)
    status = win.status("newest")
    assert pids(status["holders"]) == [holder.pid]
    assert pids(status["waiters"]) == [plain.pid, newest.pid]
    holder.send("release")
    assert plain.expect("acquired", skip=("waiting",))[2] == "0"
    plain.expect("released")
    newest.expect("acquired", skip=("waiting",))
    newest.expect("released")


def test_a_killed_reader_is_told_to_the_next_writer_only(win: Win) -> None:
    """Two readers hold; one is ended with ``TerminateProcess``. A reader that gets in after
    that is told nothing; the next writer is told, with the dead reader's pid; the writer
    after it is not. The log shows the writers alone and the readers together."""
    path = win.folder.parent / "rcrash.log"
    log = windows_path(path)
    doomed = win.worker("rcrash", "--shared", "--hold", "--log", log)
    doomed.expect("acquired")
    sharing = win.worker("rcrash", "--shared", "--hold", "--log", log)
    sharing.expect("acquired")
    win.terminate(doomed.pid)
    doomed.wait()
    after = win.worker("rcrash", "--shared", "--hold", "--log", log)
    assert after.expect("acquired")[2:] == ["0", "-"], "a reader was told of a reader's death"
    writer = win.worker("rcrash", "--hold", "--log", log)
    writer.expect("waiting")
    for reader in (sharing, after):
        reader.send("release")
        reader.expect("released")
    _, ticket, abandoned, dead = writer.expect("acquired", skip=("waiting",))
    assert (abandoned, int(dead)) == ("1", doomed.pid)
    writer.send("release")
    writer.expect("released")
    last = win.worker("rcrash", "--log", log)
    _, last_ticket, abandoned, dead = last.expect("acquired")
    assert (abandoned, dead) == ("0", "-")  # told once only
    last.expect("released")
    rows = stays(path)
    assert len(rows) == 9 and rows.count(("enter", int(ticket))) == 1  # the dead one's enter
    assert rows[-4:] == [
        ("enter", int(ticket)), ("exit", int(ticket)),
        ("enter", int(last_ticket)), ("exit", int(last_ticket)),
    ]  # fmt: skip  # the writers alone, after every reader had left


def test_a_killed_writer_is_told_to_one_reader_and_killed_waiters_to_nobody(win: Win) -> None:
    """A writer holds; a reader and a writer wait, then are killed (SIGKILL to Wine's
    process: gone without a word); two readers and a writer wait behind them. The holder is
    ended with ``TerminateProcess``: the two readers get in together and exactly one of them
    is told; the writer after them is told nothing."""
    holder = win.worker("wcrash", "--hold")
    holder.expect("acquired")
    doomed = [win.worker("wcrash", *options) for options in (("--shared",), ())]
    for waiter in doomed:
        waiter.expect("waiting")
    readers = [win.worker("wcrash", "--shared", "--hold") for _ in range(2)]
    for reader in readers:
        reader.expect("waiting")
    writer = win.worker("wcrash")
    writer.expect("waiting")
    for waiter in doomed:
        waiter.kill()
    assert pids(win.status("wcrash")["waiters"]) == [*(r.pid for r in readers), writer.pid]
    win.terminate(holder.pid)
    told = sorted(tuple(r.expect("acquired", skip=("waiting",))[2:]) for r in readers)
    assert told == [("0", "-"), ("1", str(holder.pid))], told
    status = win.status("wcrash")
    assert pids(status["holders"]) == [r.pid for r in readers]  # both at once
    for reader in readers:
        reader.send("release")
    assert writer.expect("acquired", skip=("waiting",))[2:] == ["0", "-"]
    writer.expect("released")


BURST = 50  # Windows processes started together in the burst tests


def burst(win: Win, name: str, *options: str) -> list[WinProcess]:
    """``BURST`` workers on line ``name``, each a Windows process of its own, all released
    at the same moment by one named event once every one of them waits for it."""
    gate = f"Local\\inturn-test-{uuid.uuid4().hex}-gate"
    started = [win.start(WORKER, hexname(name), "--gate", gate, *options) for _ in range(BURST)]
    for process in started:
        process.pid = int(process.expect("started")[1])
        process.expect("gated")
    exited(win.run("-c", SET_EVENT, gate), 0)
    return started


def test_max_waiting_under_a_burst_of_windows_starts(win: Win) -> None:
    """50 Windows processes ask with ``max_waiting=1`` at once behind a holder: exactly one
    stays in line (and runs when the holder leaves); the others are turned away at once,
    saying so, without taking a turn."""
    path = win.folder.parent / "maxburst.log"
    holder = win.worker("maxburst", "--hold")
    holder.expect("acquired")
    started = burst(win, "maxburst", "--max-waiting", "1", "--log", windows_path(path))
    staying = []
    for process in started:
        words = process.expect("busy", "waiting")
        if words[0] == "busy":
            said = re.search(r"already has (\d+) waiting", " ".join(words))
            assert said and int(said.group(1)) >= 1, words
            assert process.wait() == 75
        else:
            staying.append(process)
    assert len(staying) == 1, [p.pid for p in staying]
    (survivor,) = staying
    status = win.status("maxburst")
    assert pids(status["holders"]) == [holder.pid]
    assert pids(status["waiters"]) == [survivor.pid]
    assert not path.exists(), "someone got in while the holder held"
    holder.send("release")
    _, ticket, _, _ = survivor.expect("acquired", skip=("waiting",))
    survivor.expect("released")
    assert stays(path) == [("enter", int(ticket)), ("exit", int(ticket))]


def test_newest_wins_under_a_burst_of_windows_starts(win: Win) -> None:
    """50 Windows processes ask with ``newest_wins`` at once behind a holder: 49 are replaced
    while the holder holds, and when it leaves exactly one runs: the newest."""
    path = win.folder.parent / "newburst.log"
    holder = win.worker("newburst", "--hold")
    holder.expect("acquired")
    started = burst(win, "newburst", "--newest-wins", "--log", windows_path(path))
    # Each says it waits (its ticket) before it can learn that it was replaced.
    tickets = {process.pid: int(process.expect("waiting")[1]) for process in started}
    newest = max(tickets, key=tickets.__getitem__)
    (survivor,) = [process for process in started if process.pid == newest]
    for process in started:
        if process is not survivor:
            process.expect("replaced", skip=("waiting",))
            assert process.wait() == 77
    status = win.status("newburst")
    assert pids(status["holders"]) == [holder.pid]
    assert pids(status["waiters"]) == [survivor.pid]
    holder.send("release")
    survivor.expect("acquired", skip=("waiting",))
    survivor.expect("released")
    assert stays(path) == [("enter", tickets[survivor.pid]), ("exit", tickets[survivor.pid])]


def test_other_slots_are_refused_and_wait_is_a_barrier(win: Win) -> None:
    """A joiner whose slots differ from the line's is refused with one line naming both
    numbers (a worker, and ``inturn run`` with exit 2), changing nothing. A waiting writer's
    status line says how many share the turn. ``inturn wait`` and ``Line.wait()`` take no
    ticket and return once those in line have left (``--timeout``: exit 75). That they do not
    wait for later arrivals is the queue's rule, shown on the other backends."""
    py = win.python
    readers = [win.worker("gate", "--slots", "2", "--shared", "--hold") for _ in range(2)]
    for reader in readers:
        reader.expect("acquired")
    refused = win.worker("gate", "--slots", "3")
    words = refused.expect("refused")
    assert "slots=2" in words and "slots=3" in " ".join(words), words
    assert refused.wait() == 2
    code, out, err = win.run("-m", "inturn", "run", "gate", "--", py, "-c", "print('ran')")
    lines = err.strip().splitlines()
    assert code == 2 and "ran" not in out and len(lines) == 1, (code, out, err)
    assert "slots=2" in lines[0] and "slots=1" in lines[0], lines
    writer = win.inturn("run", "-s", "2", "gate", "--", py, "-c", "print('wrote')", terminal=True)
    assert "held by 2 sharing" in writer.queued()
    cli_wait = win.inturn("wait", "gate")
    py_wait = win.worker("gate", "--slots", "2", "--wait-line")
    code, _, err = win.run("-m", "inturn", "wait", "--timeout", "0.2", "gate")
    assert code == 75 and "gave up" in err, (code, err)
    status = win.status("gate")
    assert pids(status["holders"]) == [r.pid for r in readers]
    assert len(status["waiters"]) == 1  # the writer: no ticket for a wait
    assert cli_wait.proc.poll() is None and py_wait.proc.poll() is None
    for reader in readers:
        reader.send("release")
    code, out, _ = writer.finish()
    assert (code, out) == (0, "wrote")
    exited(cli_wait.finish(), 0)
    py_wait.expect("waited")
    assert py_wait.wait() == 0
    assert win.status("gate")["holders"] == []


KEPT_LINE_SCRIPT = """
import sys, inturn
line = inturn.Line('again')
line.acquire().release()
print('ready', flush=True)
sys.stdin.readline()
print('holders', *[t.pid for t in line.status().holders], flush=True)
try:
    line.wait(timeout=0.2)
except inturn.Timeout:
    print('waited', 'timeout', flush=True)
print('forgot', line.forget(), flush=True)
"""


def test_a_line_kept_from_before_a_forget_judges_the_line_made_anew(win: Win) -> None:
    """A ``Line`` that knew the line before it was forgotten and made anew names the new
    line's kernel objects, not the old ones: it sees the holder as alive (before, it buried
    it as dead, and a second run started beside it, told the holder had died)."""
    kept = win.start("-c", KEPT_LINE_SCRIPT)
    kept.expect("ready")
    exited(win.run("-m", "inturn", "forget", "again"), 0)
    holder = win.worker("again", "--hold")
    holder.expect("acquired")
    kept.send("go")
    assert kept.expect("holders") == ["holders", str(holder.pid)]
    assert kept.expect("waited") == ["waited", "timeout"]
    assert kept.expect("forgot") == ["forgot", "False"]
    code, out, err = win.run("-m", "inturn", "run", "-n", "again", "--", win.python, "-V")
    assert code == 75 and "Python" not in out, (code, out, err)
    assert pids(win.status("again")["holders"]) == [holder.pid]
    holder.send("release")
    holder.expect("released")


# A process that forgot the line and then takes turns on it: beside another process with a
# fresh ``Line`` (``forgot``), or with its threads forgetting it again after each turn
# (``forgetting``). Rows for ``observer.py``, taken inside each turn, written out at the end.
FORGOTTEN_SCRIPT = """
import sys, threading, time, inturn
role, log, threads, turns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
line = inturn.Line('forgotten')
if role != 'fresh':
    line.acquire().release()
    print('forgot', line.forget(), flush=True)
print('ready', flush=True)
sys.stdin.readline()
rows, errors, forgot, unset = [], [], [], []
def take(index):
    for turn in range(turns):
        try:
            with line.acquire(timeout=300):
                rows.append(f'enter {role}-{index}-{turn} {time.monotonic_ns()}')
                time.sleep(0.0003)
                rows.append(f'exit {role}-{index}-{turn} {time.monotonic_ns()}')
            if role.startswith('forgetting') and line.forget():
                forgot.append(turn)
        except inturn.BackendError as exc:
            unset.append(f'{exc}')
        except Exception as exc:
            errors.append(f'{type(exc).__name__}: {exc}')
            return
takers = [threading.Thread(target=take, args=(i,)) for i in range(threads)]
for thread in takers:
    thread.start()
for thread in takers:
    thread.join()
with open(log, 'w') as out:
    out.write(''.join(row + '\\n' for row in rows))
print('forgotten', len(forgot), len(rows) // 2, len(unset), unset[:1], flush=True)
print('errors', len(errors), errors[:1], flush=True)
"""


@pytest.mark.parametrize(
    ("roles", "threads"),
    [(("forgot", "fresh"), 1), (("forgetting",), 3), (("forgetting-a", "forgetting-b"), 2)],
)
def test_a_line_forgotten_then_made_anew_by_its_own_join_is_guarded_by_its_new_guard(
    win: Win, roles: tuple[str, ...], threads: int
) -> None:
    """The guard of a line is named by its id, which a forget changes: a ``Line`` that forgot
    the line took its next numbers under the old guard, while a fresh one took them under the
    new, and both held the turn at once. Threads sharing a ``Line`` that others forget meanwhile,
    in this process and another, neither hang, nor fail on a guard handle another thread
    closed, nor on a folder being removed as they set it up, nor hold the turn together."""
    from observer import assert_exclusive

    turns = 300 // threads
    logs = [win.folder.parent / f"{who}.log" for who in roles]
    processes = []
    for who, log in zip(roles, logs, strict=True):
        process = win.start(
            "-c", FORGOTTEN_SCRIPT, who, windows_path(log), str(threads), str(turns)
        )
        if who != "fresh":
            assert process.expect("forgot") == ["forgot", "True"]
        process.expect("ready")
        processes.append(process)
    for process in processes:
        process.send()
    forgotten = [process.expect("forgotten") for process in processes]
    if roles[0] != "forgot":  # forgotten while in use
        assert sum(int(words[1]) for words in forgotten) > 0, forgotten
    for process in processes:
        words = process.expect("errors")
        assert words[1:] == ["0", "[]"], " ".join(words)
        assert process.wait() == 0
    assert sum(int(words[3]) for words in forgotten) == 0, forgotten
    both = win.folder.parent / "both.log"
    both.write_text("".join(log.read_text() for log in logs))
    assert_exclusive(both, expected=len(roles) * threads * turns)
    print("forgotten, turns, setups failed:", forgotten)


READ_WHILE_FORGOTTEN_SCRIPT = """
import os, inturn
from inturn import win32
from inturn.backends.windows import _open_shared
name_file = os.path.join(os.environ['INTURN_DIR'], 'opened', '.name')
forgetter, user = inturn.Line('opened'), inturn.Line('opened')
forgetter.acquire().release()
user.acquire().release()  # knows the line's id now
reader = _open_shared(name_file, write=False, disposition=win32.OPEN_EXISTING)
print('forgot', forgetter.forget(), flush=True)
turn = user.acquire(blocking=False)  # under the guard of the id that .name had, or a new one
os.close(reader)  # what the forget removed is gone now
try:
    inturn.Line('opened').acquire(blocking=False)
except inturn.Busy:
    print('fresh busy', flush=True)
except inturn.BackendError as exc:
    print('fresh error', exc, flush=True)
turn.release()
"""


def test_a_name_record_being_read_as_its_line_is_forgotten_names_that_line_no_more(
    win: Win,
) -> None:
    """A file removed while someone has it open stays until they close it, and can meanwhile
    be opened and read again (so Wine does). ``.name`` removed in place by a forget, as a
    process read it, still named the forgotten line to the next guard's check: a join took its
    ticket under the old line's guard, in a folder that no ``.name`` named any more, that a
    fresh ``Line`` refused ("missing, yet has tickets") and another line's forget could remove
    under the join (which then failed: "Path not found")."""
    code, out, err = win.run("-c", READ_WHILE_FORGOTTEN_SCRIPT)
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0] in ("forgot True", "forgot False"), out
    assert rows[1] == "fresh busy", out  # the user's ticket holds, on the line as it is now


DRAFT_WHILE_FORGOTTEN_SCRIPT = """
import os, inturn
line = inturn.Line('drafted')
line.acquire().release()
folder = os.path.join(os.environ['INTURN_DIR'], 'drafted')
with open(os.path.join(folder, '.name.0123456789abcdef.tmp'), 'wb'):  # a setup being written
    print('forgot', line.forget(), flush=True)
"""


def test_a_forget_leaves_a_name_record_being_written_and_the_line_in_use(win: Win) -> None:
    """A join that found no ``.name`` writes a draft before it publishes it, in a file others
    may not remove meanwhile: a forget that met one failed with a BackendError ("cannot
    remove ... Sharing violation") instead of seeing the line set up anew, in use again."""
    code, out, err = win.run("-c", DRAFT_WHILE_FORGOTTEN_SCRIPT)
    assert code == 0, err
    assert out.splitlines() == ["forgot False"], out


# --------------------------------------------------------------------------- names, scopes

NAMES_SCRIPT = """
import json, sys, inturn
from inturn.backends.windows import WindowsBackend
names = json.loads(bytes.fromhex(sys.argv[1]).decode('utf-8', 'surrogatepass'))
for name in names:
    line = inturn.Line(name)
    with line.acquire(blocking=False) as turn:
        held = line.status().holders
        assert [t.number for t in held] == [turn.ticket], (name, held)
    assert line.status().holders == ()
with inturn.Line('Upper').acquire(blocking=False), inturn.Line('upper').acquire(blocking=False):
    pass  # names that differ only in case are different lines
backend = WindowsBackend()
assert set(names) <= set(backend.names()), backend.names()
for scope in ('user', 'machine'):
    store = WindowsBackend(scope=scope).line('a\\\\b')
    object_name = store.object_name(1)
    assert '\\\\' not in object_name.split('\\\\', 1)[1], object_name
    print(scope, object_name, flush=True)
with inturn.Line('global', scope='machine').acquire(blocking=False) as turn:
    print('machine', turn.ticket, flush=True)
print('ok', len(names), flush=True)
"""

AWKWARD_NAMES = [
    "back\\slash",
    "Global\\evil",
    "Local\\x",
    "..\\..\\up",
    "a/b/../c",
    "CON",
    "con",
    "nul",
    "nul.txt",
    "NUL.txt",
    "com1.log",
    "lpt9",
    "trailing dot.",
    "  spaces  ",
    'quote"star*colon:pipe|',
    "emoji 🚦 ünïcödé 名前",
    "x" * 3000,
    "\udc80lone surrogate",
]


def test_any_name_maps_to_legal_object_and_file_names(win: Win) -> None:
    payload = json.dumps(AWKWARD_NAMES).encode().hex()
    code, out, err = win.run("-c", NAMES_SCRIPT, payload)
    assert code == 0, err
    rows = out.splitlines()
    # Every session sees Global\: one user's runs in two sessions share their line's objects.
    assert rows[0].startswith("user Global\\inturn.S-1-")
    assert rows[1].startswith("machine Global\\inturn.machine.")
    assert rows[-1] == f"ok {len(AWKWARD_NAMES)}"
    # Across processes: a name with a backslash is one line, distinct from its look-alikes.
    holder = win.worker("back\\slash", "--hold")
    holder.expect("acquired")
    assert win.worker("back\\slash", "--no-wait").expect("busy")
    other = win.worker("back/slash", "--no-wait")
    assert other.expect("acquired")[2] == "0"


WIDE_SCRIPT = """
import threading, inturn
line = inturn.Line('wide', slots=70)
turns = [line.acquire(blocking=False) for _ in range(70)]
try:
    line.acquire(timeout=0.2)
except inturn.Timeout:
    print('timeout', flush=True)
queued, acquired = threading.Event(), []
def wait():
    turn = line.acquire(on_progress=lambda progress: queued.set())
    acquired.append(turn.ticket)
    turn.release()
waiter = threading.Thread(target=wait)
waiter.start()
queued.wait()
turns[37].release()
waiter.join()
print('acquired', acquired[0], flush=True)
for turn in turns:
    turn.release()
"""


def test_a_wait_on_more_tickets_than_one_kernel_wait_holds(win: Win) -> None:
    """``slots=70``: the 70 tickets ahead are watched by helper threads (64 handles per wait)."""
    code, out, err = win.run("-c", WIDE_SCRIPT)
    assert code == 0, err
    assert out.splitlines() == ["timeout", "acquired 72"]  # 70 holders, the timed-out one, it


# Without INTURN_DIR, a process whose environment names another LOCALAPPDATA, or none at all
# (a tool's child started with a small environment, a service), tries the line's default folder.
ELSEWHERE_SCRIPT = """
import os, sys, inturn
name, elsewhere = sys.argv[1:]
for change in ({'LOCALAPPDATA': elsewhere}, {'LOCALAPPDATA': None, 'USERPROFILE': None}):
    for variable, value in change.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    try:
        inturn.Line(name).acquire(blocking=False).release()
        print('acquired', flush=True)
    except inturn.Busy:
        print('busy', flush=True)
"""


def test_the_default_folder_does_not_come_from_the_environment(win: Win, tmp_path: Path) -> None:
    name = f"everywhere-{uuid.uuid4().hex}"
    holder = win.wine.start(
        "-m", "inturn", "run", name, "--", win.python, "-c", "print('held', flush=True); input()"
    )  # no INTURN_DIR: the default folder
    try:
        holder.expect("held")
        code, out, err = win.wine.run("-c", ELSEWHERE_SCRIPT, name, windows_path(tmp_path))
        assert code == 0, err
        assert out.splitlines() == ["busy", "busy"]  # one line, whatever the environment says
        assert not any(tmp_path.iterdir())
        holder.send()
        assert holder.wait() == 0
    finally:
        holder.kill()
        win.wine.run("-m", "inturn", "forget", name)


# Drops SeCreateGlobalPrivilege from this process's token for good (SE_PRIVILEGE_REMOVED), as
# for an account that never had it, then runs the CLI in-process. Creating mutexes, events and
# jobs in Global\ needs no privilege (only file mappings and symbolic links do), so per-user
# and machine-wide lines, whose objects all live there, must work without it.
WITHOUT_GLOBAL_PRIVILEGE = """
import ctypes, sys
from ctypes import wintypes as t
from inturn import win32
from inturn.cli import main
advapi32 = ctypes.WinDLL('advapi32', use_last_error=True)
token = ctypes.c_void_p()
process = ctypes.c_void_p(win32.GetCurrentProcess())
assert advapi32.OpenProcessToken(process, 0x28, ctypes.byref(token))
luid = (t.DWORD * 2)()
assert advapi32.LookupPrivilegeValueW(None, 'SeCreateGlobalPrivilege', luid)
removed = (t.DWORD * 4)(1, luid[0], luid[1], 0x4)
advapi32.AdjustTokenPrivileges.argtypes = [ctypes.c_void_p, t.BOOL, ctypes.c_void_p] + [
    ctypes.c_void_p] * 3
assert advapi32.AdjustTokenPrivileges(token, False, removed, 0, None, None)
assert ctypes.get_last_error() == 0  # ERROR_NOT_ALL_ASSIGNED: the token never had it
for where in (['--machine', '--dir', sys.argv[1]], []):
    print('run', main(['run', *where, 'shared', '--', sys.executable, '-c', 'pass']), flush=True)
"""


def test_a_folder_on_a_network_share_is_refused(win: Win) -> None:
    """Another machine would use lines on a share with mutexes of its own, and take this
    machine's holder for dead: a mapped network drive or a UNC path is refused with one line,
    by every command and the Python API, and nothing is made there. The same folder on its
    local path serves."""
    folder = f"lines-{uuid.uuid4().hex[:8]}"
    command = [win.python, "-c", "print('ran')"]
    for share in (NETWORK_DRIVE, NETWORK_UNC):
        path = f"{share}\\{folder}"
        env = {"INTURN_DIR": path}
        for args in (["run", "job", "--", *command], ["status", "job"], ["wait", "job"]):
            code, out, err = win.wine.run("-m", "inturn", *args, env=env)
            said = err.strip().splitlines()
            assert code == 2 and "ran" not in out, (code, out, err)
            assert len(said) == 1 and f"{path} is on a network share" in said[0], err
        api = f"import inturn\nline = inturn.Line('job', directory={path!r})\n"
        for use in ("acquire", "status", "forget"):
            refused = f"try:\n  line.{use}()\nexcept inturn.BackendError:\n  print('refused')"
            result = win.wine.run("-c", api + refused)
            assert result[0] == 0 and result[1].split() == ["refused"], result
    assert not (win.wine.network_share / folder).exists()
    local = {"INTURN_DIR": windows_path(win.wine.network_share / folder)}
    code, out, err = win.wine.run("-m", "inturn", "run", "job", "--", *command, env=local)
    assert (code, out.split()) == (0, ["ran"]), err


def test_lines_need_no_privilege_to_create_global_objects(win: Win) -> None:
    folder = windows_path(win.folder.parent / "machine")
    code, out, err = win.run("-c", WITHOUT_GLOBAL_PRIVILEGE, folder)
    assert code == 0, err
    assert out.splitlines() == ["run 0", "run 0"] and err == ""


# --------------------------------------------------------------------------- exclusion
# The stress tests of ``test_exclusion.py``, where they apply on Windows: each entry point in a
# Windows process (``windows/winstress.py``), and ``inturn run`` on terminals under kills,
# Ctrl-C and stops. Every stay is recorded from inside the turn and compared afterwards by
# the independent observer (``observer.py``); inturn's own status is never the witness.

STRESS = windows_path(HERE / "windows" / "winstress.py")
OBSERVER = windows_path(HERE / "observer.py")
HOWS = [
    "threads-one-line",
    "threads-line-each",
    "sync-decorator",
    "async-decorator",
    "generator",
    "async-generator",
    "tasks-at-once",
    "tasks-one-by-one",
    "turn-object",
    "lookers",
]
COUNT, TURNS = 12, 8  # threads or tasks, and turns each: Wine makes every kernel call dearer


@pytest.mark.parametrize("slots", [1, 3], ids=["slots1", "slots3"])
@pytest.mark.parametrize("how", HOWS)
def test_no_entry_point_ever_lets_more_than_slots_in(win: Win, how: str, slots: int) -> None:
    from observer import assert_exclusive

    path = win.folder.parent / f"{how}.log"
    count, turns = (8, 6) if how == "lookers" else (COUNT, TURNS)
    name = hexname(f"{how}-{slots}")
    stress = win.start(STRESS, how, name, windows_path(path), str(slots), str(count), str(turns))
    words = stress.expect("done", "error")
    assert words[0] == "done", " ".join(words)
    assert stress.wait() == 0
    assert_exclusive(path, slots, expected=count * turns)
    status = win.status(f"{how}-{slots}")
    assert status["holders"] == [] and status["waiters"] == [], status


# Threads of one process using lines that are new, all at once: every one of them sets the line
# up (its folder and ``.name``), and none may take another's fresh ``.name`` for a corrupt one.
FRESH_SCRIPT = """
import threading, inturn
errors = []
for attempt in range(40):
    start = threading.Barrier(8)
    def use(name=f'fresh-{attempt}'):
        start.wait()
        try:
            inturn.Line(name).acquire().release()
        except Exception as exc:
            errors.append(f'{type(exc).__name__}: {exc}')
    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print('errors', len(errors), errors[:1], flush=True)
"""


def test_threads_setting_up_a_new_line_at_once_all_use_it(win: Win) -> None:
    code, out, err = win.run("-c", FRESH_SCRIPT)
    assert code == 0, err
    assert out.startswith("errors 0 "), out


WAITING_FAULTS = ["wait-kill", "wait-ctrl-c", "wait-stop"]
HOLDING_FAULTS = ["hold-kill", "hold-stop"]


@pytest.mark.parametrize("slots", [1, 3], ids=["slots1", "slots3"])
def test_inturn_run_on_terminals_under_kills_ctrl_c_and_stops(win: Win, slots: int) -> None:
    """``inturn run`` waiters, each drawing its status line on a terminal, then killed
    (SIGKILL of Wine's process: a crash; a killed holder's job ends its command), interrupted
    (Ctrl-C) or frozen (SIGSTOP, SIGCONT) while waiting or holding. Each command records its
    stay in a log of its own (appends from several Windows processes are not atomic)."""
    from observer import assert_exclusive, ticket_of

    name = f"storm-{slots}"
    logs = win.folder.parent / "stays"
    logs.mkdir()
    rng = random.Random(f"windows-storm-{slots}")
    count = 10
    actions = ["work"] * count
    for index in rng.sample(range(count), count // 2):
        actions[index] = rng.choice(WAITING_FAULTS + HOLDING_FAULTS)
    gates = [win.worker(name, "--slots", str(slots), "--hold") for _ in range(slots)]
    for gate in gates:
        gate.expect("acquired")
    runs = []
    for index in range(count):
        command = [win.python, OBSERVER, windows_path(logs / str(index)), "--hold"]
        run = win.inturn("run", "--slots", str(slots), name, "--", *command, terminal=True)
        run.queued()  # in line, asleep, before the next one starts: arrival order is known
        runs.append(run)
    timers = []
    try:
        for run, action in zip(runs, actions, strict=True):
            if action == "wait-kill":
                os.kill(run.unix_pid, signal.SIGKILL)
            elif action == "wait-ctrl-c":
                os.kill(run.unix_pid, signal.SIGINT)  # Wine makes it CTRL_C_EVENT
            elif action == "wait-stop":
                os.kill(run.unix_pid, signal.SIGSTOP)
                timer = threading.Timer(
                    rng.uniform(0.05, 0.5), os.kill, (run.unix_pid, signal.SIGCONT)
                )
                timers.append(timer)
                timer.start()
        for gate in gates:
            gate.send("release")
        for run, action in zip(runs, actions, strict=True):  # in ticket order
            if action in ("wait-kill", "wait-ctrl-c"):
                continue
            run.expect("inside")
            if action == "hold-kill":
                os.kill(run.unix_pid, signal.SIGKILL)  # the job object ends the command
            elif action == "hold-stop":
                os.kill(run.unix_pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.05, 0.5))  # the fault: a frozen holder
                os.kill(run.unix_pid, signal.SIGCONT)
                run.send("")
            else:
                run.send("")
        codes = [run.wait() for run in runs]
    finally:
        for timer in timers:
            timer.cancel()
        for run in runs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.unix_pid, signal.SIGCONT)
    expected = {"work": 0, "wait-stop": 0, "hold-stop": 0, "wait-ctrl-c": 130}
    expected.update({"wait-kill": -signal.SIGKILL, "hold-kill": -signal.SIGKILL})
    assert codes == [expected[action] for action in actions], list(zip(actions, codes, strict=True))
    merged = logs / "all"
    merged.write_text("".join(path.read_text() for path in sorted(logs.iterdir())))
    entered = [a for a in actions if a not in ("wait-kill", "wait-ctrl-c")]
    intervals = assert_exclusive(merged, slots, expected=len(entered))
    if slots == 1:
        seen = [ticket_of(interval.who) for interval in intervals]
        assert seen == sorted(seen), f"not served in ticket order: {seen}"
    finished = [interval.exited for interval in intervals]
    assert finished.count(True) == len(entered) - actions.count("hold-kill"), intervals
    for gate in gates:
        gate.expect("released")
    after = win.worker(name, "--slots", str(slots), "--no-wait")
    after.expect("acquired")
