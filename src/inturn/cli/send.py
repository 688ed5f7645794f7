"""``inturn send NAME -- ARG ...``: hand arguments to the running instance, print its reply.

The instance is a program that called ``inturn.single_instance(NAME, on_message=...)``; it
gets ``argv`` ``[NAME, ARG, ...]``, this command's working folder and ``--data``, and its
reply is printed as JSON. Exit codes: 0 it answered; 1 its handler raised, or it refused
this user (the error on stderr); 69 no instance runs (or it does not listen, or it ended
before it answered); 75 no answer within ``--timeout``; 2 bad input or an unusable setup.
"""

from __future__ import annotations

import argparse
import json

from ..errors import MessageError, NotRunning, Timeout, UsageError
from ..line import DEFAULT_TIMEOUT
from ..line import send as send_message
from .exits import EXIT_CONFLICT, EXIT_FAILED, EXIT_NOT_RUNNING
from .output import emit, json_text, say
from .parser import Commands, Parser, _seconds, add_where, after_double_dash, where_from


def add_parser(commands: Commands[Parser]) -> argparse.ArgumentParser:
    """The ``send`` subcommand, added to the ``inturn`` command's parser."""
    send = commands.add_parser(
        "send",
        manual="send",
        help="send arguments to the running instance of NAME and print its reply",
        description="Send ARGs (as argv NAME ARG ...), this folder and --data to the program "
        "that holds line NAME with inturn.single_instance(NAME, on_message=...), and print "
        "its reply as JSON. Exits 0 when it answered, 1 when it answered with an error, 69 "
        "when no instance runs (or it does not listen), 75 when it did not answer in time.",
    )
    send.add_argument("name", metavar="NAME", help="the line its running instance holds")
    send.add_argument(
        "arguments",
        nargs=argparse.REMAINDER,
        metavar="-- ARG ...",
        help="the arguments to hand over (it gets argv NAME ARG ...)",
    )
    send.add_argument("--data", metavar="JSON", help="a JSON value to send along")
    send.add_argument(
        "-w",
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"wait that long for the answer (default {DEFAULT_TIMEOUT:g}; exit 75 after)",
    )
    send.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say on stderr when the instance has taken the message",
    )
    add_where(send)
    send.set_defaults(send_parser=send)
    return send


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the timeout must be more than 0 seconds, not {text}")
    return value


def send(args: argparse.Namespace) -> int:
    usage: argparse.ArgumentParser = args.send_parser
    arguments = list(args.arguments)
    if after_double_dash(args, arguments):
        pass  # every word is the instance's, even a -- or one spelt like send's options
    elif arguments and arguments[0] == "--":
        arguments = arguments[1:]
    elif arguments and arguments[0] in usage._option_string_actions:
        import shlex

        takes_value = usage._option_string_actions[arguments[0]].nargs != 0
        moved = arguments[: 2 if takes_value else 1]  # its value goes with it, not the name
        usage.error(
            f"{arguments[0]} comes after the line's name, where the arguments belong: options "
            f"go before NAME (inturn send {shlex.join(moved)} {shlex.quote(args.name)} -- ...)"
        )
    data = None
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise UsageError(
                f"--data is not JSON ({exc}): for a string, quote it: '\"text\"'"
            ) from None
        except RecursionError:
            raise UsageError("--data is nested too deeply: send a flatter JSON value") from None
    where = where_from(args)

    def received(pid: int | None) -> None:
        if args.verbose:
            say(f"pid {pid} took the message; waiting for its answer")

    try:
        reply = send_message(
            args.name,
            [args.name, *arguments],
            data=data,
            timeout=args.timeout,
            scope=where.scope,
            directory=where.directory,
            backend=where.backend,
            on_received=received,
        )
    except NotRunning as exc:
        say(str(exc))
        return EXIT_NOT_RUNNING
    except Timeout as exc:
        say(str(exc))
        return EXIT_CONFLICT
    except MessageError as exc:
        say(str(exc))
        return EXIT_FAILED
    emit(json_text(reply))
    return 0
