"""The command line the ``inturn`` command understands, and what its options may hold."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence

from ..durations import parse_duration
from ..errors import UsageError
from ..line import Line
from ..records import escape_controls
from .exits import EXIT_CONFLICT, EXIT_OUTPUT_CLOSED, EXIT_USAGE
from .output import OutputClosed, emit, say

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from _typeshed import SupportsWrite

DEFAULT_GRACE_SECONDS = 1.0
MIN_INTERVAL_SECONDS = 0.1  # inturn top: a shorter timer would only keep a core busy
MAX_INTERVAL_SECONDS = 365 * 86400.0  # beyond a year, only a typo (or an overflow)


class Parser(argparse.ArgumentParser):
    """A parser whose help ends with the command's examples (and exit codes, environment),
    written only when the help is shown: a plain ``inturn run`` never builds them.

    Likewise its text is fitted to the terminal only when it is shown: argparse builds a
    formatter for every option added (to check it), and one that measures the terminal
    imports ``shutil``, with compression modules, a tenth of every start of ``inturn run``."""

    def __init__(self, *args: Any, manual: str | None = None, **kwargs: Any) -> None:
        kwargs["formatter_class"] = _unmeasured_formatter
        super().__init__(*args, **kwargs)
        # ``-w -5m`` is a (bad) value, told as such, not an unknown option ``-5m``
        self._negative_number_matcher = re.compile(r"^-\.?\d")
        self.manual = manual  # the command whose examples close its help ("": the top level)

    def format_usage(self) -> str:
        self.formatter_class = WrappingFormatter
        return super().format_usage()

    def format_help(self) -> str:
        self.formatter_class = WrappingFormatter
        if self.manual is not None and self.epilog is None:
            from .manual import epilog

            self.epilog = epilog(self.manual)
        return super().format_help()

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        """Help and version go to stdout as any result does: a reader gone or a full disk is
        told by the exit code (argparse itself ignores a failed write and exits 0)."""
        if not message or file is not sys.stdout:
            return super()._print_message(message, file)
        try:
            emit(message.removesuffix("\n"))
        except OutputClosed:
            sys.exit(EXIT_OUTPUT_CLOSED)
        except UsageError as exc:
            say(str(exc))
            sys.exit(EXIT_USAGE)

    def error(self, message: str) -> NoReturn:
        """One ``inturn: ...`` line, as every other error, with where the options are told
        (argparse's own is its usage block and a line of another form)."""
        say(f"{escape_controls(message)}; see '{self.prog} --help'")
        sys.exit(EXIT_USAGE)


class WrappingFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and the text after the options fitted to the terminal as argparse fits
    the options' help, line by line, so that a line break written there stays. A line too
    long goes on under its own indent, or under a table's second column (two spaces or more
    after its first word)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        lines = []
        for line in text.splitlines():
            if len(indent + line) <= width:
                lines.append((indent + line).rstrip())
                continue
            column = re.match(r"\s*\S+ {2,}(?=\S)|\s*", line)
            hang = indent + " " * (column.end() if column else 0)
            lines += textwrap.wrap(
                indent + line,
                width,
                subsequent_indent=hang,
                break_long_words=False,
                break_on_hyphens=False,
            )
        return "\n".join(lines)

    def _split_lines(self, text: str, width: int) -> list[str]:
        """An option's help, wrapped as argparse wraps it but never at a hyphen: an option
        named in it (``--newest-wins``) is typed whole, so it is shown whole."""
        import textwrap

        text = re.sub(r"\s+", " ", text, flags=re.ASCII).strip()  # as argparse joins it
        return textwrap.wrap(text, width, break_on_hyphens=False)


def _unmeasured_formatter(prog: str) -> argparse.HelpFormatter:
    """What argparse checks options with while they are added: any width will do there."""
    return argparse.RawDescriptionHelpFormatter(prog, width=10_000)


Commands = argparse._SubParsersAction  # what ``add_subparsers`` returns


