"""Exit codes of the ``inturn`` command (documented in the README).

The command's own code when it ran; 75 when the line was busy (``--no-wait``) or the wait timed
out (``--conflict-exit-code`` changes it); 76 when a server backend lost the turn while the
command ran or as the turn came; 77 when a later ``--newest-wins`` run replaced this one
before its turn came (the command never started); 130 when interrupted while waiting, or
before the command started (128+N for another signal N); 126 when the command cannot be run,
127 when it is not found (as shells say); 141 when the output was closed early (``inturn status
| head -1``); 2 for usage errors, unusable setups and system errors (a full disk, too many open
files).

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
EXIT_CONFLICT = 75
EXIT_LOST = 76
EXIT_REPLACED = 77
EXIT_INTERRUPTED = 130
EXIT_OUTPUT_CLOSED = 128 + 13  # as a tool killed by SIGPIPE
