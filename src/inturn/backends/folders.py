"""What a line's folder holds, the same for both local backends (POSIX and Windows).

``.name`` records the line's exact name, ``.line`` the next ticket number, and each place in
line is ``<number>.ticket``. When a ticket dies holding the turn, whoever finds it dead leaves
``<number>.abandoned``, a copy of (or a second link to) its record, and the next holder claims
it by creating ``<number>.told``: creating a file that must not exist yet is atomic, so exactly
one holder is told, and it works between users who may not remove each other's files (a
machine-wide line's files are in a sticky folder, like ``/tmp``). Files are removed by whoever
may, in an order that never lets a claimed marker look unclaimed: the ticket first, then the
marker, then the claim. Claims are made under the line's guard, as tidies are: a tidy never
takes a marker from under a claim still being made. Numbers are zero-padded to 12 digits so
that a listing sorts like the line until they outgrow them (inturn itself sorts them as
numbers, up to ``LAST_TICKET``). A platform may keep a line's files side by side with other
lines' instead, each name prefixed (``FolderStore.prefix``): the POSIX backend does so for
machine-wide lines.
"""

from __future__ import annotations

import math
import os
import stat
import sys
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, suppress
from functools import partial

from ..errors import BackendError, UsageError
from ..names import safe_file_name
from ..records import (
    MAX_FIELD_CHARS,
    LineStatus,
    Ticket,
    capped_command,
    escape_controls,
    timestamp,
    warn,
    warn_once,
    whole_number,
)
from .base import Backend, LineStore, Membership, Patience, View, check_scope

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    import json
    from typing import Any

TICKET = ".ticket"
SHARED = ".shared"  # the ticket of a shared turn (a reader)
KICK = ".kick"  # how a later newest_wins arrival wakes a newest_wins waiter to replace it
MARKER = ".abandoned"
TOLD = ".told"
COUNTER = ".line"
USER_COUNTER = ".next."  # a machine-wide line's counter of one user: .next.<uid>
NAME_FILE = ".name"
DIR_VARIABLE = "INTURN_DIR"
MACHINE_DIR_VARIABLE = "INTURN_MACHINE_DIR"
# How often an opening, a join or a forget starts again on a folder found removed under it (by
# ``inturn forget`` of an empty line) before it gives up: each time means a forget came
# between two system calls (a loop forgetting nonstop, on a loaded machine, made ten in a row).
REMOVED_RETRIES = 100
# Part of the mode of every file a line has on Linux, sockets included: systemd-tmpfiles, which
# removes from /tmp what nobody has touched for 10 days on many systems, leaves sticky files
# alone (systemd's "Using /tmp/ and /var/tmp/ Safely"), and a turn can be held for longer. It
# also spares live sockets, but only those listed under their path in /proc/net/unix.
KEEP = stat.S_ISVTX if sys.platform.startswith("linux") else 0


def resolve_root(
    scope: str, directory: str | None, default_root: Callable[[str], str]
) -> tuple[str, bool]:
    """The folder of the lines: ``directory=``, else the environment (``INTURN_DIR`` for
    per-user lines, ``INTURN_MACHINE_DIR`` for machine-wide ones, so that asking for the
    machine-wide line is never quietly turned into a private one), else the scope's default;
    and whether the user named it (a folder the user named is trusted as it is)."""
    check_scope(scope)
    variable = MACHINE_DIR_VARIABLE if scope == "machine" else DIR_VARIABLE
    explicit = directory or os.environ.get(variable) or None
    if explicit and not directory and not os.path.isabs(explicit):
        # Taken from each process's own current folder, one value would name many folders,
        # and processes started in different places would each hold "the same" line.
        raise UsageError(
            f"{variable} is a relative path ({escape_controls(explicit)}): give an absolute "
            f"one, so that every process finds the same folder wherever it starts"
        )
    return (os.path.abspath(explicit) if explicit else default_root(scope)), explicit is not None


# The last ticket number: the largest a signed 64-bit integer holds, as on the server backends
# (a PostgreSQL bigint, a Redis integer), so that a fencing token fits one everywhere.
LAST_TICKET = 2**63 - 1
_LAST_TICKET_DIGITS = len(str(LAST_TICKET))


