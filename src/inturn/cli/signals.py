"""The signals of ``inturn run``, from before it joins the line until its turn is released.

A handler never raises, so no signal can leave a turn taken but not released, with one
exception: while inturn sleeps in the kernel for its turn on its main thread (see
``CancelToken.interrupt``), where raising ends the sleep and the queue leaves the line. While
inturn waits, a signal ends the wait (through a cancel token: the queue leaves the line); once
the command exists, signals are passed on to its process group; in between, and after the
command has ended, they are only noted, and the turn is released first.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import suppress
from types import FrameType

from ..backends.base import CancelToken

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import Any

FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGBREAK")
# Passed on followed by SIGCONT, as ``kill`` does to a shell's stopped job and ``timeout(1)``
# to its command: sent to end the command, they must reach it even if it is stopped.
ENDING = frozenset(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(signal, name)
)


class RunSignals:
    """The signal handling of one ``inturn run``, from before the wait to the release.

    A handler never raises, so no signal can leave a turn taken but not released (except out
    of a sleep for the turn, see the module docstring). While ``waiting``, it notes the signal
    in ``pending`` and cancels ``cancel``, which ends the wait (the queue leaves the line); a
    turn that came at that very moment is released by the caller, who sees ``pending``.
    After that, with ``target`` set (the command's process group) it passes the signal on,
    otherwise it notes it in ``pending``.
    """

    def __init__(self) -> None:
        self.waiting = True
        self.pending: list[int] = []
        self.cancel = CancelToken(by_signal=True)
        self.target: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch each of ``FORWARDED`` that inturn was not started ignoring. One ignored stays
        ignored, by inturn and by its command (ignoring survives exec), as for any command
        started under ``nohup`` (SIGHUP) or with ``&`` in a script (SIGINT, SIGQUIT)."""
        for name in FORWARDED:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) != signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def settle(self) -> None:
        """The turn is released and inturn only has to exit: ignore these signals from now on.

        A signal at this point must not change the exit code (the command's) nor kill inturn
        on its way out; restoring the old handlers would let a signal that comes a moment
        after the release do both.
        """
        for signum in self._previous:
            signal.signal(signum, signal.SIG_IGN)
        self._previous.clear()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.waiting:
            self.pending.append(signum)
            self.cancel.cancel()
            self.cancel.interrupt()  # raises out of a sleep on this thread, if it is in one
            return
        target = self.target
        if target is None:
            self.pending.append(signum)
            return
        if sys.platform != "win32":  # on Windows the console reaches the command itself
            with suppress(OSError):
                os.killpg(target, signum)
                if signum in ENDING:  # a stopped process acts on it only once continued
                    os.killpg(target, signal.SIGCONT)
