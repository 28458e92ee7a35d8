"""Apono-style body templates: ``{{ data.requester.email }}`` placeholders in a JSON body.

Design: a template is analysed once, at compile time, and rendering is then a
plain join of literal text and escaped values, so no event can break or inject
into the body.

* **Markers.** Each placeholder is replaced by a unique alphanumeric marker.
  Markers survive JSON decoding unchanged, so the template with markers can be
  parsed, and every string in it decoded, to see where each placeholder stands.
* **Context.** A placeholder outside any string stands where a JSON value goes:
  it gets the value's JSON text (``null`` when missing). One inside a string
  gets the value's string form (strings as they are, anything else as compact
  JSON, missing as ``""``). A string whose content is itself a JSON object or
  array (Logz.io's ``"message": "{ \\"id\\": \\"{{ data.id }}\\" }"``) is
  analysed again, one level deeper. The number of string layers around a
  placeholder is its *depth*; its text is JSON-string-escaped that many times,
  which keeps every layer (the body, and the JSON inside its strings) valid.
* **Proof by sample.** ``compile_template`` renders a set of hostile events
  (quotes, backslashes, control characters, ``</script>``, emoji, U+2028,
  nested values, numbers, null) at exactly the paths the template uses and
  refuses the template if any result is not valid JSON: a template that cannot
  produce JSON is a configuration error, not a failed delivery.

Values are expected to be JSON data (what ``orjson.loads`` returns). Values
orjson cannot serialise (nesting deeper than its limit of 254, integers beyond
64 bits, strings with lone surrogates) go through a slower fallback instead of
raising, so rendering never fails for a JSON object.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
_KEY = r"[^.\[\]\s{}\"\\]+"
_PATH = re.compile(rf"{_KEY}(?:\.{_KEY}|\.?\[\d+\])*")
_STEP = re.compile(rf"\.?(?:({_KEY})|\[(\d+)\])")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)

Step = str | int
Context = Literal["value", "string"]


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{{ path }}`` of a template and how its value is inserted.

    ``context`` is ``"value"`` where a JSON value goes (the value's JSON text is
    inserted) and ``"string"`` inside string content (its string form is).
    ``depth`` is the number of JSON string layers around it: how many times the
    inserted text is JSON-string-escaped.
    """

    path: str
    steps: tuple[Step, ...]
    context: Context
    depth: int

    def resolve(self, event: Any) -> Any:
        """The value at this path in ``event``; ``None`` when any step is missing."""
        value = event
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(value, list | tuple) or step >= len(value):
                    return None
            elif not isinstance(value, Mapping) or step not in value:
                return None
            value = value[step]
        return value

    def text(self, event: Any) -> str:
        """The escaped text that replaces this placeholder for ``event``."""
        value = self.resolve(event)
        if self.context == "value":
            text = "null" if value is None else dumps(value)
        elif isinstance(value, str):
            text = value
        else:
            text = "" if value is None else dumps(value)
        for _ in range(self.depth):
            text = escape(text)
        return text


class Template:
    """A compiled template: literal text between placeholders. Build with ``compile_template``."""

    __slots__ = ("_literals", "placeholders", "source")

    def __init__(
        self, source: str, literals: Sequence[str], placeholders: Sequence[Placeholder]
    ) -> None:
        """Hold ``literals`` (one more than ``placeholders``) interleaved with placeholders."""
        self.source = source
        self._literals = tuple(literals)
        self.placeholders = tuple(placeholders)

    def render(self, event: Mapping[str, Any]) -> bytes:
        """The body for ``event`` as UTF-8 JSON; missing paths render empty (or ``null``)."""
        parts = [self._literals[0]]
        for placeholder, literal in zip(self.placeholders, self._literals[1:], strict=True):
            parts.append(placeholder.text(event))
            parts.append(literal)
        return "".join(parts).encode()

    def render_raw(self, body: bytes) -> bytes:
        """Render a stored event's raw JSON bytes (parsed with orjson first)."""
        return self.render(orjson.loads(body))


def compile_template(text: str) -> Template:
    """Analyse ``text`` once; raise ``ValueError`` if it is not a template that renders JSON."""
    placeholders: list[tuple[str, tuple[Step, ...]]] = []

    def substitute(match: re.Match[str]) -> str:
        path = match.group(1).strip()
        placeholders.append((path, _parse_path(path, match.group(0))))
        return f"{prefix}{len(placeholders) - 1}z"

    prefix = _marker_prefix(text)
    marked = _PLACEHOLDER.sub(substitute, text)
    if "{{" in marked:
        line = marked.count("\n", 0, marked.index("{{")) + 1
        raise ValueError(f"unbalanced braces: '{{{{' without a matching '}}}}' on line {line}")
    marker = re.compile(re.escape(prefix) + r"(\d+)z")
    contexts: dict[int, tuple[Context, int]] = {}
    error = _analyse(marked, 0, marker, contexts)
    if error is not None:
        raise ValueError(f"template is not valid JSON: {error}")
    pieces = marker.split(marked)
    template = Template(
        text,
        pieces[0::2],
        [
            Placeholder(path, steps, *contexts[int(index)])
            for index, (path, steps) in zip(pieces[1::2], placeholders, strict=True)
        ],
    )
    for sample in _hostile_events(template.placeholders):
        rendered = template.render(sample)
        try:
            orjson.loads(rendered)
        except orjson.JSONDecodeError as exc:
            raise ValueError(
                f"template cannot produce valid JSON for a sample event: {exc}"
            ) from None
    return template


