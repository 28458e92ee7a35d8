"""``audit-forwarder buffer salvage``: keep every readable row of a damaged buffer in a fresh file.

The way out when the daemon refuses a damaged file. It runs only while no
daemon holds the buffer's lock (it takes the lock itself), reads the damaged
file read-only, writes a fresh file beside it, and only then swaps them: the
damaged file (and its WAL) is moved aside as ``<buffer>.damaged-<UTC time>``,
never modified, so nothing is lost that a better tool could still read.

How rows are read past bad pages and a bad header: ``forwarder.buffer.salvage_source``.

Every copied batch is checked (lengths, types, ids, and that each event is
JSON) since a page can be damaged in ways SQLite does not notice. Events are
counted from the sequence numbers: every seq above the lowest cursor must be
in some batch, so the ones not recovered are the ones lost. When the cursors
themselves are unreadable, the configured forwarders start before the first
recovered event: they may get some events twice, but none is skipped.

Encrypted rows are copied as they are, sealed: salvage never decrypts into
the fresh file. A sealed batch is checked by its header and lengths, and,
when its key is configured, by opening it (authentication finds any damaged
byte) and checking its events are JSON.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from forwarder.buffer.batches import expand_runs
from forwarder.buffer.check import classify, integrity_problems, require_file_path
from forwarder.buffer.encryption import (
    NO_KEYS,
    EncryptionError,
    Keyring,
    batch_context,
    is_sealed,
    key_id_of,
    sealed_length,
)
from forwarder.buffer.lock import BufferLock, unusable_from_os_error
from forwarder.buffer.salvage_source import (
    Scan,
    beyond_salvage,
    open_source,
    remove_with_journals,
    scan_table,
)
from forwarder.buffer.schema import SCHEMA_VERSION, migrate, tables_at
from forwarder.errors import BufferUnusableError

# Copied in this order (``events`` only exists before schema 3, ``batches`` from it);
# ``client_ids`` has no rowid and is copied apart, as far as it reads.
TABLES = (
    "meta",
    "forwarders",
    "batches",
    "events",
    "dead_letters",
    "delivery_attempts",
    "chain_states",  # tamper-evident delivery: without them a chain would restart at seq 1
    "chain_dead_letters",
)


@dataclass
class SalvageReport:
    """What ``buffer salvage`` did, for the terminal and ``--json``."""

    path: str
    moved_to: str
    schema_version: int
    header_rebuilt: bool = False
    events_recovered: int = 0
    events_unreadable: int = 0
    # False when the cursors or the high-water mark were unreadable: then
    # events_unreadable only counts the gaps between what was recovered.
    events_unreadable_exact: bool = True
    batches_recovered: int = 0
    batches_unreadable: int = 0
    forwarders_recovered: int = 0
    cursors_reset: list[str] = field(default_factory=list)
    dead_letters_recovered: int = 0
    dead_letters_unreadable: int = 0
    history_recovered: int = 0
    incomplete_tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


def salvage(
    path: Path, configured_forwarders: Sequence[str], keyring: Keyring = NO_KEYS
) -> SalvageReport:
    """Move the buffer at ``path`` aside and copy what is readable into a fresh file there.

    Raises :class:`BufferUnusableError` (a ``BufferLockedError`` while a daemon
    runs) and leaves everything in place when nothing can be done.
    """
    lock = BufferLock(path)
    lock.acquire()
    work = path.with_name(f"{path.name}.salvage-work")
    try:
        return _salvage(path, work, configured_forwarders, keyring)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lock.release()


def _salvage(path: Path, work: Path, configured: Sequence[str], keyring: Keyring) -> SalvageReport:
    require_file_path(path)
    if not path.exists():
        raise BufferUnusableError("missing", path, "does not exist", "nothing to salvage")
    source, header_rebuilt = open_source(path, work)
    fresh = path.with_name(f"{path.name}.salvage-tmp")
    try:
        version = _version_of(source, path, header_rebuilt)
        remove_with_journals(fresh)
        target = sqlite3.connect(fresh, isolation_level=None)
        try:
            migrate(target, version)
            report = SalvageReport(str(path), "", version, header_rebuilt)
            target.execute("BEGIN")
            _copy_all(source, target, version, configured, report, keyring)
            target.execute("COMMIT")
            problems = integrity_problems(target, "integrity_check", 1)
            if problems:  # a bug, not damage: keep the original where it is
                raise beyond_salvage(path, f"the salvaged copy fails its check: {problems[0]}")
        finally:
            target.close()
    except BaseException as exc:
        remove_with_journals(fresh)
        if isinstance(exc, sqlite3.Error) and not isinstance(exc, BufferUnusableError):
            raise beyond_salvage(path, f"reading stopped: {exc}") from None
        if isinstance(exc, OSError):
            raise unusable_from_os_error(path, exc, "cannot be salvaged") from None
        raise
    finally:
        source.close()
    report.moved_to = str(_swap(path, fresh))
    return report


def _version_of(source: sqlite3.Connection, path: Path, header_rebuilt: bool) -> int:
    """The schema version: from the header, or (header rebuilt) from the tables present."""
    if not header_rebuilt:
        version = classify(source, path)  # refuses foreign and too-new files
        if version == 0:
            raise BufferUnusableError(
                "missing", path, "holds no buffer yet", "nothing to salvage; a daemon can use it"
            )
        return version
    rows = source.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
    tables = {str(name) for (name,) in rows}
    for version in range(SCHEMA_VERSION, 0, -1):
        if tables_at(version) <= tables:
            return version
    raise BufferUnusableError(
        "foreign",
        path,
        "has no audit-forwarder tables once its header is rebuilt",
        "it is not an audit-forwarder buffer; nothing to salvage",
    )


def _copy_all(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    version: int,
    configured: Sequence[str],
    report: SalvageReport,
    keyring: Keyring,
) -> None:
    source.execute("PRAGMA cell_size_check = ON")  # notice bad cells rather than read garbage
    present = tables_at(version)
    scans: dict[str, Scan] = {}
    for table in TABLES:
        if table in present:
            scans[table] = _copy_table(source, target, table, report, keyring)
    report.incomplete_tables = [name for name, scan in scans.items() if not scan.complete]
    _copy_client_ids(source, target, report)
    event_table = "batches" if "batches" in present else "events"
    events = scans[event_table]
    report.batches_unreadable = events.bad_rows
    report.forwarders_recovered = scans["forwarders"].rows
    report.dead_letters_recovered = scans["dead_letters"].rows
    report.dead_letters_unreadable = scans["dead_letters"].bad_rows
    if "delivery_attempts" in scans:
        report.history_recovered = scans["delivery_attempts"].rows
    _settle(target, event_table, scans, configured, report)


def _settle(
    target: sqlite3.Connection,
    event_table: str,
    scans: dict[str, Scan],
    configured: Sequence[str],
    report: SalvageReport,
) -> None:
    """Cursors, the high-water mark and the counts, from what was recovered."""
    first, last, events = _event_span(target, event_table)
    report.events_recovered = events
    if not scans["forwarders"].complete:
        known = {str(name) for (name,) in target.execute("SELECT name FROM forwarders")}
        report.cursors_reset = [name for name in configured if name not in known]
        start = (first - 1) if first is not None else 0
        target.executemany(
            "INSERT INTO forwarders (name, cursor, created_at) VALUES (?, ?, ?)",
            [(name, start, time.time()) for name in report.cursors_reset],
        )
    meta = dict(target.execute("SELECT key, value FROM meta").fetchall())
    (top_cursor,) = target.execute("SELECT max(cursor) FROM forwarders").fetchone()
    # New events must get seqs above everything a cursor or a batch has seen.
    high = max(int(meta.get("high_water_seq") or 0), last or 0, top_cursor or 0)
    target.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('high_water_seq', ?)", (high,))
    (floor,) = target.execute("SELECT min(cursor) FROM forwarders").fetchone()
    floor = high if floor is None else int(floor)
    if event_table == "batches":
        (above,) = target.execute(
            "SELECT coalesce(sum(last_seq - max(first_seq, ?) + 1), 0) FROM batches"
            " WHERE last_seq > ?",
            (floor + 1, floor),
        ).fetchone()
    else:
        (above,) = target.execute("SELECT count(*) FROM events WHERE seq > ?", (floor,)).fetchone()
    report.events_unreadable = max(0, high - floor - int(above))
    report.events_unreadable_exact = scans["meta"].complete and scans["forwarders"].complete
    if "instance" not in meta:
        report.notes.append(
            "the buffer's instance number was unreadable: recovered events without a"
            " client-supplied id get new generated ids"
        )
    if report.cursors_reset:
        report.notes.append(
            "cursors were unreadable: " + ", ".join(report.cursors_reset) + " will receive"
            " every recovered event again (at-least-once, nothing skipped)"
        )
    if scans["dead_letters"].skipped:
        report.notes.append("some dead letters in damaged pages could not be counted")


def _event_span(target: sqlite3.Connection, event_table: str) -> tuple[int | None, int | None, int]:
    if event_table == "batches":
        row = target.execute(
            "SELECT min(first_seq), max(last_seq), coalesce(sum(last_seq - first_seq + 1), 0)"
            " FROM batches"
        ).fetchone()
    else:
        row = target.execute("SELECT min(seq), max(seq), count(*) FROM events").fetchone()
    return row[0], row[1], int(row[2])


def _copy_table(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    table: str,
    report: SalvageReport,
    keyring: Keyring,
) -> Scan:
    columns = [str(row[1]) for row in target.execute(f"PRAGMA table_info({table})").fetchall()]
    names = ", ".join(columns)
    insert = f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    scan = Scan()
    for row in scan_table(source, table, names, scan):
        if table in ("batches", "events") and not _valid_events(table, row, keyring):
            scan.rows -= 1
            scan.bad_rows += 1
            continue
        try:
            target.execute(insert, row)
        except sqlite3.IntegrityError:  # a damaged row SQLite read without noticing
            scan.rows -= 1
            scan.bad_rows += 1
            continue
        if table == "batches":
            report.batches_recovered += 1
    return scan


def _valid_events(table: str, row: tuple[Any, ...], keyring: Keyring = NO_KEYS) -> bool:
    """Whether a batch (or, before schema 3, an event row) holds intact JSON events.

    A sealed batch whose key is not configured is judged by its header and lengths.
    """
    try:
        if table == "events":
            orjson.loads(row[5])
            return True
        first, last, _, _, types, ids, lengths, bodies = row
        count = last - first + 1
        sizes = orjson.loads(lengths)
        stored_length = len(bodies)
        if is_sealed(bodies):
            stored_length = sealed_length(bodies)
            if not keyring.has(key_id_of(bodies)):
                bodies = None
            else:
                bodies = keyring.open(bytes(bodies), batch_context(first, last))
        if len(sizes) != count or sum(sizes) != stored_length or len(expand_runs(types)) != count:
            return False
        if ids is not None and len(orjson.loads(ids)) != count:
            return False
        if bodies is None:
            return True
        view, offset = memoryview(bodies), 0
        for size in sizes:
            orjson.loads(view[offset : offset + size])
            offset += size
        return True
    except (ValueError, TypeError, EncryptionError):
        return False


def _copy_client_ids(
    source: sqlite3.Connection, target: sqlite3.Connection, report: SalvageReport
) -> None:
    """The dedup window, as far as it reads (no rowid to step over damage by)."""
    select = "SELECT event_id, received_at FROM client_ids ORDER BY event_id"
    insert = "INSERT OR REPLACE INTO client_ids (event_id, received_at) VALUES (?, ?)"
    try:
        for row in source.execute(select):
            target.execute(insert, row)
    except sqlite3.DatabaseError:
        report.incomplete_tables.append("client_ids")
        report.notes.append(
            "part of the duplicate-id window was unreadable: a client retrying an old"
            " request may have it delivered twice"
        )


def _swap(path: Path, fresh: Path) -> Path:
    """Move the damaged file (WAL first) aside and the fresh one into its place."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    counter = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{counter}")
        counter += 1
    # The WAL goes first: a WAL left beside the fresh file would be replayed into it.
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    os.replace(path, aside)
    os.replace(fresh, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return aside
