"""``inturn top`` (also ``inturn status --watch``): a live, full-screen view of one line or all.

For one line, the view sleeps on the tickets it shows the way ``Line.wait`` does: a thread per
shown ticket blocks in the store's ``wait(None, ...)``, which takes no ticket, and wakes the
view the moment that ticket leaves or dies, so a turn changing hands is drawn at once. The
listing (no lock calls) is also re-read on a timer, by default once a second, for arrivals
and for the clocks; the overview of every line uses the timer alone.

This module decides what is shown; ``screen.py`` owns the terminal (and puts it back on every
way out). When stdout is not a terminal the command prints what ``inturn status`` prints,
once.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..backends.base import CancelToken
from ..errors import Cancelled, UsageError
from ..line import Line
from ..listing import lines
from ..records import LineStatus, Ticket, escape_controls
from .display import NAME_COLUMNS, format_line, format_overview
from .parser import line_from

# Tickets watched at most: each is a sleeping thread here, and on a server one more session
# or connection, so a remote line watches its holders and first waiters only (the timer
# still shows the rest).
WATCHED_LOCAL = 32
WATCHED_REMOTE = 4

# How long, beyond a backend's lock delay, the next holder may take to mark itself holding
# once the turn has passed to it (it wakes, looks, and writes: well under a second).
SETTLE_MARGIN = 1.0

# The columns the table of every line needs after the names for HOLDING, WAITING and FOR
# ("  HOLDING  WAITING  1m12s"), and the fewest a name is cut to on a narrow terminal.
COUNT_COLUMNS = 26
MIN_NAME_COLUMNS = 10


def top(args: argparse.Namespace) -> int:
    """The live view on a terminal; ``inturn status`` printed once anywhere else."""
    if args.action == "status" and not args.watch:
        raise UsageError("--interval goes with --watch: inturn status --watch --interval SECONDS")
    if getattr(args, "json", False) or getattr(args, "names", False):
        raise UsageError(
            "--watch draws a live view for people; for scripts, use --json or --names "
            "without --watch"
        )
    interval = args.interval if args.interval is not None else 1.0
    if not is_terminal(sys.stdout):
        from .status import status

        args.json = False
        return status(args)
    if sys.platform == "win32":
        raise UsageError("the live view needs a POSIX terminal for now; use inturn status")
    else:
        from .screen import live

        def source(wake: Callable[[], None]) -> Source:
            return OneLine(line_from(args), wake) if args.name is not None else EveryLine(args)

        return live(source, interval)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (OSError, ValueError):  # closed
        return False


# --------------------------------------------------------------------------- what is shown


class Source(Protocol):
    """One line or every line: read afresh, and drawn into a screen of a given size."""

    def read(self) -> Any: ...

    def title(self) -> str: ...

    def rows(self, snapshot: Any, now: float, height: int, columns: int) -> list[str]: ...

    def settling(self, snapshot: Any) -> float | None:
        """Seconds a turn now passing may still take to show its next holder (None: no turn
        is passing)."""

    def close(self) -> None: ...


class OneLine:
    """One line: holders, then waiters, as ``inturn status NAME`` shows them, with clocks;
    the shown tickets are watched, so that a leave or a death is drawn at once."""

    def __init__(self, line: Line, wake: Callable[[], None]) -> None:
        self.line = line
        self.wake = wake
        self.watchers: Watchers | None = None

    def read(self) -> LineStatus:
        status = self.line.status()
        if self.watchers is None:
            self.watchers = Watchers(self.line, self.wake)
        self.watchers.present([t.number for t in (*status.holders, *status.waiters)])
        return status

    def title(self) -> str:
        store = self.line.store
        return f"inturn top: {escape_controls(self.line.name)} ({escape_controls(store.where)})"

    def rows(self, snapshot: LineStatus, now: float, height: int, columns: int) -> list[str]:
        tickets = (*snapshot.holders, *snapshot.waiters)
        if len(tickets) + 2 <= height:  # the summary, the column names, every ticket
            shown, text = tickets, format_line(snapshot, now).splitlines()
        else:
            shown = tickets[: max(0, height - 3)]  # and a row saying how many more
            text = _cut_line(snapshot, shown, now)
        watched = WATCHED_REMOTE if self.line.store.remote else WATCHED_LOCAL
        if self.watchers is not None:
            self.watchers.watch([t.number for t in shown[:watched]])
        return text

    def settling(self, snapshot: LineStatus) -> float | None:
        if snapshot.passing_to() is None:
            return None
        return self.line.store.lock_delay + SETTLE_MARGIN  # after a death, the lock delay

    def close(self) -> None:
        if self.watchers is not None:
            self.watchers.stop()
        self.line.close()


def _cut_line(status: LineStatus, shown: Sequence[Ticket], now: float) -> list[str]:
    """The table of ``format_line`` for the tickets that fit, under a summary that counts
    them all, and a last row for the rest."""
    holders = tuple(t for t in shown if t.holding)
    waiters = tuple(t for t in shown if not t.holding)
    table = format_line(status._replace(holders=holders, waiters=waiters), now).splitlines()
    summary = (
        f"{escape_controls(status.name)}: "
        f"{len(status.holders)} holding, {len(status.waiters)} waiting"
    )
    rows = [summary, *(table[1:] if shown else [])]
    more_holding = len(status.holders) - len(holders)
    more_waiting = len(status.waiters) - len(waiters)
    if more_holding and more_waiting:
        rows.append(
            f"  ... {more_holding + more_waiting} more "
            f"({more_holding} holding, {more_waiting} waiting)"
        )
    elif more_holding:
        rows.append(f"  ... {more_holding} more holding")
    elif more_waiting:
        rows.append(f"  ... {more_waiting} more waiting")
    return rows


class EveryLine:
    """Every line of one place, as ``inturn status`` lists them (read on the timer only)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..backends import open_backend

        self.backend = open_backend(
            args.backend, scope="machine" if args.machine else "user", directory=args.dir
        )

    def read(self) -> list[LineStatus]:
        return lines(backend=self.backend)

    def title(self) -> str:
        return f"inturn top: every line ({escape_controls(self.backend.where)})"

    def rows(self, snapshot: list[LineStatus], now: float, height: int, columns: int) -> list[str]:
        # On a narrow terminal the names are cut shorter, so that the counts stay in view.
        names = min(NAME_COLUMNS, max(MIN_NAME_COLUMNS, columns - COUNT_COLUMNS))
        text = format_overview(snapshot, self.backend.where, now, names).splitlines()
        if len(text) <= height:
            return text
        kept = text[: max(1, height - 1)]
        return [*kept, f"... {len(text) - len(kept)} more lines"]

    def settling(self, snapshot: list[LineStatus]) -> float | None:
        return None

    def close(self) -> None:
        self.backend.close()


