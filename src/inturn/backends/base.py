"""The primitives a backend supplies; the queue algorithm (``queue.py``) is built on these only.

A line is a set of numbered tickets. Each backend keeps, per line:

* a counter that hands out ticket numbers, strictly increasing for the life of the line
  (they double as fencing tokens);
* for each ticket, a record of its owner (``records.Ticket``) and a *liveness lock* that the
  owner holds from ``join`` until ``leave`` and that the operating system or server frees the
  moment the owner dies (a ``flock``, a named mutex, a session advisory lock, a lease);
* *abandonment markers*: a record that a ticket died while it held the turn, consumed by the
  next holder so that exactly one of them is told.

Everything else (who is ahead, who to wait for, first come first served, slots) is decided in
``queue.py`` from these primitives and is the same on every backend.

Whose ticket is asking is always an argument (``me``), never the calling thread: a store is
shared by every thread of a process, and nothing one caller does (a look, a probe, a status
display) changes what another decides. What one round trip already learned (liveness read
with the line, the line read on waking) is returned, not cached.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from ..errors import BackendError, Cancelled, UsageError
from ..records import LineStatus, Ticket, warn
from ..rule import may_hold

SCOPES = ("user", "machine")


def check_scope(scope: str) -> str:
    """``user`` or ``machine``, or one clear line naming the choice."""
    if scope not in SCOPES:
        raise UsageError(f"unknown scope {scope!r}: use 'user' or 'machine'")
    return scope


class GuardTaken(BackendError):
    """A short lock of the backend (a line's guard) stayed taken past the caller's patience:
    someone holds it for long. The queue turns this into ``Busy`` or ``Timeout``."""


class TookNewPlace(Exception):
    """``mark_acquired`` found the waiter's place gone as its turn came (a server session
    that ended just then) and took a new one, at the back: the queue waits again."""


# The small records below are plain classes, not ``NamedTuple``s: building a ``NamedTuple``
# class costs a few hundred microseconds at import, paid by every start of ``inturn``.


class View:
    """A look at a line: the tickets present (live or dead) ahead of the one asking, or all of
    them for an observer, ascending; the abandonment markers nobody has claimed yet; each
    ticket's liveness when the same round trip told it (None: ask ``alive``); and which of the
    tickets are shared turns (readers), markers of shared turns included where the look
    tells them (a reader need not wait a lock delay for a dead reader)."""

    __slots__ = ("alive", "markers", "shared", "tickets")

    def __init__(
        self,
        tickets: tuple[int, ...],
        markers: tuple[int, ...] = (),
        alive: tuple[bool, ...] | None = None,
        shared: frozenset[int] = frozenset(),
    ) -> None:
        self.tickets = tickets
        self.markers = markers
        self.alive = alive
        self.shared = shared


class Woke:
    """How a wait ended: the line as the same round trip found it on waking (or None), and the
    watched tickets known to have left cleanly (they need no further look)."""

    __slots__ = ("left", "view")

    def __init__(self, view: View | None = None, left: tuple[int, ...] = ()) -> None:
        self.view = view
        self.left = left


class Patience:
    """How long a step may wait for a short lock of the backend (a guard another process
    holds): until ``deadline`` (``time.monotonic()``), for ever when None, and no longer than
    ``cancel`` allows."""

    __slots__ = ("cancel", "deadline")

    def __init__(self, deadline: float | None = None, cancel: CancelToken | None = None) -> None:
        self.deadline = deadline
        self.cancel = cancel

    def remaining(self) -> float | None:
        """Seconds left, never more than ``LONGEST_SLEEP`` (see there)."""
        return one_sleep(None if self.deadline is None else self.deadline - time.monotonic())


def one_sleep(seconds: float | None) -> float | None:
    """How long to sleep in one go for a wait of ``seconds`` (None: for ever): at most
    ``LONGEST_SLEEP``; a longer wait looks again after each sleep."""
    return None if seconds is None else min(seconds, LONGEST_SLEEP)


class Fanout:
    """A set of ``threading.Event``s to set all at once when something happens (a cancel, a
    lost turn), including events linked after it happened."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler fires a cancel on the main thread, and a second signal
        # may come while the first one's handler is inside ``fire`` (SIGHUP, then the SIGHUP
        # and SIGCONT a shell sends its stopped jobs as it hangs up); a plain lock left that
        # waiter asleep for ever on itself.
        self._lock = threading.RLock()
        self._events: set[threading.Event] = set()
        self.fired = False

    def fire(self) -> bool:
        """Set every linked event; False if it had fired already."""
        with self._lock:
            if self.fired:
                return False
            self.fired = True
            events = list(self._events)
        for event in events:
            event.set()
        return True

    @contextmanager
    def linked(self, event: threading.Event) -> Iterator[None]:
        """Set ``event`` when fired, for as long as the ``with`` block runs."""
        with self._lock:
            self._events.add(event)
            fired = self.fired
        if fired:
            event.set()
        try:
            yield
        finally:
            with self._lock:
                self._events.discard(event)


