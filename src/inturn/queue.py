"""The queue algorithm, written once for every backend.

A joiner takes the next ticket. An exclusive ticket holds the turn when fewer than ``slots``
live tickets are ahead of it and none of them is shared; a shared ticket holds it when no live
exclusive ticket is ahead of it. Otherwise it sleeps until a ticket whose going is necessary for
its turn dies or leaves, then looks again: for an exclusive ticket, one of the ``slots`` live
tickets *directly* ahead of it (while those live, at least ``slots`` are ahead), or the nearest
live shared ticket ahead (every one of them must go); for a shared ticket, the nearest live
exclusive ticket ahead. So nobody wakes for nothing beyond those, and with ``slots=1`` only the
waiter right behind a leaver wakes. Order is by ticket number, so first come, first served
holds on every backend by construction, for readers and writers alike: a reader that arrives
behind a waiting writer waits behind it.

Policies decided by that same order, right after joining: ``max_waiting`` leaves at once when
that many tickets ahead are already waiting; ``newest_wins`` replaces the waiters ahead that
joined with it too (each is woken at once and leaves with ``Replaced``).

After a turn that ended uncleanly (an abandonment marker is waiting), the next holder waits the
store's *lock delay* before it starts, counted from the moment it first saw the marker, so that
a holder cut off from a server has stopped its work before anyone else begins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress

from .backends.base import (
    BUSY_PATIENCE,
    CancelToken,
    GuardTaken,
    LineStore,
    Membership,
    Patience,
    TookNewPlace,
    View,
    one_sleep,
    pause,
)
from .durations import duration
from .errors import BackendError, Busy, InturnError, Timeout, UsageError
from .forks import forget_after_fork
from .records import LineStatus, Progress, Ticket, own_ticket_fields
from .rule import may_hold as rule_may_hold

ProgressCallback = Callable[[Progress], None]


class Asker:
    """Who asks for a turn, to tell a wait that only its own release could end: the ``owner``
    (a thread for sync code, an ``asyncio`` task for async code), and for sync code that runs
    in an event loop's thread, the ``task`` it runs in and that ``loop``: its wait blocks the
    loop, so no task of that loop could release meanwhile."""

    __slots__ = ("loop", "owner", "task")

    def __init__(self, owner: object, task: object = None, loop: object = None) -> None:
        self.owner = owner
        self.task = task
        self.loop = loop

    def waits_for(self, owner: object, task: object) -> bool:
        """Whether a turn held by ``owner``, taken in ``task``, could only be released by
        this asker itself."""
        if owner is self.owner:
            return True
        if task is None:
            return False
        if task is self.task:
            return True
        get_loop = getattr(task, "get_loop", None)
        return self.loop is not None and get_loop is not None and get_loop() is self.loop


class Holdings:
    """Which owner (a thread for sync code, an ``asyncio`` task for async code) holds which
    tickets in this process, and in which task it took each, so that a wait that could only
    end when its own caller releases is refused instead of hanging. Owners are the objects
    themselves, never thread ids, which the system reuses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[tuple[str, str, int], tuple[object, object]] = {}
        forget_after_fork(self)

    @staticmethod
    def _key(store: LineStore, number: int) -> tuple[str, str, int]:
        return (store.identity, store.name, number)

    def add(self, store: LineStore, number: int, owner: object, task: object = None) -> None:
        with self._lock:
            self._owners[self._key(store, number)] = (owner, task)

    def discard(self, store: LineStore, number: int) -> None:
        with self._lock:
            self._owners.pop(self._key(store, number), None)

    def owned_by(self, store: LineStore, numbers: Sequence[int], asker: Asker) -> set[int]:
        """Those of ``numbers`` that ``asker`` holds (or that only it could release)."""
        with self._lock:
            held = {n: self._owners.get(self._key(store, n)) for n in numbers}
        return {n for n, h in held.items() if h is not None and asker.waits_for(*h)}

    def after_fork_in_child(self) -> None:
        """The parent's turns are not the child's (``Membership``s close their copies)."""
        self._lock = threading.Lock()
        self._owners = {}


HOLDINGS = Holdings()


class Held:
    """A turn just taken: the membership that keeps it, and the record of the holder that
    died holding it before (None after a clean hand-over). A plain class: a ``NamedTuple``
    costs every start of ``inturn`` a few hundred microseconds to build."""

    __slots__ = ("abandoned_by", "membership")

    def __init__(self, membership: Membership, abandoned_by: Ticket | None) -> None:
        self.membership = membership
        self.abandoned_by = abandoned_by


