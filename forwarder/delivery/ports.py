"""What a delivery worker needs of the buffer, as a Protocol.

Workers run in the delivery process against :class:`~forwarder.buffer.remote.RemoteBuffer`
(reads from the file, writes through the daemon) and in tests against the
in-process :class:`~forwarder.buffer.store.EventBuffer`; both satisfy this
shape, so the worker depends on neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from forwarder.buffer.batches import StoredEvent
from forwarder.buffer.commits import AppendListener


class DeliveryBuffer(Protocol):
    """The buffer as a delivery worker uses it.

    ``EventBuffer`` is one (in the daemon process); the delivery process's
    ``RemoteBuffer`` is the other: it reads the same SQLite file and sends its
    writes to the daemon's single writer.
    """

    @property
    def head_seq(self) -> int:
        """The highest committed seq."""
        ...

    def cursor(self, forwarder: str) -> int:
        """The committed cursor of ``forwarder``."""
        ...

    def add_listener(self, listener: AppendListener) -> None:
        """Call ``listener(summary)`` after every commit that appended events."""
        ...

    def remove_listener(self, listener: AppendListener) -> None:
        """Stop calling ``listener``."""
        ...

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a seq above ``seq`` has been committed."""
        ...

    async def read_after(self, forwarder: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events for ``forwarder`` after ``after_seq``, in order.

        May return fewer while more exist (one read per call); empty means none.
        Never an event above :attr:`head_seq`, although SQLite may already
        show more: the listeners have heard of every event returned, which
        is what keeps pending counts exact (``batches.up_to_head``).
        """
        ...

    async def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query."""
        ...

    def ack(self, forwarder: str, seq: int) -> None:
        """Advance the cursor with the next group commit (not awaited)."""
        ...

    def submit(self, statements: list[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Statements for the next group commit (not awaited)."""
        ...

    async def execute(
        self,
        statements: list[tuple[str, Sequence[Sequence[Any]]]],
        acks: dict[str, int] | None = None,
    ) -> None:
        """Statements and acks in the next group commit, awaited."""
        ...
