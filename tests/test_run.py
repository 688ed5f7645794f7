"""``inturn run`` and its command: signals, process groups, terminals, orphans, lost turns.

Everything goes through the real console script with real signals. The commands tell the
test what they are doing through pipes, FIFOs and the terminal; races that once were lost
(SIGTERM just as the command starts, or just after it ends) are repeated many times, and
each repetition must come out right.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    Run,
    Worker,
    child_env,
    inturn_cmd,
    read_lines,
)

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


FAMILY = """
    import os, signal, sys
    NAMES = ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    def report(signum, frame):
        print("got", signum, os.getpid(), flush=True)
    for name in NAMES:
        signal.signal(getattr(signal, name), report)
    child = os.fork()
    if child == 0:
        print("child", os.getpid(), os.getpgrp(), flush=True)
        while True:
            signal.pause()
    print("command", os.getpid(), os.getpgrp(), os.getppid(), flush=True)
    line = sys.stdin.readline()
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    sys.exit(int(line))
"""


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
            signum = getattr(signal, name)
            proc.send_signal(signum)
            got = {tuple(output.get(timeout=REPORT_TIMEOUT).split()) for _ in range(2)}
            assert got == {("got", str(signum), str(command)), ("got", str(signum), str(child))}
        proc.stdin.write("5\n")
        proc.stdin.close()
        assert proc.wait(REPORT_TIMEOUT) == 5
    finally:
        proc.kill()
        proc.wait()


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
INTERACTIVE = """
    import os, signal, sys
    count = 0
    def interrupted(signum, frame):
        global count
        count += 1
        print("interrupted", count, flush=True)
    signal.signal(signal.SIGINT, interrupted)
    where = "foreground" if os.tcgetpgrp(0) == os.getpgrp() else "background"
    print("ready", os.getpid(), os.getppid(), os.getpgrp(), where, flush=True)
    line = sys.stdin.readline().strip()
    print("read", line, count, flush=True)
    sys.exit(40 + count)
"""


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


def test_a_command_that_sets_the_terminal_at_once_is_never_left_stopped(lines_dir, shell):
    """It may touch the terminal before inturn hands it the foreground: it is stopped by
    SIGTTOU for a moment, and must be continued, not left stopped forever."""
    loop = f"for i in $(seq {TRIES}); do {inturn_line('stty', 'stty', '-echo')} || break; done"
    shown = shell.run(loop + "; stty echo; echo finished-$((40 + 2))")
    assert b"finished-42" in shown and b"Stopped" not in shown


# For a pipeline: reports where it stands and when it is continued; exits 41 at the first
# SIGINT.
PIPED = """
    import os, signal, sys
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(41))
    signal.signal(signal.SIGCONT, lambda signum, frame: print("continued", flush=True))
    where = "foreground" if os.tcgetpgrp(2) == os.getpgrp() else "background"
    print("ready", os.getpid(), os.getppid(), os.getpgrp(), where, flush=True)
    while True:
        signal.pause()
"""


def test_in_a_pipeline_the_pager_keeps_the_terminal_and_inturn_passes_keys_on(
    lines_dir, tmp_path, shell
):
    """``inturn run ... | cat``: inturn and cat share the job's process group, which keeps the
    terminal; Ctrl-Z and Ctrl-C reach the command through inturn."""
    command = script(tmp_path, "piped.py", PIPED)
    code = tmp_path / "code"
    inturn_run = inturn_line("pipe", sys.executable, str(command))
    shell.type(f"{{ {inturn_run}; echo $? > {shlex.quote(str(code))}; }} | cat\n")
    shell.expect(b"ready ")
    pid, parent, _, where = _ready(shell.expect(b"ground\r\n"))
    assert where == "background"
    shell.type("\x1a")  # Ctrl-Z: to inturn and cat; inturn stops the command, then itself
    shell.expect(b"Stopped")
    shell.expect(shell.PROMPT)
    assert state(int(pid)) == "T" and state(int(parent)) == "T"
    shell.type("fg\n")
    shell.expect(b"continued")  # by inturn, once bash gave the job the terminal and went on
    shell.type("\x03")  # Ctrl-C: cat dies of it; inturn passes it on and lives
    shell.expect(shell.PROMPT)
    assert code.read_text() == "41\n"  # the command's own code, once
    assert inturn.Line("pipe").status().holders == ()
