"""``inturn run`` on Windows: the command in a kill-on-close job object.

A child process cannot own its parent's mutex, so the turn stays with inturn and the command
goes in a job that the system ends when inturn's handle to it closes: if inturn dies, so does
the command, and the next holder is told the turn was abandoned.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable

from .. import win32
from ..errors import BackendError, UsageError
from .exits import EXIT_LOST

assert sys.platform == "win32"  # the rest of this module is Windows code


class _Job:
    """A job object that kills every process in it when its last handle closes.

    inturn holds the only handle, so if inturn dies (killed, crashed, console closed) the
    system kills the command too (learn.microsoft.com: JOBOBJECT_BASIC_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE). It does so only as that handle closes, after the
    turn's mutex was abandoned, so the job is named after the turn (``Membership.job_name``)
    and whoever takes the turn next ends it and waits for its processes first.
    With ``close``, processes the command starts break away silently and may outlive the turn.
    """

    def __init__(self, close: bool, name: str | None) -> None:
        self._lock = threading.Lock()  # ``terminate`` may come from another thread
        self.handle = win32.CreateJobObjectW(None, name)
        if name is not None and (
            not self.handle or win32.last_error() == win32.ERROR_ALREADY_EXISTS
        ):
            # Taken (a co-user's squatter on a machine-wide line): never share it. Unnamed, the
            # job still dies with inturn; only the next holder cannot end it sooner.
            win32.close(self.handle)
            self.handle = win32.CreateJobObjectW(None, None)
        if not self.handle:
            raise win32.os_error("cannot create a job object")
        limits = win32.JobExtendedLimits()
        flags = win32.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if close:
            flags |= win32.JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK
        limits.BasicLimitInformation.LimitFlags = flags
        if not win32.SetInformationJobObject(
            self.handle,
            win32.JOB_EXTENDED_LIMIT_INFORMATION,
            ctypes.byref(limits),
            ctypes.sizeof(limits),
        ):
            code = win32.last_error()
            win32.close(self.handle)
            raise win32.os_error("cannot set up a job object", code)

    def adopt(self, pid: int) -> None:
        """Put the suspended process ``pid`` in the job, then let it run."""
        process = win32.OpenProcess(win32.PROCESS_SET_QUOTA | win32.PROCESS_TERMINATE, False, pid)
        if not process:
            raise win32.os_error("cannot open the command's process")
        try:
            if not win32.AssignProcessToJobObject(self.handle, process):
                raise win32.os_error("cannot put the command in a job object")
        finally:
            win32.CloseHandle(process)
        _resume_threads(pid)

    def wait_empty(self, interrupt: int) -> None:
        """Hold the turn until every process left in the job has ended.

        Waits on the processes themselves, so no notification can be missed; Ctrl-C or
        Ctrl-Break (``interrupt``) ends what is left instead, and waits until it has gone.
        """
        while True:
            members = win32.job_processes(self.handle)[: win32.MAXIMUM_WAIT_OBJECTS - 1]
            if not members:
                return
            try:
                result = win32.wait_handles([*members, interrupt], win32.INFINITE)
            finally:
                for process in members:
                    win32.CloseHandle(process)
            if result == win32.WAIT_OBJECT_0 + len(members):
                win32.end_job(self.handle)
                return

    def terminate(self, code: int) -> None:
        """End every process in the job at once, with exit code ``code``."""
        with self._lock:
            if self.handle:
                win32.TerminateJobObject(self.handle, code)

    def close(self) -> None:
        with self._lock:
            handle, self.handle = self.handle, None
        win32.close(handle)


def _resume_threads(pid: int) -> None:
    """Resume the threads of a process created suspended (its only thread, in practice)."""
    snapshot = win32.CreateToolhelp32Snapshot(win32.TH32CS_SNAPTHREAD, 0)
    if snapshot is None or snapshot == win32.INVALID_HANDLE_VALUE:
        raise win32.os_error("cannot list the command's threads")
    try:
        entry = win32.ThreadEntry()
        entry.dwSize = ctypes.sizeof(win32.ThreadEntry)
        found = win32.Thread32First(snapshot, ctypes.byref(entry))
        while found:
            if entry.th32OwnerProcessID == pid:
                thread = win32.OpenThread(win32.THREAD_SUSPEND_RESUME, False, entry.th32ThreadID)
                if thread:
                    win32.ResumeThread(thread)
                    win32.CloseHandle(thread)
            found = win32.Thread32Next(snapshot, ctypes.byref(entry))
    finally:
        win32.CloseHandle(snapshot)


def run_child(
    command: list[str],
    env: dict[str, str],
    close: bool,
    on_lost: Callable[[Callable[[], None]], None] | None = None,
    job_name: str | None = None,
    lost_message: Callable[[], str] = lambda: "lost the turn; stopping the command",
) -> int:
    """Run ``command`` while this process holds the turn; its exit code.

    A child process cannot own its parent's mutex, so the turn stays with inturn and the command
    goes in a kill-on-close job: if inturn dies, so does the command, and the next holder is
    told the turn was abandoned. The command is created suspended and put in the job before it
    runs a single instruction, so nothing it starts can escape. It shares inturn's console and
    process group, so it gets Ctrl-C and Ctrl-Break itself; inturn ignores them and waits for it.
    Without ``close``, whatever the command leaves running still belongs to the turn: inturn
    holds the turn until those processes end too (Ctrl-C ends them).

    ``on_lost`` (``Turn.on_lost``) is for server backends: if the turn is lost while the command
    runs, the job is ended at once and the result is 76, as on POSIX. ``job_name`` names the
    job, so that the next holder can end it if inturn dies.
    """
    try:
        job = _Job(close, job_name)
    except OSError as exc:
        raise BackendError(f"{exc.strerror}: cannot tie the command to its turn") from None
    console = win32.console_events()
    lost = threading.Event()

    def stop() -> None:
        lost.set()
        print(f"inturn: {lost_message()}", file=sys.stderr, flush=True)
        job.terminate(EXIT_LOST)

    if on_lost is not None:
        on_lost(stop)
    try:
        with console.armed("child") as interrupt:
            program = shutil.which(command[0]) or command[0]
            # argv[0] stays as typed; a batch file is run by path (it has no image of its own).
            is_image = program.lower().endswith((".exe", ".com"))
            args = command if is_image else [program, *command[1:]]
            try:
                child = subprocess.Popen(
                    args,
                    executable=program if is_image else None,
                    env=env,
                    creationflags=win32.CREATE_SUSPENDED,
                )
            except OSError as exc:  # the system's words may hold a placeholder for the name
                why = (exc.strerror or str(exc)).replace("%1", program)
                raise UsageError(f"cannot run {command[0]}: {why}") from None
            try:
                job.adopt(child.pid)
            except BaseException as exc:
                child.kill()
                child.wait()
                if isinstance(exc, OSError):
                    raise BackendError(
                        f"{exc.strerror}: cannot tie the command to its turn, so it was not run"
                    ) from None
                raise
            if lost.is_set():
                job.terminate(EXIT_LOST)  # lost before the command was in the job
            code = child.wait()
            if not close and not lost.is_set():
                job.wait_empty(interrupt)
        return EXIT_LOST if lost.is_set() else code
    finally:
        job.close()
