"""The Redis backend across real processes: order, slots, crashes, lost turns, bad setups.

The server comes from ``redis_server.py``; every test gets its own key prefix (a URL
parameter) and deletes its keys afterwards. Leases are short here so that crash recovery
takes seconds; the holder in the lost-turn test reaches the server through ``TcpProxy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import inturn
from inturn.backends.base import Patience
from inturn.backends.redis import scripts
from inturn.errors import UsageError
from inturn.records import own_ticket_fields

from conftest import (
    Run,
    Worker,
    child_env,
    free_port,
    inturn_cmd,
    one_line_error,
    run_cli,
    until,
    until_held_by,
)
from redis_server import (
    RedisServer,
    delete_prefix,
    require_redis_py,
    with_parameters,
)
from tcp_proxy import TcpProxy

require_redis_py()


# --------------------------------------------------------------------------- order and slots


def test_tickets_keep_increasing_after_the_server_loses_the_line(place):
    with inturn.turn("fence") as before:
        pass
    delete_prefix(place.base, place.prefix)  # as a restart without persistence would
    with inturn.turn("fence") as after:
        assert after.ticket > before.ticket


def test_tickets_keep_increasing_after_a_loss_whatever_the_joiners_clock(place):
    """After a loss the counter starts again from the server's clock, not the joining host's:
    a host whose clock is an hour slow must not hand out smaller fencing tokens."""
    with inturn.turn("fence") as before:
        pass
    delete_prefix(place.base, place.prefix)
    slow_host = (
        "import time, inturn\n"
        "real = time.time\n"
        "time.time = lambda: real() - 3600\n"
        "with inturn.turn('fence') as turn:\n"
        "    print(turn.ticket)\n"
    )
    joined = subprocess.run(
        [sys.executable, "-c", slow_host],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(joined.stdout) > before.ticket


# --------------------------------------------------------------------------- crashes


# The command ``inturn run`` runs in these tests: it reports, then holds until told to finish.


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_command_dies_with_inturn_since_the_turn_would_end_with_it(place, workers):
    """The lease is renewed by inturn, not by its command: a dead inturn frees the turn
    within a lease, so the command must not run on outside it."""
    url = place.url(lease=1)
    holder = Run("orphan", "--backend", url)
    command = holder.running()
    until_held_by(command.pid, "orphan")  # as the next one is told
    holder.kill()
    assert holder.next_line() == []  # the command is gone too: nobody holds the pipe
    waiter = Worker("orphan", "--hold", env=child_env(INTURN_BACKEND=url))
    workers.append(waiter)
    _, _, abandoned, dead_pid = waiter.acquired()
    assert abandoned == "1" and dead_pid == str(command.pid)  # the holder status showed
    waiter.send()
    assert waiter.wait() == 0


def through(proxy: TcpProxy, base: str) -> str:
    """``base`` with its host and port replaced by the proxy's (user, database kept)."""
    parts = urlsplit(base)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_a_holder_cut_off_from_the_server_stops_its_command_and_exits_76(
    place, workers, redis_base
):
    target = urlsplit(redis_base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    try:
        holder = Run("cut", "--backend", place.url(lease=1, base=through(proxy, redis_base)))
        command = holder.running()
        until_held_by(command.pid, "cut")  # as the next one is told
        waiter = Worker("cut", "--hold")
        workers.append(waiter)
        waiter.expect("waiting")
        # The network goes silent, and the server drops the holder's connections.
        proxy.blackhole()
        client = place.client()
        try:
            for address in proxy.upstream_addresses():
                client.execute_command("CLIENT", "KILL", "ADDR", address)
        finally:
            client.close()
        assert holder.next_line() == ["signal", str(int(signal.SIGTERM))]
        assert holder.wait(60) == 76
        assert "lost the turn in line 'cut'" in holder.errors()
        _, _, abandoned, dead_pid = waiter.acquired()
        assert abandoned == "1" and dead_pid == str(command.pid)
        waiter.send()
        assert waiter.wait() == 0
    finally:
        proxy.close()


def test_a_holder_whose_lease_is_gone_leaves_as_a_dead_holder_would(place, workers):
    """The server dropped the holder's lease (a ``FLUSHALL``, a restart that kept nothing, a
    pause longer than the lease) and still answers: the holder stops its command and exits
    76, and leaves the line as a death, since its turn ended uncleanly: the next holder is
    told "abandoned" rather than handed what looks like a clean release."""
    holder = Run("gone", "--backend", place.url(lease=1))
    command = holder.running()
    until_held_by(command.pid, "gone")  # as the next one is told
    waiter = Worker("gone", "--hold")
    workers.append(waiter)
    waiter.expect("waiting")
    number = inturn.Line("gone").status().holders[0].number
    client = place.client()
    try:
        assert client.delete(place.lease_key(client, "gone", number)) == 1
    finally:
        client.close()
    assert holder.next_line() == ["signal", str(int(signal.SIGTERM))]
    assert holder.wait(60) == 76
    _, ticket, abandoned, dead_pid = waiter.acquired()
    assert (abandoned, dead_pid) == ("1", str(command.pid)) and int(ticket) > number
    waiter.send()
    assert waiter.wait() == 0


def test_a_waiter_cut_off_from_the_server_joins_again_at_the_back_once_it_answers(
    place, redis_base
):
    """Cut off for longer than its lease, a waiter's place is gone. Once the server answers
    again it takes a new ticket at the back, says so in one warning line, and waits for the
    turn like anyone else, as a PostgreSQL waiter does (README: Leases)."""
    import pty

    target = urlsplit(redis_base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    terminal, child_side = pty.openpty()
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            try:
                seen += os.read(terminal, 1024)
            except OSError:  # EIO: the waiter is gone
                raise AssertionError(
                    f"the waiter ended before saying {text!r}: exit {waiter.wait(60)}, "
                    f"having said {seen!r}"
                ) from None

    try:
        with inturn.turn("strand"):
            url = place.url(lease=1, base=through(proxy, redis_base))
            waiter = subprocess.Popen(
                inturn_cmd("run", "--backend", url, "strand", "--", "true"),
                stderr=child_side,
                env=child_env(),
            )
            os.close(child_side)
            read_until(b"waiting for strand")  # drawn just before it sleeps in line
            (old,) = [t.number for t in inturn.Line("strand").status().waiters]
            client = place.client()
            try:
                lease = place.lease_key(client, "strand", old)
                proxy.blackhole()
                deadline = time.monotonic() + 60
                while client.exists(lease):  # the server let the old place go
                    assert time.monotonic() < deadline, "the waiter's lease outlived it"
                    time.sleep(0.02)
            finally:
                client.close()
            proxy.heal()
            read_until(b"back in line 'strand' as ticket")
            (new,) = [t.number for t in inturn.Line("strand").status().waiters]
            assert new > old and waiter.poll() is None  # in line again, behind our turn
        assert waiter.wait(60) == 0
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(terminal, 1024):
                seen += chunk
        assert seen.count(b"lost our place in line 'strand'") == 1, seen
        assert inturn.Line("strand").status().waiters == ()
    finally:
        os.close(terminal)
        proxy.close()


def test_a_waiter_that_cannot_join_again_gives_up_with_one_clear_line(
    place, redis_base, monkeypatch
):
    """A waiter whose server stays silent past the window for joining again (60 s, here cut
    short) gives up with ``ServerUnavailable`` (a ``BackendError``) saying why (a server out
    of reach, not a lost turn: it never held one), and leaves nothing in line."""
    from inturn.backends.redis import store

    monkeypatch.setattr(store, "REJOIN_WINDOW", 0.5)
    target = urlsplit(redis_base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    line = inturn.Line("silent", backend=place.url(lease=1, base=through(proxy, redis_base)))
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            line.acquire()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    try:
        with inturn.turn("silent"):
            thread.start()
            deadline = time.monotonic() + 60
            while not inturn.Line("silent").status().waiters:
                assert time.monotonic() < deadline and thread.is_alive(), outcome
                time.sleep(0.02)
            proxy.blackhole()
            thread.join(60)
            assert not thread.is_alive()
        (error,) = outcome
        assert type(error) is inturn.ServerUnavailable, error
        said = str(error)
        assert "lost our place in line 'silent'" in said and "went unrenewed" in said, said
        assert "could not join again within 0.5s" in said and "\n" not in said, said
        deadline = time.monotonic() + 60  # its old ticket expires with its lease
        while inturn.Line("silent").status().waiters:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proxy.close()
        line.close()


@pytest.mark.parametrize("verb", ["wait", "run"])
def test_a_waiter_on_a_silent_path_still_keeps_its_timeout(place, redis_base, verb):
    """The path to the server goes silent while ``inturn wait -w`` or ``inturn run -w`` sleeps
    in line: it gives up at its time, a little late at worst, not when its blocked read's long
    socket timeout (here a URL's 30 s) runs out, nor after trying to join again once its time
    is up."""
    from inturn.queue import STATUS_AFTER_TIMEOUT

    target = urlsplit(redis_base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    url = with_parameters(place.url(lease=2, base=through(proxy, redis_base)), socket_timeout=30)
    command = ("--", "true") if verb == "run" else ()
    try:
        with inturn.turn("silent"):
            waiter = subprocess.Popen(
                inturn_cmd(verb, "-w", "2", "--backend", url, "silent", *command),
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            # Asleep in the server: its read of the leavers' ("gone") streams, not the
            # keeper's listener, nor the check before the join that names XREAD as a word.
            until(
                lambda: any(b"XREAD" in chunk and b":gone:" in chunk for chunk in list(proxy.sent)),
                "the waiter asleep in the server",
            )
            proxy.blackhole()
            bound = 2 + 2 + STATUS_AFTER_TIMEOUT + 5  # its time, a lease, room for a loaded machine
            _, said = waiter.communicate(timeout=bound)
            assert waiter.returncode == 75, said
            assert "gave up waiting for line 'silent'" in said
    finally:
        proxy.close()


def test_a_dropped_connection_that_comes_back_keeps_the_turn(place, redis_base):
    target = urlsplit(redis_base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    try:
        holder = Run("drop", "--backend", place.url(lease=2, base=through(proxy, redis_base)))
        holder.running()
        proxy.cut()  # every connection closed, as CLIENT KILL would
        # Two renewals reached the server through new connections: the first moved the lease.
        assert proxy.wait_sent(b"PEXPIRE", 2), holder.proc.poll()
        assert holder.finish(0) == 0  # 76 had the turn been given up
        assert holder.next_line() == []  # and the command was never told to stop
    finally:
        proxy.close()


def evalsha_of(place: Any, script: str) -> bytes:
    """How ``script`` is sent (``EVALSHA`` and its SHA-1, in RESP), loaded on the server first
    so that it runs at once (not answered ``NOSCRIPT``) and a proxy can pick it out;
    ``SCRIPT EXISTS`` names the SHA-1 too, but not so."""
    client = place.client()
    try:
        client.script_load(script)
    finally:
        client.close()
    return b"EVALSHA\r\n$40\r\n" + hashlib.sha1(script.encode()).hexdigest().encode()


def test_a_claim_whose_answer_is_lost_still_tells_the_next_holder(place, redis_base):
    """The holder dies. The next one's claim of its marker runs on the server, but the
    connection closes before the answer comes back, and the client sends the claim again:
    the next holder must still be told abandoned, by whom, and the one after it nothing."""
    proxy = TcpProxy(*_host_port(redis_base))
    url = with_parameters(place.url(lease=1), lock_delay=0)
    line = inturn.Line(
        "lostclaim",
        backend=with_parameters(place.url(lease=1, base=through(proxy, redis_base)), lock_delay=0),
    )
    try:
        holder = Run("lostclaim", "--backend", url)
        command = holder.running()
        until_held_by(command.pid, "lostclaim")  # as the next one is told
        holder.kill()  # SIGKILL: its turn is abandoned
        proxy.cut_after_reply(evalsha_of(place, scripts.CLAIM))
        with line.acquire(timeout=30) as turn:
            assert proxy.replies_dropped == 1  # the fault happened, to the claim
            assert turn.abandoned and turn.abandoned_by is not None
            assert turn.abandoned_by.pid == command.pid
        with line.acquire(timeout=30) as after:
            assert not after.abandoned
    finally:
        line.close()
        proxy.close()


@pytest.mark.parametrize("script", ["join", "leave"])
def test_a_join_or_leave_whose_answer_is_lost_is_done_once(place, redis_base, script):
    """A join or a leave that ran on the server, whose answer was lost with its connection,
    is sent again by the client: it must not take a second ticket, nor leave twice (the
    next holder is told nothing, and the line is empty after)."""
    proxy = TcpProxy(*_host_port(redis_base))
    url = with_parameters(place.url(lease=1), lock_delay=0)
    line = inturn.Line(
        "lostanswer",
        backend=with_parameters(place.url(lease=1, base=through(proxy, redis_base)), lock_delay=0),
    )
    other = inturn.Line("lostanswer", backend=url)
    try:
        proxy.cut_after_reply(
            evalsha_of(place, scripts.JOIN if script == "join" else scripts.LEAVE)
        )
        with line.acquire(timeout=30) as turn:
            status = other.status()
            assert [h.number for h in status.holders] == [turn.ticket] and not status.waiters
        assert proxy.replies_dropped == 1
        with other.acquire(timeout=30) as after:
            assert not after.abandoned and after.ticket > turn.ticket
        status = other.status()
        assert not status.holders and not status.waiters
    finally:
        line.close()
        other.close()
        proxy.close()


def _host_port(base: str) -> tuple[str, int]:
    target = urlsplit(base)
    return target.hostname or "127.0.0.1", target.port or 6379


def test_a_forked_child_neither_keeps_nor_frees_its_parents_turn(place):
    line = inturn.Line("fork")
    held = line.acquire()
    pid = os.fork()
    if pid == 0:  # the child: the turn is not its own
        code = 0
        try:
            held.release()  # does nothing here
            line.acquire(blocking=False)
            code = 3  # it should have been busy
        except inturn.Busy:
            pass
        except BaseException:
            code = 4
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert [t.pid for t in line.status().holders] == [os.getpid()]
    held.release()
    assert line.status().holders == ()


# --------------------------------------------------------------------------- hand-off


@pytest.mark.parametrize("then_holds", [True, False], ids=["its-turn-next", "not-told"])
def test_the_turn_is_marked_held_by_the_server_as_the_waiters_read_ends(place, then_holds):
    """Told that its turn comes once the tickets it waits on leave cleanly, a waiter sends the
    mark in the same packet as its blocked read: the server records the turn held as the read
    ends, on its own clock, and ``mark_acquired`` then sends nothing. Not told so, the wait
    marks nothing."""
    line = inturn.Line("rides")
    store = line.store
    holder = line.acquire()
    me, _ = store.join(own_ticket_fields(None, 1), Patience())
    client = place.client()

    def marked_at() -> bytes | None:
        return client.hget(store._ticket_key(me.ticket_id), "acquired_at")  # type: ignore[attr-defined]

    try:
        woke: list[Any] = []
        thread = threading.Thread(
            target=lambda: woke.append(store.wait(me, [holder.ticket], None, None, then_holds))
        )
        thread.start()
        blocked_in_read(place, store)
        holder.release()
        thread.join(60)  # a hang detector, not a speed test
        assert woke and woke[0] is not None and woke[0].left == (holder.ticket,)
        (ticket,) = store.read([me.number], me)
        assert ticket is not None
        if then_holds:
            assert ticket.acquired_at is not None
            assert abs(ticket.acquired_at - time.time()) < 60
            first = marked_at()
            store.mark_acquired(me, time.time(), Patience())  # already marked: sends nothing
            assert marked_at() == first
        else:
            assert ticket.acquired_at is None and marked_at() is None
            store.mark_acquired(me, time.time(), Patience())
            marked = store.read([me.number], me)[0]
            assert marked is not None and marked.acquired_at is not None
            assert abs(marked.acquired_at - time.time()) < 60
    finally:
        store.leave(me)
        client.close()


def blocked_in_read(place: Any, store: Any) -> None:
    """Return once the server shows the store's wait connection asleep in its ``XREAD``
    (found by its port: the server may be shared)."""
    client = place.client()
    try:
        for _ in range(6000):  # a hang detector: 60 s
            ports = {
                c._sock.getsockname()[1]
                for c in list(store.backend.wait_pool._in_use_connections)
                if c._sock is not None
            }
            for entry in client.client_list():
                port = int(entry["addr"].rsplit(":", 1)[1])
                if port in ports and entry["cmd"] == "xread" and "b" in entry["flags"]:
                    return
            time.sleep(0.01)
        raise AssertionError("the wait never blocked in the server")
    finally:
        client.close()


# --------------------------------------------------------------------------- waiting ends


def test_cancelling_an_async_wait_interrupts_the_blocked_read(place, monkeypatch):
    # With an hour's lease the waiter would block for an hour unless cancelling cuts it short.
    monkeypatch.setenv("INTURN_BACKEND", place.url(lease=3600))
    line = inturn.Line("async")
    holder = line.acquire()

    async def main() -> None:
        task = asyncio.ensure_future(inturn.acquire_async(line))
        while not line.status().waiters:  # joined: now blocked in the server
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    finished = threading.Event()
    thread = threading.Thread(target=lambda: (asyncio.run(main()), finished.set()))
    thread.start()
    thread.join(60)  # a hang detector, not a speed test
    assert finished.is_set()
    assert line.status().waiters == ()
    holder.release()


def test_a_kick_from_a_replacer_that_is_gone_is_read_once(place, workers):
    """A ``newest_wins`` waiter's kick stream names a later ticket that is gone by the time the
    waiter reads it (a replacer that timed out or was killed): the waiter stays in line and
    goes back to sleep once, without reading the same entry again and again; a live newcomer
    then replaces it at once."""
    from inturn.names import digest

    line = inturn.Line("kicked")
    holder = line.acquire()
    waiter = Worker("kicked", "--newest-wins")
    workers.append(waiter)
    number = int(waiter.expect("waiting", skip=("joining",))[1])
    client = place.client()
    try:
        tag = f"{place.prefix}:{{{digest('kicked')}}}"
        (ticket_id,) = client.zrangebyscore(f"{tag}:tickets", number, number)
        gone = str(number + 1000)  # never handed out: not a live ticket
        client.xadd(f"{tag}:kick:{ticket_id.decode()}", {"by": gone})
    finally:
        client.close()
    assert int(waiter.expect("waiting")[1]) == number  # woken once, still in line
    newcomer = Worker("kicked", "--newest-wins")
    workers.append(newcomer)
    newcomer.expect("joining")
    words = waiter.expect("replaced", "waiting")
    assert words[0] == "replaced", "the waiter woke again for the same kick"
    assert waiter.wait() == 77
    newcomer.expect("waiting")
    holder.release()
    newcomer.acquired()
    assert newcomer.wait() == 0


# --------------------------------------------------------------------------- status


HOSTILE = ["a}{b", "*", "x:y", "{inturn}", "line\nwith newline", "Ünïcödé ☃", "\udcff", "NUL\x00"]


def _sockets() -> int:
    """This process's open sockets, as the system sees them."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since it was listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_lines_never_closed_free_their_threads_and_connections(place):
    """A ``Line`` per request, never closed (``with inturn.Line(...):`` holds a turn and keeps
    the ``Line`` open): once it holds nothing and nobody refers to it, it is collected with its
    lease threads and connections, as on the other backends; a service does not run out of
    threads, or of the server's clients, one request at a time."""
    tag = f"inturn-unclosed-{uuid.uuid4().hex[:12]}"
    url = with_parameters(place.url(), client_name=tag)
    admin = place.client()

    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("inturn-lease-")]

    def clients() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == tag)

    before = set(ours())
    gc.collect()
    sockets = _sockets()
    try:
        with inturn.Line("unclosed", backend=url) as held:
            assert set(ours()) - before, "a held turn has its lease renewed"
            assert not held.lost
        del held
        for _ in range(60):
            with inturn.Line("unclosed", backend=url):
                pass
        gc.collect()
        deadline = time.monotonic() + 30  # one bound for all: a leak fails, it does not hang
        for thread in set(ours()) - before:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = set(ours()) - before
        assert not left, f"{len(left)} lease threads outlive their Lines"
        assert _sockets() <= sockets, "connections outlive their Lines"
        until(lambda: clients() == 0, "the server to see every client gone")
    finally:
        admin.close()


def test_turns_taken_one_after_another_through_one_line_keep_their_lease_threads(place):
    """The lease threads end a moment after the last ticket leaves, not at once: a loop of
    turns through one ``Line`` finds them still running, rather than starting three threads
    and a connection for every turn (stalls of the machine may restart them now and then)."""
    line = inturn.Line("looped", backend=place.url())
    seen: set[threading.Thread] = set()  # kept: a thread's id may be reused once it ended
    try:
        for _ in range(20):
            with line:
                seen |= {t for t in threading.enumerate() if t.name.startswith("inturn-lease-")}
    finally:
        line.close()
    assert 3 <= len(seen) < 30, f"{len(seen)} lease threads started for 20 turns"


def test_closing_stops_the_lease_threads_at_once_not_a_lease_later(place):
    """``with inturn.turn(...)`` closes what it opened: the listener, asleep in the server for
    up to a lease, is woken by the stop (whether it was reading, or still connecting), so
    turns taken one after another leave no threads behind."""
    url = place.url(lease=30)  # a thread left asleep would outlive the bound below by far
    before = set(threading.enumerate())
    for _ in range(100):
        with inturn.turn("closing", backend=url):
            pass
    deadline = time.monotonic() + 10  # one bound for all, a third of a lease
    for thread in set(threading.enumerate()) - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in set(threading.enumerate()) - before]
    assert not left, f"{len(left)} threads outlive their turns: {sorted(set(left))}"


def test_status_of_an_unused_line_creates_nothing(place):
    assert inturn.Line("never").status().holders == ()
    assert place.stored_keys() == []


def test_hostile_names_are_data_never_keys(place):
    for name in HOSTILE:
        with inturn.turn(name) as held:
            status = inturn.Line(name).status()
            assert [t.number for t in status.holders] == [held.ticket]
    from inturn.backends.redis import RedisStore

    store = inturn.Line("x").store
    assert isinstance(store, RedisStore)
    assert store.backend.names() == sorted(HOSTILE)
    assert all(name not in key for key in place.stored_keys() for name in HOSTILE if len(name) > 1)
    # Names that differ only in case are different lines.
    with inturn.turn("Case"), inturn.turn("case"):
        pass


# --------------------------------------------------------------------------- bad setups


def test_an_unreachable_server_is_one_line_and_exit_69_without_the_password(tmp_path):
    """Nobody listens on the port: unavailable (69, try again later), not a wrong call (2)."""
    secret = "s3cr3t-pw"
    port = free_port()
    url = f"redis://someone:{secret}@127.0.0.1:{port}/0"
    for args in (["run", "x", "--", "true"], ["status"], ["status", "x"], ["wait", "x"]):
        result = run_cli(*args, INTURN_BACKEND=url)
        one_line_error(result, f"cannot reach Redis at redis://127.0.0.1:{port}/0", code=69)
        assert secret not in result.stderr + result.stdout


def test_an_unreachable_server_raises_server_unavailable_a_backend_error():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(inturn.ServerUnavailable, match="cannot reach Redis") as caught:
        inturn.Line("x", backend=url).acquire()
    assert isinstance(caught.value, inturn.BackendError)


def test_a_host_name_that_does_not_exist_is_a_setup_to_fix_exit_2():
    """The resolver's answer that no such name exists is a typo to correct, not an outage."""
    result = run_cli("status", INTURN_BACKEND="redis://no-such-host.invalid:6379/0")
    one_line_error(result, "no-such-host.invalid", "correct its name", code=2)


def test_a_wrong_password_is_refused_without_printing_it(place):
    parts = urlsplit(place.base)
    url = f"redis://nobody-{uuid.uuid4().hex[:6]}:wrong-pw@{parts.netloc.split('@')[-1]}/0"
    result = run_cli("status", "x", INTURN_BACKEND=url)
    one_line_error(result, "refused the login")
    assert "wrong-pw" not in result.stderr


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?lease=soon", "lease='soon'"),
        ("?lease=0", "lease='0'"),
        ("?prefix=a{b}", "prefix='a{b}'"),
        ("?frobnicate=1", "unknown parameter frobnicate in the Redis URL"),
        ("?a=1&b=2", "unknown parameters a, b in the Redis URL"),
        ("?socket_timeout=x", "bad Redis URL"),
        # Options redis-py takes from a URL only as text, where it wants something else:
        # they used to fail deep inside the client (AttributeError, LookupError).
        ("?socket_keepalive_options=x", "unknown parameter socket_keepalive_options"),
        ("?decode_responses=true", "unknown parameter decode_responses"),
        ("?encoding=no-such-codec", "encoding='no-such-codec' in the Redis URL"),
        ("?encoding_errors=bogus", "encoding_errors='bogus' in the Redis URL"),
        ("?ssl_ca_certs=/x", "unknown parameter ssl_ca_certs"),  # TLS options need rediss://
    ],
)
def test_bad_url_parameters_are_one_clear_line(query, message):
    url = f"redis://127.0.0.1:1/0{query}"
    for args in (["status", "x"], ["status", "--backend", url, "x"], ["run", "x", "--", "true"]):
        result = run_cli(*args, INTURN_BACKEND=url)
        assert result.stdout == ""
        one_line_error(result, message)


def test_lease_and_lock_delay_take_units():
    from inturn.backends.redis.address import parse_address

    address = parse_address("redis://127.0.0.1:1/0?lease=1500ms&lock_delay=1m")
    assert (address.lease, address.lock_delay) == (1.5, 60.0)
    one_line_error(
        run_cli("status", "--backend", "redis://127.0.0.1:1/0?lease=2h", "x"),
        "lease='2h': give a duration from 0.1s to 3600s",
    )


def test_tls_parameters_are_checked_with_rediss():
    url = "rediss://127.0.0.1:1/0?ssl_cert_reqs=sometimes"
    one_line_error(
        run_cli("status", "--backend", url, "x"), "ssl_cert_reqs='sometimes'", "none, optional"
    )


def test_the_url_keeps_inturns_parameters_and_hides_the_password():
    from inturn.backends.redis.address import parse_address

    address = parse_address("rediss://me:pw@[::1]:7000/3?lease=2.5&prefix=ops&socket_timeout=9")
    assert address.where == "rediss://[::1]:7000/3?prefix=ops"
    assert (address.lease, address.prefix) == (2.5, "ops")
    assert address.options["password"] == "pw"
    assert address.options["socket_timeout"] == 9.0
    assert "lease" not in address.options and "prefix" not in address.options
    with pytest.raises(UsageError, match="database"):
        parse_address("redis://host/zero")


def _acl_user(server: RedisServer, name: str, password: str, *rules: str) -> str:
    """Make user ``name`` on ``server`` with ``rules`` (``ACL SETUSER``); the URL it logs in by."""
    admin: Any = __import__("redis").Redis.from_url(server.url)
    try:
        admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules)
    finally:
        admin.close()
    return f"redis://{name}:{password}@127.0.0.1:{server.port}/0"


