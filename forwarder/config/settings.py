"""Configuration: the pydantic models of the YAML file and the environment overrides.

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
* Secrets are ``SecretStr``. Reading the file and ``${VAR}`` expansion are
  in ``loading.py``; the ``*File`` secrets and the checks that need them in
  ``files.py``; the translation of pydantic's errors into YAML paths is in
  ``problems.py``.
* Paths here are as written; ``files.py`` resolves relative ones against
  the configuration file's directory (the default ``./data/buffer.db`` stays
  relative to the working directory), which a model cannot know.
* Validators report every problem they find, not the first (see
  :func:`forwarder.destinations.webhook.options.refuse`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from forwarder.buffer.encryption import KEY_ID_PATTERN, NO_KEYS, Keyring
from forwarder.destinations.kinds import AnyForwarderConfig, ForwarderConfig, secrets_of
from forwarder.destinations.options import Model as _Model
from forwarder.destinations.options import refuse

ENV_PREFIX = "AUDIT_FORWARDER_"
# 0 asks the kernel for a free port; the bound address is logged at startup.
Port = Annotated[int, Field(ge=0, le=65535)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class IngestConfig(_Model):
    """The local listeners applications send events to."""

    host: str = "127.0.0.1"
    port: Port | None = 8686
    unix_socket: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    max_request_bytes: PositiveInt = 10 * 1024 * 1024
    max_event_bytes: PositiveInt = 1024 * 1024
    # Connection limits (see ingest/listeners.py). None: sized from the open-files limit.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    idle_timeout_seconds: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 60.0
    request_timeout_seconds: Annotated[float, Field(gt=0, le=3_600, allow_inf_nan=False)] = 15.0

    @model_validator(mode="after")
    def _some_listener(self) -> IngestConfig:
        problems = []
        if self.token is not None and self.token_file is not None:
            problems.append("set token or tokenFile, not both")
        if self.port is None and self.unix_socket is None:
            problems.append("at least one of port and unixSocket must be set")
        if self.max_event_bytes > self.max_request_bytes:
            problems.append("maxEventBytes must not exceed maxRequestBytes")
        refuse(type(self).__name__, problems)
        return self


class EncryptionKeyConfig(_Model):
    """One key of ``buffer.encryption.keys``: its id (stored with what it seals) and its file."""

    id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    file: Path


class EncryptionConfig(_Model):
    """Encryption at rest of the buffer (``forwarder.buffer.encryption``).

    ``keyFile`` (one key, its id derived from it) or ``keys`` with ``active``
    (rotation: new rows use the active key, the others still open older rows).
    ``files.py`` resolves the files and reads the keys once, so a missing or
    malformed key file fails ``check-config``.
    """

    key_file: Path | None = None
    keys: list[EncryptionKeyConfig] | None = None
    active: str | None = None
    _keyring: Keyring | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_form(self) -> EncryptionConfig:
        problems = []
        if self.key_file is not None and self.keys is not None:
            problems.append("set keyFile or keys, not both")
        elif self.key_file is None and self.keys is None:
            problems.append("set keyFile (one key) or keys with active (rotation)")
        if self.keys is not None:
            ids = [key.id for key in self.keys]
            twice = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
            if not ids:
                problems.append("keys must list at least one key")
            if twice:
                problems.append(f"key id {', '.join(twice)} is listed more than once")
            if self.active is None:
                problems.append("active must name the key that encrypts new events")
            elif ids and self.active not in ids:
                listed = ", ".join(ids)
                problems.append(f"active is {self.active!r}, not one of the keys ({listed})")
        elif self.active is not None:
            problems.append("active goes with keys; the single keyFile is always the active key")
        refuse(type(self).__name__, problems)
        return self

    def key_files(self) -> list[tuple[str | None, Path]]:
        """``(id, file)`` per key; the id is None for ``keyFile`` (derived from the key)."""
        if self.keys is None:
            return [(None, self.key_file)] if self.key_file is not None else []
        return [(key.id, key.file) for key in self.keys]

    def load(self) -> Keyring:
        """Read the key files (``KeyFileError`` on a bad one) and keep the keyring."""
        self._keyring = Keyring.from_files(self.key_files(), self.active)
        return self._keyring

    def keyring(self) -> Keyring:
        """The keys, as read by :meth:`load` (read now if they have not been)."""
        return self._keyring if self._keyring is not None else self.load()


class BufferConfig(_Model):
    """The SQLite write-ahead buffer."""

    path: Path = Path("./data/buffer.db")
    synchronous: Literal["normal", "full"] = "normal"
    max_bytes: PositiveInt | None = None  # None: bounded only by the disk
    retention_hours: PositiveFloat = 168.0
    history_max_rows: PositiveInt = 100_000
    encryption: EncryptionConfig | None = None  # None: stored in clear

    def keyring(self) -> Keyring:
        """What the buffer seals and opens with: no keys when encryption is off."""
        return NO_KEYS if self.encryption is None else self.encryption.keyring()

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


class DeliveryConfig(_Model):
    """Where the delivery workers run (see ``forwarder/app.py``).

    ``inline``: in the daemon's own process and event loop, one interpreter
    (the smallest footprint). ``separate``: in a delivery process forked from
    the daemon, so delivery has a core of its own (the highest rate).
    ``auto``: inline; measured, one process keeps up with a sidecar's rates at
    about half the memory (see the README's Performance section).
    """

    process: Literal["auto", "inline", "separate"] = "auto"

    @field_validator("process", mode="before")
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
    delivery: DeliveryConfig = DeliveryConfig()
    shutdown_grace_seconds: PositiveFloat = 10.0
    # Discriminated on `kind` (webhook when absent): see forwarder.destinations.kinds.
    audit_log_forwarders: list[ForwarderConfig] = Field(min_length=1)

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
    def _names(cls, specs: list[AnyForwarderConfig]) -> list[AnyForwarderConfig]:
        seen: set[str] = set()
        problems = []
        for index, spec in enumerate(specs):
            if spec.name is None:
                object.__setattr__(spec, "name", f"{spec.kind}-{index}")
            if spec.name in seen:
                problems.append(f"forwarder name {spec.name!r} is used twice")
            seen.add(str(spec.name))
        refuse(cls.__name__, list(dict.fromkeys(problems)))
        return specs

    def forwarder_names(self) -> list[str]:
        """Names of the configured forwarders, in configuration order."""
        return [str(spec.name) for spec in self.audit_log_forwarders]

    def secrets(self) -> list[str]:
        """Every secret value of this configuration, raw, for the masker of every output.

        The ingest token, and per forwarder what :func:`secrets_of` finds: a
        webhook's token, signing secret, a Basic password on its own, and
        credentials in the URI or in well-known headers; a NATS forwarder's
        token or password; any forwarder's ``integrity`` signing key.
        """
        token = self.ingest.token
        values = [token.get_secret_value()] if token is not None else []
        for spec in self.audit_log_forwarders:
            values += secrets_of(spec)
            if spec.integrity is not None:
                values += spec.integrity.secrets()
        return [value for value in dict.fromkeys(values) if value]


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


def environment_overrides() -> dict[str, Any]:
    """What the ``AUDIT_FORWARDER_*`` variables set, as the camelCase tree merged over the file.

    Raises pydantic-settings' ``SettingsError`` when a whole-section variable
    is not valid JSON, as building :class:`Settings` does.
    """
    return _CamelEnvSource(Settings)()
