"""Job control on a real terminal never lets two runs of one line in at once.

Several ``inturn run SAME -- ...`` are typed at an interactive bash on a pseudo-terminal and
taken through what a person does with jobs: Ctrl-Z while holding and while waiting, ``fg``
and ``bg``, a command that reads the terminal only after a pipe or through ``/dev/tty`` with
every stream redirected (handed the terminal on demand, stopped by SIGTTIN in the
background), and a hang-up of the terminal. Each command records its own stay
(``observer.py``): inturn's status only tells the test when to type next, it is never the
witness. Every test runs on the local folder, PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_run import LINUX, Shell

import inturn

from conftest import Run, Where, inturn_cmd, until
from observer import assert_exclusive, command

NAME = "same"
# On Redis a Ctrl-Z stops inturn and so its renewals: a lease far longer than any stop in
# these tests, as the README's bound for a stopped job asks (the tests are not about leases).
LEASE = 60


@pytest.fixture
def shell(
    where: Where, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Shell]:
    """An interactive bash on a pseudo-terminal whose runs reach ``where``'s lines."""
    if not LINUX:
        pytest.skip("needs bash and /proc")
    if where.kind == "redis":
        monkeypatch.setenv("INTURN_BACKEND", request.getfixturevalue("place").url(lease=LEASE))
    made = Shell()
    yield made
    made.close()


def run_line(log: Path, *, tty: bool = False, ignore_hup: bool = False, before: str = "") -> str:
    """The shell line of ``inturn run SAME -- <observer holding until a line on the terminal>``.

    ``before``: shell words the command runs first (``head -n 1`` reading a pipe); ``tty``:
    the observer reads and writes ``/dev/tty``, inturn's own streams are redirected away from
    the terminal; ``ignore_hup``: the command outlives a hang-up, ending at end of input.
    """
    holder = shlex.join(command(log, hold=True))
    script = f"{before}exec {holder}" + (" < /dev/tty > /dev/tty" if tty else "")
    if ignore_hup:
        script = f"trap '' HUP; {script}"
    line = shlex.join([*inturn_cmd("run", NAME, "--"), "sh", "-c", script])
    return line + (" < /dev/null > /dev/null 2>&1" if tty else "")


def entered(log: Path, count: int) -> int:
    """Wait until ``count`` commands have entered (the log, not the screen, says so); the pid
    of the last of them. Only whole rows are read: a writer may be mid-row."""

    def entries() -> list[str]:
        text = log.read_text() if log.exists() else ""
        rows = text.splitlines()[: text.count("\n")]
        return [row.split()[1] for row in rows if row.startswith("enter ")]

    until(lambda: len(entries()) >= count, f"{count} commands inside")
    found = entries()
    assert len(found) == count, found
    return int(found[-1].split(":")[1])


def waiting(count: int) -> None:
    """Wait until ``count`` runs wait in line (told apart from a hang by the line's state)."""
    line = inturn.Line(NAME)
    try:
        until(lambda: len(line.status().waiters) == count, f"{count} runs in line")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {line.status()}") from None


def foreground(shell: Shell, pid: int) -> None:
    shell.running_in_foreground(pid)


def stopped(shell: Shell) -> None:
    shell.expect(b"Stopped")
    shell.expect(shell.PROMPT)


def finish(shell: Shell, pid: int, job: int) -> None:
    """Bring job ``job`` to the foreground and end its command ``pid`` with a line."""
    shell.type(f"fg %{job}\n")
    foreground(shell, pid)
    shell.type("done\n")
    shell.expect(shell.PROMPT)
    assert b"rc=0" in shell.run("echo rc=$?")


