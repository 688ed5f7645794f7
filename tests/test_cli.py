"""``inturn run`` and ``inturn status`` as a shell user sees them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    Run,
    Worker,
    child_env,
    free_port,
    inturn_cmd,
    missing_component,
    one_line_error,
    run_cli,
    until,
    until_held_by,
    without_inturn_settings,
)


def asleep_alone_in_line(pid: int, name: str) -> None:
    """Until ``pid`` waits in line ``name`` asleep in the kernel, on its only thread: without
    a status line to draw, ``inturn run`` sleeps for its turn on its main thread."""
    until(lambda: any(t.pid == pid for t in inturn.Line(name).status().waiters), "the run in line")

    def asleep() -> bool:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/wchan") as wchan:
            where = wchan.read()
        return state == "S" and ("lock" in where or where == "0")  # "0": not shown here

    until(asleep, "the run asleep in the lock")
    assert os.listdir(f"/proc/{pid}/task") == [str(pid)]


@pytest.mark.parametrize("terminal", [True, False], ids=["status-line", "no-terminal"])
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 143)]
)
def test_a_signal_while_waiting_leaves_the_line(lines_dir, workers, signum, code, terminal):
    """With a status line, inturn waits in a helper thread and the signal cancels the wait;
    without one, it sleeps on its main thread and the signal handler raises out of the sleep.
    Once out of the line, inturn dies of SIGINT (a shell's script stops), exits 143 on
    SIGTERM."""
    holder = Worker("sig", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    run = Run("sig", terminal=terminal)
    if terminal:
        run.queued()
    else:
        asleep_alone_in_line(run.pid, "sig")
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
        (
            ["run", "-s", "nightly", "--", "true"],
            "'nightly' (a shared turn, flock's -s, is --shared",
        ),
        (["run", "--timeout", "soon", "x", "--", "true"], "seconds"),
        (["frobnicate"], "invalid choice"),
        (["run", "-n", "-w", "5", "x", "--", "true"], "-w/--timeout/--wait: not allowed with"),
        (["run", "--newest-wins", "--max-waiting", "1", "x", "--", "true"], "not allowed with"),
        (["run", "-w", "-5m", "x", "--", "true"], "not a duration: '-5m'"),
        (["run", "-g", "-1", "x", "--", "true"], "the grace must be 0 or more seconds"),
        (["wait", "--timeout", "-.5", "x"], "the timeout must be 0 or more seconds, not -.5"),
        (["run", "--bogus", "x", "--", "true"], "see 'inturn run --help'"),
        (["wait"], "the following arguments are required: NAME; see 'inturn wait --help'"),
        ([], "see 'inturn --help'"),
        (["forget", ""], "name is empty"),
        (["forget", "--machine", "x", ""], "name is empty"),
        (["status", ""], "name is empty"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(lines_dir, args, message):
    """One ``inturn: ...`` line, argparse's own refusals too (not its usage block)."""
    one_line_error(run_cli(*args), message)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--version"]])
def test_help_that_cannot_be_written_is_an_error_not_a_success(lines_dir, args):
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            inturn_cmd(*args), stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert result.returncode == 2
    assert result.stderr == (
        "inturn: cannot write the output: No space left on device (free some space and try again)\n"
    )


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


# --------------------------------------------------------------------------- the command itself


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda d: "no-such-command-here", 127, ["command not found: no-such-command-here"]),
        (lambda d: str(d / "nowhere" / "x"), 127, ["command not found"]),
        (lambda d: "/tmp", 126, ["/tmp is a folder, not a command"]),
        (lambda d: str(d), 126, ["is a folder, not a command"]),
        (lambda d: plain_file(d / "plain", 0o644), 126, ["not executable", "permissions"]),
        (lambda d: f"{plain_file(d / 'script', 0o755)}/", 126, ["is a file: drop the last /"]),
        (lambda d: "", 127, ["command not found: '' (is it installed"]),
        (lambda d: "two words", 127, ["command not found: 'two words' (is it installed"]),
    ],
    ids=[
        "not-on-path",
        "no-such-file",
        "tmp",
        "folder",
        "not-executable",
        "trailing-slash",
        "empty",
        "spaced",
    ],
)
def test_a_command_that_cannot_run_exits_as_shells_do_before_joining(
    lines_dir, tmp_path, make, code, words
):
    """127 not found, 126 not runnable, as env(1), timeout(1) and shells say; looked up before
    the wait, so the line is not even joined; -q does not hide it (it is an error)."""
    for quiet in ([], ["-q"]):
        result = run_cli("run", *quiet, "cmd", "--", make(tmp_path), "arg")
        assert result.returncode == code, result
        assert result.stdout == ""
        said = result.stderr.splitlines()
        assert len(said) == 1 and said[0].startswith("inturn: "), said
        assert all(w in said[0] for w in words), said
    assert not lines_dir.exists() or run_cli("status", "--names").stdout == ""


