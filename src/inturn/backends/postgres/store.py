"""Lines on a PostgreSQL server, for processes on many hosts (``postgresql://`` backends).

The queue algorithm is ``queue.py``'s; this module supplies its primitives with session-level
advisory locks (https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS):

* each ticket has its own connection, whose session holds the ticket's exclusive advisory
  lock from ``join`` to ``leave``. PostgreSQL releases session locks the moment the session
  ends, so a holder killed with SIGKILL, or whose backend is ended with
  ``pg_terminate_backend``, frees its ticket at once;
* a waiter blocks *inside one statement*, ``pg_advisory_lock_shared`` on the ticket ahead, on
  its own ticket's connection. The server wakes it when that lock goes: no polling, and no
  query at all from an idle waiter. A timeout is the server's ``lock_timeout``, set in that
  same statement; Ctrl-C makes psycopg send a cancel request; a ``CancelToken`` does too;
* liveness is read from ``pg_locks`` (a granted exclusive lock held by the very backend pid
  the ticket recorded), never from process ids on the client's host.

Where the statements and the tables are: ``statements.py``; the URL: ``address.py``; the
holder's watchdog: ``membership.py``.

Losing the connection (documented in the README): a holder's watchdog thread sleeps in
``select`` on the session's socket. A server that ends the session (``pg_terminate_backend``, a
shutdown or restart) says so and closes it, which the watchdog sees at once; a socket quiet
for ``PING_INTERVAL`` seconds gets a ``SELECT 1`` that must be answered within ``PING_TIMEOUT``
seconds (a query, not TCP keepalives alone, because keepalives are answered by any proxy or
load balancer on the way even when nothing reaches the server any more). So a holder knows
within milliseconds, or within ``LOST_AFTER`` seconds when the network falls silent, that its
turn may be gone: ``Membership.lost`` turns True and the ``on_lost`` callbacks run (``inturn
run`` then stops its command and exits 76). The server, for its part, keeps a silent client's
session (and turn) for about 30 s (``tcp_keepalives_*`` and ``tcp_user_timeout`` set per
session), and the next holder after a session that ended without leaving waits the lock delay
(``?inturn_lock_delay=``, 3 s by default) before it starts, so the cut-off holder has stopped
first. A waiter that loses its connection reconnects and joins again at the back of the line
(its old place died with its session), for up to ``RECONNECT_WINDOW`` seconds, then fails with
a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo as libpq_conninfo
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.rows import dict_row

from ...errors import BackendError, Cancelled, LostTurn, Replaced, ServerUnavailable, Timeout
from ...forks import forget_after_fork
from ...names import decode, encode
from ...records import Ticket, warn, warn_once
from ..base import (
    BUSY_PATIENCE,
    Backend,
    CancelToken,
    GuardTaken,
    LineStore,
    Membership,
    Patience,
    ServerClock,
    TookNewPlace,
    View,
    Woke,
    check_scope,
    pause,
    wait_woken,
)
from .address import Address, connect_options, parse
from .membership import PING_TIMEOUT, Connection, PostgresMembership, disown
from .statements import (
    LEGACY_VERSION,
    SCHEMA_VERSION,
    Statements,
    fold,
    missing_grants,
    sql_identifier,
    text_of,
)

RECONNECT_WINDOW = 60.0
MAX_IDLE = 2  # connections kept open per process for the next ticket or status
CANCEL_AGAIN_AFTER = 0.2  # a cancel request that came before its statement is sent again
# A statement the server should have ended by now (its lock_timeout came, or it was asked to
# cancel it) but that has not answered for this long: the server is frozen, or the path to it
# silent (a middlebox that keeps TCP alive), and its connection is given up on our side.
UNANSWERED_AFTER = 3.0
CLIENT_CHECK_MS = 500  # server notices a waiter's vanished client this often (PG >= 14)

# Server-side settings of every inturn session (all settable by any role). A role's or a
# database's defaults (ALTER ROLE ... SET) must not change how inturn's statements behave:
# they need READ COMMITTED, where each statement sees what was committed before it began (a
# joiner under the guard sees every earlier ticket; a waiter's look after waking sees the
# leaver gone), and no timeouts but the ones inturn sets for a single statement.
SERVER_SETTINGS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "4",
    "tcp_user_timeout": "30000",
    "default_transaction_isolation": "read committed",
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    # Times kept as double precision come back as text: a negative setting rounds them to
    # a few digits (-15: one), so a turn taken a second ago would show as held for no time.
    "extra_float_digits": "3",
}
SERVER_SETTINGS_14 = {
    # While a waiter blocks in the lock manager its backend reads nothing from the client;
    # this makes it check the socket, so a killed waiter's ticket is freed within 0.5 s.
    "client_connection_check_interval": str(CLIENT_CHECK_MS),
    "idle_session_timeout": "0",
}
SERVER_SETTINGS_17 = {"transaction_timeout": "0"}  # it would end a waiter's long statement

T = TypeVar("T")


# --------------------------------------------------------------------------- errors


def _reason(exc: BaseException, address: Address) -> str:
    """The server's or libpq's message on one line, without any password: the message and
    its whole detail (a deadlock's detail names every session of the cycle, one per line),
    not the hint or context that follow."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    told = lines[:1]
    for line in lines[1:]:
        if line.startswith(("HINT:", "CONTEXT:", "LINE ")) or len(told) == 8:
            break
        told.append(line)
    text = "; ".join(told) or type(exc).__name__
    return address.scrub(text)


def _deadlock(exc: BaseException) -> bool:
    """The server ended a statement to break a deadlock: psycopg calls it an operational
    error, but the session lives on; only that statement's transaction was rolled back."""
    return isinstance(exc, pg_errors.DeadlockDetected)


# SQLSTATEs of a server that does not take this session now, though the same call may work
# later: a shutdown or crash (57P01, 57P02), starting up or in recovery (57P03), no connection
# slot left (53300, unless a role's or database's own limit: see ``_unavailable``), and the
# connection exceptions (class 08).
UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "53300", "08")

# libpq's and the server's words (in English) for the same when no SQLSTATE comes with them,
# as when a connection fails: nobody listens, the path is down or silent, the server ended
# the connection, or it says it cannot take one now ("the database system is starting up",
# "... is shutting down", "... is in recovery mode", "... is not yet accepting connections").
UNAVAILABLE_WORDS = (
    "Connection refused",
    "timeout expired",
    "timed out",
    "No route to host",
    "Network is unreachable",
    "Host is unreachable",
    "Connection reset",
    "closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "consuming input failed",
    "EOF detected",
    "the connection is lost",
    "the connection is closed",
    "the database system is ",
    "terminating connection due to administrator command",
    "too many clients already",
    "remaining connection slots are reserved",
    "Resource temporarily unavailable",
    "Temporary failure in name resolution",
)

