"""The options every destination shares, whatever it sends to.

A destination's own options (a webhook's URI, format and auth; a NATS
subject) live in its package; what the delivery loop itself reads — how to
back off and when to give up, how events are grouped into batches — is
defined once here, so a new destination gets the same retry and batching
semantics (and the same keys in YAML) without copying them. The same goes
for how many requests a forwarder has in flight, in what order and how fast
(:class:`DeliveryOptions`, which a destination's options model derives from,
so its keys sit at the top of the forwarder entry). ``Model`` is the base of
every configuration section: camelCase aliases, unknown keys refused.

``integrity`` (:class:`IntegrityConfig`, tamper-evident delivery) is one of
those shared options: the chain records are assigned by the delivery loop,
whatever the destination. The key itself is checked when the configuration
is loaded (``forwarder.config.files``), where ``signingKeyFile`` is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails

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


# With ``ordering: relaxed`` and no ``maxInFlight``: a far receiver gets about
# four times the throughput of one request at a time, and four connections are
# fewer than a browser opens to one site, so a small receiver is not swamped.
RELAXED_DEFAULT_IN_FLIGHT = 4
MAX_IN_FLIGHT = 256


class RateLimitConfig(Model):
    """Token buckets for receivers with quotas; a bucket that is not set does not limit.

    Each bucket holds one second's worth (at least one request, and at least
    ``batch.maxEvents`` events, so a full batch can always pass): after an
    idle spell, up to that much goes out at once, then the steady rate.
    """

    events_per_second: PositiveFloat | None = None
    requests_per_second: PositiveFloat | None = None


class IntegrityConfig(Model):
    """Tamper-evident delivery: a chain record on every event, signed checkpoints.

    ``signingKey`` (inline PEM) or ``signingKeyFile`` (a Secret mount): the
    Ed25519 private key ``audit-forwarder keygen`` writes. A checkpoint is
    signed every ``checkpointEvery`` events and, when events keep coming,
    at least every ``checkpointIntervalSeconds``.
    """

    mode: Literal["chain"]
    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    checkpoint_every: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    checkpoint_interval_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0

    @model_validator(mode="after")
    def _one_key(self) -> IntegrityConfig:
        if self.signing_key is not None and self.signing_key_file is not None:
            raise ValueError("set signingKey or signingKeyFile, not both")
        if self.signing_key is None and self.signing_key_file is None:
            raise ValueError(
                "needs signingKey or signingKeyFile"
                " (an Ed25519 private key in PEM, as written by audit-forwarder keygen)"
            )
        return self

    def key_problem(self) -> str | None:
        """What is wrong with the (read) key, without quoting it; None when it can sign."""
        if self.signing_key is None:
            return None  # the file could not be read: said already
        # Here, not at the top: cryptography is loaded only when integrity is configured.
        from forwarder.integrity.keys import KeyError_, load_private_key

        try:
            load_private_key(self.signing_key.get_secret_value())
        except KeyError_ as exc:
            return f"the key {exc}"
        return None

    def secrets(self) -> list[str]:
        """The key as configured and its base64 body on one line, for masking."""
        if self.signing_key is None:
            return []
        text = self.signing_key.get_secret_value().strip()
        body = "".join(line for line in text.splitlines() if line and "-----" not in line)
        return [value for value in (text, body) if value]


class DeliveryOptions(Model):
    """What every destination kind shares: its name, filters and batching, and how the
    delivery loop sends its batches (retries, how many at once, in what order, how fast).

    ``ordering: strict`` (the default) is one request at a time, so batches
    arrive in ingest order; ``relaxed`` allows ``maxInFlight`` requests
    (default 4), and a retried batch may then arrive after later ones. A
    ``maxInFlight`` above 1 or adaptive concurrency with ``strict`` is refused
    rather than silently ignored: the operator asked for two things that
    cannot both hold.
    """

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    enabled: bool = True
    events: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    exclude_events: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    max_in_flight: Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT)] | None = None
    ordering: Literal["strict", "relaxed"] = "strict"
    concurrency: Literal["fixed", "adaptive"] = "fixed"
    rate_limit: RateLimitConfig = RateLimitConfig()
    integrity: IntegrityConfig | None = None

    @model_validator(mode="after")
    def _ordering_allows_concurrency(self) -> DeliveryOptions:
        problems = []
        if self.ordering == "strict" and (self.max_in_flight or 1) > 1:
            problems.append(
                f"maxInFlight: {self.max_in_flight} needs ordering: relaxed"
                " (strict sends one request at a time, so that batches arrive in order)"
            )
        if self.ordering == "strict" and self.concurrency == "adaptive":
            problems.append(
                "concurrency: adaptive needs ordering: relaxed (strict sends one request at a time)"
            )
        if problems:
            errors: list[InitErrorDetails] = [
                {"type": "value_error", "loc": (), "input": None, "ctx": {"error": ValueError(m)}}
                for m in problems
            ]
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @property
    def in_flight_limit(self) -> int:
        """The most requests this forwarder may have outstanding at once."""
        if self.ordering == "strict":
            return 1
        return self.max_in_flight or RELAXED_DEFAULT_IN_FLIGHT


def refuse(title: str, messages: list[str]) -> None:
    """Raise every message at once, each as its own error at the validator's location.

    Does nothing when ``messages`` is empty. A ``ValidationError`` raised in a
    validator is merged into the enclosing one, located under the field or
    model being validated, as if each message had been raised on its own.
    """
    if messages:
        errors: list[InitErrorDetails] = [
            {"type": "value_error", "loc": (), "input": None, "ctx": {"error": ValueError(m)}}
            for m in messages
        ]
        raise ValidationError.from_exception_data(title, errors)
