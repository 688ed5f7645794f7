"""Lines on servers that take connections over TLS only, as hosted PostgreSQL and Redis do.

Each test starts its own server with a certificate from a throwaway authority: a PostgreSQL
cluster whose ``pg_hba.conf`` allows TCP sessions only with TLS (``hostssl``), reached with
``sslmode=verify-full``, and a ``redis-server`` with no plain port at all, reached with
``rediss://`` and the authority's certificate. So every session or client inturn opens here
is encrypted, and a wait that is cancelled (a shut socket under TLS), a lost session and a
restart are the same events as in the other tests, seen through TLS. Exclusion is read from
the observer's log, never from inturn's status. (Restarts of such servers: see
``test_server_faults.py``.)
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import inturn

from conftest import child_env, in_threads, inturn_cmd, one_line_error, run_async, run_cli, until
from observer import Recorder, assert_exclusive, command
from tls import Certificates, make_certificates

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="starts Linux servers of its own"
)


class Server(NamedTuple):
    kind: str
    url: str  # inturn's URL: TLS, with a schema or key prefix of the test's own
    admin: str  # the same server, for the test's own checks
    place: Any = None  # Redis: the key prefix in ``url`` (a ``redis_server.Place``)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["postgresql", "redis"])
def server(
    request: pytest.FixtureRequest, certificates: Certificates, tmp_path: Path
) -> Iterator[Server]:
    if request.param == "postgresql":
        from postgres_server import cluster, with_schema

        with cluster(certificates) as made:
            yield Server("postgresql", with_schema(made.url, "inturn_tls"), made.url)
        return
    from redis_server import Place, RedisServer, require_redis_py

    require_redis_py()
    made = RedisServer(tmp_path / "redis", tls=certificates)
    place = Place(made.url)
    try:
        # Short, so that a lost turn is felt soon; not so short that a renewal late on a
        # loaded machine loses one by accident.
        yield Server("redis", place.url(lease=2), made.url, place)
    finally:
        made.stop()


def test_the_server_takes_nothing_but_tls(server: Server) -> None:
    """What the other tests rely on: the plain protocol is refused."""
    plain = server.url.replace("rediss://", "redis://").replace("verify-full", "disable")
    one_line_error(run_cli("run", "--backend", plain, "plain", "--", "true"))


def test_a_certificate_that_cannot_be_verified_is_named_as_the_trouble(server: Server) -> None:
    """Without the authority that signed the server's certificate, the handshake fails:
    one line that says so and what to give, not a server that "cannot be reached"."""
    untrusted = re.sub(r"(?<=[?&])(ssl_ca_certs|sslrootcert)=[^&]*&?", "", server.url)
    assert untrusted != server.url
    said = one_line_error(run_cli("run", "--backend", untrusted, "cert", "--", "true"))
    assert "certificate" in said and "cannot reach" not in said


def test_processes_and_threads_take_turns_over_tls(server: Server, tmp_path: Path) -> None:
    """Six ``inturn run`` at once and four threads sharing one ``Line``, three turns each."""
    log = tmp_path / "inside"
    env = child_env(INTURN_BACKEND=server.url)
    runs = [
        subprocess.Popen(
            inturn_cmd("run", "tls", "--", *command(log, seconds=0.02)),
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(6)
    ]
    recorder = Recorder(log)
    line = inturn.Line("tls", backend=server.url)

    def take_turns(index: int) -> None:
        for round_ in range(3):
            with line.acquire(timeout=120), recorder.inside(f"thread-{index}-{round_}"):
                pass

    try:
        in_threads(4, take_turns)
    finally:
        line.close()
    assert [run.wait(120) for run in runs] == [0] * 6
    recorder.close()
    assert_exclusive(log, expected=6 + 12)


def test_waits_cancelled_over_tls_leave_the_line(server: Server) -> None:
    """Cancelling a waiting task shuts its connection under TLS (Redis) or sends a cancel
    request (PostgreSQL); a timeout ends a wait likewise. Each leaves the line at once, and
    the connections go on working for the waits after it."""
    line = inturn.Line("cancel", backend=server.url)
    holder = line.acquire()

    async def cancel_waits() -> None:
        for _ in range(10):
            task = asyncio.ensure_future(inturn.acquire_async(line))
            while not line.status().waiters:
                await asyncio.sleep(0.01)  # watching for the waiter to appear
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert line.status().waiters == ()

    try:
        run_async(cancel_waits)
        with pytest.raises(inturn.Timeout):
            line.acquire(timeout=0.2)
        assert line.status().waiters == ()
        waiting: dict[str, inturn.Turn] = {}
        waiter = threading.Thread(
            target=lambda: waiting.setdefault("turn", line.acquire(timeout=120)), daemon=True
        )
        waiter.start()
        until(lambda: len(line.status().waiters) == 1, "the last waiter to be in line")
        holder.release()
        waiter.join(120)
        assert not waiting["turn"].abandoned
        waiting["turn"].release()
    finally:
        line.close()


def test_a_holder_whose_turn_ends_on_the_server_knows_before_the_next_one_starts(
    server: Server, tmp_path: Path
) -> None:
    """The server ends the holder's turn (``pg_terminate_backend`` of its session; the end of
    its Redis lease, as a restart that kept nothing would): ``inturn run`` stops its command
    and exits 76; the one waiting behind is told the turn was abandoned, and starts after."""
    log = tmp_path / "inside"
    env = child_env(INTURN_BACKEND=server.url)
    holder = subprocess.Popen(
        inturn_cmd("run", "cut", "--", *command(log, hold=True)),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().startswith("inside ")
    line = inturn.Line("cut", backend=server.url)
    waiter = subprocess.Popen(
        inturn_cmd("run", "-v", "cut", "--", *command(log)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    until(lambda: len(line.status().waiters) == 1, "the second run to wait")
    _end_turn(server, holder.pid, line.status().holders[0].number)
    assert holder.wait(120) == 76
    assert "lost the turn" in holder.communicate()[1]
    assert waiter.wait(120) == 0
    assert "died holding" in (waiter.stderr.read() if waiter.stderr else "")
    line.close()
    assert_exclusive(log, expected=2)


def _end_turn(server: Server, pid: int, ticket: int) -> None:
    """End the turn of process ``pid`` (ticket ``ticket``) from the server's side."""
    if server.kind == "postgresql":
        import psycopg

        with psycopg.connect(server.admin, autocommit=True) as admin:
            query = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s"
            )
            ended = admin.execute(query, [f"inturn pid {pid} on %"]).fetchall()
        assert ended and all(row[0] for row in ended)
        return
    admin = server.place.client()
    try:
        assert admin.delete(server.place.lease_key(admin, "cut", ticket)) == 1
    finally:
        admin.close()
