"""The live status line ``inturn run`` keeps on a terminal while it waits.

The waiter itself sleeps in the kernel; this display only redraws its clock once a second.
Where the line is kept locally it also re-reads who is ahead (a folder listing, no lock
calls), so the place shown stays right even when someone further ahead leaves.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from .line import Line
from .queue import Progress
from .records import Ticket


class WaitingDisplay:
    def __init__(self, line: Line, stream: TextIO) -> None:
        self.line = line
        self.stream = stream
        self.started = time.monotonic()
        self.position = 0
        self.holders: list[Ticket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._shown = False
        self._thread: threading.Thread | None = None
        self.ticket = 0

    def update(self, progress: Progress) -> None:
        """Called by the waiter each time it goes back to sleep."""
        holders = self.line.store.read(progress.ahead[: self.line.slots])  # records only
        with self._lock:
            self.ticket = progress.ticket
            self.position = progress.position
            self.holders = [t for t in holders if t is not None]
        self._draw()
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True, name="inturn-display")
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if not self.line.store.remote:
                self._refresh()
            self._draw()

    def _refresh(self) -> None:
        """Re-read who is ahead from the folder; the lock calls stay with the waiter."""
        store = self.line.store
        try:
            ahead = [n for n in store.look(None).tickets if n < self.ticket]
            records = [t for t in store.read(ahead) if t is not None]
        except Exception:  # a display must never break the wait
            return
        with self._lock:
            self.position = len(ahead) + 1
            self.holders = [t for t in records if t.holding] or self.holders

    def _draw(self) -> None:
        from .cli import duration

        with self._lock:
            if self._stop.is_set():
                return
            waited = duration(time.monotonic() - self.started)
            if self.holders:
                first = self.holders[0]
                held = duration(time.time() - first.acquired_at) if first.acquired_at else "?"
                who = f", held by {first.describe()} for {held}"
            else:
                who = ""
            text = f"waiting for {self.line.name}: #{self.position} in line{who} ({waited})"
            self.stream.write("\r\x1b[K" + text[:200])
            self.stream.flush()
            self._shown = True

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
