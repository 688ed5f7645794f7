"""The Redis backend: lines shared by every client of one Redis server, kept alive by leases.

Redis frees nothing when a client dies, so a ticket's liveness lock is a *lease*: a key set with
``SET ... PX`` (it vanishes by itself when its time runs out) that a heartbeat thread of the
owner renews every third of the lease. A ticket whose lease key is gone is dead. The holder
declares its turn lost before the server could let the lease expire (see ``LeaseKeeper``).

Per line, every key shares one hash tag, ``<prefix>:{<digest of name>}``, so a line lives in one
Cluster slot; the name itself is stored only as data, never spliced into a command:

* ``...:next``: the ticket counter (``INCR``), the fencing token. A counter that is missing (a
  new line, or a server that lost its data) starts at the client's clock in milliseconds, so
  numbers keep increasing across a data loss unless a line took over 1000 tickets a second.
* ``...:tickets``: a sorted set of live ticket ids scored by number; ``...:abandoned`` the same
  for abandonment markers.
* ``...:t:<id>``: a hash with the owner's record (pid, user, host, command, ...).
* ``...:lease:<id>``: the lease. ``...:gone:<id>``: a stream the ticket's leaver (or burier)
  appends to, with a short expiry, so that waiters blocked on it wake up.
* ``...:claimed:<id>``: a dead holder's record once the next holder claimed its marker, with
  the claimer's id and a short expiry, so that a claim sent again gets the same answer.
* ``<prefix>:lines``: the set of line names, for ``inturn status``.

Ticket ids are random, chosen by the client, so that every key a script touches is passed in
``KEYS``, as Redis requires of scripts ("all names of keys accessed by a script must be provided
as input key arguments": redis.io, EVAL). A Lua script runs atomically: no other command runs
while it does (redis.io, "Scripting with Lua"), which makes join, bury, leave and claim single
steps.

A waiter blocks in ``XREAD BLOCK <ms> STREAMS gone:<T> ... 0-0 ...``: it returns at once if an
entry is there and otherwise blocks until one is added or the timeout passes (redis.io, XREAD);
it consumes nothing, so every waiter of ``T`` wakes, and only those. The block lasts until the
lease of the ticket watched would expire, so a crashed holder is noticed within one lease.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from typing import Any, NoReturn, TypeVar, cast

import redis
from redis import exceptions as rx
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from ...errors import (
    BackendError,
    Cancelled,
    LostTurn,
    Replaced,
    ServerUnavailable,
    Timeout,
    UsageError,
)
from ...names import decode, digest, encode
from ...records import Ticket, warn, warn_once
from ..base import (
    Backend,
    CancelToken,
    LineStore,
    Membership,
    Patience,
    ServerClock,
    TookNewPlace,
    View,
    Woke,
    check_scope,
)
from ..base import pause as sleep_or_cancel
from . import scripts
from .address import parse_address
from .membership import GIVE_UP_AT, LeaseKeeper, RedisMembership, call

# What a Redis user needs beyond its keys: reading, writing and scripts, the server's clock
# (also called from scripts), a ping after a failure, and INFO, which says whether the server
# evicts keys (without it, that is not checked).
GRANTS = "+@read +@write +@scripting +time +ping +info"


def _commands_used(key: str) -> list[tuple[str, ...]]:
    """Every command that joining, waiting, handing over and leaving may send, by the client
    or from a script, with ``key`` (one of ours) where it names keys: what a user must be
    allowed before it joins. ``INFO`` is left out: without it, eviction is not checked."""
    other, digest_ = f"{key}:2", "0" * 40
    return [
        ("EVALSHA", digest_, "1", key),
        ("EVAL", "return 1", "1", key),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT", "EXISTS", digest_),
        ("PING",),
        ("TIME",),
        ("EXISTS", key),
        ("SET", key, "1", "PX", "1"),
        ("INCR", key),
        ("DEL", key),
        ("RENAME", key, other),
        ("PEXPIRE", key, "1"),
        ("PTTL", key),
        ("HSET", key, "f", "v"),
        ("HGET", key, "f"),
        ("HGETALL", key),
        ("HEXISTS", key, "f"),
        ("SADD", key, "m"),
        ("SREM", key, "m"),
        ("SMEMBERS", key),
        ("ZADD", key, "1", "m"),
        ("ZREM", key, "m"),
        ("ZSCORE", key, "m"),
        ("ZCARD", key),
        ("ZRANGE", key, "0", "-1", "WITHSCORES"),
        ("ZRANGEBYSCORE", key, "1", "1"),
        ("XADD", key, "MAXLEN", "1", "*", "f", "v"),
        ("XREVRANGE", key, "+", "-", "COUNT", "1"),
        ("XREAD", "BLOCK", "1", "STREAMS", key, "0-0"),
    ]


def _unknown_commands(names: Sequence[str], where: str) -> str:
    """One line for a server whose configuration renamed or disabled commands inturn uses
    (``rename-command``): let in, it would fail as it hands over or claims a dead turn."""
    listed = ", ".join(dict.fromkeys(names))
    which = f"commands {listed}" if ", " in listed else f"command {listed}"
    return (
        f"Redis at {where} does not know the {which} that inturn needs (renamed or disabled "
        "by rename-command in its configuration): take that rename-command out of the "
        "server's configuration, or use another server"
    )


def _command_name(words: Sequence[str]) -> str:
    """A command as a message names it: ``XADD``, ``SCRIPT LOAD``."""
    return " ".join(words[:2] if words[0] == "SCRIPT" else words[:1]).upper()


def _rule(command: str) -> str:
    """The ACL rule that allows ``command`` (``+xadd``, ``+script|load``)."""
    return "+" + command.lower().replace(" ", "|")


def _refusal(user: str, commands: Sequence[str], keys: bool, where: str, prefix: str) -> str:
    """One line for a user denied ``commands`` (or, with ``keys``, inturn's keys): what it may
    not do, and the ACL rule that lets it."""
    what = f"use inturn's keys ({prefix}:*)" if keys else "run " + ", ".join(commands)
    added = " ".join([f"~{prefix}:*", *(_rule(c) for c in commands if not keys)])
    return (
        f"the Redis user {user!r} may not {what} at {where}, which inturn needs: grant it with "
        f"'ACL SETUSER {user} {added}' (inturn needs '~{prefix}:* {GRANTS}')"
    )


WAKE_AFTER_EXPIRY_MS = 10  # a waiter looks again this long after a watched lease could expire
REJOIN_WINDOW = 60.0  # seconds a waiter that lost its place tries to join again

T = TypeVar("T")


def _pauses(lease: float) -> Iterator[float]:
    """How long to wait before each new try to reach a server that does not answer (a
    restart): a moment at first, doubling up to a twelfth of a lease. Reconnecting to a
    server that is down, not polling for a turn."""
    pause = 0.01
    while True:
        yield pause
        pause = min(2 * pause, lease / 12)


# --------------------------------------------------------------------------- errors


@contextmanager
def _translated(where: str, prefix: str, user: str) -> Iterator[None]:
    """Turn redis-py's exceptions into one clear ``BackendError`` line (never the password)."""
    try:
        yield
    except rx.RedisError as exc:
        raise _backend_error(exc, where, prefix, user) from None


class _Unreachable(ServerUnavailable):
    """The server did not answer (down, restarting, loading its data, out of reach): a
    waiter that lost its place tries to join again for ``REJOIN_WINDOW``."""


class _PlaceLost(Exception):
    """Our waiting ticket's lease is gone, or could not be renewed in time: its place in line
    is lost (the message says why), and a new one is taken."""


def _cut_short(exc: rx.RedisError) -> bool:
    """Whether the server closed the connection on us (rather than never answering)."""
    text = str(exc)
    return any(word in text for word in ("Broken pipe", "Connection reset", "closed by server"))


def _backend_error(exc: rx.RedisError, where: str, prefix: str, user: str) -> BackendError:
    """What ``_translated`` raises for ``exc``, for paths that avoid a context manager."""
    if isinstance(exc, rx.AuthenticationError):
        return BackendError(
            f"Redis at {where} refused the login ({exc}): check the user and password in the URL"
        )
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # no use trying again: say what to check
        return BackendError(
            f"the TLS certificate of Redis at {where} could not be verified ({exc}): name the "
            "authority that signed it in the URL (ssl_ca_certs=PATH), and connect by a host "
            "name the certificate lists"
        )
    if "max number of clients" in str(exc):
        # It runs, and refuses more for now: not an outage to wait out within a call, but
        # a later call may find room (as PostgreSQL's max_connections).
        return ServerUnavailable(
            f"Redis at {where} already serves as many clients as it may ({exc}): raise its "
            "maxclients, or run fewer at once (each waiter uses a connection of its own)"
        )
    if isinstance(exc, rx.ResponseError) and _busy(exc):
        # A script that runs too long keeps every other client waiting: an outage for now.
        return _Unreachable(f"Redis at {where} does not answer: {exc}")
    if isinstance(exc, rx.ResponseError) and _no_replicas(exc):
        # min-replicas-to-write: no writes (nor lease renewals) until replicas catch up, as
        # for a server out of reach; a waiter tries to join again, a joiner is told to retry.
        return _Unreachable(
            f"Redis at {where} takes no writes for now ({exc}): fewer replicas are in sync "
            "than its min-replicas-to-write asks for"
        )
    if isinstance(exc, rx.ConnectionError) and _no_such_host(exc):
        return BackendError(
            f"cannot reach Redis at {where} ({exc}): no such host; correct its name in the URL"
        )
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError)):
        # A server at its maxclients may close a new connection before its refusal is read.
        room = " (and has room for more clients: maxclients)" if _cut_short(exc) else ""
        return _Unreachable(
            f"cannot reach Redis at {where} ({exc}): check that the server runs{room} and the URL"
        )
    replica = f"the Redis server at {where} is a read-only replica: point the URL at the primary"
    if isinstance(exc, rx.ReadOnlyError):
        return BackendError(replica)
    if isinstance(exc, rx.ResponseError):
        text = str(exc)
        if _denied(exc):
            return BackendError(_denial(text, where, prefix, user))
        if text.startswith("READONLY"):
            return BackendError(replica)
        if "maxmemory" in text:  # OOM, also from inside a script or a pipeline
            # As a full maxclients: it runs, and refuses writes until memory is freed, which
            # a later call may find done.
            return ServerUnavailable(
                f"Redis at {where} is out of memory ({text}): free some, or raise its maxmemory "
                "(inturn writes a few hundred bytes a ticket)"
            )
        if any(word in text for word in ("MOVED", "ASK ", "CROSSSLOT", "CLUSTERDOWN")):
            return BackendError(
                f"Redis at {where} is a node of a Redis Cluster ({text}), which inturn does not "
                "use: point the URL at a standalone server (or the primary of replicas)"
            )
        if "unknown command" in text and any(c in text for c in ("SCRIPT", "EVAL", "FCALL")):
            return BackendError(
                f"Redis at {where} does not run scripts ({text}): is it a Sentinel? Point the "
                "URL at the primary it names (or, if its configuration renamed or disabled "
                "scripting with rename-command, take that out)"
            )
        return BackendError(f"Redis at {where} refused a command: {text}")
    return BackendError(f"Redis at {where} failed: {exc}")


