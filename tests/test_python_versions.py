"""Every Python version the package claims (its classifiers), not only the one running the suite.

The rest of the suite runs under one interpreter. Here processes of each other claimed
version take turns beside processes of this one on one line, through the Python API
(threads sharing a ``Line``, asyncio tasks, a decorated function) and the command line, and
the independent observer (``observer.py``) checks that no two were ever inside at once. A
holder of the other version killed inside is reported as abandoned to the next one, so the
two also read each other's records. Interpreters are looked for on ``PATH`` and where pyenv
keeps them; under ``CI=true`` a claimed version that is not found is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    REPORT_TIMEOUT,
    Worker,
    child_env,
    missing_component,
)
from observer import assert_exclusive, command

ROOT = Path(__file__).resolve().parent.parent


def claimed_versions() -> list[str]:
    """The ``3.X`` versions pyproject.toml's classifiers name, oldest first."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text))
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHERS = [v for v in claimed_versions() if v != RUNNING]


def find_python(version: str) -> str | None:
    """An interpreter of ``version``: ``pythonX.Y`` on PATH, else pyenv's newest of it."""
    candidates = []
    if found := shutil.which(f"python{version}"):
        candidates.append(found)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        releases = sorted(
            pyenv.glob(f"{version}.*"),
            key=lambda p: [int(n) if n.isdigit() else -1 for n in p.name.split(".")],
            reverse=True,
        )
        candidates += [str(p / "bin" / f"python{version}") for p in releases]
    for python in candidates:
        try:
            said = subprocess.run(
                [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except OSError:
            continue
        if said.stdout.strip() == version:
            return python
    return None


@pytest.fixture(params=OTHERS)
def other_python(request: pytest.FixtureRequest) -> str:
    version: str = request.param
    python = find_python(version)
    if python is None:
        missing_component(
            f"no Python {version} (pyproject.toml claims it)",
            f"install python{version} on PATH or under pyenv",
        )
    return python


# Turns taken in one process three ways at once, each stay recorded for the observer.
TAKER = """
import asyncio, sys, threading
import inturn
from observer import Recorder

name, log, tag, turns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
recorder = Recorder(log)

def stay(who):
    recorder.enter(who)
    recorder.exit(who)

line = inturn.Line(name)

def by_thread(index):
    for turn in range(turns):
        with line:
            stay(f"{tag}-thread{index}-{turn}")

@inturn.turn(name)
def decorated(turn):
    stay(f"{tag}-decorated-{turn}")

async def by_tasks():
    async def task(index):
        for turn in range(turns):
            async with inturn.turn(name):
                stay(f"{tag}-task{index}-{turn}")
    await asyncio.gather(*(task(i) for i in range(2)))

threads = [threading.Thread(target=by_thread, args=(i,)) for i in range(2)]
threads.append(threading.Thread(target=lambda: [decorated(t) for t in range(turns)]))
for thread in threads:
    thread.start()
asyncio.run(by_tasks())
for thread in threads:
    thread.join()
print("done", flush=True)
"""
STAYS_PER_TAKER = 5  # two threads, a decorated function, two tasks


def test_processes_of_both_versions_take_turns_through_the_api_and_the_command(
    other_python: str, lines_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    turns = 6
    pythons = [other_python, sys.executable] * 2
    takers = [
        subprocess.Popen(
            [python, "-c", TAKER, "mixed", str(log), f"p{index}", str(turns)],
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for index, python in enumerate(pythons)
    ]
    runs = [
        subprocess.Popen(
            [python, "-m", "inturn", "run", "mixed", "--", *command(log, who=f"run{i}")],
            env=child_env(),
            stdout=subprocess.DEVNULL,
        )
        for i, python in enumerate(pythons)
    ]
    for taker in takers:
        out, _ = taker.communicate(timeout=REPORT_TIMEOUT)
        assert (taker.returncode, out) == (0, "done\n")
    assert [run.wait(REPORT_TIMEOUT) for run in runs] == [0] * len(runs)
    assert_exclusive(log, 1, expected=len(takers) * turns * STAYS_PER_TAKER + len(runs))
    status = subprocess.run(
        [other_python, "-m", "inturn", "status", "mixed"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=REPORT_TIMEOUT,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "mixed" in status.stdout


@pytest.mark.parametrize("killed_first", ["other", "this"])
def test_a_holder_killed_inside_is_told_to_the_next_whichever_version_each_runs(
    other_python: str, lines_dir: Path, workers: list[Worker], killed_first: str
) -> None:
    first, second = (other_python, sys.executable)
    if killed_first == "this":
        first, second = second, first
    holder = Worker("crash", "--hold", python=first, env=child_env())
    workers.append(holder)
    holder.expect("acquired")
    waiter = Worker("crash", python=second, env=child_env())
    workers.append(waiter)
    waiter.expect("waiting")
    holder.proc.kill()
    holder.proc.wait(REPORT_TIMEOUT)
    words = waiter.acquired()
    assert words[2:] == ["1", str(holder.pid)], words
    waiter.expect("released")
    busy = subprocess.run(
        [other_python, "-m", "inturn", "run", "--no-wait", "crash", "--", "true"],
        env=child_env(),
        capture_output=True,
        timeout=REPORT_TIMEOUT,
        check=False,
    )
    assert busy.returncode == 0, busy.stderr
