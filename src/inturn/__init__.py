"""inturn: make processes take turns, first come, first served, and crash-safe."""

from .backends.base import CancelToken
from .errors import (
    BackendError,
    Busy,
    Cancelled,
    InturnError,
    LostTurn,
    Replaced,
    Timeout,
    UsageError,
)
from .line import Line, Turn, acquire_async, single_instance, turn
from .queue import Progress
from .records import InturnWarning, LineStatus, Ticket

__all__ = [
    "BackendError",
    "Busy",
    "CancelToken",
    "Cancelled",
    "InturnError",
    "InturnWarning",
    "Line",
    "LineStatus",
    "LostTurn",
    "Progress",
    "Replaced",
    "Ticket",
    "Timeout",
    "Turn",
    "UsageError",
    "acquire_async",
    "single_instance",
    "turn",
]

__version__ = "0.1.0"
