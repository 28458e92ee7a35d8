"""What a configuration document may hold before validation: ``${VAR}`` expansion and size limits.

Two readers turn the same YAML into values and must agree on every byte:
``config/loading.py`` (the full, pydantic-validated loader) and
``ops/locate.py`` (the operator commands' fast, pydantic-free reader of the
``ingest`` section). Each had its own copy of the expansion expression and of
the document limits, with a test to keep them equal; they now share this one
implementation. It lives on the ground floor, not in ``forwarder/config/``,
because the operator commands must not import anything of that package
(``tests/test_cli_imports.py``): it imports only the standard library.

* ``${VAR}`` and ``${VAR:-default}`` expand as in sh and docker compose (``:-``
  also replaces a variable set to ""); ``$${`` writes a literal ``${``. A
  missing variable expands to "" and is *returned*, not raised: the loader
  reports it with its YAML path, the locator declines.
* A document is measured as a walk would see it, counting every use of a YAML
  alias, against limits far above any real configuration (a few hundred
  values, five levels): ``yaml.safe_load`` shares aliased nodes, but nine
  aliases of nine aliases nine levels deep is 387 million strings to a walk,
  and an alias can make the tree cyclic. The measure stops at the limit, so it
  is bounded whatever the document.
"""

from __future__ import annotations

import os
import re
from typing import Any

# Limits of a document, counting every use of a YAML alias.
MAX_VALUES = 10_000
MAX_DEPTH = 32

# `$${` first: at that position it is the escape, never the start of a variable.
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str) -> tuple[str, list[str]]:
    """``text`` with ``${VAR}`` / ``${VAR:-default}`` expanded and ``$${`` as ``${``.

    Also returns the names of the variables that are not set (each expanded
    to ""), in the order they appear.
    """
    missing: list[str] = []

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
        missing.append(name)
        return ""

    return _VAR.sub(substitute, text), missing


def size_problem(document: Any) -> str | None:
    """Why ``document`` is past MAX_VALUES or MAX_DEPTH (a sentence), or None when it is not."""
    values = 0
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            message = f"nested more than {MAX_DEPTH} levels deep (or an alias refers to itself)"
            return f"the configuration is {message}"
        values += len(value)
        if values > MAX_VALUES:
            message = f"has more than {MAX_VALUES} values, counting each use of an alias"
            return f"the configuration {message}"
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children)
    return None
