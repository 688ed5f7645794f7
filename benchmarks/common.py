"""Helpers shared by the benchmarks: statistics, worker processes, /proc probes, Markdown.

Every benchmark module (``run.py``, ``servers_postgres.py``, ``servers_redis.py``) builds on
these, so that all figures are taken and printed the same way. A worker is a ``worker.py``
process steered through its stdin and read through its stdout, one line per step, so the
harness always knows where it stands.
"""

from __future__ import annotations

import contextlib
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "worker.py"
SHM = "/dev/shm"


# --------------------------------------------------------------------------- statistics


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Iterable[float], fraction: float) -> float:
    """The value below which ``fraction`` of the samples lie (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return float(ordered[index])


def inversions(order: Sequence[int]) -> int:
    """Pairs served out of arrival order: ``order`` lists arrival indexes in serving order."""
    return sum(1 for i, a in enumerate(order) for b in order[i + 1 :] if a > b)


# --------------------------------------------------------------------------- formatting


def us(ns: float) -> str:
    return f"{ns / 1e3:.1f} us"


def ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms" if ns < 1e8 else f"{ns / 1e6:.0f} ms"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table, also readable as plain text in a terminal."""
    text = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, text)]
    )


@dataclass(frozen=True)
class Section:
    """One measure in the report: a title, its table, and a note on how to read it."""

    title: str
    table: str
    note: str = ""


@dataclass(frozen=True)
class Target:
    """A target of the project: what, inturn's figure, the limit, and whether it was met."""

    what: str
    figure: str
    limit: str
    met: bool


def targets_table(targets: Sequence[Target]) -> str:
    return markdown_table(
        ["target (medians of this run)", "inturn", "limit", "result"],
        [[t.what, t.figure, t.limit, "met" if t.met else "**MISSED**"] for t in targets],
    )


# --------------------------------------------------------------------------- the machine


def library_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def file_system(path: str) -> str:
    """The file system type of ``path`` (from /proc/mounts), e.g. ``tmpfs``."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for row in Path("/proc/mounts").read_text().splitlines():
            fields = row.split()
            mount = fields[1]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best
            ):
                best, kind = mount, fields[2]
    return kind


def machine_summary(libraries: Sequence[str]) -> list[str]:
    """Bullet lines: cores, CPU, kernel, Python, library versions, load."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{name} {library_version(name)}" for name in libraries)
    return [
        f"CPU: {usable} usable cores of {os.cpu_count()} ({cpu_model()})",
        f"Kernel: {platform.system()} {platform.release()} ({platform.machine()})",
        f"Python: {platform.python_implementation()} {platform.python_version()}",
        f"Libraries: {versions}",
        f"Load average at the start (1, 5, 15 min): {load}",
    ]


def lock_folder() -> str:
    """A fresh folder for every lock file, on tmpfs (``/dev/shm``) when there is one: every
    contender on the file system that costs least. inturn's default, ``/tmp``, is tmpfs on
    some systems and a disk on others; the uncontended cycle is measured on a disk too."""
    shm = SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else None
    return tempfile.mkdtemp(prefix="inturn-bench-", dir=shm)


def disk_folder() -> str:
    """A fresh folder on a disk file system, as the issue's uncontended figures were taken:
    beside the benchmarks when the system's temporary folder is tmpfs."""
    base = tempfile.gettempdir()
    if file_system(base) == "tmpfs":
        base = str(HERE)
    return tempfile.mkdtemp(prefix="inturn-bench-disk-", dir=base)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP server answers at ``host:port`` (for server benchmarks to check first)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- /proc


def proc_state(pid: int) -> tuple[str, str]:
    """The process's scheduler state (``R``, ``S``, ...) and the kernel function it sleeps in."""
    with open(f"/proc/{pid}/stat") as stat:
        state = stat.read().rsplit(")", 1)[1].split()[0]
    try:
        with open(f"/proc/{pid}/wchan") as wchan:
            where = wchan.read().strip()
    except OSError:
        where = "?"
    return state, where


def wait_asleep(pid: int, timeout: float = 10.0) -> str:
    """Return once ``pid`` sleeps in the kernel; the function it sleeps in (``wchan``).

    Workers report ``trying`` just before they call acquire and do nothing else that sleeps
    until it returns, so a sleeping worker is one blocked in its lock (or in a poller's pause).
    """
    deadline = time.monotonic() + timeout
    while True:
        state, where = proc_state(pid)
        if state in ("S", "D") and where not in ("", "0"):
            return where
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker {pid} did not go to sleep (state {state}, wchan {where})")
        time.sleep(0.0002)


# --------------------------------------------------------------------------- workers


class WorkerFailed(RuntimeError):
    """The worker reported ``error ...``: it is still in step and can take the next command."""


class Worker:
    """A ``worker.py`` process: ``send`` a command, ``expect`` its next report."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def send(self, *words: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, kind: str, timeout: float = 120.0) -> list[str]:
        """The next report, which must start with ``kind``: its words after the first."""
        words = self._readline(timeout).split()
        if not words or words[0] != kind:
            raise RuntimeError(f"worker {self.pid}: expected {kind!r}, got {' '.join(words)!r}")
        return words[1:]

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"worker {self.pid} said nothing for {timeout:g}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"worker {self.pid} exited (code {self.proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode()
        if text.startswith("error "):
            raise WorkerFailed(f"worker {self.pid}: {text[6:]}")
        return text

    def use(self, kind: str, folder: str) -> None:
        """Switch to contender ``kind``; the worker takes it once, so it must be free."""
        self.send("use", kind, folder)
        self.expect("using")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def start_workers(count: int, env: dict[str, str] | None = None) -> list[Worker]:
    """Start ``count`` workers at once and return when all are ready."""
    started = [Worker(env) for _ in range(count)]
    for worker in started:
        worker.expect("ready")
    return started


def command_env() -> dict[str, str]:
    """The environment for workers and commands: this checkout's ``src`` importable first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env
