"""A PostgreSQL ticket: the session that holds its lock, and the watchdog that watches it.

While the turn is held, the watchdog sleeps in ``select`` on the session's socket. A server that
ends the session (``pg_terminate_backend``, a shutdown or restart) says so and closes the
socket, which wakes it at once; a socket quiet for ``PING_INTERVAL`` seconds gets a ``SELECT 1``
that must be answered within ``PING_TIMEOUT`` seconds (a query, not TCP keepalives alone, which
any proxy on the way answers even when nothing reaches the server). So a holder knows within
milliseconds, or within ``LOST_AFTER`` seconds when the network falls silent, that its turn may
be gone.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import psycopg
from psycopg import pq

from ...forks import forget_after_fork
from ...records import Ticket
from ..base import LostSignal, Membership

PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0
LOST_AFTER = PING_INTERVAL + PING_TIMEOUT

Connection = psycopg.Connection[Any]


class PostgresMembership(Membership):
    """Our ticket: its session holds the ticket's lock; a watchdog watches it while we hold.

    The watchdog sleeps in ``select`` on the session's socket: a server that ends the session
    (``pg_terminate_backend``, a shutdown) sends its goodbye and closes, which wakes it at
    once; when the socket stays quiet for ``PING_INTERVAL`` it sends ``SELECT 1`` and gives
    the server ``PING_TIMEOUT`` to answer, which bounds how long a silent network goes
    unnoticed.
    """

    def __init__(self, number: int, conn: Connection, me: Ticket) -> None:
        self.number = number
        self.earlier: list[int] = []  # the places it had before a lost session made it rejoin
        self.shared = me.shared
        self.newest_wins = me.newest_wins
        self.conn: Connection | None = conn
        self.me = me
        self.pid = os.getpid()
        self.holding = False
        self.handed_out = False
        self.signal = LostSignal()
        self._stop = threading.Event()
        self._armed = threading.Event()  # set when the turn comes, or when the ticket leaves
        # The watchdog's wake-up pipe, made by ``watch``. The watchdog closes it as it ends; a
        # wake-up written after that would land in whatever took the descriptor's number
        # (another session's socket): both hold this lock.
        self._wake_read = self._wake_write = -1
        self._pipe_lock = threading.Lock()
        self._pipe_closed = True
        self._watchdog = threading.Thread(
            target=self._watch, daemon=True, name="inturn-pg-watchdog"
        )
        forget_after_fork(self)

    def watch(self) -> None:
        """Start the watchdog, as soon as the ticket is made (the hand-off then waits for no
        new thread). A Ctrl-C on the way ends it again, the membership being given up."""
        try:
            with self._pipe_lock:
                self._wake_read, self._wake_write = os.pipe()
                self._pipe_closed = False
            self._watchdog.start()
        except BaseException:
            self.end_watchdog()
            raise

    def end_watchdog(self) -> None:
        """Stop the watchdog and wait for its end: a membership given up as it is made
        (Ctrl-C) leaves no thread waiting for a turn that will never come, nor its pipe."""
        self.stop_watchdog()
        self.wake_watchdog()
        with suppress(RuntimeError):  # not started (or only just): it ends as it starts
            self.join_watchdog()
        if not self._watchdog.is_alive():
            self._close_pipe()

    @property
    def lost(self) -> bool:
        return self.signal.lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        self.signal.on_lost(callback)

    def inheritable_handles(self) -> list[int]:
        """The session's socket: a command that inherits it keeps the turn if we die."""
        conn = self.conn
        if conn is None or conn.closed:
            return []
        self.handed_out = True
        return [conn.fileno()]

    def start_watchdog(self) -> None:
        self.holding = True
        self._armed.set()

    def _watch(self) -> None:
        try:
            self._armed.wait()
            while not self._stop.is_set():
                conn = self.conn
                if conn is None or conn.closed:
                    return
                try:
                    ready, _, _ = select.select(
                        [conn.pgconn.socket, self._wake_read], [], [], PING_INTERVAL
                    )
                except (OSError, ValueError, psycopg.Error):
                    ready = [-1]
                if self._stop.is_set():
                    return
                if not conn.lock.acquire(blocking=False):
                    self._stop.wait(0.05)  # the owner is using the session: proof enough
                    continue
                try:
                    if self._stop.is_set():
                        return
                    alive = _still_open(conn.pgconn) if ready else _ping(conn.pgconn, PING_TIMEOUT)
                finally:
                    conn.lock.release()
                if not alive:
                    self._declare_lost()
                    return
        finally:
            self._close_pipe()

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            if self._pipe_closed:
                return
            self._pipe_closed = True
            for fd in (self._wake_read, self._wake_write):
                with suppress(OSError):
                    os.close(fd)

    def _declare_lost(self) -> None:
        if self._stop.is_set():
            return
        self.signal.declare()
        conn = self.conn
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def stop_watchdog(self) -> None:
        """From now on the watchdog leaves the session alone (it checks before each look).
        It is not woken yet (``wake_watchdog``): a leaver sends its last statement first, so
        that the watchdog's thread does not take the interpreter from it meanwhile."""
        self._stop.set()

    def settle(self, conn: Connection) -> bool:
        """Whether the session can take a statement, once the watchdog's ``SELECT 1`` (if
        one is on its way) has its answer or has waited its ``PING_TIMEOUT`` for it: a leave
        that comes during a short silence of the network then still leaves, and one whose
        session stays silent knows it cannot. Call after ``stop_watchdog``."""
        if not conn.lock.acquire(timeout=PING_TIMEOUT + 1):
            return False  # the watchdog is bounded by PING_TIMEOUT: never seen, but bounded
        try:
            return not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE
        finally:
            conn.lock.release()

    def wake_watchdog(self) -> None:
        """Wake a stopped watchdog, so that it ends now rather than at its next look."""
        self._armed.set()
        with self._pipe_lock:
            if not self._pipe_closed:
                with suppress(OSError):
                    os.write(self._wake_write, b"x")

    def join_watchdog(self) -> None:
        if self._watchdog is not threading.current_thread():
            self._watchdog.join(PING_TIMEOUT + 1)

    def after_fork_in_child(self) -> None:
        """In a forked child: the turn stays with the parent; never touch its session.

        The watchdog thread was not copied into the child, and the parent's events may have
        been mid-use when it forked: fresh ones say "stopped" without touching the old. The
        child's copy of the session's socket is made ``/dev/null`` (``disown``), so that a
        child that outlives a dead parent does not keep its turn or place.
        """
        if self.conn is not None:
            disown(self.conn)
        self.conn = None
        self.signal = LostSignal()
        self._stop, self._armed = threading.Event(), threading.Event()
        self._pipe_lock, self._pipe_closed = threading.Lock(), True  # never written to here
        self._stop.set()
        self._armed.set()
        self._watchdog = threading.current_thread()


