"""The ``inturn`` command: a thin layer over ``inturn.Line`` (``run``, ``status``, ``wait``, ...).

Nothing in the library imports this package; its exit codes are in ``exits.py``.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import suppress

from ..errors import InturnError, ServerUnavailable
from .exits import EXIT_OUTPUT_CLOSED, EXIT_UNAVAILABLE, EXIT_USAGE, Signalled
from .output import OutputClosed, emit, open_missing_streams, say, show_warning, system_error
from .parser import build_parser

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import NoReturn


def main(argv: Sequence[str] | None = None) -> int:
    open_missing_streams()
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args, unknown = parser.parse_known_args(words)
    if unknown:  # told by the command's own parser, in one line naming its --help
        getattr(args, "sub_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.words = words  # as typed, for what the parser does not keep (a -- before a command)
    warnings.showwarning = show_warning
    try:
        if args.action in ("run", "wait"):
            from .inherited import drop_inherited_turn

            drop_inherited_turn(args.name)
        if args.action == "run":
            from .run import run

            return run(parser, args)
        if args.action == "wait":
            from .wait import wait

            return wait(args)
        if args.action == "send":
            from .send import send

            return send(args)
        if args.action == "completion":
            from .completion import script

            emit(script(args.shell, parser))
            return 0
        if args.action == "forget":
            from .status import forget

            return forget(args)
        if args.action == "top" or args.watch or args.interval is not None:
            from .top import top

            return top(args)
        from .status import status

        return status(args)
    except ServerUnavailable as exc:  # worth trying again later: the call itself is fine
        say(str(exc))
        return EXIT_UNAVAILABLE
    except InturnError as exc:
        say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        import signal

        return Signalled(signal.SIGINT)
    except OutputClosed:
        return EXIT_OUTPUT_CLOSED
    except OSError as exc:  # a full disk, too many open files: a system error, not a bug
        say(system_error(exc))
        return EXIT_USAGE


def command() -> None:
    """The ``inturn`` console script and ``python -m inturn``: ``main``, then exit.

    Once the turn is given back, the next holder starts its command at once, beside this
    process's exit; the interpreter's module-by-module teardown would take milliseconds of CPU
    from it (and from every start). So when nothing could need that teardown (no exit handler
    registered, no other thread, no server client whose connections deserve an orderly close)
    and what was written is flushed, the process ends at once. Otherwise it exits as usual.
    """
    code = main()
    if isinstance(code, Signalled):
        _die_of(code.signum, code.whole_group)
    code = _as_c_int(code)
    if _nothing_to_tear_down():
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)  # the usual exit reports it, with its own exit code
        os._exit(code)
    sys.exit(code)


def _die_of(signum: int, whole_group: bool) -> NoReturn:
    """End by ``signum``, as inturn would have without its handlers, sent to inturn alone or
    to its ``whole_group`` (see ``Signalled``): what was written is flushed and exit handlers
    are run first, as an exit would."""
    if sys.platform == "win32":  # no death by a signal there: the code as it is
        sys.exit(128 + signum)
    import signal

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    if whole_group:
        os.killpg(0, signum)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # not reached: the signal ends the process before kill returns


def _as_c_int(code: int) -> int:
    """``code`` as the C int that ``os._exit`` and ``sys.exit`` take, with the same 32 bits.

    On Windows a command's exit code is a DWORD, and those above 2**31 are common
    (0xC000013A after Ctrl-C, 0xC0000005 for a crash, 0xFFFFFFFF for -1): passed on as they
    are, they would not fit, and inturn would fail instead of exiting with them.
    """
    return code - 2**32 if 2**31 <= code < 2**32 else code


def _nothing_to_tear_down() -> bool:
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return False
    if any(client in sys.modules for client in ("psycopg", "redis")):
        return False
    return atexit._ncallbacks() == 0
