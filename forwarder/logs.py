"""structlog configuration: one JSON object per line on stdout, or console rendering.

Secrets and event bodies are kept out of logs twice over: no code logs a
token or an event body in the first place, and as defence in depth:

* a processor masks every configured secret, in every wire form it may take
  (see :mod:`forwarder.secrets`), in every string of a log line, nested
  values and rendered tracebacks included. The set of secrets is swapped
  atomically on config reload;
* at info and above, a ``bytes`` value (what stored event bodies are) is
  logged as its size, never its content;
* an exception whose message quotes a request is logged by its type only:
  aiohttp's parser errors hold the raw bytes of a malformed request (part
  of an event body, an ``Authorization`` header), whether aiohttp's server
  logs them or they reach a handler of ours;
* the standard library's loggers (aiohttp, asyncio) go through the same
  processors instead of Python's last-resort handler on stderr, which
  printed them raw, outside the redactor.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from forwarder.secrets import SecretMasker, masker

# Other libraries' chatter below this level is not worth a line (aiosqlite logs every query).
_FOREIGN_MIN_LEVEL = logging.WARNING


class SecretRedactor:
    """A structlog processor that masks known secrets in every string of an event.

    It holds no secrets of its own: it applies a :class:`SecretMasker` (the
    process's, by default), so the log and every other output mask the same set.
    """

    def __init__(self, secret_masker: SecretMasker | None = None) -> None:
        self._masker = masker if secret_masker is None else secret_masker

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the set of secrets to mask."""
        self._masker.update(secrets)

    def mask(self, text: str) -> str:
        """Return ``text`` with every known secret replaced by ``***``."""
        return self._masker.mask(text)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._masker.active:
            for key, value in event_dict.items():
                if isinstance(value, str | bytes | bytearray | list | tuple | dict):
                    event_dict[key] = self._masker.mask_value(value)
        return event_dict


redactor = SecretRedactor()

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def sizes_for_bytes(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """At info and above, log a ``bytes`` value as ``<N bytes>``: it may be an event body."""
    if method_name != "debug":
        for key, value in event_dict.items():
            if isinstance(value, bytes | bytearray | memoryview):
                event_dict[key] = f"<{len(value)} bytes>"
    return event_dict


def _logged_exception(exc_info: Any) -> BaseException | None:
    """The exception an ``exc_info`` field stands for (structlog accepts three shapes)."""
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple):
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return exc_info if isinstance(exc_info, BaseException) else None


def name_quoting_exceptions(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Log an exception that quotes a request (aiohttp's parser errors) by its type only.

    ``HttpProcessingError`` messages hold the raw bytes the parser choked on:
    part of an event body or of an ``Authorization`` header. Every record of
    aiohttp's own loggers is treated the same way, whatever it carries.
    """
    exc_info = event_dict.get("exc_info")
    if not exc_info:
        return event_dict
    exc = _logged_exception(exc_info)
    record = event_dict.get("_record")
    from_aiohttp = isinstance(record, logging.LogRecord) and record.name.split(".")[0] == "aiohttp"
    if from_aiohttp or isinstance(exc, HttpProcessingError):
        del event_dict["exc_info"]
        if exc is not None:
            event_dict.setdefault("error", type(exc).__name__)
    return event_dict


def _name_the_library(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``component`` of a standard library record: its logger's name (``aiohttp.server``)."""
    event_dict["component"] = event_dict["_record"].name
    return event_dict


class _StdlibHandler(logging.StreamHandler[TextIO]):
    """The handler this module installs on the root logger (found again on reconfiguration)."""


def _route_stdlib_logging(level: int, renderer: Any) -> None:
    """Send the standard library's log records through the redactor and ``renderer``."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _name_the_library,
            name_quoting_exceptions,
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            sizes_for_bytes,
            redactor,
            renderer,
        ],
    )
    handler = _StdlibHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.setLevel(max(level, _FOREIGN_MIN_LEVEL))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the standard library's logging; safe to call again (reload)."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            name_quoting_exceptions,
            structlog.processors.format_exc_info,
            sizes_for_bytes,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(_LEVELS[level], renderer)


def get_logger(name: str) -> Any:
    """A bound logger carrying ``component=name``."""
    return structlog.get_logger(component=name)
