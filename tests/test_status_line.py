"""The status line ``inturn run`` keeps while it waits, in a real terminal (tmux).

What the terminal shows is read with ``capture-pane`` (``-J`` puts wrapped rows back
together, so a row that wrapped shows up as a difference); every byte inturn wrote is logged
with ``pipe-pane``, so a test can also tell what came after what: a redraw after an error
would show there even if the screen happened to look right.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

import inturn

from conftest import Worker, child_env, inturn_cmd, inturn_words, run_cli, until
from terminal import PROMPT, Pane

CLEAR = b"\r\x1b[K"  # how each redraw of the status line begins


def shell_with(tmp_path: Path, columns: int, command: list[str]) -> tuple[Pane, Path]:
    """A shell whose ``go`` runs ``inturn COMMAND`` then says ``exit=N``: typing ``go`` keeps
    the prompt row short, so that nothing on the screen wraps but what inturn writes."""
    words = shlex.join([*inturn_words(), *command])
    pane = Pane(tmp_path, columns=columns, rows=12, setup=f"go() {{ {words}; echo exit=$?; }}")
    raw = tmp_path / "raw"
    pane.tmux("pipe-pane", "-t", "top", "-o", f"cat >>{shlex.quote(str(raw))}")
    return pane, raw


def status_rows(rows: list[str], name: str) -> list[str]:
    return [r for r in rows if r.startswith(f"waiting for {name}")]


def redraws(raw: Path) -> int:
    return raw.read_bytes().count(CLEAR) if raw.exists() else 0


@pytest.mark.parametrize("how", ["C-c", "timeout"])
def test_a_narrow_terminal_gets_one_cut_row_and_nothing_is_left_after(
    lines_dir, workers, panes, tmp_path, how
):
    holder = Worker("narrow-line", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    timeout = ["-w", "4s"] if how == "timeout" else []
    pane, raw = shell_with(tmp_path, 40, ["run", *timeout, "narrow-line", "--", "true"])
    panes.append(pane)
    pane.type("go")
    pane.until(lambda rows: status_rows(rows, "narrow-line") != [], "the status line")
    until(lambda: redraws(raw) >= 3, "the status line to be drawn three times")
    rows = pane.rows()
    (shown,) = status_rows(rows, "narrow-line")  # one row, however often it was drawn
    assert len(shown) <= 37 and shown.endswith("..."), shown  # cut, with room for ^C
    assert pane.rows(joined=True) == rows, rows  # no row wrapped onto the next
    if how == "C-c":
        pane.keys("C-c")  # inturn dies of it, and the shell leaves ``go`` there: no exit=
        pane.until(lambda rows: [r for r in rows if r][-1] == PROMPT.rstrip(), "the prompt")
        pane.type("echo exit=$?")
        assert pane.exit_code() == 130
    else:
        assert pane.exit_code() == 75
    rows = [r for r in pane.rows(joined=True) if r]
    assert status_rows(rows, "narrow-line") == [], rows
    if how == "timeout":
        said = [r for r in rows if r.startswith("inturn: ")]
        assert len(said) == 1, rows
        assert said[0].startswith(
            f"inturn: gave up waiting for line 'narrow-line' after 4.0s; held by pid {holder.pid}"
        )
        assert rows[rows.index(said[0]) + 1] == "exit=75"
    else:
        assert rows[-2:] == ["exit=130", PROMPT.rstrip()], rows
    holder.send()


def test_the_clock_is_labelled_and_an_error_comes_after_the_line_is_cleared(
    lines_dir, workers, panes, tmp_path
):
    holder = Worker("late", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane, raw = shell_with(tmp_path, 200, ["run", "-w", "2500ms", "late", "--", "true"])
    panes.append(pane)
    pane.type("go")
    line = re.compile(
        rf"^waiting for late: #2 in line, held by pid {holder.pid} \(.+\) for \S+; "
        r"waiting (\d+\.\d)s$"
    )
    pane.until(
        lambda rows: any((m := line.match(r)) and float(m.group(1)) >= 1 for r in rows),
        "the status line with its labelled clock past one second",
    )
    assert pane.exit_code() == 75
    rows = [r for r in pane.rows(joined=True) if r]
    assert status_rows(rows, "late") == [], rows
    said = [r for r in rows if r.startswith("inturn: ")]
    assert len(said) == 1 and said[0].startswith(
        f"inturn: gave up waiting for line 'late' after 2.5s; held by pid {holder.pid} ("
    ), rows
    written = raw.read_bytes()
    last_clear = written.rindex(CLEAR)
    error_at = written.index(b"inturn: gave up")
    # The line was cleared, then the error written at the start of the row; no redraw after.
    assert written[last_clear + len(CLEAR) :].startswith(b"inturn: gave up"), written[-300:]
    assert b"waiting for late:" not in written[error_at:]
    holder.send()


def test_verbose_and_busy_lines_start_rows_of_their_own(lines_dir, workers, panes, tmp_path):
    holder = Worker("turns", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane, raw = shell_with(tmp_path, 120, ["run", "-v", "turns", "--", "true"])
    panes.append(pane)
    pane.type("go")
    pane.until(lambda rows: status_rows(rows, "turns") != [], "the status line")
    holder.send()
    assert pane.exit_code() == 0
    rows = [r for r in pane.rows(joined=True) if r]
    assert status_rows(rows, "turns") == [], rows
    said = [r for r in rows if r.startswith("inturn: ")]
    assert len(said) == 1 and re.fullmatch(
        r"inturn: ticket 2 of line 'turns', after \d+\.\ds in line", said[0]
    ), rows
    assert holder.wait() == 0
    busy = Worker("turns", "--hold")
    workers.append(busy)
    busy.expect("acquired")
    pane.type("clear")
    pane.until(lambda rows: [r for r in rows if r] == [PROMPT.rstrip()], "a clear screen")
    written = len(raw.read_bytes())
    pane.type(f"{shlex.join([*inturn_words(), 'run', '-n', 'turns', '--', 'true'])}; echo exit=$?")
    assert pane.exit_code() == 75
    rows = [r for r in pane.rows(joined=True) if r]
    assert rows[1].startswith(f"inturn: line 'turns' is busy: held by pid {busy.pid}"), rows
    assert b"waiting for" not in raw.read_bytes()[written:]  # no status line for a busy line
    busy.send()


def test_a_stopped_holder_is_named_stopped_while_it_is(lines_dir, workers, panes, tmp_path):
    """Ctrl-Z on a holder keeps its turn: the waiter's line says why nothing moves."""
    holder = Worker("paused", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane, _ = shell_with(tmp_path, 120, ["run", "paused", "--", "true"])
    panes.append(pane)
    pane.type("go")
    shown = f"held by pid {holder.pid} ("
    pane.until(lambda rows: any(shown in r for r in status_rows(rows, "paused")), "the holder")
    os.kill(holder.pid, signal.SIGSTOP)
    stopped = f"held by stopped pid {holder.pid} ("
    pane.until(lambda rows: any(stopped in r for r in status_rows(rows, "paused")), "stopped")
    os.kill(holder.pid, signal.SIGCONT)
    pane.until(lambda rows: any(shown in r for r in status_rows(rows, "paused")), "running")
    holder.send()
    assert pane.exit_code() == 0
    assert holder.wait() == 0


def test_every_holder_of_a_line_with_slots_is_counted(lines_dir, workers, panes, tmp_path):
    """Two holders of a line with two slots: the line names the first and counts the other."""
    holders = []
    for _ in range(2):  # one after the other: the first in line is named
        holders.append(Worker("pair", "--hold", "--slots", "2"))
        workers.append(holders[-1])
        holders[-1].expect("acquired")
    pane, _ = shell_with(tmp_path, 160, ["run", "-s", "2", "pair", "--", "true"])
    panes.append(pane)
    pane.type("go")
    shown = re.compile(rf"held by pid {holders[0].pid} \(.*\) for [0-9.]+s and 1 more; ")
    pane.until(lambda rows: any(shown.search(r) for r in status_rows(rows, "pair")), "both")
    holders[0].send()
    assert pane.exit_code() == 0
    holders[1].send()
    assert all(holder.wait() == 0 for holder in holders)


def _drawn_on(master: int, name: str) -> None:
    """Read the terminal until the status line for ``name`` was drawn on it."""
    seen = b""
    deadline = time.monotonic() + 60
    while f"waiting for {name}".encode() not in seen:
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            seen += os.read(master, 4096)


@pytest.mark.parametrize("controlling", [True, False], ids=["its-terminal", "a-terminal"])
def test_a_terminal_that_goes_away_ends_the_status_line_not_the_turn(
    lines_dir, workers, tmp_path, controlling
):
    """The terminal showing the status line hangs up (closed window, lost ssh session).
    As inturn's controlling terminal, its SIGHUP ends the wait (129) and the line is left;
    as a terminal it only writes to (or under ``nohup``), the wait goes on, the turn comes,
    the command runs, and the next holder is not told it was abandoned. Before, the failed
    write of the status line (EIO) made inturn exit 2, keeping the turn it had just taken
    until it died: the command never ran, and the next holder was told it died holding."""
    holder = Worker("hangup", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    master, slave = pty.openpty()
    ran = tmp_path / "ran"

    def own_terminal() -> None:  # a session leader whose controlling terminal is the pty
        os.setsid()
        fcntl.ioctl(2, termios.TIOCSCTTY, 0)

    waiter = subprocess.Popen(
        inturn_cmd("run", "hangup", "--", "touch", str(ran)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=child_env(),
        preexec_fn=own_terminal if controlling else None,
    )
    os.close(slave)
    try:
        _drawn_on(master, "hangup")
    finally:
        os.close(master)  # the terminal goes away
    if controlling:
        assert waiter.wait(60) == 128 + signal.SIGHUP
        until(lambda: not inturn.Line("hangup").status().waiters, "the waiter to leave")
    holder.send()
    assert holder.wait() == 0
    if not controlling:
        assert waiter.wait(60) == 0
        assert ran.exists()
    after = run_cli("run", "-v", "hangup", "--", "true")
    assert after.returncode == 0 and "died holding" not in after.stderr, after


def _threads(pid: int) -> dict[str, str]:
    """The state (``S``, ``T``...) of each thread of ``pid``."""
    states = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as stat:
            states[task] = stat.read().rsplit(")", 1)[1].split()[0]
    return states


def test_a_run_in_the_background_draws_nothing_until_brought_to_the_foreground(
    lines_dir, workers, panes, tmp_path
):
    """``inturn run ... &`` with ``stty tostop``: the status line would be drawn over the
    prompt, and its write stopped inturn (SIGTTOU) in line, where it stayed stopped when its
    turn came, holding up everyone behind it. In the background nothing is drawn and the run
    goes on; after ``fg`` the status line is drawn."""
    holder = Worker("behind", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    ran = tmp_path / "ran"
    pane = Pane(tmp_path, columns=120, rows=12, setup="stty tostop")
    panes.append(pane)
    raw = tmp_path / "raw"
    pane.tmux("pipe-pane", "-t", "top", "-o", f"cat >>{shlex.quote(str(raw))}")
    run = shlex.join([*inturn_words(), "run", "behind", "--", "touch", str(ran)])
    pane.type(f"{run} &")
    until(lambda: len(inturn.Line("behind").status().waiters) == 1, "the run in line")
    (waiter,) = inturn.Line("behind").status().waiters
    assert waiter.pid is not None
    pid = waiter.pid
    # The first draw comes before the drawing thread starts (main, waiter, drawing thread).
    until(
        lambda: "T" in _threads(pid).values() or len(_threads(pid)) >= 3,
        "the first draw of the status line",
    )
    assert "T" not in _threads(pid).values(), "stopped by the terminal in the background"
    assert not inturn.Line("behind").status().waiters[0].stopped
    assert b"waiting for" not in (raw.read_bytes() if raw.exists() else b"")
    pane.type("fg")
    pane.until(lambda rows: status_rows(rows, "behind") != [], "the status line after fg")
    holder.send()
    until(ran.exists, "the command to run")
    assert holder.wait() == 0