class Request:
    """What a caller asks of the line: ``max_waiting``, join only if fewer than this many wait
    ahead; ``newest_wins``, replace the waiters ahead that asked for it too."""

    __slots__ = ("max_waiting", "newest_wins", "shared", "slots")

    def __init__(
        self,
        slots: int = 1,
        shared: bool = False,
        max_waiting: int | None = None,
        newest_wins: bool = False,
    ) -> None:
        self.slots = slots
        self.shared = shared
        self.max_waiting = max_waiting
        self.newest_wins = newest_wins


def take_turn(
    store: LineStore,
    *,
    slots: int = 1,
    timeout: float | None = None,
    blocking: bool = True,
    command: tuple[str, ...] | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    owner: object = None,
    holdings: Holdings = HOLDINGS,
    task: object = None,
    loop: object = None,
    shared: bool = False,
    max_waiting: int | None = None,
    newest_wins: bool = False,
    channel: str | None = None,
    taken: list[Held] | None = None,
) -> Held:
    """Join ``store``'s line and return once this caller holds the turn.

    ``owner`` is who will hold it (default: the calling thread); ``task`` and ``loop``, the
    task and event loop that sync code asking from a loop's thread runs in (see ``Asker``),
    or the owner itself when it is a task. ``channel`` is where it
    listens for later starts (``single_instance``), recorded in its ticket from the start.
    Any exception (timeout, busy, Ctrl-C, cancel, being replaced) leaves the line before it
    propagates. The turn is also put in ``taken`` before it is returned: a caller's Ctrl-C
    that comes as it returns, before the caller has the value, can still give it back.
    """
    if owner is None:
        owner = threading.current_thread()
    start = time.monotonic()
    deadline = None if timeout is None else start + max(0.0, timeout)
    guard_deadline = deadline if blocking else start + BUSY_PATIENCE
    patience = Patience(guard_deadline, cancel)
    try:
        me, view = store.join(
            own_ticket_fields(command, slots, shared, newest_wins, channel), patience
        )
    except GuardTaken as exc:
        raise _impatient(store, blocking, timeout, str(exc)) from None
    try:
        me.give_up_at = guard_deadline
        waiter = None
        while True:
            if waiter is None and view is not None and not view.tickets and not view.markers:
                claim = False  # nobody ahead, nothing to claim: the turn is ours at once
            else:
                if waiter is None:
                    request = Request(slots, shared, max_waiting, newest_wins)
                    waiter = _Waiter(store, me, request, deadline, blocking, patience)
                    waiter.on_progress, waiter.holdings = on_progress, holdings
                    waiter.asker = Asker(owner, task, loop)
                claim = waiter.wait_for_front(view)
            try:
                store.mark_acquired(me, time.time(), patience)
            except TookNewPlace:
                view = None  # lost its place as the turn came: back in line, wait again
                continue
            break
        dead = store.claim_abandoned(me, _claim_patience(guard_deadline, cancel)) if claim else None
        # Recorded and handed over under the same cover: an interrupt (Ctrl-C) before the
        # caller has the turn in hand leaves the line, or nobody could ever release it.
        holdings.add(store, me.number, owner, task)
        held = Held(me, dead)
        if taken is not None:
            taken.append(held)
        return held
    except GuardTaken as exc:
        give_back(store, me, holdings)
        raise _impatient(store, blocking, timeout, str(exc)) from None
    except Timeout as exc:
        give_back(store, me, holdings)
        raise _timed_out(exc, timeout) from None
    except BaseException:
        give_back(store, me, holdings)
        raise


def _claim_patience(guard_deadline: float | None, cancel: CancelToken | None) -> Patience:
    """How long a won turn may wait for the guard to claim a dead holder's marker: the
    caller's time may be up by then (a non-blocking caller waited out the lock delay, a timed
    one was served at its last moment), but the guard is held for moments only, and giving a
    won turn back for that would leave the marker to the next and start its delay again."""
    if guard_deadline is None:
        return Patience(None, cancel)
    return Patience(max(guard_deadline, time.monotonic() + BUSY_PATIENCE), cancel)


