"""Real second users of this machine, for tests of lines shared between users.

Two throwaway accounts (``inturn-alice`` and ``inturn-mallory``) are created with ``useradd``
the first time a test session needs them, as root, under a file lock so that parallel test
workers (and test runs of other checkouts) never race to create them; they are left in place
for the next run. A test runs a process as one of them with ``User.popen`` / ``User.run``,
which drop every privilege between fork and exec and may set the process's umask there too.

Lines shared between users live in sticky folders every user may write in (``/tmp``), where
most distributions have the kernel refuse more than plain permissions do: opening with
``O_CREAT`` a file or FIFO there that another user owns, following another user's symlink,
linking to a file one cannot write (``fs.protected_*``: systemd and Ubuntu ship them on).
Where they are off, ``second_users`` turns them on, to their strictest, before the first test
with a second user, so that inturn is tested as it is used; they stay on (they only refuse
more).

Those processes must be able to run this checkout's inturn: the Python they get is the first
of the test's own interpreters that the user can execute and that imports ``src/inturn`` (a
virtual environment made from a Python under ``/root`` is not executable by other users; the
system Python then serves, since inturn needs nothing beyond the standard library).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from conftest import HERE, SRC, Worker, child_env, missing_component, under_ci

ALICE = "inturn-alice"
MALLORY = "inturn-mallory"
# One lock for every checkout on the machine: two suites may run at once.
CREATION_LOCK = os.path.join(tempfile.gettempdir(), "inturn-test-users.lock")


class User(NamedTuple):
    """One throwaway account, and the Python it can run inturn with."""

    name: str
    uid: int
    gid: int
    python: str

    def preexec(self, umask: int | None = None) -> Callable[[], None]:
        """Between fork and exec: become this user (no supplementary groups), set ``umask``."""

        def become() -> None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
            if umask is not None:
                os.umask(umask)

        return become

    def env(self, **extra: str) -> dict[str, str]:
        """A child environment that names this user (``getpass`` reads ``USER`` first)."""
        env = child_env()
        env.pop("XDG_RUNTIME_DIR", None)  # root's, not theirs
        env.update(USER=self.name, LOGNAME=self.name, HOME="/")
        env.update(extra)
        return env

    def inturn(self, *args: str) -> list[str]:
        return [self.python, "-m", "inturn", *args]

    def popen(
        self,
        argv: Sequence[str | bytes],
        *,
        umask: int | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> subprocess.Popen[Any]:
        options.setdefault("cwd", "/")
        return subprocess.Popen(
            list(argv), preexec_fn=self.preexec(umask), env=env or self.env(), **options
        )

    def run(
        self,
        argv: Sequence[str | bytes],
        *,
        umask: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        **options: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run to the end, output captured as text; a hang past ``timeout`` fails the test."""
        options.setdefault("cwd", "/")
        options.setdefault("capture_output", True)
        options.setdefault("text", True)
        return subprocess.run(
            list(argv),
            preexec_fn=self.preexec(umask),
            env=env or self.env(),
            timeout=timeout,
            check=False,
            **options,
        )

    def worker(
        self, name: str, *args: str, umask: int | None = None, env: dict[str, str] | None = None
    ) -> Worker:
        """A ``worker.py`` process running as this user."""
        return Worker(
            name,
            *args,
            env=env or self.env(),
            python=self.python,
            preexec_fn=self.preexec(umask),
            cwd="/",
        )


class Users(NamedTuple):
    alice: User
    mallory: User


def second_users() -> Users:
    """The two accounts, created if missing; a skip (a failure under ``CI=true``) if not root."""
    if sys.platform == "win32" or os.geteuid() != 0:
        missing_component(
            "tests with a second user need root, to create the users",
            "run the tests as root (in a container or with sudo)",
        )
    if shutil.which("useradd") is None:
        missing_component("useradd is not installed", "apt-get install passwd")
    with _locked(CREATION_LOCK):
        for name in (ALICE, MALLORY):
            if not _exists(name):
                _create(name)
    harden_sticky_folders()
    accounts = [pwd.getpwnam(name) for name in (ALICE, MALLORY)]
    python = _usable_python(accounts[0])
    alice, mallory = (User(a.pw_name, a.pw_uid, a.pw_gid, python) for a in accounts)
    return Users(alice, mallory)


# The kernel's protections for sticky, world-writable folders, at their strictest.
STICKY_PROTECTIONS = {
    "protected_regular": 2,
    "protected_fifos": 2,
    "protected_symlinks": 1,
    "protected_hardlinks": 1,
}


def harden_sticky_folders() -> None:
    """Raise each of ``STICKY_PROTECTIONS`` that is lower on this machine.

    One that cannot be raised (a container's read-only ``/proc/sys``) is a failure under
    ``CI=true``; elsewhere a warning, and the tests run on the machine's own settings.
    """
    for name, strictest in STICKY_PROTECTIONS.items():
        path = Path("/proc/sys/fs") / name
        try:
            if int(path.read_text()) < strictest:
                path.write_text(f"{strictest}\n")
        except FileNotFoundError:
            continue  # a kernel without it (before 4.19 for regular files and FIFOs)
        except OSError as exc:
            reason = f"cannot set fs.{name} to {strictest}, as distributions ship it"
            if under_ci():
                missing_component(f"{reason}: {exc.strerror}", "make /proc/sys writable by root")
            warnings.warn(f"{reason} ({exc.strerror}): tested without it", stacklevel=1)


@contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _create(name: str) -> None:
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "throwaway user for inturn's tests",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and not _exists(name):
        missing_component(
            f"useradd {name} failed: {result.stderr.strip()}", "check that /etc/passwd is writable"
        )


def _usable_python(account: pwd.struct_passwd) -> str:
    """The first of the test's interpreters that ``account`` can run and that imports this
    checkout's inturn (not an installed copy)."""
    candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3"]
    env = child_env(HOME="/")
    want = str(SRC / "inturn" / "__init__.py")

    def become() -> None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    tried = []
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run(
                [python, "-c", "import sys, inturn; print(inturn.__file__)"],
                env=env,
                preexec_fn=become,
                capture_output=True,
                text=True,
                cwd="/",
                timeout=60,
                check=False,
            )
        except OSError as exc:
            tried.append(f"{python}: {exc.strerror}")
            continue
        if probe.returncode == 0 and probe.stdout.strip() == want:
            return python
        tried.append(f"{python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    missing_component(
        f"user {account.pw_name} cannot run a Python that imports {SRC} ({'; '.join(tried)})",
        f"make a Python >= 3.10 and {HERE.parent} readable and executable by other users",
    )


def shared_folder() -> Path:
    """A new folder every user may write in, sticky like ``/tmp`` (mode 1777).

    Not under pytest's ``tmp_path``: ``/tmp/pytest-of-root`` is private to root. Nor in
    ``/dev/shm``, where a test empties a user's files as their logout would. The caller
    removes it (``remove_tree``).
    """
    folder = tempfile.mkdtemp(prefix="inturn-test-")
    os.chmod(folder, 0o1777)
    return Path(folder)


def remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
