"""The terminal side of ``inturn top``: the full screen, the keys, the signals, the loop.

POSIX only (termios). The view takes the alternate screen, hides the cursor, turns line
wrapping off and reads keys one at a time without echo; all of it is put back on every way
out (``q``, Ctrl-C, SIGTERM, SIGHUP, an error) and while stopped by Ctrl-Z. What is shown
comes from a ``top.Source``; this module only sleeps, redraws and fits rows to the screen.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from .top import is_terminal

if TYPE_CHECKING:
    from .top import Source

assert sys.platform != "win32"  # the rest of this module is POSIX code

# When a holder has just left, the next one marks itself holding a moment later (after a
# server's lock delay, when the holder died): the listing is read again after these pauses,
# doubling up to the longest, for as long as the source says the turn may take to pass.
SETTLE_FIRST = 0.05
SETTLE_LONGEST = 0.5

# The escape sequences of the view: alternate screen, cursor hidden, no line wrapping.
ENTER = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J"
LEAVE = "\x1b[?7h\x1b[?25h\x1b[?1049l"

EXIT_QUIT = 0


def live(open_source: Callable[[Callable[[], None]], Source], interval: float) -> int:
    """Run the view until it quits; its exit code. ``open_source(wake)`` makes what is shown
    (``wake``, called from any thread, says the line changed)."""
    waker = Waker()
    try:
        source = open_source(waker.wake)
        try:
            snapshot = source.read()  # bad input fails here, before the screen is touched
            with Terminal(waker) as terminal:
                return View(source, terminal, interval).run(snapshot)
        finally:
            source.close()
    finally:
        waker.close()


class Waker:
    """A pipe the main loop sleeps on (with the keyboard) and anyone may write to: watcher
    threads when a ticket leaves, signal handlers when the terminal is resized or a signal
    asks to quit."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        os.set_blocking(self.write_end, False)
        self._lock = threading.Lock()  # threads only: a signal handler must not take it
        self._closed = False
        self._changed = False

    def wake(self) -> None:
        """From a watcher thread: the line changed, read it again. Never fails, even after
        ``close``."""
        with self._lock:
            self._changed = True
            if not self._closed:
                self.poke()

    def take_changed(self) -> bool:
        """Whether a watcher woke the loop since the last call."""
        with self._lock:
            changed, self._changed = self._changed, False
        return changed

    def poke(self) -> None:
        """From a signal handler (the main thread, which alone closes the pipe)."""
        with contextlib.suppress(OSError):  # full: the loop wakes anyway
            os.write(self.write_end, b".")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.read_end, 512):
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self.read_end)
            os.close(self.write_end)


# --------------------------------------------------------------------------- the terminal


class Terminal:
    """The screen while the view runs: alternate screen, cursor hidden, no line wrapping,
    keys read one by one without echo. Signals only note what happened and wake the loop
    (SIGWINCH: redraw; SIGINT: quit, a second one interrupts whatever is running; SIGTERM,
    SIGHUP: quit; SIGTSTP: put the terminal back, stop, and take it again on SIGCONT)."""

    def __init__(self, waker: Waker) -> None:
        self.waker = waker
        self.out = sys.stdout.fileno()
        self.keys = sys.stdin.fileno() if is_terminal(sys.stdin) else None
        self.encoding = sys.stdout.encoding or "utf-8"
        self.quit_code: int | None = None
        self.suspend_asked = False
        self._leaving = False
        self._original_mode: list[Any] | None = None  # the keyboard's mode before we came
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Terminal:
        for name, handler in (
            ("SIGWINCH", self._on_resize),
            ("SIGCONT", self._on_resize),
            ("SIGINT", self._on_interrupt),
            ("SIGTERM", self._on_quit),
            ("SIGHUP", self._on_quit),
            ("SIGTSTP", self._on_stop),
        ):
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, handler)
        try:
            if self.keys is not None:
                self._original_mode = termios.tcgetattr(self.keys)
            self._take()
        except BaseException:
            self._give_back()
            self._restore_handlers()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._leaving = True  # from now on a signal is only noted, whatever it is
        try:
            self._give_back()
        finally:
            self._restore_handlers()

    def _take(self) -> None:
        """Keys unechoed, one at a time (Ctrl-C and Ctrl-Z still signal); our screen."""
        original = self._original_mode
        if original is not None and self.keys is not None:
            mode = [*original[:6], list(original[6])]
            mode[3] &= ~(termios.ECHO | termios.ICANON)  # the local flags; ISIG stays
            mode[6][termios.VMIN] = 1
            mode[6][termios.VTIME] = 0
            termios.tcsetattr(self.keys, termios.TCSANOW, mode)
        self.write(ENTER)

    def _give_back(self) -> None:
        """The terminal as it was; one already gone (SIGHUP) is no error."""
        with contextlib.suppress(OSError):
            self.write(LEAVE)
        original = self._original_mode
        if original is not None and self.keys is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(self.keys, termios.TCSADRAIN, original)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        self.waker.poke()  # every wake-up redraws, at the size of the moment

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.quit_code is not None and not self._leaving:
            raise KeyboardInterrupt  # a second Ctrl-C: stuck somewhere, stop it there
        self.quit_code = EXIT_QUIT
        self.waker.poke()

    def _on_quit(self, signum: int, frame: FrameType | None) -> None:
        if self.quit_code is None:
            self.quit_code = 128 + signum
        self.waker.poke()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.suspend_asked = True
        self.waker.poke()

    def suspend(self) -> None:
        """Ctrl-Z: the shell gets its screen back while we are stopped; we take it again
        when continued (``fg``)."""
        self.suspend_asked = False
        self._give_back()
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT
        finally:
            signal.signal(signal.SIGTSTP, previous)
            self._take()  # the loop redraws next

    def size(self) -> tuple[int, int]:
        """The terminal's size; 80x24 for what it does not know: a terminal whose size nobody
        set says 0x0 (some CI runners, serial consoles), as the status line of ``run`` takes
        80 columns then."""
        try:
            columns, rows = os.get_terminal_size(self.out)
        except OSError:
            return 80, 24
        return columns if columns > 0 else 80, rows if rows > 0 else 24

    def sleep(self, seconds: float) -> bytes:
        """Sleep until a key, a wake-up, a signal or ``seconds``; the keys pressed."""
        watched = [self.waker.read_end] + ([self.keys] if self.keys is not None else [])
        ready, _, _ = select.select(watched, [], [], max(0.0, seconds))
        pressed = b""
        if self.waker.read_end in ready:
            self.waker.drain()
        if self.keys is not None and self.keys in ready:
            try:
                pressed = os.read(self.keys, 64)
            except OSError:
                pressed = b""
            if not pressed:  # the keyboard is gone: keep the view, stop reading keys
                self.keys = None
        return pressed

    def draw(self, rows: Sequence[str], columns: int, height: int) -> None:
        """Each row cut to the width and written at its place (never a newline, so nothing
        scrolls or wraps), the rest of the screen cleared."""
        out = []
        for number, row in enumerate(rows[:height], start=1):
            text, used = fit(row, columns)
            out.append(f"\x1b[{number};1H{text}")
            if used < columns:
                out.append("\x1b[K")  # at full width this would erase the last column
        if len(rows) < height:
            out.append(f"\x1b[{len(rows) + 1};1H\x1b[J")
        self.write("".join(out))

    def write(self, text: str) -> None:
        data = text.encode(self.encoding, "replace")
        while data:
            try:
                written = os.write(self.out, data)
            except BlockingIOError:  # someone made the terminal non-blocking: wait for room
                select.select([], [self.out], [], 1.0)
                continue
            data = data[written:]


