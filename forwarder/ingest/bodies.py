"""Request bodies to event records: one JSON object, a JSON array of objects, or NDJSON.

Every event is stored as exactly the bytes the client sent for it, trimmed of
the whitespace around it, whatever the body's shape: delivery builds request
bodies by joining stored bytes, so a receiver gets each event byte for byte
(key order, escapes, spacing, and numbers that no parser would give back
unchanged, such as integers beyond 64 bits). Nothing is ever re-serialised.

orjson parses each body once, to validate it and to read ``id`` and
``event_type``/``type``. It accepts integers beyond 64 bits (as a float, which
is fine: their value is never used, only their bytes are kept); numbers
beyond the range of a double it refuses, and so do we, because delivery
parses stored events with orjson too (templates, CloudEvents times).

For a JSON array, each element's bytes are then sliced out of the body.
Every element is an object, so two neighbours are always separated by ``}``,
whitespace, ``,``, whitespace, ``{``; when the body holds exactly one such
separator per pair of neighbours (no nested array of objects, no string
containing one), those are the cuts, found by one regular expression run in
C. Otherwise a scanner that skips strings and counts brackets finds them.

A CloudEvent's ``data`` (see :mod:`forwarder.ingest.cloudevents`) is sliced
out of its envelope the same way, by :func:`member_value`: the envelope's
own members are walked key by key, and a nested value is skipped by the same
bracket-counting scan, so ``data`` keeps the bytes its producer wrote.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from forwarder.buffer.store import EventRecord
from forwarder.errors import IngestError

MAX_ID_LENGTH = 256

# The separator of two objects in an array, wherever it stands in the body.
_SEPARATOR = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
# Everything up to the next bracket outside a string: runs of other bytes and
# whole strings (escapes included) are consumed inside the regex engine, so
# the Python loop runs once per bracket, not per byte. Possessive quantifiers:
# the body is already known to be valid JSON, there is nothing to backtrack.
_TO_NEXT_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+[\[\]{}]', re.DOTALL)
_OPENING = frozenset(b"[{")
# The pieces of an object's own members, for member_value().
_MEMBER_KEY = re.compile(rb'[ \t\r\n]*"((?:[^"\\]++|\\.)*+)"[ \t\r\n]*:[ \t\r\n]*', re.DOTALL)
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_SCALAR = re.compile(rb"[^,}\] \t\r\n]++")
_AFTER_VALUE = re.compile(rb"[ \t\r\n]*([,}])")


def parse_json(body: bytes, max_event_bytes: int) -> list[EventRecord]:
    """Parse an ``application/json`` body: one object or an array of objects."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, "malformed", f"malformed JSON: {exc}") from None
    if type(document) is not list:
        return [_event_record(document, body.strip(), "", max_event_bytes)]
    for index, event in enumerate(document):
        if type(event) is not dict:
            raise IngestError(400, "malformed", f"event {index}: an event must be a JSON object")
    return [
        _event_record(event, raw, f"event {index}: ", max_event_bytes)
        for index, (event, raw) in enumerate(
            zip(document, array_elements(body, len(document)), strict=True)
        )
    ]


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
        append(EventRecord(None, event_type_of(event), line, False))
    return records


def array_elements(body: bytes, count: int) -> list[bytes]:
    """The bytes of each of the ``count`` objects of the valid JSON array ``body``.

    ``body`` must already have parsed as an array of ``count`` objects: the
    scan relies on it (balanced brackets, well-formed strings).
    """
    if count == 0:
        return []
    cuts = [match.span() for match in _SEPARATOR.finditer(body)]
    if len(cuts) != count - 1:
        return _scan_elements(body, count)
    # The first "{" opens the first element, the last "}" closes the last one.
    elements: list[bytes] = []
    start = body.index(b"{")
    for separator_start, separator_end in cuts:
        elements.append(body[start : separator_start + 1])
        start = separator_end - 1
    elements.append(body[start : body.rindex(b"}") + 1])
    return elements


def member_value(document: bytes, name: str) -> bytes | None:
    """The bytes of the value of member ``name`` of the valid JSON object ``document``.

    Only the object's own members count, nested ones are skipped whole; a key
    is compared after JSON unescaping (``"d\\u0061ta"`` is ``data``). None
    when there is no such member; a member given twice is refused, because a
    parser keeps only one of them and the bytes must be the ones it read.
    """
    found: bytes | None = None
    position = document.index(b"{") + 1
    while (key := _MEMBER_KEY.match(document, position)) is not None:
        start = key.end()
        end = _value_end(document, start)
        raw_name = key.group(1)
        if raw_name == name.encode() or (
            b"\\" in raw_name and orjson.loads(b'"' + raw_name + b'"') == name
        ):
            if found is not None:
                raise IngestError(400, "malformed", f"member {name!r} is given twice")
            found = document[start:end]
        after = _AFTER_VALUE.match(document, end)
        if after is None or after.group(1) == b"}":
            break
        position = after.end()
    return found


def _value_end(document: bytes, start: int) -> int:
    """Where the JSON value starting at ``start`` of the valid ``document`` ends."""
    first = document[start]
    if first in _OPENING:
        depth = 0
        for match in _TO_NEXT_BRACKET.finditer(document, start):
            depth += 1 if document[match.end() - 1] in _OPENING else -1
            if depth == 0:
                return match.end()
    else:
        # A string, or true, false, null or a number.
        value = (_STRING if first == 0x22 else _SCALAR).match(document, start)
        if value is not None:
            return value.end()
    # Unreachable for a document orjson accepted; a bug must not store wrong bytes.
    raise RuntimeError(f"no JSON value at offset {start}")


def _scan_elements(body: bytes, count: int) -> list[bytes]:
    """Elements found by bracket depth, skipping strings (the array itself is depth 0)."""
    elements: list[bytes] = []
    depth = -1
    start = 0
    for match in _TO_NEXT_BRACKET.finditer(body):
        end = match.end()
        if body[end - 1] in _OPENING:
            depth += 1
            if depth == 1:
                start = end - 1
            continue
        depth -= 1
        if depth == 0:
            elements.append(body[start:end])
        elif depth < 0:
            break
    if len(elements) != count:
        # Unreachable for a body orjson accepted; a bug must not store wrong bytes.
        raise RuntimeError(f"found {len(elements)} array elements, expected {count}")
    return elements


def _event_record(event: Any, raw: bytes, where: str, max_event_bytes: int) -> EventRecord:
    if type(event) is not dict:
        raise IngestError(400, "malformed", f"{where}an event must be a JSON object")
    if len(raw) > max_event_bytes:
        raise IngestError(
            413, "too_large", f"{where}event of {len(raw)} bytes exceeds {max_event_bytes}"
        )
    event_id = event.get("id")
    if event_id is None:
        return EventRecord(None, event_type_of(event), raw, False)
    if type(event_id) is not str or not event_id or len(event_id) > MAX_ID_LENGTH:
        raise IngestError(
            400, "malformed", f"{where}id must be a non-empty string of at most 256 characters"
        )
    return EventRecord(event_id, event_type_of(event), raw, True)


def event_type_of(event: dict[str, Any]) -> str | None:
    """``event_type``, else ``type``, when it is a string (no loop: called per event)."""
    value = event.get("event_type")
    if type(value) is str:
        return value
    value = event.get("type")
    return value if type(value) is str else None
