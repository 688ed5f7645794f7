"""Read-mostly: 8 readers and 1 writer take turns on one lock, every contender in one run.

    .venv/bin/python benchmarks/readers.py            # full run: a table per measure, targets
    .venv/bin/python benchmarks/readers.py --quick    # short run (a few seconds)

Also part of ``benchmarks/run.py`` (its "Read-mostly" sections and targets). This module
prints only; ``run.py`` writes ``RESULTS.md``.

Each reader and the writer is its own ``worker.py`` process. At one common start time every
process takes its fixed number of turns on its own: a random pause, the request, the grant,
a short hold (asleep: simulated work that leaves the two cores to the others), the release.
Readers ask for a shared turn, the writer for an exclusive one. Each process stamps every
turn with ``time.monotonic_ns()`` (one clock for the whole machine on Linux) and reports the
stamps only after its last turn, so nothing but the lock is timed. From those stamps alone:

* throughput: turns per second from the common start to the last release;
* waits: request to grant, for the writer and for the readers;
* fairness: pairs in which a writer was still waiting when a reader that asked after it was
  let in (and the same for readers behind later writers);
* an observer's check: no writer turn overlaps any other turn, and how many readers held at
  once (both from the grant and release stamps, which lie inside the real holds).

"Asked after it" needs an arrival time. For inturn it is the moment the waiter reported that it
is in line (``on_progress``), or its grant when it did not wait: its order is that of the
tickets it takes when it joins, a few tens of microseconds after the call, and a process can be
preempted in between. The other contenders keep no line, so their arrival is the call itself.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from common import (
    Section,
    Target,
    Worker,
    WorkerFailed,
    command_env,
    lock_folder,
    machine_summary,
    markdown_table,
    median,
    ms,
    percentile,
    ratio,
    start_workers,
    targets_table,
)
from locks import RW_HOW, RW_KINDS, RW_LABELS, RW_OPTIONAL, shared_unavailable

LIBRARIES = ("inturn", "fasteners", "filelock")
# Contenders whose waiters say when they are in line (see the module's docstring).
REPORTS_LINE = {"inturn", "inturn-exclusive"}


@dataclass(frozen=True)
class Workload:
    """Who takes how many turns, how long each holds, and how long each pauses before asking.

    Times are in microseconds, each drawn uniformly from its (low, high) range per turn.
    """

    readers: int
    rounds: int  # turns per process (every reader and the writer)
    repeats: int  # runs per contender, contenders rotated between them
    reader_hold: tuple[int, int] = (1000, 2000)
    writer_hold: tuple[int, int] = (3000, 3000)
    pause: tuple[int, int] = (0, 2000)

    def describe(self) -> str:
        def span(low: int, high: int) -> str:
            return f"{low / 1e3:g} ms" if low == high else f"{low / 1e3:g}-{high / 1e3:g} ms"

        return (
            f"{self.readers} reader processes and 1 writer process, {self.rounds} turns each "
            f"({self.repeats} run{'s' if self.repeats > 1 else ''} per contender); "
            f"a reader holds {span(*self.reader_hold)}, the writer {span(*self.writer_hold)}, "
            f"and each pauses {span(*self.pause)} before it asks again"
        )


FULL = Workload(readers=8, rounds=100, repeats=3)
QUICK = Workload(readers=8, rounds=40, repeats=1)


@dataclass(frozen=True)
class Stamps:
    """One turn, from the process's own clock: asked, in line (0 if not told), let in, done."""

    writer: bool
    requested: int
    inline: int
    granted: int
    released: int

    @property
    def wait(self) -> int:
        return self.granted - self.requested


@dataclass(frozen=True)
class Run:
    """One run of the workload: its start and every process's turns."""

    start: int
    turns: tuple[Stamps, ...]

    @property
    def seconds(self) -> float:
        return (max(t.released for t in self.turns) - self.start) / 1e9

    @property
    def throughput(self) -> float:
        return len(self.turns) / self.seconds


