"""A ticket's first record, written at every join, is encoded with its constant part kept:
it must stay the very bytes of the plain JSON encoding, whatever the ticket says."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from inturn.backends.folders import dumps_line, header_line, name_line
from inturn.records import MAX_FIELD_CHARS, Ticket, own_ticket_fields

texts = st.text(max_size=40) | st.just("é" * (MAX_FIELD_CHARS + 3)) | st.just('a\n"\\\x00')


@given(
    pid=st.integers(0, 2**31) | st.none(),
    user=texts,
    host=texts,
    command=st.lists(texts, max_size=4).map(tuple),
    cwd=texts,
    joined_at=st.floats(allow_nan=True, allow_infinity=True) | st.none(),
    slots=st.integers(1, 2**31),
    shared=st.booleans(),
    newest_wins=st.booleans(),
    channel=texts | st.none(),
    pid_namespace=st.integers(0, 2**40) | st.none(),
)
def test_header_line_is_the_json_of_the_header(**fields):
    ticket = Ticket(number=3, **fields)
    assert header_line(ticket) == dumps_line(ticket.header())
    assert header_line(ticket) == dumps_line(ticket.header())  # from what was kept


def test_the_kept_part_follows_a_change_of_command():
    first = own_ticket_fields(("a", "b"), 1)
    second = first._replace(command=("c",), joined_at=first.joined_at + 1.5)
    for ticket in (first, second, first):
        assert json.loads(header_line(ticket)) == json.loads(dumps_line(ticket.header()))
        assert header_line(ticket) == dumps_line(ticket.header())


@given(texts)
def test_name_line_is_the_json_of_the_name_record(name):
    assert name_line(name) == dumps_line({"name": name})
