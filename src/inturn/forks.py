"""One registry of what a child made by ``fork()`` must forget.

A forked child starts with copies of the parent's objects but only the forking thread: watch
threads, lease threads and the parent's turns are not its own, and a lock that another thread
held at the fork stays held for ever in the child. Every object that keeps such state
registers here and gets ``after_fork_in_child()`` called in the child, before it runs on.
"""

from __future__ import annotations

import os
import sys
from _thread import RLock  # what ``threading.RLock`` is, without ``threading``'s import
from _weakrefset import WeakSet  # what ``weakref.WeakSet`` is, without ``weakref``'s import

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:  # for the type checker only: a Protocol class costs every start to build
    from typing import Protocol

    class ForkAware(Protocol):
        def after_fork_in_child(self) -> None: ...


_registered: WeakSet[ForkAware] = WeakSet()
# Held while a descriptor that no child may keep (a ticket's, whose lock says its owner lives)
# is opened or closed and its owner's record of it is set: ``fork()`` waits for it, so that
# no child is made in between with a copy that its ``after_fork_in_child`` does not close.
# Re-entrant: a signal handler of the thread that holds it may fork. A child gets a new one:
# use it as ``forks.fork_lock``, never a copy of the name.
fork_lock = RLock()
_pid = os.getpid()
_pid_namespace: int | None = -1  # -1: not looked up yet


def pid() -> int:
    """This process's id, without a system call (kept up to date in forked children)."""
    return _pid


def pid_namespace() -> int | None:
    """The PID namespace that :func:`pid` is a number of (the inode of ``/proc/self/ns/pid``,
    which tells containers apart on one Linux kernel), looked up once per process; None
    where the system does not say (elsewhere than on Linux, or without ``/proc``)."""
    global _pid_namespace
    if _pid_namespace == -1:
        found: int | None = None
        try:
            if sys.platform.startswith("linux"):
                found = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            found = None
        _pid_namespace = found  # set once, whole: other threads may be asking
    return _pid_namespace


def forget_after_fork(thing: ForkAware) -> None:
    """Have ``thing.after_fork_in_child()`` called in every child made by ``fork()``."""
    _registered.add(thing)


def _before() -> None:
    fork_lock.acquire()


def _after_in_parent() -> None:
    fork_lock.release()


def _in_child() -> None:
    global _pid, _pid_namespace, fork_lock
    fork_lock = RLock()  # a fork made without ``_before`` may leave it held by another thread
    _pid = os.getpid()
    _pid_namespace = -1  # a parent that called unshare(CLONE_NEWPID) has its children in another
    for thing in list(_registered):
        thing.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_in_child)
