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
_PLAIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SLUG_UNSAFE = re.compile(r"[^a-z0-9._-]+")
# Windows reserves these device names, with or without an extension: "nul.txt" is the NUL device.
_DEVICE = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)")


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
    if _PLAIN.fullmatch(name) and not name.endswith(".") and not _DEVICE.match(name):
        return name
    slug = _SLUG_UNSAFE.sub("_", name.lower()).strip("._")[:40]
    if _DEVICE.match(slug):
        slug = f"_{slug}"
    return f"{slug}~{digest(name)}"
