"""``inturn run``: wait in line, run the command while holding the turn, free it."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import Busy, Cancelled, LostTurn, Replaced, Timeout, UsageError
from ..line import Line, Turn
from ..records import Progress, escape_controls, same_pids, shell_words, warn
from .exits import EXIT_CANNOT_RUN, EXIT_LOST, EXIT_NOT_FOUND, EXIT_REPLACED, interrupted
from .output import say, system_error
from .parser import DEFAULT_GRACE_SECONDS, after_double_dash, line_from
from .signals import RunSignals


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    usage = getattr(args, "sub_parser", parser)
    command = _command(usage, args)
    try:
        executable = _find(command[0])
    except NotRunnable as exc:
        say(str(exc))
        return exc.code
    environment = environment_as_given()  # now: the command starts sooner after the turn
    # From here until the turn is released, no signal can kill inturn (see ``RunSignals``).
    signals = RunSignals()
    signals.install()
    try:
        try:
            held = _wait_in_line(args, command, signals)
        except Cancelled:
            return interrupted(signals.pending[0])  # a signal ended the wait; the line is left
        finally:
            signals.waiting = False
        if isinstance(held, int):
            return held
        with held:
            if signals.pending:  # before the command exists: it is not started at all
                return interrupted(signals.pending[0])
            _notes(args, held)
            return _run_holding(held, executable, command, args, signals, environment)
    finally:
        signals.settle()


def _command(usage: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The command to run: after ``--``, or ``-c STRING`` for ``sh -c`` (as ``flock -c``)."""
    command = list(args.command)
    if command and command[0] == "--":  # kept by some Python versions, dropped by others
        command = command[1:]
    separated = after_double_dash(args, command)
    if args.command_string is not None:
        if command:
            usage.error("give either -c 'COMMAND STRING' or -- COMMAND [ARG ...], not both")
        return ["/bin/sh", "-c", args.command_string]
    if not command:
        usage.error("no command given: inturn run NAME -- COMMAND [ARG ...] (or -c 'STRING')")
    option = None if separated else _option(usage, command[0])
    if option is not None:
        import shlex

        moved = command[:1]
        if option.nargs != 0 and command[0] in usage._option_string_actions:
            moved = command[:2]  # and its value, the next word (not ``-w5``, ``--timeout=5``)
        then = "" if option.dest == "command_string" else " -- ..."
        usage.error(
            f"{command[0]} comes after the line's name, where the command belongs: options go "
            f"before NAME (inturn run {shlex.join(moved)} {shlex.quote(args.name)}{then})"
        )
    return command


def _option(usage: argparse.ArgumentParser, word: str) -> argparse.Action | None:
    """The option of run that ``word`` is, if any: ``-n``, ``--timeout=5``, ``-w5``."""
    if not word.startswith("-") or word == "-":
        return None
    known = usage._option_string_actions
    return known.get(word) or known.get(word.split("=", 1)[0]) or known.get(word[:2])


def _notes(args: argparse.Namespace, held: Turn) -> None:
    """What inturn says once the turn is ours (nothing with ``--quiet``)."""
    if args.quiet:
        return
    if held.abandoned:
        dead = held.abandoned_by
        who = dead.describe() if dead is not None else "the previous holder"
        say(f"{who} died holding line {args.name!r}; it is yours now")
    if args.verbose:
        from ..durations import duration

        how = "; the previous holder died holding it" if held.abandoned else ""
        say(
            f"ticket {held.ticket} of line {args.name!r}, after {duration(held.waited)} in "
            f"line{how}"
        )


