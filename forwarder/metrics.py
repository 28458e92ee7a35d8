"""Prometheus collectors, registered on an injected ``CollectorRegistry``.

The metric names are a public interface (alerts and dashboards are written
against them) and must not change. The daemon and its delivery process each
own part of them (``part="ingest"`` / ``part="delivery"``): every collector
exists in both, so code can always update it, but each is registered only
where it is updated, and the daemon serves both registries' text as one
exposition with no family twice. Counters and histograms are updated where
things happen; gauges that describe the buffer are computed at scrape time
from state the daemon already holds in memory (cursors, counts, the oldest
pending event each worker knows about), so a scrape never scans a table.

Every labelled series an alert may ask about exists from the start, at 0:
each rejection reason, each bound transport, and each configured forwarder's
counters and histograms (created when its worker starts, so also after a
reload adds it). ``increase()`` needs two samples, and a series that is born
at 1 with the first dead letter has only one: without the 0 before it, the
first dead letter after a start would never alert. A forwarder removed by a
reload keeps its series until the process ends, the convention for a
process's counters (they stop moving; a restart clears them).
``delivery_attempts_total`` is the exception: its ``code`` label is whatever
the receiver answers, so its series appear with their first attempt.

The standard ``process_*`` metrics cover both processes, each series labelled
``process="daemon"`` or ``"delivery"``: the daemon reads its child's
``/proc/<pid>`` as it reads its own, so each family is exposed once.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from forwarder import __version__

# The *_created series double the exposition for no alerting value.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
# Every ``reason`` ingest counts a refusal under (IngestError and BufferUnavailableError
# reasons raised on the ingest path), so that each series exists from the start.
REJECTION_REASONS = (
    "malformed",
    "too_large",
    "unauthorized",
    "unsupported_media_type",
    "buffer_full",
    "storage_error",
    "shutting_down",
)
RELOAD_RESULTS = ("success", "failure")


class BufferGauges(Collector):
    """What the buffer holds, read at scrape time from the daemon's memory and a stat.

    Two sizes, because they answer different questions: ``buffer_held_bytes``
    is what ``buffer.maxBytes`` is compared with, by ``kind``
    (``pending_events`` and ``dead_letters`` fill it for ingest, ``history``
    gives way to them), ``buffer_bytes`` is the disk the file and its WAL take.
    """

    def __init__(
        self,
        buffer_events: Callable[[], int],
        buffer_bytes: Callable[[], int],
        held_bytes: Callable[[], Mapping[str, int]],
    ) -> None:
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._held_bytes = held_bytes

    def collect(self) -> Iterable[Metric]:
        """Yield the gauge families (called by the registry on every scrape)."""
        events = GaugeMetricFamily(
            "audit_forwarder_buffer_events", "Events held in the buffer now."
        )
        events.add_metric([], self._buffer_events())
        size = GaugeMetricFamily(
            "audit_forwarder_buffer_bytes",
            "Bytes the buffer occupies on disk now (database file plus WAL).",
        )
        size.add_metric([], self._buffer_bytes())
        held = GaugeMetricFamily(
            "audit_forwarder_buffer_held_bytes",
            "Bytes the buffer holds now, summed against buffer.maxBytes, by kind: events not"
            " yet delivered to every forwarder, dead letters, delivery history.",
            labels=["kind"],
        )
        for kind, held_bytes in self._held_bytes().items():
            held.add_metric([kind], held_bytes)
        return [events, size, held]


class ForwarderGauges(Collector):
    """Pending events and the oldest pending age per forwarder, from the workers' memory."""

    def __init__(self, forwarders: Callable[[], Iterable[tuple[str, int, float]]]) -> None:
        self._forwarders = forwarders

    def collect(self) -> Iterable[Metric]:
        """Yield the gauge families (called by the registry on every scrape)."""
        pending = GaugeMetricFamily(
            "audit_forwarder_pending_events",
            "Events accepted but not yet delivered or dead-lettered, per forwarder.",
            labels=["forwarder"],
        )
        oldest = GaugeMetricFamily(
            "audit_forwarder_oldest_pending_age_seconds",
            "Age of the oldest pending event per forwarder (0 when none is pending).",
            labels=["forwarder"],
        )
        for name, pending_count, oldest_age in self._forwarders():
            pending.add_metric([name], pending_count)
            oldest.add_metric([name], oldest_age)
        return [pending, oldest]


