"""What every backend promises, proved across real processes on each of them.

The same tests run on the local folder backend, on PostgreSQL and on Redis (``where``): first
come first served, slots, crashes, timeouts, interruption, status and names. What is peculiar
to one backend (lost connections, server restarts, leases, grants, hostile folders) is tested
in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import inturn
import inturn.cli
from inturn.backends import open_backend

from conftest import (
    REPORT_TIMEOUT,
    Run,
    Where,
    Worker,
    child_env,
    inturn_cmd,
    read_lines,
    read_log,
    run_async,
    run_cli,
    until,
    until_held_by,
)
from observer import Recorder, assert_exclusive
from observer import command as recording

# --------------------------------------------------------------------------- order


def test_twenty_waiters_are_served_in_arrival_order(where, workers, tmp_path):
    log = tmp_path / "log"
    line = inturn.Line("fifo")
    holder = line.acquire()
    tickets = []
    for _ in range(20):
        w = Worker("fifo", "--log", str(log))
        workers.append(w)
        tickets.append(int(w.expect("waiting")[1]))  # in line before the next one starts
    assert tickets == sorted(tickets)
    assert [t.pid for t in line.status().waiters] == [w.pid for w in workers]
    holder.release()
    for w in workers:
        assert w.wait() == 0
    rows = read_log(log)
    assert [int(r[1]) for r in rows if r[0] == "enter"] == tickets
    assert not [r for r in rows if r[0] == "overlap"], rows
    assert line.status().holders == line.status().waiters == ()


def test_tickets_are_strictly_increasing_fencing_tokens(where):
    line = inturn.Line("fence")
    seen = []
    for _ in range(5):
        with line.acquire() as held:
            seen.append(held.ticket)
    assert seen == sorted(set(seen))


def test_slots_let_n_hold_at_once_and_keep_order(where, workers):
    line = inturn.Line("render", slots=2)
    first, second = line.acquire(), line.acquire()
    queued = []
    for _ in range(4):
        w = Worker("render", "--slots", "2", "--hold")
        workers.append(w)
        w.expect("waiting")  # in line before the next one starts
        queued.append(w)
    second.release()  # the younger holder leaves first: the oldest waiter still goes next
    assert queued[0].acquired()[1] == str(second.ticket + 1)
    status = line.status()
    assert [t.pid for t in status.holders] == [os.getpid(), queued[0].pid]
    assert [t.pid for t in status.waiters] == [w.pid for w in queued[1:]]
    first.release()
    queued[1].acquired()
    queued[0].send()
    queued[2].acquired()
    for w in queued[1:3]:
        w.send()
    queued[3].acquired()
    queued[3].send()
    for w in queued:
        assert w.wait() == 0


# --------------------------------------------------------------------------- crashes


def test_a_holder_killed_with_sigkill_is_reported_as_abandoned(where, workers):
    holder = Worker("crash", "--hold", env=where.crash_env())
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("crash", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    holder.proc.send_signal(signal.SIGKILL)
    _, ticket, abandoned, dead_pid = waiter.acquired()
    assert abandoned == "1" and dead_pid == str(holder.pid)
    waiter.send()
    assert waiter.wait() == 0
    with inturn.turn("crash") as turn:  # after a clean release nobody is told anything
        assert not turn.abandoned
        assert turn.ticket > int(ticket)


def test_a_killed_waiter_loses_its_place_and_the_one_behind_moves_up(where, workers):
    holder = inturn.Line("gap").acquire()
    doomed = Worker("gap", env=where.crash_env())
    workers.append(doomed)
    doomed.expect("waiting")
    behind = Worker("gap", "--hold")
    workers.append(behind)
    behind.expect("waiting")
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.wait()
    # The one behind wakes, finds the holder still there and goes back to sleep on it.
    assert behind.expect("waiting")[2] == "2"
    holder.release()
    _, _, abandoned, _ = behind.acquired()
    assert abandoned == "0"  # a dead *waiter* abandons nothing
    behind.send()
    assert behind.wait() == 0


# A single instance that ends as ARGV[1] says, after it says it holds.
SINGLE_INSTANCE = textwrap.dedent(
    """
    import os, signal, sys
    import inturn

    app = inturn.single_instance("single")
    print("holding", app.ticket, flush=True)
    if sys.argv[1] == "exit":
        sys.exit(3)
    if sys.argv[1] == "exception":
        raise RuntimeError("the program fails")
    if sys.argv[1] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize(
    ("ending", "code", "crashed"),
    [("end", 0, False), ("exit", 3, False), ("exception", 1, True), ("killed", -9, True)],
)
def test_a_single_instance_that_ends_normally_is_not_taken_for_a_crash(
    where, ending, code, crashed
):
    """``single_instance`` holds for the life of the program: one that ends normally gives
    the line back cleanly (the next start is not told "abandoned", and on a server finds the
    line free at once, not after a lease); an uncaught exception or a kill is a crash."""
    argv = [sys.executable, "-c", SINGLE_INSTANCE, ending]
    first = subprocess.run(argv, env=where.crash_env(), capture_output=True, text=True)
    assert first.returncode == code, first.stderr
    ticket = int(first.stdout.split()[1])
    if not crashed:
        assert inturn.Line("single").status().holders == ()  # gone, not waiting to lapse
    backend = where.crash_url
    if where.kind == "redis":
        backend = f"{where.crash_url}&lock_delay=0"  # a crashed one: no need to wait here
    line = inturn.Line("single", backend=backend)
    try:
        with line as turn:
            assert turn.abandoned is crashed
            if crashed:
                assert turn.abandoned_by is not None and turn.abandoned_by.number == ticket
    finally:
        line.close()