def test_a_user_without_write_permission_is_told_which_grant_is_missing(tmp_path):
    server = RedisServer(tmp_path / "acl")
    try:
        url = _acl_user(server, "reader", "reader-secret", "~*", "+@read")
        line = one_line_error(run_cli("run", "x", "--", "true", INTURN_BACKEND=url), "may not")
        assert "+@write" in line and "reader-secret" not in line
        assert run_cli("status", INTURN_BACKEND=url).returncode == 0  # reading is allowed
    finally:
        server.stop()


def test_the_commands_checked_before_a_join_include_every_one_the_scripts_call() -> None:
    """The list asked about before a join is written by hand: a command a script comes to call
    must be added to it, or a user denied that command is let in to fail as it hands over."""
    from inturn.backends.redis.store import _commands_used

    sources = (scripts.JOIN, scripts.BURY, scripts.LEAVE, scripts.MARK, scripts.CLAIM, scripts.NOTE)
    called = {name.upper() for source in sources for name in scripts._CALL.findall(source)}
    assert called, "the pattern found no command in the scripts"
    assert called <= {words[0] for words in _commands_used("inturn:k")}


@pytest.mark.parametrize(
    ("rules", "named"),
    [
        (("-xadd",), ("run XADD", "+xadd")),  # its leave would wake nobody
        (("-pexpire",), ("run PEXPIRE", "+pexpire")),  # its first renewal would end the turn
        (("-time",), ("run TIME", "+time")),
        (("-zadd", "-xadd"), ("run ZADD, XADD", "+zadd +xadd")),
        (("-@blocking",), ("run XREAD", "+xread")),
        (("-script|load",), ("run SCRIPT LOAD", "+script|load")),
        (("resetkeys", "~other:*"), ("use inturn's keys (inturn:*)", "~inturn:*")),
    ],
)
def test_a_user_missing_a_command_is_refused_before_it_joins(tmp_path, rules, named):
    """A user allowed everything but a command that joining, waiting or handing over uses
    is refused before it joins, with one line naming the command and the rule to add, not
    let in to fail later (a leave that cannot write its stream wakes nobody, and each
    hand-off then takes a lease)."""
    server = RedisServer(tmp_path / "acl")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    try:
        url = _acl_user(server, "lacking", "pw", "~inturn:*", "+@all", *rules)
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=url)
        line = one_line_error(result, "'lacking' may not", *named, "ACL SETUSER lacking")
        assert "ran" not in result.stdout and "pw" not in line
        with pytest.raises(inturn.BackendError, match="may not"):
            inturn.Line("x", backend=url).acquire()
        assert admin.keys("*") == []  # refused before anything was written
    finally:
        admin.close()
        server.stop()


