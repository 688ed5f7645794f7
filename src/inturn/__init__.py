"""inturn: make processes take turns, first come, first served, and crash-safe."""

from .backends.base import CancelToken
from .errors import (
    AlreadyRunning,
    BackendError,
    Busy,
    Cancelled,
    InturnError,
    LostTurn,
    MessageError,
    NotRunning,
    Replaced,
    ServerUnavailable,
    Timeout,
    UsageError,
)
from .line import Line, Turn, acquire_async, send, single_instance, turn
from .listing import forget_unused, lines
from .records import InturnWarning, LineStatus, Message, Progress, Ticket

__all__ = [
    "AlreadyRunning",
    "BackendError",
    "Busy",
    "CancelToken",
    "Cancelled",
    "InturnError",
    "InturnWarning",
    "Line",
    "LineStatus",
    "LostTurn",
    "Message",
    "MessageError",
    "NotRunning",
    "Progress",
    "Replaced",
    "ServerUnavailable",
    "Ticket",
    "Timeout",
    "Turn",
    "UsageError",
    "acquire_async",
    "forget_unused",
    "lines",
    "send",
    "single_instance",
    "turn",
]

__version__ = "0.2.0"
