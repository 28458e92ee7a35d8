"""Validation errors as an operator reads them: a YAML path and one sentence each.

pydantic reports ``('auditLogForwarders', 1, 'method')`` and "Input should be
'POST', 'PUT' or 'PATCH'"; the operator wrote YAML, so the problem is rendered
as ``auditLogForwarders[1].method: must be one of POST, PUT, PATCH``. An
unknown key gets a did-you-mean hint from the keys of the model that holds it,
and a value is echoed only through ``reprlib`` (a hostile value must not be
printed whole, and a secret pasted into the wrong key must not be echoed).

A value can also come from an ``AUDIT_FORWARDER_*`` environment variable,
which the operator will not find in the file, so a problem in such a value
names the variable after its path: ``ingest.port (from
AUDIT_FORWARDER_INGEST__PORT): input should be a valid integer``.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_snake

from forwarder.config.settings import ENV_PREFIX, Settings
from forwarder.destinations.kinds import KINDS
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.errors import ConfigProblem


def join_path(path: str, key: str) -> str:
    """``a.b`` from ``a`` and ``b``; just ``b`` at the top."""
    return f"{path}.{key}" if path else key


def format_location(location: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a YAML path: ``a.b[1].c``."""
    path = ""
    for part in location:
        path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, str(part))
    return path


def _untagged(location: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str | None]:
    """``location`` without the ``kind`` tag pydantic puts after a forwarder's index, and the tag.

    The forwarder list is a union discriminated on ``kind``: pydantic reports
    ``('auditLogForwarders', 1, 'nats', 'subject')``, and the YAML path is
    ``auditLogForwarders[1].subject``.
    """
    if len(location) > 2 and isinstance(location[1], int) and location[2] in KINDS:
        return (*location[:2], *location[3:]), str(location[2])
    return location, None


def _model_at(location: tuple[int | str, ...], kind: str | None = None) -> type[BaseModel] | None:
    """The model class that holds the key at ``location`` (for did-you-mean hints)."""
    model: type[BaseModel] = Settings
    path = location[:-1]
    if len(path) >= 2 and path[0] == "auditLogForwarders" and isinstance(path[1], int):
        model = NatsForwarderConfig if kind == "nats" else WebhookForwarderConfig
        path = path[2:]
    for part in path:
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
    location, tag = _untagged(tuple(error["loc"]))
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        model = _model_at(location, tag)
        hint = ""
        if model is not None:
            known = [f.alias or name for name, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(location[-1]), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(known)})"
        return f"unknown key{hint}"
    if kind == "literal_error" and location and location[-1] == "kind":
        # reprlib: a hostile multi-megabyte value must not be echoed whole.
        kinds = ", ".join(KINDS)
        return f"unsupported kind {reprlib.repr(error['input'])}: the kinds are {kinds}"
    if kind == "literal_error":
        expected = str(error["ctx"]["expected"]).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


class EnvironmentOrigins:
    """Which ``AUDIT_FORWARDER_*`` variable, if any, supplied the value at a location.

    ``overrides`` is what the environment contributed to the document (the
    camelCase tree pydantic-settings built from the variables). A location
    came from a variable when the tree holds it and a variable is named for
    it or for one of its parents: ``AUDIT_FORWARDER_INGEST__PORT`` for
    ``ingest.port``, or a whole section given as JSON
    (``AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS`` for ``auditLogForwarders[0].uri``).
    """

    def __init__(self, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self._overrides = overrides
        # pydantic-settings matches names case-insensitively; report them as they are set.
        self._names = {name.upper(): name for name in environ}

    def variable(self, location: tuple[int | str, ...]) -> str | None:
        """The variable that set the value at ``location``, or None when the file did."""
        if not location or not self._holds(location):
            return None
        keys: list[str] = []
        for part in location:
            if not isinstance(part, str):
                break  # lists come whole from one variable, as JSON
            keys.append(to_snake(part).upper())
        for length in range(len(keys), 0, -1):
            name = self._names.get(ENV_PREFIX + "__".join(keys[:length]))
            if name is not None:
                return name
        return None

    def _holds(self, location: tuple[int | str, ...]) -> bool:
        value: Any = self._overrides
        for part in location:
            in_mapping = isinstance(value, Mapping) and isinstance(part, str) and part in value
            in_list = isinstance(value, list) and isinstance(part, int) and part < len(value)
            if not (in_mapping or in_list):
                return False
            value = value[part]
        return True


def problems_from(
    exc: ValidationError, origins: EnvironmentOrigins | None = None
) -> list[ConfigProblem]:
    """Translate a pydantic ValidationError into YAML-path problems.

    With ``origins``, a value that came from an environment variable is
    located as ``path (from VARIABLE)``.
    """
    problems = []
    for error in exc.errors(include_url=False):
        location, message = _untagged(tuple(error["loc"]))[0], _message(error)
        key = location[-1] if location else None
        variable = origins.variable(location) if origins is not None else None
        if error["type"] == "extra_forbidden" and isinstance(key, str) and ":" in key:
            # `{token:SECRET}` (no space after the colon) is a single key in a flow
            # mapping: echo only what precedes the colon, the rest may be a secret.
            location = (*location[:-1], f"{key.partition(':')[0]}:...")
            message = "unknown key (missing a space after ':'?)"
        path = format_location(location)
        if variable is not None:
            path = f"{path} (from {variable})"
        problems.append(ConfigProblem(path, message))
    return problems
