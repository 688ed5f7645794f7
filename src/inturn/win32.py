"""The Win32 calls inturn makes, through ctypes: constants, bindings, and small helpers.

Shared by the Windows backend (named mutexes, files, console events) and by ``inturn run`` on
Windows (job objects). Each binding names its argument types, so that it reads like its C
prototype on learn.microsoft.com.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from ctypes import wintypes
from typing import Any

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
ERROR_DIR_NOT_EMPTY = 145
ERROR_ALREADY_EXISTS = 183

SYNCHRONIZE = 0x00100000
MUTEX_MODIFY_STATE = 0x0001
EVENT_MODIFY_STATE = 0x0002
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
JOB_OBJECT_QUERY = 0x0004
JOB_OBJECT_TERMINATE = 0x0008
JOB_EXTENDED_LIMIT_INFORMATION = 9

# --------------------------------------------------------------------------- bindings

kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
HANDLE = ctypes.c_void_p
HANDLER_ROUTINE = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)


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

CreateMutexW = _bind(kernel32, "CreateMutexW", _H, _P, _BOOL, _WSTR)
OpenMutexW = _bind(kernel32, "OpenMutexW", _H, _DWORD, _BOOL, _WSTR)
ReleaseMutex = _bind(kernel32, "ReleaseMutex", _BOOL, _H)
CloseHandle = _bind(kernel32, "CloseHandle", _BOOL, _H)
CreateEventW = _bind(kernel32, "CreateEventW", _H, _P, _BOOL, _BOOL, _WSTR)
OpenEventW = _bind(kernel32, "OpenEventW", _H, _DWORD, _BOOL, _WSTR)
SetEvent = _bind(kernel32, "SetEvent", _BOOL, _H)
ResetEvent = _bind(kernel32, "ResetEvent", _BOOL, _H)
WaitForSingleObject = _bind(kernel32, "WaitForSingleObject", _DWORD, _H, _DWORD)
WaitForMultipleObjects = _bind(
    kernel32, "WaitForMultipleObjects", _DWORD, _DWORD, ctypes.POINTER(_H), _BOOL, _DWORD
)
SetConsoleCtrlHandler = _bind(kernel32, "SetConsoleCtrlHandler", _BOOL, HANDLER_ROUTINE, _BOOL)
CreateFileW = _bind(kernel32, "CreateFileW", _H, _WSTR, _DWORD, _DWORD, _P, _DWORD, _DWORD, _H)
CreateDirectoryW = _bind(kernel32, "CreateDirectoryW", _BOOL, _WSTR, _P)
GetCurrentProcess = _bind(kernel32, "GetCurrentProcess", _H)
OpenProcess = _bind(kernel32, "OpenProcess", _H, _DWORD, _BOOL, _DWORD)
OpenThread = _bind(kernel32, "OpenThread", _H, _DWORD, _BOOL, _DWORD)
ResumeThread = _bind(kernel32, "ResumeThread", _DWORD, _H)
CreateToolhelp32Snapshot = _bind(kernel32, "CreateToolhelp32Snapshot", _H, _DWORD, _DWORD)
CreateJobObjectW = _bind(kernel32, "CreateJobObjectW", _H, _P, _WSTR)
OpenJobObjectW = _bind(kernel32, "OpenJobObjectW", _H, _DWORD, _BOOL, _WSTR)
SetInformationJobObject = _bind(
    kernel32, "SetInformationJobObject", _BOOL, _H, ctypes.c_int, _P, _DWORD
)
QueryInformationJobObject = _bind(
    kernel32, "QueryInformationJobObject", _BOOL, _H, ctypes.c_int, _P, _DWORD, _P
)
AssignProcessToJobObject = _bind(kernel32, "AssignProcessToJobObject", _BOOL, _H, _H)
TerminateJobObject = _bind(kernel32, "TerminateJobObject", _BOOL, _H, wintypes.UINT)
IsProcessInJob = _bind(kernel32, "IsProcessInJob", _BOOL, _H, _H, ctypes.POINTER(_BOOL))
LocalFree = _bind(kernel32, "LocalFree", _H, _H)
GetDriveTypeW = _bind(kernel32, "GetDriveTypeW", wintypes.UINT, _WSTR)
GetSecurityInfo = _bind(
    advapi32, "GetSecurityInfo", _DWORD, _H, ctypes.c_int, _DWORD, _P, _P, _P, _P, _P
)
LookupAccountSidW = _bind(advapi32, "LookupAccountSidW", _BOOL, _WSTR, _P, _P, _P, _P, _P, _P)
OpenProcessToken = _bind(advapi32, "OpenProcessToken", _BOOL, _H, _DWORD, ctypes.POINTER(_H))
GetTokenInformation = _bind(
    advapi32, "GetTokenInformation", _BOOL, _H, ctypes.c_int, _P, _DWORD, ctypes.POINTER(_DWORD)
)
ConvertSidToStringSidW = _bind(
    advapi32, "ConvertSidToStringSidW", _BOOL, _P, ctypes.POINTER(wintypes.LPWSTR)
)
ConvertSddl = _bind(
    advapi32,
    "ConvertStringSecurityDescriptorToSecurityDescriptorW",
    _BOOL,
    _WSTR,
    _DWORD,
    ctypes.POINTER(_P),
    _P,
)


class SecurityAttributes(ctypes.Structure):
    _fields_ = [
        ("nLength", wintypes.DWORD),
        ("lpSecurityDescriptor", ctypes.c_void_p),
        ("bInheritHandle", wintypes.BOOL),
    ]


class ThreadEntry(ctypes.Structure):
    _fields_ = [
        ("dwSize", wintypes.DWORD),
        ("cntUsage", wintypes.DWORD),
        ("th32ThreadID", wintypes.DWORD),
        ("th32OwnerProcessID", wintypes.DWORD),
        ("tpBasePri", wintypes.LONG),
        ("tpDeltaPri", wintypes.LONG),
        ("dwFlags", wintypes.DWORD),
    ]


Thread32First = _bind(kernel32, "Thread32First", _BOOL, _H, ctypes.POINTER(ThreadEntry))
Thread32Next = _bind(kernel32, "Thread32Next", _BOOL, _H, ctypes.POINTER(ThreadEntry))


class JobBasicLimits(ctypes.Structure):
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


class JobExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", JobBasicLimits),
        ("IoInfo", ctypes.c_uint64 * 6),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


JOB_LIST_CAPACITY = 1024


class JobProcessIds(ctypes.Structure):
    _fields_ = [
        ("NumberOfAssignedProcesses", wintypes.DWORD),
        ("NumberOfProcessIdsInList", wintypes.DWORD),
        ("ProcessIdList", ctypes.c_size_t * JOB_LIST_CAPACITY),
    ]


def last_error() -> int:
    return ctypes.get_last_error()


def os_error(what: str, code: int | None = None) -> OSError:
    code = last_error() if code is None else code
    error = ctypes.WinError(code)
    error.strerror = f"{what}: {error.strerror}"
    return error


def close(handle: int | None) -> None:
    if handle:
        CloseHandle(handle)


# --------------------------------------------------------------------------- identity


def user_sid() -> str:
    """The calling user's SID (``S-1-5-21-...``), the per-user part of every object name."""
    token = HANDLE()
    if not OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
        raise os_error("cannot read this process's token")
    try:
        size = wintypes.DWORD()
        GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(max(size.value, 64))
        if not GetTokenInformation(
            token, TOKEN_USER_CLASS, buffer, len(buffer), ctypes.byref(size)
        ):
            raise os_error("cannot read this process's user")
        sid = ctypes.c_void_p.from_buffer(buffer).value  # TOKEN_USER starts with a PSID
        text = wintypes.LPWSTR()
        if not ConvertSidToStringSidW(sid, ctypes.byref(text)):
            raise os_error("cannot format this process's user SID")
        try:
            return str(text.value)
        finally:
            LocalFree(ctypes.cast(text, ctypes.c_void_p))
    finally:
        close(token.value)


