"""Locks across machines: inturn on PostgreSQL against what teams use today, in one run.

``measure()`` returns a Markdown section; ``python benchmarks/servers_postgres.py`` prints it.

* Hand-off latency: from the holder's release call to the waiter's return from acquire, the
  waiter being another process already blocked. Measured for inturn's PostgreSQL backend, a
  raw ``pg_advisory_lock`` hand-off (the floor), redis-py's ``Lock`` (polls every 0.1 s) and
  python-redis-lock (wakes waiters with ``BLPOP``), against the local servers.
* Server load while 50 inturn waiters wait: transactions per second from
  ``pg_stat_database.xact_commit + xact_rollback`` over a quiet window (``pg_stat_statements``
  is not loaded on this server), and how many waiter sessions started a query in that window
  (``pg_stat_activity.query_start``).

Server: ``INTURN_BENCH_POSTGRES_URL``, else ``INTURN_TEST_POSTGRES_URL``, else
``postgresql://postgres@127.0.0.1:5432/test``; Redis: ``INTURN_BENCH_REDIS_URL``, else
``redis://127.0.0.1:6379/0``. Targets: hand-off within 2x the raw advisory lock's; zero queries
from idle waiters.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

PG_URL = os.environ.get("INTURN_BENCH_POSTGRES_URL") or os.environ.get(
    "INTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("INTURN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUNDS = 40
POLLING_ROUNDS = 20  # redis-py's Lock costs ~50 ms a round
WAITERS = 50
QUIET_SECONDS = 5.0
RAW_KEY = (0x62656E63, 1)  # b"benc": the raw advisory lock's two int4 keys

sys.path.insert(0, str(HERE))
from common import Target, markdown_table, median, ratio  # noqa: E402  (benchmarks/common.py)


def unavailable() -> str | None:
    """Why the section cannot be measured (no PostgreSQL), or None; Redis is optional."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'inturn[postgres]')"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL at {PG_URL.split('@')[-1]} ({str(exc).strip().splitlines()[0]})"


def _bench_url(schema: str) -> str:
    return PG_URL + ("&" if "?" in PG_URL else "?") + f"inturn_schema={schema}"


# --------------------------------------------------------------------------- the waiter


def child(kind: str, target: str) -> None:
    """Runs in the waiter process: on ``go`` acquire, say ``got <ns>``; on ``release`` let go."""

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    acquire: Callable[[], Any]
    release: Callable[[Any], None]
    if kind == "inturn":
        import inturn

        line = inturn.Line("handoff", backend=target)

        def acquire() -> Any:
            return line.acquire(on_progress=lambda p: say("waiting"))

        def release(held: Any) -> None:
            held.release()

    elif kind == "raw":
        import psycopg

        conn = psycopg.connect(target, autocommit=True)

        def acquire() -> Any:
            say("waiting")
            conn.execute("SELECT pg_advisory_lock(%s, %s)", RAW_KEY)

        def release(held: Any) -> None:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", RAW_KEY)

    elif kind in ("redis-py", "python-redis-lock"):
        import redis

        client = redis.Redis.from_url(target)

        def acquire() -> Any:
            say("waiting")
            if kind == "redis-py":
                lock: Any = client.lock("inturn-bench", sleep=0.1, timeout=60)
            else:
                import redis_lock

                lock = redis_lock.Lock(client, "inturn-bench", expire=60)
            lock.acquire(blocking=True)
            return lock

        def release(held: Any) -> None:
            held.release()

    else:
        raise SystemExit(f"unknown kind {kind}")
    say("ready")
    for command in sys.stdin:
        if command.strip() == "go":
            held = acquire()
            say(f"got {time.perf_counter_ns()}")
        elif command.strip() == "release":
            release(held)
            say("released")


class Waiter:
    def __init__(self, kind: str, target: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", kind, target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            },
        )
        self.expect("ready")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        while True:
            words = self.proc.stdout.readline().split()
            if not words:
                raise RuntimeError(f"waiter process ended while expecting {word!r}")
            if words[0] == word:
                return words

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def _handoffs(
    kind: str,
    target: str,
    hold: Callable[[], Any],
    let_go: Callable[[Any], None],
    blocked: Callable[[int], None],
    rounds: int,
) -> list[float]:
    """Hand-off latencies in milliseconds, ``rounds`` times."""
    waiter = Waiter(kind, target)
    results = []
    try:
        for _ in range(rounds):
            held = hold()
            waiter.send("go")
            waiter.expect("waiting")
            blocked(waiter.proc.pid)
            start = time.perf_counter_ns()
            let_go(held)
            got = int(waiter.expect("got")[1])
            results.append((got - start) / 1e6)
            waiter.send("release")
            waiter.expect("released")
    finally:
        waiter.close()
    return results


