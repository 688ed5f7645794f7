"""The PostgreSQL backend across real processes and a real server.

Server: ``INTURN_TEST_POSTGRES_URL``, else 127.0.0.1:5432 (database ``test``), else a throwaway
cluster (see ``postgres_server.py``). With ``CI=true`` a missing server fails the tests. Each
test gets its own schema (``?inturn_schema=t_...``, dropped afterwards), so parallel tests and
runs never see each other's lines. Tests that restart a server make their own cluster; tests
that cut connections put a proxy of their own in front of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest

import inturn

from conftest import Worker, child_env, inturn_cmd, missing_component

try:
    import psycopg
except ImportError:
    missing_component("psycopg is not installed", "pip install -e '.[postgres]'")

from postgres_server import (
    LOCAL_URL,
    Cluster,
    cluster,
    drop_schema,
    server_bin,
    usable,
    with_schema,
)
from tcp_proxy import TcpProxy

# The command run by ``inturn run``: reports what it sees, then holds until told to finish.
REPORTER = textwrap.dedent(
    """
    import os, signal, sys
    def on_signal(signum, frame):
        print("signal", signum, flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_signal)
    print("running", os.environ["INTURN_TICKET"], os.environ["INTURN_ABANDONED"], flush=True)
    line = sys.stdin.readline()
    sys.exit(int(line) if line.strip() else 0)
    """
)


def _missing(message: str) -> NoReturn:
    missing_component(message, "set INTURN_TEST_POSTGRES_URL, or install postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a usable server (without inturn's parameters)."""
    url = os.environ.get("INTURN_TEST_POSTGRES_URL")
    if url:
        if not usable(url):
            _missing("INTURN_TEST_POSTGRES_URL is set but that server cannot be reached")
        yield url
        return
    if usable(LOCAL_URL):
        yield LOCAL_URL
        return
    try:
        made = Cluster()
    except RuntimeError as exc:
        _missing(f"no PostgreSQL server for the tests: {exc}")
        return
    try:
        yield made.url
    finally:
        made.stop()


def _parts(url: str) -> dict[str, str]:
    return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(url).items()}


def url_for(base: str, *, port: int | None = None, user: str | None = None) -> str:
    """``base`` rebuilt as a URL, through 127.0.0.1:``port`` or as ``user``."""
    parts = _parts(base)
    who = quote(user or parts.get("user", "postgres"), safe="")
    if user is None and parts.get("password"):
        who += ":" + quote(parts["password"], safe="")
    host = "127.0.0.1" if port is not None else parts.get("host", "127.0.0.1")
    where = f"{host}:{port if port is not None else parts.get('port', '5432')}"
    return f"postgresql://{who}@{where}/{quote(parts.get('dbname', 'postgres'), safe='')}"