@dataclass
class ReadersResults:
    workload: Workload
    kinds: list[str] = field(default_factory=list)  # every contender asked for, in table order
    runs: dict[str, list[Run]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # kind: why it was not measured


# --------------------------------------------------------------------------- measuring


def run_once(kind: str, folder: str, workers: Sequence[Worker], plan: Workload, seed: int) -> Run:
    """Every worker takes its turns from one start time; their stamps, as one ``Run``."""
    for worker in workers:
        worker.send("shared", kind, folder)
        worker.expect("using")
    start = time.monotonic_ns() + 200_000_000  # time enough for every command to arrive
    pause = plan.pause
    for index, worker in enumerate(workers):
        writer = index == len(workers) - 1
        hold = plan.writer_hold if writer else plan.reader_hold
        mode = "write" if writer else "read"
        worker.send("rounds", mode, plan.rounds, *hold, *pause, start, seed * 1000 + index)
    # Only a hang is an error: a writer kept waiting by readers still gets in once they are done.
    limit = 60 + plan.rounds * 2.0
    turns = []
    failed: WorkerFailed | None = None
    for index, worker in enumerate(workers):
        writer = index == len(workers) - 1
        try:
            groups = worker.expect("rounds", timeout=limit)
        except WorkerFailed as exc:  # read every other report first, so all stay in step
            failed = failed or exc
            continue
        for group in groups:
            requested, inline, granted, released = map(int, group.split(","))
            turns.append(Stamps(writer, requested, inline, granted, released))
    if failed is not None:
        raise failed
    return Run(start, tuple(turns))


def measure(
    plan: Workload,
    folder: str,
    workers: Sequence[Worker],
    rng: random.Random,
    kinds: Sequence[str] = RW_KINDS,
    progress: bool = False,
) -> ReadersResults:
    """Run the workload ``plan.repeats`` times for every contender that can run here.

    ``workers`` must hold at least ``plan.readers + 1`` ready workers; the last one of the
    first ``plan.readers + 1`` is the writer. Contenders take turns between repeats, each
    starting from a rotated order, so that a slow minute of the machine does not fall on one.
    """
    results = ReadersResults(plan, list(kinds))
    team = workers[: plan.readers + 1]
    if len(team) < plan.readers + 1:
        raise ValueError(f"need {plan.readers + 1} workers, got {len(team)}")
    ready = []
    for kind in kinds:
        reason = shared_unavailable(kind)
        if reason is None:
            ready.append(kind)
            results.runs[kind] = []
        else:
            results.skipped[kind] = reason
    for repeat in range(plan.repeats):
        order = ready[repeat % len(ready) :] + ready[: repeat % len(ready)] if ready else []
        for kind in order:
            if progress:
                print(f"  read-mostly: {RW_LABELS[kind]} (run {repeat + 1})", flush=True)
            try:
                run = run_once(kind, folder, team, plan, rng.randrange(1 << 30))
            except WorkerFailed as exc:  # the others can still run; this one is left out
                ready.remove(kind)
                del results.runs[kind]
                results.skipped[kind] = f"failed: {exc}"
                continue
            results.runs[kind].append(run)
    return results


# --------------------------------------------------------------------------- figures


def arrival(kind: str, turn: Stamps) -> int:
    """When ``turn`` was surely in line (see the module's docstring)."""
    if kind in REPORTS_LINE:
        return turn.inline or turn.granted
    return turn.requested


def overtaken(kind: str, run: Run, writer: bool) -> tuple[int, int, int]:
    """Turns of one side (the writer's, or the readers') let in after a turn of the other side
    that arrived later: (such pairs, turns that had at least one, turns of that side)."""
    mine = [t for t in run.turns if t.writer == writer]
    theirs = [t for t in run.turns if t.writer != writer]
    pairs = affected = 0
    for turn in mine:
        since = arrival(kind, turn)
        behind = sum(1 for o in theirs if o.requested > since and o.granted < turn.granted)
        pairs += behind
        affected += behind > 0
    return pairs, affected, len(mine)


def writer_overlaps(run: Run) -> int:
    """Writer turns that overlap any other turn (there is one writer: overlaps are readers)."""
    readers = [t for t in run.turns if not t.writer]
    return sum(
        1
        for w in run.turns
        if w.writer and any(r.granted < w.released and w.granted < r.released for r in readers)
    )


def most_readers_together(run: Run) -> int:
    """The most reader turns held at one moment."""
    events = sorted(
        [(t.granted, 1) for t in run.turns if not t.writer]
        + [(t.released, -1) for t in run.turns if not t.writer]
    )  # at one instant a release (-1) sorts before a grant (+1): touching is not overlapping
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


@dataclass(frozen=True)
class Figures:
    """What one contender's runs came to."""

    throughput: float  # median over the runs, turns per second
    seconds: float  # median length of a run
    writer_waits: list[int]
    reader_waits: list[int]
    writer_behind: tuple[int, int, int]  # summed over the runs: pairs, turns hit, turns
    readers_behind: tuple[int, int, int]
    overlaps: int
    together: int
    told: int  # turns whose waiter said it was in line
    waited_long: int  # turns that waited over 1 ms


def figures(kind: str, runs: list[Run]) -> Figures:
    def total(parts: list[tuple[int, int, int]]) -> tuple[int, int, int]:
        return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))

    return Figures(
        throughput=median(r.throughput for r in runs),
        seconds=median(r.seconds for r in runs),
        writer_waits=[t.wait for r in runs for t in r.turns if t.writer],
        reader_waits=[t.wait for r in runs for t in r.turns if not t.writer],
        writer_behind=total([overtaken(kind, r, writer=True) for r in runs]),
        readers_behind=total([overtaken(kind, r, writer=False) for r in runs]),
        overlaps=sum(writer_overlaps(r) for r in runs),
        together=max(most_readers_together(r) for r in runs),
        told=sum(1 for r in runs for t in r.turns if t.inline),
        waited_long=sum(1 for r in runs for t in r.turns if t.wait > 1_000_000),
    )


