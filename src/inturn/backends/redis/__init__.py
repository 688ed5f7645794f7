"""Lines on a Redis server, kept alive by leases: see ``store.py``."""

from .store import RedisBackend, RedisStore

__all__ = ["RedisBackend", "RedisStore"]
