"""Masking secrets in every form they take on the wire, for everything an operator sees.

A token rarely shows up as typed. On its way out and back it is
percent-encoded (``quote`` and ``quote_plus``, upper- or lower-case hex, and
yarl's mix of both: ``BAD/HTTP%2BSECRET%3D31x``), base64-encoded inside
``Authorization: Basic``, and JSON-escaped (``\\/``, ``\\u002f``) when a
receiver echoes it inside a JSON string, or HTML-escaped in an error page.
Masking only the raw value leaves every one of those in the log, the
delivery history, the dead letters and the test button's answer.

Design decisions:

* One masker, on the ground floor, fed with the raw secrets
  (:meth:`Settings.secrets`); every output uses it: the log processor, the
  outcomes before history rows and dead letters are written, the test
  button's answer, the error messages built from aiohttp's exceptions.
* Forms are not enumerated but matched: each character of a secret may
  appear as itself or in any of its escapes, independently of its
  neighbours, so mixed encodings (yarl re-quotes only some characters) are
  caught as well as the pure ones. Base64 is the one encoding that mixes
  characters, so it is derived (standard and URL-safe alphabets, padded or
  not) and then matched the same way, escapes included (a ``+`` of base64
  in a query string arrives as ``%2B``).
* ASCII letters and digits are matched only as themselves: no encoder on
  the way (``quote``, JSON, HTML, base64's alphabets) escapes them. That
  keeps the regex small, and lets a plain substring search for each form's
  longest alphanumeric run tell cheaply that a text holds no secret at all,
  which is the common case.
* Everything is compiled once per :meth:`SecretMasker.update` (startup and
  reload); with no secrets configured, masking returns its input untouched.
* Some secrets only exist at run time: an OAuth2 access token is fetched
  by the delivery process and never configured. :meth:`SecretMasker.learn`
  adds such a value under a source name, *before* it is used, so a receiver
  echoing it is masked like any configured secret. A reload's ``update``
  keeps what was learned; each source keeps its two latest values (a late
  answer may still quote the previous token), so the set stays bounded.
  It runs on failure paths, log lines and per-batch response bodies, never
  per event.
* A text cut at a size limit may end with the beginning of a secret; the
  ``limit`` of :meth:`SecretMasker.mask_bytes` masks such a tail too, so a
  truncated body never shows most of a token.
"""

from __future__ import annotations

import base64
import functools
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MASK = "***"

# Characters JSON (and JavaScript) may write as a two-character escape.
_JSON_SHORT_ESCAPES = {
    "/": "/",
    '"': '"',
    "\\": "\\\\",
    "\b": "b",
    "\f": "f",
    "\n": "n",
    "\r": "r",
    "\t": "t",
}
_HTML_NAMED = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}
# The start of an escape cut off by a size limit: what may follow the last whole character.
_DANGLING_ESCAPE = re.compile(
    r"(?:%(?:25?)?[0-9a-fA-F]?|\\+(?:u[0-9a-fA-F]{0,3}|x[0-9a-fA-F]?)?|&#?[xX]?[0-9a-zA-Z]*)\Z"
)


def _hex(value: int, digits: int = 0) -> str:
    """A regex matching ``value`` in hex with either case of the letters."""
    text = f"{value:0{digits}x}"
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in text)


