"""The admin API, served on the ingest listeners: forwarder status, history, test button.

It shares the ingest listeners (and the ingest token) so that a sidecar or a
CLI on the same host reaches it without another port, but it answers only
requests that come over the Unix socket or from a loopback address: an
ingest listener bound to ``0.0.0.0`` for remote producers does not expose
delivery history or the test button to the network.

Loopback is not enough on its own: a web browser on the same host is a
loopback client too, and any page it opens can aim requests at
``127.0.0.1``. Two attacks follow, and each has its own guard, checked
before the handler runs:

* Cross-site requests. A page can send a "simple" request (a ``text/plain``
  or form POST) to another origin without asking first; it cannot read the
  answer, but the purge or replay has happened. Every admin call that
  changes state therefore needs ``Content-Type: application/json`` (415
  otherwise): a browser sends that cross-origin only after a CORS preflight,
  and we never answer one positively. Requests that say they come from a
  page of another origin (an ``Origin`` other than this listener's own, as
  the client addressed it, or ``Sec-Fetch-Site: cross-site``/``same-site``)
  are refused outright (403), reads included.
* DNS rebinding. A page on ``evil.example`` re-points its own name at
  127.0.0.1; the browser then treats our answers as same-origin and lets the
  page read them. The request still says ``Host: evil.example``, so the
  admin API answers only ``Host`` values that name loopback (``localhost``,
  127.0.0.0/8, ``[::1]``, any port) — 403 otherwise. A browser cannot reach
  a Unix socket and HTTP clients on one often send no ``Host``, so there a
  missing ``Host`` is accepted too (the CLI sends ``localhost``).

The ingest route ``POST /v1/events`` has none of these checks: remote
producers address it by whatever name the host has, and it only adds events.

The test button sends a synthetic ``forwarder.test`` event straight to the
receiver with the forwarder's real request builder and HTTP session — outside
the buffer, the metrics and the history — and returns the whole invocation
with secrets masked, like the "View invocation data" panel of the products
our users compare us with. The workers live in the delivery process; the
handlers reach them through the ``Forwarders`` interface.

Answers are uniform, for scripts: every time is RFC 3339 UTC with milliseconds
(``2026-11-29T23:10:00.123Z``); every ``status`` an integer HTTP status (null
without an HTTP answer) beside ``code``, the attempt's label (``"timeout"``);
an unknown forwarder is a 404 listing ``known_forwarders``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web

from forwarder.buffer import dead_letters
from forwarder.buffer.encryption import EncryptionError
from forwarder.buffer.history import response_text, unpack_event_ids
from forwarder.buffer.store import EventBuffer
from forwarder.delivery.forwarders import Forwarders, UnknownForwarderError
from forwarder.destinations.webhook.formats import rfc3339
from forwarder.errors import IngestError
from forwarder.ingest.api import check_token
from forwarder.logs import get_logger
from forwarder.secrets import masker

log = get_logger("admin")

MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 20
MAX_SELECTION_BYTES = 64 * 1024
MAX_SELECTED_IDS = 500
# Methods that change nothing: every other method must carry a JSON body type.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values a browser sends for requests its user, not another site, made.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
# Longest Host/Origin value copied into a log line; they are attacker-chosen text.
MAX_LOGGED_HEADER = 200


@dataclass
class AdminContext:
    """What the admin handlers need: the forwarders, the buffer, the ingest token."""

    forwarders: Forwarders
    buffer: EventBuffer
    token: Callable[[], str | None]


ADMIN_KEY = web.AppKey("admin_context", AdminContext)


class UnknownForwarderRefusal(IngestError):
    """404 ``unknown_forwarder``; ``known`` are the names the caller could have meant."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(404, "unknown_forwarder", f"no forwarder named {name!r}")
        self.known = known


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(error: IngestError) -> web.Response:
    payload: dict[str, Any] = {"error": error.reason, "message": error.message}
    if isinstance(error, UnknownForwarderRefusal):
        payload["known_forwarders"] = error.known
    return _json(payload, error.status)


def _time(timestamp: float | None) -> str | None:
    return None if timestamp is None else rfc3339(timestamp)