def _no_such_host(exc: BaseException) -> bool:
    """Whether the resolver answered that the server's host name does not exist (a typo, not
    an outage: a resolver out of reach says to try again, ``EAI_AGAIN``)."""
    missing = {getattr(socket, name, None) for name in ("EAI_NONAME", "EAI_NODATA")} - {None}
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return cause.errno in missing
        cause = cause.__cause__ or cause.__context__
    return False


def _busy(exc: rx.RedisError) -> bool:
    """Whether the server answered ``BUSY`` (a script runs too long), alone or in a pipeline
    (where redis-py puts the command's place before the server's words)."""
    return re.match(r"(.*caused error: )?BUSY\b", str(exc)) is not None


def _no_replicas(exc: rx.RedisError) -> bool:
    """Whether the server refused a write for want of replicas in sync (``NOREPLICAS``),
    alone, in a pipeline, or from inside a script."""
    return re.match(r"(.*caused error: )?NOREPLICAS\b", str(exc)) is not None


def _denied(exc: rx.RedisError) -> bool:
    """Whether the server refused a command to this user (ACL)."""
    text = str(exc)
    return "NOPERM" in text or "can't run this command" in text or "no permissions" in text


# Where an error from inside a script happened, as Redis 7 says it ("script: <sha1>, on
# @user_script:12.") and Redis 6 ("(call to f_<sha1>): @user_script:12: ...").
_SCRIPT_PLACE = re.compile(
    r"(?<![0-9a-fA-F])([0-9a-fA-F]{40})(?![0-9a-fA-F]).*?@user_script: ?(\d+)"
)


