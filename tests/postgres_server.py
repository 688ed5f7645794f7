"""PostgreSQL servers for the tests: the one the developer has, or a throwaway cluster.

Discovery, in order: ``INTURN_TEST_POSTGRES_URL``; the server on 127.0.0.1:5432 (database
``test``, trust auth, as on the development machines); a cluster made with ``initdb`` in a
temporary folder. Tests that restart a server always use a throwaway cluster of their own,
never a shared server. ``initdb`` refuses to run as root, so as root the cluster belongs to
the ``postgres`` user if there is one, else to ``nobody``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import NoReturn

import psycopg

from conftest import missing_component

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
HOW_TO_ENABLE = "set INTURN_TEST_POSTGRES_URL, or install postgresql"


def missing(reason: str) -> NoReturn:
    missing_component(reason, HOW_TO_ENABLE)


def usable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def server_bin() -> str | None:
    """The folder of ``initdb`` and ``pg_ctl``, newest server version first."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(found)
    for initdb in candidates:
        folder = os.path.dirname(initdb)
        if os.access(os.path.join(folder, "pg_ctl"), os.X_OK):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster in a temporary folder, on its own port, trust auth."""

    def __init__(self) -> None:
        folder = server_bin()
        if folder is None:
            raise RuntimeError("no initdb/pg_ctl found (apt-get install postgresql)")
        self.bin = folder
        self.home = tempfile.mkdtemp(prefix="inturn-pg-")
        self.data = os.path.join(self.home, "data")
        self.port = free_port()
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for user in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self.owner = pwd.getpwnam(user)
                    break
            if self.owner is None:
                raise RuntimeError("initdb refuses root and there is no postgres or nobody user")
            os.chown(self.home, self.owner.pw_uid, self.owner.pw_gid)
            os.chmod(self.home, 0o755)
        self._as_owner("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bin, program), *args]
        prefix: Callable[[], None] | None = None
        if self.owner is not None:
            uid, gid = self.owner.pw_uid, self.owner.pw_gid

            def prefix() -> None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        result = subprocess.run(
            command,
            preexec_fn=prefix,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.home,
            env={**os.environ, "LC_ALL": "C"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200 -c shared_buffers=16MB"
        )

    def start(self) -> None:
        log = os.path.join(self.home, "log")
        self._as_owner("pg_ctl", "-D", self.data, "-o", self._options(), "-l", log, "-w", "start")

    def restart(self) -> None:
        log = os.path.join(self.home, "log")
        self._as_owner(
            "pg_ctl", "-D", self.data, "-o", self._options(), "-l", log, "-m", "fast", "-w",
            "restart",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._as_owner("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    if server_bin() is None:
        missing("no initdb/pg_ctl to make a throwaway cluster")
    made = Cluster()
    try:
        yield made
    finally:
        made.stop()


@contextlib.contextmanager
def test_server() -> Iterator[str]:
    """The URL of the server the tests use, found (or made) as the module docstring says."""
    url = os.environ.get("INTURN_TEST_POSTGRES_URL")
    if url:
        if not usable(url):
            missing("INTURN_TEST_POSTGRES_URL is set but that server cannot be reached")
        yield url
        return
    if usable(LOCAL_URL):
        yield LOCAL_URL
        return
    try:
        made = Cluster()
    except RuntimeError as exc:
        missing(f"no PostgreSQL server for the tests: {exc}")
    try:
        yield made.url
    finally:
        made.stop()


def with_schema(url: str, schema: str) -> str:
    """``url`` with inturn's schema parameter added."""
    return url + ("&" if "?" in url else "?") + f"inturn_schema={schema}"


def drop_schema(url: str, schema: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