def escape(text: str) -> str:
    """``text`` escaped once as JSON string content (no quotes); non-ASCII kept as UTF-8."""
    return dumps(text)[1:-1]


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``; never raises (see the module docstring)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return "".join(_dumps_iteratively(value))


def _parse_path(path: str, placeholder: str) -> tuple[Step, ...]:
    if not _PATH.fullmatch(path):
        raise ValueError(
            f"bad placeholder {placeholder!r}: a path is dot-separated keys"
            " with array indexes as .[0], e.g. {{ data.groups.[0].name }}"
        )
    return tuple(
        int(index) if index else key for key, index in (m.groups() for m in _STEP.finditer(path))
    )


def _marker_prefix(text: str) -> str:
    # "Q" occurs only at the start of a marker, so no marker can match
    # straddling template text, and the prefix itself never occurs in the text.
    prefix = "Qtpl"
    while prefix in text:
        prefix += "x"
    return prefix


def _analyse(
    text: str, depth: int, marker: re.Pattern[str], contexts: dict[int, tuple[Context, int]]
) -> str | None:
    """Record each marker's context in ``text`` (JSON at ``depth``); the JSON error, if any."""
    # A JSON string literal, or (group 1) a marker outside any string literal.
    tokens = re.compile(f"{_STRING.pattern}|{marker.pattern}", re.DOTALL)
    probe = tokens.sub(lambda token: "null" if token.group(1) else token.group(), text)
    try:
        orjson.loads(probe)
    except orjson.JSONDecodeError as exc:
        return f"line {exc.lineno}: {exc.msg}"
    for token in tokens.finditer(text):
        if token.group(1) is not None:
            contexts[int(token.group(1))] = ("value", depth)
            continue
        content: str = orjson.loads(token.group())
        nested = content.lstrip().startswith(("{", "["))
        if not nested or _analyse(content, depth + 1, marker, contexts) is not None:
            # Plain text (or not JSON after all): every marker in it is string content.
            for found in marker.finditer(content):
                contexts[int(found.group(1))] = ("string", depth + 1)
    return None


def _dumps_iteratively(root: Any) -> Iterator[str]:
    # An explicit stack instead of recursion: no depth limit, and each scalar
    # orjson refuses gets a faithful spelling of its own.
    stack: list[tuple[bool, Any]] = [(False, root)]
    while stack:
        is_text, item = stack.pop()
        if is_text:
            yield item
        elif isinstance(item, Mapping):
            pending: list[tuple[bool, Any]] = [(True, "{")]
            for number, (key, value) in enumerate(item.items()):
                pending += [
                    (True, ("," if number else "") + _quote(str(key)) + ":"),
                    (False, value),
                ]
            stack += reversed([*pending, (True, "}")])
        elif isinstance(item, list | tuple):
            pending = [(True, "[")]
            for number, value in enumerate(item):
                pending += [(True, ","), (False, value)] if number else [(False, value)]
            stack += reversed([*pending, (True, "]")])
        elif isinstance(item, str):
            yield _quote(item)
        elif isinstance(item, bool | float) or item is None:
            yield orjson.dumps(item).decode()
        elif isinstance(item, int):
            yield str(item)
        else:
            yield _quote(str(item))


def _quote(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except TypeError:
        # Lone surrogates (from json.loads of "\ud800") cannot be UTF-8: replace
        # them with U+FFFD, joining any valid pairs on the way.
        repaired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return orjson.dumps(repaired).decode()


_HOSTILE_TEXT = (
    'he said "hi", \\ back\\slash\\n \\" \n\r\t\b\f\x00\x1f\x7f </script><!-- {{x}} ${y} '
    '\'single\' é 日本語 😀 \u2028\u2029 \ufeff ], }, ", "injected": "x'
)
_HOSTILE_VALUES: tuple[Any, ...] = (
    _HOSTILE_TEXT,
    {'q"uote': _HOSTILE_TEXT, "list": [1, None, True, _HOSTILE_TEXT], "obj": {"n": -1.5e300}},
    [_HOSTILE_TEXT, 0, None, False, {"a": _HOSTILE_TEXT}, []],
    12345678901234567890123,
    -0.5,
    True,
    None,
    "",
    "{}",
)


def _hostile_events(placeholders: Sequence[Placeholder]) -> Iterator[dict[str, Any]]:
    """Events holding each hostile value at every path ``placeholders`` read, and ``{}``."""
    yield {}
    for hostile in _HOSTILE_VALUES:
        root: dict[str, Any] = {}
        # Longest paths first, so a container path already built keeps its children.
        for placeholder in sorted(placeholders, key=lambda p: -len(p.steps)):
            _plant(root, placeholder.steps, hostile)
        yield root


def _plant(root: dict[str, Any], steps: tuple[Step, ...], hostile: Any) -> None:
    node: Any = root
    for number, step in enumerate(steps):
        last = number == len(steps) - 1
        child: Any = hostile if last else ({} if isinstance(steps[number + 1], str) else [])
        if isinstance(step, int) and isinstance(node, list):
            node.extend(_HOSTILE_TEXT for _ in range(step + 1 - len(node)))
            if not isinstance(node[step], dict | list):  # a filler, not a longer path's
                node[step] = child
        elif isinstance(step, str) and isinstance(node, dict):
            node.setdefault(step, child)
        else:
            return  # the path conflicts with a longer one: it renders as missing
        node = node[step]
