"""The secret masker: every wire form of a secret is masked, and nothing else is touched."""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, quote_plus

import pytest
import yarl

from forwarder.secrets import MASK, SecretMasker

TOKEN = "BAD/HTTP+SECRET=31x"
BASIC = "audit-user:BAD/HTTP+SECRET=31x-a?bc>d"


def lower_hex(text: str) -> str:
    """``text`` with the hex digits of its percent escapes in lower case."""
    parts = text.split("%")
    return parts[0] + "".join("%" + part[:2].lower() + part[2:] for part in parts[1:])


ENCODED = quote(TOKEN, safe="")
TOKEN_FORMS = {
    "raw": TOKEN,
    "quote": ENCODED,
    "quote, lower-case hex": lower_hex(ENCODED),
    "quote keeping /": quote(TOKEN),
    "quote_plus": quote_plus(TOKEN),
    "yarl's half-encoded query": str(yarl.URL(f"http://h/?t={ENCODED}")).split("t=")[1],
    "mixed case escapes": "BAD%2fHTTP%2BSECRET%3d31x",
    "JSON \\/": TOKEN.replace("/", "\\/"),
    "JSON \\u, lower": "BAD\\u002fHTTP\\u002bSECRET\\u003d31x",
    "JSON \\u, upper": "BAD\\u002FHTTP\\u002BSECRET\\u003D31x",
    "JSON in JSON": json.dumps(TOKEN.replace("/", "\\/"))[1:-1],
    "HTML numeric references": "BAD&#47;HTTP&#x2B;SECRET&#61;31x",
    "percent-encoded twice": quote(ENCODED, safe=""),
}


@pytest.fixture
def masker() -> SecretMasker:
    """A masker that knows the issue's query token and a Basic token."""
    return SecretMasker([TOKEN, BASIC])


@pytest.mark.parametrize("form", TOKEN_FORMS.values(), ids=TOKEN_FORMS.keys())
def test_every_wire_form_of_a_token_is_masked(masker: SecretMasker, form: str) -> None:
    """Raw, percent-encoded in any case or mix, JSON- and HTML-escaped: all become ***."""
    text = f'{{"url": "https://h.example/in?a=1&token={form}&b=2", "n": 1}}'

    assert masker.mask(text) == '{"url": "https://h.example/in?a=1&token=***&b=2", "n": 1}'


def base64_forms(secret: str) -> list[str]:
    """Standard and URL-safe base64, padded or not, and percent-encoded."""
    standard = base64.b64encode(secret.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(secret.encode()).decode()
    plain = [standard, urlsafe, standard.rstrip("="), urlsafe.rstrip("=")]
    return plain + [quote(form, safe="") for form in plain] + [standard.replace("/", "\\/")]


@pytest.mark.parametrize("form", base64_forms(BASIC))
def test_basic_credentials_are_masked_in_base64(masker: SecretMasker, form: str) -> None:
    """The base64 of user:password, as HTTP Basic carries it, is masked in either alphabet."""
    assert "+" in base64.b64encode(BASIC.encode()).decode()  # the test covers the escapes

    assert masker.mask(f"Authorization: Basic {form}\n") == f"Authorization: Basic {MASK}\n"


def test_characters_beyond_ascii_are_masked_in_every_escape() -> None:
    """UTF-8 percent escapes, JSON \\u escapes (surrogate pairs too) and bytes reprs are masked."""
    secret = "pässwörd 🔑/x"
    masker = SecretMasker([secret])
    forms = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],  # ensure_ascii: \u00e4 and a surrogate pair for the key
        repr(secret.encode())[2:-1],  # b'p\xc3\xa4...'
        html.escape(secret),
    ]
    for form in forms:
        assert masker.mask(f"<{form}>") == f"<{MASK}>", form


def test_html_named_references_are_masked() -> None:
    """A secret echoed in an HTML error page, & and > escaped by name, is masked."""
    secret = "a&b>c'd"
    masker = SecretMasker([secret])

    assert masker.mask(f"<p>{html.escape(secret)}</p>") == f"<p>{MASK}</p>"


def test_the_longest_secret_wins_where_one_contains_another() -> None:
    """With "abc123" and "abc123-more" both secret, the longer is masked whole, no tail left."""
    masker = SecretMasker(["abc123", "abc123-more"])

    assert masker.mask("x abc123-more y abc123 z") == f"x {MASK} y {MASK} z"


def test_text_without_a_whole_secret_is_untouched(masker: SecretMasker) -> None:
    """Near misses (a secret without its last character, other text) stay as they are."""
    text = "BAD/HTTP+SECRET=31 and SECRET and %2F and \\/ and Basic YWJj"

    assert masker.mask(text) == text


def test_without_secrets_masking_returns_its_input() -> None:
    """A masker with no secrets (none configured, or only empty ones) changes nothing."""
    masker = SecretMasker(["", ""])
    text, data = "BAD/HTTP+SECRET=31x", b"x" * 10

    assert not masker.active
    assert masker.mask(text) is text
    assert masker.mask_bytes(data) is data
    assert masker.mask_bytes(data, 4) == b"xxxx"


def test_update_replaces_the_secrets(masker: SecretMasker) -> None:
    """After update, the new secrets are masked and the old ones no longer are."""
    masker.update(["n3w-s3cret"])

    assert masker.mask(f"{TOKEN} n3w-s3cret") == f"{TOKEN} {MASK}"


def test_bytes_are_masked_whatever_their_encoding(masker: SecretMasker) -> None:
    """Bytes that are not UTF-8 come back unchanged around the masked secret."""
    data = b"\xff\xfe" + ENCODED.encode() + b"\x80 end"

    assert masker.mask_bytes(data) == b"\xff\xfe***\x80 end"


@pytest.mark.parametrize(
    "tail", ["BAD/HTTP+SEC", "BAD%2FHTTP%2", "BAD\\/HT", "BAD\\u00", "YXVkaXQtdXNlcjpCQUQv"]
)
def test_a_secret_cut_at_the_limit_is_masked_too(masker: SecretMasker, tail: str) -> None:
    """A body cut at the limit in the middle of a secret does not show its beginning."""
    kept = (f'{{"echo": "{tail}').encode()
    padding = b" " * (64 - len(kept))

    masked = masker.mask_bytes(padding + kept + b'garbage beyond the limit"}', limit=64)

    assert masked == padding + b'{"echo": "***'


def test_a_short_body_is_not_taken_for_a_cut_one(masker: SecretMasker) -> None:
    """Below the limit, a body ending like the start of a secret is left as it is."""
    assert masker.mask_bytes(b'{"echo": "BAD/HT', limit=64) == b'{"echo": "BAD/HT'


def test_values_are_masked_through_dicts_lists_and_tuples(masker: SecretMasker) -> None:
    """mask_value reaches every string and bytes value, and keys, leaving other types alone."""
    value = {"url": f"/in?token={ENCODED}", TOKEN: [1, (b"x" + TOKEN.encode(), None)], "n": 2.5}

    assert masker.mask_value(value) == {
        "url": "/in?token=***",
        MASK: [1, (b"x***", None)],
        "n": 2.5,
    }
