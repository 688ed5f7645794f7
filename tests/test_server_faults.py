"""Faults of the server backends while a turn is held: exclusion seen from the command's side.

Each holder here is an ``inturn run`` whose command is ``sh -c`` wrapping the observer's
recorder (so the process that writes the heartbeat is inturn's grandchild), and the holder
that gets cut off ignores SIGTERM, so that only the SIGKILL at the end of ``--grace`` stops
it: the slowest stop the README allows. Overlap is read only from the heartbeats those
commands write (``observer.assert_exclusive``), never from inturn's own status. Every test
prints what it measured (``pytest -rP`` shows it): when the cut-off command last beat, and
the gap (or overlap) before the next command's first row.

Faults: the server ends the holder's session (``pg_terminate_backend``), a restart of a
private PostgreSQL cluster (fast, immediate as a crash, and fast with sessions over TLS), a
waiter that comes back from a lost session after its holder died, a proxy that stops
forwarding without closing, a ``FLUSHALL`` and restarts of a private Redis (keeping its data,
keeping nothing, and keeping nothing over TLS), and a holder killed outright with the lock
delay off.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import pytest

import inturn

from conftest import REPORT_TIMEOUT, Run, child_env, inturn_cmd, one_line_error, run_cli
from observer import Interval, assert_exclusive, command, read_intervals, ticket_of
from tcp_proxy import TcpProxy
from tls import make_certificates

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="compares CLOCK_MONOTONIC across processes and reads /proc: Linux's",
)

DEFAULT_LOCK_DELAY = 3.0  # both backends (README: "Lost turns", "Leases")
DEFAULT_GRACE = 1.0  # inturn run --grace
PG_LOST_AFTER = 4.0  # README: within 4 seconds of its server going silent a holder knows
# Room for a loaded machine on top of a documented bound: it only tells a hang (or a bound
# missed by whole seconds) from scheduling noise, never how fast anything is.
MARGIN = 2.0
SECOND = 1_000_000_000  # nanoseconds


# --------------------------------------------------------------------------- helpers


def recorder(
    log: Path, *, hold: bool = False, seconds: float = 0.0, stubborn: bool = False
) -> list[str]:
    """``sh -c`` that says ``told TICKET ABANDONED`` and runs the recorder as its child.

    The trailing ``echo`` keeps ``sh`` from exec'ing the recorder, so the recorder is a
    grandchild of inturn. ``stubborn``: ``sh`` ignores SIGTERM and the recorder inherits
    that, so it beats on until SIGKILL.
    """
    inner = shlex.join(command(log, hold=hold, seconds=seconds))
    trap = "trap '' TERM; " if stubborn else ""
    return ["sh", "-c", f'{trap}echo "told $INTURN_TICKET $INTURN_ABANDONED"; {inner}; echo done']


class Told(NamedTuple):
    """What a recording command said as it started."""

    ticket: int
    abandoned: bool
    who: str  # the recorder's ``TICKET:PID`` in the log

    @property
    def pid(self) -> int:
        return int(self.who.split(":")[1])


def told(run: Run) -> Told:
    """The first two lines of a recording command: its ticket, abandoned, and its name."""
    first = run.next_line()
    assert first[:1] == ["told"] and len(first) == 3, (first, run.errors() if not first else "")
    second = run.next_line()
    assert second[:1] == ["inside"], second
    return Told(int(first[1]), first[2] == "1", second[1])


def until(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition`` (a state the test cannot be told of) until true; a hang fails."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {REPORT_TIMEOUT:g}s"
        time.sleep(0.02)


def waiting(name: str, url: str, count: int = 1) -> None:
    """Until ``count`` tickets wait in line ``name`` (read with the public API)."""
    line = inturn.Line(name, backend=url)
    try:
        until(lambda: len(line.status().waiters) == count, f"{count} waiting in {name!r}")
    finally:
        line.close()


def dead(pid: int) -> bool:
    """Gone, or a zombie: it can write nothing any more."""
    try:
        with open(f"/proc/{pid}/stat") as info:
            return info.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def seconds(nanoseconds: int) -> float:
    return nanoseconds / SECOND


def gap(old: Interval, new: Interval) -> float:
    """Seconds from the old command's last row to the new one's first (< 0: overlap)."""
    return seconds(new.start - old.end)


def by_ticket(intervals: list[Interval]) -> dict[int, Interval]:
    return {ticket_of(i.who): i for i in intervals}


def through(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's (user, path, query kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def proxy_to(url: str) -> TcpProxy:
    parts = urlsplit(url)
    return TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0)


def sql(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def holder_backend(server: str, schema: str, holder: Run) -> int:
    """The backend pid of the session holding the turn, checked against its session name."""
    rows = sql(server, f'SELECT backend_pid FROM "{schema}".tickets WHERE acquired_at > 0')
    assert len(rows) == 1, rows
    backend = int(rows[0][0])
    names = sql(server, "SELECT application_name FROM pg_stat_activity WHERE pid = %s", backend)
    assert names and str(names[0][0]).startswith(f"inturn pid {holder.pid} "), names
    return backend


def lost(holder: Run, warnings: list[str] | None = None) -> int:
    """The holder's exit, which must be 76 with one line saying why (and perhaps warnings,
    collected in ``warnings``); the moment the test saw it exit."""
    code = holder.wait()
    exited = time.monotonic_ns()
    said = holder.errors().strip().splitlines()
    assert code == 76, (code, said)
    rows = [row for row in said if not row.startswith("inturn: warning: ")]
    assert len(rows) == 1 and "lost the turn in line" in rows[0], said
    if warnings is not None:
        warnings.extend(row for row in said if row not in rows)
    return exited


def joins_as_place_is_lost(
    place: Any, url: str, name: str, stopped: Run, options: list[str], log: Path
) -> Run:
    """Stop ``stopped``, the one waiter of line ``name``, until the server has let its lease
    go; then a later run (with ``options``) joins, and once it is in line, ``stopped`` is
    continued. Returns the later run."""
    line = inturn.Line(name, backend=url)
    client = place.client()
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        (lost_place,) = [w.number for w in line.status().waiters]
        lease_key = place.lease_key(client, name, lost_place)
        until(lambda: not client.exists(lease_key), "the stopped waiter's lease gone")
        later = Run(name, "--backend", url, *options, command=recorder(log))
        until(lambda: any(w.pid == later.pid for w in line.status().waiters), "later in line")
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
        client.close()
        line.close()
    return later


def runs_behind(title: str, log: Path, first: Told, second: Run, taken: Told, paused: Run) -> None:
    """``second`` took over from the lost holder (``first``), told abandoned: once it is
    done, ``paused``, back in line behind it with a new ticket, runs, told nothing, and
    nobody overlapped anybody."""
    assert second.finish() == 0
    assert paused.wait() == 0
    back = told(paused)
    intervals = by_ticket(read_intervals(log))
    report(title, gap=gap(intervals[taken.ticket], intervals[back.ticket]))
    assert_exclusive(log, expected=3)
    assert taken.abandoned and not back.abandoned
    assert first.ticket < taken.ticket < back.ticket


def back_in_line(url: str, name: str, behind: int) -> None:
    """Until the one waiter in line ``name`` is a new place, behind ticket ``behind``."""
    line = inturn.Line(name, backend=url)
    try:
        until(lambda: [w.number > behind for w in line.status().waiters] == [True], "back in line")
    finally:
        line.close()


def rejoined(waiter: Run, name: str, why: str) -> None:
    """The waiter lost its place for ``why`` and took a new one at the back, saying so in
    one warning line and nothing else."""
    said = waiter.errors().strip().splitlines()
    assert len(said) == 1 and said[0].startswith("inturn: warning: "), said
    assert f"lost our place in line {name!r}" in said[0] and why in said[0], said
    assert f"back in line {name!r} as ticket " in said[0], said


def report(title: str, **measured: float) -> None:
    shown = ", ".join(f"{key.replace('_', ' ')} {value:+.3f}s" for key, value in measured.items())
    print(f"{title}: {shown}")


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize(
    ("options", "query", "grace", "delay"),
    [
        ([], "", DEFAULT_GRACE, DEFAULT_LOCK_DELAY),
        (["--grace", "0.3"], "&inturn_lock_delay=1", 0.3, 1.0),
        # A grace longer than the lock delay is cut to half of it: no overlap even then.
        (["--grace", "10"], "", DEFAULT_LOCK_DELAY / 2, DEFAULT_LOCK_DELAY),
    ],
    ids=["defaults", "grace-0.3-delay-1", "grace-10-cut"],
)
def test_postgres_terminated_session_never_overlaps(
    pg_url: str,
    pg_server: str,
    schema: str,
    tmp_path: Path,
    options: list[str],
    query: str,
    grace: float,
    delay: float,
) -> None:
    """The server ends the holder's session: it knows at once and stops its command within
    the grace; the waiter, told abandoned, starts only after the lock delay."""
    log, url = tmp_path / "log", pg_url + query
    holder = Run(
        "term", "--backend", url, *options, command=recorder(log, hold=True, stubborn=True)
    )
    old = told(holder)
    waiter = Run("term", "--backend", url, *options, command=recorder(log, seconds=0.3))
    waiting("term", url)
    backend = holder_backend(pg_server, schema, holder)
    cut = time.monotonic_ns()
    assert sql(pg_server, "SELECT pg_terminate_backend(%s)", backend) == [(True,)]
    warned: list[str] = []
    exited = lost(holder, warned)
    assert dead(old.pid), "the recorder (inturn's grandchild) outlived inturn's exit 76"
    asked = float(options[-1]) if options else DEFAULT_GRACE
    assert [w for w in warned if "--grace" in w] == (
        [f"inturn: warning: --grace {asked:g} is cut to {grace:g}s: the next holder after a "
         f"lost turn may start {delay:g}s after it (a longer lock delay allows a longer grace)"]
        if grace < asked else []
    )  # fmt: skip
    new = told(waiter)
    assert waiter.wait() == 0
    intervals = by_ticket(read_intervals(log))
    before, after = intervals[old.ticket], intervals[new.ticket]
    report(
        f"postgres terminate (grace {grace:g}, lock delay {delay:g})",
        last_beat_after_cut=seconds(before.end - cut),
        next_start_after_cut=seconds(after.start - cut),
        gap=gap(before, after),
    )
    assert_exclusive(log, expected=2)
    assert (old.abandoned, new.abandoned) == (False, True) and new.ticket > old.ticket
    assert before.end <= exited
    assert seconds(before.end - cut) < grace + MARGIN  # noticed at once, then the grace
    assert seconds(before.end - cut) > grace / 2  # it outlived SIGTERM: the whole grace ran
    assert seconds(after.start - cut) >= delay  # it found the holder dead after the cut


@pytest.fixture
def private_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A PostgreSQL cluster of this test's own, which it may restart; over TLS only if the
    test's parameter says so."""
    from postgres_server import cluster

    tls = make_certificates(tmp_path / "tls") if getattr(request, "param", False) else None
    with cluster(tls) as made:
        yield made


