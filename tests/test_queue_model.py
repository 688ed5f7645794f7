"""The queue algorithm under random interleavings, on a line kept in memory.

Many waiters take turns at once with random options (exclusive or shared, a few with another
slots, timeouts, non-blocking, cancels), and some of them are killed while they wait or hold.
Each seed is bounded and takes a fraction of a second. What is checked:

- at every acquisition, against the line's exact state (under the line's lock): the live
  tickets ahead let this one hold by the rule, and an exclusive one holds beside no live
  ticket of other slots; a dead holder whose going it needed is claimed by it (or by another
  before it) and never left behind;
- on an independent record of holds (each holder notes its entry and exit under a lock of
  the test's own): never more than ``slots`` exclusive holders at once, never an exclusive
  beside a shared or beside a holder of other slots, and with ``slots=1`` first come, first
  served;
- afterwards: every holder that was killed is reported exactly once, to a holder that took
  the turn after it died, and no waiter that was killed is reported; no thread hangs; no live
  ticket and no record is left.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import pytest
from memory_store import MemoryStore, World

from inturn.backends.base import CancelToken, Membership, Patience, View, Woke
from inturn.errors import Busy, Cancelled, Timeout, UsageError
from inturn.queue import Holdings, give_back, take_turn
from inturn.records import Ticket

WAIT = 30.0  # how long a run may take before its threads count as hanging
WAITERS = 40
MOST_KILLS = 6


class Died(Exception):
    """The process a store call was made for was killed: it does nothing more."""


def rule_allows(me: Ticket, ahead: Sequence[Ticket]) -> bool:
    """The queue's promise, written here from the README: a shared ticket holds when no live
    ticket ahead is exclusive; an exclusive one when fewer than ``slots`` live tickets are
    ahead and none of them is shared."""
    if me.shared:
        return all(t.shared for t in ahead)
    return len(ahead) < me.slots and not any(t.shared for t in ahead)


class Referee:
    """What happened to the line, in the order its lock saw it."""

    def __init__(self) -> None:
        self.clock = 0
        self.killed: dict[int, tuple[int, bool]] = {}  # ticket -> (when, was holding)
        self.acquired: dict[int, int] = {}  # ticket -> when
        self.owed: dict[int, set[int]] = {}  # ticket -> dead holders it needed gone
        self.claims: list[tuple[int, int, int]] = []  # (claimer, dead holder claimed, when)
        self.violations: list[str] = []

    def tick(self) -> int:
        self.clock += 1
        return self.clock


class Process(MemoryStore):
    """One waiter's view of the line: once its ticket is killed every call it makes fails,
    and it never leaves (its record stays until buried). Checks each acquisition against the
    line's exact state."""

    def __init__(self, world: World, referee: Referee, seed: float = 0.0) -> None:
        super().__init__(world)
        self.referee = referee
        self.random = random.Random(seed)
        # Every process is slow at some steps, and some are slow at many (a refused one may
        # linger in line while the turn passes on).
        self.slowness = 0.003 if self.random.random() < 0.2 else 0.0005

    def _stop_if_dead(self, me: Membership | None) -> None:
        """Also, now and then, lets the others run first."""
        if self.random.random() < 0.3:
            time.sleep(self.random.uniform(0, self.slowness))
        if me is not None and me.number in self.referee.killed:
            raise Died(f"ticket {me.number} was killed")

    def look(self, me: Membership | None) -> View:
        self._stop_if_dead(me)
        return super().look(me)

    def alive(self, numbers: Sequence[int], me: Membership | None) -> list[bool]:
        self._stop_if_dead(me)
        return super().alive(numbers, me)

    def bury(self, number: int, me: Membership | None, patience: Patience) -> bool:
        self._stop_if_dead(me)
        return super().bury(number, me, patience)

    def read(self, numbers: Sequence[int], me: Membership | None = None) -> list[Ticket | None]:
        self._stop_if_dead(me)
        return super().read(numbers, me)

    def _wait(
        self,
        me: Membership | None,
        numbers: Sequence[int],
        timeout: float | None,
        cancelled: threading.Event,
        cancel: CancelToken | None,
    ) -> Woke | None:
        # Also woken by its own death, as a killed process stops sleeping.
        watched = list(numbers) if me is None else [*numbers, me.number]
        woke = super()._wait(me, watched, timeout, cancelled, cancel)
        self._stop_if_dead(me)
        return woke

    def mark_acquired(self, me: Membership, when: float, patience: Patience) -> None:
        w, ref = self.world, self.referee
        with w.changed:
            self._stop_if_dead(me)
            mine = w.records[me.number]
            ahead = [w.records[n] for n in sorted(w.live) if n < me.number]
            if not rule_allows(mine, ahead):
                ref.violations.append(
                    f"ticket {me.number} took the turn with {_kinds(ahead)} ahead"
                )
            other = [t.number for t in ahead if t.slots != mine.slots]
            if not mine.shared and other:
                ref.violations.append(
                    f"ticket {me.number} (slots={mine.slots}) took the turn beside {other}, "
                    "which gave other slots"
                )
            dead = {n: t for n, t in w.records.items() if n not in w.live and t.holding}
            dead.update(w.markers)
            ref.owed[me.number] = {
                n
                for n, t in dead.items()
                if n < me.number
                and not (mine.shared and t.shared)
                and not rule_allows(mine, [*ahead, t])
            }
            ref.acquired[me.number] = ref.tick()
            super().mark_acquired(me, when, patience)

    def claim_abandoned(self, me: Membership, patience: Patience) -> Ticket | None:
        with self.world.changed:
            self._stop_if_dead(me)
            found = super().claim_abandoned(me, patience)
            if found is not None:
                self.referee.claims.append((me.number, found.number, self.referee.tick()))
            return found

    def leave(self, me: Membership) -> None:
        self._stop_if_dead(None)
        with self.world.changed:
            if me.number not in self.referee.killed:
                super().leave(me)

    def unclaimed(self, numbers: set[int]) -> list[int]:
        """Those of ``numbers`` (dead holders) still waiting to be reported."""
        w = self.world
        with w.changed:
            return sorted(n for n in numbers if n in w.markers or n in w.records)


