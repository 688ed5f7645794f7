"""The local backend for Linux, macOS and other POSIX systems: a folder per line, a file per ticket.

Each ticket is a file ``<number>.ticket`` whose owner holds ``flock(LOCK_EX)`` on it from joining
until leaving, so the kernel frees it the instant the owner dies: liveness never comes from a
pid. A waiter sleeps in ``flock(LOCK_SH)`` on the ticket ahead of it and the kernel wakes it when
that lock goes. Ticket numbers come from the counter file ``.line``, whose ``flock`` is also the
short guard under which tickets are created and dead ones removed.

Every path is opened relative to the line's folder descriptor with ``O_NOFOLLOW``, and files are
created with ``O_EXCL``, so symlinks or files planted by someone else are refused, never followed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from .errors import BackendError
from .layout import (
    COUNTER,
    NAME_FILE,
    marker_file,
    next_number,
    resolve_root,
    snapshot_of,
    ticket_file,
)
from .names import names_in, safe_file_name
from .records import LineStatus, Ticket, dumps_line, parse_record, warn_once
from .store import Backend, CancelToken, LineStore, Membership, Snapshot, wait_woken

SHM = "/dev/shm"

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# --------------------------------------------------------------------------- folders


def default_root(scope: str) -> str:
    """Where lines live when neither ``INTURN_DIR`` nor ``directory=`` says."""
    if scope == "machine":
        return os.path.join(_shared_tmp() or "/tmp", "inturn")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            info = os.stat(runtime)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                return os.path.join(runtime, "inturn")
        except OSError:
            pass
    shared = _shared_tmp()
    if shared is None:
        import tempfile  # rarely needed: most systems have /dev/shm or XDG_RUNTIME_DIR

        shared = tempfile.gettempdir()
    return os.path.join(shared, f"inturn-{os.getuid()}")


def _shared_tmp() -> str | None:
    """``/dev/shm`` where it is a sticky, world-writable folder (Linux): tickets are created
    and removed on every turn, which costs a journal write on a disk-backed ``/tmp``."""
    try:
        info = os.stat(SHM)
    except OSError:
        return None
    usable = stat.S_ISDIR(info.st_mode) and info.st_mode & 0o1002 == 0o1002
    return SHM if usable else None


def _dir_mode(scope: str) -> int:
    return 0o1777 if scope == "machine" else 0o700


def _file_mode(scope: str) -> int:
    return 0o666 if scope == "machine" else 0o600


def prepare_root(path: str, scope: str, explicit: bool) -> None:
    """Create the lines folder if needed and check that it is safe to use."""
    try:
        if not os.path.lexists(path):
            if explicit:
                os.makedirs(os.path.dirname(path), exist_ok=True)
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
        raise BackendError(f"cannot create the lines folder {path}: {exc.strerror}") from None
    info = os.lstat(path)
    if explicit:
        info = os.stat(path)  # a folder the user named may be reached through a link
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
    if scope == "machine" and not explicit and (info.st_mode & 0o1002) != 0o1002:
        if info.st_uid == uid:
            os.chmod(path, 0o1777)
        else:
            raise BackendError(
                f"{path} is not a world-writable sticky folder (mode "
                f"{stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}): ask its owner or "
                f"an administrator to run 'chmod 1777 {path}'"
            )
    if not os.access(path, os.W_OK | os.X_OK):
        raise BackendError(
            f"the lines folder {path} is not writable by you: fix its permissions, "
            "or choose another with --dir or INTURN_DIR"
        )


class FolderBackend(Backend):
    """Lines kept in a folder on this machine."""

    def __init__(self, scope: str = "user", directory: str | None = None) -> None:
        self.root, explicit = resolve_root(scope, directory, default_root)
        self.scope = scope
        prepare_root(self.root, scope, explicit)

    @property
    def where(self) -> str:
        return self.root

    def line(self, name: str) -> FolderLine:
        return FolderLine(self, name)

    def names(self) -> list[str]:
        return names_in(self.root, _read_name)


def _read_name(folder: str) -> str | None:
    try:
        fd = os.open(os.path.join(folder, NAME_FILE), _O_READ)
    except OSError:
        return None
    try:
        data = json.loads(os.read(fd, 65536).decode())
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) else None
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- tickets


_memberships: weakref.WeakSet[PosixMembership] = weakref.WeakSet()


class PosixMembership(Membership):
    """Our ticket file, open and locked. A forked child gets its copy closed (see ``_forked``)."""

    def __init__(self, number: int, fd: int) -> None:
        self.number = number
        self.fd = fd
        self.pid = os.getpid()
        self.closed = False
        _memberships.add(self)

    def inheritable_handles(self) -> list[int]:
        return [] if self.closed else [self.fd]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def _forked() -> None:
    """In a child made by ``fork()``: drop the parent's turns; they stay with the parent."""
    for member in list(_memberships):
        with suppress(OSError):
            member.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


