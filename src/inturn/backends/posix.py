"""The local backend for Linux, macOS and other POSIX systems: a folder per line, a file per ticket.

Each ticket is a file ``<number>.ticket`` whose owner holds ``flock(LOCK_EX)`` on it from joining
until leaving, so the kernel frees it the instant the owner dies: liveness never comes from a
pid. A waiter sleeps in ``flock(LOCK_SH)`` on the ticket ahead of it and the kernel wakes it when
that lock goes; a leaver removes its file before it unlocks, so the woken waiter tells a clean
release from a death with one ``fstat``: the file it waited on has no name left (a dead
holder's keeps one: its marker is a second link to it, or it stays where another user's file
must stay, until a holder has been told). A dead waiter's file is removed too: it abandons
nothing. Numbers come from the counter file ``.line``, whose ``flock`` is also the short guard
under which tickets are created and dead ones removed; see ``folders.py`` for the rest of the
folder and the rules both local backends share.

Every path is opened relative to the line's folder descriptor with ``O_NOFOLLOW``, and files are
created with ``O_EXCL``, so symlinks or files planted by someone else are refused, never followed.

Machine-wide lines are shared between users who need not trust each other (README, "Machine-wide
lines between users"): their files lie side by side in root's sticky ``/tmp``,
named ``inturn:<line>:<entry>``, with no folder of the line's own (its owner could remove anyone's
files), so nobody removes or renames another's files; their guard is ``flock`` on that folder,
which nobody can replace; tickets are created private and made readable (never writable) by
others only once locked, whatever the umask, so nobody can open one in time to take its lock
first; each user keeps a counter of their own and numbers never go below a number present; the
user shown is the file's owner; and waits for the guard are bounded for callers that must not
hang.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial

from .. import forks
from ..errors import BackendError, Cancelled, Replaced
from ..forks import forget_after_fork
from ..records import MAX_RECORD_BYTES, Ticket, escape_controls, this_user, warn_once
from .base import CancelToken, GuardTaken, Membership, Patience, View, Woke, wait_woken
from .folder_opening import FolderOpening
from .folders import (
    COUNTER,
    KEEP,
    NAME_FILE,
    REMOVED_RETRIES,
    Entries,
    FolderBackend,
    FolderMembership,
    FolderStore,
    header_line,
    kick_file,
    listed,
    name_line,
    os_errors,
    os_problem,
    own_ticket_file,
    read_entries,
    ticket_files,
    write_all,
)
from .mounts import network_file_system, systemd_private_tmp

assert sys.platform != "win32"  # the rest of this module is POSIX code

from .unix_channel import UnixChannels  # noqa: E402 - POSIX only, as what follows

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing`` at start
if TYPE_CHECKING:
    from typing import Any, ClassVar

TMP = "/tmp"
MACHINE_PREFIX = "inturn:"  # machine-wide lines' files: inturn:<line>:<entry>

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PRIVATE = 0o600 | KEEP


# --------------------------------------------------------------------------- folders


def default_root(scope: str) -> str:
    """Where lines live when neither ``INTURN_DIR`` nor ``directory=`` says.

    Never from the session's environment (``XDG_RUNTIME_DIR``, ``TMPDIR``): a cron job, a
    service and a login shell of one user see different values there, and would each have a
    line of their own under the same name, so two of them could hold it at once. Not
    ``/dev/shm`` either: systemd-logind removes every file a user owns there when their last
    login ends (``RemoveIPC=yes``), tickets of jobs that outlive the login included, and a
    later run would then find the line empty while they still hold it.
    """
    shared = os.path.realpath(TMP)
    if scope == "machine":  # the lines' files side by side in it: see PosixStore._layout
        return shared
    cache = _darwin_user_cache()
    return os.path.join(cache, "inturn") if cache else os.path.join(shared, f"inturn-{os.getuid()}")


def _darwin_user_cache() -> str | None:
    """macOS's per-user cache folder, which the system never cleans: it removes files in
    ``/tmp`` and in the per-user temporary folder that nobody has read for three days, and a
    turn can be held longer than that (confstr(3): ``_CS_DARWIN_USER_CACHE_DIR``)."""
    if sys.platform != "darwin":
        return None
    try:
        folder = os.confstr(65538)  # _CS_DARWIN_USER_CACHE_DIR, which os.confstr_names lacks
    except (OSError, ValueError):
        return None
    return folder if folder and os.path.isabs(folder) and os.path.isdir(folder) else None


def _dir_mode(scope: str) -> int:
    return 0o1777 if scope == "machine" else 0o700


def _readable_mode(scope: str) -> int:
    """Files every user of the line must read, and only their owner write."""
    return (0o644 if scope == "machine" else 0o600) | KEEP


def prepare_root(path: str, scope: str, explicit: bool, create: bool = True) -> None:
    """Create the lines folder if needed and check that it is safe to use. A look (not
    ``create``) makes nothing and changes nothing, but refuses what a run refuses as planted
    (a link, or a folder of another user's or open to others, where the folder is ours):
    what another user put there is not shown as our lines."""
    if not create and not _exists(path):
        return  # nothing kept there yet: nothing to trust
    try:
        if not _exists(path):
            parent = os.path.dirname(path)
            if not _is_folder(parent):
                raise BackendError(
                    f"cannot create the lines folder {path}: its parent {parent} does not "
                    "exist (create it first, or check the path)"
                )
            os.mkdir(path, 0o700)
            os.chmod(path, _dir_mode(scope))
    except FileExistsError:
        pass
    except PermissionError as exc:
        raise BackendError(
            f"cannot create the lines folder {path}: {exc.strerror}; "
            "choose a writable folder with --dir or INTURN_DIR"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS):
            raise BackendError(os_problem(f"the lines folder {path}", exc)) from None
        raise BackendError(f"cannot create the lines folder {path}: {exc.strerror}") from None
    info = os.lstat(path)
    if explicit:
        try:
            info = os.stat(path)  # a folder the user named may be reached through a link
        except OSError as exc:  # a link to nowhere, or a loop of links
            raise BackendError(
                f"{path} is a symbolic link that leads to no folder ({exc.strerror}): "
                "point it at a folder, or set INTURN_DIR to another place"
            ) from None
    elif stat.S_ISLNK(info.st_mode):
        raise BackendError(
            f"{path} is a symbolic link, not a folder of inturn's: remove it "
            "(someone may be trying to redirect your lines) or set INTURN_DIR"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise BackendError(f"{path} is not a folder: remove it or set INTURN_DIR to another place")
    uid = os.getuid()
    if scope == "user" and not explicit:
        if info.st_uid != uid:
            raise BackendError(
                f"{path} belongs to uid {info.st_uid}, not to you: remove it or set INTURN_DIR"
            )
        if info.st_mode & 0o077:
            raise BackendError(
                f"{path} can be used by other users (mode {stat.S_IMODE(info.st_mode):o}): "
                f"run 'chmod 700 {path}' or set INTURN_DIR"
            )
    if not create:  # a look reads: what it must not trust is settled above
        if not os.access(path, os.R_OK | os.X_OK):  # else its lines would pass for none
            raise BackendError(
                f"the lines folder {path} is not readable by you: fix its permissions, "
                "or choose another with --dir or INTURN_DIR"
            )
        return
    if scope == "machine" and not explicit and (info.st_mode & 0o1002) != 0o1002:
        if info.st_uid == uid:
            os.chmod(path, 0o1777)
        else:
            raise BackendError(
                f"{path} is not a world-writable sticky folder (mode "
                f"{stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}): ask its owner or "
                f"an administrator to run 'chmod 1777 {path}'"
            )
    if scope == "machine" and not explicit:
        warn_if_anothers(path, info.st_uid, "the machine-wide lines folder")
    if not explicit and systemd_private_tmp(path if scope == "machine" else os.path.dirname(path)):
        warn_once(
            "/tmp is this service's own (systemd's PrivateTmp=yes), and so are the lines in "
            "it: runs outside the service under the same names do not take turns with it; "
            "give them all one INTURN_DIR (INTURN_MACHINE_DIR for --machine) outside /tmp"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        if _read_only(path):  # what access(2) says of any folder there, root's included
            raise BackendError(os_problem(f"the lines folder {path}", OSError(errno.EROFS, "")))
        raise BackendError(
            f"the lines folder {path} is not writable by you: fix its permissions, "
            "or choose another with --dir or INTURN_DIR"
        )


def _exists(path: str) -> bool:
    """Whether ``path`` exists; one that a folder above hides from us is refused, not taken
    for missing (its lines would pass for none)."""
    try:
        os.lstat(path)
    except PermissionError:
        raise BackendError(
            f"the lines folder {path} is not readable by you (a folder above it is closed to "
            "you): fix their permissions, or choose another with --dir or INTURN_DIR"
        ) from None
    except OSError:
        return False
    return True


def _is_folder(path: str) -> bool:
    """Whether ``path`` is a folder; False only when it is missing or not a folder. Any other
    failure (a folder above closed to us, a path too long) is raised: it is not the path's
    absence, and saying so would send the user to create what exists."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _read_only(path: str) -> bool:
    """Whether ``path`` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def refuse_network_file_system(path: str) -> None:
    """A folder the user named (the defaults are in ``/tmp``) may be on a file system shared
    between machines, where a holder's lock can go unseen: refused before anything is made in
    it or read from it. Asked of the folder, or of its parent when it is still to be made."""
    kind = network_file_system(path if os.path.lexists(path) else os.path.dirname(path))
    if kind is not None:
        raise BackendError(
            f"{escape_controls(path)} is on a network file system ({kind}), where inturn's "
            "locks do not keep other processes out, so two could hold a turn at once: keep "
            "lines in a local folder, or take turns across machines with a postgresql:// or "
            "redis:// backend"
        )


def warn_if_anothers(path: str, uid: int, what: str) -> None:
    """A folder's owner may remove or rename anything in it, sticky or not: a machine-wide
    line is only as safe as the owners of its folders, so say so when one of them is another
    user than root or the caller (README, "Machine-wide lines between users")."""
    if uid not in (0, os.getuid()):
        warn_once(
            f"{what} {escape_controls(path)} belongs to {user_name(uid)}, who can remove other "
            "users' tickets from it and so let two hold at once: where users do not trust "
            "each other, have root create it (README: Machine-wide lines between users)"
        )


class PosixBackend(FolderBackend):
    """Lines kept in a folder on this machine."""

    # Every store's timed waits share these, process-wide: see ``_Watches``.
    watches: ClassVar[_Watches]

    default_root = staticmethod(default_root)
    prepare_root = staticmethod(prepare_root)
    check_named_root = staticmethod(refuse_network_file_system)

    @staticmethod
    def recorded_name(folder: str) -> str | None:
        return _read_name(os.path.join(folder, NAME_FILE))

    def line(self, name: str) -> PosixStore:
        return PosixStore(self, name)

    def names(self) -> list[str]:
        if self.scope != "machine":
            return super().names()
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if not (entry.startswith(MACHINE_PREFIX) and entry.endswith(f":{NAME_FILE}")):
                continue
            file_name = entry[len(MACHINE_PREFIX) : -len(NAME_FILE) - 1]
            record = os.path.join(self.root, entry)
            name = listed(partial(_read_name, record), record, file_name)
            if name is not None:
                found.append(name)
        return sorted(found)


def _read_name(path: str) -> str | None:
    try:
        fd = os.open(path, _O_READ)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        import json  # only for a line's name record: not at import (see ``dumps_line``)

        data = json.loads(_read_all(fd).decode())
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) else None
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        return None
    finally:
        os.close(fd)


def _read_all(fd: int, limit: int = MAX_RECORD_BYTES) -> bytes:
    """Up to ``limit`` bytes from the start of ``fd`` (a record can take several reads)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.pread(fd, limit - size, size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


_user_names: dict[int, str] = {}


def user_name(uid: int) -> str:
    """The login name of ``uid`` (its number when the system has no name for it)."""
    if uid == os.getuid():
        return this_user()
    name = _user_names.get(uid)
    if name is None:
        try:
            import pwd  # only lines shared with other users need it

            name = pwd.getpwuid(uid).pw_name
        except (KeyError, ImportError):
            name = str(uid)
        _user_names[uid] = name
    return name


# --------------------------------------------------------------------------- tickets


class PosixMembership(FolderMembership):
    """Our ticket file, open and locked, and for a ``newest_wins`` ticket the kick FIFO it
    listens on (open for reading, and for writing too, so that it never reads end-of-file).
    ``spent`` holds the tickets we waited on that were released cleanly: closing one right
    after waking would wait for its owner's own close of it to finish, so they are closed
    when we leave. A forked child gets its copies closed: they are opened, closed and
    recorded here under ``forks.fork_lock``, so that no child is made in between."""

    def __init__(
        self, number: int, fd: int, shared: bool, kick: tuple[int, int] | None, file: str
    ) -> None:
        self.number = number
        self.fd = fd
        self.shared = shared
        self.file = file  # the ticket's name in the line's folder, prefix included
        self.kick = kick
        self.spent: list[int] = []
        self.pid = forks.pid()
        self.closed = False
        forget_after_fork(self)

    def inheritable_handles(self) -> list[int]:
        return [] if self.closed else [self.fd]

    def _fds(self) -> tuple[int, ...]:
        return (self.fd, *(self.kick or ()), *self.spent)

    def keep_spent(self, fd: int) -> bool:
        """Keep a released ticket we waited on, to close when we leave; False if we left."""
        with forks.fork_lock:
            if not self.closed:
                self.spent.append(fd)
            return not self.closed

    def close(self) -> bool:
        """Close the ticket (freeing its lock once no child holds a copy); False if it was.
        Its own descriptor is closed as it is marked closed, with no point in between where a
        Ctrl-C could come: marked but left open, it would hold the turn for as long as this
        process lives, and a release finished by releasing again would not close it. A child
        forked as it is marked closed would keep a copy of it, and so the turn, until it ends."""
        with forks.fork_lock:
            if self.closed:
                return False
            self.closed = True
            os.close(self.fd)
            for fd in self._fds()[1:]:
                os.close(fd)
        return True

    def after_fork_in_child(self) -> None:
        """The turn stays with the parent: drop this copy of its descriptors."""
        if not self.closed:
            self.closed = True
            for fd in self._fds():
                with suppress(OSError):
                    os.close(fd)


# --------------------------------------------------------------------------- waiting


def _flock_sleeping(fd: int, operation: int) -> None:
    """``flock(fd, operation)``, which may sleep until another holder lets go.

    In a program whose threads gevent made greenlets (``monkey.patch_all()``, as gevent's
    servers do), a sleeping ``flock`` would stop every greenlet of the process, the holder of
    the turn among them, for ever. There it sleeps in a real thread of its own instead, on a
    duplicate of ``fd`` (the same open file, so the same lock, and a descriptor nobody closes
    under it), while the calling greenlet waits in ``select`` (which gevent made a greenlet's
    wait) for a byte on a pipe that says the ``flock`` returned."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        fcntl.flock(fd, operation)
        return
    _GreenFlock(monkey, fd, operation).wait()


class _GreenFlock:
    """One ``flock`` in a real thread for a greenlet (see ``_flock_sleeping``). A greenlet
    that stops waiting (a ``gevent.Timeout``, a kill, Ctrl-C) leaves the pipe's read end to
    the thread, which closes it once its ``flock`` returns: nobody ever writes to a pipe
    without a reader, nor closes a descriptor another still uses."""

    def __init__(self, monkey: Any, fd: int, operation: int) -> None:
        self.lock = monkey.get_original("_thread", "allocate_lock")()  # never a greenlet's
        self.finished = self.abandoned = False
        self.error: OSError | None = None
        self.copy = os.dup(fd)
        self.done_read, self.done_write = os.pipe()
        try:
            monkey.get_original("_thread", "start_new_thread")(self._run, (operation,))
        except BaseException:
            for end in (self.copy, self.done_read, self.done_write):
                os.close(end)
            raise

    def _run(self, operation: int) -> None:
        try:
            fcntl.flock(self.copy, operation)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self.copy)
            os.write(self.done_write, b"x")
            os.close(self.done_write)
            with self.lock:
                self.finished = True
                give_up = self.abandoned
            if give_up:
                os.close(self.done_read)

    def wait(self) -> None:
        try:
            select.select([self.done_read], [], [])  # other greenlets run meanwhile
        finally:
            with self.lock:
                mine = self.finished
                self.abandoned = not mine
            if mine:
                os.close(self.done_read)
        if self.error is not None:
            raise self.error


class _Watch:
    """One thread blocked in ``flock(LOCK_SH)`` on a ticket, shared by every waiter on it.

    Threads are only used when a wait must be interruptible by a timeout or a cancel; a plain
    wait sleeps in ``flock`` on the caller's own thread. A watch outlives a timed-out wait only
    until its ticket goes (nothing can interrupt its ``flock``), and there is at most one per
    ticket in the process (see ``_Watches``).
    """

    def __init__(self, table: _Watches, key: tuple[int, int], fd: int) -> None:
        self.table = table
        self.key = key
        self.fired = False
        self.clean = False  # the ticket's owner emptied it first: a clean release
        self.subscribers: set[threading.Event] = set()
        thread = threading.Thread(target=self._run, args=(fd,), daemon=True, name="inturn-watch")
        thread.start()

    def _run(self, fd: int) -> None:
        clean = False
        try:
            _flock_sleeping(fd, fcntl.LOCK_SH)
            clean = os.fstat(fd).st_nlink == 0
        except OSError:
            pass
        finally:
            # Waiters first: this close waits for the leaver's own close of the file to end.
            self.table.fired(self, clean)
            os.close(fd)


class _Watches:
    """The watches of the whole process, by the ticket file's ``(st_dev, st_ino)``; a forked
    child starts with none (their threads stay behind).

    One table for every store, not one per store: a watch cannot be stopped before its ticket
    goes, so a program that tries for 10 ms on a fresh ``Line`` and retries later would
    otherwise leave a thread and a descriptor per try for as long as the holder holds. The
    file's identity, held open by the watch until it leaves the table, names the same kernel
    wait whichever folder path or store reached it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[tuple[int, int], _Watch] = {}
        forget_after_fork(self)

    def fired(self, watch: _Watch, clean: bool) -> None:
        with self.lock:
            watch.fired, watch.clean = True, clean
            if self.by_key.get(watch.key) is watch:
                del self.by_key[watch.key]
            subscribers = list(watch.subscribers)
        for event in subscribers:
            event.set()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.by_key = {}


PosixBackend.watches = _Watches()


class _KickWatch:
    """A thread asleep in ``select`` on a kick FIFO, setting ``woken`` when something arrives;
    stopped through a pipe of its own."""

    def __init__(self, fd: int, woken: threading.Event) -> None:
        self.fd = fd
        self.woken = woken
        self.kicked = False
        self._stop_read, self._stop_write = os.pipe()
        self._thread: threading.Thread | None = None
        self.rearm()

    def rearm(self) -> None:
        self.kicked = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="inturn-kick")
        self._thread.start()

    def _run(self) -> None:
        ready, _, _ = select.select([self.fd, self._stop_read], [], [])
        if self.fd in ready:
            self.kicked = True
            self.woken.set()

    def stop(self) -> None:
        os.write(self._stop_write, b"x")
        if self._thread is not None:
            self._thread.join()
        os.close(self._stop_read)
        os.close(self._stop_write)


def _unlock_and_close(fd: int) -> None:
    """Unlock the guard, then close it. ``flock`` belongs to the open file, which a child
    forked meanwhile shares: a close alone would leave the guard held while that child lives,
    and every joiner of the line would wait for it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class _GuardWait:
    """``flock(LOCK_EX)`` on the guard in a helper thread, for a caller that may only wait so
    long (or may be cancelled). If the caller gives up first, the helper unlocks and closes
    as soon as it gets the lock: the descriptor is the helper's alone from then on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.woken = threading.Event()
        self.lock = threading.Lock()
        self.finished = False
        self.got = False
        self.abandoned = False
        self.closed = False

    def _run(self) -> None:
        try:
            _flock_sleeping(self.fd, fcntl.LOCK_EX)
            got = True
        except OSError:
            got = False
        with self.lock:
            self.finished, self.got = True, got
            give_up = self.closed = self.abandoned
        if give_up:
            _unlock_and_close(self.fd)
        self.woken.set()

    def wait(self, patience: Patience) -> bool:
        """True once the lock is ours; False when patience ran out (given up)."""
        threading.Thread(target=self._run, daemon=True, name="inturn-guard").start()
        remaining = patience.remaining()
        timeout = None if remaining is None else max(0.0, remaining)
        if patience.cancel is None:
            self.woken.wait(timeout)
        else:
            with patience.cancel.linked(self.woken):
                self.woken.wait(timeout)
        with self.lock:
            if self.finished and self.got:
                return True
        self.give_up()
        return False

    def give_up(self) -> None:
        """Let the guard go, now if the helper has it, else as soon as it gets it: for a
        caller that will not use it (out of patience, or stopped by an exception, such as a
        Ctrl-C, even after ``wait`` said it was ours). Safe to call again: unlocking twice is
        harmless, and the descriptor is closed once."""
        with self.lock:
            self.abandoned = True
            close = self.finished and not self.closed
            if close:
                if self.got:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                self.closed = True
        if close:
            os.close(self.fd)


# --------------------------------------------------------------------------- one line


class PosixStore(UnixChannels, FolderStore):
    def __init__(self, backend: PosixBackend, name: str) -> None:
        super().__init__(backend, name)
        self._opening: FolderOpening | None = None  # the folder, as new uses open it
        self._open_lock = threading.Lock()
        self._list_lock = threading.Lock()
        self._watches = backend.watches
        forget_after_fork(self)

    def after_fork_in_child(self) -> None:
        """Locks another thread held at the fork would stay held in the child for ever, and
        the folder's descriptor is shared with the parent, read position included: the child
        opens the folder again for its own listings, and its own guard file (the opening
        closes the child's copies of the parent's)."""
        self._open_lock = threading.Lock()
        self._list_lock = threading.Lock()
        self._opening = None

    # -- folder and guard

    def _layout(self, root: str, file_name: str) -> tuple[str, str]:
        """A machine-wide line keeps its files side by side in the lines folder itself
        (``/tmp``, root's and sticky), named ``inturn:<line>:<entry>``: a folder of the
        line's own would belong to the user who made it first, who could then remove or
        rename anyone's ticket in it. Nobody but root and a file's owner can touch a file
        there."""
        if self.scope == "machine":
            return root, f"{MACHINE_PREFIX}{file_name}:"
        return super()._layout(root, file_name)

    def _exists_at_all(self) -> bool:
        if not self.prefix:
            return super()._exists_at_all()
        return os.path.lexists(os.path.join(self.folder, self.prefix + NAME_FILE))

    def _use(self) -> FolderOpening:
        """The folder as it is open now (opened if need be), with one more user, who must
        ``leave`` it: a forget meanwhile cannot close it under them."""
        with self._open_lock:
            opening = self._opening
            if opening is None:
                opening = self._opening = FolderOpening(self._open_folder())
            opening.enter()
        return opening

    @contextmanager
    def _folder(self) -> Iterator[int]:
        """The folder's descriptor, kept open until the block ends."""
        opening = self._use()
        try:
            yield opening.fd
        finally:
            opening.leave()

    def _reopen(self, opening: FolderOpening) -> None:
        """``opening``'s folder was removed: the next use opens the folder again. Only that
        opening is replaced: another thread may have opened the new folder already."""
        with self._open_lock:
            if self._opening is not opening:
                return
            self._opening = None
        opening.retire()

    def _open_folder(self) -> int:
        """The line's folder, made if needed; made again if ``inturn forget`` removed it
        between our making (or opening) it and publishing its name in it."""
        for _ in range(REMOVED_RETRIES):
            fd = self._open_folder_once()
            if fd is not None:
                return fd
        raise BackendError(f"{self.shown} keeps being removed while opening it: try again")

    def _open_folder_once(self) -> int | None:
        try:
            if self.create and not self.prefix:
                os.mkdir(self.folder, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EMFILE, errno.ENFILE):
                raise BackendError(os_problem(self.shown, exc)) from None  # a full disk, ...
            advice = "check the permissions of its parent, or use --dir / INTURN_DIR"
            raise BackendError(
                f"cannot create the line folder {self.shown}: {exc.strerror}"
                + ("; " + advice if exc.errno in (errno.EACCES, errno.EPERM) else "")
            ) from None
        try:
            fd = os.open(self.folder, _O_DIR)
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.create:
                return None  # forgotten between our mkdir and this open: make it again
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # too many open files, say
                raise BackendError(os_problem(self.shown, exc)) from None
            what = "a symbolic link" if os.path.islink(self.folder) else "not a folder"
            raise BackendError(
                f"{self.shown} is {what} where inturn keeps line {self.name!r}: remove it"
            ) from None
        try:
            named = True
            if self.create:  # a look from outside changes nothing
                if not self.prefix:  # the lines folder that holds the files was checked
                    self._check_folder(fd)
                named = self._ensure_name(fd)
        except BackendError:
            gone = os.fstat(fd).st_nlink == 0
            os.close(fd)
            if gone:
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        if not named:  # a forget is emptying the folder: open it (or its successor) again
            os.close(fd)
            return None
        return fd

    def _check_folder(self, fd: int) -> None:
        """A per-user line's folder must be ours."""
        uid = os.fstat(fd).st_uid
        if uid != os.getuid():
            raise BackendError(
                f"the line folder {self.shown} belongs to uid {uid}, not to you: remove it"
            )

    def _ensure_name(self, dir_fd: int) -> bool:
        """Publish ``.name`` (the line's exact name) if missing, all at once: a draft is
        written, then linked into place, so no reader ever finds it half written. False if
        the draft was removed before it was linked: a forget (outside the guard, as a folder
        is opened) is emptying the folder."""
        published = self.prefix + NAME_FILE
        try:
            os.stat(published, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            pass
        draft = f"{published}.{forks.pid()}.{threading.get_native_id()}"
        with suppress(FileNotFoundError):
            os.unlink(draft, dir_fd=dir_fd)
        try:
            fd = os.open(draft, _O_NEW, _PRIVATE, dir_fd=dir_fd)
        except OSError as exc:
            raise BackendError(_unusable(self.shown, NAME_FILE, exc)) from None
        try:
            write_all(fd, name_line(self.name))
            os.fchmod(fd, _readable_mode(self.scope))
            os.link(draft, published, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            pass  # another process published it first
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackendError(_unusable(self.shown, NAME_FILE, exc)) from None
        finally:
            os.close(fd)
            with suppress(OSError):
                os.unlink(draft, dir_fd=dir_fd)
        return True

    @contextmanager
    def _guard(self, patience: Patience) -> Iterator[int]:
        """The guard of the line's folder as it is now: taken again on the new folder when
        the line was forgotten while we waited for the old one's."""
        for _ in range(REMOVED_RETRIES):
            opening = self._use()
            try:
                taken = self._take_guard(opening, patience)
                if taken is not None:
                    try:
                        yield taken[0]
                    finally:
                        self._drop_guard(opening, taken[0], taken[1])
                    return
            finally:
                opening.leave()
            self._reopen(opening)
        raise BackendError(f"{self.shown} keeps being removed while opening it: try again")

    def _take_guard(self, opening: FolderOpening, patience: Patience) -> tuple[int, bool] | None:
        """The short lock under which numbers are taken and dead tickets removed, on
        ``opening``'s folder, taken: its open file, and whether it is the opening's kept one,
        to give to ``_drop_guard``; None if ``inturn forget`` removed that folder before we
        had it. Apart from ``_guard`` for the join, which takes it at every acquire, without
        a generator's cost.

        A forget removes the guard file before the folder, under its lock: a guard file
        found without a name once locked is a removed line's, and keeps nobody out of the
        line made anew. While we hold a live guard its folder stays, so it stays the store's
        folder too: only a removed folder is replaced.

        ``flock`` belongs to an open file, not to a thread: the opening keeps one open guard
        file for the thread that finds it free (the common case, without an open or a close),
        and any other thread of this process opens one of its own, so that threads never
        share the lock. A caller with a deadline or a cancel token waits for it in a helper
        thread, so that someone who holds the guard for long cannot make it hang; it then
        gets ``GuardTaken``.
        """
        kept = opening.guard_lock.acquire(blocking=False)
        fd: int | None = None
        waiting = False  # fd was handed to ``_wait_for_guard``, which closes it if it fails
        helpers: list[_GuardWait] = []
        try:
            fd = self._kept_guard(opening) if kept else self._open_guard(opening.fd)
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if kept:  # a wait that may be given up needs an open file of its own
                        fd = None
                        kept = False
                        opening.guard_lock.release()
                        fd = self._open_guard(opening.fd)
                    if fd is not None:
                        waiting = True
                        self._wait_for_guard(fd, patience, helpers)
        except BaseException:
            # An exception (a Ctrl-C) may come just after the guard was taken: it is let go
            # whether taken or not (unlocking a guard not held is harmless), or nobody could
            # join the line for as long as this process lives.
            if helpers:
                helpers[0].give_up()
            elif fd is not None and not waiting:
                self._drop_guard(opening, fd, kept)
            elif kept:
                opening.guard_lock.release()
            raise
        if fd is None:
            if kept:
                opening.guard_lock.release()
            return None
        try:
            if self.prefix or os.fstat(fd).st_nlink:
                return fd, kept
        except BaseException:
            self._drop_guard(opening, fd, kept)
            raise
        self._drop_guard(opening, fd, kept)
        return None

    def _drop_guard(self, opening: FolderOpening, fd: int, kept: bool) -> None:
        """Unlock the guard, then give the kept file back to the opening's other threads, or
        close our own, even if a Ctrl-C comes in between (see ``_join_here``)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            if kept:
                opening.guard_lock.release()
            else:
                os.close(fd)

    def _wait_for_guard(self, fd: int, patience: Patience, helpers: list[_GuardWait]) -> None:
        """Wait for the guard another process holds, on an open file of our own (``fd``,
        closed here if the wait fails). A helper thread that waits for it is put in
        ``helpers`` first, for the caller to give the guard up if it fails even so."""
        remaining = patience.remaining()
        taken = f"its guard {self._guard_shown()} is held by another process"
        if remaining is not None and remaining <= 0:
            os.close(fd)
            raise GuardTaken(taken)
        if patience.deadline is None and patience.cancel is None:
            try:
                _flock_sleeping(fd, fcntl.LOCK_EX)  # Ctrl-C raises KeyboardInterrupt here
            except BaseException:
                os.close(fd)
                raise
        else:
            helper = _GuardWait(fd)
            helpers.append(helper)
            if helper.wait(patience):
                return
            if patience.cancel is not None and patience.cancel.cancelled:
                raise Cancelled(f"stopped waiting for line {self.name!r}")
            raise GuardTaken(taken)

    def _kept_guard(self, opening: FolderOpening) -> int | None:
        """The opening's own open guard file (None if its folder was removed)."""
        fd = opening.kept_guard
        if fd is None:
            fd = opening.kept_guard = self._open_guard(opening.fd)
        return fd

    def _open_guard(self, dir_fd: int) -> int | None:
        """``.line`` in the folder ``dir_fd``: the guard of a line, and its counter; None if
        the folder was removed. Machine-wide lines share one guard, the lines folder itself
        (opened anew: ``flock`` belongs to an open file), which no user but root can remove
        or put another in place of, as they could a file of the guard's."""
        if self.prefix:
            try:
                return os.open(".", _O_DIR, dir_fd=dir_fd)
            except OSError as exc:
                raise BackendError(f"cannot use {self.shown}: {exc.strerror}") from None
        try:
            fd = os.open(COUNTER, os.O_RDWR | os.O_CREAT | _O_OPEN, _PRIVATE, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            if os.fstat(dir_fd).st_nlink == 0:
                return None
            raise BackendError(_unusable(self.shown, COUNTER, exc)) from None
        except OSError as exc:
            raise BackendError(_unusable(self.shown, COUNTER, exc)) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise BackendError(f"{self.shown}/{COUNTER} is not a regular file: remove it")
        if KEEP and not mode & KEEP:  # made by an inturn that made no files sticky
            with suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(mode) | KEEP)
        return fd

    def _guard_shown(self) -> str:
        return f"(a lock on {self.shown})" if self.prefix else self._where(COUNTER)

    def _opened(self) -> bool:
        return self._opening is not None

    def _entries(self) -> Entries:
        """One listing. ``os.listdir`` reads through a copy of the folder's descriptor, which
        shares one read position with every other copy: two threads listing at once would
        each see part of the folder, so listings of this store take turns."""
        with self._folder() as dir_fd:
            return self._entries_in(dir_fd)

    def _entries_in(self, dir_fd: int) -> Entries:
        """One listing of the folder ``dir_fd``, which the caller keeps open."""
        with self._list_lock:
            names = os.listdir(dir_fd)
        return read_entries(self._own(names))

    def _own(self, names: list[str]) -> list[str]:
        """The line's entries among a listing of its folder, without the prefix."""
        prefix = self.prefix
        if not prefix:
            return names
        return [name[len(prefix) :] for name in names if name.startswith(prefix)]

    # -- files

    def _open(self, entry: str) -> int | None:
        """One of the line's files, read-only; None when it is gone or is not a file we made."""
        opening = self._use()
        try:
            fd = os.open(self.prefix + entry, _O_READ, dir_fd=opening.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                warn_once(f"ignoring {self._where(entry)}: not a file inturn can use")
                return None
            raise
        finally:
            opening.leave()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            warn_once(f"ignoring {self._where(entry)}: not a regular file")
            return None
        return fd

    def _read(self, entry: str) -> tuple[bytes, str | None] | None:
        try:
            fd = self._open(entry)
        except PermissionError:
            return None
        if fd is None:
            return None
        try:
            return _read_all(fd), user_name(os.fstat(fd).st_uid)
        finally:
            os.close(fd)

    def _unreadable_owner(self, entry: str) -> str | None:
        name = self.prefix + entry
        with self._folder() as dir_fd:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                return None
            if not stat.S_ISREG(info.st_mode) or os.access(
                name, os.R_OK, dir_fd=dir_fd, effective_ids=True
            ):
                return None
        return user_name(info.st_uid)

    def _create(self, entry: str, data: bytes) -> bool:
        try:
            with self._folder() as dir_fd:
                fd = os.open(self.prefix + entry, _O_NEW, _PRIVATE, dir_fd=dir_fd)
        except FileExistsError:
            return False
        try:
            write_all(fd, data)
            os.fchmod(fd, _readable_mode(self.scope))
        finally:
            os.close(fd)
        return True

    def _remove(self, entry: str) -> None:
        with self._folder() as dir_fd:
            os.unlink(self.prefix + entry, dir_fd=dir_fd)

    def _exists(self, entry: str) -> bool:
        try:
            with self._folder() as dir_fd:
                os.stat(self.prefix + entry, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _link(self, entry: str, to: str) -> bool:
        try:
            with self._folder() as dir_fd:
                os.link(
                    self.prefix + entry,
                    self.prefix + to,
                    src_dir_fd=dir_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
        except FileExistsError:
            return True  # marked already
        except OSError:
            return False  # not ours to link (fs.protected_hardlinks): the caller copies it
        return True

    def _open_ticket(self, number: int) -> int | None:
        """Ticket ``number``'s file, read-only, under its exclusive or its shared name. A
        joiner makes one of them; where both are there, someone else put one beside it (as
        another user may in a sticky folder), and the one whose lock is held is the ticket:
        a file planted beside a live ticket must not pass for it, nor make it look dead."""
        exclusive, shared = ticket_files(number)
        fd = self._open(exclusive)
        try:
            other = self._open(shared)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        if fd is None or other is None:
            return fd if fd is not None else other
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(other)
            return fd  # held: the exclusive name is the ticket
        except BaseException:
            os.close(fd)
            os.close(other)
            raise
        os.close(fd)  # free (closing it drops the probe's lock): the other one, held or not
        return other

    def _dead(self, number: int) -> bool:
        try:
            fd = self._open_ticket(number)
        except PermissionError:
            return False  # not readable by us: never take it for dead
        if fd is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner holds it (a shared lock of a look or a waiter does not count)
        finally:
            os.close(fd)
        return True

    def _read_counter(self, entry: str, guard: int) -> bytes:
        if entry == COUNTER and not self.prefix:  # the guard file itself
            return os.pread(guard, 64, 0)
        found = self._read(entry)
        return found[0][:64] if found else b""

    def _write_counter(self, entry: str, text: bytes, guard: int) -> None:
        if entry == COUNTER:  # a per-user line's: the guard file itself
            os.pwrite(guard, text, 0)
            return
        flags = os.O_WRONLY | os.O_CREAT | _O_OPEN
        try:
            with self._folder() as dir_fd:
                fd = os.open(self.prefix + entry, flags, _PRIVATE, dir_fd=dir_fd)
        except PermissionError:
            raise BackendError(self._not_our_counter(entry)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise BackendError(self._not_our_counter(entry))
            readable = _readable_mode(self.scope)
            if stat.S_IMODE(info.st_mode) != readable:
                os.fchmod(fd, readable)
            os.pwrite(fd, text, 0)
        finally:
            os.close(fd)

    def _not_our_counter(self, entry: str) -> str:
        return (
            f"{self._where(entry)} is not a counter of yours (someone else made it): remove "
            "it, or have root remove it"
        )

    def _counter_owner(self) -> int:
        return os.getuid()

    # -- LineStore

    def join(self, me: Ticket, patience: Patience) -> tuple[PosixMembership, View]:
        for _ in range(REMOVED_RETRIES):
            joined = self._join_here(me, patience)
            if joined is not None:
                return joined
        raise BackendError(f"{self.shown} keeps being removed while joining: try again")

    def _refresh(self) -> None:
        if self.prefix:  # a machine-wide line's folder (``/tmp``) is never removed
            return
        with self._open_lock:
            opening = self._opening
            if opening is None:
                return
            opening.enter()
        try:
            gone = os.fstat(opening.fd).st_nlink == 0
        finally:
            opening.leave()
        if gone:
            self._reopen(opening)

    def _join_here(self, me: Ticket, patience: Patience) -> tuple[PosixMembership, View] | None:
        """Join, or None if the folder went away (``inturn forget``) before we had its guard:
        the next try opens the folder again. The ticket is made through the descriptor the
        guard was opened through, so in the folder that guard keeps.

        Any exception (Ctrl-C too) after the ticket is made takes it away again, up to the
        return: a ticket that no membership came back for would stay locked for good."""
        made: tuple[int, str] | None = None
        membership = None
        opening = self._use()
        try:
            try:
                with os_errors(self.shown):
                    taken = self._take_guard(opening, patience)
                    if taken is None:
                        self._reopen(opening)
                        return None
                    guard, kept = taken
                    try:  # at every acquire: no generator-based context manager
                        dir_fd = opening.fd
                        self._ensure_name(dir_fd)  # the name again, if a forget was cut short
                        entries = self._entries_in(dir_fd)
                        first = self._next_number(entries, guard)
                        # Under ``forks.fork_lock``, which takes no other lock: a child forked
                        # in between would keep the ticket's lock, so the turn.
                        with forks.fork_lock:
                            fd, number, file = self._create_ticket(dir_fd, first, me.shared)
                            made = (fd, file)
                            membership = PosixMembership(number, fd, me.shared, None, file)
                        # Private until locked: nobody else can open it in time to lock it
                        # first. A look by our own user may hold a shared lock for an instant:
                        # wait it out.
                        _flock_sleeping(fd, fcntl.LOCK_EX)
                        write_all(fd, header_line(me))
                        if self.scope == "machine":
                            os.fchmod(fd, _readable_mode(self.scope))
                        if me.newest_wins:  # before anyone sees the ticket: no kick is lost
                            self._open_kick(membership)
                        self._save_number(number + 1, guard)
                        self._tidy_litter(entries)
                    finally:
                        # ``_drop_guard`` written out: a Ctrl-C as a function is entered would
                        # leave the guard held, and every joiner of the line waiting.
                        try:
                            fcntl.flock(guard, fcntl.LOCK_UN)
                        finally:
                            if kept:
                                opening.guard_lock.release()
                            else:
                                os.close(guard)
            finally:
                opening.leave()
            ahead = tuple(n for n in entries.tickets if n < number)
            return membership, View(ahead, entries.markers, shared=entries.shared)
        except BaseException:
            if made is not None:
                # unlinked, then closed, as in ``leave``; the folder stays while the ticket does
                with suppress(OSError, BackendError), self._folder() as dir_fd:
                    os.unlink(made[1], dir_fd=dir_fd)
                if membership is not None:
                    membership.close()
                else:
                    os.close(made[0])
            raise

    def forget(self, patience: Patience) -> bool:
        self._refresh()
        for _ in range(REMOVED_RETRIES):
            if not self._exists_at_all():
                return True  # never used, or forgotten by someone else meanwhile
            opening = self._use()
            try:
                with os_errors(self.shown):
                    taken = self._take_guard(opening, patience)
                    if taken is not None:
                        try:
                            if not self._forget_here(opening.fd):
                                return False
                        finally:
                            self._drop_guard(opening, taken[0], taken[1])
            finally:
                opening.leave()
            if taken is not None and self.prefix:
                return True  # its files were all it had
            self._reopen(opening)  # removed, by us or (if no guard) by someone else
            if taken is not None:
                return True
        raise BackendError(f"{self.shown} keeps being removed while forgetting it: try again")

    def _forget_here(self, dir_fd: int) -> bool:
        """Under the guard of the folder ``dir_fd``: remove the line, or False if in use. The
        guard file goes last, just before the folder: whoever waits for it then finds it
        removed, and knows to open the line again. Whoever opened the folder before it went
        may make a guard file anew there and join, as the folder is not removed then: they
        find the name gone and put it back."""
        entries = self._entries_in(dir_fd)
        if not all(self._dead(number) for number in entries.tickets):
            return False  # someone holds or waits
        self._refuse_half_forgetting(dir_fd)
        for number in entries.tickets:
            self._bury_dead(number)
        with self._list_lock:
            names = os.listdir(dir_fd)
        own = self._own(names)  # markers, claims, counters, kicks, name, guard
        for entry in sorted(own, key=lambda entry: entry == COUNTER):
            try:
                os.unlink(self.prefix + entry, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except PermissionError:  # another user's, made since the check above
                raise BackendError(
                    f"cannot forget line {self.name!r}: {self._where(entry)} belongs to "
                    "another user, and the files before it are gone: only root can forget "
                    "it now"
                ) from None
        if not self.prefix:
            try:
                os.rmdir(self.folder)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False  # joined through the folder before it went: in use again
                raise BackendError(f"cannot remove {self.shown}: {exc.strerror}") from None
        return True

    def _bury_dead(self, number: int) -> None:
        """As every folder's, and the FIFO of a dead ``newest_wins`` ticket goes with it:
        nobody else would remove it, as its number is never handed out again."""
        super()._bury_dead(number)
        with suppress(OSError):  # gone, or another user's in a sticky folder
            self._remove(kick_file(number))

    def _refuse_half_forgetting(self, dir_fd: int) -> None:
        """A line that could not be removed whole is refused before anything is removed:
        removing some of its files and stopping at one would leave a line without its name,
        hidden from ``status``. So are a folder this user may not write, a folder among the
        line's files (made by someone else, under a name of inturn's), and on a machine-wide
        line another user's file, which its sticky folder lets only its owner (or root, or
        the folder's owner) remove."""
        if not os.access(self.folder, os.W_OK):
            raise BackendError(
                f"cannot forget line {self.name!r}: you may not write in {self.shown}; nothing "
                "was removed"
            )
        me = os.geteuid()
        others_count = bool(self.prefix) and me != 0 and os.fstat(dir_fd).st_uid != me
        with self._list_lock:
            entries = self._own(os.listdir(dir_fd))
        for entry in entries:
            try:
                info = os.stat(self.prefix + entry, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                raise BackendError(
                    f"cannot forget line {self.name!r}: {self._where(entry)} is a folder, not a "
                    "file inturn made; nothing was removed (remove it, then forget the line)"
                )
            owner = info.st_uid
            if others_count and owner != me:
                raise BackendError(
                    f"cannot forget line {self.name!r}: {self._where(entry)} belongs to "
                    f"{user_name(owner)}, and only root may remove another user's files "
                    "from it; nothing was removed"
                )

    def _create_ticket(self, dir_fd: int, number: int, shared: bool) -> tuple[int, int, str]:
        """The new ticket's descriptor, number and name in the folder (prefix included)."""
        for _ in range(1000):
            try:
                name = self.prefix + own_ticket_file(self._check_number(number), shared)
                return os.open(name, _O_NEW, _PRIVATE, dir_fd=dir_fd), number, name
            except FileExistsError:
                number += 1  # a leftover or planted file: never reuse its number
        raise BackendError(f"{self.shown} is full of foreign files: clean it up")

    def _open_kick(self, me: PosixMembership) -> None:
        """The FIFO through which a later ``newest_wins`` arrival replaces this ticket:
        writable by every user of the line, read (and held open for writing, so that it never
        reads end-of-file) by us only. Opened into ``me.kick`` under ``forks.fork_lock``, and
        nothing else there: a thread that forks may hold the folder's locks."""
        name = self.prefix + kick_file(me.number)
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        with self._folder() as dir_fd:
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)  # a leftover of a number never handed out
            os.mkfifo(name, _PRIVATE, dir_fd=dir_fd)
            with forks.fork_lock:  # a child forked in between would keep copies of both
                reader = os.open(name, os.O_RDONLY | flags, dir_fd=dir_fd)
                writer = os.open(name, os.O_WRONLY | flags, dir_fd=dir_fd)
                me.kick = (reader, writer)
        if self.scope == "machine":
            os.fchmod(reader, 0o622 | KEEP)

    def replace(self, number: int, me: Membership) -> None:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            with self._folder() as dir_fd:
                fd = os.open(self.prefix + kick_file(number), flags, dir_fd=dir_fd)
        except OSError:
            return  # it left (no FIFO, or nobody reading it) or is not a FIFO of ours to write
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                with suppress(OSError):
                    os.write(fd, f"{me.number}\n".encode())
        finally:
            os.close(fd)

    def _replaced_by(self, me: PosixMembership) -> int | None:
        """A later, live ticket that kicked us, if any: what arrived on our FIFO is only a
        claim, so it must name a ticket behind us whose owner still holds it."""
        assert me.kick is not None
        data = b""
        with suppress(BlockingIOError):
            while chunk := os.read(me.kick[0], 4096):
                data += chunk
        for word in data.split():
            if word.isdigit() and int(word) > me.number and not self._dead(int(word)):
                return int(word)
        return None

    def wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool = False,
    ) -> Woke | None:
        kick = me.kick if isinstance(me, PosixMembership) else None
        try:  # the next holder returns through here: no context manager
            if (
                len(numbers) == 1
                and timeout is None
                and kick is None
                and (cancel is None or cancel.may_sleep_here())
            ):
                return self._wait_here(numbers[0], me, cancel)
            return self._wait_in_threads(numbers, timeout, cancel, me, kick)
        except OSError as exc:
            raise BackendError(os_problem(self.shown, exc)) from None

    def _open_to_wait(self, number: int) -> int | None:
        try:
            return self._open_ticket(number)
        except PermissionError:
            raise BackendError(
                f"cannot wait for ticket {number} of line {self.name!r}: "
                f"{self._where(ticket_files(number)[0])} is not readable by you (made by "
                "another user with an older inturn?); ask its owner to remove it once it is done"
            ) from None

    def _wait_here(self, number: int, me: Membership | None, cancel: CancelToken | None) -> Woke:
        """Sleep on this thread; a ``cancel`` given is one that a signal handler of this
        thread ends by raising (``CancelToken.interrupt``)."""
        fd = self._open_to_wait(number)
        if fd is None:
            return Woke()
        clean = False
        try:
            if cancel is None:
                _flock_sleeping(fd, fcntl.LOCK_SH)  # Ctrl-C raises KeyboardInterrupt right here
            else:
                cancel.sleeping = True
                try:
                    if cancel.cancelled:  # before ``sleeping`` was set: nobody will interrupt
                        raise Cancelled(f"stopped waiting for line {self.name!r}")
                    _flock_sleeping(fd, fcntl.LOCK_SH)
                finally:
                    cancel.sleeping = False
            clean = os.fstat(fd).st_nlink == 0  # removed by its owner: a clean release
        finally:
            if not (clean and isinstance(me, PosixMembership) and me.keep_spent(fd)):
                os.close(fd)
        return Woke(left=(number,) if clean else ())

    def _wait_in_threads(
        self,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        me: Membership | None,
        kick: tuple[int, int] | None,
    ) -> Woke | None:
        woken = threading.Event()
        watches: list[_Watch] = []
        table = self._watches
        kicks = _KickWatch(kick[0], woken) if kick is not None else None
        try:
            for number in numbers:
                fd = self._open_to_wait(number)
                if fd is None:
                    return Woke()
                info = os.fstat(fd)
                key = (info.st_dev, info.st_ino)
                with table.lock:
                    watch = table.by_key.get(key)
                    if watch is None:
                        watch = table.by_key[key] = _Watch(table, key, fd)
                    else:
                        os.close(fd)
                    watch.subscribers.add(woken)
                    watches.append(watch)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                fired = wait_woken(
                    woken,
                    None if deadline is None else max(0.0, deadline - time.monotonic()),
                    cancel,
                    lambda: any(w.fired for w in watches) or (kicks is not None and kicks.kicked),
                    self.name,
                )
                if kicks is None or not kicks.kicked:
                    break
                assert isinstance(me, PosixMembership)
                by = self._replaced_by(me)
                if by is not None:
                    raise Replaced(f"ticket {by} replaced this one in line {self.name!r}")
                woken.clear()  # a false kick: wait on (a watch that fired meanwhile counts)
                if any(w.fired for w in watches):
                    break
                kicks.rearm()
            if not fired:
                return None
            return Woke(
                left=tuple(n for n, w in zip(numbers, watches, strict=True) if w.fired and w.clean)
            )
        finally:
            if kicks is not None:
                kicks.stop()
            with table.lock:
                for watch in watches:
                    watch.subscribers.discard(woken)

    def leave(self, me: Membership) -> None:
        assert isinstance(me, PosixMembership)
        if me.closed:
            return
        if me.pid == forks.pid():
            # Unlink before unlocking: nobody may see the lock free while the file is ours,
            # and a waiter woken by the unlock sees it has no name left (a clean release).
            # The next holder's wait ends here: plain try/except, no context managers.
            opening = self._use()
            try:
                try:
                    os.unlink(me.file, dir_fd=opening.fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise BackendError(os_problem(self.shown, exc)) from None
                if me.kick is not None:
                    with suppress(OSError):
                        os.unlink(self.prefix + kick_file(me.number), dir_fd=opening.fd)
            finally:
                opening.leave()
        me.close()

    def close(self) -> None:
        with self._open_lock:
            opening, self._opening = self._opening, None
        if opening is not None:
            opening.retire()

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()


def _unusable(folder: str, entry: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{folder}/{entry} is a symbolic link where inturn keeps its own file: remove it"
    if exc.errno in (errno.EISDIR, errno.ENXIO):  # a folder, a socket
        return f"{folder}/{entry} is not a regular file: remove it"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write in {folder} ({exc.strerror}): fix its permissions, "
            "or choose another folder with --dir or INTURN_DIR"
        )
    if exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE):
        return os_problem(folder, exc)
    return f"cannot use {folder}/{entry}: {exc.strerror}"
