"""The Python API: ``Line``, the ``Turn`` it hands out, and ``turn()`` for blocks and decorators."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from . import forks
from .backends import check_backend, check_messages, open_backend
from .backends.base import (
    BUSY_PATIENCE,
    Backend,
    CancelToken,
    Channel,
    GuardTaken,
    LineStore,
    Membership,
    Patience,
    check_scope,
)
from .errors import AlreadyRunning, Busy, InturnError, UsageError
from .names import check_name
from .queue import (
    HOLDINGS,
    Asker,
    Held,
    ProgressCallback,
    give_back,
    take_turn,
    wait_for_everyone,
)
from .records import LineStatus, Ticket

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import Any, TypedDict, TypeVar

    from .messages import OnMessage

    F = TypeVar("F", bound=Callable[..., Any])
    T = TypeVar("T")

    class _Crowding(TypedDict):
        """The rule for who may wait (``max_waiting`` or ``newest_wins``); only for the type
        checker: a ``TypedDict`` class costs every start to build."""

        max_waiting: int | None
        newest_wins: bool

    class _How(_Crowding):
        """How a ``turn`` takes its turns (``Line.acquire``'s keyword arguments)."""

        shared: bool


# Messages (single_instance, send) are imported when used: inturn run never needs them.
DEFAULT_TIMEOUT = 5.0  # seconds a later start or send() waits for the answer


class Opening:
    """A line's store as one ``Line`` opened it (with the backend it opened for it, if any),
    and how many acquires in progress and turns still held use it.

    Closing the ``Line`` closes an opening at once only if nothing uses it; otherwise the last
    user closes it when done. So a turn still held when its ``Line`` is closed keeps what it
    needs (a Redis lease's renewals, a PostgreSQL session, the folder a waiter looks in), and
    nobody can come in beside it while its holder goes on.
    """

    __slots__ = ("_closing", "_lock", "_users", "backend", "store")

    def __init__(self, store: LineStore, backend: Backend | None) -> None:
        self.store = store
        self.backend = backend  # None: the Line was given its backend, which it never closes
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    def use(self) -> None:
        with self._lock:
            self._users += 1

    def done(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._close()

    def close(self) -> None:
        with self._lock:
            unused = not self._closing and self._users == 0
            self._closing = True
        if unused:
            self._close()

    def _close(self) -> None:
        try:
            self.store.close()
        finally:
            if self.backend is not None:
                self.backend.close()


class Turn:
    """A held turn. Release it (or leave the ``with`` block) to let the next in line go.

    ``ticket`` is strictly increasing per line, usable as a fencing token. ``abandoned`` is True
    when the previous holder died holding the turn; ``abandoned_by`` is its record.
    """

    def __init__(
        self,
        line: Line,
        opening: Opening,
        membership: Membership,
        abandoned_by: Ticket | None,
        owner: object = None,
        on_release: Callable[[], None] | None = None,
        asked_from: object = None,
    ) -> None:
        self.line = line
        self._opening = opening  # what the turn was taken through, in use until released
        self.name = line.name
        self.ticket = membership.number
        self.abandoned = abandoned_by is not None
        self.abandoned_by = abandoned_by
        self.waited = 0.0  # seconds it spent in line
        self._owner = owner
        # The task whose code took it for its thread (owner), if any: that task's, not its
        # siblings', to release through ``Line.release``.
        self._asked_from = asked_from
        self._pid = forks.pid()  # a forked child holds none of its parent's turns
        self._membership: Membership | None = membership
        self._on_release = on_release  # a single instance stops listening first
        self._lock = threading.Lock()

    @property
    def owner(self) -> object:
        """Who holds the turn: the thread (or asyncio task) that acquired it, or the one it
        was handed to. A wait in line with no timeout by the owner of every turn it would wait
        for could never end, and is refused; so a thread that hands its turn to another thread
        or task that will release it says so (``turn.owner = worker``) and may then wait."""
        return self._owner

    @owner.setter
    def owner(self, owner: object) -> None:
        with self._lock:  # never re-registers a turn that a release has already given back
            self._owner, self._asked_from = owner, None
            membership = self._membership
            if membership is not None:
                HOLDINGS.add(self._opening.store, membership.number, owner)

    @property
    def held(self) -> bool:
        return self._membership is not None

    def held_by(self, thread: threading.Thread, task: object, loop: object = None) -> bool:
        """Whether code running in ``thread`` (in asyncio ``task`` of ``loop``, or None) holds
        it here. A turn whose task has ended falls to the thread that ran that task (to its
        later tasks, and to its code outside any): a notebook runs each cell as a task of its
        own, and a turn taken in one cell is released in a later one."""
        if not self.held or self._pid != forks.pid():
            return False
        if task is not None and self._owner is task:
            return True
        if self._owner is thread:
            return self._asked_from is task or _ended_in(self._asked_from) is not None
        return loop is not None and _ended_in(self._owner) is loop

    @property
    def lost(self) -> bool:
        """True once a server backend lost the turn (connection dropped); never for local lines."""
        membership = self._membership
        return membership is not None and membership.lost

    def on_lost(self, callback: Callable[[], None]) -> None:
        if self._membership is not None:
            self._membership.on_lost(callback)

    @property
    def membership(self) -> Membership | None:
        return self._membership

    def note_runner(self, pid: int) -> None:
        """Record that process ``pid`` (a command that inherited the turn) now holds it, so
        that ``status`` and the next holder name it even after this process is gone."""
        membership = self._membership
        if membership is not None:
            self._opening.store.note_runner(membership, pid)

    def release(self) -> None:
        """Give the turn to the next in line. Safe to call twice. A Ctrl-C in the middle
        has the release finished before it goes on (a second one stops that: the turn stays
        held, and releasing again finishes it); what was given back is not given back twice."""
        try:
            self._give_back()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._give_back()
            raise

    def _give_back(self) -> None:
        """The release, which leaves the turn held if it raised before it was given back."""
        membership = None
        try:
            with self._lock:
                membership, self._membership = self._membership, None
            if membership is None:
                return
            if self._on_release is not None:
                self._on_release()
            give_back(self._opening.store, membership)
        except BaseException:
            if membership is not None:
                with self._lock:  # not known to be given back: still held, to release again
                    self._membership = membership
            raise
        self._opening.done()

    def __enter__(self) -> Turn:
        if self._membership is None:  # the block would run outside any turn
            raise InturnError(
                f"turn {self.ticket} of line {self.name!r} was already released: a with block "
                "on it would run outside any turn (acquire a new one)"
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<Turn {self.name!r} ticket={self.ticket} {state} abandoned={self.abandoned}>"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            f"a held turn of line {self.name!r} belongs to the process that took it, and "
            "cannot be pickled: pass the Line (or its name) to the other process, which takes "
            "a turn of its own"
        )


class _Blocks:
    """The turns held by ``with`` blocks in progress, by owner (thread or task): a block
    releases the last turn its own owner took, whichever other blocks are in progress."""

    __slots__ = ("_held", "_lock")

    def __init__(self) -> None:
        self._held: dict[object, list[Turn]] = {}
        self._lock = threading.Lock()

    def enter(self, owner: object, take: Callable[[list[Turn]], object]) -> Turn:
        """Take a turn for a block of ``owner``'s (``take`` puts it in the list it is given
        as soon as there is one) and note it; Ctrl-C anywhere on the way gives it back, since
        the block's ``__exit__`` will not run."""
        taken: list[Turn] = []
        try:
            take(taken)
            with self._lock:
                self._held.setdefault(owner, []).append(taken[-1])
            return taken[-1]
        except BaseException:
            for held in taken:
                try:
                    held.release()
                finally:
                    self._drop(owner, held)
            raise

    def push(self, owner: object, held: Turn) -> Turn:
        """Note ``held`` as the block's turn; an interrupt on the way gives it back, since
        the block's ``__exit__`` will not run."""
        try:
            with self._lock:
                self._held.setdefault(owner, []).append(held)
            return held
        except BaseException:
            try:
                held.release()
            finally:
                self._drop(owner, held)
            raise

    def release(self, owner_of: Callable[[], object]) -> None:
        """Release the turn of the innermost block of ``owner_of()`` (the current thread or
        task), then forget it. A Ctrl-C on the way has the release done before it goes on, a
        ``with`` block giving no second chance: until the turn is forgotten, the block's own
        turn is the innermost one, and what was given back is not given back again."""
        owner = held = None
        try:
            owner = owner_of()
            held = self._innermost(owner)
            held.release()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                if owner is None:
                    owner = owner_of()
                if held is None:
                    held = self._innermost(owner)
                held.release()
            raise
        finally:
            if held is not None:
                self._drop(owner, held)

    def _innermost(self, owner: object) -> Turn:
        with self._lock:
            return self._held[owner][-1]

    def _drop(self, owner: object, held: Turn) -> None:
        with self._lock:
            stack = self._held.get(owner, [])
            if held in stack:
                stack.remove(held)
            if not stack:
                self._held.pop(owner, None)


class Line:
    """A named line of processes that take turns, ``slots`` at a time, in arrival order.

    Safe to share between threads: every ``acquire`` takes its own ticket, so two acquires in
    one process queue like two processes. Turns are not re-entrant. ``with line:`` holds a
    turn for the block, as ``with lock:`` does, and ``line.release()`` releases the caller's
    turn, as ``lock.release()`` does.
    """

    def __init__(
        self,
        name: str,
        slots: int = 1,
        *,
        scope: str = "user",
        directory: str | os.PathLike[str] | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        self.name = check_name(name)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise UsageError(f"slots must be a whole number of at least 1, not {slots!r}")
        self.slots = slots
        self.scope = check_scope(scope)
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise UsageError(f"directory must be a path, not {directory!r}")
        # A relative folder is taken from the current folder now, once: a later chdir does
        # not move the line.
        self._directory = None if directory is None else _absolute(os.fspath(directory))
        check_backend(backend, self._directory)  # a bad URL is refused here, before any wait
        self._backend_spec = backend
        self._opening: Opening | None = None
        self._opening_lock = threading.Lock()
        self._blocks = _Blocks()  # the turns of ``with line:`` blocks in progress
        self._turns: list[Turn] = []  # turns ``acquire`` gave, held or not yet seen released
        self._turns_lock = threading.Lock()

    @property
    def store(self) -> LineStore:
        """The line's store, opened on first use (and again after ``close``)."""
        opening = self._opening
        if opening is None:
            with self._opening_lock:
                opening = self._open()
        return opening.store

    def _open(self) -> Opening:
        """The current opening, made if there is none (under ``_opening_lock``)."""
        if self._opening is None:
            backend = open_backend(self._backend_spec, scope=self.scope, directory=self._directory)
            opened = backend if backend is not self._backend_spec else None
            try:
                store = backend.line(self.name)
            except BaseException:
                if opened is not None:
                    opened.close()
                raise
            self._opening = Opening(store, opened)
        return self._opening

    def _use(self) -> Opening:
        """The current opening, counted as in use until its ``done()``: ``close`` cannot
        close it in between."""
        with self._opening_lock:
            opening = self._open()
            opening.use()
        return opening

    def acquire(
        self,
        timeout: float | None = None,
        blocking: bool = True,
        *,
        command: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        owner: object = None,
        shared: bool = False,
        max_waiting: int | None = None,
        newest_wins: bool = False,
    ) -> Turn:
        """Wait in line and return the held ``Turn``.

        Raises ``Busy`` at once when ``blocking=False`` and the line is full, ``Timeout`` after
        ``timeout`` seconds in line (None, or a negative number, waits for ever, as in
        ``threading``; 0 is one try). ``command`` is what ``status`` shows (default: this
        process's whole command line, ``sys.orig_argv``). ``owner`` is who will hold the turn
        (default: the calling thread); a wait that only that owner's own release could end is
        refused instead of hanging.

        ``shared=True`` takes a shared turn (a reader: shared turns adjacent in the line run
        together, never with an exclusive one). ``max_waiting=N`` raises ``Busy`` at once when
        N tickets already wait ahead. ``newest_wins=True`` replaces the waiters ahead that
        asked for it too (their ``acquire`` raises ``Replaced``), and may itself be replaced.
        """
        return self._acquire(
            [],
            timeout,
            blocking,
            command=command,
            on_progress=on_progress,
            cancel=cancel,
            owner=owner,
            shared=shared,
            max_waiting=max_waiting,
            newest_wins=newest_wins,
        )

    def _acquire(
        self,
        taken: list[Turn],
        timeout: float | None = None,
        blocking: bool = True,
        *,
        command: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        owner: object = None,
        shared: bool = False,
        max_waiting: int | None = None,
        newest_wins: bool = False,
    ) -> Turn:
        """``acquire``, which also puts the turn in ``taken`` before it returns it: a block's
        Ctrl-C that comes as it returns, before the block has it, can still give it back."""
        if owner is None:
            owner = threading.current_thread()
        task, loop = _asking_from(owner)
        started = time.monotonic()
        opening = self._use()
        helds: list[Held] = []
        turn = None
        try:
            held = take_turn(
                opening.store,
                slots=self.slots,
                timeout=seconds_or_forever(timeout),
                blocking=_flag(blocking, "blocking"),
                command=_words(command),
                on_progress=_callable_or_none(on_progress, "on_progress"),
                cancel=_token_or_none(cancel),
                owner=owner,
                holdings=HOLDINGS,
                task=task,
                loop=loop,
                shared=_flag(shared, "shared"),
                **_crowding(max_waiting, newest_wins),
                taken=helds,
            )
            turn = Turn(self, opening, held.membership, held.abandoned_by, owner, asked_from=task)
            turn.waited = time.monotonic() - started
            with self._turns_lock:
                self._turns = [t for t in self._turns if t.held]
                self._turns.append(turn)
            taken.append(turn)
            return turn
        except BaseException:  # Ctrl-C after the turn came, before it was handed over
            if turn is not None:
                turn.release()  # done with the opening too
            else:
                try:
                    for came in helds:
                        give_back(opening.store, came.membership)
                finally:
                    opening.done()
            raise

    def release(self) -> None:
        """Release the turn that the caller (this thread, or the asyncio task running in it)
        took through this ``Line`` (the latest, if several), as ``lock.release()`` does after
        ``lock.acquire()``: the ``Turn`` that ``acquire`` returned need not be kept. A turn
        handed to another owner (``turn.owner = worker``) is that one's to release.

        Raises ``InturnError`` if the caller holds no turn taken through this ``Line``."""
        thread = threading.current_thread()
        task, loop = _asking_from(thread)
        with self._turns_lock:
            self._turns = [t for t in self._turns if t.held]
            mine = [t for t in self._turns if t.held_by(thread, task, loop)]
        if not mine:
            raise InturnError(
                f"release of line {self.name!r}: this thread holds no turn taken through "
                "this Line (a turn handed to another thread or task is that one's to release)"
            )
        mine[-1].release()

    def forget(self) -> bool:
        """Remove the line (its folder, or its name on a server) if nobody holds or waits in
        it; False if someone does, or keeps its guard for the second a forget waits for it
        (joining, leaving, or forgetting it meanwhile). Safe against someone joining at that
        moment: they join a new line of the same name. A local line's ticket numbers start
        again from 1. Where nothing was ever kept (a folder not made yet, a schema nobody
        created), there is nothing to remove: it creates nothing there, and returns True."""
        if self._nothing_kept():
            return True
        opening = self._use()
        try:
            return opening.store.forget(Patience(time.monotonic() + BUSY_PATIENCE))
        except GuardTaken:
            return False
        finally:
            opening.done()

    def _nothing_kept(self) -> bool:
        """Whether this ``Line``, not opened yet, names a place where nothing was ever kept,
        asked through a backend opened only to look; a ``Line`` already open, or given a
        ``Backend``, has its place already."""
        with self._opening_lock:
            if self._opening is not None or isinstance(self._backend_spec, Backend):
                return False
        backend = open_backend(
            self._backend_spec, scope=self.scope, directory=self._directory, create=False
        )
        try:
            return not backend.kept_anything()
        finally:
            backend.close()

    def wait(self, timeout: float | None = None, *, cancel: CancelToken | None = None) -> None:
        """Return once everyone in line now (holding or waiting) has left: a barrier ("let
        the running deploy finish, then go on"). Takes no turn and blocks no one who comes
        later; raises ``Timeout`` after ``timeout`` seconds (None or negative: for ever).
        Like ``status``, it creates nothing."""
        seconds = seconds_or_forever(timeout)
        asker = Asker(threading.current_thread(), *_asking_from(threading.current_thread()))

        def until_everyone_left(store: LineStore) -> None:
            now = store.status()  # a line nobody has used: nothing to wait for, or to make
            if now.holders or now.waiters:
                wait_for_everyone(store, seconds, cancel, asker, HOLDINGS)

        self._look(until_everyone_left)

    def status(self) -> LineStatus:
        """Live holders and waiters, each in arrival order. Looking creates nothing: before
        this ``Line`` has taken a turn, it looks through a backend opened only to read."""
        return self._look(lambda store: store.status())

    def _look(self, how: Callable[[LineStore], T]) -> T:
        """``how(store)`` on this line's store, or, before it has one, on a store of a backend
        opened only to read (nothing is created: no folder, no line)."""
        with self._opening_lock:
            opening = self._opening
            if opening is not None:
                opening.use()
        if opening is not None:
            try:
                return how(opening.store)
            finally:
                opening.done()
        backend = open_backend(
            self._backend_spec, scope=self.scope, directory=self._directory, create=False
        )
        store = backend.line(self.name)
        try:
            return how(store)
        finally:
            store.close()
            if backend is not self._backend_spec:
                backend.close()

    def close(self) -> None:
        """Free what this ``Line`` keeps open (and the backend, if it opened one itself).

        Turns still held, and acquires still in progress, keep what they use until they are
        released or end; the next use of the ``Line`` opens it afresh."""
        with self._opening_lock:
            opening, self._opening = self._opening, None
        if opening is not None:
            opening.close()

    def __enter__(self) -> Turn:
        """``with line:`` waits in line and holds a turn for the block (binding the ``Turn``),
        as ``with lock:`` does for a ``threading.Lock``. The ``Line`` stays open for the next
        block; ``close()`` frees it."""
        owner = threading.current_thread()
        return self._blocks.enter(owner, lambda taken: self._acquire(taken, owner=owner))

    def __exit__(self, *exc_info: object) -> None:
        self._blocks.release(threading.current_thread)

    async def __aenter__(self) -> Turn:
        """``async with line:`` is ``with line:`` for a task: it waits without blocking the
        event loop, and cancelling the task leaves the line."""
        owner = _current_task()
        return self._blocks.push(owner, await acquire_async(self))

    async def __aexit__(self, *exc_info: object) -> None:
        self._blocks.release(_current_task)

    def __repr__(self) -> str:
        return f"<Line {self.name!r} slots={self.slots} scope={self.scope}>"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (by ``multiprocessing``, ``concurrent.futures``), a ``Line`` travels as what
        it names: the other process opens the same line afresh, holding nothing of this one's."""
        if isinstance(self._backend_spec, Backend):
            raise TypeError(
                f"line {self.name!r} was given a Backend object, which cannot go to another "
                "process: give the backend as a URL"
            )
        where = (self.scope, self._directory, self._backend_spec)
        return (_line_named, (self.name, self.slots, *where))


def _absolute(folder: str) -> str:
    """``folder`` as an absolute path (``""`` stays as it is: no folder named)."""
    return os.path.abspath(folder) if folder else folder


def _line_named(
    name: str, slots: int, scope: str, directory: str | None, backend: str | None
) -> Line:
    """The ``Line`` a pickled one becomes (keywords cannot go through ``__reduce__``)."""
    return Line(name, slots, scope=scope, directory=directory, backend=backend)


# A timeout this long (a thousand years) or longer is for ever: ``float()`` of a longer one
# may not even exist (``10**400``), and no clock reaches it.
FOREVER_SECONDS = 1000 * 365 * 86400


def seconds_or_forever(timeout: object) -> float | None:
    """A timeout as given: a number of seconds; None, a negative number or one of at least
    ``FOREVER_SECONDS`` for ever."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise UsageError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout != timeout:  # NaN
        raise UsageError("timeout must be a number of seconds or None, not NaN")
    if timeout < 0 or timeout >= FOREVER_SECONDS:
        return None
    return float(timeout)


def _words(command: object) -> tuple[str, ...] | None:
    """``command`` as ``status`` shows it: a list or tuple of words, never one string."""
    if command is None:
        return None
    if isinstance(command, (str, bytes)) or not isinstance(command, (list, tuple)):
        raise UsageError(f"command must be a list or tuple of words, as in argv, not {command!r}")
    if not all(isinstance(word, str) for word in command):
        raise UsageError(f"command must be a list or tuple of str, not {command!r}")
    return tuple(command)


def _callable_or_none(value: Any, what: str) -> Any:
    if value is not None and not callable(value):
        raise UsageError(f"{what} must be a function or None, not {value!r}")
    return value


def _token_or_none(cancel: object) -> CancelToken | None:
    if cancel is not None and not isinstance(cancel, CancelToken):
        raise UsageError(f"cancel must be an inturn.CancelToken or None, not {cancel!r}")
    return cancel


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be True or False, not {value!r}")
    return value


def _max_waiting(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"max_waiting must be a whole number of at least 1, not {value!r}")
    return value


def _crowding(max_waiting: object, newest_wins: object) -> _Crowding:
    """``max_waiting`` and ``newest_wins`` are two rules for who may wait in line: a newcomer
    held to both would be turned away by the one and told to replace waiters by the other."""
    limit, newest = _max_waiting(max_waiting), _flag(newest_wins, "newest_wins")
    if limit is not None and newest:
        raise UsageError("max_waiting and newest_wins are two rules for who may wait: give one")
    return {"max_waiting": limit, "newest_wins": newest}


class turn:
    """Take a turn in a line, as a ``with`` / ``async with`` block or as a decorator.

    ``with inturn.turn("nightly") as t:`` waits in line and binds the held ``Turn``.
    ``@inturn.turn("nightly")`` makes every call of a function (sync or async) wait its turn;
    a generator function's (sync or async) holds it while its body runs, from the first item
    to the end or to ``close``.
    One ``turn`` object may be entered by several threads or tasks at once: each leaves with
    its own ticket. Once no ``with`` block of it is in progress, the backend its ``Line``
    opened is closed (a ``turn`` made for one block would otherwise leave server sessions or
    lease threads behind); the next block opens it again.
    """

    def __init__(
        self,
        name: str,
        slots: int = 1,
        *,
        timeout: float | None = None,
        blocking: bool = True,
        scope: str = "user",
        directory: str | os.PathLike[str] | None = None,
        backend: str | Backend | None = None,
        shared: bool = False,
        max_waiting: int | None = None,
        newest_wins: bool = False,
    ) -> None:
        self.line = Line(name, slots, scope=scope, directory=directory, backend=backend)
        seconds_or_forever(timeout)  # refused when made, not at the first use
        self.timeout = timeout
        self.blocking = _flag(blocking, "blocking")
        self.how: _How = {
            "shared": _flag(shared, "shared"),
            **_crowding(max_waiting, newest_wins),
        }
        self._blocks = _Blocks()
        self._users_lock = threading.Lock()
        self._users = 0  # with blocks and decorated calls in progress

    def _begin(self) -> None:
        with self._users_lock:
            self._users += 1

    def _end(self, close: bool) -> None:
        """One use less; after the last ``with`` block, close what the ``Line`` opened (under
        the lock, so that no other use starts on a backend being closed)."""
        with self._users_lock:
            self._users -= 1
            if close and self._users == 0:
                self.line.close()

    def __enter__(self) -> Turn:
        owner = threading.current_thread()
        self._begin()
        line, how = self.line, self.how
        try:
            return self._blocks.enter(
                owner,
                lambda taken: line._acquire(taken, self.timeout, self.blocking, owner=owner, **how),
            )
        except BaseException:
            self._end(close=True)
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._blocks.release(threading.current_thread)
        finally:
            self._end(close=True)

    async def __aenter__(self) -> Turn:
        owner = _current_task()
        self._begin()
        try:
            held = await acquire_async(self.line, self.timeout, self.blocking, **self.how)
            return self._blocks.push(owner, held)
        except BaseException:
            self._end(close=True)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            self._blocks.release(_current_task)
        finally:
            self._end(close=True)

    def __call__(self, func: F) -> F:
        import inspect  # only decorators need these; keeps the command's start fast
        from typing import cast

        if isinstance(func, (classmethod, staticmethod)):
            # Written above ``@classmethod`` or ``@staticmethod``: neither is the function
            # itself, so wrap the one inside and give back the same kind of method.
            return cast("F", type(func)(self(func.__func__)))

        _close_at_exit(self.line)

        if inspect.isgeneratorfunction(func):
            # Its body runs as it is iterated: the turn is held from the first item to the end.
            @functools.wraps(func)
            def run_generator(*args: Any, **kwargs: Any) -> Any:
                self._begin()
                try:
                    with self.line.acquire(self.timeout, self.blocking, **self.how):
                        return (yield from func(*args, **kwargs))
                finally:
                    self._end(close=False)

            return cast("F", run_generator)

        if inspect.isasyncgenfunction(func):
            return cast("F", self._async_generator(func))

        if _is_async(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                self._begin()  # a decorated function keeps its backend open between calls
                try:
                    held = await acquire_async(self.line, self.timeout, self.blocking, **self.how)
                    try:
                        return await func(*args, **kwargs)
                    finally:
                        held.release()
                finally:
                    self._end(close=False)

            return cast("F", run_async)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            self._begin()
            try:
                with self.line.acquire(self.timeout, self.blocking, **self.how):
                    result = func(*args, **kwargs)
            finally:
                self._end(close=False)
            if inspect.isawaitable(result):  # its body runs later, outside the turn: refuse
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # never to run: no "never awaited" warning either
                raise UsageError(
                    f"inturn.turn({self.line.name!r}) cannot hold the turn for "
                    f"{getattr(func, '__qualname__', func)}: it returned an awaitable without "
                    "being an async function, so its body would run after the turn ended; put "
                    "@inturn.turn right on the async def (beneath other decorators), or use "
                    "async with inturn.turn(...) inside it"
                )
            return result

        return cast("F", run)

    def _async_generator(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func``, an async generator function, holding the turn while its body runs (from
        the first item to the end), with ``asend`` and ``athrow`` passed on to it."""

        @functools.wraps(func)
        async def run(*args: Any, **kwargs: Any) -> Any:
            inner = func(*args, **kwargs)  # the arguments, checked before the wait; no body yet
            self._begin()
            try:
                held = await acquire_async(self.line, self.timeout, self.blocking, **self.how)
                try:
                    item = await inner.__anext__()
                    while True:
                        try:
                            sent = yield item
                        except GeneratorExit:
                            raise
                        except BaseException as exc:  # athrow: to the body, as it would be
                            item = await inner.athrow(exc)
                        else:
                            item = await inner.asend(sent)
                except StopAsyncIteration:
                    return
                finally:
                    try:
                        await inner.aclose()
                    finally:
                        held.release()
            finally:
                self._end(close=False)

        return run


def _close_at_exit(line: Line) -> None:
    """A decorated function keeps its line's backend open between calls: close it as the
    interpreter exits, not leave its server sessions to the garbage collector (which warns
    of each) or its threads to be stopped mid-way."""
    import weakref  # only for decorated functions: not at every start

    ref = weakref.ref(line)

    def close() -> None:
        alive = ref()
        if alive is not None:
            with contextlib.suppress(Exception):
                alive.close()

    atexit.register(close)


def _asking_from(owner: object) -> tuple[object, object]:
    """The task and event loop a turn for ``owner`` is asked from (see ``queue.Asker``): for
    the current thread, the loop running in it and its current task, if any; for a task,
    the task itself."""
    asyncio = sys.modules.get("asyncio")  # not imported by code that never used it
    if asyncio is None:
        return None, None
    if owner is not threading.current_thread():
        return (owner if isinstance(owner, asyncio.Task) else None), None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None, None
    return asyncio.current_task(loop), loop


def _ended_in(task: object) -> object:
    """The event loop of ``task`` if it is an asyncio task that has ended, else None."""
    asyncio = sys.modules.get("asyncio")  # not imported by code that never used it
    if asyncio is None or not isinstance(task, asyncio.Task) or not task.done():
        return None
    return task.get_loop()


def _current_task() -> object:
    """The asyncio task the caller runs in; a clear error where there is none (another
    event loop, such as trio's, or a coroutine driven by hand)."""
    import asyncio

    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio event loop runs in this thread
        task = None
    if task is None:
        raise RuntimeError(
            "inturn's async API (async with inturn.turn or a Line, acquire_async, a decorated "
            "async function) must run in an asyncio task (asyncio, uvloop, or anyio on its "
            "asyncio backend); trio is not supported: take the turn with the blocking API in "
            "a worker thread instead"
        )
    return task


async def acquire_async(
    line: Line,
    timeout: float | None = None,
    blocking: bool = True,
    *,
    shared: bool = False,
    max_waiting: int | None = None,
    newest_wins: bool = False,
) -> Turn:
    """Wait in line without blocking the event loop; cancelling the task leaves the line.

    The wait runs in a thread of its own, not in the loop's executor: no number of waiting
    tasks can use up threads the program needs (``asyncio.to_thread``, ``run_in_executor``).
    The turn belongs to the calling task. However often the task is cancelled, and whenever,
    the thread is told to leave the line and the task waits for it to have done so (a turn
    that came just then is released), so no turn is ever left behind.
    """
    import asyncio  # imported here: it costs a command-line start tens of milliseconds

    owner = _current_task()  # a clear error outside asyncio, before anything is asked
    loop = asyncio.get_running_loop()
    cancel = CancelToken()
    future: asyncio.Future[Turn] = loop.create_future()

    def wait_in_line() -> None:
        try:
            held = line.acquire(
                timeout,
                blocking,
                cancel=cancel,
                owner=owner,
                shared=shared,
                max_waiting=max_waiting,
                newest_wins=newest_wins,
            )
        except BaseException as exc:  # handed to the task, raised there
            _call_soon(loop, _Handover(future, None, exc))
        else:
            _call_soon(loop, _Handover(future, held, None))

    threading.Thread(target=wait_in_line, daemon=True, name="inturn-async-wait").start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.cancel()
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue  # cancelled again: still wait until the thread has left the line
            except BaseException:
                break
        if future.done() and not future.cancelled() and future.exception() is None:
            future.result().release()  # it got the turn just as we were cancelled
        raise


class _Handover:
    """A turn (or an error) on its way from the waiting thread to its task, through the loop.

    A loop closed before it ran the handover (``loop.close()`` with the task still waiting)
    drops it: nobody will ever take that turn, so it is released as the handover goes.
    """

    def __init__(self, future: Any, held: Turn | None, error: BaseException | None) -> None:
        self.future = future
        self.error = error
        self.unclaimed = [] if held is None else [held]
        import weakref  # only for asyncio's handovers: not at every start

        weakref.finalize(self, _release_all, self.unclaimed)

    def __call__(self) -> None:
        if self.future.done():  # nobody to take it: a turn is released as the handover goes
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.unclaimed.pop())


def _release_all(turns: list[Turn]) -> None:
    while turns:
        turns.pop().release()


def _call_soon(loop: Any, handover: _Handover) -> None:
    with contextlib.suppress(RuntimeError):  # the loop was closed: the handover is dropped
        loop.call_soon_threadsafe(handover)


def single_instance(
    name: str,
    *,
    on_message: OnMessage | None = None,
    accept_from: str | Iterable[str] | None = None,
    wait: bool | float = False,
    timeout: float = DEFAULT_TIMEOUT,
    data: Any = None,
    scope: str = "user",
    directory: str | os.PathLike[str] | None = None,
    backend: str | Backend | None = None,
) -> Turn:
    """Hold ``name`` for the life of this process, as the one running instance.

    The first start holds the line. With ``on_message`` it also listens: every later start's
    ``Message`` (``argv``, ``cwd``, ``data``; ``pid`` and ``user`` from the operating system)
    is passed to ``on_message`` in a thread of the listener's, one at a time in order of
    arrival, and what it returns (any JSON value) goes back; if it raises, the later start
    raises ``MessageError``. Only the same user may send, and on a machine-wide line also
    the users in ``accept_from`` (user names, or ``"*"``).

    A later start sends its ``sys.argv``, working folder and ``data`` to the first one,
    waits up to ``timeout`` seconds for the answer, then raises ``AlreadyRunning`` (a
    ``Busy``) carrying ``reply`` and the first one's ``pid`` (``reply`` is None when the
    first one does not listen). A first one that does not answer in time raises ``Timeout``;
    one that ended before it answered, ``NotRunning``. ``wait=True`` (or a number of seconds)
    waits in line behind the first one instead, sending nothing.

    The turn is released (and the listener stopped, its socket or pipe removed) by
    ``release()``, else as the program ends: cleanly if it ends normally, abandoned (the
    next start is told) if it ends with an uncaught exception or is killed.
    """
    from .messages import Acceptance, Listener, check_data, check_timeout

    line = Line(name, scope=scope, directory=directory, backend=backend)
    if on_message is not None and not callable(on_message):
        raise UsageError(f"on_message must be a function that takes a Message, not {on_message!r}")
    if on_message is not None and _is_async(on_message):
        raise UsageError(
            "on_message must be a plain function: it runs in a thread of the listener's, not "
            "in an event loop (to hand a message to a loop, use "
            "asyncio.run_coroutine_threadsafe and wait for its result)"
        )
    if on_message is not None:
        check_messages(line.name, backend, line._directory)
    acceptance = Acceptance(line.scope, accept_from)
    seconds = check_timeout(timeout)
    in_line = _wait_seconds(wait)
    check_data(data)  # the message itself is made only if another instance runs
    opening = line._use()
    store = opening.store
    channel: Channel | None = None
    listener: Listener | None = None
    instance: Turn | None = None
    helds: list[Held] = []
    try:
        if on_message is not None:
            store.check_channels()
            channel = store.open_channel(acceptance.others)
        address = channel.address if channel is not None else None
        if in_line is not False:
            held = take_turn(store, timeout=in_line or None, channel=address, taken=helds)
        else:
            held = _first_or_tell(store, data, seconds, address, helds)
        if channel is not None and on_message is not None:
            listener = Listener(channel, on_message, acceptance, line.name)
        pid = forks.pid()

        def at_exit() -> None:
            """A program that ends normally (its end, ``sys.exit``) gives its instance back
            cleanly: the next start is not told of a crash, nor kept waiting for a server's
            lease. One that ends with an uncaught exception leaves it abandoned, as a crash
            does; its socket goes either way."""
            if forks.pid() != pid or instance is None:  # a forked child: the parent's
                return
            if _uncaught_exception():
                if listener is not None:
                    listener.stop()
            else:
                instance.release()

        def on_release() -> None:
            atexit.unregister(at_exit)
            if listener is not None:
                listener.stop()

        owner = threading.current_thread()
        instance = Turn(line, opening, held.membership, held.abandoned_by, owner, on_release)
        atexit.register(at_exit)
        if listener is not None:
            listener.start()
        return instance
    except BaseException:  # Ctrl-C too: no ticket, socket, listener or exit handler stays
        try:
            if instance is not None:
                instance.release()  # stops the listener, and is done with the opening
            else:
                try:
                    for came in helds:
                        give_back(store, came.membership)
                finally:
                    opening.done()
        finally:
            if listener is not None:
                listener.stop()
            if channel is not None:
                channel.close()
            line.close()
        raise


def _is_async(func: object) -> bool:
    """An ``async def`` function, or an object with an ``async def __call__``."""
    import inspect

    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        type(func).__call__  # an object with ``async def __call__``
    )


def _uncaught_exception() -> bool:
    """Whether the program is ending because of an exception nobody caught: the interpreter
    keeps it in ``sys.last_exc`` (``sys.last_value`` before Python 3.12) once it has printed
    its traceback, before the exit handlers run."""
    return (
        getattr(sys, "last_exc", None) is not None or getattr(sys, "last_value", None) is not None
    )


def _wait_seconds(wait: object) -> float | bool:
    """``wait=``: False (send, do not wait), True (wait for ever, as 0.0 here) or seconds (at
    least ``FOREVER_SECONDS``, as a timeout that long: for ever)."""
    if isinstance(wait, bool):
        return 0.0 if wait else False
    if not isinstance(wait, (int, float)) or not wait > 0:
        raise UsageError(f"wait must be True, False or a positive number of seconds, not {wait!r}")
    return 0.0 if wait >= FOREVER_SECONDS else float(wait)


def _first_or_tell(
    store: LineStore, data: Any, timeout: float, channel: str | None, taken: list[Held]
) -> Held:
    """Take the line if nobody is in it; else give the one ahead (the holder, or the start
    that is about to hold it) this start's argv, folder and ``data``, and raise
    ``AlreadyRunning`` with its reply. One whose channel is gone already (on its way out) is
    waited for, as long as ``timeout`` allows, and the line tried again. The turn is also
    put in ``taken``, for a Ctrl-C as it returns."""
    from .messages import Unreachable, current_folder, deliver, request, wait_for_going

    deadline = time.monotonic() + timeout
    while True:
        try:
            return take_turn(store, blocking=False, channel=channel, taken=taken)
        except Busy as busy:
            status = busy.status
            ahead = (*status.holders, *status.waiters) if status is not None else ()
            if not ahead:
                if time.monotonic() >= deadline:
                    raise
                continue  # it emptied meanwhile: try again
            first = ahead[0]
            running = f"line {store.name!r} is already running as {first.describe(live=True)}"
            if not first.channel:
                raise AlreadyRunning(
                    f"{running}, which does not listen for messages", status, pid=first.pid
                ) from None
            message = request(sys.argv, current_folder(), data)
            try:
                # A waiter ahead that listens (wait=True) takes the message once it holds.
                reply = deliver(store, first, message, deadline, timeout)
            except Unreachable:
                wait_for_going(store, first, deadline, timeout)
                continue
            raise AlreadyRunning(
                f"{running}; it was sent this start's arguments and answered",
                status,
                reply=reply,
                pid=first.pid,
            ) from None


def send(
    name: str,
    argv: Iterable[str] = (),
    *,
    data: Any = None,
    cwd: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    scope: str = "user",
    directory: str | os.PathLike[str] | None = None,
    backend: str | Backend | None = None,
    on_received: Callable[[int | None], None] | None = None,
) -> Any:
    """Send ``argv``, ``cwd`` (default: this process's working folder) and ``data`` to the
    instance that holds line ``name`` (``single_instance(on_message=...)``) and return its
    reply, a JSON value.

    Raises ``NotRunning`` when no instance holds the line, or it does not listen, or it ended
    before it answered; ``Timeout`` when it does not answer within ``timeout`` seconds;
    ``MessageError`` when its ``on_message`` raised or it refused this user.
    ``on_received(pid)`` is called once the instance has taken the message (again, with the
    next instance's pid, if the first stopped before handling it and the message went on).
    """
    from .messages import check_timeout, current_folder, request
    from .messages import send as send_message

    name = check_name(name)
    check_scope(scope)
    folder = None if directory is None else os.fspath(directory)
    check_backend(backend, folder)
    check_messages(name, backend, folder)
    message = request(argv, current_folder() if cwd is None else cwd, data)
    seconds = check_timeout(timeout)
    opened = open_backend(backend, scope=scope, directory=folder, create=False)
    store = opened.line(name)
    try:
        return send_message(store, message, seconds, on_received)
    finally:
        store.close()
        if opened is not backend:
            opened.close()