def test_a_command_denied_during_a_turn_is_named_as_the_holder_leaves(tmp_path):
    """Rights taken away after the join (here ``XADD``, which the leave script calls) make the
    leave warn with the command and the rule to add, not the server's words about a script."""
    server = RedisServer(tmp_path / "acl")
    try:
        url = _acl_user(server, "shrinking", "pw", "~inturn:*", "+@all")
        take = "import redis, sys; redis.Redis.from_url(sys.argv[1]).execute_command"
        take += "('ACL', 'SETUSER', 'shrinking', '-xadd')"
        result = run_cli(
            "run", "x", "--", sys.executable, "-c", take, server.url, INTURN_BACKEND=url
        )
        assert result.returncode == 0, result.stderr
        assert "could not leave line 'x'" in result.stderr, result.stderr
        assert "may not run XADD" in result.stderr and "+xadd" in result.stderr, result.stderr
        assert "user_script" not in result.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(
    "reply",
    [
        "The user executing the script can't run this command or subcommand script: "
        f"{hashlib.sha1(scripts.LEAVE.encode()).hexdigest()}, on @user_script:12.",  # Redis 7
        f"ERR Error running script (call to f_{hashlib.sha1(scripts.LEAVE.encode()).hexdigest()}"
        "): @user_script:12: @user_script: 12: The user executing the script can't run this "
        "command or subcommand",  # Redis 6
        "NOPERM this user has no permissions to run the 'xadd' command or its subcommand",
    ],
    ids=["redis-7-script", "redis-6-script", "command"],
)
def test_a_refusal_from_inside_a_script_names_the_command(reply):
    """On servers that cannot be asked beforehand (before Redis 7), a refusal names the
    command: the one on the line of inturn's script that the server points at."""
    import redis

    from inturn.backends.redis.store import _backend_error

    said = str(_backend_error(redis.ResponseError(reply), "redis://db:6379/0", "inturn", "app"))
    assert "'app' may not run XADD" in said and "ACL SETUSER app ~inturn:* +xadd" in said, said


