"""Machine-wide lines between users who do not trust each other (POSIX, as root).

``inturn-alice`` and ``inturn-mallory`` are real users (``users.py``). Alice uses a line as
anyone would; mallory uses it too, and also does whatever the file permissions let her do to
it. What she may do: wait, hold as long as she likes, die holding. What she must not be able
to do: remove or alter alice's ticket, make anyone run inside alice's turn, make ticket
numbers go backwards, make ``--no-wait`` or a timeout hang, pass her ticket off as alice's,
or get escape sequences printed raw by ``inturn status``.

Exclusion is checked by an independent observer: the commands write their own enter and exit
times (``CLOCK_MONOTONIC``, one clock for every process) to a log, compared afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import textwrap
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import inturn
from inturn.names import safe_file_name

from conftest import REPORT_TIMEOUT, read_lines, until, until_held_by
from users import User, Users

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX users and file modes")

# The command of every ``inturn run`` here: logs its entry, says so, holds until a line arrives
# on its stdin (or stdin closes), logs its exit.
RECORDER = textwrap.dedent(
    """
    import os, sys, time
    def note(kind):
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
        os.write(fd, f"{kind} {os.getpid()} {time.monotonic_ns()}\\n".encode())
        os.close(fd)
    note("enter")
    env = os.environ
    print("running", os.getpid(), env["INTURN_TICKET"], env["INTURN_ABANDONED"], flush=True)
    sys.stdin.readline()
    note("exit")
    """
)


class Machine(NamedTuple):
    """A machine-wide lines folder of this test's own, and the observer's log."""

    root: Path  # INTURN_MACHINE_DIR: root's and sticky, as /tmp is
    log: Path
    recorder: Path  # RECORDER, as a file: a one-line command in status and notes
    users: Users

    def env(self, user: User, **extra: str) -> dict[str, str]:
        return user.env(INTURN_MACHINE_DIR=str(self.root), **extra)

    def file(self, name: str, entry: str) -> Path:
        """A file of line ``name``: they lie side by side in the lines folder."""
        return self.root / f"inturn:{safe_file_name(name)}:{entry}"

    def line(self, name: str) -> inturn.Line:
        """The line as root sees it, for watching who is in it (never for deciding overlap)."""
        return inturn.Line(name, scope="machine", directory=str(self.root))

    def tickets(self, name: str) -> list[Path]:
        return sorted(self.root.glob(f"inturn:{safe_file_name(name)}:*.ticket"))


class Recorded:
    """``inturn run --machine [OPTIONS] NAME -- python RECORDER LOG`` as one user.

    It runs in a session of its own, so that ``kill`` reaches inturn and its command at once
    (the command inherits the turn and would otherwise keep holding it).
    """

    def __init__(
        self,
        machine: Machine,
        user: User,
        name: str,
        *options: str,
        umask: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = user.inturn(
            "run",
            "--machine",
            *options,
            name,
            "--",
            user.python,
            str(machine.recorder),
            str(machine.log),
        )
        self.user = user
        self.proc = user.popen(
            argv,
            umask=umask,
            env=env or machine.env(user),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._out = read_lines(self.proc.stdout)
        self._err = read_lines(self.proc.stderr)
        self.ticket = 0
        self.abandoned = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def has_output(self) -> bool:
        return self._out.qsize() > 0

    def running(self) -> int:
        """Wait until the command runs; the pid of the command."""
        try:
            line = self._out.get(timeout=REPORT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"{self.user.name}'s run {self.pid} never ran") from None
        words = line.split()
        assert words[:1] == ["running"], (line, self.errors())
        self.ticket, self.abandoned = int(words[2]), words[3]
        return int(words[1])

    def finish(self) -> int:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(REPORT_TIMEOUT)

    def errors(self) -> str:
        """inturn's stderr, once it has ended."""
        if self.proc.poll() is None:
            return "(still running)"
        rows = []
        while (row := self._err.get(timeout=REPORT_TIMEOUT)) != "":
            rows.append(row)
        return "".join(rows)

    def kill(self, *groups: int) -> None:
        """SIGKILL inturn (the leader of its own group), then the other process ``groups``
        (the command runs in a group of its own)."""
        for group in (self.proc.pid, *groups):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.proc.wait(REPORT_TIMEOUT)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def machine(users: Users, shared_dir: Path) -> Iterator[Machine]:
    log = shared_dir / "log"
    log.touch()
    log.chmod(0o666)  # every user's command appends to it
    recorder = shared_dir / "recorder.py"
    recorder.write_text(RECORDER)
    recorder.chmod(0o644)
    root = shared_dir / "lines"
    root.mkdir()
    root.chmod(0o1777)
    yield Machine(root, log, recorder, users)


