"""``inturn forget`` and ``inturn status --prune`` on every backend: lines nobody is in go,
lines in use stay, and someone joining while a line is forgotten still takes turns."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import inturn

from conftest import REPORT_TIMEOUT, Where, Worker, inturn_cmd, run_cli
from observer import assert_exclusive
from observer import command as observed


def names(where) -> list[str]:
    result = run_cli("status", "--names", env=where.crash_env())
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout.splitlines()


def test_forget_removes_unused_lines_and_leaves_lines_in_use(where, workers):
    env = where.crash_env()
    for name in ("used", "held", "waited"):
        assert run_cli("run", name, "--", "true", env=env).returncode == 0
    holder = Worker("held", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    waited = Worker("waited", "--hold", env=env)
    workers.append(waited)
    waited.expect("acquired")
    behind = Worker("waited", "--hold", env=env)
    workers.append(behind)
    behind.expect("waiting")
    assert names(where) == ["held", "used", "waited"]
    result = run_cli("forget", "used", "held", "waited", "never-used", env=env)
    assert result.returncode == 75 and result.stdout == ""
    said = result.stderr.splitlines()
    assert said[:2] == [
        "inturn: line 'held' is in use (someone holds or waits in it): not forgotten",
        "inturn: line 'waited' is in use (someone holds or waits in it): not forgotten",
    ]
    assert re.fullmatch(  # a typo is not passed off as done
        r"inturn: no line 'never-used' in \S+: nothing to forget \(inturn status lists the "
        r"lines\)",
        said[2],
    ), said
    assert len(said) == 3
    assert names(where) == ["held", "waited"]
    assert [t.pid for t in inturn.Line("held").status().holders] == [holder.pid]
    holder.send()
    waited.send()
    behind.acquired()
    behind.send()
    assert holder.wait() == 0 and waited.wait() == 0 and behind.wait() == 0
    gone = run_cli("forget", "held", "waited", env=env)
    assert (gone.returncode, gone.stdout, gone.stderr) == (0, "", "")
    assert names(where) == []
    again = run_cli("run", "held", "--", "true", env=env)  # a forgotten line can be used again
    assert again.returncode == 0 and names(where) == ["held"]


def test_status_prune_forgets_unused_lines_first(where, workers):
    env = where.crash_env()
    for name in ("a", "b", "c"):
        assert run_cli("run", name, "--", "true", env=env).returncode == 0
    holder = Worker("b", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    pruned = run_cli("status", "--prune", env=env)
    assert pruned.returncode == 0 and pruned.stderr == "", pruned
    rows = pruned.stdout.splitlines()
    assert [r.split()[0] for r in rows] == ["LINE", "b"] and f"pid {holder.pid} " in rows[1]
    assert names(where) == ["b"]
    holder.send()


def test_status_prune_of_one_line_forgets_that_line_only(where, workers):
    """``status --prune NAME`` forgets NAME if nobody is in it, then shows it; the other
    lines were not asked about and stay (forgetting a line restarts its ticket numbers)."""
    env = where.crash_env()
    for name in ("a", "b", "c"):
        assert run_cli("run", name, "--", "true", env=env).returncode == 0
    pruned = run_cli("status", "--prune", "a", env=env)
    assert pruned.returncode == 0 and pruned.stderr == "", pruned
    assert pruned.stdout.startswith("a: free"), pruned
    assert names(where) == ["b", "c"]
    holder = Worker("b", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    kept = run_cli("status", "--prune", "b", env=env)
    assert kept.returncode == 0 and f"{holder.pid}" in kept.stdout, kept
    assert names(where) == ["b", "c"]
    holder.send()


def test_looking_at_a_line_nobody_used_adds_no_line(where):
    """``status``, ``wait`` and ``forget`` of a name nobody used (a typo) only look: the name
    does not appear among the lines afterwards."""
    for command in (("forget", "typo"), ("status", "typo"), ("wait", "typo")):
        looked = run_cli(*command)
        assert looked.returncode == 0, (command, looked)
        if command[0] != "wait":  # a typo is told, not passed off as done (or as free)
            assert looked.stderr.startswith("inturn: no line 'typo' in "), looked
        else:
            assert looked.stderr == "", (command, looked)
    assert names(where) == []


def test_forgetting_where_no_line_was_ever_kept_creates_nothing(where, request):
    """``forget`` and ``status --prune`` only look, as ``status`` does: where no line was ever
    kept (a folder not made yet, a schema nobody created, a Redis prefix nobody used), there
    is nothing to forget, and the place is left as it was: no folder, schema or key."""
    pruned = run_cli("status", "--prune")
    assert (pruned.returncode, pruned.stderr) == (0, ""), pruned
    assert pruned.stdout.startswith("no lines in "), pruned
    assert kept_anything(where, request) is False
    assert inturn.forget_unused() == []
    assert kept_anything(where, request) is False
    line = inturn.Line("never-used")
    try:
        assert line.forget() is True  # nothing of it is left, as of a line forgotten
    finally:
        line.close()
    assert kept_anything(where, request) is False
    one = run_cli("status", "--prune", "never-used")
    assert (one.returncode, one.stderr) == (0, ""), one
    assert kept_anything(where, request) is False


def kept_anything(where: Where, request: pytest.FixtureRequest) -> bool:
    """Whether the place of ``where`` holds anything of inturn's."""
    if where.kind == "local":
        return os.path.lexists(os.environ["INTURN_DIR"])
    if where.kind == "postgresql":
        import psycopg

        server, schema = request.getfixturevalue("pg_server"), request.getfixturevalue("schema")
        with psycopg.connect(server, autocommit=True) as conn:
            row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", [schema]).fetchone()
        return bool(row and row[0])
    return bool(request.getfixturevalue("place").stored_keys())