def test_a_read_only_replica_is_named_as_such(tmp_path):
    from redis_server import free_port

    server = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(free_port()))
    try:
        result = run_cli("run", "x", "--", "true", INTURN_BACKEND=server.url)
        one_line_error(result, "read-only replica", "primary")
    finally:
        server.stop()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_a_server_that_evicts_keys_is_refused_before_anyone_joins(tmp_path, policy):
    """Under ``allkeys-*`` a full server drops a held line's tickets (the next one then finds
    it empty and starts beside the holder); under ``volatile-*`` the leases of held turns."""
    server = RedisServer(tmp_path / "evicts", "--maxmemory", "64mb", "--maxmemory-policy", policy)
    admin: Any = __import__("redis").Redis.from_url(server.url)
    try:
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        one_line_error(result, "evicts keys", policy, "64", "noeviction")
        assert "ran" not in result.stdout
        with pytest.raises(inturn.BackendError, match="maxmemory-policy noeviction"):
            inturn.Line("x", backend=server.url).acquire()
        assert run_cli("status", INTURN_BACKEND=server.url).returncode == 0  # looking is fine
        assert admin.keys("*") == []  # refused before anything was written
        admin.config_set("maxmemory", 0)  # no limit: nothing is ever evicted
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        assert (result.returncode, result.stdout.split()) == (0, ["ran"]), result.stderr
    finally:
        admin.close()
        server.stop()


