"""The channel of a POSIX line: a Unix socket in the line's folder, where its holder listens.

The socket gets a random name (``<32 hex digits>.sock``), chosen before its owner joins the
line and recorded in its ticket; it is removed when the owner stops listening, and with the
dead ticket when the owner died. Who is at the other end comes from the kernel, never from
what the other side says: ``SO_PEERCRED`` on Linux, ``LOCAL_PEERCRED`` (the ``xucred`` that
``getpeereid`` reads) and ``LOCAL_PEERPID`` on macOS and FreeBSD (see unix(4)).

Socket paths are short: ``sun_path`` holds 108 bytes on Linux and 104 on macOS, and a line's
folder can be deeper than that. So nothing is bound or connected by the folder's path:

* on Linux, the socket is bound as ``/proc/self/fd/<folder descriptor>/<name>`` (the kernel
  resolves the folder through the descriptor), and a sender opens the socket file with
  ``O_PATH | O_NOFOLLOW`` relative to the folder, checks its type and owner on that very
  descriptor, and connects to ``/proc/self/fd/<that descriptor>``: what it checked is what
  it connects to, whatever happens to the path meanwhile;
* elsewhere (macOS), a path that fits is used as it is; a longer one is reached through a
  short private folder made in the temp folder: the socket is bound there and hard-linked
  into the line's folder (which needs both on one file system), and a sender connects
  through a symbolic link made there, after checking the socket file with ``lstat``.

Either way the sender then asks the kernel who listens (the same peer credentials, which a
client reads as the listener's) and sends nothing unless it is the holder's user and, where
the system says, the holder's process: a file or link planted where a ticket points is
refused, and a ticket cannot point outside its line's folder.

Access: the socket is ``0600`` (only its owner may connect; the per-user folder is private
anyway), ``0666`` on a machine-wide line that accepts other users, whom the listener then
checks one by one against its ``accept_from``; sticky on Linux, as every file of a line
(``folders.KEEP``): systemd-tmpfiles takes a socket bound through ``/proc/self/fd`` for dead.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from contextlib import AbstractContextManager, suppress

from .. import forks
from ..errors import BackendError
from ..forks import forget_after_fork
from ..records import Ticket, escape_controls
from .base import Channel, Connection, ListeningChannel, Peer
from .folders import KEEP, ticket_files

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    import socket

assert sys.platform != "win32"  # the rest of this module is POSIX code

# Imported by the POSIX backend on every start: the socket machinery is imported only by
# those who listen or send.

SUFFIX = ".sock"
BACKLOG = 128
# The longest path a socket address holds, with its final NUL (sys/un.h).
SUN_PATH = 108 if sys.platform.startswith("linux") else 104
_LINUX = sys.platform.startswith("linux")
_CHUNK = 64 * 1024
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# macOS and FreeBSD: getsockopt(SOL_LOCAL, LOCAL_PEERCRED) gives a struct xucred (version,
# uid, ngroups, groups[16]); LOCAL_PEERPID (macOS) the pid (sys/un.h, sys/ucred.h).
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1
_LOCAL_PEERPID = 2
_XUCRED = "=IIh2x16I"
# A write to a connection the other side has closed must fail with EPIPE, never raise SIGPIPE:
# a program that restored its default action (as command-line tools often do) would be killed
# by any sender that gives up waiting. Linux and FreeBSD take MSG_NOSIGNAL on each send,
# macOS SO_NOSIGPIPE on the socket (sys/socket.h).
_SO_NOSIGPIPE = 0x1022


def channel_name() -> str:
    """A fresh, unguessable socket name."""
    import secrets

    return secrets.token_hex(16) + SUFFIX


def is_channel_name(name: str, prefix: str) -> bool:
    """Whether ``name`` is a socket name inturn makes for the line whose files start with
    ``prefix`` (a plain name in the line's folder)."""
    if not name.startswith(prefix):
        return False
    stem, suffix = name[len(prefix) : -len(SUFFIX)], name[-len(SUFFIX) :]
    return suffix == SUFFIX and len(stem) == 32 and all(c in "0123456789abcdef" for c in stem)


def _proc_fd() -> bool:
    """Whether paths can go through ``/proc/self/fd`` (Linux with /proc mounted)."""
    return _LINUX and os.path.isdir("/proc/self/fd")


class UnixChannels:
    """What the POSIX store adds to take messages: its channels are sockets in its folder."""

    shown: str
    scope: str
    prefix: str  # what the names of the line's files start with in its folder

    def _folder(self) -> AbstractContextManager[int]:
        """The line's folder descriptor, kept open until the block ends."""
        raise NotImplementedError

    def check_channels(self) -> None:
        """Local lines take messages."""

    def open_channel(self, others: bool) -> Channel:
        with self._folder() as dir_fd:
            return open_channel(dir_fd, self.shown, others, self.prefix)

    def connect(self, holder: Ticket, deadline: float) -> Connection:
        with self._folder() as dir_fd:
            owner = _ticket_owner(dir_fd, self.shown, self.prefix, holder.number)
            if self.scope == "user" and owner != os.getuid():
                raise BackendError(
                    f"the holder of {self.shown} is {user_name(owner)}, not you: not sending "
                    "to another user on a per-user line (check who owns the folder)"
                )
            where = (self.shown, self.prefix)
            # The kernel tells the listener's pid in our PID namespace, the ticket in the
            # holder's: the two are compared only where they are one (not in a container).
            pid = holder.pid if holder.pid_namespace == forks.pid_namespace() else None
            return connect(dir_fd, where, holder.channel or "", owner, pid, deadline)

    def _remove_channel(self, address: str) -> None:
        with self._folder() as dir_fd:
            remove_leftover(dir_fd, address, self.prefix)


def _ticket_owner(dir_fd: int, folder: str, prefix: str, number: int) -> int:
    """Who owns ticket ``number``'s file, as the file system says (``OSError`` if it is gone:
    the holder left)."""
    for name in (prefix + entry for entry in ticket_files(number)):
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd
            )
        except FileNotFoundError:
            continue
        except PermissionError:
            raise BackendError(
                f"cannot read {folder}/{name}, the holder's ticket: not sending"
            ) from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BackendError(f"{folder}/{name} is not a ticket inturn made: not sending")
        return info.st_uid
    raise FileNotFoundError(f"ticket {number} left {folder}")