# Words that name a setup to fix, which beat the above when libpq tried several hosts.
SETUP_WORDS = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "certificate",
    "permission denied",
    "too many connections for role",
    "too many connections for database",
)


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is unavailable for now (``ServerUnavailable``, exit
    69) rather than that the setup is wrong (a password, a missing database or role, a grant,
    a host name that does not exist, TLS: ``BackendError``, exit 2).

    A role's or database's own CONNECTION LIMIT counts as setup: it is a quota its owner
    set for these callers alone (0 or below the sessions they run, every retry fails
    alike), and the fix is to raise it or to run fewer at once. The server's
    max_connections, shared with every other client, is the server's load of the moment."""
    if not isinstance(exc, psycopg.OperationalError) or _deadlock(exc):
        return False
    text = str(exc)
    if any(words in text for words in SETUP_WORDS):  # so too with several hosts in the URL
        return False
    resolved = re.search(r"failed to resolve host .*\[Errno (-?\d+)\]", text)
    if resolved is not None:  # only "try again" from the resolver: a name that is not, is not
        return int(resolved.group(1)) == getattr(socket, "EAI_AGAIN", None)
    state = exc.sqlstate or ""
    if state:
        return state.startswith(UNAVAILABLE_STATES)
    if re.search(r'on socket ".*" failed: No such file or directory', text):
        return True  # a local socket whose server is not running
    return any(words in text for words in UNAVAILABLE_WORDS)


def _failure_kind(exc: BaseException) -> type[BackendError]:
    """``ServerUnavailable`` for a server unavailable for now (``exc`` is one, or says so),
    else ``BackendError``: the class of the one-line error that reports ``exc``."""
    away = isinstance(exc, ServerUnavailable) or _unavailable(exc)
    return ServerUnavailable if away else BackendError