def _is_local(request: web.Request, transport: str) -> bool:
    if transport == "unix":
        return True
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def is_loopback_host(authority: str) -> bool:
    """Whether a ``Host`` value (``name[:port]``) names this machine's loopback interface.

    ``localhost`` (any case), an IPv4 address in 127.0.0.0/8 or ``[::1]``,
    each with or without a numeric port. Anything else — another name, a
    name that merely starts with ``127.0.0.1``, an unbracketed IPv6 address,
    a malformed port — is not.
    """
    if authority.startswith("["):
        name, bracket, port = authority[1:].partition("]")
        if not bracket:
            return False
    else:
        name, colon, number = authority.partition(":")
        port = colon + number
    if port and not (port[0] == ":" and port[1:].isascii() and port[1:].isdigit()):
        return False
    if name.lower() == "localhost" and not authority.startswith("["):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # A bracket holds an IPv6 address and only an IPv6 address, as in a URL.
    return address.is_loopback and (address.version == 6) == authority.startswith("[")


def _check_host(request: web.Request, transport: str) -> None:
    hosts = request.headers.getall(hdrs.HOST, [])
    if not hosts and transport == "unix":
        return
    if len(hosts) != 1 or not is_loopback_host(hosts[0]):
        raise IngestError(
            403,
            "forbidden",
            "the admin API answers only requests addressed to localhost, 127.0.0.1 or [::1]",
        )


def _check_not_from_a_web_page(request: web.Request) -> None:
    origins = request.headers.getall(hdrs.ORIGIN, [])
    host = request.headers.get(hdrs.HOST)
    # The only origin allowed is the listener's own, as the client addressed it
    # (Host is already known to be loopback); no page is served from there.
    if origins and (
        len(origins) != 1 or host is None or origins[0].lower() != f"http://{host}".lower()
    ):
        raise IngestError(403, "forbidden", "the admin API refuses requests from web pages")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in OWN_FETCH_SITES:
        raise IngestError(403, "forbidden", "the admin API refuses requests from web pages")


def _check_json_body(request: web.Request) -> None:
    # A missing Content-Type reads as application/octet-stream: refused too.
    if request.method not in SAFE_METHODS and request.content_type != "application/json":
        raise IngestError(
            415, "unsupported_media_type", "admin calls that change state need application/json"
        )


def _authorise(request: web.Request, transport: str, context: AdminContext) -> None:
    """Refuse the request unless it comes from this host, not from a web page.

    The token is checked before the body type so that a caller without the
    token learns only that it needs one.
    """
    if not _is_local(request, transport):
        raise IngestError(403, "forbidden", "the admin API answers loopback and Unix socket only")
    _check_host(request, transport)
    _check_not_from_a_web_page(request)
    check_token(request, context.token())
    _check_json_body(request)


def _log_refusal(request: web.Request, error: IngestError) -> None:
    # Host and Origin say which site a browser-borne attempt came from.
    log.warning(
        "admin_request_refused",
        status=error.status,
        reason=error.reason,
        method=request.method,
        path=request.path[:MAX_LOGGED_HEADER],
        host=request.headers.get(hdrs.HOST, "")[:MAX_LOGGED_HEADER],
        origin=request.headers.get(hdrs.ORIGIN, "")[:MAX_LOGGED_HEADER],
    )


def _forwarder_name(request: web.Request, context: AdminContext) -> str:
    name = request.match_info["name"]
    known = context.forwarders.names()
    if name not in known:
        raise UnknownForwarderRefusal(name, known)
    return name


async def _dead_letter_forwarder(context: AdminContext, name: str | None) -> None:
    """Refuse a forwarder that is neither configured nor holding dead letters.

    A forwarder removed from the configuration keeps its dead letters until
    they are purged, so its name still selects them.
    """
    known = context.forwarders.names()
    if name is None or name in known:
        return
    if await context.buffer.query(
        "SELECT 1 FROM dead_letters WHERE forwarder = ? LIMIT 1", (name,)
    ):
        return
    rows = await context.buffer.query("SELECT DISTINCT forwarder FROM dead_letters")
    raise UnknownForwarderRefusal(name, known + sorted({r[0] for r in rows} - set(known)))


