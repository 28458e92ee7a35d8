"""The operator commands that talk to a running daemon, speaking in command-line terms.

``status``, ``deliveries``, ``test``, ``send`` and ``dead-letters`` call the
admin API (``client.py``). The API answers in its own terms — JSON keys,
HTTP statuses — which are not what the operator typed. This module turns
them into what the operator can act on:

* a refusal names the flags (``--forwarder``, ``--id``, ``--all``), not the
  JSON keys the API wants;
* an unknown forwarder lists the known ones;
* a failed ``test`` with a 401, 403 or 404 from the receiver carries a
  one-line hint naming the forwarder's settings to look at;
* a replay by id that matched nothing says which ids, and fails.

Every failure is a :class:`CommandError`: a stable ``code`` (for ``--json``),
one sentence, and the exit code. ``cli.py`` prints it — as ``audit-forwarder:
<message>`` on stderr, or as ``{"error": code, "message": ...}`` on stdout
with ``--json`` — and exits; this module never prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from forwarder.errors import ForwarderError
from forwarder.ops.client import (
    AdminClient,
    AdminRequestError,
    format_dead_letters,
    format_deliveries,
    format_status,
    format_test,
    guess_content_type,
)

if TYPE_CHECKING:  # pydantic models: imported only when validated settings are needed
    from forwarder.config.settings import Settings
    from forwarder.destinations.kinds import AnyForwarderConfig
    from forwarder.ops.locate import AdminAddress

EXIT_FAILURE, EXIT_USAGE = 1, 2


class CommandError(ForwarderError):
    """A command failed: ``code`` for scripts, ``message`` for people, ``exit_code`` for both.

    ``details`` are extra keys of the ``--json`` error (``known_forwarders``).
    """

    def __init__(
        self,
        code: str,
        message: str,
        exit_code: int = EXIT_FAILURE,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code
        self.details = details or {}

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: ``{"error": code, "message": ..., **details}``."""
        return {"error": self.code, "message": self.message, **self.details}


@dataclass
class Outcome:
    """What a command prints: its JSON answer, the same for a terminal, and how it ends.

    ``failure`` is set when the command did something but not all it was
    asked (a replay where some ids matched nothing): the output is printed,
    then the failure. ``exit_code`` alone marks an answer that is itself the
    report of a failure (a ``test`` the receiver refused).
    """

    payload: Any
    text: str
    failure: CommandError | None = None
    exit_code: int = 0

    def __post_init__(self) -> None:
        if self.failure is not None:
            self.exit_code = self.failure.exit_code


def unknown_forwarder(name: str, known: list[str], flag: str = "") -> CommandError:
    """``no forwarder named 'x' (--forwarder); known forwarders: a, b``."""
    where = f" ({flag})" if flag else ""
    listing = ", ".join(known) if known else "none"
    return CommandError(
        "unknown_forwarder",
        f"no forwarder named {name!r}{where}; known forwarders: {listing}",
        details={"known_forwarders": known},
    )


def _in_cli_terms(error: AdminRequestError, args: argparse.Namespace, config: str) -> CommandError:
    """The admin API's refusal, said in terms of what the operator typed."""
    if error.reason == "unknown_forwarder":
        # A positional NAME (test, deliveries), else --forwarder (dead-letters).
        name = getattr(args, "name", None)
        flag = "" if name else "--forwarder"
        name = name or getattr(args, "forwarder", None) or ""
        return unknown_forwarder(name, list(error.payload.get("known_forwarders", [])), flag)
    if error.reason == "unauthorized":
        return CommandError(
            "unauthorized",
            f"the daemon refused the ingest token: check ingest.token / ingest.tokenFile"
            f" in {config} against the daemon's",
        )
    if args.command == "send" and error.status < 500:
        return CommandError(error.reason, f"the daemon refused the events: {error.message}")
    return CommandError(error.reason, f"the daemon answered {error.status}: {error.message}")


def run_operator(
    args: argparse.Namespace,
    address: AdminAddress,
    settings: Callable[[], Settings],
    notice: Callable[[str], None] | None = None,
) -> Outcome:
    """Run one operator command against the daemon at ``address``.

    ``settings`` validates the whole configuration (raising ``ConfigError``);
    it is called only for what the admin API's answer does not say: the
    hint of a failed ``test`` names the forwarder's settings.
    """
    client = AdminClient(address, notice)
    try:
        if args.command == "status":
            payload = client.call("GET", "/v1/forwarders")
            return Outcome(payload, format_status(payload))
        if args.command == "deliveries":
            path = f"/v1/forwarders/{quote(args.name, safe='')}/deliveries?limit={args.limit}"
            payload = client.call("GET", path)
            return Outcome(payload, format_deliveries(payload))
        if args.command == "test":
            return _test(client, args, settings)
        if args.command == "dead-letters":
            return _dead_letters(client, args)
        return _send(client, args)
    except AdminRequestError as exc:
        raise _in_cli_terms(exc, args, args.config) from None


