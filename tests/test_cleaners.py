"""What the system's own cleaners do to lines that are held (Linux, as root).

A held turn must keep its files for as long as its holder runs: a ticket that disappears
lets a later run see nobody ahead and start beside the holder. Two cleaners run on most
Linux systems, and both are run here for real, or as they act:

* at a user's last logout, systemd-logind removes everything the user owns in ``/dev/shm``
  (``RemoveIPC=yes``, logind.conf(5)); the tests do what it does, as it does it, since there
  is no login session to end here;
* ``systemd-tmpfiles --clean`` removes from ``/tmp`` what nobody has touched for a while (10
  days on many systems); the tests run it with an age of 0, which removes every file it does
  not spare.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import inturn

from conftest import (
    REPORT_TIMEOUT,
    child_env,
    inturn_cmd,
    run_cli,
    until,
    without_inturn_settings,
)
from terminal import ensure_program
from users import User

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux cleaners")

BUSY = 75
HOLD = ("sh", "-c", "echo held; read _")
LATE = ("echo", "the late run ran")


def remove_ipc(uid: int) -> None:
    """What systemd-logind does at the end of a user's last login session with RemoveIPC=yes
    (its clean-ipc): remove every file and folder in ``/dev/shm`` that the user owns (and their
    System V IPC objects and POSIX message queues, which inturn does not use)."""
    for top, folders, files in os.walk("/dev/shm", topdown=False):
        for name in files + folders:
            path = os.path.join(top, name)
            try:
                info = os.lstat(path)
                if info.st_uid != uid:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                continue  # another process's file came and went meanwhile


@pytest.mark.parametrize("scope", ["user", "machine"])
def test_logging_out_takes_no_ticket_from_a_job_that_outlives_the_login(users, scope):
    """Alice starts a job that outlives her login (nohup, cron, tmux) on the default folder,
    then her last session ends: her ticket stays, so the next run (hers, or another user's on
    a machine-wide line) is refused as busy and its command never runs."""
    alice, mallory = users
    name = f"logout-{uuid.uuid4().hex}"
    where = ["--machine"] if scope == "machine" else []
    second: User = mallory if scope == "machine" else alice
    holder = alice.popen(
        alice.inturn("run", *where, name, "--", *HOLD),
        env=without_inturn_settings(alice.env()),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        remove_ipc(alice.uid)
        env = without_inturn_settings(second.env())
        late = second.run(second.inturn("run", "-n", *where, name, "--", *LATE), env=env)
        assert (late.returncode, late.stdout) == (BUSY, ""), late  # its command never ran
        assert "is busy: held by pid" in late.stderr, late
    finally:
        holder.communicate("\n", timeout=REPORT_TIMEOUT)
        if scope == "machine":  # both users' files: only root may remove them all
            run_cli("forget", *where, name, env=without_inturn_settings(child_env()))
        else:
            alice.run(alice.inturn("forget", name), env=without_inturn_settings(alice.env()))
    assert holder.returncode == 0


# A single instance that listens (a socket in the line's folder) and holds until stdin ends.
LISTENER = textwrap.dedent(
    """
    import sys
    import inturn
    turn = inturn.single_instance(
        sys.argv[1], on_message=lambda message: "still here", scope=sys.argv[2]
    )
    print("held", flush=True)
    sys.stdin.readline()
    """
)


def every_file(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("scope", ["user", "machine"])
def test_systemd_tmpfiles_ageing_leaves_a_held_line_whole(tmp_path, scope):
    """A listening holder (ticket, counter, name, socket) and a ``--newest-wins`` waiter
    (ticket and its FIFO), then ``systemd-tmpfiles --clean`` with age 0 on their folder:
    nothing is removed, a late run is refused as busy, a message is answered, and the waiter
    runs when the holder ends."""
    cleaner = ensure_program("systemd-tmpfiles", "systemd-standalone-tmpfiles")
    name = "aged"
    folder = tmp_path / "lines"
    folder.mkdir()
    variable = "INTURN_MACHINE_DIR" if scope == "machine" else "INTURN_DIR"
    if scope == "machine":
        folder.chmod(0o1777)  # as /tmp
    env = child_env(**{variable: str(folder)})
    env.pop("INTURN_BACKEND", None)
    where = ["--machine"] if scope == "machine" else []
    holder = subprocess.Popen(
        [sys.executable, "-c", LISTENER, name, scope],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    waiter = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        waiter = subprocess.Popen(
            inturn_cmd("run", *where, "--newest-wins", name, "--", "echo", "second ran"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = inturn.Line(name, scope=scope, directory=str(folder))
        until(
            lambda: (
                waiter.pid in [t.pid for t in line.status().waiters]
                and any(entry.endswith(".kick") for entry in every_file(folder))
            ),
            "the waiter, and the FIFO it makes once in line",
        )
        before = every_file(folder)
        assert any(entry.endswith(".sock") for entry in before), before
        assert any(entry.endswith(".kick") for entry in before), before
        rules = tmp_path / "inturn-age.conf"
        rules.write_text(f"d {folder} - - - 0\n")
        cleaned = subprocess.run(
            [cleaner, "--clean", str(rules)], capture_output=True, text=True, timeout=120
        )
        assert cleaned.returncode == 0, cleaned
        assert every_file(folder) == before
        late = run_cli("run", "-n", *where, name, "--", *LATE, env=env)
        assert (late.returncode, late.stdout) == (BUSY, ""), late  # its command never ran
        assert "is busy: held by pid" in late.stderr, late
        told = run_cli("send", "-w", "300", *where, name, env=env)
        assert told.returncode == 0 and "still here" in told.stdout, told
    finally:
        holder.communicate("\n", timeout=REPORT_TIMEOUT)
        if waiter is not None:
            out, err = waiter.communicate(timeout=REPORT_TIMEOUT)
            assert (waiter.returncode, out) == (0, "second ran\n"), err
    assert holder.returncode == 0
