"""What a ticket says about its owner, and what a line looks like from outside."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Any, NamedTuple

SCHEMA_VERSION = 1


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

    @property
    def holding(self) -> bool:
        return self.acquired_at is not None

    def describe(self) -> str:
        """A short human phrase: ``pid 4242 (make all)``."""
        who = f"pid {self.pid}" if self.pid is not None else f"ticket {self.number}"
        if self.host and self.host != this_host():
            who += f" on {self.host}"
        cmd = " ".join(self.command)
        if len(cmd) > 60:
            cmd = cmd[:57] + "..."
        return f"{who} ({cmd})" if cmd else who

    def to_json(self, now: float | None = None) -> dict[str, Any]:
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
            "slots": self.slots,
            "joined_at": self.joined_at,
            "acquired_at": self.acquired_at,
            "waited_seconds": _span(self.joined_at, waited_until),
            "held_seconds": _span(self.acquired_at, now),
        }

    def header(self) -> dict[str, Any]:
        """The fields written when the ticket is taken (acquired_at comes later)."""
        return {
            "pid": self.pid,
            "user": self.user,
            "host": self.host,
            "command": list(self.command),
            "cwd": self.cwd,
            "joined_at": self.joined_at,
            "slots": self.slots,
        }

    @classmethod
    def from_header(cls, number: int, header: dict[str, Any], acquired_at: float | None) -> Ticket:
        """Build from stored fields, tolerating missing or mistyped ones."""

        def pick(key: str, kind: type, default: Any) -> Any:
            value = header.get(key, default)
            return value if isinstance(value, kind) else default

        command = header.get("command")
        if not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
            command = []
        joined = header.get("joined_at")
        return cls(
            number=number,
            pid=pick("pid", int, None),
            user=pick("user", str, ""),
            host=pick("host", str, ""),
            command=tuple(command),
            cwd=pick("cwd", str, ""),
            joined_at=float(joined) if isinstance(joined, (int, float)) else None,
            acquired_at=acquired_at,
            slots=max(1, pick("slots", int, 1)),
        )


def _span(start: float | None, end: float) -> float | None:
    return None if start is None else round(max(0.0, end - start), 3)


class LineStatus(NamedTuple):
    """Holders, then waiters, each in ticket (arrival) order."""

    name: str
    holders: tuple[Ticket, ...] = ()
    waiters: tuple[Ticket, ...] = ()
    scope: str = "user"
    where: str = ""

    def to_json(self, now: float | None = None) -> dict[str, Any]:
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


def this_host() -> str:
    global _HOST
    if _HOST is None:
        if hasattr(os, "uname"):
            _HOST = os.uname().nodename  # what gethostname() returns, without importing socket
        else:
            import socket

            _HOST = socket.gethostname()
    return _HOST


def this_user() -> str:
    """The login name, as ``getpass.getuser()`` finds it, imported only when first needed."""
    global _USER
    if _USER is None:
        try:
            import getpass

            _USER = getpass.getuser()
        except Exception:  # no passwd entry, no USER variable: still usable
            _USER = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return _USER


def own_ticket_fields(command: tuple[str, ...] | None, slots: int) -> Ticket:
    """The caller's identity, stamped on the ticket it is about to take."""
    return Ticket(
        number=0,
        pid=os.getpid(),
        user=this_user(),
        host=this_host(),
        command=tuple(sys.argv) if command is None else command,
        cwd=_cwd(),
        joined_at=time.time(),
        slots=slots,
    )


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


def dumps_line(data: dict[str, Any]) -> bytes:
    """One JSON record per line: readers ignore an unfinished last line."""
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


class InturnWarning(UserWarning):
    """Something odd was found and skipped (a corrupt record, a foreign file)."""


def warn(message: str) -> None:
    warnings.warn(message, InturnWarning, stacklevel=3)


def parse_record(number: int, data: bytes, origin: str) -> Ticket | None:
    """A ticket file's records: a header line, then an ``acquired_at`` line once it holds.

    An unfinished last line is being written and is skipped; a finished line that is not JSON
    is corruption, reported once and ignored.
    """
    lines = data.split(b"\n")[:-1]  # the part after the last newline is unfinished
    if not lines:
        return Ticket(number)
    try:
        header: Any = json.loads(lines[0])
        acquired: float | None = None
        for extra in lines[1:]:
            record = json.loads(extra)
            value = record.get("acquired_at") if isinstance(record, dict) else None
            if isinstance(value, (int, float)):
                acquired = float(value)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, UnicodeDecodeError):
        warn_once(f"ignoring corrupt ticket record {origin}")
        return Ticket(number)
    return Ticket.from_header(number, header, acquired)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warn(message)
