"""Locks on Redis: inturn's Redis backend against redis-py's ``Lock`` and python-redis-lock.

``measure()`` returns a Markdown section; ``python benchmarks/servers_redis.py`` prints it
(``--quick`` for a short run). Everything runs in one go against a private ``redis-server``
started on a free loopback port (so that the server's command counts are ours alone), or
against ``INTURN_BENCH_REDIS_URL`` when that is set.

* Hand-off latency: from the holder's release call to the waiter's return from acquire, the
  waiter being another process already waiting (inturn: in line and asleep; the others: asleep
  in their own wait). The holder keeps the lock a random 0-250 ms more before each release, so
  that pollers are caught at every point of their retry cycle. Medians.
* Crash recovery: SIGKILL of the holder to the waiter's return from acquire, for inturn's
  default lease and a 1 s lease, and for the two libraries with a 5 s expiry (redis-py's
  ``Lock(timeout=5)``; python-redis-lock's ``Lock(expire=5, auto_renewal=True)``).
* Server load while 20 waiters wait idle behind a holder: commands per second from the
  deltas of ``INFO commandstats`` over a quiet window (the ``INFO`` calls themselves left out).

Each contender is called the way its documentation says: inturn
``Line(name, backend=url).acquire()``; redis-py ``Redis.lock(name).acquire()`` with its
defaults (no expiry, ``sleep=0.1`` between tries); python-redis-lock
``redis_lock.Lock(client, name).acquire()`` (waits in ``BLPOP`` for the releaser's signal).
The two libraries' clients are made with ``socket_timeout=None``: redis-py 8's default of 5 s
breaks python-redis-lock, whose ``BLPOP`` waits as long as the lock's expiry or forever.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from common import (  # noqa: E402 - needs the path above
    Target,
    Worker,
    command_env,
    library_version,
    markdown_table,
    median,
    wait_asleep,
)

KINDS = ("inturn", "redis-py", "python-redis-lock")
LABELS = {
    "inturn": "inturn (Redis backend)",
    "redis-py": "redis-py `Lock` (polls every 0.1 s)",
    "python-redis-lock": "python-redis-lock (`BLPOP`)",
}
IDLE_WAITERS = 20
QUIET_SECONDS = 10.0
CRASH_EXPIRY = 5  # seconds, for the two libraries' crash recovery


# --------------------------------------------------------------------------- worker process


def worker(kind: str, url: str, name: str, lease: str) -> None:
    """Runs in a contender process: ``acquire``, ``release``, ``quit`` on stdin; one report a
    line on stdout (``ready PID``, ``trying``, ``queued``, ``acquired T ABANDONED``,
    ``released T``), times from ``time.monotonic_ns()``, one clock for every process."""

    def say(*words: object) -> None:
        sys.stdout.write(" ".join(map(str, words)) + "\n")
        sys.stdout.flush()

    acquire: Callable[[Callable[[], None]], str]
    release: Callable[[], None]
    if kind == "inturn":
        import inturn

        target = url + ("&" if "?" in url else "?") + f"prefix=bench-{name}"
        if lease != "-":
            target += f"&lease={lease}"
        line = inturn.Line(name, backend=target)
        held: list[inturn.Turn] = []

        def acquire(queued: Callable[[], None]) -> str:
            told: list[bool] = []

            def progress(_: object) -> None:
                if not told:
                    told.append(True)
                    queued()

            turn = line.acquire(on_progress=progress)
            held.append(turn)
            return str(int(turn.abandoned))

        def release() -> None:
            held.pop().release()

    else:
        import redis

        # redis-py 8 reads with a 5 s socket timeout by default, which python-redis-lock's
        # BLPOP (as long as the expiry, or forever) outlasts: wait as long as the lock says.
        client = redis.Redis.from_url(url, socket_timeout=None)
        expiry = None if lease == "-" else int(lease)
        lock: Any
        if kind == "redis-py":
            lock = client.lock(f"bench-{name}", timeout=expiry)
        else:
            import redis_lock

            lock = redis_lock.Lock(
                client, f"bench-{name}", expire=expiry, auto_renewal=expiry is not None
            )

        def acquire(queued: Callable[[], None]) -> str:
            lock.acquire()
            return "-"

        def release() -> None:
            lock.release()

    say("ready", os.getpid())
    for command in sys.stdin:
        word = command.strip()
        try:
            if word == "acquire":
                say("trying")
                abandoned = acquire(lambda: say("queued"))
                say("acquired", time.monotonic_ns(), abandoned)
            elif word == "release":
                now = time.monotonic_ns()
                release()
                say("released", now)
            elif word == "quit":
                return
        except Exception as exc:  # reported to the harness, which stops with the message
            say(f"error {type(exc).__name__}: {exc}")


class Contender(Worker):
    """A ``worker`` process of this file, driven like ``common.Worker``."""

    def __init__(self, kind: str, url: str, name: str, lease: str = "-") -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "worker", kind, url, name, lease],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=command_env(),
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def start_waiting(self) -> None:
        """Ask for the lock and return once this process waits for it, asleep."""
        self.send("acquire")
        self.expect("trying")
        if self.kind == "inturn":
            self.expect("queued")
        wait_asleep(self.pid)


def started(count: int, kind: str, url: str, name: str, lease: str = "-") -> list[Contender]:
    group = [Contender(kind, url, name, lease) for _ in range(count)]
    for member in group:
        member.expect("ready")
    return group


def closed(group: list[Contender]) -> None:
    for member in group:
        member.close()


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_server() -> Iterator[str]:
    """A throwaway ``redis-server`` (nothing saved), or ``INTURN_BENCH_REDIS_URL``."""
    named = os.environ.get("INTURN_BENCH_REDIS_URL")
    if named:
        yield named
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: install it or set INTURN_BENCH_REDIS_URL"
        )
    with tempfile.TemporaryDirectory(prefix="inturn-bench-redis-") as folder:
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", folder, "--logfile", ""]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            for row in server.stdout:  # the server says when it listens
                if "Ready to accept connections" in row:
                    break
            else:
                raise RuntimeError("redis-server did not start")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or None."""
    try:
        import redis  # noqa: F401
        import redis_lock  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[bench]')"
    if not os.environ.get("INTURN_BENCH_REDIS_URL") and shutil.which("redis-server") is None:
        return "redis-server is not installed and INTURN_BENCH_REDIS_URL is not set"
    return None


