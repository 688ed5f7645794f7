"""What a ticket says about its owner, and what a line looks like from outside.

The public records are ``NamedTuple`` classes: ``typing.NamedTuple`` for type checkers, made
at run time without importing ``typing`` (``named_tuples.py``), whose import alone cost every
start of ``inturn`` 2 ms.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Sequence

from . import forks
from .rule import may_hold

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    import typing as _typing
    from typing import NamedTuple
else:
    from .named_tuples import NamedTuple, TypingWhenAsked

    _typing = TypingWhenAsked()  # for typing.get_type_hints() on the records

# Bounds on what a ticket records, so that every record fits in what readers read.
MAX_COMMAND_CHARS = 256 * 1024  # more than any one argument Linux passes (128 KiB)
MAX_FIELD_CHARS = 4096
MAX_RECORD_BYTES = 4 * 1024 * 1024


class Ticket(NamedTuple):
    """One place in a line: who took it, when, and whether it holds the turn."""

    number: int
    pid: int | None = None
    user: str = ""
    host: str = ""
    command: tuple[str, ...] = ()
    cwd: str = ""
    joined_at: float | None = None
    acquired_at: float | None = None
    slots: int = 1
    shared: bool = False  # a shared turn (a reader), else exclusive
    newest_wins: bool = False  # joined to replace, and be replaced by, later waiters
    channel: str | None = None  # where its owner listens for later starts (single_instance)
    pid_namespace: int | None = None  # whose numbering ``pid`` is in (forks.pid_namespace)
    # Only for a ticket whose record could not be read (another user's, or corrupt): whether
    # its place in line gives it the turn, by the queue's rule; None where the record tells.
    held_by_place: bool | None = None

    @property
    def mode(self) -> str:
        return "shared" if self.shared else "exclusive"

    @property
    def holding(self) -> bool:
        if self.held_by_place is not None:  # no record to say so: the queue's rule does
            return self.held_by_place
        return self.acquired_at is not None

    @property
    def stopped(self) -> bool | None:
        """Whether the ticket's process is stopped (Ctrl-Z, SIGSTOP, a debugger): it keeps its
        turn or place without running. None where that cannot be told. Asked of the system at
        each call, so ask it of live tickets (those ``status`` lists): a dead one's pid may
        be another process's by now."""
        return process_stopped(self.pid, self.host, self.pid_namespace)

    def describe(self, live: bool = False) -> str:
        """A short human phrase: ``pid 4242 (make all)``; for a ``live`` ticket (one that
        ``status`` lists), ``stopped pid 4242 (make all)`` when its process is stopped."""
        who = f"pid {self.pid}" if self.pid is not None else f"ticket {self.number}"
        if live and self.stopped:
            who = f"stopped {who}"
        if self.host and self.host != this_host():
            who += f" on {self.host}"
        elif self.pid_namespace and not same_pids(self.host, self.pid_namespace):
            who += f" in pid namespace {self.pid_namespace}"  # a container's, numbered apart
        cmd = shell_words(self.command)
        if len(cmd) > 60:
            cmd = cmd[:57] + "..."
        return escape_controls(f"{who} ({cmd})" if cmd else who)

    def to_json(self, now: float | None = None) -> dict[str, _typing.Any]:
        now = time.time() if now is None else now
        waited_until = self.acquired_at if self.acquired_at is not None else now
        return {
            "ticket": self.number,
            "state": "holding" if self.holding else "waiting",
            "pid": self.pid,
            "user": self.user,
            "host": self.host,
            "command": list(self.command),
            "cwd": self.cwd,
            "mode": self.mode,
            "slots": self.slots,
            "joined_at": self.joined_at,
            "acquired_at": self.acquired_at,
            "waited_seconds": _span(self.joined_at, waited_until),
            "held_seconds": _span(self.acquired_at, now),
            "stopped": self.stopped,
            "pid_namespace": self.pid_namespace,
        }

    def header(self) -> dict[str, _typing.Any]:
        """The fields written when the ticket is taken (acquired_at comes later), cut to
        bounds so that a record always fits in what readers read."""
        return {
            "pid": self.pid,
            "user": self.user[:MAX_FIELD_CHARS],
            "host": self.host[:MAX_FIELD_CHARS],
            "command": capped_command(self.command),
            "cwd": self.cwd[:MAX_FIELD_CHARS],
            "joined_at": self.joined_at,
            "slots": self.slots,
            **({"shared": True} if self.shared else {}),
            **({"newest_wins": True} if self.newest_wins else {}),
            **({"channel": self.channel[:MAX_FIELD_CHARS]} if self.channel else {}),
            **({"pid_namespace": self.pid_namespace} if self.pid_namespace else {}),
        }

    def on_our_clock(self, offset: float) -> Ticket:
        """This ticket with its times, read on a server's clock, moved onto ours by ``offset``
        (ours less the server's): hosts' clocks may differ, and ages are told on ours."""
        if not offset:
            return self

        def moved(moment: float | None) -> float | None:
            return None if moment is None else moment + offset

        return self._replace(joined_at=moved(self.joined_at), acquired_at=moved(self.acquired_at))

    @classmethod
    def from_header(
        cls, number: int, header: dict[str, _typing.Any], acquired_at: float | None
    ) -> Ticket:
        """Build from stored fields, tolerating missing or mistyped ones."""

        def text(key: str) -> str:
            value = header.get(key)
            return value[:MAX_FIELD_CHARS] if isinstance(value, str) else ""

        command = header.get("command")
        if not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
            command = []
        pid = whole_number(header.get("pid"))
        slots = whole_number(header.get("slots"))
        namespace = whole_number(header.get("pid_namespace"))
        return cls(
            number=number,
            pid=pid if pid is not None and pid > 0 else None,
            user=text("user"),
            host=text("host"),
            command=capped_command(command),
            cwd=text("cwd"),
            joined_at=timestamp(header.get("joined_at")),
            acquired_at=timestamp(acquired_at),
            slots=slots if slots is not None and 0 < slots < 2**31 else 1,
            shared=header.get("shared") is True,
            newest_wins=header.get("newest_wins") is True,
            channel=text("channel") or None,
            pid_namespace=namespace if namespace is not None and namespace > 0 else None,
        )