def ticket_files(number: int) -> tuple[str, str]:
    """The names a ticket can have: exclusive, then shared."""
    return f"{number:012d}{TICKET}", f"{number:012d}{SHARED}"


def own_ticket_file(number: int, shared: bool) -> str:
    return f"{number:012d}{SHARED if shared else TICKET}"


def kick_file(number: int) -> str:
    return f"{number:012d}{KICK}"


def marker_file(number: int) -> str:
    return f"{number:012d}{MARKER}"


def told_file(number: int) -> str:
    return f"{number:012d}{TOLD}"


def counter_file(uid: int) -> str:
    return f"{USER_COUNTER}{uid}"


class Entries:
    """A line's folder, read from one listing."""

    __slots__ = ("claimed", "counters", "highest", "markers", "shared", "tickets")

    def __init__(
        self,
        tickets: tuple[int, ...],
        shared: frozenset[int],
        markers: tuple[int, ...],
        claimed: tuple[int, ...],
        highest: int,
        counters: tuple[str, ...] = (),
    ) -> None:
        self.tickets = tickets  # every ticket file present (live or dead), ascending
        self.shared = shared  # which of them are shared turns
        self.markers = markers  # abandonment markers that nobody has claimed yet
        # claims, with their markers or without (a tidy cut off between the two), left for
        # whoever may remove them
        self.claimed = claimed
        self.highest = highest  # the highest number any entry carries (0 if none)
        self.counters = counters  # the per-user counters of a machine-wide line


def read_entries(entries: Iterable[str]) -> Entries:
    """The tickets, markers and claims among a folder's entries; anything else is not ours."""
    tickets: list[int] = []
    shared: set[int] = set()
    exclusive: set[int] = set()
    markers: set[int] = set()
    told: set[int] = set()
    counters = []
    for entry in entries:
        stem, _, kind = entry.rpartition(".")
        if not (stem.isdigit() and stem.isascii()):
            if entry.startswith(USER_COUNTER) and kind.isdigit():
                counters.append(entry)
            continue
        if kind == "ticket":
            tickets.append(int(stem))
            exclusive.add(int(stem))
        elif kind == "shared":
            tickets.append(int(stem))
            shared.add(int(stem))
        elif kind == "abandoned":
            markers.add(int(stem))
        elif kind == "told":
            told.add(int(stem))
    if len(exclusive | shared) != len(tickets):
        # A number under two names (a joiner makes one: someone else put the other there,
        # as another user may in a sticky folder) is one ticket, and an exclusive one if
        # either name says so: a shared file beside a holder must not let readers in.
        shared -= exclusive
        tickets = list(exclusive | shared)
    tickets.sort()
    highest = tickets[-1] if tickets else 0
    if not (markers or told or counters):  # the common case, read at every join: no more to do
        return Entries(tuple(tickets), frozenset(shared), (), (), highest)
    highest = max(highest, max(markers, default=0), max(told, default=0))
    return Entries(
        tuple(tickets),
        frozenset(shared),
        tuple(sorted(markers - told)),
        tuple(sorted(told)),
        highest,
        tuple(sorted(counters)),
    )


def counter_value(counter: bytes) -> int | None:
    """The number a counter file holds, or None if it holds none that inturn could have
    written: after the last ticket it holds ``LAST_TICKET + 1``."""
    text = counter.split(b"\n", 1)[0].strip()
    if text.isdigit() and len(text) <= _LAST_TICKET_DIGITS:
        value = int(text)
        if value <= LAST_TICKET + 1:
            return value
    return None


def next_number(counter: bytes, where: str, highest: int) -> int:
    """The next ticket number: the counter's, but never at or below a number already in the
    folder, so that a counter someone rewrote (or that got corrupt) cannot hand out a number
    twice or let the fencing token go backwards."""
    value = counter_value(counter)
    if value is not None:
        return max(value, highest + 1)
    if counter:
        warn(f"the ticket counter {where} was corrupt; rebuilt it")
    return highest + 1


# --------------------------------------------------------------------------- the record format


try:  # the JSON encoder's own function for one string, without importing ``json``
    from _json import encode_basestring_ascii as _encode_text
