"""The command of ``inturn run`` on POSIX, from before it starts until its turn is given back.

Everything here exists so that the command never runs on outside its turn unnoticed, and a
signal never kills inturn while the command runs:

* ``RunSignals`` (``signals.py``) is installed before inturn joins the line and kept until the
  turn has been released; once the command exists, it passes signals on to the command's
  process group.
* The command runs in a process group of its own, so that a signal reaches everything it
  started and a lost turn can stop all of it. When inturn is in the foreground of its
  terminal, the terminal's foreground goes to that group while the command runs, as a shell
  does for a job: Ctrl-C reaches the command once, and a stop of the command (Ctrl-Z) is
  mirrored on inturn's own group (inturn, and a script that runs it), so that the shell sees
  the job stopped; ``fg`` continues both.
* Whatever the command leaves running that kept its descriptors holds the turn with it: the
  command inherits a pipe besides the turn (``Leftovers``), and inturn gives the turn back
  only once every copy of it is closed, as on Windows, where the command's job must be empty.
* With a server backend on Linux, inturn is a child subreaper (``PR_SET_CHILD_SUBREAPER``):
  what the command orphans becomes inturn's child, is reaped by it, and is stopped with the
  command when the turn is lost (SIGTERM, then SIGKILL after ``grace`` seconds).
* When the command cannot inherit the turn (a Redis lease that only inturn renews), the
  direct child gets ``PR_SET_PDEATHSIG`` (Linux), and a sentinel ``sh`` kills the command's
  whole group with SIGKILL if inturn dies without telling it the command has ended.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from ..errors import LostTurn
from .inherited import TURN_FDS, describe
from .signals import RunSignals

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:  # imported where used: the usual start (``spawn``) needs none of it
    import subprocess
    from typing import Any

assert sys.platform != "win32"  # the rest of this module is POSIX code

# Stops that come from a terminal: a stop of the command by one of these is a stop of the job.
TERMINAL_STOPS = ("SIGTSTP", "SIGTTIN", "SIGTTOU")
# After SIGKILL, how long to wait for everything to vanish before giving up on stragglers
# (a process stuck in the kernel, for example on a dead network file system).
KILL_WAIT_SECONDS = 5.0
# While stopping after a lost turn, how often to look again at processes whose death no
# SIGCHLD reports to inturn (members of the group that are not its children).
STOP_RECHECK_SECONDS = 0.05
# How long after the command ends inturn waits for what it left running before saying so.
LEFTOVERS_NOTE_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# The sentinel (see ``Sentinel``): reads the command's group (written by the command itself
# before it runs), then waits for "done"; end of file without it means inturn died, and the
# group goes with it. It ignores the signals a
# terminal or a user would send to a job, since it is part of none.
SENTINEL_SCRIPT = """trap '' INT TERM HUP QUIT TSTP TTIN TTOU USR1 USR2 ALRM
read -r group || exit 0
[ "$group" = done ] && exit 0
read -r word
[ "$word" = done ] || kill -s KILL -- "-$group" 2>/dev/null
"""


class Outcome:
    """How the command ended: inturn's exit code for it (128+N when signal N killed it),
    whether the turn was lost, the signal that killed it, and whether it had the terminal's
    foreground then (a signal from the terminal reached it, and not inturn's own group)."""

    __slots__ = ("code", "from_terminal", "lost", "signum")

    def __init__(
        self, code: int, lost: bool, signum: int | None = None, from_terminal: bool = False
    ) -> None:
        self.code = code
        self.lost = lost
        self.signum = signum
        self.from_terminal = from_terminal


# What exec says of a command it will not run (as opposed to the system lacking a resource to
# start anything: too many open files, no memory, which inturn reports as its own error).
EXEC_REFUSALS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOENT",
        "EACCES",
        "EPERM",
        "ENOEXEC",
        "ENOTDIR",
        "EISDIR",
        "ELOOP",
        "ENAMETOOLONG",
        "ETXTBSY",
        "E2BIG",
        "ELIBBAD",
    )
    if hasattr(errno, name)
)


