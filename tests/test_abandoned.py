"""Exactly one holder is told ``abandoned``: the one that took the dead holder's place.

Whatever looks (``inturn status``) and liveness probes happen while a holder dies, the next
holder is told, with the dead one's record, and nobody after it is. On the local backend a
look or a probe is a short ``flock(LOCK_SH)`` on the dead ticket; the worst case of one is a
shared lock taken the moment the holder dies and kept, which the first test makes certain.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import inturn

from conftest import REPORT_TIMEOUT, Worker, child_env

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and flock")


def ticket_path(lines_dir: Path, name: str, number: int) -> Path:
    return lines_dir / name / f"{number:012d}.ticket"


HOLD_SHARED = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # granted the moment the holder's exclusive lock goes
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


def test_a_look_holding_the_dead_ticket_does_not_move_the_notice(lines_dir, workers):
    holder = Worker("look", "--hold")
    workers.append(holder)
    ticket = int(holder.expect("acquired")[1])
    first = Worker("look", "--hold")
    workers.append(first)
    first.expect("waiting")
    second = Worker("look", "--hold")
    workers.append(second)
    second.expect("waiting")
    # The first waiter is made slow to wake (SIGSTOP), so that the observer certainly holds
    # its shared lock on the dead ticket before that waiter looks: what a status look or a
    # probe does when its timing is the worst possible.
    first.proc.send_signal(signal.SIGSTOP)
    observer = subprocess.Popen(
        [sys.executable, "-c", HOLD_SHARED, str(ticket_path(lines_dir, "look", ticket))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.proc.send_signal(signal.SIGKILL)
        holder.wait()
        assert observer.stdout is not None
        assert observer.stdout.readline() == "locked\n"
        first.proc.send_signal(signal.SIGCONT)
        _, _, abandoned, dead = first.acquired()
        assert (abandoned, dead) == ("1", str(holder.pid)), "the next holder was not told"
        first.send()
        _, _, abandoned, dead = second.acquired()
        assert abandoned == "0", f"told the holder after the next one (dead pid {dead})"
        second.send()
        assert second.wait() == 0
    finally:
        first.proc.send_signal(signal.SIGCONT)
        observer.kill()
        observer.wait(REPORT_TIMEOUT)
        for stream in (observer.stdin, observer.stdout):
            if stream is not None:
                stream.close()
    with inturn.turn("look") as later:  # the look has ended: still nobody else is told
        assert not later.abandoned, later.abandoned_by


# --------------------------------------------------------------------------- looks in a loop

LOOKER = textwrap.dedent(
    """
    import contextlib, fcntl, io, os, select, sys
    kind, name = sys.argv[1], sys.argv[2]
    looks = 0

    def status():
        from inturn.cli import main
        for args in (["status", name], ["status", "--json", name], ["status"]):
            with contextlib.redirect_stdout(io.StringIO()):
                main(args)

    def probe():
        folder = os.path.join(os.environ["INTURN_DIR"], name)
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.endswith(".ticket"):
                try:
                    fd = os.open(os.path.join(folder, entry), os.O_RDONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                finally:
                    os.close(fd)

    look = status if kind == "status" else probe
    print("looking", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        look()
        looks += 1
    print("looks", looks, flush=True)
    """
)


@pytest.fixture
def looker(processes: list[subprocess.Popen[str]]) -> list[subprocess.Popen[str]]:
    return processes


def start_looking(
    started: list[subprocess.Popen[str]], kind: str, name: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOKER, kind, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the warnings of a look at a line in flux
        text=True,
        env=env,
    )
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "looking\n"
    return proc


def stop_looking(proc: subprocess.Popen[str]) -> int:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    words = proc.stdout.readline().split()
    assert words[:1] == ["looks"], words
    proc.wait(REPORT_TIMEOUT)
    return int(words[1])


DEATHS = 4


def line_up(name: str, env: dict[str, str], workers: list[Worker]) -> list[Worker]:
    """A holder and ``DEATHS`` waiters behind it, in that order, each holding once in."""
    chain: list[Worker] = []
    for _ in range(DEATHS + 1):
        w = Worker(name, "--hold", env=env)
        workers.append(w)
        w.expect("waiting" if chain else "acquired")
        chain.append(w)
    return chain


def kill_in_turn(chain: list[Worker]) -> None:
    """Each holder is SIGKILLed in turn; each next one must be told, with the dead one's pid."""
    told = []
    for dead, heir in itertools.pairwise(chain):
        dead.proc.send_signal(signal.SIGKILL)
        dead.wait()
        _, _, abandoned, dead_pid = heir.acquired()
        told.append((abandoned, dead_pid))
    chain[-1].send()
    assert chain[-1].wait() == 0
    assert told == [("1", str(w.pid)) for w in chain[:-1]]


def test_every_death_is_told_once_to_the_next_holder_while_status_looks(where, workers, looker):
    chain = line_up("deaths", where.crash_env(), workers)
    proc = start_looking(looker, "status", "deaths", child_env())
    kill_in_turn(chain)
    assert stop_looking(proc) > 0
    with inturn.turn("deaths") as later:
        assert not later.abandoned, later.abandoned_by


def test_every_death_is_told_once_to_the_next_holder_while_probes_run(lines_dir, workers, looker):
    chain = line_up("probed", child_env(), workers)
    proc = start_looking(looker, "probe", "probed", child_env())
    kill_in_turn(chain)
    assert stop_looking(proc) > 0
    with inturn.turn("probed") as later:
        assert not later.abandoned, later.abandoned_by


# --------------------------------------------------------------------------- claims and joins

JOIN_ONCE = textwrap.dedent(
    """
    import inturn
    try:
        inturn.Line("claimed").acquire(blocking=False).release()
        print("held")
    except inturn.Busy:
        print("busy")
    """
)


def test_a_join_during_the_next_holders_claim_does_not_take_the_notice(
    lines_dir, workers, monkeypatch
):
    """The next holder claims the dead one's marker by creating its ``.told``; a process that
    joins right then tidies the line's claimed markers. It must not tidy away a claim still
    being made: the claimer would find the marker gone and nobody would be told. The joiner is
    run, for real, at the moment the claim file has just been made."""
    from inturn.backends.posix import PosixStore

    holder = Worker("claimed", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    holder.proc.send_signal(signal.SIGKILL)
    holder.wait()
    create = PosixStore._create
    joins: list[str] = []

    def create_then_let_one_join(store: PosixStore, entry: str, data: bytes) -> bool:
        made = create(store, entry, data)
        if made and entry.endswith(".told") and not joins:
            joiner = subprocess.run(
                [sys.executable, "-c", JOIN_ONCE],
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=REPORT_TIMEOUT,
                check=True,
            )
            joins.append(joiner.stdout.strip())
        return made

    monkeypatch.setattr(PosixStore, "_create", create_then_let_one_join)
    with inturn.turn("claimed") as turn:
        assert joins == ["busy"], "the joiner did not come during the claim"
        assert turn.abandoned, "the next holder was not told"
        assert turn.abandoned_by is not None and turn.abandoned_by.pid == holder.pid
    monkeypatch.undo()
    assert sorted(p.name for p in (lines_dir / "claimed").iterdir()) == [".line", ".name"]
    with inturn.turn("claimed") as later:
        assert not later.abandoned, later.abandoned_by


def test_a_claim_left_without_its_marker_is_tidied(lines_dir):
    """Whoever tidies a claimed marker removes the marker, then its claim: cut off between
    the two, it leaves a ``.told`` alone, which the next join removes."""
    with inturn.turn("stray"):
        pass
    stray = lines_dir / "stray" / f"{1:012d}.told"
    stray.write_bytes(b"")
    with inturn.turn("stray") as turn:
        assert not turn.abandoned
    assert not stray.exists()


def test_a_newest_wins_waiter_killed_in_line_leaves_no_fifo_behind(lines_dir, workers):
    """A ``newest_wins`` waiter killed in line (no cleanup of its own): the next join
    removes its dead ticket, and the FIFO through which it could be replaced goes with it,
    where it used to stay until the line was forgotten (one more per crash, in ``/tmp`` for
    a machine-wide line)."""
    holder = Worker("kicks", "--hold")
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("kicks", "--newest-wins")
    workers.append(waiter)
    number = int(waiter.expect("waiting", skip=("joining",))[1])
    assert (lines_dir / "kicks" / f"{number:012d}.kick").exists()
    waiter.proc.kill()
    waiter.wait()
    holder.send()
    holder.expect("released")
    with inturn.turn("kicks") as turn:
        assert turn.ticket > number and not turn.abandoned
    assert sorted(p.name for p in (lines_dir / "kicks").iterdir()) == [".line", ".name"]
