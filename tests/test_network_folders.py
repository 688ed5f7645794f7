"""Lines folders on a network file system are refused (Linux).

A real one: ``sshfs`` (FUSE) mounts a local folder through a real ``sftp-server``, which it
starts in place of ``ssh`` (no network needed; the protocol is the same). It stands for any
folder reached by two kernels: the holder runs on the folder as it is on disk, the late
arrival on the same folder through the mount, as a process on another machine would see it.
Locks taken through the mount stay in the FUSE kernel and never meet the holder's, so the
late arrival would find the holder's ticket unlocked, take it for dead and run beside it;
the observer's log is what shows whether it did.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

import inturn
from inturn.backends.mounts import network_file_system

from conftest import Run, child_env, missing_component, one_line_error, run_cli
from observer import command, read_intervals
from terminal import ensure_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux mounts")

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
REFUSAL = ("network file system (fuse.sshfs)", "local folder", "postgresql://")


class Mounted(NamedTuple):
    """One folder, on disk (``disk``) and through the network file system (``remote``)."""

    disk: Path
    remote: Path


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    sshfs = ensure_program("sshfs")
    server = ensure_program(SFTP_SERVER, "openssh-sftp-server")
    unmount = ensure_program("fusermount3", "fuse3")
    if not os.path.exists("/dev/fuse"):
        missing_component("/dev/fuse is missing", "run the tests where FUSE can mount")
    base = tmp_path_factory.mktemp("network")
    disk, remote = base / "disk", base / "remote"
    disk.mkdir()
    remote.mkdir()
    transport = base / "transport"  # what sshfs runs in place of ssh: the server itself
    transport.write_text(f"#!/bin/sh\nexec {server}\n")
    transport.chmod(0o755)
    # sshfs returns once the mount is in place (it then serves it from the background).
    subprocess.run(
        [sshfs, "-o", f"ssh_command={transport}", f"localhost:{disk}", str(remote)],
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert network_file_system(str(remote)) == "fuse.sshfs"
        assert network_file_system(str(disk)) is None
        yield Mounted(disk, remote)
    finally:
        subprocess.run([unmount, "-u", "-z", str(remote)], check=False, timeout=60)


def test_a_late_arrival_through_the_network_never_runs_beside_the_holder(
    mounted: Mounted, tmp_path: Path
) -> None:
    log = tmp_path / "inside.log"
    folder = "late-arrival"
    holder = Run(
        "job",
        env=child_env(INTURN_DIR=str(mounted.disk / folder)),
        command=command(log, who="holder", hold=True),
    )
    assert holder.next_line() == ["inside", "holder"]  # the turn is held
    for number, options in enumerate((["-n"], ["-w", "0"], [])):
        late = run_cli(
            "run",
            *options,
            "job",
            "--",
            *command(log, who=f"late-{number}"),
            INTURN_DIR=str(mounted.remote / folder),
        )
        one_line_error(late, str(mounted.remote / folder), *REFUSAL)
    seen = inturn.Line("job", directory=str(mounted.disk / folder)).status()
    assert len(seen.holders) == 1 and not seen.waiters  # the holder's ticket is untouched
    assert holder.finish() == 0
    assert [i.who for i in read_intervals(log)] == ["holder"]  # nobody else was ever inside


def test_every_command_and_the_python_api_refuse_it_and_make_nothing(mounted: Mounted) -> None:
    missing = mounted.remote / "never-made"
    for args in (
        ["run", "job", "--", "true"],
        ["run", "--machine", "job", "--", "true"],
        ["status"],
        ["status", "job"],
        ["status", "--prune"],
        ["wait", "job"],
        ["forget", "job"],
        ["send", "job", "--", "hello"],
    ):
        variables = {"INTURN_DIR": str(missing), "INTURN_MACHINE_DIR": str(missing)}
        one_line_error(run_cli(*args, **variables), str(missing), *REFUSAL)
    line = inturn.Line("job", directory=str(missing))
    for use in (line.acquire, line.status, line.forget):
        with pytest.raises(inturn.BackendError, match=r"fuse\.sshfs"):
            use()
    assert not missing.exists()
