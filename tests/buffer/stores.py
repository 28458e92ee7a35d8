"""What the buffer store tests share: appending numbered events and reading the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from forwarder.buffer.store import AppendResult, EventBuffer, EventRecord

OpenBuffer = Callable[..., Awaitable[EventBuffer]]


class Clock:
    """A clock the test moves by hand (the buffer's purge runs at most once a second)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 2.0) -> None:
        """Move time forward, e.g. past the purge interval."""
        self.now += seconds


def record(
    n: int, *, client_id: str | None = None, only: str | None = None, event_id: str | None = None
) -> EventRecord:
    """An event with body ``{"n": n}``; ``client_id`` makes its id client-supplied."""
    return EventRecord(
        event_id=client_id or event_id or f"generated-{n}",
        event_type="test.event",
        body=f'{{"n": {n}}}'.encode(),
        client_supplied_id=client_id is not None,
        only_forwarder=only,
    )


def on_disk(path: Path, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a separate plain connection: what any other process would see."""
    conn = sqlite3.connect(path)
    try:
        return [tuple(row) for row in conn.execute(sql, tuple(parameters)).fetchall()]
    finally:
        conn.close()


async def append_numbered(buffer: EventBuffer, numbers: Iterable[int]) -> AppendResult:
    """Append one group of numbered events."""
    return await buffer.append([record(n) for n in numbers])


# -- append and read -----------------------------------------------------------