except ImportError:  # an interpreter without the accelerator
    from json.encoder import encode_basestring_ascii as _encode_text

_encoders: list[json.JSONEncoder] = []  # the encoder of every other record, made when first used


def dumps_line(data: dict[str, Any]) -> bytes:
    """One JSON record per line: readers ignore an unfinished last line."""
    if not _encoders:
        import json  # not at import: ``inturn run`` on a free line writes only headers

        _encoders.append(json.JSONEncoder(separators=(",", ":"), ensure_ascii=True))
    return (_encoders[0].encode(data) + "\n").encode()


def name_line(name: str) -> bytes:
    """``dumps_line({"name": name})``, byte for byte, without ``json``: a line's name record,
    written by the first ``inturn run`` of the line."""
    return b'{"name":%s}\n' % _encode_text(name).encode()


_identity: tuple[tuple[object, ...], bytes] | None = None  # the last header's first fields


def header_line(ticket: Ticket) -> bytes:
    """``dumps_line(ticket.header())``, byte for byte, made faster and without ``json``: every
    join writes one, and a process's pid, user, host and command stay the same from one join
    to the next, so their part of the record is encoded once and kept while they do."""
    global _identity
    pid, user, host, command = ticket.pid, ticket.user, ticket.host, ticket.command
    joined_at, slots, namespace = ticket.joined_at, ticket.slots, ticket.pid_namespace
    if not (
        type(pid) is int
        and type(joined_at) is float
        and math.isfinite(joined_at)
        and type(slots) is int
        and type(ticket.cwd) is str
        and (namespace is None or type(namespace) is int)
    ):
        return dumps_line(ticket.header())
    key = (pid, user, host, command)
    known = _identity
    if known is None or known[0] != key:
        if not (type(user) is str and type(host) is str and all(type(a) is str for a in command)):
            return dumps_line(ticket.header())
        words = ",".join(_encode_text(a) for a in capped_command(command))
        user_text = _encode_text(user[:MAX_FIELD_CHARS])
        host_text = _encode_text(host[:MAX_FIELD_CHARS])
        first = f'{{"pid":{pid},"user":{user_text},"host":{host_text},"command":[{words}]'
        known = _identity = (key, first.encode())
    line = b'%s,"cwd":%s,"joined_at":%r,"slots":%d' % (
        known[1],
        _encode_text(ticket.cwd[:MAX_FIELD_CHARS]).encode(),
        joined_at,
        slots,
    )
    if ticket.shared:
        line += b',"shared":true'
    if ticket.newest_wins:
        line += b',"newest_wins":true'
    if ticket.channel:
        line += b',"channel":' + _encode_text(ticket.channel[:MAX_FIELD_CHARS]).encode()
    if namespace:
        line += b',"pid_namespace":%d' % namespace
    return line + b"}\n"


def parse_record(number: int, data: bytes, origin: str, owner: str | None = None) -> Ticket | None:
    """A ticket file's records: a header line, then an ``acquired_at`` line once it holds.

    An unfinished last line is being written and is skipped; a finished line that is not JSON
    is corruption, reported once and ignored. A value that is not a usable time (NaN, an
    overflow, a string) is reported and dropped, the rest of the record kept; a record that
    says it holds still holds. ``owner`` is who the file system says wrote the file: it beats
    what the record claims.
    """
    import json  # not at import: see ``dumps_line``

    lines = data.split(b"\n")[:-1]  # the part after the last newline is unfinished
    where = escape_controls(origin)
    header: Any = {}
    holding = False
    acquired: float | None = None
    for index, raw in enumerate(lines):
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict):
            warn_once(f"ignoring corrupt ticket record {where}")
            if index == 0:
                return Ticket(number, user=owner or "", held_by_place=False)
            continue
        if index == 0:
            header = record
        elif "acquired_at" in record:
            holding = True
            acquired = timestamp(record["acquired_at"])
            if acquired is None:
                warn_once(f"ignoring a bad acquired_at in {where}")
        elif "pid" in record:  # the command that inherited the turn holds it now
            header = {**header, "pid": record["pid"]}
    if "joined_at" in header and timestamp(header["joined_at"]) is None:
        warn_once(f"ignoring a bad joined_at in {where}")
    for key, low, high in (("pid", 1, 2**63), ("slots", 1, 2**31)):
        value = whole_number(header.get(key, low))
        if value is None or not low <= value < high:
            warn_once(f"ignoring a bad {key} in {where}")
    if holding and acquired is None:
        acquired = timestamp(header.get("joined_at")) or time.time()
    if owner is not None:
        header = {**header, "user": owner}
    return Ticket.from_header(number, header, acquired)


