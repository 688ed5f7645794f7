"""Measure inturn against raw flock, filelock, portalocker and fasteners, in one run.

    .venv/bin/python benchmarks/run.py            # full run, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick    # short smoke run, prints only

Each measure prints a table as it finishes; the full run also writes ``benchmarks/RESULTS.md``
with the machine, the command, every table and the targets of the project (met or missed).

Contended measures run across real processes (``worker.py``), steered through pipes. A waiter
is only counted as queued once it has said it is calling acquire *and* the kernel shows it
asleep (``/proc/PID/stat`` state and ``wchan``); inturn waiters also report that they are in
line through ``on_progress``. Before each hand-off or kill the holder keeps the lock for a
random 0-250 ms more, so that pollers are caught at every point of their retry cycle.

Command-line hand-off (``cli_handoff.py``, also runnable alone): from the end of one queued
``inturn run`` command to the start of the next, against ``flock(1)``, and on the server
backends against the local one.

Read-mostly (``readers.py``, also runnable alone): 8 reader processes and 1 writer process
take their turns on one lock, readers shared and the writer exclusive, for inturn
(``shared=True``), fasteners' ``InterProcessReaderWriterLock``, filelock's ``ReadWriteLock``
(when the installed filelock has it) and raw ``flock(LOCK_SH / LOCK_EX)``: throughput, the
writer's and the readers' waits, and turns given out of arrival order.

Server backends: each module of ``SERVER_SUITES`` (``servers_postgres.py``,
``servers_redis.py``) has a ``measure() -> str`` (a Markdown section; it may accept
``quick: bool``) that is called when its servers answer, and the section included; the
targets it measured, left in its module's ``targets`` list, join the targets table. Its
servers are the ``*_URL`` strings it defines, unless it has an ``unavailable() -> str | None``
that says why not. When a server does not answer, ``measure()`` fails or ``--no-servers`` is
given, the section says so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import inspect
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import cli_handoff
import readers
from common import (
    HERE,
    ROOT,
    Section,
    Target,
    Worker,
    command_env,
    disk_folder,
    file_system,
    inversions,
    lock_folder,
    machine_summary,
    markdown_table,
    median,
    ms,
    percentile,
    ratio,
    reachable,
    start_workers,
    targets_table,
    us,
    wait_asleep,
)
from locks import FLOORS, HOW, KINDS, LABELS, REPORTS_ABANDONED, open_contender

LIBRARIES = ("inturn", "filelock", "portalocker", "fasteners")


@dataclass(frozen=True)
class Plan:
    """How many samples each measure takes."""

    cycles: int  # uncontended acquire+release cycles per contender
    handoffs: int  # hand-offs per contender
    cpu_rounds: int  # 3 s waits per contender
    wait_seconds: float
    fifo_waiters: int
    drain_waiters: int
    kills: int  # SIGKILLed holders per contender
    cli_runs: int  # runs of each command
    read_mostly: readers.Workload  # the readers-and-writer workload (readers.py)
    phase: float = 0.25  # the holder keeps the lock up to this much longer, at random


FULL = Plan(
    cycles=6000,
    handoffs=60,
    cpu_rounds=3,
    wait_seconds=3.0,
    fifo_waiters=20,
    drain_waiters=100,
    kills=12,
    cli_runs=40,
    read_mostly=readers.FULL,
)
QUICK = Plan(
    cycles=600,
    handoffs=5,
    cpu_rounds=1,
    wait_seconds=3.0,
    fifo_waiters=10,
    drain_waiters=30,
    kills=3,
    cli_runs=8,
    read_mostly=readers.QUICK,
)


@dataclass
class Results:
    cycle: dict[str, list[int]] = field(default_factory=dict)  # lock files where all others are
    cycle_disk: dict[str, list[int]] = field(default_factory=dict)  # on a disk file system
    disk: str = ""  # which file system and folder
    shm: str = "tmpfs"  # the same for the other lock files
    handoff: dict[str, list[int]] = field(default_factory=dict)
    slept_in: dict[str, set[str]] = field(default_factory=dict)
    cpu: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (cpu ns, wait ns)
    fifo: dict[str, list[int]] = field(default_factory=dict)  # arrival indexes, serving order
    drain: dict[str, tuple[int, list[int]]] = field(default_factory=dict)  # (total ns, order)
    kill: dict[str, list[tuple[int, bool | None]]] = field(default_factory=dict)
    cli: dict[str, list[int]] = field(default_factory=dict)
    cli_cpu: dict[str, list[int]] = field(default_factory=dict)
    cli_load: float = 0.0  # load average (1 min) right after the command-start runs
    cli_labels: tuple[str, str] = ("", "")
    read_mostly: readers.ReadersResults | None = None
    cli_handoff: cli_handoff.Results | None = None


# --------------------------------------------------------------------------- measures


def measure_cycles(plan: Plan, folder: str, cycles: dict[str, list[int]]) -> None:
    """Uncontended acquire + release in this process, contenders interleaved in rounds (the
    floors of ``locks.py`` right after raw flock)."""
    locks = {kind: open_contender(kind, folder) for kind in (KINDS[0], *FLOORS, *KINDS[1:])}
    clock = time.perf_counter_ns
    rounds = 5
    for _ in range(rounds):
        for kind, lock in locks.items():
            for _ in range(max(20, plan.cycles // 50)):  # warm the caches of this contender
                lock.acquire()
                lock.release()
            samples = cycles.setdefault(kind, [])
            for _ in range(plan.cycles // rounds):
                start = clock()
                lock.acquire()
                lock.release()
                samples.append(clock() - start)


def _acquire_held(worker: Worker) -> None:
    worker.send("acquire")
    worker.expect("trying")
    worker.expect("acquired")


def _start_waiting(worker: Worker, kind: str) -> tuple[int, str]:
    """Wait until a worker told to acquire is queued (asleep in it); its start and wchan."""
    started = int(worker.expect("trying")[0])
    if kind == "inturn":
        worker.expect("queued")
    return started, wait_asleep(worker.pid)


def measure_handoffs(
    plan: Plan, folder: str, pair: list[Worker], rng: random.Random, results: Results
) -> None:
    """Holder's release to the waiter's return, two processes taking the lock in turn; the
    floors (``TicketFloor``, ``RangeFloor``) right after raw flock."""
    for kind in (KINDS[0], *FLOORS, *KINDS[1:]):
        holder, waiter = pair
        for worker in pair:
            worker.use(kind, folder)
        _acquire_held(holder)
        samples = results.handoff.setdefault(kind, [])
        slept = results.slept_in.setdefault(kind, set())
        for _ in range(plan.handoffs):
            waiter.send("acquire")
            slept.add(_start_waiting(waiter, kind)[1])
            time.sleep(rng.uniform(0, plan.phase))
            holder.send("release")
            released = int(holder.expect("released")[0])
            acquired = int(waiter.expect("acquired")[0])
            samples.append(acquired - released)
            holder, waiter = waiter, holder
        holder.send("release")
        holder.expect("released")


def measure_cpu(plan: Plan, folder: str, pool: list[Worker], results: Results) -> None:
    """A waiter's own CPU time over a wait of ``wait_seconds``; every contender at once."""
    for _ in range(plan.cpu_rounds):
        pairs = {kind: (pool[2 * i], pool[2 * i + 1]) for i, kind in enumerate(KINDS)}
        for kind, (holder, waiter) in pairs.items():
            holder.use(kind, folder)
            waiter.use(kind, folder)
            _acquire_held(holder)
        started = {}
        for kind, (_, waiter) in pairs.items():
            waiter.send("acquire")
            started[kind] = _start_waiting(waiter, kind)[0]
        time.sleep(plan.wait_seconds)
        for holder, _ in pairs.values():
            holder.send("release")
        for kind, (holder, waiter) in pairs.items():
            holder.expect("released")
            words = waiter.expect("acquired")
            waited = int(words[0]) - started[kind]
            results.cpu.setdefault(kind, []).append((int(words[2]), waited))
            waiter.send("release")
            waiter.expect("released")


