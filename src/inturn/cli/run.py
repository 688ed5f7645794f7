"""``inturn run``: wait in line, run the command while holding the turn, free it."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import Busy, Cancelled, Replaced, Timeout, UsageError
from ..line import Turn
from ..records import LineStatus
from .exits import EXIT_LOST, EXIT_REPLACED
from .output import say, system_error
from .parser import line_from
from .signals import RunSignals


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given: inturn run NAME -- COMMAND [ARG ...]")
    executable = _find(command[0])
    # From here until the turn is released, no signal can kill inturn (see ``RunSignals``).
    signals = RunSignals()
    signals.install()
    try:
        try:
            held = _wait_in_line(args, command, signals)
        except Cancelled:
            return 128 + signals.pending[0]  # a signal ended the wait; the line is left
        except Replaced as exc:
            if not args.quiet:
                say(f"{exc}: not running the command")
            return EXIT_REPLACED
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
                say(f"{who} died holding line {args.name!r}; it is yours now")
            return _run_holding(held, executable, command, args, signals)
    finally:
        signals.settle()


def _wait_in_line(args: argparse.Namespace, command: list[str], signals: RunSignals) -> Turn | None:
    """The held turn, or None (said why) when the line was busy or the wait timed out.

    The moment the turn is ours, signals stop ending the wait: from then on an exception
    raised by a signal handler could leave the turn held and never released.
    """
    line = line_from(args, args.slots)
    display = None
    if not args.quiet and sys.stderr.isatty():
        from .display import WaitingDisplay

        display = WaitingDisplay(line, sys.stderr)
    try:
        held = line.acquire(
            args.timeout,
            blocking=not args.no_wait,
            command=tuple(command),
            on_progress=display.update if display else None,
            cancel=signals.cancel,
            shared=args.shared,
            max_waiting=args.max_waiting,
            newest_wins=args.newest_wins,
        )
        signals.waiting = False  # before anything else, closing the status line included
        return held
    except Busy as exc:
        say(str(exc))
    except Timeout as exc:
        say(f"{exc} after {args.timeout:g}s{_held_by(exc.status)}")
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
    if sys.platform == "win32":
        from .child_windows import run_child

        signals.restore()  # the console's own handling takes over (see ``run_child``)
        return int(run_child(command, _child_env(held), args.close, held.on_lost))

    else:
        from .child_posix import CannotRun, run_command

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
                say=say,
                lost_message=f"lost the turn in line {held.name!r} (server unreachable); "
                "stopping the command",
            )
        except CannotRun as exc:
            raise UsageError(f"cannot run {command[0]}: {system_error(exc.error)}") from None
        return EXIT_LOST if outcome.lost else outcome.code
