"""Shared by the ingest tests: the real ingest app on a real buffer, and body helpers.

``make_ingest`` builds :func:`build_ingest_app` on a real :class:`EventBuffer`
(a SQLite file in ``tmp_path``) with a fresh ``CollectorRegistry`` and serves
it with the ``aiohttp_client`` fixture; :class:`Ingest` posts to it and reads
what was stored back from the SQLite file on a separate connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from forwarder.buffer.store import EventBuffer
from forwarder.config.settings import IngestConfig
from forwarder.ingest.api import IngestContext, build_ingest_app
from forwarder.metrics import Metrics
from tests.support import stored_events

JSON = "application/json"
NDJSON = "application/x-ndjson"
TOKEN = "s3cret-ingest-token"
GOOD_EVENT = b'{"event_type": "probe", "n": 1}'
# Small limits so the size tests send kilobytes, not megabytes.
SMALL_LIMITS: dict[str, Any] = {"max_request_bytes": 4096, "max_event_bytes": 1024}

Row = tuple[int, str, str | None, bytes]
Body = bytes | str | AsyncIterator[bytes]


@dataclass
class Answer:
    """What the ingest API answered."""

    status: int
    payload: Any
    headers: Mapping[str, str]


@dataclass
class Ingest:
    """One ingest app under test: its client, shared context and metrics registry."""

    client: TestClient[web.Request, web.Application]
    context: IngestContext
    registry: CollectorRegistry

    @property
    def buffer(self) -> EventBuffer:
        """The real buffer the app stores into."""
        return self.context.buffer

    async def post(
        self,
        body: Body,
        content_type: str | None = JSON,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST ``body`` to ``/v1/events``; ``content_type=None`` sends no Content-Type."""
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        skip = ["Content-Type"] if content_type is None else []
        data = body.encode() if isinstance(body, str) else body
        async with self.client.post(
            "/v1/events", data=data, headers=sent, skip_auto_headers=skip
        ) as response:
            payload = await response.json(content_type=None)
            return Answer(response.status, payload, response.headers)

    def rows(self) -> list[Row]:
        """Every stored event, read from the SQLite file on its own connection."""
        return [(e.seq, e.event_id, e.event_type, e.body) for e in stored_events(self.buffer.path)]

    def bodies(self) -> list[bytes]:
        """The stored bodies in ingest order."""
        return [bytes(row[3]) for row in self.rows()]

    def rejected(self, reason: str) -> float:
        """``audit_forwarder_events_rejected_total{reason=...}`` (0 when never counted)."""
        value = self.registry.get_sample_value(
            "audit_forwarder_events_rejected_total", {"reason": reason}
        )
        return value or 0.0

    def received(self) -> float:
        """``audit_forwarder_events_received_total{transport="http"}``."""
        value = self.registry.get_sample_value(
            "audit_forwarder_events_received_total", {"transport": "http"}
        )
        return value or 0.0

    async def assert_still_accepting(self) -> None:
        """A good request after whatever came before is answered 202 and stored."""
        before = len(self.rows())
        answer = await self.post(GOOD_EVENT)
        assert (answer.status, answer.payload) == (202, {"accepted": 1, "duplicates": 0})
        assert len(self.rows()) == before + 1


MakeIngest = Callable[..., Awaitable[Ingest]]


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """A real SQLite buffer in ``tmp_path`` with one forwarder; closed at teardown."""
    event_buffer = EventBuffer(tmp_path / "buffer.db")
    await event_buffer.open(["f"])
    yield event_buffer
    await event_buffer.close()


@pytest.fixture
def make_ingest(buffer: EventBuffer, aiohttp_client: AiohttpClient) -> MakeIngest:
    """Build the ingest app on ``buffer`` with ``IngestConfig(**config)`` and a test client."""

    async def make(**config: Any) -> Ingest:
        registry = CollectorRegistry()
        context = IngestContext(buffer, IngestConfig(**config), Metrics(registry))
        client = await aiohttp_client(build_ingest_app(context, "http"))
        return Ingest(client, context, registry)

    return make


@pytest.fixture
async def ingest(make_ingest: MakeIngest) -> Ingest:
    """The ingest app with the default configuration (no token, default limits)."""
    return await make_ingest()


def event_of_size(size: int, **fields: Any) -> bytes:
    """A compact JSON object of exactly ``size`` bytes, padded by a ``pad`` string."""
    bare = orjson.dumps({**fields, "pad": ""})
    assert size >= len(bare)
    return orjson.dumps({**fields, "pad": "x" * (size - len(bare))})


async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    """``body`` as an async stream: aiohttp sends it chunked, without Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]