@pytest.mark.parametrize(
    ("mode", "private_cluster"),
    [("fast", False), ("immediate", False), ("fast", True)],
    ids=["fast", "immediate", "fast-tls"],
    indirect=["private_cluster"],
)
def test_postgres_restart_never_overlaps(private_cluster: Any, tmp_path: Path, mode: str) -> None:
    """A restart while one holds and three wait: the holder exits 76, each waiter runs (after
    reconnecting, with a new ticket) or fails with one line, and nobody overlaps anybody."""
    from postgres_server import with_schema

    log, url = tmp_path / "log", with_schema(private_cluster.url, "inturn_faults")
    holder = Run("restart", "--backend", url, command=recorder(log, hold=True, stubborn=True))
    old = told(holder)
    waiters = [
        Run("restart", "--backend", url, command=recorder(log, seconds=0.2)) for _ in range(3)
    ]
    waiting("restart", url, 3)
    restart = time.monotonic_ns()
    private_cluster.restart(mode)
    lost(holder)
    assert dead(old.pid), "the recorder (inturn's grandchild) outlived inturn's exit 76"
    ran: list[Told] = []
    failed: list[str] = []
    for run in waiters:
        if run.wait() == 0:
            ran.append(told(run))
        else:
            said = [row for row in run.errors().splitlines() if "reconnected to" not in row]
            assert len(said) == 1 and said[0].startswith("inturn: "), said
            failed.append(said[0])
    intervals = by_ticket(read_intervals(log))
    ran.sort(key=lambda each: intervals[each.ticket].start)
    print(
        f"postgres {mode} restart: {len(ran)} of 3 waiters ran, in this order (ticket, told "
        f"abandoned): {[(each.ticket, each.abandoned) for each in ran]}; failed: {failed}"
    )
    measured = {"holder_last_beat_after_restart": seconds(intervals[old.ticket].end - restart)}
    for each in ran:
        measured[f"ticket_{each.ticket}_start_after_restart"] = seconds(
            intervals[each.ticket].start - restart
        )
    if ran:
        measured["gap"] = gap(intervals[old.ticket], intervals[ran[0].ticket])
    report(f"postgres {mode} restart", **measured)
    assert_exclusive(log, expected=1 + len(ran))
    assert all(each.ticket > old.ticket for each in ran)  # fencing tokens survive restarts
    assert sum(each.abandoned for each in ran) <= 1  # never two told the same death
    if mode == "fast":  # the tickets survive a clean shutdown: the first in is told
        assert ran and ran[0].abandoned


