"""Reading a ``postgresql://`` URL: libpq's own conventions, plus inturn's two options.

The URL is parsed by libpq itself (``PQconninfoParse`` through psycopg), so passwords come from
the URL, ``PGPASSWORD`` or ``PGPASSFILE``/``~/.pgpass``, and TLS from ``sslmode`` and friends,
exactly as for ``psql``. inturn adds query parameters that libpq would reject, and removes them
before libpq sees the URL:

* ``inturn_schema=NAME``: the schema that holds inturn's tables (default ``inturn``);
* ``inturn_pooler=session``: accept a connection pooler that keeps one server session per client
  (PgBouncer ``pool_mode = session``); without it any pooler is refused (see ``connect``).

The URL is never shown with its password: ``where`` rebuilds it from the parsed parts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from psycopg import conninfo as libpq_conninfo
from psycopg import errors as pg_errors

from ...durations import seconds_parameter
from ...errors import UsageError
from ...records import this_host
from .statements import DEFAULT_SCHEMA, check_schema

# Client side: TCP keepalives notice a vanished server on an idle or blocked connection
# (libpq ``keepalives_*``), and ``tcp_user_timeout`` bounds how long sent data may stay
# unacknowledged (libpq >= 12). Together about 11 s for a silent peer.
# After a turn that ended uncleanly (a holder's session ended without it leaving), the next
# holder waits this long: a holder cut off from the server stops its command first (it notices
# at once when the server ends its session, and stops it within ``inturn run --grace``).
DEFAULT_LOCK_DELAY = 3.0
MAX_LOCK_DELAY = 3600.0

CLIENT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "9000",
}


@dataclass(frozen=True)
class Address:
    conninfo: str  # for libpq, without inturn's parameters
    where: str  # for people: no password
    schema: str = DEFAULT_SCHEMA
    pooler_session_ok: bool = False
    lock_delay: float = DEFAULT_LOCK_DELAY
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """``text`` without any password it might quote."""
        return _scrubbed(text, self.secrets)


def parse(url: str) -> Address:
    url = url.strip()
    base, _, query = url.partition("?")
    kept: list[str] = []
    schema = DEFAULT_SCHEMA
    pooler_ok = False
    lock_delay = DEFAULT_LOCK_DELAY
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        key = unquote(key)
        if not key.startswith("inturn_"):
            kept.append(item)
            continue
        value = unquote(value)
        if key == "inturn_schema":
            schema = check_schema(value)
        elif key == "inturn_pooler":
            if value != "session":
                raise UsageError(
                    f"inturn_pooler={value!r} is not supported: only 'session' "
                    "(a pool that keeps one server session per client) can work"
                )
            pooler_ok = True
        elif key == "inturn_lock_delay":
            lock_delay = seconds_parameter(value, key, 0, MAX_LOCK_DELAY)
        else:
            raise UsageError(
                f"unknown URL parameter {key!r}: inturn knows inturn_schema, inturn_pooler "
                "and inturn_lock_delay"
            )
    conninfo = base + ("?" + "&".join(kept) if kept else "")
    secrets = _secrets(url)
    try:
        parts = libpq_conninfo.conninfo_to_dict(conninfo)
    except pg_errors.ProgrammingError as exc:
        reason = _scrubbed(str(exc).strip().splitlines()[0], secrets)
        raise UsageError(
            f"not a valid PostgreSQL URL ({reason}): see the libpq URI format"
        ) from None
    password = parts.get("password")
    if isinstance(password, str):
        secrets = (*secrets, password)
    return Address(conninfo, _where(parts, schema), schema, pooler_ok, lock_delay, secrets)


def connect_options(address: Address) -> dict[str, str]:
    """Keyword parameters added to the URL's own; the URL wins where it sets one."""
    given = libpq_conninfo.conninfo_to_dict(address.conninfo)
    extra = {k: v for k, v in CLIENT_DEFAULTS.items() if k not in given}
    if "application_name" not in given:
        extra["application_name"] = application_name()
    return extra


def application_name() -> str:
    """``inturn pid 4242 on build-3``: what DBAs see in ``pg_stat_activity``.

    The server keeps 63 bytes of printable ASCII, so the host name is trimmed to fit.
    """
    host = re.sub(r"[^\x20-\x7e]", "?", this_host())
    return f"inturn pid {os.getpid()} on {host}"[:63]


def _where(parts: Mapping[str, object], schema: str) -> str:
    """The address as a URL for messages (never the password): each host with its own port
    (libpq gives one port to every host when a list has only one), a Unix-socket folder and a
    service name as the URL parameters that name them."""
    user, dbname, service = parts.get("user"), parts.get("dbname"), parts.get("service")
    hosts = str(parts.get("host") or parts.get("hostaddr") or "").split(",")
    ports = str(parts.get("port") or "").split(",")
    ports = ports * len(hosts) if len(ports) == 1 else ports + [""] * (len(hosts) - len(ports))
    tcp: list[str] = []
    query: list[str] = []
    for host, port in zip(hosts, ports, strict=False):
        if host.startswith("/") or host.startswith("@"):  # a socket folder (or abstract name)
            query += [f"host={quote(host, safe='/@')}", *([f"port={port}"] if port else [])]
        elif host:
            shown = f"[{host}]" if ":" in host else host
            tcp.append(f"{shown}:{port}" if port else shown)
    if service:
        query.append(f"service={quote(str(service), safe='')}")
    if schema != DEFAULT_SCHEMA:
        query.append(f"inturn_schema={schema}")
    text = "postgresql://" + (quote(str(user), safe="") + "@" if user else "") + ",".join(tcp)
    if dbname:
        text += "/" + quote(str(dbname), safe="")
    return text + ("?" + "&".join(query) if query else "")


def _secrets(url: str) -> tuple[str, ...]:
    """A password written in the URL's user part, raw and decoded, for scrubbing."""
    match = re.match(r"^[a-z]+://([^@/?#]*)@", url, re.IGNORECASE)
    if not match or ":" not in match.group(1):
        return ()
    raw = match.group(1).split(":", 1)[1]
    return tuple(s for s in {raw, unquote(raw)} if s)


def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` masked where it stands whole (not inside a word or a
    number): a short password must not turn the server's "does not exist" into "does not
    e***ist" when it is ``x``."""
    for secret in secrets:
        if secret:
            whole = rf"(?<![^\W_]){re.escape(secret)}(?![^\W_])"
            text = re.sub(whole, "***", text)
    return text
