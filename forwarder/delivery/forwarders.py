"""The delivery workers of one process, and what the admin API asks of them.

``LocalForwarders`` owns the workers: it starts them from forwarder specs,
applies a new configuration (retire what was removed or changed, start what
was added or changed), reports their status, sends the test button's event,
and stops them. It runs inside the delivery process; the daemon talks to it
through ``delivery.process.DeliveryProcess``, which has the same shape, so
the admin API does not care which process the workers live in.

The test button's answer is the one place a receiver's reply reaches an
operator without passing through the buffer, so the whole answer (response
body, headers, error message, request) goes through the secret masker before
it is returned, on top of the request's own masking (display URL, auth
headers).

A reload is two-phase (``prepare`` then ``finish``) because the cursors live
in the daemon's writer: workers are retired first and their last
acknowledgements committed, then the forwarder set is re-registered, and
only then are new workers started from the committed cursors.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from forwarder.buffer.store import StoredEvent
from forwarder.delivery.ports import DeliveryBuffer
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.kinds import AnyForwarderConfig
from forwarder.destinations.webhook.destination import (
    describe_request as describe_request,  # the render command's, from the destination
)
from forwarder.destinations.webhook.destination import mask_headers as mask_headers
from forwarder.errors import DeliveryError
from forwarder.ingest.ids import IdGenerator
from forwarder.metrics import Metrics
from forwarder.secrets import masker

FailureHandler = Callable[[str, BaseException | None], None]


class UnknownForwarderError(KeyError):
    """No forwarder has that name."""


class Forwarders(Protocol):
    """What the daemon and the admin API need from the delivery side."""

    def names(self) -> list[str]:
        """Forwarder names in configuration order."""
        ...

    async def statuses(self) -> list[dict[str, Any]]:
        """The admin API's view of every forwarder."""
        ...

    async def test(self, name: str) -> dict[str, Any]:
        """Send a test event to ``name``'s receiver; the invocation data."""
        ...


