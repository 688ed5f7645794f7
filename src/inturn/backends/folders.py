"""What a line's folder holds, the same for both local backends (POSIX and Windows).

``.name`` records the line's exact name, ``.line`` the next ticket number, and each place in
line is ``<number>.ticket``. When a ticket dies holding the turn, whoever finds it dead leaves
``<number>.abandoned``, a copy of (or a second link to) its record, and the next holder claims
it by creating ``<number>.told``: creating a file that must not exist yet is atomic, so exactly
one holder is told, and it works between users who may not remove each other's files (a
machine-wide line is a sticky folder, like ``/tmp``). Files are removed by whoever may, in an
order that never lets a claimed marker look unclaimed: the ticket first, then the marker, then
the claim. Numbers are zero-padded so that a listing sorts like the line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..records import warn
from .base import check_scope

TICKET = ".ticket"
MARKER = ".abandoned"
TOLD = ".told"
COUNTER = ".line"
USER_COUNTER = ".next."  # a machine-wide line's counter of one user: .next.<uid>
NAME_FILE = ".name"
_KINDS = (TICKET, MARKER, TOLD)


def resolve_root(
    scope: str, directory: str | None, default_root: Callable[[str], str]
) -> tuple[str, bool]:
    """The folder of the lines (``directory=``, else ``INTURN_DIR``, else the scope's default),
    and whether the user named it (a folder the user named is trusted as it is)."""
    check_scope(scope)
    explicit = directory or os.environ.get("INTURN_DIR") or None
    return (os.path.abspath(explicit) if explicit else default_root(scope)), explicit is not None


def ticket_file(number: int) -> str:
    return f"{number:012d}{TICKET}"


def marker_file(number: int) -> str:
    return f"{number:012d}{MARKER}"


def told_file(number: int) -> str:
    return f"{number:012d}{TOLD}"


def counter_file(uid: int) -> str:
    return f"{USER_COUNTER}{uid}"


class Entries(NamedTuple):
    """A line's folder, read from one listing."""

    tickets: tuple[int, ...]  # every ticket file present (live or dead), ascending
    markers: tuple[int, ...]  # abandonment markers that nobody has claimed yet
    claimed: tuple[int, ...]  # markers already claimed, left for whoever may remove them
    highest: int  # the highest number any entry carries (0 if none)
    counters: tuple[str, ...] = ()  # the per-user counters of a machine-wide line


def read_entries(entries: Iterable[str]) -> Entries:
    """The tickets, markers and claims among a folder's entries; anything else is not ours."""
    found: dict[str, set[int]] = {kind: set() for kind in _KINDS}
    counters = []
    for entry in entries:
        if entry.startswith(USER_COUNTER):
            if entry[len(USER_COUNTER) :].isdigit():
                counters.append(entry)
            continue
        for kind in _KINDS:
            if entry.endswith(kind):
                stem = entry[: -len(kind)]
                if stem.isdigit() and stem.isascii():
                    found[kind].add(int(stem))
                break
    told = found[TOLD]
    markers = found[MARKER]
    highest = max((max(numbers) for numbers in found.values() if numbers), default=0)
    return Entries(
        tuple(sorted(found[TICKET])),
        tuple(sorted(markers - told)),
        tuple(sorted(markers & told)),
        highest,
        tuple(sorted(counters)),
    )


def next_number(counter: bytes, where: str, highest: int) -> int:
    """The next ticket number: the counter's, but never at or below a number already in the
    folder, so that a counter someone rewrote (or that got corrupt) cannot hand out a number
    twice or let the fencing token go backwards."""
    text = counter.split(b"\n", 1)[0].strip()
    if text.isdigit() and len(text) < 19:
        return max(int(text), highest + 1)
    if counter:
        warn(f"the ticket counter {where} was corrupt; rebuilt it")
    return highest + 1