Part = Literal["all", "ingest", "delivery"]


class CountedHistogram(Collector):
    """A histogram with one label that takes an observation with a count.

    Events delivered in one request were mostly committed together and share
    their arrival time, so a 100-event request is one observation counted 100
    times instead of 100 observations: prometheus_client's ``Histogram`` takes
    a lock and searches its buckets per call, which was a visible share of the
    delivery process's CPU. The exposition is the same as a ``Histogram``'s.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelname: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry | None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelname = labelname
        self._bounds = (*buckets, math.inf)
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # counts, [sum]
        self._lock = threading.Lock()  # a scrape may run on another thread
        if registry is not None:
            registry.register(self)

    def observe(self, label: str, value: float, count: int = 1) -> None:
        """Record ``count`` observations of ``value`` for the series ``label``."""
        with self._lock:
            series = self._series.get(label)
            if series is None:
                series = self._series[label] = ([0] * len(self._bounds), [0.0])
            series[0][bisect.bisect_left(self._bounds, value)] += count
            series[1][0] += value * count

    def describe(self) -> Iterable[Metric]:
        """The family without samples, so registration needs no collect()."""
        return [HistogramMetricFamily(self._name, self._documentation, labels=[self._labelname])]

    def collect(self) -> Iterable[Metric]:
        """Cumulative buckets, sum and count per series."""
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._labelname])
        with self._lock:
            snapshot = [(label, list(c), s[0]) for label, (c, s) in self._series.items()]
        for label, counts, total in snapshot:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric([label], buckets, total)
        return [family]

    def touch(self, label: str) -> None:
        """Create the series ``label`` with no observations, so it is exposed at 0."""
        with self._lock:
            if label not in self._series:
                self._series[label] = ([0] * len(self._bounds), [0.0])


class ProcessMetrics(Collector):
    """prometheus_client's ``process_*`` metrics of several processes, labelled ``process``.

    ``processes`` maps a label value to a function returning the pid (None
    while there is no such process: its series are then left out). Each
    family is exposed once with a series per process, rather than one
    unlabelled family per process, which would be the same series twice.
    """

    def __init__(self, processes: Mapping[str, Callable[[], int | None]]) -> None:
        self._processes = processes

    def collect(self) -> Iterable[Metric]:
        """Read each process's ``/proc/<pid>`` and merge the families (on every scrape)."""
        merged: dict[str, Metric] = {}
        for process, pid_of in self._processes.items():
            pid = pid_of()
            if pid is None:
                continue
            for family in _read_process(pid):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    into.add_sample(
                        sample.name, {**sample.labels, "process": process}, sample.value
                    )
        return list(merged.values())


def _read_process(pid: int) -> Iterable[Metric]:
    # A collector per read costs one short read of /proc/stat (its boot time).
    # A process that has gone, or a platform without /proc, yields nothing.
    return ProcessCollector(pid=lambda: pid, registry=None).collect()


