"""The PostgreSQL backend across real processes and a real server.

Server: ``INTURN_TEST_POSTGRES_URL``, else 127.0.0.1:5432 (database ``test``) if it allows enough
sessions, else a throwaway cluster (see ``postgres_server.py``). With ``CI=true`` a missing
server fails the tests. Each
test gets its own schema (``?inturn_schema=t_...``, dropped afterwards), so parallel tests and
runs never see each other's lines. Tests that restart a server make their own cluster; tests
that cut connections put a proxy of their own in front of the server.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    Run,
    Worker,
    child_env,
    free_port,
    in_threads,
    inturn_cmd,
    missing_component,
    one_line_error,
    read_log,
    run_cli,
    until,
)

try:
    import psycopg
except ImportError:
    missing_component("psycopg is not installed", "pip install -e '.[postgres]'")

from inturn.backends.postgres.membership import PostgresMembership
from inturn.backends.postgres.statements import class_id, fold

from postgres_server import (
    Bouncer,
    Cluster,
    asleep_in_server,
    cluster,
    pgbouncer_binary,
    with_schema,
)
from tcp_proxy import TcpProxy

# The command run by ``inturn run``: reports what it sees, then holds until told to finish.


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
def proxy(pg_server: str) -> Iterator[TcpProxy]:
    parts = _parts(pg_server)
    made = TcpProxy(parts.get("host", "127.0.0.1"), int(parts.get("port", "5432")))
    yield made
    made.close()


@pytest.fixture
def private_cluster() -> Iterator[Cluster]:
    with cluster() as made:
        yield made


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


# --------------------------------------------------------------------------- order


def test_many_hosts_creating_the_schema_at_once_all_succeed(pg_url):
    code = "import inturn, sys\nwith inturn.turn('first', backend=sys.argv[1]) as t: print(t.name)"
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


def test_a_waiter_ended_to_break_a_deadlock_starts_again_and_says_why(
    pg_url, pg_server, schema, workers, recwarn
):
    """Another application's transaction that locks the row of the ticket a waiter waits on,
    then waits for the waiter's own lock, makes a deadlock with the waiter once the ticket's
    holder dies: the server ends the waiter's statement to break it. The waiter lets go of its
    locks (so the other transaction goes on), takes a new place, and still gets the turn after
    it, told that the holder died; its warning gives the server's whole account of the cycle,
    not only its first line."""
    holder = Worker("knot", "--hold")
    workers.append(holder)
    held = int(holder.acquired()[1])
    line = inturn.Line("knot", backend=pg_url)
    turns: list[inturn.Turn] = []
    waiter = threading.Thread(target=lambda: turns.append(line.acquire()))
    waiter.start()
    cls, tickets = class_id(schema), f'"{schema}".tickets'

    def waiting_on(key: int) -> list[tuple[object, ...]]:
        return sql(
            pg_server,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid = %s::oid AND objid = %s::oid AND objsubid = 2",
            cls,
            key,
        )

    until(lambda: bool(waiting_on(fold(held))), "the waiter to wait on the holder's ticket")
    [(mine,)] = sql(pg_server, f"SELECT number FROM {tickets} WHERE number > %s", held)
    other = psycopg.connect(pg_server)  # not autocommit: one transaction
    try:
        try:
            other.execute("SET deadlock_timeout = '1h'")  # the waiter is the one to find it
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("setting deadlock_timeout needs a superuser on this test server")
        other.execute(f"SELECT 1 FROM {tickets} WHERE number = %s FOR UPDATE", [held])
        knot = threading.Thread(
            target=lambda: other.execute("SELECT pg_advisory_lock(%s, %s)", [cls, fold(mine)])
        )
        knot.start()
        until(lambda: bool(waiting_on(fold(mine))), "the other session to wait on the waiter")
        os.kill(holder.pid, signal.SIGKILL)
        knot.join(60)  # it got the lock: the waiter's first session is gone
        assert not knot.is_alive()
    finally:
        other.close()
    waiter.join(60)
    assert turns, "the waiter never got the turn"
    turn = turns[0]
    try:
        assert turn.ticket > mine and turn.abandoned
        assert turn.abandoned_by is not None and turn.abandoned_by.pid == holder.pid
    finally:
        turn.release()
        line.close()
    said = [str(w.message) for w in recwarn if issubclass(w.category, inturn.InturnWarning)]
    assert len(said) == 1 and "deadlock" in said[0], said
    assert said[0].count("blocked by process") == 2, said[0]


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
        assert holder.next_line() == ["signal", str(int(signal.SIGTERM))]
        assert holder.wait(60) == 76
        assert "lost the turn" in holder.errors()
        # ... and the next holder is told the turn was abandoned.
        _, _, abandoned, _ = waiter.acquired()
        assert abandoned == "1"
        waiter.send()
        assert waiter.wait() == 0
    finally:
        holder.kill()


# --------------------------------------------------------------------------- connections


def test_a_holder_cut_off_from_the_server_stops_its_command_and_exits_76(
    pg_server, schema, proxy, workers, monkeypatch
):
    direct = with_schema(pg_server, schema)
    cut = with_schema(url_for(pg_server, port=proxy.port), schema)
    holder = Run("cut", "--backend", cut)
    try:
        ticket = holder.running().ticket
        proxy.blackhole()  # packets still acknowledged, nothing reaches the server any more
        assert holder.next_line() == ["signal", str(int(signal.SIGTERM))]
        assert holder.wait(60) == 76
        assert "lost the turn in line 'cut'" in holder.errors()
    finally:
        holder.kill()
    # The server still sees the cut-off session (and its turn) until that connection dies.
    monkeypatch.setenv("INTURN_BACKEND", direct)
    waiter = Worker("cut", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    proxy.cut()
    _, after, abandoned, _ = waiter.acquired()
    assert abandoned == "1" and int(after) > ticket
    waiter.send()
    assert waiter.wait() == 0


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_waiter_on_a_silent_path_still_keeps_its_timeout_and_its_cancel(
    pg_server, schema, proxy, how
):
    """The path to the server goes silent while a waiter sleeps in it (a middlebox that keeps
    TCP alive but passes nothing; a frozen server is the same): the server's lock_timeout never
    comes back, nor does a cancel. The waiter gives up on its side: its timeout still ends the
    wait, and so does a cancel (Ctrl-C, a cancelled task), a few seconds late at worst."""
    from inturn.backends.base import CancelToken
    from inturn.backends.postgres.store import UNANSWERED_AFTER

    direct = inturn.Line("silent", backend=with_schema(pg_server, schema))
    cut = inturn.Line("silent", backend=with_schema(url_for(pg_server, port=proxy.port), schema))
    holder = direct.acquire()
    cancel = CancelToken()
    ended: list[str] = []

    def wait() -> None:
        try:
            cut.acquire(timeout=4 if how == "timeout" else None, cancel=cancel).release()
            ended.append("held")
        except inturn.Timeout:
            ended.append("timeout")
        except inturn.Cancelled:
            ended.append("cancel")

    waiter = threading.Thread(target=wait, daemon=True)
    try:
        waiter.start()
        until(lambda: asleep_in_server(pg_server, os.getpid()) == 1, "the waiter asleep")
        proxy.blackhole()  # packets still acknowledged, nothing reaches the server any more
        if how == "cancel":
            cancel.cancel()
        # Its time (or none, cancelled), 3 s for the server to have answered, and room for a
        # loaded machine: not waiting out a new connection's timeout (10 s) to the silent one.
        waiter.join((4 if how == "timeout" else 0) + UNANSWERED_AFTER + 5)
        assert ended == [how]
    finally:
        holder.release()
        proxy.cut()
        waiter.join(60)
        direct.close()
        cut.close()


def test_a_barrier_on_a_silent_path_still_keeps_its_timeout(pg_server, schema, proxy):
    """``inturn wait -w`` whose path to the server goes silent while it waits: it gives up at
    its time, a few seconds late at worst (3 s for the server to have answered its cancel,
    1 s for the holder it names), not after the timeouts of new connections to a server that
    cannot answer."""
    from inturn.backends.postgres.store import UNANSWERED_AFTER
    from inturn.queue import STATUS_AFTER_TIMEOUT

    direct = inturn.Line("silent-wait", backend=with_schema(pg_server, schema))
    cut = with_schema(url_for(pg_server, port=proxy.port), schema)
    holder = direct.acquire()
    barrier = subprocess.Popen(
        inturn_cmd("wait", "-w", "4", "--backend", cut, "silent-wait"),
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        until(
            lambda: asleep_in_server(pg_server, barrier.pid) == 1,
            "the barrier asleep in the server",
        )
        proxy.blackhole()
        bound = 4 + UNANSWERED_AFTER + STATUS_AFTER_TIMEOUT + 5  # room for a loaded machine
        _, said = barrier.communicate(timeout=bound)
        assert barrier.returncode == 75, said
        assert "gave up waiting for line 'silent-wait'" in said
    finally:
        barrier.kill()
        barrier.wait()
        holder.release()
        proxy.cut()
        direct.close()


def test_sessions_kept_for_later_that_the_server_ended_are_replaced_not_reported(pg_server, schema):
    """The idle sessions a ``Line`` keeps for its next turn are ended by the server meanwhile
    (a DBA, ``idle_session_timeout``, a restart): the next turn is taken on fresh ones, not
    refused as a lost connection."""
    line = inturn.Line("kept", backend=with_schema(pg_server, schema))
    try:
        for _ in range(2):
            with line:
                pass
            status = line.status()  # leaves a session idle too
            assert status.holders == () and status.waiters == ()
            ended = sql(
                pg_server,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle'"
                f" AND application_name LIKE 'inturn pid {os.getpid()} %'",
            )
            assert ended, "no idle session was kept"
            with line:  # on fresh sessions
                pass
    finally:
        line.close()


CANCEL_REQUEST = (80877102).to_bytes(4, "big")  # the code that opens a cancel request


@pytest.mark.parametrize("kind", ["watch", "replacement"])
def test_a_wait_stopped_before_its_statement_reached_the_server_still_ends(
    pg_server, schema, proxy, kind
):
    """A wait on several tickets (one extra session per ticket) and a ``newest_wins``
    waiter's sleep end with a cancel request. One that reaches the server before the statement
    does finds the session idle and cancels nothing; it is sent again until the statement has
    ended, so stopping right after starting still ends the wait, and the session is free
    again. The proxy holds the statement back until the first cancel request has gone by."""
    from inturn.backends.base import Patience
    from inturn.backends.postgres.statements import fold
    from inturn.backends.postgres.store import PostgresBackend, _ReplacementWatch, _Watch
    from inturn.records import own_ticket_fields

    direct = with_schema(pg_server, schema)
    holder = inturn.Line("late", backend=direct).acquire()  # what the watch waits for
    backend = PostgresBackend(with_schema(url_for(pg_server, port=proxy.port), schema))
    store = backend.line("late")
    member, _ = store.join(own_ticket_fields(None, 1, newest_wins=True), Patience())
    backend.put_back(backend.connect())  # the idle session a watch borrows
    woken = threading.Event()
    proxy.hold()  # every session of ``backend`` is open now: what they send waits
    if kind == "watch":
        watch: Any = _Watch(backend, fold(holder.ticket), woken)
    else:
        watch = _ReplacementWatch(store, member, woken)
    assert proxy.wait_held(1)
    stopper = threading.Thread(target=watch.stop, daemon=True)
    stopper.start()
    assert proxy.wait_sent(CANCEL_REQUEST, 1)
    proxy.let_go()
    stopper.join(120)
    assert not stopper.is_alive()
    assert not watch.thread.is_alive(), "the statement went on after the wait was stopped"
    assert not woken.is_set() or kind == "watch"
    store.leave(member)  # its session answers again
    holder.release()
    backend.close()


def held_and_proxied(
    pg_server: str, schema: str, proxy: TcpProxy, name: str
) -> tuple[inturn.Line, inturn.Turn, dict[str, str], str]:
    """Line ``name`` held through a direct connection; the environment of a process that
    reaches the server through ``proxy``, and the direct URL."""
    direct = with_schema(pg_server, schema)
    line = inturn.Line(name, backend=direct)
    holder = line.acquire()
    env = child_env(INTURN_BACKEND=with_schema(url_for(pg_server, port=proxy.port), schema))
    return line, holder, env, direct


def test_a_waiter_whose_connection_drops_reconnects_and_waits_again(
    pg_server, schema, proxy, workers
):
    line, holder, env, _ = held_and_proxied(pg_server, schema, proxy, "drop")
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


def test_a_waiter_whose_connection_drops_as_its_turn_comes_waits_again(
    pg_server, schema, proxy, workers
):
    """The waiter at the front wakes, and its connection drops while it marks the turn as its
    own: it never held the turn, so it takes a new place and waits again, as a waiter whose
    connection drops while it sleeps does (it failed with LostTurn, exit 2, before); the one
    behind it goes first, and nobody is told of a death."""
    line, holder, env, direct = held_and_proxied(pg_server, schema, proxy, "front")
    front = Worker("front", env=env)
    workers.append(front)
    first = int(front.expect("waiting")[1])
    behind = Worker("front", "--hold", env=child_env(INTURN_BACKEND=direct))
    workers.append(behind)
    behind.expect("waiting")
    proxy.hold()  # what the front waiter sends next (the mark, once woken) waits here
    holder.release()
    assert proxy.wait_held(1)
    proxy.cut()
    proxy.let_go()
    again = int(front.expect("waiting")[1])  # back in line, behind the one behind it
    assert again > first
    _, _, abandoned, _ = behind.acquired()
    assert abandoned == "0"
    behind.send()
    _, ticket, abandoned, _ = front.acquired()
    assert (int(ticket), abandoned) == (again, "0")
    assert front.wait() == 0 and behind.wait() == 0
    line.close()


def test_a_newest_wins_waiter_that_rejoins_yields_to_a_newer_one(pg_server, schema, proxy, workers):
    """A ``newest_wins`` waiter loses its session, and a newer ``newest_wins`` run joins
    before it can come back: it takes a new place behind the newer one, and yields to it
    (replaced, exit 77) rather than run after it, an older request last (it ran last)."""
    line, holder, via_proxy, direct = held_and_proxied(pg_server, schema, proxy, "newest")
    older = Worker("newest", "--newest-wins", env=via_proxy)
    workers.append(older)
    older.expect("waiting", skip=("joining",))
    proxy.blackhole()  # its reconnections go unanswered until the newer one is in line
    proxy.cut()
    newer = Worker("newest", "--newest-wins", "--hold", env=child_env(INTURN_BACKEND=direct))
    workers.append(newer)
    newer.expect("waiting", skip=("joining",))
    proxy.blackholed.clear()
    older.expect("replaced", skip=("waiting",))
    assert older.wait() == 77
    holder.release()
    newer.acquired()
    newer.send()
    assert newer.wait() == 0
    line.close()


def test_a_server_restart_while_waiters_wait(private_cluster, workers, tmp_path):
    url = with_schema(private_cluster.url, "inturn_restart")
    env = child_env(INTURN_BACKEND=url)
    log = tmp_path / "log"
    holder = Run("restart", env=env)
    try:
        before = holder.running().ticket
        waiting = []
        for _ in range(3):
            w = Worker("restart", "--log", str(log), env=env)
            workers.append(w)
            waiting.append(w)
            w.expect("waiting")
        barrier = subprocess.Popen(inturn_cmd("wait", "restart"), env=env, text=True,
                                   stderr=subprocess.PIPE)  # fmt: skip
        asleep = (
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND application_name LIKE %s"
        )
        who = f"inturn pid {barrier.pid} %"
        until(lambda: sql(private_cluster.url, asleep, who), "the barrier to wait")
        private_cluster.restart()
        # The holder's session is gone: it stops its command and exits 76.
        assert holder.next_line() == ["signal", str(int(signal.SIGTERM))]
        assert holder.wait(60) == 76
        # The barrier rides the restart out as the waiters do (it failed with exit 2): those
        # in line when it started are gone, the holder dead and the waiters in line anew.
        _, said = barrier.communicate(timeout=120)
        assert barrier.returncode == 0, said
    finally:
        holder.kill()
    reports = []
    for w in waiting:
        assert w.wait(120) == 0
        reports += [r.split() for r in w.remaining() if r.startswith("acq")]
    entries = [r for r in read_log(log) if r[0] == "enter"]
    assert len(entries) == 3 and not [r for r in read_log(log) if r[0] == "overlap"]
    assert all(int(r[1]) > before for r in entries)  # fencing tokens survive restarts
    assert sum(r[2] == "1" for r in reports) == 1  # one holder is told it was abandoned


def test_an_unreachable_server_is_one_clear_line_and_exit_69(tmp_path):
    """Nobody listens on the port: the server is unavailable, not the call wrong, so a script
    can tell "try again later" (69, EX_UNAVAILABLE) from "fix the call" (2)."""
    secret = "s3cr3t-pa55"
    port = free_port()
    url = f"postgresql://someone:{secret}@127.0.0.1:{port}/ops"
    for args in (
        ("status", "--backend", url),
        ("run", "--backend", url, "x", "--", "true"),
        ("wait", "--backend", url, "x"),
    ):
        result = run_cli(*args)
        line = one_line_error(result, "cannot connect to PostgreSQL at", code=69)
        assert f"postgresql://someone@127.0.0.1:{port}/ops" in line
        assert secret not in result.stderr + result.stdout


def test_an_unreachable_server_raises_server_unavailable_a_backend_error():
    url = f"postgresql://someone@127.0.0.1:{free_port()}/ops"
    with pytest.raises(inturn.ServerUnavailable, match="cannot connect to PostgreSQL") as caught:
        inturn.Line("x", backend=url).acquire()
    assert isinstance(caught.value, inturn.BackendError)
    with pytest.raises(inturn.ServerUnavailable):
        inturn.lines(backend=url)


def test_a_host_name_that_does_not_exist_is_a_setup_to_fix_exit_2():
    """The resolver's answer that no such name exists is a typo to correct, not an outage."""
    result = run_cli("status", "--backend", "postgresql://no-such-host.invalid/ops")
    one_line_error(result, "no-such-host.invalid", code=2)


