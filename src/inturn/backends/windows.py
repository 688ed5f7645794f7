"""The local backend for Windows: a named kernel mutex per ticket, a folder for order and metadata.

This is the classic single-instance recipe done right. ``CreateMutexW(NULL, TRUE, name)`` creates
a mutex owned by the calling *thread*; when the owner ends without ``ReleaseMutex`` (a crash, a
``TerminateProcess``), the system marks the mutex abandoned and the next wait on it returns
``WAIT_ABANDONED`` (learn.microsoft.com: CreateMutexW, WaitForMultipleObjects). So:

* each ticket is a named mutex that a dedicated *owner thread* creates owned at ``join`` and
  releases at ``leave``; a turn taken in one thread can be released in another (``asyncio`` runs
  ``acquire`` in an executor thread) and no short-lived thread can abandon it by exiting;
* liveness comes from the kernel object, never from a pid: a ticket whose mutex no longer exists,
  or can be acquired (unowned or abandoned), is dead; ``inturn run`` puts its command in a job
  object named after its ticket, which whoever finds the ticket dead ends and waits for first
  (the system ends it too, but only after the mutex was abandoned);
* a waiter sleeps in ``WaitForMultipleObjects`` on the mutexes of the tickets directly ahead of it,
  plus an event for cancellation and an event set by a console control handler for Ctrl-C and
  Ctrl-Break (``SetConsoleCtrlHandler``): no sleep loop. A mutex taken means the one ahead is
  gone; whether it left cleanly is read from the folder, as on POSIX (its record removed, no
  marker), since ``WAIT_ABANDONED`` is said only to the first to take a dead owner's mutex;
* order and metadata live in a folder, ``%LOCALAPPDATA%\\inturn`` (``INTURN_DIR``, ``directory=``):
  a counter file, one ``<number>.ticket`` record per ticket, ``.abandoned`` markers, as on POSIX.
  The counter and the ticket records change under a per-line guard mutex.

Names: objects live in ``Global\\``, the namespace every session shares: ``Local\\`` is one
session's own, and the same user's runs in two sessions (a desktop and a scheduled task, a service
or an SSH logon) would each judge the other's tickets dead, since their mutexes cannot be found,
and both hold the turn. Creating a mutex, event or job there needs no privilege; only file
mappings and symbolic links do (learn.microsoft.com: "Kernel object namespaces"). Per user, names
carry the user's SID and a random id kept in the line's folder, so nobody else can guess, let
alone squat, them. No part of a line's name goes into an object name, so any Unicode name maps
to a legal one (no ``\\``, length bounded).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import msvcrt
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from ctypes import wintypes
from typing import TypeVar

from .. import win32
from ..errors import BackendError, Cancelled, Replaced
from ..records import MAX_RECORD_BYTES, Ticket, warn_once
from .base import CancelToken, GuardTaken, Membership, Patience, View, Woke
from .folders import (
    NAME_FILE,
    REMOVED_RETRIES,
    SHARED,
    TICKET,
    Entries,
    FolderBackend,
    FolderMembership,
    FolderStore,
    dumps_line,
    header_line,
    kick_file,
    marker_file,
    own_ticket_file,
    read_entries,
    ticket_files,
    write_all,
)

assert sys.platform == "win32"  # the rest of this module is Windows code

from .pipe_channel import PipeChannels  # noqa: E402 - Windows only, as what follows

# Machine scope: every authenticated user may wait on a ticket (SYNCHRONIZE) and take and give
# back the guard (plus MUTEX_MODIFY_STATE). In the shared folders every authenticated user may
# list, create files and folders, and read files (0x1200af on folders, FR on files), and has
# full control of what they created themselves (CREATOR OWNER), but may not change, rename or
# delete another user's files: like a sticky folder on POSIX.
_MACHINE_TICKET_SDDL = "D:(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})(A;;0x100000;;;AU)"
_MACHINE_GUARD_SDDL = "D:(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})(A;;0x100001;;;AU)"
_MACHINE_KICK_SDDL = "D:(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})(A;;0x100002;;;AU)"
_MACHINE_FOLDER_SDDL = (
    "D:(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;CI;0x1200af;;;AU)(A;OIIO;FR;;;AU)(A;OICIIO;FA;;;CO)"
)


# --------------------------------------------------------------------------- files


def _open_shared(path: str, *, write: bool, disposition: int) -> int:
    """A C runtime descriptor on ``path``, shared for reading, writing *and deleting*.

    ``os.open`` does not pass FILE_SHARE_DELETE, so a reader would make a leaver's delete fail
    with a sharing violation; every file here is opened through this instead. Raises OSError
    carrying the Windows error code in ``winerror``.
    """
    access = win32.GENERIC_READ | (win32.GENERIC_WRITE if write else 0)
    handle = win32.CreateFileW(
        path, access, win32.FILE_SHARE_ALL, None, disposition, win32.FILE_ATTRIBUTE_NORMAL, None
    )
    if handle is None or handle == win32.INVALID_HANDLE_VALUE:
        raise win32.os_error(path)
    try:
        return msvcrt.open_osfhandle(handle, os.O_RDWR if write else os.O_RDONLY)
    except BaseException:
        win32.close(handle)
        raise


# What ``.name`` is renamed to while it is published (a draft), and once forgotten (``.name``
# followed by a random part and one of these).
DRAFT = ".tmp"
GONE = ".gone"

T = TypeVar("T")
SHARING_RETRIES = 1000  # a millisecond apart: a second at most


def _despite_sharing(call: Callable[[], T]) -> T:
    """``call()``, a listing or a removal of a line's folder, again while another thread or
    process has the folder open in a way that refuses it: Wine refuses to list a folder that a
    forget is removing, and to remove one that is being listed. Either lasts one system call."""
    for _ in range(SHARING_RETRIES):
        try:
            return call()
        except PermissionError as exc:
            if exc.winerror != win32.ERROR_SHARING_VIOLATION:
                raise
        time.sleep(0.001)
    return call()


def _read_file(path: str) -> bytes | None:
    """The start of ``path`` (as much as a record holds); None when it is gone or deleted."""
    found = _read_owned(path, owner=False)
    return None if found is None else found[0]


def _read_owned(path: str, owner: bool) -> tuple[bytes, str | None] | None:
    """The start of ``path`` (as much as a record holds) and, if asked, the name of the file's
    owner; None when it is gone or being deleted."""
    try:
        fd = _open_shared(path, write=False, disposition=win32.OPEN_EXISTING)
    except OSError as exc:
        if exc.winerror in (
            win32.ERROR_FILE_NOT_FOUND,
            win32.ERROR_PATH_NOT_FOUND,
            win32.ERROR_ACCESS_DENIED,
        ):
            return None  # gone, or delete-pending (a leaver removed it while someone read it)
        raise
    try:
        data = b""
        while len(data) < MAX_RECORD_BYTES:
            chunk = os.read(fd, MAX_RECORD_BYTES - len(data))
            if not chunk:
                break
            data += chunk
        return data, _owner_name(msvcrt.get_osfhandle(fd)) if owner else None
    finally:
        os.close(fd)


def _owner_name(handle: int) -> str | None:
    """The account that owns an open file (``DOMAIN\\user`` or ``user``), as the system says."""
    sid = ctypes.c_void_p()
    descriptor = ctypes.c_void_p()
    which = win32.OWNER_SECURITY_INFORMATION
    found = win32.GetSecurityInfo(
        handle, win32.SE_FILE_OBJECT, which, ctypes.byref(sid), None, None, None,
        ctypes.byref(descriptor),
    )  # fmt: skip
    if found != 0:
        return None
    try:
        name = ctypes.create_unicode_buffer(256)
        domain = ctypes.create_unicode_buffer(256)
        name_size, domain_size, use = wintypes.DWORD(256), wintypes.DWORD(256), wintypes.DWORD()
        if not win32.LookupAccountSidW(None, sid, name, ctypes.byref(name_size), domain,
                                  ctypes.byref(domain_size), ctypes.byref(use)):  # fmt: skip
            return None
        return f"{domain.value}\\{name.value}" if domain.value else name.value
    finally:
        win32.LocalFree(descriptor)


def _make_folder(path: str, security: win32.Security | None) -> bool:
    """Create ``path`` (with ``security`` if given); False when it already exists."""
    if security is None:
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        return True
    if win32.CreateDirectoryW(path, security.pointer):
        return True
    code = win32.last_error()
    if code == win32.ERROR_ALREADY_EXISTS:
        return False
    raise win32.os_error(path, code)


# --------------------------------------------------------------------------- folders


def default_root(scope: str) -> str:
    """``%LOCALAPPDATA%\\inturn`` per user; ``%ProgramData%\\inturn`` for the machine.

    Asked of the system, not read from the environment: a process started with another or an
    empty environment (a tool's child, a service) would otherwise have a line of its own under
    the same name, and hold it beside everyone else's runs.
    """
    if scope == "machine":
        base = win32.known_folder(win32.FOLDERID_PROGRAM_DATA) or (
            os.environ.get("PROGRAMDATA") or os.environ.get("ALLUSERSPROFILE") or "C:\\ProgramData"
        )
        return os.path.join(base, "inturn")
    base = win32.known_folder(win32.FOLDERID_LOCAL_APP_DATA) or (
        os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    )
    return os.path.join(base, "inturn")


def prepare_root(path: str, scope: str, explicit: bool, create: bool = True) -> None:
    """Create the lines folder if needed and check that it is a usable folder of ours (a look,
    not ``create``, makes nothing, but checks what is there as a run would)."""
    if not create and not os.path.lexists(path):
        return
    try:
        if not os.path.lexists(path):
            parent = os.path.dirname(path)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
            security = win32.Security(_MACHINE_FOLDER_SDDL) if scope == "machine" else None
            _make_folder(path, security)
    except OSError as exc:
        raise BackendError(
            f"cannot create the lines folder {path}: {exc.strerror}; "
            "choose a writable folder with --dir or INTURN_DIR"
        ) from None
    info = os.lstat(path)
    attributes = getattr(info, "st_file_attributes", 0)
    if not explicit and attributes & win32.FILE_ATTRIBUTE_REPARSE_POINT:
        raise BackendError(
            f"{path} is a link or junction, not a folder of inturn's: remove it "
            "(someone may be trying to redirect your lines) or set INTURN_DIR"
        )
    if not os.path.isdir(path):
        raise BackendError(f"{path} is not a folder: remove it or set INTURN_DIR to another place")


def refuse_network_share(path: str) -> None:
    """A folder the user named may be another machine's share, which a run on each machine
    would use with mutexes of its own machine: there a holder's ticket, whose mutex is not
    found, is taken for dead. Refused before anything is made in it or read from it."""
    if win32.on_network_share(path):
        raise BackendError(
            f"{path} is on a network share, and the mutexes that hold turns are each "
            "machine's own, so a run on another machine would start beside the holder: keep "
            "lines in a local folder, or take turns across machines with a postgresql:// or "
            "redis:// backend"
        )


class WindowsBackend(FolderBackend):
    """Lines on this Windows machine: named mutexes, and a folder for order and metadata."""

    default_root = staticmethod(default_root)
    prepare_root = staticmethod(prepare_root)
    check_named_root = staticmethod(refuse_network_share)

    def __init__(
        self, scope: str = "user", directory: str | None = None, create: bool = True
    ) -> None:
        super().__init__(scope, directory, create)
        self.sid = win32.user_sid()
        # A number for this user's own counter file on machine-wide lines.
        self.counter_id = int.from_bytes(hashlib.sha256(self.sid.encode()).digest()[:6], "big")
        if scope == "machine":
            self.namespace = "Global\\inturn.machine"
            self.ticket_security: win32.Security | None = win32.Security(
                _MACHINE_TICKET_SDDL.format(sid=self.sid)
            )
            self.guard_security: win32.Security | None = win32.Security(
                _MACHINE_GUARD_SDDL.format(sid=self.sid)
            )
            self.folder_security: win32.Security | None = win32.Security(_MACHINE_FOLDER_SDDL)
            self.kick_security: win32.Security | None = win32.Security(
                _MACHINE_KICK_SDDL.format(sid=self.sid)
            )
        else:
            self.namespace = f"Global\\inturn.{self.sid}"
            self.ticket_security = self.guard_security = self.folder_security = None
            self.kick_security = None

    def line(self, name: str) -> WindowsStore:
        return WindowsStore(self, name)

    @staticmethod
    def recorded_name(folder: str) -> str | None:
        identity = _read_identity(folder)
        return None if identity is None else identity[0]


def _read_identity(folder: str) -> tuple[str, str] | None:
    """The line's exact name and its random id, from ``.name``; None if missing or unusable."""
    data = _read_file(os.path.join(folder, NAME_FILE))
    return None if data is None else _parse_identity(data)


def _parse_identity(data: bytes) -> tuple[str, str] | None:
    """The line's exact name and its random id from the bytes of ``.name``; None if unusable."""
    try:
        record = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    name, line_id = record.get("name"), record.get("id")
    if not (isinstance(name, str) and isinstance(line_id, str) and line_id.isalnum()):
        return None
    return name, line_id


# --------------------------------------------------------------------------- ticket owners


class _Owner:
    """A thread that creates one ticket's mutex owned, and holds it until told to let go.

    Mutex ownership belongs to a thread, and a thread that ends while owning one abandons it.
    Giving every ticket its own thread lets ``acquire`` and ``release`` run on any threads
    (``asyncio`` uses a pool) while the mutex is released only by a clean ``leave``, or
    abandoned only when the whole process dies.
    """

    def __init__(self, name: str, security: win32.Security | None) -> None:
        self.name = name
        self.error = 0
        self._security = security
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inturn-ticket", daemon=True)
        self._thread.start()
        try:
            self._ready.wait()
        except BaseException:  # Ctrl-C: the thread lets go of the mutex it makes, and ends
            self.release()
            raise

    def _run(self) -> None:
        attributes = self._security.pointer if self._security is not None else None
        handle = win32.CreateMutexW(attributes, True, self.name)
        error = win32.last_error()
        if not handle or error in (win32.ERROR_ALREADY_EXISTS, win32.ERROR_INVALID_HANDLE):
            # Already there (a squatter or a leftover): not ours, and we do not own it.
            self.error = error or win32.ERROR_ALREADY_EXISTS
            win32.close(handle)
            self._ready.set()
            return
        self._ready.set()
        self._done.wait()
        win32.ReleaseMutex(handle)
        win32.CloseHandle(handle)

    @property
    def created(self) -> bool:
        return self.error == 0

    def release(self) -> None:
        """Release and close the mutex; returns once the next in line can see it free."""
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class WindowsMembership(FolderMembership):
    """Our ticket: its owner thread holds the mutex; ``fd`` is our open ticket record; for a
    ``newest_wins`` ticket, ``kick`` is the event a later arrival sets to replace it."""

    def __init__(self, number: int, fd: int, owner: _Owner, shared: bool, kick: int | None) -> None:
        self.number = number
        self.fd = fd
        self.owner = owner
        self.shared = shared
        self.kick = kick
        self.closed = False


class _Fanout:
    """Watches more mutexes than one wait can hold (63 per helper thread) and sets one event.

    Only needed past ~60 slots. Each helper owns a mutex it wins just long enough to release
    it, from its own thread, as ownership requires.
    """

    def __init__(self, mutexes: Sequence[int]) -> None:
        self.woken = win32.CreateEventW(None, True, False, None)
        self.stop = win32.CreateEventW(None, True, False, None)
        self.threads = []
        step = win32.MAXIMUM_WAIT_OBJECTS - 1
        for start in range(0, len(mutexes), step):
            chunk = list(mutexes[start : start + step])
            thread = threading.Thread(target=self._watch, args=(chunk,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, chunk: list[int]) -> None:
        result = win32.wait_handles([*chunk, self.stop], win32.INFINITE)
        index = win32.signalled_index(result, len(chunk) + 1)
        if index is not None and index < len(chunk):
            win32.ReleaseMutex(chunk[index])
            win32.SetEvent(self.woken)

    def close(self) -> None:
        win32.SetEvent(self.stop)
        for thread in self.threads:
            thread.join()
        win32.close(self.woken)
        win32.close(self.stop)


KICKED = -1  # what ``wait_for_mutexes`` says when the kick event ended the wait


def wait_for_mutexes(
    mutexes: Sequence[int],
    timeout: float | None,
    cancel: CancelToken | None,
    line: str,
    kick: int | None = None,
) -> tuple[int, bool] | None:
    """Sleep until one of ``mutexes`` can be acquired (its owner left or died): which one, and
    whether it was not found abandoned (only the first to take a dead owner's mutex is told:
    the caller reads a clean leave from the folder); None on timeout; ``(KICKED, False)`` when
    the event ``kick`` was set.

    The mutex won is released at once by this same thread. On the main thread Ctrl-C and
    Ctrl-Break wake the wait through a console control handler and the Python handler runs
    here; a cancel sets a kernel event that is part of the same wait.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    kernel_cancel = win32.KernelEvent() if cancel is not None else None
    fanout = _Fanout(mutexes) if len(mutexes) > win32.MAXIMUM_WAIT_OBJECTS - 2 else None
    watched = [fanout.woken] if fanout is not None else list(mutexes)
    on_main = threading.current_thread() is threading.main_thread()
    console = win32.console_events() if on_main else None
    try:
        with contextlib.ExitStack() as stack:
            extras: list[int] = []
            if cancel is not None and kernel_cancel is not None:
                stack.enter_context(cancel.linked(kernel_cancel))
                extras.append(kernel_cancel.handle)
            if console is not None:
                extras.append(stack.enter_context(console.armed("wait")))
            if kick is not None:
                extras.append(kick)
            handles = [*watched, *extras]
            while True:
                if deadline is None:
                    wait_ms = win32.INFINITE
                else:
                    wait_ms = win32.milliseconds(deadline - time.monotonic())
                try:
                    result = win32.wait_handles(handles, wait_ms)
                    index = win32.signalled_index(result, len(handles))
                    if index is not None and index < len(watched) and fanout is None:
                        win32.ReleaseMutex(watched[index])
                except BaseException:  # Ctrl-C as the wait returned: a mutex it won goes back
                    if fanout is None:
                        give_back_mutexes(watched)
                    raise
                if index is None:
                    if result == win32.WAIT_TIMEOUT and (
                        deadline is None or time.monotonic() >= deadline
                    ):
                        return None
                    continue
                if index < len(watched):
                    if fanout is None:
                        return index, result < win32.WAIT_ABANDONED_0
                    return 0, False
                if kernel_cancel is not None and handles[index] == kernel_cancel.handle:
                    raise Cancelled(f"stopped waiting for line {line!r}")
                if kick is not None and handles[index] == kick:
                    return KICKED, False
                if console is not None:
                    console.deliver()  # raises if the handler does; else wait on
    finally:
        if fanout is not None:
            fanout.close()
        if kernel_cancel is not None:
            kernel_cancel.close()


def give_back_mutexes(mutexes: Sequence[int]) -> None:
    """Release whichever of ``mutexes`` this thread took, after an interrupt that came before
    it knew which: it owns none of them otherwise, and the others refuse, doing nothing."""
    for handle in mutexes:
        win32.ReleaseMutex(handle)


# --------------------------------------------------------------------------- one line


class WindowsStore(PipeChannels, FolderStore):
    def __init__(self, backend: WindowsBackend, name: str) -> None:
        super().__init__(backend, name)
        self.backend = backend
        self._id: str | None = None
        self._open_lock = threading.Lock()

    def _line_id(self) -> str:
        if self._id is None:
            with self._open_lock:
                if self._id is None:
                    self._id = self._open_folder()
        return self._id

    def _refresh(self) -> None:
        """The line's id again from ``.name``: its kernel objects are named by the id of the
        line as it is now, and a forgotten line made anew has another (judged by the old
        names, its live tickets would look dead, and be buried)."""
        with self._open_lock:
            if self._id is None:
                return
            identity = _read_identity(self.folder)
            if identity is not None and identity[0] == self.name and identity[1] == self._id:
                return
            self._id = None

    def _reopen(self, line_id: str) -> None:
        """Open the folder anew on next use: the line with id ``line_id`` is gone."""
        with self._open_lock:
            if self._id == line_id:
                self._id = None

    def _open_folder(self) -> str:
        path = os.path.join(self.folder, NAME_FILE)
        if not self.create:  # a look from outside creates nothing
            # A spoilt record is refused here as well: judged by an id that is not the line's,
            # live tickets would look dead, the line free, and the look would bury them.
            line_id = self._recorded_id(path)
            return "0" if line_id is None else line_id
        # A forget may remove the folder between any two steps: made again, and set up again.
        for _ in range(REMOVED_RETRIES):
            if not self._make_line_folder():
                continue
            line_id = self._recorded_id(path)
            if line_id is not None:
                return line_id
            self._write_identity(path)
        raise BackendError(
            f"cannot set up {path}: it keeps being removed, or cannot be read; "
            "check the folder's permissions"
        )

    def _make_line_folder(self) -> bool:
        """Make the line's folder if it is not there; False if it was removed meanwhile."""
        try:
            _make_folder(self.folder, self.backend.folder_security)
        except OSError as exc:
            raise BackendError(
                f"cannot create the line folder {self.folder}: {exc.strerror}; "
                "check the permissions of its parent, or use --dir / INTURN_DIR"
            ) from None
        if os.path.isdir(self.folder):
            return True
        if os.path.lexists(self.folder):
            raise BackendError(
                f"{self.folder} is not a folder where inturn keeps line {self.name!r}: remove it"
            )
        return False

    def _recorded_id(self, path: str) -> str | None:
        """The line's id from ``.name`` at ``path``; None if there is none yet. A record that
        names another line, or is corrupt, is refused with ``BackendError``."""
        problem: OSError | None = None
        ticketed = False
        for _ in range(SHARING_RETRIES):
            data = _read_file(path)
            if data is not None:  # only ever published whole: unusable is corrupt
                identity = _parse_identity(data)
                if identity is None:
                    raise BackendError(
                        f"{path} is corrupt: remove the folder {self.folder} when nobody uses "
                        "the line"
                    )
                if identity[0] != self.name:
                    raise BackendError(f"{path} names another line ({identity[0]!r}): remove it")
                return identity[1]
            try:
                entries = os.listdir(self.folder)  # this loop already tries again
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:  # under Wine, as a forget removes it: a sharing violation,
                problem = exc  # or "invalid name"
            else:
                problem = None
                ticketed = any(entry.endswith((TICKET, SHARED)) for entry in entries)
                if not ticketed and NAME_FILE not in entries:
                    return None
            # ``.name`` listed but not readable, or tickets without it: a forget removed them
            # while others still had them open, which keeps them listed until those close (or
            # ``.name`` was published, and tickets made under it, since our read). A moment
            # later, either is gone.
            time.sleep(0.001)
        if problem is not None:
            raise BackendError(f"cannot list {self.folder}: {problem.strerror}") from None
        if not ticketed:
            raise BackendError(f"cannot read {path}: check the folder's permissions")
        # Removed from under the tickets (they are only ever made after it): a new id would
        # take their live holders for dead, and start a second holder beside them.
        raise BackendError(
            f"{path} is missing, yet line {self.name!r} has tickets: remove the folder "
            f"{self.folder} when nobody uses the line"
        )

    def _write_identity(self, path: str) -> None:
        """Publish ``.name`` atomically: write a private file, then rename it into place.

        A rename onto an existing file fails on Windows, so when two processes set up the line
        at once exactly one id wins, and both then read it. Nothing is published, and nothing
        said, if a forget removed the folder meanwhile: the caller makes it again.
        """
        draft = f"{path}.{secrets.token_hex(8)}{DRAFT}"
        record = {"name": self.name, "id": secrets.token_hex(16)}
        try:
            with open(draft, "wb") as out:
                out.write(dumps_line(record))
            os.rename(draft, path)
        except FileExistsError:
            pass
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or not os.path.isdir(self.folder):
                return  # the folder, or the draft in it, removed (or being so) by a forget
            raise BackendError(
                f"cannot write in {self.folder} ({exc.strerror}): fix its permissions, "
                "or choose another folder with --dir or INTURN_DIR"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(draft)

    def object_name(self, suffix: int | str) -> str:
        """The kernel object name for a ticket number (or ``guard``): ASCII, no backslash."""
        return self._object_name(self._line_id(), suffix)

    def _object_name(self, line_id: str, suffix: int | str) -> str:
        return f"{self.backend.namespace}.{line_id}.{suffix}"

    def job_name(self, number: int) -> str:
        """The name of the job object ``inturn run`` puts ticket ``number``'s command in."""
        return self.object_name(f"{number}.job")

    def _guard_mutex(self, name: str) -> int:
        """A handle of this call's own on the guard named ``name``: a handle shared by the
        store's threads could be closed, and its value reused, under a thread still using it."""
        security = self.backend.guard_security
        handle = win32.OpenMutexW(win32.SYNCHRONIZE | win32.MUTEX_MODIFY_STATE, False, name)
        if not handle:
            attributes = security.pointer if security is not None else None
            handle = win32.CreateMutexW(attributes, False, name)
        if not handle:
            raise BackendError(self._object_error("guard", win32.last_error()))
        return int(handle)

    def _object_error(self, what: str, code: int) -> str:
        if code == win32.ERROR_ACCESS_DENIED:
            return f"access denied to the {what} of line {self.name!r}: someone else created it"
        return f"cannot use the {what} of line {self.name!r}: {ctypes.FormatError(code)}"

    @contextlib.contextmanager
    def _guard(self, patience: Patience) -> Iterator[str]:
        """The short lock under which numbers are taken and dead tickets removed: the guard of
        the line whose folder is there now, and that line's id.

        The guard is named by the line's id, and a forget makes a new line with a new id: a
        guard taken under the id of a line forgotten meanwhile guards nothing, so it is checked
        once taken against ``.name``, and the folder opened anew if they differ (a folder
        without ``.name`` goes with the id ``0`` that ``_open_folder`` gives a look).

        A holder that died in here leaves the mutex abandoned: the next one takes it over;
        every step inside is safe to find half done. A caller with a deadline or a cancel
        token waits no longer than they allow (``GuardTaken``, ``Cancelled``).
        """
        for _ in range(REMOVED_RETRIES):
            line_id = self._line_id()
            handle = self._guard_mutex(self._object_name(line_id, "guard"))
            try:
                self._take_guard(handle, patience)
                identity = _read_identity(self.folder)
                if (identity[1] if identity is not None else "0") == line_id:
                    yield line_id
                    return
            finally:
                # Refused, doing nothing, if the wait did not take it (or Ctrl-C came first).
                win32.ReleaseMutex(handle)
                win32.CloseHandle(handle)
            self._reopen(line_id)  # forgotten while we waited for the guard
        raise BackendError(f"{self.folder} keeps being removed while in use: try again")

    def _take_guard(self, handle: int, patience: Patience) -> None:
        remaining = patience.remaining()
        if remaining is None and patience.cancel is None:
            result = win32.WaitForSingleObject(handle, win32.INFINITE)
        else:
            result = self._wait_guard(handle, remaining, patience.cancel)
        if result not in (win32.WAIT_OBJECT_0, win32.WAIT_ABANDONED_0):
            raise win32.os_error(f"cannot take the guard of line {self.name!r}")

    def _wait_guard(self, handle: int, remaining: float | None, cancel: CancelToken | None) -> int:
        wait_ms = win32.INFINITE if remaining is None else win32.milliseconds(max(0.0, remaining))
        kernel_cancel = win32.KernelEvent() if cancel is not None else None
        try:
            with contextlib.ExitStack() as stack:
                handles = [handle]
                if cancel is not None and kernel_cancel is not None:
                    stack.enter_context(cancel.linked(kernel_cancel))
                    handles.append(kernel_cancel.handle)
                result = win32.wait_handles(handles, wait_ms)
        finally:
            if kernel_cancel is not None:
                kernel_cancel.close()
        if result == win32.WAIT_OBJECT_0 + 1:
            raise Cancelled(f"stopped waiting for line {self.name!r}")
        if result == win32.WAIT_TIMEOUT:
            raise GuardTaken(f"its guard (the mutex {self.object_name('guard')}) is held for long")
        return result

    def _path(self, entry: str) -> str:
        return os.path.join(self.folder, entry)

    def _entries(self) -> Entries:
        self._line_id()
        return read_entries(self._listing())

    def _listing(self) -> list[str]:
        """The folder's entries, despite a forget removing it at that moment."""
        return _despite_sharing(lambda: os.listdir(self.folder))

    def _opened(self) -> bool:
        return self._id is not None

    # -- files

    def _read(self, entry: str) -> tuple[bytes, str | None] | None:
        return _read_owned(self._path(entry), owner=self.scope == "machine")

    def _create(self, entry: str, data: bytes) -> bool:
        fd = self._create_new(entry)
        if fd is None:
            return False
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        return True

    def _remove(self, entry: str) -> None:
        os.unlink(self._path(entry))

    def _exists(self, entry: str) -> bool:
        return os.path.lexists(self._path(entry))

    def _link(self, entry: str, to: str) -> bool:
        """Renamed rather than linked: a rename never replaces a file on Windows."""
        try:
            os.rename(self._path(entry), self._path(to))
        except FileExistsError:
            return True  # marked already
        except OSError:
            return False  # another user's file: the caller copies it
        return True

    def _dead(self, number: int) -> bool:
        return not self._alive(number)

    def _read_counter(self, entry: str, guard: object) -> bytes:
        return (_read_file(self._path(entry)) or b"")[:64]

    def _write_counter(self, entry: str, text: bytes, guard: object) -> None:
        try:
            fd = _open_shared(self._path(entry), write=True, disposition=win32.OPEN_ALWAYS)
        except OSError as exc:
            raise BackendError(
                f"cannot use {self._path(entry)}: {exc.strerror}; fix the folder's "
                "permissions, or choose another folder with --dir or INTURN_DIR"
            ) from None
        try:
            os.write(fd, text)
        finally:
            os.close(fd)

    def _counter_owner(self) -> int:
        return self.backend.counter_id

    # -- LineStore

    def join(self, me: Ticket, patience: Patience) -> tuple[WindowsMembership, View]:
        with self._guard(patience) as guard:
            return self._join_guarded(me, guard)

    def _join_guarded(self, me: Ticket, guard: object) -> tuple[WindowsMembership, View]:
        """Under the guard: take the next number and publish our ticket."""
        entries = self._entries()
        owner, fd, number = self._take(self._next_number(entries, guard), me.shared)
        kick = None
        try:
            write_all(fd, header_line(me))
            if me.newest_wins:  # before anyone can see the ticket: kicks are never lost
                kick = self._make_kick(number)
            self._save_number(number + 1, guard)
            self._tidy_litter(entries)
            ahead = tuple(n for n in entries.tickets if n < number)
            membership = WindowsMembership(number, fd, owner, me.shared, kick)
            membership.job_name = self.job_name(number)
            return membership, View(ahead, entries.markers, shared=entries.shared)
        except BaseException:  # Ctrl-C too, up to the return: no ticket nobody can release
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._path(own_ticket_file(number, me.shared)))
            win32.close(kick)
            owner.release()
            raise

    def forget(self, patience: Patience) -> bool:
        if not os.path.lexists(self.folder):
            return True
        self._refresh()
        with self._guard(patience) as line_id:
            entries = self._entries()
            for number in entries.tickets:
                if self._alive(number):
                    return False  # someone holds or waits
                self._bury_dead(number)
            # ``.name`` last: once it is gone, whoever opens the folder sets up a new line.
            for entry in sorted(self._listing(), key=lambda entry: entry == NAME_FILE):
                try:
                    self._discard(entry)
                except FileNotFoundError:
                    continue
                except PermissionError as exc:
                    if exc.winerror == win32.ERROR_SHARING_VIOLATION and entry.endswith(DRAFT):
                        continue  # a join setting the line up is writing it: in use again
                    removed = exc.filename or self._path(entry)  # .name: renamed away first
                    raise BackendError(
                        f"cannot forget line {self.name!r}: cannot remove {removed} "
                        f"({exc.strerror}), and the files before it are gone: an administrator "
                        "can forget it"
                    ) from None
            try:
                _despite_sharing(lambda: os.rmdir(self.folder))
            except OSError as exc:
                if exc.winerror == win32.ERROR_DIR_NOT_EMPTY:
                    self._reopen(line_id)
                    return False  # set up anew by a join meanwhile: in use again
                raise BackendError(f"cannot remove {self.folder}: {exc.strerror}") from None
        self._reopen(line_id)
        return True

    def _discard(self, entry: str) -> None:
        """Remove one of the line's files for a forget; ``.name`` is renamed away first.

        A file removed while someone has it open (a look reading ``.name``) stays until they
        close it, and can meanwhile still be opened and read (so Wine does): removed in place,
        the forgotten line's ``.name`` could pass the check of the next one to take that
        line's guard, whose ticket would then be made in a folder that names no line, or that
        the new line's forget removes under it. A rename frees the name at once.
        """
        path = self._path(entry)
        if entry == NAME_FILE:
            gone = self._path(f"{NAME_FILE}.{secrets.token_hex(8)}{GONE}")
            os.rename(path, gone)
            path = gone
        os.unlink(path)

    def _make_kick(self, number: int) -> int:
        """The event a later ``newest_wins`` arrival sets to replace this ticket."""
        security = self.backend.kick_security
        attributes = security.pointer if security is not None else None
        handle = win32.CreateEventW(attributes, True, False, self.object_name(f"{number}.kick"))
        if not handle:
            raise BackendError(self._object_error("kick event", win32.last_error()))
        return int(handle)

    def replace(self, number: int, me: Membership) -> None:
        self._create(kick_file(number), f"{me.number}\n".encode())  # who: checked by the kicked
        name = self.object_name(f"{number}.kick")
        handle = win32.OpenEventW(win32.EVENT_MODIFY_STATE, False, name)
        if handle:
            win32.SetEvent(handle)
            win32.CloseHandle(handle)

    def _replaced_by(self, me: WindowsMembership) -> int | None:
        """After a kick: the live, later ticket that replaced us, if any.

        The kick file keeps the first claim only (it is created, never rewritten), and what it
        says is only a claim; its writer may also have been replaced and gone by now. But every
        later ``newest_wins`` arrival replaces the waiters ahead of it, so a live one behind
        us, whoever wrote the file, means we were replaced.
        """
        found = _read_file(self._path(kick_file(me.number))) or b""
        for word in found.split():
            if word.isdigit() and int(word) > me.number and self._alive(int(word)):
                return int(word)
        later = [n for n in self._entries().tickets if n > me.number]
        for number, ticket in zip(later, self.read(later, me), strict=True):
            if ticket is not None and ticket.newest_wins and self._alive(number):
                return number
        return None

    def _take(self, number: int, shared: bool) -> tuple[_Owner, int, int]:
        """Create the mutex and the record of the first free number from ``number`` on.

        A name or file already there (a squatter, a leftover) is skipped, never reused.
        """
        for _ in range(1000):
            name = self.object_name(self._check_number(number))
            owner = _Owner(name, self.backend.ticket_security)
            try:
                if not owner.created:
                    if owner.error == win32.ERROR_ACCESS_DENIED:
                        raise BackendError(self._object_error("tickets", owner.error))
                    number += 1
                    continue
                fd = self._create_new(own_ticket_file(number, shared))
                if fd is not None:
                    return owner, fd, number
            except BaseException:
                owner.release()
                raise
            owner.release()
            number += 1
        raise BackendError(f"{self.folder} is full of foreign files: clean it up")

    def _create_new(self, entry: str) -> int | None:
        """Create one of the line's files, which must not exist yet; None if it does."""
        path = self._path(entry)
        try:
            return _open_shared(path, write=True, disposition=win32.CREATE_NEW)
        except OSError as exc:
            taken = exc.winerror == win32.ERROR_FILE_EXISTS or (
                exc.winerror == win32.ERROR_ACCESS_DENIED and os.path.lexists(path)
            )
            if taken:
                return None  # a leftover or planted file, or one being deleted
            raise BackendError(
                f"cannot write in {self.folder} ({exc.strerror}): fix its permissions, "
                "or choose another folder with --dir or INTURN_DIR"
            ) from None

    def _alive(self, number: int) -> bool:
        """Whether ticket ``number``'s mutex exists and is owned by someone.

        A mutex that no longer exists, or that this thread can take at once (nobody owns it:
        released, or abandoned by a dead owner), belongs to a dead ticket. One taken here is
        given back at once. What may still run of a dead ticket's ``inturn run`` command is
        ended before it counts as dead (``win32.end_named_job``): whoever acts on a ticket's
        end, the queue after every wake-up included, asks here first.
        """
        handle = win32.OpenMutexW(win32.SYNCHRONIZE, False, self.object_name(number))
        if not handle:
            # Gone: dead. Access denied: someone else's, and not ours to judge.
            if win32.last_error() == win32.ERROR_ACCESS_DENIED:
                return True
            win32.end_named_job(self.job_name(number))
            return False
        try:
            try:
                taken = win32.WaitForSingleObject(handle, 0) in (
                    win32.WAIT_OBJECT_0,
                    win32.WAIT_ABANDONED_0,
                )
                if taken:
                    win32.ReleaseMutex(handle)
            except BaseException:  # Ctrl-C as the look returned: the mutex, if taken, goes back
                give_back_mutexes([handle])
                raise
            if taken:
                win32.end_named_job(self.job_name(number))
                return False
            return True
        finally:
            win32.CloseHandle(handle)

    def _left_cleanly(self, number: int) -> bool:
        """Whether ticket ``number``, whose mutex a wait just took unabandoned, left cleanly.

        The system says ``WAIT_ABANDONED`` only to the first to take a dead owner's mutex:
        another waiter, or a look that asks ``_alive``, may have taken and released it first.
        So, as on POSIX, a clean leave is told by the record: ``leave`` removes it before it
        frees the mutex, and a burial renames it to a marker (or copies it there first) when
        the dead one held the turn. Record gone and no marker: it left, or died waiting.
        """
        if any(self._exists(entry) for entry in ticket_files(number)):
            return False  # dead, not buried yet: the look that follows finds it
        return not self._exists(marker_file(number))

    def wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
        then_holds: bool = False,
    ) -> Woke | None:
        kick = me.kick if isinstance(me, WindowsMembership) else None
        handles: list[int] = []
        try:
            for number in numbers:
                handle = win32.OpenMutexW(win32.SYNCHRONIZE, False, self.object_name(number))
                if not handle:
                    code = win32.last_error()
                    if code == win32.ERROR_ACCESS_DENIED:
                        raise BackendError(self._object_error(f"ticket {number}", code))
                    return Woke()  # gone already
                handles.append(handle)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                woke = wait_for_mutexes(handles, left, cancel, self.name, kick)
                if woke is None:
                    return None
                index, clean = woke
                if index != KICKED:
                    number = numbers[index]
                    return Woke(left=(number,) if clean and self._left_cleanly(number) else ())
                assert isinstance(me, WindowsMembership) and kick is not None
                # Reset before looking: a kick that comes after the look sets it again.
                win32.ResetEvent(kick)
                by = self._replaced_by(me)
                if by is not None:
                    raise Replaced(f"ticket {by} replaced this one in line {self.name!r}")
                # A kick without a live ticket behind it: wait on.
        finally:
            for handle in handles:
                win32.CloseHandle(handle)

    def leave(self, me: Membership) -> None:
        assert isinstance(me, WindowsMembership)
        if me.closed:
            return
        # Each step done once, and ``closed`` said last: a leave cut short (Ctrl-C) is
        # finished by leaving again, and the mutex is never left held.
        fd, me.fd = me.fd, -1
        if fd >= 0:
            os.close(fd)
        # Remove the record first, then free the mutex: a waiter woken by the release must not
        # find the record of a holder that left cleanly and take it for a dead one.
        path = self._path(own_ticket_file(me.number, me.shared))
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            warn_once(f"cannot remove {path}: {exc.strerror}")
        if me.kick is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path(kick_file(me.number)))
            kick, me.kick = me.kick, None
            win32.close(kick)
        me.owner.release()
        me.closed = True

    def close(self) -> None:
        """Nothing is kept open between calls."""