@pytest.mark.filterwarnings("ignore:could not leave line")  # refused as they leave, too
def test_a_server_with_no_room_for_more_clients_is_named_as_such(tmp_path):
    """A server at its ``maxclients`` runs, and refuses more connections: one line says so
    and what to do, rather than advising to check that it runs; and threads sharing one
    ``Line`` give up at once, rather than retrying as in an outage without end. It is
    unavailable for now (exit 69): another call may find room once others leave."""
    server = RedisServer(tmp_path / "crowded", "--maxclients", "6")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    fillers: list[Any] = []
    try:
        admin.ping()
        line = inturn.Line("crowded", backend=server.url)
        outcomes: list[str] = []

        def take() -> None:
            try:
                with line.acquire():
                    outcomes.append("held")
            except inturn.InturnError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=take) for _ in range(20)]
        held = line.acquire()  # the others wait behind it, each on a connection of its own
        for thread in threads:
            thread.start()
        until(lambda: len(outcomes) > 0, "some thread refused")
        held.release()
        for thread in threads:
            thread.join(60)  # a hang detector
        assert not any(thread.is_alive() for thread in threads)
        refused = [o for o in outcomes if o != "held"]
        # (A waiter whose lease the server's refusals left unrenewed says it lost its place.)
        unclear = [o for o in refused if "maxclients" not in o and "lost our place" not in o]
        assert refused and unclear == []
        line.close()
        for _ in range(5):  # the rest of the server's room
            fillers.append(__import__("redis").Redis.from_url(server.url))
            fillers[-1].ping()
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        one_line_error(result, "maxclients", code=69)
    finally:
        for client in [admin, *fillers]:
            client.close()
        server.stop()


