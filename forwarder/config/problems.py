"""Validation errors as an operator reads them: a YAML path and one sentence each.

pydantic reports ``('auditLogForwarders', 1, 'method')`` and "Input should be
'POST', 'PUT' or 'PATCH'"; the operator wrote YAML, so the problem is rendered
as ``auditLogForwarders[1].method: must be one of POST, PUT, PATCH``. An
unknown key gets a did-you-mean hint from the keys of the model that holds it,
and a value is echoed only through ``reprlib`` (a hostile value must not be
printed whole, and a secret pasted into the wrong key must not be echoed).
"""

from __future__ import annotations

import difflib
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError

from forwarder.config.settings import Settings
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
