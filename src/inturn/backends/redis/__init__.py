"""Lines on a Redis server, kept alive by leases: see ``store.py``."""

import redis as _redis

# redis-py 4 takes neither the RESP version nor every option used here; an older client
# already installed (pinned by another package) must be named as such, not as a bad URL.
if int(_redis.__version__.split(".")[0]) < 5:
    raise ImportError(f"redis-py {_redis.__version__} is installed; inturn needs 5 or later")

from .store import RedisBackend, RedisStore

__all__ = ["RedisBackend", "RedisStore"]