# --------------------------------------------------------------------------- who is there


def user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def peer_of(sock: socket.socket) -> Peer:
    """The process at the other end of a connected Unix socket, as the kernel says."""
    import socket
    import struct  # like socket: not imported by every start

    pid: int | None
    if sys.platform.startswith("linux"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", raw)
    elif sys.platform == "darwin" or sys.platform.startswith("freebsd"):
        xucred = struct.Struct(_XUCRED)
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, xucred.size)
        version, uid, *_ = xucred.unpack(raw[: xucred.size].ljust(xucred.size, b"\0"))
        if version != 0:  # XUCRED_VERSION
            raise BackendError(f"unknown peer credentials (xucred version {version})")
        pid = None
        if sys.platform == "darwin":
            with suppress(OSError):
                pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
    else:
        raise BackendError(
            f"inturn cannot learn who is at the other end of a Unix socket on {sys.platform}, "
            "so its instances cannot take messages here"
        )
    return Peer(pid if pid else None, user_name(uid), uid=uid, same_user=uid == os.getuid())


# --------------------------------------------------------------------------- a connection


class UnixConnection(Connection):
    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        import socket

        self.sock = sock
        self.peer = peer
        self._flags: int = getattr(socket, "MSG_NOSIGNAL", 0)
        if sys.platform == "darwin":
            sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self.sock.settimeout(_left(deadline))
            try:
                sent = self.sock.send(view[:_CHUNK], self._flags)
            except TimeoutError:
                raise TimeoutError("the other side does not read") from None
            view = view[sent:]

    def receive(self, size: int, deadline: float) -> bytes:
        self.sock.settimeout(_left(deadline))
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise TimeoutError("the other side says nothing") from None

    def close(self) -> None:
        self.sock.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; a socket timeout of 0 would mean "do not block"."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


# --------------------------------------------------------------------------- listening


