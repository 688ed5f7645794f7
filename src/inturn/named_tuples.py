"""``typing.NamedTuple``'s class syntax at run time, without importing ``typing``.

Importing ``typing`` took 2 ms of every start of ``inturn run`` (an eighth of what inturn adds
to a bare interpreter), for the four public records alone. Type checkers see
``typing.NamedTuple`` itself (imported under ``TYPE_CHECKING``); at run time a class written
``class Ticket(NamedTuple): ...`` is made into a ``collections.namedtuple`` with the class's
defaults, methods, properties and docstring, as ``typing.NamedTuple`` makes it.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Called with names known only at run time (type checkers check literal namedtuple() calls).
_namedtuple: Callable[..., type] = collections.namedtuple

_NOT_COPIED = frozenset(("__annotations__", "__module__", "__doc__"))


class _Maker(type):
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
        if not bases:  # ``NamedTuple`` itself
            return super().__new__(mcls, name, bases, namespace)
        annotations = dict(namespace.get("__annotations__", {}))
        fields = list(annotations)
        defaults = [namespace[field] for field in fields if field in namespace]
        if any(field in namespace for field in fields[: len(fields) - len(defaults)]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        made = _namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
        made.__annotations__ = annotations
        made.__doc__ = namespace.get("__doc__") or made.__doc__
        for key, value in namespace.items():
            if key not in _NOT_COPIED and key not in annotations:
                setattr(made, key, value)
        return made


class NamedTuple(metaclass=_Maker):
    """Base of a record class: its annotated fields become a ``collections.namedtuple``."""


class TypingWhenAsked:
    """Stands for the module ``typing`` in the records' annotations (``data: _typing.Any``), so
    that ``typing.get_type_hints`` can evaluate them: it asks for ``typing.Any`` only then,
    when ``typing`` has been imported by whoever asks."""

    def __getattr__(self, name: str) -> Any:
        import typing

        return getattr(typing, name)