@pytest.mark.parametrize(
    ("address", "client", "extra"),
    [
        ("postgresql://127.0.0.1:1/x", "psycopg", "inturn[postgres]"),
        ("redis://127.0.0.1:1/0", "redis", "inturn[redis]"),
    ],
)
@pytest.mark.parametrize("args", [["run", "x", "--", "true"], ["status", "x"]])
def test_a_server_backend_without_its_client_says_which_extra_to_install(
    lines_dir, address, client, extra, args
):
    """Where the server's client is not installed (here blocked from importing), one line
    names the extra that brings it, before anything is opened; the API raises it too."""
    argv = [args[0], "--backend", address, *args[1:]]
    probe = (
        f"import sys; sys.modules[{client!r}] = None; import inturn; from inturn.cli import main\n"
        f"try:\n    inturn.Line('x', backend={address!r})\n"
        "except inturn.UsageError as exc:\n    print(exc, file=sys.stderr)\n"
        f"sys.exit(main({argv!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), timeout=60
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 2 and all(f"pip install '{extra}'" in line for line in lines), lines


def test_a_redis_client_too_old_is_named_with_the_extra_that_brings_a_new_one(lines_dir, tmp_path):
    """redis-py 4, pinned by another package, is a client inturn cannot use: one line says
    so, with the extra to install, rather than blaming the URL for an option it lacks."""
    old = tmp_path / "old"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            old,
            "redis==4.6.0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    address = "redis://127.0.0.1:1/0"
    probe = (
        "import sys, inturn; from inturn.cli import main\n"
        f"try:\n    inturn.Line('x', backend={address!r})\n"
        "except inturn.UsageError as exc:\n    print(exc, file=sys.stderr)\n"
        f"sys.exit(main(['status', '--backend', {address!r}, 'x']))"
    )
    env = child_env(PYTHONPATH=os.pathsep.join([str(old), child_env().get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 2, lines
    for line in lines:
        assert "needs redis-py 5 or later (redis-py 4.6.0 is installed)" in line, line
        assert "pip install 'inturn[redis]'" in line, line


def test_run_imports_only_what_it_needs(lines_dir):
    """Start-up: a plain ``inturn run`` on the local backend starts its command without
    ``subprocess`` (it uses ``posix_spawn``), ``shutil`` (PATH is searched with ``os``, and
    the parser measures the terminal only to show help), ``typing`` (the public records are
    made without it), ``getpass`` (the user is found without it), ``json`` (a ticket's
    header is encoded without it), ``weakref`` or ``struct`` (what needs them imports them
    when used), whose imports cost every start."""
    unwanted = (
        "{'subprocess', 'shutil', 'typing', 'getpass', 'inturn.messages', 'json', 'weakref', "
        "'struct'}"
    )
    probe = (
        "import sys; from inturn.cli import main; code = main(['run', 'probe', '--', 'true']); "
        f"print(code, *sorted({unwanted} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", ""), result


def test_the_parser_builds_only_the_command_asked_for():
    """One command's parser for its own command line; every one for help, for a word that
    names no command (its error lists them all) and for completion scripts."""
    from inturn.cli.parser import build_parser

    def commands(words: list[str]) -> list[str]:
        action = build_parser(words)._subparsers._group_actions[0]
        return list(action.choices)

    every = ["run", "status", "top", "forget", "wait", "completion", "send"]
    assert commands(["run", "x", "--", "true"]) == ["run"]
    assert commands(["status"]) == ["status"]
    for words in ([], ["--help"], ["rnu"], ["completion", "bash"]):
        assert commands(words) == every, words
    result = run_cli("rnu")
    assert result.returncode == 2 and "choose from 'run', 'status', 'top'" in result.stderr


def test_a_command_is_looked_up_on_path_as_which_does(lines_dir, tmp_path):
    """The first executable file of that name on PATH: a folder or a file that cannot be run,
    earlier on PATH, is passed over. A PATH with only a file that cannot be run is 126, as
    ``env(1)`` and shells say (permission denied); one with no such file, 127."""
    early, late = tmp_path / "early", tmp_path / "late"
    (early / "tool").mkdir(parents=True)
    plain_file(early / "tool2", 0o644)
    late.mkdir()
    plain_file(late / "tool", 0o755, "#!/bin/sh\necho late tool\n")
    plain_file(late / "tool2", 0o755, "#!/bin/sh\necho late tool2\n")
    path = f"{early}{os.pathsep}{late}{os.pathsep}{os.environ['PATH']}"
    for program in ("tool", "tool2"):
        result = run_cli("run", "path", "--", program, PATH=path)
        assert (result.returncode, result.stdout) == (0, f"late {program}\n"), result
    result = run_cli("run", "path", "--", "tool2", PATH=f"{early}{os.pathsep}/nowhere")
    assert result.returncode == 126, result
    tool2 = early / "tool2"
    assert result.stderr == f"inturn: command is not executable: {tool2} (check its permissions)\n"
    result = run_cli("run", "path", "--", "tool3", PATH=f"{early}{os.pathsep}/nowhere")
    assert result.returncode == 127 and "command not found: tool3" in result.stderr, result


def test_a_script_whose_interpreter_is_missing_exits_127_and_frees_the_turn(lines_dir, tmp_path):
    script = plain_file(tmp_path / "script", 0o755, "#!/nowhere/sh\n")
    result = run_cli("run", "exec", "--", str(script))
    assert result.returncode == 127, result
    said = result.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith(f"inturn: cannot run {script}: "), said
    assert "its #! interpreter was not found" in said[0], said
    assert inturn.Line("exec").status().holders == ()


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_an_executable_file_without_a_hash_bang_runs_as_a_sh_script(backend, request, tmp_path):
    """As ``execvp(3)``, ``env(1)``, ``timeout(1)`` and ``flock(1)`` do, a file that is neither a
    program nor a script with ``#!`` runs under ``/bin/sh``, with its arguments, in the turn
    (on Redis the command starts bound to inturn, through a sentinel started anew)."""
    request.getfixturevalue("lines_dir" if backend == "local" else "place")
    script = plain_file(tmp_path / "script", 0o755, 'echo "$0 $1 $INTURN_NAME"; exit 3\n')
    result = run_cli("run", "exec", "--", str(script), "word")
    assert (result.returncode, result.stdout, result.stderr) == (3, f"{script} word exec\n", "")
    assert inturn.Line("exec").status().holders == ()


def plain_file(path, mode: int, text: str = "data\n"):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_run_without_a_command_is_one_line_pointing_at_runs_help(lines_dir):
    result = run_cli("run", "demo")
    said = one_line_error(result, "see 'inturn run --help'")
    assert said.startswith("inturn: no command given") and result.stdout == ""


@pytest.mark.parametrize("option", ["-n", "-w5", "--timeout=5", "--quiet"])
def test_an_option_after_the_name_is_explained(lines_dir, option):
    result = run_cli("run", "demo", option, "echo", "hi")
    assert result.returncode == 2 and result.stdout == ""
    said = one_line_error(result)
    assert said.startswith(f"inturn: {option} comes after the line's name")
    assert f"options go before NAME (inturn run {option} demo -- ...)" in said


@pytest.mark.parametrize(
    ("words", "advice"),
    [
        (["-w", "5", "echo"], "inturn run -w 5 demo -- ..."),
        (["-c", "echo hi"], "inturn run -c 'echo hi' demo)"),
        (["--timeout", "1m", "--", "echo"], "inturn run --timeout 1m demo -- ..."),
    ],
)
def test_an_option_with_its_value_after_the_name_is_moved_whole(lines_dir, words, advice):
    """The advice, followed, runs: the option's value goes with it (not the name after it)."""
    result = run_cli("run", "demo", *words)
    assert result.returncode == 2 and result.stdout == ""
    said = result.stderr.splitlines()[-1]
    assert f"options go before NAME ({advice}" in said, said


@pytest.mark.parametrize(
    ("words", "advice"),
    [
        (
            ["--data", '{"line": 12}', "notes.txt"],
            "inturn send --data '{\"line\": 12}' demo -- ...)",
        ),
        (["-w", "30", "--", "notes.txt"], "inturn send -w 30 demo -- ...)"),
        (["-v", "notes.txt"], "inturn send -v demo -- ...)"),
    ],
)
def test_an_option_of_send_after_the_name_is_moved_with_its_value(lines_dir, words, advice):
    """As for run: followed, the advice sends (without the value, ``--data demo`` would take
    the line's name for the data)."""
    result = run_cli("send", "demo", *words)
    assert result.returncode == 2 and result.stdout == ""
    said = one_line_error(result)
    assert f"options go before NAME ({advice}" in said, said


@pytest.mark.parametrize(
    "words",
    [["run", "--bogus", "x", "--", "true"], ["wait", "-n", "x"], ["status", "--nope"]],
)
def test_an_unknown_option_is_told_by_its_commands_parser(lines_dir, words):
    """One ``inturn: ...`` line, as every error, pointing at the help of the command it was
    given to, not that of ``inturn`` itself, which names no option of any command."""
    result = run_cli(*words)
    assert result.stdout == ""
    said = one_line_error(result)
    assert said == (
        f"inturn: unrecognized arguments: {words[1]}; see 'inturn {words[0]} --help'"
    ), said


@pytest.mark.parametrize("option", ["--dir", "--backend"])
def test_an_empty_place_is_refused_not_taken_for_the_default(lines_dir, option):
    """``--dir "$UNSET"``: an option given beats the environment, so an empty one is an
    error, not a silent fall back to ``INTURN_DIR`` or the default."""
    result = run_cli("status", option, "", "x")
    assert result.returncode == 2 and result.stdout == ""
    said = one_line_error(result)
    assert said.startswith(f"inturn: argument {option}: it is empty"), said


def test_a_released_turn_cannot_be_entered_again(lines_dir):
    held = inturn.Line("again").acquire()
    held.release()
    with pytest.raises(inturn.InturnError, match="already released"), held:
        raise AssertionError("the block ran outside any turn")


def test_after_double_dash_a_word_like_an_option_is_the_command(lines_dir):
    result = run_cli("run", "demo", "--", "-n", "echo")
    assert result.returncode == 127
    assert result.stderr.startswith("inturn: command not found: -n")


def test_dash_c_runs_a_command_string_with_sh(lines_dir, workers):
    script = 'echo "$INTURN_NAME" $((1 + 2)); read go; exit 4'
    run = subprocess.Popen(
        inturn_cmd("run", "-c", script, "cname"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert run.stdout is not None and run.stdin is not None
    assert run.stdout.readline() == "cname 3\n"
    row = run_cli("status", "cname").stdout.splitlines()[2]
    assert row.endswith("/bin/sh -c " + shlex.quote(script)), row  # as it would be typed
    run.stdin.write("\n")
    run.stdin.close()
    assert run.wait(REPORT_TIMEOUT) == 4
    assert run.stderr is not None and run.stderr.read() == ""
    run.stdout.close()
    run.stderr.close()
    both = run_cli("run", "-c", "true", "cname", "--", "true")
    assert both.returncode == 2 and "not both" in both.stderr.splitlines()[-1]


# --------------------------------------------------------------------------- what it says


def test_quiet_says_nothing_when_busy_timed_out_abandoned_or_replaced(lines_dir, workers):
    holder = Worker("calm", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    for quiet, silent in (([], False), (["-q"], True)):
        busy = run_cli("run", *quiet, "-n", "calm", "--", "echo", "ran")
        timed = run_cli("run", *quiet, "-w", "300ms", "calm", "--", "echo", "ran")
        assert busy.returncode == timed.returncode == 75
        assert busy.stdout == timed.stdout == ""
        if silent:
            assert busy.stderr == timed.stderr == ""
        else:
            busy_said, timed_said = busy.stderr.splitlines(), timed.stderr.splitlines()
            assert len(busy_said) == len(timed_said) == 1
            assert busy_said[0].startswith(f"inturn: line 'calm' is busy: held by pid {holder.pid}")
            assert timed_said[0].startswith(
                f"inturn: gave up waiting for line 'calm' after 0.3s; held by pid {holder.pid} ("
            )
    replaced = Run("calm", "-q", "--newest-wins")
    until(lambda: len(inturn.Line("calm").status().waiters) == 1, "the first run to wait")
    newer = Run("calm", "--newest-wins")
    assert replaced.wait() == 77
    assert replaced.errors() == "" and replaced.next_line() == []
    holder.proc.kill()  # dies holding: the next holder would be told, but not with -q
    holder.proc.wait()
    newer.running()
    assert newer.finish(0) == 0
    assert "died holding" in newer.errors()
    dead = Worker("calm", "--hold")
    workers.append(dead)
    dead.expect("acquired")
    dead.proc.kill()
    dead.proc.wait()
    quiet = run_cli("run", "-q", "calm", "--", "echo", "ran")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "ran\n", "")


def test_max_waiting_is_told_in_the_commands_own_words(lines_dir, workers):
    """The refusal names the limit without the Python spelling (``max_waiting=``), which a
    shell user never typed."""
    holder = Worker("crowded", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiting = Run("crowded", terminal=True)
    waiting.queued()
    refused = run_cli("run", "--max-waiting", "1", "crowded", "--", "echo", "ran")
    assert (refused.returncode, refused.stdout) == (75, ""), refused
    assert refused.stderr == (
        "inturn: line 'crowded' already has 1 waiting (at most 1 may wait): not joining\n"
    )


def test_flocks_spellings_of_the_options_are_taken(lines_dir, workers):
    """A command moved from ``flock(1)`` keeps its options: ``--nonblock``, ``--nb``,
    ``--wait`` and ``-x``/``-e``/``--exclusive`` mean what they mean there."""
    holder = Worker("flocked", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    for words in (["--nonblock"], ["--nb"], ["--wait", "0"], ["-x", "-n"], ["--exclusive", "-n"]):
        busy = run_cli("run", *words, "flocked", "--", "echo", "ran")
        assert (busy.returncode, busy.stdout) == (75, ""), (words, busy)
        assert "is busy: held by" in busy.stderr or "gave up" in busy.stderr, (words, busy)
    holder.send()
    holder.proc.wait()
    alone = run_cli("run", "-e", "flocked", "--", "sh", "-c", "echo $INTURN_NAME")
    assert (alone.returncode, alone.stdout) == (0, "flocked\n"), alone
    both = run_cli("run", "-x", "--shared", "flocked", "--", "true")
    assert both.returncode == 2 and "not allowed with" in both.stderr, both


def test_verbose_says_the_ticket_the_wait_and_an_abandoned_turn(lines_dir, workers):
    first = run_cli("run", "-v", "loud", "--", "true")
    assert first.returncode == 0
    assert re.fullmatch(r"inturn: ticket 1 of line 'loud', after \d+\.\ds in line\n", first.stderr)
    dead = Worker("loud", "--hold")
    workers.append(dead)
    dead.expect("acquired")
    dead.proc.kill()
    dead.proc.wait()
    second = run_cli("run", "--verbose", "loud", "--", "true")
    said = second.stderr.splitlines()
    assert said[0].startswith(f"inturn: pid {dead.pid} (")
    assert said[0].endswith(" died holding line 'loud'; it is yours now")
    assert re.fullmatch(
        r"inturn: ticket 3 of line 'loud', after \d+\.\ds in line; the previous holder died "
        r"holding it",
        said[1],
    ), said
    assert len(said) == 2
    assert run_cli("run", "-q", "-v", "loud", "--", "true").stderr == ""  # -q wins


@pytest.mark.parametrize(
    ("given", "shown"), [("300ms", "0.3s"), ("0.25", "0.2s"), ("1s", "1.0s"), (".5s", "0.5s")]
)
def test_a_timeout_takes_seconds_or_units(lines_dir, given, shown):
    with inturn.turn("units"):
        result = run_cli("run", "-w", given, "units", "--", "true")
    assert result.returncode == 75
    assert f"gave up waiting for line 'units' after {shown};" in result.stderr


@pytest.mark.parametrize("given", ["90", "10m", "1h30m", "2d", "1m30s", "1h0m0.5s"])
def test_long_durations_are_taken_where_seconds_are(lines_dir, given):
    for args in (
        ["run", "-w", given, "long", "--", "true"],
        ["run", "--grace", given, "long", "--", "true"],
        ["wait", "-w", given, "long"],
        ["status", "--watch", "--interval", given, "long"],
    ):
        result = run_cli(*args)
        assert result.returncode == 0, (args, result)


def test_a_turn_taken_during_a_look_or_on_a_clock_ahead_shows_no_negative_time():
    """A server's line is read after the look starts, and its times may come from another
    host's clock: a time a little ahead of ours shows as none, never as ``-0.1s``."""
    from inturn.cli.display import duration

    assert [duration(s) for s in (-1.04, -0.01, 0.0, 2.5)] == ["0.0s", "0.0s", "0.0s", "2.5s"]


def test_a_turn_held_for_days_is_told_in_days():
    """A single instance holds its line for weeks: its age is told in days and hours, as a
    duration is given (``2d``), not as hundreds of hours."""
    from inturn.cli.display import duration

    day = 86400.0
    assert [duration(s) for s in (day - 1, day, 3 * day + 4 * 3600 + 59, 400 * day)] == [
        "23h59m",
        "1d00h",
        "3d04h",
        "400d00h",
    ]


HELD_DAYS_AGO = """
import sys, time, inturn
real = time.time
time.time = lambda: real() - 2 * 86400  # the turn is taken two days ago, on this clock
with inturn.turn("old"):
    time.time = real
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_busy_names_the_day_of_a_turn_taken_on_another(lines_dir):
    """``since 14:02:11`` alone would pass a turn held since the day before yesterday for one
    taken this afternoon: the date is given when it is not today's."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HELD_DAYS_AGO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "holding\n"
        result = run_cli("run", "-n", "old", "--", "true")
        taken = time.strftime("%Y-%m-%d", time.localtime(time.time() - 2 * 86400))
        assert result.returncode == 75 and f" since {taken} " in result.stderr, result.stderr
        assert "  2d00h  " in run_cli("status", "old").stdout
    finally:
        holder.stdin.close()
        assert holder.wait(REPORT_TIMEOUT) == 0


@pytest.mark.parametrize("given", ["10x", "30m1h", "1h30", "m", "-5", "1e400", "nan", ""])
def test_a_bad_duration_is_one_line_naming_it(lines_dir, given):
    result = run_cli("run", "-w", given, "bad", "--", "true")
    assert result.returncode == 2 and result.stdout == ""
    said = one_line_error(result)
    assert said.startswith("inturn: argument -w/--timeout/--wait: "), said
    assert repr(given) in said or f"not {given};" in said, said


# --------------------------------------------------------------------------- status


@pytest.fixture(params=["local", "postgresql"])
def inheriting(request: pytest.FixtureRequest) -> str:
    """A backend whose turn the command of inturn run inherits (on Redis it cannot: the
    command dies with inturn there, see test_redis.py)."""
    request.getfixturevalue("lines_dir" if request.param == "local" else "pg_url")
    return str(request.param)


def test_status_names_the_command_that_holds_after_inturn_is_killed(inheriting):
    run = Run("orphan")
    command = run.running().pid
    until_held_by(command, "orphan")
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    row = run_cli("status", "orphan").stdout.splitlines()[2].split()
    assert row[2] == "holding" and row[4] == str(command), row
    shown = json.loads(run_cli("status", "--json", "orphan").stdout)
    assert [t["pid"] for t in shown["holders"]] == [command]
    assert os.path.basename(shown["holders"][0]["command"][0]) == os.path.basename(sys.executable)
    overview = run_cli("status").stdout
    assert f"pid {command} (" in overview and f"pid {run.pid} " not in overview
    waiter = Run("orphan", "--verbose")
    until(lambda: len(inturn.Line("orphan").status().waiters) == 1, "the next run to wait")
    run.finish(0)
    waiter.running()
    assert waiter.finish(0) == 0
    notes = waiter.errors().splitlines()
    assert notes[0].startswith(f"inturn: pid {command} (") and "died holding" in notes[0]


def test_status_looks_without_creating_anything(tmp_path, monkeypatch):
    monkeypatch.delenv("INTURN_BACKEND", raising=False)
    missing = tmp_path / "nonexistent" / "other"
    for args in (
        ["status"],
        ["status", "x"],
        ["status", "--json"],
        ["status", "--json", "x"],
        ["status", "--names"],
        ["top"],
        ["top", "x"],
        ["wait", "x"],
    ):
        result = run_cli(*args, "--dir", str(missing))
        told = f"inturn: no line 'x' in {missing}: nobody has used it (inturn status lists "
        told += "the lines)\n"
        asked_about_x = "x" in args and args[0] != "wait"
        assert result.returncode == 0, (args, result)
        assert result.stderr == (told if asked_about_x else ""), (args, result)
    assert run_cli("status", "--dir", str(missing)).stdout == f"no lines in {missing}\n"
    assert run_cli("status", "--dir", str(missing), "x").stdout == (
        "x: free (nobody holds or waits)\n"
    )
    assert not (tmp_path / "nonexistent").exists()


def test_status_of_a_line_nobody_has_used_says_so_on_stderr(lines_dir):
    """A typo in a name must not pass for a free line: the line is free (exit 0, the same
    output), and stderr says that no such line exists; a line used before and empty now is
    free without a word."""
    run_cli("run", "deploy", "--", "true")
    typo = run_cli("status", "deplyo")
    assert (typo.returncode, typo.stdout) == (0, "deplyo: free (nobody holds or waits)\n")
    assert typo.stderr == (
        f"inturn: no line 'deplyo' in {lines_dir}: nobody has used it (inturn status lists "
        "the lines)\n"
    )
    used = run_cli("status", "deploy")
    assert (used.returncode, used.stdout, used.stderr) == (
        0,
        "deploy: free (nobody holds or waits)\n",
        "",
    )


def test_run_makes_the_lines_folder_but_never_its_missing_parents(tmp_path, monkeypatch):
    monkeypatch.delenv("INTURN_BACKEND", raising=False)
    typo = tmp_path / "typo" / "deep" / "dir"
    result = run_cli("run", "--dir", str(typo), "x", "--", "echo", "ran")
    line = one_line_error(result, str(typo), f"its parent {typo.parent} does not exist")
    assert "ran" not in result.stdout and line
    assert not (tmp_path / "typo").exists()
    fresh = tmp_path / "lines"
    made = run_cli("run", "--dir", str(fresh), "x", "--", "echo", "ran")
    assert (made.returncode, made.stdout) == (0, "ran\n")
    assert fresh.is_dir() and oct(fresh.stat().st_mode & 0o777) == "0o700"


def test_a_lines_folder_that_can_be_read_but_not_written_can_be_looked_at(tmp_path, workers):
    """A read-only view of a lines folder (a read-only bind mount: no write access even for
    root): status, --json, --names and top read it and exit 0; run says why it cannot."""
    if os.geteuid() != 0:
        missing_component("a read-only mount needs root", "run the tests as root")
    writable, view = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    view.mkdir()
    env = child_env(INTURN_DIR=str(writable / "lines"))
    assert run_cli("run", "empty", "--", "true", env=env).returncode == 0
    holder = Worker("held", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(writable), str(view)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if mounted.returncode != 0:
        missing_component(f"cannot bind-mount: {mounted.stderr.strip()}", "run with CAP_SYS_ADMIN")
    try:
        lines = str(view / "lines")
        assert not os.access(lines, os.W_OK)
        every = run_cli("status", "--dir", lines)
        assert every.returncode == 0 and every.stderr == "", every
        assert [r.split()[0] for r in every.stdout.splitlines()] == ["LINE", "empty", "held"]
        assert f"pid {holder.pid} " in every.stdout
        one = run_cli("status", "--json", "--dir", lines, "held")
        assert one.returncode == 0 and one.stderr == ""
        assert [t["pid"] for t in json.loads(one.stdout)["holders"]] == [holder.pid]
        names = run_cli("status", "--names", "--dir", lines)
        assert (names.returncode, names.stdout) == (0, "empty\nheld\n")
        piped = run_cli("top", "--dir", lines, "held")
        assert piped.returncode == 0 and f" {holder.pid} " in piped.stdout
        refused = run_cli("run", "--dir", lines, "held", "--", "true")
        one_line_error(refused, "read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(view)], timeout=60, check=False)
    holder.send()


def test_another_user_who_may_read_a_lines_folder_but_not_write_it_sees_the_line(
    users, shared_dir, workers
):
    """Another user's status of a folder it may read but not write (as ``python -m inturn``:
    the test's console script is not theirs to run): exit 0, the holder shown."""
    lines = shared_dir / "lines"
    env = child_env(INTURN_DIR=str(lines))
    holder = Worker("held", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    for path in [lines, *lines.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by all, writable by root only
    alice = users.alice
    looked = alice.run(alice.inturn("status", "--dir", str(lines), "held"))
    assert looked.returncode == 0 and looked.stderr == "", looked
    row = looked.stdout.splitlines()[2].split()
    assert row[2] == "holding" and row[4] == str(holder.pid), looked.stdout
    every = alice.run(alice.inturn("status", "--json", "--dir", str(lines)))
    assert every.returncode == 0 and every.stderr == "", every
    assert [t["pid"] for t in json.loads(every.stdout)["lines"][0]["holders"]] == [holder.pid]
    refused = alice.run(alice.inturn("run", "--dir", str(lines), "held", "--", "true"))
    one_line_error(refused)
    holder.send()


# --------------------------------------------------------------------------- where lines are


def test_explicit_options_beat_the_environment(tmp_path, monkeypatch):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    mine, machine, other = tmp_path / "mine", tmp_path / "machine", tmp_path / "other"
    monkeypatch.setenv("INTURN_BACKEND", nowhere)
    monkeypatch.setenv("INTURN_DIR", str(other))
    monkeypatch.setenv("INTURN_MACHINE_DIR", str(machine))
    ran = run_cli("run", "--dir", str(mine), "x", "--", "echo", "ran")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "ran\n", "")
    shown = json.loads(run_cli("status", "--json", "--dir", str(mine), "x").stdout)
    assert (shown["scope"], shown["where"]) == ("user", str(mine / "x"))
    monkeypatch.delenv("INTURN_BACKEND")
    assert run_cli("run", "--machine", "y", "--", "true").returncode == 0
    shown = json.loads(run_cli("status", "--json", "--machine", "y").stdout)
    assert (shown["scope"], shown["where"]) == ("machine", str(machine / "inturn:y:"))
    assert not other.exists()  # INTURN_DIR is for the user's own lines only
    monkeypatch.setenv("INTURN_BACKEND", nowhere)  # beats INTURN_DIR; --backend local beats it
    assert run_cli("run", "--backend", "local", "z", "--", "true").returncode == 0
    shown = json.loads(run_cli("status", "--json", "--backend", "local", "z").stdout)
    assert (shown["scope"], shown["where"]) == ("user", str(other / "z"))
    monkeypatch.delenv("INTURN_BACKEND")
    both = run_cli("status", "--dir", str(mine), "--backend", nowhere, "x")
    one_line_error(both, "--dir and --backend")
    monkeypatch.setenv("INTURN_BACKEND", nowhere)
    unreachable = run_cli("status", "x")  # the environment still counts when nothing beats it
    one_line_error(unreachable, "cannot reach Redis", code=69)


def test_the_default_folder_is_the_same_from_cron_a_service_and_a_login_shell(tmp_path):
    """No INTURN_DIR: cron and services have no XDG_RUNTIME_DIR (and maybe no TMPDIR), a login
    shell has both; runs under one name must still share one line, or both would hold it."""
    name = f"everywhere-{uuid.uuid4().hex}"
    cron = without_inturn_settings(child_env())
    for variable in ("XDG_RUNTIME_DIR", "TMPDIR"):
        cron.pop(variable, None)
    runtime, temp = tmp_path / "runtime", tmp_path / "tmp"
    runtime.mkdir(mode=0o700)
    temp.mkdir()
    shell = dict(cron, XDG_RUNTIME_DIR=str(runtime), TMPDIR=str(temp))
    holder = subprocess.Popen(
        inturn_cmd("run", name, "--", "sh", "-c", "echo held; read _"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cron,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        busy = run_cli("run", "-n", name, "--", "true", env=shell)
        assert busy.returncode == 75 and "is busy: held by pid" in busy.stderr, busy
        shown = json.loads(run_cli("status", "--json", name, env=shell).stdout)
        mine = os.path.join(os.path.realpath("/tmp"), f"inturn-{os.getuid()}")
        assert shown["where"] == os.path.join(mine, name)
        assert not any(runtime.iterdir()) and not any(temp.iterdir())
    finally:
        holder.communicate("\n", timeout=REPORT_TIMEOUT)
        run_cli("forget", name, env=cron)
    assert holder.returncode == 0


# Run in a mount namespace of its own: imports what a turn needs while this checkout is still
# in sight (it may lie under /tmp), then takes turns on the default folders with /tmp as it is
# and with /tmp replaced as systemd's PrivateTmp=yes replaces it; prints the warnings of each.
PRIVATE_TMP = """
import json, subprocess, sys, warnings
import inturn
name, private, warm = sys.argv[1:]
inturn.Line("warm-up", directory=warm).acquire().release()
seen = []
for step in ("shared", "private"):
    if step == "private":
        subprocess.run(["mount", "--bind", private, "/tmp"], check=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scope in ("user", "machine"):
            line = inturn.Line(name, scope=scope)
            line.acquire().release()
            line.forget()
    seen.append([str(w.message) for w in caught])
print(json.dumps(seen))
"""


def test_a_service_with_its_own_tmp_is_warned_that_its_lines_are_its_own(tmp_path):
    """systemd's PrivateTmp=yes gives a service a /tmp of its own, and with it lines of its
    own under the default folders: runs outside do not take turns with it. Say so."""
    private = tmp_path / "systemd-private-0123456789abcdef-inturn.service-AbCdEf" / "tmp"
    private.mkdir(parents=True)
    private.chmod(0o1777)  # as systemd makes it
    warm = tmp_path / "warm"
    env = without_inturn_settings(child_env(INVOCATION_ID="0123456789abcdef0123456789abcdef"))
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", PRIVATE_TMP]
    name = f"private-tmp-{uuid.uuid4().hex}"
    ran = subprocess.run(
        [*argv, name, str(private), str(warm)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    if ran.returncode != 0 and "unshare" in ran.stderr:
        missing_component(f"cannot make a mount namespace: {ran.stderr.strip()}", "run as root")
    assert ran.returncode == 0, ran
    shared, own = json.loads(ran.stdout)
    assert not [m for m in shared if "PrivateTmp" in m], shared
    assert [m for m in own if "PrivateTmp" in m] == [
        "/tmp is this service's own (systemd's PrivateTmp=yes), and so are the lines in it: "
        "runs outside the service under the same names do not take turns with it; give them "
        "all one INTURN_DIR (INTURN_MACHINE_DIR for --machine) outside /tmp"
    ], own


# --------------------------------------------------------------------------- tables


def cells(text: str) -> int:
    """Terminal columns of text made of ASCII and CJK characters only (two columns each)."""
    return sum(2 if ord(c) >= 0x1100 else 1 for c in text)


def column_starts(row: str) -> list[int]:
    """Where each cell of a table row starts, in terminal columns (cells are 2+ spaces apart)."""
    return [cells(row[: m.start()]) for m in re.finditer(r"\S+(?: \S+)*", row)]


def test_a_long_command_does_not_push_how_long_it_held_off_the_row(lines_dir):
    """The table of every line ends with the holder, whose command may be long: how long it
    has held comes before it, within an 80-column terminal's reach."""
    held = inturn.Line("long-command").acquire(command=("build", "x" * 100))
    overview = run_cli("status").stdout.splitlines()
    assert overview[0].split() == ["LINE", "HOLDING", "WAITING", "FOR", "HELD", "BY"], overview
    (row,) = [row for row in overview if row.startswith("long-command ")]
    assert re.fullmatch(r"long-command +1 +0 +\d+\.\ds", row[:80].split("  pid ")[0]), row
    held.release()


def test_status_aligns_wide_characters_and_quotes_the_command(lines_dir):
    command = ("表示する", "two words", "it's", "$HOME")
    held = [inturn.Line(name).acquire(command=command) for name in ("日本語の列", "ab")]
    overview = run_cli("status").stdout.splitlines()
    header = column_starts(overview[0])
    assert overview[0].split("  ")[0] == "LINE" and len(header) == 5, overview
    # Every column starts where its title does, in every row.
    assert [column_starts(row) for row in overview[1:]] == [header, header], overview
    assert "表示する 'two words' 'it'\"'\"'s' '$HOME'" in overview[1]  # HELD BY
    table = run_cli("status", "日本語の列").stdout.splitlines()
    assert column_starts(table[2]) == column_starts(table[1]), table
    assert shlex.split(table[2].split("  ")[-1]) == list(command)  # CMD, as one would type it
    for turn in held:
        turn.release()


def test_the_command_ends_without_teardown_yet_loses_no_output(lines_dir):
    """The console script ends at once after its work (no module teardown), but only once
    what it wrote is flushed: a long output through a pipe arrives whole, exit code kept."""
    from inturn.cli.completion import script
    from inturn.cli.parser import build_parser

    shown = run_cli("completion", "zsh")
    assert (shown.returncode, shown.stdout) == (0, script("zsh", build_parser()) + "\n"), shown
    many = run_cli(
        "run", "x", "--", sys.executable, "-c", "print('y' * 500000); raise SystemExit(3)"
    )
    assert (many.returncode, many.stdout) == (3, "y" * 500000 + "\n")


# --------------------------------------------------------------------------- where the lines are


@pytest.fixture
def open_to_all() -> Iterator[Path]:
    """A folder every user may pass through (``tmp_path`` is root's alone), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="inturn-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``inturn ARGS`` run as the user nobody (uid 65534), from ``/``."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *inturn_cmd(*args)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("closed", ["folder", "parent"])
def test_a_lines_folder_another_user_cannot_read_is_one_line_for_every_look(open_to_all, closed):
    """Not a raw ``Permission denied``, nor a line shown free (or waited for at once) because
    its folder could not be read: what to do, as ``run`` says of a folder it cannot write."""
    if os.geteuid() != 0:
        missing_component("another user's view needs root", "run the tests as root")
    lines = open_to_all / "parent" / "lines"
    lines.parent.mkdir()
    env = child_env(INTURN_DIR=str(lines))
    assert run_cli("run", "kept", "--", "true", env=env).returncode == 0
    if as_nobody("--version", env=env).returncode != 0:
        missing_component("the user nobody cannot run inturn here", "install it readable by all")
    (lines if closed == "folder" else lines.parent).chmod(0o700)
    for args in (
        ["status"],
        ["status", "kept"],
        ["status", "--names"],
        ["status", "--json"],
        ["top"],
        ["wait", "kept"],
        ["forget", "kept"],
    ):
        said = one_line_error(as_nobody(*args, env=env), "not readable by you", "INTURN_DIR")
        assert str(lines) in said, (args, said)


@pytest.mark.parametrize("variable", ["INTURN_DIR", "INTURN_MACHINE_DIR"])
def test_a_relative_folder_in_the_environment_is_refused(tmp_path, variable):
    """Each process would take it from its own current folder: two started in different
    folders would hold "the same" line at once. ``--dir`` is resolved once, where typed."""
    machine = ["--machine"] if variable == "INTURN_MACHINE_DIR" else []
    env = child_env(**{variable: "lines"})
    for args in (["run", *machine, "x", "--", "true"], ["status", *machine]):
        result = subprocess.run(
            inturn_cmd(*args), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        one_line_error(result, variable, "relative path (lines)", "absolute")
    assert not (tmp_path / "lines").exists()
    result = subprocess.run(
        inturn_cmd("run", *machine, "--dir", "given", "x", "--", "true"),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result
    assert (tmp_path / "given").is_dir()


def test_a_relative_directory_of_a_line_is_taken_once(tmp_path, monkeypatch):
    """``directory=`` relative: from the current folder when the Line is made, not moved by a
    later change of folder."""
    monkeypatch.chdir(tmp_path)
    line = inturn.Line("here", directory="lines")
    monkeypatch.chdir("/")
    with line:
        assert line.status().holders
    assert (tmp_path / "lines").is_dir()
    assert inturn.Line("here", directory=tmp_path / "lines").status().holders == ()