class CancelToken(Fanout):
    """Lets another thread (an ``asyncio`` task being cancelled, a signal handler) end a wait.

    A wait that may be cancelled sleeps in a helper thread, which costs a hop between threads
    when the turn comes. A token cancelled by a signal handler of the main thread
    (``by_signal=True``) spares it: a wait on the main thread, with no other thread there to
    be handed the signal instead, sleeps in the kernel on the main thread itself, with
    ``sleeping`` set, and the handler ends that sleep by calling ``interrupt()``, which raises
    ``Cancelled`` out of it (once). The wait leaves the line as for any exception.
    """

    def __init__(self, by_signal: bool = False) -> None:
        super().__init__()
        self.by_signal = by_signal
        self.sleeping = False

    @property
    def cancelled(self) -> bool:
        return self.fired

    def cancel(self) -> None:
        self.fire()

    def may_sleep_here(self) -> bool:
        """Whether a wait may sleep on the calling thread, to be ended by ``interrupt()``."""
        return (
            self.by_signal
            and threading.current_thread() is threading.main_thread()
            and threading.active_count() == 1
        )

    def interrupt(self) -> None:
        """From the signal handler, after ``cancel()``: end a sleep on the main thread."""
        if self.sleeping:
            self.sleeping = False
            raise Cancelled("stopped waiting: a signal came")


def wait_woken(
    woken: threading.Event,
    timeout: float | None,
    cancel: CancelToken | None,
    fired: Callable[[], bool],
    name: str,
) -> bool:
    """Sleep until ``woken`` is set (True) or ``timeout`` runs out (False), for backends whose
    watchers set ``woken`` from other threads; ``fired()`` says whether one really did, since
    a cancel sets ``woken`` too, and then ``Cancelled`` is raised."""
    if cancel is None:
        return woken.wait(timeout)
    with cancel.linked(woken):
        woken.wait(timeout)
        if fired():
            return True
        if cancel.cancelled:
            raise Cancelled(f"stopped waiting for line {name!r}")
        return False


def pause(seconds: float, cancel: CancelToken | None, name: str) -> None:
    """Sleep ``seconds`` (a lock delay), ending early with ``Cancelled`` if cancelled."""
    if cancel is None:
        time.sleep(seconds)
        return
    woken = threading.Event()
    with cancel.linked(woken):
        woken.wait(seconds)
    if cancel.cancelled:
        raise Cancelled(f"stopped waiting for line {name!r}")


