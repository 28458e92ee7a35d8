"""Reading a request body: the size limit and the ``Content-Encoding``.

aiohttp can inflate compressed bodies itself, but not on terms an ingest API
can keep: a corrupt gzip or deflate body surfaces as an exception out of the
body stream (a 500), a ``br`` or ``zstd`` body is refused with a plain-text
400 before any handler runs (no JSON, not counted) when the library for it is
missing, a coding it does not know (``compress``, ``x-gzip``, ``gzip, gzip``)
is passed through as if it were plain and parsed as JSON, a truncated gzip
body is accepted as far as it goes, and after the answer it keeps inflating
whatever is left of a refused body while it drains the connection. So the
ingest app turns aiohttp's decompression off and this module decodes:

* no ``Content-Encoding`` (or ``identity``): the body as read, untouched.
* ``gzip`` (``x-gzip``) and ``deflate`` (zlib-wrapped, or raw deflate as some
  clients send it): inflated with zlib, which checks gzip's CRC and length.
  Several gzip members in a row, and zeros padding the end, are accepted as
  gzip tools accept them. A body that is not such data, is cut short or has
  other bytes after its end is ``400 malformed``.
* anything else, or several codings stacked: ``415 unsupported_media_type``,
  before the body is read.

``maxRequestBytes`` bounds both the bytes received and the decoded body.
zlib is asked for at most one byte more than the limit allows, so a zip bomb
costs no more memory or time than a plain body of the limit's size before it
is answered ``413 too_large``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Literal

from aiohttp import web

from forwarder.errors import IngestError

READ_CHUNK_BYTES = 256 * 1024

ContentCoding = Literal["gzip", "deflate"]

_CODINGS: Mapping[str, ContentCoding] = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
_SHOWN_HEADER_CHARS = 100


def content_coding(request: web.Request) -> ContentCoding | None:
    """The coding to undo for this request's body: None for none; 415 when unsupported."""
    values = request.headers.getall("Content-Encoding", ())
    if not values:
        return None
    codings = [
        name
        for value in values
        for coding in value.split(",")
        if (name := coding.strip().lower()) and name != "identity"
    ]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _CODINGS:
        return _CODINGS[codings[0]]
    shown = ", ".join(values)[:_SHOWN_HEADER_CHARS]
    raise IngestError(
        415,
        "unsupported_media_type",
        f"Content-Encoding {shown!r} is not supported: send the body uncompressed "
        "or compressed once with gzip or deflate",
    )


async def read_body(request: web.Request, limit: int, coding: ContentCoding | None) -> bytes:
    """Read and decode the body, refusing anything over ``limit`` bytes without reading it all.

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
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body if coding is None else inflate(body, coding, limit)


def inflate(compressed: bytes, coding: ContentCoding, limit: int) -> bytes:
    """Decode a gzip or deflate body of at most ``limit`` decoded bytes (else 413)."""
    if coding == "gzip":
        wbits = _GZIP_WBITS
    else:
        # RFC 9110's deflate is zlib-wrapped (its first byte names method 8);
        # some clients send raw deflate, which aiohttp accepted too.
        zlib_wrapped = bool(compressed) and compressed[0] & 0x0F == 8
        wbits = _ZLIB_WBITS if zlib_wrapped else _RAW_DEFLATE_WBITS
    parts: list[bytes] = []
    size = 0
    pending = compressed
    while True:
        decompressor = zlib.decompressobj(wbits)
        try:
            # Never more than one byte past the limit: that byte is enough to refuse.
            part = decompressor.decompress(pending, limit + 1 - size)
        except zlib.error as exc:
            raise IngestError(
                400, "malformed", f"the body is not valid {coding} data: {exc}"
            ) from None
        size += len(part)
        if size > limit:
            raise IngestError(
                413, "too_large", f"request body exceeds {limit} bytes once decompressed"
            )
        parts.append(part)
        # Output below the cap means zlib consumed all the input it was given.
        if not decompressor.eof:
            raise IngestError(400, "malformed", f"the {coding} body is cut short")
        pending = decompressor.unused_data
        if not pending:
            break
        if coding != "gzip":
            raise IngestError(400, "malformed", f"bytes follow the end of the {coding} data")
        if not pending.strip(b"\0"):
            break  # zeros padding the end, which gzip tools skip too
        # A gzip body may be several members one after the other (RFC 1952 2.2).
    return parts[0] if len(parts) == 1 else b"".join(parts)
