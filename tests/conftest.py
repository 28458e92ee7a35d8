"""Shared fixtures: scripted receivers on loopback and the daemon as a real process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import DaemonProcess, ScriptedReceiver

ReceiverFactory = Callable[[], Awaitable[ScriptedReceiver]]


@pytest.fixture
async def make_receiver() -> AsyncIterator[ReceiverFactory]:
    """Start real scripted aiohttp receivers on loopback; stopped at teardown."""
    started: list[ScriptedReceiver] = []

    async def make() -> ScriptedReceiver:
        receiver = await ScriptedReceiver().start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(make_receiver: ReceiverFactory) -> ScriptedReceiver:
    """One scripted receiver that answers 200 unless told otherwise."""
    return await make_receiver()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Create DaemonProcess objects that are killed at teardown if still running."""
    created: list[DaemonProcess] = []

    def make(config: dict[str, Any], env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path, config, env)
        created.append(daemon)
        return daemon

    yield make
    for daemon in created:
        daemon.stop()