def _wait_in_line(args: argparse.Namespace, command: list[str], signals: RunSignals) -> Turn | int:
    """The held turn, or the exit code (said why, unless ``--quiet``) when the line was busy,
    the wait timed out, or a later ``--newest-wins`` run replaced this one; 76 (said even
    with ``--quiet``, as any lost turn) when a server backend lost the turn as it came.

    The moment the turn is ours, signals stop ending the wait: from then on an exception
    raised by a signal handler could leave the turn held and never released. The status line
    is cleared before anything else is said, so that nothing is written onto it.
    """
    line = line_from(args, args.slots)
    _prepare_child_runner(remote=line.store.remote)
    display = None
    if not args.quiet and sys.stderr.isatty():
        from .display import WaitingDisplay

        display = WaitingDisplay(line, sys.stderr)
    nested = None if args.quiet else _nested_in(args.name, line)

    def progress(now: Progress) -> None:
        if nested is not None:
            nested.check(now)
        if display is not None:
            display.update(now)

    outcome: Turn | int
    message = ""
    try:
        outcome = line.acquire(
            args.timeout,
            blocking=not args.no_wait,
            command=tuple(command),
            on_progress=progress if nested or display else None,
            cancel=signals.cancel,
            shared=args.shared,
            max_waiting=args.max_waiting,
            newest_wins=args.newest_wins,
        )
        signals.waiting = False  # before anything else, closing the status line included
    except Busy as exc:
        outcome, message = int(args.conflict_exit_code), str(exc)
    except Timeout as exc:
        outcome = int(args.conflict_exit_code)
        message = str(exc)  # it names how long it waited and who holds the line
    except Replaced as exc:
        outcome, message = EXIT_REPLACED, f"{exc}: not running the command"
    except LostTurn as exc:  # lost as it was being taken: as a turn lost before the start
        outcome, message = EXIT_LOST, f"{exc}; not starting the command"
    finally:
        if display is not None:
            display.close()
    if message and (not args.quiet or outcome == EXIT_LOST):
        say(message)
    return outcome


class _Nested:
    """``inturn run X`` inside the command of ``inturn run X``: at its first sleep, says so if
    it waits behind the very turn its command runs in (a ticket of this host whose process is
    an ancestor of this one), a wait that never ends while the outer run waits for this one
    (as with ``flock(1)`` nested on one file)."""

    def __init__(self, name: str, line: Line, number: int) -> None:
        self.name = name
        self.line = line
        self.number = number
        self.looked = False

    def check(self, progress: Progress) -> None:
        if self.looked:
            return
        self.looked = True
        if self.number not in progress.ahead:
            return
        try:
            record = self.line.store.read([self.number])[0]
        except Exception:  # a warning must never break the wait
            return
        if record is None or record.pid is None or not same_pids(record.host, record.pid_namespace):
            return
        if not _is_ancestor(record.pid):
            return
        say(
            f"warning: this command runs inside turn {self.number} of line {self.name!r} "
            f"({record.describe(live=True)}) and now waits behind it: if that run waits for "
            "this command, neither ever ends (give it --timeout)"
        )


def _nested_in(name: str, line: Line) -> _Nested | None:
    """What to look at if the environment says this process runs in a turn of line ``name``."""
    ticket = os.environ.get("INTURN_TICKET", "")
    if os.environ.get("INTURN_NAME") != name or not ticket.isdigit():
        return None
    return _Nested(name, line, int(ticket))


def _is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its ancestors, where ``/proc`` tells; without
    it, the environment's word is taken (a ticket of this host that it names). Windows has no
    ``/proc``: there the path is a folder of the current drive (under Wine, Linux's own
    ``/proc``, numbered by Linux pids, not Windows ones)."""
    if sys.platform == "win32" or not os.path.isdir("/proc/self"):
        return True
    here = os.getpid()
    for _ in range(4096):  # a chain of parents, never a loop; the bound only guards a bug
        if here == pid:
            return True
        if here <= 1:
            return False
        try:
            with open(f"/proc/{here}/stat", "rb") as stat:  # "pid (name) state ppid ..."
                here = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


# What Windows starts by itself (CreateProcess, and cmd.exe for a batch file).
WINDOWS_RUNNABLE = (".exe", ".com", ".bat", ".cmd")


class NotRunnable(Exception):
    """The command cannot be run; ``code`` is what a shell would exit with (127, 126)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _find(program: str) -> str:
    """Check the command before waiting in line for it, not after: 127 when it is not found,
    126 when it is found but cannot be run, as ``env(1)``, ``timeout(1)`` and shells say."""
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.exists(program):
            bare = program.rstrip(os.sep + (os.altsep or ""))
            if bare != program and os.path.isfile(bare):  # as execve: ENOTDIR, 126
                raise NotRunnable(
                    f"{program} ends in a separator, but {bare} is a file: drop the last "
                    f"{program[-1]}",
                    EXIT_CANNOT_RUN,
                )
            raise NotRunnable(f"command not found: {_shown(program)}", EXIT_NOT_FOUND)
        if os.path.isdir(program):
            raise NotRunnable(f"{program} is a folder, not a command", EXIT_CANNOT_RUN)
        if not os.access(program, os.X_OK):
            raise NotRunnable(
                f"command is not executable: {program} (check its permissions)", EXIT_CANNOT_RUN
            )
        if sys.platform == "win32" and not program.lower().endswith(WINDOWS_RUNNABLE):
            raise NotRunnable(  # every file is "executable" there: its name decides
                f"{program} is not a program Windows can start (an .exe, .com, .bat or .cmd "
                "file): to open a document or run a script, name the program that does it",
                EXIT_CANNOT_RUN,
            )
        return program
    found = find_on_path(program)
    if found is None:
        denied = None if sys.platform == "win32" else _not_executable_on_path(program)
        if denied is not None:  # as a shell or execvp(3) says: 126, not "not found"
            raise NotRunnable(
                f"command is not executable: {denied} (check its permissions)", EXIT_CANNOT_RUN
            )
        raise NotRunnable(
            f"command not found: {_shown(program)} (is it installed and on PATH?)",
            EXIT_NOT_FOUND,
        )
    return found