def queue_and_drain(
    kind: str,
    folder: str,
    holder: Worker,
    waiters: list[Worker],
    gaps: Callable[[], float] | None = None,
) -> tuple[int, list[int]]:
    """Queue ``waiters`` one by one behind ``holder``, free the lock, let them all pass.

    Each waiter starts once the previous one is queued, plus ``gaps()`` seconds if given.
    Returns the time from the holder's release to the last waiter's return, and the arrival
    indexes of the waiters in the order they were served.
    """
    for worker in [holder, *waiters]:
        worker.use(kind, folder)
    _acquire_held(holder)
    for worker in waiters:
        worker.send("cycle")
        _start_waiting(worker, kind)  # the next one starts only once this one is queued
        if gaps is not None:
            time.sleep(gaps())
    holder.send("release")
    released = int(holder.expect("released")[0])
    served = []
    for worker in waiters:
        served.append(int(worker.expect("acquired")[0]))
        worker.expect("released")
    order = sorted(range(len(waiters)), key=served.__getitem__)
    return max(served) - released, order


def measure_queues(
    plan: Plan, folder: str, pool: list[Worker], rng: random.Random, results: Results
) -> None:
    """FIFO order of ``fifo_waiters``, then the drain of ``drain_waiters``, per contender.

    FIFO waiters arrive 0-250 ms apart, as real ones do: queued back to back, all within one
    retry interval, pollers would retry in arrival order and look first come, first served.
    """
    for kind in KINDS:
        _, order = queue_and_drain(
            kind,
            folder,
            pool[0],
            pool[1 : plan.fifo_waiters + 1],
            gaps=lambda: rng.uniform(0, plan.phase),
        )
        results.fifo[kind] = order
        results.drain[kind] = queue_and_drain(
            kind, folder, pool[0], pool[1 : plan.drain_waiters + 1]
        )


