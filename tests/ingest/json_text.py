"""Hypothesis strategies for JSON events, and a writer that keeps how they were written.

The forwarder must keep each event's bytes, so the tests must control them:
numbers are generated as the text a client would send (:class:`Number`),
and :func:`write` lays an event out in a :class:`Style` (compact or spaced,
``\\u`` escapes or UTF-8, ``\\/`` or ``/``), in the key order of the dict.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Number:
    """A JSON number as the client wrote it (its text is what must arrive)."""

    text: str


@dataclass(frozen=True)
class Style:
    """How one event is written: the whitespace around its punctuation, and its escapes."""

    after_open: str
    item_separator: str
    key_separator: str
    ascii_only: bool
    escaped_slash: bool


def write(value: Any, style: Style) -> str:
    """``value`` as JSON text in ``style`` (dict order is the key order sent)."""
    if isinstance(value, Number):
        return value.text
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=style.ascii_only)
        # "/" only ever stands for itself in json.dumps output: "\/" is the same string.
        return text.replace("/", "\\/") if style.escaped_slash else text
    if isinstance(value, dict):
        members = (
            write(key, style) + style.key_separator + write(v, style) for key, v in value.items()
        )
        return "{" + style.after_open + style.item_separator.join(members) + style.after_open + "}"
    if isinstance(value, list):
        items = style.item_separator.join(write(item, style) for item in value)
        return "[" + style.after_open + items + style.after_open + "]"
    return json.dumps(value)  # None, True, False


numbers = st.one_of(
    st.integers().map(lambda n: Number(str(n))),
    st.integers(min_value=2**63, max_value=2**256).map(lambda n: Number(str(n))),
    st.integers(max_value=-(2**63) - 1, min_value=-(2**256)).map(lambda n: Number(str(n))),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Number(repr(f))),
    # Every form JSON allows, kept within a double's range so orjson accepts it.
    st.from_regex(
        r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,2})?", fullmatch=True
    ).map(Number),
)
# Any Unicode that UTF-8 can carry (no lone surrogates), with JSON's own
# punctuation and escapes over-represented so strings often look like structure.
characters = st.one_of(st.sampled_from('{}[],:"\\/ \n'), st.characters(codec="utf-8"))
texts = st.text(characters, max_size=12)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(characters, max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
# A top-level "id" must be a string to be accepted: tests add unique ones themselves.
events = st.dictionaries(
    st.text(characters, max_size=8).filter(lambda key: key != "id"), values, max_size=6
)


@functools.cache
def styles(one_line: bool) -> st.SearchStrategy[Style]:
    """Compact or spaced styles; for NDJSON, without line breaks (built once each)."""
    spaces = ["", " ", "\t"] if one_line else ["", " ", "\n  ", "\r\n\t"]
    return st.builds(
        Style,
        after_open=st.sampled_from(spaces),
        item_separator=st.sampled_from(
            [",", *(f"{s}," for s in spaces[1:]), *(f",{s}" for s in spaces)]
        ),
        key_separator=st.sampled_from(
            [":", *(f"{s}:" for s in spaces[1:]), *(f":{s}" for s in spaces)]
        ),
        ascii_only=st.booleans(),
        escaped_slash=st.booleans(),
    )
