"""Bad data and exhausted limits: one clear line (exit 2), or a warning and a skip.

Each case of the bad-data list gets its own deterministic test: impossible numbers and wrong
types in a ticket record, foreign files named like abandonment markers, undecodable bytes in
names and commands under a strict UTF-8 stdout, a command line over 64 KiB, a full file
system, too many open files, a liveness probe racing a join, and a closed stdout pipe.
Nothing may crash (no traceback), and nothing may be lost: the line keeps working and stays
visible in ``inturn status``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    REPORTER,
    Run,
    Worker,
    child_env,
    inturn_cmd,
    missing_component,
    one_line_error,
    read_lines,
    run_cli,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX files, signals and limits")


def strict_json(text: str) -> Any:
    """JSON as the standard has it: no NaN or Infinity tokens."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def no_traceback(result: subprocess.CompletedProcess[Any]) -> None:
    text = (
        result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    )
    for sign in ("Traceback", "Error:", "Exception ignored"):
        assert sign not in text, f"a traceback: {text.strip().splitlines()[-1]}"


def warnings_only(stderr: str, at_least: int = 1) -> list[str]:
    """``stderr`` is nothing but ``inturn: warning:`` lines, at least ``at_least`` of them."""
    lines = stderr.splitlines()
    assert all(line.startswith("inturn: warning: ") for line in lines), stderr
    assert len(lines) >= at_least, "no warning about the bad data"
    return lines