@functools.lru_cache(maxsize=1024)
def char_pattern(char: str) -> str:
    """A regex matching ``char`` as itself or in any escape an HTTP exchange may give it.

    ASCII letters and digits match only themselves: no encoder on the way
    (``quote``, JSON, HTML, base64's alphabets) escapes them.
    """
    if char.isascii() and char.isalnum():
        return char
    code = ord(char)
    utf8 = char.encode("utf-8")
    forms = [
        re.escape(char),
        # Percent-encoding (either case; %25 when encoded twice), a byte at a time.
        "".join(f"%(?:25)?{_hex(byte, 2)}" for byte in utf8),
        # JSON \u escapes (a surrogate pair beyond the BMP); more backslashes when nested.
        "".join(
            rf"\\+u{_hex(unit, 4)}"
            for unit in (
                [code]
                if code <= 0xFFFF
                else [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
            )
        ),
        # HTML character references.
        f"&#0*{code};",
        f"&#[xX]0*{_hex(code)};",
    ]
    if char == " ":
        forms.append(r"\+")  # quote_plus
    if char in _JSON_SHORT_ESCAPES:
        forms.append(r"\\+" + re.escape(_JSON_SHORT_ESCAPES[char]))
    if char in _HTML_NAMED:
        forms.append(f"&{_HTML_NAMED[char]};")
    if not (char.isascii() and char.isprintable()):
        # repr() of bytes, as aiohttp's parser errors quote them.
        forms.append("".join(rf"\\+x{_hex(byte, 2)}" for byte in utf8))
    return "(?:" + "|".join(forms) + ")"


_ALNUM_RUN = re.compile(r"[0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class _Form:
    """One form of a secret as matched: its regex, a regex per character, and its anchor."""

    regex: str
    pieces: list[str]
    anchor: str
    """The longest run of letters and digits: in the text whenever the form is."""


def _form(text: str, pieces: list[str], suffix: str = "") -> _Form:
    anchor = max(_ALNUM_RUN.findall(text), key=len, default="")
    return _Form("".join(pieces) + suffix, pieces, anchor)


def _forms(secret: str) -> list[_Form]:
    """The forms of ``secret`` that are matched: as written (escapes included) and base64."""
    raw = _form(secret, [char_pattern(char) for char in secret])
    encoded = base64.b64encode(secret.encode("utf-8")).decode("ascii").rstrip("=")
    pieces = []
    for char in encoded:
        if char in "+/":  # the URL-safe alphabet has - and _ in their place
            pieces.append(f"(?:{char_pattern(char)}|{'-' if char == '+' else '_'})")
        else:
            pieces.append(char_pattern(char))
    padding = -len(secret.encode("utf-8")) % 3  # optional: unpadded base64 is common
    return [raw, _form(encoded, pieces, f"{char_pattern('=')}{{0,{padding}}}")]


class SecretMasker:
    """Replaces known secrets, in any wire form, with ``***``.

    :meth:`update` swaps the compiled state in one assignment, so a reload on
    another thread never shows a half-built masker.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._state: _Compiled | None = None
        self._configured: frozenset[str] = frozenset()
        self._learned: dict[str, tuple[str, ...]] = {}
        # update() and learn() may run on different threads: each rebuild sees both sets whole.
        self._lock = threading.Lock()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` (and what was learned) from now on; empty values are ignored."""
        with self._lock:
            self._configured = frozenset(s for s in secrets if s)
            self._compile()

    def learn(self, source: str, secret: str, keep: int = 2) -> None:
        """Also mask ``secret``, a value obtained at run time, until ``source`` learns others.

        ``source`` keeps its ``keep`` latest values; configured secrets are not
        affected, and :meth:`update` does not forget learned ones.
        """
        if not secret:
            return
        with self._lock:
            previous = self._learned.get(source, ())
            if previous[:1] == (secret,):
                return
            self._learned[source] = (secret, *previous)[:keep]
            self._compile()

    def _compile(self) -> None:
        unique = set(self._configured).union(*self._learned.values())
        if not unique:
            self._state = None
            return
        # Longest first: where one secret contains another, the whole is masked.
        forms = sorted(
            (form for secret in unique for form in _forms(secret)),
            key=lambda form: len(form.pieces),
            reverse=True,
        )
        anchors = None if any(not f.anchor for f in forms) else {f.anchor for f in forms}
        pattern = re.compile("|".join(form.regex for form in forms))
        self._state = _Compiled(pattern, anchors, tuple(form.pieces for form in forms))

    @property
    def active(self) -> bool:
        """Whether any secret is configured."""
        return self._state is not None

    def mask(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        state = self._state
        if state is None:
            return text
        # A substring test per form is far cheaper than the regex: most texts hold no secret.
        if state.anchors is not None and not any(anchor in text for anchor in state.anchors):
            return text
        return state.pattern.sub(MASK, text)

    def mask_bytes(self, data: bytes, limit: int | None = None) -> bytes:
        """``data`` masked (any bytes, not only UTF-8), then cut to ``limit`` bytes if given.

        Data of ``limit`` bytes or more is taken to have been cut from a longer
        text (a response read up to a limit): a secret begun at its end is masked.
        """
        state = self._state
        if state is None:
            return data if limit is None else data[:limit]
        # surrogateescape round-trips every byte, so non-UTF-8 bodies survive unchanged.
        masked = self.mask(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )
        if limit is None or (len(masked) < limit and len(data) < limit):
            return masked
        cut = masked[:limit].decode("utf-8", "surrogateescape")
        return _mask_tail(cut, state.tails).encode("utf-8", "surrogateescape")

    def mask_value(self, value: Any) -> Any:
        """``value`` with every string (and bytes) in it masked, through dicts, lists and tuples."""
        if self._state is None:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, bytes | bytearray):
            return self.mask_bytes(bytes(value))
        if isinstance(value, Mapping):
            return {self.mask_value(key): self.mask_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask_value(item) for item in value)
        return value


@dataclass(frozen=True, slots=True)
class _Compiled:
    """What :meth:`SecretMasker.update` builds, swapped in as one value."""

    pattern: re.Pattern[str]
    anchors: set[str] | None
    """None when a form has no letter or digit to look for first."""
    tails: tuple[list[str], ...]
    """Per form, the regex of each character: to find one cut off at the end of a text."""


def _mask_tail(text: str, tails: tuple[list[str], ...]) -> str:
    """``text`` with the start of a secret form that reaches its end masked."""
    start = len(text)
    for pieces in tails:
        # An escaped character spans at most 20 characters (%25XX for each of four
        # UTF-8 bytes); a form cut deeper inside nested escapes is not looked for.
        window = max(0, len(text) - 20 * len(pieces))
        for candidate in _compiled(pieces[0]).finditer(text, window, start):
            if _prefix_reaches_end(text, candidate.start(), pieces):
                start = candidate.start()
                break
    return text if start == len(text) else text[:start] + MASK


def _prefix_reaches_end(text: str, begin: int, pieces: list[str]) -> bool:
    """Whether ``text[begin:]`` is the start (not the whole) of the form made of ``pieces``."""
    position = begin
    for index, piece in enumerate(pieces):
        if position == len(text):
            return index > 0
        if index > 0 and _DANGLING_ESCAPE.match(text, position):
            return True
        found = _compiled(piece).match(text, position)
        if found is None or found.end() == position:
            return False
        position = found.end()
    return False  # the whole form: mask() has replaced it already


@functools.lru_cache(maxsize=1024)
def _compiled(piece: str) -> re.Pattern[str]:
    return re.compile(piece)


masker = SecretMasker()
"""The process's masker: the daemon and the delivery process update it with the configuration."""
