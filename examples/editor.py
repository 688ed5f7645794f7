"""A small editor that runs once: a later start hands its files to the running one.

    python examples/editor.py notes.txt &      # the first start opens notes.txt and listens
    python examples/editor.py todo.txt a.md    # a later start: the first one opens them
    inturn send example-editor -- plan.txt     # the same from the shell

The first start holds the line ``example-editor`` for as long as it runs. Every later start
sends its arguments and working folder to it, prints the answer and exits at once. Ctrl-C
or SIGTERM ends the first one, and the next start becomes the first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

import inturn

NAME = "example-editor"


def open_files(paths: list[str], cwd: str) -> list[str]:
    """What a real editor would do: open each file (here: say so)."""
    opened = [os.path.normpath(os.path.join(cwd, path)) for path in paths]
    for path in opened:
        print(f"editor {os.getpid()}: opened {path}", flush=True)
    return opened


def on_next(message: inturn.Message) -> dict[str, object]:
    """Called in the first instance (in a thread of its own) once per later start."""
    opened = open_files(list(message.argv[1:]), message.cwd)
    print(f"editor {os.getpid()}: from {message.user}, pid {message.pid}", flush=True)
    return {"opened": opened}


def stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the first instance as Ctrl-C does: cleanly, so the line is given back."""
    sys.exit(0)


def main() -> int:
    try:
        app = inturn.single_instance(NAME, on_message=on_next)
    except inturn.AlreadyRunning as running:
        reply: dict[str, list[str]] = running.reply or {"opened": []}  # None: not listening
        print(f"already running as pid {running.pid}, which opened: {', '.join(reply['opened'])}")
        return 0
    except inturn.InturnError as problem:  # it did not answer, or refused
        print(f"editor: {problem}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, stop)
    open_files(sys.argv[1:], os.getcwd())
    print(f"editor {os.getpid()}: running; start it again with more files", flush=True)
    try:
        while True:  # a real application runs its event loop here
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        app.release()  # stops listening; the next start becomes the first
    return 0


if __name__ == "__main__":
    sys.exit(main())
