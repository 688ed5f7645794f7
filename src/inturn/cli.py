"""The ``inturn`` command: a thin layer over ``inturn.Line``.

Exit codes (documented in the README): the command's own code when it ran; 75 when the line
was busy (``--no-wait``) or the wait timed out (``--conflict-exit-code`` changes it); 76 when a
server backend lost the turn while the command ran; 130 when interrupted while waiting (128+N
for another signal N); 2 for usage errors and unusable setups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TextIO

from .errors import Busy, InturnError, Timeout, UsageError
from .line import Line, Turn
from .records import LineStatus, Ticket

EXIT_USAGE = 2
EXIT_CONFLICT = 75
EXIT_LOST = 76
EXIT_INTERRUPTED = 130
LOST_GRACE_SECONDS = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inturn",
        description="Make processes take turns: wait in line, first come first served.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"inturn {__version__}")
    commands = parser.add_subparsers(dest="action", metavar="{run,status}")
    commands.required = True

    def where(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--machine",
            action="store_true",
            help="use the line shared by every user of this machine (default: yours only)",
        )
        sub.add_argument("--dir", metavar="DIR", help="folder where lines live (env INTURN_DIR)")
        sub.add_argument(
            "--backend",
            metavar="URL",
            help="a postgresql:// or redis:// server, to take turns across machines "
            "(env INTURN_BACKEND)",
        )

    run = commands.add_parser(
        "run",
        help="wait for a turn in line NAME, run the command, free the turn",
        description="Wait for a turn in line NAME, run COMMAND while holding it, then free it. "
        "Exits with the command's exit code.",
    )
    run.add_argument("name", metavar="NAME")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    run.add_argument("-n", "--no-wait", action="store_true", help="if busy, exit 75 at once")
    run.add_argument(
        "-w",
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="give up after SECONDS in line (exit 75); 0 is one try",
    )
    run.add_argument(
        "-s", "--slots", type=_slots, default=1, metavar="N", help="let N hold the line at once"
    )
    run.add_argument(
        "-E",
        "--conflict-exit-code",
        type=_exit_code,
        default=EXIT_CONFLICT,
        metavar="N",
        help="exit code when busy or timed out (default 75)",
    )
    run.add_argument(
        "-o",
        "--close",
        action="store_true",
        help="do not let the command inherit the turn (for commands that leave daemons)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no status line, no notes")
    where(run)

    status = commands.add_parser(
        "status",
        help="who holds line NAME and who waits (every line if no NAME)",
        description="Show holders, then waiters in order, of line NAME, or every line.",
    )
    status.add_argument("name", nargs="?", metavar="NAME")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    where(status)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"the timeout must be 0 or more, not {text}")
    return value


def _slots(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"slots must be a whole number of at least 1: {text!r}")
    return int(text)


def _exit_code(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"an exit code is 0 to 255, not {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        if args.action == "run":
            return _run(parser, args)
        return _status(args)
    except (UsageError, InturnError) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _say(message: str) -> None:
    print(f"inturn: {message}", file=sys.stderr, flush=True)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings on the command line are one line each, like errors, without source lines."""
    _say(f"warning: {message}")


def _line(args: argparse.Namespace, slots: int = 1) -> Line:
    scope = "machine" if args.machine else "user"
    return Line(args.name, slots, scope=scope, directory=args.dir, backend=args.backend)


# --------------------------------------------------------------------------- run


