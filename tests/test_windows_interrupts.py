"""Ctrl-C in the middle of a Windows join, release or ``single_instance`` start, in a process
that lives on (a REPL, a notebook, a service): as on POSIX (``test_interrupts.py``), nothing
is left behind. Real Windows CPython processes under Wine (see ``test_windows.py``).

Wine starts slowly, so one Windows process (``windows/wininterrupts.py``) runs every case,
each on a line of its own, and looks for leftovers itself: threads that own a ticket's mutex
or listen, ticket files, named pipes, a mutex it took and kept, a line another thread cannot
take. While it lives on, a second Windows process takes every line within a bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "windows"))

import test_windows  # noqa: E402
from test_windows import Win  # noqa: E402
from wine import windows_path  # noqa: E402

wine = test_windows.wine  # the Wine fixtures: one Windows Python per test worker
win = test_windows.win

SCRIPT = windows_path(HERE / "windows" / "wininterrupts.py")

JOINS = ["owner-starting", "tidying", "membership-made", "guard-taken", "guard-taken-timed"]
WAITS = ["ahead-gone", "ahead-judged-dead"]
RELEASES = ["leave-before-mutex", "leave-before-record", "leave-twice"]
INSTANCES = [
    "instance-pipe-made",
    "instance-take-turn",
    "instance-listener",
    "instance-handed-over",
    "instance-listening",
]


def test_an_interrupt_anywhere_leaves_nothing_behind(win: Win) -> None:
    cases = [*JOINS, *WAITS, *RELEASES, *INSTANCES]
    survivor = win.start(SCRIPT, *cases)
    found = {}
    for _ in cases:
        _, case, line, *verdict = survivor.expect("case")
        found[case] = (line, " ".join(verdict))
    survivor.expect("done")
    checker = win.start(SCRIPT, "--check", *(line for line, _ in found.values()))
    code, out, err = checker.finish()
    assert code == 0, err
    survivor.send()
    assert survivor.wait() == 0
    for case, (_, verdict) in found.items():
        print(case, verdict)
    assert {case: verdict for case, (_, verdict) in found.items()} == dict.fromkeys(cases, "ok")
    assert sorted(out.split("\n")) == sorted(f"free {line}" for line, _ in found.values())