class _Translate:
    """Turns psycopg errors into one-line ``BackendError``s naming the fix."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend

    def __call__(self, exc: psycopg.Error) -> BackendError:
        b = self.backend
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return BackendError(b.read_only_message())
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return BackendError(
                f"the role may not use inturn's tables at {b.where} ({_reason(exc, b.address)}): "
                f"ask the owner of schema {b.stmts.schema} for the grants listed in the "
                "inturn README"
            )
        if isinstance(exc, psycopg.OperationalError) and not _deadlock(exc):
            return _failure_kind(exc)(
                f"lost the connection to {b.where}: {_reason(exc, b.address)}"
            )
        return BackendError(f"PostgreSQL at {b.where} failed: {_reason(exc, b.address)}")


# --------------------------------------------------------------------------- backend


class PostgresBackend(Backend):
    """Lines kept in one schema of one PostgreSQL database, shared by every host using it.

    ``scope`` is accepted for symmetry with local backends and changes nothing: every role
    that connects to the same database and schema shares its lines.
    """

    def __init__(self, url: str, scope: str = "user", create: bool = True) -> None:
        check_scope(scope)
        self.scope = "server"
        self.address = parse(url)
        self.stmts = Statements(self.address.schema)
        self.translate = _Translate(self)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._create = create  # False: a look from outside, which creates no schema
        self._ready = False  # the schema and its tables are there, and usable
        self.clock = ServerClock()  # tickets' times are the server's
        self._role = ("", "")
        forget_after_fork(self)
        # No session yet: a pooler with every server session taken (PgBouncer) queues a new
        # one's first statement, and only the first use knows how long its caller may wait.

    @property
    def where(self) -> str:
        return self.address.where

    def line(self, name: str) -> PostgresStore:
        return PostgresStore(self, name)

    def names(self) -> list[str]:
        def work(conn: Connection) -> list[str]:
            if not self.has_tables(conn):
                return []
            return [decode(bytes(row[0])) for row in conn.execute(self.stmts.names)]

        return sorted(self.run(work))

    def kept_anything(self) -> bool:
        return self.run(self.has_tables)

    def has_tables(self, conn: Connection) -> bool:
        """Whether inturn's tables are there: a database nobody has taken turns in holds no
        lines, and a look from outside does not create them (a monitoring role may not)."""
        if not self._ready:
            self._ready = self._ensure_schema(conn)
        return self._ready

    # -- connections

    def connect(self, patience: Patience | None = None) -> Connection:
        """A new session, set up for inturn, on a server checked to be usable. Its set-up
        ends at ``patience``'s cancel or time (once it has had ``BUSY_PATIENCE``): a pooler
        that has no server session for it now (PgBouncer) holds its first statement in its
        own queue, where a cancel request does not reach, so the connection is closed."""
        address = self.address
        try:
            conninfo = libpq_conninfo.make_conninfo(address.conninfo, **connect_options(address))
            conn = self._connect_once_more(conninfo)
        except psycopg.OperationalError as exc:
            raise _failure_kind(exc)(
                f"cannot connect to PostgreSQL at {self.where}: {_reason(exc, address)} "
                f"({_connect_hint(exc)})"
            ) from None
        except psycopg.Error as exc:
            raise BackendError(
                f"cannot use PostgreSQL at {self.where}: {_reason(exc, address)}"
            ) from None
        canceller = None
        if patience is not None and (patience.cancel is not None or patience.deadline is not None):
            deadline = patience.deadline
            if deadline is not None:
                deadline = max(deadline, time.monotonic() + BUSY_PATIENCE)
            canceller = _Canceller(conn, patience.cancel, deadline, True, shut=True)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            if canceller is None:
                raise
            canceller.finish()
            if not canceller.fired:
                raise
            raise self._not_set_up(patience) from None
        if canceller is not None:
            canceller.finish()
            if canceller.fired:  # set up as it was ended: shut down, given up all the same
                conn.close()
                raise self._not_set_up(patience)
        return conn

    def _not_set_up(self, patience: Patience | None) -> Exception:
        """What a session whose set-up the caller's cancel or time ended means: the queue
        makes ``Busy`` or ``Timeout`` of ``GuardTaken``."""
        if patience is not None and patience.cancel is not None and patience.cancel.cancelled:
            return Cancelled(f"stopped waiting for a session at {self.where}")
        if not self.address.pooler_session_ok:
            return GuardTaken(
                f"setting up a session at {self.where} waited past the time given (a lock on "
                "inturn's tables, or a connection pooler with no server session free)"
            )
        return GuardTaken(
            f"no session at {self.where} within the time given: a connection pooler "
            "(PgBouncer) with every server session of its pool in use keeps new clients in its "
            "own queue; size its pool (default_pool_size) for everyone who may wait at once"
        )

    @staticmethod
    def _connect_once_more(conninfo: str) -> Connection:
        """``psycopg.connect``, tried again once when a server that answered closed the new
        connection before it was set up (a busy server may drop one): a server that is not
        there, or that refuses us, fails at once."""
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            if "closed the connection unexpectedly" not in str(exc):
                raise
        time.sleep(0.1)  # not waiting for a lock: giving a busy server a moment
        return psycopg.connect(conninfo, autocommit=True)

    def _set_up(self, conn: Connection) -> None:
        settings = dict(SERVER_SETTINGS)
        if conn.info.server_version >= 140000:
            settings.update(SERVER_SETTINGS_14)
        if conn.info.server_version >= 170000:
            settings.update(SERVER_SETTINGS_17)
        calls = ", ".join("set_config(%s, %s, false)" for _ in settings)
        params: list[str] = [item for pair in settings.items() for item in pair]
        try:
            sent = time.time()
            row = conn.execute(
                f"SELECT pg_backend_pid(), extract(epoch FROM clock_timestamp()), {calls}",
                params,
            ).fetchone()
        except psycopg.Error as exc:
            raise self.translate(exc) from None
        if row is not None:
            self.clock.measured(sent, time.time(), float(row[1]))
        session_pid = row[0] if row else 0
        if session_pid != conn.info.backend_pid and not self.address.pooler_session_ok:
            raise BackendError(
                f"{self.where} answers through a connection pooler such as PgBouncer (the "
                f"server session is pid {session_pid}, the connection was told "
                f"{conn.info.backend_pid}): inturn holds session-level advisory locks, which a "
                "pool in transaction mode hands to other clients; connect to PostgreSQL "
                "directly, or add ?inturn_pooler=session if the pool is in session mode"
            )
        if not self._ready:
            self._ready = self._ensure_schema(conn)

    def _ensure_schema(self, conn: Connection) -> bool:
        """Create what is missing, once, even when many hosts start at the same moment; False
        if something is missing and this backend only looks."""
        stmts = self.stmts
        try:
            objects, version = self._installed(conn)
            if not all(objects) or version != SCHEMA_VERSION:
                if not self._create:
                    return False
                with conn.transaction():
                    conn.execute(stmts.setup_lock)
                    objects, version = self._installed(conn)
                    for which, statement in stmts.create:
                        if not objects[which]:
                            conn.execute(statement)
                    if version != SCHEMA_VERSION:
                        self._make_routines(conn, version)
            with conn.cursor(row_factory=dict_row) as cursor:
                row = cursor.execute(stmts.privileges).fetchone()
        except pg_errors.InsufficientPrivilege:
            raise BackendError(self._cannot_create_message(conn)) from None
        except pg_errors.ReadOnlySqlTransaction:  # creating what is missing: a standby?
            standby = False
            with suppress(psycopg.Error):
                standby = bool((conn.execute(stmts.in_recovery).fetchone() or (False,))[0])
            raise BackendError(self.read_only_message(standby)) from None
        except psycopg.Error as exc:
            raise self.translate(exc) from None
        assert row is not None
        self._role = (text_of(row["role"]), text_of(row["database"]))
        if row["in_recovery"] or row["read_only"]:
            raise BackendError(self.read_only_message(row["in_recovery"]))
        grants = missing_grants(row, stmts.schema, only_looking=not self._create)
        if grants:
            raise BackendError(
                f"role {sql_identifier(self._role[0])} lacks privileges on inturn's objects at "
                f"{self.where}: ask the owner of schema {sql_identifier(stmts.schema)} to run "
                + "; ".join(grants)
            )
        return True

    def _installed(self, conn: Connection) -> tuple[tuple[bool, ...], int]:
        """Which of the schema and its tables are there, and the version of the routines (0:
        none). A newer version is refused: its routines are never replaced by older ones."""
        row = conn.execute(self.stmts.existing).fetchone()
        assert row is not None  # a SELECT without FROM: always one row
        objects, version = tuple(bool(v) for v in row[:-1]), int(row[-1])
        if version > SCHEMA_VERSION:
            raise BackendError(
                f"the objects in schema {sql_identifier(self.stmts.schema)} at {self.where} "
                f"are from a newer inturn (schema version {version}; this one knows "
                f"{SCHEMA_VERSION} and does not replace newer ones): upgrade inturn here too"
            )
        return objects, version

    def _make_routines(self, conn: Connection, version: int) -> None:
        """Make or upgrade the routines and the version marker, in the setup transaction.
        Replacing a routine takes its owner: another role is told who that is."""
        stmts = self.stmts
        foreign = [(text_of(r[0]), text_of(r[1])) for r in conn.execute(stmts.foreign_routines)]
        if foreign:
            user, may_create = conn.execute(stmts.who_may_create).fetchone() or ("?", False)
            me = sql_identifier(text_of(user))
            s = sql_identifier(stmts.schema)
            owners = " or ".join(dict.fromkeys(sql_identifier(owner) for _, owner in foreign))
            changes = [f"ALTER ROUTINE {s}.{name} OWNER TO {me}" for name, _ in foreign]
            if not may_create:  # making the marker, and replacing any routine, takes it too
                changes.append(f"GRANT CREATE ON SCHEMA {s} TO {me}")
            raise BackendError(
                f"role {me} may not upgrade inturn's objects in schema {s} at {self.where} "
                f"(schema version {version} to {SCHEMA_VERSION}): only the role that owns them "
                f"may; run inturn once as role {owners}, or have it run " + "; ".join(changes)
            )
        for statement in stmts.routines:
            conn.execute(statement)
        owns_schema = conn.execute(stmts.owns_schema).fetchone()
        if SCHEMA_VERSION == LEGACY_VERSION and owns_schema and owns_schema[0]:
            conn.execute(stmts.legacy_marker)

    def _cannot_create_message(self, conn: Connection) -> str:
        schema = sql_identifier(self.stmts.schema)
        try:
            row = conn.execute(
                "SELECT current_user, current_database(), to_regnamespace(%s) IS NOT NULL",
                [schema],
            ).fetchone()
        except psycopg.Error:
            row = None
        user, db, has_schema = (
            (text_of(row[0]), text_of(row[1]), bool(row[2])) if row else ("?", "?", False)
        )
        who = sql_identifier(user)
        if has_schema:
            return (
                f"role {who} may not create inturn's tables in schema {schema} at {self.where}: "
                f"ask its owner to run GRANT CREATE ON SCHEMA {schema} TO {who} (once is enough)"
            )
        return (
            f"role {who} may not create schema {schema} in database {sql_identifier(db)} at "
            f"{self.where}: ask an owner to run GRANT CREATE ON DATABASE {sql_identifier(db)} "
            f"TO {who}, or CREATE SCHEMA {schema} AUTHORIZATION {who}"
        )

    def read_only_message(self, standby: bool = False) -> str:
        if standby:
            return (
                f"PostgreSQL at {self.where} is a standby (in recovery), which takes no "
                "writes: use the primary's address (with several hosts in the URL, add "
                "target_session_attrs=read-write)"
            )
        user = sql_identifier(self._role[0]) if self._role[0] else "CURRENT_USER"
        return (
            f"PostgreSQL at {self.where} is read-only (default_transaction_read_only is on, "
            f"or a standby): use the primary's address, or run "
            f"ALTER ROLE {user} SET default_transaction_read_only = off"
        )

    def borrow(self, patience: Patience | None = None) -> Connection:
        """An idle session of this process, or a new one (``connect``)."""
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
                    return conn
                conn.close()
        return self.connect(patience)

    def drop_idle(self) -> None:
        """Close the idle sessions kept for later: one turned out broken (the server ended
        it: a restart, a DBA, ``idle_session_timeout``), and so may the others be."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(Exception):
                conn.close()

    def put_back(self, conn: Connection) -> None:
        """Keep a clean session for later, or close it."""
        with self._lock:
            usable = not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE
            if usable and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        with suppress(Exception):
            conn.close()

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a borrowed session; once more on a new one if the first broke."""
        for attempt in (1, 2):
            conn = self.borrow()
            try:
                result = work(conn)
            except psycopg.OperationalError as exc:
                conn.close()  # a cancel meant for a waiter it once was: a fresh one, too
                if attempt == 2:
                    raise self.translate(exc) from None
                self.drop_idle()  # the server may have ended them all (a restart)
                continue
            except psycopg.Error as exc:
                self.put_back(conn)
                raise self.translate(exc) from None
            except BaseException:
                conn.close()
                raise
            self.put_back(conn)
            return result
        raise AssertionError("unreachable")

    def after_fork_in_child(self) -> None:
        """In a forked child: the parent's sessions are not ours to use or to close, nor to
        keep open (``disown``)."""
        for conn in self._idle:
            disown(conn)
        self._idle = []
        self._lock = threading.Lock()

    def close(self) -> None:
        self.drop_idle()


# --------------------------------------------------------------------------- waiting


class _Canceller:
    """Ends the statement running on ``conn`` when ``token`` fires (``_cancel_until_ended``),
    or when it outlives ``deadline`` by ``UNANSWERED_AFTER`` seconds: the server's
    ``lock_timeout`` should have ended it, so the server is frozen or the path to it silent.
    With ``cancel_at_deadline``, for a statement that has no timeout of its own on the server
    (a join, held up by a lock on inturn's tables or by synchronous replication), it is
    cancelled as the deadline comes, as on a token. With ``shut`` as well, for a session
    that holds nothing yet, it is shut down right after the cancel request is sent.

    Everything is done under a lock that the waiter takes as soon as its statement ends, so
    nothing is done once the session has moved on.
    """

    def __init__(
        self,
        conn: Connection,
        token: CancelToken | None,
        deadline: float | None,
        cancel_at_deadline: bool = False,
        shut: bool = False,
    ):
        self.conn = conn
        self.deadline = deadline
        self.cancel_at_deadline = cancel_at_deadline
        self.shut = shut
        self.event = threading.Event()
        self.ended = threading.Event()
        self.lock = threading.Lock()
        self.finished = False
        self.fired = False  # a cancel was asked for before the statement ended
        self._linked = None if token is None else token.linked(self.event)
        if self._linked is not None:
            self._linked.__enter__()
        self.thread = threading.Thread(target=self._run, daemon=True, name="inturn-pg-cancel")
        self.thread.start()

    def _run(self) -> None:
        late = None if self.deadline is None else self.deadline + UNANSWERED_AFTER
        if self.cancel_at_deadline:
            late = self.deadline
        fired = self.event.wait(None if late is None else max(0.0, late - time.monotonic()))
        if fired or self.cancel_at_deadline:
            with self.lock:
                self.fired = not self.finished
                if self.fired and self.shut:
                    _cancel(self.conn)
                    _shut_down(self.conn)
                    return
            _cancel_until_ended(self.conn, self.lock, lambda: self.finished, self.ended)
            return
        with self.lock:
            if not self.finished:
                _shut_down(self.conn)

    def finish(self) -> None:
        """Say the statement has ended (once or again: both are the same)."""
        with self.lock:
            self.finished = True
            linked, self._linked = self._linked, None
        self.ended.set()
        self.event.set()
        if linked is not None:
            linked.__exit__(None, None, None)


def _cancel(conn: Connection) -> None:
    """Ask the server to end the statement running on ``conn``, waiting for it to take the
    request for ``UNANSWERED_AFTER`` seconds at most. With libpq 17 (psycopg >= 3.2 asks it
    with a timeout) that is the request's own bound; before, libpq waits for the server
    without end, so the request is left to a thread of its own past that."""
    cancel_safe = getattr(conn, "cancel_safe", None)
    if cancel_safe is not None and pq.version() >= 170000:
        with suppress(Exception):
            cancel_safe(timeout=UNANSWERED_AFTER)
        return
    sent = threading.Event()

    def send() -> None:
        with suppress(Exception):
            conn.cancel()
        sent.set()

    threading.Thread(target=send, daemon=True, name="inturn-pg-cancel-request").start()
    sent.wait(UNANSWERED_AFTER)


def _cancel_until_ended(
    conn: Connection, lock: threading.Lock, ended: Callable[[], bool], wake: threading.Event
) -> None:
    """Cancel what another thread runs, or is about to run, on ``conn`` until ``ended()``
    (checked under ``lock``, which that thread takes to say so; ``wake`` is set then too).

    A cancel request that reaches the server before the statement does cancels nothing, so
    it is sent again every ``CANCEL_AGAIN_AFTER`` seconds. One that the server has not acted
    on within ``UNANSWERED_AFTER`` seconds (frozen, or out of reach) never will be: then the
    connection is shut down on our side, which ends the statement there.
    """
    give_up_at = time.monotonic() + UNANSWERED_AFTER
    while True:
        with lock:
            if ended():
                return
            if time.monotonic() >= give_up_at:
                _shut_down(conn)
                return
            _cancel(conn)
        wake.wait(CANCEL_AGAIN_AFTER)


def _shut_down(conn: Connection) -> None:
    """End, on our side, whatever another thread waits for on ``conn``: its socket is shut
    down, so that thread's read fails at once (the connection is then broken, and closed by
    its owner). For a server that answers neither the statement nor a cancel request."""
    with suppress(Exception):
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()  # the descriptor stays libpq's


class _Watch:
    """One extra session blocked on one ticket, for waits on several tickets at once."""

    def __init__(self, backend: PostgresBackend, key: int, woken: threading.Event) -> None:
        self.backend = backend
        self.conn = backend.borrow()
        self.key = key
        self.woken = woken
        self.lock = threading.Lock()
        self.done = False
        self.ended = threading.Event()
        self.clean = False
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="inturn-pg-watch")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn.execute(self.backend.stmts.wait, {"ms": "0", "key": self.key})
            self.clean = True
        except psycopg.Error:
            pass
        finally:
            with self.lock:
                self.done = True
            self.ended.set()
            self.woken.set()

    def stop(self) -> None:
        with self.lock:
            self.cancelled = not self.done
        if self.cancelled:  # the session is closed afterwards: a cancel may still be on its way
            _cancel_until_ended(self.conn, self.lock, lambda: self.done, self.ended)
        self.thread.join(10)
        if self.clean and not self.cancelled:
            self.backend.put_back(self.conn)
        else:
            with suppress(Exception):
                self.conn.close()


class _ReplacementWatch:
    """For a ``newest_wins`` ticket that waits on several tickets through extra sessions: its
    own session sleeps in the server until a replacer's cancel request (or ours, at the end)
    ends the sleep, then looks whether it was replaced. A sleep in the server, not a poll."""

    def __init__(self, store: PostgresStore, member: PostgresMembership, woken: threading.Event):
        assert member.conn is not None
        self.store = store
        self.conn = member.conn
        self.params = {"me": member.number}
        self.woken = woken
        self.lock = threading.Lock()
        self.stopping = False
        self.done = False
        self.ended = threading.Event()
        self.by: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="inturn-pg-replaced")
        self.thread.start()

    def _run(self) -> None:
        stmts = self.store.stmts
        try:
            while True:
                with self.lock:
                    if self.stopping:
                        return
                with suppress(pg_errors.QueryCanceled):
                    self.conn.execute(stmts.sleep_until_replaced, self.params)
                with suppress(pg_errors.QueryCanceled):
                    row = self.conn.execute(stmts.replaced_by, self.params).fetchone()
                    if row is not None:
                        self.by = int(row[0])
                        self.woken.set()
                        return
        except psycopg.Error:
            pass
        finally:
            with self.lock:
                self.done = True
            self.ended.set()

    def stop(self) -> None:
        """End the sleep, however close to its start: a cancel that came before the sleep's
        statement is sent again until the thread has finished."""
        with self.lock:
            self.stopping = True
        _cancel_until_ended(self.conn, self.lock, lambda: self.done, self.ended)
        self.thread.join(10)


# --------------------------------------------------------------------------- one line


class PostgresStore(LineStore):
    remote = True

    def __init__(self, backend: PostgresBackend, name: str) -> None:
        self.backend = backend
        self.name = name
        self.scope = backend.scope
        self.lock_delay = backend.address.lock_delay
        self.stop_window = self.lock_delay  # the holder learns at once when its session ends
        self.stmts = backend.stmts
        self._digest = hashlib.sha256(encode(name)).digest()
        self._line_id: int | None = None  # the line's row, once known (it never changes)

    @property
    def where(self) -> str:
        return self.backend.where

    # -- whose session to use

    def _query(self, me: Membership | None, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on ``me``'s own session (its ticket's, so that a waiter's queries
        never need a second connection), or on a borrowed one for an observer."""
        member = me if isinstance(me, PostgresMembership) and me.pid == os.getpid() else None
        if member is None:
            return self.backend.run(work)
        for attempt in (1, 2, 3):
            conn = member.conn
            if conn is None or conn.closed:
                return self.backend.run(work)
            try:
                return work(conn)
            except pg_errors.QueryCanceled as exc:
                if attempt == 3:
                    raise self.backend.translate(exc) from None
                continue  # a cancel meant for a wait that had just ended: harmless
            except psycopg.OperationalError as exc:
                if member.holding:
                    raise LostTurn(
                        f"lost the connection holding line {self.name!r} at {self.where}: "
                        f"{_reason(exc, self.backend.address)}"
                    ) from None
                if attempt == 3:  # a third session ended under one query: say so
                    raise self.backend.translate(exc) from None
                self._rejoin_or_give_up(member, exc)
            except psycopg.Error as exc:
                raise self.backend.translate(exc) from None
        raise AssertionError("unreachable")

    def _line(self, conn: Connection) -> int:
        """The line's id, added if it is not there. Another host may add it, and a forget
        remove it, between any two statements: find and add take turns until one answers."""
        for _ in range(64):
            if self._line_id is not None:
                return self._line_id
            row = conn.execute(self.stmts.find_line, [self._digest]).fetchone()
            if row is None:  # nobody has it: add it (nothing comes back if someone just did)
                row = conn.execute(
                    self.stmts.add_line, [self._digest, encode(self.name)]
                ).fetchone()
            if row is not None:
                self._line_id = int(row[0])
        raise BackendError(
            f"line {self.name!r} at {self.where} keeps being added and removed by others "
            "(inturn forget in a loop?): try again"
        )

    # -- LineStore

    def join(self, me: Ticket, patience: Patience) -> tuple[PostgresMembership, View | None]:
        for attempt in (1, 2):
            conn = self.backend.borrow(patience)
            # Joining is quick, unless held up in the server (a DBA's lock on inturn's tables,
            # a synchronous standby that is gone): the caller's time and cancel end it there,
            # once it has had the moment any join may take (a caller with no time to wait, -w 0
            # or a short timeout, still joins a free line, as on the local backend).
            canceller = None
            if patience.cancel is not None or patience.deadline is not None:
                deadline = patience.deadline
                if deadline is not None:
                    deadline = max(deadline, time.monotonic() + BUSY_PATIENCE)
                canceller = _Canceller(conn, patience.cancel, deadline, True)
            member = None
            try:
                number = self._join_on(conn, me)
                if canceller is not None:
                    canceller.finish()
                    if canceller.fired:
                        # It ended as it was cancelled: either way, not a ticket to go on with
                        # (cancelled in synchronous replication, its commit has not reached
                        # the standby, and the number must not be used before it has).
                        self._withdraw(conn, number)
                        conn.close()
                        self._out_of_patience(patience)
                        raise AssertionError("a join cancelled for no reason")
                # Made under the cover: a Ctrl-C before it is returned must not leave the
                # session (and the ticket's lock in it) behind, nor its watchdog.
                member = PostgresMembership(number, conn, me)
                member.watch()
                return member, None
            except BaseException as exc:
                try:
                    if canceller is not None:
                        canceller.finish()
                    conn.close()  # it may hold a lock taken in a statement that failed
                finally:
                    if member is not None:
                        member.end_watchdog()
                if isinstance(exc, psycopg.Error):
                    self._out_of_patience(patience)
                if isinstance(exc, psycopg.OperationalError) and attempt == 1:
                    # A session kept for later that the server has ended since (a restart,
                    # a DBA): no ticket lived on it, so join on a fresh one.
                    self.backend.drop_idle()
                    continue
                if isinstance(exc, psycopg.Error):
                    raise self.backend.translate(exc) from None
                raise
        raise AssertionError("unreachable")

    def _withdraw(self, conn: Connection, number: int) -> None:
        """Remove the rows of a ticket whose join completed as its caller gave up, before its
        session closes: a look right after the caller got ``Cancelled`` or ``Timeout`` would
        otherwise still see it waiting, until the server has ended the session. Its commit
        waits for no standby (one that does not answer may be why the join was cancelled);
        a lock on inturn's tables or a late cancel leaves the rows to go with the session."""
        with suppress(psycopg.Error), conn.transaction():
            conn.execute(self.stmts.withdraw_settings)
            conn.execute(self.stmts.leave_plainly, {"number": number})

    def _out_of_patience(self, patience: Patience) -> None:
        """Raise what a join ended by the caller's cancel or time means (the queue makes
        ``Busy`` or ``Timeout`` of ``GuardTaken``); nothing if it was neither."""
        if patience.cancel is not None and patience.cancel.cancelled:
            raise Cancelled(f"stopped waiting for line {self.name!r}")
        if patience.deadline is not None and time.monotonic() >= patience.deadline:
            raise GuardTaken(
                f"joining it waited on {self.where} past the time given (a lock on inturn's "
                "tables, or a synchronous standby that does not answer)"
            )

    def replace(self, number: int, me: Membership) -> None:
        def work(conn: Connection) -> int | None:
            row = conn.execute(self.stmts.replace, {"number": number, "by": me.number}).fetchone()
            return None if row is None else int(row[0])

        pid = self._query(me, work)
        if pid is None:
            return  # it left meanwhile
        try:
            self.backend.run(
                lambda conn: conn.execute(self.stmts.cancel_backend, {"pid": pid}).fetchall()
            )
        except BackendError as exc:  # another role's session: it learns when it next looks
            warn_once(
                f"replaced ticket {number} of line {self.name!r}, but could not wake its "
                f"session at {self.where} ({exc}); it leaves when it next looks at the line"
            )

    def _join_on(self, conn: Connection, me: Ticket) -> int:
        header = me.header()
        header.pop("joined_at", None)  # the server stamps it, on the clock every host shares
        record = json.dumps(header, separators=(",", ":"), ensure_ascii=True)
        for _ in range(64):
            line_id = self._line(conn)
            params = {"line_id": line_id, "line_key": fold(line_id), "record": record}
            row = conn.execute(self.stmts.join, params).fetchone()
            if row is not None and int(row[1]) > 1:
                raise BackendError(
                    f"the server session that joined line {self.name!r} at {self.where} already "
                    "holds another inturn ticket: a connection pooler in transaction mode "
                    "(PgBouncer?) shares sessions between clients, whatever inturn_pooler=session "
                    "says; connect to PostgreSQL directly, or pool in session mode"
                )
            if row is not None:
                return int(row[0])
            if conn.execute(self.stmts.line_exists, {"line_id": line_id}).fetchone() is None:
                self._line_id = None  # forgotten meanwhile: the line is made anew
                continue
            # The ticket's key is held by someone else (another application's lock, or a
            # ticket 2**32 numbers older): that number is skipped, never shared.
        raise BackendError(
            f"every advisory lock key inturn tried at {self.where} was taken by another "
            "session: is another application using class id "
            f"{self.stmts.cls} in pg_locks?"
        )

    def _rejoin_or_give_up(self, member: PostgresMembership, cause: BaseException) -> None:
        """``_rejoin`` by the owner's own timeout: ``Timeout`` once it has passed."""
        if not self._rejoin(member, member.give_up_at, cause):
            raise Timeout(
                f"gave up waiting for line {self.name!r} (lost the connection to "
                f"{self.where} and could not join again in time: "
                f"{_reason(cause, self.backend.address)})"
            )

    def _rejoin(
        self, member: PostgresMembership, deadline: float | None, cause: BaseException
    ) -> bool:
        """Our session died while waiting: its place is gone, so take a new ticket.

        Returns False when ``deadline`` passed first; raises when the server stays away for
        ``RECONNECT_WINDOW`` seconds.
        """
        old, member.conn = member.conn, None
        if old is not None:
            with suppress(Exception):
                old.close()
        start = time.monotonic()
        limit = start + RECONNECT_WINDOW
        if deadline is not None:
            limit = min(limit, deadline)
        last: BaseException = cause
        for _ in _pauses_while_away(limit, None, self.name):
            try:
                conn = self.backend.connect()
                try:
                    number = self._join_on(conn, member.me)
                    before = [*member.earlier, member.number]
                    if member.newest_wins:  # a newer run that came meanwhile goes first, alone
                        params = {
                            "before": before,
                            "arrived": before[0],
                            "me": number,
                            "line_id": self._line(conn),
                        }
                        conn.execute(self.stmts.superseded, params)
                except BaseException:
                    conn.close()
                    raise
                member.conn, member.number = conn, number
                member.earlier = before
                member.lost_track_at = start
                why = (
                    "the server ended its statement to break a deadlock with another session"
                    if _deadlock(cause)
                    else "losing the connection"
                )
                warn(
                    f"reconnected to {self.where} after {why} "
                    f"({_reason(cause, self.backend.address)}); back in line {self.name!r} "
                    f"as ticket {number}"
                )
                return True
            except (psycopg.OperationalError, BackendError) as exc:
                last = exc
        if deadline is not None and limit == deadline:
            return False
        raise _failure_kind(last)(
            f"lost the connection to {self.where} while waiting in line "
            f"{self.name!r} and could not reconnect for {RECONNECT_WINDOW:g}s: "
            f"{_reason(last, self.backend.address)}"
        )

    def look(self, me: Membership | None) -> View:
        """The line, read together with who in it is alive, in one statement. A view a moment
        old is safe: tickets ahead can only die, never come back, and later joiners are
        behind us, so at worst we wait on a ticket already gone, and that wait returns at
        once."""

        def work(conn: Connection) -> View:
            line_id = self._line(conn) if me is not None else self._existing_line(conn)
            if line_id is None:
                return View(())  # a look from outside adds no line (status of a typo)
            params = {"line_id": line_id, "me": -1 if me is None else me.number}
            rows = conn.execute(self.stmts.snapshot_alive, params)
            return _view(rows.fetchall(), me, self.name)

        return self._query(me, work)

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        if not numbers:
            return []
        wanted = [int(n) for n in numbers]

        def work(conn: Connection) -> list[bool]:
            rows = conn.execute(self.stmts.alive, {"numbers": wanted}).fetchall()
            found = {int(n): bool(ok) for n, ok in rows}
            return [found.get(n, False) for n in wanted]

        return self._query(me, work)

    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        def work(conn: Connection) -> bool:
            row = conn.execute(self.stmts.bury, {"number": number}).fetchone()
            return bool(row and row[0])

        return self._query(me, work)

    def wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool = False,
    ) -> Woke | None:
        if not numbers:
            return Woke()
        own = isinstance(me, PostgresMembership) and me.conn is not None and me.pid == os.getpid()
        if own and len(numbers) == 1:
            assert isinstance(me, PostgresMembership)
            return self._wait_own(me, numbers[0], timeout, cancel)
        member = me if own and isinstance(me, PostgresMembership) and me.newest_wins else None
        fired = self._wait_watches(numbers, timeout, cancel, member, observer=me is None)
        return Woke() if fired else None

    def _wait_own(
        self,
        member: PostgresMembership,
        number: int,
        timeout: float | None,
        cancel: CancelToken | None,
    ) -> Woke | None:
        """Block in the server on our own ticket's session: no other connection needed.

        The same round trip brings back the line as it is after the wake-up, which the
        queue looks at instead of asking again.
        """
        conn = member.conn
        assert conn is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        ms = "0" if timeout is None else str(max(1, math.ceil(timeout * 1000)))
        canceller = None
        if cancel is not None or deadline is not None:
            canceller = _Canceller(conn, cancel, deadline)
        params = {
            "key": fold(number),
            "ms": ms,
            "before": number,
            "me": member.number,
            "line_id": self._line(conn),
        }
        try:
            rows = conn.execute(self.stmts.wait_and_look, params).fetchall()
            return Woke(_view(rows, member, self.name))
        except pg_errors.LockNotAvailable:
            # lock_timeout, which the server counts on its wall clock: one set forward ends it
            # early, and then the rest of our own timeout is waited in a look and a wait more.
            return Woke() if deadline is not None and time.monotonic() < deadline else None
        except pg_errors.QueryCanceled:
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"stopped waiting for line {self.name!r}") from None
            return Woke()  # cancelled by someone else (a DBA): look again
        except psycopg.OperationalError as exc:
            if canceller is not None:
                canceller.finish()
                canceller = None
            if cancel is not None and cancel.cancelled:  # given up on our side, as asked
                raise Cancelled(f"stopped waiting for line {self.name!r}") from None
            return Woke() if self._rejoin(member, deadline, exc) else None
        except psycopg.Error as exc:
            raise self.backend.translate(exc) from None
        finally:
            if canceller is not None:
                canceller.finish()

    def _wait_watches(
        self,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        member: PostgresMembership | None = None,
        observer: bool = False,
    ) -> bool:
        """Several tickets (``slots`` > 1, or a wait that holds no ticket): one extra session
        blocked on each; a ``newest_wins`` ``member`` also listens for its replacement.

        An ``observer``'s wait (``inturn wait``) whose sessions the server ended (a restart)
        waits for the server to answer again, as a waiter does, before the next look tells
        who is left; a waiter's own session tells it the same on its next look (it rejoins).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        woken = threading.Event()
        watches: list[_Watch] = []
        replacement = None
        try:
            if member is not None:
                replacement = _ReplacementWatch(self, member, woken)
            for number in numbers:
                watches.append(_Watch(self.backend, fold(number), woken))
            fired = wait_woken(
                woken,
                timeout,
                cancel,
                lambda: any(w.done for w in watches) or bool(replacement and replacement.by),
                self.name,
            )
        finally:
            for watch in watches:
                watch.stop()
            if replacement is not None:
                replacement.stop()
        if replacement is not None and replacement.by is not None:
            raise Replaced(f"ticket {replacement.by} replaced this one in line {self.name!r}")
        if observer and any(w.done and not w.clean for w in watches):
            return self._until_answering(deadline, cancel)  # False: its time ran out first
        return fired

    def _until_answering(self, deadline: float | None, cancel: CancelToken | None) -> bool:
        """Wait until the server answers: True once it does, False when ``deadline`` came
        first; raises when it stays away for ``RECONNECT_WINDOW`` seconds."""
        limit = time.monotonic() + RECONNECT_WINDOW
        if deadline is not None:
            limit = min(limit, deadline)
        last: BackendError | None = None
        for _ in _pauses_while_away(limit, cancel, self.name):
            try:
                self.backend.run(lambda conn: conn.execute("SELECT 1").fetchall())
                return True
            except BackendError as exc:
                last = exc
        if deadline is not None and limit == deadline:
            return False
        assert last is not None
        raise last

    def mark_acquired(self, me: Membership, when: float, patience: Patience) -> None:
        assert isinstance(me, PostgresMembership)
        conn = me.conn
        if conn is None or conn.closed:
            raise LostTurn(f"lost the connection to {self.where} as the turn came")
        try:
            row = _despite_cancels(
                lambda: conn.execute(self.stmts.mark, {"number": me.number})
            ).fetchone()
        except psycopg.OperationalError as exc:
            if not me.holding:
                self._rejoin_or_give_up(me, exc)
                raise TookNewPlace() from None  # never held: wait again, as any waiter
            raise LostTurn(
                f"lost the connection to {self.where} as the turn came: "
                f"{_reason(exc, self.backend.address)}"
            ) from None
        except psycopg.Error as exc:
            raise self.backend.translate(exc) from None
        if row is None:
            raise BackendError(
                f"the session that joined line {self.name!r} is no longer the one answering at "
                f"{self.where}: a connection pooler in transaction mode (PgBouncer?) is in the "
                "way; connect to PostgreSQL directly"
            )
        me.start_watchdog()

    def _existing_line(self, conn: Connection) -> int | None:
        """The line's id, or None if nobody has added it (never used, or forgotten)."""
        if not self.backend.has_tables(conn):
            return None
        row = conn.execute(self.stmts.find_line, [self._digest]).fetchone()
        return None if row is None else int(row[0])

    def forget(self, patience: Patience) -> bool:
        def work(conn: Connection) -> bool:
            line_id = self._existing_line(conn)
            if line_id is None:
                return True  # never used
            for number, ok in zip(*self._tickets_of(conn, line_id), strict=True):
                if not ok:
                    conn.execute(self.stmts.bury, {"number": number})
            with conn.transaction():
                conn.execute(self.stmts.forget_guard, {"line_key": fold(line_id)})
                gone = conn.execute(self.stmts.forget, {"line_id": line_id}).fetchone()
            self._line_id = None
            return bool(gone and gone[0])

        return self._query(None, work)

    def _tickets_of(self, conn: Connection, line_id: int) -> tuple[list[int], list[bool]]:
        rows = conn.execute(self.stmts.snapshot_alive, {"line_id": line_id, "me": -1}).fetchall()
        tickets = [(int(n), bool(ok)) for kind, n, ok, _ in rows if kind == "ticket"]
        return [n for n, _ in tickets], [ok for _, ok in tickets]

    def note_runner(self, me: Membership, pid: int) -> None:
        def work(conn: Connection) -> None:
            conn.execute(self.stmts.note_pid, {"number": me.number, "pid": pid})

        self._query(me, work)

    def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
        def work(conn: Connection) -> Ticket | None:
            params = {"line_id": self._line(conn), "shared": me.shared}
            row = conn.execute(self.stmts.claim, params).fetchone()
            offset = self.backend.clock.offset
            return None if row is None else _ticket(row[0], row[1], row[2], offset)

        return self._query(me, work)

    def leave(self, me: Membership) -> None:
        assert isinstance(me, PostgresMembership)
        conn = me.conn
        clean = False
        try:
            me.stop_watchdog()
            me.conn = None
            if conn is None or me.pid != os.getpid() or conn.closed:
                me.wake_watchdog()
                return
            if me.settle(conn):
                try:
                    _despite_cancels(lambda: conn.execute(self.stmts.leave, {"number": me.number}))
                    clean = True
                except psycopg.Error as exc:
                    if conn.closed:
                        self._not_left(me, _reason(exc, self.backend.address))
                    else:
                        self._leave_plainly(conn, me, exc)
            else:
                silent = f"its session did not answer within {PING_TIMEOUT:g}s"
                self._not_left(me, "its session ended" if conn.closed else silent)
            me.wake_watchdog()
            me.join_watchdog()  # the next in line is already on its way
        except BaseException:  # Ctrl-C: the session is ours no more, nor is its lock
            if conn is not None and me.pid == os.getpid():
                with suppress(Exception):
                    conn.close()
            raise
        if clean and not me.lost and not me.handed_out:
            self.backend.put_back(conn)
        else:
            with suppress(Exception):
                conn.close()

    def _not_left(self, me: PostgresMembership, reason: str) -> None:
        """The leave could not be sent or answered: closing the session frees the turn all
        the same, but not as a leave, which the next holder hears of. A waiter's session
        takes nothing with it, and a ticket whose turn was lost has said so already."""
        if me.holding and not me.lost:
            warn(
                f"leaving line {self.name!r} at {self.backend.where} failed ({reason}): "
                "the next holder may be told that it died holding"
            )

    def _leave_plainly(self, conn: Connection, me: PostgresMembership, exc: psycopg.Error) -> None:
        """After the server refused ``leave`` (a role whose right to run it was taken away
        during its turn): the ticket's rows go by plain statements, committed before the
        session closes and frees its locks, so the next holder is not told that this one died
        holding. Said either way: the role's grants need fixing."""
        b = self.backend
        said = f"leaving line {self.name!r} at {b.where} failed ({_reason(exc, b.address)})"
        if conn.info.transaction_status == pq.TransactionStatus.IDLE:
            try:
                number = me.number
                _despite_cancels(lambda: conn.execute(self.stmts.leave_plainly, {"number": number}))
            except psycopg.Error as again:
                said += f", and so did removing its ticket ({_reason(again, b.address)})"
            else:
                warn(
                    f"{said}: its ticket was removed without it; ask the owner of schema "
                    f"{sql_identifier(b.stmts.schema)} for the grants listed in the inturn README"
                )
                return
        warn(f"{said}: the next holder may be told that it died holding")

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        if not numbers:
            return []
        wanted = [int(n) for n in numbers]

        def work(conn: Connection) -> list[Ticket | None]:
            sent = time.time()
            rows = conn.execute(self.stmts.read, {"numbers": wanted}).fetchall()
            offset = self.backend.clock.offset
            if rows:  # measured again: our clock may have been set since the session began
                offset = self.backend.clock.measured(sent, time.time(), float(rows[0][3]))
            found = {int(n): _ticket(n, record, acq, offset) for n, record, acq, _ in rows}
            return [found.get(n) for n in wanted]

        return self._query(me, work)