# --------------------------------------------------------------------------- measures


def handoffs(kind: str, url: str, rounds: int) -> list[float]:
    """Hand-off latencies in ms: two processes pass the lock back and forth."""
    first, second = started(2, kind, url, f"handoff-{uuid.uuid4().hex[:8]}")
    try:
        first.send("acquire")
        first.expect("trying")
        first.expect("acquired")
        holder, waiter = first, second
        latencies = []
        for _ in range(rounds):
            waiter.start_waiting()
            time.sleep(random.uniform(0, 0.25))  # catch pollers at any point of their cycle
            holder.send("release")
            released = int(holder.expect("released")[0])
            acquired = int(waiter.expect("acquired")[0])
            latencies.append((acquired - released) / 1e6)
            holder, waiter = waiter, holder
        holder.send("release")
        holder.expect("released")
        return latencies
    finally:
        closed([first, second])


def crash_recovery(kind: str, url: str, lease: str, trials: int) -> tuple[list[float], str]:
    """SIGKILL of the holder to the waiter's return, in seconds; and what the waiter was told."""
    recoveries, told = [], set()
    for _ in range(trials):
        name = f"crash-{uuid.uuid4().hex[:8]}"
        holder, waiter = started(2, kind, url, name, lease)
        try:
            holder.send("acquire")
            holder.expect("trying")
            holder.expect("acquired")
            waiter.start_waiting()
            time.sleep(random.uniform(0, 0.25))
            killed = time.monotonic_ns()
            holder.proc.send_signal(signal.SIGKILL)
            acquired, abandoned = waiter.expect("acquired", timeout=120)
            recoveries.append((int(acquired) - killed) / 1e9)
            told.add({"1": "yes", "0": "no"}.get(abandoned, "cannot tell"))
            waiter.send("release")
            waiter.expect("released")
        finally:
            closed([holder, waiter])
    return recoveries, "/".join(sorted(told))


def command_counts(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}


def idle_load(kind: str, url: str, waiters: int, seconds: float) -> tuple[float, str]:
    """Commands per second on the server while ``waiters`` processes wait behind a holder."""
    import redis

    name = f"idle-{uuid.uuid4().hex[:8]}"
    group = started(waiters + 1, kind, url, name)
    client = redis.Redis.from_url(url)
    try:
        holder, queue = group[0], group[1:]
        holder.send("acquire")
        holder.expect("trying")
        holder.expect("acquired")
        for member in queue:
            member.start_waiting()
        time.sleep(1.0)  # let the last arrivals settle before the window opens
        before = command_counts(client)
        time.sleep(seconds)  # the quiet window in which the waiters are watched
        after = command_counts(client)
        deltas = {k: v - before.get(k, 0) for k, v in after.items() if k != "info"}
        busiest = sorted(((d, k) for k, d in deltas.items() if d > 0), reverse=True)
        rate = sum(deltas.values()) / seconds
        detail = ", ".join(f"{k.upper()} {d / seconds:.1f}/s" for d, k in busiest[:4]) or "none"
        return rate, detail
    finally:
        for member in group:
            member.kill()
        closed(group)
        client.close()


