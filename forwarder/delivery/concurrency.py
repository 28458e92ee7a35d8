"""How many requests a forwarder may have in flight: fixed, or adaptive (AIMD).

``concurrency: fixed`` is ``maxInFlight`` (1 with ``ordering: strict``).
``concurrency: adaptive`` starts at 1 and looks for the receiver's sweet spot
the way TCP looks for a link's, and as Vector's adaptive request concurrency
does (its RFC 1858): it keeps an exponentially weighted moving average (and
variance) of past round-trip times and, once per window of about one average
RTT, compares the window's mean RTT with it.

* **Additive increase**: +1 when the window had more batches ready than
  requests allowed (there is evidence that more would be used), no back
  pressure, and an RTT no higher than the average.
* **Multiplicative decrease**: ×0.9 (rounded down, at least 1) on back
  pressure, or when the RTT rose beyond the average by more than 2.5 of its
  standard deviations (and by at least 5%: a receiver answering in exactly
  the same time would otherwise have no deviation to allow, and every tiny
  rise would cut the limit): the receiver queues our requests instead of
  serving them in parallel.

Back pressure is any answer :func:`send_request` classifies as worth
retrying: 429, 503 and every other 5xx, 408, timeouts, refused connections.
Only successful attempts are RTT samples (a refused request says nothing
about how long the receiver takes to do the work). The limit never exceeds
``maxInFlight``. Vector's constants (α = 0.4, ratio 0.9, 2.5 deviations)
came from simulations against services with varied responses to load; we
take them as they are.

Pure arithmetic with an injected clock: the worker reports what happened,
this says what the limit is now.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from forwarder.destinations.options import DeliveryOptions

EWMA_ALPHA = 0.4
DECREASE_RATIO = 0.9
RTT_DEVIATION_SCALE = 2.5
MIN_RTT_RISE = 0.05


class ConcurrencyLimit:
    """The current in-flight limit of one forwarder, moved by the answers it gets."""

    def __init__(
        self, options: DeliveryOptions, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.maximum = options.in_flight_limit
        self.adaptive = options.concurrency == "adaptive"
        self.limit = 1 if self.adaptive else self.maximum
        self._clock = clock
        self._past_mean: float | None = None  # EWMA of the windows' mean RTTs
        self._past_variance = 0.0
        self._window_sum = 0.0
        self._window_count = 0
        self._window_ends = 0.0
        self._back_pressure = False
        self._saturated = False

    def saturated(self) -> None:
        """A batch was ready while every allowed request was in flight."""
        self._saturated = True

    def observe(self, rtt: float | None, back_pressure: bool) -> None:
        """One attempt finished: ``rtt`` when it succeeded; ``back_pressure`` on 429/5xx/timeout."""
        if not self.adaptive:
            return
        if back_pressure:
            self._back_pressure = True
        if rtt is not None:
            self._window_sum += rtt
            self._window_count += 1
        now = self._clock()
        current = self._window_sum / self._window_count if self._window_count else None
        if self._past_mean is None:
            if current is not None:
                self._past_mean = current
                self._window_ends = now + current
                self._reset_window()
            elif back_pressure:
                # No RTT known yet, but the receiver pushes back: do not wait for one.
                self._decrease()
            return
        if now < self._window_ends:
            return
        self._adjust(self._past_mean, math.sqrt(self._past_variance), current)
        if current is not None:
            self._update_average(current)
        self._window_ends = now + self._past_mean
        self._reset_window()

    def _adjust(self, past_mean: float, deviation: float, current: float | None) -> None:
        if (
            self.limit < self.maximum
            and self._saturated
            and not self._back_pressure
            and current is not None
            and current <= past_mean
        ):
            self.limit += 1
        elif self._back_pressure or (
            current is not None
            and current > past_mean + max(RTT_DEVIATION_SCALE * deviation, MIN_RTT_RISE * past_mean)
        ):
            self._decrease()

    def _decrease(self) -> None:
        self.limit = max(1, math.floor(self.limit * DECREASE_RATIO))

    def _update_average(self, sample: float) -> None:
        assert self._past_mean is not None
        difference = sample - self._past_mean
        increment = EWMA_ALPHA * difference
        self._past_mean += increment
        self._past_variance = (1 - EWMA_ALPHA) * (self._past_variance + difference * increment)

    def _reset_window(self) -> None:
        self._window_sum = 0.0
        self._window_count = 0
        self._back_pressure = False
        self._saturated = False
