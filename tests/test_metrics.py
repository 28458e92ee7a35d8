"""The counted histogram: the same exposition as prometheus_client's Histogram."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from forwarder.metrics import AGE_BUCKETS, CountedHistogram


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