# --------------------------------------------------------------------------- report


# The targets this suite measured, for the targets table of ``run.py`` (filled by ``measure``).
targets: list[Target] = []
HANDOFF_LIMIT_MS = 1.0  # inturn's hand-off on a local Redis


def measure(quick: bool = False) -> str:
    """Run every measure against one private server; a Markdown section."""
    targets.clear()
    from inturn.backends.redis.address import DEFAULT_LEASE, DEFAULT_LOCK_DELAY
    from inturn.backends.redis.store import WAKE_AFTER_EXPIRY_MS

    rounds = {"inturn": 40, "python-redis-lock": 40, "redis-py": 20}
    trials, seconds, waiters = (3, QUIET_SECONDS, IDLE_WAITERS)
    if quick:
        rounds = dict.fromkeys(rounds, 5)
        trials, seconds, waiters = 1, 3.0, 5
    with private_server() as url:
        import redis

        server_version = redis.Redis.from_url(url).info("server")["redis_version"]
        handoff_rows = []
        for kind in KINDS:
            values = handoffs(kind, url, rounds[kind])
            if kind == "inturn":
                targets.append(
                    Target(
                        f"Redis hand-off within {HANDOFF_LIMIT_MS:g} ms",
                        f"{median(values):.2f} ms",
                        f"<= {HANDOFF_LIMIT_MS:.2f} ms",
                        median(values) <= HANDOFF_LIMIT_MS,
                    )
                )
            handoff_rows.append(
                (LABELS[kind], f"{median(values):.2f} ms", f"{max(values):.2f} ms", len(values))
            )
        crash_cases = [
            ("inturn", "-", f"default lease ({DEFAULT_LEASE:g} s)"),
            ("inturn", "1", "`?lease=1`"),
            ("redis-py", str(CRASH_EXPIRY), f"`timeout={CRASH_EXPIRY}`"),
            ("python-redis-lock", str(CRASH_EXPIRY), f"`expire={CRASH_EXPIRY}`, auto-renewal"),
        ]
        crash_rows = []
        for kind, lease, setting in crash_cases:
            values, told = crash_recovery(kind, url, lease, trials)
            crash_rows.append(
                (LABELS[kind], setting, f"{median(values):.2f} s", f"{max(values):.2f} s", told)
            )
        load_rows = []
        for kind in KINDS:
            rate, detail = idle_load(kind, url, waiters, seconds)
            load_rows.append((LABELS[kind], f"{rate:.1f}", detail))
    versions = ", ".join(
        f"{n} {library_version(n)}" for n in ("inturn", "redis", "python-redis-lock")
    )
    lines = [
        "## Across machines on Redis",
        "",
        f"One run against a private Redis {server_version} on loopback ({versions}). Command: "
        f"`.venv/bin/python benchmarks/servers_redis.py{' --quick' if quick else ''}`.",
        "",
        "### Hand-off latency (release to the waiter's return), medians",
        "",
        markdown_table(("contender", "median", "worst", "hand-offs"), handoff_rows),
        "",
        "### Crash recovery (SIGKILL of the holder to the waiter's return)",
        "",
        markdown_table(("contender", "setting", "median", "worst", "next holder told"), crash_rows),
        "",
        f"inturn's lease is renewed every third of it; a dead holder's lease runs out between "
        f"two thirds of a lease and one lease after the crash, and its waiter wakes "
        f"{WAKE_AFTER_EXPIRY_MS} ms after it could have run out, then waits the lock delay "
        f"({DEFAULT_LOCK_DELAY:g} s by default; `?lock_delay=0` for none) before it starts. The "
        f"libraries expire a lock {CRASH_EXPIRY} s after it was last set or renewed.",
        "",
        f"### Server load while {waiters} waiters wait idle behind a holder",
        "",
        f"Commands per second from `INFO commandstats` deltas over {seconds:g} s "
        "(the `INFO` calls left out).",
        "",
        markdown_table(("contender", "commands/s", "busiest commands"), load_rows),
        "",
        "inturn's idle cost is each ticket's lease renewal (`PEXPIRE`, three per lease) and "
        "each waiter looking again once per lease period (`PTTL`, then `XREAD BLOCK` until "
        "the watched lease could next run out; the waiter next in line sends the script that "
        "marks its turn held in the same packet, `EVAL`, which marks nothing unless the read "
        "ended with its turn); a longer lease (`?lease=`) lowers it in proportion and "
        "lengthens crash recovery in proportion.",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    print(measure(quick=args.quick))


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        main()
