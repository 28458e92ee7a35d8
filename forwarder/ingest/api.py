"""The ingest API: ``POST /v1/events`` on loopback TCP and/or a Unix socket.

A request is parsed completely before anything is stored, so it is
all-or-nothing: one bad event refuses the whole request and stores none of
it. Each event is kept as exactly the bytes the client sent for it, in every
body shape (see :mod:`forwarder.ingest.bodies`), so delivery can build
request bodies by joining stored bytes. CloudEvents bodies, what a node
agent relays to a central forwarder, carry each event's id beside its bytes
(see :mod:`forwarder.ingest.cloudevents`). A compressed body is decoded here,
not by aiohttp (see :mod:`forwarder.ingest.encodings`). The answer ``202`` is
sent only after the buffer's group commit holding the events has completed.

Every error answer is JSON, ``{"error": <reason>, "message": <text>}``, where
``reason`` is the label counted in ``audit_forwarder_events_rejected_total``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from forwarder.buffer.store import EventBuffer
from forwarder.config.settings import IngestConfig
from forwarder.errors import BufferUnavailableError, IngestError
from forwarder.ingest.bodies import parse_json, parse_ndjson
from forwarder.ingest.cloudevents import (
    CLOUDEVENT_TYPES,
    CLOUDEVENTS_BATCH_TYPES,
    parse_cloudevent,
    parse_cloudevents_batch,
)
from forwarder.ingest.encodings import content_coding, read_body
from forwarder.logs import get_logger
from forwarder.metrics import Metrics

log = get_logger("ingest")

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


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
    except ConnectionResetError as exc:
        # The client hung up mid-request: nothing was stored, nobody to answer,
        # and not our error. No traceback: it could quote the request's bytes.
        log.info("ingest_client_disconnected", path=request.path, error=type(exc).__name__)
        return error_response(
            400, "malformed", "the connection closed before the body was complete"
        )
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
        elif content_type in CLOUDEVENTS_BATCH_TYPES:
            parse = parse_cloudevents_batch
        elif content_type in CLOUDEVENT_TYPES:
            parse = parse_cloudevent
        else:
            raise IngestError(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type!r} is not supported: use application/json,"
                " application/x-ndjson or application/cloudevents(-batch)+json",
            )
        coding = content_coding(request)
        if context.buffer.is_full(context.max_buffer_bytes):
            raise BufferUnavailableError(
                "buffer_full", "the buffer has reached buffer.maxBytes", retry_after_seconds=5
            )
        body = await read_body(request, context.config.max_request_bytes, coding)
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
    # A duplicate is answered 202 but not stored again: it is not "received".
    transport = request.app[TRANSPORT_KEY]
    context.metrics.events_received.labels(transport).inc(result.accepted - result.duplicates)
    if result.duplicates:
        context.metrics.events_duplicate.labels(transport).inc(result.duplicates)
    # Built by hand, not web.json_response: this is the per-request hot path.
    return web.Response(
        body=b'{"accepted":%d,"duplicates":%d}' % (result.accepted, result.duplicates),
        status=202,
        content_type="application/json",
        charset="utf-8",
    )


def build_ingest_app(context: IngestContext, transport: str) -> web.Application:
    """The aiohttp application of one ingest listener (``http`` or ``unix``)."""
    # Compressed bodies are decoded by the handler, under our limits and errors.
    app = web.Application(middlewares=[json_errors], handler_args={"auto_decompress": False})
    app[CONTEXT_KEY] = context
    app[TRANSPORT_KEY] = transport
    app.router.add_post("/v1/events", post_events)
    return app
