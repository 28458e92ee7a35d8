"""The delivery history's stored event ids."""

from __future__ import annotations

import orjson
import pytest

from forwarder.buffer.history import pack_event_ids, unpack_event_ids


def test_history_event_ids_round_trip_compressed_and_read_old_text() -> None:
    """Ids are stored compressed (far smaller than JSON) and older JSON rows still read."""
    ids = [f"0f1e2d3c-4b5a-8697-8000-{n:012x}" for n in range(100)]
    packed = pack_event_ids(ids)
    assert unpack_event_ids(packed) == ids
    assert len(packed) * 5 < len(orjson.dumps(ids))
    assert unpack_event_ids('["e-1", "e-2"]') == ["e-1", "e-2"]
    with pytest.raises(ValueError, match="not a list"):
        unpack_event_ids('{"e-1": 1}')
