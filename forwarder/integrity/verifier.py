"""What ``audit-forwarder verify`` checks: events as a SIEM kept them, against their chain.

Input is events in any order, duplicates allowed (at-least-once delivery and
crash recovery both repeat events, with identical records). Per forwarder,
the verifier collects the records by ``seq`` and reports:

* ``missing``: seqs absent between the first expected (1, or ``from_seq``)
  and the highest seen: events removed, or not exported;
* ``altered``: an event whose bytes no longer hash to its record's ``hash``
  (when its bytes are those of another seq's event, it says which: two
  events swapped, or one copied over another);
* ``out_of_chain``: a record whose ``prev`` is not the hash of the record
  before it (seq 1: not the genesis hash), or two different records for
  one seq (a fork, or a forged record);
* ``bad_signature``: a checkpoint whose signature does not verify, or made
  with a key that was not given;
* ``malformed``: a record that cannot be read.

And, not a finding: the *signed complete range*, the longest run from the
first expected seq in which every event is present, unaltered and linked,
ending at a checkpoint with a valid signature; and the seqs after the last
valid checkpoint, which no signature covers yet (truncating those cannot be
detected until the next checkpoint arrives, see the threat model).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from forwarder.integrity.envelope import Recovered
from forwarder.integrity.keys import key_id, signature_valid
from forwarder.integrity.records import GENESIS, ChainRecord, event_digest

KINDS = ("missing", "altered", "out_of_chain", "bad_signature", "malformed")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its kind, where (forwarder, seq or first..last, input line) and what."""

    kind: str
    forwarder: str
    first_seq: int | None
    last_seq: int | None
    detail: str
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "kind": self.kind,
            "forwarder": self.forwarder,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "line": self.line,
            "detail": self.detail,
        }


@dataclass(slots=True)
class ChainSummary:
    """What one forwarder's chain looks like in the input."""

    forwarder: str
    events: int = 0  # distinct seqs seen
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0  # checkpoints with a valid signature
    signed_through: int | None = None  # the signed complete range ends here
    unsigned: tuple[int, int] | None = None  # seqs after the last valid checkpoint

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "forwarder": self.forwarder,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "valid_checkpoints": self.checkpoints,
            "signed_complete_through": self.signed_through,
            "unsigned_tail": list(self.unsigned) if self.unsigned else None,
        }


