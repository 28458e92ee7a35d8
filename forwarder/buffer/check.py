"""Can this file be the buffer? The daemon's check before it opens it, and ``buffer check``.

Why check at all: SQLite opens almost anything and only complains when a
query reaches a bad page, so a damaged file used to surface as a traceback
from deep inside the start (or, worse, from a delivery worker hours later),
and a foreign SQLite file would have had our tables added to it. Before the
daemon acknowledges anything it now classifies the file and refuses, in one
line naming the file and what to do, anything it cannot trust:

* not a file (a directory), cannot be opened or written (permissions, a
  read-only file system);
* not a SQLite database (a zeroed header, garbage), or a database that is
  not ours (tables but no schema version, or a version without our tables);
* written by a newer build (``SchemaTooNewError``);
* damaged: ``PRAGMA quick_check`` finds a problem. It reads every page, which
  is what finds zeroed or truncated pages; measured at 0.1 s for a 500 MB
  buffer with a warm page cache (I/O bound when cold), paid once per start.

``buffer check`` reports the same classification read-only (``mode=ro``: it
never writes the file, so it may run beside a daemon; WAL readers do not
block the writer), with a full ``integrity_check`` and a summary: pending
events per forwarder by event type (the command applies the configured
filters), dead letters, size.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from forwarder.buffer import batches
from forwarder.buffer.lock import BufferLock, unusable_from_os_error
from forwarder.buffer.schema import SCHEMA_VERSION, SchemaTooNewError, migrate, tables_at
from forwarder.errors import BufferUnusableError

SALVAGE_HINT = "run 'audit-forwarder buffer salvage' (same --config) to keep what is readable"
INTEGRITY_PROBLEMS_SHOWN = 10


def damaged(path: Path, problem: str) -> BufferUnusableError:
    """The error for a file SQLite finds damaged."""
    return BufferUnusableError("damaged", path, f"is damaged ({problem})", SALVAGE_HINT)


def unusable_from_sqlite_error(path: Path, exc: sqlite3.Error) -> BufferUnusableError:
    """One line for what SQLite said about ``path``, classified by its error code."""
    if isinstance(exc, BufferUnusableError):
        return exc
    name = str(getattr(exc, "sqlite_errorname", ""))
    text = str(exc)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ")):
        return damaged(path, text)
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return BufferUnusableError(
            "unreadable",
            path,
            f"cannot be opened for writing ({text})",
            f"make it and its directory readable and writable by this user (uid {os.geteuid()})",
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return BufferUnusableError(
            "locked",
            path,
            f"is locked by another program ({text})",
            f"find what holds it open (fuser {path}) and stop it",
        )
    if name.startswith("SQLITE_FULL"):
        return BufferUnusableError(
            "unreadable", path, "cannot be written (the disk is full)", "free space on that disk"
        )
    if name.startswith("SQLITE_IOERR"):
        return BufferUnusableError(
            "unreadable",
            path,
            f"cannot be read ({text})",
            f"check the disk and the kernel log; if the file is damaged, {SALVAGE_HINT}",
        )
    return damaged(path, text)


def require_file_path(path: Path) -> None:
    """Refuse a path that exists but is not a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise unusable_from_os_error(path, exc, "cannot be examined") from None
    if path.is_dir():
        raise BufferUnusableError(
            "not_a_file", path, "is a directory", "set buffer.path to a file, e.g. <dir>/buffer.db"
        )
    if not path.is_file():
        raise BufferUnusableError(
            "not_a_file", path, f"is not a regular file (mode {oct(mode)})", "fix buffer.path"
        )


