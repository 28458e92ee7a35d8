"""How long a forwarder waits before it tries a failed request again.

Exponential backoff with full jitter (AWS's "Exponential Backoff and Jitter"):
many daemons that lost the same receiver at the same moment spread their
retries over the whole window instead of returning together. A receiver's
``Retry-After`` is honoured as a lower bound, never as permission to retry
sooner than the backoff allows. It belongs to the delivery loop, not to a
destination, so every destination retries the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from forwarder.destinations.options import RetryConfig


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, initial * 2**n))``."""

    def __init__(self, policy: RetryConfig, rng: Callable[[], float] = random.random) -> None:
        self._policy = policy
        self._rng = rng

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt of a request (1-based).

        A ``Retry-After`` is a lower bound: the wait is the larger of it and the
        jittered backoff, so ``Retry-After: 0`` cannot drive a tight loop; both
        are capped at ``maxBackoffSeconds``.
        """
        cap = self._policy.max_backoff_seconds
        ceiling = min(cap, self._policy.initial_backoff_seconds * 2.0 ** min(failures - 1, 60))
        jittered = float(self._rng()) * ceiling
        if retry_after is not None:
            return min(max(retry_after, jittered), cap)
        return jittered
