"""``inturn run`` and its command: signals, process groups, terminals, orphans, lost turns.

Everything goes through the real console script with real signals. The commands tell the
test what they are doing through pipes, FIFOs and the terminal; races that once were lost
(SIGTERM just as the command starts, or just after it ends) are repeated many times, and
each repetition must come out right.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    SIGNAL_SAFE_WAITS,
    Run,
    Worker,
    child_env,
    in_own_pid_namespace,
    inturn_cmd,
    one_line_error,
    read_lines,
    run_cli,
    until,
)
from tcp_proxy import TcpProxy

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="reads /proc; subreapers are Linux's")
TRIES = 25  # repetitions of a race: on main each of these lost it nearly every time


def state(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as info:
            return info.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def dead(pid: int) -> bool:
    return state(pid) in (None, "Z", "X")


def wait_until_dead(pid: int) -> None:
    """Sleep until ``pid`` has exited (a pidfd wakes us), failing after REPORT_TIMEOUT."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([handle], [], [], REPORT_TIMEOUT)
        assert ready, f"process {pid} is still alive"
    finally:
        os.close(handle)


def wait_until_reaped(pid: int) -> None:
    """Wait until ``pid`` is gone even from the process table (its parent reaped it)."""
    wait_until_dead(pid)
    deadline = time.monotonic() + REPORT_TIMEOUT
    while state(pid) is not None:  # a zombie until its parent looks: a bounded wait for that
        assert time.monotonic() < deadline, f"process {pid} stays a zombie: nobody reaps it"
        time.sleep(0.01)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def read_fifo(path: Path) -> str:
    """What a command writes into the FIFO ``path`` (blocks until it opens it)."""
    with open(path) as reader:
        return reader.read().strip()


def script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- signals


def test_sigterm_as_the_command_starts_is_passed_on_and_never_kills_inturn(lines_dir, workers):
    """The note that the previous holder died is printed just before the command is
    started, so a SIGTERM sent when it appears lands while the command is being started."""
    for _ in range(TRIES):
        holder = Worker("start", "--hold")
        workers.append(holder)
        holder.expect("acquired")
        run = Run("start", terminal=True)
        assert run.terminal is not None
        run.queued()
        holder.proc.kill()
        seen = b""
        while b"it is yours now" not in seen:
            chunk = os.read(run.terminal, 1024)
            assert chunk, seen
            seen += chunk
        run.proc.send_signal(signal.SIGTERM)
        code = run.wait()
        # 7: the command's own answer to SIGTERM; 143: it was not started yet, or died of
        # the SIGTERM before its handler was in place. Never -15: inturn itself killed.
        assert code in (7, 143), code
        while run.next_line():  # to the end of its output: no command runs on, orphaned
            pass
        with inturn.turn("start") as after:
            assert not after.abandoned  # the turn was given back, not left to die
        run.close()


def test_sigterm_just_after_the_command_ends_waits_for_the_release(lines_dir):
    """A helper the command leaves behind signals inturn the moment it reaps the command,
    between the command's end and the release of the turn."""
    watcher = 'me=$$; boss=$PPID; (while kill -0 "$me" 2>/dev/null; do :; done; '
    watcher += 'kill -TERM "$boss") &'
    command = ["sh", "-c", f"trap 'exit 3' TERM; {watcher} exit 3"]
    for _ in range(TRIES):
        result = subprocess.run(
            inturn_cmd("run", "end", "--", *command), env=child_env(), timeout=REPORT_TIMEOUT
        )
        assert result.returncode == 3  # the command's own code; never killed by the SIGTERM
        with inturn.turn("end") as after:
            assert not after.abandoned


FAMILY = SIGNAL_SAFE_WAITS + textwrap.dedent("""
    import os, signal, sys
    NAMES = ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    def say(*words):  # one write per line: two processes share the pipe
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())
    def report(signum, frame):
        say("got", signum, os.getpid())
    for name in NAMES:
        signal.signal(getattr(signal, name), report)
    child = os.fork()
    woken = wake_on_signals()  # after the fork: a pipe of each process's own
    if child == 0:
        say("child", os.getpid(), os.getpgrp())
        wait_for_signals(woken)
    say("command", os.getpid(), os.getpgrp(), os.getppid())
    wait_for_input(woken)
    line = sys.stdin.readline()
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    sys.exit(int(line))
""")


