"""``audit-forwarder keygen`` and ``audit-forwarder verify``: the operator's side of the chain.

``keygen --out PREFIX`` writes ``PREFIX.key`` (the Ed25519 private key, PEM
PKCS#8, created with mode 0600 and never overwritten) and ``PREFIX.pub`` (the
public key, PEM). The private key goes into the forwarder's ``integrity``
(a Kubernetes Secret, ``signingKeyFile``); the public key goes to whoever
verifies.

``verify --public-key FILE [events | -]`` reads what a SIEM exported: NDJSON
(one event per line; a line that is a JSON array counts as its elements, so
the bodies a receiver got can be fed as they are) or one JSON array. It
prints what :mod:`forwarder.integrity.verifier` finds, as text or with
``--output json``. Exit codes: 0 the chains are clean, 1 at least one
finding, 2 a usage problem (a key or input that cannot be read).

Only the command line imports this module, inside the command's handler:
``cryptography`` is loaded by these two commands and by nothing else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from forwarder.integrity.envelope import array_items, recover
from forwarder.integrity.keys import KeyError_, generate, load_public_key
from forwarder.integrity.verifier import Finding, Report, Verifier

EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class IntegrityCommandError(Exception):
    """A usage problem: said in one line, exit code 2."""


def keygen(prefix: str) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub``; refuse to overwrite either."""
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise IntegrityCommandError(f"{path} exists: not overwriting a key")
    private_pem, public_pem = generate()
    try:
        # O_EXCL and the mode at creation: the key is never readable by others, not even briefly.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise IntegrityCommandError(f"cannot write the key pair: {exc.strerror or exc}") from None
    return private_path, public_path


def _public_keys(paths: list[str]) -> list[Any]:
    keys = []
    for name in paths:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise IntegrityCommandError(f"cannot read {name}: {exc.strerror or exc}") from None
        try:
            keys.append(load_public_key(data))
        except KeyError_ as exc:
            raise IntegrityCommandError(f"{name} {exc}") from None
    return keys


def _events(stream: BinaryIO) -> Iterator[tuple[int, str | None]]:
    """(line number, event text) per exported event; None for a line that is not JSON text."""
    data = stream.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityCommandError("the input is not UTF-8 text") from None
    if text.lstrip().startswith("[") and "\n" in text.strip():
        # One JSON array over several lines (a pretty-printed export), else NDJSON.
        try:
            yield from ((1, item) for item in array_items(text))
            return
        except ValueError:
            pass
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("["):
            try:
                items = array_items(line)
            except ValueError:
                yield number, None
                continue
            yield from ((number, item) for item in items)
        else:
            yield number, line


def verify(public_keys: list[str], source: str, from_seq: int = 1) -> Report:
    """Verify the events in ``source`` (a file, or ``-`` for stdin)."""
    keys = _public_keys(public_keys)
    verifier = Verifier(keys, from_seq)
    try:
        stream: BinaryIO = sys.stdin.buffer if source == "-" else Path(source).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise IntegrityCommandError(f"cannot read {source}: {exc.strerror or exc}") from None
    with stream:
        for number, text in _events(stream):
            if text is None:
                verifier.unreadable(number)
                continue
            try:
                recovered = recover(text)
            except ValueError:
                verifier.unreadable(number)
                continue
            verifier.add(recovered, number)
    return verifier.report()


def report_json(report: Report) -> dict[str, Any]:
    """The report as ``--output json`` prints it."""
    return {
        "clean": report.clean,
        "events_read": report.events_read,
        "events_without_record": report.without_record,
        "unreadable_lines": report.unreadable_lines,
        "chains": [chain.to_json() for chain in report.chains],
        "findings": [finding.to_json() for finding in report.findings],
    }


def _where(finding: Finding) -> str:
    if finding.first_seq is None:
        place = ""
    elif finding.first_seq == finding.last_seq:
        place = f" seq {finding.first_seq}"
    else:
        place = f" seq {finding.first_seq}..{finding.last_seq}"
    line = f" (line {finding.line})" if finding.line is not None else ""
    return f"{finding.kind.upper().replace('_', ' ')}{place}{line}"


def report_text(report: Report) -> str:
    """The report for a terminal: per chain a summary and its findings, then the verdict."""
    lines = [f"read {report.events_read} event(s)"]
    if report.without_record:
        lines.append(f"  {report.without_record} without a chain record (not checked)")
    if report.unreadable_lines:
        shown = ", ".join(str(n) for n in report.unreadable_lines[:10])
        more = "" if len(report.unreadable_lines) <= 10 else ", ..."
        lines.append(f"  {len(report.unreadable_lines)} line(s) not JSON events: {shown}{more}")
    for finding in report.findings:
        if not finding.forwarder:
            lines.append(f"  {_where(finding)}: {finding.detail}")
    for chain in report.chains:
        lines.append(
            f"forwarder {chain.forwarder}: {chain.events} event(s),"
            f" seq {chain.first_seq}..{chain.last_seq}, {chain.checkpoints} valid checkpoint(s)"
        )
        if chain.signed_through is not None:
            lines.append(f"  signed and complete: up to seq {chain.signed_through}")
        else:
            lines.append("  signed and complete: nothing (no valid checkpoint on an intact prefix)")
        lines.extend(
            f"  {_where(finding)}: {finding.detail}"
            for finding in report.findings
            if finding.forwarder == chain.forwarder
        )
        if chain.unsigned is not None:
            first, last = chain.unsigned
            lines.append(f"  not yet covered by a checkpoint: seq {first}..{last}")
    count = len(report.findings)
    lines.append("clean" if report.clean else f"{count} finding(s)")
    return "\n".join(lines)