class UnixChannel(ListeningChannel):
    """A listening socket in a line's folder. ``accept`` sleeps in ``select`` on it and on a
    pipe that ``close`` writes to, so that another thread can end it at once."""

    def __init__(self, sock: socket.socket, dir_fd: int, name: str) -> None:
        super().__init__()
        self.sock = sock
        self.address = name
        self._dir_fd = dir_fd  # our own copy of the folder's descriptor
        self._identity = _identity(name, dir_fd)  # to remove our socket, never a stranger's
        self._wake_read, self._wake_write = os.pipe()
        forget_after_fork(self)

    def _accept_one(self) -> Connection | None:
        import select

        while True:
            ready, _, _ = select.select([self.sock.fileno(), self._wake_read], [], [])
            if self._wake_read in ready:
                return None
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # the connecting side gave up meanwhile
            sock.setblocking(True)
            try:
                return UnixConnection(sock, peer_of(sock))
            except OSError:
                sock.close()  # it went away before we could ask who it was

    def _wake(self) -> None:
        if _identity(self.address, self._dir_fd) == self._identity:
            with suppress(OSError):
                os.unlink(self.address, dir_fd=self._dir_fd)
        os.write(self._wake_write, b"x")

    def _free(self) -> None:
        self.sock.close()
        for fd in (self._dir_fd, self._wake_read, self._wake_write):
            with suppress(OSError):
                os.close(fd)

    def after_fork_in_child(self) -> None:
        """The listener stays with the parent: a child drops its copies, removing nothing."""
        self._lock = threading.Lock()
        self.closed = True
        self._accepting = self._waking = False
        self._release()


def _identity(name: str, dir_fd: int) -> tuple[int, int] | None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


def open_channel(dir_fd: int, folder: str, others: bool, prefix: str) -> UnixChannel:
    """Listen on a new socket in the line's folder (``dir_fd``, shown as ``folder``; the
    line's file names start with ``prefix``): ``0600``, or ``0666`` when ``others`` may
    connect. A name that is taken (a planted file or link) is passed over for another."""
    import socket

    for _ in range(8):
        name = prefix + channel_name()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _bind(sock, dir_fd, folder, name)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EEXIST):
                continue
            raise BackendError(_cannot(folder, name, exc)) from None
        except BaseException:  # Ctrl-C: what was bound goes (the fresh name is no one else's)
            _unbind(sock, dir_fd, name)
            raise
        mine = None
        try:
            # Before listening: nobody can connect while the mode is still the umask's.
            os.chmod(name, (0o666 if others else 0o600) | KEEP, dir_fd=dir_fd)
            sock.listen(BACKLOG)
            mine = os.dup(dir_fd)
            return UnixChannel(sock, mine, name)
        except BaseException as exc:  # Ctrl-C too: no socket nobody listens on stays behind
            _unbind(sock, dir_fd, name)
            if mine is not None:
                os.close(mine)
            if isinstance(exc, OSError):
                raise BackendError(_cannot(folder, name, exc)) from None
            raise
    raise BackendError(f"{folder} is full of files where inturn makes its sockets: clean it up")


def _unbind(sock: socket.socket, dir_fd: int, name: str) -> None:
    with suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
    sock.close()


