"""Property: every event reaches a real receiver as exactly the bytes it was ingested as.

Hypothesis generates events (nested objects and arrays, text with any
Unicode, escapes, integers far beyond 64 bits, floats, numbers in every form
JSON allows), writes each in its own style (compact or spaced, ``\\u``
escapes or UTF-8, ``\\/`` or ``/``) and posts them in one of the three body
shapes (a single object, a JSON array, NDJSON), plain or gzip-compressed,
over TCP or the Unix socket, to the real ``audit-forwarder`` process. The
receiver, a real aiohttp server, must get each event's bytes unchanged: the
forwarder's ``json`` format with one event per request sends the stored
bytes as the whole request body.

One daemon and one receiver serve every example of the test (starting a
process per example would take minutes), which is why the function-scoped
fixture health check is suppressed: sharing them is the point.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ReceiverFactory
from tests.ingest.json_text import events, styles, write
from tests.support import (
    DaemonProcess,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]


@dataclass(frozen=True)
class Request:
    """One generated request and the bytes each of its events must arrive as."""

    events: list[bytes]
    body: bytes
    content_type: str
    gzipped: bool
    over_unix_socket: bool


event_ids = itertools.count()


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """An ingest request in one of the three body shapes, plain or gzipped."""
    shape = draw(st.sampled_from(["single", "array", "ndjson"]))
    count = 1 if shape == "single" else draw(st.integers(min_value=1, max_value=4))
    written: list[bytes] = []
    for _ in range(count):
        event = draw(events)
        if draw(st.booleans()):
            event = {"id": f"exact-{next(event_ids)}", **event}
        written.append(write(event, draw(styles(one_line=shape == "ndjson"))).encode())
    space = st.sampled_from([b"", b" ", b"\r\n", b"\t\n "])
    if shape == "single":
        body = draw(space) + written[0] + draw(space)
    elif shape == "array":
        separator = draw(space) + b"," + draw(space)
        body = draw(space) + b"[" + draw(space) + separator.join(written) + draw(space) + b"]"
    else:
        line_end = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b" \r\n \n"]))
        body = line_end.join(written) + draw(st.sampled_from([b"", b"\n"]))
    content_type = "application/x-ndjson" if shape == "ndjson" else "application/json"
    gzipped = draw(st.booleans())
    return Request(
        events=written,
        body=gzip.compress(body) if gzipped else body,
        content_type=content_type,
        gzipped=gzipped,
        over_unix_socket=draw(st.booleans()),
    )


@dataclass
class Pipeline:
    """The real daemon and the real receiver its one forwarder delivers to."""

    daemon: DaemonProcess
    receiver: ScriptedReceiver


@pytest.fixture
async def pipeline(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> AsyncIterator[Pipeline]:
    """One daemon (default json format, one event per request) and its receiver."""
    receiver = await make_receiver()
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config).start()
    yield Pipeline(daemon, receiver)
    assert await daemon.terminate() == 0


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
async def test_every_event_arrives_as_the_bytes_ingested(
    pipeline: Pipeline, request: Request
) -> None:
    """Any event, in any body shape, encoding or transport, reaches the receiver byte for byte."""
    daemon, receiver = pipeline.daemon, pipeline.receiver
    delivered_before = len(receiver.delivered)
    status, payload, _ = await post_events(
        "" if request.over_unix_socket else daemon.ingest_url,
        request.body,
        request.content_type,
        socket_path=daemon.socket_path if request.over_unix_socket else None,
        headers={"Content-Encoding": "gzip"} if request.gzipped else None,
    )
    assert (status, payload) == (202, {"accepted": len(request.events), "duplicates": 0})

    expected = delivered_before + len(request.events)
    await wait_for(lambda: len(receiver.delivered) >= expected, message="the events delivered")
    assert [sent.body for sent in receiver.delivered[delivered_before:]] == request.events