class _Signalled(BaseException):
    """SIGTERM or SIGHUP arrived while waiting in line: leave the line, exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given: inturn run NAME -- COMMAND [ARG ...]")
    executable = _find(command[0])
    line = _line(args, args.slots)

    def leave_on(signum: int, frame: FrameType | None) -> None:
        raise _Signalled(signum)

    previous = {s: signal.signal(s, leave_on) for s in _forwarded_signals() if s != signal.SIGINT}
    display = None
    if not args.quiet and sys.stderr.isatty():
        from .waiting import WaitingDisplay

        display = WaitingDisplay(line, sys.stderr)
    try:
        held = line.acquire(
            args.timeout,
            blocking=not args.no_wait,
            command=tuple(command),
            on_progress=display.update if display else None,
        )
    except Busy as exc:
        _say(str(exc))
        return int(args.conflict_exit_code)
    except Timeout as exc:
        _say(f"{exc} after {args.timeout:g}s{_held_by(exc.status)}")
        return int(args.conflict_exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _Signalled as exc:
        return 128 + exc.signum
    finally:
        if display is not None:
            display.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    with held:
        if held.abandoned and not args.quiet:
            dead = held.abandoned_by
            who = dead.describe() if dead is not None else "the previous holder"
            _say(f"{who} died holding line {args.name!r}; it is yours now")
        return _run_holding(held, executable, command, args)


def _find(program: str) -> str:
    """Check the command before waiting in line for it, not after."""
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.exists(program):
            raise UsageError(f"command not found: {program}")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise UsageError(f"command is not executable: {program} (check its permissions)")
        return program
    import shutil

    found = shutil.which(program)
    if found is None:
        raise UsageError(f"command not found: {program} (is it installed and on PATH?)")
    return found


def _held_by(status: LineStatus | None) -> str:
    if status is None or not status.holders:
        return ""
    return "; held by " + ", ".join(t.describe() for t in status.holders)


def _forwarded_signals() -> list[signal.Signals]:
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK")
    return [getattr(signal, n) for n in names if hasattr(signal, n)]


def _child_env(held: Turn) -> dict[str, str]:
    env = dict(os.environ)
    env["INTURN_NAME"] = held.name
    env["INTURN_TICKET"] = str(held.ticket)
    env["INTURN_ABANDONED"] = "1" if held.abandoned else "0"
    return env


def _run_holding(held: Turn, executable: str, command: list[str], args: argparse.Namespace) -> int:
    if os.name == "nt":
        from .windows import run_child  # type: ignore[import-not-found,attr-defined,unused-ignore]

        return int(run_child(command, _child_env(held), args.close, held.on_lost))

    membership = held.membership
    handles = [] if args.close or membership is None else membership.inheritable_handles()
    # A turn the command cannot inherit (a lease that only this process renews) ends when
    # inturn dies; the command must not run on outside it.
    bound = None if args.close or handles else _die_with_parent()
    try:
        child = subprocess.Popen(
            command,
            executable=executable,
            env=_child_env(held),
            pass_fds=handles,
            preexec_fn=bound,
        )
    except OSError as exc:
        raise UsageError(f"cannot run {command[0]}: {exc.strerror}") from None

    lost = False

    def stop_child() -> None:
        nonlocal lost
        lost = True
        _say(f"lost the turn in line {held.name!r} (server unreachable); stopping the command")
        _signal(child, signal.SIGTERM)
        import threading

        timer = threading.Timer(LOST_GRACE_SECONDS, _signal, (child, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    held.on_lost(stop_child)
    foreground = _in_terminal_foreground()

    def forward(signum: int, frame: FrameType | None) -> None:
        # Ctrl-C at a terminal already reached the command (same process group): do not
        # deliver it twice. A SIGINT sent to inturn alone is passed on.
        if signum == signal.SIGINT and foreground:
            return
        _signal(child, signum)

    previous = {s: signal.signal(s, forward) for s in _forwarded_signals()}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if lost:
        return EXIT_LOST
    return code if code >= 0 else 128 - code


def _die_with_parent() -> Callable[[], None] | None:
    """For the child, between fork and exec: be killed by the kernel when inturn dies.

    Linux's ``PR_SET_PDEATHSIG`` (prctl(2)); elsewhere there is no such request and the
    README says what that means. The function is looked up here, before the fork, so the
    child only makes the one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def bind() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # inturn died before the request was made
            os._exit(EXIT_LOST)

    return bind


def _signal(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(OSError):
        child.send_signal(signum)


def _in_terminal_foreground() -> bool:
    for stream in (sys.stdin, sys.stderr, sys.stdout):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (AttributeError, OSError, ValueError):
            continue
    return False


# --------------------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    now = time.time()
    if args.name is not None:
        status = _line(args).status()
        if args.json:
            print(json.dumps(status.to_json(now), indent=2, ensure_ascii=False))
        else:
            print(format_line(status, now))
        return 0
    from .backends import open_backend

    backend = open_backend(
        args.backend, scope="machine" if args.machine else "user", directory=args.dir
    )
    statuses = [backend.line(name).status() for name in backend.names()]
    if args.json:
        document = {"where": backend.where, "lines": [s.to_json(now) for s in statuses]}
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    print(format_overview(statuses, backend.where, now))
    return 0


def duration(seconds: float | None) -> str:
    """``45s``, ``1m12s``, ``2h03m``: short enough for a status line."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_line(status: LineStatus, now: float) -> str:
    if not status.holders and not status.waiters:
        return f"{status.name}: free (nobody holds or waits)"
    rows: list[tuple[str, ...]] = [("#", "TICKET", "STATE", "PID", "USER", "HOST", "FOR", "CMD")]
    for place, ticket in enumerate((*status.holders, *status.waiters), start=1):
        rows.append(_row(place, ticket, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{status.name}: {len(status.holders)} holding, {len(status.waiters)} waiting"]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _row(place: int, ticket: Ticket, now: float) -> tuple[str, ...]:
    state = "holding" if ticket.holding else "waiting"
    since = ticket.acquired_at if ticket.holding else ticket.joined_at
    return (
        str(place),
        str(ticket.number),
        state,
        str(ticket.pid) if ticket.pid is not None else "?",
        ticket.user or "?",
        ticket.host or "?",
        duration(None if since is None else now - since),
        " ".join(ticket.command),
    )


def format_overview(statuses: list[LineStatus], where: str, now: float) -> str:
    if not statuses:
        return f"no lines in {where}"
    rows = [("LINE", "HOLDING", "WAITING", "HELD BY", "FOR")]
    for status in statuses:
        first = status.holders[0] if status.holders else None
        held_for = None if first is None or first.acquired_at is None else now - first.acquired_at
        rows.append(
            (
                status.name,
                str(len(status.holders)),
                str(len(status.waiters)),
                first.describe() if first is not None else "-",
                duration(held_for) if first is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
