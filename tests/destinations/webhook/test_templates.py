"""Body templates: the Apono and Logz.io seed templates verbatim, context-aware escaping, errors.

Everything is rendered for real and checked by parsing the output with
orjson, the strict parser: a body is only as good as a receiver's ability to
parse it, and for Logz.io that includes the JSON held inside ``message``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from forwarder.destinations.webhook.templates import Placeholder, Template, compile_template

# Copied verbatim from the Apono "Audit Log Webhook" page (seed 002).
APONO_TEMPLATE = """{
    "event_type": "{{event_type}}",
    "event_time": "{{event_time}}",
    "data": {
        "timestamp": "{{data.timestamp}}",
        "action": "{{data.action}}",
        "actor_id": "{{data.actor_id}}",
        "actor_name": "{{data.actor_name}}",
        "actor_type": "{{data.actor_type}}",
        "source": "{{data.source}}",
        "target_id": "{{data.target_id}}",
        "target_type": "{{data.target_type}}",
        "target_name": "{{data.target_name}}",
        "metadata": "{{data.metadata}}",
        "current_target_object": "{{data.current_target_object}}",
        "previous_target_object": "{{data.previous_target_object}}"
    }
}"""

# Copied verbatim from the Apono "Logz.io" page (seed 004).
LOGZIO_TEMPLATE = r"""{"message": "{ \"event_type\": \"{{ event_type }}\", \"event_time\": \"{{ event_time }}\", \"id\": \"{{ data.id }}\", \"friendly_id\": \"{{ data.friendly_id }}\", \"requester_id\": \"{{ data.requester.id }}\", \"requester_name\": \"{{ data.requester.name }}\", \"requester_email\": \"{{ data.requester.email }}\", \"justification\": \"{{ data.justification }}\", \"creation_date\": \"{{ data.creation_date }}\", \"access_flow_id\": \"{{ data.access_flow.id }}\", \"access_flow_name\": \"{{ data.access_flow.name }}\", \"access_bundle_id\": \"{{ data.access_bundle.id }}\", \"access_bundle_name\": \"{{ data.access_bundle.id }}\", \"access_groups_integration_name\": \"{{ data.access_groups.[0].integration.name }}\", \"access_groups_integration_type\": \"{{ data.access_groups.[0].integration.type }}\"}", "type": "Apono"}"""  # noqa: E501

INJECTION = '", "injected": "x'
HOSTILE = (
    'quote " backslash \\ escaped-quote \\" newline \n tab \t cr \r nul \x00 '
    "</script> é 日本 😀 \u2028 " + INJECTION
)


def parse(body: bytes) -> Any:
    """Parse with orjson: strict JSON, UTF-8 only."""
    return orjson.loads(body)


def apono_event(value: Any = HOSTILE) -> dict[str, Any]:
    """An Apono audit event with ``value`` in every string field."""
    return {
        "event_type": value,
        "event_time": "2024-05-01T12:00:00Z",
        "data": {
            "timestamp": value,
            "action": value,
            "actor_id": 42,
            "actor_name": value,
            "actor_type": "user",
            "source": value,
            "target_id": value,
            "target_type": value,
            "target_name": value,
            "metadata": {"reason": value, "tags": ["a", value]},
            "current_target_object": None,
            "previous_target_object": [1, {"x": value}],
        },
    }


def logzio_event(value: Any = HOSTILE) -> dict[str, Any]:
    """An Apono access-request event with ``value`` in every string field."""
    return {
        "event_type": "RequestApproved",
        "event_time": value,
        "data": {
            "id": value,
            "friendly_id": 7,
            "requester": {"id": value, "name": value, "email": "jo@example.com"},
            "justification": value,
            "creation_date": value,
            "access_flow": {"id": value, "name": value},
            "access_bundle": {"id": value},
            "access_groups": [
                {"integration": {"name": value, "type": "postgresql"}},
                {"integration": {"name": "second", "type": "mysql"}},
            ],
        },
    }


def test_apono_seed_template_renders_hostile_event_as_valid_json() -> None:
    """The Apono seed template, verbatim, renders hostile values as intact strings in valid JSON."""
    body = parse(compile_template(APONO_TEMPLATE).render(apono_event()))
    assert body["event_type"] == HOSTILE
    assert body["event_time"] == "2024-05-01T12:00:00Z"
    assert body["data"]["action"] == HOSTILE
    assert body["data"]["actor_id"] == "42"
    assert parse(body["data"]["metadata"].encode()) == {"reason": HOSTILE, "tags": ["a", HOSTILE]}
    assert body["data"]["current_target_object"] == ""
    assert parse(body["data"]["previous_target_object"].encode()) == [1, {"x": HOSTILE}]
    assert "injected" not in body
    assert "injected" not in body["data"]


def test_logzio_seed_template_keeps_inner_json_valid() -> None:
    """The Logz.io seed template, verbatim: ``message`` parses as JSON and holds values intact."""
    body = parse(compile_template(LOGZIO_TEMPLATE).render(logzio_event()))
    assert set(body) == {"message", "type"}
    assert body["type"] == "Apono"
    message = parse(body["message"].encode())
    assert message["event_type"] == "RequestApproved"
    assert message["event_time"] == HOSTILE
    assert message["id"] == HOSTILE
    assert message["friendly_id"] == "7"
    assert message["requester_name"] == HOSTILE
    assert message["requester_email"] == "jo@example.com"
    assert message["access_bundle_name"] == HOSTILE
    assert message["access_groups_integration_name"] == HOSTILE
    assert message["access_groups_integration_type"] == "postgresql"
    assert "injected" not in message


def test_logzio_placeholders_sit_two_string_layers_deep() -> None:
    """Placeholders inside escaped JSON inside a JSON string are string content at depth 2."""
    template = compile_template(LOGZIO_TEMPLATE)
    assert len(template.placeholders) == 15
    assert {(p.context, p.depth) for p in template.placeholders} == {("string", 2)}
    assert template.placeholders[-1] == Placeholder(
        "data.access_groups.[0].integration.type",
        ("data", "access_groups", 0, "integration", "type"),
        "string",
        2,
    )


def test_apono_placeholders_sit_one_string_layer_deep() -> None:
    """Placeholders in plain JSON strings are string content at depth 1."""
    template = compile_template(APONO_TEMPLATE)
    assert len(template.placeholders) == 14
    assert {(p.context, p.depth) for p in template.placeholders} == {("string", 1)}


def test_quotes_in_plain_text_string_do_not_add_a_layer() -> None:
    """A string holding text with quotes, not JSON, is one layer: the value is escaped once."""
    template = compile_template(r'{"text": "user \"{{ name }}\" approved"}')
    assert template.placeholders[0].depth == 1
    assert parse(template.render({"name": HOSTILE}))["text"] == f'user "{HOSTILE}" approved'


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("groups.[0].name", "first"),
        ("groups.[1].name", "second"),
        ("groups[1].name", "second"),
        ("matrix.[1].[0]", "c"),
        ("matrix[1][1]", "d"),
        ("groups.[0].tags.[2]", "t2"),
    ],
)
def test_array_index_paths(path: str, expected: str) -> None:
    """Array indexes written ``.[n]`` or ``[n]`` pick that element."""
    event = {
        "groups": [{"name": "first", "tags": ["t0", "t1", "t2"]}, {"name": "second"}],
        "matrix": [["a", "b"], ["c", "d"]],
    }
    template = compile_template(f'{{"v": "{{{{{path}}}}}"}}')
    assert parse(template.render(event)) == {"v": expected}


@pytest.mark.parametrize(
    "path",
    [
        "absent",
        "data.absent",
        "data.null_value",
        "data.text.deeper",
        "data.items.[5]",
        "data.items.[0].absent",
        "data.object.[0]",
        "data.items.key",
    ],
)
def test_missing_values_render_empty(path: str) -> None:
    """Missing keys, out-of-range indexes, nulls and steps into the wrong type render ``""``."""
    event = {"data": {"null_value": None, "text": "t", "items": [{"a": 1}], "object": {"0": 1}}}
    template = compile_template(f'{{"v": "{{{{ {path} }}}}", "n": {{{{ {path} }}}}}}')
    assert parse(template.render(event)) == {"v": "", "n": None}


@pytest.mark.parametrize(
    "value",
    [0, -1.5, 12345678901234567890123, True, False, 'text " with quote', {"a": [1, None]}, []],
)
def test_value_position_placeholders_produce_typed_json(value: Any) -> None:
    """A placeholder where a JSON value goes inserts the value itself, typed."""
    template = compile_template('{"v": {{data.v}}, "list": [{{ data.v }}, 1]}')
    assert {(p.context, p.depth) for p in template.placeholders} == {("value", 0)}
    # json, not orjson: orjson reads integers beyond 64 bits as floats.
    rendered = template.render({"data": {"v": value}})
    assert json.loads(rendered) == {"v": value, "list": [value, 1]}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7, "7"),
        (-1.5, "-1.5"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ({"a": [1, "é"]}, '{"a":[1,"é"]}'),
        ([1, "two"], '[1,"two"]'),
        ("", ""),
    ],
)
def test_string_position_inserts_string_forms(value: Any, text: str) -> None:
    """Inside a string, numbers and booleans are their JSON text and containers compact JSON."""
    template = compile_template('{"v": "<{{data.v}}>"}')
    assert parse(template.render({"data": {"v": value}})) == {"v": f"<{text}>"}


def test_value_position_inside_embedded_json_string() -> None:
    """In JSON held by a string, a bare placeholder is a typed value, escaped one layer."""
    template = compile_template(r'{"message": "{\"n\": {{ data.n }}, \"s\": \"{{ data.s }}\"}"}')
    assert [(p.context, p.depth) for p in template.placeholders] == [("value", 1), ("string", 2)]
    event = {"data": {"n": {"deep": [HOSTILE, 1.5]}, "s": HOSTILE}}
    message = parse(parse(template.render(event))["message"].encode())
    assert message == {"n": {"deep": [HOSTILE, 1.5]}, "s": HOSTILE}
    missing = parse(parse(template.render({}))["message"].encode())
    assert missing == {"n": None, "s": ""}


def test_placeholder_in_a_key_is_escaped() -> None:
    """A placeholder in an object key is string content: it cannot break out of the key."""
    body = parse(compile_template('{"k-{{ name }}": 1}').render({"name": INJECTION}))
    assert body == {f"k-{INJECTION}": 1}


def test_spaces_inside_braces_are_optional() -> None:
    """``{{x}}``, ``{{ x }}`` and ``{{   x   }}`` are the same placeholder."""
    template = compile_template('{"a": "{{x}}", "b": "{{ x }}", "c": "{{   x   }}"}')
    assert parse(template.render({"x": "v"})) == {"a": "v", "b": "v", "c": "v"}


def test_marker_text_in_template_is_left_alone() -> None:
    """Literal text that looks like an internal marker is not mistaken for a placeholder."""
    template = compile_template('{"a": "Qtpl0z Qtplx0z", "Qtpl1z": "{{ x }}Qtpl0z"}')
    assert parse(template.render({"x": "v"})) == {"a": "Qtpl0z Qtplx0z", "Qtpl1z": "vQtpl0z"}


def test_non_ascii_stays_raw_utf8() -> None:
    """Non-ASCII values are written as UTF-8, not ``\\u`` escapes, and U+2028 stays valid JSON."""
    rendered = compile_template('{"v": "{{ v }}"}').render({"v": "é日😀\u2028"})
    assert "é日😀\u2028".encode() in rendered
    assert parse(rendered) == {"v": "é日😀\u2028"}


def test_render_raw_parses_stored_bytes() -> None:
    """``render_raw`` renders an event's stored JSON bytes like the parsed event."""
    template = compile_template(LOGZIO_TEMPLATE)
    stored = orjson.dumps(logzio_event())
    assert template.render_raw(stored) == template.render(logzio_event())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1', "not valid JSON"),
        ('{"a": "{{x}}" "b": 1}', "not valid JSON"),
        ("{'a': '{{x}}'}", "not valid JSON"),
        ('{"a": "{{x}}",}', "not valid JSON"),
        ('{"a": "line\nbreak {{x}}"}', "not valid JSON"),
        ("", "not valid JSON"),
        ('{"a": "{{ x }"}', "unbalanced braces"),
        ('{"a": "{{ x"}', "unbalanced braces"),
        ('{"a": "{{ {{x}} }}"}', "unbalanced braces"),
        ('{"a": "{{}}"}', "bad placeholder"),
        ('{"a": "{{   }}"}', "bad placeholder"),
        ('{"a": "{{a..b}}"}', "bad placeholder"),
        ('{"a": "{{ .x }}"}', "bad placeholder"),
        ('{"a": "{{ x. }}"}', "bad placeholder"),
        ('{"a": "{{ x.[y] }}"}', "bad placeholder"),
        ('{"a": "{{ x.[-1] }}"}', "bad placeholder"),
        ('{"a": "{{ two words }}"}', "bad placeholder"),
        ('{"a": "{{ x[0 }}"}', "bad placeholder"),
    ],
)
def test_invalid_templates_are_value_errors(text: str, message: str) -> None:
    """Invalid JSON, unbalanced braces and malformed paths fail at compile time, clearly."""
    with pytest.raises(ValueError, match=message):
        compile_template(text)


