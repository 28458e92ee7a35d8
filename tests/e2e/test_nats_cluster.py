"""End to end: a three-node JetStream cluster on loopback, its stream leader killed mid-stream.

The stream is replicated on all three nodes (R3). Killing its leader with
SIGKILL forces an election; publishes in flight then time out or find no
responders, which the forwarder retries, and the duplicate window (itself
replicated) drops what had been stored before the PubAck was lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from tests.nats_support import (
    NatsServer,
    client,
    create_stream,
    nats_forwarder,
    needs_nats_server,
    start_cluster,
    stream_count,
    stream_messages,
)
from tests.support import DaemonProcess, daemon_config, post_events, wait_for

pytestmark = needs_nats_server
MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """The cluster's servers, killed at teardown."""
    servers: list[NatsServer] = []
    yield servers
    for server in servers:
        server.stop()


async def stream_leader(urls: list[str]) -> str | None:
    """The name of the AUDIT stream's leader, None while there is none."""
    try:
        async with client(*urls) as connection:
            info = await connection.jetstream(timeout=5).stream_info("AUDIT")
    except (nats.errors.Error, OSError):
        return None
    return info.cluster.leader if info.cluster is not None else None


@pytest.mark.timeout(120)
async def test_killing_the_stream_leader_loses_nothing_acknowledged_and_delivery_goes_on(
    tmp_path: Path, cluster: list[NatsServer], daemons: MakeDaemon
) -> None:
    """kill -9 of the R3 stream's leader mid-stream: every event once, in order, after election."""
    cluster += await start_cluster(tmp_path)
    urls = [server.url for server in cluster]
    await create_stream(urls, num_replicas=3)
    leader_name = await wait_for(lambda: stream_leader(urls), timeout=30, message="a leader")
    forwarder = nats_forwarder(
        urls,
        stream="AUDIT",
        timeoutSeconds=1,
        batch={"maxEvents": 20, "maxWaitMs": 20},
        rateLimit={"eventsPerSecond": 300},
    )
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    total = 900
    lines = [
        json.dumps({"id": f"evt-{n:05d}", "event_type": "user.login", "n": n}) for n in range(total)
    ]
    for first in range(0, total, 100):
        body = "\n".join(lines[first : first + 100])
        status, _, _ = await post_events(daemon.ingest_url, body, "application/x-ndjson")
        assert status == 202  # acknowledged: must not be lost

    await wait_for(lambda: _at_least(urls, 150), timeout=30, message="150 messages")
    leader = next(server for server in cluster if server.name == leader_name)
    leader.kill()
    survivors = [server.url for server in cluster if server is not leader]
    assert await stream_count(survivors) < total  # the kill really happened mid-stream

    new_leader = await wait_for(
        lambda: stream_leader(survivors), timeout=40, message="a new leader"
    )
    assert new_leader != leader_name
    await wait_for(
        lambda: _at_least(survivors, total), timeout=60, message=f"{total} messages after election"
    )
    assert await daemon.terminate() == 0
    messages = await stream_messages(survivors)
    assert [m.msg_id for m in messages] == [f"evt-{n:05d}" for n in range(total)]
    assert [m.data for m in messages] == [line.encode() for line in lines]


async def _at_least(urls: list[str], count: int) -> bool:
    return await stream_count(urls) >= count