# --------------------------------------------------------------------------- report


def build_sections(results: ReadersResults) -> tuple[list[Section], list[Target]]:
    """The read-mostly sections (how, throughput, writer's wait, readers' wait, fairness) and
    their targets."""
    plan = results.workload
    got = {kind: figures(kind, runs) for kind, runs in results.runs.items() if runs}
    sections = [how_section(results)]
    if got:
        sections += measure_sections(plan, got)
    return sections, readers_targets(plan, got)


def how_section(results: ReadersResults) -> Section:
    rows = [
        [RW_LABELS[k], RW_HOW[k] if k in results.runs else f"not measured: {results.skipped[k]}"]
        for k in results.kinds
    ]
    plan = results.workload
    return Section(
        f"Read-mostly: {plan.readers} readers and 1 writer on one lock, how each is called",
        markdown_table(["contender", "reader / writer"], rows),
        f"{plan.describe()}. "
        "Every process takes its turns on its own from one common start and stamps each "
        "(request, grant, release) with `time.monotonic_ns()`; the figures below come from "
        "those stamps only. Holds are sleeps, so the lock is what the processes compete for, "
        "not the two cores. Run alone: `.venv/bin/python benchmarks/readers.py` "
        "(`--quick` for a short run).",
    )


def measure_sections(plan: Workload, got: dict[str, Figures]) -> list[Section]:
    base = got.get("flock")
    rows = []
    for kind, f in got.items():
        rows.append(
            [
                RW_LABELS[kind],
                f"{f.throughput:.0f}",
                ratio(f.throughput, base.throughput) if base else "-",
                f"{f.seconds:.2f} s",
                str(f.together),
                str(f.overlaps),
            ]
        )
    turns = (plan.readers + 1) * plan.rounds
    throughput = Section(
        "Read-mostly: throughput",
        markdown_table(
            [
                "contender",
                "turns per second",
                "vs raw flock",
                f"run of {turns} turns",
                "most readers at once",
                "writer turns overlapping another",
            ],
            rows,
        ),
        "Turns per second from the common start to the last release (median of the runs): "
        "the whole job, including any writer turns left until the readers were done. The last "
        "two columns are the observer's check from the stamps: readers do hold together, and "
        "no writer turn overlaps any other turn.",
    )

    def wait_rows(side: str) -> list[list[str]]:
        table = []
        for kind, f in got.items():
            waits = f.writer_waits if side == "writer" else f.reader_waits
            base_waits = None
            if base:
                base_waits = base.writer_waits if side == "writer" else base.reader_waits
            table.append(
                [
                    RW_LABELS[kind],
                    ms(median(waits)),
                    ms(percentile(waits, 0.9)),
                    ms(max(waits)),
                    ratio(median(waits), median(base_waits)) if base_waits else "-",
                    ratio(max(waits), max(base_waits)) if base_waits else "-",
                ]
            )
        return table

    headers = ["contender", "median", "p90", "worst", "median vs raw flock", "worst vs raw flock"]
    writer = Section(
        f"Read-mostly: the writer's wait, request to grant ({plan.rounds} turns per run)",
        markdown_table(headers, wait_rows("writer")),
        "The kernel's shared `flock` lets a reader in beside other readers even while the "
        "writer waits, so with readers always coming the writer waits until they pause all at "
        "once or are done; a poller (fasteners) only gets in between readers by luck. A "
        "first-come, first-served writer waits only for the readers that asked before it.",
    )
    readers = Section(
        f"Read-mostly: the readers' wait, request to grant ({plan.readers} x {plan.rounds} "
        "turns per run)",
        markdown_table(headers, wait_rows("readers")),
        "A reader that asks while the writer holds or waits waits for the writer's turn; one "
        "that asks while only readers hold or wait joins them.",
    )

    rows = []
    for kind, f in got.items():
        pairs, hit, total = f.writer_behind
        r_pairs, r_hit, r_total = f.readers_behind
        if kind in REPORTS_LINE:
            since = f"in line ({f.told} turns said so; {f.waited_long} waited over 1 ms)"
        else:
            since = "the call"
        rows.append(
            [
                RW_LABELS[kind],
                str(pairs),
                f"{hit} of {total}",
                str(r_pairs),
                f"{r_hit} of {r_total}",
                since,
            ]
        )
    fairness = Section(
        "Read-mostly: fairness, turns given out of arrival order",
        markdown_table(
            [
                "contender",
                "later readers let in before a waiting writer",
                "writer turns so overtaken",
                "later writer turns let in before a waiting reader",
                "reader turns so overtaken",
                "arrival",
            ],
            rows,
        ),
        "A pair counts when a turn of one side was still waiting while a turn of the other "
        "side that asked after it was let in (summed over the runs). inturn's arrival is the "
        "moment its waiter said it was in line (or its grant, when it did not wait): its order "
        "is that of the tickets taken on joining, a few tens of microseconds after the call. "
        "The others keep no line, so theirs is the call itself. Without those reports "
        "(no turn said so though some waited) no inversion of inturn's could be seen, and its "
        "target says it cannot tell.",
    )
    return [throughput, writer, readers, fairness]