# --------------------------------------------------------------------------- waiting ends


def test_timeout_leaves_the_line_and_those_behind_move_up(where, workers):
    holder = inturn.Line("slow").acquire()
    impatient = Worker("slow", "--timeout", "1")
    workers.append(impatient)
    impatient.expect("waiting")
    patient = Worker("slow", "--hold")
    workers.append(patient)
    first_place = patient.expect("waiting")[2]
    impatient.expect("timeout")
    assert impatient.wait() == 75
    if first_place == "3":  # it went to sleep behind the impatient one: woken, it moves up
        assert patient.expect("waiting")[2] == "2"
    else:  # on a loaded machine the impatient one may give up before the patient one looks
        assert first_place == "2"
    assert [t.pid for t in inturn.Line("slow").status().waiters] == [patient.pid]
    holder.release()
    patient.acquired()
    patient.send()
    assert patient.wait() == 0


@pytest.mark.parametrize(
    "timeout", [30 * 86400, 1e300, 10**400], ids=["30-days", "1e300", "10**400"]
)
def test_a_timeout_longer_than_any_backend_sleeps_is_waited_out_as_given(where, timeout):
    """No backend sleeps for every length (PostgreSQL's lock_timeout ends at 24.8 days,
    Python's thread waits at ``threading.TIMEOUT_MAX``): a waiter with a longer timeout sleeps
    a day at a time, and takes its turn when it comes, not an error."""
    line = inturn.Line("long")
    holder = line.acquire()
    got: list[object] = []

    def wait() -> None:
        try:
            got.append(line.acquire(timeout=timeout))
        except BaseException as exc:
            got.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    until(lambda: bool(got) or len(line.status().waiters) == 1, "the waiter to sleep in line")
    holder.release()
    waiter.join(REPORT_TIMEOUT)
    assert len(got) == 1 and isinstance(got[0], inturn.Turn), got
    got[0].release()


def test_no_time_to_wait_still_takes_a_free_line(where):
    """A zero or tiny timeout (``-w 0``) on a free line takes the turn: having no time to wait
    is not having no time to join."""
    line = inturn.Line("no-time")
    for timeout in (0, 0.001, 0):
        line.acquire(timeout=timeout).release()
    result = run_cli("run", "-w", "0", "no-time", "--", "echo", "ran")
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr


