"""Choosing where lines live: the local folder backend, or a server named by a URL."""

from __future__ import annotations

import os

from .errors import UsageError
from .store import Backend


def open_backend(
    backend: str | Backend | None = None, *, scope: str = "user", directory: str | None = None
) -> Backend:
    """``backend`` is a ``Backend``, a URL, ``"local"``, or None for ``INTURN_BACKEND``/local."""
    if isinstance(backend, Backend):
        return backend
    address = backend if backend is not None else os.environ.get("INTURN_BACKEND", "")
    address = address.strip()
    if address in ("", "local"):
        return _local(scope, directory)
    scheme = address.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresBackend  # type: ignore[import-not-found,attr-defined,unused-ignore]
        except ImportError as exc:
            raise UsageError(
                f"the PostgreSQL backend needs psycopg 3 ({exc}): pip install 'inturn[postgres]'"
            ) from None
        return PostgresBackend(address, scope=scope)  # type: ignore[no-any-return,unused-ignore]
    if scheme in ("redis", "rediss"):
        try:
            from .redis_backend import RedisBackend
        except ImportError as exc:
            raise UsageError(
                f"the Redis backend is not available ({exc}): pip install 'inturn[redis]'"
            ) from None
        return RedisBackend(address, scope=scope)
    raise UsageError(
        f"unknown backend {scheme!r}: use 'local', a postgresql:// URL or a redis:// URL"
    )


def _local(scope: str, directory: str | None) -> Backend:
    if os.name == "nt":
        from .windows import WindowsBackend  # type: ignore[import-not-found,attr-defined,unused-ignore]

        return WindowsBackend(scope=scope, directory=directory)  # type: ignore[no-any-return,unused-ignore]
    from .posix import FolderBackend

    return FolderBackend(scope=scope, directory=directory)