def disown(conn: Connection) -> None:
    """In a forked child: turn its copy of ``conn``'s socket into ``/dev/null``.

    The server ends a session when the last copy of its socket closes, and a child keeps its
    copy until it exits or execs: a helper process forked by a holder would keep the turn
    held after the holder died. The copy cannot simply be closed, as libpq keeps the number
    (it never closes a parent's connection in a child, but a number freed would be reused).
    """
    with suppress(Exception):  # a session already broken or closed: nothing to disown
        fd = conn.fileno()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)


def _still_open(pgconn: pq.abc.PGconn) -> bool:
    """Whether a session whose socket turned readable while idle is still there: a server
    that ends a session says so and closes the socket."""
    try:
        pgconn.consume_input()
    except (psycopg.Error, OSError):
        return False
    return bool(pgconn.status == pq.ConnStatus.OK)


def _ping(pgconn: pq.abc.PGconn, timeout: float) -> bool:
    """``SELECT 1`` with a deadline, at the libpq level (psycopg's calls wait forever)."""
    deadline = time.monotonic() + timeout
    try:
        pgconn.send_query(b"SELECT 1")
        while pgconn.flush():
            if not _ready(pgconn.socket, deadline, write=True):
                return False
        ok = True
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    return ok
                ok = ok and result.status == pq.ExecStatus.TUPLES_OK
            if not _ready(pgconn.socket, deadline):
                return False
    except (psycopg.Error, OSError, ValueError):
        return False


def _ready(fd: int, deadline: float, write: bool = False) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    sets: tuple[list[int], list[int]] = ([], [fd]) if write else ([fd], [])
    readable, writable, _ = select.select(sets[0], sets[1], [], remaining)
    return bool(readable or writable)