class CannotRun(Exception):
    """The command could not be started, or not watched as it must be: ``error`` says why.
    ``by_exec``: the system refused to run the command itself (not inturn's plumbing)."""

    def __init__(self, error: OSError, by_exec: bool = False) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error
        self.by_exec = by_exec


def run_command(
    command: list[str],
    executable: str,
    env: dict[str, str],
    *,
    handles: list[int],
    bound: bool,
    signals: RunSignals,
    on_lost: Callable[[Callable[[], None]], None],
    grace: float,
    say: Callable[[str], None],
    lost_message: Callable[[], str],
    keep_leftovers: bool = False,
    leftovers_note: str | None = None,
    on_started: Callable[[int], None] | None = None,
    on_ended: Callable[[], None] | None = None,
) -> Outcome:
    """Run ``command`` in a process group of its own until it ends; see the module docstring.
    ``on_started`` learns the command's pid as soon as it runs; ``on_ended`` is called the
    moment it is known to have ended (the turn is given back before anything is tidied).

    ``handles`` are inherited by the command (the turn itself, when it can be inherited).
    ``bound``: the turn ends when inturn dies, so the command's group must die with inturn.
    ``keep_leftovers``: the command has ended only once whatever it left running that kept
    its descriptors has ended too (``leftovers_note`` is said if that takes a while).
    A turn that can be lost needs ``prepare`` first, before the wait.
    """
    try:
        run = _Supervision(signals, grace, say, lost_message, leftovers_note)
    except OSError as exc:  # no pipe to wake up with: too many open files
        raise CannotRun(exc) from None
    try:
        run.start(command, executable, env, handles, bound, keep_leftovers)
        on_lost(run.turn_lost)
        if on_started is not None and run.child is not None:
            try:
                on_started(run.child.pid)
            except LostTurn:  # lost as the command started: stopped as any lost turn is
                run.turn_lost()
        outcome = run.wait()
        if on_ended is not None:
            on_ended()
        return outcome
    finally:
        run.close()