def one_line_besides_warnings(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("inturn: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("inturn: "), stderr
    return lines[0]


def ticket_path(lines_dir: Path, name: str, number: int) -> Path:
    return lines_dir / name / f"{number:012d}.ticket"


def read_terminal_until(run: Run, wanted: bytes) -> bytes:
    """What ``run`` drew on its terminal, up to ``wanted``; fails if it ends first."""
    assert run.terminal is not None
    seen = b""
    while wanted not in seen:
        try:
            chunk = os.read(run.terminal, 4096)
        except OSError as exc:  # EIO: the other side is closed, inturn is gone
            assert exc.errno == errno.EIO, exc
            chunk = b""
        assert chunk, f"inturn ended before drawing {wanted!r}: {seen.decode(errors='replace')}"
        seen += chunk
    return seen


# --------------------------------------------------------------------------- impossible records

HEADER_FIELDS = ("pid", "user", "host", "command", "cwd", "joined_at", "slots")

BAD_RECORDS: dict[str, tuple[dict[str, str], str | None]] = {
    # name: (header fields to replace, as JSON text; the acquired line's value, or None)
    "acquired_at NaN": ({}, "NaN"),
    "acquired_at 1e999": ({}, "1e999"),
    "acquired_at -1e999": ({}, "-1e999"),
    "joined_at NaN": ({"joined_at": "NaN"}, "1e9"),
    "joined_at 1e999, waiting": ({"joined_at": "1e999"}, None),
    "joined_at -1e999, waiting": ({"joined_at": "-1e999"}, None),
    "huge pid and slots": ({"pid": str(10**30), "slots": str(10**30)}, "1e9"),
    "wrong types": (
        {
            "pid": '"4242"',
            "user": "5",
            "host": "[]",
            "command": '"rm -rf /"',
            "cwd": "{}",
            "joined_at": '"yesterday"',
            "slots": '"many"',
        },
        '"now"',
    ),
    "acquired_at a list": ({}, "[1, 2]"),
}


def rewrite_record(path: Path, fields: dict[str, str], acquired: str | None) -> None:
    """Replace the record in a live ticket file (its owner keeps its lock on the same file)."""
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    parts = []
    for key in HEADER_FIELDS:
        value = fields.get(key, json.dumps(header.get(key)))
        parts.append(f'"{key}": {value}')
    text = "{" + ", ".join(parts) + "}\n"
    if acquired is not None:
        text += '{"acquired_at": ' + acquired + "}\n"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@pytest.fixture(params=list(BAD_RECORDS), ids=list(BAD_RECORDS))
def bad_holder(request: pytest.FixtureRequest, lines_dir: Path, workers: list[Worker]) -> int:
    """A live holder of line ``bad`` whose ticket record was replaced by a bad one."""
    holder = Worker("bad", "--hold")
    workers.append(holder)
    ticket = int(holder.expect("acquired")[1])
    inturn.Line("other").acquire().release()  # a second line, for the every-line views
    rewrite_record(ticket_path(lines_dir, "bad", ticket), *BAD_RECORDS[request.param])
    return ticket


def test_a_bad_record_is_shown_with_a_warning_by_every_form_of_status(bad_holder):
    for args in (("status", "bad"), ("status",)):
        result = run_cli(*args)
        no_traceback(result)
        assert result.returncode == 0, result
        warnings_only(result.stderr)
        assert "bad" in result.stdout
    one = run_cli("status", "--json", "bad")
    assert one.returncode == 0, one
    warnings_only(one.stderr)
    shown = strict_json(one.stdout)
    assert [t["ticket"] for t in shown["holders"] + shown["waiters"]] == [bad_holder]
    every = run_cli("status", "--json")
    assert every.returncode == 0, every
    warnings_only(every.stderr)
    lines = {line["name"]: line for line in strict_json(every.stdout)["lines"]}
    assert sorted(lines) == ["bad", "other"]
    assert [t["ticket"] for t in lines["bad"]["holders"] + lines["bad"]["waiters"]] == [bad_holder]


def test_runs_waiting_behind_a_bad_record_work(bad_holder, workers):
    for options in (("--no-wait",), ("--timeout", "0.2")):
        result = run_cli("run", *options, "bad", "--", "true")
        no_traceback(result)
        assert result.returncode == 75, result
        one_line_besides_warnings(result.stderr)
    waiting = Run("bad", terminal=True)  # with its status line, which shows the holder
    read_terminal_until(waiting, b"waiting for")
    (holder,) = workers
    holder.send()
    assert waiting.running().abandoned is False
    assert waiting.finish() == 0
    assert inturn.Line("bad").status().holders == ()


# --------------------------------------------------------------------------- foreign markers


def plant_marker(folder: Path, kind: str, tmp_path: Path) -> Path:
    marker = folder / "000000000005.abandoned"
    if kind == "directory":
        marker.mkdir()
    elif kind == "fifo":
        os.mkfifo(marker)
    else:
        target = tmp_path / "a record"
        target.write_text('{"pid": 1, "command": ["init"]}\n')
        marker.symlink_to(target)
    return marker


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_foreign_file_named_like_a_marker_is_skipped_with_a_warning(lines_dir, tmp_path, kind):
    inturn.Line("odd").acquire().release()
    plant_marker(lines_dir / "odd", kind, tmp_path)
    for _ in range(2):
        result = run_cli("run", "odd", "--", "sh", "-c", 'echo "$INTURN_ABANDONED"')
        no_traceback(result)
        assert result.returncode == 0, result
        assert result.stdout == "0\n", "a foreign file is not a dead holder's notice"
        warnings_only(result.stderr)
    skipped = r"ignoring .*000000000005\.abandoned: not a"
    with pytest.warns(inturn.InturnWarning, match=skipped), inturn.turn("odd") as held:
        assert not held.abandoned
    if kind == "symlink":
        assert (tmp_path / "a record").read_text() == '{"pid": 1, "command": ["init"]}\n'


# --------------------------------------------------------------------------- undecodable bytes

STRICT_UTF8 = {"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}


def run_bytes(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*inturn_cmd(), *args],
        capture_output=True,
        env=child_env(**STRICT_UTF8),
        timeout=REPORT_TIMEOUT,
        check=False,
    )


def test_undecodable_bytes_in_names_and_commands_do_not_break_a_strict_utf8_status(
    lines_dir, workers
):
    named = Worker("\udcff", "--hold")  # argv b"\xff": the name, and so the command too
    workers.append(named)
    named.expect("acquired")
    command = subprocess.Popen(
        [*inturn_cmd("run", "plain", "--"), sys.executable, "-c", REPORTER, b"\xfe\xff"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        assert command.stdout is not None
        assert command.stdout.readline().split()[:1] == [b"running"]
        for args in (("status",), ("status", b"\xff"), ("status", "plain")):
            result = run_bytes(*args)
            no_traceback(result)
            assert result.returncode == 0, result
            result.stdout.decode("utf-8")  # strict: what was printed is UTF-8
        every = run_bytes("status", "--json")
        no_traceback(every)
        assert every.returncode == 0, every
        lines = strict_json(every.stdout.decode("utf-8"))["lines"]
        assert [len(line["holders"]) for line in lines] == [1, 1]
        for name in (b"\xff", b"plain"):
            one = run_bytes("status", "--json", name)
            no_traceback(one)
            assert one.returncode == 0, one
            assert len(strict_json(one.stdout.decode("utf-8"))["holders"]) == 1
        busy = run_bytes("run", "--no-wait", b"\xff", "--", "true")
        assert busy.returncode == 75, busy
        assert len(busy.stderr.splitlines()) == 1, busy
    finally:
        command.kill()
        command.communicate(timeout=REPORT_TIMEOUT)


def no_lone_surrogates(value: Any) -> None:
    """Every string of a decoded JSON document is text (a ``\\udcff`` escape decodes to no
    character at all, which strict parsers refuse)."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # strict: raises on a lone one


def test_undecodable_bytes_are_shown_as_the_bytes_typed_in_text_and_valid_json(lines_dir, tmp_path):
    """One treatment everywhere: byte 0xff of a name (or 0xfd of a folder) is shown as
    ``\\xff``, as it was typed, in status's text and JSON alike; --names leaves such a name
    out saying why."""
    odd = tmp_path / os.fsdecode(b"dir\xfd")
    odd.mkdir()
    holder = subprocess.Popen(
        [*inturn_cmd("run", b"bad\xff", "--"), sys.executable, "-c", REPORTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=odd,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split()[:1] == [b"running"]
        text = run_bytes("status")
        assert text.returncode == 0, text
        assert b"bad\\xff" in text.stdout and b"\\udc" not in text.stdout, text.stdout
        every = run_bytes("status", "--json")
        assert every.returncode == 0, every
        document = strict_json(every.stdout.decode("utf-8"))
        no_lone_surrogates(document)
        (line,) = document["lines"]
        assert line["name"] == "bad\\xff"
        assert line["holders"][0]["cwd"] == str(tmp_path / "dir\\xfd")
        names = run_bytes("status", "--names")
        assert names.returncode == 0 and names.stdout == b"", names
        assert warnings_only(names.stderr.decode(), 1) == [
            "inturn: warning: left out the line bad\\xff: its name has bytes that are not UTF-8"
        ]
    finally:
        holder.kill()
        holder.communicate(timeout=REPORT_TIMEOUT)


# --------------------------------------------------------------------------- a long command

LONG_ARGUMENT = "x" * (70 * 1024)  # one argument over 64 KiB (Linux allows 128 KiB)


def test_a_holder_with_a_command_over_64_kib_shows_and_its_death_is_told(lines_dir, workers):
    holder = subprocess.Popen(
        [*inturn_cmd("run", "long", "--"), sys.executable, "-c", REPORTER, LONG_ARGUMENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        start_new_session=True,  # inturn is the leader of a group of its own
    )
    try:
        assert holder.stdout is not None
        output = read_lines(holder.stdout)
        started = output.get(timeout=REPORT_TIMEOUT).split()
        assert started[:1] == ["running"]
        command = int(started[1])  # the leader of a process group of its own
        shown = json.loads(run_cli("status", "--json", "long").stdout)
        # The turn is shown as held by the command, which keeps it if inturn dies.
        assert [(t["pid"], t["state"]) for t in shown["holders"]] == [(command, "holding")]
        assert shown["holders"][0]["command"][-1] == LONG_ARGUMENT
        row = run_cli("status", "long").stdout.splitlines()[2].split()
        assert (row[2], row[4]) == ("holding", str(command)), row
        waiter = Worker("long", "--hold")
        workers.append(waiter)
        waiter.expect("waiting")
        for group in (holder.pid, command):  # inturn, then the command that has the turn
            os.killpg(group, signal.SIGKILL)
        holder.wait(REPORT_TIMEOUT)
        _, _, abandoned, dead = waiter.acquired()
        assert (abandoned, dead) == ("1", str(command))
        waiter.send()
        assert waiter.wait() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=REPORT_TIMEOUT)


# --------------------------------------------------------------------------- the last number
# Ticket numbers are a fencing token: they never start again from 1 while the line exists. They
# run up to 2**63 - 1, the largest a signed 64-bit integer holds (as on the server backends).

LAST_TICKET = 2**63 - 1


def turns(name: str, count: int, **options: Any) -> list[int]:
    numbers = []
    for _ in range(count):
        with inturn.turn(name, **options) as held:
            numbers.append(held.ticket)
    return numbers


def test_numbers_go_on_past_what_the_counter_held_near_ten_to_the_eighteenth(lines_dir):
    """The counter of a line that reached 10**18 is the code's own, not a corrupt one: the
    numbers go on from it, without a warning, rather than wrapping back to 1."""
    inturn.Line("long").acquire().release()
    (lines_dir / "long" / ".line").write_text("999999999999999998\n")
    with warnings_as_errors():
        numbers = turns("long", 4)
    assert numbers == [10**18 - 2, 10**18 - 1, 10**18, 10**18 + 1]


@pytest.mark.parametrize("first", [10**12 - 1, LAST_TICKET - 2], ids=["12 to 13 digits", "top"])
def test_a_number_longer_than_the_padding_stays_behind_the_ones_before_it(lines_dir, first):
    """Files are named with 12 digits at least: a ticket whose number has more (up to the
    very last one) is still behind every ticket before it, never let in ahead of a holder."""
    line = inturn.Line("wide")
    line.acquire().release()
    (lines_dir / "wide" / ".line").write_text(f"{first}\n")
    with warnings_as_errors():
        held = line.acquire()
        try:
            assert held.ticket == first
            with pytest.raises(inturn.Busy):
                inturn.Line("wide").acquire(blocking=False)  # ticket first + 1, behind
            status = line.status()
        finally:
            held.release()
        assert [t.number for t in status.holders] == [first]
        assert turns("wide", 1) == [first + 2]
    assert len(str(first + 1)) > 12


def test_after_the_last_number_a_join_is_refused_in_one_line_until_the_line_is_forgotten(
    lines_dir,
):
    inturn.Line("full").acquire().release()
    counter = lines_dir / "full" / ".line"
    counter.write_text(f"{LAST_TICKET}\n")
    with warnings_as_errors():
        assert turns("full", 1) == [LAST_TICKET]
        assert counter.read_text() == f"{LAST_TICKET + 1}\n"
        with pytest.raises(inturn.BackendError, match="used up its ticket numbers"):
            inturn.Line("full").acquire()
        refused = run_cli("run", "full", "--", "true")
        one_line_error(refused, "'full'", str(LAST_TICKET), "forget")
        assert inturn.Line("full").status().holders == ()
        assert inturn.Line("full").forget()
        assert turns("full", 1) == [1]


def test_a_machine_wide_counter_near_ten_to_the_eighteenth_goes_on(tmp_path):
    """A machine-wide line keeps each user's counter apart; the same numbers count there."""
    root = tmp_path / "machine"
    inturn.Line("long", scope="machine", directory=root).acquire().release()
    (counter,) = root.glob("inturn:long:.next.*")
    counter.write_text("999999999999999999\n")
    with warnings_as_errors():
        numbers = turns("long", 3, scope="machine", directory=root)
        assert numbers == [10**18 - 1, 10**18, 10**18 + 1]
        counter.write_text(f"{LAST_TICKET}\n")
        assert turns("long", 1, scope="machine", directory=root) == [LAST_TICKET]
        with pytest.raises(inturn.BackendError, match="used up its ticket numbers"):
            inturn.Line("long", scope="machine", directory=root).acquire()


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", inturn.InturnWarning)
        yield


# --------------------------------------------------------------------------- a full file system


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of this test's own (root only), unmounted afterwards."""
    with own_tmpfs(tmp_path / "tiny", "size=64k,mode=0700") as mount:
        yield mount


@contextlib.contextmanager
def own_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``mount`` with ``options`` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        missing_component("filling a file system needs root, to mount a small one", "run as root")
    mount.mkdir()
    made = mounted("-t", "tmpfs", "-o", options, "tmpfs", str(mount))
    if made.returncode != 0:
        missing_component(f"cannot mount a tmpfs: {made.stderr.strip()}", "run with CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], timeout=60, check=False)


def mounted(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60, check=False)


def fill(mount: Path) -> Path:
    """Fill the file system to its last byte; the file that did it (remove it to free space)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def listed(*names: str) -> None:
    """Every one of ``names`` is shown by ``inturn status`` (text and JSON)."""
    every = run_cli("status", "--json")
    assert every.returncode == 0, every
    shown = [line["name"] for line in json.loads(every.stdout)["lines"]]
    assert sorted(shown) == sorted(names), f"hidden from status: {shown}"
    text = run_cli("status").stdout.splitlines()[1:]
    assert sorted(row.split()[0] for row in text) == sorted(names), text


def test_a_full_file_system_is_one_line_and_leaves_nothing_half_made(tiny_fs, monkeypatch):
    monkeypatch.setenv("INTURN_DIR", str(tiny_fs / "lines"))
    result = run_cli("run", "old", "--", "sh", "-c", 'echo "$INTURN_TICKET"')
    assert result.returncode == 0, result
    before = int(result.stdout)
    filler = fill(tiny_fs)
    for name in ("old", "new"):  # a line used before, and a first join
        failed = run_cli("run", name, "--", "true")
        no_traceback(failed)
        one_line_error(failed)
        assert not list((tiny_fs / "lines").glob("*/*.ticket")), "a ticket was left behind"
    looked = run_cli("status")
    no_traceback(looked)
    assert looked.returncode == 0, looked
    filler.unlink()
    for name in ("old", "new"):
        again = run_cli("run", name, "--", "sh", "-c", 'echo "$INTURN_TICKET"')
        assert again.returncode == 0, again
        if name == "old":
            assert int(again.stdout) > before
    listed("old", "new")  # the failed first join did not hide "new" for good


def test_no_room_for_a_line_s_folder_says_to_free_space(tmp_path, monkeypatch):
    """A file system out of room (here, of inodes) when a line's folder is made: the advice
    is to free space, not to look at permissions."""
    with own_tmpfs(tmp_path / "tiny", "size=64k,nr_inodes=16,mode=0700") as mount:
        (mount / "lines").mkdir(mode=0o700)
        monkeypatch.setenv("INTURN_DIR", str(mount / "lines"))
        for number in range(64):
            try:
                (mount / f"filler-{number}").touch()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError("the tmpfs never ran out of inodes")
        said = one_line_error(run_cli("run", "new", "--", "true"), "no space left")
        assert "free some space" in said and "permission" not in said, said


def test_a_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
    """A lines folder on a read-only mount (a folder made read-only, or one still to be
    made there): said as such, not as permissions to fix. Looking still works."""
    with own_tmpfs(tmp_path / "frozen", "size=64k,mode=0700") as mount:
        (mount / "lines").mkdir(mode=0o700)
        remounted = mounted("-o", "remount,ro", str(mount))
        assert remounted.returncode == 0, remounted
        for folder in ("lines", "absent"):
            monkeypatch.setenv("INTURN_DIR", str(mount / folder))
            said = one_line_error(run_cli("run", "x", "--", "true"), "read-only file system")
            assert "permission" not in said, said
            assert run_cli("status").returncode == 0


# --------------------------------------------------------------------------- too many open files


def with_open_files(limit: int) -> Any:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def run_limited(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    return limited(limit, inturn_cmd(*args))


def limited(limit: int, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` run to its end with at most ``limit`` open files, output captured."""
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=child_env(),
        preexec_fn=with_open_files(limit),
        timeout=REPORT_TIMEOUT,
        check=False,
    )


def test_too_many_open_files_for_many_lines_is_named_and_removes_nothing(lines_dir):
    """One process holding turns of many lines runs out of descriptors, at whichever step
    (opening a line's folder among them): that is said, with what to do, and never as a
    folder to remove."""
    holder = textwrap.dedent(
        """
        import inturn
        held = [inturn.Line(f"fd-{i}").acquire() for i in range(200)]
        """
    )
    for limit in range(48, 72):
        result = limited(limit, [sys.executable, "-c", holder])
        assert result.returncode == 1 and "Too many open files" in result.stderr, result.stderr
        said = result.stderr.strip().splitlines()[-1]
        assert "ulimit -n" in said and "remove it" not in said, (limit, said)


def test_too_many_open_files_is_one_line_and_leaves_nothing_half_made(lines_dir):
    """From the fewest descriptors with which Python can start inturn at all, upwards."""
    start = next(n for n in range(3, 64) if run_limited(n, "--version").returncode == 0)
    outcomes = {}
    for limit in range(start, start + 8):
        for args in (("run", "many", "--", "true"), ("status",), ("status", "--json", "many")):
            result = run_limited(limit, *args)
            no_traceback(result)
            if result.returncode != 0:
                one_line_error(result)
            outcomes[(limit, args[0])] = result.returncode
    assert outcomes[(start, "run")] == 2, outcomes  # the limit was really reached
    assert not list(lines_dir.glob("*/*.ticket")), "a ticket was left behind"
    assert run_cli("run", "many", "--", "true").returncode == 0
    listed("many")


# --------------------------------------------------------------------------- a probe racing a join

JOINER = textwrap.dedent(
    """
    import collections, sys, time, inturn
    line = inturn.Line("race")
    line.acquire().release()
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[1])
    joins, errors = 0, collections.Counter()
    while time.monotonic() < deadline:
        try:
            line.acquire().release()
            joins += 1
        except Exception as exc:
            errors[f"{type(exc).__name__}: {exc}"] += 1
    print("done", joins, dict(errors), flush=True)
    """
)

# Spins on the name of the next ticket and takes LOCK_SH|LOCK_NB on it the instant it exists:
# what a liveness probe does, timed at the worst moment of a join as often as possible. When
# it falls behind it catches up from the counter, or from a listing of the folder.
PROBER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    folder, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    def newest():
        try:
            with open(os.path.join(folder, ".line"), "rb") as counter:
                text = counter.read().strip()
            if text.isdigit():
                return int(text)
        except OSError:
            pass
        stems = [e[:-len(".ticket")] for e in os.listdir(folder) if e.endswith(".ticket")]
        return max([int(s) for s in stems if s.isdigit()], default=0)
    number, probes, misses = newest(), 0, 0
    while time.monotonic() < deadline:
        try:
            fd = os.open(f"{number:012d}.ticket", os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            misses += 1
            if misses % 16 == 0:
                number = max(number, newest())
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        os.close(fd)
        probes += 1
        number += 1
    print("probes", probes, flush=True)
    """
)

RACE_SECONDS = 3.0


def test_a_liveness_probe_racing_a_join_never_makes_it_raise(lines_dir):
    joiner = subprocess.Popen(
        [sys.executable, "-c", JOINER, str(RACE_SECONDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert joiner.stdout is not None and joiner.stdout.readline() == "ready\n"
    prober = subprocess.run(
        [sys.executable, "-c", PROBER, str(lines_dir / "race"), str(RACE_SECONDS)],
        capture_output=True,
        text=True,
        timeout=REPORT_TIMEOUT,
        check=False,
    )
    out, err = joiner.communicate(timeout=REPORT_TIMEOUT)
    assert prober.returncode == 0, prober
    assert int(prober.stdout.split()[1]) > 0, "the prober never caught a ticket"
    assert joiner.returncode == 0, err
    words = out.split(maxsplit=2)
    assert words[0] == "done" and int(words[1]) > 0, out
    assert words[2].strip() == "{}", f"joins raised while probed: {words[2]}"


# --------------------------------------------------------------------------- a closed stdout


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("status", "shown"), ("status", "--json", "shown")],
    ids=" ".join,
)
def test_status_into_a_closed_pipe_prints_no_traceback(lines_dir, args):
    """``inturn status | head -1``, with ``head`` gone before inturn writes: certain EPIPE."""
    for _ in range(3):
        inturn.Line("shown").acquire().release()
    with inturn.turn("shown"):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run(
                inturn_cmd(*args),
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
                timeout=REPORT_TIMEOUT,
                check=False,
            )
        finally:
            os.close(write_end)
    no_traceback(result)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("run", b"--bogus\xff\x1b[31m", "x", "--", "true"), 2),
        (("run", "x", "--", b"no\xffsuch\x1b[31m"), 127),
    ],
    ids=["option", "command"],
)
def test_refusals_show_odd_bytes_and_escapes_of_what_was_typed_escaped(lines_dir, args, code):
    """A bad option, or a command not found, that holds an undecodable byte or a terminal
    escape is named with both shown as escapes: nothing typed steers the terminal."""
    result = run_bytes(*args)
    assert result.returncode == code, result
    assert b"\x1b" not in result.stderr and b"\\udc" not in result.stderr, result.stderr
    assert b"\\xff" in result.stderr and b"\\x1b" in result.stderr, result.stderr