def test_forget_unused_stops_when_the_server_becomes_unavailable(tmp_path):
    """A server that stops answering part way through is not "a line left as it is": the
    caller is told it is unavailable (exit 69 for ``inturn forget``), not given a warning per
    line and a short list, as if those lines were in use."""
    server = RedisServer(tmp_path / "paused")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    url = server.url + "?lease=1"  # reads and writes give up after 5 s
    try:
        for name in ("a", "b"):
            with inturn.turn(name, backend=url):
                pass
        admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")  # the lines are still read
        with pytest.raises(inturn.ServerUnavailable):
            inturn.forget_unused(backend=url)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        server.stop()


def test_a_server_out_of_memory_is_named_as_such(tmp_path):
    """With ``noeviction`` (the policy inturn asks for), a full server refuses writes: one
    line says it is out of memory and what to do, not the server's words about a script, and
    exit 69, as for a server with no room for more clients: a later run may find room."""
    server = RedisServer(tmp_path / "full", "--maxmemory-policy", "noeviction")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    try:
        admin.set("ballast", b"x" * 4_000_000)
        admin.config_set("maxmemory", "1mb")  # now below what is used: every write fails
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        one_line_error(result, "out of memory", "maxmemory", code=69)
        assert "ran" not in result.stdout
    finally:
        admin.close()
        server.stop()


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        ("Command # 2 (EVALSHA ...) of pipeline caused error: MOVED 6427 10.0.0.2:7002", "Cluster"),
        ("CROSSSLOT Keys in request don't hash to the same slot", "Cluster"),
        ("unknown command 'SCRIPT', with args beginning with: 'EXISTS'", "Sentinel"),
    ],
)
def test_a_cluster_node_or_a_sentinel_is_named_as_such(reply, named):
    """The replies of a Redis Cluster node (a key of another node) and of a Sentinel (no
    scripts), as those servers give them, become one line that says what the URL points at."""
    import redis

    from inturn.backends.redis.store import _backend_error

    said = str(_backend_error(redis.ResponseError(reply), "redis://db:7001/0", "inturn", "default"))
    assert named in said and "point the url at" in said.lower() and "\n" not in said, said


