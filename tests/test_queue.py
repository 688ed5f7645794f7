"""The queue across real processes: order, slots, abandonment, timeouts, crashes."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

import inturn

from conftest import Worker


def read_log(path: Path) -> list[list[str]]:
    return [row.split() for row in path.read_text().splitlines()]


def test_twenty_five_waiters_are_served_in_arrival_order(lines_dir, workers, tmp_path):
    log = tmp_path / "log"
    holder = inturn.Line("fifo").acquire()
    tickets = []
    for _ in range(25):
        w = Worker("fifo", "--log", str(log))
        workers.append(w)
        tickets.append(int(w.expect("waiting")[1]))  # queued before the next one starts
    assert tickets == sorted(tickets)
    holder.release()
    for w in workers:
        assert w.wait() == 0
    entered = [int(r[1]) for r in read_log(log) if r[0] == "enter"]
    assert entered == tickets
    assert not [r for r in read_log(log) if r[0] == "overlap"]
    assert list(lines_dir.joinpath("fifo").glob("*.ticket")) == []


def test_slots_let_n_hold_at_once_and_keep_order(lines_dir, workers):
    line = inturn.Line("render", slots=2)
    first, second = line.acquire(), line.acquire()
    queued = []
    for _ in range(4):  # each joins before the next starts, so arrival order is known
        w = Worker("render", "--slots", "2", "--hold")
        workers.append(w)
        w.expect("waiting")
        queued.append(w)
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


def test_a_holder_killed_with_sigkill_is_reported_as_abandoned(lines_dir, workers):
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
    # After a clean release the next holder is not told anything.
    with inturn.turn("crash") as turn:
        assert not turn.abandoned
        assert turn.ticket > int(ticket)


def test_a_killed_waiter_loses_its_place_and_the_one_behind_moves_up(lines_dir, workers):
    holder = inturn.Line("gap").acquire()
    doomed = Worker("gap")
    workers.append(doomed)
    doomed.expect("waiting")
    behind = Worker("gap", "--hold")
    workers.append(behind)
    behind.expect("waiting")
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.wait()
    # The one behind wakes, sees the holder still there and goes back to sleep on it.
    assert behind.expect("waiting")[2] == "2"
    holder.release()
    _, _, abandoned, _ = behind.acquired()
    assert abandoned == "0"  # a dead *waiter* abandons nothing
    behind.send()
    assert behind.wait() == 0


def test_timeout_leaves_the_line_and_those_behind_move_up(lines_dir, workers):
    holder = inturn.Line("slow").acquire()
    impatient = Worker("slow", "--timeout", "0.3")
    workers.append(impatient)
    impatient.expect("waiting")
    patient = Worker("slow", "--hold")
    workers.append(patient)
    patient.expect("waiting")
    impatient.expect("timeout")
    assert impatient.wait() == 75
    assert patient.expect("waiting")[2] == "2"
    assert [t.pid for t in inturn.Line("slow").status().waiters] == [patient.pid]
    holder.release()
    patient.acquired()
    patient.send()
    assert patient.wait() == 0


def test_no_wait_raises_busy_naming_the_holder(lines_dir):
    with inturn.turn("solo") as held:
        try:
            inturn.Line("solo").acquire(blocking=False)
        except inturn.Busy as exc:
            assert f"pid {os.getpid()}" in str(exc)
            assert exc.status is not None and exc.status.holders[0].number == held.ticket
        else:
            raise AssertionError("expected Busy")
        assert inturn.Line("solo").status().waiters == ()


def test_sigkill_storm_never_overlaps_and_serves_survivors_in_order(lines_dir, workers, tmp_path):
    log = tmp_path / "log"
    rng = random.Random(1234)
    count = 44
    victims = rng.sample(range(count), 11)
    hold_victims = set(victims[:5])  # killed while holding the turn
    wait_victims = set(victims[5:])  # killed while waiting in line
    gate = inturn.Line("storm").acquire()
    started: list[tuple[int, Worker]] = []
    for index in range(count):
        mode = ["--hold"] if index in hold_victims else ["--work", "0.002"]
        w = Worker("storm", "--log", str(log), *mode)
        workers.append(w)
        started.append((int(w.expect("waiting")[1]), w))
    for index in sorted(wait_victims):
        started[index][1].proc.send_signal(signal.SIGKILL)
    gate.release()
    for index in sorted(hold_victims):
        ticket, w = started[index]
        assert int(w.acquired()[1]) == ticket
        w.proc.send_signal(signal.SIGKILL)
    codes = {ticket: w.wait() for ticket, w in started}
    rows = read_log(log)
    assert not [r for r in rows if r[0] == "overlap"], rows
    survivors = [t for i, (t, _) in enumerate(started) if i not in victims]
    assert all(codes[t] == 0 for t in survivors)
    entered = [int(r[1]) for r in rows if r[0] == "enter"]
    exited = [int(r[1]) for r in rows if r[0] == "exit"]
    assert sorted(exited) == survivors  # every survivor ran to the end
    assert entered == sorted(entered)  # and everyone who got in, got in ticket order
    # Nothing left behind: no tickets, and the next holder collects any abandonment.
    with inturn.turn("storm"):
        pass
    folder = lines_dir / "storm"
    assert sorted(p.name for p in folder.iterdir()) == [".line", ".name"]


def voluntary_switches_and_cpu(pid: int) -> tuple[int, int]:
    """Context switches a process's threads made by going to sleep, and its CPU clock ticks."""
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for row in (task / "status").read_text().splitlines():
            if row.startswith("voluntary_ctxt_switches:"):
                switches += int(row.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return switches, int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("options", [(), ("--timeout", "600")], ids=["forever", "timeout"])
def test_a_waiter_sleeps_without_waking_up(lines_dir, workers, options):
    """A poller wakes tens of times a second; a waiter in line must not wake at all."""
    holder = inturn.Line("idle").acquire()
    waiter = Worker("idle", *options)
    workers.append(waiter)
    waiter.expect("waiting")
    # These pauses are observation windows, not synchronisation: the first lets the waiter
    # settle into its sleep, the second is the span in which it must not wake up.
    time.sleep(0.5)
    before = voluntary_switches_and_cpu(waiter.pid)
    time.sleep(1.5)
    after = voluntary_switches_and_cpu(waiter.pid)
    assert after[0] - before[0] <= 1, f"woke {after[0] - before[0]} times while waiting"
    assert after[1] - before[1] <= 1, f"used {after[1] - before[1]} CPU ticks while waiting"
    holder.release()
    waiter.acquired()
    assert waiter.wait() == 0


@pytest.mark.parametrize("options", [(), ("--timeout", "600")], ids=["forever", "timeout"])
def test_ctrl_c_ends_a_wait_and_leaves_the_line(lines_dir, workers, options):
    holder = inturn.Line("intr").acquire()
    interrupted = Worker("intr", *options)
    workers.append(interrupted)
    interrupted.expect("waiting")
    behind = Worker("intr", "--hold")
    workers.append(behind)
    behind.expect("waiting")
    interrupted.proc.send_signal(signal.SIGINT)
    interrupted.expect("interrupted")
    assert interrupted.wait() == 130
    assert behind.expect("waiting")[2] == "2"  # moved up behind the holder
    assert [t.pid for t in inturn.Line("intr").status().waiters] == [behind.pid]
    holder.release()
    behind.acquired()
    behind.send()
    assert behind.wait() == 0
