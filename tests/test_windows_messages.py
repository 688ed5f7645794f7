"""The running instance hears from the next one, on Windows: real Windows CPython processes
under Wine (see ``test_windows.py`` for how Wine and that Python are provided), talking over
named pipes.

``messenger.py`` is the application, as in ``test_messages.py``; its argv, data and working
folder are handed over hex-encoded, so that nothing but inturn carries them. Wine has one
user, so messages from another user are tested on POSIX only (``test_messages.py``); here
the pipe's security descriptor is read back for each scope instead.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "windows"))

import test_windows  # noqa: E402
from test_windows import Win  # noqa: E402
from wine import REPORT_TIMEOUT, WinProcess, windows_path  # noqa: E402

wine = test_windows.wine  # the Wine fixtures: one Windows Python per test worker
win = test_windows.win

MESSENGER = windows_path(HERE / "messenger.py")


def hexed(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass").hex()


class Apps:
    """Starts of ``messenger.py instance NAME`` and ``inturn send`` under Wine."""

    def __init__(self, win: Win, inbox: Path) -> None:
        self.win = win
        self.inbox = inbox

    def start(self, name: str, *args: str) -> WinProcess:
        return self.win.start(
            MESSENGER, "instance", name, "--inbox", windows_path(self.inbox), *args
        )

    def first(self, name: str, *args: str) -> WinProcess:
        process = self.start(name, *args)
        words = process.expect("first")
        process.pid = int(words[1])
        return process

    def message(self, number: int) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.inbox / f"{number}.json").read_text())
        return document


@pytest.fixture
def apps(win: Win, tmp_path: Path) -> Apps:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return Apps(win, inbox)


def reply_of(words: list[str]) -> Any:
    return json.loads(" ".join(words[2:]))


def stderr_line(process: WinProcess, containing: str) -> str:
    while True:
        try:
            line = process.errors.get(timeout=REPORT_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"{process.unix_pid} never said {containing!r}") from None
        assert line != "\0", f"{process.unix_pid} ended without saying {containing!r}"
        if containing in line:
            return line


def test_argv_cwd_and_data_arrive_intact_and_the_reply_comes_back(apps, tmp_path):
    first = apps.first("editor")
    here = tmp_path / "földer ☃"
    here.mkdir()
    argv = ["editor.exe", "é", "日本語", "🎉", "a b", '"quoted"', "", "back\\slash", "new\nline"]
    data = {"k": ["ü", 1, 2.5, None, True], "nul": "\x00"}
    later = apps.start(
        "editor",
        "--argv",
        hexed(argv),
        "--data",
        hexed(data),
        "--chdir",
        windows_path(here).encode().hex(),
    )
    number, pid, user = first.expect("message")[1:]
    code, me, err = apps.win.run(
        "-c", "import os; from inturn import win32; print(win32.process_user(os.getpid())[1])"
    )
    assert code == 0, err
    assert int(number) == 1 and user == me.strip()
    words = later.expect("already")
    assert int(words[1]) == first.pid
    assert reply_of(words) == {"n": 1, "argv": argv, "cwd": windows_path(here), "data": data}
    got = apps.message(1)
    assert got["argv"] == argv and got["data"] == data and got["pid"] == int(pid)


def test_an_empty_message_and_one_up_to_the_limit(apps, win):
    first = apps.first("sizes", "--reply", "digest")
    code, _, err = win.run("-c", "import inturn; inturn.send('sizes', [], cwd='')")
    assert code == 0, err
    first.expect("message")
    assert apps.message(1)["argv"] == [] and apps.message(1)["cwd"] == ""
    later = apps.start("sizes", "--data-to-limit")
    sent = later.expect("sending")[1]
    first.expect("message")
    assert reply_of(later.expect("already")) == {"n": 2, "sha256": sent}
    over = apps.start("sizes", "--data-over-limit")
    over.expect("sending")
    assert "too large" in " ".join(over.expect("usage"))


def test_replies_round_trip_through_inturn_send(apps, win):
    apps.first("echo", "--reply", "data")
    for value in (None, 0, -1.5, "ü", [1, [2]], {"a": {"b": None}}, True, "x" * 20_000):
        process = win.inturn("send", "--data", json.dumps(value), "echo", "--", "x")
        code, out, err = process.finish()
        assert code == 0, err
        assert json.loads(out) == value


def test_several_later_starts_at_once_are_answered_in_order_of_arrival(apps, win):
    first = apps.first("queue", "--hold-first", "--reply", "count")
    # A long answer timeout: starting the senders one after another must not use it up
    blocker = win.inturn("send", "-v", "-w", "300", "queue", "--", "0")
    first.expect("message")  # its handler now waits: the others queue behind it
    senders = []
    for index in range(1, 5):
        sender = win.inturn("send", "-v", "-w", "300", "queue", "--", str(index))
        stderr_line(sender, "took the message")
        senders.append(sender)
    first.send("go")
    for index, sender in enumerate([blocker, *senders]):
        code, out, err = sender.finish()
        assert code == 0, err
        assert json.loads(out) == {"n": index + 1}
        assert apps.message(index + 1)["argv"] == ["queue", str(index)]


def test_a_handler_that_raises_reaches_the_sender_as_an_exception(apps, win):
    first = apps.first("raising", "--reply", "raise")
    later = apps.start("raising", "--argv", hexed(["raising", "file.txt"]))
    words = later.expect("failed")
    assert words[1] == "ValueError" and "no thanks, ['file.txt']" in " ".join(words)
    assert "raised ValueError" in stderr_line(first, "raised")
    code, _, err = win.inturn("send", "raising", "--", "x").finish()
    assert code == 1 and "failed on the message: ValueError" in err


def test_a_hung_listener_makes_the_sender_time_out(apps, win):
    first = apps.first("hung", "--hang")
    code, _, err = win.inturn("send", "--timeout", "1", "hung", "--", "x").finish()
    assert code == 75 and "took the message but did not answer within 1s" in err
    first.send("go")
    os.kill(first.unix_pid, signal.SIGSTOP)  # the whole process hung
    try:
        code, _, err = win.inturn("send", "--timeout", "1", "hung", "--", "y").finish()
        assert code == 75 and "did not take the message within 1s" in err, err
    finally:
        os.kill(first.unix_pid, signal.SIGCONT)
    code, out, err = win.inturn("send", "hung", "--", "z").finish()
    assert code == 0, err
    assert json.loads(out)["argv"] == ["hung", "z"]


def test_the_first_instance_killed_while_a_message_is_in_flight(apps, win):
    first = apps.first("crash", "--hold-first")
    later = apps.start("crash", "--stay")
    first.expect("message")  # taken: now it dies before it answers
    first.kill()
    words = later.expect("notrunning")
    assert "took the message but ended before it answered" in " ".join(words)
    assert later.wait() == 69
    apps.first("crash")  # a further start becomes the first instance
    code, out, err = win.inturn("send", "crash", "--", "after").finish()
    assert code == 0, err
    assert json.loads(out)["argv"] == ["crash", "after"]


def test_the_pipe_goes_when_the_instance_ends(apps, win):
    first = apps.first("tidy")
    status = win.status("tidy")
    pipe = win_channel(win, "tidy")
    assert pipe.startswith("\\\\.\\pipe\\inturn.") and status["holders"]
    assert pipe_exists(win, pipe)
    first.send("release")
    first.expect("released")
    assert not pipe_exists(win, pipe)
    code, _, err = win.inturn("send", "tidy", "--", "x").finish()
    assert code == 69 and "no instance of line 'tidy' is running" in err


def win_channel(win: Win, name: str) -> str:
    code, out, err = win.run(
        "-c", f"import inturn; print(inturn.Line({name!r}).status().holders[0].channel)"
    )
    assert code == 0, err
    return out.strip()


def pipe_exists(win: Win, pipe: str) -> bool:
    code, out, err = win.run(
        "-c",
        "import sys; from inturn import win32; "
        f"win32.WaitNamedPipeW({pipe!r}, 1); print(win32.last_error())",
    )
    assert code == 0, err
    return int(out) != 2  # ERROR_FILE_NOT_FOUND: no such pipe


@pytest.mark.parametrize(
    "address", ["\\\\.\\pipe\\evil", "C:\\windows\\notepad.exe", "\\\\host\\pipe\\x"]
)
def test_a_ticket_that_names_a_pipe_inturn_did_not_make_is_refused(win, address):
    holder = win.start(MESSENGER, "hold", "planted", address)
    holder.expect("holding")
    code, _, err = win.inturn("send", "planted", "--", "secret").finish()
    assert code == 2 and "not a pipe inturn makes for this line" in err, err


def test_a_pipe_served_by_another_process_than_the_holder_is_refused(win):
    listener = win.start(MESSENGER, "listen", "other")
    pipe = listener.expect("listening")[1]
    holder = win.start(MESSENGER, "hold", "other", pipe)
    holder_pid = int(holder.expect("holding")[1])
    code, _, err = win.inturn("send", "other", "--", "secret").finish()
    assert code == 2, err
    assert f"not by the holder of the line (pid {holder_pid})" in err


SECURITY_PROBE = """
import ctypes, sys, inturn
from ctypes import wintypes
line = inturn.Line("sd", scope=sys.argv[1])
channel = line.store.open_channel(sys.argv[2] == "others")
advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
get = advapi32.GetSecurityInfo
get.argtypes = [ctypes.c_void_p, ctypes.c_int, wintypes.DWORD, ctypes.c_void_p,
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_void_p)]
descriptor = ctypes.c_void_p()
assert get(channel._instance, 6, 4, None, None, None, None, ctypes.byref(descriptor)) == 0
text = wintypes.LPWSTR()
to_text = advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW
to_text.argtypes = [ctypes.c_void_p, wintypes.DWORD, wintypes.DWORD,
                    ctypes.POINTER(wintypes.LPWSTR), ctypes.c_void_p]
