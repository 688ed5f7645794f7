"""A Windows process that takes a turn and reports each step on stdout (runs under Wine).

Usage: ``python.exe winworker.py NAME_HEX [--slots N] [--timeout S] [--no-wait] [--hold]
[--log FILE] [--acquire-in main|thread|async] [--cancellable] [--shared] [--newest-wins]
[--max-waiting N] [--gate EVENT] [--wait-line]``.
The line name comes hex-encoded (UTF-8) so that any name survives the trip through a command
line. Reports: ``started PID``,
``waiting TICKET POSITION``, ``acquired TICKET ABANDONED DEAD_PID``, ``released TICKET``,
``busy`` (with ``--max-waiting``: and the message), ``timeout``, ``interrupted``,
``cancelled``, ``replaced`` (exit 77: a later ``--newest-wins`` waiter took its place),
``refused MESSAGE`` (exit 2: a usage error, such as other slots than the line's).

``--gate EVENT`` opens (or creates) the named manual-reset event EVENT, says ``gated`` and
waits for it to be set before it asks for its turn: a test releases many workers at once.
``--wait-line`` calls ``Line.wait()`` instead of taking a turn and says ``waited``.

While holding with ``--hold`` it obeys stdin, one command a line: ``release``; ``exit`` (die at
once with ``os._exit``, holding the turn); ``terminate PID`` (``TerminateProcess`` on another
process: on Windows ``os.kill`` with a code other than a console event does exactly that).
With ``--cancellable`` the wait happens in a thread and ``cancel`` on stdin cancels it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from typing import Any

import inturn


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(text + "\n")


def acquire(line: inturn.Line, args: argparse.Namespace) -> inturn.Turn:
    def progress(p: inturn.Progress) -> None:
        say("waiting", p.ticket, p.position)

    # Only the options asked for are passed on.
    options: dict[str, Any] = {}
    if args.shared:
        options["shared"] = True
    if args.newest_wins:
        options["newest_wins"] = True
    if args.max_waiting is not None:
        options["max_waiting"] = args.max_waiting

    if args.acquire_in == "async":
        # acquire runs in the event loop's executor thread; the turn is released from this one
        async def take() -> inturn.Turn:
            return await inturn.acquire_async(line, args.timeout, not args.no_wait, **options)

        return asyncio.run(take())
    if args.acquire_in == "thread" or args.cancellable:
        token = inturn.CancelToken()
        result: list[inturn.Turn | BaseException] = []

        def work() -> None:
            try:
                result.append(
                    line.acquire(
                        args.timeout,
                        not args.no_wait,
                        on_progress=progress,
                        cancel=token,
                        **options,
                    )
                )
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        if args.cancellable:
            threading.Thread(
                target=lambda: sys.stdin.readline() and token.cancel(), daemon=True
            ).start()
        thread.join()  # the thread that took the turn has ended
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]
    return line.acquire(args.timeout, not args.no_wait, on_progress=progress, **options)


def wait_at_gate(name: str) -> None:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateEventW.restype = wintypes.HANDLE
    kernel32.CreateEventW.argtypes = [
        wintypes.LPVOID,
        wintypes.BOOL,
        wintypes.BOOL,
        wintypes.LPCWSTR,
    ]
    kernel32.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
    handle = kernel32.CreateEventW(None, True, False, name)
    assert handle, ctypes.get_last_error()
    say("gated")
    kernel32.WaitForSingleObject(handle, 0xFFFFFFFF)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name_hex")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--log")
    parser.add_argument("--acquire-in", choices=("main", "thread", "async"), default="main")
    parser.add_argument("--cancellable", action="store_true")
    parser.add_argument("--shared", action="store_true")
    parser.add_argument("--newest-wins", action="store_true")
    parser.add_argument("--max-waiting", type=int)
    parser.add_argument("--gate")
    parser.add_argument("--wait-line", action="store_true")
    args = parser.parse_args()
    name = bytes.fromhex(args.name_hex).decode("utf-8", "surrogatepass")
    line = inturn.Line(name, slots=args.slots)
    say("started", os.getpid())
    if args.gate:
        wait_at_gate(args.gate)
    try:
        if args.wait_line:
            line.wait(args.timeout)
            say("waited")
            return 0
        turn = acquire(line, args)
    except inturn.Busy as exc:
        if args.max_waiting is not None:
            say("busy", str(exc).replace("\n", " "))
        else:
            say("busy")
        return 75
    except inturn.Timeout:
        say("timeout")
        return 75
    except inturn.Cancelled:
        say("cancelled")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except inturn.InturnError as exc:
        if isinstance(exc, inturn.Replaced):
            say("replaced")
            return 77
        if isinstance(exc, inturn.UsageError):
            say("refused", str(exc).replace("\n", " "))
            return 2
        raise
    dead = turn.abandoned_by.pid if turn.abandoned_by else "-"
    if args.log:
        append(args.log, f"enter {turn.ticket} {os.getpid()} {time.monotonic_ns()}")
    say("acquired", turn.ticket, int(turn.abandoned), dead)
    while args.hold:
        command = sys.stdin.readline().split()
        if not command or command[0] == "release":
            break
        if command[0] == "exit":
            os._exit(3)
        if command[0] == "terminate":
            os.kill(int(command[1]), 9)
            say("terminated", command[1])
    if args.log:
        append(args.log, f"exit {turn.ticket} {os.getpid()} {time.monotonic_ns()}")
    turn.release()
    say("released", turn.ticket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
