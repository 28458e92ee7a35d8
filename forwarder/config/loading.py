"""Loading a configuration file: YAML, ``${VAR}`` expansion, overrides, validation, problems.

* ``${VAR}`` (and ``${VAR:-default}``) in string values of the file is expanded
  before validation; a missing variable is an error with its YAML path.
  ``$${`` writes a literal ``${`` (as ``$$`` does in docker compose), for a
  value that must contain one, such as a template placeholder. The expansion
  itself (and the document's size limits) is ``forwarder/expansion.py``,
  shared with the operator commands' fast reader (``ops/locate.py``); this
  module walks the tree with it, keeping each value's YAML path.
* ``load_config`` raises :class:`ConfigError` listing *every* problem with its
  YAML path (``auditLogForwarders[1].method: must be one of POST, PUT, PATCH``);
  it never exits the process — only ``cli.py`` decides that. One kind of
  problem never hides another: when pydantic refuses part of the document,
  the checks that need resolved files (secret files, a token's form, a signing
  key, TLS files) still run on every forwarder that is valid on its own, so
  a broken forwarder 1 does not hide a short signing secret in forwarder 2.
  A problem in a value that came from an ``AUDIT_FORWARDER_*`` variable names
  the variable, since the operator will not find the value in the file.
* This module decides *which* models get the file checks; resolving relative
  paths, reading ``*File`` secrets and the checks that need them are
  ``files.py``, split off because they change with what each destination
  keeps in files, not with the document's grammar.
* Hostile documents are refused with a ConfigError, never a hang or a
  traceback: the document is measured first, as a walk would see it (each
  use of an alias counted, so an alias bomb or a cycle is caught), against
  limits far above any real configuration; and a document nested too deep
  for PyYAML's recursive composer is reported, not a RecursionError.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import SettingsError

from forwarder.config.files import (
    FORWARDERS,
    check_encryption,
    check_forwarder,
    check_ingest,
    check_settings,
    template_problems,
)
from forwarder.config.problems import EnvironmentOrigins, join_path, problems_from
from forwarder.config.settings import BufferConfig, IngestConfig, Settings, environment_overrides
from forwarder.destinations.kinds import AnyForwarderConfig, ForwarderConfig
from forwarder.destinations.webhook.signing import check_secret
from forwarder.errors import ConfigError, ConfigProblem

# The limits are re-exported (`X as X`): the loader's and the CLI's tests import them from here.
from forwarder.expansion import MAX_DEPTH as MAX_DEPTH
from forwarder.expansion import MAX_VALUES as MAX_VALUES
from forwarder.expansion import expand, size_problem

# Top-level keys in the order problems are listed (the order of the reference).
_SECTIONS = ("", *(field.alias or name for name, field in Settings.model_fields.items()))
FORWARDER: TypeAdapter[AnyForwarderConfig] = TypeAdapter(ForwarderConfig)


def expand_env(value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree; ``$${`` is ``${``."""
    if isinstance(value, str):
        expanded, missing = expand(value)
        problems += [
            ConfigProblem(path, f"environment variable {name} is not set") for name in missing
        ]
        return expanded
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
    problem = size_problem(document)
    if problem is not None:
        raise ConfigError([ConfigProblem("", problem)])


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
    problems += [p for p in check_settings(settings, base_dir) if p.path not in unset]
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
            problems += check_ingest(ingest, base_dir)
    if not _is_refused("buffer", refused):
        try:
            buffer = BufferConfig.model_validate(merged.get("buffer") or {})
        except ValidationError:
            pass  # reported by the validation of the whole
        else:
            problems += check_encryption(buffer, base_dir)
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
        problems += check_forwarder(spec, where, base_dir)
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
        problems += template_problems(template, where)
    if isinstance(secret, str) and f"{where}.signingSecret" not in refused:
        problem = check_secret(secret)
        if problem:
            problems.append(ConfigProblem(f"{where}.signingSecret", problem))
    return problems


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
