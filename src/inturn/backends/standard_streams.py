"""Keep a line's own files off descriptors 0, 1 and 2 when a process starts without them."""

from __future__ import annotations

import os
import sys

STANDARD_DESCRIPTORS = (0, 1, 2)  # stdin, stdout, stderr


def fill_closed_standard_descriptors() -> None:
    """Open ``os.devnull`` on each of stdin, stdout and stderr that is closed.

    A process can start with them closed (a daemon's child, ``2>&-``). A file opened then takes
    the lowest free number, so a line's ticket would become its stderr: a daemon pointing its
    standard streams at ``/dev/null`` with ``dup2`` (as ``daemon(3)`` does) would close it and
    free the turn while its holder runs on, and whatever is written to stderr would land in it.
    """
    for fd in STANDARD_DESCRIPTORS:
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd`` itself
            if null == fd:
                os.set_inheritable(fd, True)  # as a standard stream is, for the children
            elif sys.platform == "win32":  # the C runtime keeps 0, 1 and 2 from ``open``
                os.dup2(null, fd)
                os.close(null)
            else:  # another thread opened a file there meanwhile: never close it
                os.close(null)
