"""What the PostgreSQL backend keeps in the database, and every statement it sends.

Objects, all in one schema (``inturn`` unless the URL says ``?inturn_schema=NAME``):

* ``lines``: one row per line name ever used (the name as exact UTF-8 bytes, and its SHA-256,
  which is the unique key: a name of up to 4 KiB would not fit in a btree index entry);
* ``ticket_numbers``: the sequence that hands out ticket numbers to every line, so that they
  are strictly increasing per line across hosts and server restarts (a committed ``nextval``
  is never handed out again; the joining transaction forces ``synchronous_commit`` on so that
  the sequence's WAL record is flushed before the ticket is used as a fencing token);
* ``tickets`` (UNLOGGED): who holds or waits, with the backend pid that holds each ticket's
  advisory lock. Unlogged because a ticket cannot outlive its session, and no session
  survives a server restart: after a crash the table starts empty, which is the truth;
* ``abandoned`` (UNLOGGED): abandonment markers, consumed by the next holder.

Advisory locks use the two-``int4`` key space (``pg_locks.objsubid = 2``), which never meets
the one-``bigint`` key space (``objsubid = 1``) that most applications use. The first key is
a class id fixed per schema; the second is the ticket number folded to 32 bits. A collision
(another application using our class id, or a number 2**32 tickets later while an old ticket
still lives) can only delay a waiter: a ticket is alive only while *its own recorded backend*
holds the key exclusively (checked in ``pg_locks``), and a joiner whose key is already taken
skips to the next number, so exclusion never depends on keys being unique.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from psycopg import sql

from ...errors import UsageError

DEFAULT_SCHEMA = "inturn"
SCHEMA_VERSION = 2  # 2: shared turns, replaced waiters (newest_wins)
# The version marker: a comment on this function, which whoever made the routines owns (a
# comment, because anyone may read it; on a routine, because replacing routines takes their
# owner anyway, and no more than that: not the schema's).
MARKER = "schema_version"
# The last version that releases keeping the marker on the schema (as its comment) know.
LEGACY_VERSION = 2
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# The routines inturn calls, which a role taking turns must be allowed to run: PUBLIC may run
# any function by default, but a hardened database revokes that.
ROUTINES = ("wait_and_look", "leave", "bury")

INT4_SPAN = 1 << 32
INT4_MIN = -(1 << 31)


def check_schema(name: str) -> str:
    if not _SCHEMA_NAME.fullmatch(name):
        raise UsageError(
            f"inturn_schema={name!r} is not a usable schema name: use lowercase letters, "
            "digits and _ (at most 63, not starting with a digit)"
        )
    return name


def class_id(schema: str) -> int:
    """The first advisory key of every ticket lock: ``'intu'`` for the default schema.

    Other schemas (test runs, separate teams in one database) get their own class id, so that
    their tickets never share keys with the default schema's.
    """
    if schema == DEFAULT_SCHEMA:
        return 0x696E7475  # b"intu"
    digest = hashlib.sha256(f"inturn:{schema}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFE or 2


def guard_class(schema: str) -> int:
    """The first key of the short per-line guard taken while numbers are handed out."""
    return class_id(schema) + 1


def fold(number: int) -> int:
    """A ticket number as a signed ``int4`` advisory key (wraps every 2**32 tickets)."""
    return (number - INT4_MIN) % INT4_SPAN + INT4_MIN


# The ticket locks held right now, read once per statement (``pg_locks`` is costly to read),
# and what "alive" means for a ticket row ``t``: the very backend that joined with it still
# holds its key exclusively. Another session holding the key (a collision) does not count.
_HELD = (
    "WITH held AS MATERIALIZED ("
    "  SELECT objid::bigint AS objid, pid FROM pg_locks"
    "  WHERE locktype = 'advisory' AND classid = {c}::oid AND objsubid = 2"
    "    AND mode = 'ExclusiveLock' AND granted"
    "    AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)
_ALIVE = "EXISTS (SELECT 1 FROM held WHERE held.objid = t.lock_objid AND held.pid = t.backend_pid)"
# Whether a ticket (or a marker) of table alias ``t`` is a shared turn, from its record.
_SHARED = "coalesce(({t}.record::jsonb ->> 'shared')::boolean, false)"


class Statements:
    """Every statement, with the schema's name quoted as an identifier (names of lines are
    always parameters, never part of the text)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        s = sql.Identifier(schema)
        self.cls = class_id(schema)
        self.guard = guard_class(schema)

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=s)

        # -- setup
        n = sql.Literal(schema)
        self.existing = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {n}), "
            + ", ".join(
                "EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
                f" WHERE s.nspname = {{n}} AND c.relname = '{table}')"
                for table in ("lines", "ticket_numbers", "tickets", "abandoned", "replaced")
            )
            + ", coalesce((SELECT substring(obj_description(p.oid, 'pg_proc') FROM {marked})::int"
            "  FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace"
            "  WHERE s.nspname = {n} AND p.proname = {marker}),"
            " (SELECT substring(obj_description(oid, 'pg_namespace') FROM {legacy})::int"
            "  FROM pg_namespace WHERE nspname = {n}), 0)"
        ).format(
            n=n,
            marker=sql.Literal(MARKER),
            marked=sql.Literal(r"^inturn schema version (\d+)"),
            legacy=sql.Literal(r"^inturn: lines, tickets and .* \(version (\d+)\)"),
        )
        self.in_recovery = sql.SQL("SELECT pg_is_in_recovery()")
        self.setup_lock = sql.SQL("SELECT pg_advisory_xact_lock({g}, 0)").format(
            g=sql.Literal(self.guard)
        )
        # Each statement with the column of ``existing`` that says it is not needed.
        self.create: list[tuple[int, sql.Composed]] = [
            (0, q("CREATE SCHEMA IF NOT EXISTS {s}")),
            (
                1,
                q(
                    "CREATE TABLE IF NOT EXISTS {s}.lines ("
                    " id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                    " digest bytea NOT NULL UNIQUE,"
                    " name bytea NOT NULL,"
                    " created_at timestamptz NOT NULL DEFAULT now())"
                ),
            ),
            (2, q("CREATE SEQUENCE IF NOT EXISTS {s}.ticket_numbers AS bigint")),
            (
                3,
                q(
                    "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.tickets ("
                    " number bigint PRIMARY KEY,"
                    " line_id bigint NOT NULL,"
                    " lock_objid bigint NOT NULL,"
                    " backend_pid integer NOT NULL,"
                    " record text NOT NULL,"
                    " acquired_at double precision)"
                ),
            ),
            (3, q("CREATE INDEX IF NOT EXISTS tickets_by_line ON {s}.tickets (line_id, number)")),
            (
                4,
                q(
                    "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.abandoned ("
                    " number bigint PRIMARY KEY,"
                    " line_id bigint NOT NULL,"
                    " record text NOT NULL,"
                    " acquired_at double precision)"
                ),
            ),
            (
                4,
                q(
                    "CREATE INDEX IF NOT EXISTS abandoned_by_line"
                    " ON {s}.abandoned (line_id, number)"
                ),
            ),
            (
                5,
                q(
                    "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.replaced ("
                    " number bigint PRIMARY KEY,"
                    " by_number bigint NOT NULL)"
                ),
            ),
        ]
        # The routines and the version marker, made again by a newer inturn. Replacing a
        # routine takes its owner; creating one, only CREATE on the schema.
        self.routines: list[sql.Composed] = [
            _wait_and_look(s, self.cls),
            _leave(s),
            _bury(s, self.cls),
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {s}.{m}() RETURNS integer"
                " LANGUAGE sql IMMUTABLE AS {body}"
            ).format(s=s, m=sql.Identifier(MARKER), body=sql.Literal(f"SELECT {SCHEMA_VERSION}")),
            sql.SQL("COMMENT ON FUNCTION {s}.{m}() IS {c}").format(
                s=s, m=sql.Identifier(MARKER), c=sql.Literal(_marker_comment())
            ),
        ]
        # inturn's routines there that the current role may not replace, with their owners.
        self.foreign_routines = sql.SQL(
            "SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc p"
            " JOIN pg_namespace s ON s.oid = p.pronamespace"
            " WHERE s.nspname = {n} AND p.proname = ANY({names})"
            " AND NOT pg_has_role(p.proowner, 'USAGE') ORDER BY p.oid"
        ).format(n=n, names=sql.Literal([*ROUTINES, MARKER]))
        self.who_may_create = sql.SQL(
            "SELECT current_user, has_schema_privilege(oid, 'CREATE') FROM pg_namespace"
            " WHERE nspname = {n}"
        ).format(n=n)
        # The marker that inturn before the routines' own kept, on the schema: still written
        # when the schema is the current role's, so that those releases, which compare it and
        # make their routines again whenever it differs, leave the routines alone.
        self.owns_schema = sql.SQL(
            "SELECT pg_has_role(nspowner, 'USAGE') FROM pg_namespace WHERE nspname = {n}"
        ).format(n=n)
        self.legacy_marker = sql.SQL("COMMENT ON SCHEMA {s} IS {c}").format(
            s=s, c=sql.Literal(_legacy_comment())
        )
        # One row of booleans: which privilege the current role lacks (see ``missing_grants``).
        # Looked up by oid: resolving a qualified name would itself fail without USAGE.
        checks = [
            ("lines", "table", "SELECT"),
            ("lines", "table", "INSERT"),
            ("ticket_numbers", "sequence", "USAGE"),
            ("tickets", "table", "SELECT"),
            ("tickets", "table", "INSERT"),
            ("tickets", "table", "UPDATE"),
            ("tickets", "table", "DELETE"),
            ("abandoned", "table", "SELECT"),
            ("abandoned", "table", "INSERT"),
            ("abandoned", "table", "DELETE"),
            ("replaced", "table", "SELECT"),
            ("replaced", "table", "INSERT"),
            ("replaced", "table", "DELETE"),
        ]
        self.privileges = sql.SQL(
            "WITH n AS (SELECT oid FROM pg_namespace WHERE nspname = {n}),"
            " c AS (SELECT c.relname, c.oid FROM pg_class c JOIN n ON c.relnamespace = n.oid),"
            " p AS (SELECT p.proname, p.oid FROM pg_proc p JOIN n ON p.pronamespace = n.oid)"
            " SELECT (SELECT has_schema_privilege(oid, 'USAGE') FROM n) AS schema_usage, "
            + ", ".join(
                f"(SELECT has_{kind}_privilege(oid, '{privilege}') FROM c"
                f" WHERE relname = '{table}') AS {table}_{privilege.lower()}"
                for table, kind, privilege in checks
            )
            + ", "
            + ", ".join(
                f"(SELECT bool_and(has_function_privilege(oid, 'EXECUTE')) FROM p"
                f" WHERE proname = '{routine}') AS {routine}_execute"
                for routine in ROUTINES
            )
            + ", pg_is_in_recovery() AS in_recovery,"
            " current_setting('transaction_read_only') = 'on' AS read_only,"
            " current_user AS role, current_database() AS database"
        ).format(n=sql.Literal(schema))

        # -- lines
        self.find_line = q("SELECT id FROM {s}.lines WHERE digest = %s")
        self.add_line = q(
            "INSERT INTO {s}.lines (digest, name) VALUES (%s, %s)"
            " ON CONFLICT (digest) DO NOTHING RETURNING id"
        )
        self.names = q("SELECT name FROM {s}.lines ORDER BY id")
        self.line_exists = q("SELECT 1 FROM {s}.lines WHERE id = %(line_id)s")
        # Forgetting a line, after its guard is taken (a statement of its own, so that the
        # next one sees every join that held the guard): only if nobody is in it.
        self.forget_guard = sql.SQL("SELECT pg_advisory_xact_lock({g}, %(line_key)s)").format(
            g=sql.Literal(self.guard)
        )
        self.forget = q(
            "WITH gone AS (DELETE FROM {s}.lines l WHERE l.id = %(line_id)s"
            "  AND NOT EXISTS (SELECT 1 FROM {s}.tickets t WHERE t.line_id = l.id)"
            "  RETURNING l.id),"
            " markers AS (DELETE FROM {s}.abandoned a USING gone WHERE a.line_id = gone.id)"
            " SELECT count(*) FROM gone"
        )

        # -- tickets. Joining is one statement, hence one transaction: the per-line guard is
        # taken first (the CTE chain forces the order), the ticket's session lock is taken
        # before the row exists, and the row becomes visible at commit, before the guard
        # is released, so the next joiner always sees it. No row comes back when the key is
        # taken by someone else: the caller then closes the session and tries again.
        self.join = sql.SQL(
            "WITH guard AS MATERIALIZED ("
            "  SELECT pg_advisory_xact_lock({g}, %(line_key)s),"
            "         set_config('synchronous_commit', 'on', true)),"
            # The line must still be there (not forgotten while we waited for its guard).
            " line AS MATERIALIZED ("
            "  SELECT l.id FROM guard, {s}.lines l WHERE l.id = %(line_id)s FOR SHARE OF l),"
            " numbered AS MATERIALIZED ("
            "  SELECT nextval({seq}) AS number FROM line),"
            " locked AS MATERIALIZED ("
            "  SELECT number, pg_try_advisory_lock({c},"
            "         ((number - {lo}) %% {span} + {lo})::int4) AS ok FROM numbered)"
            " INSERT INTO {s}.tickets (number, line_id, lock_objid, backend_pid, record)"
            # The join time is the server's, which every host shares: its clock is read as the
            # row is written, whatever our own clock did since the session measured it.
            " SELECT number, %(line_id)s, number %% {span}, pg_backend_pid(),"
            " '{{\"joined_at\":' || extract(epoch FROM clock_timestamp())::text || ','"
            " || substr(%(record)s, 2)"
            " FROM locked WHERE ok RETURNING number,"
            # How many tickets this server session now holds: one (ours) unless a pooler in
            # transaction mode shares it between clients (see ``PostgresStore._join_on``).
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            "  AND pid = pg_backend_pid() AND classid = {c} AND objsubid = 2 AND mode = "
            "'ExclusiveLock')"
        ).format(
            s=s,
            g=sql.Literal(self.guard),
            c=sql.Literal(self.cls),
            lo=sql.Literal(INT4_MIN),
            span=sql.Literal(INT4_SPAN),
            seq=sql.Literal(_quoted(schema) + ".ticket_numbers"),
        )
        # Alive: the backend recorded at join holds the ticket's key exclusively, right now.
        # ``pg_locks`` is read once (materialized), not once per ticket.
        self.alive = sql.SQL(
            _HELD
            + " SELECT n.number, "
            + _ALIVE
            + " FROM unnest(%(numbers)s::bigint[]) AS n(number)"
            " LEFT JOIN {s}.tickets t ON t.number = n.number"
        ).format(s=s, c=sql.Literal(self.cls))
        self.read = q(
            "SELECT number, record, acquired_at, extract(epoch FROM clock_timestamp())"
            " FROM {s}.tickets"
            " WHERE number = ANY(%(numbers)s::bigint[])"
        )
        self.bury = q("SELECT {s}.bury(%(number)s::bigint)")
        # The turn is ours only if this session is the one that joined: behind a pooler in
        # transaction mode another server session may answer, and then no row matches.
        self.mark = q(
            "UPDATE {s}.tickets SET acquired_at = extract(epoch FROM clock_timestamp())"
            " WHERE number = %(number)s AND backend_pid = pg_backend_pid() RETURNING number"
        )
        # A shared turn leaves the marker of a shared holder for the next exclusive one.
        self.claim = q(
            "DELETE FROM {s}.abandoned WHERE number = ("
            "  SELECT number FROM {s}.abandoned WHERE line_id = %(line_id)s"
            "  AND NOT (%(shared)s AND " + _SHARED.format(t="abandoned") + ")"
            "  ORDER BY number LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING number, record, acquired_at"
        )
        self.leave = q("CALL {s}.leave(%(number)s)")
        # Leaving when the server refuses ``leave`` (the right to run it taken away during the
        # turn): the same rows go, committed before the session ends and frees the locks.
        self.leave_plainly = q(
            "WITH r AS (DELETE FROM {s}.replaced WHERE number = %(number)s)"
            " DELETE FROM {s}.tickets WHERE number = %(number)s"
        )
        # For removing the rows of a ticket given up as it was made: at once or not at all.
        self.withdraw_settings = q(
            "SELECT set_config('synchronous_commit', 'local', true),"
            " set_config('lock_timeout', '200', true)"
        )
        self.wait_and_look = q(
            "SELECT kind, number, alive, shared FROM {s}.wait_and_look("
            "%(key)s::int4, %(ms)s, %(before)s::bigint, %(me)s::bigint, %(line_id)s::bigint)"
        )
        # Replacing a newest_wins waiter: record who replaced it, then cancel its wait (it
        # finds the record whether the cancel came during its wait or just before it).
        self.replace = q(
            "WITH mark AS (INSERT INTO {s}.replaced (number, by_number)"
            "  VALUES (%(number)s, %(by)s) ON CONFLICT (number) DO NOTHING)"
            " SELECT backend_pid FROM {s}.tickets WHERE number = %(number)s"
        )
        self.cancel_backend = sql.SQL("SELECT pg_cancel_backend(%(pid)s)")
        self.note_pid = q(
            "UPDATE {s}.tickets SET record ="
            " jsonb_set(record::jsonb, '{{pid}}', to_jsonb(%(pid)s::int))::text"
            " WHERE number = %(number)s"
        )
        self.replaced_by = q("SELECT by_number FROM {s}.replaced WHERE number = %(me)s")
        # A newest_wins waiter that took a new place after losing its session: replaced
        # (marked as such, for its next look) if its earlier places were, or if a live
        # newest_wins ticket that came after its first place waits ahead of its new one (a
        # newer request, which would otherwise run first and be followed by this older one).
        self.superseded = sql.SQL(
            _HELD + ", newer AS ("
            "  SELECT by_number AS by FROM {s}.replaced WHERE number = ANY(%(before)s::bigint[])"
            "  UNION ALL"
            "  SELECT t.number FROM {s}.tickets t WHERE t.line_id = %(line_id)s"
            "  AND t.number > %(arrived)s AND t.number < %(me)s AND " + _ALIVE + ""
            "  AND coalesce((t.record::jsonb ->> 'newest_wins')::boolean, false))"
            " INSERT INTO {s}.replaced (number, by_number)"
            " SELECT %(me)s, max(by) FROM newer HAVING count(*) > 0"
            " ON CONFLICT (number) DO NOTHING"
        ).format(s=s, c=sql.Literal(self.cls))
        # Until a replacer's cancel request ends it (a day at most: the wait is then redone),
        # unless it has been replaced already: checked in the same statement, so that a cancel
        # request that came just before the statement (which cancels nothing) is not missed.
        self.sleep_until_replaced = q(
            "SELECT set_config('statement_timeout', '0', true), pg_sleep(86400)"
            " WHERE NOT EXISTS (SELECT 1 FROM {s}.replaced WHERE number = %(me)s)"
        )
        # Waiting: block in the lock manager until the ticket's exclusive lock goes, then let
        # go at once. The timeout is the server's own ``lock_timeout`` (set in the same
        # statement, local to its transaction), so no cancel request can race with it.
        self.wait = sql.SQL(
            "SELECT set_config('lock_timeout', %(ms)s, true),"
            " set_config('statement_timeout', '0', true),"
            " pg_advisory_lock_shared({c}, %(key)s::int4),"
            " pg_advisory_unlock_shared({c}, %(key)s::int4)"
        ).format(c=sql.Literal(self.cls))
        # The line, who in it is alive and which are shared turns, and whether the one asking
        # was replaced, in one statement.
        self.snapshot_alive = sql.SQL(
            _HELD + " SELECT 'ticket', t.number, " + _ALIVE + ", " + _SHARED.format(t="t") + ""
            " FROM {s}.tickets t WHERE t.line_id = %(line_id)s"
            " UNION ALL"
            " SELECT 'marker', number, false, " + _SHARED.format(t="abandoned") + ""
            " FROM {s}.abandoned WHERE line_id = %(line_id)s"
            " UNION ALL"
            " SELECT 'replaced', by_number, true, false FROM {s}.replaced WHERE number = %(me)s"
        ).format(s=s, c=sql.Literal(self.cls))