@pytest.mark.parametrize("info", [True, False], ids=["grants", "grants-without-info"])
def test_a_user_with_the_documented_grants_takes_turns(tmp_path, workers, info):
    """The README's ``ACL SETUSER``; without ``+info`` eviction is not checked, nothing else."""
    from inturn.backends.redis.store import GRANTS

    server = RedisServer(tmp_path / "acl")
    try:
        grants = [g for g in GRANTS.split() if info or g != "+info"]
        url = _acl_user(server, "worker", "pw", "~inturn:*", *grants)
        line = inturn.Line("x", backend=url)
        try:
            with line:
                waiter = Worker("x", env=child_env(INTURN_BACKEND=url))
                workers.append(waiter)
                waiter.expect("waiting")
        finally:
            line.close()
        assert waiter.acquired()
        waiter.send()
        assert waiter.wait() == 0
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=url)
        assert (result.returncode, result.stdout.split()) == (0, ["ran"]), result.stderr
        assert run_cli("forget", "x", INTURN_BACKEND=url).returncode == 0
    finally:
        server.stop()


def test_a_waiter_that_may_not_block_is_told_which_grant_is_missing(tmp_path):
    """A common hardening ACL (``+@all -@blocking``) lets a joiner in, then refuses the read
    it waits in: one line naming the grants, exit 2, never a traceback; ``inturn wait`` too."""
    server = RedisServer(tmp_path / "acl")
    line = inturn.Line("x", backend=server.url)
    try:
        url = _acl_user(server, "hardened", "pw", "~inturn:*", "+@all", "-@blocking")
        with line:
            for words in (("run", "x", "--", "echo", "ran"), ("wait", "x")):
                result = run_cli(*words, INTURN_BACKEND=url)
                one_line_error(result, "may not", "+@read")
                assert "ran" not in result.stdout
    finally:
        line.close()
        server.stop()