def _denial(text: str, where: str, prefix: str, user: str) -> str:
    """``_refusal`` for an ACL refusal the server gave as ``text``: the command named in it,
    or the one on the line of our script it names; else the server's words with the grants."""
    keys = "key" in text
    named = re.search(r"run the '([\w|]+)' command", text)
    command = named.group(1) if named is not None else None
    in_script = _SCRIPT_PLACE.search(text)
    if command is None and in_script is not None:
        command = scripts.command_at(in_script.group(1), int(in_script.group(2)))
    if command is None and not keys:
        return (
            f"the Redis user {user!r} may not do what inturn needs at {where} ({text}): grant "
            f"it with 'ACL SETUSER {user} ~{prefix}:* {GRANTS}'"
        )
    return _refusal(
        user, [command.replace("|", " ").upper()] if command else [], keys, where, prefix
    )


def _evicts(memory: dict[str, Any]) -> str | None:
    """How a server evicts keys, from its ``INFO memory``; None if it never does.

    Redis evicts only once ``maxmemory`` is reached, and not at all without one (0) or with
    the ``noeviction`` policy (redis.io, "Key eviction"). Any other policy can drop what a held
    turn rests on: ``allkeys-*`` the line's tickets, so that the next one finds the line empty
    and starts beside the holder; ``volatile-*`` the leases, which ends turns still in use."""
    policy = memory.get("maxmemory_policy")  # redis-py parses INFO into text and numbers
    limit = memory.get("maxmemory")
    if not isinstance(policy, str) or not isinstance(limit, int) or limit <= 0:
        return None
    if policy == "noeviction":
        return None
    return f"maxmemory-policy {policy}, maxmemory {memory.get('maxmemory_human', limit)}"


# --------------------------------------------------------------------------- waiting


class _Interrupter(threading.Event):
    """Linked to a ``CancelToken``: shuts the blocked connection's socket so XREAD returns now."""

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._sock: socket.socket | None = None

    def arm(self, sock: socket.socket | None) -> bool:
        with self._guard:
            if self.is_set():
                return False
            self._sock = sock
            return True

    def set(self) -> None:
        super().set()
        with self._guard:
            sock, self._sock = self._sock, None
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _get_connection(pool: redis.ConnectionPool) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        return pool.get_connection("XREAD")  # type: ignore[arg-type,unused-ignore]


# --------------------------------------------------------------------------- backend


