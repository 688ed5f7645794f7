"""PostgreSQL servers for the tests: the one the developer has, or a throwaway cluster.

Discovery, in order: ``INTURN_TEST_POSTGRES_URL``; the server on 127.0.0.1:5432 (database
``test``, trust auth, as on the development machines) if it allows enough sessions for the
suite beside others (``ENOUGH_SESSIONS``); a cluster made with ``initdb`` in a temporary
folder. Tests that restart a server always use a throwaway cluster of their own,
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

from conftest import free_port, missing_component
from tls import Certificates

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
HOW_TO_ENABLE = "set INTURN_TEST_POSTGRES_URL, or install postgresql"


def missing(reason: str) -> NoReturn:
    missing_component(reason, HOW_TO_ENABLE)


# Sessions a test may hold at once (threads with a Line each on slots=3 hold a ticket's session
# and three watchers' each), times the test workers, plus what other suites on the same
# machine hold: the local server is used only if it allows this many, as the throwaway
# clusters do; with fewer, suites that share it run out of sessions ("too many clients").
ENOUGH_SESSIONS = 200


def usable(url: str, sessions: int = 0) -> bool:
    """Whether the server answers (and allows at least ``sessions`` sessions)."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SELECT current_setting('max_connections')::int").fetchone()
        return row is not None and row[0] >= sessions
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


