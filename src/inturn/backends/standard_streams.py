"""Keep a line's own files off descriptors 0, 1 and 2 when a process starts without them."""

from __future__ import annotations

import os

STANDARD_DESCRIPTORS = (0, 1, 2)  # stdin, stdout, stderr


def fill_closed_standard_descriptors() -> list[int]:
    """Open ``os.devnull`` on each of stdin, stdout and stderr that is closed; the ones filled.

    A process can start with them closed (a daemon's child, ``2>&-``). A file opened then takes
    the lowest free number, so a line's ticket would become its stderr: a daemon pointing its
    standard streams at ``/dev/null`` with ``dup2`` (as ``daemon(3)`` does) would close it and
    free the turn while its holder runs on, and whatever is written to stderr would land in it.
    """
    filled = []
    for fd in STANDARD_DESCRIPTORS:
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd`` itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # as a standard stream is, for the children
            filled.append(fd)
    return filled
