"""The public records are made without ``typing`` at run time: they must behave as
``typing.NamedTuple`` classes do, checked here side by side with one."""

from __future__ import annotations

import copy
import pickle
import typing

import pytest

import inturn
from inturn.named_tuples import NamedTuple


class Made(NamedTuple):
    """A record made by inturn's base."""

    number: int
    name: str = ""
    tags: tuple[str, ...] = ()

    @property
    def tagged(self) -> bool:
        return bool(self.tags)

    def describe(self) -> str:
        return f"{self.number} {self.name}"


class Typed(typing.NamedTuple):
    """The same record made by typing."""

    number: int
    name: str = ""
    tags: tuple[str, ...] = ()

    @property
    def tagged(self) -> bool:
        return bool(self.tags)

    def describe(self) -> str:
        return f"{self.number} {self.name}"


@pytest.mark.parametrize("cls", [Made, Typed], ids=["inturn", "typing"])
def test_a_record_behaves_as_a_typing_namedtuple(cls):
    record = cls(1, "a")
    assert isinstance(record, tuple) and record == (1, "a", ())
    assert cls._fields == ("number", "name", "tags")
    assert cls._field_defaults == {"name": "", "tags": ()}
    assert list(cls.__annotations__) == ["number", "name", "tags"]
    assert cls.__doc__.startswith("A record made by") or cls is Typed
    assert (cls.__name__, cls.__qualname__, cls.__module__) == (cls.__name__,) * 2 + (__name__,)
    assert record._replace(tags=("x",)).tagged and not record.tagged
    assert record.describe() == "1 a"
    assert record._asdict() == {"number": 1, "name": "a", "tags": ()}
    assert cls._make([2, "b", ("c",)]) == cls(2, "b", ("c",))
    assert cls(number=3) == (3, "", ())
    assert pickle.loads(pickle.dumps(record)) == record
    assert copy.deepcopy(record) == record
    assert repr(record) == f"{cls.__name__}(number=1, name='a', tags=())"
    with pytest.raises(AttributeError):
        record.number = 2
    with pytest.raises(TypeError):
        cls()


def test_a_field_without_a_default_after_one_with_a_default_is_refused():
    with pytest.raises(TypeError, match="without a default"):

        class Wrong(NamedTuple):
            first: int = 0
            second: int


def test_the_public_records_are_made_this_way_and_keep_their_fields():
    for cls in (inturn.Ticket, inturn.LineStatus, inturn.Message, inturn.Progress):
        assert issubclass(cls, tuple) and cls.__module__ == "inturn.records", cls
        assert list(cls.__annotations__) == list(cls._fields), cls
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), cls
    ticket = inturn.Ticket(4, pid=10, command=("make",))
    assert ticket.holding is False and ticket.describe() == "pid 10 (make)"
    assert pickle.loads(pickle.dumps(ticket)) == ticket


def test_the_public_records_types_can_be_read_at_run_time():
    """``typing.get_type_hints`` (what pydantic and other readers of types call) resolves
    every field, ``Message.data`` to ``typing.Any`` itself."""
    hints = {
        cls: typing.get_type_hints(cls)
        for cls in (inturn.Ticket, inturn.LineStatus, inturn.Message, inturn.Progress)
    }
    assert hints[inturn.Message]["data"] is typing.Any
    assert hints[inturn.Ticket]["command"] == tuple[str, ...]
    assert hints[inturn.LineStatus]["holders"] == tuple[inturn.Ticket, ...]
    assert hints[inturn.Progress]["ahead"] == tuple[int, ...]
    for cls, found in hints.items():
        assert list(found) == list(cls._fields), cls
