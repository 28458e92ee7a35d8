"""Where a running daemon's admin API is, read from its configuration without validating it all.

The operator commands (``status``, ``deliveries``, ``test``, ``send``,
``dead-letters``) need three things from the configuration: the Unix socket,
the TCP listener and the ingest token. Validating the whole file costs
pydantic and pydantic-settings, about 200 ms of imports, against a start-up
target of 150 ms (issue 15). So :func:`locate` reads just the ``ingest``
section with YAML and the standard library, resolving it exactly as
``config/loading.py`` does: ``${VAR}`` / ``${VAR:-default}`` / ``$${``
expansion and the document's size limits (both from ``forwarder/expansion.py``,
the one implementation the two readers share), ``AUDIT_FORWARDER_INGEST__*``
overrides (not expanded, as pydantic-settings does not expand them), relative
paths against the file's directory, and ``tokenFile`` read and stripped.

It is an optimisation, never a second opinion: whatever it is not sure to
read as the full loader would, it declines (returns None) and the command
validates the file as ``check-config`` does, so the operator gets today's
error and exit code. It declines on a file it cannot read or parse, a
document past the full loader's size limits (alias bombs, cycles), an
unknown top-level or ``ingest`` key, a value of a type or form it does not
accept without doubt (it accepts a narrower set than pydantic: ``8686`` and
``"8686"`` for a port, not ``"+8686"``), an ``ingest`` section given whole
as one JSON variable or by a variable name pydantic-settings also matches
(``INGEST__PORT``, ``..._UNIXSOCKET``), a missing variable, and an
unreadable or empty token file. The rest of the file (the forwarders) is
not validated here: ``cli.py`` validates it whenever the command does not
succeed, so a file that would not load is still reported before any failure.
``tests/ops/test_locate.py`` checks this agreement against ``load_config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Re-exported: the limits this reader declines at are the full loader's, by construction.
from forwarder.expansion import MAX_DEPTH as MAX_DEPTH
from forwarder.expansion import MAX_VALUES as MAX_VALUES
from forwarder.expansion import expand, size_problem

if TYPE_CHECKING:
    from forwarder.config.settings import Settings

# Every top-level key the full loader accepts, by alias and by field name.
SECTIONS = frozenset(
    {
        "ingest",
        "buffer",
        "metrics",
        "logging",
        "delivery",
        "shutdownGraceSeconds",
        "shutdown_grace_seconds",
        "auditLogForwarders",
        "audit_log_forwarders",
    }
)
# ``ingest``'s fields: YAML key (camelCase) by field name (IngestConfig; a test keeps them equal).
INGEST_KEYS = {
    "host": "host",
    "port": "port",
    "unix_socket": "unixSocket",
    "token": "token",
    "token_file": "tokenFile",
    "max_request_bytes": "maxRequestBytes",
    "max_event_bytes": "maxEventBytes",
    "max_connections": "maxConnections",
    "idle_timeout_seconds": "idleTimeoutSeconds",
    "request_timeout_seconds": "requestTimeoutSeconds",
}
_FIELD_OF_KEY = {**{name: name for name in INGEST_KEYS}, **{k: n for n, k in INGEST_KEYS.items()}}
ENV_PREFIX = "AUDIT_FORWARDER_INGEST"
_INTEGER = re.compile(r"[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")


@dataclass(frozen=True)
class AdminAddress:
    """Where the admin API listens and the ingest token it wants (None: no token)."""

    unix_socket: str | None
    host: str
    port: int | None
    token: str | None = field(default=None, repr=False)


def address_of(settings: Settings) -> AdminAddress:
    """The admin API of a daemon running with these (validated) settings."""
    ingest = settings.ingest
    return AdminAddress(
        unix_socket=str(ingest.unix_socket) if ingest.unix_socket is not None else None,
        host=ingest.host,
        port=ingest.port,
        token=ingest.token.get_secret_value() if ingest.token is not None else None,
    )


class _Declined(Exception):
    """The locator cannot be sure of the answer: the full loader decides."""


def locate(path: str | Path) -> AdminAddress | None:
    """The admin API as ``load_config(path)`` would configure it, or None when not sure."""
    try:
        return _locate(Path(path))
    except _Declined:
        return None


def _locate(config_path: Path) -> AdminAddress:
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise _Declined from None
    document = _parse(text)
    if not isinstance(document, dict):
        raise _Declined
    _check_size(document)
    if not all(isinstance(key, str) and key in SECTIONS for key in document):
        raise _Declined
    section = document.get("ingest", {})
    if not isinstance(section, dict):
        raise _Declined
    ingest: dict[str, Any] = {}
    by_name: set[str] = set()
    for key, value in section.items():
        name = _FIELD_OF_KEY.get(key) if isinstance(key, str) else None
        if name is None or name in ingest:  # unknown, or given both as alias and as name
            raise _Declined
        ingest[name] = _expand(value)
        if key != INGEST_KEYS[name]:
            by_name.add(name)
    overrides = _environment_overrides(os.environ)
    # A variable sets the alias (``tokenFile``): beside ``token_file`` in the file, that is two.
    if by_name & overrides.keys():
        raise _Declined
    ingest.update(overrides)
    return _address(ingest, config_path.absolute().parent)


def _parse(text: str) -> Any:
    # Imported here: `import forwarder.ops.locate` stays free for whoever only needs the type.
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except Exception:  # whatever the parser refuses (or overflows on), the full loader words it
        raise _Declined from None


def _check_size(document: Any) -> None:
    """Decline a document the full loader refuses for its size; bounded by the limits."""
    if size_problem(document) is not None:
        raise _Declined


def _expand(value: Any) -> Any:
    """``${VAR}`` expansion of one ``ingest`` value, as ``loading.expand_env`` does it."""
    if not isinstance(value, str):
        return value  # lists and mappings are refused by the field checks anyway
    expanded, missing = expand(value)
    if missing:
        raise _Declined  # the full loader reports the missing variable
    return expanded


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``AUDIT_FORWARDER_INGEST__FIELD`` variables, by field name; decline any other form.

    pydantic-settings matches names case-insensitively, also accepts the
    section under its alias alone (``INGEST__PORT``), the whole section as
    JSON, and field names without underscores: all rare, all left to it.
    """
    overrides: dict[str, str] = {}
    for name, value in environ.items():
        upper = name.upper()
        if upper == "INGEST" or upper.startswith("INGEST__") or upper == ENV_PREFIX:
            raise _Declined
        if not upper.startswith(f"{ENV_PREFIX}__"):
            continue
        field_name = upper.removeprefix(f"{ENV_PREFIX}__").lower()
        if field_name not in INGEST_KEYS or field_name in overrides:
            raise _Declined
        overrides[field_name] = value
    return overrides


