"""Compressed request bodies, through the real ingest app and a real buffer.

Every body here is compressed by the test with the standard library and sent
with its ``Content-Encoding``; what is stored is read back from the SQLite
file. A body the forwarder cannot decode is refused as a whole, stores
nothing, is counted by reason, and leaves the listener serving.
"""

from __future__ import annotations

import gzip
import random
import resource
import struct
import zlib
from collections.abc import Callable

import pytest

from tests.ingest.conftest import GOOD_EVENT, JSON, NDJSON, SMALL_LIMITS, Ingest, MakeIngest

EVENTS = [b'{"id": "z-1", "n": 12345678901234567890123456789}', b'{ "event_type" : "t" }']
ARRAY_BODY = b"[" + b", ".join(EVENTS) + b"]"
NDJSON_BODY = b"\n".join(EVENTS) + b"\n"


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some clients send ``deflate``."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gzip_members(data: bytes) -> bytes:
    """``data`` as two gzip members one after the other (what ``cat a.gz b.gz`` makes)."""
    middle = len(data) // 2
    return gzip.compress(data[:middle]) + gzip.compress(data[middle:])


def with_bad_crc(data: bytes) -> bytes:
    """A gzip stream whose CRC-32 trailer does not match its content."""
    compressed = bytearray(gzip.compress(data))
    compressed[-8] ^= 0xFF
    return bytes(compressed)


Compress = Callable[[bytes], bytes]


# -- decoded and stored --------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("GZip", gzip.compress, id="gzip-any-case"),
        pytest.param("x-gzip", gzip.compress, id="x-gzip"),
        pytest.param("gzip", gzip_members, id="gzip-two-members"),
        pytest.param("gzip", lambda data: gzip.compress(data) + b"\0" * 8, id="gzip-zero-padded"),
        pytest.param("deflate", zlib.compress, id="deflate"),
        pytest.param("deflate", raw_deflate, id="raw-deflate"),
        pytest.param("identity", lambda data: data, id="identity"),
        pytest.param("identity, gzip", gzip.compress, id="identity-then-gzip"),
    ],
)
@pytest.mark.parametrize(
    ("content_type", "body"),
    [pytest.param(JSON, ARRAY_BODY, id="array"), pytest.param(NDJSON, NDJSON_BODY, id="ndjson")],
)
async def test_compressed_body_is_decoded_and_each_event_stored_exactly(
    ingest: Ingest, encoding: str, compress: Compress, content_type: str, body: bytes
) -> None:
    """gzip, x-gzip and deflate (zlib or raw) bodies are decoded; events are stored as sent."""
    answer = await ingest.post(compress(body), content_type, headers={"Content-Encoding": encoding})

    assert (answer.status, answer.payload) == (202, {"accepted": 2, "duplicates": 0})
    assert ingest.bodies() == EVENTS
    assert ingest.rows()[0][1] == "z-1"


# -- refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        pytest.param("gzip", b"not gzip at all", "not valid gzip data", id="gzip-garbage"),
        pytest.param("gzip", GOOD_EVENT, "not valid gzip data", id="gzip-plain-json"),
        pytest.param("gzip", gzip.compress(GOOD_EVENT)[:-6], "cut short", id="gzip-truncated"),
        pytest.param("gzip", gzip.compress(GOOD_EVENT)[:12], "cut short", id="gzip-header-only"),
        pytest.param("gzip", b"", "cut short", id="gzip-empty-body"),
        pytest.param("gzip", with_bad_crc(GOOD_EVENT), "not valid gzip data", id="gzip-bad-crc"),
        pytest.param(
            "gzip", gzip.compress(GOOD_EVENT) + b"trailing", "not valid gzip", id="gzip-trailing"
        ),
        pytest.param("deflate", b"\x78\x9cgarbage", "not valid deflate", id="deflate-garbage"),
        pytest.param("deflate", zlib.compress(GOOD_EVENT)[:-3], "cut short", id="deflate-cut"),
        pytest.param(
            "deflate", zlib.compress(GOOD_EVENT) + b"\0", "bytes follow", id="deflate-trailing"
        ),
        pytest.param(
            "gzip", gzip.compress(b'{"a": "\xff"}'), "malformed JSON", id="gzip-of-bad-json"
        ),
    ],
)
async def test_corrupt_compressed_body_is_malformed_not_a_server_error(
    ingest: Ingest, encoding: str, body: bytes, message: str
) -> None:
    """A body that does not decode under its Content-Encoding is 400 malformed, never 500."""
    answer = await ingest.post(body, headers={"Content-Encoding": encoding})

    assert answer.status == 400
    assert answer.payload["error"] == "malformed"
    assert message in answer.payload["message"]
    assert ingest.rows() == []
    assert ingest.rejected("malformed") == 1
    await ingest.assert_still_accepting()