def measure_kills(
    plan: Plan, folder: str, waiter: Worker, rng: random.Random, results: Results
) -> None:
    """SIGKILL the holder; time until the queued waiter's acquire returns."""
    env = command_env()
    for kind in KINDS:
        waiter.use(kind, folder)
        holders = start_workers(plan.kills, env)
        samples = results.kill.setdefault(kind, [])
        try:
            for holder in holders:
                holder.use(kind, folder)
                _acquire_held(holder)
                waiter.send("acquire")
                _start_waiting(waiter, kind)
                time.sleep(rng.uniform(0, plan.phase))
                killed = time.monotonic_ns()
                os.kill(holder.pid, signal.SIGKILL)
                words = waiter.expect("acquired")
                told = None if words[1] == "-" else words[1] == "1"
                samples.append((int(words[0]) - killed, told))
                waiter.send("release")
                waiter.expect("released")
                holder.proc.wait()
        finally:
            for holder in holders:
                holder.kill()
                holder.close()


def modules_imported(argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules a Python command imports, each after those it imports.

    ``argv`` is this interpreter and its arguments, or a script this interpreter runs.
    """
    arguments = argv[1:] if argv[0] == sys.executable else argv
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", *arguments],
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ).stderr
    lines = (line.split("|") for line in traced.splitlines() if line.startswith("import time:"))
    return [fields[2].strip() for fields in lines if fields[0].split(":")[1].strip().isdigit()]


def measure_cli(plan: Plan, folder: str, results: Results) -> None:
    """Whole-command wall time: ``inturn run NAME -- true`` against ``python -c pass``."""
    env = command_env()
    env["INTURN_DIR"] = os.path.join(folder, "cli")
    env.pop("INTURN_BACKEND", None)
    # Run from compiled bytecode, as an installed package does: with PYTHONDONTWRITEBYTECODE
    # set, every module edited since its last compile would be compiled again at each start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(folder, "bytecode")
    script = Path(sys.executable).with_name("inturn")
    inturn = [str(script)] if script.exists() else [sys.executable, "-m", "inturn"]
    python_label = "`python -c pass`"
    inturn_label = f"`{'inturn' if script.exists() else 'python -m inturn'} run NAME -- true`"
    commands = {
        python_label: [sys.executable, "-c", "pass"],
        inturn_label: [*inturn, "run", "bench-cli", "--", "true"],
    }
    imported = modules_imported(commands[inturn_label], env)
    bare_start = set(modules_imported(commands[python_label], env))
    wanted = [m for m in imported if m not in bare_start]
    standard = [m for m in wanted if m.partition(".")[0] != "inturn"]
    commands[
        f"`python -c 'import ...'`, the {len(standard)} standard-library modules "
        "`inturn run` imports (for reference)"
    ] = [sys.executable, "-c", "import " + ", ".join(standard)]
    flock = shutil.which("flock")
    if flock:
        commands["`flock FILE true` (util-linux, for reference)"] = [
            flock,
            os.path.join(folder, "cli.lock"),
            "true",
        ]
    results.cli_labels = (python_label, inturn_label)

    def run(argv: list[str]) -> tuple[int, int]:
        """Wall time and CPU time (user + system, the command and its children), in ns."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter_ns()
        subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter_ns() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return wall, round(cpu * 1e9)

    for argv in commands.values():
        run(argv)  # warm the page cache and compile the bytecode
    names = list(commands)
    for i in range(plan.cli_runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            wall, cpu = run(commands[name])
            results.cli.setdefault(name, []).append(wall)
            results.cli_cpu.setdefault(name, []).append(cpu)
    results.cli_load = os.getloadavg()[0]


# --------------------------------------------------------------------------- servers


DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379}


SERVER_SUITES = ("servers_postgres", "servers_redis")


def unreachable_servers(module: object) -> str | None:
    """Why the servers of a server suite cannot be used, or None.

    Its own ``unavailable()`` decides when it has one; otherwise every ``*_URL`` string it
    defines (``PG_URL``, ``REDIS_URL``, ...) must answer on its host and port.
    """
    unavailable: Callable[[], str | None] | None = getattr(module, "unavailable", None)
    if unavailable is not None:
        return unavailable()
    missing = []
    for name in sorted(vars(module)):
        url = getattr(module, name)
        if not (name.endswith("_URL") and isinstance(url, str) and "://" in url):
            continue
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        if parts.hostname and port and not reachable(parts.hostname, port):
            missing.append(f"{parts.scheme} at {parts.hostname}:{port} ({name}) does not answer")
    return "; ".join(missing) or None


def measure_servers(quick: bool, enabled: bool, targets: list[Target]) -> str:
    """The sections of every server suite, or notes saying why one was skipped or failed;
    the targets a suite measured (its module's ``targets`` list) are added to ``targets``."""
    return "\n\n".join(
        measure_server_suite(name, quick, enabled, targets) for name in SERVER_SUITES
    )


def measure_server_suite(name: str, quick: bool, enabled: bool, targets: list[Target]) -> str:
    heading = f"## Server backends (`benchmarks/{name}.py`)\n\n"
    if not enabled:
        return heading + "Skipped: `--no-servers` was given."
    try:
        suite = importlib.import_module(name)
        reason = unreachable_servers(suite)
        if reason:
            return heading + f"Skipped: {reason}."
        measure: Callable[..., str] = suite.measure
        if "quick" in inspect.signature(measure).parameters:
            section = measure(quick=quick)
        else:
            section = measure()
        targets.extend(getattr(suite, "targets", []))
        return section
    except Exception as exc:  # the local results stay; the section says what went wrong
        traceback.print_exc()
        return heading + f"Failed: `{name}.measure()` raised {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- report


def build_report(plan: Plan, results: Results) -> tuple[list[Section], list[Target]]:
    """Titled Markdown tables, one per measure, and the targets with their verdicts."""
    sections: list[Section] = []
    targets: list[Target] = []
    for where, cycles in ((results.disk, results.cycle_disk), (results.shm, results.cycle)):
        base = median(cycles["flock"])
        rows = [
            [LABELS[k], us(median(v)), us(percentile(v, 0.9)), ratio(median(v), base)]
            for k, v in cycles.items()
        ]
        sections.append(
            Section(
                f"Uncontended acquire + release, lock files on {where} (one process, "
                f"{plan.cycles} cycles each)",
                markdown_table(["contender", "median", "p90", "vs raw flock"], rows),
                "Per cycle inturn creates, locks, writes and removes its ticket file, takes "
                "the line's short guard lock for the ticket number and lists the line's "
                "folder; raw flock opens, locks and closes one file. On a disk file system "
                "creating and removing a file is dearer than on tmpfs (inturn's default "
                "folders are in `/tmp`, a disk on some systems and tmpfs on others). The two "
                "floors make only the system calls of such a cycle (the ticket floor: inturn's "
                "design; the byte-range floor: one file per line with a byte range per "
                "ticket), from plain Python with nothing around them: the rest of inturn's "
                "figure is its own code.",
            )
        )
    cycle = {k: median(v) for k, v in results.cycle_disk.items()}
    targets.append(
        Target(
            "Uncontended cycle (lock files on disk) as fast as portalocker's",
            us(cycle["inturn"]),
            f"<= {us(cycle['portalocker'])}",
            cycle["inturn"] <= cycle["portalocker"],
        )
    )
    targets.append(
        Target(
            "Uncontended cycle (lock files on disk) no slower than filelock's",
            us(cycle["inturn"]),
            f"<= {us(cycle['filelock'])}",
            cycle["inturn"] <= cycle["filelock"],
        )
    )

    base = median(results.handoff["flock"])
    rows = [
        [
            LABELS[k],
            ms(median(v)),
            ms(percentile(v, 0.9)),
            ms(max(v)),
            ratio(median(v), base),
            ", ".join(sorted(results.slept_in[k])),
        ]
        for k, v in results.handoff.items()
    ]
    sections.append(
        Section(
            f"Hand-off latency: holder's release to waiter's return ({plan.handoffs} each)",
            markdown_table(
                ["contender", "median", "p90", "max", "vs raw flock", "waiter slept in (wchan)"],
                rows,
            ),
            "The holder keeps the lock 0-250 ms after the waiter sleeps. inturn's holder "
            "removes its ticket before unlocking it (two system calls where raw flock makes "
            "one), and the woken waiter checks that the ticket it waited for is gone and "
            "records that it holds the turn before returning. The ticket floor makes just "
            "those system calls, from plain Python with nothing around them: what a design "
            "with a file per ticket that tells a death from a release costs at the least, "
            "against what inturn's own code adds. The byte-range floor does the same with "
            "one file per line and a byte range per ticket (a state byte written before the "
            "range is unlocked tells the release from a death).",
        )
    )
    handoff = median(results.handoff["inturn"])
    targets.append(
        Target(
            "Hand-off within 2x raw flock",
            ms(handoff),
            f"<= {ms(2 * base)}",
            handoff <= 2 * base,
        )
    )

    rows = []
    for k, waits in results.cpu.items():
        cpu = median(c for c, _ in waits)
        longest = max(c for c, _ in waits)
        rows.append([LABELS[k], ms(cpu), ms(longest), f"{median(w for _, w in waits) / 1e9:.2f} s"])
    sections.append(
        Section(
            f"Waiter CPU time over a {plan.wait_seconds:g} s wait ({plan.cpu_rounds} each, "
            "from the waiter's own getrusage)",
            markdown_table(["contender", "median CPU", "max CPU", "median wait"], rows),
            "CPU time of the whole waiting acquire call (joining the line, waiting, waking), "
            "measured by the waiter process itself.",
        )
    )
    cpu = median(c for c, _ in results.cpu["inturn"])
    targets.append(
        Target(
            f"Waiter CPU under 1 ms per {plan.wait_seconds:g} s wait",
            ms(cpu),
            "< 1.00 ms",
            cpu < 1e6,
        )
    )

    pairs = plan.fifo_waiters * (plan.fifo_waiters - 1) // 2
    rows = [
        [LABELS[k], f"{inversions(v)} of {pairs}", " ".join(map(str, v))]
        for k, v in results.fifo.items()
    ]
    sections.append(
        Section(
            f"FIFO: {plan.fifo_waiters} waiters arriving one after another, then freed",
            markdown_table(
                ["contender", "inversions", "arrival number of each, in serving order"], rows
            ),
            "Each waiter starts once the previous one is queued (asleep in the kernel; inturn "
            "waiters also report it), plus a random 0-250 ms. Raw flock and portalocker "
            "(blocking) get their order from the Linux kernel's wake-up order, which no "
            "standard promises; inturn gets it from its ticket numbers.",
        )
    )
    fifo = inversions(results.fifo["inturn"])
    targets.append(
        Target(f"0 FIFO inversions ({plan.fifo_waiters} waiters)", str(fifo), "0", fifo == 0)
    )

    n = plan.drain_waiters
    pairs = n * (n - 1) // 2
    base = results.drain["flock"][0] / n
    rows = [
        [
            LABELS[k],
            ms(total / n),
            ms(total),
            ratio(total / n, base),
            f"{inversions(order)} of {pairs}",
        ]
        for k, (total, order) in results.drain.items()
    ]
    sections.append(
        Section(
            f"Drain: {n} queued waiters, each takes the lock and gives it back at once",
            markdown_table(
                [
                    "contender",
                    "mean hand-off",
                    "release to last return",
                    "vs raw flock",
                    "inversions",
                ],
                rows,
            ),
            "Waiters are queued back to back (each once the previous one sleeps), so pollers "
            "that arrived within one retry interval also retry in arrival order: the "
            "inversions here understate theirs. Mean hand-off = release to last return / "
            f"{n}.",
        )
    )
    drain = results.drain["inturn"][0] / n
    targets.append(
        Target(
            f"Drain ({n} waiters) mean hand-off within 2x raw flock",
            ms(drain),
            f"<= {ms(2 * base)}",
            drain <= 2 * base,
        )
    )

    base = median(t for t, _ in results.kill["flock"])
    rows = []
    for k, v in results.kill.items():
        told = [a for _, a in v]
        if k not in REPORTS_ABANDONED:
            said = "cannot tell"
        else:
            said = f"{sum(1 for a in told if a)} of {len(told)}"
        times = [t for t, _ in v]
        rows.append(
            [LABELS[k], ms(median(times)), ms(max(times)), ratio(median(times), base), said]
        )
    sections.append(
        Section(
            f"Crash: SIGKILL of the holder to the next holder's return ({plan.kills} each)",
            markdown_table(["contender", "median", "max", "vs raw flock", "told abandoned"], rows),
            "From `kill(SIGKILL)` in the harness to the waiter's return: includes the kernel "
            "tearing the killed process down. Only inturn can tell the next holder.",
        )
    )
    kills = results.kill["inturn"]
    recovery = median(t for t, _ in kills)
    told_all = all(a for _, a in kills)
    targets.append(
        Target("Crash recovery within 5 ms", ms(recovery), "<= 5.00 ms", recovery <= 5e6)
    )
    targets.append(
        Target(
            "Crash reported as abandoned",
            f"{sum(1 for _, a in kills if a)} of {len(kills)}",
            "all",
            told_all,
        )
    )

    python_label, inturn_label = results.cli_labels
    bare = median(results.cli[python_label])
    bare_cpu = median(results.cli_cpu[python_label])
    rows = [
        [
            name,
            ms(median(v)),
            ms(percentile(v, 0.9)),
            ms(median(v) - bare),
            ms(median(results.cli_cpu[name])),
            ms(median(results.cli_cpu[name]) - bare_cpu),
        ]
        for name, v in results.cli.items()
    ]
    sections.append(
        Section(
            f"Command start: whole-command wall time ({plan.cli_runs} runs each, interleaved, "
            "from compiled bytecode)",
            markdown_table(
                [
                    "command",
                    "median wall",
                    "p90 wall",
                    "wall more than python",
                    "median CPU",
                    "CPU more than python",
                ],
                rows,
            ),
            "The Python commands run from compiled bytecode (a private `PYTHONPYCACHEPREFIX`), as "
            "an installed package does; `PYTHONDONTWRITEBYTECODE` would otherwise make Python "
            "compile every edited module again at each start. CPU is user + system time of "
            "the command and its children (`RUSAGE_CHILDREN`), which load on a shared machine "
            "disturbs far less than wall time. The standard-library row imports in one "
            "`python -c` the modules of Python's own library that `inturn run` imports and "
            "`python -c pass` does not (found with `-X importtime` in this run): the start "
            "`inturn run` would have if its own modules and work cost nothing. Load average "
            f"(1 min) right after these runs: {results.cli_load:.2f}.",
        )
    )
    extra = median(results.cli[inturn_label]) - bare
    targets.append(
        Target(
            "`inturn run` adds at most 15 ms to a bare interpreter start",
            ms(extra),
            "<= 15.00 ms",
            extra <= 15e6,
        )
    )
    if results.cli_handoff is not None:
        section, more = cli_handoff.report(results.cli_handoff)
        sections.append(section)
        targets += more
    if results.read_mostly is not None:
        more_sections, more_targets = readers.build_sections(results.read_mostly)
        sections += more_sections
        targets += more_targets
    return sections, targets


def write_results(
    path: Path,
    command: str,
    started: datetime.datetime,
    seconds: float,
    machine: list[str],
    folder_kind: str,
    sections: list[Section],
    targets: list[Target],
    servers: str,
) -> None:
    missed = [t for t in targets if not t.met]
    if missed:
        verdict = "Missed: " + "; ".join(f"{t.what}: {t.figure} (limit {t.limit})" for t in missed)
    else:
        verdict = "Every target was met."
    how = markdown_table(
        ["contender", "acquire / release"], [[LABELS[k], HOW[k]] for k in (*KINDS, *FLOORS)]
    )
    parts = [
        "# Benchmark results",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{command}` (took {seconds:.0f} s). "
        "Figures are medians of this one run unless the column says otherwise; the machine is "
        "shared, so expect noise between runs.",
        "",
        "## Machine",
        "",
        *(f"- {line}" for line in machine),
        f"- Lock files: one folder on {folder_kind} for every contender",
        "",
        "## Targets",
        "",
        targets_table(targets),
        "",
        verdict,
        "",
        "Where the time goes, system call by system call: [profile.md](profile.md).",
        "",
        "## How each contender is called",
        "",
        "Each opens its lock file on acquire and closes it on release. Waiters are queued one at "
        "a time: the next starts only once the kernel shows the previous one asleep in its "
        "lock or its poll pause (`/proc/PID/wchan`); inturn waiters also report through "
        "`on_progress`. Before each hand-off or kill the holder keeps the lock a random "
        "0-250 ms more, so that pollers are caught at every point of their retry cycle. "
        "Times across processes come from `time.monotonic_ns()`, one clock for the whole "
        "machine on Linux.",
        "",
        how,
        "",
    ]
    for section in sections:
        parts += [f"## {section.title}", "", section.table, ""]
        if section.note:
            parts += [section.note, ""]
    parts += [servers.rstrip(), ""]
    path.write_text("\n".join(parts))


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run; writes nothing")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the results (default benchmarks/RESULTS.md; --quick writes "
        "only when this is given)",
    )
    parser.add_argument("--no-servers", action="store_true", help="skip the server backends")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random holds")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else HERE / "RESULTS.md")
    rng = random.Random(args.seed)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    machine = machine_summary(LIBRARIES)
    for line in machine:
        print(line)
    folder = lock_folder()
    results = Results()
    pool: list[Worker] = []

    def step(title: str) -> None:
        print(f"[{time.monotonic() - clock:5.1f}s] {title}", flush=True)

    try:
        results.shm = f"{file_system(os.path.dirname(folder))} ({os.path.dirname(folder)})"
        step(f"uncontended cycles on {results.shm}")
        measure_cycles(plan, folder, results.cycle)
        disk = disk_folder()
        try:
            results.disk = f"{file_system(disk)} ({os.path.dirname(disk)})"
            step(f"uncontended cycles on {results.disk}")
            measure_cycles(plan, disk, results.cycle_disk)
        finally:
            shutil.rmtree(disk, ignore_errors=True)
        step("command start")
        measure_cli(plan, folder, results)
        step("command-line hand-off (inturn run, flock(1), server backends)")
        results.cli_handoff = cli_handoff.measure(args.quick, folder, not args.no_servers)
        step(f"starting {plan.drain_waiters + 1} worker processes")
        pool = start_workers(
            max(plan.drain_waiters + 1, 2 * len(KINDS), plan.read_mostly.readers + 1),
            command_env(),
        )
        step("hand-offs")
        measure_handoffs(plan, folder, pool[:2], rng, results)
        step("waiter CPU")
        measure_cpu(plan, folder, pool, results)
        step("FIFO and drain")
        measure_queues(plan, folder, pool, rng, results)
        step("crash recovery")
        measure_kills(plan, folder, pool[0], rng, results)
        step("read-mostly: readers and a writer")
        results.read_mostly = readers.measure(plan.read_mostly, folder, pool, rng, progress=True)
    finally:
        for worker in pool:
            worker.close()
        shutil.rmtree(folder, ignore_errors=True)
    step("server backends")
    server_targets: list[Target] = []
    servers = measure_servers(args.quick, not args.no_servers, server_targets)
    seconds = time.monotonic() - clock

    sections, targets = build_report(plan, results)
    targets += server_targets
    for section in sections:
        print(f"\n{section.title}\n{section.table}")
    print(f"\n{servers}\n\nTargets\n{targets_table(targets)}")
    if output is not None:
        command = ".venv/bin/python benchmarks/run.py" + (" --quick" if args.quick else "")
        folder_kind = f"{file_system(os.path.dirname(folder))} ({os.path.dirname(folder)})"
        write_results(
            output, command, started, seconds, machine, folder_kind, sections, targets, servers
        )
        shown = output.resolve()
        with contextlib.suppress(ValueError):
            shown = shown.relative_to(ROOT)
        print(f"\nwrote {shown} ({seconds:.0f} s)")
    else:
        print(f"\n(--quick: nothing written; took {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
