"""The in-flight window: the cursor advances only over a contiguous prefix of resolved batches.

The window is pure bookkeeping (no I/O), so it is tested directly with
stored events built in memory.
"""

from __future__ import annotations

from forwarder.buffer.batches import StoredEvent
from forwarder.delivery.window import Window


def events(first: int, last: int) -> list[StoredEvent]:
    """Events with seqs ``first``..``last``, received at their seq (in seconds)."""
    return [
        StoredEvent(seq, f"e{seq}", "t", float(seq), None, b"{}") for seq in range(first, last + 1)
    ]


def test_a_later_batch_resolved_first_does_not_move_the_cursor_until_the_earlier_one_is() -> None:
    """1-10, 11-20, 21-30: resolving 2 and 3 first keeps the cursor at 0; then 1 gives 30."""
    window = Window(0)
    first, second, third = events(1, 10), events(11, 20), events(21, 30)
    slots = [window.open(batch, batch[-1].seq) for batch in (first, second, third)]

    assert window.resolve(slots[1], second) is None
    assert window.resolve(slots[2], third) is None
    assert window.cursor == 0
    assert window.resolve(slots[0], first) == 30
    assert len(window) == 0


def test_the_oldest_batch_moves_the_cursor_part_by_part_while_bisected() -> None:
    """A bisected oldest batch acknowledges each resolved half at once, as it always did."""
    window = Window(5)
    batch = events(6, 13)
    slot = window.open(batch, 13)

    assert window.resolve(slot, batch[:4]) == 9
    assert window.oldest_unresolved() == batch[4]
    assert window.resolve(slot, batch[4:]) == 13


def test_refused_events_between_batches_are_acknowledged_with_the_prefix() -> None:
    """Refused events after an unresolved batch wait for it; with none in flight, move at once."""
    window = Window(0)
    batch = events(1, 5)
    slot = window.open(batch, 5)

    assert window.skip(9) is None
    assert window.resolve(slot, batch) == 9
    assert window.skip(12) == 12
    assert window.skip(12) is None


def test_a_dead_letter_acknowledges_only_as_far_as_the_resolved_prefix() -> None:
    """The ack committed with a dead letter stops before an earlier unresolved batch."""
    window = Window(0)
    first, second, third = events(1, 10), events(11, 20), events(21, 30)
    slots = [window.open(batch, batch[-1].seq) for batch in (first, second, third)]
    window.resolve(slots[2], third)

    assert window.cursor_if_resolved(slots[1], second) is None
    assert window.cursor_if_resolved(slots[0], first) == 10
    window.resolve(slots[1], second)
    assert window.cursor_if_resolved(slots[0], first) == 30
    assert window.cursor_if_resolved(slots[0], first[:3]) == 3
    assert window.cursor == 0