def test_a_server_out_of_connection_slots_is_unavailable_exit_69(private_cluster):
    """Every slot of the server's max_connections taken (by other clients, shared by all):
    its load of the moment, so 69, try again later; the line still names the setting."""
    private_cluster.settings += ["max_connections=4", "superuser_reserved_connections=0"]
    private_cluster.restart()
    others = [psycopg.connect(private_cluster.url) for _ in range(4)]
    try:
        result = run_cli("status", "--backend", private_cluster.url)
        one_line_error(result, "too many clients", "max_connections", code=69)
    finally:
        for other in others:
            other.close()
    assert run_cli("status", "--backend", private_cluster.url).returncode == 0


def test_a_wrong_password_is_a_setup_to_fix_exit_2(private_cluster):
    """The server answers and refuses the login: no use trying again later."""
    sql(private_cluster.url, "CREATE ROLE checked LOGIN PASSWORD 'right-pw'")
    hba = os.path.join(private_cluster.data, "pg_hba.conf")
    with open(hba) as rules:
        kept = rules.read()
    with open(hba, "w") as rules:
        rules.write("host all checked 127.0.0.1/32 scram-sha-256\n" + kept)
    sql(private_cluster.url, "SELECT pg_reload_conf()")
    url = f"postgresql://checked:wrong-pw@127.0.0.1:{private_cluster.port}/postgres"
    until(lambda: run_cli("status", "--backend", url).returncode != 0, "the rule to apply")
    for args in (("status", "--backend", url), ("run", "--backend", url, "x", "--", "true")):
        result = run_cli(*args)
        one_line_error(result, "password authentication failed", code=2)
        assert "wrong-pw" not in result.stderr
    with pytest.raises(inturn.BackendError) as caught:
        inturn.lines(backend=url)
    assert not isinstance(caught.value, inturn.ServerUnavailable)


