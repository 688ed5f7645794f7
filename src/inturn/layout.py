"""What a line's folder holds, the same for both local backends (POSIX and Windows).

``.name`` records the line's exact name, ``.line`` the next ticket number, and each place in
line is ``<number>.ticket``, which becomes ``<number>.abandoned`` when its owner died holding
the turn. Numbers are zero-padded so that a listing sorts like the line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .errors import UsageError
from .records import warn
from .store import Snapshot

TICKET = ".ticket"
MARKER = ".abandoned"
COUNTER = ".line"
NAME_FILE = ".name"


def resolve_root(
    scope: str, directory: str | None, default_root: Callable[[str], str]
) -> tuple[str, bool]:
    """The folder of the lines (``directory=``, else ``INTURN_DIR``, else the scope's default),
    and whether the user named it (a folder the user named is trusted as it is)."""
    if scope not in ("user", "machine"):
        raise UsageError(f"unknown scope {scope!r}: use 'user' or 'machine'")
    explicit = directory or os.environ.get("INTURN_DIR") or None
    return (os.path.abspath(explicit) if explicit else default_root(scope)), explicit is not None


def ticket_file(number: int) -> str:
    return f"{number:012d}{TICKET}"


def marker_file(number: int) -> str:
    return f"{number:012d}{MARKER}"


def _number(entry: str, suffix: str) -> int | None:
    stem = entry[: -len(suffix)]
    return int(stem) if stem.isdigit() and stem.isascii() else None


def snapshot_of(entries: Iterable[str]) -> Snapshot:
    """The tickets and markers among a folder's entries; anything else is not ours."""
    tickets: list[int] = []
    markers: list[int] = []
    for entry in entries:
        if entry.endswith(TICKET):
            number = _number(entry, TICKET)
            if number is not None:
                tickets.append(number)
        elif entry.endswith(MARKER):
            number = _number(entry, MARKER)
            if number is not None:
                markers.append(number)
    return Snapshot(tuple(sorted(tickets)), tuple(sorted(markers)))


def next_number(counter: bytes, where: str, look: Callable[[], Snapshot]) -> int:
    """The number the counter file holds; when it is corrupt, one above every number still in
    the folder (``look()``), so that no number is ever handed out twice."""
    text = counter.split(b"\n", 1)[0].strip()
    if text.isdigit():
        return int(text)
    if counter:
        warn(f"the ticket counter {where} was corrupt; rebuilt it")
    present = look()
    return max([*present.tickets, *present.abandoned], default=0) + 1