@pytest.fixture
def schema(pg_server: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    drop_schema(pg_server, name)


@pytest.fixture
def pg_url(pg_server: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's own lines, also for every child process (``INTURN_BACKEND``)."""
    url = with_schema(pg_server, schema)
    monkeypatch.setenv("INTURN_BACKEND", url)
    monkeypatch.delenv("INTURN_DIR", raising=False)
    return url


@pytest.fixture
def proxy(pg_server: str) -> Iterator[TcpProxy]:
    parts = _parts(pg_server)
    made = TcpProxy(parts.get("host", "127.0.0.1"), int(parts.get("port", "5432")))
    yield made
    made.close()


@pytest.fixture
def private_cluster() -> Iterator[Cluster]:
    if server_bin() is None:
        _missing("no initdb/pg_ctl to make a throwaway cluster")
    with cluster() as made:
        yield made


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def run_inturn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        inturn_cmd(*args), capture_output=True, text=True, env=env or child_env(), timeout=120
    )


class Run:
    """``inturn run NAME -- python REPORTER`` with pipes."""

    def __init__(self, name: str, *options: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            inturn_cmd("run", *options, name, "--", sys.executable, "-c", REPORTER),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or child_env(),
        )

    def next_line(self) -> list[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().split()

    def running(self) -> list[str]:
        words = self.next_line()
        assert words and words[0] == "running", words
        return words

    def finish(self, code: int = 0) -> int:
        self.proc.communicate(f"{code}\n", timeout=60)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)


def read_log(path: Path) -> list[list[str]]:
    return [row.split() for row in path.read_text().splitlines()]


# --------------------------------------------------------------------------- order


def test_twelve_processes_are_served_in_arrival_order(pg_url, workers, tmp_path):
    log = tmp_path / "log"
    line = inturn.Line("fifo", backend=pg_url)
    holder = line.acquire()
    tickets = []
    for _ in range(12):
        w = Worker("fifo", "--log", str(log))
        workers.append(w)
        tickets.append(int(w.expect("waiting")[1]))  # in line before the next one starts
    assert tickets == sorted(tickets)
    assert [t.pid for t in line.status().waiters] == [w.pid for w in workers]
    holder.release()
    for w in workers:
        assert w.wait() == 0
    entered = [int(r[1]) for r in read_log(log) if r[0] == "enter"]
    assert entered == tickets
    assert not [r for r in read_log(log) if r[0] == "overlap"]
    assert line.status().holders == () and line.status().waiters == ()


def test_slots_let_n_hold_at_once_and_keep_order(pg_url, workers):
    line = inturn.Line("render", slots=2, backend=pg_url)
    first, second = line.acquire(), line.acquire()
    queued = []
    for _ in range(4):
        w = Worker("render", "--slots", "2", "--hold")
        workers.append(w)
        queued.append(w)
        w.expect("waiting")  # in line before the next one starts
    second.release()  # the younger holder leaves first: the oldest waiter still goes next
    assert queued[0].acquired()[1] == str(second.ticket + 1)
    status = line.status()
    assert [t.pid for t in status.holders] == [os.getpid(), queued[0].pid]
    assert [t.pid for t in status.waiters] == [w.pid for w in queued[1:]]
    first.release()
    queued[1].acquired()
    queued[0].send()
    queued[2].acquired()
    for w in queued[1:3]:
        w.send()
    queued[3].acquired()
    queued[3].send()
    for w in queued:
        assert w.wait() == 0


def test_tickets_are_strictly_increasing_fencing_tokens(pg_url):
    line = inturn.Line("fence", backend=pg_url)
    seen = []
    for _ in range(5):
        with line.acquire() as held:
            seen.append(held.ticket)
    assert seen == sorted(set(seen))


def test_many_hosts_creating_the_schema_at_once_all_succeed(pg_url):
    code = "import inturn, sys; print(inturn.Line('first', backend=sys.argv[1]).status().name)"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE, env=child_env()
        )
        for _ in range(6)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == b"first"


# --------------------------------------------------------------------------- crashes


