"""Subjects: the ``subject`` template, its one placeholder, and what an event type may put in it.

``subject: "audit.{event_type}"`` puts each event's stored ``event_type``
into the subject, so a stream (or a consumer) can take some types and not
others. The event type comes from the application that sent the event, so
it is treated as hostile: a subject built from it is used only when every
token is a plain NATS token (not empty, no whitespace or control characters,
no ``*`` or ``>`` wildcards, which a publish may not carry) and the subject
does not start with a ``$`` token (``$JS.API.STREAM.DELETE.AUDIT`` would be
a JetStream API call, not an audit event) or ``_INBOX`` (another client's
replies). Anything else, and an event without a type, goes to
``subjectFallback``. The template and the fallback themselves are checked
by the same rules when the configuration is loaded, so a bad one fails
``check-config``.

Event types are few, so the subject of each is computed once and cached
(bounded: a flood of distinct types costs a cleared cache, not memory).
"""

from __future__ import annotations

import re

PLACEHOLDER = "{event_type}"
MAX_SUBJECT_LENGTH = 1024
_CACHE_LIMIT = 4096
# Any character but the separator, whitespace, control characters and the wildcards.
_TOKEN = re.compile(r"[^.\s\x00-\x1f\x7f*>]+")
_RESERVED_FIRST = ("$", "_INBOX")


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be published to, or None when it can."""
    if not subject:
        return "the subject is empty"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"the subject is longer than {MAX_SUBJECT_LENGTH} characters"
    tokens = subject.split(".")
    if any(not token for token in tokens):
        return "a subject must not have empty tokens (leading, trailing or doubled '.')"
    if any(not _TOKEN.fullmatch(token) for token in tokens):
        return "a subject token must not hold whitespace, control characters, '*' or '>'"
    if tokens[0].startswith("$") or tokens[0] == "_INBOX":
        return "a subject must not start with a '$' token or _INBOX (reserved by NATS)"
    return None


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot make subjects, or None; ``{event_type}`` is its only placeholder."""
    rest = template.replace(PLACEHOLDER, "x")
    if "{" in rest or "}" in rest:
        return f"the only placeholder a subject may hold is {PLACEHOLDER}"
    problem = subject_problem(rest)
    return None if problem is None else problem.replace("the subject", "the subject template")


class SubjectTemplate:
    """Makes each event's subject from the template; falls back when the result is unsafe."""

    def __init__(self, template: str, fallback: str) -> None:
        self._parts = template.split(PLACEHOLDER)
        self.fallback = fallback
        self._cache: dict[str | None, str] = {}

    @property
    def fixed(self) -> bool:
        """Whether every event gets the same subject (no placeholder)."""
        return len(self._parts) == 1

    def subject(self, event_type: str | None) -> str:
        """The subject for an event of ``event_type``."""
        found = self._cache.get(event_type)
        if found is not None:
            return found
        subject = self._make(event_type)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[event_type] = subject
        return subject

    def _make(self, event_type: str | None) -> str:
        if self.fixed:
            return self._parts[0]
        if not event_type:
            return self.fallback
        subject = event_type.join(self._parts)
        return self.fallback if subject_problem(subject) is not None else subject
