"""The options of a ``kind: nats`` forwarder: servers, subject, stream, auth, TLS, timeout.

The shared delivery options (``retry``, ``batch``, ``events`` /
``excludeEvents``, ``enabled``, ``ordering``, ``maxInFlight``, rate limits)
come from :class:`~forwarder.destinations.options.DeliveryOptions`, so a NATS
forwarder retries, batches and filters exactly as a webhook does, with the
same keys.

What can be judged without a server fails ``check-config``: a server that is
not a ``nats://`` / ``tls://`` URL (or carries credentials in it: they belong
in ``token`` / ``username`` + ``password``, where they are masked), a subject
template or fallback that is not a publishable subject, a stream name NATS
refuses, two ways of authenticating at once, a ``*File`` beside its inline
value, ``keyFile`` without ``certFile``. Every problem is reported, not the
first (:func:`~forwarder.destinations.options.refuse`). Reading the ``*File``
secrets and checking that the other files exist is done with the rest of the
file checks, in :func:`check_files` (called by the loader).

What needs the server (an account that refuses the credentials, a stream
that does not exist) cannot be known offline: the forwarder reports it in
``status`` and the logs, and retries until it is fixed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from forwarder.destinations.nats.subjects import subject_problem, template_problem
from forwarder.destinations.options import (
    DeliveryOptions,
    Model,
    refuse,
)

SCHEMES = ("nats", "tls")
# JetStream stream names: no whitespace, '.', '*', '>' or path separators.
STREAM_NAME = r"^[^\s.*>/\\]{1,255}$"


class NatsTlsConfig(Model):
    """TLS to the NATS servers: a private CA, and a client certificate for mutual TLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> NatsTlsConfig:
        problems = []
        if self.key_file is not None and self.cert_file is None:
            problems.append("keyFile needs certFile")
        if self.cert_file is not None and self.key_file is None:
            problems.append("certFile needs keyFile")
        refuse(type(self).__name__, problems)
        return self

    @property
    def enabled(self) -> bool:
        """Whether any TLS setting is given (then every connection uses TLS)."""
        return any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))


def server_problem(url: str) -> str | None:
    """Why ``url`` is not a usable server address, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a valid URL: {exc}"
    if parts.scheme not in SCHEMES:
        return f"{url!r} must start with nats:// or tls://"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.username is not None or parts.password is not None:
        return "credentials do not belong in a server URL: use token or username and password"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{url!r} must be only scheme, host and port"
    if port == 0:
        return f"{url!r} has port 0"
    return None


class NatsForwarderConfig(DeliveryOptions):
    """One ``kind: nats`` entry of ``auditLogForwarders`` (with the shared delivery options)."""

    kind: Literal["nats"]
    servers: list[str] = Field(min_length=1)
    subject: str = "audit.{event_type}"
    subject_fallback: str = "audit.unknown"
    stream: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    nkey_seed_file: Path | None = None
    credentials_file: Path | None = None
    tls: NatsTlsConfig = NatsTlsConfig()
    timeout_seconds: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = 5.0

    @field_validator("servers")
    @classmethod
    def _servers(cls, servers: list[str]) -> list[str]:
        refuse(cls.__name__, [p for p in map(server_problem, servers) if p is not None])
        return servers

    @field_validator("subject")
    @classmethod
    def _subject(cls, subject: str) -> str:
        problem = template_problem(subject)
        if problem is not None:
            raise ValueError(problem)
        return subject

    @field_validator("subject_fallback")
    @classmethod
    def _fallback(cls, subject: str) -> str:
        problem = subject_problem(subject)
        if problem is not None:
            raise ValueError(problem)
        return subject

    @field_validator("stream")
    @classmethod
    def _stream(cls, stream: str | None) -> str | None:
        if stream is not None and not re.fullmatch(STREAM_NAME, stream):
            raise ValueError(
                "a stream name is 1-255 characters without whitespace, '.', '*', '>', '/' or '\\'"
            )
        return stream

    @model_validator(mode="after")
    def _consistent(self) -> NatsForwarderConfig:
        problems = []
        if self.token is not None and self.token_file is not None:
            problems.append("set token or tokenFile, not both")
        if self.password is not None and self.password_file is not None:
            problems.append("set password or passwordFile, not both")
        has_password = self.password is not None or self.password_file is not None
        if self.username is not None and not has_password:
            problems.append("username needs password or passwordFile")
        if has_password and self.username is None:
            problems.append("password needs username")
        methods = [
            key
            for key, given in (
                ("token", self.token is not None or self.token_file is not None),
                ("username", self.username is not None),
                ("nkeySeedFile", self.nkey_seed_file is not None),
                ("credentialsFile", self.credentials_file is not None),
            )
            if given
        ]
        if len(methods) > 1:
            problems.append(f"authenticate one way: {', '.join(methods)} are all set")
        refuse(type(self).__name__, problems)
        return self

    @property
    def method(self) -> str:
        """What ``status`` and the start-up log show in place of an HTTP method."""
        return "PUBLISH"

    @property
    def host(self) -> str:
        """The servers' hosts and ports (never credentials): safe to log and show."""
        return ",".join(urlsplit(url).netloc for url in self.servers)

    def files(self) -> list[Path]:
        """Every file this forwarder reads (a reload watches them)."""
        candidates = (
            self.token_file,
            self.password_file,
            self.nkey_seed_file,
            self.credentials_file,
            self.tls.ca_file,
            self.tls.cert_file,
            self.tls.key_file,
        )
        return [path for path in candidates if path is not None]

    def secrets(self) -> list[str]:
        """Every secret value of this forwarder, raw, for the masker."""
        values = [s.get_secret_value() for s in (self.token, self.password) if s is not None]
        return [value for value in values if value]


def as_kind(value: Any) -> str:
    """The ``kind`` of a raw forwarder entry, for the union's discriminator (absent: webhook)."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind == "nats" else "webhook"


_SEED = re.compile(r"^S[A-Z][A-Z2-7]{56}$")


def seed_problem(text: str) -> str | None:
    """Why ``text`` is not an NKey seed (``SU...``), or None; never echoes the text."""
    if not _SEED.fullmatch(text.strip()):
        return "the file does not hold an NKey seed (one line of 58 characters starting with S)"
    return None