def _kinds(tickets: Sequence[Ticket]) -> str:
    return str([(t.number, t.mode, t.slots) for t in tickets])


class Hold:
    """An entry in the independent record of holds (ticks of the test's own clock)."""

    def __init__(self, number: int, slots: int, shared: bool, enter: int) -> None:
        self.number = number
        self.slots = slots
        self.shared = shared
        self.enter = enter
        self.exit: int | None = None


class Run:
    """One seed's line, its waiters and the record of their holds."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.world = World()
        self.referee = Referee()
        self.holdings = Holdings()
        self.slots = self.random.randint(1, 3)
        self.readers = self.random.choice([0.0, 0.25, 0.5])  # how many ask for shared turns
        self.odd = self.random.choice([0.05, 0.15])  # how many give another slots
        self.record_lock = threading.Lock()
        self.clock = 0
        self.holds: list[Hold] = []
        self.waiters = [Waiter(self, index) for index in range(WAITERS)]
        self.by_name = {w.name: w for w in self.waiters}

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def kill(self, number: int) -> None:
        """The process of ``number`` dies: a holder stops its work, then its lock goes."""
        w = self.world
        with w.changed:
            record = w.records.get(number)
            if record is None or number not in w.live:
                return
            self.referee.killed[number] = (self.referee.tick(), record.holding)
            waiter = self.by_name[record.command[0]]
            with self.record_lock:
                waiter.dead = True
                if waiter.hold is not None and waiter.hold.exit is None:
                    waiter.hold.exit = self.tick()
            w.live.discard(number)
            w.changed.notify_all()
        waiter.died.set()

    def chaos(self, done: threading.Event) -> None:
        """Kills and cancels at random moments until every waiter has finished."""
        rng = random.Random(self.random.random())
        kills = rng.randint(0, MOST_KILLS)
        tokens = [w.cancel for w in self.waiters if w.cancel is not None]
        while not done.is_set():
            time.sleep(rng.uniform(0, 0.002))
            if kills and rng.random() < 0.3:
                with self.world.changed:
                    live = sorted(self.world.live)
                    holding = [n for n in live if self.world.records[n].holding]
                if live:  # holders are fewer than waiters: as likely to be chosen
                    self.kill(rng.choice(holding if holding and rng.random() < 0.5 else live))
                    kills -= 1
            if tokens and rng.random() < 0.2:
                tokens.pop(rng.randrange(len(tokens))).cancel()


class Waiter:
    """One ``take_turn`` with random options, in a thread of its own."""

    def __init__(self, run: Run, index: int) -> None:
        rng = run.random
        self.run = run
        self.name = f"w{index}"
        self.shared = rng.random() < run.readers
        others = [n for n in (1, 2, 3) if n != run.slots]
        self.slots = run.slots if rng.random() >= run.odd else rng.choice(others)
        self.blocking = rng.random() >= 0.1
        self.timeout = rng.uniform(0, 0.005) if rng.random() < 0.15 else None
        self.cancel = CancelToken() if rng.random() < 0.2 else None
        self.start_after = rng.uniform(0, 0.01)
        self.hold_for = rng.uniform(0, 0.002)
        self.store = Process(run.world, run.referee, rng.random())
        self.dead = False
        self.died = threading.Event()
        self.hold: Hold | None = None
        self.outcome: str | None = None
        self.number: int | None = None  # its ticket, once it holds
        self.told: int | None = None  # the dead holder it was told of
        self.thread = threading.Thread(target=self._run, daemon=True, name=self.name)

    def _run(self) -> None:
        try:
            self.outcome = self._take_turns()
        except BaseException as exc:
            self.outcome = f"unexpected {type(exc).__name__}: {exc}"

    def _take_turns(self) -> str:
        run = self.run
        time.sleep(self.start_after)
        try:
            held = take_turn(
                self.store,
                slots=self.slots,
                shared=self.shared,
                blocking=self.blocking,
                timeout=self.timeout,
                cancel=self.cancel,
                holdings=run.holdings,
                command=(self.name,),
            )
        except Died:
            return "died waiting"
        except (Timeout, Busy, Cancelled) as exc:
            return type(exc).__name__
        except UsageError as exc:
            if "slots" not in str(exc):
                raise
            return "refused"
        me = held.membership
        self.number = me.number
        if held.abandoned_by is not None:
            self.told = held.abandoned_by.number
        else:
            left_behind = self.store.unclaimed(run.referee.owed.get(me.number, set()))
            if left_behind:
                run.referee.violations.append(
                    f"ticket {me.number} took the turn past dead holders {left_behind} "
                    "without claiming any"
                )
        with run.record_lock:
            if self.dead:
                return "died holding"
            self.hold = Hold(me.number, self.slots, self.shared, run.tick())
            run.holds.append(self.hold)
        self.died.wait(self.hold_for)
        with run.record_lock:
            if self.dead:
                return "died holding"
            self.hold.exit = run.tick()
        give_back(self.store, me, run.holdings)
        return "held"


def check_holds(holds: Sequence[Hold]) -> list[str]:
    """Walk the independent record in order: who held beside whom, and in which order."""
    found: list[str] = []
    events = sorted(
        [(h.enter, 1, h) for h in holds] + [(h.exit, 0, h) for h in holds if h.exit is not None],
        key=lambda e: (e[0], e[1]),
    )
    now: set[Hold] = set()
    for _, entering, hold in events:
        if not entering:
            now.discard(hold)
            continue
        if hold.shared:
            if any(not h.shared for h in now):
                found.append(f"reader {hold.number} held beside a writer: {_holders(now)}")
        else:
            if any(h.shared for h in now):
                found.append(f"writer {hold.number} held beside a reader: {_holders(now)}")
            if any(h.slots != hold.slots for h in now):
                found.append(f"{hold.number} held beside other slots: {_holders(now)}")
            if sum(1 for h in now if h.slots == hold.slots) >= hold.slots:
                found.append(f"{hold.number} held beside {_holders(now)}: too many")
        now.add(hold)
    single = [
        h.number for h in sorted(holds, key=lambda h: h.enter) if not h.shared and h.slots == 1
    ]
    if single != sorted(single):
        found.append(f"exclusive holders with slots=1 took turns out of order: {single}")
    return found


def _holders(holds: set[Hold]) -> str:
    return str(sorted((h.number, "shared" if h.shared else "exclusive", h.slots) for h in holds))


@pytest.mark.parametrize("seed", range(12))
def test_random_waiters_keep_every_promise(seed: int) -> None:
    run = Run(seed)
    done = threading.Event()
    chaos = threading.Thread(target=run.chaos, args=(done,), daemon=True)
    chaos.start()
    for waiter in run.waiters:
        waiter.thread.start()
    deadline = time.monotonic() + WAIT
    for waiter in run.waiters:
        waiter.thread.join(max(0.0, deadline - time.monotonic()))
    done.set()
    chaos.join(WAIT)
    hanging = [w.name for w in run.waiters if w.thread.is_alive()]
    assert not hanging, f"seed {seed}: still waiting: {hanging}; line: {sorted(run.world.live)}"
    unexpected = [
        (w.name, w.outcome) for w in run.waiters if w.outcome is None or "unexpected" in w.outcome
    ]
    assert not unexpected, f"seed {seed}: {unexpected}"
    if all(w.slots == run.slots for w in run.waiters):
        assert not [w.name for w in run.waiters if w.outcome == "refused"]
    assert not run.world.live, f"seed {seed}: live tickets left: {sorted(run.world.live)}"

    # The dead holders nobody came after are reported to the next ones to come.
    sweeper = Process(run.world, run.referee)
    for _ in range(WAITERS + 1):
        held = take_turn(sweeper, slots=run.slots, blocking=False, holdings=run.holdings)
        give_back(sweeper, held.membership, run.holdings)
        if held.abandoned_by is None:
            break
    assert not run.world.records and not run.world.markers

    ref = run.referee
    violations = ref.violations + check_holds(run.holds)
    killed_holders = sorted(n for n, (_, holding) in ref.killed.items() if holding)
    claimed = sorted(dead for _, dead, _ in ref.claims)
    if claimed != killed_holders:
        violations.append(f"killed holders {killed_holders}, reported {claimed}")
    # Told as its turn begins, after the death (it may have taken its turn a moment before,
    # beside the one that died: markers are claimed oldest first, by whoever comes next).
    for claimer, dead, when in ref.claims:
        if when < ref.killed[dead][0]:
            violations.append(f"{claimer} was told of {dead} before it died")
    told = {(w.number, w.told) for w in run.waiters if w.told is not None}
    assert told <= {(c, d) for c, d, _ in ref.claims}, f"seed {seed}: told {told}"
    assert not violations, f"seed {seed}: " + "\n".join(violations)
