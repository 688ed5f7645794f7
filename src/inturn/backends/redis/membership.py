"""A Redis ticket and its lease: renewed by this process, declared lost before it can expire."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import redis

from ...forks import forget_after_fork
from ...records import Ticket
from ..base import LostSignal, Membership

RENEW_EVERY = 1 / 3  # of the lease: the heartbeat's period
GIVE_UP_AT = 3 / 4  # of the lease after the last renewal that surely reached the server


class RedisMembership(Membership):
    """Our ticket: its lease is renewed by the backend's ``LeaseKeeper`` until we leave."""

    def __init__(
        self,
        number: int,
        ticket_id: str,
        lease_key: str,
        sent_at: float,
        shared: bool = False,
        kick_key: str | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        self.ticket = ticket  # what it joined with: the record a new place is taken with
        self.number = number
        self.ticket_id = ticket_id
        self.lease_key = lease_key
        self.shared = shared
        self.kick_key = kick_key  # the stream a newest_wins arrival writes to replace us
        self.kicks_read = "0-0"  # the id of the last entry of that stream already looked at
        self.renewed_at = sent_at  # local monotonic time the last good renewal was sent
        self.retry_at: float | None = None
        self.pid = os.getpid()
        self.left = False
        self.gone = False  # the server said the lease is gone (rather than not answering)
        self.refused: str | None = None  # the server's error answer to the last renewal
        self.holding = False
        self.signal = LostSignal()

    @property
    def lost(self) -> bool:
        return self.signal.lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        self.signal.on_lost(callback)

    def declare_lost(self) -> None:
        self.signal.declare()

    def why_lost(self) -> str:
        if self.gone:
            return "Redis no longer had its lease: evicted, flushed, or expired"
        if self.refused is not None:
            return f"Redis refused to renew its lease: {self.refused}"
        return "Redis did not answer in time to renew its lease"

    def take_place_of(self, fresh: RedisMembership) -> None:
        """Become ``fresh``, a new ticket of the same owner at the back of the line, after
        this one lost its place: the queue and the caller keep this object."""
        self.number, self.ticket_id, self.lease_key = fresh.number, fresh.ticket_id, fresh.lease_key
        self.kick_key, self.kicks_read = fresh.kick_key, fresh.kicks_read
        self.renewed_at, self.retry_at = fresh.renewed_at, fresh.retry_at
        self.left, self.gone, self.holding = fresh.left, fresh.gone, fresh.holding
        self.refused = fresh.refused
        self.signal = fresh.signal


# How long the lease threads outlive the last ticket of an open backend: long enough for the
# next turn of a loop to find them running, short enough that a ``Line`` dropped unclosed is
# soon collected.
IDLE_LINGER = 0.2


class LeaseKeeper:
    """Renews this process's leases, and declares a ticket lost before its lease can expire.

    A renewal (``PEXPIRE``) that succeeds keeps the lease for at least ``lease`` seconds from
    the moment it was *sent*, so a ticket is safe until then; it answers 0 when the key is
    gone (redis.io, PEXPIRE), and a lease that expired is never brought back. The keeper gives up at
    ``GIVE_UP_AT`` of the lease after the last good renewal, by the local monotonic clock, which
    leaves a quarter of the lease for clock rate differences and for the holder to react. Three
    threads: one does the network calls (each bounded by a short socket timeout), one only
    watches the clock, so a stuck call cannot delay the verdict, and one listens (see
    ``_listen``), so that a server that closes its connections (a restart, a shutdown) has every
    lease checked at once, and a lease it lost is known lost in milliseconds, not at the next
    renewal.

    The threads run only while a ticket of ours is in a line: they start with the first and
    end a moment (``IDLE_LINGER``) after the last leaves or is declared lost, or at once when
    the backend is closed. So a backend nobody holds or waits through soon keeps no thread,
    and one that nobody refers to any more (a ``Line`` never closed) is collected with its
    connections, as the other backends' are, while turns taken one after another through one
    ``Line`` do not start three threads and a connection each; a held turn keeps them, and its
    lease renewed, whatever happens to references, until it is released.
    """

    def __init__(
        self,
        client: redis.Redis,
        lease: float,
        listener: redis.Redis | None = None,
        prefix: str = "inturn",
    ) -> None:
        self.client = client
        self.listener = listener  # a client whose reads may block for a lease
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self._members: dict[str, RedisMembership] = {}
        self._cond = threading.Condition()
        self._pid = 0  # the process whose threads renew (0: none run)
        self._run = 0  # the threads' generation: a stop ends those of the current one
        self._listening: socket.socket | None = None  # the listener's socket while it reads
        self._idle_since: float | None = None  # when the last ticket left (None: one is in)
        self._closing = False  # closed: the threads end as the last ticket leaves
        self._listen_key = f"{prefix}:listen:{os.urandom(8).hex()}"  # never written: reads sleep
        forget_after_fork(self)

    def after_fork_in_child(self) -> None:
        """In a child made by ``fork()``: the parent's tickets stay with the parent, and a
        lock that one of the parent's threads held must not stay held here."""
        self._cond = threading.Condition()
        self._members = {}
        self._pid = 0
        self._listening = None

    def move(self, member: RedisMembership, fresh: RedisMembership) -> None:
        """``member``, which lost its place, becomes ``fresh``, its new ticket, whose lease is
        renewed from now on. Under the keeper's lock: a verdict on the old lease still on its
        way (a renewal sent before) finds the ticket changed, and applies to the old place
        only, which is gone already."""
        with self._cond:
            self._members.pop(member.ticket_id, None)
            member.take_place_of(fresh)
        self.add(member)

    def add(self, member: RedisMembership) -> None:
        """Renew ``member``'s lease from now on: the threads start with the first ticket (in
        a forked child too), and again after the last one left."""
        with self._cond:
            self._idle_since, self._closing = None, False
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._run += 1
                targets = [self._renew, self._watch]
                if self.listener is not None:
                    targets.append(self._listen)
                for target in targets:
                    name = f"inturn-lease-{target.__name__.strip('_')}"
                    threading.Thread(
                        target=target, args=(self._run,), daemon=True, name=name
                    ).start()
            self._members[member.ticket_id] = member
            self._cond.notify_all()

    def remove(self, member: RedisMembership) -> None:
        """Stop renewing ``member``'s lease. The threads are not woken for it (a leaver's
        ``leave`` follows at once, and a woken thread would only contend for the GIL): they
        find it gone when they next look; only the last one's leaving wakes them, to end them
        a moment later (``_when_idle``)."""
        with self._cond:
            self._members.pop(member.ticket_id, None)
            self._when_idle()

    def close(self) -> None:
        """Stop the threads now if no ticket of ours is left; else they stop as the last one
        leaves: until then a turn still held, or a place in line, keeps its lease renewed (or
        is declared lost when it cannot be), whoever closed the backend."""
        with self._cond:
            self._closing = True
            self._stop_if_idle()

    def _when_idle(self) -> None:
        """Under ``_cond``, as a ticket leaves: once none is left, the threads end at once if
        the backend was closed, else after ``IDLE_LINGER`` with none (``_renew`` sees to it)."""
        if self._members:
            return
        if self._closing:
            self._stop_if_idle()
        elif self._idle_since is None:
            self._idle_since = time.monotonic()
            self._cond.notify_all()  # ``_renew`` counts the moment from now, not its next due

    def _stop_if_idle(self) -> None:
        """Under ``_cond``: end the threads if no ticket of ours is left. The listener's read
        ends at once (its socket shut), so nothing is left behind for up to a lease."""
        if self._members or self._pid != os.getpid():
            return
        self._pid = 0
        self._run += 1
        self._cond.notify_all()
        sock, self._listening = self._listening, None
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def renew_now(self) -> None:
        """Renew every lease at once (the server may have lost them)."""
        with self._cond:
            now = time.monotonic()
            for member in self._members.values():
                member.retry_at = now
            self._cond.notify_all()

    def _listen(self, run: int) -> None:
        """Sleep in the server on a connection of this thread's own (a read of a stream that
        nobody writes), for as long as this process holds leases. The read ends at once when
        the server closes the connection; then every lease is renewed right away, and again
        the moment the server answers once more: a restarted server that kept nothing
        answers 0, and the turn is declared lost.

        The connection is made for this thread, outside any pool, and closed as it ends:
        nobody else disconnects it, so no other thread races with it as it connects."""
        assert self.listener is not None
        pool = self.listener.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        try:
            self._listen_on(run, connection)
        finally:
            connection.disconnect()

    def _listen_on(self, run: int, connection: Any) -> None:
        block_ms = max(100, self.lease_ms)
        pause = None  # after a failure: how long until the next try (doubling)
        while True:
            with self._cond:
                while run == self._run and not self._members:
                    self._cond.wait()
                if run != self._run:
                    return
                if pause is not None:
                    self._cond.wait(pause)
                    if run != self._run:
                        return
            try:
                if pause is not None:
                    connection.send_command("PING")  # the server answers again: check now
                    connection.read_response()
                    self.renew_now()
                    pause = None
                self._sleep_in_server(run, connection, block_ms)
            except Exception:
                # A stop ends the read by shutting its socket, which redis-py may report as
                # any error: then it is no failure. Otherwise the connection ended, however
                # the client says so.
                connection.disconnect()  # the next use connects afresh
                with self._cond:
                    if run != self._run:
                        return
                if pause is None:
                    self.renew_now()  # the connection ended: the server may have lost them
                pause = min(self.lease / 12, 0.01 if pause is None else 2 * pause)

    def _sleep_in_server(self, run: int, connection: Any, block_ms: int) -> None:
        """One blocking read, with the socket armed (``_listening``) for a stop to shut:
        armed under the lock only while this thread's generation runs, so a stop that came
        first is seen here, and one that comes later ends the read at once."""
        connection.connect()  # nothing if connected already
        sock: socket.socket | None = getattr(connection, "_sock", None)
        with self._cond:
            if run != self._run:
                return
            self._listening = sock
        try:
            connection.send_command("XREAD", "BLOCK", block_ms, "STREAMS", self._listen_key, "$")
            connection.read_response()
        finally:
            with self._cond:
                if sock is not None and self._listening is sock:
                    self._listening = None

    def _due(self, member: RedisMembership) -> float:
        if member.retry_at is not None:
            return member.retry_at
        return member.renewed_at + self.lease * RENEW_EVERY

    def _renew(self, run: int) -> None:
        while True:
            with self._cond:
                while True:
                    if run != self._run:
                        return
                    now = time.monotonic()
                    if not self._members:  # idle: end after a moment with no ticket
                        idle = now if self._idle_since is None else self._idle_since
                        self._idle_since = idle
                        if now - idle >= IDLE_LINGER:
                            self._stop_if_idle()
                            return
                        self._cond.wait(idle + IDLE_LINGER - now)
                        continue
                    due = [m for m in self._members.values() if self._due(m) <= now]
                    if due:
                        break
                    soonest = min((self._due(m) for m in self._members.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                # Each lease as it is now: a member that takes a new place meanwhile
                # (``move``) is judged by this answer no more.
                asked = [(member, member.ticket_id, member.lease_key) for member in due]
            sent = time.monotonic()
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    for _, _, lease_key in asked:
                        call(pipe, "PEXPIRE", lease_key, self.lease_ms)
                    results = pipe.execute(raise_on_error=False)
            except Exception:
                # As in ``_listen``: ``close`` disconnects the pool under a renewal in flight,
                # which redis-py may report as any error (a buffer already gone).
                with self._cond:
                    if run != self._run:
                        return
                results = [None] * len(asked)
            gone = []
            with self._cond:
                for (member, ticket_id, _), result in zip(asked, results, strict=True):
                    if member.ticket_id != ticket_id:
                        continue  # it has a new place since: this was the old one's
                    if result == 1 and not member.lost:
                        member.renewed_at, member.retry_at = sent, None
                        member.refused = None
                    elif result == 0:  # the lease expired or was removed: the turn is gone
                        member.gone = True
                        gone.append(member.signal)  # this place's, not a later one's
                        self._members.pop(ticket_id, None)
                        self._when_idle()
                    else:  # no answer: try again soon, until the watch gives up
                        if isinstance(result, Exception) and not isinstance(
                            result, (redis.ConnectionError, redis.TimeoutError)
                        ):
                            member.refused = str(result)  # an answer, but not a renewal
                        member.retry_at = time.monotonic() + self.lease / 12
                self._cond.notify_all()
            for signal in gone:
                signal.declare()

    def _watch(self, run: int) -> None:
        while True:
            with self._cond:
                if run != self._run:
                    return
                now = time.monotonic()
                limit = self.lease * GIVE_UP_AT
                late = [m for m in self._members.values() if now >= m.renewed_at + limit]
                signals = [m.signal for m in late]  # these places', not later ones'
                for member in late:
                    self._members.pop(member.ticket_id, None)
                if late:
                    self._when_idle()
                else:
                    soonest = min(
                        (m.renewed_at + limit for m in self._members.values()), default=None
                    )
                    self._cond.wait(None if soonest is None else soonest - now)
            for signal in signals:
                signal.declare()


def call(target: Any, *args: object) -> Any:
    """One raw command on a client or pipeline (redis-py leaves ``execute_command`` untyped)."""
    return target.execute_command(*args)
