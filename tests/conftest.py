"""Shared fixtures: a private lines folder per test, and workers driven through pipes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NoReturn

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def missing_component(reason: str, how_to_enable: str) -> NoReturn:
    """A component a test needs is not here: a failure under ``CI=true``, else a skip.

    CI must never pass by skipping what it was meant to test; a developer without a server
    or Wine gets a skip that says how to enable those tests. Works while collecting, too.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI needs it ({how_to_enable})", pytrace=False)
    pytest.skip(f"{reason}: {how_to_enable}", allow_module_level=True)


@pytest.fixture
def lines_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "lines"
    monkeypatch.setenv("INTURN_DIR", str(folder))
    monkeypatch.delenv("INTURN_BACKEND", raising=False)
    return folder


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# How long a test waits for a report it expects before failing: a hang is a failure, not a
# stuck run. Generous, because the machine may be busy; a passing test never waits this long.
REPORT_TIMEOUT = 120.0


def read_lines(stream: IO[str]) -> queue.Queue[str]:
    """Lines of ``stream`` as they come, read by a thread, so a reader can give up waiting."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # end of stream

    threading.Thread(target=pump, daemon=True).start()
    return lines


class Worker:
    """A ``worker.py`` process; ``expect`` reads its reports in order."""

    def __init__(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env or child_env(),
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self._reports = read_lines(self.proc.stdout)
        self.expect("started")

    def expect(self, *kinds: str, skip: tuple[str, ...] = ()) -> list[str]:
        """The next report, which must be one of ``kinds`` (reports in ``skip`` are passed over)."""
        while True:
            try:
                line = self._reports.get(timeout=REPORT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(
                    f"no report from worker {self.pid}, expected {kinds}"
                ) from None
            words = line.split()
            if not (words and words[0] in skip):
                break
        exit_code = self.proc.poll()
        assert words and words[0] in kinds, f"expected {kinds}, got {line!r} (exit {exit_code})"
        return words

    def remaining(self) -> list[str]:
        """Every report not read yet, once the worker has exited."""
        self.proc.wait(REPORT_TIMEOUT)
        rows = []
        while (line := self._reports.get(timeout=REPORT_TIMEOUT)) != "":
            rows.append(line)
        return rows

    def acquired(self) -> list[str]:
        """Wait for the turn; a waiter may go back to sleep a few times first."""
        return self.expect("acquired", skip=("waiting",))

    def send(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        for stream in (worker.proc.stdin, worker.proc.stdout):
            if stream is not None:
                stream.close()


def inturn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "inturn", *args]
