"""The local backend for Windows: a named kernel mutex per ticket, a folder for order and metadata.

This is the classic single-instance recipe done right. ``CreateMutexW(NULL, TRUE, name)`` creates
a mutex owned by the calling *thread*; when the owner ends without ``ReleaseMutex`` (a crash, a
``TerminateProcess``), the system marks the mutex abandoned and the next wait on it returns
``WAIT_ABANDONED`` (learn.microsoft.com: CreateMutexW, WaitForMultipleObjects). So:

* each ticket is a named mutex that a dedicated *owner thread* creates owned at ``join`` and
  releases at ``leave``; a turn taken in one thread can be released in another (``asyncio`` runs
  ``acquire`` in an executor thread) and no short-lived thread can abandon it by exiting;
* liveness comes from the kernel object, never from a pid: a ticket whose mutex no longer exists,
  or can be acquired (unowned or abandoned), is dead;
* a waiter sleeps in ``WaitForMultipleObjects`` on the mutexes of the tickets directly ahead of it,
  plus an event for cancellation and an event set by a console control handler for Ctrl-C and
  Ctrl-Break (``SetConsoleCtrlHandler``): no sleep loop. ``WAIT_ABANDONED`` means the one ahead is
  gone, like a clean release; whether it died holding the turn is read from its record;
* order and metadata live in a folder, ``%LOCALAPPDATA%\\inturn`` (``INTURN_DIR``, ``directory=``):
  a counter file, one ``<number>.ticket`` record per ticket, ``.abandoned`` markers, as on POSIX.
  The counter and the ticket records change under a per-line guard mutex.

Names: per user, objects live in ``Local\\`` (the session's own namespace) and carry the user's
SID and a random id kept in the line's folder, so nobody else can guess, let alone squat, them;
``scope="machine"`` uses ``Global\\``, which needs the SeCreateGlobalPrivilege privilege to create
objects from a user session (learn.microsoft.com: "Kernel object namespaces"). No part of a line's
name goes into an object name, so any Unicode name maps to a legal one (no ``\\``, length bounded).
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import hashlib
import json
import msvcrt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from ctypes import wintypes
from typing import Any

from .errors import BackendError, Cancelled, UsageError
from .layout import (
    COUNTER,
    NAME_FILE,
    Entries,
    counter_file,
    marker_file,
    next_number,
    read_entries,
    resolve_root,
    ticket_file,
    told_file,
)
from .names import names_in, safe_file_name
from .records import MAX_RECORD_BYTES, LineStatus, Ticket, dumps_line, parse_record, warn_once
from .store import (
    Backend,
    CancelToken,
    GuardTaken,
    LineStore,
    Membership,
    Patience,
    View,
    Woke,
)

assert sys.platform == "win32"  # the rest of this module is Windows code


# --------------------------------------------------------------------------- Win32 constants

INFINITE = 0xFFFFFFFF
WAIT_OBJECT_0 = 0x000
WAIT_ABANDONED_0 = 0x080
WAIT_TIMEOUT = 0x102
WAIT_FAILED = 0xFFFFFFFF
MAXIMUM_WAIT_OBJECTS = 64

ERROR_FILE_NOT_FOUND = 2
ERROR_PATH_NOT_FOUND = 3
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_SHARING_VIOLATION = 32
ERROR_FILE_EXISTS = 80
ERROR_ALREADY_EXISTS = 183

SYNCHRONIZE = 0x00100000
MUTEX_MODIFY_STATE = 0x0001
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_ALL = 0x1 | 0x2 | 0x4  # read, write, delete: others may rename or delete our files
CREATE_NEW = 1
OPEN_EXISTING = 3
OPEN_ALWAYS = 4
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value

CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1

SE_FILE_OBJECT = 1
OWNER_SECURITY_INFORMATION = 0x1

TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1
TOKEN_PRIVILEGES_CLASS = 3

CREATE_SUSPENDED = 0x00000004
PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
THREAD_SUSPEND_RESUME = 0x0002
TH32CS_SNAPTHREAD = 0x00000004
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK = 0x00001000
JOB_BASIC_PROCESS_ID_LIST = 3
JOB_EXTENDED_LIMIT_INFORMATION = 9

# --------------------------------------------------------------------------- bindings

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
HANDLE = ctypes.c_void_p
_HANDLER_ROUTINE = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)


def _bind(dll: ctypes.WinDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    function = getattr(dll, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


# Short names for the argument types, so each binding reads like its C prototype.
_H, _P, _BOOL, _DWORD, _WSTR = (
    HANDLE,
    ctypes.c_void_p,
    wintypes.BOOL,
    wintypes.DWORD,
    wintypes.LPCWSTR,
)

_CreateMutexW = _bind(_kernel32, "CreateMutexW", _H, _P, _BOOL, _WSTR)
_OpenMutexW = _bind(_kernel32, "OpenMutexW", _H, _DWORD, _BOOL, _WSTR)
_ReleaseMutex = _bind(_kernel32, "ReleaseMutex", _BOOL, _H)
_CloseHandle = _bind(_kernel32, "CloseHandle", _BOOL, _H)
_CreateEventW = _bind(_kernel32, "CreateEventW", _H, _P, _BOOL, _BOOL, _WSTR)
_SetEvent = _bind(_kernel32, "SetEvent", _BOOL, _H)
_ResetEvent = _bind(_kernel32, "ResetEvent", _BOOL, _H)
_WaitForSingleObject = _bind(_kernel32, "WaitForSingleObject", _DWORD, _H, _DWORD)
_WaitForMultipleObjects = _bind(
    _kernel32, "WaitForMultipleObjects", _DWORD, _DWORD, ctypes.POINTER(_H), _BOOL, _DWORD
)
_SetConsoleCtrlHandler = _bind(_kernel32, "SetConsoleCtrlHandler", _BOOL, _HANDLER_ROUTINE, _BOOL)
_CreateFileW = _bind(_kernel32, "CreateFileW", _H, _WSTR, _DWORD, _DWORD, _P, _DWORD, _DWORD, _H)
_CreateDirectoryW = _bind(_kernel32, "CreateDirectoryW", _BOOL, _WSTR, _P)
_GetCurrentProcess = _bind(_kernel32, "GetCurrentProcess", _H)
_OpenProcess = _bind(_kernel32, "OpenProcess", _H, _DWORD, _BOOL, _DWORD)
_OpenThread = _bind(_kernel32, "OpenThread", _H, _DWORD, _BOOL, _DWORD)
_ResumeThread = _bind(_kernel32, "ResumeThread", _DWORD, _H)
_CreateToolhelp32Snapshot = _bind(_kernel32, "CreateToolhelp32Snapshot", _H, _DWORD, _DWORD)
_CreateJobObjectW = _bind(_kernel32, "CreateJobObjectW", _H, _P, _WSTR)
_SetInformationJobObject = _bind(
    _kernel32, "SetInformationJobObject", _BOOL, _H, ctypes.c_int, _P, _DWORD
)
_QueryInformationJobObject = _bind(
    _kernel32, "QueryInformationJobObject", _BOOL, _H, ctypes.c_int, _P, _DWORD, _P
)
_AssignProcessToJobObject = _bind(_kernel32, "AssignProcessToJobObject", _BOOL, _H, _H)
_TerminateJobObject = _bind(_kernel32, "TerminateJobObject", _BOOL, _H, wintypes.UINT)
_IsProcessInJob = _bind(_kernel32, "IsProcessInJob", _BOOL, _H, _H, ctypes.POINTER(_BOOL))
_LocalFree = _bind(_kernel32, "LocalFree", _H, _H)
_GetSecurityInfo = _bind(
    _advapi32, "GetSecurityInfo", _DWORD, _H, ctypes.c_int, _DWORD, _P, _P, _P, _P, _P
)
_LookupAccountSidW = _bind(_advapi32, "LookupAccountSidW", _BOOL, _WSTR, _P, _P, _P, _P, _P, _P)
_OpenProcessToken = _bind(_advapi32, "OpenProcessToken", _BOOL, _H, _DWORD, ctypes.POINTER(_H))
_GetTokenInformation = _bind(
    _advapi32, "GetTokenInformation", _BOOL, _H, ctypes.c_int, _P, _DWORD, ctypes.POINTER(_DWORD)
)
_ConvertSidToStringSidW = _bind(
    _advapi32, "ConvertSidToStringSidW", _BOOL, _P, ctypes.POINTER(wintypes.LPWSTR)
)
_LookupPrivilegeValueW = _bind(_advapi32, "LookupPrivilegeValueW", _BOOL, _WSTR, _WSTR, _P)
_ConvertSddl = _bind(
    _advapi32,
    "ConvertStringSecurityDescriptorToSecurityDescriptorW",
    _BOOL,
    _WSTR,
    _DWORD,
    ctypes.POINTER(_P),
    _P,
)


class _SecurityAttributes(ctypes.Structure):
    _fields_ = [
        ("nLength", wintypes.DWORD),
        ("lpSecurityDescriptor", ctypes.c_void_p),
        ("bInheritHandle", wintypes.BOOL),
    ]


class _ThreadEntry(ctypes.Structure):
    _fields_ = [
        ("dwSize", wintypes.DWORD),
        ("cntUsage", wintypes.DWORD),
        ("th32ThreadID", wintypes.DWORD),
        ("th32OwnerProcessID", wintypes.DWORD),
        ("tpBasePri", wintypes.LONG),
        ("tpDeltaPri", wintypes.LONG),
        ("dwFlags", wintypes.DWORD),
    ]


_Thread32First = _bind(_kernel32, "Thread32First", _BOOL, _H, ctypes.POINTER(_ThreadEntry))
_Thread32Next = _bind(_kernel32, "Thread32Next", _BOOL, _H, ctypes.POINTER(_ThreadEntry))


class _JobBasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", wintypes.DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", wintypes.DWORD),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", wintypes.DWORD),
        ("SchedulingClass", wintypes.DWORD),
    ]


class _JobExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _JobBasicLimits),
        ("IoInfo", ctypes.c_uint64 * 6),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


_JOB_LIST_CAPACITY = 1024


class _JobProcessIds(ctypes.Structure):
    _fields_ = [
        ("NumberOfAssignedProcesses", wintypes.DWORD),
        ("NumberOfProcessIdsInList", wintypes.DWORD),
        ("ProcessIdList", ctypes.c_size_t * _JOB_LIST_CAPACITY),
    ]


def _last_error() -> int:
    return ctypes.get_last_error()


def _os_error(what: str, code: int | None = None) -> OSError:
    code = _last_error() if code is None else code
    error = ctypes.WinError(code)
    error.strerror = f"{what}: {error.strerror}"
    return error


def _close(handle: int | None) -> None:
    if handle:
        _CloseHandle(handle)


# --------------------------------------------------------------------------- identity


def user_sid() -> str:
    """The calling user's SID (``S-1-5-21-...``), the per-user part of every object name."""
    token = HANDLE()
    if not _OpenProcessToken(_GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
        raise _os_error("cannot read this process's token")
    try:
        size = wintypes.DWORD()
        _GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(max(size.value, 64))
        if not _GetTokenInformation(
            token, TOKEN_USER_CLASS, buffer, len(buffer), ctypes.byref(size)
        ):
            raise _os_error("cannot read this process's user")
        sid = ctypes.c_void_p.from_buffer(buffer).value  # TOKEN_USER starts with a PSID
        text = wintypes.LPWSTR()
        if not _ConvertSidToStringSidW(sid, ctypes.byref(text)):
            raise _os_error("cannot format this process's user SID")
        try:
            return str(text.value)
        finally:
            _LocalFree(ctypes.cast(text, ctypes.c_void_p))
    finally:
        _close(token.value)


def has_global_privilege() -> bool:
    """Whether this process's token holds SeCreateGlobalPrivilege ("Create global objects").

    Without it, a process in a user session cannot create objects in ``Global\\``
    (learn.microsoft.com: "Kernel object namespaces"); services and administrators have it.
    """
    luid = (wintypes.DWORD * 2)()
    if not _LookupPrivilegeValueW(None, "SeCreateGlobalPrivilege", luid):
        return False
    token = HANDLE()
    if not _OpenProcessToken(_GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
        return False
    try:
        size = wintypes.DWORD()
        _GetTokenInformation(token, TOKEN_PRIVILEGES_CLASS, None, 0, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(max(size.value, 16))
        if not _GetTokenInformation(
            token, TOKEN_PRIVILEGES_CLASS, buffer, len(buffer), ctypes.byref(size)
        ):
            return False
        count = wintypes.DWORD.from_buffer(buffer).value
        for index in range(count):  # LUID_AND_ATTRIBUTES: LowPart, HighPart, Attributes
            low, high, _ = (wintypes.DWORD * 3).from_buffer(buffer, 4 + 12 * index)
            if (low, high) == (luid[0], luid[1]):
                return True
        return False
    finally:
        _close(token.value)


_PRIVILEGE_MESSAGE = (
    "machine-wide lines need the 'Create global objects' privilege "
    "(SeCreateGlobalPrivilege), which this account lacks: run as an administrator or a "
    "service, ask an administrator to grant it, or use per-user lines (drop --machine)"
)


class _Security:
    """A ``SECURITY_ATTRIBUTES`` built from SDDL, for objects other users must reach."""

    def __init__(self, sddl: str) -> None:
        self.descriptor = ctypes.c_void_p()
        if not _ConvertSddl(sddl, 1, ctypes.byref(self.descriptor), None):
            raise _os_error("cannot build a security descriptor")
        self.attributes = _SecurityAttributes(
            ctypes.sizeof(_SecurityAttributes), self.descriptor, False
        )

    @property
    def pointer(self) -> Any:
        return ctypes.byref(self.attributes)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.descriptor:
                _LocalFree(self.descriptor)


# Machine scope: every authenticated user may wait on a ticket (SYNCHRONIZE) and take and give
# back the guard (plus MUTEX_MODIFY_STATE). In the shared folders every authenticated user may
# list, create files and folders, and read files (0x1200af on folders, FR on files), and has
# full control of what they created themselves (CREATOR OWNER), but may not change, rename or
# delete another user's files: like a sticky folder on POSIX.
_MACHINE_TICKET_SDDL = "D:(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})(A;;0x100000;;;AU)"
_MACHINE_GUARD_SDDL = "D:(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})(A;;0x100001;;;AU)"
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
    access = GENERIC_READ | (GENERIC_WRITE if write else 0)
    handle = _CreateFileW(
        path, access, FILE_SHARE_ALL, None, disposition, FILE_ATTRIBUTE_NORMAL, None
    )
    if handle is None or handle == INVALID_HANDLE_VALUE:
        raise _os_error(path)
    try:
        return msvcrt.open_osfhandle(handle, os.O_RDWR if write else os.O_RDONLY)
    except BaseException:
        _close(handle)
        raise


def _read_file(path: str) -> bytes | None:
    """The start of ``path`` (as much as a record holds); None when it is gone or deleted."""
    found = _read_owned(path, owner=False)
    return None if found is None else found[0]


def _read_owned(path: str, owner: bool) -> tuple[bytes, str | None] | None:
    """The start of ``path`` (as much as a record holds) and, if asked, the name of the file's
    owner; None when it is gone or being deleted."""
    try:
        fd = _open_shared(path, write=False, disposition=OPEN_EXISTING)
    except OSError as exc:
        if exc.winerror in (ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_ACCESS_DENIED):
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
    if _GetSecurityInfo(handle, SE_FILE_OBJECT, OWNER_SECURITY_INFORMATION, ctypes.byref(sid),
                        None, None, None, ctypes.byref(descriptor)) != 0:  # fmt: skip
        return None
    try:
        name = ctypes.create_unicode_buffer(256)
        domain = ctypes.create_unicode_buffer(256)
        name_size, domain_size, use = wintypes.DWORD(256), wintypes.DWORD(256), wintypes.DWORD()
        if not _LookupAccountSidW(None, sid, name, ctypes.byref(name_size), domain,
                                  ctypes.byref(domain_size), ctypes.byref(use)):  # fmt: skip
            return None
        return f"{domain.value}\\{name.value}" if domain.value else name.value
    finally:
        _LocalFree(descriptor)


def _make_folder(path: str, security: _Security | None) -> bool:
    """Create ``path`` (with ``security`` if given); False when it already exists."""
    if security is None:
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        return True
    if _CreateDirectoryW(path, security.pointer):
        return True
    code = _last_error()
    if code == ERROR_ALREADY_EXISTS:
        return False
    raise _os_error(path, code)


# --------------------------------------------------------------------------- folders


def default_root(scope: str) -> str:
    """``%LOCALAPPDATA%\\inturn`` per user; ``%ProgramData%\\inturn`` for the machine."""
    if scope == "machine":
        base = (
            os.environ.get("PROGRAMDATA") or os.environ.get("ALLUSERSPROFILE") or "C:\\ProgramData"
        )
        return os.path.join(base, "inturn")
    base = os.environ.get("LOCALAPPDATA") or os.path.join(
        os.path.expanduser("~"), "AppData", "Local"
    )
    return os.path.join(base, "inturn")


def prepare_root(path: str, scope: str, explicit: bool) -> None:
    """Create the lines folder if needed and check that it is a usable folder of ours."""
    security = _Security(_MACHINE_FOLDER_SDDL) if scope == "machine" else None
    try:
        if not os.path.lexists(path):
            parent = os.path.dirname(path)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
            _make_folder(path, security)
    except OSError as exc:
        raise BackendError(
            f"cannot create the lines folder {path}: {exc.strerror}; "
            "choose a writable folder with --dir or INTURN_DIR"
        ) from None
    info = os.lstat(path)
    attributes = getattr(info, "st_file_attributes", 0)
    if not explicit and attributes & FILE_ATTRIBUTE_REPARSE_POINT:
        raise BackendError(
            f"{path} is a link or junction, not a folder of inturn's: remove it "
            "(someone may be trying to redirect your lines) or set INTURN_DIR"
        )
    if not os.path.isdir(path):
        raise BackendError(f"{path} is not a folder: remove it or set INTURN_DIR to another place")


class WindowsBackend(Backend):
    """Lines on this Windows machine: named mutexes, and a folder for order and metadata."""

    def __init__(self, scope: str = "user", directory: str | None = None) -> None:
        self.root, explicit = resolve_root(scope, directory, default_root)
        self.scope = scope
        prepare_root(self.root, scope, explicit)
        self.sid = user_sid()
        # A number for this user's own counter file on machine-wide lines.
        self.counter_id = int.from_bytes(hashlib.sha256(self.sid.encode()).digest()[:6], "big")
        if scope == "machine":
            self.namespace = "Global\\inturn.machine"
            self.ticket_security: _Security | None = _Security(
                _MACHINE_TICKET_SDDL.format(sid=self.sid)
            )
            self.guard_security: _Security | None = _Security(
                _MACHINE_GUARD_SDDL.format(sid=self.sid)
            )
            self.folder_security: _Security | None = _Security(_MACHINE_FOLDER_SDDL)
        else:
            self.namespace = f"Local\\inturn.{self.sid}"
            self.ticket_security = self.guard_security = self.folder_security = None

    @property
    def where(self) -> str:
        return self.root

    def line(self, name: str) -> WindowsLine:
        return WindowsLine(self, name)

    def names(self) -> list[str]:
        def recorded_name(folder: str) -> str | None:
            identity = _read_identity(folder)
            return None if identity is None else identity[0]

        return names_in(self.root, recorded_name)


def _read_identity(folder: str) -> tuple[str, str] | None:
    """The line's exact name and its random id, from ``.name``; None if missing or unusable."""
    data = _read_file(os.path.join(folder, NAME_FILE))
    if data is None:
        return None
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

    def __init__(self, name: str, security: _Security | None) -> None:
        self.name = name
        self.error = 0
        self._security = security
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inturn-ticket", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        attributes = self._security.pointer if self._security is not None else None
        handle = _CreateMutexW(attributes, True, self.name)
        error = _last_error()
        if not handle or error in (ERROR_ALREADY_EXISTS, ERROR_INVALID_HANDLE):
            # Already there (a squatter or a leftover): not ours, and we do not own it.
            self.error = error or ERROR_ALREADY_EXISTS
            _close(handle)
            self._ready.set()
            return
        self._ready.set()
        self._done.wait()
        _ReleaseMutex(handle)
        _CloseHandle(handle)

    @property
    def created(self) -> bool:
        return self.error == 0

    def release(self) -> None:
        """Release and close the mutex; returns once the next in line can see it free."""
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class WindowsMembership(Membership):
    """Our ticket: its owner thread holds the mutex; ``fd`` is our open ticket record."""

    def __init__(self, number: int, fd: int, owner: _Owner) -> None:
        self.number = number
        self.fd = fd
        self.owner = owner
        self.closed = False


# --------------------------------------------------------------------------- waiting


class _KernelEvent(threading.Event):
    """A ``threading.Event`` that also sets a Win32 event, so a cancel wakes a kernel wait."""

    def __init__(self) -> None:
        super().__init__()
        self.handle = _CreateEventW(None, True, False, None)
        if not self.handle:
            raise _os_error("cannot create an event")

    def set(self) -> None:
        super().set()
        _SetEvent(self.handle)

    def close(self) -> None:
        _close(self.handle)
        self.handle = None


class _ConsoleEvents:
    """Ctrl-C and Ctrl-Break for a main thread asleep in a kernel wait.

    A console control handler runs on a thread the system creates for it, and handlers run
    last-registered first (learn.microsoft.com: SetConsoleCtrlHandler, HandlerRoutine). While a
    wait is armed, ours records the event and sets a kernel event that is part of the wait,
    and answers TRUE so it is handled once; the waiting thread then raises the Python signal
    itself, at a point where it owns no mutex. Events for signals Python does not handle
    (``SIG_DFL``, ``SIG_IGN``) are left to the next handler, as if we were not there.

    In ``child`` mode (``inturn run`` while the command runs) Ctrl-C and Ctrl-Break are
    swallowed: the command shares our console and process group and gets them itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.handle = _CreateEventW(None, True, False, None)
        self.mode = ""
        self.pending: signal.Signals | None = None
        self._callback = _HANDLER_ROUTINE(self._on_event)

    def _on_event(self, event: int) -> int:
        if event not in (CTRL_C_EVENT, CTRL_BREAK_EVENT):
            return 0
        signum = signal.SIGINT if event == CTRL_C_EVENT else signal.SIGBREAK
        with self._lock:
            if self.mode == "child":
                _SetEvent(self.handle)
                return 1
            if self.mode != "wait" or not callable(signal.getsignal(signum)):
                return 0
            self.pending = signum
            _SetEvent(self.handle)
            return 1

    @contextlib.contextmanager
    def armed(self, mode: str) -> Iterator[int]:
        """Handle console events as ``mode`` says for the ``with`` block; yields the event."""
        with self._lock:
            self.mode = mode
            self.pending = None
            _ResetEvent(self.handle)
        registered = bool(_SetConsoleCtrlHandler(self._callback, True))
        try:
            yield self.handle
        finally:
            if registered:
                _SetConsoleCtrlHandler(self._callback, False)
            with self._lock:
                self.mode = ""
                late, self.pending = self.pending, None
            if late is not None:
                _run_handler(late)  # it came as the wait ended: not lost, handled here

    def deliver(self) -> None:
        """Run the Python handler of the recorded signal here (it may raise KeyboardInterrupt)."""
        with self._lock:
            signum, self.pending = self.pending, None
            _ResetEvent(self.handle)
        if signum is not None:
            _run_handler(signum)


def _run_handler(signum: signal.Signals) -> None:
    """Run the Python handler of ``signum`` now, in this (main) thread, as if it had arrived."""
    _thread.interrupt_main(signum)
    ctypes.pythonapi.PyErr_CheckSignals()  # raises what the handler raises


_console: _ConsoleEvents | None = None
_console_lock = threading.Lock()


def _console_events() -> _ConsoleEvents:
    global _console
    with _console_lock:
        if _console is None:
            _console = _ConsoleEvents()
        return _console


def _wait_handles(handles: Sequence[int], timeout_ms: int) -> int:
    """``WaitForMultipleObjects`` on up to 64 handles, any one; the raw result."""
    array = (HANDLE * len(handles))(*handles)
    result = int(_WaitForMultipleObjects(len(handles), array, False, timeout_ms))
    if result == WAIT_FAILED:
        raise _os_error("cannot wait for the line")
    return result


def _signalled_index(result: int, count: int) -> int | None:
    """Which handle ended the wait: ``WAIT_OBJECT_0 + i`` or ``WAIT_ABANDONED_0 + i``."""
    if WAIT_OBJECT_0 <= result < WAIT_OBJECT_0 + count:
        return result - WAIT_OBJECT_0
    if WAIT_ABANDONED_0 <= result < WAIT_ABANDONED_0 + count:
        return result - WAIT_ABANDONED_0
    return None


class _Fanout:
    """Watches more mutexes than one wait can hold (63 per helper thread) and sets one event.

    Only needed past ~60 slots. Each helper owns a mutex it wins just long enough to release
    it, from its own thread, as ownership requires.
    """

    def __init__(self, mutexes: Sequence[int]) -> None:
        self.woken = _CreateEventW(None, True, False, None)
        self.stop = _CreateEventW(None, True, False, None)
        self.threads = []
        step = MAXIMUM_WAIT_OBJECTS - 1
        for start in range(0, len(mutexes), step):
            chunk = list(mutexes[start : start + step])
            thread = threading.Thread(target=self._watch, args=(chunk,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, chunk: list[int]) -> None:
        result = _wait_handles([*chunk, self.stop], INFINITE)
        index = _signalled_index(result, len(chunk) + 1)
        if index is not None and index < len(chunk):
            _ReleaseMutex(chunk[index])
            _SetEvent(self.woken)

    def close(self) -> None:
        _SetEvent(self.stop)
        for thread in self.threads:
            thread.join()
        _close(self.woken)
        _close(self.stop)


def _milliseconds(seconds: float) -> int:
    return max(0, min(INFINITE - 1, int(seconds * 1000 + 0.999)))


def wait_for_mutexes(
    mutexes: Sequence[int], timeout: float | None, cancel: CancelToken | None, line: str
) -> tuple[int, bool] | None:
    """Sleep until one of ``mutexes`` can be acquired (its owner left or died): which one, and
    whether it was released cleanly (not abandoned by a dead owner); None on timeout.

    The mutex won is released at once by this same thread. On the main thread Ctrl-C and
    Ctrl-Break wake the wait through a console control handler and the Python handler runs
    here; a cancel sets a kernel event that is part of the same wait.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    kernel_cancel = _KernelEvent() if cancel is not None else None
    fanout = _Fanout(mutexes) if len(mutexes) > MAXIMUM_WAIT_OBJECTS - 2 else None
    watched = [fanout.woken] if fanout is not None else list(mutexes)
    on_main = threading.current_thread() is threading.main_thread()
    console = _console_events() if on_main else None
    try:
        with contextlib.ExitStack() as stack:
            extras: list[int] = []
            if cancel is not None and kernel_cancel is not None:
                stack.enter_context(cancel.linked(kernel_cancel))
                extras.append(kernel_cancel.handle)
            if console is not None:
                extras.append(stack.enter_context(console.armed("wait")))
            handles = [*watched, *extras]
            while True:
                if deadline is None:
                    wait_ms = INFINITE
                else:
                    wait_ms = _milliseconds(deadline - time.monotonic())
                result = _wait_handles(handles, wait_ms)
                index = _signalled_index(result, len(handles))
                if index is None:
                    if result == WAIT_TIMEOUT and (
                        deadline is None or time.monotonic() >= deadline
                    ):
                        return None
                    continue
                if index < len(watched):
                    if fanout is None:
                        _ReleaseMutex(watched[index])
                        return index, result < WAIT_ABANDONED_0
                    return 0, False
                if kernel_cancel is not None and handles[index] == kernel_cancel.handle:
                    raise Cancelled(f"stopped waiting for line {line!r}")
                if console is not None:
                    console.deliver()  # raises if the handler does; else wait on
    finally:
        if fanout is not None:
            fanout.close()
        if kernel_cancel is not None:
            kernel_cancel.close()


# --------------------------------------------------------------------------- one line


class WindowsLine(LineStore):
    def __init__(self, backend: WindowsBackend, name: str) -> None:
        self.name = name
        self.scope = backend.scope
        self.backend = backend
        self.folder = os.path.join(backend.root, safe_file_name(name))
        self._id: str | None = None
        self._guard_handle: int | None = None
        self._open_lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.folder

    # -- folder, identity and guard

    def _line_id(self) -> str:
        if self._id is None:
            with self._open_lock:
                if self._id is None:
                    self._id = self._open_folder()
        return self._id

    def _open_folder(self) -> str:
        try:
            _make_folder(self.folder, self.backend.folder_security)
        except OSError as exc:
            raise BackendError(
                f"cannot create the line folder {self.folder}: {exc.strerror}; "
                "check the permissions of its parent, or use --dir / INTURN_DIR"
            ) from None
        if not os.path.isdir(self.folder):
            raise BackendError(
                f"{self.folder} is not a folder where inturn keeps line {self.name!r}: remove it"
            )
        path = os.path.join(self.folder, NAME_FILE)
        for _ in range(2):
            identity = _read_identity(self.folder)
            if identity is not None:
                if identity[0] != self.name:
                    raise BackendError(f"{path} names another line ({identity[0]!r}): remove it")
                return identity[1]
            if os.path.exists(path):
                raise BackendError(
                    f"{path} is corrupt: remove the folder {self.folder} when nobody uses the line"
                )
            self._write_identity(path)
        raise BackendError(f"cannot set up {path}: check the folder's permissions")

    def _write_identity(self, path: str) -> None:
        """Publish ``.name`` atomically: write a private file, then rename it into place.

        A rename onto an existing file fails on Windows, so when two processes set up the line
        at once exactly one id wins, and both then read it.
        """
        draft = f"{path}.{secrets.token_hex(8)}.tmp"
        record = {"name": self.name, "id": secrets.token_hex(16)}
        try:
            with open(draft, "wb") as out:
                out.write(dumps_line(record))
            os.rename(draft, path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BackendError(
                f"cannot write in {self.folder} ({exc.strerror}): fix its permissions, "
                "or choose another folder with --dir or INTURN_DIR"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(draft)

    def object_name(self, suffix: int | str) -> str:
        """The kernel object name for a ticket number (or ``guard``): ASCII, no backslash."""
        return f"{self.backend.namespace}.{self._line_id()}.{suffix}"

    def _guard_mutex(self) -> int:
        if self._guard_handle is None:
            name = self.object_name("guard")
            security = self.backend.guard_security
            handle = _OpenMutexW(SYNCHRONIZE | MUTEX_MODIFY_STATE, False, name)
            if not handle:
                attributes = security.pointer if security is not None else None
                handle = _CreateMutexW(attributes, False, name)
            if not handle:
                raise BackendError(self._object_error("guard", _last_error()))
            with self._open_lock:
                if self._guard_handle is None:
                    self._guard_handle = handle
                else:
                    _close(handle)
        assert self._guard_handle is not None
        return self._guard_handle

    def _object_error(self, what: str, code: int) -> str:
        if code == ERROR_ACCESS_DENIED and self.scope == "machine":
            return _PRIVILEGE_MESSAGE
        if code == ERROR_ACCESS_DENIED:
            return f"access denied to the {what} of line {self.name!r}: someone else created it"
        return f"cannot use the {what} of line {self.name!r}: {ctypes.FormatError(code)}"

    @contextlib.contextmanager
    def _guard(self, patience: Patience) -> Iterator[None]:
        """The short lock under which numbers are taken and dead tickets removed.

        A holder that died in here leaves the mutex abandoned: the next one takes it over;
        every step inside is safe to find half done. A caller with a deadline or a cancel
        token waits no longer than they allow (``GuardTaken``, ``Cancelled``).
        """
        handle = self._guard_mutex()
        remaining = patience.remaining()
        if remaining is None and patience.cancel is None:
            result = _WaitForSingleObject(handle, INFINITE)
        else:
            result = self._wait_guard(handle, remaining, patience.cancel)
        if result not in (WAIT_OBJECT_0, WAIT_ABANDONED_0):
            raise _os_error(f"cannot take the guard of line {self.name!r}")
        try:
            yield
        finally:
            _ReleaseMutex(handle)

    def _wait_guard(self, handle: int, remaining: float | None, cancel: CancelToken | None) -> int:
        wait_ms = INFINITE if remaining is None else _milliseconds(max(0.0, remaining))
        kernel_cancel = _KernelEvent() if cancel is not None else None
        try:
            with contextlib.ExitStack() as stack:
                handles = [handle]
                if cancel is not None and kernel_cancel is not None:
                    stack.enter_context(cancel.linked(kernel_cancel))
                    handles.append(kernel_cancel.handle)
                result = _wait_handles(handles, wait_ms)
        finally:
            if kernel_cancel is not None:
                kernel_cancel.close()
        if result == WAIT_OBJECT_0 + 1:
            raise Cancelled(f"stopped waiting for line {self.name!r}")
        if result == WAIT_TIMEOUT:
            raise GuardTaken(f"its guard (the mutex {self.object_name('guard')}) is held for long")
        return result

    def _path(self, entry: str) -> str:
        return os.path.join(self.folder, entry)

    def _counter_path(self) -> str:
        """Where this process keeps the line's counter. Machine-wide, each user writes only a
        counter of their own (the folder lets nobody change another's files), and numbers
        go above all of them, so nobody can turn back the numbers others were given."""
        if self.scope != "machine":
            return self._path(COUNTER)
        return self._path(counter_file(self.backend.counter_id))

    def _next_number(self, entries: Entries) -> int:
        """Under the guard: the next number, above every counter and every number present."""
        if self.scope != "machine":
            data = _read_file(self._path(COUNTER)) or b""
            return next_number(data, self._path(COUNTER), entries.highest)
        highest = entries.highest
        for entry in (COUNTER, *entries.counters):
            text = (_read_file(self._path(entry)) or b"").split(b"\n", 1)[0].strip()
            if text.isdigit() and len(text) < 19:
                highest = max(highest, int(text) - 1)
        return highest + 1

    def _save_number(self, following: int) -> None:
        try:
            fd = _open_shared(self._counter_path(), write=True, disposition=OPEN_ALWAYS)
        except OSError as exc:
            raise BackendError(
                f"cannot use {self._counter_path()}: {exc.strerror}; fix the folder's "
                "permissions, or choose another folder with --dir or INTURN_DIR"
            ) from None
        try:
            os.write(fd, f"{following}\n".encode())
        finally:
            os.close(fd)

    def _entries(self) -> Entries:
        self._line_id()
        return read_entries(os.listdir(self.folder))

    # -- LineStore

    def join(self, me: Ticket, patience: Patience) -> tuple[WindowsMembership, View]:
        if self.scope == "machine" and not has_global_privilege():
            raise BackendError(_PRIVILEGE_MESSAGE)  # looking needs no privilege; joining does
        self._line_id()
        with self._guard(patience):
            entries = self._entries()
            owner, fd, number = self._take(self._next_number(entries))
            try:
                _write_all(fd, dumps_line(me.header()))
                self._save_number(number + 1)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self._path(ticket_file(number)))
                owner.release()
                raise
        ahead = tuple(n for n in entries.tickets if n < number)
        return WindowsMembership(number, fd, owner), View(ahead, entries.markers)

    def _take(self, number: int) -> tuple[_Owner, int, int]:
        """Create the mutex and the record of the first free number from ``number`` on.

        A name or file already there (a squatter, a leftover) is skipped, never reused.
        """
        for _ in range(1000):
            owner = _Owner(self.object_name(number), self.backend.ticket_security)
            if not owner.created:
                if owner.error == ERROR_ACCESS_DENIED:
                    raise BackendError(self._object_error("tickets", owner.error))
                number += 1
                continue
            try:
                fd = self._create_new(ticket_file(number))
            except BaseException:
                owner.release()
                raise
            if fd is not None:
                return owner, fd, number
            owner.release()
            number += 1
        raise BackendError(f"{self.folder} is full of foreign files: clean it up")

    def _create_new(self, entry: str) -> int | None:
        """Create one of the line's files, which must not exist yet; None if it does."""
        path = self._path(entry)
        try:
            return _open_shared(path, write=True, disposition=CREATE_NEW)
        except OSError as exc:
            taken = exc.winerror == ERROR_FILE_EXISTS or (
                exc.winerror == ERROR_ACCESS_DENIED and os.path.lexists(path)
            )
            if taken:
                return None  # a leftover or planted file, or one being deleted
            raise BackendError(
                f"cannot write in {self.folder} ({exc.strerror}): fix its permissions, "
                "or choose another folder with --dir or INTURN_DIR"
            ) from None

    def status(self) -> LineStatus:
        """Looking at a line that nobody has used yet must not create it."""
        if self._id is None and not os.path.lexists(self.folder):
            return LineStatus(self.name, scope=self.scope, where=self.folder)
        return super().status()

    def look(self, me: Membership | None) -> View:
        entries = self._entries()
        tickets = entries.tickets
        if me is not None:
            tickets = tuple(n for n in tickets if n < me.number)
        return View(tickets, entries.markers)

    def _alive(self, number: int) -> bool:
        """Whether ticket ``number``'s mutex exists and is owned by someone.

        A mutex that no longer exists, or that this thread can take at once (nobody owns it:
        released, or abandoned by a dead owner), belongs to a dead ticket. One taken here is
        given back at once.
        """
        handle = _OpenMutexW(SYNCHRONIZE, False, self.object_name(number))
        if not handle:
            # Gone: dead. Access denied: someone else's, and not ours to judge.
            return _last_error() == ERROR_ACCESS_DENIED
        try:
            result = _WaitForSingleObject(handle, 0)
            if result in (WAIT_OBJECT_0, WAIT_ABANDONED_0):
                _ReleaseMutex(handle)
                return False
            return True
        finally:
            _CloseHandle(handle)

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        return [self._alive(number) for number in numbers]

    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        name = ticket_file(number)
        with self._guard(patience):
            data = None if self._alive(number) else _read_file(self._path(name))
            if data is not None:
                record = parse_record(number, data, self._path(name))
                if data and record is not None and record.holding:
                    self._leave_marker(number, data)
                try:
                    os.unlink(self._path(name))
                except (FileNotFoundError, PermissionError):
                    pass  # gone, or another user's: dead all the same, and marked
                except OSError as exc:
                    warn_once(f"cannot remove dead ticket {self._path(name)}: {exc.strerror}")
            marker, told = (
                os.path.lexists(self._path(f(number))) for f in (marker_file, told_file)
            )
            return marker and not told

    def _leave_marker(self, number: int, data: bytes) -> None:
        fd = self._create_new(marker_file(number))
        if fd is None:
            return  # someone marked it already
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def wait(
        self,
        me: Membership,
        numbers: Sequence[int],
        timeout: float | None,
        cancel: CancelToken | None,
    ) -> Woke | None:
        handles: list[int] = []
        try:
            for number in numbers:
                handle = _OpenMutexW(SYNCHRONIZE, False, self.object_name(number))
                if not handle:
                    code = _last_error()
                    if code == ERROR_ACCESS_DENIED:
                        raise BackendError(self._object_error(f"ticket {number}", code))
                    return Woke()  # gone already
                handles.append(handle)
            woke = wait_for_mutexes(handles, timeout, cancel, self.name)
            if woke is None:
                return None
            index, clean = woke
            return Woke(left=(numbers[index],) if clean else ())
        finally:
            for handle in handles:
                _CloseHandle(handle)

    def mark_acquired(self, me: Membership, when: float) -> None:
        assert isinstance(me, WindowsMembership)
        _write_all(me.fd, b'{"acquired_at":%r}\n' % when)

    def claim_abandoned(self, me: Membership) -> Ticket | None:
        for number in self._entries().markers:
            path = self._path(marker_file(number))
            data = _read_file(path)
            if data is None:
                continue
            told = self._create_new(told_file(number))
            if told is None:
                continue  # another new holder was told
            os.close(told)
            if not os.path.lexists(path):  # claimed and tidied away while we read it
                with contextlib.suppress(OSError):
                    os.unlink(self._path(told_file(number)))
                continue
            record = parse_record(number, data, path)
            with contextlib.suppress(OSError, BackendError), self._guard(Patience(0.0)):
                if not self._alive(number):  # the safe order: ticket, marker, claim
                    for entry in (ticket_file(number), marker_file(number), told_file(number)):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._path(entry))
            return record
        return None

    def leave(self, me: Membership) -> None:
        assert isinstance(me, WindowsMembership)
        if me.closed:
            return
        me.closed = True
        os.close(me.fd)
        # Remove the record first, then free the mutex: a waiter woken by the release must not
        # find the record of a holder that left cleanly and take it for a dead one.
        try:
            os.unlink(self._path(ticket_file(me.number)))
        except FileNotFoundError:
            pass
        except OSError as exc:
            warn_once(f"cannot remove {self._path(ticket_file(me.number))}: {exc.strerror}")
        me.owner.release()

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        result: list[Ticket | None] = []
        for number in numbers:
            path = self._path(ticket_file(number))
            found = _read_owned(path, owner=self.scope == "machine")
            if found is None or not found[0]:
                result.append(None)
                continue
            data, owner = found
            result.append(parse_record(number, data, path, owner))
        return result

    def close(self) -> None:
        with self._open_lock:
            handle, self._guard_handle = self._guard_handle, None
        _close(handle)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------- inturn run


class _Job:
    """A job object that kills every process in it when its last handle closes.

    inturn holds the only handle, so if inturn dies (killed, crashed, console closed) the
    system kills the command too: the command never runs outside its turn
    (learn.microsoft.com: JOBOBJECT_BASIC_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE).
    With ``close``, processes the command starts break away silently and may outlive the turn.
    """

    def __init__(self, close: bool) -> None:
        self._lock = threading.Lock()  # ``terminate`` may come from another thread
        self.handle = _CreateJobObjectW(None, None)
        if not self.handle:
            raise _os_error("cannot create a job object")
        limits = _JobExtendedLimits()
        flags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if close:
            flags |= JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK
        limits.BasicLimitInformation.LimitFlags = flags
        if not _SetInformationJobObject(
            self.handle, JOB_EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits), ctypes.sizeof(limits)
        ):
            code = _last_error()
            _close(self.handle)
            raise _os_error("cannot set up a job object", code)

    def adopt(self, pid: int) -> None:
        """Put the suspended process ``pid`` in the job, then let it run."""
        process = _OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, pid)
        if not process:
            raise _os_error("cannot open the command's process")
        try:
            if not _AssignProcessToJobObject(self.handle, process):
                raise _os_error("cannot put the command in a job object")
        finally:
            _CloseHandle(process)
        _resume_threads(pid)

    def members(self) -> list[int]:
        """Handles (to wait on) of the processes still in the job."""
        listing = _JobProcessIds()
        if not _QueryInformationJobObject(
            self.handle,
            JOB_BASIC_PROCESS_ID_LIST,
            ctypes.byref(listing),
            ctypes.sizeof(listing),
            None,
        ):
            return []
        handles = []
        for pid in listing.ProcessIdList[: listing.NumberOfProcessIdsInList]:
            process = _OpenProcess(SYNCHRONIZE | PROCESS_QUERY_INFORMATION, False, pid) or (
                _OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
            )
            if not process:
                continue  # ended since the listing
            inside = wintypes.BOOL(True)
            _IsProcessInJob(process, self.handle, ctypes.byref(inside))  # in doubt, wait for it
            if inside.value:
                handles.append(process)
            else:
                _CloseHandle(process)  # the pid was reused by a process outside the job
        return handles

    def wait_empty(self, interrupt: int) -> None:
        """Hold the turn until every process left in the job has ended.

        Waits on the processes themselves, so no notification can be missed; Ctrl-C or
        Ctrl-Break (``interrupt``) ends what is left instead.
        """
        while True:
            members = self.members()[: MAXIMUM_WAIT_OBJECTS - 1]
            if not members:
                return
            try:
                result = _wait_handles([*members, interrupt], INFINITE)
            finally:
                for process in members:
                    _CloseHandle(process)
            if result == WAIT_OBJECT_0 + len(members):
                _TerminateJobObject(self.handle, 1)
                return

    def terminate(self, code: int) -> None:
        """End every process in the job at once, with exit code ``code``."""
        with self._lock:
            if self.handle:
                _TerminateJobObject(self.handle, code)

    def close(self) -> None:
        with self._lock:
            handle, self.handle = self.handle, None
        _close(handle)


def _resume_threads(pid: int) -> None:
    """Resume the threads of a process created suspended (its only thread, in practice)."""
    snapshot = _CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0)
    if snapshot is None or snapshot == INVALID_HANDLE_VALUE:
        raise _os_error("cannot list the command's threads")
    try:
        entry = _ThreadEntry()
        entry.dwSize = ctypes.sizeof(_ThreadEntry)
        found = _Thread32First(snapshot, ctypes.byref(entry))
        while found:
            if entry.th32OwnerProcessID == pid:
                thread = _OpenThread(THREAD_SUSPEND_RESUME, False, entry.th32ThreadID)
                if thread:
                    _ResumeThread(thread)
                    _CloseHandle(thread)
            found = _Thread32Next(snapshot, ctypes.byref(entry))
    finally:
        _CloseHandle(snapshot)