def _marker_comment() -> str:
    return (
        f"inturn schema version {SCHEMA_VERSION}: a newer inturn upgrades the routines here,"
        " an older one refuses to use them"
    )


def _legacy_comment() -> str:
    """What releases that kept the version on the schema compare: they know version 2 at
    most, so a newer version must not be written there (they would make their own routines
    again, over the newer ones)."""
    return f"inturn: lines, tickets and abandonment markers (version {LEGACY_VERSION})"


def _wait_and_look(s: sql.Identifier, cls: int) -> sql.Composed:
    """A waiter's wake-up and its next look at the line, in one round trip.

    PL/pgSQL runs each query of a volatile function on a fresh snapshot (READ COMMITTED), so
    the look is taken after the wait, as a separate query would be. A clean leaver commits the
    removal of its row before it unlocks (``_leave``); ``FOR UPDATE`` on the ticket waited for
    lets anyone else's removal of it (a burial under way) commit first too, so the look shows
    the ticket either alive or gone, with its marker if it died holding. Liveness of the
    tickets ahead is a try of the shared lock: it fails exactly while someone holds the
    ticket's exclusive lock, and costs far less than reading ``pg_locks``. A waiter that was
    replaced (``newest_wins``) learns it before it sleeps, and on waking.
    """
    key = "((t.number - {lo}) % {span} + {lo})::int4"
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {s}.wait_and_look("
        " key int4, timeout_ms text, before bigint, me bigint, line bigint)"
        " RETURNS TABLE (kind text, number bigint, alive boolean, shared boolean)"
        " LANGUAGE plpgsql VOLATILE AS $body$"
        " BEGIN"
        "  RETURN QUERY SELECT 'replaced'::text, r.by_number, true, false"
        "   FROM {s}.replaced r WHERE r.number = me;"
        "  IF FOUND THEN RETURN; END IF;"
        "  PERFORM set_config('lock_timeout', timeout_ms, true);"
        "  PERFORM set_config('statement_timeout', '0', true);"
        "  PERFORM pg_advisory_lock_shared({c}, key);"
        "  PERFORM pg_advisory_unlock_shared({c}, key);"
        "  PERFORM 1 FROM {s}.tickets t WHERE t.number = before FOR UPDATE;"
        "  RETURN QUERY"
        "   SELECT 'ticket'::text, t.number, CASE"
        "     WHEN t.number >= me THEN true"
        "     WHEN pg_try_advisory_lock_shared({c}, " + key + ")"
        "       THEN NOT pg_advisory_unlock_shared({c}, " + key + ")"
        "     ELSE true END, " + _SHARED.format(t="t") + ""
        "   FROM {s}.tickets t WHERE t.line_id = line"
        "   UNION ALL"
        "   SELECT 'marker'::text, a.number, false, false FROM {s}.abandoned a"
        "   WHERE a.line_id = line"
        "   UNION ALL"
        "   SELECT 'replaced'::text, r.by_number, true, false FROM {s}.replaced r"
        "   WHERE r.number = me;"
        " END $body$"
    ).format(s=s, c=sql.Literal(cls), lo=sql.Literal(INT4_MIN), span=sql.Literal(INT4_SPAN))