class RedisBackend(Backend):
    """Lines on a Redis server: shared by every client that uses the same server and prefix."""

    def __init__(self, url: str, scope: str = "user") -> None:
        check_scope(scope)
        self.scope = "server"  # on a server, every client of the same prefix shares the lines
        address = parse_address(url)
        self.address = address
        self.lease = address.lease
        self.prefix = address.prefix
        self.user = str(address.options.get("username") or "default")  # as ACLs name it
        base: dict[str, Any] = {
            "socket_timeout": max(5.0, 2 * address.lease),
            "socket_connect_timeout": 5.0,
            **address.options,
            "decode_responses": False,
            "protocol": 2,
        }
        # Retry a dropped connection (a server restart), not a silent one: that is trouble.
        # A command the server ran but whose answer was lost is then sent again, so every
        # script gives the same answer the second time (see scripts.py).
        retry = Retry(
            ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(rx.ConnectionError,)
        )
        self.client = self._client(base, retry)
        quick = min(2.0, address.lease / 4)
        self.quick_client = self._client(
            {**base, "socket_timeout": quick, "socket_connect_timeout": quick},
            Retry(NoBackoff(), 0),
        )
        # Waits block for up to a lease: their socket timeout must be longer than that. A
        # blocked read gives the server this much more than it asked to block for.
        self.answer_grace = grace = max(1.0, address.lease / 2)
        wait_timeout = max(float(base["socket_timeout"] or 0), address.lease + grace)
        self.wait_pool = self._pool({**base, "socket_timeout": wait_timeout}, Retry(NoBackoff(), 0))
        # The keeper's listener blocks in the server for up to a lease at a time.
        self.listen_client = self._client(
            {**base, "socket_timeout": wait_timeout}, Retry(NoBackoff(), 0)
        )
        self.keeper = LeaseKeeper(
            self.quick_client, address.lease, self.listen_client, address.prefix
        )
        self.clock = ServerClock()  # tickets' times are the server's
        self._checked = False  # the server was seen not to evict keys, the user to have its grants
        self._check_lock = threading.Lock()
        self.scripts = {
            name: self.client.register_script(source)
            for name, source in (
                ("join", scripts.JOIN),
                ("bury", scripts.BURY),
                ("leave", scripts.LEAVE),
                ("mark", scripts.MARK),
                ("claim", scripts.CLAIM),
                ("note", scripts.NOTE),
                ("forget", scripts.FORGET),
            )
        }

    def _pool(self, options: dict[str, Any], retry: Retry) -> redis.ConnectionPool:
        pool = redis.ConnectionPool(**{**options, "retry": retry})
        try:
            pool.connection_class(**pool.connection_kwargs)  # an unknown URL parameter fails here
        except TypeError as exc:
            raise UsageError(f"bad parameter in the Redis URL for {self.where}: {exc}") from None
        return pool

    def _client(self, options: dict[str, Any], retry: Retry) -> redis.Redis:
        return redis.Redis(connection_pool=self._pool(options, retry))

    @property
    def where(self) -> str:
        return self.address.where

    def errors(self) -> AbstractContextManager[None]:
        """Report any Redis failure inside the block as one clear ``BackendError``."""
        return _translated(self.where, self.prefix, self.user)

    def error(self, exc: rx.RedisError) -> BackendError:
        """What ``errors`` raises for ``exc``, for paths that avoid a context manager."""
        return _backend_error(exc, self.where, self.prefix, self.user)

    def line(self, name: str) -> RedisStore:
        return RedisStore(self, name)

    def check_before_join(self) -> None:
        """Refuse to join on a server that may evict keys (``_evicts``), or as a user that
        may not run a command inturn uses (``_commands_used``): checked once, before the first
        join, in one round trip. A user whom ACLs deny ``INFO`` (or a server that renamed it
        away) is not checked for eviction, nor one on a server older than Redis 7 for its
        commands: there, a refusal names the command when it comes (``_denial``)."""
        if self._checked:
            return
        with self._check_lock, self.errors():
            if self._checked:
                return
            key = f"{self.prefix}:{{check}}:key"
            commands = _commands_used(key)
            words = [word for command in commands for word in (len(command), *command)]
            with self.client.pipeline(transaction=False) as pipe:
                pipe.info("memory")
                call(pipe, "EVAL", scripts.CAN_RUN, 0, *words)
                memory, denied = pipe.execute(raise_on_error=False)
            if isinstance(denied, rx.RedisError):
                raise denied
            if isinstance(denied, list) and denied:
                places = [int(place) for place in denied]
                unknown = [_command_name(commands[-p - 1]) for p in places if p < 0]
                if unknown:
                    raise BackendError(_unknown_commands(unknown, self.where))
                self._refuse([commands[p - 1] for p in places], key)
            if isinstance(memory, rx.RedisError):
                if not _denied(memory) and "unknown command" not in str(memory):
                    raise memory
                memory = {}  # INFO denied or renamed away: not checked (see the README)
            how = _evicts(memory)
            if how is not None:
                raise BackendError(
                    f"the Redis server at {self.where} evicts keys when its memory is full "
                    f"({how}), and could drop a held turn and let a second holder in: set "
                    "maxmemory-policy noeviction on it, or use a server that does not evict"
                )
            self._checked = True

    def _refuse(self, denied: Sequence[tuple[str, ...]], key: str) -> NoReturn:
        """Refuse a user denied the ``denied`` commands; denied every one that names ``key``
        (one of ours), it is the keys that it may not use."""
        keys = all(c in denied for c in _commands_used(key) if key in c)
        names = list(dict.fromkeys(_command_name(c) for c in denied))
        raise BackendError(_refusal(self.user, names, keys, self.where, self.prefix))

    def names(self) -> list[str]:
        with self.errors():
            members = call(self.client, "SMEMBERS", f"{self.prefix}:lines")
        return sorted(_text(m) for m in members)

    def kept_anything(self) -> bool:
        with self.errors():
            return bool(call(self.client, "EXISTS", f"{self.prefix}:lines"))

    def close(self) -> None:
        self.keeper.close()
        for client in (self.client, self.quick_client):  # the keeper closes its listener's
            client.connection_pool.disconnect()
        self.wait_pool.disconnect()


def _text(raw: bytes | str) -> str:
    """Text as inturn wrote it (lone surrogates included); garbage from others still reads."""
    if isinstance(raw, str):
        return raw
    try:
        return decode(raw)
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