def names_in(root: str, recorded_name: Callable[[str], str | None]) -> list[str]:
    """The lines kept in ``root``: folders whose recorded name maps back to the folder's own
    (anything else there, links included, is not one of ours and is passed over)."""
    found = []
    for entry in os.listdir(root):
        folder = os.path.join(root, entry)
        if os.path.islink(folder) or not os.path.isdir(folder):
            continue
        name = listed(partial(recorded_name, folder), os.path.join(folder, NAME_FILE), entry)
        if name is not None:
            found.append(name)
    return sorted(found)


def listed(read_name: Callable[[], str | None], record: str, file_name: str) -> str | None:
    """The name that ``read_name`` reads from the name record at ``record``, if it is the
    line kept under ``file_name``; else None. A record that is there but unusable, or that
    names another line, is skipped with a warning: the line it stood for would otherwise
    vanish from listings unseen. No record at all is skipped silently (a line being set up,
    or not ours), and so is one that a forget removed as it was read: found after a failed
    read, it is read once more (a join may have put it back), and warned about only if it is
    still there, unusable, after that."""
    name = read_name()
    if name is None:
        if not os.path.lexists(record):
            if _hidden(record):  # a line all the same, in a folder closed to us
                warn_once(_unreadable(record))
            return None
        name = read_name()  # there after all: perhaps put back since the first read
    if name is None:
        if not os.access(record, os.R_OK):
            warn_once(_unreadable(record))
        elif os.path.lexists(record):
            warn_once(
                f"skipping {record}: it does not hold a line's name; look the line up by name"
            )
        return None
    if safe_file_name(name) == file_name:
        return name
    warn_once(f"skipping {record}: it names line {name!r}, which is not kept there")
    return None


def _hidden(path: str) -> bool:
    """Whether a folder closed to us hides ``path`` (``lexists`` says no either way)."""
    try:
        os.lstat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def _unreadable(record: str) -> str:
    return (
        f"skipping {record}: you may not read it; fix its permissions (and its folder's), "
        "or look the line up by name"
    )


# --------------------------------------------------------------------------- what both share


