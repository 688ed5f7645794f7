"""``inturn.lines`` and ``inturn.forget_unused`` on every backend: every line of one place with
its status, and forgetting the ones nobody is in, from Python as ``inturn status`` does; and
``LineStatus.passing_to``, read by the queue's own rule."""

from __future__ import annotations

import itertools
import os
import warnings

import pytest

import inturn
from inturn.backends import open_backend
from inturn.backends.base import placed_by_rule
from inturn.queue import holds_at

from conftest import run_cli


def used(*names: str) -> None:
    for name in names:
        assert run_cli("run", name, "--", "true").returncode == 0


def test_lines_lists_every_line_with_its_holders_and_waiters(where):
    used("a", "b", "c")
    line = inturn.Line("b")
    held = line.acquire()
    try:
        found = inturn.lines()
        assert [s.name for s in found] == ["a", "b", "c"]
        assert all(isinstance(s, inturn.LineStatus) for s in found)
        assert [t.pid for t in found[1].holders] == [os.getpid()]
        assert [t.number for t in found[1].holders] == [held.ticket]
        assert not found[0].holders and not found[0].waiters
        assert not found[2].holders and not found[2].waiters
        assert found[1].where == line.status().where
    finally:
        held.release()
        line.close()


def test_lines_through_a_backend_given_leaves_it_open(where):
    used("x")
    backend = open_backend(where.url)
    try:
        assert [s.name for s in inturn.lines(backend=backend)] == ["x"]
        assert [s.name for s in inturn.lines(backend=backend)] == ["x"]  # still open
    finally:
        backend.close()


def test_forget_unused_forgets_the_lines_nobody_is_in(where):
    used("a", "b", "c")
    line = inturn.Line("b")
    held = line.acquire()
    try:
        assert inturn.forget_unused() == ["a", "c"]
        assert [s.name for s in inturn.lines()] == ["b"]
        assert [t.pid for t in inturn.lines()[0].holders] == [os.getpid()]
    finally:
        held.release()
        line.close()
    assert inturn.forget_unused() == ["b"]
    assert inturn.lines() == []
    assert inturn.forget_unused() == []


def test_lines_of_a_folder_never_used_is_empty_and_creates_nothing(tmp_path):
    folder = tmp_path / "never"
    assert inturn.lines(directory=folder) == []
    assert not folder.exists()


def test_lines_refuses_what_line_refuses():
    with pytest.raises(inturn.UsageError, match="unknown scope"):
        inturn.lines(scope="planet")
    with pytest.raises(inturn.UsageError, match="unknown backend"):
        inturn.forget_unused(backend="ftp://example.invalid")
    with pytest.raises(inturn.UsageError, match="directory must be a path"):
        inturn.lines(directory=42)  # type: ignore[arg-type]


def test_a_spoilt_entry_is_skipped_with_a_warning(lines_dir):
    """A line whose name record is corrupt is left out of ``lines`` and ``forget_unused``
    with one ``InturnWarning``, not hidden unseen, and the other lines are listed."""
    used("fine", "spoilt")
    (record,) = [p for p in lines_dir.rglob(".name") if "spoilt" in p.parent.name]
    record.write_bytes(b"\x00garbage")
    with pytest.warns(inturn.InturnWarning, match="does not hold a line's name") as caught:
        found = inturn.lines()
    assert [s.name for s in found] == ["fine"]
    assert [str(w.message) for w in caught] == [
        f"skipping {record}: it does not hold a line's name; look the line up by name"
    ]
    assert inturn.forget_unused() == ["fine"]  # the spoilt one is left as it is
    assert record.exists()