def unprivileged_owner(home: str) -> pwd.struct_passwd | None:
    """Servers refuse to run as root: as root, the user to run them as (owning ``home``)."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            owner = pwd.getpwnam(user)
            os.chown(home, owner.pw_uid, owner.pw_gid)
            os.chmod(home, 0o755)
            return owner
    raise RuntimeError("servers refuse root and there is no postgres or nobody user")


def become(owner: pwd.struct_passwd | None) -> Callable[[], None] | None:
    """For ``preexec_fn``: switch the child to ``owner`` (None: stay as we are)."""
    if owner is None:
        return None
    uid, gid = owner.pw_uid, owner.pw_gid

    def switch() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return switch


class Cluster:
    """A PostgreSQL cluster in a temporary folder, on its own port, trust auth."""

    def __init__(self, tls: Certificates | None = None, env: dict[str, str] | None = None) -> None:
        """``tls``: take TCP connections over TLS only (the URL asks for ``verify-full``
        against the authority's certificate), as hosted servers do. ``env``: more variables
        for the server's processes (a clock of its own, with libfaketime)."""
        self.env = env or {}
        folder = server_bin()
        if folder is None:
            raise RuntimeError("no initdb/pg_ctl found (apt-get install postgresql)")
        self.bin = folder
        self.home = tempfile.mkdtemp(prefix="inturn-pg-")
        self.data = os.path.join(self.home, "data")
        self.port = free_port()
        self.owner = unprivileged_owner(self.home)
        # UTF8, as servers are set up (under LC_ALL=C initdb would choose SQL_ASCII, in which
        # text comes back as bytes).
        initdb = ("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._as_owner(*initdb, "-E", "UTF8")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.settings: list[str] = []
        if tls is not None:
            self._take_tls(tls)
            self.url += f"?sslmode=verify-full&sslrootcert={tls.ca}"
        self.start()

    @classmethod
    def standby_of(cls, primary: Cluster) -> Cluster:
        """A hot standby of ``primary``, streaming from it, started on a port of its own."""
        made = cls.__new__(cls)
        made.bin = primary.bin
        made.home = tempfile.mkdtemp(prefix="inturn-pg-")
        made.data = os.path.join(made.home, "data")
        made.port = free_port()
        made.owner = unprivileged_owner(made.home)
        made.settings = []
        made.env = {}
        made.url = f"postgresql://postgres@127.0.0.1:{made.port}/postgres"
        source = ("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres")
        made._as_owner("pg_basebackup", "-D", made.data, "-R", "-X", "stream", *source)
        made.start()
        return made

    def _take_tls(self, tls: Certificates) -> None:
        """The server's certificate and key in its data folder (the key must be the server
        user's own, readable by nobody else), and TCP sessions without TLS refused."""
        for source, name in ((tls.cert, "server.crt"), (tls.key, "server.key")):
            target = os.path.join(self.data, name)
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            if self.owner is not None:
                os.chown(target, self.owner.pw_uid, self.owner.pw_gid)
        self.settings = ["ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key"]
        hba = os.path.join(self.data, "pg_hba.conf")
        with open(hba, "w") as rules:  # local sockets for the tests' own checks; TCP: TLS only
            rules.write("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")

    def _as_owner(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bin, program), *args]
        result = subprocess.run(
            command,
            preexec_fn=become(self.owner),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.home,
            env={**os.environ, "LC_ALL": "C", **self.env},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={ENOUGH_SESSIONS} -c shared_buffers=16MB"
        ) + "".join(f" -c {setting}" for setting in self.settings)

    def start(self) -> None:
        log = os.path.join(self.home, "log")
        self._as_owner("pg_ctl", "-D", self.data, "-o", self._options(), "-l", log, "-w", "start")

    def restart(self, mode: str = "fast") -> None:
        """``mode``: ``fast`` ends every session and shuts down cleanly; ``immediate`` stops
        at once, as a crash would, and the server starts with crash recovery."""
        log = os.path.join(self.home, "log")
        self._as_owner(
            "pg_ctl", "-D", self.data, "-o", self._options(), "-l", log, "-m", mode, "-w",
            "restart",
        )  # fmt: skip

    def halt(self) -> None:
        """Stop at once and stay down, its data kept: an outage (``start`` ends it)."""
        self._as_owner("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._as_owner("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def cluster(
    tls: Certificates | None = None, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    if server_bin() is None:
        missing("no initdb/pg_ctl to make a throwaway cluster")
    made = Cluster(tls, env)
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
    if usable(LOCAL_URL, ENOUGH_SESSIONS):
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


def asleep_in_server(url: str, pid: int) -> int:
    """How many sessions of inturn process ``pid`` wait, asleep in the server, for a lock."""
    query = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE NOT l.granted AND a.application_name LIKE %s"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, [f"inturn pid {pid} %"]).fetchone()
    return int(row[0]) if row else 0


def drop_schema(url: str, schema: str) -> None:
    """Drop a test's schema; one that a process the test left behind still uses is left in
    place (after 30 s) rather than waited for without end."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pgbouncer_binary() -> str | None:
    """PgBouncer, installed from Debian's package when missing and we may (root, CI)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "pgbouncer"],
            capture_output=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    return found


class Bouncer:
    """A private PgBouncer in front of ``url``'s server, pooling in ``mode``, on its own port;
    ``mode`` may end in ``/N``: at most N server sessions (``default_pool_size``)."""

    def __init__(self, binary: str, url: str, mode: str) -> None:
        mode, _, pool_size = mode.partition("/")
        target = psycopg.conninfo.conninfo_to_dict(url)
        self.home = tempfile.mkdtemp(prefix="inturn-pgbouncer-")
        self.owner = unprivileged_owner(self.home)
        self.port = free_port()
        database = str(target.get("dbname", "postgres"))
        user = str(target.get("user", "postgres"))
        backend = f"host={target.get('host', '127.0.0.1')} port={target.get('port', 5432)}"
        config = os.path.join(self.home, "pgbouncer.ini")
        with open(config, "w") as out:
            out.write(
                f"[databases]\n{database} = {backend} dbname={database} user={user}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = any\npool_mode = {mode}\n"
                + (f"default_pool_size = {pool_size}\n" if pool_size else "")
                + f"logfile = {self.home}/log\npidfile = {self.home}/pid\n"
            )
        # Its log goes to stderr as well as to the log file: a file, since a pipe nobody
        # reads fills up after a few hundred connections and then stops PgBouncer in a write.
        self.errors = open(os.path.join(self.home, "stderr"), "w+b")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [binary, config],
            preexec_fn=become(self.owner),
            stdout=subprocess.DEVNULL,
            stderr=self.errors,
            cwd=self.home,
        )
        self.url = f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
        for _ in range(200):  # until it accepts connections, or has died saying why
            if self.proc.poll() is not None:
                self.errors.seek(0)
                raise RuntimeError(f"pgbouncer failed: {self.errors.read().decode()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.05)  # a pause that ends early if it dies
        raise RuntimeError("pgbouncer did not start listening")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.errors.close()
        shutil.rmtree(self.home, ignore_errors=True)
