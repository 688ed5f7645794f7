"""Turning any line name into one safe file or object name.

Names are free-form Unicode chosen by users. The stored form must never escape its folder, break
on ``/``, ``..``, NUL or length limits, and must stay distinct on case-insensitive file systems.
Plain lowercase names are kept as they are (so ``ls`` is readable); every other name becomes a
readable slug plus a hash of the exact name, so two different names never share a line.
"""

from __future__ import annotations

import re

from .errors import UsageError

MAX_NAME_BYTES = 4096
_PLAIN_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_PLAIN = _PLAIN_FIRST | frozenset("._-")
# Windows reserves these device names, with or without an extension: "nul.txt" is the NUL device.
_DEVICES = frozenset({"con", "prn", "aux", "nul"})
_NUMBERED_DEVICES = frozenset({"com", "lpt"})  # com0-com9, lpt0-lpt9


def check_name(name: object) -> str:
    """Reject what cannot be a line name, with a message that says what to do instead."""
    if not isinstance(name, str):
        raise UsageError(f"a line name must be a string, not {type(name).__name__}")
    if not name:
        raise UsageError("the line name is empty: give the line a name, e.g. 'nightly'")
    if len(encode(name)) > MAX_NAME_BYTES:
        raise UsageError(f"the line name is over {MAX_NAME_BYTES} bytes long: use a shorter name")
    return name


def encode(name: str) -> bytes:
    """The exact bytes of a name; lone surrogates (from undecodable argv) survive."""
    return name.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    """A name back from its exact bytes (``encode``'s inverse)."""
    return data.decode("utf-8", "surrogatepass")


def digest(name: str, length: int = 32) -> str:
    import hashlib  # only names that are not plain need it

    return hashlib.sha256(encode(name)).hexdigest()[:length]


def safe_file_name(name: str) -> str:
    """A file name for ``name``: itself if plain lowercase, else ``slug~hash``.

    ``~`` never appears in a plain name, so the two forms cannot collide.
    """
    check_name(name)
    if _is_plain(name) and not name.endswith(".") and not _is_device(name):
        return name
    slug = re.sub(r"[^a-z0-9._-]+", "_", name.lower()).strip("._")[:40]
    if _is_device(slug):
        slug = f"_{slug}"
    return f"{slug}~{digest(name)}"


# Plain names and device names are told with sets rather than regular expressions, which
# every start of ``inturn`` would have to compile.


def _is_plain(name: str) -> bool:
    """Lowercase ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a
    digit, at most 64 characters."""
    return 0 < len(name) <= 64 and name[0] in _PLAIN_FIRST and _PLAIN.issuperset(name)


def _is_device(name: str) -> bool:
    """A name Windows reserves for a device, alone or before a ``.``: ``nul``, ``com1.txt``."""
    stem = name.split(".", 1)[0]
    if stem in _DEVICES:
        return True
    return len(stem) == 4 and stem[:3] in _NUMBERED_DEVICES and stem[3] in "0123456789"
