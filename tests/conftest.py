"""Shared fixtures: a private lines folder per test, and workers driven through pipes."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, NamedTuple, NoReturn, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from users import Users

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
SRC = HERE.parent / "src"


# The signals inturn passes on. inturn keeps one it was started ignoring ignored, as any
# command does, so the tests that send them need them not ignored in what they start; the
# tests of ignoring ignore them themselves.
SENT_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM")


def _stop_ignoring_signals() -> None:
    """Undo what a launcher without job control did: a job started with ``&`` by a script (or
    a CI runner) ignores SIGINT and SIGQUIT, ``nohup`` SIGHUP, and everything the tests start
    would inherit that."""
    for name in SENT_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) == signal.SIG_IGN:
            default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
            signal.signal(signum, default)


_stop_ignoring_signals()


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    """A test that runs the command in this process (``inturn.cli.main``) leaves its signals
    ignored, as ``inturn`` does once its work is done and it only has to exit: put back what
    was there, or every process a later test starts would inherit the ignoring."""
    kept = {s: signal.getsignal(s) for n in SENT_SIGNALS if (s := getattr(signal, n, None))}
    yield
    for signum, handler in kept.items():
        if signal.getsignal(signum) != handler and handler is not None:
            signal.signal(signum, handler)


def under_ci() -> bool:
    """Whether this run is CI's (``CI=true``), where what a test needs must be there."""
    return os.environ.get("CI", "").lower() == "true"


def missing_component(reason: str, how_to_enable: str) -> NoReturn:
    """A component a test needs is not here: a failure under ``CI=true``, else a skip.

    CI must never pass by skipping what it was meant to test; a developer without a server
    or Wine gets a skip that says how to enable those tests. Works while collecting, too.
    """
    if under_ci():
        pytest.fail(f"{reason}; CI needs it ({how_to_enable})", pytrace=False)
    pytest.skip(f"{reason}: {how_to_enable}", allow_module_level=True)