def classify(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version, once it is known to be an audit-forwarder buffer (or empty).

    Raises :class:`BufferUnusableError` for a foreign or too-new file; SQLite's
    own errors (not a database, damaged) propagate for the caller to translate.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
    tables = {str(name) for (name,) in rows}
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(str(path), int(version))
    if version == 0:
        if tables:
            raise BufferUnusableError(
                "foreign",
                path,
                f"is a SQLite database of another program (tables: {', '.join(sorted(tables))})",
                "it is not an audit-forwarder buffer: set buffer.path to another file",
            )
        return 0
    missing = tables_at(int(version)) - tables
    if missing:
        raise BufferUnusableError(
            "foreign",
            path,
            f"has schema version {version} but no table {', '.join(sorted(missing))}",
            "it is not an audit-forwarder buffer: set buffer.path to another file",
        )
    return int(version)


def integrity_problems(conn: sqlite3.Connection, pragma: str, limit: int) -> list[str]:
    """What ``PRAGMA quick_check`` / ``integrity_check`` finds, one line each; [] when ok."""
    rows = conn.execute(f"PRAGMA {pragma}({limit})").fetchall()
    lines = [line for (text,) in rows for line in str(text).splitlines()]
    problems = [line for line in lines if line != "ok" and not line.startswith("*** in database")]
    return problems[:limit]


def prepare(path: Path) -> int:
    """Make sure ``path`` can be the buffer, then create or migrate it; return the old version.

    Runs in a thread before the daemon's connections open (the caller holds
    the lock). Every refusal is a :class:`BufferUnusableError`.
    """
    require_file_path(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise unusable_from_sqlite_error(path, exc) from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        version = classify(conn, path)
        if version:
            problems = integrity_problems(conn, "quick_check", 1)
            if problems:
                raise damaged(path, problems[0])
            # A write that changes nothing finds a read-only file now, not at the
            # first commit (BEGIN alone does not, in WAL mode). Not on a new
            # file: any transaction would fix its page size before migrate().
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE meta SET value = value WHERE 0")
            finally:
                conn.execute("ROLLBACK")
        return migrate(conn)
    except sqlite3.Error as exc:
        raise unusable_from_sqlite_error(path, exc) from None
    except OSError as exc:
        raise unusable_from_os_error(path, exc, "cannot be opened") from None
    finally:
        conn.close()


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the file (no writes, no checkpoint at close)."""
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None)


def inspect(path: Path) -> dict[str, Any]:
    """``buffer check``: classification, integrity and a summary of ``path``, read-only.

    ``status`` is ``ok``, ``missing`` or the kind of :class:`BufferUnusableError`
    (``damaged``, ``foreign``, ``too_new``, ``unreadable``, ``not_a_file``).
    """
    holder = BufferLock.holder(path)
    report: dict[str, Any] = {
        "path": str(path),
        "status": "ok",
        "error": None,
        "daemon_pid": holder.pid if holder is not None else None,
        "daemon_running": holder is not None,
        "size_bytes": sum(
            os.stat(f"{path}{suffix}").st_size
            for suffix in ("", "-wal")
            if os.path.isfile(f"{path}{suffix}")
        ),
        "schema_version": None,
        "integrity": [],
        "summary": None,
    }
    try:
        require_file_path(path)
        if not path.exists():
            report["status"] = "missing"
            return report
        conn = connect_read_only(path)
    except BufferUnusableError as exc:
        return _failed(report, exc)
    except sqlite3.Error as exc:
        return _failed(report, unusable_from_sqlite_error(path, exc))
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        report["schema_version"] = version = classify(conn, path)
        problems = integrity_problems(conn, "integrity_check", INTEGRITY_PROBLEMS_SHOWN)
        report["integrity"] = problems or ["ok"]
        if not problems and version == SCHEMA_VERSION:
            problems = zeroed_batches(conn)
            report["integrity"] = problems or ["ok"]
        if problems:
            _failed(report, damaged(path, problems[0]))
        elif version == SCHEMA_VERSION:  # on a damaged file its queries would only fail
            report["summary"] = summarize(conn)
    except BufferUnusableError as exc:
        _failed(report, exc)
    except sqlite3.Error as exc:
        _failed(report, unusable_from_sqlite_error(path, exc))
    finally:
        conn.close()
    return report


def zeroed_batches(conn: sqlite3.Connection) -> list[str]:
    """Batches holding a run of zero bytes, which no JSON event contains.

    SQLite keeps no page checksums: a zeroed page at the end of a row's
    overflow chain leaves the structure intact and passes ``integrity_check``.
    Too slow to run at every start (about 2 ns a byte), worth it on demand.
    """
    rows = conn.execute(
        "SELECT first_seq, last_seq FROM batches WHERE instr(bodies, zeroblob(8)) > 0"
        f" ORDER BY first_seq LIMIT {INTEGRITY_PROBLEMS_SHOWN}"
    ).fetchall()
    return [f"events {first}..{last} hold zeroed bytes (a zeroed page)" for first, last in rows]


def _failed(report: dict[str, Any], exc: BufferUnusableError) -> dict[str, Any]:
    report["status"] = exc.kind
    report["error"] = str(exc)
    return report


def summarize(conn: sqlite3.Connection) -> dict[str, Any]:
    """Events held, pending events per forwarder by type, dead letters per forwarder."""
    held = conn.execute(
        "SELECT count(*), coalesce(sum(last_seq - first_seq + 1), 0), max(last_seq) FROM batches"
    ).fetchone()
    high_water = conn.execute("SELECT value FROM meta WHERE key = 'high_water_seq'").fetchone()
    head = max(int(held[2] or 0), int(high_water[0]) if high_water else 0)
    forwarders = []
    for name, cursor in conn.execute(
        "SELECT name, cursor FROM forwarders ORDER BY name"
    ).fetchall():
        rows = conn.execute(batches.PENDING, (cursor + 1, head, cursor, name)).fetchall()
        counts = batches.pending_counts(rows, int(cursor), head)
        forwarders.append(
            {
                "name": str(name),
                "cursor": int(cursor),
                "pending_by_type": [
                    [kind, count, oldest]
                    for kind, (count, oldest) in sorted(counts.items(), key=str)
                ],
            }
        )
    dead = conn.execute(
        "SELECT forwarder, count(*) FROM dead_letters GROUP BY forwarder"
    ).fetchall()
    return {
        "head_seq": head,
        "batches": int(held[0]),
        "events": int(held[1]),
        "forwarders": forwarders,
        "dead_letters": {str(name): int(count) for name, count in dead},
    }