def test_a_server_that_renamed_info_away_is_used_unchecked(tmp_path):
    """Without ``INFO`` (renamed, as some hardened servers do) eviction cannot be checked: as
    for a user whose ACL denies it, inturn works rather than failing on every join."""
    server = RedisServer(tmp_path / "renamed", "--rename-command", "INFO", "info-for-admins")
    try:
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        assert (result.returncode, result.stdout.split()) == (0, ["ran"]), result.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("command", "renamed"), [("RENAME", '""'), ("XADD", "xadd-for-admins"), ("EVALSHA", '""')]
)
def test_a_server_that_renamed_a_command_inturn_uses_is_refused_before_joining(
    tmp_path, command, renamed
):
    """``rename-command`` (a common hardening step) can rename or disable a command inturn's
    scripts call: let in, a holder could not hand over (``XADD``, so each turn would end as if
    its holder died) and the next holder could not claim a dead one's turn (``RENAME``). It is
    refused before it joins instead: one line naming the command, exit 2, nothing run."""
    server = RedisServer(tmp_path / "renamed", "--rename-command", command, renamed)
    try:
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        one_line_error(result, f"does not know the command {command}", "rename-command")
        assert "ran" not in result.stdout
    finally:
        server.stop()


def test_a_server_that_disabled_eval_is_told_so_too(tmp_path):
    """Without ``EVAL`` the check itself cannot run: the line says scripts do not run, and
    names ``rename-command`` beside the Sentinel it may also be."""
    server = RedisServer(tmp_path / "renamed", "--rename-command", "EVAL", '""')
    try:
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        one_line_error(result, "does not run scripts", "Sentinel", "rename-command")
        assert "ran" not in result.stdout
    finally:
        server.stop()


# A script that keeps Redis busy for this long (TIME advances inside it), in microseconds.
SPIN = (
    "local s = redis.call('TIME') local n repeat n = redis.call('TIME') "
    "until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > tonumber(ARGV[1]) return 1"
)


def test_a_waiter_whose_place_lapses_while_a_script_blocks_the_server_joins_again(tmp_path):
    """A script that runs too long has the server answer everyone else ``BUSY``: an outage,
    not a refusal. The holder's turn is lost (its lease went unrenewed) and its command
    stopped; the waiter's place is lost too, and it joins again and runs, as after any
    outage, rather than giving up with exit 76."""
    server = RedisServer(tmp_path / "busy", "--busy-reply-threshold", "100")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    url = with_parameters(server.url, lease=1)
    looker = inturn.Line("busy", backend=url)
    try:
        holder = Run("busy", "--backend", url)
        holder.running()
        waiter = Run("busy", "--backend", url)
        until(lambda: len(looker.status().waiters) == 1, "the waiter in line")
        admin.eval(SPIN, 0, 2_500_000)  # three leases and more without an answer
        assert holder.wait() == 76
        assert waiter.running().name == "busy"
        assert waiter.finish(0) == 0
        said = waiter.errors()
        assert "lost our place in line 'busy'" in said and "back in line" in said, said
    finally:
        looker.close()
        admin.close()
        server.stop()


def test_a_server_short_of_replicas_is_unavailable_for_now(tmp_path):
    """``min-replicas-to-write`` has the server refuse every write (``NOREPLICAS``) while too
    few replicas are in sync, which lasts until they catch up: a server to try later, one
    line and exit 69, not a setup to fix (exit 2)."""
    server = RedisServer(tmp_path / "replicas", "--min-replicas-to-write", "1")
    try:
        result = run_cli("run", "x", "--", "echo", "ran", INTURN_BACKEND=server.url)
        one_line_error(result, "NOREPLICAS", "min-replicas-to-write", code=69)
        assert "ran" not in result.stdout
    finally:
        server.stop()


def test_a_waiter_whose_place_lapses_while_replicas_are_missing_joins_again(tmp_path):
    """Replicas that fall out of sync stop every lease renewal: the holder's turn is lost and
    its command stopped (exit 76); the waiter's place is lost too, and it joins again once
    the server takes writes, as after any outage, rather than giving up with exit 2."""
    server = RedisServer(tmp_path / "replicas")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    url = with_parameters(server.url, lease=1)
    looker = inturn.Line("short", backend=url)
    try:
        holder = Run("short", "--backend", url)
        holder.running()
        waiter = Run("short", "--backend", url)
        until(lambda: len(looker.status().waiters) == 1, "the waiter in line")
        admin.config_set("min-replicas-to-write", 1)
        assert holder.wait() == 76
        until(lambda: not looker.status().waiters, "the waiter's lease gone")
        admin.config_set("min-replicas-to-write", 0)
        assert waiter.running().name == "short"
        assert waiter.finish(0) == 0
        said = waiter.errors()
        assert "lost our place in line 'short'" in said and "back in line" in said, said
    finally:
        looker.close()
        admin.close()
        server.stop()


@pytest.mark.parametrize("how", ["removed", "refused"])
def test_a_lost_turn_says_why_when_the_server_told(tmp_path, how):
    """A turn lost although the server answered says what it answered: its lease gone (an
    eviction, a FLUSHALL, a DEL) or its renewal refused (an ACL), not that the server is
    unreachable, which sends whoever reads it to look at the network."""
    server = RedisServer(tmp_path / "told")
    admin: Any = __import__("redis").Redis.from_url(server.url)
    try:
        url = server.url
        if how == "refused":
            url = _acl_user(server, "norenew", "pw", "~inturn:*", "+@all")
        holder = Run("told", "--backend", with_parameters(url, lease=1))
        holder.running()
        if how == "refused":  # taken away during the turn: a user without it cannot join
            admin.execute_command("ACL", "SETUSER", "norenew", "-pexpire")
        if how == "removed":
            (lease,) = [key for key in admin.scan_iter(match="*:lease:*")]
            admin.delete(lease)
        assert holder.wait() == 76
        said = holder.errors()
        why = "no longer had its lease" if how == "removed" else "refused to renew its lease"
        assert f"lost the turn in line 'told' (Redis {why}" in said, said
        assert "unreachable" not in said
    finally:
        admin.close()
        server.stop()