class _Supervision:
    """The main loop: reaps children, follows stops, stops everything when the turn is lost.

    It sleeps in ``select`` on a pipe that every signal with a Python handler writes to
    (``signal.set_wakeup_fd``; SIGCHLD gets one for that reason) and that ``turn_lost``
    writes to from the backend's thread, so no event is missed between a look and the sleep.
    """

    def __init__(
        self,
        signals: RunSignals,
        grace: float,
        say: Callable[[str], None],
        lost_message: Callable[[], str],
        leftovers_note: str | None,
    ) -> None:
        self.signals = signals
        self.grace = grace
        self.say = say
        self.lost_message = lost_message
        self.leftovers: Leftovers | None = None
        self.leftovers_note = leftovers_note
        self.ended_at: float | None = None  # when the command itself ended
        self.child: subprocess.Popen[bytes] | Spawned | None = None
        self.group = 0
        self.group_gone = False
        self.sentinel: Sentinel | None = None
        self.terminal = Terminal.find()
        self.code: int | None = None
        self.killed_by: int | None = None  # the signal that ended the command, if one did
        self.in_foreground = False  # whether it ended holding the terminal's foreground
        self.stopped_by: int | None = None
        self.lost = False
        self.stop_deadline: float | None = None
        self.kill_deadline: float | None = None
        self.told: set[int] = set()  # children already sent the current stopping signal
        self._closing = threading.Lock()  # the wakeup pipe is closed under it (``turn_lost``)
        self._closed = False
        self._wake_read, self._wake_write = _nonblocking_pipe()
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        self._previous: dict[int, Any] = {
            signal.SIGCHLD: signal.signal(signal.SIGCHLD, _wake_only),
            signal.SIGCONT: signal.signal(signal.SIGCONT, _wake_only),
            signal.SIGTSTP: signal.signal(signal.SIGTSTP, self.signals.handle),
        }

    # ----------------------------------------------------------------- start and end

    def start(
        self,
        command: list[str],
        executable: str,
        env: dict[str, str],
        handles: list[int],
        bound: bool,
        keep_leftovers: bool,
    ) -> None:
        if keep_leftovers:
            try:
                self.leftovers = Leftovers()
            except OSError as exc:  # too many open files
                raise CannotRun(exc) from None
            handles = [*handles, self.leftovers.write]
            env = {**env, TURN_FDS: describe(handles)}
        else:  # the command holds no turn of its own: an outer run's are not its to name
            env = {key: value for key, value in env.items() if key != TURN_FDS}
        try:
            try:
                self._spawn(command, executable, env, handles, bound)
            except CannotRun as exc:
                if exc.error.errno != errno.ENOEXEC:
                    raise
                # Neither a program nor a script with #!: as execvp(3), env(1) and shells do,
                # run it as a script of /bin/sh.
                if self.sentinel is not None:
                    self.sentinel.dismiss()  # it knew of the command that never ran
                    self.sentinel = None
                self._spawn(["/bin/sh", executable, *command[1:]], "/bin/sh", env, handles, bound)
        finally:
            if self.leftovers is not None:
                self.leftovers.close_write()  # the command's copies are the only ones now
        assert self.child is not None
        self.group = self.child.pid
        self.signals.target = self.group
        while self.signals.pending:  # arrived while the command was being started
            with suppress(OSError):
                os.killpg(self.group, self.signals.pending.pop(0))
        self._hand_terminal_over()

    def _spawn(
        self,
        command: list[str],
        executable: str,
        env: dict[str, str],
        handles: list[int],
        bound: bool,
    ) -> None:
        preexec = None
        if bound:
            # Started first: the command itself tells it its group, before it runs.
            self.sentinel = Sentinel.start()
            preexec = _bind_to_inturn(self.sentinel.fileno())
        try:
            if preexec is None and hasattr(os, "posix_spawn"):
                self.child = Spawned(spawn(command, executable, env, handles))
            else:
                import subprocess

                with inheritable(handles):  # and what inturn was given, as with ``spawn``
                    self.child = subprocess.Popen(
                        command,
                        executable=executable,
                        env=env,
                        close_fds=False,
                        **own_group(preexec),
                    )
        except OSError as exc:
            raise CannotRun(exc, by_exec=exc.errno in EXEC_REFUSALS) from None

    def close(self) -> None:
        self.signals.target = None
        if self.terminal is not None:
            if self.group:
                self.terminal.take_back(self.group)
            self.terminal.close()
        if self.sentinel is not None:
            running = self.child is not None and self.code is None
            if running:  # an error in here: the command must not run on outside its turn
                self.sentinel.abandon()
            else:
                self.sentinel.dismiss()
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self.leftovers is not None:
            self.leftovers.close()
        with self._closing:
            self._closed = True
            os.close(self._wake_read)
            os.close(self._wake_write)

    def turn_lost(self) -> None:
        """From the backend's thread: the turn is gone; the main loop stops everything.

        It may come after ``close`` (the callback stays registered), when the pipe's
        descriptor may already belong to something else: never write to it then.
        """
        self.lost = True
        with self._closing:
            if not self._closed:
                with suppress(OSError):
                    os.write(self._wake_write, b"\0")

    # ----------------------------------------------------------------- the loop

    def wait(self) -> Outcome:
        while True:
            self._reap()
            if self.lost and self.stop_deadline is None:
                self._begin_stopping()
            if self.stop_deadline is None:
                if self.code is not None:
                    if self.leftovers is None or self.leftovers.gone():
                        return Outcome(
                            self.code, False, self.killed_by, from_terminal=self.in_foreground
                        )
                    self._sleep(self._note_leftovers())
                    continue
                if self.stopped_by is not None:
                    self._follow_stop(self.stopped_by)
                    self.stopped_by = None
                    continue
                self._hand_terminal_over()  # after ``fg`` of a job that ran in the background
                timeout = None
            else:
                timeout = self._keep_stopping()
                if timeout is None:
                    return Outcome(self.code if self.code is not None else 0, lost=True)
            self._sleep(timeout)

    def _note_leftovers(self) -> float | None:
        """Say once, a moment after the command ended, why inturn goes on: the seconds until
        then, or None once said (or if there is nothing to say)."""
        if self.leftovers_note is None:
            return None
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        due = self.ended_at + LEFTOVERS_NOTE_SECONDS - time.monotonic()
        if due > 0:
            return due
        self.say(self.leftovers_note)
        self.leftovers_note = None
        return None

    def _sleep(self, timeout: float | None) -> None:
        watched = [self._wake_read]
        if self.code is not None and self.leftovers is not None and not self.leftovers.ended:
            watched.append(self.leftovers.read)
        with suppress(InterruptedError):
            select.select(watched, [], [], timeout)
        with suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass

    def _reap(self) -> None:
        """Collect every child that ended (the command, the sentinel, orphans) or stopped."""
        assert self.child is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid != self.child.pid:
                sentinel = self.sentinel
                if sentinel is not None and pid == sentinel.proc.pid and not os.WIFSTOPPED(status):
                    sentinel.proc.returncode = os.waitstatus_to_exitcode(status)
                self.told.discard(pid)
                continue
            if os.WIFSTOPPED(status):
                self.stopped_by = os.WSTOPSIG(status)
                continue
            code = os.waitstatus_to_exitcode(status)
            self.child.returncode = code
            self.code = code if code >= 0 else 128 - code
            self.killed_by = -code if code < 0 else None
            if self.leftovers is None:  # else what it left running still gets them
                self.signals.target = None  # nobody left to pass signals on to
            if self.terminal is not None:
                self.in_foreground = self.terminal.foreground() == self.group
                self.terminal.take_back(self.group)

    # ----------------------------------------------------------------- job control

    def _hand_terminal_over(self) -> None:
        terminal = self.terminal
        if terminal is None or terminal.on_demand or self.code is not None:
            return
        if terminal.foreground() == os.getpgrp():
            terminal.give(self.group)

    def _follow_stop(self, signum: int) -> None:
        """The command stopped: make the job stop (inturn too), then continue it together."""
        terminal = self.terminal
        foreground = terminal.foreground() if terminal is not None else None
        tty_io = signum in (signal.SIGTTIN, signal.SIGTTOU)
        if terminal is not None and tty_io and foreground in (self.group, os.getpgrp()):
            # It touched the terminal before it was handed the foreground (it was started
            # just before), or while inturn was in the background and has since been
            # brought back, or at the end of a pipeline (``... | inturn run -- less``, or
            # any output with ``stty tostop``), where the job's group keeps the terminal
            # until the command needs it: give it the terminal now and let it go on.
            terminal.give(self.group)
            self._continue_group()
            return
        from_terminal = signum in [getattr(signal, n) for n in TERMINAL_STOPS]
        if not from_terminal and foreground != self.group:
            return  # stopped on purpose by someone (SIGSTOP): not a stop of the job
        if terminal is not None:
            terminal.take_back(self.group)
        # The rest of inturn's group stops with it, as it would have at the terminal had the
        # command been one of them: a pipeline's others, or the script or make that runs
        # inturn. Else the shell, which sees a job stopped only once its process (or all of
        # a pipeline) is, would go on waiting for it, holding the terminal.
        _stop_self(signum, whole_group=terminal is not None)
        # Running again: ``fg`` (the terminal is ours again), ``bg`` (it is not), or the stop
        # was discarded because nobody can continue this job (an orphaned process group).
        self._hand_terminal_over()
        self._continue_group()

    def _continue_group(self) -> None:
        with suppress(OSError):
            os.killpg(self.group, signal.SIGCONT)

    # ----------------------------------------------------------------- a lost turn

    def _begin_stopping(self) -> None:
        self.say(self.lost_message())
        self.stop_deadline = time.monotonic() + self.grace
        if self.grace > 0:
            self._signal_group(signal.SIGTERM)
            self._signal_orphans(signal.SIGTERM)

    def _keep_stopping(self) -> float | None:
        """One round of stopping: the seconds until the next, or None once nothing is left."""
        assert self.stop_deadline is not None
        if self.code is not None and not self._others() and not self._group_alive():
            return None
        now = time.monotonic()
        if self.kill_deadline is None:
            if now < self.stop_deadline:
                self._signal_orphans(signal.SIGTERM)  # the ones reparented since
                return min(self.stop_deadline - now, STOP_RECHECK_SECONDS)
            self.kill_deadline = now + KILL_WAIT_SECONDS
            self.told.clear()
        if now >= self.kill_deadline:
            self.say("some processes of the command did not end after SIGKILL")
            return None
        # Every round: members of the group that are not our children leave no trace here.
        self._signal_group(signal.SIGKILL)
        self._signal_orphans(signal.SIGKILL)
        return min(self.kill_deadline - now, STOP_RECHECK_SECONDS)

    def _signal_group(self, signum: int) -> None:
        """``signum`` to the command's group; after SIGTERM, SIGCONT, for stopped members."""
        if self.group_gone:
            return
        for each in (signum,) if signum == signal.SIGKILL else (signum, signal.SIGCONT):
            try:
                os.killpg(self.group, each)
            except ProcessLookupError:
                self.group_gone = True
                return
            except OSError:
                pass

    def _signal_orphans(self, signum: int) -> None:
        """``signum`` once to each orphan reparented to inturn (its pid cannot be reused
        before inturn reaps it, and only this thread reaps)."""
        for pid in self._others() - self.told:
            for each in (signum,) if signum == signal.SIGKILL else (signum, signal.SIGCONT):
                with suppress(OSError):
                    os.kill(pid, each)
            self.told.add(pid)

    def _group_alive(self) -> bool:
        if self.group_gone:
            return False
        try:
            os.killpg(self.group, 0)
        except ProcessLookupError:
            self.group_gone = True  # and it can never come back: nobody can join it
            return False
        except OSError:
            pass
        return True

    def _others(self) -> set[int]:
        """inturn's children other than the command's and the sentinel: its orphans."""
        mine = {self.group}
        if self.sentinel is not None:
            mine.add(self.sentinel.proc.pid)
        return children() - mine


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """A Python handler, so that the signal writes to the wakeup pipe; nothing else to do."""


