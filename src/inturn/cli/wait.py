"""``inturn wait``: wait until everyone now in a line has finished, without taking a turn."""

from __future__ import annotations

import argparse

from ..errors import Cancelled, Timeout
from .output import say
from .parser import line_from
from .signals import RunSignals


def wait(args: argparse.Namespace) -> int:
    signals = RunSignals()  # a signal ends the wait (128+N), never by a traceback
    signals.install()
    try:
        line_from(args).wait(args.timeout, cancel=signals.cancel)  # opens nothing to close
        return 0
    except Cancelled:
        return 128 + signals.pending[0]
    except Timeout as exc:
        say(str(exc))  # it names how long it waited
        return int(args.conflict_exit_code)
    finally:
        signals.settle()