async def list_forwarders(request: web.Request, context: AdminContext) -> web.Response:
    """``GET /v1/forwarders``: the live state of every forwarder."""
    dead = dict(
        await context.buffer.query("SELECT forwarder, count(*) FROM dead_letters GROUP BY 1")
    )
    forwarders = await context.forwarders.statuses()
    for forwarder in forwarders:
        forwarder["dead_letters"] = int(dead.get(forwarder["name"], 0))
        # The workers report the last attempt's label ("503", "timeout") as its
        # status; shown as deliveries are: an integer status, and the label.
        attempt = forwarder["last_attempt"]
        label = attempt.get("status")
        attempt["status"] = int(label) if isinstance(label, str) and label.isdigit() else None
        attempt["code"] = label
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
    name = _forwarder_name(request, context)
    rows = await context.buffer.query(
        "SELECT attempted_at, attempt, events, event_ids, outcome, code, status, duration_ms,"
        " error, response_body FROM delivery_attempts WHERE forwarder = ?"
        " ORDER BY id DESC LIMIT ?",
        (name, _limit(request)),
    )
    deliveries = [
        {
            "at": _time(at),
            "attempt": attempt,
            "events": events,
            "event_ids": unpack_event_ids(event_ids),
            "outcome": outcome,
            "code": code,
            "status": status,
            "duration_ms": duration_ms,
            # Rows are masked before they are stored; masking again on the way
            # out also covers rows written by a build that did not, and a
            # secret that was added to the configuration later.
            "error": masker.mask(error) if error else error,
            "response_body": masker.mask(
                response_text(context.buffer.keyring, name, at, attempt, body)
            ),
        }
        for at, attempt, events, event_ids, outcome, code, status, duration_ms, error, body in rows
    ]
    return _json({"forwarder": name, "deliveries": deliveries})


async def test_forwarder(request: web.Request, context: AdminContext) -> web.Response:
    """``POST /v1/forwarders/{name}/test``: send a test event, return the invocation."""
    name = _forwarder_name(request, context)
    try:
        return _json(await context.forwarders.test(name))
    except UnknownForwarderError:
        # Removed by a reload while the request was on its way.
        raise UnknownForwarderRefusal(name, context.forwarders.names()) from None


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
    forwarder = request.query.get("forwarder")
    await _dead_letter_forwarder(context, forwarder)
    payload = await dead_letters.list_dead_letters(context.buffer, forwarder, limit)
    for letter in payload["dead_letters"]:
        # As for deliveries: what the receiver said may echo a credential.
        for key in ("reason", "response_body"):
            if letter[key]:
                letter[key] = masker.mask(letter[key])
        letter["received_at"] = _time(letter["received_at"])
        letter["dead_at"] = _time(letter["dead_at"])
    return _json(payload)


async def replay_dead_letters(request: web.Request, context: AdminContext) -> web.Response:
    """``POST /v1/dead-letters/replay``: back into the forwarder's queue."""
    forwarder, ids, _ = await _selection(request)
    known = context.forwarders.names()
    if forwarder is not None and forwarder not in known:
        # No replay to a removed forwarder: there is no queue to put them in.
        raise UnknownForwarderRefusal(forwarder, known)
    try:
        result = await dead_letters.replay(context.buffer, set(known), forwarder, ids)
    except EncryptionError as exc:
        # A dead letter under a removed key (or one that does not open) is never skipped.
        raise IngestError(409, "not_readable", str(exc)) from None
    log.info("dead_letters_replayed", forwarder=forwarder, **result)
    return _json(result)


async def purge_dead_letters(request: web.Request, context: AdminContext) -> web.Response:
    """``POST /v1/dead-letters/purge``: delete; needs a forwarder, ids, or ``all: true``."""
    forwarder, ids, everything = await _selection(request)
    if forwarder is None and not ids and not everything:
        raise IngestError(400, "malformed", 'say which: "forwarder", "ids", or "all": true')
    await _dead_letter_forwarder(context, forwarder)
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
            except IngestError as exc:
                _log_refusal(request, exc)
                return _error(exc)
            try:
                response: web.StreamResponse = await handler(request, context)
            except IngestError as exc:
                return _error(exc)
            return response

        return wrapped

    app[ADMIN_KEY] = context
    app.router.add_get("/v1/forwarders", guarded(list_forwarders))
    app.router.add_get("/v1/forwarders/{name}/deliveries", guarded(list_deliveries))
    app.router.add_post("/v1/forwarders/{name}/test", guarded(test_forwarder))
    app.router.add_get("/v1/dead-letters", guarded(get_dead_letters))
    app.router.add_post("/v1/dead-letters/replay", guarded(replay_dead_letters))
    app.router.add_post("/v1/dead-letters/purge", guarded(purge_dead_letters))
