"""``audit-forwarder top``: a live view of every forwarder, the ingest rate and the buffer.

Two sources, both found from the daemon's configuration file: the admin API
(``/v1/forwarders``, through :class:`AdminClient`, so over the Unix socket or
TCP exactly like ``status``) for each forwarder's state, and ``/metrics`` on the
metrics listener for the counters that make rates and for the buffer's bytes.
``--metrics-url`` overrides the second, for a listener on port 0 or behind a
port-forward.

A rate needs two readings of a counter, so every frame compares two samples
one interval apart: even ``--once`` waits one interval and shows the rate of
that second, not an average since the daemon started.

A forwarder's state is derived from what the admin API and the counters say:
``disabled`` (``enabled: false``), ``dead-lettering`` (the newest attempt of
its current failure streak was dead-lettered, or events were dead-lettered in
the interval), ``retrying`` (failures in a row), else ``ok``. Only a forwarder
in a failure streak costs one more admin call per frame (its newest attempt,
for the last error); the daemon has already masked secrets in what it stored.

On a terminal the frame is a ``rich`` table redrawn in place when the
optional ``rich`` is installed (``audit-forwarder[top]``: not a dependency of
the daemon, since structlog imports it wherever it is installed);
otherwise it is a plain table printed once per frame, which a pipe, ``watch``
or a log file can take. Ctrl-C ends the view with exit code 0 (``cli.py``
catches the interrupt ``asyncio.run`` raises).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.util import find_spec
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from forwarder.config.settings import Settings
from forwarder.errors import ForwarderError
from forwarder.ops.client import AdminClient
from forwarder.ops.top_view import plain, rich_view

MIN_INTERVAL_SECONDS = 0.1
METRICS_TIMEOUT_SECONDS = 5.0
ERROR_WIDTH = 60
# What ingest counts against buffer.maxBytes (history gives way to these).
COUNTED_KINDS = ("pending_events", "dead_letters")


@dataclass
class Counters:
    """One reading of ``/metrics``: the counters rates are made of, and the buffer's bytes."""

    received: float = 0.0
    duplicates: float = 0.0
    rejected: float = 0.0
    delivered: dict[str, float] = field(default_factory=dict)
    dead_lettered: dict[str, float] = field(default_factory=dict)
    held_bytes: dict[str, int] = field(default_factory=dict)
    disk_bytes: int = 0


@dataclass
class Sample:
    """What one refresh read: the admin API's forwarders and newest failures, the counters."""

    taken_at: float  # monotonic
    forwarders: list[dict[str, Any]]
    last_attempts: dict[str, dict[str, Any]]
    counters: Counters | None
    metrics_error: str | None = None


def parse_counters(text: str) -> Counters:
    """The samples ``top`` needs from a Prometheus text exposition."""
    counters = Counters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "audit_forwarder_events_received_total":
                counters.received += value
            elif name == "audit_forwarder_events_duplicate_total":
                counters.duplicates += value
            elif name == "audit_forwarder_events_rejected_total":
                counters.rejected += value
            elif name == "audit_forwarder_events_delivered_total":
                counters.delivered[labels["forwarder"]] = value
            elif name == "audit_forwarder_events_dead_lettered_total":
                counters.dead_lettered[labels["forwarder"]] = value
            elif name == "audit_forwarder_buffer_held_bytes":
                counters.held_bytes[labels["kind"]] = int(value)
            elif name == "audit_forwarder_buffer_bytes":
                counters.disk_bytes = int(value)
    return counters


def metrics_url_of(settings: Settings) -> str | None:
    """The metrics listener's base URL from the configuration (None when its port is 0)."""
    listener = settings.metrics
    if listener.port == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listener.host, listener.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listener.port}"


