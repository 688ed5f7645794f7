"""``inturn run`` and ``inturn status`` as a shell user sees them."""

from __future__ import annotations

import os
import signal

import pytest

import inturn

from conftest import Run, Worker, run_cli, until_held_by


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_waiting_leaves_the_line(lines_dir, workers, signum, code):
    holder = Worker("sig", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    run = Run("sig", terminal=True)
    run.queued()
    behind = Worker("sig", "--hold")
    workers.append(behind)
    behind.expect("waiting")
    run.proc.send_signal(signum)
    assert run.proc.wait(30) == code
    assert behind.expect("waiting")[2] == "2"  # it moved up behind the holder
    holder.send()
    behind.acquired()
    behind.send()


def test_sigterm_is_passed_on_and_inturn_waits_for_the_command(lines_dir):
    run = Run("fwd")
    run.running()
    run.proc.send_signal(signal.SIGTERM)
    assert run.next_line() == ["signal", str(int(signal.SIGTERM))]
    assert run.wait() == 7  # the command's own exit code
    assert inturn.Line("fwd").status().holders == ()


def test_the_turn_stays_with_the_command_when_inturn_dies(lines_dir, workers):
    run = Run("work")
    command = run.running().pid
    until_held_by(command, "work")  # inturn notes the command that inherited its turn
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    waiter = Worker("work", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")  # still held: by the orphaned command
    assert len(inturn.Line("work").status().holders) == 1
    run.finish(0)  # the command finishes; only then does the turn move
    _, _, abandoned, dead_pid = waiter.acquired()
    assert abandoned == "1" and dead_pid == str(command)  # the command, not the dead inturn
    waiter.send()


def test_close_keeps_the_command_from_inheriting_the_turn(lines_dir, workers):
    run = Run("daemon", "--close")
    run.running()
    waiter = Worker("daemon", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    _, _, abandoned, _ = waiter.acquired()  # freed as soon as inturn died
    assert abandoned == "1"
    waiter.send()
    run.finish(0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "x"], "no command given"),
        (["run", "", "--", "true"], "name is empty"),
        (["run", "--slots", "0", "x", "--", "true"], "slots"),
        (["run", "--timeout", "soon", "x", "--", "true"], "seconds"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(lines_dir, args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_terminal_shows_a_live_status_line(lines_dir):
    with inturn.turn("tty"):
        run = Run("tty", terminal=True)
        seen = run.queued()
        while b"held by pid" not in seen:
            seen += run.queued()
        assert b"waiting for tty: #2 in line, held by pid %d" % os.getpid() in seen
    run.running()
    assert run.finish() == 0


def test_quiet_or_piped_stderr_stays_silent(lines_dir):
    result = run_cli("run", "calm", "--", "true")
    assert result.returncode == 0 and result.stderr == ""