class RedisStore(LineStore):
    remote = True

    def __init__(self, backend: RedisBackend, name: str) -> None:
        self.backend = backend
        self.name = name
        self.scope = backend.scope
        self.lease_ms = max(1, round(backend.lease * 1000))
        self.gone_ms = max(10_000, 2 * self.lease_ms)  # long enough for a waiter to look
        tag = f"{backend.prefix}:{{{digest(name)}}}"
        self.tag = tag
        self.counter_key = f"{tag}:next"
        self.tickets_key = f"{tag}:tickets"
        self.shared_key = f"{tag}:shared"
        self.abandoned_key = f"{tag}:abandoned"
        self.lock_delay = backend.address.lock_delay
        # The holder gives up before its lease can run out; the next one waits the delay after.
        self.stop_window = backend.lease * (1 - GIVE_UP_AT) + self.lock_delay
        # Ticket number -> id, as seen in the line: a fact that never changes once true, so
        # threads may share it; forgotten once the ticket is gone from the line.
        self._ids: dict[int, str] = {}
        self._ids_lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.backend.where

    def _ticket_key(self, ticket_id: str) -> str:
        return f"{self.tag}:t:{ticket_id}"

    def _lease_key(self, ticket_id: str) -> str:
        return f"{self.tag}:lease:{ticket_id}"

    def _kick_key(self, ticket_id: str) -> str:
        return f"{self.tag}:kick:{ticket_id}"

    def _gone_key(self, ticket_id: str) -> str:
        return f"{self.tag}:gone:{ticket_id}"

    def _claimed_key(self, ticket_id: str) -> str:
        return f"{self.tag}:claimed:{ticket_id}"

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.backend.scripts[script](keys=keys, args=args)

    # -- LineStore

    def join(self, me: Ticket, patience: Patience) -> tuple[RedisMembership, View | None]:
        self.backend.check_before_join()
        member = self._enter(me)
        try:
            self.backend.keeper.add(member)
        except BaseException:  # Ctrl-C: no ticket stalls the line for a lease
            self.leave(member)
            raise
        return member, None

    def _enter(self, me: Ticket) -> RedisMembership:
        """A new ticket at the back of the line, whose lease nobody renews yet."""
        ticket_id = secrets.token_hex(10)
        fields: list[bytes | str] = ["line", encode(self.name)]
        for key, value in me.header().items():
            if value is None:
                continue
            if key == "command":
                fields += [key, json.dumps(value, ensure_ascii=True)]
            elif isinstance(value, str):
                fields += [key, encode(value)]
            else:
                fields += [key, repr(value)]
        keys = [
            self.counter_key,
            self.tickets_key,
            self._ticket_key(ticket_id),
            self._lease_key(ticket_id),
            self.shared_key,
        ]
        sent = time.monotonic()
        flag = "1" if me.shared else "0"
        kick = self._kick_key(ticket_id) if me.newest_wins else None
        lease = self._lease_key(ticket_id)
        member = RedisMembership(0, ticket_id, lease, sent, me.shared, kick, me)  # number: below
        try:
            with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
                # Listed at every join, in the same round trip: a forgotten line comes back.
                call(pipe, "SADD", f"{self.backend.prefix}:lines", encode(self.name))
                args: list[bytes | str | int] = [ticket_id, self.lease_ms, flag, *fields]
                self.backend.scripts["join"](keys=keys, args=args, client=pipe)
                call(pipe, "TIME")
                asked = time.time()
                _, joined, (seconds, micros) = pipe.execute()
                answered = time.time()
            member.number = int(joined)
            self.backend.clock.measured(asked, answered, seconds + micros / 1e6)
            self._learn({member.number: ticket_id})
        except BaseException as exc:
            # Ctrl-C, even while the server answers: no ticket stalls the line for a lease
            # (the leave script does nothing for a ticket that is not there).
            if not isinstance(exc, Exception) or member.number:
                self._take_out(member, say=False, clean=True)
            raise
        return member

    def _rejoin(self, member: RedisMembership, cancel: CancelToken | None) -> None:
        """Our place in line is gone while we waited (its lease ran out, or the server lost
        it): take a new ticket at the back, as a PostgreSQL waiter whose session ended does.

        Nothing of the old place is kept: it waits for everyone now ahead, and the lock delay
        from now, since it cannot know how the turns ahead ended meanwhile. A ``newest_wins``
        ticket yields to a newer one that came meanwhile, as it would have in its place. Gives
        up with ``Timeout`` at the owner's timeout (``give_up_at``), and with
        ``ServerUnavailable`` once the server has not answered for ``REJOIN_WINDOW`` seconds:
        a server out of reach, as for a PostgreSQL waiter, not a lost turn, since this one
        never held it.
        """
        why = self._lost_place(member)
        self.backend.keeper.remove(member)
        # Its record goes now (or expires with its lease), as a clean leave: whatever the
        # server marked, nothing ran in this place, so nobody is told of a death.
        self._take_out(member, say=False, clean=True)
        member.left = True  # nothing more to leave, until the new place (``move``)
        assert member.ticket is not None
        start = time.monotonic()
        deadline = member.give_up_at
        gave_up = f"gave up waiting for line {self.name!r}"
        for wait in _pauses(self.backend.lease):
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"stopped waiting for line {self.name!r}")
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"{gave_up} ({why})")  # no new place for a wait that is over
            try:
                fresh = self._enter(member.ticket)
                break
            except _Unreachable as exc:
                now = time.monotonic()
                if deadline is not None and now + wait > deadline:
                    raise Timeout(f"{gave_up} ({why}; {exc})") from None
                if now + wait > start + REJOIN_WINDOW:
                    again = f"could not join again within {REJOIN_WINDOW:g}s"
                    raise ServerUnavailable(f"{why}; {again}: {exc}") from None
            sleep_or_cancel(wait, cancel, self.name)
        earlier = member.number
        self.backend.keeper.move(member, fresh)
        member.lost_track_at = start
        warn(f"{why}; back in line {self.name!r} as ticket {member.number}")
        if member.kick_key is not None:
            self._yield_to_newer(member, earlier)

    def _yield_to_newer(self, member: RedisMembership, earlier: int) -> None:
        """Raise ``Replaced`` if a live ``newest_wins`` ticket joined after ``earlier``, the
        place this one lost: it would have replaced that place."""
        between = [n for n in self._look(member).tickets if n > earlier]
        if not between:
            return
        alive = [n for n, ms in zip(between, self._leases_left(between), strict=True) if ms != -2]
        for number, ticket in zip(alive, self._read(alive), strict=True):
            if ticket is not None and ticket.newest_wins:
                raise Replaced(f"ticket {number} replaced this one in line {self.name!r}")

    def _learn(self, ids: dict[int, str], present: bool = False) -> None:
        with self._ids_lock:
            if present:
                self._ids = dict(ids)
            else:
                self._ids.update(ids)

    def look(self, me: Membership | None) -> View:
        return self._through_outages(me, None, lambda: self._look(me))

    def _look(self, me: Membership | None) -> View:
        with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
            call(pipe, "ZRANGE", self.tickets_key, 0, -1, "WITHSCORES")
            call(pipe, "ZRANGE", self.abandoned_key, 0, -1, "WITHSCORES")
            call(pipe, "SMEMBERS", self.shared_key)
            tickets, markers, shared_ids = pipe.execute()
        live = _scored(tickets)
        dead = _scored(markers)
        self._learn({**dict(live), **dict(dead)}, present=True)
        numbers = tuple(n for n, _ in live if me is None or n < me.number)
        readers = {_text(i) for i in shared_ids}
        shared = {n for n, i in live if i in readers}
        if dead:  # rare: which markers are shared turns' (a reader need not wait for those)
            with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
                for _, ticket_id in dead:
                    call(pipe, "HGET", self._ticket_key(ticket_id), "shared")
                flags = pipe.execute()
            shared |= {n for (n, _), flag in zip(dead, flags, strict=True) if _text(flag or b"")}
        return View(numbers, tuple(n for n, _ in dead), shared=frozenset(shared))

    def _id(self, number: int) -> str | None:
        with self._ids_lock:
            known = self._ids.get(number)
        if known is not None:
            return known
        with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
            for key in (self.tickets_key, self.abandoned_key):
                call(pipe, "ZRANGEBYSCORE", key, number, number)
            found = [ids for ids in pipe.execute() if ids]
        if not found:
            return None
        ticket_id = _text(found[0][0])
        self._learn({number: ticket_id})
        return ticket_id

    def _leases_left(self, numbers: Sequence[int]) -> list[int]:
        """Milliseconds left on each ticket's lease; -2 where it is gone."""
        ids = [self._id(n) for n in numbers]
        asked = [i for i in ids if i is not None]
        with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
            for ticket_id in asked:
                call(pipe, "PTTL", self._lease_key(ticket_id))
            answers = iter(pipe.execute() if asked else [])
        return [int(next(answers)) if i is not None else -2 for i in ids]

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        left = self._through_outages(me, None, lambda: self._leases_left(numbers))
        return [ms != -2 for ms in left]

    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        return self._through_outages(me, patience.cancel, lambda: self._bury(number))

    def _bury(self, number: int) -> bool:
        ticket_id = self._id(number)
        if ticket_id is None:
            return False
        keys = [
            self.tickets_key,
            self._ticket_key(ticket_id),
            self._lease_key(ticket_id),
            self.abandoned_key,
            self._gone_key(ticket_id),
            self.shared_key,
        ]
        with self.backend.errors():
            return int(self._run("bury", keys, [ticket_id, self.gone_ms])) == 1

    def forget(self, patience: Patience) -> bool:
        view = self.look(None)
        for number, ok in zip(view.tickets, self.alive(view.tickets, None), strict=True):
            if not ok:
                self.bury(number, None, patience)
        with self.backend.errors():
            found = call(self.backend.client, "ZRANGE", self.abandoned_key, 0, -1)
            records = [self._ticket_key(_text(i)) for i in found]
            keys = [self.tickets_key, self.abandoned_key, f"{self.backend.prefix}:lines", *records]
            return bool(self._run("forget", keys, [encode(self.name)]))

    def replace(self, number: int, me: Membership) -> None:
        ticket_id = self._id(number)
        if ticket_id is None:
            return  # it left meanwhile
        kick = self._kick_key(ticket_id)
        with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
            call(pipe, "XADD", kick, "MAXLEN", "16", "*", "by", str(me.number))
            call(pipe, "PEXPIRE", kick, self.gone_ms)
            pipe.execute()

    def wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool = False,
    ) -> Woke | None:
        member = me if isinstance(me, RedisMembership) else None
        deadline = None if timeout is None else time.monotonic() + timeout
        place = None if member is None else member.number

        def wait_once() -> Woke | None:
            if member is not None and member.number != place:
                return Woke()  # it lost its place and took a new one: the queue looks again
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._wait(member, numbers, left, cancel, then_holds)

        try:
            return self._through_outages(member, cancel, wait_once, self.backend.lease)
        except _Unreachable as exc:
            if member is not None and member.lost and not member.holding:  # the clearer story
                raise ServerUnavailable(f"{self._lost_place(member)}: {exc}") from None
            raise

    def _wait(
        self,
        me: RedisMembership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool,
    ) -> Woke | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = [self._id(n) for n in numbers]
        if any(i is None for i in ids):
            return Woke()
        streams = {self._gone_key(cast(str, i)): n for i, n in zip(ids, numbers, strict=True)}
        while True:
            if me is not None:
                self._check_own_place(me)
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"stopped waiting for line {self.name!r}")
            block = None
            if deadline is not None:
                block = math.ceil((deadline - time.monotonic()) * 1000)
                if block <= 0:
                    return None
            left = self._leases_left(numbers)
            if any(ms == -2 for ms in left):
                return Woke()
            # Wake just after the first watched lease could expire (-1: no expiry, never ours).
            expiry = min((ms for ms in left if ms >= 0), default=self.lease_ms)
            wake = expiry + WAKE_AFTER_EXPIRY_MS
            block = wake if block is None else min(block, wake)
            cleanly = self._block_on(me, list(streams), block, cancel, then_holds)
            if cleanly is not None:
                return Woke(left=tuple(streams[key] for key in cleanly))

    def _interrupted(self, me: RedisMembership | None) -> NoReturn:
        if me is not None:
            self._check_own_place(me)
        raise Cancelled(f"stopped waiting for line {self.name!r}")

    def _through_outages(
        self,
        me: Membership | None,
        cancel: CancelToken | None,
        work: Callable[[], T],
        placeless: float = 0.0,
    ) -> T:
        """``work()``, tried again while the server does not answer (a restart, a network
        blip). For ``me``, a ticket of ours waiting in line, the keeper renews the lease the
        moment the server answers again, and declares the place lost three quarters of a lease
        after its last renewal: then it takes a new place (``_rejoin``) and works again.
        Without a place of ours to keep (a barrier's wait), for ``placeless`` seconds from the
        first failure, and with one, for ``REJOIN_WINDOW``: then the failure is the answer."""
        ours = isinstance(me, RedisMembership) and me.pid == os.getpid() and not me.holding
        member = me if ours and isinstance(me, RedisMembership) else None
        until = None
        for pause in _pauses(self.backend.lease):
            try:
                return work()
            except _PlaceLost as exc:
                if member is None:
                    raise LostTurn(str(exc)) from None
                self._rejoin(member, cancel)
                continue
            except _Unreachable:
                if member is not None and member.lost:
                    self._rejoin(member, cancel)
                    continue
                # A place kept alive by the keeper's own connection while this one cannot
                # get through (a server out of room for more clients) is given up as a
                # rejoin would be; one without a place, after ``placeless`` seconds.
                window = placeless if member is None else REJOIN_WINDOW
                until = time.monotonic() + window if until is None else until
                if time.monotonic() + pause > until:
                    raise
            woken = threading.Event()
            with ExitStack() as links:
                if member is not None:
                    links.enter_context(member.signal.linked(woken))
                if cancel is not None:
                    links.enter_context(cancel.linked(woken))
                woken.wait(pause)
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"stopped waiting for line {self.name!r}")
        raise AssertionError("unreachable")

    def _check_own_place(self, me: RedisMembership) -> None:
        """Raise ``_PlaceLost`` if our waiting ticket lost its place: ``_through_outages``
        takes a new one."""
        if me.lost and not me.holding:
            raise _PlaceLost(self._lost_place(me))

    def _lost_place(self, me: RedisMembership) -> str:
        """Why a waiter lost its place: the server had no lease for it any more (it lost its
        data, or the waiter could not renew in time), or no renewal got through in time."""
        lease = self.backend.lease
        if me.gone:
            return (
                f"lost our place in line {self.name!r}: Redis at {self.where} no longer had its "
                f"lease (a restart that kept no data, a FLUSHALL, or no renewal for {lease:g}s)"
            )
        return (
            f"lost our place in line {self.name!r}: its lease at Redis at {self.where} went "
            f"unrenewed for {lease * GIVE_UP_AT:g}s (the server did not answer, or this process "
            "was stopped)"
        )

    def _block_on(
        self,
        me: RedisMembership | None,
        streams: list[str],
        block_ms: int,
        cancel: CancelToken | None,
        then_holds: bool,
    ) -> set[str] | None:
        """``XREAD BLOCK`` on the leavers' streams: once one of them wrote, the streams whose
        ticket left cleanly (``left``, not ``dead``: those need no further look); None when
        nothing came.

        With ``then_holds``, the mark script goes in the same packet, behind the read: the
        server runs it as the read ends (no second round trip after waking), and it marks our
        turn held only if every stream says its ticket left cleanly. A waiter that died or
        was cancelled while it waited has its connection closed first: the server drops what
        it had not run yet, so it never marks a waiter that stopped waiting.

        A cancel, or our own ticket being declared lost, shuts the connection's socket from
        the other thread, which ends the blocked read at once. A ``newest_wins`` ticket also
        reads its own kick stream, where a later arrival that replaces it writes: then it
        raises ``Replaced`` (once it has checked that the one who wrote is a live ticket
        behind it); entries already looked at are not read again.
        """
        kick = me.kick_key if me is not None else None
        mark = self._mark_on_wake(me, streams) if then_holds and me is not None else None
        since = ["0-0"] * len(streams)
        if kick is not None and me is not None:
            streams = [*streams, kick]
            since.append(me.kicks_read)
        pool = self.backend.wait_pool
        interrupter = _Interrupter()
        with self.backend.errors():
            connection = _get_connection(pool)
        try:
            with ExitStack() as links:
                if cancel is not None:
                    links.enter_context(cancel.linked(interrupter))
                if me is not None:
                    links.enter_context(me.signal.linked(interrupter))
                with self.backend.errors():
                    connection.connect()
                sock = getattr(connection, "_sock", None)
                if not interrupter.arm(sock):
                    self._interrupted(me)
                block_ms = max(1, block_ms)
                if sock is not None:  # a server gone silent ends the read soon after its block
                    sock.settimeout(block_ms / 1000 + self.backend.answer_grace)
                read = ("XREAD", "BLOCK", block_ms, "STREAMS", *streams, *since)
                try:
                    answers = _exchange(connection, [read] if mark is None else [read, mark])
                except (rx.ConnectionError, rx.TimeoutError, OSError):
                    if interrupter.is_set():
                        self._interrupted(me)
                    return None  # the caller looks again, through the main connection
                finally:
                    interrupter.arm(None)
        finally:
            pool.release(connection)
        reply = answers[0]
        if isinstance(reply, rx.ResponseError):  # refused (an ACL without @blocking, say)
            raise self.backend.error(reply)
        if me is not None and answers[1:] == [1]:
            me.holding = True  # marked as the read ended
        if reply is None:
            return None
        if kick is not None and me is not None:
            self._check_kicks(me, kick, reply)
        return {
            _text(stream)
            for stream, entries in reply
            if any(b"left" in _as_dict(fields) for _, fields in entries)
        }

    def _mark_on_wake(self, me: RedisMembership, streams: list[str]) -> tuple[Any, ...]:
        """The command that marks our turn held if every one of ``streams`` says its ticket
        left cleanly (sent whole rather than by hash: it needs no loading beforehand)."""
        keys = [self.tickets_key, self._ticket_key(me.ticket_id), me.lease_key, *streams]
        return ("EVAL", scripts.MARK, len(keys), *keys, me.ticket_id)

    def _check_kicks(self, me: RedisMembership, kick: str, reply: Any) -> None:
        """Raise ``Replaced`` if our kick stream names a later ticket that is alive."""
        for stream, entries in reply:
            if _text(stream) != kick:
                continue
            for entry_id, fields in entries:
                me.kicks_read = _text(entry_id)
                pairs = _as_dict(fields)
                by = _text(pairs.get(b"by", b""))
                if by.isdigit() and int(by) > me.number and self.alive([int(by)], me)[0]:
                    raise Replaced(f"ticket {by} replaced this one in line {self.name!r}")

    def mark_acquired(self, me: Membership, when: float, patience: Patience) -> None:
        assert isinstance(me, RedisMembership)
        ok = me.holding  # the wait may have marked it as it woke
        if not ok:
            keys = [self.tickets_key, self._ticket_key(me.ticket_id), me.lease_key]
            try:  # between waking and returning: no context manager
                ok = not me.lost and int(self._run("mark", keys, [me.ticket_id])) == 1
            except rx.RedisError as exc:
                raise self.backend.error(exc) from None
        # A waiter stopped (SIGSTOP) as its turn came may have been marked by the server
        # while its lease ran out and the next one took the turn: the keeper's verdict, made
        # here too, so that a race with its thread cannot start the command beside that one.
        late = time.monotonic() >= me.renewed_at + self.backend.lease * GIVE_UP_AT
        if not ok or me.lost or late:
            me.gone = me.gone or not (me.lost or late)  # the mark found no lease
            me.declare_lost()
            if me.pid == os.getpid():  # nothing ran in this turn yet: wait again, as any waiter
                self._rejoin(me, patience.cancel)
                raise TookNewPlace()
            raise LostTurn(self._lost_place(me))
        me.holding = True

    def note_runner(self, me: Membership, pid: int) -> None:
        """Name ``pid`` (the command of ``inturn run``, which dies with us, who renew the lease)
        in the record, as the holder that ``status`` shows and whose stop it tells. Only the
        record changes: the turn lives by the lease, whoever the record names. A server that
        does not answer leaves our own pid there, which is said, not fatal to the turn."""
        assert isinstance(me, RedisMembership)
        keys = [self.tickets_key, self._ticket_key(me.ticket_id)]
        try:
            self._run("note", keys, [me.ticket_id, pid])
        except rx.RedisError as exc:
            problem = self.backend.error(exc)
            warn(f"line {self.name!r} still names pid {os.getpid()} as its holder: {problem}")

    def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
        """The first marker we may claim: a shared turn leaves those of shared holders to the
        next exclusive one."""
        assert isinstance(me, RedisMembership)
        skip = 0
        while True:
            with self.backend.errors():
                found = call(
                    self.backend.client, "ZRANGE", self.abandoned_key, skip, skip, "WITHSCORES"
                )
                if not found:
                    return None
                ticket_id, number = _text(found[0]), int(found[1])
                key = self._ticket_key(ticket_id)
                if me.shared and _text(call(self.backend.client, "HGET", key, "shared") or b""):
                    skip += 1
                    continue
                keys = [self.abandoned_key, key, self._claimed_key(ticket_id)]
                record = self._run("claim", keys, [ticket_id, me.ticket_id, self.gone_ms])
            if record is not None:
                pairs = dict(zip(record[::2], record[1::2], strict=True))
                return _ticket(number, pairs, self.backend.clock.offset)

    def leave(self, me: Membership) -> None:
        assert isinstance(me, RedisMembership)
        if me.pid != os.getpid() or me.left:
            return  # a child made by fork(): the ticket stays with the parent
        me.left = True
        try:
            self.backend.keeper.remove(me)
            self._take_out(me)
        except BaseException:  # Ctrl-C: not known to have left, so a retry leaves (again)
            me.left = False
            raise

    def _take_out(self, me: RedisMembership, say: bool = True, clean: bool = False) -> None:
        """Take our ticket out of the line (the leave script); ``say``: warn if it could not
        (it expires with its lease); ``clean``: a release, even of a lost ticket."""
        keys = [
            self.tickets_key,
            self._ticket_key(me.ticket_id),
            self._lease_key(me.ticket_id),
            self._gone_key(me.ticket_id),
            self.shared_key,
            me.kick_key or self._kick_key(me.ticket_id),
            self.abandoned_key,
        ]
        # A lost ticket gets one quick try: the server is likely out of reach. A held turn
        # tries again while the server does not answer (a restart), as long as its lease
        # surely lasts (the keeper's own bound), so that the next holder is not told of a
        # death that did not happen; the script does nothing the second time. A waiter's
        # ticket that cannot leave simply expires: nobody is told of it.
        client = self.backend.quick_client if me.lost else self.backend.client
        lost = "1" if me.lost and not clean else "0"  # a lost turn's end is unclean: told
        lasts_until = me.renewed_at + self.backend.lease * GIVE_UP_AT if me.holding else 0.0
        for pause in _pauses(self.backend.lease):
            try:
                self.backend.scripts["leave"](
                    keys=keys, args=[me.ticket_id, self.gone_ms, lost], client=client
                )
                return
            except (rx.ConnectionError, rx.TimeoutError) as exc:
                if me.lost or time.monotonic() + pause >= lasts_until:
                    if say:
                        self._not_left(exc)
                    return
            except rx.RedisError as exc:
                if say:
                    self._not_left(exc)
                return
            time.sleep(pause)

    def _not_left(self, exc: rx.RedisError) -> None:
        backend = self.backend
        why = f"on Redis at {self.where} ({exc})"
        if _denied(exc):  # rights taken away since the join, say: name the command
            why = f"({_denial(str(exc), self.where, backend.prefix, backend.user)})"
        warn_once(
            f"could not leave line {self.name!r} {why}; the ticket expires within "
            f"{backend.lease:g}s"
        )

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        return self._through_outages(me, None, lambda: self._read(numbers))

    def _read(self, numbers: Sequence[int]) -> list[Ticket | None]:
        ids = [self._id(n) for n in numbers]
        asked = [i for i in ids if i is not None]
        if not asked:
            return [None] * len(numbers)
        with self.backend.errors(), self.backend.client.pipeline(transaction=False) as pipe:
            call(pipe, "TIME")  # in the same round trip: the server's clock against ours
            for ticket_id in asked:
                call(pipe, "HGETALL", self._ticket_key(ticket_id))
            sent = time.time()
            (seconds, micros), *found = pipe.execute()
            offset = self.backend.clock.measured(sent, time.time(), seconds + micros / 1e6)
        answers = iter(found)
        result: list[Ticket | None] = []
        for number, known in zip(numbers, ids, strict=True):
            fields = next(answers) if known is not None else None
            result.append(_ticket(number, _as_dict(fields), offset) if fields else None)
        return result


