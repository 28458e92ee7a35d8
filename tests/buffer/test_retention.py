"""Retention: history and dead letters purged by age and row cap; old pending events only logged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER, purge
from forwarder.buffer.history import INSERT_ATTEMPT
from forwarder.buffer.retention import Housekeeper
from forwarder.buffer.store import EventBuffer, EventRecord
from tests.support import wait_for

DAY = 86_400.0
NOW = 1_800_000_000.0


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """A real buffer file with one forwarder."""
    opened = EventBuffer(tmp_path / "buffer.db")
    await opened.open(["siem"])
    yield opened
    await opened.close()


def attempt_row(forwarder: str, at: float, n: int) -> tuple[object, ...]:
    """One delivery_attempts row."""
    return (forwarder, at, 1, 1, f'["e-{n}"]', "success", "200", 200, 1.0, None, b"")


def dead_row(forwarder: str, at: float, n: int) -> tuple[object, ...]:
    """One dead_letters row."""
    return (forwarder, n, f"e-{n}", "t", at, at, 400, "400", "HTTP 400", b"", b"{}")


def gauges(*rows: tuple[str, int, float]) -> Callable[[], Awaitable[list[tuple[str, int, float]]]]:
    """An async (name, pending, oldest age) provider, as the delivery process answers it."""

    async def provide() -> list[tuple[str, int, float]]:
        return list(rows)

    return provide


async def count(buffer: EventBuffer, table: str) -> int:
    """Rows in ``table``."""
    return int((await buffer.query(f"SELECT count(*) FROM {table}"))[0][0])


async def test_rows_older_than_retention_are_purged_and_newer_kept(buffer: EventBuffer) -> None:
    """History and dead letters older than the retention go; younger ones stay."""
    await buffer.execute(
        [
            (INSERT_ATTEMPT, [attempt_row("siem", NOW - 8 * DAY, n) for n in range(30)]),
            (INSERT_ATTEMPT, [attempt_row("siem", NOW - 1 * DAY, n) for n in range(5)]),
            (INSERT_DEAD_LETTER, [dead_row("siem", NOW - 9 * DAY, n) for n in range(4)]),
            (INSERT_DEAD_LETTER, [dead_row("siem", NOW - 2 * DAY, n) for n in range(3)]),
        ]
    )
    keeper = Housekeeper(buffer, 7 * DAY, 1000, gauges(("siem", 0, 0.0)), clock=lambda: NOW)
    with capture_logs() as logs:
        deleted = await keeper.purge_once()
    assert deleted == {"delivery_attempts": 30, "dead_letters": 4}
    assert await count(buffer, "delivery_attempts") == 5
    assert await count(buffer, "dead_letters") == 3
    assert [e["event"] for e in logs] == ["retention_purged"]
    assert await keeper.purge_once() == {"delivery_attempts": 0, "dead_letters": 0}


async def test_history_is_capped_per_forwarder_keeping_the_newest(buffer: EventBuffer) -> None:
    """history_max_rows keeps each forwarder's newest attempts, whatever their age."""
    await buffer.execute(
        [
            (INSERT_ATTEMPT, [attempt_row("siem", NOW - 10, n) for n in range(50)]),
            (INSERT_ATTEMPT, [attempt_row("other", NOW - 10, n) for n in range(5)]),
        ]
    )
    keeper = Housekeeper(
        buffer, 7 * DAY, 20, gauges(("siem", 0, 0.0), ("other", 0, 0.0)), clock=lambda: NOW
    )
    deleted = await keeper.purge_once()
    assert deleted["delivery_attempts"] == 30
    kept = await buffer.query(
        "SELECT event_ids FROM delivery_attempts WHERE forwarder = 'siem' ORDER BY id"
    )
    assert [row[0] for row in kept] == [f'["e-{n}"]' for n in range(30, 50)]
    assert await count(buffer, "delivery_attempts") == 25


async def test_chunked_purge_removes_more_rows_than_one_chunk(buffer: EventBuffer) -> None:
    """A purge larger than one delete chunk still removes everything past retention."""
    rows = [attempt_row("siem", NOW - 30 * DAY, n) for n in range(45_000)]
    await buffer.execute([(INSERT_ATTEMPT, rows)])
    keeper = Housekeeper(buffer, DAY, 10**9, gauges(("siem", 0, 0.0)), clock=lambda: NOW)
    assert (await keeper.purge_once())["delivery_attempts"] == 45_000
    assert await count(buffer, "delivery_attempts") == 0


async def test_pending_events_past_retention_are_logged_never_deleted(buffer: EventBuffer) -> None:
    """Old undelivered events raise a warning; the events themselves stay in the buffer."""
    await buffer.append([EventRecord("e-1", "t", b"{}", False)])
    ages = gauges(("siem", 1, 8 * DAY), ("fresh", 2, 60.0))
    keeper = Housekeeper(buffer, 7 * DAY, 1000, ages, clock=lambda: NOW)
    with capture_logs() as logs:
        await keeper.purge_once()
    warnings = [e for e in logs if e["event"] == "pending_events_past_retention"]
    assert len(warnings) == 1
    assert warnings[0]["forwarder"] == "siem"
    assert warnings[0]["pending"] == 1
    assert warnings[0]["oldest_age_hours"] == 192.0
    assert await count(buffer, "batches") == 1


async def test_periodic_task_purges_at_start_and_stops_cleanly(buffer: EventBuffer) -> None:
    """start() runs a purge at once; stop() is safe twice."""
    await buffer.execute([(INSERT_ATTEMPT, [attempt_row("siem", NOW - 30 * DAY, 1)])])
    keeper = Housekeeper(buffer, DAY, 1000, gauges(("siem", 0, 0.0)), clock=lambda: NOW)
    keeper.start()

    async def purged() -> bool:
        return await count(buffer, "delivery_attempts") == 0

    await wait_for(purged, message="the purge at start")
    await keeper.stop()
    await keeper.stop()
    assert keeper.task is None


CHAIN_RECORD = (
    "INSERT INTO chain_dead_letters (forwarder, chain_seq, event_id, record, replay_seq)"
    " VALUES (?, ?, ?, ?, NULL)"
)


async def test_chain_records_go_with_their_dead_letters(buffer: EventBuffer) -> None:
    """The chain record of a dead letter that expires, or is purged, is deleted with it;
    the records of dead letters still kept stay."""
    await buffer.execute(
        [
            (INSERT_DEAD_LETTER, [dead_row("siem", NOW - 9 * DAY, n) for n in range(2)]),
            (INSERT_DEAD_LETTER, [dead_row("siem", NOW - 1 * DAY, n) for n in range(2, 5)]),
            (CHAIN_RECORD, [("siem", n + 1, f"e-{n}", b"{}") for n in range(5)]),
        ]
    )
    keeper = Housekeeper(buffer, 7 * DAY, 1000, gauges(("siem", 0, 0.0)), clock=lambda: NOW)
    assert (await keeper.purge_once())["dead_letters"] == 2
    kept = await buffer.query("SELECT event_id FROM chain_dead_letters ORDER BY chain_seq")
    assert [row[0] for row in kept] == ["e-2", "e-3", "e-4"]
    assert await purge(buffer, "siem", ["e-3"]) == 1
    kept = await buffer.query("SELECT event_id FROM chain_dead_letters ORDER BY chain_seq")
    assert [row[0] for row in kept] == ["e-2", "e-4"]
    assert await purge(buffer, None, []) == 2
    assert await count(buffer, "chain_dead_letters") == 0