class FolderBackend(Backend):
    """Lines kept in a folder on this machine (each platform says where, and how to check it)."""

    def __init__(
        self, scope: str = "user", directory: str | None = None, create: bool = True
    ) -> None:
        self.root, explicit = resolve_root(scope, directory, self.default_root)
        self.scope = scope
        self.create = create  # False: only looking, so nothing is created or changed
        if explicit:
            self.check_named_root(self.root)
        self.prepare_root(self.root, scope, explicit, create)

    @staticmethod
    @abstractmethod
    def default_root(scope: str) -> str:
        """Where lines live when neither ``INTURN_DIR`` nor ``directory=`` says."""

    @staticmethod
    @abstractmethod
    def prepare_root(path: str, scope: str, explicit: bool, create: bool) -> None:
        """Create the lines folder if needed (``create``; a look makes nothing) and check that
        it is safe to use."""

    @staticmethod
    def check_named_root(path: str) -> None:
        """A folder the user named, before it is made or looked at: raise ``BackendError``
        where its lines could not keep their promises (the defaults are known places)."""

    @staticmethod
    @abstractmethod
    def recorded_name(folder: str) -> str | None:
        """The exact name a line's folder records, or None if it records none usable."""

    @property
    def where(self) -> str:
        return self.root

    def kept_anything(self) -> bool:
        return os.path.lexists(self.root)

    def names(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []  # nothing was ever kept there (looking does not create it)
        return names_in(self.root, self.recorded_name)


class FolderMembership(Membership):
    """Our ticket: its record, open for writing, and whatever keeps its liveness lock."""

    fd: int


class FolderStore(LineStore):
    """A line in a folder: what the POSIX and Windows stores share.

    Each platform supplies how to hold, probe and wait on a ticket's liveness lock (``join``,
    ``_dead``, ``wait``, ``leave``), the guard, and a handful of file operations; the rules for
    the folder's files (who may remove what, in which order, how a death is reported exactly
    once) are written here once.
    """

    name: str
    scope: str
    folder: str
    shown: str  # the folder, with control characters escaped, for messages

    def __init__(self, backend: FolderBackend, name: str) -> None:
        self.name = name
        self.scope = backend.scope
        self.create = backend.create
        self.folder, self.prefix = self._layout(backend.root, safe_file_name(name))
        self.shown = escape_controls(self.folder)
        self._identity: str | None = None  # resolved on first use: see ``identity``

    def _layout(self, root: str, file_name: str) -> tuple[str, str]:
        """Where the line's files are, and what their names start with there: a folder of
        its own, by default; a platform may keep some lines' files side by side instead."""
        return os.path.join(root, file_name), ""

    @property
    def where(self) -> str:
        return os.path.join(self.folder, self.prefix) if self.prefix else self.folder

    @property
    def identity(self) -> str:
        """The folder with every symbolic link resolved: through a link to it, or ``..``,
        one folder is still one line (its path, not its inode, which a forget changes)."""
        if self._identity is None:
            self._identity = os.path.realpath(self.where)
        return self._identity

    def _where(self, entry: str) -> str:
        """An entry of the line as a path, for messages."""
        return f"{self.shown}/{self.prefix}{entry}"

    def _exists_at_all(self) -> bool:
        """Whether anyone has used the line here (without creating it)."""
        return os.path.lexists(self.folder)

    # -- what each platform supplies

    @abstractmethod
    def _opened(self) -> bool:
        """Whether this store has opened (and so created) the line's folder."""

    @abstractmethod
    def _entries(self) -> Entries:
        """One listing of the line's folder (creating the folder if need be)."""

    @abstractmethod
    def _refresh(self) -> None:
        """Before a look from outside (``status``, ``wait``) or a ``forget``: if the line this
        store opened was forgotten since, and perhaps made anew, open it again. A store that
        holds no ticket can outlive its line (a ``Line`` kept for later looks); it must not
        judge the new line's tickets by the old one's folder or names."""

    @abstractmethod
    def _read(self, entry: str) -> tuple[bytes, str | None] | None:
        """A file's contents (bounded) and the name of its owner as the system says (None
        where the record's own claim is to be believed); None if it is gone or not a regular
        file, with a warning for the latter."""

    def _unreadable_owner(self, entry: str) -> str | None:
        """If ``entry`` is a file there that this user may not read (``_read`` gave None for
        it), the name of its owner ("" if unknown): a ticket in line all the same, taken as
        alive, never as dead. None otherwise (gone, or not a file)."""
        return None

    @abstractmethod
    def _create(self, entry: str, data: bytes) -> bool:
        """Create a file that must not exist yet, readable by every user of the line and
        writable by its creator only; False if it exists."""

    @abstractmethod
    def _remove(self, entry: str) -> None:
        """Remove a file; ``FileNotFoundError`` if gone, ``PermissionError`` if not ours to."""

    @abstractmethod
    def _exists(self, entry: str) -> bool:
        """Whether an entry of that name exists (of any kind)."""

    @abstractmethod
    def _link(self, entry: str, to: str) -> bool:
        """Give ``entry`` the second name ``to`` without replacing anything; False if not
        allowed (another user's file) or if ``to`` exists."""

    def _ticket_name(self, number: int) -> str:
        """The name ticket ``number`` has in the folder (exclusive, or shared)."""
        exclusive, shared = ticket_files(number)
        return shared if self._exists(shared) and not self._exists(exclusive) else exclusive

    @abstractmethod
    def _dead(self, number: int) -> bool:
        """Whether ticket ``number``'s liveness lock is free (gone counts as dead); under the
        guard, a ticket found dead stays dead."""

    @abstractmethod
    def _guard(self, patience: Patience) -> AbstractContextManager[Any]:
        """The line's short guard lock (``GuardTaken`` once patience runs out)."""

    @abstractmethod
    def _read_counter(self, entry: str, guard: Any) -> bytes:
        """A counter file's contents (empty if missing); ``guard`` is what ``_guard`` gave."""

    @abstractmethod
    def _write_counter(self, entry: str, text: bytes, guard: Any) -> None:
        """Write a counter file of ours (creating it if missing)."""

    @abstractmethod
    def _counter_owner(self) -> int:
        """This user's number for a per-user counter file, ``.next.<number>``."""

    # -- numbers

    def _next_number(self, entries: Entries, guard: Any) -> int:
        """Under the guard: the next number. A per-user line keeps it in ``.line``. On a
        machine-wide line every user writes only a counter of their own, ``.next.<n>``, and
        the number is above all of them and above every number in the folder: nobody can turn
        back the numbers that others were given."""
        if self.scope != "machine":
            where = self._where(COUNTER)
            return next_number(self._read_counter(COUNTER, guard), where, entries.highest)
        highest = entries.highest
        for entry in (COUNTER, *entries.counters):
            value = counter_value(self._read_counter(entry, guard))
            if value is not None:
                highest = max(highest, value - 1)
        return highest + 1

    def _check_number(self, number: int) -> int:
        """``number``, if it is not beyond the last ticket number: a line never starts its
        numbers again from 1 while it exists (they are a fencing token)."""
        if number > LAST_TICKET:
            raise BackendError(
                f"line {self.name!r} has used up its ticket numbers (the "
                f"last is {LAST_TICKET}): forget the line (inturn forget) to number it anew"
            )
        return number

    def _save_number(self, following: int, guard: Any) -> None:
        own = COUNTER if self.scope != "machine" else counter_file(self._counter_owner())
        self._write_counter(own, f"{following}\n".encode(), guard)

    # -- LineStore: reading

    def status(self) -> LineStatus:
        """Looking at a line that nobody has used yet must not create it."""
        if not self._opened() and not self._exists_at_all():
            return LineStatus(self.name, scope=self.scope, where=self.where)
        return super().status()

    def look(self, me: Membership | None) -> View:
        with os_errors(self.shown):
            if me is None:  # a look from outside: the line may have been made anew
                self._refresh()
            entries = self._entries()
        tickets = entries.tickets
        if me is not None:
            tickets = tuple(n for n in tickets if n < me.number)
        return View(tickets, entries.markers, shared=entries.shared)

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        with os_errors(self.shown):
            return [not self._dead(number) for number in numbers]

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        result: list[Ticket | None] = []
        with os_errors(self.shown):
            for number in numbers:
                name = self._ticket_name(number)
                found = self._read(name)
                whose = self._unreadable_owner(name) if found is None else None
                if whose is not None:  # in line all the same
                    warn_once(
                        f"cannot read {self._where(name)} ({whose or 'another user'}'s): shown "
                        "without its details"
                    )
                    result.append(Ticket(number, user=whose, held_by_place=False))
                    continue
                if not found or not found[0]:  # gone, or being created, or a leaver's last
                    result.append(None)
                    continue
                data, owner = found
                result.append(parse_record(number, data, self._where(name), owner))
        return result

    # -- LineStore: the dead

    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        with os_errors(self.shown), self._guard(patience):
            if self._dead(number):
                self._bury_dead(number)
            return self._exists(marker_file(number)) and not self._exists(told_file(number))

    def _bury_dead(self, number: int) -> None:
        """Under the guard, for a ticket found dead: leave a marker if it was holding (a second
        link to its record, or where the record is another user's, a copy that says whose it
        was), then remove it if we may (in a sticky folder only its owner can)."""
        name = self._ticket_name(number)
        found = self._read(name)
        if found is None:
            return
        data, owner = found
        record = parse_record(number, data, self._where(name))
        if data and record is not None and record.holding:
            marker = marker_file(number)
            if not self._link(name, marker):
                self._create(marker, data + dumps_line({"owner": owner}))
        try:
            self._remove(name)
        except (FileNotFoundError, PermissionError):
            pass  # gone, or another user's: dead all the same, and marked
        except OSError as exc:
            warn_once(f"cannot remove dead ticket {self._where(name)}: {exc.strerror}")
        if record is not None and record.channel:
            self._remove_channel(record.channel)

    def _remove_channel(self, address: str) -> None:
        """Remove what a dead ticket listened on, where it outlives its process (a socket)."""

    def mark_acquired(self, me: Membership, when: float, patience: Patience) -> None:
        assert isinstance(me, FolderMembership)
        try:  # between waking and returning: no context manager
            write_all(me.fd, b'{"acquired_at":%r}\n' % when)
        except OSError as exc:
            raise BackendError(os_problem(self.shown, exc)) from None

    def note_runner(self, me: Membership, pid: int) -> None:
        assert isinstance(me, FolderMembership)
        with os_errors(self.shown):
            write_all(me.fd, b'{"pid":%d}\n' % pid)

    def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
        """Under the guard, so that no tidy (a join's, the claimer's of another marker) can
        take a marker from under a claim being made, nor one claimer from under another."""
        with os_errors(self.shown), self._guard(patience):
            for number in self._entries().markers:
                record = self._claim(number, me.shared)
                if record is not None:
                    return record
        return None

    def _claim(self, number: int, shared: bool) -> Ticket | None:
        """Under the guard: tell ourselves of a marker by creating its claim, which only one
        can do, then tidy it away. A claimer that dies before its claim is made leaves the
        marker to the next holder; one that dies after, a claimed marker for the next join to
        tidy (its own death, while holding, is then told to the next holder in its turn). A
        shared turn leaves the marker of a shared one for the next exclusive holder."""
        marker, told = marker_file(number), told_file(number)
        found = self._read(marker)
        if found is None:
            return None
        if shared:
            dead = parse_record(number, found[0], self._where(marker))
            if dead is None or dead.shared:
                return None
        if not self._create(told, b""):
            return None  # claimed already
        data, owner = found
        record = parse_record(
            number, data, self._where(marker), self._dead_owner(number, data, owner)
        )
        with suppress(OSError):
            self._tidy(number)
        return record

    def _dead_owner(self, number: int, data: bytes, marker_owner: str | None) -> str | None:
        """Who the dead holder was, from the system rather than from what the record says:
        the owner of its ticket file while that is still there (or of the marker, a second
        link to it), else the owner recorded in a copy another user made of it."""
        found = self._read(self._ticket_name(number))
        if found is not None and found[1] is not None:
            return found[1]
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if last.startswith(b'{"owner":'):
            import json

            with suppress(ValueError, KeyError, TypeError, AttributeError):
                owner = json.loads(last)["owner"]
                return owner if isinstance(owner, str) else marker_owner
        return marker_owner

    def _tidy(self, number: int) -> None:
        """Under the guard: remove what we may of a claimed marker's files, in the safe order
        (dead ticket, marker, claim), stopping at the first that must stay: what another user
        owns in a sticky folder stays until they come by."""
        if not self._dead(number):
            return
        for entry in (*ticket_files(number), marker_file(number), told_file(number)):
            with suppress(FileNotFoundError):
                self._remove(entry)

    def _tidy_litter(self, entries: Entries) -> None:
        """Under the guard: claimed markers that their claimers could not remove, and claims
        left alone by a tidy cut off between the marker and its claim."""
        for number in entries.claimed:
            with suppress(OSError):
                self._tidy(number)


def write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # rare: a signal, a full disk on the way
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


class os_errors:
    """An unexpected system error (a full disk, too many open files) is one clear line.

    A class rather than a generator: it wraps every call on the hot path.
    """

    __slots__ = ("folder",)

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: object
    ) -> None:
        if isinstance(exc, OSError):
            raise BackendError(os_problem(self.folder, exc)) from None


def os_problem(folder: str, exc: OSError) -> str:
    import errno  # only when something went wrong

    if exc.errno == errno.ENOSPC:
        return f"no space left on the device of {folder}: free some space and try again"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return (
            f"too many open files ({exc.strerror}) while using {folder}: raise the limit "
            "(ulimit -n) or close some files"
        )
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only file system: choose another with --dir or INTURN_DIR"
    return f"cannot use {folder}: {exc.strerror or exc}"
