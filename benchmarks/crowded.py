"""Machine-wide lines in a crowded folder: what a full ``/tmp`` costs each turn.

    .venv/bin/python benchmarks/crowded.py

A machine-wide line's files lie side by side with everything else in its folder (``/tmp`` by
default: README, "Machine-wide lines between users" says why there is no folder per line), and
each join lists that folder. This measures one process's uncontended acquire + release of a
machine-wide line beside 0, 500 and 5,000 other files, against a per-user line (a folder of
its own) in the same crowded folder. It prints only; it sets no target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from common import file_system, markdown_table, median, ms

import inturn

CYCLES = 300
CROWDS = (0, 500, 5000)


def cycle_ns(line: inturn.Line) -> float:
    """The median of ``CYCLES`` acquire + release cycles of ``line``."""
    times = []
    for _ in range(CYCLES):
        start = time.perf_counter_ns()
        line.acquire().release()
        times.append(time.perf_counter_ns() - start)
    return median(times)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    folder = tempfile.mkdtemp(prefix="inturn-bench-crowded-")
    os.chmod(folder, 0o1777)  # as /tmp
    where = f"{file_system(folder)} ({os.path.dirname(folder)})"
    rows = []
    try:
        present = 0
        for crowd in CROWDS:
            for n in range(present, crowd):
                with open(os.path.join(folder, f"other-{n}"), "w"):
                    pass
            present = crowd
            machine = inturn.Line("crowded", scope="machine", directory=folder)
            mine = inturn.Line("crowded", directory=os.path.join(folder, "mine"))
            rows.append((crowd, ms(cycle_ns(machine)), ms(cycle_ns(mine))))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"Acquire + release, median of {CYCLES} each, one process, a folder on {where}")
    headers = ("other files in the folder", "machine-wide line", "per-user line")
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    sys.exit(main())