def test_a_database_that_does_not_exist_is_named_with_what_to_do(pg_server):
    """Not the general advice about the server and the password: the database is missing."""
    parts = _parts(pg_server)
    url = pg_server.replace(f"/{parts['dbname']}", "/no_such_database_here")
    result = run_cli("status", "--backend", url)
    line = one_line_error(result, "no_such_database_here", "create the database")
    assert "PGPASSWORD" not in line


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
    result = run_cli("status", "--backend", url)
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
        result = run_cli("status", "--json", "--backend", url, "pw")
        text = run_cli("status", "--backend", url)
    assert result.returncode == 0 and text.returncode == 0
    document = json.loads(result.stdout)
    assert document["where"].startswith("postgresql://") and document["scope"] == "server"
    assert secret not in result.stdout + result.stderr + text.stdout + text.stderr


def test_a_short_password_is_masked_whole_not_inside_the_servers_words(pg_server):
    """The password ``x`` hides itself, not every x of the message ("does not e***ist")."""
    nobody = url_for(pg_server, user="inturn_no_such_role").replace("@", ":x@", 1)
    result = run_cli("status", "--backend", nobody)
    line = one_line_error(result, 'role "inturn_no_such_role" does not exist')
    assert "***" not in line


# --------------------------------------------------------------------------- waiting