@pytest.fixture
def runs() -> Iterator[list[Recorded]]:
    started: list[Recorded] = []
    yield started
    for run in started:
        run.close()


def start(runs: list[Recorded], *args: Any, **options: Any) -> Recorded:
    run = Recorded(*args, **options)
    runs.append(run)
    return run


def in_line_or_running(machine: Machine, name: str, run: Recorded) -> Callable[[], bool]:
    """True once ``run`` waits in line (as root sees it), or has started its command anyway."""

    def check() -> bool:
        if run.has_output() or run.proc.poll() is not None:
            return True
        return run.pid in [t.pid for t in machine.line(name).status().waiters]

    return check


def intervals(log: Path, killed: dict[int, int] | None = None) -> list[tuple[int, int, int]]:
    """(enter, exit, pid) of every command in the log; a killed one ends when it was killed."""
    enters: dict[int, int] = {}
    exits: dict[int, int] = dict(killed or {})
    for row in log.read_text().splitlines():
        kind, pid, when = row.split()
        (enters if kind == "enter" else exits)[int(pid)] = int(when)
    return sorted((enters[pid], exits.get(pid, 2**63), pid) for pid in enters)


def assert_one_at_a_time(log: Path, killed: dict[int, int] | None = None) -> None:
    spans = intervals(log, killed)
    for (_, left, first), (entered, _, second) in itertools.pairwise(spans):
        assert entered > left, f"command {second} ran inside the turn of command {first}: {spans}"


def one_shot(machine: Machine, user: User, name: str, *options: str) -> tuple[int, str]:
    """``inturn run --machine NAME -- sh -c 'echo $INTURN_TICKET $INTURN_ABANDONED'``."""
    result = user.run(
        user.inturn(
            "run", "--machine", *options, name, "--",
            "sh", "-c", 'echo "$INTURN_TICKET $INTURN_ABANDONED"',
        ),
        env=machine.env(user),
    )  # fmt: skip
    assert result.returncode == 0, result
    ticket, abandoned = result.stdout.split()
    return int(ticket), abandoned


