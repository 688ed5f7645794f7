"""Shared fixtures: a private lines folder per test, and workers driven through pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


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
        self.expect("started")

    def expect(self, *kinds: str, skip: tuple[str, ...] = ()) -> list[str]:
        """The next report, which must be one of ``kinds`` (reports in ``skip`` are passed over)."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            words = line.split()
            if not (words and words[0] in skip):
                break
        exit_code = self.proc.poll()
        assert words and words[0] in kinds, f"expected {kinds}, got {line!r} (exit {exit_code})"
        return words

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