def _until_blocked_in_postgres(conn: Any, pid: int) -> None:
    """Watch ``pg_locks`` until a session of process ``pid`` waits for an advisory lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name LIKE %s",
            (f"inturn pid {pid} %",),
        ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.002)
    raise RuntimeError("the waiter never blocked in PostgreSQL")


def handoff_rows(schema: str, rounds: int, polling: int) -> list[tuple[str, list[float] | str]]:
    import psycopg

    import inturn

    rows: list[tuple[str, list[float] | str]] = []
    watcher = psycopg.connect(PG_URL, autocommit=True)
    try:
        url = _bench_url(schema)
        line = inturn.Line("handoff", backend=url)
        rows.append(
            (
                "inturn (PostgreSQL backend)",
                _handoffs(
                    "inturn",
                    url,
                    line.acquire,
                    lambda held: held.release(),
                    lambda pid: _until_blocked_in_postgres(watcher, pid),
                    rounds,
                ),
            )
        )
        holder = psycopg.connect(PG_URL, autocommit=True)
        raw_target = psycopg.conninfo.make_conninfo(PG_URL, application_name="bench-raw")

        def raw_blocked(pid: int) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted"
                    " AND a.application_name = 'bench-raw'"
                ).fetchone()
                if row and row[0]:
                    return
                time.sleep(0.002)
            raise RuntimeError("the raw waiter never blocked")

        rows.append(
            (
                "raw `pg_advisory_lock` (floor)",
                _handoffs(
                    "raw",
                    raw_target,
                    lambda: holder.execute("SELECT pg_advisory_lock(%s, %s)", RAW_KEY),
                    lambda _: holder.execute("SELECT pg_advisory_unlock(%s, %s)", RAW_KEY),
                    raw_blocked,
                    rounds,
                ),
            )
        )
        holder.close()
    finally:
        watcher.close()
    rows += redis_rows(rounds, polling)
    return rows


def redis_rows(rounds: int, polling: int) -> list[tuple[str, list[float] | str]]:
    try:
        import redis
        import redis_lock
    except ImportError as exc:
        return [("redis-py / python-redis-lock", f"not installed ({exc.name})")]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        return [("redis-py / python-redis-lock", f"no Redis at {REDIS_URL} ({exc})")]
    client.delete("inturn-bench", "lock:inturn-bench", "lock-signal:inturn-bench")

    def polling_blocked(pid: int) -> None:
        time.sleep(0.15)  # redis-py's waiter is between polls by now; nothing to observe

    def blpop_blocked(pid: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(c.get("cmd") == "blpop" for c in client.client_list()):
                return
            time.sleep(0.002)
        raise RuntimeError("python-redis-lock's waiter never blocked")

    def hold_redis_py() -> Any:
        lock = client.lock("inturn-bench", sleep=0.1, timeout=60)
        lock.acquire()
        return lock

    def hold_prl() -> Any:
        lock = redis_lock.Lock(client, "inturn-bench", expire=60)
        lock.acquire()
        return lock

    return [
        (
            "redis-py `Lock` (polls every 0.1 s)",
            _handoffs(
                "redis-py",
                REDIS_URL,
                hold_redis_py,
                lambda lock: lock.release(),
                polling_blocked,
                polling,
            ),
        ),
        (
            "python-redis-lock (BLPOP)",
            _handoffs(
                "python-redis-lock",
                REDIS_URL,
                hold_prl,
                lambda lock: lock.release(),
                blpop_blocked,
                rounds,
            ),
        ),
    ]


# --------------------------------------------------------------------------- server load


def load_row(schema: str, quiet: float) -> dict[str, float]:
    """Queries on the server while ``WAITERS`` inturn waiters wait behind one holder."""
    import psycopg

    import inturn

    url = _bench_url(schema)
    line = inturn.Line("load", backend=url)
    holder = line.acquire()
    threads = []
    failures: list[BaseException] = []
    for _ in range(WAITERS):

        def wait_then_leave() -> None:
            try:
                line.acquire().release()
            except BaseException as exc:  # reported below, with the server's reason
                failures.append(exc)

        thread = threading.Thread(target=wait_then_leave, daemon=True)
        thread.start()
        threads.append(thread)
    watcher = psycopg.connect(PG_URL, autocommit=True)
    try:
        deadline = time.monotonic() + 120
        while len(line.status().waiters) < WAITERS:
            if failures:
                holder.release()
                raise RuntimeError(f"{len(failures)} waiters could not join: {failures[0]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the waiters never all joined")
            time.sleep(0.05)
        waiting_sessions = (
            "SELECT pid, query_start FROM pg_stat_activity"
            " WHERE application_name LIKE %s AND wait_event_type = 'Lock'"
        )
        me = f"inturn pid {os.getpid()} %"
        count = (
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        # Backends report their counts up to a second or more late: one window of the same
        # length first, not counted, so that the joins' own transactions are not billed.
        warm = watcher.execute(count).fetchone()
        time.sleep(quiet)
        warm_end = watcher.execute(count).fetchone()
        before_sessions = dict(watcher.execute(waiting_sessions, (me,)).fetchall())
        start_x = watcher.execute(count).fetchone()
        started = time.monotonic()
        time.sleep(quiet)
        end_x = watcher.execute(count).fetchone()
        elapsed = time.monotonic() - started
        after_sessions = dict(watcher.execute(waiting_sessions, (me,)).fetchall())
    finally:
        watcher.close()
    assert start_x is not None and end_x is not None
    busy = sum(1 for pid, at in before_sessions.items() if after_sessions.get(pid) != at)
    holder.release()
    for thread in threads:
        thread.join(120)
    # The watcher's own reads are transactions too: one before the window closes.
    xacts = int(end_x[0]) - int(start_x[0]) - 1
    assert warm is not None and warm_end is not None
    return {
        "settling_xacts_per_second": (int(warm_end[0]) - int(warm[0]) - 1) / quiet,
        "waiters": float(len(before_sessions)),
        "xacts_per_second": max(0.0, xacts / elapsed),  # late reports can make it dip below
        "holder_pings_per_second": 1.0,
        "waiters_that_queried": float(busy),
        "seconds": elapsed,
    }


# --------------------------------------------------------------------------- report


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


# The targets this suite measured, for the targets table of ``run.py`` (filled by ``measure``).
targets: list[Target] = []
HANDOFF_LIMIT = 2.0  # inturn's hand-off against a raw pg_advisory_lock hand-off


def measure(quick: bool = False) -> str:
    """The Markdown section; ``quick`` takes fewer rounds and a shorter quiet window."""
    import psycopg

    targets.clear()

    rounds, polling, quiet = (10, 5, 2.0) if quick else (ROUNDS, POLLING_ROUNDS, QUIET_SECONDS)

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    out = ["## Server backends: PostgreSQL and Redis", ""]
    try:
        rows = handoff_rows(schema, rounds, polling)
        load = load_row(schema, quiet)
    finally:
        try:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except psycopg.Error:
            pass
    raw = next((r for name, r in rows if name.startswith("raw") and isinstance(r, list)), None)
    floor = median(raw) if raw else None
    out += [
        "Hand-off latency: holder's release call to the blocked waiter's return (another "
        f"process), median of {rounds} rounds ({polling} for redis-py), local servers.",
        "",
    ]
    table = []
    inturn_ratio = None
    for name, result in rows:
        if isinstance(result, str):
            table.append((name, result, "", "", ""))
            continue
        mid = median(result)
        if name.startswith("inturn") and floor:
            inturn_ratio = mid / floor
            targets.append(
                Target(
                    f"PostgreSQL hand-off within {HANDOFF_LIMIT:g}x a raw pg_advisory_lock's",
                    f"{_ms(mid)} ({inturn_ratio:.2f}x)",
                    f"<= {_ms(HANDOFF_LIMIT * floor)}",
                    inturn_ratio <= HANDOFF_LIMIT,
                )
            )
        table.append((name, _ms(mid), _ms(min(result)), _ms(max(result)), ratio(mid, floor or 0.0)))
    out.append(
        markdown_table(("lock", "hand-off (median)", "min", "max", "vs raw advisory lock"), table)
    )
    out += [
        "",
        f"Server load while {int(load['waiters'])} inturn waiters wait behind one holder, over "
        f"{load['seconds']:.1f} s (from `pg_stat_database` transaction counts, all sessions of "
        "the database; `pg_stat_statements` is not loaded here), after a window of the same "
        f"length that is not counted ({load['settling_xacts_per_second']:.1f}/s there: backends "
        "report their counts late, so it still bills the waiters' joins):",
        "",
    ]
    out.append(
        markdown_table(
            (
                "transactions per second",
                "of which the holder's watchdog (`SELECT 1` a second)",
                "waiter sessions that ran a query",
            ),
            [
                (
                    f"{load['xacts_per_second']:.1f}",
                    f"{load['holder_pings_per_second']:.0f}",
                    f"{int(load['waiters_that_queried'])} of {int(load['waiters'])}",
                )
            ],
        )
    )
    out.append("")
    handoff_ok = inturn_ratio is not None and inturn_ratio <= 2.0
    idle_ok = load["waiters_that_queried"] == 0
    verdict = (
        f"Targets: hand-off within 2x the raw advisory lock's: "
        f"{'met' if handoff_ok else 'MISSED'}"
        + (f" ({inturn_ratio:.1f}x)" if inturn_ratio is not None else "")
        + f"; zero queries from idle waiters: {'met' if idle_ok else 'MISSED'}."
    )
    out.append(verdict)
    if not handoff_ok and inturn_ratio is not None:
        out += [
            "",
            "Why: a raw hand-off is one unlock and one wake-up. inturn's leaver removes its "
            "ticket, commits and unlocks in one call; its waiter wakes and reads the line in "
            "one round trip, then records that it holds the turn (one more round trip and a "
            "commit), because order comes from ticket numbers and status must show the holder.",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    print(measure())


if __name__ == "__main__":
    main()
