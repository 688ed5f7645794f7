"""What Linux's mount table says about a lines folder (proc(5): ``/proc/self/mountinfo``).

Two things decide whether a folder can hold lines as the user means: whether it is on a file
system shared between machines, where inturn's locks do not work (``network_file_system``), and
whether ``/tmp`` is the private one systemd gives a service (``systemd_private_tmp``). Elsewhere
than on Linux, and where the table cannot be read, neither is known and both answer no.
"""

from __future__ import annotations

import os
import sys

MOUNT_TABLE = "/proc/self/mountinfo"

# File systems that share files between machines but not inturn's locks. On NFS a ``flock``
# becomes a POSIX record lock, which a process drops when it closes any descriptor of the file
# and never conflicts with its own; a FUSE file system that does not pass locks on (sshfs,
# s3fs, rclone, ...) keeps them inside the kernel that mounted it; on the others what a
# ``flock`` becomes depends on the client's version and mount options. Either way another
# process, here or on another machine, could find a holder's ticket unlocked, take it for dead
# and hold the turn beside it.
NETWORK_FILE_SYSTEMS = frozenset(
    {
        "9p",
        "afs",
        "ceph",
        "cifs",
        "fuse.ceph-fuse",
        "fuse.gcsfuse",
        "fuse.glusterfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.sshfs",
        "glusterfs",
        "ncpfs",
        "nfs",
        "nfs4",
        "smb3",
        "smbfs",
    }
)


def _rows() -> list[list[bytes]]:
    """The mount table's rows, each split into its fields (none where there is no table)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open(MOUNT_TABLE, "rb") as table:
            return [row.split(b" ") for row in table.read().splitlines()]
    except OSError:
        return []


def network_file_system(path: str) -> str | None:
    """The type of the file system ``path`` is on when it is one of ``NETWORK_FILE_SYSTEMS``.

    A row's third field is the device (``major:minor``), the one ``stat`` gives every file of
    that mount; the type follows the ``-`` that ends the row's optional fields.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        device = os.stat(path).st_dev
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}".encode()
    for fields in _rows():
        if fields[2:3] != [wanted] or b"-" not in fields:
            continue
        kind = fields[fields.index(b"-") + 1 :][:1]
        name = kind[0].decode(errors="replace") if kind else ""
        if name in NETWORK_FILE_SYSTEMS:
            return name
    return None


def systemd_private_tmp(tmp: str) -> bool:
    """Whether the ``tmp`` this process sees is one systemd made for its service alone
    (``PrivateTmp=yes``: a folder ``systemd-private-*/tmp`` mounted on ``/tmp`` in the
    service's own mount namespace), as the root of the last mount on it shows. Lines in it
    are not the rest of the machine's. Asked only of processes of a systemd service, which
    systemd gives ``INVOCATION_ID``."""
    if "INVOCATION_ID" not in os.environ:
        return False
    point = os.fsencode(tmp)
    roots = [fields[3] for fields in _rows() if fields[4:5] == [point]]
    return bool(roots) and b"/systemd-private-" in roots[-1]  # the last one mounted is seen
