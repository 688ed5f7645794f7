"""Who may hold the turn, written once: the queue waits by this rule, and a line's status is
read by it (``LineStatus.passing_to``), so that what ``inturn top`` shows cannot drift from
what the waiters do."""

from __future__ import annotations

from collections.abc import Sequence


def may_hold(slots: int, shared: bool, ahead: Sequence[bool]) -> bool:
    """Whether a ticket holds the turn with these live tickets ahead of it (each True for a
    shared turn): a shared ticket when none of them is exclusive; an exclusive one when fewer
    than ``slots`` are ahead and none of them is shared."""
    if shared:
        return all(ahead)
    return len(ahead) < slots and not any(ahead)