class Source:
    """Reads the daemon: the admin API through ``AdminClient``, the metrics over HTTP."""

    def __init__(self, settings: Settings, metrics_url: str | None) -> None:
        self.client = AdminClient(settings)
        self.metrics_url = (metrics_url or metrics_url_of(settings) or "").rstrip("/")

    async def sample(self) -> Sample:
        """One reading of both; raises if the admin API does not answer."""
        status, (counters, metrics_error) = await asyncio.gather(
            self.client.request("GET", "/v1/forwarders"), self._counters()
        )
        forwarders: list[dict[str, Any]] = status["forwarders"]
        failing = [f["name"] for f in forwarders if f["consecutive_failures"]]
        newest = await asyncio.gather(*(self._newest_attempt(name) for name in failing))
        last_attempts = {name: a for name, a in zip(failing, newest, strict=True) if a}
        return Sample(time.monotonic(), forwarders, last_attempts, counters, metrics_error)

    async def _newest_attempt(self, name: str) -> dict[str, Any] | None:
        path = f"/v1/forwarders/{quote(name, safe='')}/deliveries?limit=1"
        try:
            history = await self.client.request("GET", path)
        except ForwarderError:
            return None  # removed by a reload since the status call: no error to show
        attempts: list[dict[str, Any]] = history["deliveries"]
        return attempts[0] if attempts else None

    async def _counters(self) -> tuple[Counters | None, str | None]:
        if not self.metrics_url:
            return None, "the metrics port is 0 in the configuration: pass --metrics-url"
        url = f"{self.metrics_url}/metrics"
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT_SECONDS)
                ) as session,
                session.get(url) as response,
            ):
                if response.status != 200:
                    return None, f"{url} answered {response.status}"
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"cannot read {url}: {type(exc).__name__}"
        try:
            return parse_counters(text), None
        except ValueError as exc:
            return None, f"{url} is not a Prometheus exposition: {exc}"


@dataclass
class _Rates:
    """Per-second increases of the counters between two readings."""

    before: Counters
    after: Counters
    seconds: float

    def of(self, read: Callable[[Counters], float]) -> float:
        """The rate of the counter ``read`` picks; a counter that went down was reset."""
        now, then = read(self.after), read(self.before)
        increase = now - then if now >= then else now
        return round(increase / self.seconds, 3) if self.seconds > 0 else 0.0


def _by_forwarder(counter: str, name: str, counters: Counters) -> float:
    by_name: dict[str, float] = getattr(counters, counter)
    return by_name.get(name, 0.0)


def _state(forwarder: Mapping[str, Any], newest: Mapping[str, Any] | None, dead: float) -> str:
    if not forwarder.get("enabled", True):
        return "disabled"
    if forwarder["consecutive_failures"] and newest is not None:
        return "dead-lettering" if newest["outcome"] == "dead_letter" else "retrying"
    if dead > 0:
        return "dead-lettering"
    return "retrying" if forwarder["consecutive_failures"] else "ok"