def _stop_self(signum: int, whole_group: bool = False) -> None:
    """Stop inturn as the command was stopped, so that the shell sees the whole job stop;
    with ``whole_group``, the rest of inturn's process group too (a pipeline's others, the
    script that runs inturn)."""
    if signum == signal.SIGSTOP:
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    previous = signal.signal(signum, signal.SIG_DFL)
    try:
        # Delivered, and so stopping us, before the call returns.
        if whole_group:
            os.killpg(os.getpgrp(), signum)  # inturn among them
        else:
            os.kill(os.getpid(), signum)
    finally:
        signal.signal(signum, previous)


class Terminal:
    """inturn's controlling terminal, when the command may be given its foreground."""

    def __init__(self, fd: int, on_demand: bool = False, owned: bool = False) -> None:
        self.fd = fd
        self.owned = owned  # ``fd`` was opened for this (``/dev/tty``), and is closed after
        # Given to the command only once it reads or writes it (see ``_follow_stop``), not as
        # it starts: in a pipeline, whose others share inturn's group, they keep it; with every
        # stream redirected, the command most likely never uses it, and a script that runs
        # inturn keeps it (were inturn killed, nobody would give the foreground back to the
        # script, whose next read of the terminal would stop it).
        self.on_demand = on_demand

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def find() -> Terminal | None:
        """The terminal on stdin, stderr or stdout (or else the controlling terminal),
        ``on_demand`` when inturn is part of a pipeline or found it as ``/dev/tty``.

        In ``inturn run ... | less`` the shell puts inturn and the pager in one process
        group: giving the terminal to the command would take it from the pager. Then the
        command stays in the background and inturn passes on what the terminal sends it;
        only a command that reads or writes the terminal is given it (see ``_follow_stop``).
        So too for ``/dev/tty``, found when no standard stream is a terminal.
        """
        found = None
        for fd in (0, 2, 1):
            with suppress(OSError):
                if os.isatty(fd):
                    found = fd
                    break
        owned = found is None
        if found is None:
            # Every standard stream redirected (``< /dev/null > log 2>&1``, ``nohup``): the
            # command may still use the controlling terminal (``sudo`` asking a password).
            # Only asked whose foreground it is: never read, so O_NONBLOCK, which also keeps
            # the open from waiting for a serial line's carrier.
            flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                found = os.open("/dev/tty", flags)
            except OSError:  # none (cron, CI, ``setsid``)
                return None
        on_demand = owned
        for fd in (0, 1):
            with suppress(OSError):
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    on_demand = True  # a pipeline's
        try:
            os.tcgetpgrp(found)  # fails unless it is our controlling terminal
        except OSError:
            if owned:
                os.close(found)
            return None
        return Terminal(found, on_demand, owned)

    def foreground(self) -> int | None:
        try:
            return os.tcgetpgrp(self.fd)
        except OSError:
            return None

    def give(self, group: int) -> None:
        """Make ``group`` the terminal's foreground (SIGTTOU ignored: inturn may not be)."""
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            with suppress(OSError):
                os.tcsetpgrp(self.fd, group)
        finally:
            signal.signal(signal.SIGTTOU, previous)

    def take_back(self, group: int) -> None:
        """The foreground back to inturn's group, if ``group`` still has it (never steal it)."""
        if self.foreground() == group:
            self.give(os.getpgrp())


