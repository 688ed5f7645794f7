"""Bad input and hostile setups: one clear message, exit 2, nothing lost or followed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings

import pytest

import inturn
from inturn.backends.posix import PosixBackend, prepare_root
from inturn.records import InturnWarning

from conftest import Worker, child_env, inturn_cmd, one_line_error, run_cli


def test_a_file_where_the_lines_folder_belongs(tmp_path):
    path = tmp_path / "lines"
    path.write_text("precious")
    one_line_error(run_cli("run", "x", "--", "true", INTURN_DIR=str(path)), "not a folder")
    assert path.read_text() == "precious"


@pytest.mark.parametrize("leads", ["nowhere", "to itself"])
def test_a_link_to_no_folder_where_the_lines_folder_belongs(tmp_path, leads):
    """A lines folder named through a symbolic link that leads to no folder (its target was
    removed, or the link loops): one line saying so, from a run and from a look, and the
    API's own error, not a bare ``FileNotFoundError`` or ``OSError``. Nothing is made."""
    path = tmp_path / "lines"
    path.symlink_to(tmp_path / "removed" if leads == "nowhere" else path)
    for args in (("run", "x", "--", "true"), ("status",), ("status", "x")):
        said = run_cli(*args, INTURN_DIR=str(path))
        one_line_error(said, "symbolic link", "leads to no folder", "INTURN_DIR")
    with pytest.raises(inturn.BackendError, match="symbolic link"):
        inturn.Line("x", directory=path).acquire()
    assert path.is_symlink() and not (tmp_path / "removed").exists()


def test_a_lines_folder_under_a_folder_closed_to_the_user_is_not_said_to_be_missing(
    users, shared_dir
):
    """Alice names a lines folder (or one to be made) under root's private folder: she is
    told that a folder above is closed to her, not that it does not exist."""
    closed = shared_dir / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    (closed / "lines").mkdir()
    alice = users.alice
    for folder in (closed / "lines", closed / "lines" / "sub"):
        env = alice.env(INTURN_DIR=str(folder))
        said = one_line_error(alice.run(alice.inturn("run", "x", "--", "true"), env=env))
        assert "closed to you" in said and "does not exist" not in said, said
    assert list((closed / "lines").iterdir()) == []


