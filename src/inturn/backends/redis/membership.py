"""A Redis ticket and its lease: renewed by this process, declared lost before it can expire."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis import exceptions as rx

from ...forks import forget_after_fork
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
    ) -> None:
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
        self.holding = False
        self.signal = LostSignal()

    @property
    def lost(self) -> bool:
        return self.signal.lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        self.signal.on_lost(callback)

    def declare_lost(self) -> None:
        self.signal.declare()


class LeaseKeeper:
    """Renews this process's leases, and declares a ticket lost before its lease can expire.

    A renewal (``PEXPIRE``) that succeeds keeps the lease for at least ``lease`` seconds from
    the moment it was *sent*, so a ticket is safe until then; it answers 0 when the key is
    gone (redis.io, PEXPIRE), and a lease that expired is never brought back. The keeper gives up at
    ``GIVE_UP_AT`` of the lease after the last good renewal, by the local monotonic clock, which
    leaves a quarter of the lease for clock rate differences and for the holder to react. Two
    threads: one does the network calls (each bounded by a short socket timeout), the other
    only watches the clock, so a stuck call cannot delay the verdict.
    """

    def __init__(self, client: redis.Redis, lease: float) -> None:
        self.client = client
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self._members: dict[str, RedisMembership] = {}
        self._cond = threading.Condition()
        self._pid = 0
        self._closed = False
        forget_after_fork(self)

    def after_fork_in_child(self) -> None:
        """In a child made by ``fork()``: the parent's tickets stay with the parent, and a
        lock that one of the parent's threads held must not stay held here."""
        self._cond = threading.Condition()
        self._members = {}
        self._pid = 0

    def add(self, member: RedisMembership) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first use: start the two threads
                self._pid = os.getpid()
                for target in (self._renew, self._watch):
                    name = f"inturn-lease-{target.__name__.strip('_')}"
                    threading.Thread(target=target, daemon=True, name=name).start()
            self._members[member.ticket_id] = member
            self._cond.notify_all()

    def remove(self, member: RedisMembership) -> None:
        with self._cond:
            self._members.pop(member.ticket_id, None)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _due(self, member: RedisMembership) -> float:
        if member.retry_at is not None:
            return member.retry_at
        return member.renewed_at + self.lease * RENEW_EVERY

    def _renew(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = [m for m in self._members.values() if self._due(m) <= now]
                    if due:
                        break
                    soonest = min((self._due(m) for m in self._members.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
            sent = time.monotonic()
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    for member in due:
                        call(pipe, "PEXPIRE", member.lease_key, self.lease_ms)
                    results = pipe.execute(raise_on_error=False)
            except (rx.RedisError, OSError):
                results = [None] * len(due)
            gone = []
            with self._cond:
                for member, result in zip(due, results, strict=True):
                    if result == 1 and not member.lost:
                        member.renewed_at, member.retry_at = sent, None
                    elif result == 0:  # the lease expired or was removed: the turn is gone
                        gone.append(member)
                        self._members.pop(member.ticket_id, None)
                    else:  # no answer: try again soon, until the watch gives up
                        member.retry_at = time.monotonic() + self.lease / 12
                self._cond.notify_all()
            for member in gone:
                member.declare_lost()

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                limit = self.lease * GIVE_UP_AT
                late = [m for m in self._members.values() if now >= m.renewed_at + limit]
                for member in late:
                    self._members.pop(member.ticket_id, None)
                if not late:
                    soonest = min(
                        (m.renewed_at + limit for m in self._members.values()), default=None
                    )
                    self._cond.wait(None if soonest is None else soonest - now)
            for member in late:
                member.declare_lost()


def call(target: Any, *args: object) -> Any:
    """One raw command on a client or pipeline (redis-py leaves ``execute_command`` untyped)."""
    return target.execute_command(*args)