def test_busy_and_timeout_name_the_holder_and_exit_75(where):
    line = inturn.Line("busy")
    with line.acquire(command=("make", "all")) as held:
        with pytest.raises(inturn.Busy, match=f"pid {os.getpid()}") as busy:
            line.acquire(blocking=False)
        assert [t.number for t in busy.value.holders] == [held.ticket]
        with pytest.raises(inturn.Timeout):
            line.acquire(timeout=0.2)
        result = run_cli("run", "--no-wait", "busy", "--", "true")
        assert result.returncode == 75
        assert f"held by pid {os.getpid()} (make all)" in result.stderr
        assert run_cli("run", "-n", "-E", "9", "busy", "--", "true").returncode == 9
        result = run_cli("run", "--timeout", "0.3", "busy", "--", "true")
        assert result.returncode == 75 and "gave up" in result.stderr
        assert line.status().waiters == ()
    assert run_cli("run", "--no-wait", "busy", "--", "true").returncode == 0


@pytest.mark.parametrize("options", [(), ("--timeout", "600")], ids=["forever", "timeout"])
def test_ctrl_c_ends_a_wait_and_leaves_the_line(where, workers, options):
    holder = inturn.Line("intr").acquire()
    interrupted = Worker("intr", *options)
    workers.append(interrupted)
    interrupted.expect("waiting")
    behind = Worker("intr", "--hold")
    workers.append(behind)
    behind.expect("waiting")
    interrupted.proc.send_signal(signal.SIGINT)
    interrupted.expect("interrupted")
    assert interrupted.wait() == 130
    assert behind.expect("waiting")[2] == "2"  # moved up behind the holder
    assert [t.pid for t in inturn.Line("intr").status().waiters] == [behind.pid]
    holder.release()
    behind.acquired()
    behind.send()
    assert behind.wait() == 0


def test_cancelling_an_async_wait_leaves_the_line(where):
    line = inturn.Line("async")

    async def scenario() -> None:
        task = asyncio.ensure_future(inturn.acquire_async(line))
        while not line.status().waiters:
            await asyncio.sleep(0.01)  # watching for the waiter to appear, not guessing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with line.acquire():
        asyncio.run(scenario())
        assert line.status().waiters == ()
    with inturn.turn("async"):
        pass


# --------------------------------------------------------------------------- the command


COMMAND = textwrap.dedent(
    """
    import os, sys
    env = os.environ
    print(os.getppid(), env["INTURN_NAME"], env["INTURN_TICKET"], env["INTURN_ABANDONED"])
    sys.exit(3)
    """
)