class Sentinel:
    """A tiny ``sh`` that kills the command's group with SIGKILL if inturn dies.

    Its stdin is a pipe from inturn, and it holds no other descriptor of ours (stdout and
    stderr are ``/dev/null``, and no other is inherited), so inturn's death, however it
    comes, is end of file for it. It has a process group of its own, which neither the
    terminal nor a signal sent to the job reaches.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @staticmethod
    def start() -> Sentinel:
        import subprocess

        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", SENTINEL_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **own_group(None),
            )
        except OSError as exc:  # without it the command could outlive its turn: do not start
            raise CannotRun(exc) from None
        return Sentinel(proc)

    def fileno(self) -> int:
        """Where the command, between fork and exec, writes its group (see ``_bind_to_inturn``)."""
        assert self.proc.stdin is not None
        return self.proc.stdin.fileno()

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        with suppress(OSError, ValueError):
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()

    def dismiss(self) -> None:
        """The command has ended (or was stopped): the sentinel exits without killing."""
        self._send("done\n")
        self.abandon()

    def abandon(self) -> None:
        """Close the pipe: without "done" first, the sentinel kills the command's group."""
        assert self.proc.stdin is not None
        with suppress(OSError):
            self.proc.stdin.close()
        if self.proc.returncode is None:
            self.proc.returncode = 0  # reaped by whoever gets to it; never waited for here