@pytest.mark.skipif(os.name != "posix", reason="the POSIX backend's reader of .name")
@pytest.mark.parametrize("scope", ["user", "machine"])
@pytest.mark.parametrize("put_back", ["before the look", "after the look"])
def test_a_name_record_a_forget_removes_and_a_join_puts_back_as_it_is_read_is_no_warning(
    tmp_path, monkeypatch, scope, put_back
):
    """``forget_unused`` while others take turns: a forget removes a line's ``.name`` just as
    the listing opens it, and a join puts it back, before or after the listing looks whether
    it is there. The line is being forgotten and set up again, not spoilt: no warning."""
    import inturn.backends.posix as posix

    for name in ("busy", "calm"):
        inturn.Line(name, scope=scope, directory=tmp_path).acquire().release()
    real_read, real_lexists = posix._read_name, os.path.lexists
    raced: list[str] = []  # the record taken away, until it is put back

    def read_name_as_a_forget_passes(path: str) -> str | None:
        if "busy" in path and not raced:
            raced.append(path)
            os.rename(path, f"{path}.aside")  # removed by a forget
            name = real_read(path)
            if put_back == "before the look":
                put_it_back()
            return name
        return real_read(path)

    def lexists_as_a_join_passes(path: str | os.PathLike[str]) -> bool:
        found = real_lexists(path)
        if raced and os.fspath(path) == raced[0] and not found:
            put_it_back()
        return found

    def put_it_back() -> None:  # published again by a join
        if real_lexists(f"{raced[0]}.aside"):
            os.rename(f"{raced[0]}.aside", raced[0])

    monkeypatch.setattr(posix, "_read_name", read_name_as_a_forget_passes)
    monkeypatch.setattr(os.path, "lexists", lexists_as_a_join_passes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", inturn.InturnWarning)
        for attempt in ("lines", "forget_unused"):
            raced.clear()
            if attempt == "lines":
                found = [s.name for s in inturn.lines(scope=scope, directory=tmp_path)]
            else:
                found = inturn.forget_unused(scope=scope, directory=tmp_path)
            assert raced, attempt
            assert found == (["busy", "calm"] if put_back == "before the look" else ["calm"])
    monkeypatch.undo()
    assert [s.name for s in inturn.lines(scope=scope, directory=tmp_path)] == (
        [] if put_back == "before the look" else ["busy"]
    )


# --------------------------------------------------------------------------- passing_to


def ticket(number: int, shared: bool = False, slots: int = 1, holding: bool = False):
    return inturn.Ticket(number, slots=slots, shared=shared, acquired_at=1.0 if holding else None)


def test_passing_to_names_the_first_waiter_once_the_rule_gives_it_the_turn():
    status = inturn.LineStatus
    assert status("l").passing_to() is None
    assert status("l", holders=(ticket(1, holding=True),)).passing_to() is None
    first = ticket(2)
    assert status("l", waiters=(first, ticket(3))).passing_to() == first
    assert status("l", (ticket(1, holding=True),), (first,)).passing_to() is None
    wide = ticket(2, slots=2)
    assert status("l", (ticket(1, slots=2, holding=True),), (wide,)).passing_to() == wide
    reader = ticket(2, shared=True)
    assert status("l", (ticket(1, shared=True, holding=True),), (reader,)).passing_to() == reader
    assert status("l", (ticket(1, holding=True),), (reader,)).passing_to() is None
    assert status("l", (ticket(1, shared=True, holding=True),), (first,)).passing_to() is None


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_passing_to_agrees_with_the_queue_on_every_small_line(slots):
    """For every line of up to five live tickets (readers and writers) and every choice of
    which of them have marked themselves holding, ``passing_to`` names the first waiter
    exactly when the queue would let it hold from the tickets ahead of it."""
    for size in range(1, 6):
        for kinds in itertools.product([False, True], repeat=size):
            shared = frozenset(n for n, s in enumerate(kinds, 1) if s)
            live = list(range(1, size + 1))
            for marks in itertools.product([False, True], repeat=size):
                tickets = [
                    ticket(n, s, slots, m) for n, s, m in zip(live, kinds, marks, strict=True)
                ]
                holders = tuple(t for t in tickets if t.holding)
                waiters = tuple(t for t in tickets if not t.holding)
                got = inturn.LineStatus("l", holders, waiters).passing_to()
                if not waiters:
                    assert got is None
                    continue
                first = waiters[0].number
                ahead = [t.number for t in holders if t.number < first]
                expected = holds_at(slots, [*ahead, first], shared, first)
                assert got == (waiters[0] if expected else None), (kinds, marks)


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_tickets_whose_records_cannot_be_read_hold_as_the_queue_says(slots):
    """For every line of up to five live tickets (readers and writers, the first record
    readable or not) where the rest could not be read, ``status`` places each unread one as
    the queue would let it hold, with the slots the readable record asks for; its record's
    fields stay empty, and its mode is the one the look found."""
    for size in range(1, 6):
        for kinds in itertools.product([False, True], repeat=size):
            shared = frozenset(n for n, s in enumerate(kinds, 1) if s)
            live = list(range(1, size + 1))
            readable = ticket(1, kinds[0], slots, holding=True)
            unread = [inturn.Ticket(n, user="root", held_by_place=False) for n in live[1:]]
            for first in (readable, inturn.Ticket(1, user="root", held_by_place=False)):
                placed = placed_by_rule([first, *unread], shared)
                known_slots = slots if first is readable else 1
                for found in placed[1:]:
                    expected = holds_at(known_slots, live, shared, found.number)
                    assert found.holding == expected, (kinds, found)
                    assert found.shared == (found.number in shared)
                    assert (found.pid, found.joined_at, found.acquired_at) == (None, None, None)
                assert placed[0].holding
