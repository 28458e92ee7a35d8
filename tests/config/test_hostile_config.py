"""Hostile documents: alias bombs, deep nesting, huge strings and object tags are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.config.loading import MAX_DEPTH, MAX_VALUES
from tests.config.helpers import (
    ONE_FORWARDER,
    load,
    problems,
    problems_at,
    write,
)

# --- hostile input --------------------------------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
auditLogForwarders: [{kind: webhook, uri: "https://x", name: *i}]
"""


@pytest.mark.timeout(10)
def test_billion_laughs_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """A 1 KB alias bomb (387 million strings once expanded) is refused, not walked."""
    found = problems(tmp_path, BILLION_LAUGHS)

    assert found == [
        f"the configuration has more than {MAX_VALUES} values, counting each use of an alias"
    ]


@pytest.mark.timeout(10)
def test_alias_bomb_of_mappings_is_refused_at_once(tmp_path: Path) -> None:
    """The same bomb built from mappings, inside a valid section, is refused too."""
    levels = ["a0: &a0 {k0: lol, k1: lol, k2: lol, k3: lol, k4: lol, k5: lol, k6: lol}"]
    for level in range(1, 10):
        keys = ", ".join(f"k{key}: *a{level - 1}" for key in range(7))
        levels.append(f"a{level}: &a{level} {{{keys}}}")
    text = "ingest:\n" + "".join(f"  {line}\n" for line in levels) + ONE_FORWARDER

    found = problems(tmp_path, text)

    assert found == [
        f"the configuration has more than {MAX_VALUES} values, counting each use of an alias"
    ]


@pytest.mark.parametrize(
    "text",
    [
        f"loop: &a [*a]\n{ONE_FORWARDER}",
        f"ingest: &a {{self: *a}}\n{ONE_FORWARDER}",
        "auditLogForwarders: &a [*a]\n",
    ],
    ids=["unknown-key", "section", "forwarders"],
)
@pytest.mark.timeout(10)
def test_alias_that_refers_to_itself_is_refused(tmp_path: Path, text: str) -> None:
    """A cyclic document built with an alias is one problem, not a RecursionError."""
    assert problems(tmp_path, text) == [
        f"the configuration is nested more than {MAX_DEPTH} levels deep"
        " (or an alias refers to itself)"
    ]


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    """Anchors, aliases and ``<<:`` merge keys for shared settings load as intended."""
    settings = load(
        tmp_path,
        """\
        auditLogForwarders:
          - &base
            name: a
            kind: webhook
            uri: https://a.example
            method: PUT
            retry: &fast {initialBackoffSeconds: 0.1, maxBackoffSeconds: 2}
          - <<: *base
            name: b
            uri: https://b.example
          - {kind: webhook, uri: "https://c.example", retry: *fast}
        """,
    )

    a, b, c = settings.audit_log_forwarders
    assert settings.forwarder_names() == ["a", "b", "webhook-2"]
    assert (b.uri, b.method) == ("https://b.example", "PUT")
    assert a.retry == b.retry == c.retry
    assert c.retry.max_backoff_seconds == 2.0


@pytest.mark.parametrize(
    ("depth", "problem"),
    [
        (MAX_DEPTH + 1, "the configuration is nested more than {max_depth} levels deep"),
        (200, "the configuration is nested more than {max_depth} levels deep"),
        (5000, "{path} is nested too deeply to parse"),
    ],
    ids=["past-our-limit", "deep", "past-the-parser"],
)
@pytest.mark.parametrize(
    ("opening", "closing"), [("[", "]"), ("{a: ", "}")], ids=["lists", "mappings"]
)
@pytest.mark.timeout(10)
def test_deep_nesting_is_refused_without_a_recursion_error(
    tmp_path: Path, depth: int, problem: str, opening: str, closing: str
) -> None:
    """Very deep nesting is one problem, whether the YAML parser or our walk would overflow."""
    path = write(tmp_path, f"{ONE_FORWARDER}deep: {opening * depth}1{closing * depth}\n")

    [found] = problems_at(path)

    assert found.startswith(problem.format(max_depth=MAX_DEPTH, path=path))


def test_many_forwarders_below_the_limits_load(tmp_path: Path) -> None:
    """Two hundred forwarders, far more than any real file, are within the limits."""
    entries = "".join(
        f"  - {{kind: webhook, uri: 'https://h{index}.example', retry: {{maxBackoffSeconds: 9}}}}\n"
        for index in range(200)
    )

    settings = load(tmp_path, f"auditLogForwarders:\n{entries}")

    assert settings.forwarder_names()[-1] == "webhook-199"


@pytest.mark.timeout(30)
def test_huge_strings_are_validated_and_never_echoed(tmp_path: Path) -> None:
    """Megabyte strings are refused or accepted on their merits, and problems stay short."""
    huge = "x" * 1_000_000

    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - {{kind: {huge}, uri: "https://a"}}
          - {{kind: webhook, uri: "https://b", name: {huge}}}
          - {{kind: webhook, uri: "https://c", method: {huge}}}
        """,
    )
    settings = load(
        tmp_path,
        f"auditLogForwarders: [{{kind: webhook, uri: 'https://a/{huge}', token: {huge}}}]\n",
    )

    assert [problem.split(":")[0] for problem in found] == [
        "auditLogForwarders[0].kind",
        "auditLogForwarders[1].name",
        "auditLogForwarders[2].method",
    ]
    assert all(len(problem) < 200 for problem in found)
    assert settings.secrets() == [huge]
    assert huge not in repr(settings.audit_log_forwarders[0].token)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"1: one\n{ONE_FORWARDER}", "1: keys should be strings"),
        (f"null: nothing\n{ONE_FORWARDER}", "None: keys should be strings"),
        (f"true: yes\n{ONE_FORWARDER}", "True: keys should be strings"),
        (f"ingest: {{8686: port}}\n{ONE_FORWARDER}", "ingest[8686]: keys should be strings"),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x, 3: 4}]\n",
            "auditLogForwarders[0][3]: keys should be strings",
        ),
    ],
    ids=["int", "null", "bool", "nested", "in-forwarder"],
)
def test_non_string_keys_are_problems(tmp_path: Path, text: str, problem: str) -> None:
    """Integer, null and boolean keys are problems, not a TypeError from keyword arguments."""
    assert problems(tmp_path, text) == [problem]


def test_unhashable_complex_key_is_a_yaml_problem(tmp_path: Path) -> None:
    """A YAML complex key (``? [a, b]``) is one YAML problem with its line."""
    path = write(tmp_path, f"{ONE_FORWARDER}? [a, b]\n: value\n")

    [found] = problems_at(path)

    assert found.startswith(f"{path} is not valid YAML at line 2, column ")
    assert "unhashable key" in found


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:os.system ['touch {marker}']",
        "!!python/name:os.system",
        "!!python/object:pathlib.Path {{}}",
        "!custom value",
    ],
    ids=["apply", "new", "name", "object", "custom"],
)
def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path, tagged: str) -> None:
    """Python object and unknown tags are refused as a YAML problem and never executed."""
    marker = tmp_path / "executed"
    path = write(
        tmp_path,
        "auditLogForwarders:\n  - kind: webhook\n    uri: https://x\n"
        f"    token: {tagged.format(marker=marker)}\n",
    )

    [found] = problems_at(path)

    assert found.startswith(f"{path} is not valid YAML at line 4, column 12: ")
    assert "could not determine a constructor for the tag" in found
    assert not marker.exists()
