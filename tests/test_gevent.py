"""gevent: a program whose threads are greenlets (``monkey.patch_all()``, as gevent's servers
run) takes turns on a local line without stopping its other greenlets, and so without
waiting for itself: a greenlet asleep in line while the holder is another greenlet of the
same process used to stop the whole process for ever."""

from __future__ import annotations

import select
import subprocess
import sys

import pytest

import inturn

from conftest import REPORT_TIMEOUT, child_env, missing_component
from observer import crowds, read_intervals

try:
    import gevent  # noqa: F401  (only whether it is here)
except ImportError as exc:
    missing_component(f"gevent is not installed ({exc})", "pip install -e '.[test]'")

GREENLETS = 20

# Every greenlet joins a line that the test holds; the main greenlet goes on running while
# they wait (it reports so), then they take the turn one after another, recorded by the
# observer, the holder of each a greenlet that the next one waits for.
PROGRAM = """
from gevent import monkey

monkey.patch_all()

import sys

import gevent

import inturn
from observer import Recorder

folder, log, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
recorder = Recorder(log)


def one(who):
    with inturn.turn("green", directory=folder):
        with recorder.inside(who):
            gevent.sleep(0.001)  # the other greenlets run while this one holds


greenlets = [gevent.spawn(one, f"g{n}") for n in range(count)]
line = inturn.Line("green", directory=folder)
while len(line.status().waiters) < count:
    gevent.sleep(0.005)
print("all waiting, and the main greenlet runs", flush=True)
gevent.joinall(greenlets, raise_error=True)
print("done", flush=True)
"""


def read_line(child: subprocess.Popen[str]) -> str:
    """The child's next line of output, or a failure if it says nothing in time (hung)."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], REPORT_TIMEOUT)
    if not ready:
        child.kill()
        pytest.fail("the gevent program stopped: a greenlet in line blocked every other one")
    return child.stdout.readline().strip()


def test_greenlets_wait_their_turn_without_stopping_the_others(tmp_path):
    folder, log = tmp_path / "lines", tmp_path / "stays"
    holder = inturn.Line("green", directory=folder).acquire()
    argv = [sys.executable, "-c", PROGRAM, str(folder), str(log), str(GREENLETS)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env()) as child:
        try:
            assert read_line(child) == "all waiting, and the main greenlet runs"
            holder.release()
            assert read_line(child) == "done"
            assert child.wait(REPORT_TIMEOUT) == 0
        finally:
            holder.release()
            if child.poll() is None:
                child.kill()
    stays = read_intervals(log)
    assert len(stays) == GREENLETS
    assert not crowds(stays, 1), "two greenlets held the turn at once"
    line = inturn.Line("green", directory=folder)
    assert not line.status().holders and not line.status().waiters