class Leftovers:
    """A pipe whose write end the command inherits with its turn; inturn keeps only the read
    end. End of file there means that every process that held a copy (the command, and
    whatever it left running that kept its descriptors) has ended or closed it: until then,
    they may still hold the turn's ticket, and newcomers must not find the line free."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()
        os.set_blocking(self.read, False)
        self.ended = False

    def close_write(self) -> None:
        if self.write >= 0:
            os.close(self.write)
            self.write = -1

    def gone(self) -> bool:
        """Whether every copy of the write end is closed (whatever is written is dropped)."""
        with suppress(BlockingIOError):
            while not self.ended:
                self.ended = not os.read(self.read, 512)
        return self.ended

    def close(self) -> None:
        self.close_write()
        if self.read >= 0:
            os.close(self.read)
            self.read = -1


def _nonblocking_pipe() -> tuple[int, int]:
    if sys.platform != "darwin" and hasattr(os, "pipe2"):  # one system call rather than five
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


class Spawned:
    """A command started by ``spawn``: what the main loop needs of it, as of a ``Popen``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


def spawn(command: list[str], executable: str, env: dict[str, str], handles: list[int]) -> int:
    """Start ``command`` in a process group of its own with ``posix_spawn``, the C library's
    vfork and exec: the next command in line starts sooner than through ``Popen``, whose
    Python code runs between the turn and the command. As under a shell or ``flock(1)``, the
    command inherits the descriptors inturn was given (a jobserver's pipes, ``3>file``) and
    ``handles``; the signals Python ignores for itself are restored to their defaults."""
    with inheritable(handles):
        return os.posix_spawn(
            executable,
            command,
            env,
            setpgroup=0,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )


