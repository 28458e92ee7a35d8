"""One run of check-config lists every problem: no kind of problem hides another.

Validation (pydantic), secret files and the checks that need resolved values
(templates, signing secrets, a token's form, TLS files) used to run one after
the other, each stopping the load; and a model validator stopped at its first
finding. These tests put problems of every kind side by side and expect all
of them, in file order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.helpers import problems

BAD_TEMPLATE = """'{"a": {{x}'"""
TEMPLATE_PROBLEM = "unbalanced braces: '{{' without a matching '}}' on line 1"
SHORT_SECRET = "whsec_c2hvcnQ="  # "short": 5 bytes
SECRET_PROBLEM = (
    "the signing secret is 5 bytes; use at least 16 (e.g. whsec_ + base64 of 32 random bytes)"
)


def test_template_header_secret_and_unknown_key_in_different_places_are_all_listed(
    tmp_path: Path,
) -> None:
    """A bad template (0), a reserved header (1), a short secret (2), an unknown ingest key."""
    found = problems(
        tmp_path,
        f"""\
        ingest: {{prot: 8686}}
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a.example", format: template, template: {BAD_TEMPLATE}}}
          - {{kind: webhook, uri: "https://b.example", headers: {{Authorization: x}}}}
          - {{kind: webhook, uri: "https://c.example", signingSecret: {SHORT_SECRET}}}
        """,
    )

    assert found == [
        "ingest.prot: unknown key (did you mean port?)",
        f"auditLogForwarders[0].template: {TEMPLATE_PROBLEM}",
        "auditLogForwarders[1].headers: authorization is reserved: the forwarder sets it",
        f"auditLogForwarders[2].signingSecret: {SECRET_PROBLEM}",
    ]


def test_a_refused_forwarder_still_has_its_template_and_secret_checked(tmp_path: Path) -> None:
    """Two reserved headers, a bad template and a short secret in one forwarder: all four."""
    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - kind: webhook
            uri: https://a.example
            headers: {{Authorization: x, Host: y}}
            format: template
            template: {BAD_TEMPLATE}
            signingSecret: {SHORT_SECRET}
        """,
    )

    assert found == [
        "auditLogForwarders[0].headers: authorization is reserved: the forwarder sets it",
        "auditLogForwarders[0].headers: host is reserved: the forwarder sets it",
        f"auditLogForwarders[0].template: {TEMPLATE_PROBLEM}",
        f"auditLogForwarders[0].signingSecret: {SECRET_PROBLEM}",
    ]


def test_every_cross_field_problem_of_a_forwarder_is_listed(tmp_path: Path) -> None:
    """token with tokenFile, signingSecret with its file, a template without format: all three."""
    found = problems(
        tmp_path,
        """\
        auditLogForwarders:
          - kind: webhook
            uri: https://a.example
            token: inline
            tokenFile: /run/secrets/token
            signingSecret: whsec_MDEyMzQ1Njc4OWFiY2RlZg==
            signingSecretFile: /run/secrets/signing
            template: "{}"
        """,
    )

    assert found == [
        "auditLogForwarders[0]: set token or tokenFile, not both",
        "auditLogForwarders[0]: set signingSecret or signingSecretFile, not both",
        "auditLogForwarders[0]: template is set but format is not template",
    ]


def test_every_problem_of_the_ingest_section_is_listed(tmp_path: Path) -> None:
    """No listener and maxEventBytes over maxRequestBytes: both reported."""
    found = problems(
        tmp_path,
        """\
        ingest: {port: null, maxRequestBytes: 10, maxEventBytes: 20}
        auditLogForwarders: [{kind: webhook, uri: "https://a.example"}]
        """,
    )

    assert found == [
        "ingest: at least one of port and unixSocket must be set",
        "ingest: maxEventBytes must not exceed maxRequestBytes",
    ]


def test_unreadable_secret_files_are_listed_with_validation_problems(tmp_path: Path) -> None:
    """A missing tokenFile and signingSecretFile beside a bad method elsewhere: all three."""
    missing = tmp_path / "missing"
    found = problems(
        tmp_path,
        f"""\
        ingest: {{tokenFile: {missing}}}
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a.example", method: GET}}
          - {{kind: webhook, uri: "https://b.example", signingSecretFile: {missing}}}
        """,
    )

    assert found == [
        f"ingest.tokenFile: cannot read {missing}: No such file or directory",
        "auditLogForwarders[0].method: must be one of POST, PUT, PATCH",
        f"auditLogForwarders[1].signingSecretFile: cannot read {missing}:"
        " No such file or directory",
    ]


def test_a_short_secret_from_a_file_is_reported_at_the_file(tmp_path: Path) -> None:
    """A signing secret read from signingSecretFile is checked, and named by that key."""
    secret_file = tmp_path / "signing"
    secret_file.write_text(f"{SHORT_SECRET}\n")

    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a.example", signingSecretFile: {secret_file}}}
        """,
    )

    assert found == [f"auditLogForwarders[0].signingSecretFile: {SECRET_PROBLEM}"]


def test_duplicate_names_are_each_reported(tmp_path: Path) -> None:
    """Two names used twice each give their own problem."""
    found = problems(
        tmp_path,
        """\
        auditLogForwarders:
          - {kind: webhook, uri: "https://a.example", name: one}
          - {kind: webhook, uri: "https://a.example", name: one}
          - {kind: webhook, uri: "https://a.example", name: two}
          - {kind: webhook, uri: "https://a.example", name: two}
        """,
    )

    assert found == [
        "auditLogForwarders: forwarder name 'one' is used twice",
        "auditLogForwarders: forwarder name 'two' is used twice",
    ]


def test_status_policy_reports_every_code_with_two_outcomes(tmp_path: Path) -> None:
    """503 and 409 each in two lists: two problems."""
    found = problems(
        tmp_path,
        """\
        auditLogForwarders:
          - kind: webhook
            uri: https://a.example
            statusPolicy: {retry: [503, 409], deadLetter: [503], success: [409]}
        """,
    )

    assert found == [
        "auditLogForwarders[0].statusPolicy: 503 is in both retry and deadLetter:"
        " a status can have one outcome",
        "auditLogForwarders[0].statusPolicy: 409 is in both retry and success:"
        " a status can have one outcome",
    ]


@pytest.mark.parametrize(
    "uri", ["https://${FWD_TEST_UNSET_HOST}/in", "${FWD_TEST_UNSET_HOST}"], ids=["part", "whole"]
)
def test_an_unset_variable_is_reported_once_not_again_by_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    """The empty string left by an unset ${VAR} is not reported a second time as a bad URI."""
    monkeypatch.delenv("FWD_TEST_UNSET_HOST", raising=False)

    found = problems(
        tmp_path,
        f"""\
        logging: {{level: loud}}
        auditLogForwarders: [{{kind: webhook, uri: "{uri}"}}]
        """,
    )

    assert found == [
        "logging.level: must be one of debug, info, warning, error",
        "auditLogForwarders[0].uri: environment variable FWD_TEST_UNSET_HOST is not set",
    ]
