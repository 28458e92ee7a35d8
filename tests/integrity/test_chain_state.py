"""The chain state kept with the cursor in a real buffer file: a restart resumes it exactly."""

from __future__ import annotations

from pathlib import Path

from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.chain import ChainedBuffer, ChainKeeper
from forwarder.destinations.options import IntegrityConfig
from forwarder.integrity.keys import generate
from forwarder.integrity.records import GENESIS
from tests.support import read_all

PRIVATE, _ = generate()
INTEGRITY = IntegrityConfig(mode="chain", signing_key=PRIVATE.decode(), checkpoint_every=4)


async def opened(path: Path) -> EventBuffer:
    buffer = EventBuffer(path)
    await buffer.open(["siem"])
    return buffer


async def test_a_restart_resumes_the_chain_at_the_committed_cursor(tmp_path: Path) -> None:
    """Acked through seq 5 of 10: after reopening, events 6..10 get the very same records."""
    path = tmp_path / "buffer.db"
    buffer = await opened(path)
    await buffer.append(
        [EventRecord(None, "t", f'{{"n": {n}}}'.encode(), False) for n in range(10)]
    )
    keeper = ChainKeeper("siem", INTEGRITY)
    chained = ChainedBuffer(buffer, keeper)
    await keeper.load(chained, buffer.cursor("siem"))
    events = await keeper.assign(chained, await read_all(buffer, "siem"))
    first_run = [event.chain for event in events]
    chained.ack("siem", 5)  # the cursor inside what was sent, as with relaxed ordering
    await buffer.execute([])  # the group commit the ack went into
    await buffer.close()

    buffer = await opened(path)
    assert buffer.cursor("siem") == 5
    keeper = ChainKeeper("siem", INTEGRITY)
    await keeper.load(buffer, 5)
    again = await keeper.assign(buffer, await read_all(buffer, "siem", after_seq=5))
    assert [event.chain for event in again] == first_run[5:]
    assert first_run[0] is not None
    assert first_run[0].prev == GENESIS
    assert first_run[3] is not None
    assert first_run[3].signature is not None  # checkpointEvery: 4
    rows = await buffer.query("SELECT at_seq FROM chain_states WHERE forwarder = 'siem'")
    assert rows == [(5,)]
    await buffer.close()
