"""What the benchmark sends and how much: the events, the plan and a run's state.

Events are ~500-byte JSON audit events, all of the same length, so a sink can
count them from body bytes alone (see ``bench.sinks.SinkLog``); each carries
its sequence number as ``data.request_id``, which the latency scenario's sink
reads back to time every event. Bodies are built before a timed window
starts, so building them never counts against the daemon; scenario 1's are
built once per run and reused by scenarios 5 and 6. The generators'
connection counts are fixed here for every scenario that uses them.

``Plan`` is how much each scenario does (``QUICK`` scales it down for a
smoke run); ``Run`` carries the plan, the temporary directory and what the
scenarios found, failures and warnings included, so a scenario that fails
does not lose the others' figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NDJSON = "application/x-ndjson"

WARMUP_EVENTS = 1000
NDJSON_CONNECTIONS = 4
SINGLE_CONNECTIONS = 32
LATENCY_CONNECTIONS = 64
MB = 2**20


EVENT_HEAD = (
    '{"event_type":"approval.decided","timestamp":"2026-03-23T14:02:30.000Z",'
    '"data":{"request_id":"req_%09d","decision":"approved",'
    '"requester":{"email":"alice@example.com","name":"Alice Example"},'
    '"integration":"postgres-prod","reason":"on-call investigation","pad":"'
)
EVENT_TAIL = '"}}'
EVENT_BYTES = 500
EVENT_TEMPLATE = (
    EVENT_HEAD + "x" * (EVENT_BYTES - len(EVENT_HEAD % 0) - len(EVENT_TAIL)) + EVENT_TAIL
)


def event(seq: int) -> bytes:
    """One 500-byte audit event; ``seq`` (below 10**9) is its ``data.request_id``."""
    return (EVENT_TEMPLATE % seq).encode()


def ndjson_bodies(count: int, start: int = 0, per_body: int = 1000) -> list[bytes]:
    """``count`` events from ``start`` as NDJSON bodies of ``per_body`` events."""
    return [
        "\n".join(
            EVENT_TEMPLATE % seq for seq in range(first, min(first + per_body, start + count))
        ).encode()
        for first in range(start, start + count, per_body)
    ]


def lines(count: int, start: int = 0) -> bytes:
    """``count`` events as newline-terminated lines (syslog-ng's input)."""
    return "".join(EVENT_TEMPLATE % seq + "\n" for seq in range(start, start + count)).encode()


@dataclass(frozen=True)
class Plan:
    """How much each scenario does."""

    events: int = 200_000  # scenarios 1, 5, 6 and syslog-ng
    single_requests: int = 200_000  # scenario 2, per transport
    latency_seconds: float = 30.0
    latency_rate: int = 2000
    backlog: int = 1_000_000
    history: int = 2_000_000
    scenarios: frozenset[int] = frozenset(range(1, 11))
    quick: bool = False
    keep_temp: bool = False


QUICK = Plan(
    events=20_000,
    single_requests=20_000,
    latency_seconds=10.0,
    backlog=100_000,
    history=200_000,
    quick=True,
)


@dataclass
class Run:
    """One benchmark run: its plan, temporary directory and what it found."""

    plan: Plan
    tmp: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sink_kind: str = ""
    _bodies: list[bytes] = field(default_factory=list)

    def bodies(self) -> list[bytes]:
        """Scenario 1's NDJSON bodies, built once."""
        if not self._bodies:
            self._bodies = ndjson_bodies(self.plan.events)
        return self._bodies

    def warn(self, message: str) -> None:
        """Keep a warning for the report and print it now."""
        self.warnings.append(message)
        print(f"  warning: {message}", flush=True)
