"""The admin API, served on the ingest listeners: forwarder status, history, test button.

It shares the ingest listeners (and the ingest token) so that a sidecar or a
CLI on the same host reaches it without another port, but it answers only
requests that come over the Unix socket or from a loopback address: an
ingest listener bound to ``0.0.0.0`` for remote producers does not expose
delivery history or the test button to the network.

The test button sends a synthetic ``forwarder.test`` event straight to the
receiver with the forwarder's real request builder and HTTP session — outside
the buffer, the metrics and the history — and returns the whole invocation
with secrets masked, like the "View invocation data" panel of the products
our users compare us with.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from forwarder import dead_letters
from forwarder.buffer import EventBuffer, StoredEvent
from forwarder.delivery import DeliveryWorker
from forwarder.errors import DeliveryError, IngestError
from forwarder.ids import IdGenerator
from forwarder.ingest import check_token
from forwarder.logs import get_logger
from forwarder.sending import OutgoingRequest, send_request

log = get_logger("admin")

MAX_HISTORY_LIMIT = 1000
MAX_SELECTION_BYTES = 64 * 1024
MAX_SELECTED_IDS = 500
DEFAULT_HISTORY_LIMIT = 20
SECRET_HEADERS = frozenset({"authorization", "dd-api-key", "x-api-key", "x-splunk-token"})


@dataclass
class AdminContext:
    """What the admin handlers need: the live workers and the buffer."""

    workers: Callable[[], Mapping[str, DeliveryWorker]]
    buffer: EventBuffer
    ids: IdGenerator
    token: Callable[[], str | None]


ADMIN_KEY = web.AppKey("admin_context", AdminContext)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(status: int, reason: str, message: str) -> web.Response:
    return _json({"error": reason, "message": message}, status)


def _is_local(request: web.Request, transport: str) -> bool:
    if transport == "unix":
        return True
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _authorise(request: web.Request, transport: str, context: AdminContext) -> None:
    if not _is_local(request, transport):
        raise IngestError(403, "forbidden", "the admin API answers loopback and Unix socket only")
    check_token(request, context.token())


def _worker(request: web.Request, context: AdminContext) -> DeliveryWorker:
    name = request.match_info["name"]
    worker = context.workers().get(name)
    if worker is None:
        raise IngestError(404, "unknown_forwarder", f"no forwarder named {name!r}")
    return worker


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with secret values replaced: ``Bearer ***``, ``***``."""
    masked = {}
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS:
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} ***" if secret else "***"
        masked[name] = value
    return masked


async def list_forwarders(request: web.Request, context: AdminContext) -> web.Response:
    """``GET /v1/forwarders``: the live state of every forwarder."""
    dead = dict(
        await context.buffer.query("SELECT forwarder, count(*) FROM dead_letters GROUP BY 1")
    )
    forwarders = []
    for worker in context.workers().values():
        status = worker.status
        forwarders.append(
            {
                "name": worker.name,
                "kind": worker.spec.kind,
                "method": worker.spec.method,
                "host": worker.spec.host,
                "pending": status.pending,
                "oldest_pending_age_seconds": round(worker.oldest_pending_age(), 3),
                "last_attempt": {"at": _iso(status.last_attempt_at), "status": status.last_status},
                "last_success_at": _iso(status.last_success_at),
                "consecutive_failures": status.consecutive_failures,
                "dead_letters": int(dead.get(worker.name, 0)),
            }
        )
    return _json({"forwarders": forwarders})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_HISTORY_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise IngestError(
            400, "malformed", f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}"
        )
    return limit


async def list_deliveries(request: web.Request, context: AdminContext) -> web.Response:
    """``GET /v1/forwarders/{name}/deliveries?limit=N``: newest attempts first."""
    worker = _worker(request, context)
    rows = await context.buffer.query(
        "SELECT attempted_at, attempt, events, event_ids, outcome, code, status, duration_ms,"
        " error, response_body FROM delivery_attempts WHERE forwarder = ?"
        " ORDER BY id DESC LIMIT ?",
        (worker.name, _limit(request)),
    )
    deliveries = [
        {
            "at": _iso(at),
            "attempt": attempt,
            "events": events,
            "event_ids": orjson.loads(event_ids),
            "outcome": outcome,
            "code": code,
            "status": status,
            "duration_ms": duration_ms,
            "error": error,
            "response_body": bytes(body or b"").decode("utf-8", "replace"),
        }
        for at, attempt, events, event_ids, outcome, code, status, duration_ms, error, body in rows
    ]
    return _json({"forwarder": worker.name, "deliveries": deliveries})


def test_event(context: AdminContext, forwarder: str) -> StoredEvent:
    """A synthetic ``forwarder.test`` event, never stored."""
    event_id = context.ids.new()
    now = time.time()
    body = orjson.dumps(
        {
            "id": event_id,
            "event_type": "forwarder.test",
            "timestamp": _iso(now),
            "data": {"message": "test event from audit-forwarder", "forwarder": forwarder},
        }
    )
    return StoredEvent(0, event_id, "forwarder.test", now, None, body)


