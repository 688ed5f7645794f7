"""A Redis server for the tests: the one named by INTURN_TEST_REDIS_URL, the local one on
127.0.0.1:6379, or a throwaway ``redis-server`` started in a temp folder.

With ``CI=true`` a missing server is a failure; elsewhere the Redis tests skip and say how to
enable them. Tests never flush a server: each uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from conftest import free_port, missing_component
from tls import Certificates

TEST_LEASE = 3  # seconds: long enough that a busy test machine never loses a turn by accident
HOW_TO_ENABLE = (
    "set INTURN_TEST_REDIS_URL=redis://host:port/db, run a Redis server on 127.0.0.1:6379, "
    "or install redis-server"
)


def missing(reason: str) -> NoReturn:
    missing_component(reason, HOW_TO_ENABLE)


def require_redis_py() -> None:
    try:
        import redis  # noqa: F401 - only checking that the client is installed
    except ImportError:
        missing("redis-py is not installed (pip install 'inturn[redis]')")


def answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """A private ``redis-server`` in ``folder``, ready when the constructor returns."""

    def __init__(self, folder: Path, *options: str, tls: Certificates | None = None) -> None:
        """``tls``: take connections over TLS only (``rediss://``, the server's name checked
        against the authority's certificate), as hosted servers do."""
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed")
            raise AssertionError("unreachable")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if tls is not None:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls.ca}"
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)]
            command += ["--tls-ca-cert-file", str(tls.ca)]
        command += ["--appendonly", "no", "--dir", str(folder), "--logfile", "", *options]
        self.command = command  # options given later win: ("--appendonly", "yes") keeps data
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        seen = []
        for row in proc.stdout:  # the server says when it listens: no guessing
            seen.append(row)
            if "Ready to accept connections" in row:
                break
        else:
            raise AssertionError(f"redis-server did not start: {''.join(seen)}")
        return proc

    def restart(self, down_for: float = 0.0) -> None:
        """Shut down (SIGTERM: a clean shutdown, which writes what it keeps on disk), stay
        down for ``down_for`` seconds (the fault's length), and start again on the same port
        and folder; returns once it accepts connections."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def start(self) -> None:
        """Start again after ``stop`` (same port, folder and options)."""
        self.proc = self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def server_url(tmp_folder: Path) -> tuple[str, RedisServer | None]:
    """Where the tests find Redis, and the server they started (to stop), if any."""
    named = os.environ.get("INTURN_TEST_REDIS_URL")
    if named:
        if not answers(named):
            missing("INTURN_TEST_REDIS_URL does not answer")
        return named, None
    local = "redis://127.0.0.1:6379/0"
    if answers(local):
        return local, None
    server = RedisServer(tmp_folder / f"redis-{uuid.uuid4().hex[:8]}")
    return server.url, server


def with_parameters(url: str, **parameters: object) -> str:
    """``url`` with inturn's own parameters added to its query."""
    query = "&".join(f"{key}={value}" for key, value in parameters.items())
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key a test made (never FLUSHALL: the server may be shared)."""
    import redis

    client: Any = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


class Place:
    """One test's corner of the server: a prefix of its own, and URLs that use it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.prefix = f"inturn-test-{uuid.uuid4().hex[:12]}"

    def url(self, lease: float = TEST_LEASE, base: str | None = None) -> str:
        return with_parameters(base or self.base, prefix=self.prefix, lease=lease)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.base)

    def lease_key(self, client: Any, name: str, number: int) -> str:
        """The key of the lease of ticket ``number`` in line ``name`` (the keys of
        ``redis/store.py``: the ticket's id is found by its number)."""
        from inturn.names import digest

        tag = f"{self.prefix}:{{{digest(name)}}}"
        (ticket_id,) = client.zrangebyscore(f"{tag}:tickets", number, number)
        return f"{tag}:lease:{ticket_id.decode()}"

    def stored_keys(self) -> list[str]:
        client = self.client()
        try:
            return sorted(k.decode() for k in client.scan_iter(match=f"{self.prefix}:*"))
        finally:
            client.close()