@contextmanager
def inheritable(handles: list[int]) -> Iterator[None]:
    """``handles`` open across exec while the command starts (inturn's own never are).

    One may be closed by another thread meanwhile (a server connection that was lost): then
    there is nothing to restore, and that must not turn a command already started into an
    error, which would leave it running unsupervised, outside the turn.
    """
    made: list[int] = []
    try:
        for fd in handles:
            os.set_inheritable(fd, True)
            made.append(fd)
        yield
    finally:
        for fd in made:
            with suppress(OSError):
                os.set_inheritable(fd, False)


def own_group(preexec: Callable[[], None] | None) -> dict[str, Any]:
    """``Popen`` arguments that start the child in a new process group of its own."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0, "preexec_fn": preexec}

    def then(preexec: Callable[[], None] | None = preexec) -> None:
        os.setpgid(0, 0)
        if preexec is not None:
            preexec()

    return {"preexec_fn": then}


def children() -> set[int]:
    """The pids of inturn's own children (on Linux; elsewhere, none are found)."""
    if not sys.platform.startswith("linux"):
        return set()
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as listed:
                found.update(int(pid) for pid in listed.read().split())
        except FileNotFoundError:
            return _children_by_scanning()  # a kernel without CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return found


def _children_by_scanning() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as info:
                fields = info.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(me):
            found.add(int(entry))
    return found


def _prctl() -> Callable[..., int] | None:
    """Linux's ``prctl(2)`` through ctypes (loaded only when needed: it costs milliseconds)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return function


def prepare(can_be_lost: bool) -> None:
    """Before the wait, what ``run_command`` needs for a turn that ``can_be_lost`` (on a
    server): on Linux inturn becomes a subreaper (through ``ctypes``), and its command will
    start bound to inturn through ``subprocess`` (such a turn cannot be inherited). Done
    here, the milliseconds of those imports are not waited by the next command in line."""
    if can_be_lost:
        import subprocess  # noqa: F401

        if sys.platform.startswith("linux"):
            _become_subreaper()


def _become_subreaper() -> None:
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _bind_to_inturn(sentinel: int) -> Callable[[], None]:
    """For the command, between fork and exec: die with inturn, and tell the sentinel.

    ``PR_SET_PDEATHSIG`` (Linux's prctl(2)) has the kernel kill the command the moment inturn
    dies; elsewhere there is no such request, and the sentinel alone stands guard. The
    command writes its own process group (its pid) to the sentinel itself, before it runs
    any of its own code, so there is no moment at which inturn could die leaving a command
    the sentinel does not know about. Everything is looked up here, before the fork, so the
    child only makes the calls.
    """
    prctl = _prctl()
    parent = os.getpid()

    def bind() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # inturn died before the request was made
            os._exit(76)
        os.write(sentinel, b"%d\n" % os.getpid())

    return bind
