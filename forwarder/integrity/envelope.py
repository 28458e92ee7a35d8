"""How a chain record travels inside an event, and how the event is recovered from it.

Sending side (the webhook formats call :func:`splice`): for ``json`` and
``ndjson`` the record becomes the event object's *first member*, spliced in
right after its opening brace::

    {"auditChain":{"v":1,...},"user":"alice",...}

Nothing of the event is re-serialised, so the original bytes are the
delivered ones with exactly ``"auditChain":{...}`` and the one comma after it
removed (no comma when the event was ``{}``). CloudEvents carry the record as
the extension attribute ``auditchain`` (compact JSON in a string; extension
names are lower-case alphanumerics) with ``data`` unchanged; Splunk HEC as
the indexed field ``fields.auditchain``, with ``event`` unchanged.

Receiving side (:func:`recover`, used by ``verify``): given one event as a
SIEM exported it, find the record and the exact bytes of the original event.
The spans are found with a raw JSON scan (:func:`object_members`) rather
than a parse and re-serialisation, which would change the bytes the digest
is over.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forwarder.integrity.records import ChainRecord

MEMBER = b'"auditChain":'
EXTENSION = "auditchain"
_WHITESPACE = " \t\r\n"
_DECODER = json.JSONDecoder()


def splice(body: bytes, record: bytes) -> bytes:
    """``body`` (a JSON object) with ``"auditChain":<record>`` as its first member."""
    brace = body.find(b"{")
    rest = body[brace + 1 :]
    separator = b"" if rest.lstrip(b" \t\r\n").startswith(b"}") else b","
    return body[: brace + 1] + MEMBER + record + separator + rest


@dataclass(frozen=True, slots=True)
class Recovered:
    """One exported event: its record (None when it carries none) and original bytes."""

    record: ChainRecord | None
    event: bytes
    problem: str | None = None  # why a record that is there could not be read


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def object_members(text: str, start: int = 0) -> tuple[dict[str, tuple[int, int, int]], int]:
    """The top-level members of the object at ``text[start:]``: name → (key start, value start,
    value end), and the index after the closing brace. ``ValueError`` if it is no object."""
    index = _skip(text, start)
    if index >= len(text) or text[index] != "{":
        raise ValueError("not a JSON object")
    members: dict[str, tuple[int, int, int]] = {}
    index = _skip(text, index + 1)
    if index < len(text) and text[index] == "}":
        return members, index + 1
    while True:
        key_start = index
        name, index = _DECODER.raw_decode(text, index)
        if not isinstance(name, str):
            raise ValueError("an object key must be a string")
        index = _skip(text, index)
        if index >= len(text) or text[index] != ":":
            raise ValueError("expected ':'")
        value_start = _skip(text, index + 1)
        _, value_end = _DECODER.raw_decode(text, value_start)
        members[name] = (key_start, value_start, value_end)
        index = _skip(text, value_end)
        if index < len(text) and text[index] == ",":
            index = _skip(text, index + 1)
            continue
        if index < len(text) and text[index] == "}":
            return members, index + 1
        raise ValueError("expected ',' or '}'")


def array_items(text: str) -> list[str]:
    """The raw text of each element of the JSON array ``text`` (nothing else may follow)."""
    index = _skip(text, 0)
    if index >= len(text) or text[index] != "[":
        raise ValueError("not a JSON array")
    items: list[str] = []
    index = _skip(text, index + 1)
    while index < len(text) and text[index] != "]":
        _, end = _DECODER.raw_decode(text, index)
        items.append(text[index:end])
        index = _skip(text, end)
        if index < len(text) and text[index] == ",":
            index = _skip(text, index + 1)
        elif index >= len(text) or text[index] != "]":
            raise ValueError("expected ',' or ']'")
    if index >= len(text) or _skip(text, index + 1) != len(text):
        raise ValueError("not one JSON array")
    return items


def recover(text: str) -> Recovered:
    """The record and original bytes of one exported event (raises ``ValueError`` if not JSON).

    Recognised, in order: a top-level ``auditChain`` object (json, ndjson);
    an ``auditchain`` string beside ``data`` (CloudEvents); ``fields.auditchain``
    beside ``event`` (Splunk HEC). Anything else is an event without a record.
    """
    members, _ = object_members(text)
    if "auditChain" in members:
        key_start, value_start, value_end = members["auditChain"]
        end = value_end + 1 if text[value_end : value_end + 1] == "," else value_end
        original = text[:key_start] + text[end:]
        return _parsed(_DECODER.decode(text[value_start:value_end]), original)
    if EXTENSION in members and "data" in members:
        _, value_start, value_end = members[EXTENSION]
        _, data_start, data_end = members["data"]
        return _from_string(_DECODER.decode(text[value_start:value_end]), text[data_start:data_end])
    if "fields" in members and "event" in members:
        _, fields_start, fields_end = members["fields"]
        fields = _DECODER.decode(text[fields_start:fields_end])
        if isinstance(fields, dict) and EXTENSION in fields:
            _, event_start, event_end = members["event"]
            return _from_string(fields[EXTENSION], text[event_start:event_end])
    return Recovered(None, text.encode())


def _from_string(value: Any, original: str) -> Recovered:
    if not isinstance(value, str):
        return Recovered(None, original.encode(), f"{EXTENSION} must be a string")
    try:
        parsed = json.loads(value)
    except ValueError:
        return Recovered(None, original.encode(), f"{EXTENSION} is not JSON")
    return _parsed(parsed, original)


def _parsed(value: Any, original: str) -> Recovered:
    try:
        return Recovered(ChainRecord.from_value(value), original.encode())
    except ValueError as exc:
        return Recovered(None, original.encode(), str(exc))


def chain_headers(records: Sequence[ChainRecord]) -> dict[str, str]:
    """Request headers for receivers that keep headers: the records a request carries.

    ``Audit-Chain-First`` / ``-Last`` are the first and last records' seqs (a
    replayed dead letter keeps its original, earlier seq), ``Audit-Chain-Head``
    the last record's hash.
    """
    first, last = records[0], records[-1]
    return {
        "Audit-Chain-Forwarder": first.forwarder,
        "Audit-Chain-First": str(first.seq),
        "Audit-Chain-Last": str(last.seq),
        "Audit-Chain-Head": last.own_hash,
    }