def _not_executable_on_path(program: str) -> str | None:
    """The first file called ``program`` on PATH, when none of them may be executed. A walk
    of its own, made only once the search has failed: ``find_on_path`` stays one ``access``
    per folder at every start."""
    for folder in os.get_exec_path():
        path = os.path.join(folder, program)
        if os.path.isfile(path):
            return path
    return None


def find_on_path(program: str) -> str | None:
    """``shutil.which(program)``; on POSIX without importing ``shutil``, whose compression
    modules would cost every start of ``inturn run`` a tenth of its time."""
    if sys.platform == "win32":  # PATHEXT, the current folder first: shutil knows Windows
        import shutil

        return shutil.which(program)
    for folder in os.get_exec_path():
        path = os.path.join(folder, program)  # an empty entry is the current folder
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def fit_grace(given: float | None, window: float, quiet: bool) -> float:
    """The grace after a lost turn: ``--grace`` (1 s by default), cut to half the time before
    anyone else may take the turn (the store's ``stop_window``), so that the command is gone
    before the next holder starts; the other half is for learning of the loss. A grace the
    user chose is said to be cut, once (unless ``--quiet``: it is no error)."""
    grace = DEFAULT_GRACE_SECONDS if given is None else given
    fitted = min(grace, window / 2)
    if given is not None and fitted < given and not quiet:
        warn(
            f"--grace {given:g} is cut to {fitted:g}s: the next holder after a lost turn may "
            f"start {window:g}s after it (a longer lock delay allows a longer grace)"
        )
    return fitted


# What Python sets LC_CTYPE to when it coerces the C locale at its start (PEP 538).
COERCED_CTYPES = ("C.UTF-8", "C.utf8", "UTF-8")


def environment_as_given() -> dict[str, str]:
    """inturn's environment as it was started with, for the command: in the C locale Python
    sets ``LC_CTYPE=C.UTF-8`` for itself (PEP 538), which would change what ``wc -m``,
    ``grep`` or ``tr`` do in the command. Where ``/proc`` keeps the environment as given
    (Linux), the variable is put back as it was there."""
    env = dict(os.environ)
    if env.get("LC_CTYPE") not in COERCED_CTYPES or not sys.platform.startswith("linux"):
        return env
    try:
        with open("/proc/self/environ", "rb") as given:
            words = given.read().split(b"\0")
    except OSError:
        return env
    before = [w[len(b"LC_CTYPE=") :] for w in words if w.startswith(b"LC_CTYPE=")]
    if not before:
        del env["LC_CTYPE"]
    else:
        env["LC_CTYPE"] = os.fsdecode(before[-1])
    return env


def _child_env(held: Turn, environment: dict[str, str]) -> dict[str, str]:
    """The command's environment: inturn's own (``environment``), and where it stands."""
    env = dict(environment)
    env["INTURN_NAME"] = held.name
    env["INTURN_TICKET"] = str(held.ticket)
    env["INTURN_ABANDONED"] = "1" if held.abandoned else "0"
    return env