def _exchange(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one packet and read their answers (an error answer as its
    exception); a connection left with an answer unread is closed, or its next user would
    read that answer for its own."""
    answers: list[Any] = []
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        for _ in commands:
            try:
                answers.append(connection.read_response())
            except rx.ResponseError as exc:  # read whole: the next answer follows
                answers.append(exc)
    finally:
        if len(answers) < len(commands):
            connection.disconnect()
    return answers


def _scored(flat: Sequence[bytes]) -> list[tuple[int, str]]:
    """``ZRANGE ... WITHSCORES`` as (number, id) pairs, in ticket order."""
    return [(int(float(flat[i + 1])), _text(flat[i])) for i in range(0, len(flat), 2)]


def _as_dict(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    if isinstance(fields, list):
        return dict(zip(fields[::2], fields[1::2], strict=True))
    return {}


def _ticket(number: int, fields: dict[bytes, bytes], offset: float) -> Ticket:
    """A ticket record from its hash, tolerating missing or mistyped fields; its times, kept
    on the server's clock, moved onto ours by ``offset`` (ours less the server's)."""
    header: dict[str, Any] = {}
    for raw_key, raw_value in fields.items():
        key, value = _text(raw_key), _text(raw_value)
        try:
            if key in ("pid", "slots", "pid_namespace"):
                header[key] = int(value)
            elif key == "joined_at":
                header[key] = float(value)
            elif key == "command":
                header[key] = json.loads(value)
            elif key in ("user", "host", "cwd"):
                header[key] = value
            elif key in ("shared", "newest_wins"):
                header[key] = value == "True"
        except ValueError:
            continue
    acquired_at = None
    raw_acquired = fields.get(b"acquired_at")
    if raw_acquired is not None:
        with suppress(ValueError):
            acquired_at = float(raw_acquired)
    return Ticket.from_header(number, header, acquired_at).on_our_clock(offset)