def test_a_holder_killed_with_sigkill_is_reported_as_abandoned(pg_url, workers):
    holder = Worker("crash", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("crash", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    holder.proc.send_signal(signal.SIGKILL)
    _, ticket, abandoned, dead_pid = waiter.acquired()
    assert abandoned == "1" and dead_pid == str(holder.pid)
    waiter.send()
    assert waiter.wait() == 0
    with inturn.turn("crash", backend=pg_url) as after:
        assert not after.abandoned  # after a clean release nobody is told anything
        assert after.ticket > int(ticket)


def test_a_holder_whose_session_is_terminated_loses_the_turn(pg_url, pg_server, schema, workers):
    holder = Run("term")
    try:
        holder.running()  # the holder first, then the waiter
        waiter = Worker("term", "--hold")
        workers.append(waiter)
        waiter.expect("waiting")
        rows = sql(pg_server, f'SELECT backend_pid FROM "{schema}".tickets WHERE acquired_at > 0')
        assert len(rows) == 1
        assert sql(pg_server, "SELECT pg_terminate_backend(%s)", rows[0][0]) == [(True,)]
        # The holder's watchdog notices, stops the command, and inturn exits 76 ...
        assert holder.next_line() == ["signal", str(signal.SIGTERM)]
        assert holder.proc.wait(60) == 76
        assert holder.proc.stderr is not None
        assert "lost the turn" in holder.proc.stderr.read()
        # ... and the next holder is told the turn was abandoned.
        _, _, abandoned, _ = waiter.acquired()
        assert abandoned == "1"
        waiter.send()
        assert waiter.wait() == 0
    finally:
        holder.kill()


def test_a_killed_waiter_loses_its_place_and_the_one_behind_moves_up(pg_url, workers):
    line = inturn.Line("gap", backend=pg_url)
    holder = line.acquire()
    doomed = Worker("gap")
    workers.append(doomed)
    doomed.expect("waiting")
    behind = Worker("gap", "--hold")
    workers.append(behind)
    _, mine, place = behind.expect("waiting")
    assert place == "3"
    doomed.proc.send_signal(signal.SIGKILL)
    # The server notices the dead client, frees its ticket, and the one behind looks again.
    _, again, place = behind.expect("waiting")
    assert (again, place) == (mine, "2")
    assert [t.pid for t in line.status().waiters] == [behind.pid]
    holder.release()
    assert behind.acquired()[2] == "0"  # a waiter's death is not an abandoned turn
    behind.send()
    assert behind.wait() == 0


# --------------------------------------------------------------------------- connections


def test_a_holder_cut_off_from_the_server_stops_its_command_and_exits_76(
    pg_server, schema, proxy, workers, monkeypatch
):
    direct = with_schema(pg_server, schema)
    cut = with_schema(url_for(pg_server, port=proxy.port), schema)
    holder = Run("cut", "--backend", cut)
    try:
        _, ticket, _ = holder.running()
        proxy.blackhole()  # packets still acknowledged, nothing reaches the server any more
        assert holder.next_line() == ["signal", str(signal.SIGTERM)]
        assert holder.proc.wait(60) == 76
        assert holder.proc.stderr is not None
        assert "lost the turn in line 'cut'" in holder.proc.stderr.read()
    finally:
        holder.kill()
    # The server still sees the cut-off session (and its turn) until that connection dies.
    monkeypatch.setenv("INTURN_BACKEND", direct)
    waiter = Worker("cut", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    proxy.cut()
    _, after, abandoned, _ = waiter.acquired()
    assert abandoned == "1" and int(after) > int(ticket)
    waiter.send()
    assert waiter.wait() == 0


def test_a_waiter_whose_connection_drops_reconnects_and_waits_again(
    pg_server, schema, proxy, workers
):
    direct = with_schema(pg_server, schema)
    line = inturn.Line("drop", backend=direct)
    holder = line.acquire()
    env = child_env(INTURN_BACKEND=with_schema(url_for(pg_server, port=proxy.port), schema))
    waiter = Worker("drop", "--hold", env=env)
    workers.append(waiter)
    first = int(waiter.expect("waiting")[1])
    proxy.cut()
    again = int(waiter.expect("waiting")[1])  # back in line with a new ticket
    assert again > first
    # The old ticket's server session may linger until the server notices the dropped client
    # (client_connection_check_interval); the new ticket is in line either way.
    assert again in [t.number for t in line.status().waiters]
    holder.release()
    _, ticket, abandoned, _ = waiter.acquired()
    assert (int(ticket), abandoned) == (again, "0")
    waiter.send()
    assert waiter.wait() == 0


def test_a_server_restart_while_waiters_wait(private_cluster, workers, tmp_path):
    url = with_schema(private_cluster.url, "inturn_restart")
    env = child_env(INTURN_BACKEND=url)
    log = tmp_path / "log"
    holder = Run("restart", env=env)
    try:
        _, before, _ = holder.running()
        waiting = []
        for _ in range(3):
            w = Worker("restart", "--log", str(log), env=env)
            workers.append(w)
            waiting.append(w)
            w.expect("waiting")
        private_cluster.restart()
        # The holder's session is gone: it stops its command and exits 76.
        assert holder.next_line() == ["signal", str(signal.SIGTERM)]
        assert holder.proc.wait(60) == 76
    finally:
        holder.kill()
    reports = []
    for w in waiting:
        assert w.wait(120) == 0
        reports += [r.split() for r in w.remaining() if r.startswith("acq")]
    entries = [r for r in read_log(log) if r[0] == "enter"]
    assert len(entries) == 3 and not [r for r in read_log(log) if r[0] == "overlap"]
    assert all(int(r[1]) > int(before) for r in entries)  # fencing tokens survive restarts
    assert sum(r[2] == "1" for r in reports) == 1  # one holder is told it was abandoned


def test_an_unreachable_server_is_one_clear_line_and_exit_2(tmp_path):
    secret = "s3cr3t-pa55"
    url = f"postgresql://someone:{secret}@127.0.0.1:1/ops"
    for args in (("status", "--backend", url), ("run", "--backend", url, "x", "--", "true")):
        result = run_inturn(*args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot connect to PostgreSQL at" in lines[0], lines
        assert "postgresql://someone@127.0.0.1:1/ops" in lines[0]
        assert secret not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://127.0.0.1:notaport/db", 'for connection option "port"'),
        ("postgresql://[::1/db", "not a valid PostgreSQL URL"),
        ("postgresql://127.0.0.1/db?inturn_schema=Bad-Name", "not a usable schema name"),
        ("postgresql://127.0.0.1/db?inturn_pooler=transaction", "only 'session'"),
        ("postgresql://127.0.0.1/db?inturn_nope=1", "unknown URL parameter"),
    ],
)
def test_bad_urls_are_one_clear_line_and_exit_2(url, words):
    result = run_inturn("status", "--backend", url)
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_password_is_never_shown(pg_server, schema):
    parts = _parts(pg_server)
    if parts.get("password"):
        pytest.skip("the test server's URL already has a password")
    secret = "hunter2-secret"
    url = url_for(pg_server).replace("@", f":{secret}@", 1)  # trust auth ignores it
    url = with_schema(url, schema)
    with inturn.turn("pw", backend=url):
        result = run_inturn("status", "--json", "--backend", url, "pw")
        text = run_inturn("status", "--backend", url)
    assert result.returncode == 0 and text.returncode == 0
    document = json.loads(result.stdout)
    assert document["where"].startswith("postgresql://") and document["scope"] == "server"
    assert secret not in result.stdout + result.stderr + text.stdout + text.stderr


# --------------------------------------------------------------------------- waiting


def test_no_wait_and_timeout_exit_75_and_leave_the_line(pg_url):
    line = inturn.Line("busy", backend=pg_url)
    with line.acquire():
        result = run_inturn("run", "--no-wait", "busy", "--", "true")
        assert result.returncode == 75
        assert f"held by pid {os.getpid()}" in result.stderr
        result = run_inturn("run", "--timeout", "0.3", "busy", "--", "true")
        assert result.returncode == 75 and "gave up" in result.stderr
        assert line.status().waiters == ()
        with pytest.raises(inturn.Timeout):
            line.acquire(timeout=0.2)
        with pytest.raises(inturn.Busy):
            line.acquire(blocking=False)
        assert line.status().waiters == ()
    assert run_inturn("run", "--no-wait", "busy", "--", "true").returncode == 0


def test_a_signal_while_waiting_leaves_the_line(pg_url, workers):
    line = inturn.Line("sig", backend=pg_url)
    holder = line.acquire()
    waiter = Worker("sig")
    workers.append(waiter)
    waiter.expect("waiting")
    waiter.proc.send_signal(signal.SIGINT)
    waiter.expect("interrupted")
    assert waiter.wait() == 130
    assert line.status().waiters == ()
    holder.release()


def test_cancelling_an_async_wait_leaves_the_line(pg_url):
    line = inturn.Line("async", backend=pg_url)

    async def scenario() -> None:
        task = asyncio.ensure_future(inturn.acquire_async(line))
        while not line.status().waiters:
            await asyncio.sleep(0.01)  # watching for the waiter to appear, not guessing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with line.acquire():
        asyncio.run(scenario())
        assert line.status().waiters == ()


# --------------------------------------------------------------------------- status


def test_status_shows_holders_and_waiters_with_metadata(pg_url, workers):
    line = inturn.Line("report", backend=pg_url)
    with line.acquire(command=("make", "all")):
        waiter = Worker("report", "--hold")
        workers.append(waiter)
        waiter.expect("waiting")
        text = run_inturn("status", "report")
        assert text.returncode == 0
        assert "report: 1 holding, 1 waiting" in text.stdout
        assert str(os.getpid()) in text.stdout and "make all" in text.stdout
        result = run_inturn("status", "--json", "report")
        document = json.loads(result.stdout)
        assert [h["pid"] for h in document["holders"]] == [os.getpid()]
        assert document["holders"][0]["command"] == ["make", "all"]
        assert [w["pid"] for w in document["waiters"]] == [waiter.pid]
        assert document["waiters"][0]["state"] == "waiting"
        overview = run_inturn("status")
        assert overview.returncode == 0 and "report" in overview.stdout
        every = json.loads(run_inturn("status", "--json").stdout)
        assert [entry["name"] for entry in every["lines"]] == ["report"]
    waiter.acquired()
    waiter.send()
    assert waiter.wait() == 0


def test_sessions_are_named_for_dbas(pg_url, pg_server):
    with inturn.turn("named", backend=pg_url):
        names = sql(
            pg_server,
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
            f"inturn pid {os.getpid()} %",
        )
    assert names


HOSTILE = [
    "nightly'; DROP TABLE tickets; --",
    'a"b\\c$$x$$',
    "nul\0inside",
    "ümlaut 名前 🚀",
    "x" * 4000,
    "NIGHTLY",
    "nightly",
    "lone \udcff surrogate",
]


def test_hostile_names_are_just_names(pg_url):
    tickets = {}
    for name in HOSTILE:
        line = inturn.Line(name, backend=pg_url)
        with line.acquire() as held:
            status = line.status()
            assert status.name == name and [t.pid for t in status.holders] == [os.getpid()]
            tickets[name] = held.ticket
    from inturn.postgres import PostgresLine

    store = inturn.Line("nightly", backend=pg_url).store
    assert isinstance(store, PostgresLine)
    assert store.backend.names() == sorted(HOSTILE)
    result = run_inturn("run", "--no-wait", HOSTILE[0], "--", "true")
    assert result.returncode == 0


# --------------------------------------------------------------------------- roles


@contextlib.contextmanager
def role(pg_server: str) -> Iterator[str]:
    if not sql(pg_server, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]:
        pytest.skip("needs a superuser on the test server to create roles")
    name = f"inturn_role_{uuid.uuid4().hex[:10]}"
    sql(pg_server, f"CREATE ROLE {name} LOGIN")
    try:
        yield name
    finally:
        with contextlib.suppress(psycopg.Error):
            sql(pg_server, f"DROP OWNED BY {name}")
            sql(pg_server, f"DROP ROLE {name}")


def one_error_line(url: str) -> str:
    result = run_inturn("status", "--backend", url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_role_that_may_not_create_the_schema_is_told_which_grant(pg_server, schema):
    with role(pg_server) as name:
        line = one_error_line(with_schema(url_for(pg_server, user=name), schema))
        assert "GRANT CREATE ON DATABASE" in line and name in line


def test_a_role_without_grants_on_the_tables_is_told_which(pg_server, schema):
    inturn.Line("x", backend=with_schema(pg_server, schema)).status()  # the owner sets up
    with role(pg_server) as name:
        url = with_schema(url_for(pg_server, user=name), schema)
        assert f"GRANT USAGE ON SCHEMA {schema} TO {name}" in one_error_line(url)
        sql(pg_server, f"GRANT USAGE ON SCHEMA {schema} TO {name}")
        sql(pg_server, f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {name}")
        line = one_error_line(url)
        assert "GRANT SELECT, INSERT, UPDATE, DELETE ON" in line and "ticket_numbers" in line
        sql(
            pg_server,
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {name}",
        )
        sql(pg_server, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {name}")
        sql(pg_server, f"ALTER ROLE {name} SET default_transaction_read_only = on")
        assert "is read-only" in one_error_line(url)
        sql(pg_server, f"ALTER ROLE {name} RESET default_transaction_read_only")
        with inturn.turn("x", backend=url) as held:
            assert held.ticket >= 1
