"""The hand-off at the command line: from the end of one queued command to the start of the next.

    .venv/bin/python benchmarks/cli_handoff.py            # prints the table
    .venv/bin/python benchmarks/cli_handoff.py --quick    # fewer rounds

Two commands take turns in one line, as a shell user runs them:

    inturn run NAME -- sh -c 'echo ready; read go; exec date +%s%N'   # the holder
    inturn run NAME -- date +%s%N                                     # queued behind it

and the same with ``flock FILE ...`` (util-linux), with inturn on a PostgreSQL server
(``--backend postgresql://...``) and on a Redis server (``--backend redis://...``). The
holder's command says ``ready``; the second command is started and counted as queued once
the line shows it waiting (``flock``: once the kernel shows it asleep in the lock); then the
holder's command is told to go, prints the time and ends. The figure is the next command's
printed time minus the holder's: the holder's command ending, its ``inturn`` (or ``flock``)
freeing the turn and exiting, the waiter waking, starting its command and ``date`` starting.
Both ends print ``CLOCK_REALTIME`` in nanoseconds, one clock for the whole machine. Nothing
here sleeps to sequence: pipes and the line's own status do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from common import (
    Section,
    Target,
    command_env,
    markdown_table,
    median,
    ms,
    percentile,
    reachable,
    wait_asleep,
)

import inturn

PG_URL = os.environ.get("INTURN_BENCH_POSTGRES_URL") or os.environ.get(
    "INTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("INTURN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUNDS = 15
QUICK_ROUNDS = 5
LIMIT = 1.1  # the local inturn against flock(1), as the issue measured it
HOLDER = ["sh", "-c", "echo ready; read go; exec date +%s%N"]
NEXT = ["date", "+%s%N"]

LOCAL = "`inturn run` (local folder)"
FLOCK = "`flock(1)` (util-linux)"
POSTGRES = "`inturn run --backend postgresql://...`"
REDIS = "`inturn run --backend redis://...`"


@dataclass
class Results:
    samples: dict[str, list[int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _inturn() -> list[str]:
    script = Path(sys.executable).with_name("inturn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "inturn"]


def _env(folder: str) -> dict[str, str]:
    env = command_env()
    env["INTURN_DIR"] = os.path.join(folder, "lines")
    env.pop("INTURN_BACKEND", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # from compiled bytecode, as installed
    env["PYTHONPYCACHEPREFIX"] = os.path.join(folder, "bytecode")
    return env


def _server_down(url: str) -> str | None:
    parts = urlsplit(url)
    port = parts.port or {"redis": 6379}.get(parts.scheme, 5432)
    if not reachable(parts.hostname or "127.0.0.1", port):
        return f"{parts.scheme} at {parts.hostname}:{port} does not answer"
    return None


def _round(
    holder_argv: list[str], next_argv: list[str], env: dict[str, str], queued: object
) -> int:
    holder = subprocess.Popen(
        holder_argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    waiter = None
    try:
        assert holder.stdin is not None and holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the holder did not start: {holder_argv}")
        waiter = subprocess.Popen(next_argv, env=env, stdout=subprocess.PIPE, text=True)
        assert waiter.stdout is not None
        queued(waiter.pid)  # type: ignore[operator]
        holder.stdin.write("go\n")
        holder.stdin.flush()
        ended = int(holder.stdout.readline())
        started = int(waiter.stdout.readline())
        if holder.wait(30) != 0 or waiter.wait(30) != 0:
            raise RuntimeError("a command failed")
        return started - ended
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _inturn_queued(line: inturn.Line) -> object:
    def queued(pid: int) -> None:
        deadline = time.monotonic() + 30
        while not line.status().waiters:
            if time.monotonic() > deadline:
                raise RuntimeError("the second inturn run never joined the line")
            time.sleep(0.0005)
        wait_asleep(pid)

    return queued


def _flock_queued(pid: int) -> None:
    deadline = time.monotonic() + 30
    while "lock" not in wait_asleep(pid):
        if time.monotonic() > deadline:
            raise RuntimeError("flock never went to sleep in its lock")
        time.sleep(0.0005)


def measure(quick: bool = False, folder: str | None = None, servers: bool = True) -> Results:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    results = Results()
    own = folder is None
    folder = folder or tempfile.mkdtemp(prefix="inturn-cli-handoff-")
    env = _env(folder)
    cli = _inturn()
    try:
        name = f"handoff-{uuid.uuid4().hex[:8]}"
        contenders: dict[str, tuple[list[str], list[str], object]] = {}
        local = inturn.Line(name, directory=env["INTURN_DIR"])
        contenders[LOCAL] = (
            [*cli, "run", "--dir", env["INTURN_DIR"], name, "--", *HOLDER],
            [*cli, "run", "--dir", env["INTURN_DIR"], name, "--", *NEXT],
            _inturn_queued(local),
        )
        flock = shutil.which("flock")
        if flock:
            lock = os.path.join(folder, "flock.lock")
            contenders[FLOCK] = ([flock, lock, *HOLDER], [flock, lock, *NEXT], _flock_queued)
        else:
            results.skipped[FLOCK] = "flock(1) is not installed"
        for label, url in ((POSTGRES, PG_URL), (REDIS, REDIS_URL)):
            down = _server_down(url) if servers else "--no-servers was given"
            if down:
                results.skipped[label] = down
                continue
            try:
                line = inturn.Line(name, backend=url)
                line.status()
            except Exception as exc:  # no client library, a refused login: say so, go on
                results.skipped[label] = f"{type(exc).__name__}: {exc}"
                continue
            contenders[label] = (
                [*cli, "run", "--backend", url, name, "--", *HOLDER],
                [*cli, "run", "--backend", url, name, "--", *NEXT],
                _inturn_queued(line),
            )
        for holder, following, queued in contenders.values():
            _round(holder, following, env, queued)  # warm caches, compile the bytecode
        for _ in range(rounds):  # interleaved, so that load hits every contender alike
            for label, (holder, following, queued) in contenders.items():
                results.samples.setdefault(label, []).append(_round(holder, following, env, queued))
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def report(results: Results) -> tuple[Section, list[Target]]:
    samples = results.samples
    rows = []
    flock = median(samples[FLOCK]) if FLOCK in samples else None
    local = median(samples[LOCAL])
    for label, values in samples.items():
        figure = median(values)
        against = ""
        if label in (LOCAL, FLOCK) and flock:
            against = f"{figure / flock:.2f}x flock(1)"
        elif label not in (LOCAL, FLOCK):
            against = f"{'+' if figure >= local else '-'}{ms(abs(figure - local))} over local"
        rows.append([label, ms(figure), ms(percentile(values, 0.9)), ms(max(values)), against])
    for label, why in results.skipped.items():
        rows.append([label, "-", "-", "-", f"skipped: {why}"])
    section = Section(
        f"Command-line hand-off: end of one queued command to the start of the next "
        f"({len(samples[LOCAL])} rounds each, interleaved)",
        markdown_table(["command", "median", "p90", "max", "against"], rows),
        "`inturn run NAME -- sh -c 'echo ready; read go; exec date +%s%N'` holds the line "
        "while `inturn run NAME -- date +%s%N` waits (counted as queued once the line shows "
        "it waiting and it sleeps; `flock FILE ...` once it sleeps in its lock); the figure "
        "is the next `date` minus the holder's. It includes the holder's inturn noticing its "
        "command's end, freeing the turn and exiting, the waiter waking and starting `date`.",
    )
    targets = []
    if flock:
        targets.append(
            Target(
                f"Command-line hand-off within {LIMIT:g}x flock(1)",
                f"{ms(local)} ({local / flock:.2f}x)",
                f"<= {ms(LIMIT * flock)}",
                local <= LIMIT * flock,
            )
        )
    return section, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds each")
    parser.add_argument("--no-servers", action="store_true", help="the local backend only")
    args = parser.parse_args()
    section, targets = report(measure(args.quick, servers=not args.no_servers))
    print(f"{section.title}\n\n{section.table}\n\n{section.note}")
    for target in targets:
        print(
            f"\n{target.what}: {target.figure} (limit {target.limit}): "
            f"{'met' if target.met else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