def readers_targets(plan: Workload, got: dict[str, Figures]) -> list[Target]:
    """inturn's read-mostly targets: no turn out of arrival order, checked exclusion, sharing.

    No speed target: how much throughput strict order costs depends on the workload (each
    writer turn makes the readers behind it wait), and the peers it could be held to are not
    first come, first served.
    """
    who = f"read-mostly, {plan.readers} readers + 1 writer"
    f = got.get("inturn")
    if f is None:
        return [Target(f"0 fairness inversions ({who})", "not measured", "0", False)]
    inverted = f.writer_behind[0] + f.readers_behind[0]
    overlaps, together = f.overlaps, f.together
    if f.waited_long and not f.told:  # no arrival stamps: no inversion could be seen
        fair = Target(f"0 fairness inversions ({who})", "cannot tell (no arrivals)", "0", False)
    else:
        fair = Target(f"0 fairness inversions ({who})", str(inverted), "0", inverted == 0)
    return [
        fair,
        Target(
            "Writer never holds beside another turn (observer)", str(overlaps), "0", not overlaps
        ),
        Target("Readers share the turn (most at once)", str(together), ">= 2", together >= 2),
    ]


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random holds")
    parser.add_argument(
        "--only",
        help=f"comma-separated contenders to run (of {', '.join((*RW_KINDS, *RW_OPTIONAL))})",
    )
    parser.add_argument(
        "--with-exclusive",
        action="store_true",
        help="also run inturn with every turn exclusive, to show what sharing buys",
    )
    args = parser.parse_args()
    kinds = list(RW_KINDS)
    if args.only:
        kinds = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in RW_LABELS]
        if unknown:
            parser.error(
                f"unknown contender {unknown[0]!r}: use {', '.join((*RW_KINDS, *RW_OPTIONAL))}"
            )
    if args.with_exclusive and "inturn-exclusive" not in kinds:
        kinds.append("inturn-exclusive")
    plan = QUICK if args.quick else FULL
    for line in machine_summary(LIBRARIES):
        print(line)
    clock = time.monotonic()
    folder = lock_folder()
    workers: list[Worker] = []
    try:
        workers = start_workers(plan.readers + 1, command_env())
        results = measure(plan, folder, workers, random.Random(args.seed), kinds, progress=True)
    finally:
        for worker in workers:
            worker.close()
        shutil.rmtree(folder, ignore_errors=True)
    sections, targets = build_sections(results)
    for section in sections:
        print(f"\n{section.title}\n{section.table}")
    print(f"\nTargets\n{targets_table(targets)}")
    for kind, why in results.skipped.items():
        print(f"\nnot measured: {RW_LABELS[kind]}: {why}")
    print(f"\n(took {time.monotonic() - clock:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