def test_ctrl_z_while_holding_and_while_waiting_then_fg_and_bg(where, shell, tmp_path):
    """A holds and is stopped; B, in the foreground, is stopped while in line and sent on
    with ``bg``; C waits in the background. Each turn comes to a job in the background, whose
    command is stopped by SIGTTIN as it reads the terminal, until ``fg``."""
    log = tmp_path / "log"
    shell.type(run_line(log) + "\n")
    a = entered(log, 1)
    foreground(shell, a)
    shell.type("\x1a")  # Ctrl-Z while holding
    stopped(shell)
    shell.type(run_line(log) + "\n")
    waiting(1)
    shell.type("\x1a")  # Ctrl-Z while waiting
    stopped(shell)
    shell.run(run_line(log) + " &")
    waiting(2)
    shell.run("bg %2")  # B waits on, in the background
    finish(shell, a, 1)
    b = entered(log, 2)  # its turn came in the background: stopped as it reads the terminal
    finish(shell, b, 2)
    c = entered(log, 3)
    finish(shell, c, 3)
    assert_exclusive(log, expected=3)
    assert inturn.Line(NAME).status().holders == ()


@pytest.mark.parametrize("tostop", [False, True])
def test_commands_reading_the_terminal_after_a_pipe_take_turns(where, shell, tmp_path, tostop):
    """``yes | inturn run SAME -- sh -c 'head -n 1; <read the terminal>'`` twice: each is
    handed the terminal only when it reads it; Ctrl-Z stops the pipeline that holds, and
    the one in line."""
    if tostop:
        shell.run("stty tostop")
    log = tmp_path / "log"
    line = "yes piped | " + run_line(log, before="head -n 1; exec < /dev/tty; ")
    shell.type(line + "\n")
    a = entered(log, 1)
    foreground(shell, a)
    shell.type("\x1a")
    stopped(shell)
    shell.type(line + "\n")
    waiting(1)
    shell.type("\x1a")
    stopped(shell)
    finish(shell, a, 1)
    shell.type("fg %2\n")
    b = entered(log, 2)
    foreground(shell, b)
    shell.type("done\n")
    shell.expect(shell.PROMPT)
    assert b"rc=0" in shell.run("echo rc=$?")
    assert_exclusive(log, expected=2)


def test_commands_on_dev_tty_with_every_stream_redirected_take_turns(where, shell, tmp_path):
    """``inturn run SAME -- cmd < /dev/null > /dev/null 2>&1`` whose command reads
    ``/dev/tty``: A in the foreground is stopped while holding, B waits in the background
    and is stopped by SIGTTIN once its turn comes and it reads the terminal."""
    log = tmp_path / "log"
    shell.type(run_line(log, tty=True) + "\n")
    a = entered(log, 1)
    foreground(shell, a)
    shell.type("\x1a")
    stopped(shell)
    shell.run(run_line(log, tty=True) + " &")
    waiting(1)
    finish(shell, a, 1)
    b = entered(log, 2)
    finish(shell, b, 2)
    assert_exclusive(log, expected=2)


@pytest.mark.parametrize("ignore_hup", [False, True], ids=["dies", "outlives"])
def test_a_hang_up_ends_the_holder_before_the_next_one_enters(where, shell, tmp_path, ignore_hup):
    """The terminal hangs up while A holds in the foreground, B waits stopped on it, and C
    waits from elsewhere: A's command dies of SIGHUP, or ignores it and ends at the end of
    its input; B leaves the line (bash hangs up and terminates its stopped jobs); C enters
    only once A's command is gone."""
    log = tmp_path / "log"
    shell.type(run_line(log, ignore_hup=ignore_hup) + "\n")
    a = entered(log, 1)
    foreground(shell, a)
    shell.type("\x1a")
    stopped(shell)
    shell.type(run_line(log) + "\n")
    waiting(1)
    shell.type("\x1a")
    stopped(shell)
    elsewhere = Run(NAME, command=command(log, seconds=0.05))
    waiting(2)
    shell.type("fg %1\n")
    foreground(shell, a)
    os.close(shell.fd)  # the terminal hangs up
    shell.fd = os.open(os.devnull, os.O_RDONLY)  # for close()
    assert elsewhere.wait() == 0
    first, _ = assert_exclusive(log, expected=2)
    assert first.exited or not ignore_hup, first  # else dead of SIGHUP, or done at EIO
    assert inturn.Line(NAME).status().holders == ()
