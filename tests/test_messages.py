"""The running instance hears from the next one (POSIX): ``single_instance(on_message=...)``,
``inturn.send`` and ``inturn send``, with real processes.

``messenger.py`` is the application: run once, it becomes the first instance and listens;
run again, it sends its argv, cwd and data and reports the reply. Each test synchronises on
the reports of its processes (the first instance reports every message it gets, ``inturn
send -v`` says when the instance took the message), never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import inturn
from inturn.messages import MAX_MESSAGE_BYTES, REQUEST_SECONDS

from conftest import (
    HERE,
    REPORT_TIMEOUT,
    child_env,
    in_own_pid_namespace,
    inturn_cmd,
    one_line_error,
    read_lines,
    until,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="Unix sockets; Windows: under Wine")

MESSENGER = str(HERE / "messenger.py")


def hexed(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass").hex()


class Process:
    """A process whose stdout lines are reports and whose stderr is kept for checks."""

    def __init__(self, argv: list[str], env: dict[str, str], **options: Any) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="surrogateescape",
            env=env,
            **options,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = read_lines(self.proc.stdout)
        self.err = read_lines(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, *kinds: str) -> list[str]:
        try:
            line = self.out.get(timeout=REPORT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no report from {self.pid}, expected {kinds}") from None
        words = line.rstrip("\n").split(" ")
        if not line or words[0] not in kinds:
            raise AssertionError(f"expected {kinds}, got {line!r}; stderr: {self.stderr()}")
        return words

    def stderr_line(self, containing: str) -> str:
        """Wait for a line on stderr that contains ``containing``."""
        while True:
            try:
                line = self.err.get(timeout=REPORT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"{self.pid} never said {containing!r}") from None
            assert line, f"{self.pid} ended without saying {containing!r}"
            if containing in line:
                return line

    def stderr(self) -> str:
        rows = []
        with contextlib.suppress(queue.Empty):
            while line := self.err.get(timeout=0.5 if self.proc.poll() is None else 5):
                rows.append(line)
        return "".join(rows)

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        return self.proc.wait(REPORT_TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(REPORT_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in processes:
        process.close()


class App:
    """Starts of ``messenger.py instance NAME`` and ``inturn send`` for one test."""

    def __init__(self, started: list[Process], inbox: Path, env: dict[str, str]) -> None:
        self.started = started
        self.inbox = inbox
        self.env = env

    def start(self, name: str, *args: str, cwd: str | None = None) -> Process:
        argv = [sys.executable, MESSENGER, "instance", name, "--inbox", str(self.inbox), *args]
        process = Process(argv, self.env, cwd=cwd)
        self.started.append(process)
        return process

    def first(self, name: str, *args: str) -> Process:
        process = self.start(name, *args)
        process.expect("first")
        return process

    def tool(self, *args: str, cwd: str | None = None) -> Process:
        process = Process(inturn_cmd(*args), self.env, cwd=cwd)
        self.started.append(process)
        return process

    def message(self, number: int) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.inbox / f"{number}.json").read_text())
        return document


@pytest.fixture
def app(lines_dir: Path, tmp_path: Path, started: list[Process]) -> App:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return App(started, inbox, child_env(INTURN_DIR=str(lines_dir)))


def channel_of(name: str) -> str:
    holders = inturn.Line(name).status().holders
    assert holders and holders[0].channel, holders
    return holders[0].channel


def raw_connect(folder: Path, channel: str) -> socket.socket:
    """A connection to a channel made by hand (as a broken or hostile sender would)."""
    fd = os.open(folder / channel, os.O_PATH | os.O_NOFOLLOW)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return sock


def folder_of(lines_dir: Path, name: str) -> Path:
    from inturn.names import safe_file_name

    return lines_dir / safe_file_name(name)


# --------------------------------------------------------------------------- what arrives


def test_argv_cwd_and_data_arrive_intact_and_the_reply_comes_back(app, tmp_path):
    first = app.first("editor")
    assert [w.suffix for w in folder_of(tmp_path / "lines", "editor").iterdir()].count(".sock") == 1
    here = tmp_path / "földer ☃ \udcff"
    here.mkdir()
    argv = ["editor", "é", "日本語", "🎉", "a b", "--flag", "", "\udcfe", "tab\tnew\nline"]
    data = {"k": ["ü", 1, 2.5, None, True, False], "nul": "\x00", "esc": "\x1b[31m"}
    later = app.start("editor", "--data", hexed(data), "--argv", hexed(argv), cwd=str(here))
    number, pid, user = first.expect("message")[1:]
    assert (int(number), int(pid), user) == (1, later.pid, pwd.getpwuid(os.getuid()).pw_name)
    got = app.message(1)
    assert got["argv"] == argv and got["cwd"] == str(here) and got["data"] == data
    assert got["pid"] == later.pid
    words = later.expect("already")
    assert int(words[1]) == first.pid
    reply = json.loads(" ".join(words[2:]))
    assert reply == {"n": 1, "argv": argv, "cwd": str(here), "data": data}
    assert later.wait() == 0


def test_an_empty_message_arrives_empty(app):
    app.first("empty", "--reply", "echo")
    reply = inturn.send("empty", [], data=None, cwd="")
    assert reply == {"n": 1, "argv": [], "cwd": "", "data": None}
    assert app.message(1)["argv"] == [] and app.message(1)["cwd"] == ""


def test_a_message_up_to_the_limit_arrives_and_a_larger_one_is_refused_before_sending(app):
    first = app.first("big", "--reply", "digest")
    later = app.start("big", "--data-to-limit")
    sent = later.expect("sending")[1]
    first.expect("message")
    words = later.expect("already")
    assert json.loads(" ".join(words[2:])) == {"n": 1, "sha256": sent}
    assert len(app.message(1)["data"].encode()) > MAX_MESSAGE_BYTES - 1000

    over = app.start("big", "--data-over-limit")
    over.expect("sending")
    words = over.expect("usage")
    assert "too large" in " ".join(words) and "instead of its contents" in " ".join(words)
    assert over.wait() == 2
    assert not (app.inbox / "2.json").exists()  # nothing was sent
    alone = app.start("big-alone", "--data-over-limit")  # sends nothing: no instance runs
    alone.expect("sending")
    alone.expect("first")


@pytest.mark.parametrize(
    "value",
    [None, 0, -1.5, "ü\udcff", [1, [2, [3]]], {"a": {"b": None}}, True, "x" * 300_000],
)
def test_replies_round_trip(app, value):
    app.first("echo", "--reply", "data")
    assert inturn.send("echo", ["echo"], data=value) == value


@pytest.mark.parametrize("timeout", [10**400, float("inf"), 1e20])
def test_a_timeout_too_long_for_any_clock_waits_a_year_at_most(app, timeout):
    """As ``acquire`` takes ``10**400`` for ever, a sender takes it as the longest wait it
    allows, not as an ``OverflowError`` from ``float()``."""
    app.first("echo", "--reply", "data")
    assert inturn.send("echo", ["echo"], data=7, timeout=timeout) == 7


def test_inturn_send_prints_the_reply_as_json_with_exit_code_0(app):
    first = app.first("cli", "--reply", "echo")
    sender = app.tool("send", "-v", "cli", "--", "one", "twö", "--x")
    assert "took the message" in sender.stderr_line("pid")
    first.expect("message")
    assert sender.wait() == 0
    assert json.loads("".join(_rest(sender))) == {
        "n": 1,
        "argv": ["cli", "one", "twö", "--x"],
        "cwd": os.getcwd(),
        "data": None,
    }


@pytest.mark.parametrize(
    "arguments", [["--data", "x"], ["-v"], ["--timeout", "1"], ["--", "x"], ["--"]]
)
def test_inturn_send_passes_on_whatever_comes_after_the_double_dash(app, arguments):
    first = app.first("dashes", "--reply", "echo")
    sender = app.tool("send", "dashes", "--", *arguments)
    assert sender.wait() == 0, sender.stderr()
    first.expect("message")
    assert json.loads("".join(_rest(sender)))["argv"] == ["dashes", *arguments]


def _rest(process: Process) -> list[str]:
    rows = []
    while line := process.out.get(timeout=REPORT_TIMEOUT):
        rows.append(line)
    return rows


# --------------------------------------------------------------------------- many at once


def test_several_later_starts_at_once_are_all_answered_in_order_of_arrival(app):
    first = app.first("queue", "--hold-first", "--reply", "count")
    # A long answer timeout: starting the senders one after another must not use it up
    blocker = app.tool("send", "-v", "-w", "300", "queue", "--", "0")
    first.expect("message")  # its handler now waits: the others queue behind it
    senders = []
    for index in range(1, 7):
        sender = app.tool("send", "-v", "-w", "300", "queue", "--", str(index))
        sender.stderr_line("took the message")  # arrived: the next one arrives after it
        senders.append(sender)
    first.tell("go")
    for index, sender in enumerate([blocker, *senders]):
        assert sender.wait() == 0, sender.stderr()
        assert json.loads("".join(_rest(sender))) == {"n": index + 1}
        assert app.message(index + 1)["argv"] == ["queue", str(index)]


def test_a_burst_of_later_starts_is_all_answered(app):
    first = app.first("burst", "--reply", "echo")
    later = [app.start("burst", "--argv", hexed(["burst", str(i)])) for i in range(12)]
    for index, process in enumerate(later):
        words = process.expect("already")
        assert int(words[1]) == first.pid
        assert json.loads(" ".join(words[2:]))["argv"] == ["burst", str(index)]
    numbers = sorted(app.message(n)["pid"] for n in range(1, 13))
    assert numbers == sorted(p.pid for p in later)


def waiting_connections(channel: str) -> int:
    """Connections to the listening socket named ``channel`` that nobody has accepted yet
    (``ss`` shows them as its receive queue; the address it was bound by ends in the name)."""
    shown = subprocess.run(
        ["ss", "-xlnH"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for row in shown.splitlines():
        fields = row.split()
        if any(field.endswith("/" + channel) for field in fields):
            return int(fields[2])
    return 0


def waiting_for_room(pid: int) -> bool:
    """Whether process ``pid`` sleeps in a connect, waiting for room in a full queue."""
    try:
        with open(f"/proc/{pid}/wchan") as wchan:
            return wchan.read().strip() == "unix_wait_for_peer"
    except OSError:
        return False


def test_a_full_hand_makes_later_senders_wait_their_turn_not_fail(app, monkeypatch):
    """With ``MAX_PENDING`` messages in hand, later senders wait in the system's queue of
    connections until one is done, and once that queue is full too, in their connect, all
    within their own timeouts (they were refused before; then told at once, falsely, that
    the instance had not taken the connection within their timeout)."""
    from inturn.backends import unix_channel

    monkeypatch.setattr(inturn.messages, "MAX_PENDING", 2)
    monkeypatch.setattr(unix_channel, "BACKLOG", 1)
    go = threading.Event()
    handled: list[str] = []

    def on_message(message: inturn.Message) -> str:
        handled.append(message.argv[-1])
        go.wait(REPORT_TIMEOUT)
        return message.argv[-1]

    first = inturn.single_instance("crowd", on_message=on_message)
    try:
        channel = channel_of("crowd")
        senders = [app.tool("send", "-v", "-w", "60", "crowd", "--", "0")]
        until(lambda: handled == ["0"], "the first message in hand")
        senders.append(app.tool("send", "-v", "-w", "60", "crowd", "--", "1"))
        senders[-1].stderr_line("took the message")  # two in hand: the hand is full
        senders += [app.tool("send", "-w", "60", "crowd", "--", str(i)) for i in range(2, 6)]
        until(  # each in the queue or waiting for room in it (or, refused, gone)
            lambda: (
                waiting_connections(channel)
                + sum(s.proc.poll() is not None or waiting_for_room(s.pid) for s in senders[2:])
                == 4
            ),
            "the later senders to connect",
        )
        go.set()
        for index, sender in enumerate(senders):
            assert sender.wait() == 0, sender.stderr()
            assert json.loads("".join(_rest(sender))) == str(index) or index > 1
        assert sorted(handled) == [str(i) for i in range(6)]
    finally:
        go.set()
        first.release()


# --------------------------------------------------------------------------- failures


def test_a_handler_that_raises_reaches_the_sender_as_an_exception(app):
    first = app.first("raising", "--reply", "raise")
    later = app.start("raising", "--argv", hexed(["raising", "file.txt"]))
    words = later.expect("failed")
    assert words[1] == "ValueError" and "no thanks, ['file.txt']" in " ".join(words)
    assert later.wait() == 1
    assert "on_message of line 'raising' raised ValueError" in first.stderr_line("raised")
    with pytest.raises(inturn.MessageError, match="ValueError: no thanks") as caught:
        inturn.send("raising", ["again"])
    assert caught.value.kind == "ValueError" and caught.value.pid == first.pid
    sender = app.tool("send", "raising", "--", "x")
    assert sender.wait() == 1
    assert "failed on the message: ValueError" in sender.stderr()


def test_a_reply_that_is_not_json_is_an_error_for_the_sender(app):
    first = app.first("notjson", "--reply", "not-json")
    with pytest.raises(inturn.MessageError, match="cannot be sent"):
        inturn.send("notjson")
    assert "returned a reply that cannot be sent" in first.stderr_line("cannot be sent")


def test_a_hung_handler_makes_the_sender_time_out_with_a_clear_message(app):
    first = app.first("hung", "--hang")
    sender = app.tool("send", "--timeout", "1", "hung", "--", "x")
    assert sender.wait() == 75
    error = sender.stderr()
    assert "took the message but did not answer within 1s" in error and "hung" in error
    later = app.start("hung", "--timeout", "1")
    words = later.expect("timeout")
    assert "did not answer within 1s" in " ".join(words)
    first.tell("go")  # the handler goes on: the listener was never stuck
    assert inturn.send("hung")["n"] == 3


def test_a_sender_that_gave_up_does_not_kill_an_instance_where_sigpipe_kills(app):
    # Many programs restore SIGPIPE's default action (it kills): the reply to a sender that
    # stopped waiting must fail quietly, not end the instance.
    first = app.first("sigpipe", "--hold-first", "--sigpipe-default", "--reply", "count")
    sender = app.tool("send", "--timeout", "1", "sigpipe", "--", "x")
    first.expect("message")
    assert sender.wait() == 75
    first.tell("go")  # the reply goes to a closed connection
    first.tell("release")  # waits until that reply has gone out (or failed)
    first.expect("released")
    first.tell("exit")
    assert first.wait() == 0


def test_a_stopped_instance_makes_the_sender_time_out_and_answers_once_continued(app):
    first = app.first("stopped", "--reply", "count")
    os.kill(first.pid, signal.SIGSTOP)  # hung as a whole: it takes nothing at all
    try:
        with pytest.raises(inturn.Timeout, match="did not take the message within 1s"):
            inturn.send("stopped", timeout=1)
        later = app.start("stopped", "--timeout", "1")
        assert "did not take the message within 1s: it may be hung" in " ".join(
            later.expect("timeout")
        )
        assert later.wait() == 75
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # Once continued it takes what comes; the senders that timed out never got their
    # acknowledgement through, so on_message never saw their messages.
    assert inturn.send("stopped", timeout=REPORT_TIMEOUT) == {"n": 1}


def test_slow_oversized_and_malformed_senders_are_dropped_and_block_nobody(app, lines_dir):
    first = app.first("rough", "--reply", "count")
    folder, channel = folder_of(lines_dir, "rough"), channel_of("rough")
    silent = raw_connect(folder, channel)  # connects and says nothing
    halfway = raw_connect(folder, channel)
    halfway.sendall(struct.pack(">I", 1000) + b'{"v": 1, "ar')  # and stalls
    huge = raw_connect(folder, channel)
    huge.sendall(struct.pack(">I", 100 * 1024 * 1024))
    garbage = raw_connect(folder, channel)
    body = b"\xff\xfe not json"
    garbage.sendall(struct.pack(">I", len(body)) + body)
    wrong = raw_connect(folder, channel)
    body = json.dumps({"v": 1, "argv": "not a list", "cwd": "/"}).encode()
    wrong.sendall(struct.pack(">I", len(body)) + body)
    try:
        started_at = time.monotonic()
        assert inturn.send("rough", ["fine"]) == {"n": 1}  # answered at once, not after them
        assert time.monotonic() - started_at < REQUEST_SECONDS
        for sock, why in ((huge, "more than"), (garbage, "not JSON"), (wrong, "argv")):
            answer = _read_answer(sock)
            assert "invalid" in answer and why in answer["invalid"], answer
        # One warning each (the two silent ones say the same, and Python shows it once).
        expected = [f"not sent within {REQUEST_SECONDS:g}s", "more than", "not JSON", "argv"]
        while expected:
            warning = first.stderr_line("dropped a message")
            expected = [e for e in expected if e not in warning]
        assert inturn.send("rough", ["still fine"]) == {"n": 2}
    finally:
        for sock in (silent, halfway, huge, garbage, wrong):
            sock.close()


def _read_answer(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(REPORT_TIMEOUT)
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    answer: dict[str, Any] = json.loads(data[4:])
    return answer


def test_the_first_instance_killed_while_a_message_is_in_flight(app, lines_dir):
    first = app.first("crash", "--hold-first")
    later = app.start("crash", "--stay")
    first.expect("message")  # taken (acknowledged): now it dies before it answers
    first.proc.kill()
    words = later.expect("notrunning")
    assert "took the message but ended before it answered" in " ".join(words)
    assert later.wait() == 69
    sender_first = app.first("crash")  # a further start becomes the first instance
    sockets = [p.name for p in folder_of(lines_dir, "crash").iterdir() if p.suffix == ".sock"]
    assert sockets == [channel_of("crash")]  # the dead one's socket went with its ticket
    assert inturn.send("crash", ["after"])["argv"] == ["after"]
    sender_first.tell("exit")


def test_messages_behind_the_one_in_hand_when_the_instance_stops_go_to_the_next(
    app, lines_dir, monkeypatch
):
    """The instance stops while its handler has one message in hand and another waits behind
    it: the one in hand is answered before ``release()`` returns, and the one behind, told
    that the instance stopped before handling it, goes to the next instance (it was told
    "did not answer", as if it might have been handled, before)."""
    monkeypatch.setattr(inturn.messages, "STOP_SECONDS", REPORT_TIMEOUT)  # a slow machine
    go = threading.Event()
    handled: list[str] = []

    def on_message(message: inturn.Message) -> str:
        handled.append(message.argv[-1])
        go.wait(REPORT_TIMEOUT)
        return "from the first"

    first = inturn.single_instance("handover", on_message=on_message)
    try:
        second = app.start("handover", "--wait", "--reply", "echo")
        until(lambda: len(inturn.Line("handover").status().waiters) == 1, "the second in line")
        in_hand = app.tool("send", "-v", "-w", "60", "handover", "--", "0")
        until(lambda: handled == ["0"], "the first message in hand")
        behind = app.tool("send", "-v", "-w", "60", "handover", "--", "1")
        behind.stderr_line("took the message")
        socket_file = folder_of(lines_dir, "handover") / channel_of("handover")
        releasing = threading.Thread(target=first.release)
        releasing.start()
        until(lambda: not socket_file.exists(), "the first instance to stop listening")
        assert releasing.is_alive()  # release() waits for the message in hand
        go.set()
        releasing.join(REPORT_TIMEOUT)
        assert in_hand.wait() == 0 and json.loads("".join(_rest(in_hand))) == "from the first"
        # It says "first" once it holds, and its listener may report the message before that
        reports = {second.expect("first", "message")[0] for _ in range(2)}
        assert reports == {"first", "message"}
        assert behind.wait() == 0, behind.stderr()
        assert json.loads("".join(_rest(behind)))["argv"] == ["handover", "1"]
        assert handled == ["0"]
    finally:
        go.set()
        first.release()


def test_a_forked_child_that_releases_does_not_wait_for_the_parents_listener(app, monkeypatch):
    """A child made by ``fork`` while a message is in hand releases its copy of the instance
    at once (it waited for the parent's listener, whose threads it does not have, for the
    whole of ``STOP_SECONDS``); the parent still answers."""
    monkeypatch.setattr(inturn.messages, "STOP_SECONDS", 1000.0)
    go = threading.Event()

    def on_message(message: inturn.Message) -> str:
        go.wait(REPORT_TIMEOUT)
        return "from the parent"

    first = inturn.single_instance("forked", on_message=on_message)
    child = 0
    try:
        sender = app.tool("send", "-v", "-w", "60", "forked", "--", "x")
        sender.stderr_line("took the message")  # in hand, its answer not sent yet
        child = os.fork()
        if child == 0:
            first.release()
            os._exit(0)
        until(lambda: os.waitpid(child, os.WNOHANG)[0] == child, "the child to release and end")
        child = 0
        go.set()
        assert sender.wait() == 0 and json.loads("".join(_rest(sender))) == "from the parent"
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        go.set()
        first.release()


def test_a_passing_shortage_of_descriptors_does_not_stop_the_listener(app):
    """``accept`` failing with EMFILE (the instance used up its open files for a moment) is
    tried again once descriptors are free: the sender waiting meanwhile is answered (the
    listener stopped for good before)."""
    first = app.start("short", "--reply", "echo", "--starve")
    first.expect("first")
    first.expect("starved")
    sender = app.tool("send", "-w", "60", "short", "--", "x")
    first.stderr_line("cannot take a message now")
    first.tell("feed")
    assert sender.wait() == 0, sender.stderr()
    assert json.loads("".join(_rest(sender)))["argv"] == ["short", "x"]


def test_inturn_send_tells_the_instance_ended_before_it_answered(app):
    first = app.first("crash2", "--hold-first")
    sender = app.tool("send", "-v", "crash2", "--", "x")
    sender.stderr_line("took the message")
    first.proc.kill()
    assert sender.wait() == 69
    assert "ended before it answered" in sender.stderr()


# --------------------------------------------------------------------------- who listens


def test_a_holder_that_does_not_listen(app, started):
    holder = Process(inturn_cmd("run", "plain", "--", sys.executable, "-c", "input()"), app.env)
    started.append(holder)
    until(lambda: bool(inturn.Line("plain").status().holders), "the holder")
    later = app.start("plain")
    words = later.expect("already")
    assert words[2] == "null"
    with pytest.raises(inturn.NotRunning, match="does not listen"):
        inturn.send("plain")
    sender = app.tool("send", "plain")
    assert sender.wait() == 69
    assert "does not listen for messages" in sender.stderr()
    holder.tell("")


def test_nobody_running(app):
    with pytest.raises(inturn.NotRunning, match="no instance of line 'nobody' is running"):
        inturn.send("nobody")
    sender = app.tool("send", "nobody", "--", "x")
    assert sender.wait() == 69
    assert sender.stderr().startswith("inturn: no instance of line 'nobody' is running")


def test_a_later_start_waits_for_a_holder_on_its_way_out_and_becomes_the_first(app, lines_dir):
    first = app.first("leaving")
    (folder_of(lines_dir, "leaving") / channel_of("leaving")).unlink()  # it stopped listening
    later = app.start("leaving", "--timeout", str(REPORT_TIMEOUT), "--stay")
    first.tell("release")
    first.expect("released")
    later.expect("first")
    assert inturn.send("leaving", ["hello"])["argv"] == ["hello"]


def test_wait_true_queues_behind_the_first_and_then_listens(app):
    first = app.first("queued")
    second = app.start("queued", "--wait")
    until(lambda: len(inturn.Line("queued").status().waiters) == 1, "the second in line")
    assert inturn.send("queued", ["to the first"])["n"] == 1
    first.tell("release")
    second.expect("first")
    assert inturn.send("queued", ["to the second"])["argv"] == ["to the second"]


def test_the_socket_goes_when_the_instance_ends(app, lines_dir):
    folder = folder_of(lines_dir, "tidy")

    def sockets() -> list[str]:
        return [p.name for p in folder.iterdir() if p.suffix == ".sock"]

    first = app.first("tidy")
    assert len(sockets()) == 1
    first.tell("release")
    first.expect("released")
    assert sockets() == []
    second = app.first("tidy")
    second.tell("exit")  # ends without releasing: the socket goes at exit
    assert second.wait() == 0
    assert sockets() == []


def test_a_folder_path_too_long_for_a_socket_address(tmp_path, started):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "lines"
    deep.parent.mkdir(parents=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app = App(started, inbox, child_env(INTURN_DIR=str(deep)))
    app.first("deep")
    channel = inturn.Line("deep", directory=str(deep)).status().holders[0].channel
    assert channel is not None
    assert len(str(folder_of(deep, "deep") / channel).encode()) > 108
    assert inturn.send("deep", ["far"], directory=str(deep))["argv"] == ["far"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("wait", [10**400, float("inf"), 1e300], ids=["10**400", "inf", "1e300"])
def test_a_wait_too_long_to_end_waits_for_ever(lines_dir, wait):
    """``wait=`` of more seconds than a float holds (or infinite) is for ever, as a timeout
    that long is, not an ``OverflowError``."""
    app = inturn.single_instance("long", wait=wait)
    assert app.held
    app.release()


def test_bad_input_is_one_clear_line(lines_dir, app):
    with pytest.raises(inturn.UsageError, match="on_message must be a function"):
        inturn.single_instance("bad", on_message=3)  # type: ignore[arg-type]
    with pytest.raises(inturn.UsageError, match="accept_from= is for machine-wide lines"):
        inturn.single_instance("bad", on_message=print, accept_from=["alice"])
    with pytest.raises(inturn.UsageError, match="timeout must be a positive number"):
        inturn.single_instance("bad", timeout=0)
    with pytest.raises(inturn.UsageError, match="wait must be True, False"):
        inturn.single_instance("bad", wait=-1)
    with pytest.raises(inturn.UsageError, match="data must be a JSON value"):
        inturn.single_instance("bad", data=object())

    async def in_a_loop(message: inturn.Message) -> str:
        return "never awaited"

    with pytest.raises(inturn.UsageError, match="on_message must be a plain function"):
        inturn.single_instance("bad", on_message=in_a_loop)
    with pytest.raises(inturn.UsageError, match="argv must be a list of strings"):
        inturn.send("bad", "abc")
    with pytest.raises(inturn.UsageError, match="argv must be a list of strings"):
        inturn.send("bad", [b"bytes"])  # type: ignore[list-item]
    with pytest.raises(inturn.UsageError, match="data must be a JSON value"):
        inturn.send("bad", data=float("nan"))
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(inturn.UsageError, match="data must be a JSON value"):
        inturn.send("bad", data=deep)
    assert not inturn.Line("bad").status().holders  # nothing was left held
    for args, words in (
        (("send", "--timeout", "0", "bad"), ("timeout", "more than 0")),
        (("send", "--data", "{", "bad"), ("--data is not JSON",)),
        (("send", "--data", "[" * 5000 + "]" * 5000, "bad"), ("--data is nested too deeply",)),
        (("send", "--backend", "redis://h/0", "--dir", "/tmp", "bad"), ("--dir and --backend",)),
    ):
        result = subprocess.run(
            inturn_cmd(*args), capture_output=True, text=True, env=app.env, timeout=60
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result
        for word in words:
            assert word in result.stderr


@pytest.mark.parametrize("url", ["postgresql://inturn@127.0.0.1:1/none", "redis://127.0.0.1:1/0"])
def test_a_server_refuses_messages_before_it_is_reached(lines_dir, url):
    """No server backend carries messages, so they are refused (exit 2) without connecting:
    a server that is down must not answer 69, "try again later", for what never works."""
    with pytest.raises(inturn.UsageError, match="cannot be sent messages"):
        inturn.send("srv", backend=url)
    with pytest.raises(inturn.UsageError, match="cannot be sent messages"):
        inturn.single_instance("srv", on_message=print, backend=url)
    result = subprocess.run(
        inturn_cmd("send", "--backend", url, "srv", "--", "x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(result, "cannot be sent messages", "use a local line")


@pytest.mark.parametrize("server", ["pg_url", "place"])
def test_server_backends_refuse_with_one_line(request, server):
    request.getfixturevalue(server)  # INTURN_BACKEND: this test's PostgreSQL or Redis lines
    with pytest.raises(inturn.UsageError, match="cannot be sent messages"):
        inturn.single_instance("srv", on_message=print)
    with pytest.raises(inturn.UsageError, match="cannot be sent messages"):
        inturn.send("srv")
    result = subprocess.run(
        inturn_cmd("send", "srv", "--", "x"), capture_output=True, text=True, timeout=60
    )
    one_line_error(result, "cannot be sent messages", "use a local line")
    held = inturn.single_instance("srv")  # without on_message it works as before
    with pytest.raises(inturn.AlreadyRunning) as caught:
        inturn.single_instance("srv")
    assert caught.value.reply is None and caught.value.pid == os.getpid()
    held.release()


# --------------------------------------------------------------------------- other users


class Shared:
    """A machine-wide lines folder and an inbox every user may write in."""

    def __init__(self, users: Any, shared_dir: Path, started: list[Process]) -> None:
        self.users = users
        self.lines = shared_dir / "lines"
        self.inbox = shared_dir / "inbox"
        self.inbox.mkdir()
        self.inbox.chmod(0o1777)
        self.started = started

    def env(self, user: Any) -> dict[str, str]:
        env: dict[str, str] = user.env(INTURN_MACHINE_DIR=str(self.lines))
        return env

    def first(self, user: Any, name: str, *args: str) -> Process:
        argv = [user.python, MESSENGER, "instance", name, "--machine", "--inbox", str(self.inbox)]
        process = Process([*argv, *args], self.env(user), preexec_fn=user.preexec(), cwd="/")
        self.started.append(process)
        process.expect("first")
        return process

    def run(self, user: Any, *argv: str) -> Process:
        process = Process(list(argv), self.env(user), preexec_fn=user.preexec(), cwd="/")
        self.started.append(process)
        return process

    def message(self, number: int) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.inbox / f"{number}.json").read_text())
        return document


@pytest.fixture
def shared(users, shared_dir, started) -> Shared:
    return Shared(users, shared_dir, started)


def test_a_machine_wide_line_takes_other_users_only_with_accept_from(shared):
    alice, mallory = shared.users
    first = shared.first(alice, "team", "--reply", "echo")
    sender = shared.run(mallory, *mallory.inturn("send", "--machine", "team", "--", "hi"))
    assert sender.wait() == 1  # its socket is closed to her
    error = sender.stderr()
    assert "refused" in error and "accept_from" in error and error.count("\n") == 1
    ownsend = shared.run(alice, *alice.inturn("send", "--machine", "team", "--", "me"))
    assert ownsend.wait() == 0  # her own user is always welcome
    assert first.expect("message")[2:] == [str(ownsend.pid), alice.name]
    first.tell("release")
    first.expect("released")

    # Open to others, but not to her: the listener refuses her, and says so.
    first = shared.first(alice, "team", "--reply", "echo", "--accept-from", "nobody")
    sender = shared.run(mallory, *mallory.inturn("send", "--machine", "team", "--", "hi"))
    assert sender.wait() == 1
    assert "refused the message: user inturn-mallory may not send (not in its accept_from)" in (
        sender.stderr()
    )
    assert "refused a message from inturn-mallory" in first.stderr_line("refused")
    first.tell("release")
    first.expect("released")

    # A POSIX user name is compared as it is: another case names another account.
    first = shared.first(alice, "team", "--reply", "echo", "--accept-from", mallory.name.upper())
    sender = shared.run(mallory, *mallory.inturn("send", "--machine", "team", "--", "hi"))
    assert sender.wait() == 1
    assert "may not send (not in its accept_from)" in sender.stderr()
    first.tell("release")
    first.expect("released")

    # Named in accept_from: her message arrives, with who she really is.
    first = shared.first(alice, "team", "--reply", "echo", "--accept-from", mallory.name)
    liar = {"user": alice.name, "pid": 1}
    sender = shared.run(
        mallory,
        *mallory.inturn("send", "--machine", "--data", json.dumps(liar), "team", "--", "hi"),
    )
    assert sender.wait() == 0, sender.stderr()
    words = first.expect("message")
    assert words[2:] == [str(sender.pid), mallory.name]
    got = shared.message(1)  # this instance's first
    assert (got["user"], got["pid"], got["data"]) == (mallory.name, sender.pid, liar)
    assert json.loads("".join(_rest(sender)))["argv"] == ["team", "hi"]


def test_a_per_user_line_takes_its_own_user_only(users, shared_dir, started):
    alice, _ = users
    lines = shared_dir / "alice-lines"  # alice's per-user lines (she makes the folder, 0700)
    env = alice.env(INTURN_DIR=str(lines))
    argv = [alice.python, MESSENGER, "instance", "mine"]
    first = Process(argv, env, preexec_fn=alice.preexec(), cwd="/")
    started.append(first)
    first.expect("first")
    # Root may open any socket: the sender refuses to send to another user's per-user line,
    # and the listener refuses whoever is not its user (here, root by hand).
    with pytest.raises(inturn.BackendError, match="not you: not sending"):
        inturn.send("mine", directory=str(lines))
    sock = raw_connect(folder_of(lines, "mine"), channel_of_in(lines, "mine"))
    try:
        answer = _read_answer(sock)
    finally:
        sock.close()
    assert "a per-user line takes its own user only" in answer["refused"]
    assert "refused a message from root" in first.stderr_line("refused")
    own = Process(
        [alice.python, "-m", "inturn", "send", "mine", "--", "ok"],
        env,
        preexec_fn=alice.preexec(),
        cwd="/",
    )
    started.append(own)
    assert own.wait() == 0, own.stderr()


def channel_of_in(lines: Path, name: str) -> str:
    holders = inturn.Line(name, directory=str(lines)).status().holders
    assert holders and holders[0].channel
    return holders[0].channel


# --------------------------------------------------------------------------- planted files


def hostile(app: App, mode: str, name: str, *args: str) -> Process:
    process = Process([sys.executable, MESSENGER, mode, name, *args], app.env)
    app.started.append(process)
    return process


@pytest.mark.parametrize("kind", ["symlink", "file", "fifo", "escape", "absolute"])
def test_a_planted_file_where_the_holder_points_is_refused_before_a_byte_is_sent(
    app, lines_dir, kind
):
    listener = hostile(app, "listen", "planted")
    real = listener.expect("listening")[1]  # a real socket of ours, listening
    folder = folder_of(lines_dir, "planted")
    planted = "ab" * 16 + ".sock"
    if kind == "symlink":
        (folder / planted).symlink_to(real)
    elif kind == "file":
        (folder / planted).write_text("not a socket")
    elif kind == "fifo":
        os.mkfifo(folder / planted)
    elif kind == "escape":
        planted = f"../../{real}"
    else:
        planted = str(folder / real)
    holder = hostile(app, "hold", "planted", planted)
    holder.expect("holding")
    why = {
        "symlink": "is a symbolic link",
        "file": "is not a socket",
        "fifo": "is not a socket",
        "escape": "not a socket name inturn makes",
        "absolute": "not a socket name inturn makes",
    }[kind]
    with pytest.raises(inturn.BackendError, match=why):
        inturn.send("planted", ["secret"])
    later = app.start("planted")
    assert why in " ".join(later.expect("backend"))
    sender = app.tool("send", "planted", "--", "secret")
    one_line_error(_completed(sender), why)


def test_a_socket_served_by_another_process_than_the_holder_is_refused(app, lines_dir):
    listener = hostile(app, "listen", "other")
    real = listener.expect("listening")[1]
    holder = hostile(app, "hold", "other", real)  # points at a socket it does not serve
    holder.expect("holding")
    with pytest.raises(
        inturn.BackendError, match=f"not by the holder of the line \\(pid {holder.pid}"
    ):
        inturn.send("other", ["secret"])


def test_a_socket_of_another_user_is_refused(shared):
    alice, mallory = shared.users
    listener = shared.run(alice, alice.python, MESSENGER, "listen", "mixed", "--machine")
    real = listener.expect("listening")[1]  # alice's socket in the shared line
    holder = shared.run(mallory, mallory.python, MESSENGER, "hold", "mixed", real, "--machine")
    holder.expect("holding")  # mallory holds, and points at alice's socket
    sender = shared.run(alice, *alice.inturn("send", "--machine", "mixed", "--", "secret"))
    one_line_error(_completed(sender), "belongs to inturn-alice, not to the holder", "mallory")


def _completed(process: Process) -> subprocess.CompletedProcess[str]:
    code = process.wait()
    return subprocess.CompletedProcess(
        process.proc.args, code, "".join(_rest(process)), process.stderr()
    )


# --------------------------------------------------------------------------- the example


def test_the_example_editor_run_twice_as_the_readme_shows(app, tmp_path):
    editor = str(HERE.parent / "examples" / "editor.py")
    first = Process([sys.executable, editor, "notes.txt"], app.env, cwd=str(tmp_path))
    app.started.append(first)
    assert first.expect("editor")[2:] == ["opened", str(tmp_path / "notes.txt")]
    assert first.expect("editor")[2] == "running;"
    later = subprocess.run(
        [sys.executable, editor, "todo.txt", "a.md"],
        capture_output=True,
        text=True,
        env=app.env,
        cwd=str(tmp_path),
        timeout=REPORT_TIMEOUT,
    )
    assert later.returncode == 0, later.stderr
    assert later.stdout == (
        f"already running as pid {first.pid}, which opened: "
        f"{tmp_path / 'todo.txt'}, {tmp_path / 'a.md'}\n"
    )
    assert first.expect("editor")[2:] == ["opened", str(tmp_path / "todo.txt")]
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == 0
    assert inturn.Line("example-editor").status().holders == ()


# --------------------------------------------------------------------------- containers


def test_an_instance_in_another_pid_namespace_hears_from_the_host(app):
    """An instance in a container (its own pid numbers, the lines folder shared with the
    host): its ticket says pid 1, the kernel tells the host's sender another number for the
    same process. The socket's owner is checked, the two pids are not compared."""
    argv = [sys.executable, MESSENGER, "instance", "boxed", "--inbox", str(app.inbox)]
    first = Process(in_own_pid_namespace(*argv), app.env)
    app.started.append(first)
    assert first.expect("first")[1] == "1"  # numbered in its own namespace
    sent = app.tool("send", "boxed", "--", "hello")
    assert sent.wait() == 0, sent.stderr()
    first.expect("message")
    assert (app.message(1)["argv"], app.message(1)["pid"]) == (["boxed", "hello"], None)
    later = app.start("boxed")  # a later start on the host gets AlreadyRunning
    assert later.expect("already")[1] == "1"
    first.expect("message")
    shown = inturn.Line("boxed").status().holders[0].describe()
    namespace = os.stat(f"/proc/{first.pid}/ns/pid_for_children").st_ino  # unshare's child's
    assert shown.startswith(f"pid 1 in pid namespace {namespace} ("), shown