def _last_error(newest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if newest is None:
        return None
    error = newest.get("error") or ""
    if error == f"HTTP {newest['code']}":
        error = ""  # the code column says it already; the receiver's answer says more
    detail = ": ".join(part for part in (error, newest.get("response_body") or "") if part)
    message = " ".join(detail.split())
    if len(message) > ERROR_WIDTH:
        message = message[: ERROR_WIDTH - 1] + "…"
    return {"at": newest["at"], "code": newest["code"], "message": message}


def _age_seconds(iso_time: str | None, now: datetime) -> float | None:
    if iso_time is None:
        return None
    return round(max(0.0, (now - datetime.fromisoformat(iso_time)).total_seconds()), 3)


def build_frame(
    previous: Sample, current: Sample, max_bytes: int | None, now: datetime | None = None
) -> dict[str, Any]:
    """The data of one frame (what ``--json`` prints): rates over the two samples' interval."""
    now = now or datetime.now(UTC)
    seconds = current.taken_at - previous.taken_at
    before, after = previous.counters, current.counters
    rates = _Rates(before, after, seconds) if before and after else None
    forwarders = []
    for status in current.forwarders:
        name = status["name"]
        delivered = dead = None
        if rates is not None:
            delivered = rates.of(partial(_by_forwarder, "delivered", name))
            dead = rates.of(partial(_by_forwarder, "dead_lettered", name))
        newest = current.last_attempts.get(name)
        forwarders.append(
            {
                "name": name,
                "state": _state(status, newest, dead or 0.0),
                "delivered_per_second": delivered,
                "dead_lettered_per_second": dead,
                "pending": status["pending"],
                "oldest_pending_age_seconds": status["oldest_pending_age_seconds"],
                "last_success_at": status["last_success_at"],
                "last_success_age_seconds": _age_seconds(status["last_success_at"], now),
                "consecutive_failures": status["consecutive_failures"],
                "dead_letters": status.get("dead_letters", 0),
                "last_error": _last_error(newest),
            }
        )
    ingest: dict[str, float | None] = {
        "received_per_second": rates.of(lambda c: c.received) if rates else None,
        "duplicates_per_second": rates.of(lambda c: c.duplicates) if rates else None,
        "rejected_per_second": rates.of(lambda c: c.rejected) if rates else None,
    }
    buffer: dict[str, Any] = {"max_bytes": max_bytes}
    if after is not None:
        counted = sum(after.held_bytes.get(kind, 0) for kind in COUNTED_KINDS)
        buffer.update(
            held_bytes=after.held_bytes,
            counted_bytes=counted,
            used_ratio=round(counted / max_bytes, 4) if max_bytes else None,
            disk_bytes=after.disk_bytes,
        )
    return {
        "at": now.isoformat(timespec="milliseconds"),
        "interval_seconds": round(seconds, 3),
        "metrics_error": current.metrics_error,
        "ingest": ingest,
        "buffer": buffer,
        "forwarders": forwarders,
    }


class _Output:
    """Where frames go: a ``rich`` live table on a terminal, else plain text or JSON lines."""

    def __init__(self, out: TextIO, once: bool, as_json: bool) -> None:
        self._out = out
        self._once = once
        self._as_json = as_json
        # rich is an optional extra (audit-forwarder[top]); without it a terminal gets plain tables.
        self._terminal = not as_json and out.isatty() and find_spec("rich") is not None
        self._live: Any = None
        self._console: Any = None
        self._frame: dict[str, Any] | None = None

    def __enter__(self) -> _Output:
        if self._terminal:
            from rich.console import Console

            self._console = Console(file=self._out)
            if not self._once:
                from rich.live import Live
                from rich.text import Text

                waiting = Text("audit-forwarder top: reading the daemon...", style="dim")
                self._live = Live(waiting, console=self._console, auto_refresh=False)
                self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Also on Ctrl-C (the task is cancelled): the terminal gets its cursor back.
        if self._live is not None:
            self._live.stop()

    def frame(self, frame: dict[str, Any]) -> None:
        """Show one frame."""
        self._frame = frame
        if self._as_json:
            self._print(json.dumps(frame, indent=2) if self._once else json.dumps(frame))
        elif self._live is not None:
            self._live.update(rich_view(frame), refresh=True)
        elif self._console is not None:
            self._console.print(rich_view(frame))
        else:
            self._print(plain(frame) + "\n")

    def error(self, message: str) -> None:
        """Say the daemon stopped answering; the view goes on and shows it when it is back."""
        line = f"audit-forwarder top: {message}"
        if self._as_json:
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._print(json.dumps({"error": "daemon_unreachable", "message": message, "at": at}))
        elif self._live is not None:
            from rich.console import Group
            from rich.text import Text

            error = Text(line, style="bold red")
            shown = error if self._frame is None else Group(rich_view(self._frame), error)
            self._live.update(shown, refresh=True)
        else:
            self._print(line)

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)


async def run_top(
    settings: Settings,
    *,
    metrics_url: str | None = None,
    interval: float = 1.0,
    once: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Show frames every ``interval`` seconds until cancelled (or one with ``once``).

    Raises :class:`ForwarderError` (``DaemonUnreachableError``...) when the
    daemon does not answer at the start, or at all with ``once``; later, the
    view says so and keeps trying.
    """
    out = out if out is not None else sys.stdout
    interval = max(interval, MIN_INTERVAL_SECONDS)
    source = Source(settings, metrics_url)
    previous = await source.sample()
    try:
        with _Output(out, once, as_json) as output:
            while True:
                await asyncio.sleep(interval)
                try:
                    current = await source.sample()
                except ForwarderError as exc:
                    if once:
                        raise
                    output.error(str(exc))
                    continue
                output.frame(build_frame(previous, current, settings.buffer.max_bytes))
                if once:
                    return 0
                previous = current
    except BrokenPipeError:
        # The reader went away (`top | head`): stop quietly, and point stdout at
        # /dev/null so that Python's flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