def _prepare_child_runner(remote: bool) -> None:
    """Load what starts the command before waiting, not between the turn and the command:
    the next command in line then starts as soon after the turn as the system allows."""
    if sys.platform == "win32":
        from . import child_windows  # noqa: F401
    else:
        from .child_posix import prepare

        prepare(can_be_lost=remote)


def _run_holding(
    held: Turn,
    executable: str,
    command: list[str],
    args: argparse.Namespace,
    signals: RunSignals,
    environment: dict[str, str],
) -> int:
    if sys.platform == "win32":
        from .child_windows import run_child

        signals.restore()  # the console's own handling takes over (see ``run_child``)
        membership = held.membership
        job_name = None if membership is None else membership.job_name
        env = _child_env(held, environment)

        def stopping() -> str:  # said as it happens, with the reason known by then
            return f"{_lost(held)}; stopping the command"

        return int(run_child(command, env, args.close, held.on_lost, job_name, stopping))

    else:
        from .child_posix import CannotRun, run_command

        membership = held.membership
        if held.lost:  # lost on the way from the line to here: the command is not started
            say(f"{_lost(held)}; not starting the command")
            return EXIT_LOST
        handles = [] if args.close or membership is None else membership.inheritable_handles()
        # A turn the command cannot inherit (a lease that only this process renews) ends when
        # inturn dies; the command must not run on outside it.
        bound = not args.close and not handles
        try:
            outcome = run_command(
                command,
                executable,
                _child_env(held, environment),
                handles=handles,
                bound=bound,
                signals=signals,
                on_lost=held.on_lost,
                grace=fit_grace(args.grace, held.line.store.stop_window, args.quiet),
                say=say,
                lost_message=lambda: f"{_lost(held)}; stopping the command",
                keep_leftovers=not args.close,
                leftovers_note=None
                if args.quiet
                else f"the command has ended, but processes it started still run and keep turn "
                f"{held.ticket} of line {held.name!r} until they end (--close lets them run on "
                "outside the turn)",
                # A command that inherits the turn (it holds it if inturn dies), or is bound to it
                # (it dies with the turn), is the holder: status names it, and tells its stops.
                on_started=held.note_runner if handles or bound else None,
                on_ended=held.release,
            )
        except CannotRun as exc:
            if held.lost:  # what it would inherit went with the turn (a closed connection)
                say(f"{_lost(held)}; not starting the command")
                return EXIT_LOST
            if exc.by_exec:  # found and executable, yet the system would not run it
                say(_refused(command[0], exc.error))
                return EXIT_NOT_FOUND if exc.error.errno == errno.ENOENT else EXIT_CANNOT_RUN
            raise UsageError(f"cannot run {command[0]}: {system_error(exc.error)}") from None
        if outcome.lost:
            return EXIT_LOST
        if outcome.signum is not None:  # as ``timeout(1)``: a shell's loop stops at Ctrl-C
            return interrupted(outcome.signum, whole_group=outcome.from_terminal)
        return outcome.code


def _lost(held: Turn) -> str:
    """That the turn was lost, and why, as the backend knows it by now."""
    membership = held.membership
    why = "the server is unreachable" if membership is None else membership.why_lost()
    return f"lost the turn in line {held.name!r} ({why})"


def _shown(program: str) -> str:
    """``program`` as a message names it: quoted as a shell would take it (``''``; ``""`` on
    Windows), and with control characters and undecodable bytes escaped."""
    return escape_controls(shell_words([program]))


def _refused(program: str, error: OSError) -> str:
    """Why the system would not run ``program``, which exists and is executable (as a shell
    says it: 127 when its ``#!`` interpreter is missing, 126 otherwise)."""
    why = {
        errno.ENOENT: "its #! interpreter was not found (check the script's first line)",
        errno.ENOEXEC: "it is neither a program nor a script starting with #!",
        errno.EACCES: "permission denied (check its permissions and those of its folders, "
        "or a noexec mount)",
    }.get(error.errno or 0, error.strerror or str(error))
    return f"cannot run {escape_controls(program)}: {why}"
