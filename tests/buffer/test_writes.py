"""What one group commit writes: statements queued together, merged but kept in order."""

from __future__ import annotations

from pathlib import Path

from forwarder.buffer.history import INSERT_ATTEMPT
from forwarder.buffer.writes import coalesced
from tests.buffer.stores import OpenBuffer, on_disk, record

# The same statement spelled differently: SQLite runs it alike, the writer sees other SQL.
OTHER_INSERT = INSERT_ATTEMPT.replace("INSERT INTO", "INSERT  INTO")


def attempt_row(attempt: int) -> tuple[object, ...]:
    """A delivery-history row of forwarder ``f`` numbered by its ``attempt``."""
    return ("f", 1.0, attempt, 1, b"[]", "success", "200", 200, 1.0, None, None)


def test_coalesced_merges_only_neighbours_with_the_same_sql() -> None:
    """Neighbouring statements with the same SQL become one; others keep their place."""
    statements = [
        ("A", [(1,)]),
        ("A", [(2,), (3,)]),
        ("B", [(4,)]),
        ("A", [(5,)]),
    ]
    assert coalesced(statements) == [("A", [(1,), (2,), (3,)]), ("B", [(4,)]), ("A", [(5,)])]
    assert statements[0] == ("A", [(1,)])  # the queued operations are left as they were


async def test_statements_queued_together_are_written_in_queue_order(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """History rows submitted one by one land in one commit, in the order they were queued."""
    buffer = await open_buffer()
    for attempt in (1, 2):
        buffer.submit([(INSERT_ATTEMPT, [attempt_row(attempt)])])
    buffer.submit([(OTHER_INSERT, [attempt_row(3)])])
    buffer.submit([(INSERT_ATTEMPT, [attempt_row(4)])])
    buffer.ack("f", 1)
    await buffer.append([record(1)])  # answered once the queued statements are committed too
    rows = on_disk(tmp_path / "buffer.db", "SELECT attempt FROM delivery_attempts ORDER BY id")
    assert [attempt for (attempt,) in rows] == [1, 2, 3, 4]
    assert on_disk(tmp_path / "buffer.db", "SELECT cursor FROM forwarders") == [(1,)]