def capped_command(command: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The command as recorded: whole arguments while they fit, the last one cut with
    ``...``; the rest dropped."""
    kept: list[str] = []
    budget = MAX_COMMAND_CHARS
    for argument in command:
        if len(argument) > budget:
            kept.append(argument[: max(0, budget - 3)] + "...")
            break
        kept.append(argument)
        budget -= len(argument) + 1
        if budget <= 0:
            break
    return tuple(kept)


def timestamp(value: object) -> float | None:
    """A time read from a record: a finite, non-negative number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and 0 <= seconds < 1e11 else None


def whole_number(value: object) -> int | None:
    """A count or a pid read from a record: a plain integer of sane size, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        return None
    return value


def shell_words(command: Sequence[str]) -> str:
    """A command as one would type it at a shell: words with spaces or quotes quoted, so that
    they stay apart (``shlex.join``), but letters of any script left as they are. On Windows,
    quoted as a Windows program splits its command line (``subprocess.list2cmdline``), which
    is how ``cmd`` and PowerShell pass it on: a POSIX shell's ``'"'"'`` means nothing there."""
    if sys.platform == "win32":
        import subprocess

        return subprocess.list2cmdline(command)
    import shlex

    return " ".join(
        word if word and all(c.isalnum() or c in "@%+=:,./-_" for c in word) else shlex.quote(word)
        for word in command
    )


def escape_controls(text: str) -> str:
    """``text`` with control characters (and lone surrogates from undecodable bytes) shown as
    escapes, so that nothing read from a record can steer the terminal it is printed on."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == " " else escape_character(char) for char in text
    )


def escape_character(char: str) -> str:
    """One character as a visible escape: an undecodable byte (Python keeps byte 0xff of a
    name or path that was not UTF-8 as U+DCFF) as the byte, ``\\xff``, as it was typed."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def undecodable(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate: bytes that were not UTF-8, or no text at all."""
    return any("\ud800" <= char <= "\udfff" for char in text)


def _span(start: float | None, end: float) -> float | None:
    return None if start is None else round(max(0.0, end - start), 3)


class Progress(NamedTuple):
    """Where a waiter stands each time it goes back to sleep."""

    ticket: int  # the waiter's own ticket
    position: int  # 1-based place in the whole line, holders included
    ahead: tuple[int, ...]  # live tickets ahead, oldest first
    waiting_on: tuple[int, ...]  # the ones whose leaving wakes us


class Message(NamedTuple):
    """What a later start sent to the running instance (``single_instance``): its ``argv``,
    working folder ``cwd`` and ``data`` (any JSON value), and who it is, as the operating
    system says: ``pid`` and ``user``."""

    argv: tuple[str, ...]
    cwd: str
    data: _typing.Any
    pid: int | None
    user: str


class LineStatus(NamedTuple):
    """Holders, then waiters, each in ticket (arrival) order."""

    name: str
    holders: tuple[Ticket, ...] = ()
    waiters: tuple[Ticket, ...] = ()
    scope: str = "user"
    where: str = ""

    def passing_to(self) -> Ticket | None:
        """The first waiter, when the rule of who holds (the queue's own) already gives it the
        turn but it has not yet marked itself holding: a holder has just left, and it is on
        its way in. None when no turn is passing."""
        if not self.waiters:
            return None
        first = self.waiters[0]
        ahead = [t.shared for t in self.holders if t.number < first.number]
        return first if may_hold(first.slots, first.shared, ahead) else None

    def to_json(self, now: float | None = None) -> dict[str, _typing.Any]:
        now = time.time() if now is None else now
        return {
            "name": self.name,
            "scope": self.scope,
            "where": self.where,
            "holders": [t.to_json(now) for t in self.holders],
            "waiters": [t.to_json(now) for t in self.waiters],
        }


_HOST: str | None = None
_USER: str | None = None
_USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")  # getpass.getuser()'s, in its order


def this_host() -> str:
    global _HOST
    if _HOST is None:
        if hasattr(os, "uname"):
            _HOST = os.uname().nodename  # what gethostname() returns, without importing socket
        else:
            import socket

            _HOST = socket.gethostname()
    return _HOST


def same_pids(host: str, pid_namespace: int | None) -> bool:
    """Whether a pid recorded on ``host`` in ``pid_namespace`` names a process that this one
    sees under that number: the same machine and the same PID namespace (a process in a
    container numbers its pids apart from the host's, even where it shares the host's name
    and the lines folder). A record that does not say its namespace (an older inturn's, or a
    system that names none) is taken as this one's: a container is most often told apart by
    its host name already."""
    if host != this_host():
        return False
    return pid_namespace is None or pid_namespace == forks.pid_namespace()


def process_stopped(pid: int | None, host: str, pid_namespace: int | None) -> bool | None:
    """Whether process ``pid`` of this machine and PID namespace is stopped, from the state in
    ``/proc/PID/stat`` (proc(5): ``T`` stopped by a signal, ``t`` by a debugger); None on
    another machine or in another namespace, elsewhere than on Linux, or for a process that
    is gone."""
    if pid is None or not sys.platform.startswith("linux") or not same_pids(host, pid_namespace):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return None
    state = fields[fields.rfind(b")") + 2 :][:1]  # after the command's name, which may hold ")"
    return state in (b"T", b"t")


def this_user() -> str:
    """The login name, found where ``getpass.getuser()`` looks (the first of LOGNAME, USER,
    LNAME and USERNAME that is set, else the password database), without importing
    ``getpass``: its import (``termios``) cost every start of ``inturn run`` 0.5 ms."""
    global _USER
    if _USER is None:
        found = next((os.environ[v] for v in _USER_VARIABLES if os.environ.get(v)), None)
        if found is None:
            found = "?"  # no variable and no password database: still usable
            if sys.platform != "win32":
                import pwd

                try:
                    found = pwd.getpwuid(os.getuid()).pw_name
                except KeyError:  # no entry for this uid
                    found = str(os.getuid())
        _USER = found  # set once, whole: other threads may be asking
    return _USER


def own_ticket_fields(
    command: tuple[str, ...] | None,
    slots: int,
    shared: bool = False,
    newest_wins: bool = False,
    channel: str | None = None,
) -> Ticket:
    """The caller's identity, stamped on the ticket it is about to take."""
    return Ticket(  # by position (number, pid, user, host, ...): made at every join
        0,
        forks.pid(),
        this_user(),
        this_host(),
        tuple(getattr(sys, "orig_argv", sys.argv)) if command is None else command,
        _cwd(),
        time.time(),
        None,  # acquired_at
        slots,
        shared,
        newest_wins,
        channel,
        forks.pid_namespace(),
    )


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


class InturnWarning(UserWarning):
    """Something odd was found and skipped (a corrupt record, a foreign file)."""


def warn(message: str) -> None:
    warnings.warn(message, InturnWarning, stacklevel=3)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warn(message)