@pytest.mark.parametrize(
    "encoding",
    ["br", "zstd", "compress", "x-compress", "snappy", "gzip, gzip", "deflate, gzip", "gzip;q=1"],
)
async def test_unsupported_content_encoding_is_415_before_the_body_is_used(
    ingest: Ingest, encoding: str
) -> None:
    """An encoding we do not decode (or several stacked) is 415 naming it, even on valid JSON."""
    # The body is plain JSON: a listener that ignored the header would store it.
    answer = await ingest.post(GOOD_EVENT, headers={"Content-Encoding": encoding})

    assert answer.status == 415
    assert answer.payload["error"] == "unsupported_media_type"
    assert repr(encoding) in answer.payload["message"]
    assert "gzip or deflate" in answer.payload["message"]
    assert ingest.rows() == []
    assert ingest.rejected("unsupported_media_type") == 1
    await ingest.assert_still_accepting()


# -- size limits -----------------------------------------------------------------------


def zip_bomb(mebibytes: int) -> bytes:
    """One gzip member inflating to ``mebibytes`` MiB of ``0``: about 1 KiB on the wire per MiB.

    Built without compressing it all: a deflate run of 1 MiB ended by a full
    flush (non-final, byte-aligned, no back-references) is repeated, then a
    final empty block and the gzip trailer for the whole content are added.
    """
    mebibyte = b"0" * (1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    run = compressor.compress(mebibyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(mebibyte, crc)
    size = (mebibytes << 20) & 0xFFFFFFFF
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + run * mebibytes + final_block + struct.pack("<II", crc, size)


async def test_zip_bomb_is_too_large_without_being_inflated(make_ingest: MakeIngest) -> None:
    """A 0.5 MiB body inflating to 512 MiB is 413 after at most maxRequestBytes are inflated."""
    limit = 1024 * 1024
    ingest = await make_ingest(max_request_bytes=limit, max_event_bytes=limit)
    bomb = zip_bomb(512)
    assert len(bomb) < limit  # within the limit on the wire
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    answer = await ingest.post(bomb, headers={"Content-Encoding": "gzip"})

    assert answer.status == 413
    assert answer.payload["error"] == "too_large"
    assert f"exceeds {limit} bytes once decompressed" in answer.payload["message"]
    # Inflating it all would have taken 512 MiB; the cap keeps it near the limit.
    peak_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert peak_growth_kib < 64 * 1024
    assert ingest.rows() == []
    assert ingest.rejected("too_large") == 1
    await ingest.assert_still_accepting()


def test_zip_bomb_is_a_valid_gzip_stream() -> None:
    """The bomb is real gzip (so refusing it proves the cap, not a decoding error)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    inflated = 0
    pending = zip_bomb(4)
    while pending:
        inflated += len(decompressor.decompress(pending, 1 << 20))
        pending = decompressor.unconsumed_tail
    assert decompressor.eof
    assert inflated == 4 << 20


async def test_decoded_body_of_exactly_max_request_bytes_is_accepted(
    make_ingest: MakeIngest,
) -> None:
    """maxRequestBytes bounds the decoded body inclusively: exactly the limit is accepted."""
    ingest = await make_ingest(**SMALL_LIMITS)
    line = b'{"pad": "' + b"x" * 1000 + b'"}\n'
    body = line * 4 + b" " * (4096 - 4 * len(line))
    assert len(body) == 4096

    accepted = await ingest.post(gzip.compress(body), NDJSON, headers={"Content-Encoding": "gzip"})
    refused = await ingest.post(
        gzip.compress(body + b" "), NDJSON, headers={"Content-Encoding": "gzip"}
    )

    assert (accepted.status, accepted.payload["accepted"]) == (202, 4)
    assert refused.status == 413
    assert "once decompressed" in refused.payload["message"]
    assert len(ingest.rows()) == 4


async def test_compressed_body_over_max_request_bytes_on_the_wire_is_too_large(
    make_ingest: MakeIngest,
) -> None:
    """The limit also holds for the compressed bytes received, before any decoding."""
    ingest = await make_ingest(**SMALL_LIMITS)
    incompressible = gzip.compress(random.Random(0).randbytes(8192))
    assert len(incompressible) > 4096

    answer = await ingest.post(incompressible, headers={"Content-Encoding": "gzip"})

    assert answer.status == 413
    assert answer.payload["message"] == "request body exceeds 4096 bytes"
    assert ingest.rows() == []
