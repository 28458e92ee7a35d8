"""The options every destination shares, whatever it sends to.

A destination's own options (a webhook's URI, format and auth; a NATS
subject) live in its package; what the delivery loop itself reads — how to
back off and when to give up, how events are grouped into batches — is
defined once here, so a new destination gets the same retry and batching
semantics (and the same keys in YAML) without copying them. ``Model`` is the
base of every configuration section: camelCase aliases, unknown keys refused.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Model(BaseModel):
    """Base for every section: camelCase aliases, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class RetryConfig(Model):
    """Backoff between attempts (exponential, full jitter) and when to give up."""

    initial_backoff_seconds: PositiveFloat = 1.0
    max_backoff_seconds: PositiveFloat = 300.0
    max_attempts: PositiveInt | None = None  # None: retry forever
    max_age_seconds: PositiveFloat | None = None  # None: no age limit

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("maxBackoffSeconds must be >= initialBackoffSeconds")
        return self


class BatchConfig(Model):
    """How many events one request may carry; a batch is sent when any limit is reached."""

    max_events: Annotated[int, Field(ge=1, le=10_000)] = 1
    max_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    max_wait_ms: Annotated[int, Field(ge=0, le=600_000)] = 1000