class Security:
    """A ``SECURITY_ATTRIBUTES`` built from SDDL, for objects other users must reach."""

    def __init__(self, sddl: str) -> None:
        self.descriptor = ctypes.c_void_p()
        if not ConvertSddl(sddl, 1, ctypes.byref(self.descriptor), None):
            raise os_error("cannot build a security descriptor")
        self.attributes = SecurityAttributes(
            ctypes.sizeof(SecurityAttributes), self.descriptor, False
        )

    @property
    def pointer(self) -> Any:
        return ctypes.byref(self.attributes)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.descriptor:
                LocalFree(self.descriptor)


# --------------------------------------------------------------------------- waiting


class KernelEvent(threading.Event):
    """A ``threading.Event`` that also sets a Win32 event, so a cancel wakes a kernel wait."""

    def __init__(self) -> None:
        super().__init__()
        self.handle = CreateEventW(None, True, False, None)
        if not self.handle:
            raise os_error("cannot create an event")

    def set(self) -> None:
        super().set()
        SetEvent(self.handle)

    def close(self) -> None:
        close(self.handle)
        self.handle = None


class ConsoleEvents:
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
        self.handle = CreateEventW(None, True, False, None)
        self.mode = ""
        self.pending: signal.Signals | None = None
        self._callback = HANDLER_ROUTINE(self._on_event)

    def _on_event(self, event: int) -> int:
        if event not in (CTRL_C_EVENT, CTRL_BREAK_EVENT):
            return 0
        signum = signal.SIGINT if event == CTRL_C_EVENT else signal.SIGBREAK
        with self._lock:
            if self.mode == "child":
                SetEvent(self.handle)
                return 1
            if self.mode != "wait" or not callable(signal.getsignal(signum)):
                return 0
            self.pending = signum
            SetEvent(self.handle)
            return 1

    @contextlib.contextmanager
    def armed(self, mode: str) -> Iterator[int]:
        """Handle console events as ``mode`` says for the ``with`` block; yields the event."""
        with self._lock:
            self.mode = mode
            self.pending = None
            ResetEvent(self.handle)
        registered = bool(SetConsoleCtrlHandler(self._callback, True))
        try:
            yield self.handle
        finally:
            if registered:
                SetConsoleCtrlHandler(self._callback, False)
            with self._lock:
                self.mode = ""
                late, self.pending = self.pending, None
            if late is not None:
                run_handler(late)  # it came as the wait ended: not lost, handled here

    def deliver(self) -> None:
        """Run the Python handler of the recorded signal here (it may raise KeyboardInterrupt)."""
        with self._lock:
            signum, self.pending = self.pending, None
            ResetEvent(self.handle)
        if signum is not None:
            run_handler(signum)