def _address(ingest: dict[str, Any], base_dir: Path) -> AdminAddress:
    """Check the ``ingest`` fields as IngestConfig does, narrowly, and resolve the paths."""
    host = ingest.get("host", "127.0.0.1")
    if type(host) is not str:
        raise _Declined
    port = _optional(ingest, "port", 8686, lambda value: _integer(value, 0, 65535))
    unix_socket = _optional(ingest, "unix_socket", None, lambda value: _path(value, base_dir))
    token = _optional(ingest, "token", None, _string)
    token_file = _optional(ingest, "token_file", None, lambda value: _path(value, base_dir))
    request_bytes = _integer(ingest.get("max_request_bytes", 10 * 1024 * 1024), 1, None)
    event_bytes = _integer(ingest.get("max_event_bytes", 1024 * 1024), 1, None)
    _optional(ingest, "max_connections", None, lambda value: _integer(value, 1, 1_000_000))
    _number(ingest.get("idle_timeout_seconds", 60.0), 86_400)
    _number(ingest.get("request_timeout_seconds", 15.0), 3_600)
    if port is None and unix_socket is None:
        raise _Declined
    if event_bytes > request_bytes or (token is not None and token_file is not None):
        raise _Declined
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise _Declined from None
        if not token:
            raise _Declined
    return AdminAddress(unix_socket, host, port, token)


def _optional(ingest: dict[str, Any], name: str, default: Any, check: Callable[[Any], Any]) -> Any:
    if name not in ingest:
        return default
    value = ingest[name]
    return None if value is None else check(value)


def _string(value: Any) -> str:
    if type(value) is not str:
        raise _Declined
    return value


def _integer(value: Any, low: int, high: int | None) -> int:
    """An int, or a string of ASCII digits (an override); pydantic takes more, we decline."""
    if type(value) is str and _INTEGER.fullmatch(value):
        value = int(value)
    if type(value) is not int or value < low or (high is not None and value > high):
        raise _Declined
    return value


def _number(value: Any, high: float) -> float:
    """A finite number in (0, high]: an int, a float, or a plain decimal string."""
    if type(value) is str and _DECIMAL.fullmatch(value):
        value = float(value)
    if type(value) not in (int, float) or not 0 < value <= high:  # NaN fails both
        raise _Declined
    return float(value)


def _path(value: Any, base_dir: Path) -> str:
    """A path as config/files.py resolves it: relative ones against the file's directory."""
    if type(value) is not str or not value or "\x00" in value:
        raise _Declined
    path = Path(value)
    return str(path if path.is_absolute() else base_dir / path)
