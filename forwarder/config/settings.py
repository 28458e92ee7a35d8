"""Configuration: pydantic models for the YAML file, environment overrides, and loading.

Design decisions:

* Keys are camelCase in YAML (Chainloop's ``auditLogForwarders`` shape) and
  snake_case in Python; every model forbids unknown keys, because a typo that
  is silently ignored (``tokne:``) is an outage found weeks later.
* Environment variables override the file through pydantic-settings, prefix
  ``AUDIT_FORWARDER_`` and ``__`` for nesting. pydantic-settings yields
  snake_case keys from the environment, which would collide with the camelCase
  keys of the file during its deep merge, so the environment source camelizes
  its keys first (``AUDIT_FORWARDER_INGEST__MAX_REQUEST_BYTES`` →
  ``ingest.maxRequestBytes``).
* ``${VAR}`` (and ``${VAR:-default}``) in string values of the file is expanded
  before validation; a missing variable is an error with its YAML path.
* ``load_config`` raises :class:`ConfigError` listing *every* problem with its
  YAML path (``auditLogForwarders[1].method: must be one of POST, PUT, PATCH``);
  it never exits the process — only ``cli.py`` decides that.
* Secrets are ``SecretStr``; ``tokenFile`` is read here, so the rest of the
  daemon only ever sees a resolved token.
* Hostile documents are refused with a ConfigError, never a hang or a
  traceback: ``yaml.safe_load`` keeps a "billion laughs" alias bomb small by
  sharing aliased nodes, but every walk of the tree (``expand_env``, pydantic)
  visits each path — nine aliases of nine aliases nine levels deep is 387
  million strings — and an alias can make the tree cyclic. So the document is
  measured first, as a walk would see it, against limits far above any real
  configuration (a few hundred values, five levels).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from forwarder.destinations.webhook.auth import check_token
from forwarder.destinations.webhook.options import Model as _Model
from forwarder.destinations.webhook.options import RetryConfig, WebhookForwarderConfig
from forwarder.destinations.webhook.signing import check_secret
from forwarder.destinations.webhook.templates import compile_template
from forwarder.destinations.webhook.transport import check_tls, is_private
from forwarder.errors import ConfigError, ConfigProblem

__all__ = ["RetryConfig", "Settings", "WebhookForwarderConfig", "load_config", "parse_config"]

ENV_PREFIX = "AUDIT_FORWARDER_"
# 0 asks the kernel for a free port; the bound address is logged at startup.
Port = Annotated[int, Field(ge=0, le=65535)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# Limits of a document, counting every use of a YAML alias (see the module docstring).
MAX_VALUES = 10_000
MAX_DEPTH = 32


class IngestConfig(_Model):
    """The local listeners applications send events to."""

    host: str = "127.0.0.1"
    port: Port | None = 8686
    unix_socket: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    max_request_bytes: PositiveInt = 10 * 1024 * 1024
    max_event_bytes: PositiveInt = 1024 * 1024

    @model_validator(mode="after")
    def _some_listener(self) -> IngestConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or tokenFile, not both")
        if self.port is None and self.unix_socket is None:
            raise ValueError("at least one of port and unixSocket must be set")
        if self.max_event_bytes > self.max_request_bytes:
            raise ValueError("maxEventBytes must not exceed maxRequestBytes")
        return self


class BufferConfig(_Model):
    """The SQLite write-ahead buffer."""

    path: Path = Path("./data/buffer.db")
    synchronous: Literal["normal", "full"] = "normal"
    max_bytes: PositiveInt | None = None  # None: bounded only by the disk
    retention_hours: PositiveFloat = 168.0
    history_max_rows: PositiveInt = 100_000

    @field_validator("synchronous", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MetricsConfig(_Model):
    """The listener for /metrics, /healthz and /readyz."""

    host: str = "0.0.0.0"
    port: Port = 9464


class LoggingConfig(_Model):
    """Log level and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """The whole configuration of one daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )

    ingest: IngestConfig = IngestConfig()
    buffer: BufferConfig = BufferConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown_grace_seconds: PositiveFloat = 10.0
    audit_log_forwarders: list[WebhookForwarderConfig] = Field(min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (init kwargs), as operators expect.
        return (_CamelEnvSource(settings_cls), init_settings)

    # A field validator, not a model one: the problem gets the path
    # auditLogForwarders and is reported even when other sections are invalid.
    @field_validator("audit_log_forwarders")
    @classmethod
    def _names(cls, specs: list[WebhookForwarderConfig]) -> list[WebhookForwarderConfig]:
        seen: set[str] = set()
        for index, spec in enumerate(specs):
            if spec.name is None:
                object.__setattr__(spec, "name", f"{spec.kind}-{index}")
            if spec.name in seen:
                raise ValueError(f"forwarder name {spec.name!r} is used twice")
            seen.add(str(spec.name))
        return specs

    def forwarder_names(self) -> list[str]:
        """Names of the configured forwarders, in configuration order."""
        return [str(spec.name) for spec in self.audit_log_forwarders]

    def secrets(self) -> list[str]:
        """Every secret value of this configuration, for log redaction."""
        values = [self.ingest.token]
        for spec in self.audit_log_forwarders:
            values += [spec.token, spec.signing_secret]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


def _camelize(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            (to_camel(key) if isinstance(key, str) and "_" in key else key): _camelize(item)
            for key, item in value.items()
        }
    return value


class _CamelEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source with keys matching the file's camelCase."""

    def __call__(self) -> dict[str, Any]:
        return dict(_camelize(super().__call__()))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            # As in sh and docker compose, `:-` also replaces a variable set to "".
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            problems.append(ConfigProblem(path, f"environment variable {name} is not set"))
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {
            key: expand_env(item, _join(path, str(key)), problems) for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand_env(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def format_location(location: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a YAML path: ``a.b[1].c``."""
    path = ""
    for part in location:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _model_at(location: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at ``location`` (for did-you-mean hints)."""
    model: type[BaseModel] = Settings
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        candidates = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _message(error: Any) -> str:
    kind = error["type"]
    location = error["loc"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        model = _model_at(location)
        hint = ""
        if model is not None:
            known = [f.alias or name for name, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(location[-1]), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(known)})"
        return f"unknown key{hint}"
    if kind == "literal_error" and location and location[-1] == "kind":
        # reprlib: a hostile multi-megabyte value must not be echoed whole.
        return f"unsupported kind {reprlib.repr(error['input'])}: the only kind is webhook"
    if kind == "literal_error":
        expected = str(error["ctx"]["expected"]).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


def problems_from(exc: ValidationError) -> list[ConfigProblem]:
    """Translate a pydantic ValidationError into YAML-path problems."""
    problems = []
    for error in exc.errors(include_url=False):
        location, message = tuple(error["loc"]), _message(error)
        key = location[-1] if location else None
        if error["type"] == "extra_forbidden" and isinstance(key, str) and ":" in key:
            # `{token:SECRET}` (no space after the colon) is a single key in a flow
            # mapping: echo only what precedes the colon, the rest may be a secret.
            location = (*location[:-1], f"{key.partition(':')[0]}:...")
            message = "unknown key (missing a space after ':'?)"
        problems.append(ConfigProblem(format_location(location), message))
    return problems


def _check_size(document: Any) -> None:
    """Refuse a document past MAX_VALUES or MAX_DEPTH; stops at the limit, so it is bounded."""
    values = 0
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            message = f"nested more than {MAX_DEPTH} levels deep (or an alias refers to itself)"
            raise ConfigError([ConfigProblem("", f"the configuration is {message}")])
        values += len(value)
        if values > MAX_VALUES:
            message = f"has more than {MAX_VALUES} values, counting each use of an alias"
            raise ConfigError([ConfigProblem("", f"the configuration {message}")])
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children)


def parse_config(document: Any) -> Settings:
    """Validate an already-parsed YAML document (plus the environment) into Settings."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([ConfigProblem("", "the configuration must be a YAML mapping")])
    _check_size(document)
    # Settings(**document) would raise TypeError on a key like `1:` or `null:`.
    problems = [
        ConfigProblem(str(key), "keys should be strings")
        for key in document
        if not isinstance(key, str)
    ]
    expanded = expand_env(document, "", problems)
    if problems:
        raise ConfigError(problems)
    try:
        settings = Settings(**expanded)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc)) from None
    except SettingsError as exc:
        # An AUDIT_FORWARDER_* variable for a whole section that is not valid JSON.
        reason = f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
        raise ConfigError([ConfigProblem("", f"environment override: {reason}")]) from None
    return _check_forwarders(_resolve_secret_files(settings))


def _read_secret_file(path: Path, where: str, problems: list[ConfigProblem]) -> SecretStr | None:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        problems.append(ConfigProblem(where, f"cannot read {path}: {reason}"))
        return None
    if not secret:
        problems.append(ConfigProblem(where, "the file is empty"))
        return None
    return SecretStr(secret)


def _resolve_secret_files(settings: Settings) -> Settings:
    """Read every ``*File`` secret (Kubernetes Secret mounts) into its field."""
    problems: list[ConfigProblem] = []
    pairs: list[tuple[Any, str, str, str]] = [
        (settings.ingest, "token_file", "token", "ingest.tokenFile")
    ]
    for index, spec in enumerate(settings.audit_log_forwarders):
        where = f"auditLogForwarders[{index}]"
        pairs.append((spec, "token_file", "token", f"{where}.tokenFile"))
        pairs.append((spec, "signing_secret_file", "signing_secret", f"{where}.signingSecretFile"))
    for model, file_field, value_field, where in pairs:
        path = getattr(model, file_field)
        if path is None:
            continue
        secret = _read_secret_file(path, where, problems)
        if secret is not None:
            object.__setattr__(model, value_field, secret)
    if problems:
        raise ConfigError(problems)
    return settings


def _check_forwarders(settings: Settings) -> Settings:
    """Checks that need resolved secrets or files: they fail check-config, not deliveries."""
    problems: list[ConfigProblem] = []
    for index, spec in enumerate(settings.audit_log_forwarders):
        where = f"auditLogForwarders[{index}]"
        token_problem = check_token(spec)
        if token_problem:
            problems.append(ConfigProblem(f"{where}.token", token_problem))
        if spec.signing_secret is not None:
            secret_problem = check_secret(spec.signing_secret.get_secret_value())
            if secret_problem:
                problems.append(ConfigProblem(f"{where}.signingSecret", secret_problem))
        tls_problem = check_tls(spec.tls)
        if tls_problem:
            problems.append(ConfigProblem(f"{where}.tls", tls_problem))
        if spec.template is not None:
            try:
                compile_template(spec.template)
            except ValueError as exc:
                problems.append(ConfigProblem(f"{where}.template", str(exc)))
        host = urlsplit(spec.uri).hostname or ""
        if spec.deny_private_networks and _is_ip(host) and is_private(host):
            problems.append(
                ConfigProblem(
                    f"{where}.uri",
                    f"{host} is a private address and denyPrivateNetworks is true",
                )
            )
    if problems:
        raise ConfigError(problems)
    return settings


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def load_config(path: str | Path) -> Settings:
    """Read, expand and validate a YAML configuration file; raise ConfigError."""
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([ConfigProblem("", f"cannot read {config_path}: {reason}")]) from None
    try:
        document = yaml.safe_load(text)
    except RecursionError:
        # PyYAML's composer recurses once per level: a few hundred `[` exhaust the stack.
        reason = f"{config_path} is nested too deeply to parse"
        raise ConfigError([ConfigProblem("", reason)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [ConfigProblem("", f"{config_path} is not valid YAML{where}: {problem}")]
        ) from None
    return parse_config(document)
