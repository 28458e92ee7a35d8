"""Fixtures shared by the tests of this folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from forwarder.buffer.store import EventBuffer
from tests.buffer.stores import OpenBuffer


@pytest.fixture
async def open_buffer(tmp_path: Path) -> AsyncIterator[OpenBuffer]:
    """Open real buffers (default file ``tmp_path/buffer.db``); all closed at teardown."""
    opened: list[EventBuffer] = []

    async def open_(
        forwarders: Iterable[str] = ("f",), path: Path | None = None, **options: Any
    ) -> EventBuffer:
        buffer = EventBuffer(path or tmp_path / "buffer.db", **options)
        opened.append(buffer)
        await buffer.open(forwarders)
        return buffer

    yield open_
    for buffer in opened:
        await buffer.close()
