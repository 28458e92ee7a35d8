"""How ``audit-forwarder top`` draws a frame: a plain text table, or a ``rich`` one.

Both are made from the same frame data (see :func:`forwarder.ops.top.build_frame`)
and the same cells, so a pipe and a terminal show the same thing; the plain
form has no colour and no control sequences. ``rich`` is imported inside
:func:`rich_view` only, which only the terminal view calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forwarder.ops.client import table

if TYPE_CHECKING:
    from rich.console import RenderableType

HEADERS = (
    "FORWARDER",
    "STATE",
    "DELIVERED/S",
    "PENDING",
    "OLDEST",
    "LAST SUCCESS",
    "FAILURES",
    "DEAD",
    "LAST ERROR",
)
STATE_STYLES = {
    "ok": "green",
    "retrying": "yellow",
    "dead-lettering": "bold red",
    "disabled": "dim",
}
KINDS = (("pending_events", "pending"), ("dead_letters", "dead letters"), ("history", "history"))


def human_bytes(count: float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``64.0 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_age(seconds: float | None) -> str:
    """A duration for a column: ``4.2s``, ``3m05s``, ``2h03m``, ``1d02h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _per_second(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cells(forwarder: dict[str, Any]) -> tuple[str, ...]:
    """One forwarder's row, as text."""
    age = forwarder["last_success_age_seconds"]
    error = forwarder["last_error"]
    return (
        forwarder["name"],
        forwarder["state"],
        _per_second(forwarder["delivered_per_second"]),
        str(forwarder["pending"]),
        human_age(forwarder["oldest_pending_age_seconds"]),
        "never" if age is None else f"{human_age(age)} ago",
        str(forwarder["consecutive_failures"]),
        str(forwarder["dead_letters"]),
        "-" if error is None else f"{error['code']} {error['message']}".strip(),
    )


def header_lines(frame: dict[str, Any]) -> list[str]:
    """The lines above the table: when, the ingest rate, the buffer against maxBytes."""
    lines = [f"audit-forwarder top  {frame['at']}  (rates over {frame['interval_seconds']:.1f}s)"]
    ingest = frame["ingest"]
    lines.append(
        f"ingest  {_per_second(ingest['received_per_second'])} events/s received,"
        f" {_per_second(ingest['duplicates_per_second'])} duplicates/s,"
        f" {_per_second(ingest['rejected_per_second'])} rejected/s"
    )
    buffer = frame["buffer"]
    if "counted_bytes" not in buffer:
        lines.append("buffer  -")
    else:
        max_bytes = buffer["max_bytes"]
        counted = human_bytes(buffer["counted_bytes"])
        if max_bytes:
            used = f"{counted} of {human_bytes(max_bytes)} maxBytes ({buffer['used_ratio']:.1%})"
        else:
            used = f"{counted} (no maxBytes: bounded by the disk)"
        held = buffer["held_bytes"]
        kinds = ", ".join(f"{label} {human_bytes(held.get(kind, 0))}" for kind, label in KINDS)
        lines.append(f"buffer  {used}; {kinds}; {human_bytes(buffer['disk_bytes'])} on disk")
    if frame["metrics_error"]:
        lines.append(f"metrics unavailable: {frame['metrics_error']}")
    return lines


def plain(frame: dict[str, Any]) -> str:
    """The whole frame as plain text (no colour, no control sequences)."""
    rows = [cells(forwarder) for forwarder in frame["forwarders"]]
    return "\n".join([*header_lines(frame), "", table(HEADERS, rows)])


def rich_view(frame: dict[str, Any]) -> RenderableType:
    """The whole frame as a ``rich`` renderable, states in colour."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, header_style="bold", pad_edge=False)
    for header in HEADERS:
        if header == "LAST ERROR":
            # The one column that gives way on a narrow terminal: it wraps.
            grid.add_column(header, overflow="fold", ratio=1)
        else:
            numeric = header in {"DELIVERED/S", "PENDING", "OLDEST", "FAILURES", "DEAD"}
            grid.add_column(
                header, justify="right" if numeric else "left", no_wrap=True, min_width=len(header)
            )
    for forwarder in frame["forwarders"]:
        row = cells(forwarder)
        state = Text(row[1], style=STATE_STYLES.get(forwarder["state"], ""))
        grid.add_row(row[0], state, *row[2:])
    above = [Text(line) for line in header_lines(frame)]
    above[0].stylize("bold")
    return Group(*above, Text(""), grid, Text(""), Text("Ctrl-C to quit", style="dim"))