def iso(timestamp: float | None) -> str | None:
    """A Unix time as RFC 3339 UTC with milliseconds (``2026-11-29T23:10:00.123Z``)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return moment.removesuffix("+00:00") + "Z"  # the one format of every admin API time


def test_event(ids: IdGenerator, forwarder: str) -> StoredEvent:
    """A synthetic ``forwarder.test`` event, never stored."""
    event_id = ids.new()
    now = time.time()
    body = orjson.dumps(
        {
            "id": event_id,
            "event_type": "forwarder.test",
            "timestamp": iso(now),
            "data": {"message": "test event from audit-forwarder", "forwarder": forwarder},
        }
    )
    return StoredEvent(0, event_id, "forwarder.test", now, None, body)


class LocalForwarders:
    """Owns this process's delivery workers. Constructing it does no I/O."""

    def __init__(
        self,
        buffer: DeliveryBuffer,
        metrics: Metrics,
        on_failure: FailureHandler,
        grace_seconds: float = 10.0,
    ) -> None:
        self.workers: dict[str, DeliveryWorker] = {}
        self.grace_seconds = grace_seconds
        self._buffer = buffer
        self._metrics = metrics
        self._on_failure = on_failure
        self._retired: set[asyncio.Task[Any]] = set()
        self._ids = IdGenerator()
        self._next: list[AnyForwarderConfig] = []

    def names(self) -> list[str]:
        """Forwarder names in configuration order."""
        return list(self.workers)

    async def start(self, specs: Iterable[AnyForwarderConfig]) -> None:
        """Start a worker per spec (their cursors must be registered already)."""
        for spec in specs:
            await self._start_worker(spec)

    async def _start_worker(self, spec: AnyForwarderConfig) -> None:
        # The worker builds the destination of the spec's kind (destinations.kinds).
        worker = DeliveryWorker(spec, self._buffer, self._metrics)
        await worker.start()
        self.workers[worker.name] = worker
        task = worker.task
        if task is not None:
            task.add_done_callback(functools.partial(self._task_done, worker.name))

    def _task_done(self, name: str, task: asyncio.Task[Any]) -> None:
        if task in self._retired:
            self._retired.discard(task)
            return
        if task.cancelled():
            return
        self._on_failure(f"deliver-{name}", task.exception())

    async def _retire(self, name: str) -> bool:
        worker = self.workers.pop(name)
        if worker.task is not None:
            self._retired.add(worker.task)
        return await worker.stop(self.grace_seconds)

    async def prepare(self, specs: list[AnyForwarderConfig]) -> dict[str, list[str]]:
        """Phase one of a reload: retire removed and changed workers; say what changes."""
        old = {name: worker.spec for name, worker in self.workers.items()}
        new = {str(spec.name): spec for spec in specs}
        plan = {
            "removed": [name for name in old if name not in new],
            "changed": [name for name in old if name in new and old[name] != new[name]],
            "added": [name for name in new if name not in old],
        }
        for name in plan["removed"] + plan["changed"]:
            await self._retire(name)
        self._next = specs
        return plan

    async def finish(self) -> None:
        """Phase two: start workers that do not run yet, in configuration order."""
        for spec in self._next:
            if str(spec.name) not in self.workers:
                await self._start_worker(spec)
        self.workers = {str(s.name): self.workers[str(s.name)] for s in self._next}

    async def statuses(self) -> list[dict[str, Any]]:
        """The admin API's view of every forwarder (dead-letter counts come from the buffer)."""
        return [
            {
                "name": worker.name,
                "kind": worker.spec.kind,
                "method": worker.spec.method,
                "host": worker.spec.host,
                "enabled": worker.spec.enabled,
                "pending": worker.status.pending,
                "oldest_pending_age_seconds": round(worker.oldest_pending_age(), 3),
                "last_attempt": {
                    "at": iso(worker.status.last_attempt_at),
                    "status": worker.status.last_status,
                    "error": worker.status.last_error,
                },
                "last_success_at": iso(worker.status.last_success_at),
                "consecutive_failures": worker.status.consecutive_failures,
                "in_flight": worker.in_flight,
                "concurrency_limit": worker.concurrency.limit,
                "throttled": worker.throttled,
                "throttled_seconds": round(worker.status.throttled_seconds, 3),
            }
            for worker in self.workers.values()
        ]

    def gauges(self) -> list[tuple[str, int, float]]:
        """(name, pending, oldest pending age) per forwarder."""
        return [(w.name, w.status.pending, w.oldest_pending_age()) for w in self.workers.values()]

    async def test(self, name: str) -> dict[str, Any]:
        """Send a synthetic event straight to ``name``'s receiver; the invocation, masked."""
        return dict(masker.mask_value(await self._test(name)))

    async def _test(self, name: str) -> dict[str, Any]:
        worker = self.workers.get(name)
        if worker is None:
            raise UnknownForwarderError(name)
        destination = worker.destination
        payload = destination.build([test_event(self._ids, name)], time.time())
        result: dict[str, Any] = {
            "forwarder": name,
            "request": destination.describe(payload),
            "ok": False,
            "response": None,
            "error": None,
        }
        try:
            answer = await destination.send(payload)
        except DeliveryError as exc:
            if exc.status is not None:
                result["response"] = {
                    "status": exc.status,
                    "body": exc.body.decode("utf-8", "replace"),
                }
            result["error"] = {"code": exc.code, "message": exc.message}
            return result
        result["ok"] = True
        result["response"] = {
            "status": answer.status if answer.status is not None else answer.code,
            "headers": answer.headers,
            "body": answer.body.decode("utf-8", "replace"),
            "duration_ms": round(answer.duration * 1000, 3),
        }
        return result

    async def stop(self, grace_seconds: float) -> dict[str, Any]:
        """Stop every worker (in-flight requests get the grace); a summary for the log."""
        for worker in self.workers.values():
            if worker.task is not None:
                self._retired.add(worker.task)
        results = await asyncio.gather(*(w.stop(grace_seconds) for w in self.workers.values()))
        return {
            "unfinished": sum(1 for finished in results if not finished),
            "pending": {w.name: w.status.pending for w in self.workers.values()},
        }