def _pauses_while_away(limit: float, cancel: CancelToken | None, name: str) -> Iterator[None]:
    """One step per attempt to reach a server that is away, with a pause before each next one
    (0.1 s, doubling up to 2 s), as long as that one would start before ``limit``: none once
    it has passed (a caller whose time is up tries no more, even once, a server that may not
    answer for a connection's whole timeout)."""
    delay = 0.1
    while time.monotonic() < limit:
        yield
        if time.monotonic() + delay > limit:
            return
        pause(delay, cancel, name)  # waiting for the server to come back, not for the line
        delay = min(delay * 2, 2.0)


def _despite_cancels(statement: Callable[[], T]) -> T:
    """``statement()``, run again if a cancel ended it: a later ``newest_wins`` arrival
    cancels the statement a waiter's session runs, to wake it from its wait, and the waiter
    may have woken on its own and gone on to mark its turn, or to leave, by then. Those
    statements change nothing unless they complete, and must not be lost to it."""
    for _ in range(3):
        try:
            return statement()
        except pg_errors.QueryCanceled:
            continue
    return statement()


def _connect_hint(exc: psycopg.Error) -> str:
    """What to check when a connection is refused: the server's SQLSTATE if it gave one, or its
    words (in English; other languages get the general advice)."""
    state = exc.sqlstate or ""  # libpq gives none for a refused connection: the words tell
    text = str(exc)
    limited = re.search(r'too many connections for (role|database) "(.*)"', text)
    if limited is not None:  # the same SQLSTATE as max_connections: the words tell them apart
        kind, name = limited.groups()
        return (
            f"the {kind} has as many sessions as its connection limit allows: raise it "
            f"(ALTER {kind.upper()} {sql_identifier(name)} CONNECTION LIMIT <n>, or -1 for "
            "none), or run fewer at once (each holder and waiter keeps a session)"
        )
    if state == "53300" or "too many clients" in text or "connection slots" in text:
        return (
            "the server has no connection left: raise its max_connections, or run fewer at "
            "once (each holder and waiter keeps a session)"
        )
    if state == "3D000" or ("database" in text and "does not exist" in text):
        return "create the database, or correct its name in the URL"
    return "check the URL, that the server runs, and the password in PGPASSWORD or ~/.pgpass"