def test_invalid_json_error_names_the_line() -> None:
    """The JSON error points at the template line that is wrong."""
    with pytest.raises(ValueError, match="line 3"):
        compile_template('{\n  "a": "{{ x }}",\n  "b": oops\n}')


def test_top_level_placeholder_alone_renders_the_value() -> None:
    """``{{data}}`` alone is a whole JSON value: the event's ``data`` object becomes the body."""
    template = compile_template("{{data}}")
    assert template.placeholders[0].context == "value"
    data = {"k": HOSTILE, "n": [1, None]}
    assert parse(template.render({"data": data})) == data
    assert parse(template.render({})) is None


@pytest.mark.parametrize(
    "text", ["{{a}} {{b}}", "x {{a}}", "{{a}}}", "[{{a}} {{b}}]", "{{{a}}: 1}"]
)
def test_top_level_placeholders_that_cannot_form_json_are_refused(text: str) -> None:
    """Placeholders outside strings must each stand where one JSON value goes."""
    with pytest.raises(ValueError, match="not valid JSON"):
        compile_template(text)


def nested(depth: int) -> Any:
    """A value nested ``depth`` levels deep (beyond orjson's serialiser limit of 254)."""
    value: Any = HOSTILE
    for level in range(depth):
        value = {"l": value} if level % 2 else [value]
    return value