def run_handler(signum: signal.Signals) -> None:
    """Run the Python handler of ``signum`` now, in this (main) thread, as if it had arrived."""
    _thread.interrupt_main(signum)
    ctypes.pythonapi.PyErr_CheckSignals()  # raises what the handler raises


console: ConsoleEvents | None = None
console_lock = threading.Lock()


def console_events() -> ConsoleEvents:
    global console
    with console_lock:
        if console is None:
            console = ConsoleEvents()
        return console


def wait_handles(handles: Sequence[int], timeout_ms: int) -> int:
    """``WaitForMultipleObjects`` on up to 64 handles, any one; the raw result."""
    array = (HANDLE * len(handles))(*handles)
    result = int(WaitForMultipleObjects(len(handles), array, False, timeout_ms))
    if result == WAIT_FAILED:
        raise os_error("cannot wait for the line")
    return result


def job_processes(job: int) -> list[int]:
    """Handles (to wait on; the caller closes them) of the processes still in ``job``."""
    listing = JobProcessIds()
    if not QueryInformationJobObject(
        job, JOB_BASIC_PROCESS_ID_LIST, ctypes.byref(listing), ctypes.sizeof(listing), None
    ):
        return []
    handles = []
    for pid in listing.ProcessIdList[: listing.NumberOfProcessIdsInList]:
        process = OpenProcess(SYNCHRONIZE | PROCESS_QUERY_INFORMATION, False, pid) or (
            OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        )
        if not process:
            continue  # ended since the listing
        inside = wintypes.BOOL(True)
        IsProcessInJob(process, job, ctypes.byref(inside))  # in doubt, wait for it
        if inside.value:
            handles.append(process)
        else:
            CloseHandle(process)  # the pid was reused by a process outside the job
    return handles


def end_job(job: int) -> None:
    """End every process in ``job`` and return once they have all gone: a process that is
    being ended still runs for a moment."""
    TerminateJobObject(job, 1)
    while members := job_processes(job)[:MAXIMUM_WAIT_OBJECTS]:
        try:
            wait_handles(members, INFINITE)
        finally:
            for process in members:
                CloseHandle(process)


def end_named_job(name: str) -> None:
    """End the job object called ``name`` (``end_job``), if there is one this process may end.

    A job that kills its processes when its last handle closes does so only as its owner's
    handles are closed, after the owner's mutexes were abandoned: whoever takes the turn of a
    dead owner ends its job first.
    """
    job = OpenJobObjectW(JOB_OBJECT_QUERY | JOB_OBJECT_TERMINATE | SYNCHRONIZE, False, name)
    if not job:
        return  # none (nothing ran under that turn, or all of it has gone), or not ours
    try:
        end_job(job)
    finally:
        CloseHandle(job)


