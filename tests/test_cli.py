"""``inturn run`` and ``inturn status`` as a shell user sees them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import inturn

from conftest import Worker, child_env, inturn_cmd

# A command that reports what it sees, then holds until told to finish (or until stdin closes).
REPORTER = textwrap.dedent(
    """
    import os, signal, sys
    def on_signal(signum, frame):
        print("signal", signum, flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    env = os.environ
    print("running", os.getpid(), os.getppid(), env["INTURN_NAME"], env["INTURN_TICKET"],
          env["INTURN_ABANDONED"], flush=True)
    line = sys.stdin.readline()
    sys.exit(int(line) if line.strip() else 0)
    """
)


def run_inturn(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        inturn_cmd(*args), capture_output=True, text=True, env=child_env(), timeout=60, **kwargs
    )


class Run:
    """``inturn run NAME -- python REPORTER`` with pipes, and stderr on a terminal.

    The terminal gets the live status line, drawn just before inturn goes to sleep in line:
    ``queued()`` reads up to it, so a test knows the order of arrival without guessing.
    """

    def __init__(self, name: str, *options: str) -> None:
        import pty

        self.terminal, child_side = pty.openpty()
        self.proc = subprocess.Popen(
            inturn_cmd("run", *options, name, "--", sys.executable, "-c", REPORTER),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=child_side,
            text=True,
            env=child_env(),
        )
        os.close(child_side)

    def queued(self) -> bytes:
        seen = b""
        while b"waiting for" not in seen:
            chunk = os.read(self.terminal, 1024)
            assert chunk, seen
            seen += chunk
        return seen

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.terminal)

    def running(self) -> list[str]:
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        assert words and words[0] == "running", (
            words,
            self.proc.stderr and self.proc.stderr.read(),
        )
        return words

    def finish(self, code: int = 0) -> int:
        self.proc.communicate(f"{code}\n", timeout=60)
        return self.proc.returncode


def test_run_passes_the_exit_code_and_environment(lines_dir):
    run = Run("env")
    _, _, ppid, name, ticket, abandoned = run.running()
    assert int(ppid) == run.proc.pid  # the command is inturn's direct child
    assert (name, abandoned) == ("env", "0")
    assert int(ticket) >= 1
    assert run.finish(3) == 3
    assert inturn.Line("env").status().holders == ()


def test_no_wait_exits_75_naming_the_holder(lines_dir):
    with inturn.turn("busy"):
        result = run_inturn("run", "--no-wait", "busy", "--", "true")
        assert result.returncode == 75
        assert f"held by pid {os.getpid()}" in result.stderr
        assert run_inturn("run", "-n", "-E", "9", "busy", "--", "true").returncode == 9
    assert run_inturn("run", "--no-wait", "busy", "--", "true").returncode == 0


def test_timeout_exits_75_and_leaves_the_line(lines_dir):
    with inturn.turn("wait"):
        result = run_inturn("run", "--timeout", "0.2", "wait", "--", "true")
        assert result.returncode == 75
        assert "gave up" in result.stderr
        assert inturn.Line("wait").status().waiters == ()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_waiting_leaves_the_line(lines_dir, workers, signum, code):
    holder = Worker("sig", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    run = Run("sig")
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
    assert run.proc.stdout is not None
    assert run.proc.stdout.readline().split() == ["signal", str(int(signal.SIGTERM))]
    assert run.proc.wait(30) == 7  # the command's own exit code
    assert inturn.Line("fwd").status().holders == ()


def test_the_turn_stays_with_the_command_when_inturn_dies(lines_dir, workers):
    run = Run("work")
    run.running()
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    waiter = Worker("work", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")  # still held: by the orphaned command
    assert len(inturn.Line("work").status().holders) == 1
    assert run.proc.stdin is not None
    run.proc.stdin.write("0\n")
    run.proc.stdin.close()  # the command finishes; only then does the turn move
    _, _, abandoned, dead_pid = waiter.acquired()
    assert abandoned == "1" and dead_pid == str(run.proc.pid)
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
    assert run.proc.stdin is not None
    run.proc.stdin.close()


def test_status_lists_holders_then_waiters_and_json_follows_the_schema(lines_dir, workers):
    holder = Worker("show", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("show", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    text = run_inturn("status", "show").stdout
    assert "1 holding, 1 waiting" in text
    assert text.index(str(holder.pid)) < text.index(str(waiter.pid))
    data = json.loads(run_inturn("status", "--json", "show").stdout)
    assert data["name"] == "show"
    assert [t["pid"] for t in data["holders"]] == [holder.pid]
    assert [t["pid"] for t in data["waiters"]] == [waiter.pid]
    first = data["holders"][0]
    assert first["state"] == "holding"
    assert set(first) >= {
        "ticket", "pid", "user", "host", "command", "cwd", "joined_at", "acquired_at",
        "waited_seconds", "held_seconds", "slots",
    }  # fmt: skip
    assert data["waiters"][0]["acquired_at"] is None
    every = json.loads(run_inturn("status", "--json").stdout)
    assert [line["name"] for line in every["lines"]] == ["show"]
    assert "show" in run_inturn("status").stdout
    holder.send()
    waiter.acquired()
    waiter.send()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "x"], "no command given"),
        (["run", "x", "--", "no-such-command-here"], "command not found"),
        (["run", "", "--", "true"], "name is empty"),
        (["run", "--slots", "0", "x", "--", "true"], "slots"),
        (["run", "--timeout", "soon", "x", "--", "true"], "seconds"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(lines_dir, args, message):
    result = run_inturn(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_terminal_shows_a_live_status_line(lines_dir):
    with inturn.turn("tty"):
        run = Run("tty")
        seen = run.queued()
        while b"held by pid" not in seen:
            seen += os.read(run.terminal, 1024)
        assert b"waiting for tty: #2 in line, held by pid %d" % os.getpid() in seen
    run.running()
    assert run.finish() == 0


def test_quiet_or_piped_stderr_stays_silent(lines_dir):
    result = run_inturn("run", "calm", "--", "true")
    assert result.returncode == 0 and result.stderr == ""
