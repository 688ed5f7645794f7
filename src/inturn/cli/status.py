"""``inturn status``: who holds a line and who waits, or every line, as text or JSON."""

from __future__ import annotations

import argparse
import time

from ..backends import open_backend
from ..errors import BackendError, UsageError
from ..line import Line
from ..listing import forget_unused, lines
from ..names import check_name
from ..records import escape_controls, undecodable, warn
from .display import format_line, format_overview
from .exits import EXIT_CONFLICT
from .output import emit, json_text, say
from .parser import line_from, where_from


def status(args: argparse.Namespace) -> int:
    names_only = getattr(args, "names", False)  # inturn top, printed once, has no --names
    if names_only and (args.name is not None or args.json):
        raise UsageError("--names lists every line, one name a line: give no NAME and no --json")
    if args.name is not None:
        line = line_from(args)
        if getattr(args, "prune", False):  # only this line: the others were not asked about
            _forget_if_unused(line)
        status = line.status()  # a look opens nothing that stays open
        now = time.time()  # after the look: a turn taken during it is not in the future
        if args.json:
            emit(json_text(status.to_json(now)))
        else:
            emit(format_line(status, now))
        if not status.holders and not status.waiters and not getattr(args, "prune", False):
            _tell_if_unknown(args)
        return 0
    where = where_from(args)
    if getattr(args, "prune", False):  # inturn top, printed once, has no --prune
        forget_unused(scope=where.scope, directory=where.directory, backend=where.backend)
    backend = open_backend(
        where.backend, scope=where.scope, directory=where.directory, create=False
    )
    try:
        if names_only:
            return _names(backend.names())
        statuses = lines(backend=backend)
    finally:
        backend.close()
    now = time.time()
    if args.json:
        document = {"where": backend.where, "lines": [s.to_json(now) for s in statuses]}
        emit(json_text(document))
        return 0
    emit(format_overview(statuses, backend.where, now))
    return 0


def _tell_if_unknown(args: argparse.Namespace) -> None:
    """A line nobody has used is free, as an empty one is; say so on stderr, so that a typo
    in its name does not pass for a free line (as ``inturn forget`` does)."""
    known, place = _names_and_place(args)
    if args.name not in known:
        say(
            f"no line {args.name!r} in {escape_controls(place)}: nobody has used it "
            "(inturn status lists the lines)"
        )


def _names_and_place(args: argparse.Namespace) -> tuple[set[str], str]:
    """The names of the lines where ``args`` points, and that place for people, by a look
    that creates nothing there."""
    where = where_from(args)
    backend = open_backend(
        where.backend, scope=where.scope, directory=where.directory, create=False
    )
    try:
        return set(backend.names()), backend.where
    finally:
        backend.close()


def _names(names: list[str]) -> int:
    """One name a line, as it is (``--names``): a name that would not fit on one line or could
    steer the terminal (a control character in it) is left out with a warning."""
    shown = []
    for name in names:
        if escape_controls(name) == name:
            shown.append(name)
        else:
            why = "bytes that are not UTF-8" if undecodable(name) else "control characters"
            say(f"warning: left out the line {escape_controls(name)}: its name has {why}")
    if shown:
        emit("\n".join(shown))
    return 0


def _forget_if_unused(line: Line) -> None:
    """``line.forget()``, then close it; one that cannot be forgotten is left with a warning."""
    try:
        line.forget()
    except BackendError as exc:
        warn(f"{exc}; left as it is")
    finally:
        line.close()


def forget(args: argparse.Namespace) -> int:
    """``inturn forget NAME...``: 0 if every line was forgotten, 75 if one is in use."""
    for name in args.names:  # one that can be no line's name is a usage error, as everywhere
        check_name(name)
    known, place = _names_and_place(args)
    where = where_from(args)
    code = 0
    for name in args.names:
        if name not in known:  # a typo would otherwise pass for done
            say(f"no line {name!r} in {place}: nothing to forget (inturn status lists the lines)")
            continue
        line = Line(name, scope=where.scope, directory=where.directory, backend=where.backend)
        try:
            if not line.forget():
                say(f"line {name!r} is in use (someone holds or waits in it): not forgotten")
                code = EXIT_CONFLICT
        finally:
            line.close()
    return code