def build_parser(words: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``inturn`` command's parser. Given the command line (``words``), only the parser
    of the command it names is built: argparse looks up translations for every parser and
    option it adds, a tenth of a start of ``inturn run`` for all of them, and one command's
    parser is all its parsing needs. Otherwise (help of the whole command, a word that names
    no command, ``completion``) every command's parser is built."""
    parser = Parser(
        prog="inturn",
        description="Make processes take turns: wait in line, first come first served.",
        manual="",
    )
    from .. import __version__

    parser.add_argument(
        "--version",
        action="version",
        version=f"inturn {__version__}",
        help="print inturn's version and exit",
    )
    commands = parser.add_subparsers(dest="action", metavar="COMMAND")
    commands.required = True
    asked = words[0] if words else None
    whole = asked not in COMMANDS or asked == "completion"  # its script covers every command
    for name, add in COMMANDS.items():
        if whole or name == asked:
            add(commands)
    for sub in commands.choices.values():  # whose usage an unknown option is told with
        sub.set_defaults(sub_parser=sub)
    return parser


def after_double_dash(args: argparse.Namespace, trailing: Sequence[str]) -> bool:
    """Whether ``trailing`` (a command, or a message's arguments) came after a ``--`` as
    typed: some Python versions drop that ``--`` from what the parser keeps, and after it
    every word is the command's own, even one spelt like one of inturn's options."""
    words = getattr(args, "words", [])
    return bool(trailing) and len(words) > len(trailing) and words[-len(trailing) - 1] == "--"


def add_where(sub: argparse.ArgumentParser) -> None:
    """The options that say where the lines are."""
    sub.add_argument(
        "--machine",
        action="store_true",
        help="use the line shared by every user of this machine (default: yours only)",
    )
    sub.add_argument(
        "--dir",
        metavar="DIR",
        type=_given("a folder"),
        help="folder where lines live (env INTURN_DIR; with --machine, INTURN_MACHINE_DIR)",
    )
    sub.add_argument(
        "--backend",
        metavar="URL",
        type=_given("a URL"),
        help="a postgresql:// or redis:// server, to take turns across machines, or local "
        "for this machine's folders (env INTURN_BACKEND, which beats INTURN_DIR)",
    )


def _given(what: str) -> Callable[[str], str]:
    """An option's value that must not be empty: ``--dir "$UNSET"`` would otherwise fall back
    to the environment or the default, unseen."""

    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"it is empty: give {what} (an unset variable?)")
        return text

    return check


def _add_run(commands: Commands[Parser]) -> None:
    run = commands.add_parser(
        "run",
        manual="run",
        help="wait for a turn in line NAME, run the command, free the turn",
        description="Wait for a turn in line NAME, run COMMAND while holding it, then free it. "
        "Exits with the command's exit code.",
    )
    run.add_argument("name", metavar="NAME", help="the line: runs under one name take turns")
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the command and its arguments, run while holding the turn (options go before NAME)",
    )
    run.add_argument(
        "-c",
        "--command",
        dest="command_string",
        metavar="STRING",
        help="run STRING with /bin/sh -c instead of -- COMMAND (as flock -c)",
    )
    how_long = run.add_mutually_exclusive_group()  # -n is -w 0: either says how long
    # flock(1)'s spellings are taken too, so that a command moved from flock keeps its options.
    how_long.add_argument(
        "-n",
        "--no-wait",
        "--nonblock",
        "--nb",
        action="store_true",
        help="if busy, exit 75 at once",
    )
    how_long.add_argument(
        "-w",
        "--timeout",
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="give up after that long in line (exit 75): seconds, or 10m, 1h30m; 0 is one try",
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
        default=None,
        metavar="SECONDS",
        help="when a server backend loses the turn, SIGTERM the command's processes, then "
        "SIGKILL them after SECONDS (default 1; 0 is SIGKILL at once; never more than half "
        "the time before the next holder may start)",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--shared",
        action="store_true",
        help="take a shared turn (a reader): shared turns next to each other in the line run "
        "together, never with an exclusive one",
    )
    mode.add_argument(
        "-x",
        "-e",
        "--exclusive",
        dest="shared",
        action="store_false",
        help="take an exclusive turn (the default; as flock -x)",
    )
    crowding = run.add_mutually_exclusive_group()  # one rule for who may wait
    crowding.add_argument(
        "--max-waiting",
        type=_max_waiting,
        metavar="N",
        help="if N already wait in line, exit 75 at once (1: a burst of starts collapses "
        "into one waiting run)",
    )
    crowding.add_argument(
        "--newest-wins",
        action="store_true",
        help="replace the runs already waiting that gave --newest-wins too (they exit 77 "
        "without running): at most one pending run, the newest",
    )
    run.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="say nothing but errors (exit 2, 69, 76, 126, 127): no status line, no notes, and "
        "no line when busy, timed out or replaced (the exit code says it)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say which ticket it got, after how long, and whether the previous holder died "
        "holding the turn",
    )
    add_where(run)


def _add_status(commands: Commands[Parser]) -> None:
    status = commands.add_parser(
        "status",
        manual="status",
        help="who holds line NAME and who waits (every line if no NAME)",
        description="Show holders, then waiters in order, of line NAME, or every line.",
    )
    status.add_argument("name", nargs="?", metavar="NAME", help="one line (default: every line)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--names",
        action="store_true",
        help="only the names of the lines, one a line (for scripts and shell completion)",
    )
    status.add_argument(
        "--prune",
        action="store_true",
        help="first forget every line that nobody holds or waits in (only NAME, if given; "
        "see inturn forget)",
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="a live full-screen view, redrawn as the line changes (q quits): inturn top",
    )
    add_where(status)
    _add_interval(status, "; implies --watch")