# --------------------------------------------------------------------------- waiting


class _Watch:
    """One thread blocked in ``flock(LOCK_SH)`` on a ticket, shared by every waiter on it.

    Threads are only used when a wait must be interruptible by a timeout or a cancel; a plain
    wait sleeps in ``flock`` on the caller's own thread. A watch outlives a timed-out wait only
    until its ticket goes, and there is at most one per ticket.
    """

    def __init__(self, key: tuple[int, int], fd: int) -> None:
        self.key = key
        self.fired = False
        self.subscribers: set[threading.Event] = set()
        thread = threading.Thread(target=self._run, args=(fd,), daemon=True, name="inturn-watch")
        thread.start()

    def _run(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass
        finally:
            os.close(fd)
            with _watch_lock:
                self.fired = True
                _watches.pop(self.key, None)
                for event in self.subscribers:
                    event.set()


_watches: dict[tuple[int, int], _Watch] = {}
_watch_lock = threading.Lock()


# --------------------------------------------------------------------------- one line


class FolderLine(LineStore):
    def __init__(self, backend: FolderBackend, name: str) -> None:
        self.name = name
        self.scope = backend.scope
        self.folder = os.path.join(backend.root, safe_file_name(name))
        self._dir_fd: int | None = None
        self._open_lock = threading.Lock()
        self._guard_lock = threading.Lock()
        self._counter: tuple[int, int] | None = None  # (pid, fd) of the open counter file
        # Tickets this process saw removed (unlinked) while it waited on them: they can only
        # be gone for good, since numbers are never reused.
        self._gone: set[int] = set()

    @property
    def where(self) -> str:
        return self.folder

    # -- folder and guard

    def _dir(self) -> int:
        fd = self._dir_fd
        if fd is None:
            with self._open_lock:
                if self._dir_fd is None:
                    self._dir_fd = self._open_folder()
                fd = self._dir_fd
        return fd

    def _open_folder(self) -> int:
        created = False
        try:
            os.mkdir(self.folder, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise BackendError(
                f"cannot create the line folder {self.folder}: {exc.strerror}; "
                "check the permissions of its parent, or use --dir / INTURN_DIR"
            ) from None
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            what = exc.strerror or "unusable"
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                link = os.path.islink(self.folder)
                what = "a symbolic link" if link else "not a folder"
            raise BackendError(
                f"{self.folder} is {what} where inturn keeps line {self.name!r}: remove it"
            ) from None
        info = os.fstat(fd)
        if created and self.scope == "machine":
            os.fchmod(fd, 0o777)
        elif self.scope == "user" and info.st_uid != os.getuid():
            os.close(fd)
            raise BackendError(
                f"the line folder {self.folder} belongs to uid {info.st_uid}, not to you: remove it"
            )
        if created:
            self._write_name(fd)
        return fd

    def _write_name(self, dir_fd: int) -> None:
        try:
            fd = os.open(NAME_FILE, _O_NEW, _file_mode(self.scope), dir_fd=dir_fd)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as out:
            out.write(dumps_line({"name": self.name}))
        if self.scope == "machine":
            with suppress(OSError):
                os.chmod(NAME_FILE, 0o666, dir_fd=dir_fd, follow_symlinks=False)

    @contextmanager
    def _guard(self) -> Iterator[int]:
        """The short lock under which numbers are taken and dead tickets removed.

        The counter file stays open between calls; a thread lock keeps this process's
        threads apart, since they share that one open file and ``flock`` would not.
        """
        with self._guard_lock:
            fd = self._counter_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _counter_fd(self) -> int:
        if self._counter is not None and self._counter[0] == os.getpid():
            return self._counter[1]
        # First use, or first use in a forked child: the parent's open file is not ours.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(COUNTER, flags, _file_mode(self.scope), dir_fd=self._dir())
        except OSError as exc:
            raise BackendError(_unusable(self.folder, COUNTER, exc)) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise BackendError(f"{self.folder}/{COUNTER} is not a regular file: remove it")
        if self.scope == "machine" and info.st_uid == os.getuid():
            with suppress(OSError):
                os.fchmod(fd, 0o666)
        if self._counter is not None and self._counter[0] == os.getpid():
            os.close(self._counter[1])
        self._counter = (os.getpid(), fd)
        return fd

    def _next_number(self, fd: int, dir_fd: int) -> int:
        where = f"{self.folder}/{COUNTER}"
        return next_number(os.pread(fd, 64, 0), where, lambda: self._scan(dir_fd))

    # -- LineStore

    def join(self, me: Ticket) -> PosixMembership:
        with self._guard() as counter:
            dir_fd = self._dir()
            number = self._next_number(counter, dir_fd)
            for _ in range(1000):
                try:
                    fd = os.open(ticket_file(number), _O_NEW, 0o644, dir_fd=dir_fd)
                    break
                except FileExistsError:
                    number += 1  # a leftover or planted file: never reuse its number
                except OSError as exc:
                    raise BackendError(_unusable(self.folder, ticket_file(number), exc)) from None
            else:
                raise BackendError(f"{self.folder} is full of foreign files: clean it up")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, dumps_line(me.header()))
                os.pwrite(counter, f"{number + 1}\n".encode(), 0)
            except BaseException:
                with suppress(OSError):
                    os.unlink(ticket_file(number), dir_fd=dir_fd)
                os.close(fd)
                raise
        return PosixMembership(number, fd)

    def snapshot(self) -> Snapshot:
        found = self._scan(self._dir())
        self._gone.intersection_update(found.tickets)  # forget what can no longer be asked
        return found

    def status(self) -> LineStatus:
        """Looking at a line that nobody has used yet must not create it."""
        if self._dir_fd is None and not os.path.lexists(self.folder):
            return LineStatus(self.name, scope=self.scope, where=self.folder)
        return super().status()

    def _scan(self, dir_fd: int) -> Snapshot:
        return snapshot_of(os.listdir(dir_fd))

    def _open_ticket(self, number: int) -> int | None:
        """Our ticket file, read-only; None when it is gone or is not a file we made."""
        name = ticket_file(number)
        try:
            fd = os.open(name, _O_READ, dir_fd=self._dir())
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EPERM):
                warn_once(f"ignoring {self.folder}/{name}: not a ticket inturn can use")
                return None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            warn_once(f"ignoring {self.folder}/{name}: not a regular file")
            return None
        return fd

    def alive(self, numbers: Sequence[int]) -> list[bool]:
        result = []
        for number in numbers:
            if number in self._gone:
                result.append(False)
                continue
            fd = self._open_ticket(number)
            if fd is None:
                result.append(False)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                result.append(False)  # nobody holds it exclusively: its owner is gone
            except BlockingIOError:
                result.append(True)
            finally:
                os.close(fd)
        return result

    def bury(self, number: int) -> bool:
        if number in self._gone:
            self._gone.discard(number)  # its file is gone for good: nothing to bury
            return False
        name = ticket_file(number)
        with self._guard():
            dir_fd = self._dir()
            fd = self._open_ticket(number)
            if fd is None:
                return False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # alive after all, or a waiter is just waking on it
                try:
                    same = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
                except FileNotFoundError:
                    return False
                if same != os.fstat(fd).st_ino:
                    return False
                record = parse_record(number, os.pread(fd, 65536, 0), f"{self.folder}/{name}")
                try:
                    if record is not None and record.holding:
                        os.rename(name, marker_file(number), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                        return True
                    os.unlink(name, dir_fd=dir_fd)
                except OSError as exc:
                    warn_once(f"cannot remove dead ticket {self.folder}/{name}: {exc.strerror}")
                return False
            finally:
                os.close(fd)

    def wait_any(
        self, numbers: Sequence[int], timeout: float | None, cancel: CancelToken | None
    ) -> bool:
        if len(numbers) == 1 and timeout is None and cancel is None:
            fd = self._open_ticket(numbers[0])
            if fd is None:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # Ctrl-C raises KeyboardInterrupt right here
                if os.fstat(fd).st_nlink == 0:
                    self._gone.add(numbers[0])  # removed by its owner: no need to look again
            finally:
                os.close(fd)
            return True
        return self._wait_in_threads(numbers, timeout, cancel)

    def _wait_in_threads(
        self, numbers: Sequence[int], timeout: float | None, cancel: CancelToken | None
    ) -> bool:
        woken = threading.Event()
        watches: list[_Watch] = []
        try:
            for number in numbers:
                fd = self._open_ticket(number)
                if fd is None:
                    return True
                info = os.fstat(fd)
                key = (info.st_dev, info.st_ino)
                with _watch_lock:
                    watch = _watches.get(key)
                    if watch is None:
                        watch = _watches[key] = _Watch(key, fd)
                    else:
                        os.close(fd)
                    watch.subscribers.add(woken)
                    watches.append(watch)
                    if watch.fired:
                        return True
            return wait_woken(
                woken, timeout, cancel, lambda: any(w.fired for w in watches), self.name
            )
        finally:
            with _watch_lock:
                for watch in watches:
                    watch.subscribers.discard(woken)

    def mark_acquired(self, me: Membership, when: float) -> None:
        assert isinstance(me, PosixMembership)
        os.write(me.fd, b'{"acquired_at":%r}\n' % when)

    def claim_abandoned(self) -> Ticket | None:
        dir_fd = self._dir()
        for number in self._scan(dir_fd).abandoned:
            name = marker_file(number)
            try:
                fd = os.open(name, _O_READ, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                record = parse_record(number, os.read(fd, 65536), f"{self.folder}/{name}")
            finally:
                os.close(fd)
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # another new holder claimed it first
            except OSError as exc:
                warn_once(f"cannot remove {self.folder}/{name}: {exc.strerror}")
                continue
            return record
        return None

    def leave(self, me: Membership) -> None:
        assert isinstance(me, PosixMembership)
        if me.closed:
            return
        if me.pid == os.getpid():
            # Unlink first, then unlock: nobody may see the lock free while the file is ours.
            with suppress(FileNotFoundError):
                os.unlink(ticket_file(me.number), dir_fd=self._dir())
        me.close()

    def read(self, numbers: Sequence[int]) -> list[Ticket | None]:
        result: list[Ticket | None] = []
        for number in numbers:
            fd = self._open_ticket(number)
            if fd is None:
                result.append(None)
                continue
            try:
                data = os.read(fd, 65536)
            finally:
                os.close(fd)
            result.append(parse_record(number, data, f"{self.folder}/{ticket_file(number)}"))
        return result

    def close(self) -> None:
        with self._guard_lock:
            if self._counter is not None and self._counter[0] == os.getpid():
                os.close(self._counter[1])
            self._counter = None
        with self._open_lock:
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()


def _unusable(folder: str, entry: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{folder}/{entry} is a symbolic link where inturn keeps its own file: remove it"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write in {folder} ({exc.strerror}): fix its permissions, "
            "or choose another folder with --dir or INTURN_DIR"
        )
    return f"cannot use {folder}/{entry}: {exc.strerror}"
