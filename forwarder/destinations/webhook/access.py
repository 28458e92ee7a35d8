"""How a forwarder reaches and authenticates to its receiver: the ``auth`` and ``proxy`` options.

Split from the webhook's options because these two sections carry most of
the cross-field rules (an oauth2 client needs a token URL, a client id and
exactly one secret form; a proxy URL carries no credentials and no path), and
because the OAuth2 token provider reads them on its own. Every rule reports
all of its problems at once (``refuse``), so ``check-config`` lists them in
one run.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from forwarder.destinations.options import Model, refuse

# A header name as RFC 9110 allows it (a token).
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


def absolute_http_problem(value: str) -> str | None:
    """Why ``value`` is not an absolute http(s) URL with a host and a valid port, or None."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    try:
        _ = parts.port
    except ValueError as exc:
        return f"invalid port: {exc}"
    return None


# RFC 6749 section 3.3: a scope is printable ASCII without spaces, '"' or '\\'.
_SCOPE = r"^[\x21\x23-\x5b\x5d-\x7e]+$"
# Form fields of the client credentials grant that the other oauth2 keys set.
_GRANT_FIELDS = frozenset({"grant_type", "client_id", "client_secret", "scope", "audience"})
_OAUTH2_FIELDS = (
    "token_url",
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_auth",
    "scopes",
    "audience",
    "extra_params",
)


class AuthConfig(Model):
    """How the credentials are sent: bearer, any header, basic, query, OAuth2, or nothing.

    ``oauth2`` is the client credentials grant: the token is fetched from
    ``tokenUrl`` with ``clientId`` and the client secret, cached, refreshed
    before it expires, and sent as ``Authorization: Bearer <access token>``.
    """

    type: Literal["bearer", "header", "basic", "query", "none", "oauth2"] = "bearer"
    header: str = Field(default="Authorization", pattern=HEADER_NAME)
    scheme: str | None = None  # header: "Splunk" gives "Authorization: Splunk <token>"
    param: str = Field(default="token", min_length=1)  # query: ?token=<token>
    token_url: str | None = None
    client_id: str | None = Field(default=None, min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    # post: client_id and client_secret in the form (Microsoft Entra ID's examples);
    # basic: HTTP Basic, the method RFC 6749 requires every server to accept.
    client_auth: Literal["post", "basic"] = "post"
    scopes: list[str] = Field(default_factory=list)
    audience: str | None = Field(default=None, min_length=1)
    extra_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("scopes")
    @classmethod
    def _scope_tokens(cls, scopes: list[str]) -> list[str]:
        problems = [
            f"{reprlib.repr(scope)} is not one scope: list each scope on its own, without"
            " spaces, quotes or backslashes"
            for scope in scopes
            if not re.fullmatch(_SCOPE, scope)
        ]
        refuse(cls.__name__, problems)
        return scopes

    @model_validator(mode="after")
    def _oauth2(self) -> AuthConfig:
        problems = []
        fields = type(self).model_fields
        # A key written with its default (tokenUrl: null, as the example file does) is not a use.
        given = [
            str(fields[name].alias)
            for name in _OAUTH2_FIELDS
            if getattr(self, name) and getattr(self, name) != fields[name].default
        ]
        if self.type != "oauth2":
            if given:
                problems.append(f"{', '.join(given)}: only for type oauth2")
            refuse(type(self).__name__, problems)
            return self
        if self.token_url is None:
            problems.append("type oauth2 needs tokenUrl")
        else:
            problem = absolute_http_problem(self.token_url)
            if problem is not None:
                problems.append(f"tokenUrl {problem}")
        if self.client_id is None:
            problems.append("type oauth2 needs clientId")
        if self.client_secret is not None and self.client_secret_file is not None:
            problems.append("set clientSecret or clientSecretFile, not both")
        if self.client_secret is None and self.client_secret_file is None:
            problems.append("type oauth2 needs clientSecret or clientSecretFile")
        if self.client_auth == "basic" and self.client_id is not None and ":" in self.client_id:
            # A decoder splits Basic credentials at the first colon.
            problems.append("clientId cannot contain ':' with clientAuth basic")
        problems += [
            f"extraParams cannot set {name}: the other oauth2 keys set it"
            for name in self.extra_params
            if name in _GRANT_FIELDS
        ]
        refuse(type(self).__name__, problems)
        return self


class ProxyConfig(Model):
    """An HTTP(S) proxy for one forwarder, instead of ``HTTPS_PROXY`` / ``HTTP_PROXY``.

    https receivers are reached through a CONNECT tunnel (TLS end to end),
    http ones by sending the absolute URL to the proxy. Credentials go in
    ``username`` and ``password`` / ``passwordFile`` (HTTP Basic), never in
    the URL, so the password is a secret the masker knows. ``noProxy`` lists
    hosts reached directly: a name matches itself and its subdomains
    (``example.com``, ``.example.com``), an IP literal or a CIDR matches
    addresses, ``*`` matches everything.
    """

    url: str
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    no_proxy: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _proxy_url(cls, value: str) -> str:
        problem = absolute_http_problem(value)
        if problem is not None:
            raise ValueError(problem)
        parts = urlsplit(value)
        if "@" in parts.netloc:
            raise ValueError("put the credentials in username and password, not in the url")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("a proxy URL is scheme://host:port, without a path or query")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> ProxyConfig:
        problems = []
        if self.password is not None and self.password_file is not None:
            problems.append("set password or passwordFile, not both")
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None:
            problems.append("a password needs a username")
        if self.username is not None and ":" in self.username:
            problems.append("username cannot contain ':' (HTTP Basic splits at it)")
        refuse(type(self).__name__, problems)
        return self
