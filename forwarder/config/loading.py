"""Loading a configuration file: YAML, ``${VAR}`` expansion, relative paths, secret files, checks.

* ``${VAR}`` (and ``${VAR:-default}``) in string values of the file is expanded
  before validation; a missing variable is an error with its YAML path.
  ``$${`` writes a literal ``${`` (as ``$$`` does in docker compose), for a
  value that must contain one, such as a template placeholder.
* ``load_config`` raises :class:`ConfigError` listing *every* problem with its
  YAML path (``auditLogForwarders[1].method: must be one of POST, PUT, PATCH``);
  it never exits the process — only ``cli.py`` decides that. One kind of
  problem never hides another: when pydantic refuses part of the document,
  the checks that need resolved files (secret files, a token's form, a signing
  key, TLS files) still run on every forwarder that is valid on its own, so
  a broken forwarder 1 does not hide a short signing secret in forwarder 2.
  A problem in a value that came from an ``AUDIT_FORWARDER_*`` variable names
  the variable, since the operator will not find the value in the file.
* Relative paths (``buffer.path``, ``ingest.unixSocket``, ``tokenFile``,
  ``signingSecretFile``, the ``tls`` files, ``buffer.encryption``'s key
  files) are resolved against the directory
  of the configuration file, not the working directory: the same file means
  the same buffer whichever directory the daemon, ``check-config`` or an
  operator command was started from. That holds for the defaults too
  (``./data/buffer.db`` is beside the configuration file).
* ``tokenFile`` and ``signingSecretFile`` are read here, so the rest of the
  daemon only ever sees a resolved secret; checks that need a resolved secret
  or a readable file run after that, so they fail ``check-config`` instead of
  deliveries.
* Hostile documents are refused with a ConfigError, never a hang or a
  traceback: ``yaml.safe_load`` keeps a "billion laughs" alias bomb small by
  sharing aliased nodes, but every walk of the tree (``expand_env``, pydantic)
  visits each path — nine aliases of nine aliases nine levels deep is 387
  million strings — and an alias can make the tree cyclic. So the document is
  measured first, as a walk would see it, against limits far above any real
  configuration (a few hundred values, five levels).
* ``check-config`` and every operator command load a configuration, so this
  module imports only what validation needs: the webhook transport (and with
  it aiohttp, ~120 ms of start-up) only when a forwarder has TLS files to
  load or an IP address to judge against ``denyPrivateNetworks``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_settings import SettingsError

from forwarder.buffer.encryption import KeyFileError, read_key
from forwarder.config.problems import EnvironmentOrigins, join_path, problems_from
from forwarder.config.settings import BufferConfig, IngestConfig, Settings, environment_overrides
from forwarder.destinations.kinds import AnyForwarderConfig, ForwarderConfig
from forwarder.destinations.nats.options import NatsForwarderConfig, seed_problem
from forwarder.destinations.webhook.auth import check_token
from forwarder.destinations.webhook.signing import check_secret
from forwarder.destinations.webhook.templates import compile_template
from forwarder.errors import ConfigError, ConfigProblem

# Limits of a document, counting every use of a YAML alias (see the module docstring).
MAX_VALUES = 10_000
MAX_DEPTH = 32

# `$${` first: at that position it is the escape, never the start of a variable.
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Top-level keys in the order problems are listed (the order of the reference).
_SECTIONS = ("", *(field.alias or name for name, field in Settings.model_fields.items()))
FORWARDERS = "auditLogForwarders"
FORWARDER: TypeAdapter[AnyForwarderConfig] = TypeAdapter(ForwarderConfig)


def expand_env(value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree; ``$${`` is ``${``."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name is None:
                return "${"
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
            key: expand_env(item, join_path(path, str(key)), problems)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand_env(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    return value


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


def parse_config(document: Any, base_dir: Path | None = None) -> Settings:
    """Validate an already-parsed YAML document (plus the environment) into Settings.

    Relative paths are resolved against ``base_dir`` (the configuration
    file's directory); with None they stay relative to the working directory.
    """
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
    expanded = expand_env(
        {key: value for key, value in document.items() if isinstance(key, str)}, "", problems
    )
    # A missing variable was replaced by "": what validation then says about
    # that value would only repeat the problem.
    unset = {problem.path for problem in problems}
    try:
        settings = Settings(**expanded)
    except ValidationError as exc:
        overrides = environment_overrides()
        refused = problems_from(exc, EnvironmentOrigins(overrides, os.environ))
        problems += [p for p in refused if _bare(p.path) not in unset]
        merged = _merge(expanded, overrides)
        found = _check_valid_parts(merged, {_bare(p.path) for p in problems}, base_dir)
        problems += [p for p in found if p.path not in unset]
        raise ConfigError(_in_reference_order(problems)) from None
    except SettingsError as exc:
        # An AUDIT_FORWARDER_* variable for a whole section that is not valid JSON.
        reason = f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
        problems.append(ConfigProblem("", f"environment override: {reason}"))
        raise ConfigError(problems) from None
    problems += [p for p in _check_settings(settings, base_dir) if p.path not in unset]
    if problems:
        raise ConfigError(_in_reference_order(problems))
    return settings


def _bare(path: str) -> str:
    """A problem's YAML path without the ``(from VARIABLE)`` note."""
    return path.partition(" (from ")[0]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, section by section, as pydantic-settings merges them."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _in_reference_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """Problems grouped by section (in the reference's order) and by forwarder; stable."""

    def key(problem: ConfigProblem) -> tuple[int, int]:
        section = re.split(r"[.\[ ]", problem.path, maxsplit=1)[0]
        rank = _SECTIONS.index(section) if section in _SECTIONS else len(_SECTIONS)
        index = re.match(rf"{FORWARDERS}\[(\d+)\]", problem.path)
        return rank, int(index.group(1)) if index else -1

    return sorted(problems, key=key)


def _is_refused(path: str, refused: set[str]) -> bool:
    """Whether validation refused ``path`` or anything inside it."""
    return any(p == path or p.startswith((f"{path}.", f"{path}[")) for p in refused)


def _check_valid_parts(
    merged: dict[str, Any], refused: set[str], base_dir: Path | None
) -> list[ConfigProblem]:
    """The file checks of each section that is valid on its own, when the whole is not."""
    problems: list[ConfigProblem] = []
    if not _is_refused("ingest", refused):
        try:
            ingest = IngestConfig.model_validate(merged.get("ingest") or {})
        except ValidationError:
            pass  # reported by the validation of the whole
        else:
            problems += _check_ingest(ingest, base_dir)
    if not _is_refused("buffer", refused):
        try:
            buffer = BufferConfig.model_validate(merged.get("buffer") or {})
        except ValidationError:
            pass  # reported by the validation of the whole
        else:
            problems += _check_encryption(buffer, base_dir)
    specs = merged.get(FORWARDERS, merged.get("audit_log_forwarders"))
    for index, raw in enumerate(specs if isinstance(specs, list) else []):
        where = f"{FORWARDERS}[{index}]"
        if _is_refused(where, refused):
            problems += _check_refused_forwarder(raw, where, refused)
            continue
        try:
            spec = FORWARDER.validate_python(raw)
        except ValidationError:
            continue
        problems += _check_forwarder(spec, where, base_dir)
    return problems


def _check_refused_forwarder(raw: Any, where: str, refused: set[str]) -> list[ConfigProblem]:
    """The value checks that need no valid model, on a forwarder validation refused.

    A template and an inline signing secret are judged on their own, so a
    reserved header beside them does not hide what is wrong with them.
    """
    problems: list[ConfigProblem] = []
    if not isinstance(raw, dict):
        return problems
    template, secret = raw.get("template"), raw.get("signingSecret", raw.get("signing_secret"))
    if isinstance(template, str) and f"{where}.template" not in refused:
        problems += _template_problems(template, where)
    if isinstance(secret, str) and f"{where}.signingSecret" not in refused:
        problem = check_secret(secret)
        if problem:
            problems.append(ConfigProblem(f"{where}.signingSecret", problem))
    return problems


def _template_problems(template: str, where: str) -> list[ConfigProblem]:
    try:
        compile_template(template)
    except ValueError as exc:
        return [ConfigProblem(f"{where}.template", str(exc))]
    return []


def _check_settings(settings: Settings, base_dir: Path | None) -> list[ConfigProblem]:
    """Resolve paths and secret files of valid settings; what cannot work, per forwarder."""
    # A section the file leaves out is pydantic's default instance, shared by
    # every Settings: finish a copy of it, never the default itself.
    _set(settings, "ingest", settings.ingest.model_copy())
    _set(settings, "buffer", settings.buffer.model_copy())
    # Only a path someone wrote is relative to the file. The default
    # ./data/buffer.db stays relative to the working directory, as the
    # container image (WORKDIR on its volume) and `make run` rely on.
    if "path" in settings.buffer.model_fields_set:
        _resolve_paths(settings.buffer, ("path",), base_dir)
    problems = _check_ingest(settings.ingest, base_dir)
    problems += _check_encryption(settings.buffer, base_dir)
    for index, spec in enumerate(settings.audit_log_forwarders):
        problems += _check_forwarder(spec, f"{FORWARDERS}[{index}]", base_dir)
    return problems


def _set(model: Any, field: str, value: Any) -> None:
    # The models are frozen for everyone else; loading finishes them in place.
    object.__setattr__(model, field, value)


def _resolved(path: Path, base_dir: Path | None) -> Path:
    return path if base_dir is None or path.is_absolute() else base_dir / path


def _resolve_paths(model: Any, fields: tuple[str, ...], base_dir: Path | None) -> None:
    for field in fields:
        path = getattr(model, field)
        if path is not None:
            _set(model, field, _resolved(path, base_dir))


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


def _read_secret(
    model: Any, file_field: str, value_field: str, where: str, problems: list[ConfigProblem]
) -> None:
    """Read a ``*File`` secret (a Kubernetes Secret mount) into its field."""
    path = getattr(model, file_field)
    if path is not None:
        secret = _read_secret_file(path, where, problems)
        if secret is not None:
            _set(model, value_field, secret)


def _check_encryption(buffer: BufferConfig, base_dir: Path | None) -> list[ConfigProblem]:
    """Resolve ``buffer.encryption``'s key files and read them, so a bad key fails check-config.

    Never quotes a key: a problem names the file and what is wrong with it.
    """
    if buffer.encryption is None:
        return []
    encryption = buffer.encryption.model_copy()
    _set(buffer, "encryption", encryption)
    if encryption.key_file is not None:
        _resolve_paths(encryption, ("key_file",), base_dir)
        places = ["buffer.encryption.keyFile"]
    else:
        keys = [key.model_copy() for key in encryption.keys or []]
        for key in keys:
            _resolve_paths(key, ("file",), base_dir)
        _set(encryption, "keys", keys)
        places = [f"buffer.encryption.keys[{index}].file" for index in range(len(keys))]
    problems = []
    for place, (_, path) in zip(places, encryption.key_files(), strict=True):
        try:
            read_key(path)
        except KeyFileError as exc:
            problems.append(ConfigProblem(place, str(exc)))
    if not problems:
        encryption.load()
    return problems


def _check_ingest(ingest: IngestConfig, base_dir: Path | None) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    _resolve_paths(ingest, ("unix_socket", "token_file"), base_dir)
    _read_secret(ingest, "token_file", "token", "ingest.tokenFile", problems)
    return problems


def _check_forwarder(
    spec: AnyForwarderConfig, where: str, base_dir: Path | None
) -> list[ConfigProblem]:
    """Checks that need resolved secrets or files: they fail check-config, not deliveries."""
    integrity = [] if spec.integrity is None else _check_integrity(spec, where, base_dir)
    if isinstance(spec, NatsForwarderConfig):
        return integrity + _check_nats_forwarder(spec, where, base_dir)
    problems: list[ConfigProblem] = integrity
    _resolve_paths(spec, ("token_file", "signing_secret_file"), base_dir)
    _set(spec, "tls", spec.tls.model_copy())  # maybe the shared default, as above
    _resolve_paths(spec.tls, ("ca_file", "cert_file", "key_file"), base_dir)
    _read_secret(spec, "token_file", "token", f"{where}.tokenFile", problems)
    _read_secret(
        spec, "signing_secret_file", "signing_secret", f"{where}.signingSecretFile", problems
    )
    # The oauth2 client secret and the proxy password may be Secret mounts too.
    for section, file_field, field, key in (
        ("auth", "client_secret_file", "client_secret", "auth.clientSecretFile"),
        ("proxy", "password_file", "password", "proxy.passwordFile"),
    ):
        model = getattr(spec, section)
        if model is not None and getattr(model, file_field) is not None:
            _set(spec, section, model.model_copy())  # the auth section may be the shared default
            _resolve_paths(getattr(spec, section), (file_field,), base_dir)
            _read_secret(getattr(spec, section), file_field, field, f"{where}.{key}", problems)
    token_problem = check_token(spec)
    if token_problem:
        problems.append(ConfigProblem(f"{where}.token", token_problem))
    if spec.signing_secret is not None:
        secret_problem = check_secret(spec.signing_secret.get_secret_value())
        if secret_problem:
            key = "signingSecretFile" if spec.signing_secret_file is not None else "signingSecret"
            problems.append(ConfigProblem(f"{where}.{key}", secret_problem))
    tls = spec.tls
    # The transport module brings aiohttp (~120 ms): imported only when there are
    # TLS files to load or an address to judge, so a plain check-config stays fast.
    if tls.ca_file is not None or tls.cert_file is not None or tls.insecure_skip_verify:
        from forwarder.destinations.webhook.transport import check_tls

        tls_problem = check_tls(tls)
        if tls_problem:
            problems.append(ConfigProblem(f"{where}.tls", tls_problem))
    if spec.template is not None:
        problems += _template_problems(spec.template, where)
    host = urlsplit(spec.uri).hostname or ""
    if spec.deny_private_networks and _is_ip(host) and _is_private(host):
        problems.append(
            ConfigProblem(
                f"{where}.uri",
                f"{host} is a private address and denyPrivateNetworks is true",
            )
        )
    return problems


def _check_nats_forwarder(
    spec: NatsForwarderConfig, where: str, base_dir: Path | None
) -> list[ConfigProblem]:
    """A NATS forwarder's files: secrets read, the seed, credentials and TLS files readable."""
    problems: list[ConfigProblem] = []
    _resolve_paths(
        spec, ("token_file", "password_file", "nkey_seed_file", "credentials_file"), base_dir
    )
    _set(spec, "tls", spec.tls.model_copy())  # maybe the shared default
    _resolve_paths(spec.tls, ("ca_file", "cert_file", "key_file"), base_dir)
    _read_secret(spec, "token_file", "token", f"{where}.tokenFile", problems)
    _read_secret(spec, "password_file", "password", f"{where}.passwordFile", problems)
    # Read again when connecting (a rotated file is used then); read here to fail early.
    for field, key in (("nkey_seed_file", "nkeySeedFile"), ("credentials_file", "credentialsFile")):
        path = getattr(spec, field)
        secret = None if path is None else _read_secret_file(path, f"{where}.{key}", problems)
        problem = None
        if secret is not None and field == "nkey_seed_file":
            problem = seed_problem(secret.get_secret_value())
        elif secret is not None and "BEGIN USER NKEY SEED" not in secret.get_secret_value():
            problem = "the file is not a NATS credentials file (no user NKey seed in it)"
        if problem is not None:
            problems.append(ConfigProblem(f"{where}.{key}", problem))
    for field in ("ca_file", "cert_file", "key_file"):
        path = getattr(spec.tls, field)
        if path is not None and not os.access(path, os.R_OK):
            problems.append(ConfigProblem(f"{where}.tls.{to_camel(field)}", f"cannot read {path}"))
    return problems


def _check_integrity(
    spec: AnyForwarderConfig, where: str, base_dir: Path | None
) -> list[ConfigProblem]:
    """Read ``integrity.signingKeyFile``; check the key can sign (never quoting it)."""
    problems: list[ConfigProblem] = []
    assert spec.integrity is not None
    _set(spec, "integrity", spec.integrity.model_copy())
    integrity = spec.integrity
    _resolve_paths(integrity, ("signing_key_file",), base_dir)
    key = "signingKeyFile" if integrity.signing_key_file is not None else "signingKey"
    _read_secret(integrity, "signing_key_file", "signing_key", f"{where}.integrity.{key}", problems)
    problem = None if problems else integrity.key_problem()
    if problem:
        problems.append(ConfigProblem(f"{where}.integrity.{key}", problem))
    return problems


def _is_private(host: str) -> bool:
    from forwarder.destinations.webhook.transport import is_private  # see _check_forwarder

    return is_private(host)


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
    # absolute(), not resolve(): a Kubernetes ConfigMap mount is a symlink into
    # ..data/, and files beside the config are addressed from the mount's directory.
    return parse_config(document, config_path.absolute().parent)
