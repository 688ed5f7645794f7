"""The exceptions inturn raises: one family, so callers can catch ``InturnError``."""

from __future__ import annotations

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import Any

    from .records import LineStatus, Ticket


class InturnError(Exception):
    """Base class of every error inturn raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        """Rebuilt from its ``args`` and attributes, without calling ``__init__`` again: the
        default calls it with ``args`` alone, which lack the keyword and extra arguments of
        ``MessageError`` and the like, so a process pool's worker raising one would break the
        pool."""
        return (_rebuilt, (type(self), self.args), self.__dict__)


def _rebuilt(kind: type[InturnError], args: tuple[object, ...]) -> InturnError:
    error = kind.__new__(kind, *args)
    error.args = args  # ``OSError.__new__`` (``Timeout``'s) leaves them to ``__init__``
    return error


class UsageError(InturnError, ValueError):
    """Bad input or a hostile setup: the message names the problem and the fix."""


class Busy(InturnError):
    """The line is full and the caller asked not to wait; ``status`` says who holds it."""

    def __init__(self, message: str, status: LineStatus | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def holders(self) -> tuple[Ticket, ...]:
        """Who holds the line (from ``status``)."""
        return self.status.holders if self.status is not None else ()


class Timeout(InturnError, TimeoutError):
    """The caller waited in line for as long as it allowed, and left the line."""

    def __init__(self, message: str, status: LineStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


class Replaced(InturnError):
    """A later arrival that asked for ``newest_wins`` took this waiter's place: it left the
    line without taking a turn."""


class Cancelled(InturnError):
    """The wait was abandoned on request (an ``asyncio`` task was cancelled, say)."""


class BackendError(InturnError):
    """The backend (a folder, a server) cannot be used; the message says why and what to do."""


class ServerUnavailable(BackendError):
    """The server does not answer, or takes no more connections or writes for now (down,
    restarting, shutting down, out of reach, out of connection slots or memory): the same call
    may work later, unlike the other ``BackendError``s, which name a setup to fix."""


class LostTurn(InturnError):
    """The connection that held the turn was lost: another holder may now have it."""


class AlreadyRunning(Busy):
    """Another instance holds the line (``single_instance``). It was sent this start's
    arguments, and ``reply`` is what it answered (None if it does not listen); ``pid`` is
    its process id."""

    def __init__(
        self,
        message: str,
        status: LineStatus | None = None,
        *,
        reply: Any = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(message, status)
        self.reply = reply
        self.pid = pid


class NotRunning(InturnError):
    """No running instance took the message: nobody holds the line, its holder does not
    listen, or it ended before it answered (``pid`` says which, when there was one)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class MessageError(InturnError):
    """The running instance answered with an error: its ``on_message`` raised (``kind`` is
    the exception's class name), or it refused the message (``kind`` is ``"refused"``)."""

    def __init__(self, message: str, kind: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.pid = pid