def test_a_line_kept_from_before_a_forget_sees_the_line_made_anew(where, workers):
    """A ``Line`` that took a turn before its line was forgotten, and made anew by another
    process that holds it now, sees that holder, waits for it, and cannot forget the line;
    nobody starts beside the holder. (On Windows the kept ``Line`` judged the new line's
    tickets by the old one's object names: dead, and buried, which let a second one in.)"""
    env = where.crash_env()
    kept = inturn.Line("again", backend=where.crash_url)
    kept.acquire().release()
    assert run_cli("forget", "again", env=env).returncode == 0
    holder = Worker("again", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    assert [t.pid for t in kept.status().holders] == [holder.pid]
    with pytest.raises(inturn.Timeout):
        kept.wait(timeout=0.2)
    assert kept.forget() is False
    assert run_cli("run", "-n", "again", "--", "true", env=env).returncode == 75
    holder.send()
    assert holder.wait() == 0
    kept.close()


@contextlib.contextmanager
def forgetting(name: str, where: Where) -> Iterator[list[bool]]:
    """A thread forgets line ``name`` as fast as it can while the block runs; what each
    ``forget`` answered is in the list."""
    stop = threading.Event()
    forgotten: list[bool] = []

    def forget_all_the_time() -> None:
        line = inturn.Line(name, backend=where.crash_url)
        try:
            while not stop.is_set():
                forgotten.append(line.forget())
        finally:
            line.close()

    forgetter = threading.Thread(target=forget_all_the_time, daemon=True)
    forgetter.start()
    try:
        yield forgotten
    finally:
        stop.set()
        forgetter.join(REPORT_TIMEOUT)


def test_runs_joining_while_their_line_is_forgotten_still_take_turns(where, tmp_path):
    """A loop forgets the line as fast as it can while runs join it: each run joins the line
    that exists at that moment or a new one, never a removed one, and the observer sees no two
    inside at once."""
    log = tmp_path / "inside.log"
    count = 12
    env = where.crash_env()
    with forgetting("race", where) as forgotten:
        runs = [
            subprocess.Popen(
                inturn_cmd("run", "race", "--", *observed(log, seconds=0.02)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(count)
        ]
        for run in runs:
            assert run.wait(REPORT_TIMEOUT) == 0, run.stderr.read() if run.stderr else ""
            if run.stderr is not None:
                run.stderr.close()
    assert_exclusive(log, expected=count)
    assert len(forgotten) > 1


# Threads of one process taking turns through one shared ``Line`` for some seconds; each stay
# is recorded, and every failed turn is reported at the end.
SHARED_LINE = """
import os, sys, threading, time
import inturn
from observer import Recorder

name, log, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
line = inturn.Line(name)
recorder = Recorder(log)
failures = []
end = time.monotonic() + float(sys.argv[4])

def take_turns(thread):
    turn = 0
    while turn == 0 or time.monotonic() < end:
        turn += 1
        try:
            with line, recorder.inside(f"{os.getpid()}:{thread}:{turn}"):
                pass
        except Exception as exc:
            failures.append(repr(exc))

runs = [threading.Thread(target=take_turns, args=(n,)) for n in range(threads)]
for run in runs:
    run.start()
for run in runs:
    run.join()
line.close()
sys.exit("; ".join(sorted(set(failures))) or None)
"""


def test_threads_sharing_a_line_take_turns_while_it_is_forgotten(where, tmp_path):
    """Threads of one process share one ``Line`` while a loop elsewhere forgets the line as
    fast as it can: when one of them finds the line forgotten and opens it anew, the others,
    still joining through the old folder, must not number a ticket in the new folder under
    the old folder's guard, nor lose the folder from under them; the observer sees no two
    inside at once."""
    log = tmp_path / "inside.log"
    processes, threads, seconds = 3, 6, 4.0
    argv = [sys.executable, "-c", SHARED_LINE, "shared", str(log), str(threads), str(seconds)]
    with forgetting("shared", where) as forgotten:
        runs = [
            subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=where.crash_env())
            for _ in range(processes)
        ]
        ended = [(run.communicate(timeout=REPORT_TIMEOUT)[1], run.returncode) for run in runs]
    assert_exclusive(log)
    assert ended == [("", 0)] * processes
    assert True in forgotten


def test_a_join_whose_name_record_a_forget_removes_as_it_is_written_opens_the_line_again(
    lines_dir, monkeypatch
):
    """A forget empties the folder under its guard, but a joiner names a new folder before it
    takes the guard: the joiner's draft of ``.name`` may go before it is linked into place.
    The join then opens the line again, rather than failing with "No such file"."""
    import inturn.backends.posix as posix

    real = posix.name_line
    emptied: list[str] = []

    def name_line_as_a_forget_empties_the_folder(name: str) -> bytes:
        if not emptied:
            for folder in (p for p in lines_dir.iterdir() if p.is_dir()):
                for entry in folder.iterdir():
                    entry.unlink()
                    emptied.append(entry.name)
        return real(name)

    monkeypatch.setattr(posix, "name_line", name_line_as_a_forget_empties_the_folder)
    with inturn.turn("emptied") as turn:
        assert turn.ticket >= 1
    assert any(entry.startswith(".name.") for entry in emptied), emptied
    assert inturn.Line("emptied").forget()


GUARD_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print('held', flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="a local line's guard is a flock here")
def test_a_line_whose_guard_stays_taken_is_found_in_use_not_an_error(tmp_path):
    """Someone in the middle of joining (here: a process that took the line's guard and
    stays there) keeps the line in use: after the second a forget waits for the guard, it
    says so (False, exit 75), as for a holder, rather than failing."""
    line = inturn.Line("guarded", directory=tmp_path)
    line.acquire().release()
    holder = subprocess.Popen(
        [sys.executable, "-c", GUARD_HOLDER, str(tmp_path / "guarded" / ".line")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert line.forget() is False
        result = run_cli("forget", "--dir", str(tmp_path), "guarded")
        assert result.returncode == 75 and "is in use" in result.stderr, result
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(REPORT_TIMEOUT)
    assert line.forget() is True
    line.close()
