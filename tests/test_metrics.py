"""Collectors: the counted histogram, series that exist from the start, process metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from subprocess import PIPE

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from forwarder.metrics import (
    AGE_BUCKETS,
    REJECTION_REASONS,
    CountedHistogram,
    Metrics,
    ProcessMetrics,
)


def test_counted_observations_expose_like_repeated_ones() -> None:
    """observe(v, n) exposes the buckets, sum and count of n observe(v) calls."""
    ours, reference = CollectorRegistry(), CollectorRegistry()
    counted = CountedHistogram("lag_seconds", "Lag.", "forwarder", AGE_BUCKETS, ours)
    plain = Histogram("lag_seconds", "Lag.", ["forwarder"], buckets=AGE_BUCKETS, registry=reference)
    observations = [("a", 0.003, 100), ("a", 0.05, 3), ("b", 7200.0, 2), ("a", 0.25, 1)]
    for label, value, count in observations:
        counted.observe(label, value, count)
        for _ in range(count):
            plain.labels(label).observe(value)

    def without_sums(registry: CollectorRegistry) -> list[str]:
        return [
            line for line in generate_latest(registry).decode().splitlines() if "_sum" not in line
        ]

    assert without_sums(ours) == without_sums(reference)
    for label in ("a", "b"):
        # n additions of v and one of n*v differ only in the last bits.
        assert ours.get_sample_value("lag_seconds_sum", {"forwarder": label}) == pytest.approx(
            reference.get_sample_value("lag_seconds_sum", {"forwarder": label})
        )
    assert ours.get_sample_value("lag_seconds_count", {"forwarder": "a"}) == 104
    assert ours.get_sample_value("lag_seconds_bucket", {"forwarder": "a", "le": "0.05"}) == 103
    assert ours.get_sample_value("lag_seconds_bucket", {"forwarder": "b", "le": "3600.0"}) == 0


def test_a_series_appears_only_once_observed() -> None:
    """Nothing is exposed for a label never observed, as with a labelled Histogram."""
    registry = CollectorRegistry()
    CountedHistogram("lag_seconds", "Lag.", "forwarder", (1.0,), registry)
    assert registry.get_sample_value("lag_seconds_count", {"forwarder": "a"}) is None


def test_touch_exposes_a_series_with_no_observations() -> None:
    """A touched label is exposed with zero counts, and touching again keeps what was observed."""
    registry = CollectorRegistry()
    histogram = CountedHistogram("lag_seconds", "Lag.", "forwarder", (1.0,), registry)
    histogram.touch("a")
    assert registry.get_sample_value("lag_seconds_count", {"forwarder": "a"}) == 0
    assert registry.get_sample_value("lag_seconds_bucket", {"forwarder": "a", "le": "+Inf"}) == 0
    histogram.observe("a", 0.5, 3)
    histogram.touch("a")
    assert registry.get_sample_value("lag_seconds_count", {"forwarder": "a"}) == 3


# -- series that exist from the start --------------------------------------------------


def test_every_rejection_reason_and_reload_result_starts_at_zero() -> None:
    """The ingest part exposes each rejection reason and reload result at 0 before any event."""
    registry = CollectorRegistry()
    Metrics(registry, part="ingest")
    for reason in REJECTION_REASONS:
        assert (
            registry.get_sample_value("audit_forwarder_events_rejected_total", {"reason": reason})
            == 0
        ), reason
    for result in ("success", "failure"):
        assert (
            registry.get_sample_value("audit_forwarder_config_reloads_total", {"result": result})
            == 0
        )


def test_a_transport_exposes_received_and_duplicate_at_zero() -> None:
    """add_transport creates received and duplicate for that transport only, at 0."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, part="ingest")
    metrics.add_transport("unix")
    for name in ("audit_forwarder_events_received_total", "audit_forwarder_events_duplicate_total"):
        assert registry.get_sample_value(name, {"transport": "unix"}) == 0
        assert registry.get_sample_value(name, {"transport": "http"}) is None


def test_a_forwarder_exposes_every_series_at_zero() -> None:
    """add_forwarder creates counters, histograms and a last-success gauge of 0 ("never")."""
    registry = CollectorRegistry()
    Metrics(registry, part="delivery").add_forwarder("siem", None)
    labels = {"forwarder": "siem"}
    for name in (
        "audit_forwarder_events_delivered_total",
        "audit_forwarder_events_dead_lettered_total",
        "audit_forwarder_delivery_duration_seconds_count",
        "audit_forwarder_ingest_to_delivery_seconds_count",
        "audit_forwarder_last_success_timestamp_seconds",
    ):
        assert registry.get_sample_value(name, labels) == 0, name


def test_a_forwarder_restored_keeps_its_counts_and_takes_the_last_success() -> None:
    """add_forwarder again (a restarted worker) keeps the counts and sets the known success."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, part="delivery")
    metrics.add_forwarder("siem", None)
    metrics.events_dead_lettered.labels("siem").inc(2)
    metrics.add_forwarder("siem", 1_700_000_000.5)
    labels = {"forwarder": "siem"}
    assert registry.get_sample_value("audit_forwarder_events_dead_lettered_total", labels) == 2
    assert (
        registry.get_sample_value("audit_forwarder_last_success_timestamp_seconds", labels)
        == 1_700_000_000.5
    )


# -- process metrics --------------------------------------------------------------------


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A real second process (a Python that waits on its stdin); ended at teardown."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=PIPE)
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)


def start_time(pid: int) -> float:
    """A process's start time in Unix seconds, read from /proc as ps reads it."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        ticks = float(stat.read().split(b")")[-1].split()[19])
    with open("/proc/stat", "rb") as system:
        boot = next(float(line.split()[1]) for line in system if line.startswith(b"btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def test_process_metrics_of_two_processes_carry_a_process_label(
    other_process: subprocess.Popen[bytes],
) -> None:
    """Each process_* family appears once, with one series per process, none unlabelled."""
    registry = CollectorRegistry()
    registry.register(ProcessMetrics({"daemon": os.getpid, "delivery": lambda: other_process.pid}))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= set(names)
    for family in families:
        assert sorted(s.labels.get("process", "") for s in family.samples) == [
            "daemon",
            "delivery",
        ], family.name
    for process, pid in (("daemon", os.getpid()), ("delivery", other_process.pid)):
        labels = {"process": process}
        assert registry.get_sample_value("process_start_time_seconds", labels) == pytest.approx(
            start_time(pid)
        )
        assert registry.get_sample_value("process_resident_memory_bytes", labels) > 1_000_000  # type: ignore[operator]
    assert registry.get_sample_value("process_cpu_seconds_total", {"process": "daemon"}) > 0  # type: ignore[operator]


def test_a_process_without_a_pid_is_left_out() -> None:
    """While the second process does not exist (pid None), only the first one's series show."""
    registry = CollectorRegistry()
    registry.register(ProcessMetrics({"daemon": os.getpid, "delivery": lambda: None}))
    assert registry.get_sample_value("process_cpu_seconds_total", {"process": "daemon"}) is not None
    assert registry.get_sample_value("process_cpu_seconds_total", {"process": "delivery"}) is None