def wait_for_everyone(
    store: LineStore,
    timeout: float | None = None,
    cancel: CancelToken | None = None,
    asker: Asker | None = None,
    holdings: Holdings | None = None,
) -> None:
    """Return once every ticket that is in line now (holding or waiting) has left or died.

    A barrier that takes no ticket, so it blocks no one who arrives later: it sleeps on the
    youngest of them until it goes, then on the youngest left, and so on. A wait with no
    timeout for a turn that only ``asker``'s own release could end is refused, as
    ``take_turn`` refuses it.
    """
    try:
        _wait_until_empty(store, timeout, cancel, asker, holdings)
    except Timeout as exc:
        raise _timed_out(exc, timeout) from None


def _wait_until_empty(
    store: LineStore,
    timeout: float | None,
    cancel: CancelToken | None,
    asker: Asker | None,
    holdings: Holdings | None,
) -> None:
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    view = store.look(None)
    remaining_tickets = list(view.tickets)
    while remaining_tickets:
        liveness = view.alive if view.alive is not None else store.alive(remaining_tickets, None)
        remaining_tickets = [n for n, ok in zip(remaining_tickets, liveness, strict=True) if ok]
        if not remaining_tickets:
            return
        if (
            deadline is None
            and asker is not None
            and holdings is not None
            and holdings.owned_by(store, remaining_tickets, asker)
        ):
            raise InturnError(
                f"this {_kind(asker)} holds a turn of line {store.name!r} and would wait for "
                "itself forever: wait for the line after releasing it, or give a timeout"
            )
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(
                f"gave up waiting for line {store.name!r} to empty", _status_if_reachable(store)
            )
        step = one_sleep(remaining)
        woke = store.wait(None, remaining_tickets[-1:], step, cancel)
        if woke is None and step == remaining:  # else a day has passed: look again
            raise Timeout(
                f"gave up waiting for line {store.name!r} to empty", _status_if_reachable(store)
            )
        view = View(tuple(remaining_tickets))


def give_back(store: LineStore, me: Membership, holdings: Holdings = HOLDINGS) -> None:
    store.leave(me)  # first: the next in line wakes the moment this returns
    holdings.discard(store, me.number)