@dataclass(slots=True)
class Report:
    """Everything ``verify`` found."""

    chains: list[ChainSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    events_read: int = 0
    without_record: int = 0
    unreadable_lines: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No finding at all."""
        return not self.findings


@dataclass(slots=True)
class _Seen:
    """The copies of one seq: distinct records (by hash), and the lines of each."""

    records: dict[str, ChainRecord] = field(default_factory=dict)
    signatures: dict[tuple[str, str], tuple[ChainRecord, int]] = field(default_factory=dict)
    altered: bool = False


class Verifier:
    """Collects exported events (:meth:`add`), then :meth:`report`."""

    def __init__(self, public_keys: Iterable[Ed25519PublicKey], from_seq: int = 1) -> None:
        self._keys = {key_id(key): key for key in public_keys}
        self._from_seq = from_seq
        self._chains: dict[str, dict[int, _Seen]] = defaultdict(dict)
        # (forwarder, seq, line, actual digest) of each altered copy, for the second pass.
        self._altered: list[tuple[str, int, int, str]] = []
        self._report = Report()

    def unreadable(self, line: int) -> None:
        """Line ``line`` is not JSON (or not an object): noted, not a finding by itself."""
        self._report.unreadable_lines.append(line)

    def add(self, recovered: Recovered, line: int) -> None:
        """One exported event."""
        report = self._report
        report.events_read += 1
        record = recovered.record
        if record is None:
            if recovered.problem is not None:
                report.findings.append(
                    Finding("malformed", "", None, None, recovered.problem, line)
                )
            else:
                report.without_record += 1
            return
        seen = self._chains[record.forwarder].setdefault(record.seq, _Seen())
        seen.records.setdefault(record.own_hash, record)
        if record.signature is not None and record.key_id is not None:
            seen.signatures.setdefault((record.own_hash, record.signature), (record, line))
        actual = event_digest(recovered.event)
        if actual != record.digest:
            seen.altered = True
            self._altered.append((record.forwarder, record.seq, line, actual))

    def report(self) -> Report:
        """The findings and the chains' summaries (call once, after every :meth:`add`)."""
        report = self._report
        for forwarder in sorted(self._chains):
            report.chains.append(self._check_chain(forwarder, self._chains[forwarder]))
        order = {kind: rank for rank, kind in enumerate(KINDS)}
        report.findings.sort(
            key=lambda f: (f.forwarder, f.first_seq or 0, order[f.kind], f.line or 0)
        )
        return report

    def _check_chain(self, forwarder: str, chain: dict[int, _Seen]) -> ChainSummary:
        findings = self._report.findings
        seqs = sorted(chain)
        summary = ChainSummary(forwarder, len(seqs), seqs[0], seqs[-1])
        findings += self._altered_findings(forwarder, chain)
        valid = self._signatures(forwarder, chain, summary)
        broken: set[int] = {seq for seq, seen in chain.items() if seen.altered}
        for seq in seqs:
            seen = chain[seq]
            if len(seen.records) > 1:
                broken.add(seq)
                findings.append(
                    Finding(
                        "out_of_chain",
                        forwarder,
                        seq,
                        seq,
                        f"{len(seen.records)} different records for this seq (a fork or a forgery)",
                    )
                )
            before = chain.get(seq - 1)
            wanted = GENESIS if seq == 1 else None
            if before is not None and len(before.records) == 1:
                wanted = next(iter(before.records))
            for record in seen.records.values():
                if wanted is not None and record.prev != wanted:
                    broken.add(seq)
                    what = "the genesis hash" if seq == 1 else f"the hash of seq {seq - 1}'s record"
                    findings.append(
                        Finding("out_of_chain", forwarder, seq, seq, f"prev is not {what}")
                    )
        findings += _gaps(forwarder, self._from_seq, seqs)
        # The signed complete range: contiguous, sound, ending at a valid checkpoint.
        seq = self._from_seq
        while seq in chain and seq not in broken:
            if seq in valid:
                summary.signed_through = seq
            seq += 1
        last_checkpoint = max(valid, default=0)
        if summary.last_seq is not None and summary.last_seq > last_checkpoint:
            summary.unsigned = (max(last_checkpoint + 1, seqs[0]), summary.last_seq)
        return summary

    def _altered_findings(self, forwarder: str, chain: dict[int, _Seen]) -> list[Finding]:
        by_digest: dict[str, list[int]] = defaultdict(list)
        for seq, seen in chain.items():
            for record in seen.records.values():
                by_digest[record.digest].append(seq)
        found = []
        for name, seq, line, actual in self._altered:
            if name != forwarder:
                continue
            others = [other for other in by_digest.get(actual, []) if other != seq]
            detail = "the event's SHA-256 does not match its record"
            if others:
                detail += f": it is the event recorded at seq {others[0]} (moved or swapped)"
            found.append(Finding("altered", forwarder, seq, seq, detail, line))
        return found

    def _signatures(
        self, forwarder: str, chain: dict[int, _Seen], summary: ChainSummary
    ) -> set[int]:
        """The seqs holding a valid checkpoint; a finding for each bad signature."""
        valid: set[int] = set()
        for seq, seen in sorted(chain.items()):
            for record, line in seen.signatures.values():
                assert record.key_id is not None
                assert record.signature is not None
                key = self._keys.get(record.key_id)
                if key is None:
                    detail = f"signed with key {record.key_id[:16]!r}, which was not given"
                elif not signature_valid(key, record.own_hash, record.signature):
                    detail = "the signature does not verify (a forged or damaged checkpoint)"
                else:
                    if len(seen.records) == 1:
                        valid.add(seq)
                    continue
                self._report.findings.append(
                    Finding("bad_signature", forwarder, seq, seq, detail, line)
                )
        summary.checkpoints = len(valid)
        return valid


def _gaps(forwarder: str, from_seq: int, seqs: list[int]) -> list[Finding]:
    """One ``missing`` finding per run of absent seqs from ``from_seq`` to the highest seen."""
    found = []
    expected = from_seq
    for seq in seqs:
        if seq < from_seq:
            continue
        if seq > expected:
            count = seq - expected
            detail = f"{count} event{'s' if count > 1 else ''} missing"
            found.append(Finding("missing", forwarder, expected, seq - 1, detail))
        expected = seq + 1
    return found