def _add_top(commands: Commands[Parser]) -> None:
    top = commands.add_parser(
        "top",
        manual="top",
        help="a live full-screen view of line NAME (every line if no NAME); q quits",
        description="Show holders, then waiters, of line NAME (or every line) on the whole "
        "terminal, redrawn the moment someone leaves and every --interval for arrivals and "
        "clocks; q or Ctrl-C quits. Not on a terminal, prints inturn status once. "
        "Same as inturn status --watch.",
    )
    top.add_argument("name", nargs="?", metavar="NAME", help="one line (default: every line)")
    add_where(top)
    _add_interval(top)


def _add_interval(live: argparse.ArgumentParser, also: str = "") -> None:
    live.add_argument(
        "--interval",
        type=_interval,
        metavar="SECONDS",
        help="read the line again every SECONDS for arrivals and clocks (default 1; "
        f"leavers show at once{also})",
    )


def _add_forget(commands: Commands[Parser]) -> None:
    forget = commands.add_parser(
        "forget",
        manual="forget",
        help="remove lines that nobody holds or waits in",
        description="Remove each line NAME if nobody holds or waits in it (its folder, or its "
        "name on a server); someone joining at that moment joins a new line of that name. "
        "Exits 0, or 75 if a line is in use (it is left alone).",
    )
    forget.add_argument("names", nargs="+", metavar="NAME", help="the lines to remove")
    add_where(forget)


def _add_wait(commands: Commands[Parser]) -> None:
    wait = commands.add_parser(
        "wait",
        manual="wait",
        help="wait until everyone now in line NAME has finished, without taking a turn",
        description="Wait until every holder and waiter now in line NAME has finished (a "
        "barrier: later arrivals are not waited for, and are not held up). Exits 0, or 75 "
        "when --timeout runs out.",
    )
    wait.add_argument("name", metavar="NAME", help="the line")
    wait.add_argument(
        "-w", "--timeout", type=_seconds, metavar="SECONDS", help="give up after SECONDS (exit 75)"
    )
    wait.add_argument(
        "-E",
        "--conflict-exit-code",
        type=_exit_code,
        default=EXIT_CONFLICT,
        metavar="N",
        help="exit code when the timeout runs out (default 75)",
    )
    add_where(wait)


def _add_completion(commands: Commands[Parser]) -> None:
    from .completion import SHELLS

    completion = commands.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="Print a script that completes inturn's commands, options and line names "
        "in SHELL. Line names come from inturn status --names, with the --dir, --backend or "
        "--machine typed on the command line.",
        manual="completion",
    )
    completion.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")


def _add_send(commands: Commands[Parser]) -> None:
    from .send import add_parser

    add_parser(commands)


COMMANDS: dict[str, Callable[[Commands[Parser]], None]] = {
    "run": _add_run,
    "status": _add_status,
    "top": _add_top,
    "forget": _add_forget,
    "wait": _add_wait,
    "completion": _add_completion,
    "send": _add_send,
}


def _duration(text: str) -> float:
    """``parse_duration``, its refusal told the way argparse tells a bad value."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str, what: str = "the timeout") -> float:
    value = _duration(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{what} must be 0 or more seconds, not {text}")
    return value


def _interval(text: str) -> float:
    value = _duration(text)
    if not MIN_INTERVAL_SECONDS <= value <= MAX_INTERVAL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"the interval must be from {MIN_INTERVAL_SECONDS:g} seconds to a year, not {text}"
        )
    return value


def _grace(text: str) -> float:
    return _seconds(text, "the grace")


def _slots(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        # flock(1)'s -s is a shared lock: the likeliest reason for a name after -s
        number = text.strip().lstrip("+-").replace(".", "", 1).isdigit()
        hint = "" if number else " (a shared turn, flock's -s, is --shared here)"
        raise argparse.ArgumentTypeError(
            f"slots must be a whole number of at least 1: {text!r}{hint}"
        )
    return int(text)


def _max_waiting(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"--max-waiting takes a whole number of at least 1: {text!r}"
        )
    return int(text)


def _exit_code(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"an exit code is 0 to 255, not {text!r}")
    return int(text)


class Where:
    """Where the command's lines are, from its options and, below them, the environment."""

    __slots__ = ("backend", "directory", "scope")

    def __init__(self, scope: str, directory: str | None, backend: str | None) -> None:
        self.scope = scope
        self.directory = directory
        self.backend = backend


def where_from(args: argparse.Namespace) -> Where:
    """An option given beats the environment (``--dir`` beats ``INTURN_BACKEND``); options or
    settings that would choose two places at once are refused with one line."""
    if args.dir is not None and args.backend is not None:
        raise UsageError("--dir and --backend name two different places: give one of them")
    backend = "local" if args.dir is not None else args.backend
    folder = None if args.dir is None else os.path.abspath(args.dir)  # once, from here
    return Where("machine" if args.machine else "user", folder, backend)


def line_from(args: argparse.Namespace, slots: int = 1) -> Line:
    where = where_from(args)
    return Line(
        args.name, slots, scope=where.scope, directory=where.directory, backend=where.backend
    )
