"""Sortable unique event ids in the UUIDv7 layout.

An id is 48 bits of Unix milliseconds, then a 74-bit value that is reseeded
from ``os.urandom`` on each new millisecond and incremented within one, so ids
from one process sort in generation order and ids from different processes
(or restarts) do not collide. Reseeding once per millisecond instead of once
per id keeps id generation off the ingest profile.
"""

from __future__ import annotations

import os
import time

_RANDOM_BITS = 74
_LOW_BITS = 62
_LOW_MASK = (1 << _LOW_BITS) - 1


class IdGenerator:
    """Generates UUIDv7-formatted, monotonically increasing ids."""

    def __init__(self) -> None:
        self._last_ms = -1
        self._value = 0

    def new(self) -> str:
        """Return one new id."""
        ms = time.time_ns() // 1_000_000
        if ms > self._last_ms:
            self._last_ms = ms
            # Leave headroom below 2**74 so increments within a millisecond never wrap.
            self._value = int.from_bytes(os.urandom(9), "big") >> (72 - _RANDOM_BITS + 8)
        else:
            self._value += 1
        value = self._value
        number = (
            (self._last_ms << 80)
            | (0x7 << 76)
            | ((value >> _LOW_BITS) << 64)
            | (0b10 << 62)
            | (value & _LOW_MASK)
        )
        text = f"{number:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
