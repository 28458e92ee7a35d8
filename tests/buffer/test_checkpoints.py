"""WAL checkpoints run beside the writer, not inside its COMMIT."""

from __future__ import annotations

from pathlib import Path

from forwarder.buffer.checkpoints import CHECKPOINT_BYTES
from forwarder.buffer.store import EventBuffer, EventRecord
from tests.buffer.stores import OpenBuffer
from tests.support import wait_for

PAD = "x" * 4000


def big(n: int) -> EventRecord:
    """An event of about 4 KB."""
    body = f'{{"n": {n}, "pad": "{PAD}"}}'.encode()
    return EventRecord(f"generated-{n}", "test.event", body, False)


async def test_the_writer_leaves_checkpoints_to_the_checkpointer(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """WAL pages reach the database file once the WAL has grown by CHECKPOINT_BYTES, well
    before SQLite's automatic point (16 MB here): a passive checkpoint ran beside the writer."""
    path = tmp_path / "buffer.db"
    buffer: EventBuffer = await open_buffer(path=path)
    database_before = path.stat().st_size
    written = 0
    n = 0
    while written < CHECKPOINT_BYTES * 3 // 2:
        records = [big(n + i) for i in range(100)]
        n += 100
        await buffer.append(records)
        written += sum(len(record.body) for record in records)
    await wait_for(
        lambda: path.stat().st_size > database_before + CHECKPOINT_BYTES // 2,
        message="the database file growing by a checkpoint",
    )
    assert len(await buffer.read_after("f", 0, 10_000)) == n