def _view(rows: list[tuple[str, int, bool, bool]], me: Membership | None, name: str) -> View:
    """A view from (kind, number, alive, shared) rows: the tickets ahead of ``me`` (all, for
    an observer) with their liveness and modes, and the markers; ``Replaced`` if a row says
    a later ``newest_wins`` arrival replaced ``me``."""
    below = me.number if me is not None else None
    tickets = []
    markers = []
    shared_markers = []
    for kind, number, ok, shared in rows:
        if kind == "replaced":
            raise Replaced(f"ticket {number} replaced this one in line {name!r}")
        if kind == "marker":
            markers.append(int(number))
            if shared:
                shared_markers.append(int(number))
        elif below is None or number < below:
            tickets.append((int(number), bool(ok), bool(shared)))
    tickets.sort()
    return View(
        tuple(n for n, _, _ in tickets),
        tuple(sorted(markers)),
        tuple(ok for _, ok, _ in tickets),
        frozenset([*(n for n, _, shared in tickets if shared), *shared_markers]),
    )


def _ticket(number: Any, record: Any, acquired_at: Any, offset: float) -> Ticket:
    """A ticket from its row; its times, kept on the server's clock, moved onto ours by
    ``offset`` (ours less the server's)."""
    try:
        header = json.loads(record)
    except (TypeError, ValueError):
        header = None
    if not isinstance(header, dict):
        warn(f"ignoring a corrupt ticket record (ticket {number})")
        header = {}
    acquired = float(acquired_at) if acquired_at is not None else None
    return Ticket.from_header(int(number), header, acquired).on_our_clock(offset)
