"""Housekeeping: the delivery history and dead letters are kept for a bounded time.

A periodic task (once at start, then every ``check_interval`` seconds) deletes
delivery attempts and dead letters older than the retention period, and
trims each forwarder's history to its newest ``history_max_rows`` attempts so
a high delivery rate cannot grow the file for a week. Deletes go through the
buffer's single writer like every other write, in chunks, so one purge never
holds the write lock long enough to stall ingest.

Pending events are never deleted here, whatever their age: losing an
acknowledged event is not ours to decide. Events older than the retention
that are still pending are logged (``pending_events_past_retention``) and
show in ``audit_forwarder_oldest_pending_age_seconds``, so an operator sees
them; ``retry.maxAgeSeconds`` is the opt-in way to dead-letter by age.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from forwarder.buffer.dead_letters import forget_chain_records
from forwarder.buffer.store import EventBuffer
from forwarder.logs import get_logger

log = get_logger("retention")

DELETE_CHUNK = 20_000


class Housekeeper:
    """Owns the retention task. Constructing it does no I/O."""

    def __init__(
        self,
        buffer: EventBuffer,
        retention_seconds: float,
        history_max_rows: int,
        forwarders: Callable[[], Awaitable[Iterable[tuple[str, int, float]]]],
        *,
        check_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._buffer = buffer
        self.retention_seconds = retention_seconds
        self.history_max_rows = history_max_rows
        self._pending = forwarders
        self._interval = check_interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The housekeeping task, for the daemon to supervise."""
        return self._task

    def start(self) -> None:
        """Start the periodic task (its first purge runs at once)."""
        self._task = asyncio.create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        """Cancel the task. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.purge_once()
            await asyncio.sleep(self._interval)

    async def purge_once(self) -> dict[str, int]:
        """Delete what is past retention or over the row cap; return the counts."""
        cutoff = self._clock() - self.retention_seconds
        deleted = {
            "delivery_attempts": await self._delete_chunked(
                "delivery_attempts", "attempted_at < ?", (cutoff,)
            ),
            "dead_letters": await self._delete_chunked("dead_letters", "dead_at < ?", (cutoff,)),
        }
        deleted["delivery_attempts"] += await self._trim_history()
        if any(deleted.values()):
            log.info("retention_purged", retention_hours=self.retention_seconds / 3600, **deleted)
        for name, pending, oldest_age in await self._pending():
            if pending and oldest_age > self.retention_seconds:
                # Never dropped for age: the operator decides (fix the receiver,
                # or set retry.maxAgeSeconds to dead-letter instead).
                log.warning(
                    "pending_events_past_retention",
                    forwarder=name,
                    pending=pending,
                    oldest_age_hours=round(oldest_age / 3600, 2),
                    retention_hours=self.retention_seconds / 3600,
                )
        return deleted

    async def _delete_chunked(self, table: str, where: str, parameters: tuple[Any, ...]) -> int:
        total = 0
        while True:
            rows = await self._buffer.query(
                f"SELECT id FROM {table} WHERE {where} ORDER BY id LIMIT ?",
                (*parameters, DELETE_CHUNK),
            )
            if not rows:
                return total
            clause = f" WHERE id <= ? AND {where}"
            arguments = [(rows[-1][0], *parameters)]
            statements: list[tuple[str, Sequence[Sequence[Any]]]] = []
            if table == "dead_letters":
                statements.append((forget_chain_records(clause), arguments))
            statements.append((f"DELETE FROM {table}{clause}", arguments))
            await self._buffer.execute(statements)
            total += len(rows)
            if len(rows) < DELETE_CHUNK:
                return total

    async def _trim_history(self) -> int:
        total = 0
        for forwarder, _, _ in await self._pending():
            rows = await self._buffer.query(
                "SELECT id FROM delivery_attempts WHERE forwarder = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?",
                (forwarder, self.history_max_rows),
            )
            if rows:
                total += await self._delete_chunked(
                    "delivery_attempts", "forwarder = ? AND id <= ?", (forwarder, rows[0][0])
                )
        return total