class _Waiter:
    """One caller's wait for the front of the line."""

    on_progress: ProgressCallback | None = None
    asker: Asker = Asker(None)
    holdings: Holdings = HOLDINGS

    def __init__(
        self,
        store: LineStore,
        me: Membership,
        request: Request,
        deadline: float | None,
        blocking: bool,
        patience: Patience,
    ) -> None:
        self.store = store
        self.me = me
        self.request = request
        self.deadline = deadline
        self.blocking = blocking
        self.patience = patience
        self.first_seen: dict[int, float] = {}  # unclaimed marker -> when we first saw it
        self.shared_markers: set[int] = set()  # markers a look said were shared turns
        self.policed: int | None = None  # the place the arrival policies were applied to
        self.slots_read: set[int] = set()  # tickets ahead whose slots were found to be ours

    def wait_for_front(self, view: View | None) -> bool:
        """Sleep until this ticket may hold the turn; True if a marker waits to be claimed.

        Tickets only ever join behind us, so when every ticket ahead was live and watched, the
        ones ahead after waking are among those, less the ones the wait saw leave cleanly:
        the next look is then skipped.
        """
        store, me, request = self.store, self.me, self.request
        while True:
            if view is None:
                view = store.look(me)
            place = me.number
            now = time.monotonic()
            pending = set(view.markers)
            ahead = view.tickets
            live = self._live_ahead(view, pending)
            for marker in pending:
                self.first_seen.setdefault(marker, now)
            self.shared_markers |= pending & view.shared
            if me.number == place and self.policed != place:  # just joined, or back in line
                self._apply_policies(live, ahead, view.shared, replace=self.policed is None)
                self.policed = place
            if me.number != place:  # it lost its place meanwhile, and took a new one at the
                view = None  # back: the look was of the old place, so look again
                continue
            if may_hold(request, live, view.shared):
                if not request.shared:
                    self._refuse_other_slots(live)
                if self._lock_delay(pending):
                    view = None
                    continue
                return bool(pending)
            if not self.blocking:
                raise Busy(_full_message(store, me, live, request, view.shared), store.status())
            remaining = self._remaining()
            watch = to_watch(request, live, view.shared)
            mine: set[int] = set()
            if remaining is None:  # a wait with a timeout ends by itself
                mine = self.holdings.owned_by(store, live, self.asker)
            if mine and waits_for_itself(request, live, view.shared, mine):
                raise InturnError(
                    f"this {_kind(self.asker)} already holds line {store.name!r} and would wait "
                    "for itself forever: turns are not re-entrant (release the first; where "
                    "code that holds it calls code that takes it too, take it in the outer one "
                    "only; a turn handed to another thread or task that will release it "
                    "belongs to that one: turn.owner = it)"
                )
            if self.on_progress is not None:
                self.on_progress(Progress(me.number, len(live) + 1, tuple(live), tuple(watch)))
            number = me.number
            # Every ticket ahead is live and watched: once they all leave cleanly, it is ours.
            whole = list(ahead) == live == watch and not pending
            then_holds = whole and me.lost_track_at is None
            step = one_sleep(remaining)
            woke = store.wait(me, watch, step, self.patience.cancel, then_holds)
            if woke is None:
                if step == remaining:
                    raise Timeout(
                        f"gave up waiting for line {store.name!r}", _status_if_reachable(store)
                    )
                view = None  # a day has passed: look again
                continue
            if woke.view is not None:
                view = woke.view
            elif me.number != number:  # it took a new place (a lost connection): look again
                view = None
            elif whole:
                left = set(woke.left)
                if left.issuperset(watch) and me.lost_track_at is None:
                    return False  # everyone ahead left cleanly: the turn is ours, nothing to claim
                view = View(
                    tuple(n for n in watch if n not in left),
                    shared=frozenset(n for n in view.shared if n not in left),
                )
            else:
                view = None

    def _live_ahead(self, view: View, pending: set[int]) -> list[int]:
        """The live tickets ahead, in order, burying the dead ones met (their markers go to
        ``pending``).

        Asked of the store one by one from the nearest, and only until this ticket surely
        cannot hold (more tickets ahead never make a turn come sooner): a burst of N waiters
        in one line would otherwise ask about every ticket ahead at every join and every
        wake, N * N questions in all. The tickets beyond stay unasked: they are the concern
        of the live ones in between, and this ticket asks about them itself before it ever
        holds. Every one is asked where the whole line counts: a look that told liveness
        anyway, the place in line (``on_progress``), whom a busy line names, ``max_waiting``,
        ``newest_wins``, and a wait that might be for a turn of the asker's own; and on a
        server, where one question about them all costs one round trip as one about a single
        ticket does."""
        store, me, request = self.store, self.me, self.request
        ahead = view.tickets
        whole = (
            view.alive is not None
            or self.on_progress is not None
            or not self.blocking
            or request.max_waiting is not None
            or request.newest_wins
            or store.remote
            or (self.deadline is None and bool(self.holdings.owned_by(store, ahead, self.asker)))
        )
        if view.alive is not None:
            liveness: Sequence[bool] = view.alive
        elif whole:
            liveness = store.alive(ahead, me) if ahead else []
        else:
            return self._nearest_live(ahead, view.shared, pending)
        live: list[int] = []
        for number, ok in zip(ahead, liveness, strict=True):
            if ok:
                live.append(number)
            elif store.bury(number, me, self.patience):
                pending.add(number)
        return live

    def _nearest_live(
        self, ahead: Sequence[int], shared: frozenset[int], pending: set[int]
    ) -> list[int]:
        """The live tickets ahead from the nearest back, until they keep this one from
        holding (all of them if they never do)."""
        store, me, request = self.store, self.me, self.request
        live: list[int] = []
        for number in reversed(ahead):
            if store.alive([number], me)[0]:
                live.append(number)
                if not may_hold(request, live, shared):
                    break
            elif store.bury(number, me, self.patience):
                pending.add(number)
        live.reverse()
        return live

    def _oldest_live(self, ahead: Sequence[int], live: list[int]) -> int | None:
        """The oldest live ticket ahead (None if none), asked from the front: ``live`` holds
        the ones already known, the nearest."""
        for number in ahead:
            if live and number >= live[0]:
                return live[0]
            if self.store.alive([number], self.me)[0]:
                return number
        return None

    def _apply_policies(
        self, live: list[int], ahead: Sequence[int], shared: frozenset[int], replace: bool
    ) -> None:
        """Right after joining, and again on a new place taken after losing one: the line's
        slots must be ours; ``max_waiting`` may send us away. ``replace``: on joining,
        ``newest_wins`` replaces the waiters ahead that asked for it too (those ahead of a new
        place came later than we did: the store has it yield to them instead)."""
        store, me, request = self.store, self.me, self.request
        if not live:
            return
        # The live tickets found and the oldest live one, not only the nearest: one that is
        # itself about to be refused would vouch for a slots that the others do not share.
        # Tickets between them stay unread here; the ones a turn is taken beside are read
        # before it is taken.
        oldest = self._oldest_live(ahead, live)
        self._refuse_other_slots(live if oldest is None or oldest in live else [oldest, *live])
        waiting = [n for n in live if not holds_at(request.slots, live, shared, n)]
        if request.max_waiting is not None and len(waiting) >= request.max_waiting:
            raise Busy(
                f"line {store.name!r} already has {len(waiting)} waiting (at most "
                f"{request.max_waiting} may wait): not joining",
                store.status(),
            )
        if replace and request.newest_wins and waiting:
            for number, ticket in zip(waiting, store.read(waiting, me), strict=True):
                if ticket is not None and ticket.newest_wins:
                    store.replace(number, me)

    def _refuse_other_slots(self, numbers: Sequence[int]) -> None:
        """Refuse the turn if any of these tickets ahead gave another slots (those not read
        before). Read on joining for the nearest and the oldest, and again, before an
        exclusive turn is taken, for the live tickets it is taken beside: tickets refused but
        still in line may have vouched on joining for a ticket between them that gave
        another slots, and must not let this one hold beside it."""
        store, me, request = self.store, self.me, self.request
        unread = [n for n in numbers if n not in self.slots_read]
        if not unread:
            return
        for other in reversed(store.read(unread, me)):
            if other is not None and other.slots != request.slots:
                raise UsageError(
                    f"line {store.name!r} is used with slots={other.slots} (by "
                    f"{other.describe()}), not slots={request.slots}: every user of a line must "
                    "give the same slots"
                )
        self.slots_read.update(unread)

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(
                f"gave up waiting for line {self.store.name!r}", _status_if_reachable(self.store)
            )
        return remaining

    def _lock_delay(self, pending: set[int]) -> bool:
        """Wait out the lock delay after an unclean end (or after losing sight of the line);
        True if it waited (look again).

        A caller that would not wait for a holder (``blocking=False``) waits this out too:
        nobody holds the line, the delay is short and ends, and each newcomer counts it from
        its own first sight of the marker, so a line used only by such callers would refuse
        them for ever (nobody would ever claim the marker)."""
        delay = self.store.lock_delay
        if delay <= 0:
            return False
        if self.request.shared:  # a reader may share with a cut-off reader: not with a writer
            pending = pending - self.shared_markers
        since = [self.first_seen[m] for m in pending]
        if self.me.lost_track_at is not None:
            since.append(self.me.lost_track_at)
        if not since:
            return False
        until = max(since) + delay
        left = until - time.monotonic()
        if left <= 0:
            return False
        name = self.store.name
        remaining = self._remaining()
        if remaining is not None and remaining < left:
            pause(remaining, self.patience.cancel, name)
            raise Timeout(f"gave up waiting for line {name!r}", _status_if_reachable(self.store))
        pause(left, self.patience.cancel, name)
        return True


