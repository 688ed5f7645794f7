"""The descriptors through which a command of ``inturn run`` holds its turn, named for others.

The command of ``inturn run X`` inherits its turn: the ticket (or the server session) and a
pipe that tells inturn when everything the command left running has ended (``Leftovers`` in
``child_posix.py``). ``INTURN_FDS`` names them, each with the identity of the file it was
(``fd:device:inode``), as ``MAKEFLAGS`` names a jobserver's pipes. An ``inturn run X`` or
``inturn wait X`` started from inside that turn closes them before it joins: a run started in
the background that outlives the command would otherwise hold the very turn it waits behind,
and wait for itself for ever.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

TURN_FDS = "INTURN_FDS"


def describe(fds: Iterable[int]) -> str:
    """``fd:device:inode`` of each of ``fds``, comma-separated."""
    parts = []
    for fd in fds:
        found = os.fstat(fd)
        parts.append(f"{fd}:{found.st_dev}:{found.st_ino}")
    return ",".join(parts)


def drop_inherited_turn(name: str) -> None:
    """Close the descriptors of the turn of line ``name`` that this process inherited, if it
    runs inside one (``INTURN_NAME``); each only if it is still the file the variable names,
    so that a number reused for something else is left alone."""
    if os.environ.get("INTURN_NAME") != name or TURN_FDS not in os.environ:
        return
    for part in os.environ.pop(TURN_FDS).split(","):
        try:
            fd, device, inode = (int(word) for word in part.split(":"))
            found = os.fstat(fd)
        except (ValueError, OSError):
            continue  # malformed, or no longer open
        if fd > 2 and (found.st_dev, found.st_ino) == (device, inode):
            os.close(fd)