def signalled_index(result: int, count: int) -> int | None:
    """Which handle ended the wait: ``WAIT_OBJECT_0 + i`` or ``WAIT_ABANDONED_0 + i``."""
    if WAIT_OBJECT_0 <= result < WAIT_OBJECT_0 + count:
        return result - WAIT_OBJECT_0
    if WAIT_ABANDONED_0 <= result < WAIT_ABANDONED_0 + count:
        return result - WAIT_ABANDONED_0
    return None


def milliseconds(seconds: float) -> int:
    return max(0, min(INFINITE - 1, int(seconds * 1000 + 0.999)))


# --------------------------------------------------------------------------- named pipes
# The channel a single instance listens on (backends/pipe_channel.py): overlapped I/O, so that
# every wait has a deadline and can be ended from another thread.

PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008  # byte mode, blocking: the other flags are 0
PIPE_UNLIMITED_INSTANCES = 255
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000  # the server may learn who we are, not act as us
FILE_READ_DATA = 0x0001
FILE_WRITE_DATA = 0x0002
FILE_READ_ATTRIBUTES = 0x0080

ERROR_BROKEN_PIPE = 109
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_MORE_DATA = 234
ERROR_PIPE_CONNECTED = 535
ERROR_IO_PENDING = 997


class Overlapped(ctypes.Structure):
    _fields_ = [
        ("Internal", ctypes.c_size_t),
        ("InternalHigh", ctypes.c_size_t),
        ("Offset", wintypes.DWORD),
        ("OffsetHigh", wintypes.DWORD),
        ("hEvent", HANDLE),
    ]


_OVERLAPPED = ctypes.POINTER(Overlapped)
CreateNamedPipeW = _bind(
    kernel32, "CreateNamedPipeW", _H, _WSTR, _DWORD, _DWORD, _DWORD, _DWORD, _DWORD, _DWORD, _P
)
ConnectNamedPipe = _bind(kernel32, "ConnectNamedPipe", _BOOL, _H, _OVERLAPPED)
ReadFile = _bind(kernel32, "ReadFile", _BOOL, _H, _P, _DWORD, _P, _OVERLAPPED)
WriteFile = _bind(kernel32, "WriteFile", _BOOL, _H, _P, _DWORD, _P, _OVERLAPPED)
GetOverlappedResult = _bind(
    kernel32, "GetOverlappedResult", _BOOL, _H, _OVERLAPPED, ctypes.POINTER(_DWORD), _BOOL
)
CancelIoEx = _bind(kernel32, "CancelIoEx", _BOOL, _H, _OVERLAPPED)
WaitNamedPipeW = _bind(kernel32, "WaitNamedPipeW", _BOOL, _WSTR, _DWORD)
GetNamedPipeClientProcessId = _bind(
    kernel32, "GetNamedPipeClientProcessId", _BOOL, _H, ctypes.POINTER(wintypes.ULONG)
)
GetNamedPipeServerProcessId = _bind(
    kernel32, "GetNamedPipeServerProcessId", _BOOL, _H, ctypes.POINTER(wintypes.ULONG)
)
GetCurrentThread = _bind(kernel32, "GetCurrentThread", _H)
ImpersonateNamedPipeClient = _bind(advapi32, "ImpersonateNamedPipeClient", _BOOL, _H)
RevertToSelf = _bind(advapi32, "RevertToSelf", _BOOL)
OpenThreadToken = _bind(advapi32, "OpenThreadToken", _BOOL, _H, _DWORD, _BOOL, ctypes.POINTER(_H))


