"""The options of one forwarder: Chainloop's kind, uri, token, method, and what receivers need.

Defaults keep Chainloop's behaviour exactly (one JSON event per request,
``Authorization: Bearer <token>``, POST, 5 s timeout); every other option is
opt-in. Cross-field rules are checked here so that a configuration that
cannot work (a template that cannot produce JSON, a custom header that would
override ``Authorization``, ``auth.type: basic`` with a token that is not
``user:password``, the same status code given two outcomes in ``statusPolicy``)
fails ``check-config`` instead of failing deliveries.

``auth.type: oauth2``, ``proxy`` and a ``signingSecret`` list (rotation) are
checked here too: oauth2 without ``tokenUrl`` or a client secret, its keys
under another type, a proxy URL that is not http(s) or carries credentials,
an empty list of secrets. A list of signing secrets is held as one
``SecretStr``, one secret per line, which is also the form
``signingSecretFile`` takes, so everything downstream reads one value.

``statusPolicy`` is webhook-only (it maps HTTP statuses, which another kind of
destination does not have), so it lives here rather than with the shared
options. Its lookup tables are built once, when the configuration is loaded,
so classifying an answer is two dict lookups.

Every validator here reports all it finds, not the first problem: a
validator collects its messages and :func:`refuse` raises them together,
each as its own pydantic error at the validator's location, so
``check-config`` lists them all in one run (two reserved headers, or both
``token`` and ``tokenFile`` set *and* a template with the wrong format).
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from forwarder.destinations.options import (
    DeliveryOptions,
    Model,
    PositiveFloat,
    refuse,
)
from forwarder.destinations.webhook.access import (
    HEADER_NAME,
    AuthConfig,
    ProxyConfig,
    absolute_http_problem,
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


def _signing_secrets(value: Any) -> Any:
    """A list of secrets as one value, one secret per line (as ``signingSecretFile`` holds them)."""
    if not isinstance(value, list):
        return value
    if not value:
        raise ValueError("the list is empty: give at least one secret, or leave signingSecret out")
    if not all(isinstance(item, str) for item in value):
        raise ValueError("each secret in the list must be a string")
    if any("\n" in item or "\r" in item for item in value):
        raise ValueError("a secret in the list must be one line")
    return "\n".join(value)


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


StatusVerdict = Literal["success", "retry", "dead_letter"]
_RANGE = re.compile(r"^([2-5])xx$")


def _status_rule(value: Any) -> int | str:
    """A status code (100-599) or a range ``"2xx"``..``"5xx"``, normalised ("5XX" → "5xx")."""
    if isinstance(value, str):
        text = value.strip().lower()
        if _RANGE.match(text):
            return text
        if text.isascii() and text.isdigit():
            value = int(text)
    # bool is an int subclass: `- true` in YAML is a mistake, not status 1.
    if isinstance(value, int) and not isinstance(value, bool):
        if not 100 <= value <= 599:
            raise ValueError(f"{value} is not a status code: codes are 100-599")
        return value
    # reprlib: a hostile value must not be echoed whole.
    raise ValueError(
        f"{reprlib.repr(value)} is not a status code (100-599) or a range (2xx, 3xx, 4xx, 5xx)"
    )


StatusRule = Annotated[int | str, BeforeValidator(_status_rule)]


class StatusPolicy(Model):
    """Which HTTP statuses mean delivered, retry or dead-letter, overriding the defaults.

    Each list holds codes (``404``) and ranges (``"4xx"``). An explicit code
    beats a range, and the policy beats the built-in classification; a
    status the policy does not name is classified as usual. A code (or a
    range) may be in one list only.
    """

    retry: list[StatusRule] = Field(default_factory=list)
    dead_letter: list[StatusRule] = Field(default_factory=list)
    success: list[StatusRule] = Field(default_factory=list)
    _codes: dict[int, StatusVerdict] = PrivateAttr(default_factory=dict)
    _ranges: dict[int, StatusVerdict] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _one_outcome_each(self) -> StatusPolicy:
        seen: dict[int | str, str] = {}
        lists = (("retry", self.retry), ("deadLetter", self.dead_letter), ("success", self.success))
        problems = []
        for key, rules in lists:
            for rule in rules:
                other = seen.setdefault(rule, key)
                if other != key:
                    problems.append(
                        f"{rule} is in both {other} and {key}: a status can have one outcome"
                    )
        refuse(type(self).__name__, problems)
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Build the lookup tables once (the model is immutable)."""
        verdicts: tuple[tuple[StatusVerdict, list[int | str]], ...] = (
            ("retry", self.retry),
            ("dead_letter", self.dead_letter),
            ("success", self.success),
        )
        for verdict, rules in verdicts:
            for rule in rules:
                if isinstance(rule, int):
                    self._codes[rule] = verdict
                else:
                    self._ranges[int(rule[0])] = verdict

    def verdict(self, status: int) -> StatusVerdict | None:
        """What the policy says about ``status``; None when it does not name it."""
        return self._codes.get(status) or self._ranges.get(status // 100)


class WebhookForwarderConfig(DeliveryOptions):
    """One entry of ``auditLogForwarders`` (with the shared delivery options of its base)."""

    kind: Literal["webhook"]
    uri: str
    token: SecretStr | None = None
    token_file: Path | None = None
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    timeout_seconds: PositiveFloat = 5.0
    format: Literal["json", "ndjson", "cloudevents", "splunk_hec", "template"] = "json"
    cloudevents: CloudEventsConfig = CloudEventsConfig()
    splunk_hec: SplunkHecConfig = SplunkHecConfig()
    template: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthConfig = AuthConfig()
    # One secret, or a list during rotation: held as one value, one secret per line.
    signing_secret: Annotated[SecretStr | None, BeforeValidator(_signing_secrets)] = None
    signing_secret_file: Path | None = None
    compression: Literal["none", "gzip"] = "none"
    tls: TlsConfig = TlsConfig()
    response_validators: list[ResponseValidator] = Field(default_factory=list)
    status_policy: StatusPolicy = StatusPolicy()
    deny_private_networks: bool = False
    proxy: ProxyConfig | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("uri")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        problem = absolute_http_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("headers")
    @classmethod
    def _custom_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        problems = []
        for name, value in headers.items():
            if not re.fullmatch(HEADER_NAME, name):
                # reprlib: a hostile name must not be echoed whole.
                problems.append(f"{reprlib.repr(name)} is not a valid header name")
                continue
            if name.lower() in RESERVED_HEADERS:
                problems.append(f"{name} is reserved: the forwarder sets it")
            if "\r" in value or "\n" in value:
                problems.append(f"the value of {name} must be one line")
        refuse(cls.__name__, problems)
        return headers

    @model_validator(mode="after")
    def _consistent(self) -> WebhookForwarderConfig:
        problems = []
        if self.token is not None and self.token_file is not None:
            problems.append("set token or tokenFile, not both")
        if self.signing_secret is not None and self.signing_secret_file is not None:
            problems.append("set signingSecret or signingSecretFile, not both")
        if self.format == "template" and not self.template:
            problems.append("format: template needs a template")
        if self.template is not None and self.format != "template":
            problems.append("template is set but format is not template")
        if self.integrity is not None and self.format == "template":
            problems.append(
                "integrity needs format json, ndjson, cloudevents or splunk_hec: a template"
                " rewrites the event, so a receiver could not check its hash"
            )
        header = self.auth.header
        if self.auth.type == "header" and header.lower() in {h.lower() for h in self.headers}:
            problems.append(f"headers must not set {header}: auth sends the token there")
        if self.auth.type == "header" and header.lower() in RESERVED_HEADERS - {"authorization"}:
            problems.append(f"auth.header cannot be {header}: the forwarder sets it")
        refuse(type(self).__name__, problems)
        return self

    @property
    def host(self) -> str:
        """The receiver's host (and port if explicit): safe to log and show."""
        return urlsplit(self.uri).netloc.rpartition("@")[2]