# --------------------------------------------------------------------------- status


@pytest.fixture
def bouncer(pg_server: str, request: pytest.FixtureRequest) -> Iterator[Bouncer]:
    """A real PgBouncer in front of the test server, pooling as the test's parameter says."""
    binary = pgbouncer_binary()
    if binary is None:
        missing_component("PgBouncer is not installed", "apt-get install pgbouncer")
    made = Bouncer(binary, pg_server, request.param)
    yield made
    made.stop()


@pytest.mark.parametrize("bouncer", ["session"], indirect=True)
def test_the_pgbouncer_of_the_tests_serves_many_connections(bouncer):
    """PgBouncer logs every connection to stderr too: the fixture must not let that output
    fill a pipe nobody reads, which stops PgBouncer after a few hundred connections (a long
    test, or a stress run through the fixture, then hangs at its next connect)."""
    for _ in range(600):
        with psycopg.connect(bouncer.url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")


@pytest.mark.parametrize("bouncer", ["transaction"], indirect=True)
def test_a_pooler_in_transaction_mode_is_refused_with_one_clear_line(bouncer, schema):
    result = run_cli("run", "--backend", with_schema(bouncer.url, schema), "pooled", "--", "true")
    one_line_error(result, "pooler", "PgBouncer", "connect to PostgreSQL directly")


@pytest.mark.parametrize("bouncer", ["transaction/1"], indirect=True)
def test_a_transaction_pooler_said_to_pool_sessions_is_refused_at_the_shared_join(bouncer, schema):
    """``inturn_pooler=session`` in front of a pool in transaction mode (one server session
    for every client here): the second client's join lands in the session that holds the
    first one's ticket, where its lock would be granted to it as well; it is refused instead."""
    url = with_schema(bouncer.url, schema) + "&inturn_pooler=session"
    line = inturn.Line("pooled", backend=url)
    holder = line.acquire()
    try:
        with pytest.raises(inturn.BackendError, match="already holds another inturn ticket"):
            inturn.Line("pooled", backend=url).acquire(timeout=REPORT_TIMEOUT)
    finally:
        holder.release()


@pytest.mark.parametrize("bouncer", ["session"], indirect=True)
def test_a_pooler_in_session_mode_works_when_the_url_says_so(bouncer, schema, workers):
    refused = run_cli("status", "--backend", with_schema(bouncer.url, schema), "pooled")
    one_line_error(refused, "inturn_pooler=session")
    url = with_schema(bouncer.url, schema) + "&inturn_pooler=session"
    line = inturn.Line("pooled", backend=url)
    holder = line.acquire()
    waiter = Worker("pooled", "--hold", env=child_env(INTURN_BACKEND=url))
    workers.append(waiter)
    waiter.expect("waiting")
    holder.release()
    _, ticket, abandoned, _ = waiter.acquired()
    assert int(ticket) > holder.ticket and abandoned == "0"
    waiter.send()
    assert waiter.wait() == 0


@pytest.mark.parametrize("bouncer", ["session/1"], indirect=True)
def test_a_pool_with_no_free_session_is_waited_for_only_as_long_as_asked(bouncer, schema):
    """A pool in session mode whose one server session another client holds: PgBouncer keeps
    a new client's first statement in its own queue. ``-n`` and ``-w 1`` give up on it in
    seconds, as on a busy line, and say that the pool was full, not that a connection was
    lost (PgBouncer's ``query_wait_timeout``, 120 s, would have said that)."""
    holder = psycopg.connect(bouncer.url, autocommit=True)
    try:
        holder.execute("SELECT 1")  # the pool's only server session is this client's now
        env = child_env(INTURN_BACKEND=with_schema(bouncer.url, schema) + "&inturn_pooler=session")
        for wait in (["-n"], ["-w", "1"]):
            started = time.monotonic()
            result = subprocess.run(
                inturn_cmd("run", *wait, "pooled", "--", "true"),
                capture_output=True,
                text=True,
                env=env,
                timeout=30,
            )
            assert time.monotonic() - started < 15, wait
            one_line_error(result, "pooler", "default_pool_size", code=75)
    finally:
        holder.close()


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
    from inturn.backends.postgres import PostgresStore

    store = inturn.Line("nightly", backend=pg_url).store
    assert isinstance(store, PostgresStore)
    assert store.backend.names() == sorted(HOSTILE)
    result = run_cli("run", "--no-wait", HOSTILE[0], "--", "true")
    assert result.returncode == 0


def _cancelled_while_stalled(
    pg_server: str, schema: str, number: int, act: Any, statement: str
) -> None:
    """Run ``act()`` in a thread while ticket ``number``'s row is locked, so that the statement
    its session then makes (marking the turn, or leaving) stalls; cancel that statement as a
    ``newest_wins`` arrival's wake-up would, and let it go on once it was cancelled."""
    with psycopg.connect(pg_server) as blocker:
        (pid,) = blocker.execute(
            f"SELECT backend_pid FROM {schema}.tickets WHERE number = %s FOR UPDATE", [number]
        ).fetchone()
        thread = threading.Thread(target=act)
        thread.start()

        def stalled() -> Any:
            row = sql(
                pg_server,
                "SELECT query_start FROM pg_stat_activity WHERE pid = %s"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                pid,
                statement + "%",
            )
            return row[0][0] if row else None

        until(lambda: stalled() is not None, "the statement to stall on the row")
        before = stalled()
        sql(pg_server, "SELECT pg_cancel_backend(%s)", pid)
        until(  # cancelled: tried again (a new statement) or given up (session gone)
            lambda: (
                stalled() not in (before,)
                or not sql(pg_server, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid)
            ),
            "the cancel to land",
        )
        blocker.commit()
    thread.join(REPORT_TIMEOUT)


def test_a_cancel_landing_on_marking_or_leaving_loses_nothing(pg_url, pg_server, schema):
    """A later ``newest_wins`` arrival wakes the waiter it replaces by cancelling its
    session's statement; the waiter may already have woken and be marking its turn, or be
    leaving it. Before, the turn was lost (``LostTurn`` as it came) or the leave failed and
    the next holder was told the holder had died."""
    line = inturn.Line("late-cancel", backend=pg_url)
    holder = line.acquire()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(line.acquire()))
    waiter.start()
    until(lambda: len(line.status().waiters) == 1, "the waiter to wait")
    number = line.status().waiters[0].number
    _cancelled_while_stalled(pg_server, schema, number, holder.release, "UPDATE")
    waiter.join(REPORT_TIMEOUT)
    assert [t.ticket for t in got] == [number] and not got[0].abandoned
    _cancelled_while_stalled(pg_server, schema, number, got[0].release, "CALL")
    with line.acquire(blocking=False) as after:
        assert not after.abandoned
    line.close()


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