def test_signals_sent_to_inturn_reach_the_commands_whole_process_group(lines_dir, tmp_path):
    family = script(tmp_path, "family.py", FAMILY)
    proc = subprocess.Popen(
        inturn_cmd("run", "group", "--", sys.executable, str(family)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        output = read_lines(proc.stdout)
        seen: dict[str, list[str]] = {}
        while len(seen) < 2:
            words = output.get(timeout=REPORT_TIMEOUT).split()
            seen[words[0]] = words[1:]
        command, group, parent = (int(w) for w in seen["command"])
        child = int(seen["child"][0])
        assert group == command != os.getpgid(proc.pid)  # a group of its own
        assert parent == proc.pid and int(seen["child"][1]) == group
        for name in ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM"):
            signum = int(getattr(signal, name))  # "15", not "Signals.SIGTERM" (Python 3.10)
            proc.send_signal(signum)
            got = {tuple(output.get(timeout=REPORT_TIMEOUT).split()) for _ in range(2)}
            assert got == {("got", str(signum), str(command)), ("got", str(signum), str(child))}
        proc.stdin.write("5\n")
        proc.stdin.close()
        assert proc.wait(REPORT_TIMEOUT) == 5
    finally:
        proc.kill()
        proc.wait()


LIST_DESCRIPTORS = """
import os
print("named", os.environ["INTURN_FDS"])
for fd in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        print(fd, os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass  # the listing's own, closed by now
"""


@linux_only
@pytest.mark.parametrize("backend", ["local", "redis"])
def test_the_command_gets_the_descriptors_inturn_was_given_and_none_of_its_own(
    backend, request, tmp_path
):
    """As under ``flock(1)``, what the shell gave inturn (``3>file``, a jobserver's pipes)
    reaches the command; of inturn's own descriptors only the turn itself does (locally;
    a Redis turn cannot be inherited, and the command starts bound to inturn), with the pipe
    that tells inturn when whatever the command leaves running has ended; ``INTURN_FDS``
    names exactly those."""
    request.getfixturevalue("lines_dir" if backend == "local" else "place")
    given = tmp_path / "given"
    words = shlex.join(inturn_cmd("run", "fds", "--", sys.executable, "-c", LIST_DESCRIPTORS))
    done = subprocess.run(
        ["sh", "-c", f"exec 3>{shlex.quote(str(given))}; {words}"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=REPORT_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    seen = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert seen.pop("3") == str(given)
    for fd in ("0", "1", "2"):
        seen.pop(fd)
    named = {part.split(":")[0] for part in seen.pop("named").split(",")}
    assert named == set(seen), (named, seen)
    pipes = [fd for fd, what in seen.items() if what.startswith("pipe:")]
    assert len(pipes) == 1, seen
    seen.pop(pipes[0])
    if backend == "redis":
        assert seen == {}  # nothing else of inturn's
        return
    assert len(seen) == 1, seen  # the ticket, and nothing else of inturn's
    (ticket,) = seen.values()
    assert ticket.startswith(str(request.getfixturevalue("lines_dir"))) and ticket.endswith(
        ".ticket"
    )


@pytest.mark.parametrize("name", ["SIGQUIT", "SIGHUP", "SIGUSR1"])
def test_any_of_those_signals_while_waiting_leaves_the_line(lines_dir, workers, name):
    holder = Worker("wait", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    run = Run("wait", terminal=True)
    run.queued()
    signum = getattr(signal, name)
    run.proc.send_signal(signum)
    assert run.wait() == 128 + signum
    assert inturn.Line("wait").status().waiters == ()
    holder.send()


# The command: says which of SIGHUP, SIGINT and SIGQUIT it was started ignoring (as the kernel
# has it), then ends with the code on its stdin. It catches nothing: a signal not ignored kills it.
REPORT_IGNORED = textwrap.dedent(
    """
    import signal, sys
    with open("/proc/self/status") as status:
        mask = next(int(row.split()[1], 16) for row in status if row.startswith("SigIgn:"))
    watched = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    print("running", *[s.name for s in watched if mask >> (s - 1) & 1], flush=True)
    sys.exit(int(sys.stdin.readline() or 0))
    """
)


@pytest.mark.parametrize(
    ("launcher", "names"),
    [
        (["nohup"], ["SIGHUP"]),  # nohup(1) ignores SIGHUP
        # A script's background job (its stdin would be /dev/null unless redirected).
        (["sh", "-c", 'exec 3<&0; "$@" <&3 3<&- & wait $!', "sh"], ["SIGINT", "SIGQUIT"]),
    ],
    ids=["nohup", "script-background-job"],
)
def test_signals_ignored_by_whoever_started_inturn_stay_ignored(lines_dir, launcher, names):
    """As for any command under ``nohup`` or ``&`` in a script, the ignored signals stay
    ignored: by inturn, while it waits and while its command runs, and by the command."""
    line = inturn.Line("ignored")
    holder = line.acquire()  # so that the run waits first
    command = [sys.executable, "-c", REPORT_IGNORED]
    launched = subprocess.Popen(
        [*launcher, *inturn_cmd("run", "ignored", "--", *command)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launched.stdin is not None and launched.stdout is not None
    try:
        until(lambda: len(line.status().waiters) == 1, "inturn run to wait in line")
        inturn_pid = line.status().waiters[0].pid
        signals = [getattr(signal, name) for name in names]
        for signum in signals:
            os.kill(inturn_pid, signum)  # while it waits
        holder.release()
        assert launched.stdout.readline().split() == ["running", *names]
        for signum in signals:
            os.kill(inturn_pid, signum)  # while its command runs
        launched.stdin.write("5\n")
        launched.stdin.flush()
        assert launched.wait(REPORT_TIMEOUT) == 5
    finally:
        if launched.poll() is None:
            launched.kill()
        launched.wait()
        launched.stdin.close()
        launched.stdout.close()


# --------------------------------------------------------------------------- terminals


class Shell:
    """An interactive bash on a pseudo-terminal, typed at as a person would."""

    PROMPT = b"PROMPT> "

    def __init__(self) -> None:
        import pty

        env = child_env(PS1=self.PROMPT.decode(), TERM="dumb", HISTFILE="/dev/null")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the shell, on the terminal
            try:
                os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
            finally:
                os._exit(127)
        self.pending = b""
        self.expect(self.PROMPT)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def running_in_foreground(self, pid: int) -> None:
        """Wait until process ``pid``'s group has the terminal and ``pid`` is not stopped: a
        command that read the terminal before it was handed it is stopped by SIGTTIN until
        inturn continues it, and a Ctrl-Z typed meanwhile stops nothing more (the kernel drops
        a stop signal that SIGCONT follows), so a test would wait for a stop that never comes."""

        def running() -> bool:
            states = []
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    stat = (task / "stat").read_text()
                    states.append(stat[stat.rindex(")") + 2])
            return "T" not in states

        until(lambda: os.tcgetpgrp(self.fd) == pid and running(), f"{pid} in the foreground")

    def expect(self, marker: bytes) -> bytes:
        """Everything the terminal shows up to ``marker``; fails after REPORT_TIMEOUT."""
        deadline = time.monotonic() + REPORT_TIMEOUT
        while marker not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            assert ready, f"the terminal never showed {marker!r}; it shows {self.pending!r}"
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"the terminal closed before {marker!r}; it showed {self.pending!r}"
            self.pending += chunk
        end = self.pending.index(marker) + len(marker)
        shown, self.pending = self.pending[:end], self.pending[end:]
        return shown

    def run(self, line: str) -> bytes:
        """Type ``line`` and wait for the next prompt; what it showed."""
        self.type(line + "\n")
        return self.expect(self.PROMPT)

    def close(self) -> None:
        for pid in _session(self.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


def _session(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry}/stat") as info,
            ):
                if int(info.read().rsplit(")", 1)[1].split()[4]) == sid:
                    found.append(int(entry))
    return found


@pytest.fixture
def shell() -> Iterator[Shell]:
    import shutil

    if shutil.which("bash") is None or not LINUX:
        pytest.skip("needs bash and /proc")
    made = Shell()
    yield made
    made.close()


def inturn_line(name: str, *command: str) -> str:
    """The shell line that runs ``command`` through inturn in line ``name``."""
    return shlex.join([*inturn_cmd("run", name, "--"), *command])


# Reports whether it has the terminal, counts SIGINTs, reads a line from the terminal, then
# exits 40 + the number of SIGINTs it got.
INTERACTIVE = SIGNAL_SAFE_WAITS + textwrap.dedent("""
    import os, signal, sys
    count = 0
    def interrupted(signum, frame):
        global count
        count += 1
        print("interrupted", count, flush=True)
    signal.signal(signal.SIGINT, interrupted)
    woken = wake_on_signals()
    where = "foreground" if os.tcgetpgrp(0) == os.getpgrp() else "background"
    print("ready", os.getpid(), os.getppid(), os.getpgrp(), where, flush=True)
    wait_for_input(woken)
    line = sys.stdin.readline().strip()
    print("read", line, count, flush=True)
    sys.exit(40 + count)
""")


def _ready(shown: bytes) -> list[str]:
    return shown.decode().splitlines()[-1].split()


def test_ctrl_c_reaches_the_command_once_and_ctrl_z_stops_the_job(lines_dir, tmp_path, shell):
    command = script(tmp_path, "interactive.py", INTERACTIVE)
    shell.type(inturn_line("tty", sys.executable, str(command)) + "\n")
    shell.expect(b"ready ")
    pid, parent, group, where = _ready(shell.expect(b"ground\r\n"))
    command_pid, inturn_pid = int(pid), int(parent)
    assert int(group) == command_pid != os.getpgid(inturn_pid)  # a process group of its own
    assert where == "foreground"  # ... which holds the terminal while the command runs
    shell.type("\x03")  # Ctrl-C
    shell.expect(b"interrupted 1\r\n")
    assert not dead(inturn_pid)
    shell.type("\x1a")  # Ctrl-Z
    shell.expect(b"Stopped")
    shell.expect(shell.PROMPT)
    assert state(command_pid) == "T" and state(inturn_pid) == "T"  # the whole job stopped
    assert len(inturn.Line("tty").status().holders) == 1  # and still holds its turn
    shell.type("fg\n")
    shell.expect(str(command).encode())  # bash names the job it continues
    shell.type("hello\n")  # read by the command: it has the terminal again
    shell.expect(b"read hello 1\r\n")  # one Ctrl-C, received once
    shell.expect(shell.PROMPT)
    assert b"rc=41" in shell.run("echo rc=$?")
    assert inturn.Line("tty").status().holders == ()


@pytest.mark.parametrize("when", ["waiting", "running"])
def test_ctrl_c_stops_the_script_that_runs_inturn(lines_dir, workers, tmp_path, shell, when):
    """A script's ``inturn run; echo ...`` in a loop, as with ``flock(1)``: bash stops its
    script at Ctrl-C only if it got SIGINT itself and its child died of it (a child that
    exits is taken to have handled it). While inturn waits, Ctrl-C reaches both: inturn must
    die of it, not exit 130. While the command runs, it holds the terminal's foreground and
    only it gets the Ctrl-C: inturn passes it on to its own group (the script) as it dies.
    Before, the script went on to its next command as if nothing had been interrupted."""
    if when == "waiting":
        holder = Worker("ctrl-c", "--hold")
        workers.append(holder)
        holder.expect("acquired")
    command = ["sh", "-c", "echo started $$; exec sleep 60"]
    run = shlex.join(inturn_cmd("run", "-w", "10", "ctrl-c", "--", *command))  # -w: no hang
    job = tmp_path / "job.sh"
    job.write_text(f"for i in 1 2; do {run}; echo rc=$?; done; echo next\n")
    shell.type(f"bash {shlex.quote(str(job))}\n")
    if when == "waiting":
        until(lambda: len(inturn.Line("ctrl-c").status().waiters) == 1, "the run in line")
    else:
        shell.expect(b"started ")
        pid = int(shell.expect(b"\r\n").strip())
        until(lambda: os.tcgetpgrp(shell.fd) == pid, "the command in the foreground")
    shell.type("\x03")  # Ctrl-C
    shown = shell.expect(shell.PROMPT)
    assert b"rc=" not in shown and b"next" not in shown, shown
    assert b"status=130" in shell.run("echo status=$?")  # the script died of SIGINT
    status = inturn.Line("ctrl-c").status()
    assert status.waiters == () and (when == "waiting" or status.holders == ()), status


@pytest.mark.parametrize("streams", ["terminal", "redirected"])
def test_ctrl_z_stops_the_script_that_runs_inturn(lines_dir, tmp_path, shell, streams):
    """A script's ``inturn run`` whose command has the terminal: Ctrl-Z reaches the command
    alone, and inturn must stop its whole group (the script too), as the Ctrl-Z would have
    without the handover. Stopping only itself left the script running: bash, which waits
    for the script, saw nothing stop, and the terminal sat with the script until a second
    Ctrl-Z. With every stream redirected (the terminal found as ``/dev/tty``), one Ctrl-Z
    used to stop the script before the command was handed the terminal."""
    command = "echo started $$ > /dev/tty; read a < /dev/tty; echo typed-$a > /dev/tty"
    run = inturn_line("ctrl-z", "sh", "-c", command)
    if streams == "redirected":
        run += " < /dev/null > /dev/null 2>&1"
    job = tmp_path / "job.sh"
    job.write_text(f"{run}; echo rc=$?\n")
    shell.type(f"bash {shlex.quote(str(job))}\n")
    shell.expect(b"started ")
    pid = int(shell.expect(b"\r\n").strip())
    shell.running_in_foreground(pid)
    shell.type("\x1a")  # Ctrl-Z: to the command alone
    shell.expect(b"Stopped")  # once: the script with it
    shell.expect(shell.PROMPT)
    shell.type("fg\n")
    until(lambda: os.tcgetpgrp(shell.fd) == pid, "the command in the foreground again")
    shell.type("hello\n")
    shell.expect(b"typed-hello\r\n")
    shown = shell.expect(shell.PROMPT)
    assert b"rc=0" in shown, shown
    assert inturn.Line("ctrl-z").status().holders == ()


def test_a_command_that_sets_the_terminal_at_once_is_never_left_stopped(lines_dir, shell):
    """It may touch the terminal before inturn hands it the foreground: it is stopped by
    SIGTTOU for a moment, and must be continued, not left stopped forever."""
    loop = f"for i in $(seq {TRIES}); do {inturn_line('stty', 'stty', '-echo')} || break; done"
    shown = shell.run(loop + "; stty echo; echo finished-$((40 + 2))")
    assert b"finished-42" in shown and b"Stopped" not in shown


# For a pipeline: reports where it stands and when it is continued; exits 41 at the first
# SIGINT.
PIPED = SIGNAL_SAFE_WAITS + textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(41))
    signal.signal(signal.SIGCONT, lambda signum, frame: print("continued", flush=True))
    woken = wake_on_signals()
    where = "foreground" if os.tcgetpgrp(2) == os.getpgrp() else "background"
    print("ready", os.getpid(), os.getppid(), os.getpgrp(), where, flush=True)
    wait_for_signals(woken)
""")


def test_in_a_pipeline_the_pager_keeps_the_terminal_and_inturn_passes_keys_on(
    lines_dir, tmp_path, shell
):
    """``inturn run ... | cat``: inturn and cat share the job's process group, which keeps the
    terminal; Ctrl-Z and Ctrl-C reach the command through inturn."""
    command = script(tmp_path, "piped.py", PIPED)
    shell.run("set -o pipefail")  # the job's status: inturn's, as the pager ends with 0
    pager = "sh -c \"trap '' INT; exec cat\""  # a pager that outlives Ctrl-C, as less does
    shell.type(inturn_line("pipe", sys.executable, str(command)) + f" | {pager}\n")
    shell.expect(b"ready ")
    pid, parent, _, where = _ready(shell.expect(b"ground\r\n"))
    assert where == "background"
    shell.type("\x1a")  # Ctrl-Z: to inturn and cat; inturn stops the command, then itself
    shell.expect(b"Stopped")
    shell.expect(shell.PROMPT)
    assert state(int(pid)) == "T" and state(int(parent)) == "T"
    shell.type("fg\n")
    shell.expect(b"continued")  # by inturn, once bash gave the job the terminal and went on
    shell.type("\x03")  # Ctrl-C: to inturn (and the pager, which ignores it); passed on
    shell.expect(shell.PROMPT)
    assert b"rc=41" in shell.run("echo rc=$?")  # the command's own code, from inturn
    assert inturn.Line("pipe").status().holders == ()


@pytest.mark.parametrize("tostop", [False, True])
def test_at_the_end_of_a_pipeline_the_command_gets_the_terminal_when_it_uses_it(
    lines_dir, shell, tostop
):
    """``... | inturn run -- less``: the command is not in the job's process group, which
    keeps the terminal; when it reads it (or writes to it under ``stty tostop``) it must be
    given it, not stopped at every ``fg`` for ever. Ctrl-Z then stops the whole pipeline,
    so that the shell sees the job stopped, and ``fg`` lets the command read on."""
    if tostop:
        shell.run("stty tostop")
    command = "head -n 1; read a < /dev/tty; echo typed-$a"
    shell.type(f"yes piped | {inturn_line('pipe-in', 'sh', '-c', command)}\n")
    shell.expect(b"piped\r\n")  # written by the command
    until(lambda: os.tcgetpgrp(shell.fd) != os.getpgid(shell.pid), "the job has the terminal")
    until(lambda: len(inturn.Line("pipe-in").status().holders) == 1, "the command holds")
    holder = inturn.Line("pipe-in").status().holders[0].pid
    assert holder is not None
    shell.running_in_foreground(holder)  # reading the terminal
    shell.type("\x1a")  # Ctrl-Z: to the command alone, which has the terminal
    shell.expect(b"Stopped")  # the whole job: yes, inturn and the command
    shell.expect(shell.PROMPT)
    shell.type("fg\n")
    shell.type("hello\n")
    shell.expect(b"typed-hello\r\n")
    shell.expect(shell.PROMPT)
    assert b"rc=0" in shell.run("echo rc=$?")
    assert inturn.Line("pipe-in").status().holders == ()


def test_with_every_stream_redirected_the_command_still_gets_the_terminal(lines_dir, shell):
    """``inturn run -- sudo ... < /dev/null > log 2>&1``: no standard stream is the
    terminal, but the command may still read it (``/dev/tty``). inturn found no terminal,
    so the command was stopped by SIGTTIN, and at every ``fg`` again."""
    command = "read a < /dev/tty; echo typed-$a > /dev/tty"
    shell.type(f"{inturn_line('no-streams', 'sh', '-c', command)} < /dev/null > /dev/null 2>&1\n")
    until(lambda: len(inturn.Line("no-streams").status().holders) == 1, "the command holds")
    holder = inturn.Line("no-streams").status().holders[0].pid
    until(lambda: os.tcgetpgrp(shell.fd) == holder, "the command has the terminal")
    shell.type("hello\n")
    shell.expect(b"typed-hello\r\n")
    shell.expect(shell.PROMPT)
    assert b"rc=0" in shell.run("echo rc=$?")


def test_with_every_stream_redirected_the_script_keeps_the_terminal_if_inturn_dies(
    lines_dir, tmp_path, shell
):
    """``inturn run -- cmd < /dev/null > log 2>&1`` in a script: the command, which most
    likely never uses the terminal, is handed it only once it does. Handed it as it started,
    a SIGKILL of inturn left it with the command's group: nobody gave it back to the script,
    whose next read of the terminal stopped it, and what was typed went to the shell."""
    command = "echo started $$ > /dev/tty; exec sleep 60"
    run = inturn_line("no-streams-kill", "sh", "-c", command) + " < /dev/null > /dev/null 2>&1"
    job = tmp_path / "job.sh"
    job.write_text(f"{run}; echo rc=$?; read -r answer; echo got-$answer\n")
    shell.type(f"bash {shlex.quote(str(job))}\n")
    shell.expect(b"started ")
    pid = int(shell.expect(b"\r\n").strip())
    until(lambda: len(inturn.Line("no-streams-kill").status().holders) == 1, "the command holds")
    with open(f"/proc/{pid}/stat") as info:
        inturn_pid = int(info.read().rsplit(")", 1)[1].split()[1])
    os.kill(inturn_pid, signal.SIGKILL)
    shell.expect(b"rc=137\r\n")
    shell.type("bob\n")
    shown = shell.expect(b"got-")
    assert b"Stopped" not in shown, shown
    assert shell.expect(b"\r\n") == b"bob\r\n"
    shell.expect(shell.PROMPT)
    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- orphans and lost turns


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


class Losable(NamedTuple):
    """A server line whose holder a test can make lose its turn."""

    options: list[str]  # for ``inturn run``
    cut: Callable[[], None]


def _through(proxy: TcpProxy, base: str) -> str:
    parts = urlsplit(base)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(params=["postgresql", "redis"])
def losable(request: pytest.FixtureRequest) -> Iterator[Losable]:
    """PostgreSQL: the server ends the holder's session. Redis: the network goes silent and
    the server drops the holder's connections (its lease then runs out)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server")
        schema = request.getfixturevalue("schema")
        request.getfixturevalue("pg_url")  # INTURN_BACKEND for inturn

        def terminate() -> None:
            query = f'SELECT backend_pid FROM "{schema}".tickets WHERE acquired_at > 0'
            rows = sql(server, query)
            assert len(rows) == 1, rows
            assert sql(server, "SELECT pg_terminate_backend(%s)", rows[0][0]) == [(True,)]

        yield Losable([], terminate)
        return
    place = request.getfixturevalue("place")
    base = request.getfixturevalue("redis_base")
    target = urlsplit(base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)

    def cut_off() -> None:
        proxy.blackhole()
        client = place.client()
        try:
            for address in proxy.upstream_addresses():
                client.execute_command("CLIENT", "KILL", "ADDR", address)
        finally:
            client.close()

    try:
        # A short lease, so that a cut is felt soon; not so short that a renewal late on a
        # loaded machine loses the turn before the cut.
        yield Losable(["--backend", place.url(lease=2, base=_through(proxy, base))], cut_off)
    finally:
        proxy.close()


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        inturn_cmd("run", *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


@linux_only
def test_a_lost_turn_stops_the_commands_grandchildren_too(losable, tmp_path):
    """The command of the issue: its inner ``sh`` must not write after exit 76."""
    pids, log = fifo(tmp_path / "pids"), tmp_path / "log"
    inner = f"echo $$ > {shlex.quote(str(pids))}; sleep 20; echo late >> {shlex.quote(str(log))}"
    proc = _start(*losable.options, "lost", "--", "sh", "-c", f"sh -c {shlex.quote(inner)}")
    try:
        grandchild = int(read_fifo(pids))
        losable.cut()
        assert proc.wait(REPORT_TIMEOUT) == 76
        assert dead(grandchild)  # gone before inturn exits: it can write nothing any more
        assert not log.exists()
        assert proc.stderr is not None and "lost the turn in line 'lost'" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


# A command that leaves behind what a plain SIGTERM does not stop: a member of its group
# that ignores SIGTERM, and an orphan in a session of its own that ignores it too.
STUBBORN = """
    import shlex, subprocess, sys
    ignore = "trap '' TERM; "
    subprocess.Popen(["sh", "-c", ignore + "echo member $$; exec sleep 600"])
    orphan = "setsid sh -c " + shlex.quote(ignore + "echo orphan $$; exec sleep 600") + " &"
    subprocess.Popen(["sh", "-c", orphan]).wait()  # its parent is gone: it is inturn's now
    print("command", flush=True)
    sys.stdin.readline()
"""


@linux_only
def test_a_lost_turn_kills_what_ignores_sigterm_and_what_was_orphaned(losable, tmp_path):
    stubborn = script(tmp_path, "stubborn.py", STUBBORN)
    proc = _start(*losable.options, "--grace", "0.2", "stub", "--", sys.executable, str(stubborn))
    seen: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        output = read_lines(proc.stdout)
        while len(seen) < 3:
            words = output.get(timeout=REPORT_TIMEOUT).split()
            assert words, f"inturn run ended early ({proc.wait()}): {proc.communicate()[1]}"
            seen[words[0]] = int(words[1]) if len(words) > 1 else 0
        assert os.getpgid(seen["orphan"]) != os.getpgid(seen["member"])  # out of the group
        losable.cut()
        assert proc.wait(REPORT_TIMEOUT) == 76
        assert dead(seen["member"]) and dead(seen["orphan"])
    finally:
        proc.kill()
        proc.wait()
        for pid in seen.values():
            with contextlib.suppress(OSError):
                if pid:
                    os.kill(pid, signal.SIGKILL)


def test_grace_0_kills_the_command_at_once(losable):
    run = Run("now", "--grace", "0", *losable.options)
    run.running()
    losable.cut()
    assert run.wait() == 76
    assert run.next_line() == []  # no "signal 15": SIGKILL came first and alone


def test_a_stopped_command_still_gets_its_sigterm_when_the_turn_is_lost(losable):
    run = Run("stopped", *losable.options)
    command = run.running().pid
    os.kill(command, signal.SIGSTOP)
    losable.cut()
    assert run.next_line() == ["signal", str(int(signal.SIGTERM))]  # continued to get it
    assert run.wait() == 76


@linux_only
@pytest.mark.parametrize(("given", "seen"), [({}, "unset"), ({"LC_CTYPE": "C"}, "C")])
def test_the_c_locale_reaches_the_command_as_given(lines_dir, given, seen):
    """In the C locale Python sets ``LC_CTYPE=C.UTF-8`` for itself as it starts (PEP 538);
    the command gets the environment inturn was given, as under ``flock(1)``."""
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C",
        "INTURN_DIR": os.environ["INTURN_DIR"],
        "PYTHONPATH": child_env()["PYTHONPATH"],
        **given,
    }
    result = subprocess.run(
        inturn_cmd("run", "locale", "--", "sh", "-c", 'echo "${LC_CTYPE-unset}"'),
        capture_output=True,
        text=True,
        env=env,
        timeout=REPORT_TIMEOUT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{seen}\n", ""), result


def test_with_close_the_command_is_named_no_descriptors_of_a_turn(lines_dir):
    """``--close``: the command inherits no turn, so ``INTURN_FDS`` names none, not even the
    ones an outer run named to inturn itself."""
    result = run_cli(
        "run",
        "--close",
        "closed",
        "--",
        "sh",
        "-c",
        'echo "${INTURN_FDS-unset}"',
        INTURN_FDS="5:1:1",
    )
    assert (result.returncode, result.stdout) == (0, "unset\n"), result


@linux_only
def test_sigterm_to_inturn_reaches_a_stopped_command(lines_dir):
    """Not on a terminal, a command stopped by SIGSTOP still acts on the SIGTERM sent to
    inturn: inturn continues it after passing the signal on, as ``kill`` does for a shell's
    stopped job and ``timeout(1)`` for its command (else both would wait for ever)."""
    run = Run("halted")
    command = run.running().pid
    os.kill(command, signal.SIGSTOP)
    until(lambda: proc_state(command) == "T", "SIGSTOP acted on")
    run.proc.send_signal(signal.SIGTERM)
    assert run.next_line() == ["signal", str(int(signal.SIGTERM))]
    assert run.proc.wait(timeout=REPORT_TIMEOUT) == 7


def proc_state(pid: int) -> str:
    """A process's state as the kernel shows it (proc(5)): ``R``, ``S``, ``T`` (stopped)..."""
    fields = Path(f"/proc/{pid}/stat").read_text()
    return fields[fields.rfind(")") + 2]


@linux_only
def test_a_stopped_holder_is_shown_stopped_while_it_is(lines_dir):
    """A holder stopped by Ctrl-Z or SIGSTOP keeps its turn: status, status --json and a busy
    run say so (they read it from the system each time), and stop saying so once it runs."""
    run = Run("paused")
    command = run.running().pid
    for sent, stopped in ((None, False), (signal.SIGSTOP, True), (signal.SIGCONT, False)):
        if sent is not None:
            os.kill(command, sent)  # which the kernel acts on a moment later
            states = "T" if stopped else "RS"
            until(lambda states=states: proc_state(command) in states, f"{sent.name} acted on")
        state = run_cli("status", "paused").stdout.splitlines()[2].split()[2:4]
        assert state == (["holding,", "stopped"] if stopped else ["holding", "exclusive"])
        listed = json.loads(run_cli("status", "--json", "paused").stdout)
        assert listed["holders"][0]["stopped"] is stopped
        busy = run_cli("run", "-n", "paused", "--", "true")
        who = f"stopped pid {command}" if stopped else f"pid {command}"
        assert busy.returncode == 75 and f"busy: held by {who} (" in busy.stderr, busy
    assert run.finish() == 0


BOXED = """
    import os, subprocess, sys
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:  # the next child gets argv[1]
        last.write(str(int(sys.argv[1]) - 1))
    sys.exit(subprocess.call(sys.argv[2:]))
"""

BOXED_HOLDER = """
    import os, sys, inturn
    turn = inturn.Line("boxed").acquire()
    print(os.getpid(), flush=True)
    sys.stdin.read()
"""


@linux_only
def test_a_holder_in_another_pid_namespace_is_not_taken_for_the_host_process_of_its_pid(
    lines_dir, processes
):
    """A holder in a container (its own pid numbers, the host's name, the lines folder
    shared) whose pid is, on the host, a stopped process's: status cannot tell whether the
    holder is stopped (null), and names its pid as the container's."""
    other = subprocess.Popen(["sleep", "600"], text=True)
    processes.append(other)
    os.kill(other.pid, signal.SIGSTOP)
    until(lambda: proc_state(other.pid) == "T", "SIGSTOP acted on")
    holder = [sys.executable, "-c", textwrap.dedent(BOXED_HOLDER)]
    argv = in_own_pid_namespace(sys.executable, "-c", textwrap.dedent(BOXED), str(other.pid))
    boxed = subprocess.Popen(
        [*argv, *holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env()
    )
    processes.append(boxed)
    assert boxed.stdout is not None
    assert boxed.stdout.readline() == f"{other.pid}\n"  # numbered as the host's stopped one
    namespace = os.stat(f"/proc/{boxed.pid}/ns/pid_for_children").st_ino
    state = run_cli("status", "boxed").stdout.splitlines()[2].split()[2:4]
    assert state == ["holding", "exclusive"], state
    listed = json.loads(run_cli("status", "--json", "boxed").stdout)["holders"][0]
    assert (listed["stopped"], listed["pid_namespace"]) == (None, namespace), listed
    busy = run_cli("run", "-n", "boxed", "--", "true")
    who = f"pid {other.pid} in pid namespace {namespace} ("
    assert busy.returncode == 75 and f"busy: held by {who}" in busy.stderr, busy
    assert boxed.stdin is not None
    boxed.stdin.close()
    assert boxed.wait(REPORT_TIMEOUT) == 0


ORPHANER = """
    import os, sys
    wake_read, wake_write = os.pipe()
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:  # the orphan: speaks once its parent is gone
            os.close(wake_write)
            os.read(wake_read, 1)
            os.write(1, b"orphan %d %d\\n" % (os.getpid(), os.getppid()))
            os._exit(0)
        os._exit(0)
    os.close(wake_read)
    os.waitpid(middle, 0)
    os.write(wake_write, b"x")
    sys.stdin.readline()
"""


@linux_only
def test_with_a_server_backend_inturn_adopts_and_reaps_what_its_command_orphans(place, tmp_path):
    orphaner = script(tmp_path, "orphaner.py", ORPHANER)
    proc = _start("adopt", "--", sys.executable, str(orphaner))
    try:
        assert proc.stdout is not None and proc.stdin is not None
        kind, orphan, parent = read_lines(proc.stdout).get(timeout=REPORT_TIMEOUT).split()
        assert kind == "orphan" and int(parent) == proc.pid  # reparented to inturn
        wait_until_reaped(int(orphan))  # while inturn still runs: no zombie left behind
        proc.stdin.close()
        assert proc.wait(REPORT_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()


@linux_only
def test_a_command_that_cannot_inherit_the_turn_dies_whole_with_inturn(place, tmp_path):
    """On Redis inturn renews the lease: SIGKILL of inturn ends the turn, so the command's
    whole group must go too, not only its direct child."""
    pids, log = fifo(tmp_path / "pids"), tmp_path / "log"
    inner = f"echo $$ > {shlex.quote(str(pids))}; sleep 20; echo late >> {shlex.quote(str(log))}"
    proc = _start(
        "--backend", place.url(lease=1), "tied", "--", "sh", "-c", f"sh -c {shlex.quote(inner)}"
    )
    grandchild = int(read_fifo(pids))
    proc.kill()
    proc.wait()
    wait_until_dead(grandchild)  # killed by the sentinel; left alone it would write first
    assert not log.exists()


# --------------------------------------------------------------------------- errors and cost


@pytest.mark.parametrize("args", [["status"], ["status", "shown"], ["status", "--json"]])
def test_output_closed_early_exits_141_without_a_word(lines_dir, args):
    with inturn.turn("shown"):
        reader, writer = os.pipe()
        os.close(reader)  # as ``| head -1`` that has already gone
        try:
            result = subprocess.run(
                inturn_cmd(*args),
                stdout=writer,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
                timeout=REPORT_TIMEOUT,
            )
        finally:
            os.close(writer)
    assert (result.returncode, result.stderr) == (141, "")


def test_output_closed_in_the_middle_of_a_long_look_exits_141(lines_dir):
    """``inturn status | head -c 1`` while more than a pipe holds is on its way: the reader
    goes after the first write, and the rest must fail (141), not vanish with exit 0."""
    huge = "x" * 100_000
    with inturn.Line("shown").acquire(command=["sh", "-c", "sleep 1", huge, huge, huge]):
        shown = subprocess.Popen(
            inturn_cmd("status", "shown"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )  # fmt: skip
        assert shown.stdout is not None and shown.stdout.read(1) == "s"
        shown.stdout.close()
        _, said = shown.communicate(timeout=REPORT_TIMEOUT)
    assert (shown.returncode, said) == (141, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_the_output_is_one_line_and_exit_2(lines_dir):
    with inturn.turn("shown"), open("/dev/full", "w") as full:
        result = subprocess.run(
            inturn_cmd("status"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            timeout=REPORT_TIMEOUT,
        )
    one_line_error(result, "No space left on device")


def _with_open_files(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        preexec_fn=lower,
        timeout=REPORT_TIMEOUT,
    )


def test_too_few_open_files_is_one_clear_line_at_any_limit(lines_dir):
    """From the lowest limit at which Python can load inturn at all, to one that is enough."""
    lowest = next(
        n for n in range(3, 64) if _with_open_files(n, "-c", "import inturn.cli").returncode == 0
    )
    for limit in range(lowest, lowest + 64):
        result = _with_open_files(limit, "-m", "inturn", "run", "files", "--", "true")
        if result.returncode == 0:
            break
        one_line_error(result)
    else:
        pytest.fail("inturn run never succeeded")
    assert inturn.Line("files").status().holders == ()


def test_inturn_run_imports_nothing_it_does_not_need(lines_dir):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "inturn", "run", "cost", "--", "true"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=REPORT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    imported = {
        row.rsplit("|", 1)[1].strip()
        for row in result.stderr.splitlines()
        if row.startswith("import time:")
    }
    assert "inturn.cli.child_posix" in imported
    assert not imported & {"ctypes", "asyncio", "inspect", "psycopg", "redis"}


@pytest.mark.parametrize("grace", ["-1", "soon", "inf", "nan"])
def test_a_bad_grace_is_refused(lines_dir, grace):
    result = run_cli("run", "--grace", grace, "x", "--", "true")
    assert result.returncode == 2
    assert "grace" in result.stderr or "seconds" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_inside_its_own_lines_turn_says_it_waits_behind_itself(lines_dir, tmp_path):
    """``inturn run X`` inside the command of ``inturn run X`` waits behind the very turn its
    command runs in, which never ends while the outer run waits for it: it says so once, at
    its first sleep (here a timeout ends the wait). The same name in another folder is another
    line, whose ticket 1 is no turn of this run's own: nothing to say there."""
    inner = inturn_cmd("run", "-w", "0.3", "nest", "--", "true")
    result = run_cli("run", "nest", "--", *inner)
    assert result.returncode == 75, result.stderr
    said = [row for row in result.stderr.splitlines() if "inside turn" in row]
    assert len(said) == 1 and said[0].startswith("inturn: warning: this command runs inside "), said
    assert "turn 1 of line 'nest'" in said[0] and "give it --timeout" in said[0]
    other = tmp_path / "other"
    held = inturn.Line("nest", directory=str(other)).acquire()  # its ticket 1, not an ancestor's
    try:
        elsewhere = inturn_cmd("run", "-w", "0.3", "--dir", str(other), "nest", "--", "true")
        result = run_cli("run", "nest", "--", *elsewhere)
        assert result.returncode == 75 and "inside turn" not in result.stderr, result.stderr
    finally:
        held.release()


def test_a_script_that_runs_itself_under_inturn_holds_its_turn_from_first_line_to_last(
    lines_dir, tmp_path
):
    """The README's idiom for what ``flock FD`` does in a script (the FLOCKER idiom of the
    ``flock(1)`` manual): a first line that runs the script again as the command of ``inturn
    run`` unless it already runs as one. Started four times at once, each copy runs whole, one
    at a time, in arrival order, and a copy started from inside its own turn runs at once."""
    from observer import assert_exclusive, command, ticket_of

    log = tmp_path / "log"
    script = tmp_path / "job.sh"
    inturn = shlex.join(inturn_cmd())
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$INTURN_NAME" = nightly ] || exec {inturn} run nightly -- "$0" "$@"\n'
        f'{shlex.join(command(log, seconds=0.05))} --who "$INTURN_TICKET:$1"\n'
        '[ "$1" != again ] || exit 0\n'
        '[ "$1" != first ] || exec "$0" again\n'
    )
    script.chmod(0o755)
    runs = [
        subprocess.Popen(
            [str(script), name], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in ("first", "second", "third", "fourth")
    ]
    for run in runs:
        out, err = run.communicate(timeout=REPORT_TIMEOUT)
        assert run.returncode == 0 and b"warning" not in err, (out, err)
    intervals = assert_exclusive(log, expected=5)
    first = [i.who for i in intervals if i.who.endswith((":first", ":again"))]
    assert len(first) == 2 and ticket_of(first[0]) == ticket_of(first[1]), intervals
    tickets = [ticket_of(i.who) for i in intervals]
    assert tickets == sorted(tickets), intervals  # first come, first served


@linux_only
def test_a_record_of_an_older_inturn_that_names_no_pid_namespace_is_read_as_this_ones(processes):
    """Records written before tickets named their PID namespace, on a line shared across an
    upgrade, are read as of this host's processes: a stopped holder is still shown stopped."""
    from inturn.records import Ticket, own_ticket_fields

    other = subprocess.Popen(["sleep", "600"], text=True)
    processes.append(other)
    os.kill(other.pid, signal.SIGSTOP)
    until(lambda: proc_state(other.pid) == "T", "SIGSTOP acted on")
    header = {**own_ticket_fields(("sleep", "600"), 1).header(), "pid": other.pid}
    del header["pid_namespace"]
    older = Ticket.from_header(7, header, None)
    assert (older.pid_namespace, older.stopped) == (None, True)
    assert older.describe(live=True).startswith(f"stopped pid {other.pid}")