def fit(text: str, columns: int) -> tuple[str, int]:
    """``text`` cut to ``columns`` terminal cells (a wide character takes two, a combining
    mark none), and the cells it takes."""
    used = 0
    for index, char in enumerate(text):
        width = _cells(char)
        if used + width > columns:
            return text[:index], used
        used += width
    return text, used


def _cells(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


# --------------------------------------------------------------------------- the loop


class View:
    """Redraws when a watched ticket leaves, on the timer, on a resize; quits on ``q``."""

    def __init__(self, source: Source, terminal: Terminal, interval: float) -> None:
        self.source = source
        self.terminal = terminal
        self.interval = interval

    def run(self, snapshot: Any) -> int:
        terminal = self.terminal
        next_tick = time.monotonic() + self.interval
        settle = _Settling()
        self._draw(snapshot)
        while True:
            due = next_tick if settle.at is None else min(next_tick, settle.at)
            pressed = terminal.sleep(due - time.monotonic())
            if terminal.quit_code is not None:
                return terminal.quit_code
            if b"q" in pressed or b"Q" in pressed or b"\x03" in pressed:
                return EXIT_QUIT
            if terminal.suspend_asked:
                terminal.suspend()
            changed = terminal.waker.take_changed()
            now = time.monotonic()
            ticked = now >= next_tick
            settling = settle.at is not None and now >= settle.at
            if changed or ticked or settling:
                snapshot = self.source.read()
                if ticked:
                    next_tick = now + self.interval
                if changed or settling:
                    settle.after_read(now, changed, self.source.settling(snapshot))
            self._draw(snapshot)

    def _draw(self, snapshot: Any) -> None:
        columns, height = self.terminal.size()
        right = f"q quits  {time.strftime('%H:%M:%S')}"
        left, used = fit(self.source.title(), max(0, columns - len(right) - 2))
        title = left + " " * (columns - used - len(right)) + right
        body = self.source.rows(snapshot, time.time(), height - 1, columns)
        self.terminal.draw([title, *body], columns, height)


class _Settling:
    """When to read again while a turn passes from a holder who left to the next one."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.step = SETTLE_FIRST
        self.until: float | None = None

    def after_read(self, now: float, changed: bool, window: float | None) -> None:
        """``window``: how long the turn may still take to pass (None: it has passed)."""
        if window is None:
            self.at, self.step, self.until = None, SETTLE_FIRST, None
            return
        if changed or self.until is None:  # a new leave: give it the whole window
            self.step, self.until = SETTLE_FIRST, now + window
        if now + self.step > self.until:
            self.at = None  # it is taking longer: the timer shows the rest
            return
        self.at = now + self.step
        self.step = min(self.step * 2, SETTLE_LONGEST)