class Watchers:
    """One thread per watched ticket, asleep in the store (``wait(None, [number])``, as
    ``Line.wait`` sleeps: no ticket taken) until that ticket leaves or dies; then it wakes the
    view. A ticket number is never used twice, so a ticket is watched once at most: a watch
    that ended without the ticket leaving (a server hiccup) is left to the timer, never
    started again in a loop."""

    def __init__(self, line: Line, wake: Callable[[], None]) -> None:
        self.line = line
        self.wake = wake
        self._lock = threading.Lock()
        self._active: dict[int, tuple[CancelToken, threading.Thread]] = {}
        self._let_go: list[threading.Thread] = []  # cancelled, maybe still letting go
        self._ended: set[int] = set()
        self._stopped = False

    def present(self, numbers: Sequence[int]) -> None:
        """The tickets in line now: forget the watches ended for tickets that are gone."""
        with self._lock:
            self._ended.intersection_update(numbers)

    def watch(self, numbers: Sequence[int]) -> None:
        """Watch exactly these tickets: start a thread for each new one, stop the others."""
        wanted = set(numbers)
        with self._lock:
            if self._stopped:
                return
            self._let_go = [t for t in self._let_go if t.is_alive()]
            for number in [n for n in self._active if n not in wanted]:
                token, thread = self._active.pop(number)
                token.cancel()
                self._let_go.append(thread)
            for number in numbers:
                if number in self._active or number in self._ended:
                    continue
                token = CancelToken()
                thread = threading.Thread(
                    target=self._sleep_on,
                    args=(number, token),
                    daemon=True,
                    name=f"inturn-top-{number}",
                )
                self._active[number] = (token, thread)
                thread.start()

    def _sleep_on(self, number: int, token: CancelToken) -> None:
        try:
            self.line.store.wait(None, [number], None, token)
        except Cancelled:
            return
        except Exception:  # the next read says what is wrong, in one line
            pass
        with self._lock:
            watch = self._active.get(number)
            if watch is None or watch[0] is not token:
                return  # let go meanwhile
            del self._active[number]
            self._ended.add(number)
        self.wake()

    def stop(self, patience: float = 2.0) -> None:
        """Cancel every watch and give their threads a moment to let go of the store (a
        server session is handed back, not cut, before the line closes)."""
        with self._lock:
            self._stopped = True
            watches, self._active = list(self._active.values()), {}
            threads = [*self._let_go, *(thread for _, thread in watches)]
        for token, _ in watches:
            token.cancel()
        deadline = time.monotonic() + patience
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