def _test(
    client: AdminClient, args: argparse.Namespace, settings: Callable[[], Settings]
) -> Outcome:
    payload = client.call("POST", f"/v1/forwarders/{quote(args.name, safe='')}/test")
    response = payload.get("response") or {}
    hint = None
    if not payload.get("ok"):
        specs = {
            str(spec.name): (index, spec)
            for index, spec in enumerate(settings().audit_log_forwarders)
        }
        found = specs.get(args.name)
        if found is not None:
            hint = status_hint(response.get("status"), *found)
    payload["hint"] = hint
    return Outcome(
        payload, format_test(payload), exit_code=0 if payload.get("ok") else EXIT_FAILURE
    )


def status_hint(status: Any, index: int, spec: AnyForwarderConfig) -> str | None:
    """One line on what to check when a receiver answers 401, 403 or 404 to ``test``."""
    # pydantic: loaded only for a failed test, whose hint needs the validated settings.
    from forwarder.destinations.webhook.options import WebhookForwarderConfig

    if not isinstance(spec, WebhookForwarderConfig):
        return None  # HTTP statuses: a NATS forwarder's error message says it all
    where = f"auditLogForwarders[{index}] ({spec.name})"
    if status == 401 and spec.auth.type == "oauth2":
        return (
            f"the receiver did not accept the access token: check auth.clientId, the client"
            f" secret and auth.scopes / auth.audience of {where}"
        )
    if status == 401:
        if spec.token_file is not None:
            source = f"tokenFile {spec.token_file}"
        elif spec.token is not None:
            source = "token"
        else:
            source = "no token is set"
        auth = f"auth.type {spec.auth.type}"
        if spec.auth.type == "header":
            auth += f", auth.header {spec.auth.header}, auth.scheme {spec.auth.scheme or '-'}"
        elif spec.auth.type == "query":
            auth += f", auth.param {spec.auth.param}"
        return (
            f"the receiver did not accept the credentials: check the token of {where}"
            f" ({source}) and how it is sent ({auth})"
        )
    if status == 403:
        return (
            f"the receiver knows the credentials but refuses this request: check what the token"
            f" of {where} may do (its scopes, index or source) and the uri's path"
        )
    if status == 404:
        return f"the receiver has nothing at this URL: check the path of {where}.uri"
    return None


def _send(client: AdminClient, args: argparse.Namespace) -> Outcome:
    try:
        data = _read_input(args.file)
    except OSError as exc:
        raise CommandError(
            "cannot_read_input", f"cannot read {args.file}: {exc.strerror or exc}"
        ) from None
    payload = client.call("POST", "/v1/events", data, guess_content_type(data))
    text = f"accepted {payload['accepted']} event(s), {payload['duplicates']} duplicate(s)"
    return Outcome(payload, text)


def _read_input(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    with open(file, "rb") as source:
        return source.read()


def check_dead_letter_selection(args: argparse.Namespace) -> None:
    """Refuse, in flag terms, a purge that says nothing or says two things at once."""
    if args.action != "purge":
        return
    if not (args.forwarder or args.ids or args.all):
        raise CommandError(
            "usage",
            "say which dead letters to purge: --forwarder NAME, --id EVENT_ID (repeatable),"
            " or --all",
            EXIT_USAGE,
        )
    if args.all and (args.forwarder or args.ids):
        raise CommandError(
            "usage",
            "--all purges every dead letter: do not combine it with --forwarder or --id",
            EXIT_USAGE,
        )


def _dead_letters(client: AdminClient, args: argparse.Namespace) -> Outcome:
    if args.action == "list":
        query = f"?limit={args.limit}"
        if args.forwarder:
            query += f"&forwarder={quote(args.forwarder, safe='')}"
        payload = client.call("GET", f"/v1/dead-letters{query}")
        return Outcome(payload, format_dead_letters(payload))
    check_dead_letter_selection(args)
    selection: dict[str, Any] = {"ids": args.ids}
    if args.forwarder:
        selection["forwarder"] = args.forwarder
    if args.action == "purge":
        selection["all"] = args.all
    body = json.dumps(selection).encode()
    payload = client.call("POST", f"/v1/dead-letters/{args.action}", body)
    if args.action == "purge":
        return Outcome(payload, f"purged {payload['purged']} dead letter(s)")
    text = f"replayed {payload['replayed']} dead letter(s)"
    if payload["skipped_unknown_forwarder"]:
        text += f", skipped {payload['skipped_unknown_forwarder']} of removed forwarders"
    missing = payload.get("not_found") or []
    failure = None
    if missing:
        of = f" of forwarder {args.forwarder!r}" if args.forwarder else ""
        failure = CommandError(
            "not_found",
            f"no dead letter{of} with id {', '.join(missing)} (--id): nothing replayed for"
            f" {'it' if len(missing) == 1 else 'them'}",
            details={"not_found": missing},
        )
    return Outcome(payload, text, failure)