def in_own_pid_namespace(*argv: str) -> list[str]:
    """``argv`` run as the first process (pid 1) of a new PID namespace with its own
    ``/proc``, as in a container that shares the host's name and a folder with it; ended
    with the ``unshare`` process that starts it."""
    if os.geteuid() != 0:
        missing_component("a new PID namespace needs root", "run as root")
    prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    try:
        probe = subprocess.run(
            [*prefix, "true"], capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        missing_component("no unshare(1)", "install util-linux")
    if probe.returncode != 0:
        missing_component(f"cannot make a PID namespace: {probe.stderr.strip()}", "run as root")
    return [*prefix, *argv]


@pytest.fixture
def lines_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "lines"
    monkeypatch.setenv("INTURN_DIR", str(folder))
    monkeypatch.delenv("INTURN_BACKEND", raising=False)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def without_inturn_settings(env: dict[str, str]) -> dict[str, str]:
    """``env`` with none of inturn's variables, for tests of the default folders."""
    for variable in ("INTURN_DIR", "INTURN_MACHINE_DIR", "INTURN_BACKEND"):
        env.pop(variable, None)
    return env


# How long a test waits for a report it expects before failing: a hang is a failure, not a
# stuck run. Generous, because the machine may be busy; a passing test never waits this long.
REPORT_TIMEOUT = 120.0


def in_threads(count: int, body: Callable[[int], None]) -> None:
    """Run ``body(index)`` in ``count`` threads released together; fail on an error or a hang."""
    start = threading.Barrier(count)
    errors: list[str] = []

    def run(index: int) -> None:
        try:
            start.wait(REPORT_TIMEOUT)
            body(index)
        except BaseException as exc:
            errors.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + REPORT_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"threads {stuck} still running after {REPORT_TIMEOUT:g}s (errors: {errors})"
    assert not errors, "\n".join(errors[:10])


def until(condition: Callable[[], bool], what: str) -> None:
    """Watch for ``condition`` (not a guess at how long it takes); a hang fails the test."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def until_held_by(pid: int, name: str, line: Callable[[str], Any] | None = None) -> None:
    """Wait until line ``name`` shows ``pid`` as a holder: ``inturn run`` notes the command
    that inherited its turn just after starting it."""
    import inturn

    open_line = line or inturn.Line
    until(
        lambda: pid in [t.pid for t in open_line(name).status().holders],
        f"line {name!r} to show pid {pid} holding",
    )


def read_lines(stream: IO[str]) -> queue.Queue[str]:
    """Lines of ``stream`` as they come, read by a thread, so a reader can give up waiting."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        try:
            for line in stream:
                lines.put(line)
        except (ValueError, OSError):  # the test closed the stream while this thread read it
            pass
        lines.put("")  # end of stream

    threading.Thread(target=pump, daemon=True).start()
    return lines


class Worker:
    """A ``worker.py`` process; ``expect`` reads its reports in order.

    ``python``, ``preexec_fn`` and ``cwd`` let it run as another user (see ``users.py``).
    """

    def __init__(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        preexec_fn: Callable[[], None] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / "worker.py"), name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env or child_env(),
            preexec_fn=preexec_fn,
            cwd=cwd,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self._reports = read_lines(self.proc.stdout)
        self.expect("started")

    def expect(self, *kinds: str, skip: tuple[str, ...] = ()) -> list[str]:
        """The next report, which must be one of ``kinds`` (reports in ``skip`` are passed over)."""
        while True:
            try:
                line = self._reports.get(timeout=REPORT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(
                    f"no report from worker {self.pid}, expected {kinds}"
                ) from None
            words = line.split()
            if not (words and words[0] in skip):
                break
        exit_code = self.proc.poll()
        assert words and words[0] in kinds, f"expected {kinds}, got {line!r} (exit {exit_code})"
        return words

    def remaining(self) -> list[str]:
        """Every report not read yet, once the worker has exited."""
        self.proc.wait(REPORT_TIMEOUT)
        rows = []
        while (line := self._reports.get(timeout=REPORT_TIMEOUT)) != "":
            rows.append(line)
        return rows

    def acquired(self) -> list[str]:
        """Wait for the turn; a waiter may go back to sleep a few times first."""
        return self.expect("acquired", skip=("waiting",))

    def send(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)


def run_async(scenario: Callable[[], Coroutine[Any, Any, T]], timeout: float = REPORT_TIMEOUT) -> T:
    """``asyncio.run(scenario())`` on a thread of its own, bounded: a hang fails the test.

    ``asyncio.wait_for`` alone is not enough: once the scenario is cancelled,
    ``asyncio.run`` still waits, without limit, for the default executor's threads, and a
    thread stuck in a wait that never ends would block the whole suite.
    """
    import asyncio

    outcome: list[tuple[bool, Any]] = []

    def main() -> None:
        try:
            outcome.append((True, asyncio.run(asyncio.wait_for(scenario(), timeout))))
        except BaseException as exc:
            outcome.append((False, exc))

    loop_thread = threading.Thread(target=main, daemon=True, name="test-event-loop")
    loop_thread.start()
    loop_thread.join(timeout + 30)
    if not outcome:
        raise AssertionError(
            f"the event loop did not end {timeout + 30:g}s after the test began: "
            "a thread it waits for is stuck"
        )
    finished, value = outcome[0]
    if not finished:
        raise value
    return cast(T, value)


@pytest.fixture(autouse=True)
def _close_runs() -> Iterator[None]:
    yield
    while Run.started:
        Run.started.pop().close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts (append them): killed and closed when it ends."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(REPORT_TIMEOUT)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def panes() -> Iterator[list[Any]]:
    """Terminals a test opens (``terminal.Pane``; append them): closed when it ends."""
    made: list[Any] = []
    yield made
    for pane in made:
        pane.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        for stream in (worker.proc.stdin, worker.proc.stdout):
            if stream is not None:
                stream.close()


def inturn_words() -> list[str]:
    """The installed console script, as a user runs it (``python -m inturn`` without one)."""
    script = Path(sys.executable).with_name("inturn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "inturn"]


def inturn_cmd(*args: str) -> list[str]:
    return [*inturn_words(), *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    """``inturn ARGS`` run to its end, output captured (``variables`` join its environment)."""
    environment = dict(env or child_env())
    environment.update(variables)
    return subprocess.run(
        inturn_cmd(*args), capture_output=True, text=True, env=environment, timeout=120
    )


def one_line_error(result: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> str:
    """The single ``inturn: ...`` line of an exit 2 (or ``code``: 69 for a server that is
    unavailable), which must name each of ``words``."""
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("inturn: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def read_log(path: Path) -> list[list[str]]:
    """The rows workers appended with ``--log``: ``enter``/``exit``/``overlap`` and details."""
    return [row.split() for row in path.read_text().splitlines()]


# For the scripts that tests run as commands and signal. Python runs a signal's handler
# between two of its instructions, so a signal that comes just before a blocking read (or
# ``signal.pause()``) would wait for that call to end. Here every signal that has a handler
# also writes to a pipe (``set_wakeup_fd``) and the script waits on that pipe as well: a
# signal that came just before the wait ends it at once.
SIGNAL_SAFE_WAITS = textwrap.dedent(
    """
    import os as _os, select as _select, signal as _signal

    def wake_on_signals():
        woken, wake = _os.pipe()
        _os.set_blocking(wake, False)
        _signal.set_wakeup_fd(wake)
        return woken

    def wait_for_input(woken, fd=0):
        \"\"\"Until ``fd`` can be read; each signal's handler runs as it comes.\"\"\"
        while fd not in _select.select([fd, woken], [], [])[0]:
            _os.read(woken, 512)

    def wait_for_signals(woken):
        \"\"\"Forever; each signal's handler runs as it comes.\"\"\"
        while True:
            _os.read(woken, 512)
    """
)

# The command ``inturn run`` runs in tests: it reports what it sees, then holds until a line
# on its stdin gives its exit code (or stdin closes); SIGTERM and SIGHUP make it say so and
# exit 7.
REPORTER = SIGNAL_SAFE_WAITS + textwrap.dedent(
    """
    import os, signal, sys
    def on_signal(signum, frame):
        print("signal", signum, flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    woken = wake_on_signals()
    env = os.environ
    print("running", os.getpid(), os.getppid(), env["INTURN_NAME"], env["INTURN_TICKET"],
          env["INTURN_ABANDONED"], flush=True)
    wait_for_input(woken)
    line = sys.stdin.readline()
    sys.exit(int(line) if line.strip() else 0)
    """
)


class Running(NamedTuple):
    """What the command of ``inturn run`` reported when it started."""

    pid: int
    ppid: int
    name: str
    ticket: int
    abandoned: bool


class Run:
    """``inturn run [OPTIONS] NAME -- python REPORTER`` (or ``command``), steered through pipes.

    With ``terminal=True`` its stderr is a terminal, which gets the live status line drawn
    just before inturn goes to sleep in line: ``queued()`` reads up to it, so a test knows the
    order of arrival without guessing. Every run is killed and closed when its test ends.
    """

    started: ClassVar[list[Run]] = []

    def __init__(
        self,
        name: str,
        *options: str,
        env: dict[str, str] | None = None,
        terminal: bool = False,
        command: Sequence[str] | None = None,
    ) -> None:
        self.terminal: int | None = None
        child_side: int | None = None
        if terminal:
            import pty

            self.terminal, child_side = pty.openpty()
        self.proc = subprocess.Popen(
            inturn_cmd("run", *options, name, "--", *(command or (sys.executable, "-c", REPORTER))),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if child_side is None else child_side,
            text=True,
            env=env or child_env(),
        )
        if child_side is not None:
            os.close(child_side)
        assert self.proc.stdout is not None
        self._output = read_lines(self.proc.stdout)  # inturn's and its command's
        Run.started.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next_line(self) -> list[str]:
        """The next line of output, split; ``[]`` once inturn and its command are gone."""
        try:
            return self._output.get(timeout=REPORT_TIMEOUT).split()
        except queue.Empty:
            raise AssertionError(f"no output from inturn run (pid {self.pid})") from None

    def running(self) -> Running:
        words = self.next_line()
        assert words[:1] == ["running"], (words, self.errors() if words == [] else "")
        pid, ppid, name, ticket, abandoned = words[1:]
        return Running(int(pid), int(ppid), name, int(ticket), abandoned == "1")

    def queued(self) -> bytes:
        assert self.terminal is not None
        seen = b""
        while b"waiting for" not in seen:
            chunk = os.read(self.terminal, 1024)
            assert chunk, seen
            seen += chunk
        return seen

    def finish(self, code: int = 0) -> int:
        """Let the command end with ``code``; inturn's exit code."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(f"{code}\n")
            self.proc.stdin.close()
        return self.proc.wait(REPORT_TIMEOUT)

    def wait(self, timeout: float = REPORT_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def errors(self) -> str:
        """What inturn wrote on stderr (a pipe), once it has ended."""
        assert self.proc.stderr is not None
        self.proc.wait(REPORT_TIMEOUT)
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(REPORT_TIMEOUT)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.terminal is not None:
            with contextlib.suppress(OSError):
                os.close(self.terminal)


# --------------------------------------------------------------------------- every backend


class Where(NamedTuple):
    """The backend a test runs on, as every process of the test reaches it."""

    kind: str
    url: str | None  # INTURN_BACKEND, or None for the local folder (INTURN_DIR)
    crash_url: str | None  # for processes the test kills: their turn must end quickly

    def crash_env(self) -> dict[str, str]:
        return child_env(INTURN_BACKEND=self.crash_url) if self.crash_url else child_env()


@pytest.fixture(params=["local", "postgresql", "redis"])
def where(request: pytest.FixtureRequest) -> Where:
    """Runs a test once on each backend: the local folder, PostgreSQL and Redis."""
    if request.param == "local":
        request.getfixturevalue("lines_dir")
        return Where("local", None, None)
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")  # sessions end with their process
        return Where("postgresql", url, url)
    place = request.getfixturevalue("place")
    return Where("redis", place.url(), place.url(lease=2))  # a dead one's lease ends in 2 s


# --------------------------------------------------------------------------- other users


@pytest.fixture(scope="session")
def users() -> Users:
    """Two real users of this machine, ``alice`` and ``mallory`` (created once, as root)."""
    from users import second_users

    return second_users()


@pytest.fixture
def shared_dir(users: Users) -> Iterator[Path]:
    """A sticky folder every user may write in (mode 1777), outside root's private tmp_path."""
    from users import remove_tree, shared_folder

    folder = shared_folder()
    yield folder
    remove_tree(folder)


# --------------------------------------------------------------------------- servers
# The server helpers import their clients (psycopg, redis-py) only when a test needs them, so
# that a machine without those packages still runs the local tests.


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a usable PostgreSQL server (without inturn's parameters)."""
    try:
        import postgres_server
    except ImportError as exc:
        missing_component(f"psycopg is not installed ({exc})", "pip install -e '.[postgres]'")
    with postgres_server.test_server() as url:
        yield url


@pytest.fixture
def schema(pg_server: str) -> Iterator[str]:
    """A schema of this test's own: its lines meet no other test's."""
    from postgres_server import drop_schema

    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    while Run.started:  # their sessions hold locks that the drop would wait for
        Run.started.pop().close()
    drop_schema(pg_server, name)


@pytest.fixture
def pg_url(pg_server: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's own PostgreSQL lines, also for every child process (INTURN_BACKEND)."""
    from postgres_server import with_schema

    url = with_schema(pg_server, schema)
    monkeypatch.setenv("INTURN_BACKEND", url)
    monkeypatch.delenv("INTURN_DIR", raising=False)
    return url


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a usable Redis server (without inturn's parameters)."""
    from redis_server import require_redis_py, server_url

    require_redis_py()
    url, started = server_url(tmp_path_factory.mktemp("redis"))
    yield url
    if started is not None:
        started.stop()


@pytest.fixture
def place(redis_base: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A key prefix of this test's own, also for every child process (INTURN_BACKEND)."""
    from redis_server import Place, delete_prefix

    here = Place(redis_base)
    monkeypatch.setenv("INTURN_BACKEND", here.url())
    monkeypatch.delenv("INTURN_DIR", raising=False)
    yield here
    delete_prefix(redis_base, here.prefix)