def one_error_line(url: str, look: bool = False) -> str:
    """The one line of a ``run`` (or of a ``status``, with ``look``) refused at ``url``."""
    words = ["status"] if look else ["run", "x", "--", "true"]
    result = run_cli(words[0], "--backend", url, *words[1:])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("kind", ["role", "database"])
def test_a_connection_limit_reached_is_named_with_the_statement_that_raises_it(
    private_cluster, kind
):
    """A role's or a database's own connection limit refuses a session with the same words
    as a wrong address would get advice for: the line names the limit, how to raise it, and
    that each waiter holds a session."""
    base = private_cluster.url
    sql(base, f"CREATE ROLE app LOGIN CONNECTION LIMIT {0 if kind == 'role' else -1}")
    sql(base, f"CREATE DATABASE ops CONNECTION LIMIT {0 if kind == 'database' else -1}")
    line = one_error_line(url_for(base, user="app").replace("/postgres", "/ops"))
    assert f'too many connections for {kind} "{"app" if kind == "role" else "ops"}"' in line
    named = "ALTER ROLE app" if kind == "role" else "ALTER DATABASE ops"
    assert f"{named} CONNECTION LIMIT" in line and "each holder and waiter" in line, line
    assert "check the URL" not in line and "max_connections" not in line, line


def test_a_role_that_may_not_create_the_schema_is_told_which_grant(pg_server, schema):
    with role(pg_server) as name:
        line = one_error_line(with_schema(url_for(pg_server, user=name), schema))
        assert "GRANT CREATE ON DATABASE" in line and name in line


def test_looking_at_a_database_nobody_took_turns_in_creates_nothing(pg_server, schema):
    """status, top, wait and forget find no lines there, without the rights to create any
    (a monitoring role), and leave the database as it was."""
    with role(pg_server) as name:
        url = with_schema(url_for(pg_server, user=name), schema)
        for command, said in [
            (("status",), f"no lines in {url}"),
            (("status", "x"), "x: free (nobody holds or waits)"),
            (("status", "--names"), ""),
            (("status", "--prune"), f"no lines in {url}"),
            (("top",), f"no lines in {url}"),
            (("wait", "x"), ""),
        ]:
            result = run_cli(*command, "--backend", url)
            told = f"inturn: no line 'x' in {url}: nobody has used it (inturn status lists"
            told += " the lines)\n"
            quiet = "" if command != ("status", "x") else told  # a typo is told, not passed
            assert (result.returncode, result.stdout.strip(), result.stderr) == (0, said, quiet)
        result = run_cli("forget", "x", "--backend", url)
        assert result.returncode == 0 and "no line 'x'" in result.stderr
        assert inturn.Line("x", backend=url).status().holders == ()
        assert inturn.forget_unused(backend=url) == []
        assert inturn.Line("x", backend=url).forget() is True
    assert sql(pg_server, "SELECT to_regnamespace(%s) IS NULL", schema) == [(True,)]


def test_names_sent_as_bytes_are_shown_as_names():
    """A database in the SQL_ASCII encoding sends names as bytes."""
    from inturn.backends.postgres.statements import missing_grants

    row = {"role": b"app-role", "schema_usage": False, "ticket_numbers_usage": True}
    row |= {f"{t}_{r}": True for t in ("lines", "tickets", "abandoned", "replaced")
            for r in ("select", "insert", "update", "delete")}  # fmt: skip
    row |= {f"{r}_execute": True for r in ("wait_and_look", "leave", "bury")}
    assert missing_grants(row, "ops") == ['GRANT USAGE ON SCHEMA ops TO "app-role"']


