"""``audit-forwarder buffer check`` and ``buffer salvage``: the buffer file, without a daemon.

Unlike the other operator commands these do not talk to a running daemon:
they open the configured buffer file themselves.

* ``check`` only reads, over a read-only SQLite connection, so it runs
  beside a daemon as well as without one: looking at a live buffer is most of
  what an operator wants it for, and WAL readers never block the writer. (Its
  ``integrity_check`` holds one read snapshot while it runs, which only
  postpones the daemon's WAL truncation.) It says whether a daemon holds the
  file and which PID.
* ``salvage`` rewrites the file, so it takes the buffer's lock itself and is
  refused, with the daemon's PID, while one runs.

Pending counts apply each configured forwarder's event filters, as the
daemon's ``status`` does; a forwarder in the file but no longer configured
is shown unfiltered.
"""

from __future__ import annotations

import time
from typing import Any

from forwarder.buffer.check import inspect
from forwarder.buffer.salvage import salvage
from forwarder.config.settings import Settings
from forwarder.delivery.filters import EventFilter
from forwarder.ops.client import table

USABLE = ("ok", "missing")


def check_buffer(settings: Settings) -> tuple[dict[str, Any], str]:
    """The ``buffer check`` report and its rendering; ``status`` says whether it is usable."""
    report = inspect(settings.buffer.path, settings.buffer.keyring())
    summary = report.get("summary")
    if summary is not None:
        specs = {str(spec.name): spec for spec in settings.audit_log_forwarders}
        forwarders = []
        for entry in summary["forwarders"]:
            spec = specs.get(entry["name"])
            accepts = EventFilter(spec.events, spec.exclude_events) if spec else None
            pending, oldest = 0, None
            for kind, count, arrived in entry.pop("pending_by_type"):
                if accepts is None or accepts.accepts(kind):
                    pending += count
                    oldest = arrived if oldest is None else min(oldest, arrived)
            forwarders.append(
                {
                    **entry,
                    "configured": spec is not None,
                    "pending": pending,
                    "oldest_pending_at": oldest,
                }
            )
        summary["forwarders"] = forwarders
    return report, format_check(report)


def format_check(report: dict[str, Any]) -> str:
    """``buffer check`` for a terminal."""
    daemon = (
        f"a daemon holds it (PID {report['daemon_pid'] or 'unknown'}); read-only snapshot"
        if report["daemon_running"]
        else "no daemon holds it"
    )
    if report["status"] == "missing":
        return f"{report['path']}: no buffer file yet (a daemon creates it at start)"
    if report["status"] != "ok":
        lines = [f"UNUSABLE ({report['status']}): {report['error']}"]
        lines += [f"  integrity: {problem}" for problem in report["integrity"][1:]]
        lines.append(f"  {daemon}")
        return "\n".join(lines)
    lines = [
        f"{report['path']}: OK (schema {report['schema_version']},"
        f" {report['size_bytes'] / 1e6:.1f} MB on disk; {daemon})"
    ]
    summary = report["summary"]
    if summary is None:
        lines.append("  an older schema: the daemon migrates it at its next start")
        return "\n".join(lines)
    now = time.time()
    rows = [
        (
            f["name"] + ("" if f["configured"] else " (not configured)"),
            f["pending"],
            f"{now - f['oldest_pending_at']:.0f}s" if f["oldest_pending_at"] else None,
            summary["dead_letters"].get(f["name"], 0),
        )
        for f in summary["forwarders"]
    ]
    lines.append(table(("FORWARDER", "PENDING", "OLDEST", "DEAD LETTERS"), rows))
    lines.append(
        f"{summary['events']} event(s) in {summary['batches']} batch(es),"
        f" {sum(summary['dead_letters'].values())} dead letter(s)"
    )
    encrypted = summary["encryption"]["encrypted"]["batches.bodies"]
    if encrypted or summary["encryption"]["unreadable_key_ids"]:
        by_key = ", ".join(f"{count} under key {kid}" for kid, count in sorted(encrypted.items()))
        lines.append(f"encrypted events: {by_key or 'none'}")
    if summary["encryption"]["unreadable_key_ids"]:
        unreadable = ", ".join(summary["encryption"]["unreadable_key_ids"])
        lines.append(f"rows under key ids not configured (unreadable): {unreadable}")
    return "\n".join(lines)


def salvage_buffer(settings: Settings) -> tuple[dict[str, Any], str]:
    """Run ``buffer salvage`` on the configured file; the report and its rendering."""
    report = salvage(
        settings.buffer.path, settings.forwarder_names(), settings.buffer.keyring()
    ).to_json()
    return report, format_salvage(report)


def format_salvage(report: dict[str, Any]) -> str:
    """``buffer salvage`` for a terminal."""
    lines = [
        f"salvaged {report['path']}: {report['events_recovered']} event(s) recovered,"
        f" {'' if report['events_unreadable_exact'] else 'at least '}"
        f"{report['events_unreadable']} could not be read",
        f"  the damaged file is kept as {report['moved_to']}",
        f"  batches: {report['batches_recovered']} recovered,"
        f" {report['batches_unreadable']} unreadable",
        f"  forwarder cursors: {report['forwarders_recovered']} recovered",
        f"  dead letters: {report['dead_letters_recovered']} recovered,"
        f" {report['dead_letters_unreadable']} unreadable",
        f"  delivery history rows: {report['history_recovered']} recovered",
    ]
    if report["header_rebuilt"]:
        lines.append("  the file's SQLite header was rebuilt to read it")
    if report["incomplete_tables"]:
        lines.append(f"  tables with unreadable parts: {', '.join(report['incomplete_tables'])}")
    lines += [f"  note: {note}" for note in report["notes"]]
    return "\n".join(lines)