def describe_request(request: OutgoingRequest, display_url: str) -> dict[str, Any]:
    """The request as the admin API shows it, secrets masked (query token included)."""
    return {
        "method": request.method,
        "url": display_url,
        "headers": mask_headers(request.headers),
        "body": request.body.decode("utf-8", "replace"),
    }


async def test_forwarder(request: web.Request, context: AdminContext) -> web.Response:
    """``POST /v1/forwarders/{name}/test``: send a test event, return the invocation."""
    worker = _worker(request, context)
    outgoing = worker.requests.build([test_event(context, worker.name)], time.time()).request
    session = worker.session
    result: dict[str, Any] = {
        "forwarder": worker.name,
        "request": describe_request(outgoing, worker.requests.display_url),
    }
    if session is None:
        return _error(503, "shutting_down", "the forwarder is stopping")
    try:
        response = await send_request(
            session, outgoing, worker.spec.timeout_seconds, worker.spec.response_validators
        )
    except DeliveryError as exc:
        result["ok"] = False
        result["response"] = (
            {"status": exc.status, "body": exc.body.decode("utf-8", "replace")}
            if exc.status is not None
            else None
        )
        result["error"] = {"code": exc.code, "message": exc.message}
        return _json(result)
    result["ok"] = True
    result["response"] = {
        "status": response.status,
        "headers": response.headers,
        "body": response.body.decode("utf-8", "replace"),
        "duration_ms": round(response.duration * 1000, 3),
    }
    result["error"] = None
    return _json(result)


async def _selection(request: web.Request) -> tuple[str | None, list[str], bool]:
    """``{"forwarder": str?, "ids": [str]?, "all": bool?}`` from a JSON body (may be empty)."""
    raw = await request.read()
    if len(raw) > MAX_SELECTION_BYTES:
        raise IngestError(413, "too_large", "the selection is too large")
    try:
        document = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, "malformed", f"malformed JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) - {"forwarder", "ids", "all"}:
        raise IngestError(400, "malformed", 'expected {"forwarder": ..., "ids": [...], "all": ...}')
    forwarder, ids, everything = (
        document.get("forwarder"),
        document.get("ids", []),
        document.get("all", False),
    )
    if forwarder is not None and not isinstance(forwarder, str):
        raise IngestError(400, "malformed", "forwarder must be a string")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IngestError(400, "malformed", "ids must be a list of strings")
    if len(ids) > MAX_SELECTED_IDS:
        raise IngestError(400, "malformed", f"at most {MAX_SELECTED_IDS} ids per call")
    if not isinstance(everything, bool):
        raise IngestError(400, "malformed", "all must be true or false")
    return forwarder, ids, everything


async def get_dead_letters(request: web.Request, context: AdminContext) -> web.Response:
    """``GET /v1/dead-letters?forwarder=NAME&limit=N``: newest first, with the total."""
    limit = _limit(request)
    payload = await dead_letters.list_dead_letters(
        context.buffer, request.query.get("forwarder"), limit
    )
    return _json(payload)


async def replay_dead_letters(request: web.Request, context: AdminContext) -> web.Response:
    """``POST /v1/dead-letters/replay``: back into the forwarder's queue."""
    forwarder, ids, _ = await _selection(request)
    if forwarder is not None and forwarder not in context.workers():
        raise IngestError(404, "unknown_forwarder", f"no forwarder named {forwarder!r}")
    result = await dead_letters.replay(context.buffer, set(context.workers()), forwarder, ids)
    log.info("dead_letters_replayed", forwarder=forwarder, **result)
    return _json(result)


async def purge_dead_letters(request: web.Request, context: AdminContext) -> web.Response:
    """``POST /v1/dead-letters/purge``: delete; needs a forwarder, ids, or ``all: true``."""
    forwarder, ids, everything = await _selection(request)
    if forwarder is None and not ids and not everything:
        raise IngestError(400, "malformed", 'say which: "forwarder", "ids", or "all": true')
    purged = await dead_letters.purge(context.buffer, forwarder, ids)
    log.info("dead_letters_purged", forwarder=forwarder, purged=purged)
    return _json({"purged": purged})


def add_admin_routes(app: web.Application, context: AdminContext, transport: str) -> None:
    """Mount the admin API on an ingest application."""

    def guarded(
        handler: Callable[[web.Request, AdminContext], Any],
    ) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                _authorise(request, transport, context)
                response: web.StreamResponse = await handler(request, context)
            except IngestError as exc:
                return _error(exc.status, exc.reason, exc.message)
            return response

        return wrapped

    app[ADMIN_KEY] = context
    app.router.add_get("/v1/forwarders", guarded(list_forwarders))
    app.router.add_get("/v1/forwarders/{name}/deliveries", guarded(list_deliveries))
    app.router.add_post("/v1/forwarders/{name}/test", guarded(test_forwarder))
    app.router.add_get("/v1/dead-letters", guarded(get_dead_letters))
    app.router.add_post("/v1/dead-letters/replay", guarded(replay_dead_letters))
    app.router.add_post("/v1/dead-letters/purge", guarded(purge_dead_letters))