def run_child(
    command: list[str],
    env: dict[str, str],
    close: bool,
    on_lost: Callable[[Callable[[], None]], None] | None = None,
) -> int:
    """Run ``command`` while this process holds the turn; its exit code.

    A child process cannot own its parent's mutex, so the turn stays with inturn and the command
    goes in a kill-on-close job: if inturn dies, so does the command, and the next holder is
    told the turn was abandoned. The command is created suspended and put in the job before it
    runs a single instruction, so nothing it starts can escape. It shares inturn's console and
    process group, so it gets Ctrl-C and Ctrl-Break itself; inturn ignores them and waits for it.
    Without ``close``, whatever the command leaves running still belongs to the turn: inturn
    holds the turn until those processes end too (Ctrl-C ends them).

    ``on_lost`` (``Turn.on_lost``) is for server backends: if the turn is lost while the command
    runs, the job is ended at once and the result is 76, as on POSIX.
    """
    from .cli import EXIT_LOST

    try:
        job = _Job(close)
    except OSError as exc:
        raise BackendError(f"{exc.strerror}: cannot tie the command to its turn") from None
    console = _console_events()
    lost = threading.Event()

    def stop() -> None:
        lost.set()
        print(
            "inturn: lost the turn (server unreachable); stopping the command",
            file=sys.stderr,
            flush=True,
        )
        job.terminate(EXIT_LOST)

    if on_lost is not None:
        on_lost(stop)
    try:
        with console.armed("child") as interrupt:
            program = shutil.which(command[0]) or command[0]
            # argv[0] stays as typed; a batch file is run by path (it has no image of its own).
            is_image = program.lower().endswith((".exe", ".com"))
            args = command if is_image else [program, *command[1:]]
            try:
                child = subprocess.Popen(
                    args,
                    executable=program if is_image else None,
                    env=env,
                    creationflags=CREATE_SUSPENDED,
                )
            except OSError as exc:
                raise UsageError(f"cannot run {command[0]}: {exc.strerror}") from None
            try:
                job.adopt(child.pid)
            except BaseException as exc:
                child.kill()
                child.wait()
                if isinstance(exc, OSError):
                    raise BackendError(
                        f"{exc.strerror}: cannot tie the command to its turn, so it was not run"
                    ) from None
                raise
            if lost.is_set():
                job.terminate(EXIT_LOST)  # lost before the command was in the job
            code = child.wait()
            if not close and not lost.is_set():
                job.wait_empty(interrupt)
        return EXIT_LOST if lost.is_set() else code
    finally:
        job.close()