assert to_text(descriptor, 1, 4, ctypes.byref(text), None)
print(text.value, inturn.win32.user_sid())
channel.close()
"""


@pytest.mark.parametrize(
    ("scope", "others", "others_ace"),
    [("user", "own", False), ("machine", "own", False), ("machine", "others", True)],
)
def test_the_pipe_s_security_descriptor_matches_the_scope(win, tmp_path, scope, others, others_ace):
    probe = tmp_path / "probe.py"
    probe.write_text(SECURITY_PROBE)
    process = win.wine.start(
        windows_path(probe),
        scope,
        others,
        env={**win.env, "INTURN_MACHINE_DIR": windows_path(tmp_path / "machine")},
    )
    code, out, err = process.finish()
    assert code == 0, err
    dacl, sid = out.split()
    owner_only = f"D:P(A;;GA;;;{sid})"
    # Authenticated users may read and write, never create an instance of the pipe.
    assert dacl == (owner_only + "(A;;0x120183;;;AU)" if others_ace else owner_only)


ROUGH_SENDERS = """
import struct, sys, time, inturn
from inturn.backends import pipe_channel
holder = inturn.Line("rough").status().holders[0]
sid = pipe_channel._sid()
def raw():
    return pipe_channel.connect(holder.channel, holder.pid, "user", sid, time.monotonic() + 60)
