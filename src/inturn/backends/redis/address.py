"""Reading a ``redis://`` URL: what redis-py gets, and inturn's own parameters.

inturn takes ``lease``, ``prefix`` and ``lock_delay`` out of the URL; every other parameter goes
to redis-py as it is. The user and password are never shown: ``where`` has neither.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.connection import URL_QUERY_ARGUMENT_PARSERS as _QUERY_PARSERS
from redis.connection import parse_url as _parse_url

from ...durations import seconds_parameter
from ...errors import UsageError

DEFAULT_LEASE = 5.0
DEFAULT_PREFIX = "inturn"
MIN_LEASE, MAX_LEASE = 0.1, 3600.0
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
# After a turn that ended uncleanly (a lease ran out), the next holder waits this long: the
# cut-off holder gave up three quarters of a lease after its last renewal, a quarter before
# the lease ran out, and stops its command within ``inturn run --grace``: well before that.
DEFAULT_LOCK_DELAY = 3.0
MAX_LOCK_DELAY = 3600.0


class RedisAddress(NamedTuple):
    """A ``redis://`` URL split into what redis-py gets and what inturn keeps for itself."""

    options: dict[str, Any]  # connection keyword arguments, password included
    where: str  # scheme, host, port, database and prefix: never the user or password
    lease: float  # seconds
    prefix: str
    lock_delay: float = DEFAULT_LOCK_DELAY


def parse_address(address: str) -> RedisAddress:
    """Take inturn's own query parameters (``lease``, ``prefix``, ``lock_delay``) out of a
    Redis URL."""
    try:
        parts = urlsplit(address.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(
            f"bad Redis URL ({exc}): use redis://[user:password@]host[:port][/db]"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise UsageError(f"not a Redis URL (scheme {scheme!r}): use redis:// or rediss://")
    lease, prefix, kept = DEFAULT_LEASE, DEFAULT_PREFIX, []
    lock_delay = DEFAULT_LOCK_DELAY
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "lease":
            lease = _lease(value)
        elif key == "prefix":
            prefix = _prefix(value)
        elif key == "lock_delay":
            lock_delay = seconds_parameter(value, key, 0, MAX_LOCK_DELAY)
        else:
            kept.append((key, value))
    host = parts.hostname or "localhost"
    path = unquote(parts.path).strip("/") or "0"
    if not path.isdigit():
        raise UsageError(f"the Redis database in the URL must be a number, not {path!r}")
    shown_host = f"[{host}]" if ":" in host else host
    where = f"{scheme}://{shown_host}:{port or 6379}/{int(path)}"
    if prefix != DEFAULT_PREFIX:
        where += f"?prefix={prefix}"
    redis_url = urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), ""))
    try:
        options: dict[str, Any] = cast(Any, _parse_url)(redis_url)
    except ValueError as exc:
        raise UsageError(f"bad Redis URL for {where}: {exc}") from None
    given = {key for key, _ in kept}
    unknown = sorted(given - (_accepted(options) & (_PARSED | _STRINGS)))
    if unknown:
        raise UsageError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in the "
            f"Redis URL for {where}: inturn takes lease, prefix and lock_delay, and passes on "
            "redis-py's connection options that a URL can give (socket_timeout, "
            "client_name, ssl_ca_certs with rediss://, ...)"
        )
    _check_strings(options, where)
    return RedisAddress(options, where, lease, prefix, lock_delay)


# What a URL may give redis-py besides inturn's own parameters: the options redis-py itself
# reads from a URL into their types, and those that are text anyway. Any other option would
# reach redis-py as text where it wants a number, a flag or an object, and fail deep inside
# it (or, as decode_responses=true, change what inturn reads back).
_PARSED = frozenset(_QUERY_PARSERS)
_STRINGS = frozenset(
    {
        "client_name",
        "encoding",
        "encoding_errors",
        "lib_name",
        "lib_version",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_password",
        "ssl_ciphers",
    }
)


def _check_strings(options: dict[str, Any], where: str) -> None:
    """The text options that must name something known, checked before any connection."""
    import codecs

    for key in ("encoding", "encoding_errors"):
        if key in options:
            try:
                if key == "encoding":
                    codecs.lookup(options[key])
                else:
                    codecs.lookup_error(options[key])
            except LookupError:
                raise UsageError(
                    f"{key}={options[key]!r} in the Redis URL for {where}: no such "
                    f"{'encoding' if key == 'encoding' else 'error handler'}"
                ) from None
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in ("none", "optional", "required"):
        raise UsageError(
            f"ssl_cert_reqs={reqs!r} in the Redis URL for {where}: use none, optional or required"
        )


def _accepted(options: dict[str, Any]) -> set[str]:
    """What redis-py's connection classes take as keyword arguments (and the pool's own)."""
    import inspect

    from redis import connection

    names = {"connection_class", "max_connections"}
    kind = options.get("connection_class", connection.Connection)
    for cls in inspect.getmro(kind):
        init = cls.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    return names - {"self", "args", "kwargs"}


def _lease(text: str) -> float:
    return seconds_parameter(text, "lease", MIN_LEASE, MAX_LEASE)


def _prefix(text: str) -> str:
    if not _PREFIX.fullmatch(text):
        raise UsageError(
            f"prefix={text!r} in the Redis URL: use letters, digits and . _ : - "
            "(up to 100, starting with a letter or digit)"
        )
    return text
