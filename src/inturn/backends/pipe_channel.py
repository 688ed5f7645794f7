"""The channel of a Windows line: a named pipe, where the holder of the line listens.

The pipe is ``\\\\.\\pipe\\inturn.<line id>.<random>``: the line's random id (kept in its
folder) and 128 random bits chosen before its owner joins the line, recorded in its ticket.
It is created with ``FILE_FLAG_FIRST_PIPE_INSTANCE``, so it can never be an instance of a pipe
someone made before (a squatter), and one instance always waits for the next client, so the
name never falls free while the owner listens. ``PIPE_REJECT_REMOTE_CLIENTS`` keeps it local.

Its security descriptor matches the line's scope (learn.microsoft.com, "Named Pipe Security
and Access Rights"): on a per-user line, and on a machine-wide line that accepts nobody else,
only its owner's SID has access; on a machine-wide line with ``accept_from``, authenticated
users may also read and write, but not create instances of the pipe (``FILE_GENERIC_WRITE``
would include ``FILE_CREATE_PIPE_INSTANCE``, which would let them serve the name themselves),
and the listener checks each client against ``accept_from``.

Who is at the other end comes from the system: the client's process id from
``GetNamedPipeClientProcessId`` and its user from its token (the server impersonates the
client at identification level, which is all a client allows: ``SECURITY_IDENTIFICATION``);
the sender checks, before it writes a byte, that the pipe is served by the holder's process
(``GetNamedPipeServerProcessId``) and, on a per-user line, by its own user. It then calls
``AllowSetForegroundWindow`` for that process, so that the first instance may bring its
window to the front when it gets the message (Windows lets only the foreground process, or
one it allowed, do that).

All I/O is overlapped: every wait has a deadline, can be ended by ``close`` from another
thread, and on the main thread Ctrl-C still works.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
import time
from collections.abc import Callable
from ctypes import wintypes

from .. import win32
from ..errors import BackendError
from ..records import Ticket, escape_controls
from .base import Channel, Connection, ListeningChannel, Peer

assert sys.platform == "win32"  # the rest of this module is Windows code

PREFIX = "\\\\.\\pipe\\inturn."
BUFFER = 64 * 1024
# Connect: read and write data, read attributes; never FILE_CREATE_PIPE_INSTANCE.
_CLIENT_ACCESS = (
    win32.FILE_READ_DATA | win32.FILE_WRITE_DATA | win32.FILE_READ_ATTRIBUTES | win32.SYNCHRONIZE
)
_OWNER_ONLY_SDDL = "D:P(A;;GA;;;{sid})"
_WITH_OTHERS_SDDL = "D:P(A;;GA;;;{sid})(A;;0x120183;;;AU)"  # read/write data and attributes
# After it wrote its last answer, a server waits this long for the client to close: a closed
# server end may take unread data with it.
_LINGER_SECONDS = 2.0


def pipe_name(line_id: str) -> str:
    import secrets

    return f"{PREFIX}{line_id}.{secrets.token_hex(16)}"


def is_pipe_name(address: str, line_id: str) -> bool:
    """Whether ``address`` is a pipe name inturn makes for the line with id ``line_id``."""
    start = f"{PREFIX}{line_id}."
    rest = address[len(start) :]
    return (
        address.startswith(start) and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)
    )


class PipeChannels:
    """What the Windows store adds to take messages: its channels are named pipes."""

    scope: str
    folder: str

    def _line_id(self) -> str:
        raise NotImplementedError

    def _own_sid(self) -> str:
        return _sid()

    def check_channels(self) -> None:
        """Local lines take messages."""

    def open_channel(self, others: bool) -> Channel:
        sid = self._own_sid()
        security = win32.Security(
            (_WITH_OTHERS_SDDL if others else _OWNER_ONLY_SDDL).format(sid=sid)
        )
        for _ in range(8):
            name = pipe_name(self._line_id())
            stop = instance = None
            try:
                stop = _new_event()
                instance = _new_instance(name, security, first=True)
                return PipeChannel(name, security, sid, stop, instance)
            except BaseException as exc:  # Ctrl-C too: no pipe nobody listens on stays open
                win32.close(instance)
                win32.close(stop)
                if isinstance(exc, FileExistsError):
                    continue  # taken (by a squatter who guessed 128 bits?): another name
                raise
        raise BackendError(f"cannot make a named pipe for the line in {self.folder}: try again")

    def connect(self, holder: Ticket, deadline: float) -> Connection:
        address = holder.channel or ""
        if not is_pipe_name(address, self._line_id()):
            raise BackendError(
                f"the holder of the line in {self.folder} names {escape_controls(repr(address))} "
                "as its pipe, which "
                "is not a pipe inturn makes for this line: not sending (its ticket may have "
                "been tampered with)"
            )
        if not holder.pid:
            raise BackendError(f"the holder's ticket in {self.folder} has no pid: not sending")
        return connect(address, holder.pid, self.scope, self._own_sid(), deadline)


_sids: list[str] = []


def _sid() -> str:
    """This process's user SID (read once)."""
    if not _sids:
        _sids.append(win32.user_sid())
    return _sids[0]


