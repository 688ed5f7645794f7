"""Where lines live: the local backend of this system, or a server named by a URL.

Each backend supplies only the primitives of ``base.py``; the queue algorithm (``queue.py``,
above this package) is the same for all. Nothing here imports anything above it.
"""

from __future__ import annotations

import os
import sys

from ..errors import UsageError
from .base import Backend, no_channels
from .standard_streams import fill_closed_standard_descriptors


def open_backend(
    backend: str | Backend | None = None,
    *,
    scope: str = "user",
    directory: str | None = None,
    create: bool = True,
) -> Backend:
    """``backend`` is a ``Backend``, a URL, ``"local"``, or None for ``INTURN_BACKEND``/local.

    With ``create=False`` (a look from outside, ``status``), nothing is created: a local
    folder that does not exist yet simply holds no lines.
    """
    fill_closed_standard_descriptors()  # before any file or connection of a line is opened
    if isinstance(backend, Backend):
        return backend
    address = _address(backend, directory)
    kind = _kind(address)
    if kind == "local":
        return _local(scope, directory, create)
    try:
        if kind == "postgres":
            from .postgres import PostgresBackend
        else:
            from .redis import RedisBackend
    except ImportError as exc:
        raise _client_missing(kind, exc) from None
    if kind == "postgres":
        return PostgresBackend(address, scope=scope, create=create)
    return RedisBackend(address, scope=scope)


def _address(backend: str | None, directory: str | None) -> str:
    """The backend asked for: a folder given beats ``INTURN_BACKEND``, as ``--dir`` does.
    The scheme is lowercased (``LOCAL``, ``PostgreSQL://``), as URLs' schemes are read."""
    if backend is None:
        backend = "local" if directory is not None else os.environ.get("INTURN_BACKEND", "")
    address = backend.strip()
    scheme, colon, rest = address.partition(":")
    return scheme.lower() + colon + rest


def check_backend(backend: str | Backend | None, directory: str | None = None) -> None:
    """Refuse a backend that cannot work (an unknown scheme, a bad URL, a missing client),
    with one clear line, without connecting to anything; None is ``INTURN_BACKEND``'s."""
    if isinstance(backend, Backend):
        return
    if directory is not None and not directory:
        raise UsageError("directory is empty: name a folder, or leave it out")
    if (
        directory is not None
        and isinstance(backend, str)
        and _kind(_address(backend, None)) != "local"
    ):
        raise UsageError("give a folder (directory=) or a server (backend=), not both")
    if backend is not None and not isinstance(backend, str):
        raise UsageError(f"backend must be a URL or 'local', not {backend!r}")
    address = _address(backend, directory)
    kind = _kind(address)
    try:
        if kind == "postgres":
            from .postgres.address import parse

            parse(address)
        elif kind == "redis":
            from .redis.address import parse_address

            parse_address(address)
    except ImportError as exc:
        raise _client_missing(kind, exc) from None


def check_messages(name: str, backend: str | Backend | None, directory: str | None) -> None:
    """Refuse messages (``send``, ``on_message``) on a server before connecting to it: no
    server backend carries them, and a server that is down (``ServerUnavailable``, try again
    later) would hide that no retry can work."""
    if isinstance(backend, Backend):
        return  # its own ``check_channels`` says
    address = _address(backend, directory)
    kind = _kind(address)
    if kind == "postgres":
        from .postgres.address import parse

        raise no_channels(name, parse(address).where)
    if kind == "redis":
        from .redis.address import parse_address

        raise no_channels(name, parse_address(address).where)


def _kind(address: str) -> str:
    """``local``, ``postgres`` or ``redis``, from an address as ``_address`` gives it;
    anything else refused."""
    if address in ("", "local"):
        return "local"
    scheme = address.split(":", 1)[0]
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    if scheme in ("redis", "rediss"):
        return "redis"
    raise UsageError(
        f"unknown backend {scheme!r}: use 'local', a postgresql:// URL or a redis:// URL"
    )


def _client_missing(kind: str, exc: ImportError) -> UsageError:
    if kind == "postgres":
        return UsageError(
            f"the PostgreSQL backend needs psycopg 3 ({exc}): pip install 'inturn[postgres]'"
        )
    return UsageError(
        f"the Redis backend needs redis-py 5 or later ({exc}): pip install 'inturn[redis]'"
    )


def _local(scope: str, directory: str | None, create: bool) -> Backend:
    if sys.platform == "win32":
        from .windows import WindowsBackend

        return WindowsBackend(scope=scope, directory=directory, create=create)
    else:
        from .posix import PosixBackend

        return PosixBackend(scope=scope, directory=directory, create=create)