def _bury(s: sql.Identifier, cls: int) -> sql.Composed:
    """Burying a ticket found dead, and whether a marker for it now waits to be claimed.

    The removal re-checks death in the statement that deletes the row; a dead ticket never
    comes back to life (its number is never reused), so a ticket found dead here was dead when
    looked at, and only one burier gets the row, so only one marker is left. The question that
    follows is a separate query, on a fresh snapshot: it also sees a marker that a concurrent
    burier committed while this one waited for the row, so the caller learns of it either way.
    """
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {s}.bury(ticket bigint) RETURNS boolean"
        " LANGUAGE plpgsql VOLATILE AS $body$"
        " BEGIN"
        "  " + _HELD + ", gone AS ("
        "   DELETE FROM {s}.tickets t WHERE t.number = ticket AND NOT " + _ALIVE + ""
        "   RETURNING number, line_id, record, acquired_at)"
        "  INSERT INTO {s}.abandoned (number, line_id, record, acquired_at)"
        "  SELECT number, line_id, record, acquired_at FROM gone WHERE acquired_at IS NOT NULL;"
        "  RETURN EXISTS (SELECT 1 FROM {s}.abandoned a WHERE a.number = ticket);"
        " END $body$"
    ).format(s=s, c=sql.Literal(cls))


