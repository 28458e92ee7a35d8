"""structlog configuration: one JSON object per line on stdout, or console rendering.

Secrets are kept out of logs twice over: no code logs a token or an event
body in the first place, and as defence in depth a processor replaces any
occurrence of a configured secret in any string field with ``***``. The set of
secrets is swapped atomically on config reload.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

MASK = "***"


class SecretRedactor:
    """A structlog processor that masks known secret values in every string field."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the set of secrets to mask (longest first, so prefixes don't leak)."""
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def mask(self, text: str) -> str:
        """Return ``text`` with every known secret replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._secrets:
            for key, value in event_dict.items():
                if isinstance(value, str):
                    event_dict[key] = self.mask(value)
        return event_dict


redactor = SecretRedactor()

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog globally; safe to call again (config reload)."""
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
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A bound logger carrying ``component=name``."""
    return structlog.get_logger(component=name)
