"""The queue across real processes: order, slots, abandonment, timeouts, crashes."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

import inturn

from conftest import Worker, read_log


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
