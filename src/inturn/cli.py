"""The ``inturn`` command: a thin layer over ``inturn.Line``.

Exit codes (documented in the README): the command's own code when it ran; 75 when the line
was busy (``--no-wait``) or the wait timed out (``--conflict-exit-code`` changes it); 76 when a
server backend lost the turn while the command ran; 130 when interrupted while waiting (128+N
for another signal N); 141 when the output was closed early (``inturn status | head -1``);
2 for usage errors, unusable setups and system errors (a full disk, too many open files).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from .errors import Busy, Cancelled, InturnError, Timeout, UsageError
from .line import Line, Turn
from .records import LineStatus, Ticket, escape_controls

if TYPE_CHECKING:
    from .child import RunSignals

EXIT_USAGE = 2
EXIT_CONFLICT = 75
EXIT_LOST = 76
EXIT_INTERRUPTED = 130
EXIT_OUTPUT_CLOSED = 128 + 13  # as a tool killed by SIGPIPE
DEFAULT_GRACE_SECONDS = 1.0


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
    run.add_argument(
        "-g",
        "--grace",
        type=_grace,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="when a server backend loses the turn, SIGTERM the command's processes, then "
        "SIGKILL them after SECONDS (default 1; 0 is SIGKILL at once)",
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


def _seconds(text: str, what: str = "the timeout") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{what} must be 0 or more seconds, not {text}")
    return value


def _grace(text: str) -> float:
    return _seconds(text, "the grace")


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
    except _OutputClosed:
        return EXIT_OUTPUT_CLOSED
    except OSError as exc:  # a full disk, too many open files: a system error, not a bug
        _say(_system_error(exc))
        return EXIT_USAGE


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # else there is nowhere left to say it
        print(f"inturn: {message}", file=sys.stderr, flush=True)


class _OutputClosed(Exception):
    """Whoever read our stdout stopped reading (``inturn status | head -1``)."""


def _emit(text: str) -> None:
    """Print ``text`` on stdout; a reader gone is ``_OutputClosed``, a full disk one line."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        raise _OutputClosed() from None
    except OSError as exc:
        _drop_stdout()
        raise UsageError(f"cannot write the output: {_system_error(exc)}") from None


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the exit's flush of what is left fails no more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


_SYSTEM_ERROR_ADVICE = {
    getattr(errno, name): advice
    for name, advice in (
        ("ENOSPC", "free some space and try again"),
        ("EDQUOT", "free some space or raise the quota, and try again"),
        ("EMFILE", "raise the limit of open files, ulimit -n, and try again"),
        ("ENFILE", "the system has too many open files: try again later"),
        ("ENOMEM", "the system is out of memory: try again later"),
        ("EROFS", "the file system is read-only: choose another folder (--dir or INTURN_DIR)"),
    )
    if hasattr(errno, name)
}


def _system_error(exc: OSError) -> str:
    """One line for an ``OSError``: what failed, on what, and what to do."""
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        text += f": {os.fsdecode(exc.filename)!r}"
    advice = _SYSTEM_ERROR_ADVICE.get(exc.errno or 0)
    return f"{text} ({advice})" if advice else text


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


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given: inturn run NAME -- COMMAND [ARG ...]")
    executable = _find(command[0])
    from .child import RunSignals

    # From here until the turn is released, no signal can kill inturn (see ``RunSignals``).
    signals = RunSignals()
    signals.install()
    try:
        try:
            held = _wait_in_line(args, command, signals)
        except Cancelled:
            return 128 + signals.pending[0]  # a signal ended the wait; the line is left
        finally:
            signals.waiting = False
        if held is None:
            return int(args.conflict_exit_code)
        with held:
            if signals.pending:  # before the command exists: it is not started at all
                return 128 + signals.pending[0]
            if held.abandoned and not args.quiet:
                dead = held.abandoned_by
                who = dead.describe() if dead is not None else "the previous holder"
                _say(f"{who} died holding line {args.name!r}; it is yours now")
            return _run_holding(held, executable, command, args, signals)
    finally:
        signals.settle()