# --------------------------------------------------------------------------- overlapped I/O


_Start = Callable[["win32.Overlapped"], bool]


def _io(
    handle: int,
    start: _Start,
    deadline: float | None,
    stop: int | None = None,
) -> int:
    """Run one overlapped operation (``start`` issues it): the bytes it moved.

    ``TimeoutError`` at the deadline and ``InterruptedError`` when ``stop`` is set, either
    one once the operation is cancelled and over, so that no buffer is in use after we
    return. On the main thread, Ctrl-C cancels it too and runs the Python handler.
    """
    on_main = threading.current_thread() is threading.main_thread()
    console = win32.console_events() if on_main else None
    while True:
        event = win32.CreateEventW(None, True, False, None)
        if not event:
            raise win32.os_error("cannot create an event")
        overlapped = win32.Overlapped()
        overlapped.hEvent = event
        moved = wintypes.DWORD()
        try:
            if start(overlapped):
                outcome = None
            else:
                code = win32.last_error()
                if code != win32.ERROR_IO_PENDING:
                    raise _pipe_error("pipe I/O failed", code)
                outcome = _wait(event, deadline, stop, console)
            if outcome is None:
                if not win32.GetOverlappedResult(
                    handle, ctypes.byref(overlapped), ctypes.byref(moved), False
                ):
                    raise _pipe_error("pipe I/O failed", win32.last_error())
                return int(moved.value)
            win32.CancelIoEx(handle, ctypes.byref(overlapped))
            done = win32.GetOverlappedResult(
                handle, ctypes.byref(overlapped), ctypes.byref(moved), True
            )  # waits until the buffer is ours again
            if done or moved.value:
                return int(moved.value)  # it finished, or moved data, as we gave up
        finally:
            win32.CloseHandle(event)
        if outcome == "stop":
            raise InterruptedError("the channel was closed")
        if outcome == "timeout":
            raise TimeoutError("the other side did not answer in time")
        if console is not None:
            console.deliver()  # Ctrl-C: raises KeyboardInterrupt where Python would; else on


def _writing(handle: int, buffer: ctypes.Array[ctypes.c_char], size: int) -> _Start:
    return lambda o: bool(win32.WriteFile(handle, buffer, size, None, ctypes.byref(o)))


def _reading(handle: int, buffer: ctypes.Array[ctypes.c_char], size: int) -> _Start:
    return lambda o: bool(win32.ReadFile(handle, buffer, size, None, ctypes.byref(o)))


def _connecting(instance: int) -> _Start:
    """``ConnectNamedPipe``: a client that connected before it was called is there already,
    and nothing is pending (the overlapped block is marked done for ``GetOverlappedResult``)."""

    def start(overlapped: win32.Overlapped) -> bool:
        if win32.ConnectNamedPipe(instance, ctypes.byref(overlapped)):
            return True
        if win32.last_error() != win32.ERROR_PIPE_CONNECTED:
            return False
        overlapped.Internal = overlapped.InternalHigh = 0  # STATUS_SUCCESS, no bytes
        return True

    return start