class Metrics:
    """Every collector of the daemon; those of ``part`` are registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, part: Part = "all") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ingest = self.registry if part in ("all", "ingest") else None
        delivery = self.registry if part in ("all", "delivery") else None
        self.events_received = Counter(
            "audit_forwarder_events_received",
            "Events stored in the buffer (duplicates are counted apart).",
            ["transport"],
            registry=ingest,
        )
        self.events_duplicate = Counter(
            "audit_forwarder_events_duplicate",
            "Events answered 202 but not stored again: their id is already in the buffer.",
            ["transport"],
            registry=ingest,
        )
        self.events_rejected = Counter(
            "audit_forwarder_events_rejected",
            "Events or requests refused at ingest, by reason.",
            ["reason"],
            registry=ingest,
        )
        for reason in REJECTION_REASONS:
            self.events_rejected.labels(reason=reason)
        self.events_delivered = Counter(
            "audit_forwarder_events_delivered",
            "Events delivered with a 2xx answer.",
            ["forwarder"],
            registry=delivery,
        )
        self.events_dead_lettered = Counter(
            "audit_forwarder_events_dead_lettered",
            "Events moved to the dead-letter table.",
            ["forwarder"],
            registry=delivery,
        )
        self.delivery_attempts = Counter(
            "audit_forwarder_delivery_attempts",
            "Delivery attempts by outcome (success, retry, dead_letter) and code.",
            ["forwarder", "outcome", "code"],
            registry=delivery,
        )
        self.delivery_duration = Histogram(
            "audit_forwarder_delivery_duration_seconds",
            "Latency of delivery requests.",
            ["forwarder"],
            buckets=LATENCY_BUCKETS,
            registry=delivery,
        )
        self.delivery_in_flight = Gauge(
            "audit_forwarder_delivery_in_flight",
            "Delivery requests sent and not yet answered, per forwarder.",
            ["forwarder"],
            registry=delivery,
        )
        self.concurrency_limit = Gauge(
            "audit_forwarder_delivery_concurrency_limit",
            "How many delivery requests a forwarder may have in flight now"
            " (maxInFlight, or the adaptive limit below it).",
            ["forwarder"],
            registry=delivery,
        )
        self.delivery_throttled = Counter(
            "audit_forwarder_delivery_throttled_seconds",
            "Seconds a forwarder's requests waited for its rateLimit.",
            ["forwarder"],
            registry=delivery,
        )
        self.last_success = Gauge(
            "audit_forwarder_last_success_timestamp_seconds",
            "Unix time of the last successful delivery.",
            ["forwarder"],
            registry=delivery,
        )
        self.ingest_to_delivery = CountedHistogram(
            "audit_forwarder_ingest_to_delivery_seconds",
            "Time from an event's acknowledgement to its 2xx delivery.",
            "forwarder",
            AGE_BUCKETS,
            delivery,
        )
        self.config_reloads = Counter(
            "audit_forwarder_config_reloads",
            "Configuration reloads by result.",
            ["result"],
            registry=ingest,
        )
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result=result)
        self.build_info = Gauge(
            "audit_forwarder_build_info", "Build information.", ["version"], registry=ingest
        )
        self.build_info.labels(version=__version__).set(1)

    def add_transport(self, transport: str) -> None:
        """Expose the ingest counters of a bound listener (``http``, ``unix``) at 0."""
        self.events_received.labels(transport=transport)
        self.events_duplicate.labels(transport=transport)

    def add_forwarder(self, name: str, last_success_at: float | None) -> None:
        """Expose every series of forwarder ``name`` (at 0 when new; kept when it exists).

        ``last_success_at`` is the last success known from the delivery
        history; the gauge stays 0 ("never") without one.
        """
        self.events_delivered.labels(name)
        self.events_dead_lettered.labels(name)
        self.delivery_duration.labels(name)
        self.delivery_throttled.labels(name)
        self.ingest_to_delivery.touch(name)
        last_success = self.last_success.labels(name)
        if last_success_at is not None:
            last_success.set(last_success_at)

    def attach(self, collector: Collector) -> None:
        """Register a scrape-time collector (once the state it reads exists)."""
        self.registry.register(collector)


def counter_total(counter: Counter) -> int:
    """The sum of a labelled counter's series."""
    total = 0.0
    for metric in counter.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return int(total)