def token_user(token: int) -> tuple[str, str]:
    """The user of an access token: its SID as text, and its account name (``DOMAIN\\user``,
    or the SID again where the system has no name for it)."""
    size = wintypes.DWORD()
    GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
    buffer = ctypes.create_string_buffer(max(size.value, 64))
    if not GetTokenInformation(token, TOKEN_USER_CLASS, buffer, len(buffer), ctypes.byref(size)):
        raise os_error("cannot read the user of a token")
    sid = ctypes.c_void_p.from_buffer(buffer).value  # TOKEN_USER starts with a PSID
    text = wintypes.LPWSTR()
    if not ConvertSidToStringSidW(sid, ctypes.byref(text)):
        raise os_error("cannot format a user SID")
    try:
        sid_text = str(text.value)
    finally:
        LocalFree(ctypes.cast(text, ctypes.c_void_p))
    name = ctypes.create_unicode_buffer(256)
    domain = ctypes.create_unicode_buffer(256)
    name_size, domain_size, use = wintypes.DWORD(256), wintypes.DWORD(256), wintypes.DWORD()
    if not LookupAccountSidW(None, sid, name, ctypes.byref(name_size), domain,
                             ctypes.byref(domain_size), ctypes.byref(use)):  # fmt: skip
        return sid_text, sid_text
    return sid_text, (f"{domain.value}\\{name.value}" if domain.value else name.value)


def process_user(pid: int) -> tuple[str, str] | None:
    """The user a process runs as (SID, account name); None where we may not look."""
    process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not process:
        return None
    try:
        token = HANDLE()
        if not OpenProcessToken(process, TOKEN_QUERY, ctypes.byref(token)):
            return None
        try:
            return token_user(token.value or 0)
        except OSError:
            return None
        finally:
            close(token.value)
    finally:
        close(process)


def pipe_client_user(pipe: int) -> tuple[str, str] | None:
    """The user at the client end of a named pipe, from its token: the server impersonates
    the client for an instant (identification level is enough to read the token) and reads
    the thread's token; None when the client gave no identity."""
    if not ImpersonateNamedPipeClient(pipe):
        return None
    try:
        token = HANDLE()
        if not OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, True, ctypes.byref(token)):
            return None
    finally:
        if not RevertToSelf():  # never go on as someone else
            raise os_error("cannot stop impersonating a pipe client")
    try:
        return token_user(token.value or 0)
    except OSError:
        return None
    finally:
        close(token.value)


def allow_set_foreground_window(pid: int) -> bool:
    """Let process ``pid`` bring its window to the front (learn.microsoft.com:
    AllowSetForegroundWindow): a second instance hands this right to the first one."""
    user32 = ctypes.WinDLL("user32", use_last_error=True)
    allow = _bind(user32, "AllowSetForegroundWindow", _BOOL, _DWORD)
    return bool(allow(pid))


DRIVE_REMOTE = 4  # GetDriveTypeW: a network drive


def on_network_share(path: str) -> bool:
    """Whether ``path`` is on another machine's share: a UNC path (``\\\\server\\share``, also
    written ``\\\\?\\UNC\\server\\share``), or on a drive the system reports as remote (a mapped
    network drive; learn.microsoft.com: GetDriveTypeW)."""
    full = os.path.abspath(path)
    if full.startswith("\\\\?\\"):
        if full[4:8].upper() == "UNC\\":
            return True
        full = full[4:]  # a local-looking path in its long form
    elif full.startswith("\\\\"):
        return not full.startswith("\\\\.\\")  # a share, unless a device
    drive = os.path.splitdrive(full)[0]
    return len(drive) == 2 and GetDriveTypeW(drive + "\\") == DRIVE_REMOTE


FOLDERID_LOCAL_APP_DATA = "F1B32785-6FBA-4FCF-9D55-7B8E7F157091"
FOLDERID_PROGRAM_DATA = "62AB5D82-FDC1-4DC3-A9DD-070D1D495D97"


def known_folder(folder_id: str) -> str | None:
    """A known folder's path as the system keeps it for this process's user, whatever the
    environment says (learn.microsoft.com: SHGetKnownFolderPath); None if it has none."""
    import uuid  # only where the default folder is asked for

    guid = ctypes.create_string_buffer(uuid.UUID(folder_id).bytes_le, 16)  # a GUID's layout
    shell32 = ctypes.WinDLL("shell32", use_last_error=True)
    ole32 = ctypes.WinDLL("ole32", use_last_error=True)
    get_path = _bind(
        shell32,
        "SHGetKnownFolderPath",
        ctypes.c_long,
        _P,
        _DWORD,
        _H,
        ctypes.POINTER(ctypes.c_wchar_p),
    )
    free = _bind(ole32, "CoTaskMemFree", None, _P)
    path = ctypes.c_wchar_p()
    result = get_path(guid, 0, None, ctypes.byref(path))
    try:
        return path.value if result == 0 and path.value else None
    finally:
        free(ctypes.cast(path, ctypes.c_void_p))