def _leave(s: sql.Identifier) -> sql.Composed:
    """Leaving, in one round trip: the ticket's row is deleted and committed, then its locks
    go. So whoever the unlock wakes never sees the row of a ticket that left cleanly (and
    never takes it for dead), and does not wait for this session's commit either. A procedure,
    because only a procedure may commit halfway (PostgreSQL 11 and later)."""
    return sql.SQL(
        "CREATE OR REPLACE PROCEDURE {s}.leave(ticket bigint) LANGUAGE plpgsql AS $body$"
        " BEGIN"
        "  DELETE FROM {s}.tickets WHERE number = ticket;"
        "  DELETE FROM {s}.replaced WHERE number = ticket;"
        "  COMMIT;"
        "  PERFORM pg_advisory_unlock_all();"
        " END $body$"
    ).format(s=s)


def _quoted(schema: str) -> str:
    """The schema as a quoted identifier inside a ``regclass`` literal."""
    return '"' + schema.replace('"', '""') + '"'


def text_of(value: object) -> str:
    """A name the server sent: text, or bytes from a database in the ``SQL_ASCII`` encoding
    (where psycopg cannot know how to decode it)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def missing_grants(row: Mapping[str, object], schema: str, only_looking: bool = False) -> list[str]:
    """The GRANT statements the current role needs, from the ``privileges`` row (by name):
    to take turns (which also runs inturn's routines: a role refused one only when leaving
    would leave its ticket behind, to be taken for dead), or ``only_looking`` (status, wait),
    to read the tables."""
    who = sql_identifier(text_of(row["role"]))
    s = sql_identifier(schema)
    grants = []
    if not row["schema_usage"]:
        grants.append(f"GRANT USAGE ON SCHEMA {s} TO {who}")
    needed = {
        "lines": ("select", "insert"),
        "tickets": ("select", "insert", "update", "delete"),
        "abandoned": ("select", "insert", "delete"),
    }
    needed["replaced"] = ("select", "insert", "delete")
    if only_looking:
        needed = {table: ("select",) for table in needed}
    tables = [t for t, rights in needed.items() if not all(row[f"{t}_{r}"] for r in rights)]
    if tables:
        listed = ", ".join(f"{s}.{t}" for t in tables)
        rights = "SELECT" if only_looking else "SELECT, INSERT, UPDATE, DELETE"
        grants.append(f"GRANT {rights} ON {listed} TO {who}")
    if not row["ticket_numbers_usage"] and not only_looking:
        grants.append(f"GRANT USAGE ON SEQUENCE {s}.ticket_numbers TO {who}")
    routines = [r for r in ROUTINES if not row[f"{r}_execute"]]
    if routines and not only_looking:
        listed = ", ".join(f"{s}.{r}" for r in routines)
        grants.append(f"GRANT EXECUTE ON ROUTINE {listed} TO {who}")
    return grants


def sql_identifier(name: str) -> str:
    """An identifier as it must be typed in SQL (quoted only when needed), for messages."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'
