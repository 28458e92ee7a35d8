"""``audit-forwarder render NAME``: the request a forwarder would send for an event, unsent.

For trying a template, a format or a filter before going live, as ``vector
test`` does for a pipeline: it says whether the forwarder's filter takes the
event, and shows the exact request — method, URL, headers, body — that the
forwarder would send for it.

Design decisions:

* It works from the configuration file alone, offline: no daemon, no
  buffer, no network. The event goes through the code the delivery worker
  runs — the ingest parser (so the body is the event's exact bytes, and what
  ingest would refuse is refused), the forwarder's :class:`EventFilter` and
  :class:`RequestBuilder` (format, auth, custom headers, signature, gzip) —
  so what is shown is what would be sent, not a re-implementation of it.
* The event comes from a file, from stdin (``-``), or is a built-in sample
  shaped like a real audit event (a type, a timestamp, nested data), so a
  template that reads ``data.requester.email`` shows a value.
* Secrets are masked as the test button masks them: the display URL (query
  token), credential headers (``Bearer ***``), and every configured secret in
  any encoding, anywhere in the output.
* A gzip body is shown decompressed, with a note giving its size on the
  wire: compressed bytes say nothing to a person.
* A filter that does not take the event does not stop the rendering: the
  request is still shown (marked as not sent), since checking the template
  is often the point.
"""

from __future__ import annotations

import dataclasses
import gzip
import sys
import time
from typing import Any

import orjson

from forwarder.buffer.store import StoredEvent
from forwarder.config.settings import Settings
from forwarder.delivery.filters import EventFilter
from forwarder.delivery.forwarders import describe_request
from forwarder.destinations.nats.destination import NatsDestination
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.destinations.webhook.formats import rfc3339
from forwarder.destinations.webhook.requests import RequestBuilder
from forwarder.errors import IngestError
from forwarder.ingest.bodies import parse_json, parse_ndjson
from forwarder.ingest.ids import IdGenerator
from forwarder.ops.client import guess_content_type
from forwarder.ops.commands import EXIT_USAGE, CommandError, unknown_forwarder
from forwarder.secrets import masker


def sample_event(now: float) -> bytes:
    """The built-in event: the shape of a real audit event, of a type filters often name."""
    return orjson.dumps(
        {
            "event_type": "approval.created",
            "timestamp": rfc3339(now),
            "data": {
                "request_id": "req_sample",
                "action": "Deploy v2.1.0 to production",
                "requester": {"email": "dev@example.com"},
            },
        }
    )


def read_event(path: str | None) -> tuple[bytes | None, str]:
    """The bytes of ``--event`` (a file, or ``-`` for stdin) and how to name them; None: none."""
    if path is None:
        return None, ""
    if path == "-":
        return sys.stdin.buffer.read(), "stdin"
    try:
        with open(path, "rb") as source:
            return source.read(), path
    except OSError as exc:
        raise CommandError(
            "cannot_read_input", f"cannot read {path}: {exc.strerror or exc}"
        ) from None


def parse_event(data: bytes, source: str, max_event_bytes: int) -> StoredEvent:
    """The one event in ``data`` as ingest would store it; CommandError (exit 2) if not one."""
    try:
        if guess_content_type(data) == "application/json":
            records = parse_json(data, max_event_bytes)
        else:
            records = parse_ndjson(data, max_event_bytes)
    except IngestError as exc:
        raise CommandError(
            "malformed_event", f"{source} is not an event: {exc.message}", EXIT_USAGE
        ) from None
    if len(records) != 1:
        raise CommandError(
            "malformed_event",
            f"{source} holds {len(records)} events: render takes one JSON object",
            EXIT_USAGE,
        )
    record = records[0]
    event_id = record.event_id or IdGenerator().new()
    return StoredEvent(0, event_id, record.event_type, time.time(), None, record.body)


def render(settings: Settings, name: str, data: bytes | None, source: str) -> dict[str, Any]:
    """What forwarder ``name`` would send for the event in ``data`` (None: the sample)."""
    specs = {str(spec.name): spec for spec in settings.audit_log_forwarders}
    spec = specs.get(name)
    if spec is None:
        raise unknown_forwarder(name, list(specs))
    now = time.time()
    if data is None:
        data, source = sample_event(now), "the built-in sample event"
    event = parse_event(data, source, settings.ingest.max_event_bytes)
    takes = EventFilter(spec.events, spec.exclude_events).accepts(event.event_type)
    notes = []
    if not spec.enabled:
        notes.append("the forwarder is disabled (enabled: false): it sends nothing")
    if not takes:
        notes.append(
            "its filter does not take this event (events / excludeEvents): nothing would be"
            " sent; below is what it would send if it did"
        )
    if isinstance(spec, NatsForwarderConfig):
        # The message as published: subject, headers and the event's exact bytes.
        destination = NatsDestination(spec)
        message = destination.describe(destination.build([event], now))
        shown = {"forwarder": name, "enabled": spec.enabled, "event_source": source}
        return dict(
            masker.mask_value(
                shown
                | {"event_id": event.event_id, "event_type": event.event_type}
                | {"takes_event": takes, "request": message, "content_encoding": None}
                | {"wire_bytes": len(event.body), "notes": notes}
            )
        )
    builder = RequestBuilder(spec)
    request = builder.build([event], now).request
    wire_bytes = len(request.body)
    encoding = request.headers.get("Content-Encoding")
    if encoding == "gzip":
        request = dataclasses.replace(request, body=gzip.decompress(request.body))
        notes.append(
            f"the body is shown decompressed: it is sent gzip-compressed, {wire_bytes} bytes"
        )
    if spec.auth.type == "oauth2":
        # The sender adds it with a token fetched from tokenUrl; render fetches nothing.
        headers = {**request.headers, "Authorization": "Bearer ***"}
        request = dataclasses.replace(request, headers=headers)
        notes.append("Authorization carries an access token fetched from auth.tokenUrl when sent")
    masker.update(settings.secrets())
    result = {
        "forwarder": name,
        "enabled": spec.enabled,
        "event_source": source,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "takes_event": takes,
        "request": describe_request(request, builder.display_url, spec.auth.header),
        "content_encoding": encoding,
        "wire_bytes": wire_bytes,
        "notes": notes,
    }
    return dict(masker.mask_value(result))


def format_render(result: dict[str, Any]) -> str:
    """``render`` for a terminal: the verdict, notes, then the request as HTTP shows it."""
    kind = repr(result["event_type"]) if result["event_type"] is not None else "none"
    verdict = "takes" if result["takes_event"] else "does NOT take"
    lines = [f"{result['forwarder']} {verdict} this event (type {kind}, {result['event_source']})"]
    lines += [f"note: {note}" for note in result["notes"]]
    request = result["request"]
    lines += ["", f"{request['method']} {request['url']}"]
    lines += [f"{header}: {value}" for header, value in request["headers"].items()]
    lines += ["", request["body"]]
    return "\n".join(lines)
