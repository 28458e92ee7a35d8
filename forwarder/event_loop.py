"""Which event loop runs a process: uvloop where it is installed, else asyncio's own.

The daemon and its delivery process both start here, so they run on the same
loop implementation; kept at the ground floor because both the command line
and the delivery process (a stage below it) need it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """``uvloop.run`` where uvloop is installed (it is a dependency on Linux), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
