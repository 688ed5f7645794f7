"""Lines on a PostgreSQL server, shared by every host that reaches it: see ``store.py``."""

from .store import PostgresBackend, PostgresStore

__all__ = ["PostgresBackend", "PostgresStore"]