silent = raw()  # connects and says nothing
halfway = raw()
halfway.send(struct.pack(">I", 1000) + b'{"v": 1, "ar', time.monotonic() + 60)  # and stalls
huge = raw()
huge.send(struct.pack(">I", 100 * 1024 * 1024), time.monotonic() + 60)
garbage = raw()
body = b"\\xff\\xfe not json"
garbage.send(struct.pack(">I", len(body)) + body, time.monotonic() + 60)
started = time.monotonic()
print("answered", inturn.send("rough", ["fine"]), round(time.monotonic() - started, 2))
for connection in (huge, garbage):
    print("dropped", connection.receive(4096, time.monotonic() + 60)[4:].decode())
sys.stdout.flush()
sys.stdin.readline()
"""


def test_slow_oversized_and_malformed_senders_are_dropped_and_block_nobody(apps, win, tmp_path):
    from inturn.messages import REQUEST_SECONDS

    first = apps.first("rough", "--reply", "count")
    script = tmp_path / "rough.py"
    script.write_text(ROUGH_SENDERS)
    rough = win.start(windows_path(script))
    words = rough.expect("answered")
    assert words[1:3] == ["{'n':", "1}"]
    assert float(words[3]) < REQUEST_SECONDS  # answered before the slow ones were dropped
    assert "more than" in " ".join(rough.expect("dropped"))
    assert "not JSON" in " ".join(rough.expect("dropped"))
    expected = [f"not sent within {REQUEST_SECONDS:g}s", "more than", "not JSON"]
    while expected:
        warning = stderr_line(first, "dropped a message")
        expected = [e for e in expected if e not in warning]
    rough.send("")
    code, out, err = win.inturn("send", "rough", "--", "still").finish()
    assert code == 0, err
    assert json.loads(out) == {"n": 2}


@pytest.mark.parametrize(
    ("ending", "code", "crashed"),
    [("pass", 0, False), ("raise SystemExit(3)", 3, False), ("raise RuntimeError('x')", 1, True)],
    ids=["end", "exit", "exception"],
)
def test_a_single_instance_that_ends_normally_is_not_taken_for_a_crash(win, ending, code, crashed):
    """A program that ends normally releases its mutex before its threads go, so the next
    start gets ``WAIT_OBJECT_0``, not ``WAIT_ABANDONED``; an uncaught exception is a crash."""
    first = "import inturn\napp = inturn.single_instance('ending')\n" + ending
    assert win.run("-c", first)[0] == code
    second = "import inturn; print(inturn.single_instance('ending', wait=True).abandoned)"
    exit_code, out, err = win.run("-c", second)
    assert (exit_code, out.strip()) == (0, str(crashed)), err
