"""The live status line ``inturn run`` keeps on a terminal while it waits.

The waiter itself sleeps in the kernel; this display only redraws its clock once a second.
Where the line is kept locally it also re-reads which of the tickets the waiter last counted
ahead are still there (a folder listing, no lock calls), so the place shown stays right even
when someone further ahead leaves.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..durations import duration
from ..line import Line
from ..records import LineStatus, Progress, Ticket, escape_controls, shell_words

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import TextIO

SHOWN_AHEAD = 64  # records read for the status line: enough to count the readers holding
ECHO_ROOM = 3  # columns left free at the end of the status line: the echoed ^C, and one more


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def in_foreground(stream: TextIO) -> bool:
    """Whether inturn may draw on ``stream`` now: not when it is inturn's controlling terminal
    and inturn's job is in the background there (``inturn run ... &``, or after Ctrl-Z and
    ``bg``), where a status line would be drawn over the shell's prompt and, with ``stty
    tostop``, stop inturn by SIGTTOU, with the turn still to come or already held. Asked at
    every redraw, as ``pv`` does: ``fg`` and ``bg`` move a job at any time."""
    if sys.platform == "win32":
        return True
    try:
        return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # not a controlling terminal: no jobs there
        return True


def width(text: str) -> int:
    """How many terminal columns ``text`` takes: wide (East Asian) characters two, combining
    marks none."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def fit(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` terminal columns, ending in ``...`` when cut."""
    if width(text) <= columns:
        return text
    kept, used = [], 0
    for char in text:
        used += width(char)
        if used > max(0, columns - 3):
            break
        kept.append(char)
    return "".join(kept) + "..."[: max(0, columns)]


def pad(text: str, columns: int) -> str:
    """``text`` padded with spaces to ``columns`` terminal columns."""
    return text + " " * max(0, columns - width(text))


