"""Exit codes of the ``inturn`` command (documented in the README).

The command's own code when it ran; 75 when the line was busy (``--no-wait``) or the wait timed
out (``--conflict-exit-code`` changes it); 76 when a server backend lost the turn while the
command ran or as the turn came; 77 when a later ``--newest-wins`` run replaced this one
before its turn came (the command never started); 130 when interrupted while waiting, or
before the command started (128+N for another signal N), given by dying of SIGINT itself (see
``Signalled``), as when the command died of SIGINT; 126 when the command cannot be run, 127
when it is not found (as shells say); 141 when the output was closed early (``inturn status |
head -1``); 69 when a server backend is unavailable (``ServerUnavailable``: it does not answer,
is starting or shutting down, has no connection slot left or memory to write in, or a waiter
that lost its place could not join again for 60 s): the same call may work later; 2 for usage
errors, unusable setups (a wrong password, a missing database or grant, a host name that does
not exist) and system errors (a full disk, too many open files).

``inturn send``: 0 when the instance answered, 1 when it answered with an error, 69 when no
instance runs (or it does not listen, or it ended before it answered), 75 when it did not
answer in time.
"""

from __future__ import annotations

EXIT_FAILED = 1  # inturn send: the instance answered with an error
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 126  # the command exists but cannot be run (as shells say)
EXIT_NOT_FOUND = 127  # the command was not found (as shells say)
EXIT_NOT_RUNNING = 69  # inturn send: no instance took the message (EX_UNAVAILABLE)
EXIT_UNAVAILABLE = 69  # a server backend is unavailable: try again later (EX_UNAVAILABLE)
EXIT_CONFLICT = 75
EXIT_LOST = 76
EXIT_REPLACED = 77
EXIT_OUTPUT_CLOSED = 128 + 13  # as a tool killed by SIGPIPE


class Signalled(int):
    """The exit code 128+N of an ``inturn`` ended by signal N, which the ``inturn`` command
    gives by dying of that signal itself once everything is tidied (``cli.command``), as
    CPython does for an uncaught KeyboardInterrupt and ``timeout(1)`` for its command's
    signal. A shell that got Ctrl-C too stops its script only when its child died of SIGINT:
    a child that exits 130 is taken to have handled it, and the loop goes on. ``$?`` is 130
    all the same; in-process callers of ``cli.main`` get the plain number.

    ``whole_group``: the signal is sent to inturn's whole process group, not to inturn alone.
    So it is when the command died of a Ctrl-C while it held the terminal's foreground, which
    ``inturn run`` gave it: without that handover, the Ctrl-C would have reached inturn's
    group, the script that runs inturn included, which only then stops (bash stops a script
    on SIGINT only if it got the signal itself, or in some loops)."""

    signum: int
    whole_group: bool

    def __new__(cls, signum: int, whole_group: bool = False) -> Signalled:
        code = super().__new__(cls, 128 + signum)
        code.signum = signum
        code.whole_group = whole_group
        return code


def interrupted(signum: int, whole_group: bool = False) -> int:
    """The exit code of a run ended by ``signum``: inturn dies of SIGINT (see ``Signalled``);
    for other signals it exits 128+N, as it always has."""
    import signal

    return Signalled(signum, whole_group) if signum == signal.SIGINT else 128 + signum