def test_a_symlink_where_a_line_folder_belongs_is_refused_not_followed(lines_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lines_dir.mkdir()
    (lines_dir / "nightly").symlink_to(elsewhere)
    one_line_error(run_cli("run", "nightly", "--", "true"), "symbolic link", "remove it")
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_where_the_counter_belongs_is_refused(lines_dir, tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep me")
    (lines_dir / "nightly").mkdir(parents=True)
    (lines_dir / "nightly" / ".line").symlink_to(target)
    one_line_error(run_cli("run", "nightly", "--", "true"), "symbolic link")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["folder", "socket", "fifo"])
def test_what_is_no_file_where_the_counter_belongs_is_named_with_the_fix(
    lines_dir, monkeypatch, kind
):
    """A folder, a socket or a FIFO where a line's counter belongs: one line that names it
    and says to remove it (a folder and a socket were only the system's "Is a directory",
    "No such device or address"), from a run and from a forget; nothing is removed."""
    folder = lines_dir / "nightly"
    folder.mkdir(parents=True)
    counter = folder / ".line"
    if kind == "folder":
        counter.mkdir()
    elif kind == "fifo":
        os.mkfifo(counter)
    else:
        monkeypatch.chdir(folder)  # a socket's path is short, the test's folder may not be
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(".line")
    for args in (("run", "nightly", "--", "true"), ("forget", "nightly")):
        one_line_error(run_cli(*args), f"{counter} is not a regular file", "remove it")
    assert sorted(p.name for p in folder.iterdir()) == [".line", ".name"]


def test_a_symlink_named_like_a_ticket_is_ignored_not_followed(lines_dir, tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep me")
    inturn.Line("odd").acquire().release()
    (lines_dir / "odd" / "000000000001.ticket").symlink_to(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with inturn.turn("odd") as held:
            assert held.ticket == 2
        assert inturn.Line("odd").status().holders == ()
    assert any(issubclass(w.category, InturnWarning) for w in caught)
    assert target.read_text() == "keep me"


def test_a_corrupt_counter_is_rebuilt_above_every_ticket_seen(lines_dir):
    line = inturn.Line("count")
    holder = line.acquire()
    (lines_dir / "count" / ".line").write_bytes(b"\x00garbage")
    with pytest.warns(InturnWarning, match="corrupt"), pytest.raises(inturn.Busy):
        line.acquire(blocking=False)
    holder.release()
    with inturn.turn("count") as held:
        assert held.ticket > holder.ticket + 1


def test_corrupt_or_truncated_records_are_skipped_with_a_warning(lines_dir):
    inturn.Line("bad").acquire().release()
    folder = lines_dir / "bad"
    (folder / "000000000007.ticket").write_bytes(b"not json at all\n")  # dead and corrupt
    (folder / "000000000008.ticket").write_bytes(b'{"pid": 12')  # dead, half written
    with pytest.warns(InturnWarning, match="corrupt"):
        status = inturn.Line("bad").status()
    assert status.holders == () and status.waiters == ()
    with inturn.turn("bad") as held:
        assert held.ticket == 2  # the counter, not foreign files, gives numbers
    assert sorted(p.name for p in folder.iterdir()) == [".line", ".name"]


def test_a_planted_file_at_the_next_number_is_skipped(lines_dir):
    inturn.Line("plant").acquire().release()
    (lines_dir / "plant" / "000000000002.ticket").write_text("")
    with inturn.turn("plant") as held:
        assert held.ticket == 3


def test_default_folder_must_be_ours_private_and_not_a_link(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(inturn.BackendError, match="symbolic link"):
        prepare_root(str(link), "user", explicit=False)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(inturn.BackendError, match="chmod 700"):
        prepare_root(str(shared), "user", explicit=False)
    if os.getuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(inturn.BackendError, match="belongs to uid 65534"):
            prepare_root(str(foreign), "user", explicit=False)


def test_looks_trust_a_planted_default_folder_no_more_than_runs_do(tmp_path, monkeypatch):
    """Another user who plants the default folder (a link to their own, or a folder of
    theirs) cannot make status show their lines as ours, nor ``inturn wait`` wait on them:
    every look refuses it with the line a run gives. A look at a folder not made yet makes
    nothing."""
    monkeypatch.delenv("INTURN_DIR", raising=False)
    monkeypatch.delenv("INTURN_BACKEND", raising=False)
    theirs = tmp_path / "theirs"
    assert run_cli("run", "nightly", "--", "true", INTURN_DIR=str(theirs)).returncode == 0
    default = tmp_path / f"inturn-{os.getuid()}"
    assert not prepare_root(str(default), "user", explicit=False, create=False)
    assert not default.exists()
    default.symlink_to(theirs)
    looks = [("status",), ("status", "nightly"), ("wait", "nightly"), ("forget", "nightly")]
    code = f"import sys, inturn.backends.posix as p, inturn.cli as c; p.TMP = {str(tmp_path)!r}"
    env = {k: v for k, v in child_env().items() if k not in ("INTURN_DIR", "INTURN_BACKEND")}
    for look in [("run", "nightly", "--", "true"), *looks]:
        result = subprocess.run(
            [sys.executable, "-c", f"{code}; sys.exit(c.main({list(look)!r}))"],
            capture_output=True,
            text=True,
            env=env,
        )
        one_line_error(result, "symbolic link, not a folder of inturn's")
    monkeypatch.setattr("inturn.backends.posix.TMP", str(tmp_path))
    for look in (lambda line: line.status(), lambda line: line.wait()):
        with pytest.raises(inturn.BackendError, match="symbolic link"):
            look(inturn.Line("nightly"))
    default.unlink()
    default.mkdir(mode=0o755)
    default.chmod(0o755)
    with pytest.raises(inturn.BackendError, match="chmod 700"):
        inturn.Line("nightly").status()


def test_an_unwritable_folder_is_named_with_the_fix(users, shared_dir):
    folder = shared_dir / "locked"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # root's: alice may look but not write
    alice = users.alice
    result = alice.run(
        alice.inturn("run", "x", "--", "true"), env=alice.env(INTURN_DIR=str(folder))
    )
    one_line_error(result, "not writable", "INTURN_DIR")


def test_a_ticket_its_reader_may_not_read_is_shown_in_line(users, shared_dir):
    """A ticket file alice may not read (another user's, 0600) keeps her runs out, as a live
    ticket does: status shows it in line, as that user's, with a warning (it said "free");
    alone in line, it holds."""
    folder = shared_dir / "alice-lines"
    alice = users.alice
    env = alice.env(INTURN_DIR=str(folder))
    assert alice.run(alice.inturn("run", "ro", "--", "true"), env=env).returncode == 0
    planted = folder / "ro" / "000000000009.ticket"
    planted.touch(mode=0o600)
    os.chown(planted, users.mallory.uid, users.mallory.uid)
    looked = alice.run(alice.inturn("status", "--json", "ro"), env=env)
    assert looked.returncode == 0, looked
    holders = json.loads(looked.stdout)["holders"]
    assert [(t["ticket"], t["user"]) for t in holders] == [(9, users.mallory.name)]
    assert "cannot read" in looked.stderr and "shown without its details" in looked.stderr


def test_tickets_whose_records_cannot_be_read_hold_or_wait_by_their_place_in_line(
    users, shared_dir, workers
):
    """Root's lines, in a folder opened for alice to look at, with ticket records she may
    not read: her status says who holds by the queue's rule, from their places in line (the
    records said nothing, and every ticket showed as waiting), each with only its number,
    its mode and its owner known."""
    folder = shared_dir / "root-lines"
    env = child_env(INTURN_DIR=str(folder))
    holder = Worker("one", "--hold", env=env)
    workers.append(holder)
    holder.expect("acquired")
    behind = Worker("one", "--hold", env=env)
    workers.append(behind)
    behind.expect("waiting")
    readers = [Worker("many", "--shared", "--hold", env=env) for _ in range(2)]
    workers.extend(readers)
    for reader in readers:
        reader.expect("acquired", skip=("joining",))
    writer = Worker("many", "--hold", env=env)
    workers.append(writer)
    writer.expect("waiting")
    for opened in (folder, folder / "one", folder / "many"):
        opened.chmod(0o755)  # alice may look in, and read the names, but not the tickets
    for name in (folder / "one" / ".name", folder / "many" / ".name"):
        name.chmod(0o644)
    alice = users.alice
    seen = alice.run(alice.inturn("status", "--json"), env=alice.env(INTURN_DIR=str(folder)))
    assert seen.returncode == 0, seen
    assert "cannot read" in seen.stderr, seen
    lines = {line["name"]: line for line in json.loads(seen.stdout)["lines"]}

    def states(name: str) -> list[tuple[int, str, str, str, object]]:
        line = lines[name]
        return [
            (t["ticket"], t["state"], t["mode"], t["user"], t["pid"])
            for t in (*line["holders"], *line["waiters"])
        ]

    assert states("one") == [
        (1, "holding", "exclusive", "root", None),
        (2, "waiting", "exclusive", "root", None),
    ]
    assert states("many") == [
        (1, "holding", "shared", "root", None),
        (2, "holding", "shared", "root", None),
        (3, "waiting", "exclusive", "root", None),
    ]
    overview = alice.run(alice.inturn("status"), env=alice.env(INTURN_DIR=str(folder)))
    rows = [row.split()[:3] for row in overview.stdout.splitlines()]
    assert rows == [["LINE", "HOLDING", "WAITING"], ["many", "2", "1"], ["one", "1", "1"]]
    for worker in (holder, behind, *readers, writer):
        worker.send()


@pytest.mark.parametrize("closed", ["folder", "name record"])
def test_a_line_its_user_may_not_read_is_skipped_with_a_warning_not_unseen(
    users, shared_dir, closed
):
    """Alice's line whose folder (or name record) she may not read, say after a chmod: the
    listing of every line skips it with one warning line that says so, where it vanished
    unseen (a folder) or passed for a record that holds no name."""
    folder = shared_dir / "alice-lines"
    alice = users.alice
    env = alice.env(INTURN_DIR=str(folder))
    for name in ("open", "closed"):
        assert alice.run(alice.inturn("run", name, "--", "true"), env=env).returncode == 0
    record = folder / "closed" / ".name"
    (record if closed == "name record" else record.parent).chmod(0)
    listing = alice.run(alice.inturn("status", "--json"), env=env)
    assert listing.returncode == 0, listing
    assert [line["name"] for line in json.loads(listing.stdout)["lines"]] == ["open"]
    assert listing.stderr.splitlines() == [
        f"inturn: warning: skipping {record}: you may not read it; fix its permissions (and "
        "its folder's), or look the line up by name"
    ]


def test_forget_refuses_a_line_it_cannot_remove_whole_before_removing_anything(users, shared_dir):
    """A line folder its user made read-only, or one with a folder among its files: forget
    says why, and removes nothing (it removed the line's name first, then failed, hiding the
    line from status, and blamed another user)."""
    folder = shared_dir / "alice-forget"
    alice = users.alice
    env = alice.env(INTURN_DIR=str(folder))
    assert alice.run(alice.inturn("run", "ro", "--", "true"), env=env).returncode == 0
    assert alice.run(alice.inturn("run", "odd", "--", "true"), env=env).returncode == 0
    (folder / "ro").chmod(0o500)
    (folder / "odd" / "000000000007.abandoned").mkdir()
    os.chown(folder / "odd" / "000000000007.abandoned", alice.uid, alice.uid)
    for name, said in (("ro", "you may not write in"), ("odd", "is a folder, not a file")):
        refused = alice.run(alice.inturn("forget", name), env=env)
        line = one_line_error(refused, said, "nothing was removed")
        assert "another user" not in line, line
    names = alice.run(alice.inturn("status", "--names"), env=env)
    assert names.stdout.split() == ["odd", "ro"], names


def test_machine_scope_is_shared_between_users(users, shared_dir):
    root = str(shared_dir / "machine")
    mallory = users.mallory
    env = mallory.env(INTURN_MACHINE_DIR=root)
    attempt = mallory.inturn("run", "--machine", "--no-wait", "shared", "--", "true")
    with inturn.turn("shared", scope="machine", directory=root):
        busy = mallory.run(attempt, env=env)
        assert busy.returncode == 75, busy.stderr
        assert f"pid {os.getpid()}" in busy.stderr
    free = mallory.run(attempt, env=env)
    assert free.returncode == 0, free.stderr
    assert oct(os.stat(root).st_mode & 0o7777) == "0o1777"


def test_names_are_listed_back_exactly(lines_dir):
    names = ["nightly", "Nightly", "../../etc/passwd", "a/b", "x" * 300, "名前 with spaces", "\x00"]
    for name in names:
        inturn.Line(name).acquire().release()
    backend = PosixBackend(directory=str(lines_dir))
    assert backend.names() == sorted(names)
    assert all("/" not in p.name for p in lines_dir.iterdir())
    assert {p.parent for p in lines_dir.rglob("*")} <= {lines_dir, *lines_dir.iterdir()}


def test_python_dash_m_is_the_same_command(lines_dir):
    result = subprocess.run(
        [sys.executable, "-m", "inturn", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "run" in result.stdout


def test_a_corrupt_record_is_one_warning_line_on_the_command_line(lines_dir):
    inturn.Line("warned").acquire().release()
    (lines_dir / "warned" / "000000000009.ticket").write_bytes(b"garbage\n")
    result = run_cli("status", "warned")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"inturn: warning: ignoring corrupt ticket record {lines_dir}/warned/000000000009.ticket"
    ]


def test_looking_at_a_line_does_not_create_it(lines_dir):
    result = run_cli("status", "--json", "never-used")
    assert json.loads(result.stdout)["holders"] == []
    assert not (lines_dir / "never-used").exists()
    assert json.loads(run_cli("status", "--json").stdout)["lines"] == []


@pytest.mark.parametrize("scope", ["user", "machine"])
@pytest.mark.parametrize(
    "record", [b"\x00garbage", b'{"name": "elsewhere"}\n'], ids=["garbage", "another line"]
)
def test_a_line_whose_name_record_is_spoilt_is_skipped_with_a_warning_not_unseen(
    tmp_path, scope, record
):
    """A held line's ``.name`` spoilt (garbage, or naming another line, as a copied folder
    would): the listing of every line skips it with one warning line instead of hiding it
    unseen, and the line is still found by its name, holder and all."""
    folder = tmp_path / "lines"
    folder.mkdir(mode=0o1777 if scope == "machine" else 0o700)
    variable = "INTURN_MACHINE_DIR" if scope == "machine" else "INTURN_DIR"
    where = ["--machine"] if scope == "machine" else []
    env = {variable: str(folder)}
    holder = subprocess.Popen(
        inturn_cmd("run", *where, "spoilt", "--", "sh", "-c", "echo held; read _"),
        env=dict(child_env(), **env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        run_cli("run", *where, "fine", "--", "true", **env)
        records = [path for path in folder.rglob("*.name") if "spoilt" in str(path)]
        assert len(records) == 1
        records[0].write_bytes(record)
        listing = run_cli("status", *where, "--json", **env)
        assert listing.returncode == 0, listing.stderr
        assert [line["name"] for line in json.loads(listing.stdout)["lines"]] == ["fine"]
        assert listing.stderr.splitlines() == [
            f"inturn: warning: skipping {records[0]}: "
            + (
                "it names line 'elsewhere', which is not kept there"
                if b"elsewhere" in record
                else "it does not hold a line's name; look the line up by name"
            )
        ]
        named = json.loads(run_cli("status", *where, "--json", "spoilt", **env).stdout)
        assert len(named["holders"]) == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(60)
