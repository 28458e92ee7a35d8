"""The options of one forwarder: Chainloop's kind, uri, token, method, and what receivers need.

Defaults keep Chainloop's behaviour exactly (one JSON event per request,
``Authorization: Bearer <token>``, POST, 5 s timeout); every other option is
opt-in. Cross-field rules are checked here so that a configuration that
cannot work (a template that cannot produce JSON, a custom header that would
override ``Authorization``, ``auth.type: basic`` with a token that is not
``user:password``) fails ``check-config`` instead of failing deliveries.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from forwarder.destinations.options import (
    BatchConfig,
    Model,
    PositiveFloat,
    RetryConfig,
)

# Headers the forwarder owns: a custom header may not set them (Atmos Pro's reserved headers).
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "user-agent",
        "content-length",
        "host",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


class AuthConfig(Model):
    """How the token is sent: bearer, any header, basic, a query parameter, or not at all."""

    type: Literal["bearer", "header", "basic", "query", "none"] = "bearer"
    header: str = Field(default="Authorization", pattern=_HEADER_NAME)
    scheme: str | None = None  # header: "Splunk" gives "Authorization: Splunk <token>"
    param: str = Field(default="token", min_length=1)  # query: ?token=<token>


class CloudEventsConfig(Model):
    """CloudEvents attributes: ``source`` and the prefix put before the event type."""

    source: str = Field(default="audit-forwarder", min_length=1)
    type_prefix: str = ""


class SplunkHecConfig(Model):
    """Splunk HEC envelope fields; ``host`` defaults to this machine's host name."""

    host: str | None = None
    source: str | None = "audit-forwarder"
    sourcetype: str | None = "_json"
    index: str | None = None


class TlsConfig(Model):
    """Private CAs and client certificates (mTLS) for on-prem receivers."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("keyFile needs certFile")
        return self


class ResponseValidator(Model):
    """A 2xx counts only if the JSON value at ``jsonPath`` is one of ``expected``."""

    json_path: str = Field(pattern=r"^\$(\.[^.\[\]]+|\[\d+\])*$")
    expected: list[Any] = Field(min_length=1)


class WebhookForwarderConfig(Model):
    """One entry of ``auditLogForwarders``."""

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    kind: Literal["webhook"]
    uri: str
    token: SecretStr | None = None
    token_file: Path | None = None
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    timeout_seconds: PositiveFloat = 5.0
    retry: RetryConfig = RetryConfig()
    enabled: bool = True
    events: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    exclude_events: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    batch: BatchConfig = BatchConfig()
    format: Literal["json", "ndjson", "cloudevents", "splunk_hec", "template"] = "json"
    cloudevents: CloudEventsConfig = CloudEventsConfig()
    splunk_hec: SplunkHecConfig = SplunkHecConfig()
    template: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthConfig = AuthConfig()
    signing_secret: SecretStr | None = None
    signing_secret_file: Path | None = None
    compression: Literal["none", "gzip"] = "none"
    tls: TlsConfig = TlsConfig()
    response_validators: list[ResponseValidator] = Field(default_factory=list)
    deny_private_networks: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("uri")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port: {exc}") from None
        return value

    @field_validator("headers")
    @classmethod
    def _custom_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not re.fullmatch(_HEADER_NAME, name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name} is reserved: the forwarder sets it")
            if "\r" in value or "\n" in value:
                raise ValueError(f"the value of {name} must be one line")
        return headers

    @model_validator(mode="after")
    def _consistent(self) -> WebhookForwarderConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or tokenFile, not both")
        if self.signing_secret is not None and self.signing_secret_file is not None:
            raise ValueError("set signingSecret or signingSecretFile, not both")
        if self.format == "template" and not self.template:
            raise ValueError("format: template needs a template")
        if self.template is not None and self.format != "template":
            raise ValueError("template is set but format is not template")
        if self.auth.type == "header" and self.auth.header.lower() in {
            h.lower() for h in self.headers
        }:
            raise ValueError(f"headers must not set {self.auth.header}: auth sends the token there")
        if self.auth.type == "header" and self.auth.header.lower() in RESERVED_HEADERS - {
            "authorization"
        }:
            raise ValueError(f"auth.header cannot be {self.auth.header}: the forwarder sets it")
        return self

    @property
    def host(self) -> str:
        """The receiver's host (and port if explicit): safe to log and show."""
        return urlsplit(self.uri).netloc.rpartition("@")[2]
