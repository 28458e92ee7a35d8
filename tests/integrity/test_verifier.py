"""The verifier on real chains: clean, and each kind of tampering reported precisely."""

from __future__ import annotations

from forwarder.integrity.envelope import recover
from forwarder.integrity.verifier import Report, Verifier
from tests.integrity.chains import bodies, chain, exported, key_pair, public


def verify(lines: list[str], public_pem: bytes, from_seq: int = 1) -> Report:
    verifier = Verifier([public(public_pem)], from_seq)
    for number, line in enumerate(lines, 1):
        verifier.add(recover(line), number)
    return verifier.report()


def kinds(report: Report) -> list[tuple[str, int | None, int | None]]:
    return [(f.kind, f.first_seq, f.last_seq) for f in report.findings]


def test_a_complete_chain_in_any_order_with_duplicates_is_clean() -> None:
    """Shuffled and repeated lines verify clean, and the signed range covers every seq."""
    signer, public_pem = key_pair()
    lines = exported(chain(signer, bodies(12)))
    report = verify(list(reversed(lines)) + lines[3:6], public_pem)
    assert report.clean, report.findings
    (summary,) = report.chains
    assert (summary.events, summary.first_seq, summary.last_seq) == (12, 1, 12)
    assert summary.signed_through == 12
    assert summary.checkpoints == 3  # seqs 5, 10 and 12
    assert summary.unsigned is None


def test_a_deleted_event_is_reported_as_missing() -> None:
    """Removing seq 7 is one finding: missing seq 7; the signed range stops at 5."""
    signer, public_pem = key_pair()
    lines = exported(chain(signer, bodies(12)))
    del lines[6]
    report = verify(lines, public_pem)
    assert kinds(report) == [("missing", 7, 7)]
    assert report.chains[0].signed_through == 5


def test_one_altered_byte_is_reported_at_its_seq_and_line() -> None:
    """Changing one byte of event 4's own data is reported as altered at seq 4, line 4."""
    signer, public_pem = key_pair()
    lines = exported(chain(signer, bodies(12)))
    lines[3] = lines[3].replace("alice", "alicf")
    report = verify(lines, public_pem)
    assert kinds(report) == [("altered", 4, 4)]
    assert report.findings[0].line == 4
    assert report.chains[0].signed_through is None  # the prefix breaks before the first checkpoint


def test_two_swapped_events_are_both_reported_and_named() -> None:
    """Events 3 and 8 exchanged under their records: both altered, each naming the other."""
    signer, public_pem = key_pair()
    events = chain(signer, bodies(12))
    swapped = [*events]
    swapped[2] = events[2]._replace(body=events[7].body)
    swapped[7] = events[7]._replace(body=events[2].body)
    report = verify(exported(swapped), public_pem)
    assert kinds(report) == [("altered", 3, 3), ("altered", 8, 8)]
    assert "recorded at seq 8" in report.findings[0].detail
    assert "recorded at seq 3" in report.findings[1].detail


def test_a_forged_checkpoint_is_a_bad_signature() -> None:
    """The last checkpoint signed by another key (claiming ours) fails; the range ends at 10."""
    signer, public_pem = key_pair()
    forger, _ = key_pair()
    events = chain(signer, bodies(12))
    record = events[11].chain
    assert record is not None
    forged = record.signed(signer.key_id, forger.sign(record.own_hash))
    events[11] = events[11]._replace(chain=forged)
    report = verify(exported(events), public_pem)
    assert kinds(report) == [("bad_signature", 12, 12)]
    assert report.chains[0].signed_through == 10
    assert report.chains[0].unsigned == (11, 12)


def test_a_checkpoint_by_an_unknown_key_is_a_bad_signature() -> None:
    """A chain signed with a key that was not given is reported, never trusted."""
    signer, _ = key_pair()
    _, other_public = key_pair()
    report = verify(exported(chain(signer, bodies(5))), other_public)
    assert kinds(report) == [("bad_signature", 5, 5)]
    assert "was not given" in report.findings[0].detail


def test_a_rewritten_link_is_out_of_chain() -> None:
    """An event replaced with a consistent record of its own breaks the next link."""
    signer, public_pem = key_pair()
    events = chain(signer, bodies(8))
    fake = chain(signer, [b'{"n":"forged"}'] * 4)[3]  # seq 4 of another chain
    events[3] = fake
    report = verify(exported(events), public_pem)
    assert ("out_of_chain", 4, 4) in kinds(report)
    assert ("out_of_chain", 5, 5) in kinds(report)


def test_two_records_for_one_seq_are_a_fork() -> None:
    """Another record at an existing seq is reported, whatever the order of the lines."""
    signer, public_pem = key_pair()
    lines = exported(chain(signer, bodies(6)))
    other = exported(chain(signer, [b'{"x":1}'] * 6))[2]
    report = verify([*lines, other], public_pem)
    assert ("out_of_chain", 3, 3) in kinds(report)
    assert "different records" in next(f.detail for f in report.findings if f.first_seq == 3)


def test_the_unsigned_tail_is_said_but_is_no_finding() -> None:
    """Events after the last checkpoint are listed as not yet covered, with exit-clean status."""
    signer, public_pem = key_pair()
    events = chain(signer, bodies(8), every=5)
    # Drop the signature the helper puts on the last event.
    last = events[-1].chain
    assert last is not None
    events[-1] = events[-1]._replace(
        chain=type(last).link(last.forwarder, last.seq, last.digest, last.prev)
    )
    report = verify(exported(events), public_pem)
    assert report.clean
    assert report.chains[0].signed_through == 5
    assert report.chains[0].unsigned == (6, 8)


def test_from_seq_verifies_a_window_without_reporting_what_came_before() -> None:
    """An export starting at seq 6 is clean with from_seq 6 and has a gap without it."""
    signer, public_pem = key_pair()
    lines = exported(chain(signer, bodies(10)))[5:]
    assert verify(lines, public_pem, from_seq=6).clean
    assert kinds(verify(lines, public_pem)) == [("missing", 1, 5)]


def test_a_damaged_record_is_malformed() -> None:
    """A record whose hash is not hex is reported as malformed with its line."""
    signer, public_pem = key_pair()
    lines = exported(chain(signer, bodies(3)))
    lines[1] = lines[1].replace('"hash":"', '"hash":"z', 1)
    report = verify(lines, public_pem)
    assert ("malformed", None, None) in kinds(report)
    assert report.findings[0].line == 2