WEIRD_EVENTS: list[dict[str, Any]] = [
    {},
    {"data": None},
    {"data": []},
    {"data": "a string where an object was expected"},
    {"data": 12},
    {"data": {"requester": [1, 2], "access_groups": {"0": "not a list"}}},
    {"data": {"access_groups": []}},
    {"data": {"access_groups": [None, "x"]}},
    {"data": {"access_groups": [{"integration": None}]}},
    {"event_type": INJECTION, "data": {"id": "\\\\\\", "justification": '\\"'}},
    {"data": {"id": "\x00\x01\x1f\x7f\u2028\u2029\ufeff\U0001f600"}},
    {"data": {"id": "\ud800 lone surrogate", "requester": {"name": "\udfff"}}},
    {"data": {"id": 2**80, "friendly_id": -(2**70), "creation_date": 1e308}},
    {"data": {"id": nested(600), "metadata": nested(300)}},
    {"data": {"id": {"": {"": [[], {}]}}, "requester": {"id": [[[[]]]]}}},
    {"event_type": "ключ", "data": {"id": "日本語", "requester": {"email": "ä@ö.ü"}}},
    {"data": {"metadata": {"\u2028": "k", '"': '"', "\\": "\\", "😀": None}}},
    {"data": {"id": "{{ data.id }}", "friendly_id": "}}{{"}},
]


