"""What the command says: results on stdout, one ``inturn: ...`` line per error or warning."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys

from ..backends.standard_streams import fill_closed_standard_descriptors
from ..errors import UsageError

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from typing import TextIO


def open_missing_streams() -> None:
    """Give each standard stream the command started without (``2>&-``, a daemon's child,
    ``pythonw``) ``os.devnull``: inturn then has somewhere to write, the command inherits it,
    and no file of a line takes the stream's place."""
    fill_closed_standard_descriptors()
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            stream = open(fd, mode, errors="backslashreplace", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)  # for the rest of the process


def say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # else there is nowhere left to say it
        print(f"inturn: {message}", file=sys.stderr, flush=True)


class OutputClosed(Exception):
    """Whoever read our stdout stopped reading (``inturn status | head -1``)."""


def emit(text: str) -> None:
    """Print ``text`` on stdout; a reader gone is ``OutputClosed``, a full disk one line."""
    try:
        _write_out(text + "\n")
    except BrokenPipeError:
        _drop_stdout()
        raise OutputClosed() from None
    except OSError as exc:
        _drop_stdout()
        raise UsageError(f"cannot write the output: {system_error(exc)}") from None


def _write_out(text: str) -> None:
    """All of ``text`` on stdout, or an error. Python's buffered writer drops, without a word,
    what a short write left over (a pipe whose reader went away while more than 64 KiB were on
    their way): on POSIX the bytes go out in a loop of writes until all are written."""
    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (a test's StringIO)
        fd = -1
    if sys.platform == "win32" or fd < 0:  # a Windows console needs its own writer
        stream.write(_within_encoding(text, stream))
        stream.flush()
        return
    stream.flush()
    data = memoryview(_encoded(text, stream.encoding or "utf-8", stream.errors or "strict"))
    while data:
        data = data[os.write(fd, data) :]


def _encoded(text: str, encoding: str, errors: str) -> bytes:
    """``text`` in the output's encoding; a character it cannot hold (a Windows pipe holds
    only the ANSI code page) as a ``\\u30d3`` escape, as undecodable bytes are shown, rather
    than no output at all."""
    try:
        return text.encode(encoding, errors)
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace")


def _within_encoding(text: str, stream: TextIO) -> str:
    """``text`` as ``stream`` can write it (see ``_encoded``); a stream with no encoding of
    its own (a ``StringIO``) takes any text."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return text
    errors = stream.errors or "strict"
    return _encoded(text, encoding, errors).decode(encoding, errors)


def writes_utf8() -> bool:
    """Whether stdout takes any character: else JSON comes with ``\\u`` escapes."""
    encoding = getattr(sys.stdout, "encoding", None) or ""
    return encoding.lower().replace("-", "").replace("_", "") == "utf8"


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the exit's flush of what is left fails no more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


_SYSTEM_ERROR_ADVICE = {
    getattr(errno, name): advice
    for name, advice in (
        ("ENOSPC", "free some space and try again"),
        ("EDQUOT", "free some space or raise the quota, and try again"),
        ("EMFILE", "raise the limit of open files, ulimit -n, and try again"),
        ("ENFILE", "the system has too many open files: try again later"),
        ("ENOMEM", "the system is out of memory: try again later"),
        ("EROFS", "the file system is read-only: choose another folder (--dir or INTURN_DIR)"),
    )
    if hasattr(errno, name)
}


def system_error(exc: OSError) -> str:
    """One line for an ``OSError``: what failed, on what, and what to do."""
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        text += f": {os.fsdecode(exc.filename)!r}"
    advice = _SYSTEM_ERROR_ADVICE.get(exc.errno or 0)
    return f"{text} ({advice})" if advice else text


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings on the command line are one line each, like errors, without source lines."""
    say(f"warning: {message}")


def json_text(document: object) -> str:
    """JSON for people and scripts: readable Unicode, but a lone surrogate (a byte of a name,
    path or command that was not UTF-8) as the text ``\\xff``, as ``inturn status`` shows
    it: a ``\\udcff`` escape would be no character at all, which strict parsers refuse.
    Where stdout is not UTF-8 (a Windows pipe, in the ANSI code page), every character
    beyond ASCII is a ``\\u`` escape, so that any document can be printed and parsed."""
    import json  # only for --json: not at every start

    from ..records import escape_character

    text = json.dumps(document, indent=2, ensure_ascii=False)
    text = re.sub(
        "[\ud800-\udfff]", lambda found: json.dumps(escape_character(found.group()))[1:-1], text
    )
    if writes_utf8():
        return text
    return re.sub("[^\x00-\x7f]", lambda found: json.dumps(found.group())[1:-1], text)
