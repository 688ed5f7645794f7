"""One opening of a local line's folder, shared by the threads of a store.

``inturn forget`` removes a line's folder, and the next use makes it anew. A store that finds
its folder gone starts a new opening for the uses that follow, while threads still in an
operation on the old one keep using it: an opening is closed only once it was replaced (or
its store closed) and its last user is done. Closing it earlier would pull the descriptor out
from under those threads, and the system could give its number to another file meanwhile.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress

from ..forks import forget_after_fork


class FolderOpening:
    """The folder's descriptor ``fd`` and the guard file kept open in it, counted by users."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.guard_lock = threading.Lock()  # held by the one thread using ``kept_guard``
        self.kept_guard: int | None = None  # the guard file, opened once through ``fd``
        self._lock = threading.Lock()
        self._users = 0
        self._retired = False
        self._closed = False
        forget_after_fork(self)

    def enter(self) -> None:
        """One more user; only the store's current opening gets new users."""
        with self._lock:
            self._users += 1

    def leave(self) -> None:
        """One user fewer: the last one closes an opening that was replaced."""
        with self._lock:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self._close()

    def retire(self) -> None:
        """Replaced (or its store closed): closed now if unused, else by its last user."""
        with self._lock:
            self._retired = True
            unused = self._users == 0
        if unused:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        kept, self.kept_guard = self.kept_guard, None
        try:
            if kept is not None:
                os.close(kept)
        finally:
            os.close(self.fd)

    def after_fork_in_child(self) -> None:
        """The child's copies are its own to close (closing them leaves the parent's guard
        lock alone); the threads that used them stayed in the parent."""
        self._lock = threading.Lock()
        self.guard_lock = threading.Lock()
        if not self._closed:
            self._closed = True
            kept, self.kept_guard = self.kept_guard, None
            for fd in (self.fd, kept):
                if fd is not None:
                    with suppress(OSError):
                        os.close(fd)
