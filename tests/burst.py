"""Many processes that join one line at the same moment, for tests of bursts of starts.

One warm parent (Python started, inturn and the backend's client library imported) forks
COUNT children; each blocks reading a gate pipe; when the test says ``go`` on the parent's
stdin, the parent closes the gate and every child is released at once, without the tens of
milliseconds of interpreter start that would spread real ``inturn`` starts apart. Each
child is a process of its own (its own pid, its own connection to a server).

Usage::

    python burst.py COUNT OUTDIR run ARGS...        # each child is `inturn ARGS` (the CLI)
    python burst.py COUNT OUTDIR api NAME [--shared] [--max-waiting N] [--newest-wins]
                                          [--record LOG]

Reports of the parent on stdout, one line each: ``ready PID...`` (the children, by index),
``go MONOTONIC_NS``, ``exited INDEX PID CODE MONOTONIC_NS`` as each child ends, ``done``.
In ``run`` mode each child's stdout and stderr go to ``OUTDIR/INDEX.out`` and
``OUTDIR/INDEX.err``. In ``api`` mode the children report on the parent's stdout:
``waiting INDEX TICKET POSITION``, ``replaced INDEX NS`` (exit 77), ``busy INDEX MESSAGE``
(exit 75), ``acquired INDEX TICKET NS``, ``error INDEX TEXT`` (exit 99).
A child dies with its parent (``PR_SET_PDEATHSIG``), so a test that kills the parent leaves
nothing behind in line.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence

import inturn
import inturn.cli

EXIT_BUSY, EXIT_REPLACED, EXIT_ERROR = 75, 77, 99


def report(*words: object) -> None:
    """One line, one ``write`` on the shared pipe: lines of many writers never mix."""
    os.write(1, (" ".join(str(w) for w in words) + "\n").encode())


def preload() -> None:
    """Import what a child would import after the gate (the backend's client library)."""
    url = os.environ.get("INTURN_BACKEND", "")
    if url.startswith("postgres"):
        import inturn.backends.postgres.store
    elif url.startswith("redis"):
        import inturn.backends.redis.store
    import inturn.cli.run  # noqa: F401


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(EXIT_ERROR)


def child_run(index: int, outdir: str, args: Sequence[str]) -> int:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, suffix in ((1, "out"), (2, "err")):
        target = os.open(os.path.join(outdir, f"{index}.{suffix}"), os.O_WRONLY | os.O_CREAT)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    return inturn.cli.main(list(args))


def child_api(index: int, args: argparse.Namespace) -> int:
    options: dict[str, object] = {}
    if args.shared:
        options["shared"] = True
    if args.max_waiting is not None:
        options["max_waiting"] = args.max_waiting
    if args.newest_wins:
        options["newest_wins"] = True
    line = inturn.Line(args.name)

    def progress(p: inturn.Progress) -> None:
        report("waiting", index, p.ticket, p.position)

    replaced = getattr(inturn, "Replaced", None)
    try:
        turn = line.acquire(on_progress=progress, **options)  # type: ignore[arg-type]
    except inturn.Busy as exc:
        report("busy", index, str(exc).replace("\n", " "))
        return EXIT_BUSY
    except inturn.InturnError as exc:
        if replaced is not None and isinstance(exc, replaced):
            report("replaced", index, time.monotonic_ns())
            return EXIT_REPLACED
        raise
    report("acquired", index, turn.ticket, time.monotonic_ns())
    if args.record:
        from observer import Recorder

        with Recorder(args.record).inside(f"{turn.ticket}:{os.getpid()}"):
            time.sleep(0.01)  # simulated work, not synchronisation
    turn.release()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("outdir")
    modes = parser.add_subparsers(dest="mode", required=True)
    run = modes.add_parser("run")
    run.add_argument("args", nargs=argparse.REMAINDER)
    api = modes.add_parser("api")
    api.add_argument("name")
    api.add_argument("--shared", action="store_true")
    api.add_argument("--max-waiting", type=int)
    api.add_argument("--newest-wins", action="store_true")
    api.add_argument("--record")
    args = parser.parse_args()
    preload()
    gate_read, gate_write = os.pipe()
    children: dict[int, int] = {}
    for index in range(args.count):
        pid = os.fork()
        if pid == 0:
            code = EXIT_ERROR
            try:
                die_with_parent()
                os.close(gate_write)
                os.read(gate_read, 1)  # end of file: the gate opened
                os.close(gate_read)
                if args.mode == "run":
                    code = child_run(index, args.outdir, args.args)
                else:
                    code = child_api(index, args)
            except BaseException as exc:
                report("error", index, f"{type(exc).__name__}: {exc}".replace("\n", " "))
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        children[pid] = index
    os.close(gate_read)
    report("ready", *children)
    sys.stdin.readline()
    report("go", time.monotonic_ns())
    os.close(gate_write)
    while children:
        pid, status = os.waitpid(-1, 0)
        stamp = time.monotonic_ns()
        if pid in children:
            report("exited", children.pop(pid), pid, os.waitstatus_to_exitcode(status), stamp)
    report("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
