"""The ingest API: ``POST /v1/events`` on loopback TCP and/or a Unix socket.

A request is parsed completely before anything is stored, so it is
all-or-nothing: one bad event refuses the whole request and stores none of
it. Each event is kept as the bytes the client sent (a single JSON object or
an NDJSON line, trimmed of surrounding whitespace) and only re-serialised when
it arrived inside a JSON array, so delivery can build request bodies by
joining stored bytes. The answer ``202`` is sent only after the buffer's
group commit holding the events has completed.

Every error answer is JSON, ``{"error": <reason>, "message": <text>}``, where
``reason`` is the label counted in ``audit_forwarder_events_rejected_total``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.config.settings import IngestConfig
from forwarder.errors import BufferUnavailableError, IngestError
from forwarder.logs import get_logger
from forwarder.metrics import Metrics

log = get_logger("ingest")

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
MAX_ID_LENGTH = 256
READ_CHUNK_BYTES = 256 * 1024


@dataclass
class IngestContext:
    """What the ingest handlers share: the buffer, limits, metrics, readiness."""

    buffer: EventBuffer
    config: IngestConfig
    metrics: Metrics
    max_buffer_bytes: int | None = None
    accepting: bool = True


CONTEXT_KEY = web.AppKey("ingest_context", IngestContext)
TRANSPORT_KEY = web.AppKey("transport", str)


def error_response(status: int, reason: str, message: str, **headers: str) -> web.Response:
    """A JSON error answer."""
    return web.json_response(
        {"error": reason, "message": message}, status=status, headers=headers or None
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer aiohttp's own HTTP errors (404, 405, 413) as JSON like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, reason, exc.reason, **headers)
    except Exception as exc:
        # A bug must cost one request a 500, never the listener; the log says which.
        log.error("handler_failed", path=request.path, error=type(exc).__name__, exc_info=exc)
        return error_response(500, "internal_error", "the request could not be processed")


def check_token(request: web.Request, expected: str | None) -> None:
    """Raise 401 unless the request carries ``Authorization: Bearer <expected>``."""
    if expected is None:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # aiohttp decodes header bytes with surrogateescape: encoding back the same
    # way gives the bytes sent, so non-UTF-8 garbage is a wrong token, not a 500.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(errors="surrogateescape"), expected.encode()
    ):
        raise IngestError(401, "unauthorized", "missing or wrong ingest token")


def _event_record(event: Any, raw: bytes | None, where: str, max_event_bytes: int) -> EventRecord:
    if not isinstance(event, dict):
        raise IngestError(400, "malformed", f"{where}an event must be a JSON object")
    if raw is not None:
        body = raw
    else:
        # orjson parses 1024 levels deep but serialises only 254: an array
        # element nested between the two must be refused, not crash the handler.
        try:
            body = orjson.dumps(event)
        except orjson.JSONEncodeError:
            raise IngestError(400, "malformed", f"{where}event is nested too deeply") from None
    if len(body) > max_event_bytes:
        raise IngestError(
            413, "too_large", f"{where}event of {len(body)} bytes exceeds {max_event_bytes}"
        )
    event_id = event.get("id")
    if event_id is None:
        return EventRecord(None, _event_type(event), body, False)
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH:
        raise IngestError(
            400, "malformed", f"{where}id must be a non-empty string of at most 256 characters"
        )
    return EventRecord(event_id, _event_type(event), body, True)


def _event_type(event: dict[str, Any]) -> str | None:
    """``event_type``, else ``type``, when it is a string (no loop: called per event)."""
    value = event.get("event_type")
    if type(value) is str:
        return value
    value = event.get("type")
    return value if type(value) is str else None


def parse_json(body: bytes, max_event_bytes: int) -> list[EventRecord]:
    """Parse an ``application/json`` body: one object or an array of objects."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, "malformed", f"malformed JSON: {exc}") from None
    if isinstance(document, list):
        return [
            _event_record(event, None, f"event {index}: ", max_event_bytes)
            for index, event in enumerate(document)
        ]
    return [_event_record(document, body.strip(), "", max_event_bytes)]


def parse_ndjson(body: bytes, max_event_bytes: int) -> list[EventRecord]:
    """Parse an ``application/x-ndjson`` body: one object per line, blank lines skipped.

    The common line (an object without ``id``, within the size limit) takes a
    short path: at a thousand lines per request, per-line overhead is a large
    share of ingest's CPU. Every other line goes through the same checks as
    the other formats.
    """
    records: list[EventRecord] = []
    append = records.append
    loads = orjson.loads
    for number, line in enumerate(body.split(b"\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            event = loads(line)
        except orjson.JSONDecodeError as exc:
            raise IngestError(400, "malformed", f"line {number}: malformed JSON: {exc}") from None
        if type(event) is not dict or "id" in event or len(line) > max_event_bytes:
            append(_event_record(event, line, f"line {number}: ", max_event_bytes))
            continue
        append(EventRecord(None, _event_type(event), line, False))
    return records


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing anything over ``limit`` bytes without reading it all.

    Read as a stream against the limit of the moment (not aiohttp's
    ``client_max_size``, fixed when the app is built) so that a configuration
    reload can change ``maxRequestBytes`` on a running listener.
    """
    if request.content_length is not None and request.content_length > limit:
        raise IngestError(413, "too_large", f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise IngestError(413, "too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def post_events(request: web.Request) -> web.Response:
    """``POST /v1/events``: validate, store durably, then answer 202."""
    context = request.app[CONTEXT_KEY]
    rejected = context.metrics.events_rejected
    try:
        if not context.accepting:
            raise BufferUnavailableError("shutting_down", "the forwarder is shutting down")
        token = context.config.token
        check_token(request, token.get_secret_value() if token is not None else None)
        content_type = request.content_type
        if content_type in JSON_TYPES:
            parse = parse_json
        elif content_type in NDJSON_TYPES:
            parse = parse_ndjson
        else:
            raise IngestError(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type!r} is not supported: "
                "use application/json or application/x-ndjson",
            )
        if context.buffer.is_full(context.max_buffer_bytes):
            raise BufferUnavailableError(
                "buffer_full", "the buffer has reached buffer.maxBytes", retry_after_seconds=5
            )
        body = await read_body(request, context.config.max_request_bytes)
        records = parse(body, context.config.max_event_bytes)
        if not records:
            raise IngestError(400, "malformed", "the request holds no events")
        result = await context.buffer.append(records)
    except IngestError as exc:
        rejected.labels(reason=exc.reason).inc()
        return error_response(exc.status, exc.reason, exc.message)
    except BufferUnavailableError as exc:
        rejected.labels(reason=exc.reason).inc()
        return error_response(
            503, exc.reason, exc.message, **{"Retry-After": str(exc.retry_after_seconds)}
        )
    context.metrics.events_received.labels(transport=request.app[TRANSPORT_KEY]).inc(
        result.accepted
    )
    # Built by hand, not web.json_response: this is the per-request hot path.
    return web.Response(
        body=b'{"accepted":%d,"duplicates":%d}' % (result.accepted, result.duplicates),
        status=202,
        content_type="application/json",
        charset="utf-8",
    )


def build_ingest_app(context: IngestContext, transport: str) -> web.Application:
    """The aiohttp application of one ingest listener (``http`` or ``unix``)."""
    app = web.Application(middlewares=[json_errors])
    app[CONTEXT_KEY] = context
    app[TRANSPORT_KEY] = transport
    app.router.add_post("/v1/events", post_events)
    return app
