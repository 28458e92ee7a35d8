"""The buffer's SQLite schema and its migrations, versioned by ``PRAGMA user_version``.

Each migration is a script applied once, in order, inside one transaction with
the version bump, so a crash mid-migration leaves the previous version intact.
Migrations only ever append: a released migration is never edited.

``page_size`` and ``auto_vacuum = INCREMENTAL`` must be chosen before the
first table exists (a file created by an older build keeps its page size).
Incremental vacuum lets the buffer hand free pages back to the file system
after a backlog drains, so the file returns to near its empty size instead of
staying at its peak.
"""

from __future__ import annotations

import sqlite3

from forwarder.errors import BufferUnusableError

MIGRATIONS: tuple[str, ...] = (
    # 1: events stored once; fan-out by one cursor per forwarder.
    """
    CREATE TABLE events (
        seq            INTEGER PRIMARY KEY,  -- ingest order, assigned by the single writer
        event_id       TEXT NOT NULL,        -- client id or generated sortable id
        event_type     TEXT,                 -- event_type (else type), for filters
        received_at    REAL NOT NULL,        -- unix time the event was committed
        only_forwarder TEXT,                 -- NULL: every forwarder, else a replay for one
        body           BLOB NOT NULL         -- the event exactly as ingested (JSON bytes)
    );
    CREATE TABLE client_ids (
        event_id    TEXT PRIMARY KEY,
        received_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX client_ids_received_at ON client_ids(received_at);
    CREATE TABLE forwarders (
        name       TEXT PRIMARY KEY,
        cursor     INTEGER NOT NULL,  -- highest seq delivered or dead-lettered
        created_at REAL NOT NULL
    );
    CREATE TABLE dead_letters (
        id            INTEGER PRIMARY KEY,
        forwarder     TEXT NOT NULL,
        seq           INTEGER NOT NULL,
        event_id      TEXT NOT NULL,
        event_type    TEXT,
        received_at   REAL NOT NULL,
        dead_at       REAL NOT NULL,
        status        INTEGER,
        code          TEXT NOT NULL,
        reason        TEXT NOT NULL,
        response_body BLOB,
        body          BLOB NOT NULL
    );
    CREATE INDEX dead_letters_forwarder ON dead_letters(forwarder, id);
    CREATE INDEX dead_letters_dead_at ON dead_letters(dead_at);
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('high_water_seq', 0);
    """,
    # 2: the delivery history, every attempt, kept for the retention period.
    """
    CREATE TABLE delivery_attempts (
        id            INTEGER PRIMARY KEY,
        forwarder     TEXT NOT NULL,
        attempted_at  REAL NOT NULL,
        attempt       INTEGER NOT NULL,     -- 1 for the first try of this request
        events        INTEGER NOT NULL,     -- how many events the request carried
        event_ids     TEXT NOT NULL,        -- JSON array of the event ids
        outcome       TEXT NOT NULL,        -- success, retry, dead_letter
        code          TEXT NOT NULL,        -- HTTP status, timeout, connection_error
        status        INTEGER,              -- HTTP status when there was an answer
        duration_ms   REAL NOT NULL,
        error         TEXT,
        response_body BLOB                  -- first 4 KiB of the answer
    );
    CREATE INDEX delivery_attempts_forwarder ON delivery_attempts(forwarder, id);
    CREATE INDEX delivery_attempts_attempted_at ON delivery_attempts(attempted_at);
    """,
    # 3: one row per committed batch instead of one per event (see forwarder.buffer.batches).
    """
    CREATE TABLE batches (
        first_seq      INTEGER PRIMARY KEY,  -- seq of the first event: the batch holds
        last_seq       INTEGER NOT NULL,     --   first_seq..last_seq, with no gap
        received_at    REAL NOT NULL,        -- unix time the batch was committed
        only_forwarder TEXT,                 -- NULL: every forwarder, else a replay for one
        event_types    BLOB NOT NULL,        -- JSON [[event_type, run length], ...]
        event_ids      BLOB,                 -- JSON [id or null, ...], NULL if all generated
        lengths        BLOB NOT NULL,        -- JSON [byte length of each event, ...]
        bodies         BLOB NOT NULL         -- the events exactly as ingested, concatenated
    );
    INSERT INTO batches
        SELECT seq, seq, received_at, only_forwarder, json_array(json_array(event_type, 1)),
               json_array(event_id), json_array(length(body)), body
        FROM events ORDER BY seq;
    DROP TABLE events;
    """,
    # 4: tamper-evident delivery (see forwarder.delivery.chain): the chain state of
    # each forwarder with integrity as of its cursor, and the records of its dead letters.
    # Rowid tables (not WITHOUT ROWID): buffer salvage scans tables by rowid.
    """
    CREATE TABLE chain_states (
        forwarder      TEXT NOT NULL,
        at_seq         INTEGER NOT NULL,  -- the cursor this state belongs to
        next_chain_seq INTEGER NOT NULL,  -- the chain seq the next event gets
        head           TEXT NOT NULL,     -- hash of the last record (hex), or the genesis hash
        PRIMARY KEY (forwarder, at_seq)
    );
    CREATE TABLE chain_dead_letters (
        forwarder  TEXT NOT NULL,
        chain_seq  INTEGER NOT NULL,      -- the record's place in the chain
        event_id   TEXT NOT NULL,         -- how a replay of the dead letter finds it
        record     BLOB NOT NULL,         -- the record as first delivered (compact JSON)
        replay_seq INTEGER,               -- the buffer seq of the replay carrying it, once sent
        PRIMARY KEY (forwarder, chain_seq)
    );
    CREATE INDEX chain_dead_letters_event ON chain_dead_letters(forwarder, event_id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
# Events are stored as batches of tens to hundreds of kilobytes: with 16 KiB
# pages their overflow chains are a quarter as long as with the default 4 KiB,
# which halved the writer's CPU per batch; small commits cost about 20% more.
PAGE_SIZE = 16384


class SchemaTooNewError(BufferUnusableError, sqlite3.DatabaseError):
    """The file was written by a newer audit-forwarder; refuse rather than corrupt it.

    A :class:`BufferUnusableError` (one line, exit code 3 at the command line)
    and still a ``sqlite3.DatabaseError`` for callers that catch SQLite's.
    """

    def __init__(self, path: str, version: int) -> None:
        self.version = version
        super().__init__(
            "too_new",
            path,
            f"was written by a newer audit-forwarder (schema {version};"
            f" this build reads up to {SCHEMA_VERSION})",
            "run that version or a newer one, or move the file aside to start empty",
        )


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``target`` (default: the newest); return the version it had before.

    Runs on a plain ``sqlite3`` connection (inside aiosqlite's thread) because
    a migration is a short, one-off, synchronous piece of work. ``buffer
    salvage`` builds its fresh file at the damaged file's own version, which
    the daemon then migrates like any other.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        (_, _, path) = conn.execute("PRAGMA database_list").fetchone()
        raise SchemaTooNewError(str(path), int(version))
    if version == 0:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    for number in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return int(version)


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT implicitly; split so the migration stays atomic.
    return [part.strip() for part in script.split(";") if part.strip()]


def tables_at(version: int) -> frozenset[str]:
    """The tables a buffer file of schema ``version`` holds (built in memory, so never stale)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for number in range(version):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
        rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
        return frozenset(str(name) for (name,) in rows)
    finally:
        conn.close()