class LostSignal(Fanout):
    """The one way a membership reports a lost turn: ``lost``, callbacks run once (from the
    thread that noticed), and linked events set so that a wait in progress ends."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callback_lock = threading.Lock()

    @property
    def lost(self) -> bool:
        return self.fired

    def on_lost(self, callback: Callable[[], None]) -> None:
        with self._callback_lock:
            if not self.fired:
                self._callbacks.append(callback)
                return
        callback()

    def declare(self) -> None:
        with self._callback_lock:
            if not self.fire():
                return
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:  # one failing callback must not silence the others
                warn(f"an on_lost callback failed: {exc!r}")


class ServerClock:
    """How far our wall clock is from a server's. A server line keeps its tickets' times on
    the server's clock, the one that every host of the line shares: each host's own may be
    off by minutes, which would make the ages that ``status`` tells up."""

    def __init__(self) -> None:
        self.offset = 0.0  # our clock less the server's, in seconds
        self._spread: float | None = None  # the round trip of the reading it was taken from

    def measured(self, sent: float, answered: float, server: float) -> float:
        """Note the server's clock, ``server``, read by a request sent at ``sent`` and
        answered at ``answered`` (our clock): taken as read halfway, so it is known to within
        half the round trip. A reading replaces the one kept when it is closer, or when the
        two disagree by more than that (a clock was set): times read twice stay the same.
        Returns the offset."""
        spread = max(0.0, answered - sent)
        offset = (sent + answered) / 2 - server
        kept = self._spread
        if kept is None or spread < kept or abs(offset - self.offset) > (spread + kept) / 2:
            self.offset, self._spread = offset, spread
        return self.offset


class Membership(ABC):
    """The caller's own ticket: it keeps the liveness lock held until ``LineStore.leave``."""

    number: int
    shared: bool = False  # a shared turn: it claims only the markers of exclusive holders

    @property
    def lost(self) -> bool:
        """True once the backend knows the liveness lock is gone (a dropped server connection)."""
        return False

    def on_lost(self, callback: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Run ``callback`` (from another thread) if the turn is lost; local locks never are."""

    def why_lost(self) -> str:
        """Why the turn was lost, as far as the backend knows, for the message that says so."""
        return "the server is unreachable, or ended its session"

    def inheritable_handles(self) -> list[int]:
        """OS handles a child process may inherit to keep the turn held (``inturn run``)."""
        return []

    # The name of the job object (Windows) that ``inturn run`` puts its command in, for whoever
    # takes the turn after a dead holder to end (``win32.end_named_job``); None if there is none.
    job_name: str | None = None

    # When (``time.monotonic()``) this ticket lost sight of the line: a waiter whose server
    # connection dropped took a new place and cannot know how the turn ahead ended, so the
    # queue waits the lock delay from then, as after an unclean end.
    lost_track_at: float | None = None

    # When (``time.monotonic()``) the owner of a waiting ticket stops waiting (its timeout):
    # a new place, after losing one to a server, is not sought beyond it. None: never.
    give_up_at: float | None = None


class Peer:
    """Who is at the other end of a channel connection, as the operating system says (peer
    credentials of a Unix socket, a named pipe's client process and token): never what the
    other side claims. ``user`` is a user name where one is known, else the uid or SID as
    text; ``uid`` is POSIX's, ``sid`` Windows'; ``same_user``: the same user as this process."""

    __slots__ = ("pid", "same_user", "sid", "uid", "user")

    def __init__(
        self,
        pid: int | None,
        user: str,
        uid: int | None = None,
        sid: str | None = None,
        same_user: bool = False,
    ) -> None:
        self.pid = pid
        self.user = user
        self.uid = uid
        self.sid = sid
        self.same_user = same_user


class Connection(ABC):
    """One connection of a channel: bytes both ways, each call bounded by a deadline
    (``time.monotonic()``), so a slow or silent other side never blocks for ever."""

    peer: Peer

    @abstractmethod
    def send(self, data: bytes, deadline: float) -> None:
        """Send all of ``data``; ``TimeoutError`` at the deadline, ``OSError`` if it broke."""

    @abstractmethod
    def receive(self, size: int, deadline: float) -> bytes:
        """Up to ``size`` bytes (at least one), ``b""`` once the other side closed;
        ``TimeoutError`` at the deadline."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent)."""


class Channel(ABC):
    """Where the holder of a line listens for later starts (``single_instance``). It is
    opened before its owner joins the line, so its ``address`` is in the ticket from the
    first moment the ticket can be seen."""

    address: str

    @abstractmethod
    def accept(self) -> Connection | None:
        """The next connection, sleeping until one comes; None once ``close`` was called
        (from any thread)."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening, wake ``accept`` and remove the socket or pipe (idempotent)."""


class ListeningChannel(Channel):
    """A channel whose ``accept`` runs in one thread at a time and whose ``close`` may come
    from any other: ``close`` wakes the accepting thread, and whichever of the two is last
    frees what the channel holds, so that nothing is freed under a wait in progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepting = False
        self._waking = False
        self._released = False
        self.closed = False

    @abstractmethod
    def _accept_one(self) -> Connection | None:
        """Sleep until a connection comes (one we may talk to), or until ``_wake``: None."""

    @abstractmethod
    def _wake(self) -> None:
        """Make a sleeping ``_accept_one`` return None, and stop taking new connections."""

    @abstractmethod
    def _free(self) -> None:
        """Free what the channel holds (called once)."""

    def accept(self) -> Connection | None:
        with self._lock:
            if self.closed or self._accepting:
                return None
            self._accepting = True
        try:
            return self._accept_one()
        finally:
            with self._lock:
                self._accepting = False
                release = self.closed and not self._waking
            if release:
                self._release()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._waking = True  # ``_wake`` uses what ``_free`` closes: not freed meanwhile
        try:
            self._wake()
        finally:
            with self._lock:
                self._waking = False
                release = not self._accepting
            if release:
                self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._free()


class LineStore(ABC):
    """One named line in one backend, safe to share between any number of threads."""

    name: str
    scope: str = "user"
    remote = False  # True when every look costs a server round trip
    # Seconds the next holder waits after a turn that ended uncleanly, so that a holder cut
    # off from a server has stopped its work first (0 where death is the only unclean end).
    lock_delay: float = 0.0
    # Seconds a holder that learns it lost its turn has to stop its work before anyone else
    # may take the turn: the lock delay, plus on a lease what the holder gives up early (for
    # ever where a turn cannot be lost). ``inturn run`` fits its grace into it.
    stop_window: float = float("inf")

    @property
    def where(self) -> str:
        """Where the line lives, for messages (a folder, a server address without password)."""
        return ""

    @property
    def identity(self) -> str:
        """Where the line lives, the same for every store of it in this process however it
        was reached (with the name, it tells that a turn this caller holds is of this line):
        ``where`` unless a backend's places have several names."""
        return self.where

    @abstractmethod
    def join(self, me: Ticket, patience: Patience) -> tuple[Membership, View | None]:
        """Take the next ticket number, publish ``me`` under it and hold its liveness lock.

        Taking the number and publishing it must be one atomic step with respect to other
        joiners: once ``join`` returns, anyone who joins later sees this ticket. Returns the
        view of the tickets ahead when joining already read it (else None: ``look``).
        """

    @abstractmethod
    def look(self, me: Membership | None) -> View:
        """The tickets present ahead of ``me`` (every ticket for an observer), ascending."""

    @abstractmethod
    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        """Whether each ticket's owner still holds its liveness lock (asks the kernel/server)."""

    @abstractmethod
    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        """Remove a ticket found dead; leave an abandonment marker if it was holding.

        Must re-check death under the backend's own exclusion, so that a live ticket is never
        removed. Returns True when an unclaimed marker for it exists afterwards (whoever made
        it), so that the caller knows to claim it when its turn comes.
        """

    @abstractmethod
    def wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool = False,
    ) -> Woke | None:
        """Sleep until one of these tickets is gone or dead; None when ``timeout`` ran out.

        No polling: the caller sleeps in the kernel or the server. Raise ``Cancelled`` if
        ``cancel`` gets set, and ``Replaced`` as soon as ``me`` (if it joined with
        ``newest_wins``) is replaced; KeyboardInterrupt must get through on the main thread.
        ``me`` is None for a wait that holds no ticket (``Line.wait``).

        ``then_holds``: ``me``'s turn comes once every one of ``numbers`` has left cleanly. A
        server backend may then record the turn as held in the same step that wakes the
        waiter, so that ``mark_acquired`` has nothing left to send; it must record nothing for
        a waiter that died or stopped waiting before then.
        """

    @abstractmethod
    def replace(self, number: int, me: Membership) -> None:
        """Mark waiting ticket ``number`` (which joined with ``newest_wins``) as replaced by
        ``me`` and wake it at once: its wait raises ``Replaced`` and it leaves the line."""

    @abstractmethod
    def mark_acquired(self, me: Membership, when: float, patience: Patience) -> None:
        """Record that ``me`` now holds the turn (status shows it; death now means abandoned);
        ``TookNewPlace`` if it had lost its place just then and is back in line (a new place
        is sought until ``me.give_up_at``, or ``patience``'s cancel)."""

    @abstractmethod
    def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
        """Consume one abandonment marker atomically, the oldest first (a shared turn skips
        those of shared holders); the dead holder's record, or None. A backend that needs a
        short lock for it waits for that lock as ``patience`` allows (``GuardTaken``)."""

    @abstractmethod
    def leave(self, me: Membership) -> None:
        """Remove the caller's ticket and free its liveness lock (clean release or giving up)."""

    @abstractmethod
    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        """The records of these tickets (None where gone or unreadable)."""

    @abstractmethod
    def forget(self, patience: Patience) -> bool:
        """Remove the line if nobody holds or waits in it (False if someone does), safely
        with respect to someone joining it at that moment (they join the line anew)."""

    def check_channels(self) -> None:
        """Refuse, with one clear line, a backend where a holder cannot be sent messages."""
        raise self._no_channels()

    def open_channel(self, others: bool) -> Channel:
        """A channel for later starts to reach the caller once it holds the line; only the
        caller's own user may connect, unless ``others`` (a machine-wide line: then the
        listener checks each peer). Backends without channels refuse with a ``UsageError``."""
        raise self._no_channels()

    def connect(self, holder: Ticket, deadline: float) -> Connection:
        """Connect to ``holder``'s channel (its ``Ticket.channel``), having checked that the
        socket or pipe there is what the holder made and is served by the holder's process
        (``BackendError`` naming what is wrong otherwise, before a byte is sent); ``OSError``
        if nobody listens there any more."""
        raise self._no_channels()

    def _no_channels(self) -> UsageError:
        return no_channels(self.name, self.where)

    def note_runner(self, me: Membership, pid: int) -> None:  # noqa: B027 - optional hook
        """Record that process ``pid``, which inherited ``me``'s turn, holds it now (where a
        turn can be inherited at all)."""

    def status(self) -> LineStatus:
        """Live holders and waiters in ticket order; buries the dead it finds on the way
        (when it may, and briefly: an observer without write access, or one that finds the
        line's guard taken, leaves them to others)."""
        view = self.look(None)
        present = view.tickets
        liveness = view.alive if view.alive is not None else tuple(self.alive(present, None))
        live: list[int] = []
        patience = Patience(time.monotonic() + OBSERVER_PATIENCE)
        for number, ok in zip(present, liveness, strict=True):
            if ok:
                live.append(number)
            else:
                with suppress(BackendError):
                    self.bury(number, None, patience)
        holders: list[Ticket] = []
        waiters: list[Ticket] = []
        found = [ticket for ticket in self.read(live) if ticket is not None]
        for ticket in placed_by_rule(found, view.shared):
            (holders if ticket.holding else waiters).append(ticket)
        if len(holders) > 1:  # records are read one by one: the turn may have passed meanwhile
            still = self.alive([t.number for t in holders], None)
            holders = [t for t, ok in zip(holders, still, strict=True) if ok]
        return LineStatus(self.name, tuple(holders), tuple(waiters), self.scope, self.where)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the store keeps open between calls."""


def placed_by_rule(tickets: Sequence[Ticket], shared: frozenset[int]) -> list[Ticket]:
    """``tickets`` (live, in line order), each whose record could not be read told whether
    it holds by its place in line, as the queue decides it (``rule.may_hold``): its mode as
    the look found it, and the slots the line's readable records ask for (1 if none can be
    read). Its record's fields stay empty; the others are as read."""
    slots = max((t.slots for t in tickets if t.held_by_place is None), default=1)
    modes = [t.shared or t.number in shared for t in tickets]
    placed = []
    for index, ticket in enumerate(tickets):
        if ticket.held_by_place is not None:
            holds = may_hold(slots, modes[index], modes[:index])
            ticket = ticket._replace(shared=modes[index], held_by_place=holds)
        placed.append(ticket)
    return placed


