"""``inturn top`` and ``inturn status --watch`` in a real terminal.

Each test runs the console script in a shell inside its own tmux server (``terminal.Pane``).
What the terminal is left in is asked of tmux itself (``#{alternate_on}``, ``#{cursor_flag}``,
``#{wrap_flag}``) and of ``stty -g`` before and after, never taken from inturn.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import Worker, free_port, inturn_words, one_line_error, run_cli
from terminal import EXIT, PROMPT, Pane

LONG = "3600"  # an --interval no test outlives: what the screen shows then is not the timer
CLOCK = re.compile(r"q quits  \d\d:\d\d:\d\d$")


def run_top(pane: Pane, folder: Path, *args: str) -> None:
    """Type ``inturn ARGS`` in the shell between two ``stty -g`` and an ``echo exit=$?``."""
    before, after = folder / "stty-before", folder / "stty-after"
    command = shlex.join([*inturn_words(), *args])
    pane.type(f"stty -g >{before}; {command}; echo exit=$?; stty -g >{after}")


def assert_terminal_given_back(pane: Pane, folder: Path) -> None:
    """Main screen, cursor shown, wrapping on, the keyboard's modes as before, the prompt."""
    assert pane.flag("alternate_on") == "0"
    assert pane.flag("cursor_flag") == "1"
    assert pane.flag("wrap_flag") == "1"
    after = folder / "stty-after"
    rows = pane.until(lambda _: after.exists() and after.read_text() != "", "stty -g after")
    assert after.read_text() == (folder / "stty-before").read_text()
    rows = pane.until(lambda rows: [r for r in rows if r][-1] == PROMPT.rstrip(), "a prompt")
    assert not any(r.startswith("inturn top:") for r in rows), rows  # the view is gone


def row_of(rows: list[str], pid: int) -> list[str]:
    """The words of the view's row for process ``pid`` (empty when it has none)."""
    for row in rows:
        words = row.split()
        if len(words) > 4 and words[4] == str(pid):
            return words
    return []


def shows(pid: int, state: str) -> Callable[[list[str]], bool]:
    return lambda rows: row_of(rows, pid)[2:3] == [state]