def _wait(
    event: int, deadline: float | None, stop: int | None, console: win32.ConsoleEvents | None
) -> str | None:
    """Sleep until ``event`` is set (None), or say why not: ``"timeout"``, ``"stop"``,
    ``"console"`` (a Ctrl-C for the main thread)."""
    with contextlib.ExitStack() as stack:
        handles = [event]
        if stop is not None:
            handles.append(stop)
        if console is not None:
            handles.append(stack.enter_context(console.armed("wait")))
        while True:
            if deadline is None:
                wait_ms = win32.INFINITE
            else:
                wait_ms = win32.milliseconds(max(0.0, deadline - time.monotonic()))
            result = win32.wait_handles(handles, wait_ms)
            index = win32.signalled_index(result, len(handles))
            if index == 0:
                return None
            if index is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return "timeout"
                continue
            if stop is not None and handles[index] == stop:
                return "stop"
            return "console"


def _pipe_error(what: str, code: int) -> OSError:
    if code in (win32.ERROR_BROKEN_PIPE, win32.ERROR_NO_DATA, win32.ERROR_PIPE_NOT_CONNECTED):
        return BrokenPipeError(f"{what}: the other side closed the pipe")
    return win32.os_error(what, code)


# --------------------------------------------------------------------------- a connection


class PipeConnection(Connection):
    def __init__(self, handle: int, peer: Peer, server: bool) -> None:
        self.handle = handle
        self.peer = peer
        self.server = server
        self.wrote = False
        self._lock = threading.Lock()

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            chunk = bytes(view[:BUFFER])
            buffer = ctypes.create_string_buffer(chunk, len(chunk))
            sent = _io(self.handle, _writing(self.handle, buffer, len(chunk)), deadline)
            view = view[sent:]
            self.wrote = True

    def receive(self, size: int, deadline: float) -> bytes:
        buffer = ctypes.create_string_buffer(size)
        try:
            got = _io(self.handle, _reading(self.handle, buffer, size), deadline)
        except BrokenPipeError:
            return b""
        except OSError as exc:
            if exc.winerror == win32.ERROR_MORE_DATA:  # a message-mode pipe: the rest follows
                return buffer.raw[:size]
            raise
        return buffer.raw[:got]

    def close(self) -> None:
        with self._lock:
            handle, self.handle = self.handle, 0
        if not handle:
            return
        if self.server and self.wrote:
            self._linger(handle)
        win32.CloseHandle(handle)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.handle:
                win32.CloseHandle(self.handle)

    @staticmethod
    def _linger(handle: int) -> None:
        """Give the client a moment to read what we wrote and close its end first."""
        buffer = ctypes.create_string_buffer(1)
        deadline = time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(OSError):  # closed (broken pipe), or the time is up
            while _io(handle, _reading(handle, buffer, 1), deadline):
                pass


# --------------------------------------------------------------------------- listening


def _new_event() -> int:
    """A manual-reset event, not set."""
    event = win32.CreateEventW(None, True, False, None)
    if not event:
        raise win32.os_error("cannot create an event")
    return int(event)


def _new_instance(address: str, security: win32.Security, first: bool) -> int:
    """An instance of the pipe ``address``; ``first``: the one that makes the name ours."""
    mode = win32.PIPE_ACCESS_DUPLEX | win32.FILE_FLAG_OVERLAPPED
    if first:
        mode |= win32.FILE_FLAG_FIRST_PIPE_INSTANCE
    handle = win32.CreateNamedPipeW(
        address,
        mode,
        win32.PIPE_REJECT_REMOTE_CLIENTS,
        win32.PIPE_UNLIMITED_INSTANCES,
        BUFFER,
        BUFFER,
        0,
        security.pointer,
    )
    if handle is None or handle == win32.INVALID_HANDLE_VALUE:
        code = win32.last_error()
        if first and code in (win32.ERROR_ACCESS_DENIED, win32.ERROR_PIPE_BUSY):
            raise FileExistsError(f"the pipe {address} exists already")
        raise BackendError(f"cannot listen on the pipe {address}: {ctypes.FormatError(code)}")
    return int(handle)


