"""Which events a forwarder takes: glob patterns on the event type.

``events`` (include) and ``excludeEvents`` are shell-style globs matched
case-sensitively against the event type (``event_type``, else ``type``, as
stored at ingest). An empty include list means every event; exclusion wins
over inclusion. An event without a type is taken only when ``events`` is
empty. Decisions are cached per event type, since a deployment has a handful
of types and millions of events: matching costs one dict lookup per event.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

MAX_CACHED_TYPES = 10_000


class EventFilter:
    """Compiled include/exclude patterns with a per-type decision cache."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self._include = _compile(include)
        self._exclude = _compile(exclude)
        self._take_all = not include and not exclude
        self._decisions: dict[str | None, bool] = {}

    @property
    def takes_everything(self) -> bool:
        """True when no pattern is configured (the common, fastest case)."""
        return self._take_all

    def accepts(self, event_type: str | None) -> bool:
        """Whether an event of this type goes to the forwarder."""
        if self._take_all:
            return True
        decision = self._decisions.get(event_type)
        if decision is None:
            decision = self._decide(event_type)
            if len(self._decisions) < MAX_CACHED_TYPES:
                self._decisions[event_type] = decision
        return decision

    def _decide(self, event_type: str | None) -> bool:
        if event_type is None:
            return self._include is None
        if self._exclude is not None and self._exclude.match(event_type):
            return False
        return self._include is None or self._include.match(event_type) is not None


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