def may_hold(request: Request, live: Sequence[int], shared: frozenset[int]) -> bool:
    """Whether a ticket with these live tickets ahead holds the turn (``rule.may_hold``)."""
    return rule_may_hold(request.slots, request.shared, [n in shared for n in live])


def holds_at(slots: int, live: Sequence[int], shared: frozenset[int], number: int) -> bool:
    """Whether live ticket ``number`` holds the turn, by the same rule, from those ahead of it."""
    ahead = [n for n in live if n < number]
    return may_hold(Request(slots, number in shared), ahead, shared)


def waits_for_itself(
    request: Request, live: Sequence[int], shared: frozenset[int], mine: set[int]
) -> bool:
    """Whether the turn can never come while the tickets ``mine`` (held by the one asking)
    stay: the others ahead are let go, each once it could hold beside what remains, and the
    turn must then still be out of reach. A writer waiting between two of a thread's reads
    waits for the first, which waits for the thread: neither the nearest ticket alone nor
    the ones watched tell that."""
    remaining = list(live)
    moved = True
    while moved:
        moved = False
        for number in remaining:
            if number not in mine and holds_at(request.slots, remaining, shared, number):
                remaining.remove(number)
                moved = True
                break
    return not may_hold(request, remaining, shared)


def to_watch(request: Request, live: Sequence[int], shared: frozenset[int]) -> list[int]:
    """The tickets whose going is necessary for this one's turn, to sleep on."""
    if request.shared:
        return [n for n in live if n not in shared][-1:]  # the nearest writer ahead
    readers = [n for n in live if n in shared]
    if readers:
        return readers[-1:]  # every reader ahead must go: the nearest one first
    return list(live[-request.slots :])


