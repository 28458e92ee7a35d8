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
filters), dead letters, size, and what is encrypted under which key id
(``encryption``): a pending event under a key id the configuration lacks, or
that its key does not open, makes the status ``missing_key`` / ``wrong_key``,
as the daemon would refuse to start on it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from forwarder.buffer import batches
from forwarder.buffer.encryption import (
    MAGIC,
    NO_KEYS,
    EncryptionError,
    Keyring,
    batch_context,
    key_id_sql,
    sealed_sql,
)
from forwarder.buffer.lock import BufferLock, unusable_from_os_error
from forwarder.buffer.schema import SCHEMA_VERSION, SchemaTooNewError, migrate, tables_at
from forwarder.errors import BufferUnusableError

SALVAGE_HINT = "run 'audit-forwarder buffer salvage' (same --config) to keep what is readable"
INTEGRITY_PROBLEMS_SHOWN = 10


def damaged(path: Path, problem: str) -> BufferUnusableError:
    """The error for a file SQLite finds damaged."""
    return BufferUnusableError("damaged", path, f"is damaged ({problem})", SALVAGE_HINT)


def missing_key(
    path: Path, key_ids: list[str], events: int, keyring: Keyring
) -> BufferUnusableError:
    """The error for pending events under key ids that are not configured."""
    where = "does not list them" if keyring.key_ids else "is not set"
    return BufferUnusableError(
        "missing_key",
        path,
        f"holds {events} pending events encrypted with key id {', '.join(key_ids)},"
        f" and buffer.encryption {where}",
        "configure those keys under buffer.encryption.keys (the active key may be"
        " another) until the events are delivered",
    )


def wrong_key(path: Path, key_id: str, first_seq: int, last_seq: int) -> BufferUnusableError:
    """The error for pending events the configured key of their id does not open."""
    return BufferUnusableError(
        "wrong_key",
        path,
        f"holds pending events {first_seq}..{last_seq} that the configured key"
        f" {key_id!r} does not open (a different key under that id, or damaged data)",
        f"configure the key file those events were encrypted with as id {key_id!r};"
        f" if the data is damaged, {SALVAGE_HINT}",
    )


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


def inspect(path: Path, keyring: Keyring = NO_KEYS) -> dict[str, Any]:
    """``buffer check``: classification, integrity and a summary of ``path``, read-only.

    ``status`` is ``ok``, ``missing`` or the kind of :class:`BufferUnusableError`
    (``damaged``, ``foreign``, ``too_new``, ``unreadable``, ``not_a_file``,
    ``missing_key``, ``wrong_key``). ``keyring`` is the configured keys.
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
            report["summary"]["encryption"] = encryption = encryption_summary(conn, keyring)
            problem = encryption.pop("problem")
            if problem is not None:
                _failed(report, problem)
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


_SEALED_COLUMNS = (
    ("batches", "bodies"),
    ("dead_letters", "body"),
    ("dead_letters", "response_body"),
    ("delivery_attempts", "response_body"),
)
_NO_CURSOR = 2**63 - 1


def encryption_summary(conn: sqlite3.Connection, keyring: Keyring) -> dict[str, Any]:
    """Rows sealed per column and key id; key ids the configuration cannot open.

    ``problem`` is ``(kind, problem, remedy)`` when pending events cannot be
    opened with ``keyring`` (the checks the daemon makes at start), else None.
    """
    path = Path(conn.execute("PRAGMA database_list").fetchone()[2])
    encrypted: dict[str, dict[str, int]] = {}
    for table, column in _SEALED_COLUMNS:
        count = "sum(last_seq - first_seq + 1)" if table == "batches" else "count(*)"
        rows = conn.execute(
            f"SELECT {key_id_sql(column)} AS key_id, {count} FROM {table}"
            f" WHERE {sealed_sql(column)} GROUP BY key_id",
            (MAGIC,),
        ).fetchall()
        encrypted[f"{table}.{column}"] = {_text(kid): int(n) for kid, n in rows}
    used = {kid for counts in encrypted.values() for kid in counts}
    pending = conn.execute(
        f"SELECT {key_id_sql('bodies')} AS key_id, min(first_seq),"
        " sum(last_seq - first_seq + 1) FROM batches"
        f" WHERE last_seq > (SELECT coalesce(min(cursor), {_NO_CURSOR}) FROM forwarders)"
        f" AND {sealed_sql('bodies')} GROUP BY key_id",
        (MAGIC,),
    ).fetchall()
    problem: BufferUnusableError | None = None
    missing = sorted(_text(kid) for kid, _, _ in pending if not keyring.has(_text(kid)))
    if missing:
        events = sum(int(n) for kid, _, n in pending if _text(kid) in missing)
        problem = missing_key(path, missing, events, keyring)
    for kid, first, _ in pending:
        if problem is None and keyring.has(_text(kid)):
            row = conn.execute(
                "SELECT first_seq, last_seq, bodies FROM batches WHERE first_seq = ?", (first,)
            ).fetchone()
            try:
                keyring.open(bytes(row[2]), batch_context(row[0], row[1]))
            except EncryptionError:
                problem = wrong_key(path, _text(kid), row[0], row[1])
    return {
        "active_key_id": keyring.active,
        "configured_key_ids": keyring.key_ids,
        "encrypted": encrypted,
        "unreadable_key_ids": sorted(used - set(keyring.key_ids)),
        "problem": problem,
    }


def _text(key_id: bytes | str) -> str:
    return key_id.decode("ascii", "replace") if isinstance(key_id, bytes) else key_id