class WaitingDisplay:
    def __init__(self, line: Line, stream: TextIO) -> None:
        self.line = line
        self.stream = stream
        self.started = time.monotonic()
        self.position = 0
        self.ahead: tuple[int, ...] = ()  # the live tickets the waiter last counted ahead
        self.holders: list[Ticket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._shown = False
        self._thread: threading.Thread | None = None

    def update(self, progress: Progress) -> None:
        """Called by the waiter each time it goes back to sleep."""
        try:
            records = self.line.store.read(progress.ahead[:SHOWN_AHEAD])  # records only
        except Exception:  # a display must never break the wait
            records = list(self.holders)
        with self._lock:
            self.position = progress.position
            self.ahead = progress.ahead
            self.holders = [t for t in records if t is not None and t.holding]
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
        """Re-read which of the live tickets the waiter last counted ahead are still in the
        folder: the lock calls, which tell a dead ticket from a live one, stay with the
        waiter, so a ticket it found dead but could not remove (another user's) is not
        counted again here."""
        store = self.line.store
        with self._lock:
            counted = self.ahead
        try:
            present = set(store.look(None).tickets)
            ahead = [n for n in counted if n in present]
            records = [t for t in store.read(ahead[:SHOWN_AHEAD]) if t is not None]
        except Exception:  # a display must never break the wait
            return
        with self._lock:
            if counted is self.ahead:  # the waiter has not counted again meanwhile
                self.position -= len(counted) - len(ahead)
                self.ahead = tuple(ahead)
            self.holders = [t for t in records if t.holding] or self.holders

    def _draw(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            waited = duration(time.monotonic() - self.started)
            if self.holders:
                first = self.holders[0]
                held = duration(time.time() - first.acquired_at) if first.acquired_at else "?"
                if first.shared and len(self.holders) > 1:
                    who = f", held by {len(self.holders)} sharing for {held}"
                else:  # with slots, the longest holder, and how many more
                    more = f" and {len(self.holders) - 1} more" if len(self.holders) > 1 else ""
                    who = f", held by {first.describe(live=True)} for {held}{more}"
            else:
                who = ""
            name = escape_controls(self.line.name)
            text = f"waiting for {name}: #{self.position} in line{who}; waiting {waited}"
            # One row, never wrapped: a wrapped row would stay behind at every redraw. Room is
            # left after it for what the terminal itself echoes there (^C, ^Z, ^\), which
            # would otherwise wrap and leave the line behind when it is cleared.
            if in_foreground(self.stream):
                line = fit(text, _columns(self.stream) - ECHO_ROOM)
                self._shown = self._write("\r\x1b[K" + line)

    def _write(self, text: str) -> bool:
        """Write ``text``; a terminal gone (hung up: EIO) ends the display, never the wait,
        nor the turn that the wait may have just taken. SIGTTOU is blocked meanwhile, for
        this thread: if the job was moved to the background since ``in_foreground`` was
        asked, the write goes through rather than stop inturn (the kernel sends no SIGTTOU
        to a thread that blocks it)."""
        with _no_terminal_stop():
            try:
                self.stream.write(text)
                self.stream.flush()
                return True
            except (OSError, ValueError):
                self._stop.set()
                return False

    def close(self) -> None:
        """Clear the status line, and wait for the drawing thread to have ended: a process
        that exits while one of its threads is still ending can crash under Wine."""
        with self._lock:
            self._stop.set()
            if self._shown and in_foreground(self.stream):  # else a prompt may be there now
                self._write("\r\x1b[K")
        if self._thread is not None:
            self._thread.join()


@contextmanager
def _no_terminal_stop() -> Iterator[None]:
    """SIGTTOU blocked for the calling thread, where threads can block signals."""
    if sys.platform == "win32":
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def format_line(status: LineStatus, now: float) -> str:
    name = escape_controls(status.name)
    if not status.holders and not status.waiters:
        return f"{name}: free (nobody holds or waits)"
    rows: list[tuple[str, ...]] = [
        ("#", "TICKET", "STATE", "MODE", "PID", "USER", "HOST", "FOR", "CMD")
    ]
    for place, ticket in enumerate((*status.holders, *status.waiters), start=1):
        rows.append(_row(place, ticket, now))
    widths = [max(width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{name}: {len(status.holders)} holding, {len(status.waiters)} waiting"]
    for row in rows:
        cells = [pad(cell, columns) for cell, columns in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _row(place: int, ticket: Ticket, now: float) -> tuple[str, ...]:
    state = "holding" if ticket.holding else "waiting"
    if ticket.stopped:  # why a turn does not pass
        state += ", stopped"
    since = ticket.acquired_at if ticket.holding else ticket.joined_at
    return (
        str(place),
        str(ticket.number),
        state,
        ticket.mode,
        str(ticket.pid) if ticket.pid is not None else "?",
        escape_controls(ticket.user or "?"),
        escape_controls(ticket.host or "?"),
        duration(None if since is None else now - since),
        escape_controls(shell_words(ticket.command)),
    )


# The widest a line's name is shown in the table of every line: names may be kilobytes long,
# and one of them must not push who holds and who waits, on every line, off the screen.
NAME_COLUMNS = 40


def format_overview(
    statuses: list[LineStatus], where: str, now: float, name_columns: int = NAME_COLUMNS
) -> str:
    if not statuses:
        return f"no lines in {escape_controls(where)}"
    # HELD BY, whose width has no bound but the command's, comes last, as CMD does in the
    # table of one line: before it, it would push FOR off a terminal's edge.
    rows = [("LINE", "HOLDING", "WAITING", "FOR", "HELD BY")]
    for status in statuses:
        first = status.holders[0] if status.holders else None
        held_for = None if first is None or first.acquired_at is None else now - first.acquired_at
        rows.append(
            (
                fit(escape_controls(status.name), name_columns),
                str(len(status.holders)),
                str(len(status.waiters)),
                duration(held_for) if first is not None else "-",
                first.describe(live=True) if first is not None else "-",
            )
        )
    widths = [max(width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