def _kind(asker: Asker) -> str:
    if not isinstance(asker.owner, threading.Thread):
        return "task"
    if asker.loop is not None:  # sync code in a loop's thread: it blocks every task of it
        return "thread (or a task of the event loop it runs)"
    return "thread"


def _impatient(store: LineStore, blocking: bool, timeout: float | None, why: str) -> Exception:
    if blocking:
        return _timed_out(
            Timeout(
                f"gave up waiting for line {store.name!r} ({why})", _status_if_reachable(store)
            ),
            timeout,
        )
    return Busy(f"line {store.name!r} is busy: {why}", _status_if_reachable(store))


def _timed_out(exc: Timeout, timeout: float | None) -> Timeout:
    """``exc`` saying how long the caller waited and, as ``Busy`` does, who holds the line
    (from the status it carries, read once the time was up: never on the way)."""
    after = "" if timeout is None else f" after {_given(timeout)}"
    holders = exc.status.holders if exc.status is not None else ()
    held = ", ".join(f"{t.describe(live=True)}{_since(t)}" for t in holders)
    return Timeout(f"{exc}{after}" + (f"; held by {held}" if held else ""), exc.status)


def _given(timeout: float) -> str:
    """A timeout as the caller gave it: ``10ms`` for a short one (``duration`` would say
    0.0s), else as status lines show durations."""
    return f"{max(0.0, timeout) * 1000:.0f}ms" if timeout < 0.1 else duration(timeout)


def _full_message(
    store: LineStore, me: Membership, live: list[int], request: Request, shared: frozenset[int]
) -> str:
    """Who holds the line (every holder: shared turns are several), and, for a reader that
    could share their turn, the writer that waits first and so goes before it."""
    holding = [n for n in live if holds_at(request.slots, live, shared, n)]
    writer = [n for n in live if n not in holding and n not in shared][:1]
    if not request.shared or not all(n in shared for n in holding):
        writer = []
    found = store.read([*holding, *writer], me)
    holders = [t for t in found[: len(holding)] if t is not None]
    who = ", ".join(f"{t.describe(live=True)}{_since(t)}" for t in holders) or "another process"
    text = f"line {store.name!r} is busy: held by {who}"
    if writer and found[-1] is not None:
        text += f"; {found[-1].describe(live=True)} waits to write first"
    return text


def _since(ticket: Ticket) -> str:
    """When the turn was taken: the time of day, and the date too when it is not today's, so
    that a turn held since yesterday is not taken for one held since this morning."""
    if ticket.acquired_at is None:
        return ""
    taken = time.localtime(ticket.acquired_at)
    shape = "%H:%M:%S" if taken[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S"
    return f" since {time.strftime(shape, taken)}"


# How long a waiter whose time is up still waits for a server to tell who holds the line.
STATUS_AFTER_TIMEOUT = 1.0


def _status_if_reachable(store: LineStore) -> LineStatus | None:
    """The line's status, for a ``Timeout``; None when the server cannot tell it now (a wait
    whose time ran out while the server was away), rather than a ``BackendError`` instead.
    A server is given ``STATUS_AFTER_TIMEOUT`` seconds: one that does not answer (frozen, or
    behind a silent link) must not keep a waiter whose time is up for a connection's timeout;
    the look then goes on in a thread of its own, and is forgotten."""
    if not store.remote:
        try:
            return store.status()
        except BackendError:
            return None
    found: list[LineStatus] = []

    def look() -> None:
        with suppress(Exception):  # an answer only for a message: none will do
            found.append(store.status())

    thread = threading.Thread(target=look, daemon=True, name="inturn-status-after-timeout")
    thread.start()
    thread.join(STATUS_AFTER_TIMEOUT)
    return found[0] if found else None
