"""Loading a configuration file: YAML, ``${VAR}`` expansion, secret files, checks.

* ``${VAR}`` (and ``${VAR:-default}``) in string values of the file is expanded
  before validation; a missing variable is an error with its YAML path.
* ``load_config`` raises :class:`ConfigError` listing *every* problem with its
  YAML path (``auditLogForwarders[1].method: must be one of POST, PUT, PATCH``);
  it never exits the process — only ``cli.py`` decides that.
* ``tokenFile`` and ``signingSecretFile`` are read here, so the rest of the
  daemon only ever sees a resolved secret; checks that need a resolved secret
  or a readable file (a token's form, a signing key, TLS files, templates)
  run after that, so they fail ``check-config`` instead of deliveries.
* Hostile documents are refused with a ConfigError, never a hang or a
  traceback: ``yaml.safe_load`` keeps a "billion laughs" alias bomb small by
  sharing aliased nodes, but every walk of the tree (``expand_env``, pydantic)
  visits each path — nine aliases of nine aliases nine levels deep is 387
  million strings — and an alias can make the tree cyclic. So the document is
  measured first, as a walk would see it, against limits far above any real
  configuration (a few hundred values, five levels).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from forwarder.config.problems import join_path, problems_from
from forwarder.config.settings import Settings
from forwarder.destinations.webhook.auth import check_token
from forwarder.destinations.webhook.signing import check_secret
from forwarder.destinations.webhook.templates import compile_template
from forwarder.destinations.webhook.transport import check_tls, is_private
from forwarder.errors import ConfigError, ConfigProblem

# Limits of a document, counting every use of a YAML alias (see the module docstring).
MAX_VALUES = 10_000
MAX_DEPTH = 32

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