def one_line_besides_warnings(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("inturn: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("inturn: "), stderr
    return lines[0]


def as_user(user: User, machine: Machine, code: str, *args: str) -> Any:
    """Run Python ``code`` as ``user``; it prints one JSON document, returned decoded."""
    result = user.run([user.python, "-c", textwrap.dedent(code), *args], env=machine.env(user))
    assert result.returncode == 0, result
    return json.loads(result.stdout)


# What ``attempts`` code has: ``attempt(action)`` says how an action on a file went.
ATTEMPT = """\
import json, os, sys
def attempt(action):
    try:
        action()
        return "done"
    except OSError as exc:
        return type(exc).__name__
"""


def attempts(user: User, machine: Machine, code: str, *args: str) -> Any:
    """``as_user`` for code that tries things with ``attempt``."""
    return as_user(user, machine, ATTEMPT + textwrap.dedent(code), *args)


# --------------------------------------------------------------------------- a private umask


def test_a_holder_with_umask_077_is_seen_by_another_user(machine, runs):
    alice, mallory = machine.users
    holder = start(runs, machine, alice, "umask", umask=0o077)
    holder.running()
    waiter = start(runs, machine, mallory, "umask")
    until(in_line_or_running(machine, "umask", waiter), "mallory's run to wait in line")
    assert not waiter.has_output(), "mallory's command started inside alice's turn"
    assert holder.finish() == 0
    waiter.running()
    assert waiter.finish() == 0
    assert_one_at_a_time(machine.log)
    assert waiter.ticket > holder.ticket and waiter.abandoned == "0"


def test_tickets_are_readable_by_all_whatever_the_umask_and_nobody_elses_to_touch(machine, runs):
    alice, mallory = machine.users
    holder = start(runs, machine, alice, "modes", umask=0o077)
    command = holder.running()
    until_held_by(command, "modes", machine.line)  # inturn's last word on its ticket
    name_file = machine.file("modes", ".name")
    (ticket,) = machine.tickets("modes")
    assert oct(os.stat(ticket).st_mode & 0o777) == "0o644"
    assert os.stat(name_file).st_uid == alice.uid  # alice made the line
    before = os.stat(ticket)
    tried = attempts(
        mallory,
        machine,
        """
        ticket, name_file = sys.argv[1:]
        def write(flags):
            fd = os.open(ticket, os.O_WRONLY | flags)
            os.write(fd, b'{"acquired_at":1}\\n')
            os.close(fd)
        print(json.dumps({
            "unlink": attempt(lambda: os.unlink(ticket)),
            "rename": attempt(lambda: os.rename(ticket, ticket + ".mine")),
            "append": attempt(lambda: write(os.O_APPEND)),
            "truncate": attempt(lambda: write(os.O_TRUNC)),
            "unlink .name": attempt(lambda: os.unlink(name_file)),
            "rename .name": attempt(lambda: os.rename(name_file, name_file + ".mine")),
        }))
        """,
        str(ticket), str(name_file),
    )  # fmt: skip
    assert tried == dict.fromkeys(tried, "PermissionError"), tried
    after = os.stat(ticket)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    seen = mallory.run(
        mallory.inturn("status", "--machine", "--json", "modes"), env=machine.env(mallory)
    )
    assert [t["pid"] for t in json.loads(seen.stdout)["holders"]] == [command], seen
    assert holder.finish() == 0


# --------------------------------------------------------------------------- who owns the folders

FOLDER_WARNING = "who can remove other users' tickets"


def test_the_first_user_of_a_line_gets_no_power_over_the_tickets_of_others(machine, runs):
    """Mallory uses the line first, so she made everything the line has that is not a ticket;
    still she can neither remove nor rename alice's ticket (nothing of the line is a folder of
    hers), nor get her own run in during alice's turn, and nobody is warned."""
    alice, mallory = machine.users
    one_shot(machine, mallory, "hers")
    assert os.stat(machine.file("hers", ".name")).st_uid == mallory.uid
    holder = start(runs, machine, alice, "hers")
    until_held_by(holder.running(), "hers", machine.line)
    (ticket,) = machine.tickets("hers")
    tried = attempts(
        mallory,
        machine,
        """
        ticket, root = sys.argv[1:]
        print(json.dumps({
            "unlink": attempt(lambda: os.unlink(ticket)),
            "rename": attempt(lambda: os.rename(ticket, ticket + ".gone")),
            "rename over": attempt(lambda: os.rename(os.path.join(root, "..", "log"), ticket)),
            "rename the folder": attempt(lambda: os.rename(root, root + ".moved")),
        }))
        """,
        str(ticket), str(machine.root),
    )  # fmt: skip
    assert set(tried.values()) <= {"PermissionError", "OSError"}, tried
    assert ticket.exists()
    waiter = start(runs, machine, mallory, "hers")
    until(in_line_or_running(machine, "hers", waiter), "mallory's run to wait in line")
    assert not waiter.has_output(), "mallory's command started inside alice's turn"
    assert holder.finish() == 0
    waiter.running()
    assert waiter.finish() == 0
    assert_one_at_a_time(machine.log)
    for run in (holder, waiter):
        assert FOLDER_WARNING not in run.errors(), run.errors()


def test_a_lines_folder_another_user_made_is_used_with_a_warning(machine):
    """The owner of a folder may remove anything in it, sticky or not: a lines folder that
    mallory made is only as safe as mallory, and alice is told so (once, as a warning)."""
    alice, mallory = machine.users
    made = as_user(
        mallory,
        machine,
        """
        import json, os, sys
        os.mkdir(sys.argv[1])
        os.chmod(sys.argv[1], 0o1777)
        print(json.dumps("made"))
        """,
        str(machine.root / "hers"),
    )
    assert made == "made"
    found = as_user(
        alice,
        machine,
        """
        import json, sys, warnings
        from inturn.backends.posix import prepare_root
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepare_root(sys.argv[1], "machine", explicit=False)
        print(json.dumps([str(w.message) for w in caught]))
        """,
        str(machine.root / "hers"),
    )
    assert [w for w in found if FOLDER_WARNING in w and mallory.name in w], found


# --------------------------------------------------------------------------- the counter


@pytest.mark.parametrize("planted", ["1\n", "0\n", "garbage\n", ""], ids=repr)
def test_rewriting_the_counter_never_lets_anyone_in_or_numbers_go_back(machine, runs, planted):
    alice, mallory = machine.users
    tickets = [one_shot(machine, alice, "count")[0] for _ in range(3)]
    holder = start(runs, machine, alice, "count")
    holder.running()
    tickets.append(holder.ticket)
    counters = [machine.file("count", f".next.{user.uid}") for user in (alice, mallory)]
    rewrite = as_user(
        mallory,
        machine,
        """
        import json, sys
        done = []
        for path in sys.argv[2:]:
            try:
                with open(path, "w") as counter:
                    counter.write(sys.argv[1])
                done.append("rewritten")
            except OSError as exc:
                done.append(type(exc).__name__)
        print(json.dumps(done))
        """,
        planted, *map(str, counters),
    )  # fmt: skip
    assert rewrite == ["PermissionError", "rewritten"]  # alice's counter, her own
    joiner = start(runs, machine, mallory, "count")
    until(in_line_or_running(machine, "count", joiner), "mallory's run to wait in line")
    ran_inside = joiner.has_output()
    try:
        busy = machine.line("count").acquire(blocking=False)
    except inturn.Busy:
        root_got = None
    else:
        root_got = busy.ticket
        busy.release()
    assert holder.finish() == 0
    joiner.running()
    tickets.append(joiner.ticket)
    assert joiner.finish() == 0
    tickets.append(one_shot(machine, alice, "count")[0])
    assert_one_at_a_time(machine.log)
    assert not ran_inside, f"mallory ({rewrite}) got ticket {joiner.ticket} inside {tickets}"
    assert root_got is None, f"a joiner got ticket {root_got} while {holder.ticket} held"
    assert tickets == sorted(set(tickets)), f"tickets went backwards ({rewrite}): {tickets}"


@pytest.mark.parametrize("held", ["exclusive", "shared"])
def test_a_file_planted_beside_a_holders_ticket_under_its_other_name_lets_nobody_in(
    machine, runs, held
):
    """Mallory puts an empty file beside alice's live ticket under its other name (``.shared``
    beside an exclusive one, ``.ticket`` beside a shared one): the ticket counted twice, once
    as a shared turn, and a shared run went in beside the exclusive holder; or taken for the
    planted file, it looked dead and an exclusive run went in beside the shared one."""
    alice, mallory = machine.users
    holder = start(runs, machine, alice, "twin", *(["--shared"] if held == "shared" else []))
    holder.running()
    other = "shared" if held == "exclusive" else "ticket"
    planted = machine.file("twin", f"{holder.ticket:012d}.{other}")
    made = as_user(
        mallory,
        machine,
        """
        import json, sys
        open(sys.argv[1], "x").close()
        print(json.dumps("planted"))
        """,
        str(planted),
    )
    assert made == "planted" and planted.exists()
    if held == "exclusive":  # shown once (a shared holder is shown as the planted file says)
        assert [t.number for t in machine.line("twin").status().holders] == [holder.ticket]
    joiner = start(runs, machine, alice, "twin", *(["--shared"] if held == "exclusive" else []))
    until(in_line_or_running(machine, "twin", joiner), "the other run to wait in line")
    ran_inside = joiner.has_output()
    assert holder.finish() == 0
    joiner.running()
    assert joiner.finish() == 0
    assert_one_at_a_time(machine.log)
    assert not ran_inside, f"a run went in beside a holder of a {held} turn"


# --------------------------------------------------------------------------- the guard lock

SIT_ON_GUARD = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
    """
)

API_TRY = textwrap.dedent(
    """
    import sys, inturn
    line = inturn.Line("guard", scope="machine")
    try:
        if sys.argv[1] == "blocking=False":
            line.acquire(blocking=False).release()
        else:
            line.acquire(timeout=1).release()
        print("acquired")
    except inturn.Busy:
        print("busy")
    except inturn.Timeout:
        print("timeout")
    """
)

HANG = 30.0  # seconds: far beyond what any of these takes, so only a hang reaches it


@pytest.mark.parametrize(
    "how", ["--no-wait", "--timeout 1", "blocking=False", "timeout=1"], ids=lambda h: h
)
def test_sitting_on_the_guard_lock_makes_nothing_non_blocking_hang(machine, how):
    alice, mallory = machine.users
    one_shot(machine, alice, "guard")  # the line and its counter exist
    sitter = mallory.popen(
        [mallory.python, "-c", SIT_ON_GUARD, str(machine.root)],  # the guard of every line
        env=machine.env(mallory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sitter.stdout is not None and sitter.stdout.readline() == "locked\n"
        if how.startswith("--"):
            argv = alice.inturn("run", "--machine", *how.split(), "guard", "--", "true")
        else:
            argv = [alice.python, "-c", API_TRY, how]
        began = time.monotonic()
        try:
            result = alice.run(argv, env=machine.env(alice), timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{how} hung while mallory sat on the guard lock")
        took = time.monotonic() - began
    finally:
        sitter.kill()
        sitter.wait(REPORT_TIMEOUT)
        assert sitter.stdout is not None
        sitter.stdout.close()
        assert sitter.stdin is not None
        sitter.stdin.close()
    if how == "--no-wait":
        assert result.returncode == 75, result
        assert "busy" in one_line_besides_warnings(result.stderr)
    elif how == "--timeout 1":
        assert result.returncode == 75, result
        one_line_besides_warnings(result.stderr)
        assert took >= 1.0  # it waited its second, then gave up
    else:
        assert result.stdout.split() == ["busy" if how == "blocking=False" else "timeout"], result
    assert one_shot(machine, alice, "guard")[1] == "0"  # and the line still works


# --------------------------------------------------------------------------- who it claims to be

PLANT = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    prefix, number, fields = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    path = f"{prefix}{number:012d}.ticket"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    now = time.time()
    header = {"pid": os.getpid(), "user": "inturn-alice", "host": os.uname().nodename,
              "command": ["backup"], "cwd": "/", "joined_at": now, "slots": 1}
    header.update(fields)
    os.write(fd, (json.dumps(header) + "\\n").encode())
    os.write(fd, (json.dumps({"acquired_at": now}) + "\\n").encode())
    print("planted", os.getpid(), flush=True)
    sys.stdin.readline()
    """
)


@pytest.fixture
def plants(processes: list[subprocess.Popen[str]]) -> list[subprocess.Popen[str]]:
    return processes


def plant(
    machine: Machine, plants: list[subprocess.Popen[str]], name: str, number: int, **fields: Any
) -> int:
    """Mallory writes a live, holding ticket ``number`` by hand; the planter's pid."""
    mallory = machine.users.mallory
    proc = mallory.popen(
        [mallory.python, "-c", PLANT, str(machine.file(name, "")), str(number), json.dumps(fields)],
        env=machine.env(mallory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    plants.append(proc)
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    assert words[:1] == ["planted"], words
    return int(words[1])


def statuses(machine: Machine, user: User, name: str) -> dict[str, str]:
    """Every form of ``inturn status --machine`` as ``user`` sees it: stdout by form."""
    forms = {
        "line": ("status", "--machine", name),
        "line --json": ("status", "--machine", "--json", name),
        "every line": ("status", "--machine"),
        "every line --json": ("status", "--machine", "--json"),
    }
    seen = {}
    for form, args in forms.items():
        result = user.run(user.inturn(*args), env=machine.env(user))
        assert result.returncode == 0, (form, result)
        seen[form] = result.stdout
    return seen


def json_holders(seen: dict[str, str]) -> list[list[dict[str, Any]]]:
    one = json.loads(seen["line --json"])["holders"]
    every = [line["holders"] for line in json.loads(seen["every line --json"])["lines"]]
    return [one, *every]


@pytest.mark.parametrize("how", ["USER=inturn-alice", "a ticket written by hand"])
def test_a_ticket_claiming_to_be_another_users_is_shown_as_its_owners(machine, runs, plants, how):
    alice, mallory = machine.users
    if how.startswith("USER"):
        faked = machine.env(mallory, USER=alice.name, LOGNAME=alice.name)
        holder = start(runs, machine, mallory, "claim", env=faked)
        pid = holder.running()  # the command holds the turn it inherited
        until_held_by(pid, "claim", machine.line)
    else:
        for _ in range(3):
            one_shot(machine, alice, "claim")
        pid = plant(machine, plants, "claim", 2)
    seen = statuses(machine, alice, "claim")
    for holders in json_holders(seen):
        assert [(t["pid"], t["user"]) for t in holders] == [(pid, mallory.name)], seen
    row = next(r for r in seen["line"].splitlines() if str(pid) in r)
    assert mallory.name in row.split(), seen["line"]
    for form, text in seen.items():
        assert alice.name not in text, (form, text)


# --------------------------------------------------------------------------- escape sequences

EVIL = {
    "user": "\x1b]0;owned\x07",
    "host": "host\x1b[2J",
    "command": ["\x1b[2J\x1b[H", "rm\r-rf", "\x07bell", "csi\x9b31m", "del\x7f"],
    "cwd": "/tmp/\x1b[31mred",
}


def raw_controls(text: str) -> list[str]:
    """Control characters in ``text`` other than its line breaks."""
    return sorted({c for c in text if unicodedata.category(c) == "Cc" and c != "\n"})


def shows_escaped(text: str) -> bool:
    return any(form in text for form in ("\\x1b", "\\033", "\\e", "\\u001b", "^["))


def test_control_characters_in_a_record_are_never_printed_raw(machine, plants):
    alice, mallory = machine.users
    for _ in range(3):
        one_shot(machine, alice, "evil")
    pid = plant(machine, plants, "evil", 2, **EVIL)
    seen = statuses(machine, alice, "evil")
    for form in ("line", "every line"):
        assert raw_controls(seen[form]) == [], (form, seen[form])
        assert shows_escaped(seen[form]), (form, seen[form])
    for form in ("line --json", "every line --json"):
        assert [c for c in seen[form] if c < " " and c != "\n"] == [], (form, seen[form])
    for holders in json_holders(seen):
        (record,) = holders
        assert record["pid"] == pid
        assert record["user"] == mallory.name  # from the file's owner, not from the record
        assert (record["host"], record["command"], record["cwd"]) == (
            EVIL["host"], EVIL["command"], EVIL["cwd"],
        )  # fmt: skip


def test_control_characters_in_a_line_name_are_never_printed_raw(machine, runs):
    alice, mallory = machine.users
    name = "evil\x1b[2J\x07\r"
    holder = start(runs, machine, mallory, name)
    holder.running()
    seen = statuses(machine, alice, name)
    for form in ("line", "every line"):
        assert raw_controls(seen[form]) == [], (form, seen[form])
    names = [line["name"] for line in json.loads(seen["every line --json"])["lines"]]
    assert names == [name] and json.loads(seen["line --json"])["name"] == name
    assert holder.finish() == 0


# --------------------------------------------------------------------------- dying holding


@pytest.mark.parametrize("dies", ["alice", "mallory"])
def test_after_a_user_dies_holding_the_line_works_for_both(machine, runs, dies):
    alice, mallory = machine.users
    dead, other = (alice, mallory) if dies == "alice" else (mallory, alice)
    doomed = start(runs, machine, dead, "death")
    until_held_by(doomed.running(), "death", machine.line)
    waiter = start(runs, machine, other, "death")
    until(in_line_or_running(machine, "death", waiter), f"{other.name}'s run to wait in line")
    assert not waiter.has_output()
    command = int(
        next(r.split()[1] for r in machine.log.read_text().splitlines() if r.startswith("enter"))
    )
    killed = {command: time.monotonic_ns()}  # it can do nothing once the signal is sent
    doomed.kill(command)  # inturn, then its command
    waiter.running()
    assert waiter.abandoned == "1", waiter.ticket
    again = start(runs, machine, dead, "death")
    until(in_line_or_running(machine, "death", again), f"{dead.name}'s new run to wait in line")
    assert waiter.finish() == 0
    notes = waiter.errors().splitlines()
    told = [n for n in notes if "died holding" in n]
    assert len(told) == 1 and f"pid {command}" in told[0], notes  # the command that held it
    again.running()
    assert again.abandoned == "0"  # told once, to the one that took the dead one's place
    assert again.finish() == 0
    assert one_shot(machine, other, "death")[1] == "0"
    assert one_shot(machine, dead, "death")[1] == "0"
    assert_one_at_a_time(machine.log, killed)


def test_a_counter_planted_for_another_user_refuses_their_joins_with_one_line(machine):
    """Mallory cannot touch alice's counter, but can put a file where it belongs before
    alice's first join: alice is then refused with one line naming it (never given numbers
    that could go backwards), and root removing the file lets her in."""
    alice, mallory = machine.users
    planted = machine.file("plant", f".next.{alice.uid}")
    made = as_user(
        mallory,
        machine,
        """
        import json, sys
        with open(sys.argv[1], "w") as counter:
            counter.write("999\\n")
        print(json.dumps("planted"))
        """,
        str(planted),
    )
    assert made == "planted"
    refused = alice.run(
        alice.inturn("run", "--machine", "plant", "--", "true"), env=machine.env(alice)
    )
    assert refused.returncode == 2, refused
    line = one_line_besides_warnings(refused.stderr)
    assert "not a counter of yours" in line and str(planted) in line, line
    planted.unlink()  # as root
    assert one_shot(machine, alice, "plant")[1] == "0"


def test_forgetting_a_line_with_another_users_files_removes_nothing(machine):
    """Alice and mallory have both used a line (each keeps a counter in it), and nobody is in
    it. Neither may remove the other's files, so alice's ``forget`` is refused with one line
    naming mallory's file and removes nothing (removing hers, line name included, would leave
    a line hidden from ``status`` that only root could forget); her ``status --prune`` goes
    on past it with a warning; root's ``forget`` removes it all."""
    alice, mallory = machine.users
    assert one_shot(machine, alice, "both")[0] < one_shot(machine, mallory, "both")[0]
    files = sorted(machine.root.glob("inturn:both:*"))
    refused = alice.run(alice.inturn("forget", "--machine", "both"), env=machine.env(alice))
    assert refused.returncode == 2, refused
    line = one_line_besides_warnings(refused.stderr)
    assert "nothing was removed" in line and f"belongs to {mallory.name}" in line, line
    assert sorted(machine.root.glob("inturn:both:*")) == files
    assert one_shot(machine, alice, "hers")[1] == "0"  # a line only she has used
    pruned = alice.run(alice.inturn("status", "--machine", "--prune"), env=machine.env(alice))
    assert pruned.returncode == 0, pruned  # goes on past the line it cannot forget
    (warning,) = pruned.stderr.splitlines()
    assert warning.startswith("inturn: warning: ") and "nothing was removed" in warning
    assert [row.split()[0] for row in pruned.stdout.splitlines()] == ["LINE", "both"], pruned
    assert sorted(machine.root.glob("inturn:both:*")) == files
    assert machine.line("both").forget()  # as root, who may remove anyone's files
    assert not list(machine.root.glob("inturn:both:*"))


# --------------------------------------------------------------------------- the status line

# The status line of ``inturn run`` as alice waits (written to stdout, a pipe here); then
# ``held`` on a line of its own once the turn is hers.
SHOWS_PLACE = """\
import sys
import inturn
from inturn.cli.display import WaitingDisplay
line = inturn.Line(sys.argv[1], scope="machine")
display = WaitingDisplay(line, sys.stdout)
turn = line.acquire(on_progress=display.update)
display.close()
print("held", flush=True)
turn.release()
"""


def test_the_status_line_does_not_count_a_dead_ticket_it_may_not_remove(machine, runs):
    """Mallory's waiting run is killed while alice waits behind it: alice's wait finds the
    ticket dead but may not remove it (mallory's file, in a sticky folder), so it stays in
    the folder. The place on alice's status line, drawn again every second, is the one her
    wait counted, #2, never #3 for a ticket that still lies there dead."""
    alice, mallory = machine.users
    holder = start(runs, machine, mallory, "place")
    holder.running()
    doomed = start(runs, machine, mallory, "place")
    until(in_line_or_running(machine, "place", doomed), "mallory's second run in line")
    waiter = alice.popen(
        [alice.python, "-c", SHOWS_PLACE, "place"],
        env=machine.env(alice),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert waiter.stdout is not None
        out = waiter.stdout.fileno()
        until(
            lambda: waiter.pid in [t.pid for t in machine.line("place").status().waiters],
            "alice's wait in line",
        )
        doomed.kill()  # from here on, root looks at nothing: it may remove what alice may not
        seen = b""
        deadline = time.monotonic() + REPORT_TIMEOUT
        while b"#2 in line" not in seen or seen.split(b"#2 in line", 1)[1].count(b"\r") < 3:
            assert time.monotonic() < deadline and waiter.poll() is None, seen
            seen += os.read(out, 4096)  # a draw every second
        draws = [d for d in seen.split(b"#2 in line", 1)[1].split(b"\r\x1b[K") if d]
        assert all(b"#2 in line" in d for d in draws[1:]), seen
        assert len(machine.tickets("place")) == 3  # the dead ticket is still there
        assert holder.finish() == 0
        rest = b""
        while chunk := os.read(out, 4096):
            rest += chunk
        assert b"held\n" in rest and waiter.wait(REPORT_TIMEOUT) == 0, rest
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(waiter.pid, signal.SIGKILL)
        waiter.wait(REPORT_TIMEOUT)
        if waiter.stdout is not None:
            waiter.stdout.close()