def _wait_in_line(args: argparse.Namespace, command: list[str], signals: RunSignals) -> Turn | None:
    """The held turn, or None (said why) when the line was busy or the wait timed out.

    The moment the turn is ours, signals stop ending the wait: from then on an exception
    raised by a signal handler could leave the turn held and never released.
    """
    line = _line(args, args.slots)
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
            cancel=signals.cancel,
        )
        signals.waiting = False  # before anything else, closing the status line included
        return held
    except Busy as exc:
        _say(str(exc))
    except Timeout as exc:
        _say(f"{exc} after {args.timeout:g}s{_held_by(exc.status)}")
    finally:
        if display is not None:
            display.close()
    return None


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


def _child_env(held: Turn) -> dict[str, str]:
    env = dict(os.environ)
    env["INTURN_NAME"] = held.name
    env["INTURN_TICKET"] = str(held.ticket)
    env["INTURN_ABANDONED"] = "1" if held.abandoned else "0"
    return env


def _run_holding(
    held: Turn,
    executable: str,
    command: list[str],
    args: argparse.Namespace,
    signals: RunSignals,
) -> int:
    if os.name == "nt":
        from .windows import run_child  # type: ignore[import-not-found,attr-defined,unused-ignore]

        signals.restore()  # the console's own handling takes over (see ``run_child``)
        return int(run_child(command, _child_env(held), args.close, held.on_lost))

    from .child import CannotRun, run_command

    membership = held.membership
    handles = [] if args.close or membership is None else membership.inheritable_handles()
    try:
        outcome = run_command(
            command,
            executable,
            _child_env(held),
            handles=handles,
            # A turn the command cannot inherit (a lease that only this process renews) ends
            # when inturn dies; the command must not run on outside it.
            bound=not args.close and not handles,
            can_be_lost=held.line.store.remote,
            signals=signals,
            on_lost=held.on_lost,
            grace=args.grace,
            say=_say,
            lost_message=f"lost the turn in line {held.name!r} (server unreachable); "
            "stopping the command",
        )
    except CannotRun as exc:
        raise UsageError(f"cannot run {command[0]}: {_system_error(exc.error)}") from None
    return EXIT_LOST if outcome.lost else outcome.code


# --------------------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    now = time.time()
    if args.name is not None:
        status = _line(args).status()
        if args.json:
            _emit(_json(status.to_json(now)))
        else:
            _emit(format_line(status, now))
        return 0
    from .backends import open_backend

    backend = open_backend(
        args.backend, scope="machine" if args.machine else "user", directory=args.dir
    )
    statuses = [backend.line(name).status() for name in backend.names()]
    if args.json:
        document = {"where": backend.where, "lines": [s.to_json(now) for s in statuses]}
        _emit(_json(document))
        return 0
    _emit(format_overview(statuses, backend.where, now))
    return 0


def _json(document: object) -> str:
    """JSON for people and scripts: readable Unicode, but a lone surrogate (a name or command
    that was not valid UTF-8) as a ``\\udcXX`` escape, so the output is valid UTF-8 too."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


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
    name = escape_controls(status.name)
    if not status.holders and not status.waiters:
        return f"{name}: free (nobody holds or waits)"
    rows: list[tuple[str, ...]] = [("#", "TICKET", "STATE", "PID", "USER", "HOST", "FOR", "CMD")]
    for place, ticket in enumerate((*status.holders, *status.waiters), start=1):
        rows.append(_row(place, ticket, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{name}: {len(status.holders)} holding, {len(status.waiters)} waiting"]
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
        escape_controls(ticket.user or "?"),
        escape_controls(ticket.host or "?"),
        duration(None if since is None else now - since),
        escape_controls(" ".join(ticket.command)),
    )


def format_overview(statuses: list[LineStatus], where: str, now: float) -> str:
    if not statuses:
        return f"no lines in {escape_controls(where)}"
    rows = [("LINE", "HOLDING", "WAITING", "HELD BY", "FOR")]
    for status in statuses:
        first = status.holders[0] if status.holders else None
        held_for = None if first is None or first.acquired_at is None else now - first.acquired_at
        rows.append(
            (
                escape_controls(status.name),
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