def test_postgres_stalled_link_never_overlaps(
    pg_url: str, pg_server: str, schema: str, tmp_path: Path
) -> None:
    """The holder's link stops forwarding without closing: its ping goes unanswered, and it
    exits 76 within about 4 s plus the grace; the server still keeps its session."""
    log = tmp_path / "log"
    proxy = proxy_to(pg_server)
    try:
        cut_off = through(proxy, pg_url)
        holder = Run("stall", "--backend", cut_off, command=recorder(log, hold=True, stubborn=True))
        old = told(holder)
        waiter = Run("stall", "--backend", pg_url, command=recorder(log, seconds=0.3))
        waiting("stall", pg_url)
        session = holder_backend(pg_server, schema, holder)
        stall = time.monotonic_ns()
        proxy.blackhole()  # nothing gets through, and nobody hears a close
        exited = lost(holder)
        assert dead(old.pid), "the recorder (inturn's grandchild) outlived inturn's exit 76"
        # The server keeps the silent session, and its turn, until its keepalives give up
        # (about 30 s); the proxy's own TCP answers those, so end the session as they would.
        assert sql(pg_server, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", session)
        assert len(read_intervals(log)) == 1  # so the waiter still waits
        ended = time.monotonic_ns()
        proxy.cut()
        new = told(waiter)
        assert waiter.wait() == 0
    finally:
        proxy.close()
    intervals = by_ticket(read_intervals(log))
    before, after = intervals[old.ticket], intervals[new.ticket]
    report(
        "postgres stalled link",
        exit_76_after_stall=seconds(exited - stall),
        last_beat_after_stall=seconds(before.end - stall),
        next_start_after_session_end=seconds(after.start - ended),
        gap=gap(before, after),
    )
    assert_exclusive(log, expected=2)
    assert new.abandoned and new.ticket > old.ticket
    assert before.end <= exited
    assert seconds(before.end - stall) < PG_LOST_AFTER + DEFAULT_GRACE + MARGIN
    assert seconds(after.start - ended) >= DEFAULT_LOCK_DELAY


def leaves_during_a_stall(
    pg_url: str, pg_server: str, log: Path, name: str
) -> tuple[Run, Run, TcpProxy]:
    """A holder through a proxy, a waiter behind it; the holder's link holds back what it
    sends until its watchdog's ``SELECT 1`` is on its way, then the holder's command ends,
    so that its leave comes while that ping waits for its answer."""
    proxy = proxy_to(pg_server)
    holder = Run(name, "--backend", through(proxy, pg_url), command=recorder(log, hold=True))
    told(holder)
    waiter = Run(name, "--backend", pg_url, command=recorder(log, seconds=0.1))
    waiting(name, pg_url)
    proxy.hold()
    assert proxy.wait_held(1), "the holder's watchdog sent no ping"
    assert holder.proc.stdin is not None
    holder.proc.stdin.write("0\n")  # the command ends: inturn gives the turn back
    holder.proc.stdin.flush()
    until(lambda: any(i.exited for i in read_intervals(log)), "the holder's command to end")
    return holder, waiter, proxy


def test_postgres_a_turn_given_back_during_a_short_stall_is_given_back_cleanly(
    pg_url: str, pg_server: str, tmp_path: Path
) -> None:
    """The holder's command ends while its link is silent for half a second, with a ping in
    flight: the leave waits for the ping's answer (within its 3 s) and then leaves, so the
    waiter runs next, not told of a death that did not happen, nor made to wait the lock
    delay."""
    log = tmp_path / "log"
    holder, waiter, proxy = leaves_during_a_stall(pg_url, pg_server, log, "stall-short")
    try:
        time.sleep(0.5)  # the stall's length
        proxy.let_go()
        assert holder.wait() == 0
        assert holder.errors().strip() == ""
        after = told(waiter)
        assert not after.abandoned
        assert waiter.wait() == 0
        assert_exclusive(log, expected=2)
    finally:
        proxy.close()


def test_postgres_a_turn_not_given_back_in_a_stall_says_so(
    pg_url: str, pg_server: str, tmp_path: Path
) -> None:
    """The same, but the link stays silent: the ping goes unanswered for its 3 s, and the
    leave, which could not happen, says so in one warning line (the command's exit code
    stays); once the session ends the waiter is told the turn was abandoned."""
    log = tmp_path / "log"
    holder, waiter, proxy = leaves_during_a_stall(pg_url, pg_server, log, "stall-long")
    try:
        assert holder.wait() == 0
        said = holder.errors().strip().splitlines()
        assert len(said) == 1 and said[0].startswith("inturn: warning: "), said
        assert "leaving line 'stall-long' at " in said[0], said
        assert "the next holder may be told that it died holding" in said[0], said
    finally:
        proxy.close()  # the session's socket closes: the server ends it
    after = told(waiter)
    assert after.abandoned
    assert waiter.wait() == 0
    assert_exclusive(log, expected=2)


def test_postgres_sessions_bound_a_silent_network_on_both_ends(pg_url: str) -> None:
    """What bounds a silent network, read where it takes effect: TCP keepalives and
    ``tcp_user_timeout`` on the holder's socket (libpq's options) and in its session (the
    server's settings, so that the server ends a silent holder's session, and frees its turn,
    within about 30 s rather than after TCP's defaults of hours)."""
    import socket

    line = inturn.Line("silent", backend=pg_url)
    try:
        with line.acquire() as held:
            conn = held.membership.conn
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                client = {
                    "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    "user timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                }
            finally:
                sock.close()
            query = "SELECT name, setting FROM pg_settings WHERE name LIKE 'tcp_%'"
            server = dict(conn.execute(query).fetchall())
    finally:
        line.close()
    assert client == {"keepalive": 1, "idle": 5, "interval": 2, "count": 3, "user timeout": 9000}
    assert server == {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "4",
        "tcp_user_timeout": "30000",
    }


def test_postgres_turn_lost_as_the_command_starts_stops_it(
    pg_url: str, pg_server: str, schema: str, tmp_path: Path
) -> None:
    """The server ends the session the moment the turn is marked held, while ``inturn run``
    starts its command: whichever step finds the turn gone (the start itself, or recording
    the command's pid in the ticket), the command does not run on unsupervised: it is not
    started, or is stopped within the grace and inturn exits 76, before anyone else could
    start (the lock delay). Before, a failure to record the pid left it running to its end."""
    import psycopg

    done = threading.Event()
    tickets = f'"{schema}".tickets'
    query = f"SELECT pg_terminate_backend(backend_pid) FROM {tickets} WHERE acquired_at > 0"

    def cut_every_holder() -> None:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            while not done.is_set():
                try:
                    conn.execute(query).fetchall()
                except psycopg.errors.UndefinedTable:  # made by the first run
                    time.sleep(0.01)

    cutter = threading.Thread(target=cut_every_holder, daemon=True)
    cutter.start()
    try:
        for trial in range(4):
            log = tmp_path / f"log{trial}"
            run = Run("cut-start", command=recorder(log, seconds=6))
            code = run.wait()
            exited = time.monotonic_ns()
            said = run.errors().strip().splitlines()
            ran = read_intervals(log)
            assert all(i.end <= exited for i in ran)  # nothing ran on after inturn's exit
            if ran:  # started, then stopped: a lost turn
                assert code == 76, (code, said)
                assert said and "lost the turn in line 'cut-start'" in said[-1], said
            else:  # lost before it started, or while the turn was being taken
                assert code == 76 and said and "line 'cut-start'" in said[-1], (code, said)
    finally:
        done.set()
        cutter.join(60)


def test_postgres_waiter_that_loses_its_session_in_an_outage_still_times_out(
    private_cluster: Any, tmp_path: Path
) -> None:
    """``-w`` holds while the server is away: a waiter whose session ends between its waits
    (here in the lock delay after its holder died), and cannot join again before its time
    is up, gives up as any waiter does (exit 75), not a minute later (exit 2)."""
    from postgres_server import asleep_in_server, with_schema

    url = with_schema(private_cluster.url, "inturn_faults")
    holder = Run("outage", "--backend", url, command=recorder(tmp_path / "log", hold=True))
    first = told(holder)
    waiter = Run("outage", "--backend", url, "-w", "8", command=["true"])
    until(
        lambda: asleep_in_server(private_cluster.url, waiter.pid) == 1, "the waiter asleep in line"
    )
    holder.kill()
    os.kill(first.pid, signal.SIGKILL)  # its command kept the session: now it ends
    until(lambda: asleep_in_server(private_cluster.url, waiter.pid) == 0, "awake, in the delay")
    private_cluster.halt()  # and it stays down
    code = waiter.wait(40)  # the window for joining again is 60 s
    said = waiter.errors().strip().splitlines()
    assert code == 75, (code, said)
    assert said and "gave up waiting for line 'outage'" in said[-1], said


def test_postgres_inturn_wait_whose_server_goes_away_still_times_out(
    private_cluster: Any, tmp_path: Path
) -> None:
    """``inturn wait -w`` rides out a server that goes away until its time is up, then gives
    up as a timeout (75), not as a server it cannot reach (2)."""
    from postgres_server import with_schema

    url = with_schema(private_cluster.url, "inturn_faults")
    holder = Run("barrier", "--backend", url, command=recorder(tmp_path / "log", hold=True))
    told(holder)
    barrier = subprocess.Popen(
        inturn_cmd("wait", "--backend", url, "-w", "4", "barrier"),
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    blocked = "SELECT count(*) FROM pg_locks WHERE NOT granted"
    until(lambda: sql(private_cluster.url, blocked) == [(1,)], "inturn wait asleep")
    private_cluster.halt()
    _, said = barrier.communicate(timeout=40)
    assert barrier.returncode == 75, said
    assert said.strip().splitlines()[-1].startswith("inturn: gave up waiting for line"), said


def test_postgres_waiter_back_from_a_lost_session_waits_for_those_now_ahead(
    pg_url: str, pg_server: str, schema: str, tmp_path: Path
) -> None:
    """What a restart does to every session at once, one step at a time: a waiter whose
    session ended while it was paused, and whose holder died meanwhile, comes back at the
    end of the line with a new ticket. It must wait for the tickets now ahead of it, not
    take the turn because the one it used to wait for is gone."""
    log = tmp_path / "log"
    holder = Run("rejoin", command=recorder(log, hold=True))
    first = told(holder)
    paused = Run("rejoin", command=recorder(log, seconds=0.3))
    waiting("rejoin", pg_url, 1)
    second = Run("rejoin", command=recorder(log, hold=True))
    waiting("rejoin", pg_url, 2)
    query = f"SELECT backend_pid FROM \"{schema}\".tickets WHERE (record::json->>'pid')::int = %s"
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        (session,) = sql(pg_server, query, paused.pid)
        assert sql(pg_server, "SELECT pg_terminate_backend(%s)", session[0]) == [(True,)]
        lost_holder = holder_backend(pg_server, schema, holder)
        assert sql(pg_server, "SELECT pg_terminate_backend(%s)", lost_holder) == [(True,)]
        lost(holder)
        taken = told(second)  # after the lock delay, told abandoned
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    # Until it sleeps in line again (a lock request of its new session waits in the server)
    # or its command has started beside the second holder's.
    asleep = (
        f'SELECT 1 FROM pg_locks l JOIN "{schema}".tickets t ON l.pid = t.backend_pid'
        " WHERE NOT l.granted AND (t.record::json->>'pid')::int = %s"
    )
    until(
        lambda: sql(pg_server, asleep, paused.pid) or len(read_intervals(log)) > 2,
        "back asleep in line, or inside",
    )
    if len(read_intervals(log)) > 2:
        assert paused.wait() == 0  # inside already: let its whole stay show in the log
    runs_behind("postgres waiter back from a lost session", log, first, second, taken, paused)


# --------------------------------------------------------------------------- Redis


def test_redis_stalled_link_never_overlaps(place: Any, redis_base: str, tmp_path: Path) -> None:
    """The holder's link stops forwarding: it gives up three quarters of a lease after its
    last renewal and stops its command within the grace; the waiter starts only once the
    lease ran out and the lock delay passed."""
    lease, log = 2.0, tmp_path / "log"
    url = place.url(lease=lease)
    proxy = proxy_to(redis_base)
    try:
        cut_off = through(proxy, url)
        holder = Run("stall", "--backend", cut_off, command=recorder(log, hold=True, stubborn=True))
        old = told(holder)
        waiter = Run("stall", "--backend", url, command=recorder(log, seconds=0.3))
        waiting("stall", url)
        # Stall just after a renewal reached the server (its answer may never come back).
        assert proxy.wait_sent(b"PEXPIRE", 1)
        stall = time.monotonic_ns()
        proxy.blackhole()
        exited = lost(holder)
        assert dead(old.pid), "the recorder (inturn's grandchild) outlived inturn's exit 76"
        new = told(waiter)
        assert waiter.wait() == 0
    finally:
        proxy.close()
    intervals = by_ticket(read_intervals(log))
    before, after = intervals[old.ticket], intervals[new.ticket]
    report(
        f"redis stalled link (lease {lease:g})",
        exit_76_after_stall=seconds(exited - stall),
        last_beat_after_stall=seconds(before.end - stall),
        next_start_after_stall=seconds(after.start - stall),
        gap=gap(before, after),
    )
    assert_exclusive(log, expected=2)
    assert new.abandoned and new.ticket > old.ticket
    assert before.end <= exited
    assert seconds(before.end - stall) < lease * 3 / 4 + DEFAULT_GRACE + MARGIN
    # The lease the last renewal set runs out about a lease after the stall; then the delay.
    assert seconds(after.start - stall) >= DEFAULT_LOCK_DELAY


def test_redis_waiter_back_from_a_lost_place_waits_for_those_now_ahead(
    place: Any, tmp_path: Path
) -> None:
    """A waiter stopped for longer than its lease loses its place, as a PostgreSQL waiter
    whose session ends does; its holder loses the turn meanwhile, and the one behind takes it,
    told abandoned. Continued, the waiter comes back at the end of the line with a new ticket:
    it must wait for the tickets now ahead of it, not take the turn because the one it used
    to wait for is gone."""
    log, url = tmp_path / "log", place.url(lease=1.0)
    holder = Run("rejoin", "--backend", url, command=recorder(log, hold=True))
    first = told(holder)
    paused = Run("rejoin", "--backend", url, command=recorder(log, seconds=0.3))
    waiting("rejoin", url, 1)
    second = Run("rejoin", "--backend", url, command=recorder(log, hold=True))
    waiting("rejoin", url, 2)
    client = place.client()
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        assert client.delete(place.lease_key(client, "rejoin", first.ticket)) == 1
        lost(holder)
        taken = told(second)  # after the lock delay, told abandoned
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        client.close()
    back_in_line(url, "rejoin", taken.ticket)
    runs_behind("redis waiter back from a lost place", log, first, second, taken, paused)
    rejoined(paused, "rejoin", "lease")


def test_redis_newest_wins_waiter_back_from_a_lost_place_yields_to_a_newer_one(
    place: Any, tmp_path: Path
) -> None:
    """A ``--newest-wins`` waiter that loses its place while a newer ``--newest-wins`` run
    joins (too late to replace it: its place was already gone) comes back behind that run,
    and yields to it (exit 77) as it would have in its old place."""
    log, url = tmp_path / "log", place.url(lease=1.0)
    holder = Run("newest", "--backend", url, command=recorder(log, hold=True))
    first = told(holder)
    older = Run("newest", "--backend", url, "--newest-wins", command=recorder(log))
    waiting("newest", url, 1)
    newer = joins_as_place_is_lost(place, url, "newest", older, ["--newest-wins"], log)
    assert older.wait() == 77
    said = older.errors().strip().splitlines()
    assert len(said) == 2 and "back in line 'newest'" in said[0], said
    assert "replaced this one in line 'newest'" in said[1], said
    assert holder.finish() == 0
    assert newer.wait() == 0
    assert told(newer).ticket > first.ticket
    assert_exclusive(log, expected=2)


def test_redis_waiter_stopped_as_its_turn_comes_never_runs_beside_the_next(
    place: Any, tmp_path: Path
) -> None:
    """A waiter asleep in the server is stopped (SIGSTOP) just before its holder leaves: the
    server marks its turn held as the holder leaves (the mark rides behind its read), then
    its lease runs out and the one behind it takes the turn, told abandoned. Continued, it
    must not start its command beside that one: it comes back at the end of the line."""
    log, url = tmp_path / "log", place.url(lease=1.0)
    holder = Run("frozen", "--backend", url, command=recorder(log, hold=True))
    first = told(holder)
    named = f"{url}&client_name=frozen-waiter"
    stopped = Run("frozen", "--backend", named, command=recorder(log, seconds=0.3))
    waiting("frozen", url, 1)
    behind = Run("frozen", "--backend", url, command=recorder(log, hold=True))
    waiting("frozen", url, 2)
    client = place.client()
    try:  # asleep in the server: its read (and the mark behind it) sent, as the read of its
        # lease keeper's listener is
        until(
            lambda: (
                sum(
                    c.get("name") == "frozen-waiter" and "b" in c["flags"]
                    for c in client.client_list()
                )
                == 2
            ),
            "the waiter to sleep in the server",
        )
    finally:
        client.close()
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        assert holder.finish() == 0  # the server marks the stopped waiter's turn held
        taken = told(behind)  # its lease ran out: the next one takes over, told abandoned
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    back_in_line(url, "frozen", taken.ticket)
    assert behind.finish() == 0
    assert stopped.wait() == 0
    back = told(stopped)
    rejoined(stopped, "frozen", "lease")  # gone, or unrenewed: which thread saw it first
    assert_exclusive(log, expected=3)
    assert taken.abandoned and not back.abandoned
    assert first.ticket < taken.ticket < back.ticket


def test_redis_waiter_whose_place_is_lost_in_an_outage_still_times_out(tmp_path: Path) -> None:
    """``-w`` holds while the server is away: a waiter that lost its place, and cannot take a
    new one before its time is up, gives up as any waiter does (exit 75), not a minute
    later when the window for joining again closes."""
    from redis_server import Place, RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        url = Place(server.url).url(lease=1.0)
        holder = Run("outage", "--backend", url, command=recorder(tmp_path / "log", hold=True))
        told(holder)
        waiter = Run("outage", "--backend", url, "-w", "3", command=["true"])
        waiting("outage", url)
        server.stop()  # and it stays down
        code = waiter.wait(30)  # REJOIN_WINDOW is 60 s: this would hang without the -w
        said = waiter.errors().strip().splitlines()
        assert code == 75, (code, said)
        assert said and "gave up waiting for line 'outage'" in said[-1], said
        assert lost(holder) and dead(holder.pid)
    finally:
        server.stop()


def test_redis_waiter_back_from_a_lost_place_keeps_max_waiting(place: Any, tmp_path: Path) -> None:
    """``--max-waiting 1`` leaves one run waiting: a waiter that lost its place while another
    run took the one waiting place comes back as a new arrival, and is turned away (75)."""
    log, url = tmp_path / "log", place.url(lease=1.0)
    holder = Run("maxw", "--backend", url, command=recorder(log, hold=True))
    told(holder)
    stopped = Run("maxw", "--backend", url, "--max-waiting", "1", command=recorder(log))
    waiting("maxw", url, 1)
    later = joins_as_place_is_lost(place, url, "maxw", stopped, ["--max-waiting", "1"], log)
    assert stopped.wait() == 75
    said = stopped.errors().strip().splitlines()
    assert len(said) == 2 and "back in line 'maxw'" in said[0], said
    assert "max_waiting" in said[1] or "waiting" in said[1], said
    assert holder.finish() == 0
    assert later.wait() == 0
    assert_exclusive(log, expected=2)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    """A Redis server of this test's own: the shared one is never flushed."""
    from redis_server import RedisServer, require_redis_py

    require_redis_py()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_redis_flushall_stops_the_holder_within_its_bound(
    private_redis: Any, tmp_path: Path
) -> None:
    """The README says a FLUSHALL can overlap (the leases vanish at once); what it promises
    is that the holder learns it at its next renewal, up to a third of a lease later, and
    stops its command within the grace, and that ticket numbers keep increasing."""
    from redis_server import Place

    lease, log = 3.0, tmp_path / "log"
    place = Place(private_redis.url)
    url = place.url(lease=lease)
    holder = Run("flush", "--backend", url, command=recorder(log, hold=True, stubborn=True))
    old = told(holder)
    waiter = Run("flush", "--backend", url, command=recorder(log, seconds=0.3))
    waiting("flush", url)
    client = place.client()
    try:
        flushed = time.monotonic_ns()
        client.flushall()
    finally:
        client.close()
    newcomer = Run("flush", "--backend", url, command=recorder(log, seconds=0.3))
    exited = lost(holder)
    assert dead(old.pid), "the recorder (inturn's grandchild) outlived inturn's exit 76"
    assert waiter.wait() == 0
    rejoined(waiter, "flush", "no longer had its lease")  # not "went unrenewed": it answered
    waiter_said = f"ran as {told(waiter)}"
    assert newcomer.wait() == 0
    new = told(newcomer)
    intervals = by_ticket(read_intervals(log))
    before, after = intervals[old.ticket], intervals[new.ticket]
    print(f"redis flushall: the waiter {waiter_said}; the newcomer is {new}")
    report(
        f"redis flushall (lease {lease:g})",
        exit_76_after_flush=seconds(exited - flushed),
        last_beat_after_flush=seconds(before.end - flushed),
        newcomer_start_after_flush=seconds(after.start - flushed),
        gap=gap(before, after),
    )
    assert new.ticket > old.ticket  # the counter vanished too: tickets still increase
    assert before.end <= exited
    bound = lease / 3 + DEFAULT_GRACE + MARGIN  # its next renewal, the grace, some room
    assert seconds(exited - flushed) < bound
    assert -gap(before, after) < bound  # whatever overlap there is stays within it


@pytest.mark.parametrize(
    ("keeps", "tls"),
    [("aof", False), ("nothing", False), ("nothing", True)],
    ids=["aof", "nothing", "nothing-tls"],
)
def test_redis_restart(tmp_path: Path, keeps: str, tls: bool) -> None:
    """A restart of the server while one holds and one waits, then a newcomer joins. A server
    that keeps its data (an append-only file), down for a second (longer than the client's own
    retries, far less than the lease), keeps every lease: the holder keeps its turn, the
    waiter its place, and all three run one after another, in arrival order, nobody told
    abandoned; an ``inturn wait`` begun before the restart ends once the first two are done.
    One that
    keeps nothing loses every lease (README: it can overlap): the holder learns it from the
    closed connection, long before its next renewal is due, stops its command and exits 76;
    the waiter takes a new place at the back, saying so in one line, and runs; the newcomer's
    ticket is still above
    the holder's."""
    from redis_server import Place, RedisServer

    options = ("--appendonly", "yes", "--appendfsync", "always") if keeps == "aof" else ()
    certificates = make_certificates(tmp_path / "tls") if tls else None
    server = RedisServer(tmp_path / "redis", *options, tls=certificates)
    try:
        lease = 30.0  # renewals every 10 s: only the closed connection can tell sooner
        place = Place(server.url)
        log, url = tmp_path / "log", place.url(lease=lease)
        holder = Run("restart", "--backend", url, command=recorder(log, hold=True))
        old = told(holder)
        waiter = Run("restart", "--backend", url, command=recorder(log, seconds=0.3))
        waiting("restart", url)
        client = place.client()
        barrier = None
        try:  # just after a renewal of the holder's lease: the next is due in lease/3
            lease_key = place.lease_key(client, "restart", old.ticket)
            until(lambda: client.pttl(lease_key) >= (lease - 1) * 1000, "a renewal")
            if keeps == "aof":
                barrier = subprocess.Popen(
                    inturn_cmd("wait", "--backend", f"{url}&client_name=barrier", "restart"),
                    stderr=subprocess.PIPE,
                    text=True,
                    env=child_env(),
                )
                until(
                    lambda: any(
                        c.get("name") == "barrier" and "b" in c["flags"]
                        for c in client.client_list()
                    ),
                    "inturn wait to sleep in the server",
                )
        finally:
            client.close()
        restarted = time.monotonic_ns()
        server.restart(down_for=1.0 if keeps == "aof" else 0.0)
        newcomer = Run("restart", "--backend", url, command=recorder(log, seconds=0.3))
        if barrier is not None:
            waiting("restart", url, 2)
            assert barrier.poll() is None, barrier.communicate()
            assert holder.finish() == 0
            runs = [told(waiter), told(newcomer)]
            assert (waiter.wait(), newcomer.wait()) == (0, 0)
            _, said = barrier.communicate(timeout=REPORT_TIMEOUT)
            assert barrier.returncode == 0 and said == "", said
            intervals = assert_exclusive(log, expected=3)
            assert [ticket_of(i.who) for i in intervals] == [old.ticket] + [r.ticket for r in runs]
            assert not any(r.abandoned for r in runs)
            return
        exited = lost(holder)
        assert dead(old.pid), "the recorder (inturn's grandchild) outlived inturn's exit 76"
        assert waiter.wait() == 0
        rejoined(waiter, "restart", "no longer had its lease")
        assert newcomer.wait() == 0
        new = told(newcomer)
        assert new.ticket > old.ticket  # the counter was lost too: numbers still increase
        before, after = (
            by_ticket(read_intervals(log))[old.ticket],
            by_ticket(read_intervals(log))[new.ticket],
        )
        assert before.end <= exited
        assert seconds(exited - restarted) < lease / 3 - 1  # before its next renewal was due
        report(
            f"redis restart keeping nothing (lease {lease:g})",
            exit_76_after_restart=seconds(exited - restarted),
            gap=gap(before, after),
        )
    finally:
        server.stop()


def test_redis_a_turn_given_back_while_the_server_is_down_is_given_back_cleanly(
    tmp_path: Path,
) -> None:
    """The holder's command ends while the server (which keeps its data) is down for a second:
    inturn gives the turn back as the server answers again, well within the lease, so the
    waiter runs next, not told of a death that did not happen, and without the lock delay."""
    from redis_server import Place, RedisServer

    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    try:
        place = Place(server.url)
        log, url = tmp_path / "log", place.url(lease=9)  # renewed every 3 s, safe for 6.75 s
        holder = Run("down", "--backend", url, command=recorder(log, hold=True))
        told(holder)
        waiter = Run("down", "--backend", url, command=recorder(log, seconds=0.1))
        waiting("down", url)
        server.stop()
        assert holder.proc.stdin is not None
        holder.proc.stdin.write("0\n")  # the command ends: inturn gives the turn back
        holder.proc.stdin.flush()
        until(lambda: any(i.exited for i in read_intervals(log)), "the holder's command to end")
        time.sleep(1.0)  # the outage's length
        server.start()
        assert holder.wait() == 0
        assert "could not leave" not in holder.errors()
        after = told(waiter)
        assert not after.abandoned
        assert waiter.wait() == 0
        assert_exclusive(log, expected=2)
    finally:
        server.stop()


# --------------------------------------------------------------------------- no lock delay


def killed_holder(
    request: pytest.FixtureRequest, backend: str, log: Path, *options: str
) -> tuple[str, str, Told]:
    """A run of line ``killed`` (with ``options``), killed outright while it holds, and gone
    from the server: the line's URL, the same without a lock delay, and what it was told."""
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
        server, schema = request.getfixturevalue("pg_server"), request.getfixturevalue("schema")
        no_delay = url + "&inturn_lock_delay=0"
    else:
        place = request.getfixturevalue("place")
        url = place.url(lease=1)
        no_delay = url + "&lock_delay=0"
    holder = Run("killed", *options, "--backend", url, command=recorder(log, hold=True))
    old = told(holder)
    if backend == "postgresql":
        session = holder_backend(server, schema, holder)
        group = os.getpgid(old.pid)
        holder.kill()  # first inturn, so that it cannot leave when its command dies ...
        os.killpg(group, signal.SIGKILL)  # ... then the command, which inherited the session
        query = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
        until(lambda: not sql(server, query, session), "rid of the killed holder's session")
    else:
        holder.kill()  # its sentinel kills the command; the lease runs out within a second
        client = place.client()
        try:
            pattern = f"{place.prefix}:*:lease:*"
            until(lambda: not list(client.scan_iter(match=pattern)), "rid of the killed lease")
        finally:
            client.close()
    until(lambda: dead(old.pid), "rid of the killed command")
    return url, no_delay, old


@pytest.mark.parametrize("delay", [True, False], ids=["lock-delay", "no-lock-delay"])
@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_after_a_killed_holder_no_wait_runs_after_the_lock_delay_or_at_once(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, delay: bool
) -> None:
    """After a holder killed outright, a run that gives up sooner than the lock delay times
    out in it, and ``--no-wait`` waits it out (nobody holds the line; it used to be refused
    by every ``--no-wait`` run for ever, none of them claiming the dead holder's marker);
    with the delay switched off ``--no-wait`` takes the turn at once. Either way it is told
    the turn was abandoned, and the run after it is not."""
    log = tmp_path / "log"
    url, no_delay, old = killed_holder(request, backend, log)
    if delay:
        timed = run_cli("run", "-w", "0.5", "--backend", url, "killed", "--", *recorder(log))
        assert timed.returncode == 75 and not timed.stdout, timed
        said = timed.stderr.strip().splitlines()
        assert len(said) == 1 and "gave up waiting" in said[0], said
    taker = url if delay else no_delay
    taken = run_cli("run", "--no-wait", "--backend", taker, "killed", "--", *recorder(log))
    assert taken.returncode == 0, taken
    words = taken.stdout.split()
    assert words[:1] == ["told"] and words[2] == "1", taken.stdout
    assert int(words[1]) > old.ticket
    after = run_cli("run", "--no-wait", "--backend", url, "killed", "--", *recorder(log))
    assert after.returncode == 0 and after.stdout.split()[2] == "0", after
    assert_exclusive(log, expected=3)


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
def test_after_a_killed_reader_readers_need_not_wait_the_lock_delay(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """A reader may share with a reader cut off from the server, not with a writer: after a
    reader killed outright, readers start at once (within a timeout shorter than the delay;
    each waited the delay, for ever, since no reader claims a reader's marker), a writer waits
    the delay and is the one told."""
    log = tmp_path / "log"
    url, _, _ = killed_holder(request, backend, log, "--shared")
    for _ in range(2):  # a timeout shorter than the 3 s delay, with room for a slow join
        reader = run_cli(
            "run", "--shared", "-w", "2.5", "--backend", url, "killed", "--", *recorder(log)
        )
        assert reader.returncode == 0 and reader.stdout.split()[2] == "0", reader
    timed = run_cli("run", "-w", "0.5", "--backend", url, "killed", "--", *recorder(log))
    assert timed.returncode == 75, timed
    writer = run_cli("run", "--no-wait", "--backend", url, "killed", "--", *recorder(log))
    assert writer.returncode == 0, writer
    assert writer.stdout.split()[2] == "1" and "died holding" in writer.stderr, writer


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://127.0.0.1:1/db?inturn_lock_delay=-1", "inturn_lock_delay='-1'"),
        ("postgresql://127.0.0.1:1/db?inturn_lock_delay=soon", "inturn_lock_delay='soon'"),
        ("redis://127.0.0.1:1/0?lock_delay=soon", "lock_delay='soon'"),
        ("redis://127.0.0.1:1/0?lock_delay=-1", "lock_delay='-1'"),
    ],
)
def test_bad_lock_delays_are_one_clear_line_and_exit_2(url: str, words: str) -> None:
    """Refused before any connection is tried (the server named here does not exist)."""
    for args in (("run", "--backend", url, "x", "--", "true"), ("status", "--backend", url)):
        one_line_error(run_cli(*args), words, "duration")


# --------------------------------------------------------------------------- both servers

# ``inturn ARGS`` with the window for joining the line again cut from 60 s to 2 s.
WINDOW_CUT_SHORT = """\
import importlib, sys
module, constant = sys.argv.pop(1), sys.argv.pop(1)
setattr(importlib.import_module(module), constant, 2.0)
from inturn.cli import command
command()
"""


@pytest.mark.parametrize("server", ["postgres", "redis"])
def test_a_waiter_whose_server_stays_away_after_it_lost_its_place_exits_69(
    request: pytest.FixtureRequest, server: str
) -> None:
    """A waiter whose path to the server closes loses its place and tries to join again; when
    the server stays out of reach past that window, ``inturn run`` says so in one line and
    exits 69 (unavailable: try again later), as for any server it cannot reach, on both
    servers: not 76, "lost the turn", for a turn it never held, nor 2, "fix the call"."""
    if server == "postgres":
        direct = request.getfixturevalue("pg_url")
        module, constant = "inturn.backends.postgres.store", "RECONNECT_WINDOW"
    else:
        direct = request.getfixturevalue("place").url(lease=1)
        module, constant = "inturn.backends.redis.store", "REJOIN_WINDOW"
    proxy = proxy_to(direct)
    argv = ["run", "--backend", through(proxy, direct), "away", "--", "true"]
    waiter = None
    try:
        with inturn.turn("away", backend=direct):
            waiter = subprocess.Popen(
                [sys.executable, "-c", WINDOW_CUT_SHORT, module, constant, *argv],
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            waiting("away", direct)
            proxy.close()  # its connections end, and no new one gets through
            _, said = waiter.communicate(timeout=REPORT_TIMEOUT)
        rows = [row for row in said.splitlines() if not row.startswith("inturn: warning: ")]
        assert waiter.returncode == 69, (waiter.returncode, said)
        assert len(rows) == 1 and rows[0].startswith("inturn: "), said
        assert "in line 'away'" in rows[0] and "could not" in rows[0] and "2s" in rows[0], said
    finally:
        proxy.close()
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def test_a_waiter_whose_postgres_server_stops_exits_69(private_cluster: Any) -> None:
    """The server itself shuts down while one holds and one waits: the waiter's session
    ends (the server says it is shutting down), it cannot join again within its window (2 s
    here, 60 s as shipped) since nothing listens any more, and ``inturn run`` exits 69 with
    one line: the server is unavailable, the call was right."""
    url = private_cluster.url
    holder = Run("stopped", "--backend", url)
    holder.running()
    argv = ["run", "--backend", url, "stopped", "--", "true"]
    module, constant = "inturn.backends.postgres.store", "RECONNECT_WINDOW"
    waiter = subprocess.Popen(
        [sys.executable, "-c", WINDOW_CUT_SHORT, module, constant, *argv],
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        waiting("stopped", url)
        private_cluster.halt()
        _, said = waiter.communicate(timeout=REPORT_TIMEOUT)
        rows = [row for row in said.splitlines() if not row.startswith("inturn: warning: ")]
        assert waiter.returncode == 69, (waiter.returncode, said)
        assert len(rows) == 1 and rows[0].startswith("inturn: "), said
        assert "in line 'stopped'" in rows[0] and "could not reconnect" in rows[0], said
        assert holder.wait() == 76
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