def test_a_role_without_grants_on_the_tables_is_told_which(pg_server, schema):
    with inturn.turn("x", backend=with_schema(pg_server, schema)):  # the owner sets up
        pass
    with role(pg_server) as name:
        url = with_schema(url_for(pg_server, user=name), schema)
        assert f"GRANT USAGE ON SCHEMA {schema} TO {name}" in one_error_line(url)
        line = one_error_line(url, look=True)  # to look, reading is enough
        assert f"GRANT USAGE ON SCHEMA {schema} TO {name}; GRANT SELECT ON {schema}.lines" in line
        sql(pg_server, f"GRANT USAGE ON SCHEMA {schema} TO {name}")
        sql(pg_server, f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {name}")
        looked = run_cli("status", "x", "--backend", url)
        assert (looked.returncode, looked.stdout.strip()) == (0, "x: free (nobody holds or waits)")
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


def readme_grants(schema: str, name: str) -> list[str]:
    """The README's GRANT statements for roles that share the lines, for ``schema`` and
    role ``name``."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("that share the lines need:\n\n```sql\n", 1)[1].split("```", 1)[0]
    return [
        re.sub(r"\binturn\b", schema, line.strip().rstrip(";")).replace("other_role", name)
        for line in block.splitlines()
        if line.strip()
    ]


@contextlib.contextmanager
def hardened(pg_server: str, schema: str) -> Iterator[str]:
    """A role in a schema whose routines PUBLIC may not run (a common hardening step,
    ``REVOKE EXECUTE ... FROM PUBLIC``), set up by the owner: this test's superuser."""
    with inturn.turn("x", backend=with_schema(pg_server, schema)):  # the owner sets up
        pass
    sql(pg_server, f"REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC")
    with role(pg_server) as name:
        yield name


def test_a_role_that_may_not_run_inturns_routines_is_told_which_grant(pg_server, schema):
    """Refused before it joins, with the exact grant; one that only looks needs none."""
    with hardened(pg_server, schema) as name:
        url = with_schema(url_for(pg_server, user=name), schema)
        for grant in readme_grants(schema, name):
            if "EXECUTE" not in grant:
                sql(pg_server, grant)
        line = one_error_line(url)
        routines = ", ".join(f"{schema}.{r}" for r in ("wait_and_look", "leave", "bury"))
        assert line.endswith(f"to run GRANT EXECUTE ON ROUTINE {routines} TO {name}"), line
        assert sql(pg_server, f"SELECT count(*) FROM {schema}.tickets") == [(0,)]
        looked = run_cli("status", "x", "--backend", url)
        assert (looked.returncode, looked.stdout.strip()) == (0, "x: free (nobody holds or waits)")
        sql(pg_server, line.split(" to run ", 1)[1])  # the advice, as given, is enough
        result = run_cli("run", "--backend", url, "x", "--", "echo", "ran")
        assert (result.returncode, result.stdout, result.stderr) == (0, "ran\n", "")


def test_the_readme_grants_are_enough_where_public_may_not_run_routines(pg_server, schema, workers):
    """A role with exactly the README's grants takes turns and hands them over cleanly: the
    next holder is not told that it died holding."""
    with hardened(pg_server, schema) as name:
        for grant in readme_grants(schema, name):
            sql(pg_server, grant)
        url = with_schema(url_for(pg_server, user=name), schema)
        result = run_cli("run", "--backend", url, "y", "--", "echo", "low-ok")
        assert (result.returncode, result.stdout, result.stderr) == (0, "low-ok\n", "")
        assert sql(pg_server, f"SELECT count(*) FROM {schema}.tickets") == [(0,)]
        line = inturn.Line("y", backend=url)
        try:
            with line.acquire() as held:
                waiter = Worker("y", env=child_env(INTURN_BACKEND=url))
                workers.append(waiter)
                waiter.expect("waiting")
            assert not held.abandoned
            words = waiter.acquired()
            assert words[2] == "0", words  # not abandoned
            waiter.send()
            assert waiter.wait() == 0
        finally:
            line.close()
        with inturn.turn("y", backend=with_schema(pg_server, schema)) as after:
            assert not after.abandoned


def test_a_role_given_create_on_a_schema_an_admin_made_sets_inturn_up_in_it(pg_server, schema):
    """The usual setup by a DBA: ``CREATE SCHEMA``, then ``GRANT USAGE, CREATE`` to the role
    that runs inturn, which owns what it makes there; the schema's owner changes nothing."""
    sql(pg_server, f"CREATE SCHEMA {schema}")
    with role(pg_server) as name:
        sql(pg_server, f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {name}")
        url = with_schema(url_for(pg_server, user=name), schema)
        result = run_cli("run", "--backend", url, "x", "--", "echo", "ran")
        assert (result.returncode, result.stdout, result.stderr) == (0, "ran\n", "")
        with inturn.turn("x", backend=with_schema(pg_server, schema)):
            pass
        result = run_cli("run", "--backend", url, "x", "--", "echo", "again")
        assert (result.returncode, result.stdout, result.stderr) == (0, "again\n", "")
        owners = sql(
            pg_server,
            "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc"
            " WHERE pronamespace = to_regnamespace(%s)",
            schema,
        )
        assert owners == [(name,)]


def _from_an_older_inturn(pg_server: str, schema: str, version: int) -> None:
    """Make ``schema`` look as inturn before the routines' own marker left it, at
    ``version``: the version only in the schema's comment."""
    sql(pg_server, f"DROP FUNCTION IF EXISTS {schema}.schema_version()")
    sql(
        pg_server,
        f"COMMENT ON SCHEMA {schema} IS"
        f" 'inturn: lines, tickets and abandonment markers (version {version})'",
    )


@pytest.mark.parametrize("remedy", ["owner-runs-it", "owner-hands-them-over"])
def test_an_upgrade_a_role_may_not_make_names_the_owner_and_what_to_run(pg_server, schema, remedy):
    """A role with the README's grants, after an upgrade that replaces inturn's routines:
    one line naming the role that owns them, and what either of them can do; as told, it
    works."""
    with hardened(pg_server, schema) as name:
        for grant in readme_grants(schema, name):
            sql(pg_server, grant)
        url = with_schema(url_for(pg_server, user=name), schema)
        result = run_cli("run", "--backend", url, "x", "--", "echo", "before")
        assert (result.returncode, result.stdout, result.stderr) == (0, "before\n", "")
        _from_an_older_inturn(pg_server, schema, 1)
        owner = sql(pg_server, "SELECT current_user")[0][0]
        line = one_error_line(url)
        assert "GRANT CREATE ON SCHEMA" in line.split(" or have it run ")[1], line
        assert "schema version 1 to 2): only the role that owns them may" in line, line
        assert f"run inturn once as role {owner}, or have it run ALTER ROUTINE " in line, line
        if remedy == "owner-runs-it":
            with inturn.turn("x", backend=with_schema(pg_server, schema)):
                pass
        else:
            sql(pg_server, line.split(" or have it run ", 1)[1])
        result = run_cli("run", "--backend", url, "x", "--", "echo", "after")
        assert (result.returncode, result.stdout, result.stderr) == (0, "after\n", "")


@pytest.mark.parametrize("marker", ["schema-comment", "routine-comment"])
def test_an_older_inturn_never_replaces_a_newer_ones_routines(pg_server, schema, marker):
    """During a rolling upgrade, a host still on the older inturn is refused with one line,
    even as the owner, and leaves the newer routines and their version as they were."""
    url = with_schema(pg_server, schema)
    with inturn.turn("x", backend=url):
        pass
    if marker == "schema-comment":
        _from_an_older_inturn(pg_server, schema, 3)
    else:
        sql(
            pg_server, f"COMMENT ON FUNCTION {schema}.schema_version() IS 'inturn schema version 3'"
        )
    kept = (
        "SELECT obj_description(to_regnamespace(%s), 'pg_namespace'),"
        " obj_description(p.oid, 'pg_proc'), pg_get_functiondef(p.oid) FROM pg_proc p"
        " WHERE p.pronamespace = to_regnamespace(%s) ORDER BY p.proname"
    )
    before = sql(pg_server, kept, schema, schema)
    for look in (False, True):
        line = one_error_line(url, look=look)
        assert "are from a newer inturn (schema version 3; this one knows 2" in line, line
    assert sql(pg_server, kept, schema, schema) == before


@pytest.mark.parametrize("deletes", [True, False], ids=["plain-delete-allowed", "nothing-allowed"])
def test_a_leave_the_server_refuses_warns_and_hands_over_as_it_can(
    pg_server, schema, recwarn, deletes
):
    """A holder whose rights to inturn's leave procedure were taken away during its turn
    says so, and gives the turn back with plain statements: the next holder is not told
    that it died holding. Where those are refused too, the warning says that the next
    holder may be told that this one died holding, which it then is."""
    with hardened(pg_server, schema) as name:
        for grant in readme_grants(schema, name):
            sql(pg_server, grant)
        line = inturn.Line("z", backend=with_schema(url_for(pg_server, user=name), schema))
        try:
            held = line.acquire()
            sql(pg_server, f"REVOKE EXECUTE ON ROUTINE {schema}.leave FROM {name}")
            if not deletes:
                sql(pg_server, f"REVOKE DELETE ON {schema}.tickets FROM {name}")
            held.release()
        finally:
            line.close()
        said = [str(w.message) for w in recwarn if issubclass(w.category, inturn.InturnWarning)]
        assert len(said) == 1 and "permission denied" in said[0] and "'z'" in said[0], said
        assert said[0].endswith("may be told that it died holding") != deletes, said
        if deletes:
            assert sql(pg_server, f"SELECT count(*) FROM {schema}.tickets") == [(0,)]
        with inturn.turn("z", backend=with_schema(pg_server, schema)) as after:
            assert after.abandoned != deletes


def test_a_watchdog_that_has_ended_is_never_woken_through_a_reused_descriptor(pg_url):
    """A holder's watchdog closes its wake-up pipe as it ends; waking it after that must not
    write into whatever took those descriptor numbers (another session's socket, which then
    failed with "invalid frontend message type 120")."""
    line = inturn.Line("late-wake", backend=pg_url)
    turn = line.acquire()
    member = turn.membership
    assert isinstance(member, PostgresMembership)
    turn.release()  # the watchdog ends and closes its pipe
    old = (member._wake_read, member._wake_write)
    read, write = os.pipe()  # the lowest free numbers: the ones just freed
    try:
        assert (read, write) == old
        os.set_blocking(read, False)
        member.wake_watchdog()  # a late wake-up
        with pytest.raises(BlockingIOError):
            os.read(read, 1)
    finally:
        os.close(read)
        os.close(write)
        line.close()


def test_a_roles_defaults_for_transactions_change_nothing(pg_url, tmp_path, recwarn):
    """``ALTER ROLE/DATABASE ... SET`` may make every transaction serializable, or give every
    statement a short lock timeout. inturn's statements need READ COMMITTED (each one sees
    what was committed before it began) and no timeout but their own. Here the URL sets them
    for every session, as a role's defaults would: nobody may lose its place, nor overlap."""
    import time

    from observer import Recorder, assert_exclusive, ticket_of

    options = "-c default_transaction_isolation=serializable -c lock_timeout=1ms"
    line = inturn.Line("defaults", backend=f"{pg_url}&options={quote(options)}")
    log = tmp_path / "log"
    recorder = Recorder(log)

    def body(index: int) -> None:
        for _ in range(6):
            with line.acquire() as held, recorder.inside(f"{held.ticket}:t{index}"):
                time.sleep(0.0005)

    try:
        in_threads(10, body)  # fails on any thread's error
    finally:
        line.close()
    assert [str(w.message) for w in recwarn if issubclass(w.category, inturn.InturnWarning)] == []
    intervals = assert_exclusive(log, expected=60)
    tickets = [ticket_of(i.who) for i in intervals]
    assert tickets == sorted(tickets)  # first come, first served: nobody went to the back


def test_a_roles_float_output_setting_changes_no_times(pg_url):
    """``ALTER ROLE ... SET extra_float_digits = -15`` (the setting's lowest) rounds every
    double precision sent as text to one digit: the time a turn was taken must still be
    read exactly, or ``status`` shows a holder of a second as held for no time at all."""
    import time

    options = "-c extra_float_digits=-15"
    line = inturn.Line("floats", backend=f"{pg_url}&options={quote(options)}")
    try:
        with line.acquire():
            (holder,) = line.status().holders
            assert holder.acquired_at is not None
            assert abs(holder.acquired_at - time.time()) < 60, holder.acquired_at
    finally:
        line.close()


@pytest.mark.parametrize("how", ["-w", "-n", "SIGTERM"])
def test_a_join_held_up_in_the_server_keeps_the_callers_time_and_signals(private_cluster, how):
    """A synchronous standby that is gone holds every commit that wrote to a logged table
    (joining does: the ticket numbers are a sequence) until it comes back: ``-w`` and ``-n``
    still give up in time, and a signal still ends ``inturn run``, rather than waiting for
    the standby. Nothing is left in line."""
    from inturn.backends.postgres.store import UNANSWERED_AFTER
    from inturn.queue import STATUS_AFTER_TIMEOUT

    url = with_schema(private_cluster.url, "inturn_sync")
    assert run_cli("run", "--backend", url, "held-up", "--", "true").returncode == 0
    sql(private_cluster.url, "ALTER SYSTEM SET synchronous_standby_names = 'gone'")
    sql(private_cluster.url, "SELECT pg_reload_conf()")
    options = {"-w": ["-w", "2"], "-n": ["-n"], "SIGTERM": []}[how]
    runner = subprocess.Popen(
        inturn_cmd("run", *options, "--backend", url, "held-up", "--", "echo", "ran"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        syncing = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        if how == "SIGTERM":
            until(lambda: sql(private_cluster.url, syncing)[0][0] == 1, "the join held up")
            runner.send_signal(signal.SIGTERM)
        bound = 2 + UNANSWERED_AFTER + STATUS_AFTER_TIMEOUT + 10  # room for a loaded machine
        said, errors = runner.communicate(timeout=bound)
        assert runner.returncode == (128 + signal.SIGTERM if how == "SIGTERM" else 75), errors
        assert "ran" not in said
        assert "Traceback" not in errors
        sql(private_cluster.url, "ALTER SYSTEM RESET synchronous_standby_names")
        sql(private_cluster.url, "SELECT pg_reload_conf()")
        line = inturn.Line("held-up", backend=url)
        status = line.status()
        line.close()
        assert (status.holders, status.waiters) == ((), ())
        assert errors.count("\n") == (0 if how == "SIGTERM" else 1), errors
    finally:
        runner.kill()
        runner.wait()


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_join_given_up_as_it_completes_leaves_no_ticket_behind(private_cluster, how):
    """A join held up by a synchronous standby that is gone is cancelled when the caller's
    time runs out or its token fires; the server then answers that the join committed (on
    the primary only). Its ticket's row is removed before its session closes: the caller is
    told ``Timeout`` or ``Cancelled`` with nothing left in line, rather than a ticket shown
    waiting until the server ends the session, and left in the table after."""
    url = with_schema(private_cluster.url, "inturn_given_up")
    made = inturn.Line("given-up", backend=url)  # the schema, made while commits need no standby
    made.acquire(blocking=False).release()
    made.close()
    sql(private_cluster.url, "ALTER SYSTEM SET synchronous_standby_names = 'gone'")
    sql(private_cluster.url, "SELECT pg_reload_conf()")  # read by the server in a moment:
    standby = "SHOW synchronous_standby_names"  # so sessions made from then on wait for it
    until(lambda: sql(private_cluster.url, standby) == [("gone",)], "the setting in force")
    line = inturn.Line("given-up", backend=url)  # sessions of its own, made after the reload
    try:
        if how == "timeout":
            with pytest.raises(inturn.Timeout):
                line.acquire(timeout=0.2)
        else:
            token = inturn.CancelToken()
            syncing = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
            threading.Thread(
                target=lambda: (
                    until(lambda: sql(private_cluster.url, syncing)[0][0] == 1, "held up"),
                    token.cancel(),
                ),
                daemon=True,
            ).start()
            with pytest.raises(inturn.Cancelled):
                line.acquire(cancel=token)
        assert sql(private_cluster.url, "SELECT count(*) FROM inturn_given_up.tickets") == [(0,)]
        status = line.status()
        assert (status.holders, status.waiters) == ((), ())
    finally:
        sql(private_cluster.url, "ALTER SYSTEM RESET synchronous_standby_names")
        sql(private_cluster.url, "SELECT pg_reload_conf()")
        line.close()


@pytest.mark.parametrize("made", [False, True], ids=["no-schema-yet", "schema-made"])
def test_a_standby_is_named_as_such(private_cluster, made):
    """A standby in recovery takes no writes: the line says to use the primary, and how with
    several hosts, not to change a role's setting that cannot help; whether inturn's schema
    is still to be made or was made on the primary and streamed to it."""
    if made:
        assert run_cli("run", "--backend", private_cluster.url, "x", "--", "true").returncode == 0
    standby = Cluster.standby_of(private_cluster)
    try:
        result = run_cli("run", "--backend", standby.url, "x", "--", "echo", "ran")
        one_line_error(result, "is a standby", "primary", "target_session_attrs=read-write")
        assert "ran" not in result.stdout
    finally:
        standby.stop()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://me:pw@db:5433/app", "postgresql://me@db:5433/app"),
        (
            "postgresql://me@/app?host=/run/pg&port=5433",
            "postgresql://me@/app?host=/run/pg&port=5433",
        ),
        ("postgresql://a:5432,b:5433/app", "postgresql://a:5432,b:5433/app"),
        ("postgresql:///app?host=a,b&port=5433", "postgresql://a:5433,b:5433/app"),
        ("postgresql://?service=ops", "postgresql://?service=ops"),
        (
            "postgresql://[::1]:5432/app?inturn_schema=s",
            "postgresql://[::1]:5432/app?inturn_schema=s",
        ),
    ],
)
def test_addresses_in_messages_say_where_the_server_is(url, shown):
    """Each host with its own port, a socket folder and a service as the parameters that name
    them, never the password: what a message shows can be pasted back as a URL."""
    from inturn.backends.postgres.address import parse

    assert parse(url).where == shown


def test_a_server_clock_set_forward_does_not_end_a_wait_early():
    """A waiter's timeout is the server's ``lock_timeout``, which PostgreSQL counts on its wall
    clock: a server whose clock is set an hour forward must not make a waiter give up at once,
    nor say it waited its whole timeout."""
    from terminal import ensure_program

    ensure_program("faketime")
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        missing_component("libfaketime is not installed", "apt-get install libfaketime")
    folder = tempfile.mkdtemp(prefix="inturn-clock-")
    os.chmod(folder, 0o755)  # the server's own user reads the offset
    offset = os.path.join(folder, "offset")
    with open(offset, "w") as file:
        file.write("+0\n")
    os.chmod(offset, 0o644)
    clock = {
        "LD_PRELOAD": found[0],
        "FAKETIME_TIMESTAMP_FILE": offset,
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    try:
        with cluster(env=clock) as server:
            line = inturn.Line("early", backend=server.url)
            holder = line.acquire()
            outcome: list[object] = []

            def wait() -> None:
                try:
                    outcome.append(inturn.Line("early", backend=server.url).acquire(timeout=30))
                except inturn.Timeout as exc:
                    outcome.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            until(lambda: len(line.status().waiters) == 1, "the waiter to be in line")
            with open(offset, "w") as file:
                file.write("+3600\n")  # the server's clock is set an hour forward
            waiter.join(5.0)
            assert not outcome, outcome  # still waiting: its 30 s are not over
            holder.release()
            waiter.join(REPORT_TIMEOUT)
            (turn,) = outcome
            assert isinstance(turn, inturn.Turn), turn
            turn.release()
            line.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