@pytest.mark.parametrize("event", WEIRD_EVENTS)
@pytest.mark.parametrize(
    "template_text",
    [APONO_TEMPLATE, LOGZIO_TEMPLATE, r'{"v": {{data.id}}, "m": "{\"v\": {{ data.metadata }}}"}'],
    ids=["apono", "logzio", "values"],
)
def test_rendering_never_raises_for_any_json_object_event(
    event: dict[str, Any], template_text: str
) -> None:
    """Whatever the event holds, the body and any JSON inside its strings stay valid."""
    body = parse(compile_template(template_text).render(event))
    assert isinstance(body, dict)
    if "message" in body:
        assert isinstance(parse(body["message"].encode()), dict)
    if "m" in body:
        assert isinstance(parse(body["m"].encode()), dict)


def test_deeply_nested_value_survives_intact() -> None:
    """A value nested past orjson's serialiser limit is written out in full, not truncated."""
    value = nested(600)
    body = parse(compile_template('{"v": {{v}}, "s": "{{v}}"}').render({"v": value}))
    assert body["v"] == value
    assert parse(body["s"].encode()) == value


def test_lone_surrogates_become_replacement_characters() -> None:
    """A lone surrogate (possible from ``json.loads``) becomes U+FFFD instead of failing."""
    template = compile_template('{"s": "{{ s }}", "v": {{ s }}}')
    body = parse(template.render({"s": "a\ud800b\ud83d\ude00"}))
    assert body == {"s": "a\ufffdb😀", "v": "a\ufffdb😀"}


def test_template_keeps_its_source() -> None:
    """A compiled template remembers the text it was compiled from."""
    template: Template = compile_template(APONO_TEMPLATE)
    assert template.source == APONO_TEMPLATE