def _bind(sock: socket.socket, dir_fd: int, folder: str, name: str) -> None:
    import tempfile

    if _proc_fd():
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
        return
    path = os.path.join(folder, name)
    if len(os.fsencode(path)) < SUN_PATH:
        sock.bind(path)
        return
    short = tempfile.mkdtemp(prefix="inturn-")  # private (0700), with a short path
    try:
        sock.bind(os.path.join(short, "s"))
        try:
            os.link(os.path.join(short, "s"), name, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            raise BackendError(
                f"the path of {folder} is too long for a Unix socket ({len(os.fsencode(path))} "
                f"bytes, at most {SUN_PATH - 1}) and {tempfile.gettempdir()} is on another "
                "file system: choose a shorter folder for lines with INTURN_DIR or --dir"
            ) from None
    finally:
        with suppress(OSError):
            os.unlink(os.path.join(short, "s"))
        with suppress(OSError):
            os.rmdir(short)


def _cannot(folder: str, name: str, exc: OSError) -> str:
    return f"cannot listen on a socket in {folder} ({name}): {exc.strerror or exc}"


# --------------------------------------------------------------------------- connecting


def connect(
    dir_fd: int,
    line: tuple[str, str],
    name: str,
    owner: int,
    holder_pid: int | None,
    deadline: float,
) -> UnixConnection:
    """Connect to the socket ``name`` in the line's folder, which must be a socket of user
    ``owner`` (the owner of the holder's ticket) served by process ``holder_pid`` (if known,
    as numbered in this process's PID namespace);
    ``BackendError`` if it is anything else, ``OSError`` if nobody listens there. ``line`` is
    the folder as shown and what the line's file names start with in it."""
    import socket

    folder, prefix = line
    where = f"{folder}/{name}"
    if not is_channel_name(name, prefix):
        raise BackendError(
            f"the holder of {folder} names {escape_controls(repr(name))} as its socket, which "
            "is not a socket name "
            "inturn makes: not sending (its ticket may have been tampered with)"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A blocking connect, bounded by SO_SNDTIMEO: when the listener's queue is full (it
        # has all the messages it takes in hand), the system lets us wait for room in it;
        # a socket timeout would make the connect non-blocking, refused at once (EAGAIN).
        _send_timeout(sock, _left(deadline))
        if sys.platform.startswith("linux") and _proc_fd():  # O_PATH is Linux's
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _check(os.fstat(fd), where, owner)
                _connect(sock, f"/proc/self/fd/{fd}", where)
            finally:
                os.close(fd)
        else:
            _check(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), where, owner)
            _connect_by_path(sock, os.path.join(folder, name), where)
        _send_timeout(sock, 0.0)  # sends keep their own deadlines
        server = peer_of(sock)
    except BaseException:
        sock.close()
        raise
    if server.uid != owner or (holder_pid and server.pid and server.pid != holder_pid):
        sock.close()
        raise BackendError(
            f"{where} is served by {server.user} (pid {server.pid}), not by the holder of the "
            f"line (pid {holder_pid}): not sending (someone put their own socket there)"
        )
    return UnixConnection(sock, server)


def _check(info: os.stat_result, where: str, owner: int) -> None:
    if not stat.S_ISSOCK(info.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a socket"
        raise BackendError(
            f"{where} is {what}, where the holder of the line listens: not sending "
            "(someone may have planted it; remove it)"
        )
    if info.st_uid != owner:
        raise BackendError(
            f"{where} belongs to {user_name(info.st_uid)}, not to the holder of the line "
            f"({user_name(owner)}): not sending (someone may have planted it; remove it)"
        )


def _send_timeout(sock: socket.socket, seconds: float) -> None:
    """``SO_SNDTIMEO`` (0: none), which also bounds a blocking connect's wait for room."""
    import socket
    import struct

    whole = int(seconds)
    micros = int((seconds - whole) * 1e6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, micros))


def _connect(sock: socket.socket, address: str, where: str) -> None:
    try:
        sock.connect(address)
    except TimeoutError:
        raise TimeoutError(f"{where} did not take the connection in time") from None
    except BlockingIOError:
        raise TimeoutError(f"{where} takes no more connections: its listener may be hung") from None


def _connect_by_path(sock: socket.socket, path: str, where: str) -> None:
    import tempfile

    if len(os.fsencode(path)) < SUN_PATH:
        _connect(sock, path, where)
        return
    short = tempfile.mkdtemp(prefix="inturn-")  # private: nobody can swap the link in it
    try:
        os.symlink(path, os.path.join(short, "s"))
        _connect(sock, os.path.join(short, "s"), where)
    finally:
        with suppress(OSError):
            os.unlink(os.path.join(short, "s"))
        with suppress(OSError):
            os.rmdir(short)


def remove_leftover(dir_fd: int, name: str, prefix: str) -> None:
    """Remove the socket a dead holder left (if it is one, and ours to remove)."""
    if is_channel_name(name, prefix) and _identity(name, dir_fd) is not None:
        with suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
