"""Tamper-evident delivery: assigning chain records, and keeping the chain state with the cursor.

For a forwarder with ``integrity``, every event it delivers carries a record
(:mod:`forwarder.integrity.records`) assigned here, in batch-formation order,
so whatever the destination the chain is the same. Forwarders without
``integrity`` never construct any of this: no per-event work, and
``cryptography`` is not even imported.

Crash safety rests on determinism. The record of the n-th event depends only
on the chain state after the (n-1)-th (next chain seq, head hash) and on the
event's bytes; Ed25519 signatures are deterministic too. So the state is
kept *as of the cursor*: on restart, delivery resumes after the cursor with
the state at the cursor, and every event delivered again gets the record it
had before. Redelivery repeats records; it never forks the chain. (Whether
a record is a checkpoint may depend on the clock; the signature is outside
the hashed part, so a repeat that differs only in it is the same link.)

The state is written as a row per cursor value (``chain_states``), in the
same group commit as the cursor ack or an earlier one: the statements are
queued before the ack on the same ordered path (the local writer's queue, or
the channel's in-order notifications). So whenever a cursor is committed,
its state row is too, and a start reads the row at the committed cursor.
Rows below the committed cursor are deleted as it moves; a row above it (its
ack lost in a crash) is rewritten identically when the events are
acknowledged again. With ``ordering: relaxed`` the cursor moves over the
resolved prefix of the window, and the state written is the one after the
last event at or below it.

Dead letters keep their place: the records of dead-lettered events are
stored beside them (``chain_dead_letters``, in the dead letter's own
transaction), and a replay (the event again, for this forwarder only, with
the same id) is delivered with its original record instead of a new one.
Such a row is deleted once the replay carrying it is behind the cursor.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from forwarder.buffer.batches import StoredEvent
from forwarder.buffer.commits import AppendListener
from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER
from forwarder.delivery.ports import DeliveryBuffer
from forwarder.destinations.options import IntegrityConfig
from forwarder.integrity.records import GENESIS, ChainRecord, event_digest

Statements = list[tuple[str, Sequence[Sequence[Any]]]]

STATE_AT = (
    "SELECT next_chain_seq, head FROM chain_states"
    " WHERE forwarder = ? AND at_seq <= ? ORDER BY at_seq DESC LIMIT 1"
)
SAVE_STATE = (
    "INSERT OR REPLACE INTO chain_states (forwarder, at_seq, next_chain_seq, head)"
    " VALUES (?, ?, ?, ?)"
)
# Conditional on the *committed* cursor: these run before their ack commits.
DROP_OLD_STATES = (
    "DELETE FROM chain_states WHERE forwarder = ?"
    " AND at_seq < (SELECT cursor FROM forwarders WHERE name = ?)"
)
DROP_DELIVERED_REPLAYS = (
    "DELETE FROM chain_dead_letters WHERE forwarder = ?"
    " AND replay_seq <= (SELECT cursor FROM forwarders WHERE name = ?)"
)
SAVE_DEAD_LETTER = (
    "INSERT OR REPLACE INTO chain_dead_letters (forwarder, chain_seq, event_id, record, replay_seq)"
    " VALUES (?, ?, ?, ?, NULL)"
)
MARK_REPLAY = "UPDATE chain_dead_letters SET replay_seq = ? WHERE forwarder = ? AND chain_seq = ?"
_IN_CHUNK = 500
_REMEMBERED_STATES = 64


class ChainKeeper:
    """The chain of one forwarder: assigns records and says what state to commit with an ack."""

    def __init__(
        self,
        name: str,
        integrity: IntegrityConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the signing key (checked already by the configuration). No I/O."""
        # Here, not at the top: only a forwarder with integrity loads cryptography.
        from forwarder.integrity.keys import Signer

        assert integrity.signing_key is not None  # loading read signingKeyFile
        self.name = name
        self._signer = Signer.from_pem(integrity.signing_key.get_secret_value())
        self._every = integrity.checkpoint_every
        self._interval = integrity.checkpoint_interval_seconds
        self._clock = clock
        self._last_checkpoint = clock()
        self._next_seq = 1
        self._head = GENESIS
        # Per assigned, unacknowledged event, in seq order: (seq, next chain seq, head) after it.
        self._pending: deque[tuple[int, int, str]] = deque()
        # Its record and id, for a dead letter; and the chain seqs of replays in flight.
        self._records: dict[int, tuple[str, ChainRecord]] = {}
        self._replaying: dict[int, int] = {}  # event seq -> chain seq of its original record
        self._acked_upto = 0
        self._acked_state = (1, GENESIS)
        self._states: OrderedDict[int, tuple[int, str]] = OrderedDict()
        self._cleanups_due = 0  # acks that should still drop delivered replays' rows

    @property
    def key_id(self) -> str:
        """The id of the signing key, as checkpoints name it."""
        return self._signer.key_id

    async def load(self, buffer: DeliveryBuffer, cursor: int) -> None:
        """Take the chain state committed with ``cursor`` (genesis when there is none)."""
        rows = await buffer.query(STATE_AT, (self.name, cursor))
        if rows:
            self._next_seq, self._head = int(rows[0][0]), str(rows[0][1])
        self._acked_upto = cursor
        self._acked_state = (self._next_seq, self._head)
        self._states[cursor] = self._acked_state
        self._cleanups_due = 1  # replays delivered just before a crash

    async def assign(self, buffer: DeliveryBuffer, batch: list[StoredEvent]) -> list[StoredEvent]:
        """``batch`` with a record on every event (events handed back by a split keep theirs)."""
        replays = [e for e in batch if e.only_forwarder is not None and e.chain is None]
        originals = await self._originals(buffer, replays) if replays else {}
        now = self._clock()
        last = len(batch) - 1
        chained: list[StoredEvent] = []
        for index, event in enumerate(batch):
            if event.chain is not None:
                chained.append(event)
                continue
            record = originals.get(event.seq)
            if record is None:
                record = ChainRecord.link(
                    self.name, self._next_seq, event_digest(event.body), self._head
                )
                self._next_seq += 1
                self._head = record.own_hash
                interval_due = index == last and now - self._last_checkpoint >= self._interval
                if record.seq % self._every == 0 or interval_due:
                    record = record.signed(self._signer.key_id, self._signer.sign(record.own_hash))
                    self._last_checkpoint = now
            self._pending.append((event.seq, self._next_seq, self._head))
            self._records[event.seq] = (event.event_id, record)
            chained.append(event._replace(chain=record))
        return chained

    async def _originals(
        self, buffer: DeliveryBuffer, replays: list[StoredEvent]
    ) -> dict[int, ChainRecord]:
        """The original records of replayed dead letters, by the replay's seq."""
        ids = list({event.event_id for event in replays})
        candidates: dict[str, list[ChainRecord]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            rows = await buffer.query(
                "SELECT event_id, record FROM chain_dead_letters WHERE forwarder = ?"
                f" AND event_id IN ({','.join('?' * len(chunk))}) ORDER BY chain_seq",
                (self.name, *chunk),
            )
            for event_id, stored in rows:
                try:
                    record = ChainRecord.from_json(bytes(stored))
                except ValueError:
                    continue  # not ours to repair: the event gets a new record
                candidates.setdefault(str(event_id), []).append(record)
        in_flight = set(self._replaying.values())
        found: dict[int, ChainRecord] = {}
        marks = []
        for event in replays:
            digest = event_digest(event.body)
            for record in candidates.get(event.event_id, []):
                if record.digest == digest and record.seq not in in_flight:
                    in_flight.add(record.seq)
                    found[event.seq] = record
                    self._replaying[event.seq] = record.seq
                    marks.append((event.seq, self.name, record.seq))
                    break
        if marks:
            buffer.submit([(MARK_REPLAY, marks)])
        return found

    def record_of(self, seq: int) -> tuple[str, ChainRecord] | None:
        """The id and record of the unacknowledged event ``seq``."""
        return self._records.get(seq)

    def state_statements(self, cursor: int) -> Statements:
        """What to commit with (or before) the ack of ``cursor``: the chain state there."""
        state = self._states.get(cursor)
        if state is None:
            if cursor < self._acked_upto:
                return []  # an ack behind one already sent: a no-op for the cursor too
            state = self._advance(cursor)
        statements: Statements = [
            (SAVE_STATE, [(self.name, cursor, state[0], state[1])]),
            (DROP_OLD_STATES, [(self.name, self.name)]),
        ]
        if self._cleanups_due:
            self._cleanups_due -= 1
            statements.append((DROP_DELIVERED_REPLAYS, [(self.name, self.name)]))
        return statements

    def _advance(self, cursor: int) -> tuple[int, str]:
        pending = self._pending
        while pending and pending[0][0] <= cursor:
            seq, next_seq, head = pending.popleft()
            self._acked_state = (next_seq, head)
            self._records.pop(seq, None)
            if self._replaying.pop(seq, None) is not None:
                # Its row goes once the cursor is committed past it: this ack and the next.
                self._cleanups_due = 2
        self._acked_upto = cursor
        self._states[cursor] = self._acked_state
        while len(self._states) > _REMEMBERED_STATES:
            self._states.popitem(last=False)
        return self._acked_state


class ChainedBuffer:
    """The buffer as a worker with ``integrity`` sees it: acks carry the chain state.

    Everything else is passed through. A dead letter written through
    :meth:`execute` also stores its events' records, in its own transaction.
    """

    def __init__(self, inner: DeliveryBuffer, keeper: ChainKeeper) -> None:
        self._inner = inner
        self.keeper = keeper

    @property
    def head_seq(self) -> int:
        """The highest committed seq."""
        return self._inner.head_seq

    def cursor(self, forwarder: str) -> int:
        """The committed cursor of ``forwarder``."""
        return self._inner.cursor(forwarder)

    def add_listener(self, listener: AppendListener) -> None:
        """Call ``listener(summary)`` after every commit that appended events."""
        self._inner.add_listener(listener)

    def remove_listener(self, listener: AppendListener) -> None:
        """Stop calling ``listener``."""
        self._inner.remove_listener(listener)

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a seq above ``seq`` has been committed."""
        await self._inner.wait_beyond(seq)

    async def read_after(self, forwarder: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events for ``forwarder`` after ``after_seq``, in order."""
        return await self._inner.read_after(forwarder, after_seq, limit)

    async def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query."""
        return await self._inner.query(sql, parameters)

    def submit(self, statements: Statements) -> None:
        """Statements for the next group commit (not awaited)."""
        self._inner.submit(statements)

    def ack(self, forwarder: str, seq: int) -> None:
        """The chain state at ``seq``, then the ack, on the same ordered path."""
        if forwarder == self.keeper.name:
            statements = self.keeper.state_statements(seq)
            if statements:
                self._inner.submit(statements)
        self._inner.ack(forwarder, seq)

    async def execute(self, statements: Statements, acks: dict[str, int] | None = None) -> None:
        """Statements and acks in one commit, with the chain state and dead letters' records."""
        name = self.keeper.name
        extra: Statements = []
        for sql, rows in statements:
            if sql != INSERT_DEAD_LETTER:
                continue
            # Dead-letter rows start (forwarder, seq, ...): forwarder.buffer.dead_letters.
            kept = [self.keeper.record_of(int(row[1])) for row in rows if row[0] == name]
            records = [
                (name, record.seq, event_id, record.to_json())
                for event_id, record in (found for found in kept if found is not None)
            ]
            if records:
                extra.append((SAVE_DEAD_LETTER, records))
        if acks and name in acks:
            extra += self.keeper.state_statements(acks[name])
        await self._inner.execute([*statements, *extra], acks)


def chained(
    name: str, integrity: IntegrityConfig | None, buffer: DeliveryBuffer
) -> tuple[DeliveryBuffer, ChainKeeper | None]:
    """``buffer`` and no keeper without ``integrity``; else the chained buffer and its keeper."""
    if integrity is None:
        return buffer, None
    keeper = ChainKeeper(name, integrity)
    return ChainedBuffer(buffer, keeper), keeper
