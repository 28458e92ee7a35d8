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
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
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


class BufferGauges(Collector):
    """What the buffer holds, read at scrape time from the daemon's memory and a stat."""

    def __init__(self, buffer_events: Callable[[], int], buffer_bytes: Callable[[], int]) -> None:
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes

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
        return [events, size]


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


class Metrics:
    """Every collector of the daemon; those of ``part`` are registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, part: Part = "all") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ingest = self.registry if part in ("all", "ingest") else None
        delivery = self.registry if part in ("all", "delivery") else None
        self.events_received = Counter(
            "audit_forwarder_events_received",
            "Events accepted into the buffer.",
            ["transport"],
            registry=ingest,
        )
        self.events_rejected = Counter(
            "audit_forwarder_events_rejected",
            "Events or requests refused at ingest, by reason.",
            ["reason"],
            registry=ingest,
        )
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
        self.build_info = Gauge(
            "audit_forwarder_build_info", "Build information.", ["version"], registry=ingest
        )
        self.build_info.labels(version=__version__).set(1)

    def attach(self, collector: Collector) -> None:
        """Register a scrape-time collector (once the state it reads exists)."""
        self.registry.register(collector)


def counter_total(counter: Counter) -> int:
    """The sum of a labelled counter's series."""
    total = 0.0
    for metric in counter.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return int(total)
