"""Every line of one place: the status of each, and forgetting the ones nobody is in.

The place is named as a ``Line``'s is (``scope``, ``directory``, ``backend``); a ``Backend``
given is used and left open, so a caller that looks again and again (``inturn top``) keeps
one connection.
"""

from __future__ import annotations

import os

from .backends import check_backend, open_backend
from .backends.base import Backend, check_scope
from .errors import BackendError, ServerUnavailable, UsageError
from .line import Line
from .records import LineStatus, warn


def lines(
    *,
    scope: str = "user",
    directory: str | os.PathLike[str] | None = None,
    backend: str | Backend | None = None,
) -> list[LineStatus]:
    """The status of every line kept in one place, by name; as ``Line.status``, looking
    creates nothing. Anything there that is not a line (a foreign file, a corrupt name
    record) is skipped with an ``InturnWarning``."""
    opened = _open(scope, directory, backend, create=False)
    try:
        return [_status(opened, name) for name in opened.names()]
    finally:
        if opened is not backend:
            opened.close()


def forget_unused(
    *,
    scope: str = "user",
    directory: str | os.PathLike[str] | None = None,
    backend: str | Backend | None = None,
) -> list[str]:
    """Forget (``Line.forget``) every line of one place that nobody holds or waits in, and
    return their names. A line that cannot be forgotten (a machine-wide line with another
    user's files in it) is left as it is, with an ``InturnWarning``, and the rest go on; a
    server that stops answering raises ``ServerUnavailable``, as none of the rest could go.
    The lines are found by a look, as ``lines`` finds them: where there are none, nothing is
    created (no folder, no schema)."""
    looked = _open(scope, directory, backend, create=False)
    try:
        names = looked.names()
    finally:
        if looked is not backend:
            looked.close()
    if not names:
        return []
    opened = _open(scope, directory, backend, create=True)  # as Line.forget opens it
    forgotten = []
    try:
        for name in names:
            line = Line(name, scope=scope, backend=opened)
            try:
                if line.forget():
                    forgotten.append(name)
            except ServerUnavailable:
                raise  # not this line's doing: none of the rest can be forgotten either
            except BackendError as exc:
                warn(f"{exc}; left as it is")
            finally:
                line.close()
    finally:
        if opened is not backend:
            opened.close()
    return forgotten


def _open(
    scope: str,
    directory: str | os.PathLike[str] | None,
    backend: str | Backend | None,
    create: bool,
) -> Backend:
    """The place's backend, after the checks ``Line`` makes of the same arguments."""
    check_scope(scope)
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise UsageError(f"directory must be a path, not {directory!r}")
    folder = None if directory is None else os.fspath(directory)
    check_backend(backend, folder)
    return open_backend(backend, scope=scope, directory=folder, create=create)


def _status(backend: Backend, name: str) -> LineStatus:
    store = backend.line(name)
    try:
        return store.status()
    finally:
        store.close()