# How long a look from outside (``status``) waits for a guard before it leaves the dead to
# others, and how long a non-blocking acquire waits for one before it calls the line busy.
OBSERVER_PATIENCE = 0.2
# The longest a caller sleeps in one go. A longer timeout (30 days, 1e300 seconds) is slept a
# day at a time, each day ending in a look at the line: no backend takes every length
# (PostgreSQL's lock_timeout stops at 2**31 ms, 24.8 days; Python's thread waits at
# ``threading.TIMEOUT_MAX``; Windows waits at 2**32 ms).
LONGEST_SLEEP = 86400.0
BUSY_PATIENCE = 1.0


class Backend(ABC):
    """A place where lines live: a folder on this machine, a database server."""

    scope: str = "user"

    @abstractmethod
    def line(self, name: str) -> LineStore:
        """The store of one line (created on first use)."""

    @abstractmethod
    def names(self) -> list[str]:
        """The names of every line that exists here, sorted."""

    def kept_anything(self) -> bool:
        """Whether anything of inturn's was ever kept here; False only where no line can be
        (a folder not made yet, a schema not created), where forgetting has nothing to do
        and must not make the place. Asked of a backend opened only to look."""
        return bool(self.names())

    @property
    def where(self) -> str:
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free connections or handles."""


def no_channels(name: str, where: str) -> UsageError:
    """The refusal of messages on a backend without channels (every server backend)."""
    return UsageError(
        f"line {name!r} lives on {where}, where a running instance cannot be sent messages: "
        "use a local line for single_instance(on_message=...) and send"
    )
