"""Lines on a Redis server, kept alive by leases: see ``store.py``."""

import redis as _redis

# redis-py 4 takes neither the RESP version nor every option used here; an older client
# already installed (pinned by another package) must be named as such, not as a bad URL.
_major = str(getattr(_redis, "__version__", "")).split(".")[0]
if _major.isdigit() and int(_major) < 5:
    raise ImportError(f"redis-py {_redis.__version__} is installed")

from .store import RedisBackend, RedisStore  # noqa: E402 - after the version check

__all__ = ["RedisBackend", "RedisStore"]
