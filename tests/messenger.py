"""A single-instance program for the message tests, on POSIX and on Windows (under Wine).

``python messenger.py instance NAME [options]`` calls ``inturn.single_instance(NAME, ...)``
the way an application would. The first start reports ``first PID TICKET`` and listens: each
message is saved as ``INBOX/<n>.json`` (argv, cwd, data, pid, user; ``n`` counts from 1),
reported as ``message N PID USER``, and answered as ``--reply`` says. A later start reports
how its call ended, one line: ``already PID REPLY_JSON``, ``failed KIND TEXT``
(``MessageError``), ``timeout TEXT``, ``notrunning TEXT``, ``usage TEXT``, ``backend TEXT``;
with ``--stay`` a later start that became the first instance goes on listening.

``python messenger.py hold NAME CHANNEL`` holds the line with a ticket that names CHANNEL as
its socket or pipe, as a hostile user's own code could; ``python messenger.py listen NAME``
opens a channel of the line without joining it and reports ``listening ADDRESS``. Both then
wait for stdin to close.

While the first instance runs, stdin commands it: ``go`` lets a held handler answer,
``release`` releases the line (and stops listening), ``exit`` ends the process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from typing import Any

import inturn
from inturn.messages import MAX_MESSAGE_BYTES, current_folder, request


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("instance", "hold", "listen"))
    parser.add_argument("name")
    parser.add_argument("channel", nargs="?")
    parser.add_argument("--inbox")
    parser.add_argument("--reply", choices=("echo", "count", "data", "digest", "raise", "not-json"))
    parser.add_argument("--hold-first", action="store_true", help="the first handler waits for go")
    parser.add_argument("--hang", action="store_true", help="every handler hangs")
    parser.add_argument("--machine", action="store_true")
    parser.add_argument("--accept-from", action="append")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--data", help="JSON, hex-encoded (UTF-8)")
    parser.add_argument("--data-to-limit", action="store_true")
    parser.add_argument("--data-over-limit", action="store_true")
    parser.add_argument("--argv", help="sys.argv to send, as JSON, hex-encoded (UTF-8)")
    parser.add_argument("--stay", action="store_true")
    parser.add_argument("--chdir", help="work in this folder (hex-encoded UTF-8)")
    parser.add_argument("--starve", action="store_true", help="use up the open files until feed")
    parser.add_argument(
        "--sigpipe-default", action="store_true", help="SIGPIPE kills, as in many tools"
    )
    args = parser.parse_args()
    if args.sigpipe_default:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    scope = "machine" if args.machine else "user"
    if args.mode == "hold":
        return hold(args.name, args.channel or "", scope)
    if args.mode == "listen":
        return listen(args.name, scope)

    received = [0]
    counter = threading.Lock()
    go = threading.Event()

    def on_message(message: inturn.Message) -> Any:
        with counter:
            received[0] += 1
            number = received[0]
        if args.inbox:
            record = {**message._asdict(), "argv": list(message.argv)}
            with open(os.path.join(args.inbox, f"{number}.json"), "w", encoding="ascii") as out:
                json.dump(record, out)
        say("message", number, message.pid, message.user)
        if args.hang or (args.hold_first and number == 1):
            go.wait()
        if args.reply == "raise":
            raise ValueError(f"no thanks, {list(message.argv[-1:])}")
        if args.reply == "not-json":
            return {"set": {1, 2}}
        if args.reply == "data":
            return message.data
        if args.reply == "digest":
            return {"n": number, "sha256": digest(list(message.argv), message.cwd, message.data)}
        if args.reply == "count":
            return {"n": number}
        return {"n": number, "argv": list(message.argv), "cwd": message.cwd, "data": message.data}

    if args.chdir is not None:
        os.chdir(bytes.fromhex(args.chdir).decode("utf-8", "surrogatepass"))
    if args.argv is not None:
        sys.argv = json.loads(bytes.fromhex(args.argv).decode("utf-8", "surrogatepass"))
    data = None
    if args.data is not None:
        data = json.loads(bytes.fromhex(args.data).decode("utf-8", "surrogatepass"))
    if args.data_to_limit or args.data_over_limit:
        data = fill_to_limit(sys.argv, current_folder(), 1 if args.data_over_limit else 0)
        say("sending", digest(sys.argv, current_folder(), data))
    options: dict[str, Any] = {}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.accept_from:
        options["accept_from"] = args.accept_from
    try:
        turn = inturn.single_instance(
            args.name, on_message=on_message, wait=args.wait, data=data, scope=scope, **options
        )
    except inturn.AlreadyRunning as exc:
        say("already", exc.pid, json.dumps(exc.reply))
        return 0
    except inturn.MessageError as exc:
        say("failed", exc.kind, one_line(exc))
        return 1
    except inturn.Timeout as exc:
        say("timeout", one_line(exc))
        return 75
    except inturn.NotRunning as exc:
        say("notrunning", one_line(exc))
        return 69
    except inturn.UsageError as exc:
        say("usage", one_line(exc))
        return 2
    except inturn.BackendError as exc:
        say("backend", one_line(exc))
        return 2
    say("first", os.getpid(), turn.ticket)
    hoard = starve() if args.starve else []
    for line in sys.stdin:
        command = line.strip()
        if command == "feed":
            for fd in hoard:
                os.close(fd)
            hoard = []
        elif command == "go":
            go.set()
        elif command == "release":
            turn.release()
            say("released")
        elif command == "exit":
            break
    return 0


def starve() -> list[int]:
    """Open files until the process may open no more (``RLIMIT_NOFILE`` lowered first, so
    that it takes a moment): the listener's ``accept`` then fails with EMFILE."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    hoard = []
    try:
        while True:
            hoard.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    say("starved", len(hoard))
    return hoard


def digest(argv: list[str], cwd: str, data: Any) -> str:
    text = json.dumps([argv, cwd, data], ensure_ascii=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def fill_to_limit(argv: list[str], cwd: str, extra: int) -> str:
    """A string of data (Unicode and ASCII) that makes the message exactly the limit long
    (plus ``extra`` bytes)."""
    base = len(request(argv, cwd, "")) - 4  # the frame's length header
    room = MAX_MESSAGE_BYTES - base + extra
    unicode = "é€" * (room // 20)  # 2 + 3 bytes in UTF-8
    rest = room - len(unicode.encode())
    return unicode + "x" * rest


def hold(name: str, channel: str, scope: str) -> int:
    """Hold the line with a ticket that names ``channel`` (internal API, as hostile code)."""
    from inturn.queue import take_turn

    line = inturn.Line(name, scope=scope)
    held = take_turn(line.store, channel=channel)
    say("holding", os.getpid(), held.membership.number)
    sys.stdin.read()
    return 0


def listen(name: str, scope: str) -> int:
    """Open a channel of the line without joining it, and accept nothing."""
    line = inturn.Line(name, scope=scope)
    channel = line.store.open_channel(False)
    say("listening", channel.address)
    sys.stdin.read()
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