class PipeChannel(ListeningChannel):
    """A named pipe's instances, one always waiting for the next client. ``stop`` and the
    pipe's first ``instance`` are made by the caller, which closes them if this is never
    made: a Ctrl-C as it is made must not leave the pipe open."""

    def __init__(
        self, name: str, security: win32.Security, sid: str, stop: int, instance: int
    ) -> None:
        super().__init__()
        self.address = name
        self._security = security
        self._sid = sid
        self._stop = stop
        self._instance = instance

    def _accept_one(self) -> Connection | None:
        while True:
            instance = self._instance
            try:
                _io(instance, _connecting(instance), None, self._stop)
            except InterruptedError:
                return None
            except BrokenPipeError:  # a client came and went before we saw it
                win32.CloseHandle(instance)
                self._instance = _new_instance(self.address, self._security, first=False)
                continue
            # The next instance at once: the name stays taken.
            self._instance = _new_instance(self.address, self._security, first=False)
            peer = self._peer(instance)
            if peer is None:
                win32.CloseHandle(instance)
                continue
            return PipeConnection(instance, peer, server=True)

    def _peer(self, instance: int) -> Peer | None:
        pid = wintypes.ULONG()
        if not win32.GetNamedPipeClientProcessId(instance, ctypes.byref(pid)):
            return None
        user = win32.pipe_client_user(instance) or win32.process_user(pid.value)
        if user is None:
            return Peer(pid.value, "?")
        sid, name = user
        return Peer(pid.value, name, sid=sid, same_user=sid == self._sid)

    def _wake(self) -> None:
        win32.SetEvent(self._stop)

    def _free(self) -> None:
        win32.CloseHandle(self._instance)
        win32.CloseHandle(self._stop)


# --------------------------------------------------------------------------- connecting


def connect(
    address: str, holder_pid: int, scope: str, own_sid: str, deadline: float
) -> PipeConnection:
    """Open the pipe ``address`` served by process ``holder_pid``; ``BackendError`` if
    someone else serves it, ``OSError`` if nobody listens there."""
    flags = win32.FILE_FLAG_OVERLAPPED | win32.SECURITY_SQOS_PRESENT | win32.SECURITY_IDENTIFICATION
    while True:
        handle = win32.CreateFileW(
            address, _CLIENT_ACCESS, 0, None, win32.OPEN_EXISTING, flags, None
        )
        if handle is not None and handle != win32.INVALID_HANDLE_VALUE:
            break
        code = win32.last_error()
        if code != win32.ERROR_PIPE_BUSY:
            if code in (win32.ERROR_FILE_NOT_FOUND, win32.ERROR_PATH_NOT_FOUND):
                raise FileNotFoundError(f"nobody listens on {address}")
            raise win32.os_error(f"cannot open {address}", code)
        left = deadline - time.monotonic()  # every instance is busy: wait for one
        busy = left <= 0 or not win32.WaitNamedPipeW(address, win32.milliseconds(left))
        if busy and time.monotonic() >= deadline:
            raise TimeoutError(f"{address} takes no connections: its listener may be hung")
    server = wintypes.ULONG()
    try:
        if not win32.GetNamedPipeServerProcessId(handle, ctypes.byref(server)):
            raise win32.os_error(f"cannot tell who serves {address}")
        if server.value != holder_pid:
            raise BackendError(
                f"the pipe {address} is served by pid {server.value}, not by the holder of the "
                f"line (pid {holder_pid}): not sending (someone else took its name)"
            )
        user = win32.process_user(server.value)
        if scope == "user" and (user is None or user[0] != own_sid):
            raise BackendError(
                f"the pipe {address} is served by {user[1] if user else 'another user'}, not "
                "by you: not sending to another user on a per-user line"
            )
    except BaseException:
        win32.CloseHandle(handle)
        raise
    win32.allow_set_foreground_window(server.value)  # before sending (see above)
    sid, name = user if user is not None else ("", "?")
    return PipeConnection(
        int(handle),
        Peer(server.value, name, sid=sid or None, same_user=sid == own_sid),
        server=False,
    )