def test_run_gives_the_command_its_turn_and_passes_its_exit_code(where):
    proc = subprocess.Popen(
        inturn_cmd("run", "job", "--", sys.executable, "-c", COMMAND),
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3
    ppid, name, ticket, abandoned = out.split()
    assert int(ppid) == proc.pid  # the command is inturn's direct child
    assert (name, abandoned) == ("job", "0") and int(ticket) >= 1
    assert inturn.Line("job").status().holders == ()


def test_quiet_says_nothing_of_a_grace_it_cuts(where):
    """``--quiet`` says nothing but errors: a ``--grace`` longer than the server allows is
    cut (and said to be, without ``-q``), which is no error."""
    result = subprocess.run(
        inturn_cmd("run", "-q", "--grace", "100", "job", "--", "true"),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_status_names_the_command_of_a_run_as_the_holder_and_tells_its_stop(where):
    """The command of ``inturn run`` holds the turn on every backend (it inherits it, or, on
    Redis, dies with the inturn that renews its lease): ``status`` shows its pid, not
    inturn's, and a command stopped while inturn runs on shows as stopped."""
    run = Run("named")
    command = run.running()
    assert command.ppid == run.pid
    until_held_by(command.pid, "named")
    os.kill(command.pid, signal.SIGSTOP)
    try:
        until(lambda: _state(command.pid) == "T", "the command to stop")
        (holder,) = inturn.Line("named").status().holders
        assert (holder.pid, holder.stopped) == (command.pid, True)
        (shown,) = json.loads(run_cli("status", "--json", "named").stdout)["holders"]
        assert (shown["pid"], shown["stopped"]) == (command.pid, True)
    finally:
        os.kill(command.pid, signal.SIGCONT)
    until(lambda: _state(command.pid) != "T", "the command to go on")
    assert not inturn.Line("named").status().holders[0].stopped
    assert run.finish(0) == 0
    assert inturn.Line("named").status().holders == ()


def _state(pid: int) -> str:
    """The state letter /proc gives process ``pid`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_what_the_command_leaves_running_keeps_the_turn_until_it_ends(where, tmp_path):
    """A command that starts a process in the background and ends: that process inherited the
    turn with the command's descriptors (as under ``flock(1)``), so the turn is given back only
    once it has ended too. Until then a newcomer waits in line, and inturn says once why it
    goes on. The observer sees the leftover's stay and the next command's apart."""
    log = tmp_path / "log"
    release, let_go = os.pipe()  # the leftover holds until a line comes on its stdin
    leftover = shlex.join(recording(log, who="leftover", hold=True))
    first = subprocess.Popen(  # (a job started with & reads /dev/null unless redirected)
        inturn_cmd("run", "left", "--", "sh", "-c", f"exec 3<&0; {leftover} <&3 &"),
        stdin=release,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    os.close(release)
    second = None
    try:
        assert first.stdout is not None and first.stderr is not None
        assert read_lines(first.stdout).get(timeout=REPORT_TIMEOUT) == "inside leftover\n"
        note = read_lines(first.stderr).get(timeout=REPORT_TIMEOUT)
        assert note.startswith("inturn: the command has ended, but processes it started"), note
        assert "keep turn" in note and "'left'" in note and "--close" in note, note
        second = subprocess.Popen(
            inturn_cmd("run", "left", "--", *recording(log, who="next")),
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        until(lambda: len(inturn.Line("left").status().waiters) == 1, "the next run to wait")
        assert first.poll() is None  # still holding for what its command left running
    finally:
        os.write(let_go, b"go\n")
        os.close(let_go)
    assert first.wait(timeout=REPORT_TIMEOUT) == 0
    assert second.communicate(timeout=REPORT_TIMEOUT)[0] == "inside next\n"
    intervals = assert_exclusive(log, expected=2)
    assert [i.who for i in intervals] == ["leftover", "next"]


def test_a_run_of_the_same_line_left_in_line_by_the_command_runs_next(where, tmp_path):
    """``inturn run X`` started in the background by the command of ``inturn run X``, and
    already waiting in line when that command ends: it closes the descriptors of the turn it
    inherited (``INTURN_FDS``), without which it would hold the very turn it waits behind,
    for ever; the outer turn ends with its command, and the inner run goes next."""
    log = tmp_path / "log"
    inner = shlex.join(inturn_cmd("run", "nest", "--", *recording(log, who="inner")))
    in_line = (
        "import inturn, time\nwhile not inturn.Line('nest').status().waiters: time.sleep(0.01)"
    )
    then = shlex.join(recording(log, who="outer"))
    # As a script would: ``&`` in sh (Python's Popen would close the inherited descriptors).
    outer = f"{inner} & echo $!; {shlex.join([sys.executable, '-c', in_line])} && {then}"
    proc = subprocess.Popen(
        inturn_cmd("run", "-q", "nest", "--", "sh", "-c", outer),
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    said = read_lines(proc.stdout)
    inner_pid = int(said.get(timeout=REPORT_TIMEOUT))
    try:
        assert said.get(timeout=REPORT_TIMEOUT) == "inside outer\n"
        assert proc.wait(timeout=REPORT_TIMEOUT) == 0
        assert said.get(timeout=REPORT_TIMEOUT) == "inside inner\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(inner_pid, signal.SIGKILL)
    intervals = assert_exclusive(log, expected=2)
    assert [i.who for i in intervals] == ["outer", "inner"]


# --------------------------------------------------------------------------- status


def test_status_text_and_json_list_holders_then_waiters(where, workers):
    holder = Worker("show", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("show", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    text = run_cli("status", "show").stdout
    assert "show: 1 holding, 1 waiting" in text
    assert text.index(str(holder.pid)) < text.index(str(waiter.pid))
    data = json.loads(run_cli("status", "--json", "show").stdout)
    assert data["name"] == "show"
    assert data["scope"] == ("user" if where.kind == "local" else "server")
    assert [t["pid"] for t in data["holders"]] == [holder.pid]
    assert [t["pid"] for t in data["waiters"]] == [waiter.pid]
    first = data["holders"][0]
    assert first["state"] == "holding" and data["waiters"][0]["state"] == "waiting"
    assert set(first) >= {
        "ticket", "pid", "user", "host", "command", "cwd", "joined_at", "acquired_at",
        "waited_seconds", "held_seconds", "slots",
    }  # fmt: skip
    assert data["waiters"][0]["acquired_at"] is None
    assert data["waiters"][0]["held_seconds"] is None
    linux = sys.platform.startswith("linux")
    namespace = os.stat("/proc/self/ns/pid").st_ino if linux else None  # the holder's too
    assert (first["pid_namespace"], first["stopped"]) == (namespace, False if linux else None)
    every = json.loads(run_cli("status", "--json").stdout)
    assert [line["name"] for line in every["lines"]] == ["show"]
    assert "show" in run_cli("status").stdout
    holder.send()
    waiter.acquired()
    waiter.send()
    assert waiter.wait() == 0
    assert "show: free" in run_cli("status", "show").stdout


SKEWED_HOLDER = """
import sys, time, inturn
real = time.time
time.time = lambda: real() + float(sys.argv[1])
with inturn.turn("skewed"):
    print("holding", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_times_are_told_on_the_readers_clock_whatever_the_holders(kind, request):
    """The hosts of a server line may have clocks minutes apart. Times are kept on the
    server's clock and told on the reader's: a holder whose clock is five minutes slow is
    not shown as holding for five minutes, nor one five minutes fast as holding for none."""
    request.getfixturevalue("pg_url" if kind == "postgresql" else "place")
    for skew in ("-300", "300"):
        holder = subprocess.Popen(
            [sys.executable, "-c", SKEWED_HOLDER, skew],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == "holding\n"
            data = json.loads(run_cli("status", "--json", "skewed").stdout)
            (held,) = data["holders"]
            now = time.time()
            assert abs(held["joined_at"] - now) < 60, (skew, held)
            assert abs(held["acquired_at"] - now) < 60, (skew, held)
        finally:
            holder.stdin.close()
            assert holder.wait(REPORT_TIMEOUT) == 0


STEPPED_HOLDER = """
import json, sys, time, inturn
real, step = time.time, 0.0
time.time = lambda: real() + step
line = inturn.Line("stepped")
with line.acquire():  # a session opens, and measures the server's clock
    pass
step = float(sys.argv[1])  # then this host's clock is set (NTP, a resumed VM)
with line.acquire():
    print(json.dumps(line.status().to_json()), flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_times_stay_right_when_a_hosts_clock_is_set_after_it_connected(kind, request):
    """A host's clock may be set while its process keeps its sessions (NTP after a boot, a
    resumed VM): the times its next turn records are still the server's, and what it reads
    is still told on its own clock, not a day off either way."""
    request.getfixturevalue("pg_url" if kind == "postgresql" else "place")
    for step in ("-86400", "86400"):
        holder = subprocess.Popen(
            [sys.executable, "-c", STEPPED_HOLDER, step],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert holder.stdin is not None and holder.stdout is not None
        try:
            (own,) = json.loads(holder.stdout.readline())["holders"]
            assert own["held_seconds"] < 60, (step, own)
            assert abs(own["acquired_at"] - time.time() - float(step)) < 60, (step, own)
            data = json.loads(run_cli("status", "--json", "stepped").stdout)
            (held,) = data["holders"]
            now = time.time()
            assert abs(held["joined_at"] - now) < 60, (step, held)
            assert abs(held["acquired_at"] - now) < 60, (step, held)
        finally:
            holder.stdin.close()
            assert holder.wait(REPORT_TIMEOUT) == 0


HOSTILE = [
    "../../etc/passwd",
    "a/b",
    "'; DROP TABLE tickets; --",
    "{inturn}*",
    "Global\\name",
    "line\nwith newline",
    "名前 with spaces ☃",
    "\udcff",
    "NUL\x00",
    "x" * 3000,
    "Nightly",
    "nightly",
]


def test_hostile_names_are_just_names(where):
    for name in HOSTILE:
        with inturn.turn(name) as held:
            assert [t.number for t in inturn.Line(name).status().holders] == [held.ticket]
    assert open_backend().names() == sorted(HOSTILE)


# --------------------------------------------------------------------------- closing


def kept_open(where: Where, request: pytest.FixtureRequest) -> tuple[str | None, Callable[[], int]]:
    """A backend URL whose connections the server can tell apart (None: the local folder),
    and what this process keeps open through it, as the system sees it: the server's own
    list of sessions or clients, or this process's open files in the lines folder."""
    tag = f"inturn-close-{uuid.uuid4().hex[:12]}"
    if where.kind == "local":
        folder = str(request.getfixturevalue("lines_dir"))

        def files() -> int:
            links = (os.readlink(f) for f in Path("/proc/self/fd").iterdir() if f.exists())
            return sum(1 for link in links if link.startswith(folder))

        return None, files
    assert where.url is not None
    url = where.url + ("&" if "?" in where.url else "?")
    if where.kind == "postgresql":
        import psycopg

        server = request.getfixturevalue("pg_server")

        def sessions() -> int:
            with psycopg.connect(server, autocommit=True) as admin:
                query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                row = admin.execute(query, [tag]).fetchone()
            return int(row[0]) if row else 0

        return url + f"application_name={tag}", sessions

    place = request.getfixturevalue("place")

    def clients() -> int:
        admin = place.client()
        try:
            return sum(1 for c in admin.client_list() if c.get("name") == tag)
        finally:
            admin.close()

    return url + f"client_name={tag}", clients


DECORATED = """
import inturn

@inturn.turn("decorated")
def work():
    return "done"

print(work(), work())
"""


def test_a_decorated_functions_backend_is_closed_as_the_program_exits(where):
    """A decorated function keeps its line's backend open between calls; the program's exit
    closes it, rather than leaving server sessions for the garbage collector (a warning for
    each under ``-X dev``)."""
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", DECORATED],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=REPORT_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "done done\n"), result
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_a_line_closes_the_backend_it_opened_and_so_do_the_commands(where, request, capsys):
    """``Line.close()`` frees the backend the ``Line`` opened itself (idle sessions, lease
    threads, open files), after turns taken and waited for, and after ``with line:`` blocks;
    so do ``inturn status``, ``wait`` and ``forget`` run in this process."""
    url, held = kept_open(where, request)
    assert held() == 0
    before = set(threading.enumerate())
    line = inturn.Line("closing", backend=url)
    first = line.acquire()
    waiting = {"turn": None}

    def wait_in_line() -> None:
        waiting["turn"] = line.acquire(timeout=120)

    waiter = threading.Thread(target=wait_in_line, daemon=True)
    waiter.start()
    until(lambda: len(line.status().waiters) == 1, "the second acquire to wait in line")
    first.release()
    waiter.join(120)
    second = waiting["turn"]
    assert isinstance(second, inturn.Turn)
    second.release()
    threads = {t for t in set(threading.enumerate()) - before if t.name.startswith("inturn-")}
    assert held() > 0  # what closing must free: the check below is not empty-handed
    line.close()
    until(lambda: held() == 0, "the Line's backend to be closed")
    for thread in threads:
        thread.join(120)  # lease keepers and watches end with their backend
        assert not thread.is_alive(), thread

    line = inturn.Line("closing", backend=url)
    with line:  # a with block of a Line takes a turn; the Line stays open for the next one
        assert held() > 0
    assert held() > 0
    line.close()
    until(lambda: held() == 0, "the Line to be closed after its with block")

    where_args = ["--backend", url] if url is not None else []
    for command in (["status", "closing"], ["status", "--json"], ["wait", "closing"]):
        assert inturn.cli.main([command[0], *where_args, *command[1:]]) == 0
        until(lambda: held() == 0, f"inturn {' '.join(command)} to close its backend")
    assert inturn.cli.main(["forget", *where_args, "closing"]) == 0
    until(lambda: held() == 0, "inturn forget to close its backend")
    capsys.readouterr()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_closing_a_line_keeps_the_turns_it_holds_until_they_are_released(where, request, tmp_path):
    """``Line.close()`` while a turn taken through it is still held frees nothing that turn
    needs: on Redis its lease goes on being renewed, so
    nobody comes in beside the holder, and the holder is not told it lost the turn. What the
    turn kept open is freed when it is released. The same for a place in line, and for a
    backend object closed and then used again."""
    url, held = kept_open(where, request)
    late_env = child_env()
    if where.kind == "redis":
        url += "&lease=1"  # three leases go by while the Line is closed
        assert where.url is not None  # the late arrival starts the moment a lease lapses
        late_env = child_env(INTURN_BACKEND=where.url + "&lock_delay=0")
    log = tmp_path / "inside"
    recorder = Recorder(log)

    def late_arrival(who: str) -> subprocess.Popen[str]:
        argv = inturn_cmd("run", "closed-early", "--", *recording(log, who=who))
        return subprocess.Popen(argv, env=late_env, stdout=subprocess.PIPE, text=True)

    def hold_with_the_line_closed(line: inturn.Line, turn: inturn.Turn, who: str) -> None:
        """``line`` is closed; one waits in line behind ``turn``: hold for three leases."""
        late = late_arrival(who)
        until(lambda: late.pid in [t.pid for t in line.status().waiters], "the late one to wait")
        threading.Event().wait(3.0)  # the time being tested: three leases on Redis
        status = line.status()
        assert [t.number for t in status.holders] == [turn.ticket]
        assert not turn.lost
        recorder.exit(f"holder-{turn.ticket}")
        turn.release()
        assert late.wait(120) == 0

    line = inturn.Line("closed-early", backend=url)
    first = line.acquire()
    recorder.enter(f"holder-{first.ticket}")
    waiting = {"turn": None}

    def wait_in_line() -> None:
        with line.acquire(timeout=120) as turn:
            waiting["turn"] = turn
            with recorder.inside("waiter"):
                pass

    waiter = threading.Thread(target=wait_in_line, daemon=True)
    waiter.start()
    until(lambda: len(line.status().waiters) == 1, "the second acquire to wait in line")
    line.close()
    hold_with_the_line_closed(line, first, "late-1")
    waiter.join(120)
    second = waiting["turn"]
    assert isinstance(second, inturn.Turn) and not second.abandoned and not second.lost
    until(lambda: held() == 0, "the closed Line's backend to be freed with its last turn")

    backend = open_backend(url)
    backend.close()  # closed, then used again: it opens what it needs afresh
    on_backend = inturn.Line("closed-early", backend=backend)
    third = on_backend.acquire()
    recorder.enter(f"holder-{third.ticket}")
    hold_with_the_line_closed(line, third, "late-2")
    on_backend.close()
    backend.close()
    until(lambda: held() == 0, "the backend object to be closed")
    recorder.close()
    assert_exclusive(log, expected=5)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_with_blocks_of_turn_close_the_backend_they_opened(where, request, workers):
    """``with inturn.turn(...)`` and ``async with`` close the backend their ``Line`` opened
    once the block ends, also when the turn was refused (busy): a loop of such blocks leaves
    no sessions, clients, lease threads or open files behind."""
    url, held = kept_open(where, request)
    before = set(threading.enumerate())
    for _ in range(3):
        with inturn.turn("blocks", backend=url):
            assert held() > 0
        until(lambda: held() == 0, "the with block's backend to be closed")

    async def scenario() -> None:
        async with inturn.turn("blocks", backend=url, shared=True):
            assert held() > 0

    run_async(scenario)
    until(lambda: held() == 0, "the async with block's backend to be closed")
    holder = Worker("blocks", "--hold")  # another process: what it keeps open is not counted
    workers.append(holder)
    holder.expect("acquired")
    with pytest.raises(inturn.Busy), inturn.turn("blocks", backend=url, blocking=False):
        pass
    until(lambda: held() == 0, "a refused with block's backend to be closed")
    for thread in set(threading.enumerate()) - before:
        if thread.name.startswith("inturn-"):
            thread.join(120)
            assert not thread.is_alive(), thread
    holder.send()
    assert holder.wait() == 0
