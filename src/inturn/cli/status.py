"""``inturn status``: who holds a line and who waits, or every line, as text or JSON."""

from __future__ import annotations

import argparse
import time

from .display import format_line, format_overview
from .output import emit, json_text
from .parser import line_from, where_from


def status(args: argparse.Namespace) -> int:
    now = time.time()
    if args.name is not None:
        with line_from(args) as line:
            status = line.status()
        if args.json:
            emit(json_text(status.to_json(now)))
        else:
            emit(format_line(status, now))
        return 0
    from ..backends import open_backend

    where = where_from(args)
    backend = open_backend(
        where.backend, scope=where.scope, directory=where.directory, create=False
    )
    try:
        statuses = []
        for name in backend.names():
            store = backend.line(name)
            statuses.append(store.status())
            store.close()
    finally:
        backend.close()
    if args.json:
        document = {"where": backend.where, "lines": [s.to_json(now) for s in statuses]}
        emit(json_text(document))
        return 0
    emit(format_overview(statuses, backend.where, now))
    return 0
