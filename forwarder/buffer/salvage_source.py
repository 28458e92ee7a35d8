"""Reading a damaged buffer file: past bad pages, and past a zeroed header.

Used by ``buffer salvage`` (``forwarder.buffer.salvage``), which decides what
to keep; this module only finds what can still be read, read-only.

How rows are found past damage. SQLite stops a query at the first bad page,
so a table is read in rowid order and, when a read fails, the scan finds
where it can go on:

* the next row's key still reads (the b-tree leaf is fine, the row's own
  overflow pages are not): that row is counted unreadable, the scan goes on
  after it;
* the key does not read either (a leaf or interior page is bad): the scan
  gallops forward (+1, +2, +4, ... rowids) to a key whose lookup succeeds,
  then bisects back to the first such key, and resumes there. Lookups fail
  for exactly the keys routed to the bad page, so this steps over that page
  alone (two bad pages very close together may hide a good one between
  them: an undercount, never a wrong row).

A zeroed or garbage header (the first 100 bytes) hides an intact file: on a
copy, the header is rebuilt for each plausible page size and the one that
reads the most tables is kept. A file shorter than its header says (a
truncated copy) is read as far as it goes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwarder.buffer.check import connect_read_only
from forwarder.buffer.schema import PAGE_SIZE
from forwarder.errors import BufferUnusableError

MAX_KEY = 2**63 - 1
PAGE_SIZES = (PAGE_SIZE, 4096, 1024, 2048, 8192, 32768, 65536, 512)


@dataclass
class Scan:
    """What one table scan met: rows read, rows found but unreadable, key ranges skipped."""

    rows: int = 0
    bad_rows: int = 0
    skipped: list[tuple[int, int | None]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every row of the table was read."""
        return not self.bad_rows and not self.skipped


def open_source(path: Path, work: Path) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to the damaged file, or to a copy with a rebuilt header."""
    source = _connect_source(path)
    try:
        source.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        return source, False
    except sqlite3.DatabaseError as exc:
        source.close()
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_NOTADB":
            raise beyond_salvage(path, f"its list of tables is unreadable ({exc})") from None
    rebuilt = _rebuild_header(path, work)
    if rebuilt is None:
        raise beyond_salvage(path, "no SQLite header that reads its tables could be rebuilt")
    return _connect_source(rebuilt), True


def _connect_source(path: Path) -> sqlite3.Connection:
    conn = connect_read_only(path)
    # A file shorter than its header says is refused as a whole unless the
    # schema is "writable"; read-only, this only lets the pages that exist be read.
    conn.execute("PRAGMA writable_schema = ON")
    return conn


def beyond_salvage(path: Path, problem: str) -> BufferUnusableError:
    """The error when salvage cannot go on: the file stays where it is, untouched."""
    return BufferUnusableError(
        "damaged",
        path,
        f"is damaged beyond what salvage can read ({problem})",
        "it is left in place: restore it from a backup, or move it aside to start empty",
    )


def _rebuild_header(path: Path, work: Path) -> Path | None:
    """Copy the file (and WAL) and give the copy the header that reads the most tables."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    copy = work / path.name
    shutil.copyfile(path, copy)
    if os.path.exists(f"{path}-wal"):
        shutil.copyfile(f"{path}-wal", f"{copy}-wal")
    size = copy.stat().st_size
    best: tuple[int, bytes] | None = None
    for page_size in PAGE_SIZES:
        if size < page_size or size % page_size:
            continue
        header = _header_for(work, page_size, size // page_size)
        _write_header(copy, header)
        score = _readable_tables(copy)
        if score and (best is None or score > best[0]):
            best = (score, header)
    if best is None:
        return None
    _write_header(copy, best[1])
    return copy


def _header_for(work: Path, page_size: int, pages: int) -> bytes:
    """The first 100 bytes of a fresh WAL-mode file with ``page_size``, sized ``pages``."""
    template = work / "template.db"
    remove_with_journals(template)
    conn = sqlite3.connect(template, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
    finally:
        conn.close()
    header = bytearray(template.read_bytes()[:100])
    struct.pack_into(">I", header, 28, pages)  # the database size in pages
    return bytes(header)


def _write_header(copy: Path, header: bytes) -> None:
    with copy.open("r+b") as file:
        file.write(header)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{copy}-shm")  # built for the previous guess


def _readable_tables(copy: Path) -> int:
    """How many tables of the copy show their first and last row (0: wrong page size)."""
    conn = _connect_source(copy)
    try:
        rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
        readable = 0
        for (name,) in rows:
            with contextlib.suppress(sqlite3.DatabaseError):
                conn.execute(f'SELECT min(rowid), max(rowid) FROM "{name}"').fetchone()
                readable += 1
        return readable
    except sqlite3.DatabaseError:
        return 0
    finally:
        conn.close()


def scan_table(
    conn: sqlite3.Connection, table: str, columns: str, scan: Scan
) -> Iterator[tuple[Any, ...]]:
    """Every readable row of a rowid table, in rowid order, stepping over damaged pages."""
    select = f"SELECT rowid, {columns} FROM {table}"
    after = -1
    while True:
        try:
            for row in conn.execute(f"{select} WHERE rowid > ? ORDER BY rowid", (after,)):
                after = int(row[0])
                scan.rows += 1
                yield tuple(row[1:])
            return
        except sqlite3.DatabaseError:
            pass
        readable, key = _probe(conn, table, after + 1)
        if readable and key is None:
            return
        if readable and key is not None:
            try:
                row = conn.execute(f"{select} WHERE rowid = ?", (key,)).fetchone()
            except sqlite3.DatabaseError:
                scan.bad_rows += 1  # its leaf reads, its own pages do not
            else:
                scan.rows += 1
                yield tuple(row[1:])
            after = key
            continue
        resume = _first_readable_key(conn, table, after + 1)
        scan.skipped.append((after, resume))
        if resume is None:
            return
        after = max(resume - 1, after + 1)


def _probe(conn: sqlite3.Connection, table: str, at_least: int) -> tuple[bool, int | None]:
    """Whether the lookup of the first key >= ``at_least`` reads, and that key."""
    try:
        row = conn.execute(
            f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1", (at_least,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return False, None
    return True, (int(row[0]) if row is not None else None)


def _first_readable_key(conn: sqlite3.Connection, table: str, unreadable: int) -> int | None:
    """The smallest key above ``unreadable`` from which lookups read again, or None."""
    low, step = unreadable, 1
    while True:
        high = low + step
        if high > MAX_KEY:
            return None
        if _probe(conn, table, high)[0]:
            break
        low, step = high, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _probe(conn, table, middle)[0]:
            high = middle
        else:
            low = middle
    return high


def remove_with_journals(path: Path) -> None:
    """Delete a database file and whatever journal, WAL or shared memory it left."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