def test_the_view_shows_the_holder_then_a_new_waiter_and_q_quits_cleanly(
    lines_dir, workers, panes, tmp_path
):
    holder = Worker("top-live", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane = Pane(tmp_path)
    panes.append(pane)
    run_top(pane, tmp_path, "top", "top-live")
    rows = pane.until(shows(holder.pid, "holding"), "the holder")
    assert rows[0].startswith("inturn top: top-live (") and CLOCK.search(rows[0])
    assert rows[1] == "top-live: 1 holding, 0 waiting"
    assert rows[2].split() == ["#", "TICKET", "STATE", "MODE", "PID", "USER", "HOST", "FOR", "CMD"]
    assert (pane.flag("alternate_on"), pane.flag("cursor_flag"), pane.flag("wrap_flag")) == (
        "1",
        "0",
        "0",
    )
    waiter = Worker("top-live", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    rows = pane.until(shows(waiter.pid, "waiting"), "the new waiter (a timer tick)")
    assert rows[1] == "top-live: 1 holding, 1 waiting"
    assert row_of(rows, holder.pid)[0] == "1" and row_of(rows, waiter.pid)[0] == "2"
    pane.keys("q")
    assert pane.exit_code() == 0
    assert_terminal_given_back(pane, tmp_path)
    holder.send()
    waiter.acquired()
    waiter.send()


def test_a_terminal_whose_size_nobody_set_gets_80_by_24(lines_dir, workers, panes, tmp_path):
    """A terminal that says 0x0 (some CI runners, serial consoles): the view is drawn at
    80x24, as ``run``'s status line takes 80 columns; before, it was cut to 1x1 ("q")."""
    holder = Worker("unsized", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane = Pane(tmp_path, columns=100, rows=30)
    panes.append(pane)
    pane.type("stty rows 0 cols 0")
    run_top(pane, tmp_path, "top", "unsized")
    rows = pane.until(shows(holder.pid, "holding"), "the holder")
    assert rows[0].startswith("inturn top: unsized (") and CLOCK.search(rows[0])
    assert len(rows[0]) <= 80, rows[0]
    pane.keys("q")
    assert pane.exit_code() == 0
    holder.send()


def test_a_leave_or_a_death_is_drawn_at_once_not_at_the_next_tick(where, workers, panes, tmp_path):
    """With a timer of an hour, only the sleep on the tickets can redraw: the leave and the
    death must show within the bound that detects a hang, long before the first tick."""
    first = Worker("top-leave", "--hold", env=where.crash_env())
    workers.append(first)
    first.expect("acquired")
    second = Worker("top-leave", "--hold", env=where.crash_env())
    workers.append(second)
    second.expect("waiting")
    third = Worker("top-leave", "--hold", env=where.crash_env())
    workers.append(third)
    third.expect("waiting")
    pane = Pane(tmp_path)
    panes.append(pane)
    started = time.monotonic()
    run_top(pane, tmp_path, "top", "--interval", LONG, "top-leave")
    pane.until(shows(third.pid, "waiting"), "the line as it is")
    first.send()  # a clean leave
    assert first.wait() == 0
    rows = pane.until(shows(second.pid, "holding"), "the next holder, after the leave")
    assert row_of(rows, first.pid) == [] and rows[1] == "top-leave: 1 holding, 1 waiting"
    second.proc.kill()  # a death
    second.proc.wait()
    rows = pane.until(shows(third.pid, "holding"), "the next holder, after the death")
    assert row_of(rows, second.pid) == [] and rows[1] == "top-leave: 1 holding, 0 waiting"
    assert time.monotonic() - started < float(LONG)  # so it was no tick of the timer
    pane.keys("q")
    assert pane.exit_code() == 0
    assert_terminal_given_back(pane, tmp_path)
    third.acquired()
    third.send()


def test_a_small_terminal_cuts_rows_counts_the_rest_and_redraws_when_resized(
    lines_dir, workers, panes, tmp_path
):
    holder = Worker("top-small", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiters = []
    for _ in range(5):
        waiter = Worker("top-small", "--hold")
        workers.append(waiter)
        waiter.expect("waiting")
        waiters.append(waiter)
    plain = run_cli("status", "top-small").stdout.splitlines()
    assert max(len(r) for r in plain) > 60  # the rows would wrap if they were not cut
    pane = Pane(tmp_path, columns=40, rows=7)
    panes.append(pane)
    run_top(pane, tmp_path, "top", "--interval", LONG, "top-small")
    rows = pane.until(lambda rows: "  ... 3 more waiting" in rows, "how many more wait")
    assert rows[1] == "top-small: 1 holding, 5 waiting"
    assert row_of(rows, holder.pid)[2] == "holding"
    assert [row_of(rows, w.pid)[2:3] for w in waiters] == [["waiting"]] * 2 + [[]] * 3
    assert rows[-1] == "  ... 3 more waiting" and len(rows) == 7
    assert all(len(r) <= 40 for r in rows)
    assert pane.rows(joined=True) == rows  # no row wrapped onto the next
    pane.resize(60, 12)  # SIGWINCH: the only thing that can redraw now
    rows = pane.until(
        lambda rows: len(rows[0]) == 60 and CLOCK.search(rows[0]) is not None, "the wider title"
    )
    rows = pane.until(shows(waiters[-1].pid, "waiting"), "every waiter in the taller view")
    assert not any("more waiting" in r for r in rows)
    assert all(len(r) <= 60 for r in rows) and pane.rows(joined=True) == rows
    pane.keys("q")
    assert pane.exit_code() == 0
    assert_terminal_given_back(pane, tmp_path)


@pytest.mark.parametrize(("how", "code"), [("C-c", 0), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_ctrl_c_and_signals_quit_and_give_the_terminal_back(
    lines_dir, workers, panes, tmp_path, how, code
):
    holder = Worker("top-quit", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane = Pane(tmp_path)
    panes.append(pane)
    run_top(pane, tmp_path, "status", "--watch", "top-quit")
    pane.until(shows(holder.pid, "holding"), "the holder")
    if how.startswith("SIG"):
        os.kill(pane.foreground_pid(), getattr(signal, how))
    else:
        pane.keys(how)
    assert pane.exit_code() == code
    assert_terminal_given_back(pane, tmp_path)
    holder.send()


def test_ctrl_z_gives_the_shell_its_screen_back_until_fg(lines_dir, workers, panes, tmp_path):
    holder = Worker("top-stop", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    pane = Pane(tmp_path)
    panes.append(pane)
    before = tmp_path / "stty-before"
    pane.type(f"stty -g >{before}")  # alone: a stopped job would let a list go on
    pane.until(lambda _: before.exists() and before.read_text() != "", "stty -g before")
    pane.type(shlex.join([*inturn_words(), "top", "top-stop"]))
    pane.until(shows(holder.pid, "holding"), "the holder")
    pane.keys("C-z")
    rows = pane.until(lambda rows: any("Stopped" in r for r in rows), "the job stopped")
    assert (pane.flag("alternate_on"), pane.flag("cursor_flag"), pane.flag("wrap_flag")) == (
        "0",
        "1",
        "1",
    )
    assert not any(r.startswith("inturn top:") for r in rows)
    pane.type("fg")
    pane.until(shows(holder.pid, "holding"), "the view again")
    assert pane.flag("alternate_on") == "1"
    pane.keys("q")
    pane.until(
        lambda rows: PROMPT + "fg" in rows and [r for r in rows if r][-1] == PROMPT.rstrip(),
        "the prompt after the job that fg continued",
    )
    pane.type(f"echo exit=$?; stty -g >{tmp_path / 'stty-after'}")
    assert pane.exit_code() == 0
    assert_terminal_given_back(pane, tmp_path)
    holder.send()


def test_every_line_is_shown_and_a_new_line_appears_on_the_timer(
    lines_dir, workers, panes, tmp_path
):
    first = Worker("top-a", "--hold")
    workers.append(first)
    first.expect("acquired")
    pane = Pane(tmp_path)
    panes.append(pane)
    run_top(pane, tmp_path, "top")
    rows = pane.until(lambda rows: any(r.startswith("top-a ") for r in rows), "line top-a")
    assert rows[0].startswith("inturn top: every line (")
    assert rows[1].split()[:3] == ["LINE", "HOLDING", "WAITING"]
    second = Worker("top-b", "--hold")
    workers.append(second)
    second.expect("acquired")
    rows = pane.until(lambda rows: any(r.startswith("top-b ") for r in rows), "line top-b")
    assert f"pid {second.pid}" in next(r for r in rows if r.startswith("top-b "))
    pane.keys("q")
    assert pane.exit_code() == 0
    assert_terminal_given_back(pane, tmp_path)
    first.send()
    second.send()


CLOCKS = re.compile(r"\b(\d+(\.\d)?s|\d+m\d\ds|\d+h\d\dm)\b")


@pytest.mark.parametrize("args", [["top", "top-pipe"], ["status", "--watch", "top-pipe"], ["top"]])
def test_piped_output_is_inturn_status_printed_once(lines_dir, workers, args):
    holder = Worker("top-pipe", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("top-pipe", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    watched = run_cli(*args)
    plain = run_cli("status", *[a for a in args if a == "top-pipe"])
    assert watched.returncode == 0 and watched.stderr == ""
    assert "\x1b" not in watched.stdout
    assert CLOCKS.sub("T", watched.stdout) == CLOCKS.sub("T", plain.stdout)
    assert str(holder.pid) in watched.stdout
    holder.send()
    waiter.acquired()
    waiter.send()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["status", "--watch", "--json", "x"], ["--watch", "--json"]),
        (["status", "--watch", "--names"], ["--watch", "--names"]),
        (["status", "--interval", "2", "x"], ["--interval goes with --watch"]),
    ],
)
def test_options_that_do_not_go_together_are_refused(lines_dir, args, words):
    result = run_cli(*args)
    assert result.stdout == ""
    one_line_error(result, *words)


@pytest.mark.parametrize("interval", ["0", "-1", "1e10", "400d"])
def test_an_interval_too_short_or_too_long_is_refused_by_the_parser(lines_dir, interval):
    result = run_cli("top", "--interval", interval, "x")
    assert result.returncode == 2 and result.stdout == ""
    said = result.stderr.splitlines()[-1]
    assert f"the interval must be from 0.1 seconds to a year, not {interval}" in said, said


@pytest.mark.parametrize(
    ("backend", "words", "code"),
    [
        ("mysql://nowhere/x", ["unknown backend 'mysql'"], 2),
        ("postgresql://127.0.0.1:{port}/test", ["cannot connect to PostgreSQL"], 69),
    ],
)
def test_bad_input_or_no_server_is_one_line_and_its_exit_code_on_an_untouched_terminal(
    lines_dir, panes, tmp_path, backend, words, code
):
    """A usage error exits 2; a server that nobody answers for, 69 (try again later)."""
    backend = backend.format(port=free_port())  # nothing listens there
    pane = Pane(tmp_path)
    panes.append(pane)
    run_top(pane, tmp_path, "top", "--backend", backend, "x")
    assert pane.exit_code() == code
    assert_terminal_given_back(pane, tmp_path)
    rows = [r for r in pane.rows(joined=True) if r]  # a long message wraps on the main screen
    said = [r for r in rows if r.startswith("inturn: ")]
    assert len(said) == 1 and all(w in said[0] for w in words), rows
    assert EXIT.match(rows[rows.index(said[0]) + 1])  # one line: the next is the exit code


def through(proxy_port: int, url: str) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{proxy_port}" if user else f"127.0.0.1:{proxy_port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("rows_filled", [1, 2])
def test_a_command_line_that_fills_its_rows_keeps_the_output_on_a_row_of_its_own(
    panes, tmp_path, rows_filled
):
    """The screen helper itself: a typed command that ends exactly at the right margin must
    not have the command's first output glued onto it by ``rows(joined=True)``, whatever
    length the test's folders give the command line."""
    pane = Pane(tmp_path)
    panes.append(pane)
    start = "echo 'inturn: said'; : "
    pane.type(start + "x" * (rows_filled * pane.columns - len(PROMPT) - len(start)))
    pane.until(lambda rows: "inturn: said" in rows, "the output")
    assert "inturn: said" in pane.rows(joined=True)


def test_an_error_while_watching_is_one_line_on_the_terminal_given_back(
    place, redis_base, workers, panes, tmp_path
):
    from tcp_proxy import TcpProxy

    target = urlsplit(redis_base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    try:
        holder = Worker("top-cut", "--hold")
        workers.append(holder)
        holder.expect("acquired")
        pane = Pane(tmp_path)
        panes.append(pane)
        url = place.url(base=through(proxy.port, redis_base))
        run_top(pane, tmp_path, "top", "--backend", url, "top-cut")
        pane.until(shows(holder.pid, "holding"), "the holder")
        proxy.close()  # the server is gone: connections cut, new ones refused
        assert pane.exit_code() == 69  # unavailable: try again later
        assert_terminal_given_back(pane, tmp_path)
        shown = pane.rows(joined=True)
        print("\n".join(shown))  # the whole screen in the report if it fails (not cut short)
        said = [r for r in shown if r.startswith("inturn: ")]
        assert len(said) == 1 and "Redis" in said[0]
        assert "Traceback" not in "\n".join(pane.rows(joined=True))
        holder.send()
    finally:
        proxy.close()


def test_a_long_line_name_does_not_push_the_other_columns_away(lines_dir, workers):
    """Names may be kilobytes long: the table of every line cuts them (``...``), so that who
    holds and who waits stays in view on every line; ``inturn status NAME`` and ``--json``
    give the whole name."""
    long_name = "long-" + "n" * 120
    holder = Worker("short", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    assert run_cli("run", long_name, "--", "true").returncode == 0
    shown = run_cli("status").stdout.splitlines()
    (short,) = [row for row in shown if row.startswith("short ")]
    assert f"pid {holder.pid}" in short[:100], shown
    (cut,) = [row for row in shown if row.startswith("long-")]
    assert long_name not in cut and "..." in cut
    assert long_name in run_cli("status", "--json").stdout
    holder.send()


def test_a_narrow_terminal_cuts_the_names_shorter_to_keep_the_counts_in_view(
    lines_dir, workers, panes, tmp_path
):
    """Names are cut at 40 columns; on a terminal of 40 columns that would leave nothing but
    the names: there they are cut shorter, and how many hold and wait stays on every row."""
    holder = Worker("narrow", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    assert run_cli("run", "narrow-" + "n" * 60, "--", "true").returncode == 0
    pane = Pane(tmp_path, columns=40, rows=8)
    panes.append(pane)
    run_top(pane, tmp_path, "top", "--interval", LONG)
    rows = pane.until(lambda rows: any(r.split()[:1] == ["narrow"] for r in rows), "narrow")
    assert rows[1].split()[:3] == ["LINE", "HOLDING", "WAITING"], rows
    (row,) = [r for r in rows if r.split()[:1] == ["narrow"]]
    assert row.split()[:3] == ["narrow", "1", "0"], rows
    (cut,) = [r for r in rows if r.startswith("narrow-")]
    assert cut.split()[1:3] == ["0", "0"] and "..." in cut.split()[0], rows
    assert all(len(r) <= 40 for r in rows)
    pane.keys("q")
    assert pane.exit_code() == 0
    holder.send()
