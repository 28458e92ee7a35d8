"""The ``audit-forwarder`` command line: the daemon, config checks, and operator commands.

``status``, ``deliveries``, ``test`` and ``send`` talk to a running daemon
through its admin API (see ``ops/client.py``), found from the same configuration
file; a daemon that does not answer is reported in one line, exit code 1.

``buffer check`` and ``buffer salvage`` work on the configured buffer file
itself, with or without a daemon (see ``ops/buffer_commands.py``).

This is the only module that calls ``asyncio.run`` or exits the process.
Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error,
3 the buffer file cannot be used (damaged, foreign, written by a newer
version, unreadable, or held by another daemon): a supervisor restarting the
daemon cannot fix that, an operator can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from forwarder import __version__
from forwarder.config.loading import load_config
from forwarder.config.settings import Settings
from forwarder.errors import BufferUnusableError, ConfigError, ForwarderError
from forwarder.event_loop import event_loop_runner
from forwarder.logs import configure_logging
from forwarder.ops.client import (
    AdminClient,
    format_dead_letters,
    format_deliveries,
    format_status,
    format_test,
    guess_content_type,
)

DEFAULT_CONFIG = "config.yaml"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_BUFFER = 0, 1, 2, 3


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("AUDIT_FORWARDER_CONFIG_FILE", DEFAULT_CONFIG),
        help="YAML configuration file (default: $AUDIT_FORWARDER_CONFIG_FILE or config.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="audit-forwarder",
        description="Forward local audit events durably to webhook endpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    _add_config(run)

    check = commands.add_parser("check-config", help="validate a configuration file")
    _add_config(check)

    receiver = commands.add_parser("receiver", help="a debug receiver that prints deliveries")
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--port", type=int, default=9000)
    receiver.add_argument("--status", type=int, default=200, help="HTTP status to answer")

    status = commands.add_parser("status", help="show every forwarder's state")
    _add_config(status)
    _add_json(status)

    deliveries = commands.add_parser("deliveries", help="show a forwarder's delivery history")
    _add_config(deliveries)
    _add_json(deliveries)
    deliveries.add_argument("name", help="forwarder name")
    deliveries.add_argument("--limit", type=int, default=20, help="newest N attempts (max 1000)")

    test = commands.add_parser("test", help="send a test event to a forwarder's receiver")
    _add_config(test)
    _add_json(test)
    test.add_argument("name", help="forwarder name")

    send = commands.add_parser("send", help="ingest JSON or NDJSON events from a file or stdin")
    _add_config(send)
    _add_json(send)
    send.add_argument("file", nargs="?", default="-", help="a file, or - for stdin (default)")

    dead = commands.add_parser("dead-letters", help="list, replay or purge dead letters")
    dead_commands = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "show dead letters, newest first"),
        ("replay", "put dead letters back into their forwarder's queue"),
        ("purge", "delete dead letters"),
    ):
        sub = dead_commands.add_parser(action, help=text)
        _add_config(sub)
        _add_json(sub)
        sub.add_argument("--forwarder", help="only this forwarder's dead letters")
        if action == "list":
            sub.add_argument("--limit", type=int, default=50, help="newest N (max 1000)")
        else:
            sub.add_argument(
                "--id", dest="ids", action="append", default=[], help="an event id (repeatable)"
            )
        if action == "purge":
            sub.add_argument("--all", action="store_true", help="purge every dead letter")

    buffer = commands.add_parser("buffer", help="check or salvage the buffer file itself")
    buffer_commands = buffer.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("check", "integrity check and summary (read-only; works beside a running daemon)"),
        ("salvage", "move a damaged file aside and copy what is readable into a fresh one"),
    ):
        sub = buffer_commands.add_parser(action, help=text)
        _add_config(sub)
        _add_json(sub)

    commands.add_parser("version", help="print the version")
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _load(path: str) -> Settings | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"audit-forwarder: invalid configuration {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _run(path: str) -> int:
    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format)
    from forwarder.app import Daemon  # imported late: check-config stays light

    try:
        return event_loop_runner()(Daemon(settings, Path(path)).serve())
    except BufferUnusableError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_BUFFER
    except ForwarderError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _check(path: str) -> int:
    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    names = ", ".join(settings.forwarder_names())
    print(f"{path}: OK ({len(settings.audit_log_forwarders)} forwarder(s): {names})")
    return EXIT_OK


def _receiver(host: str, port: int, status: int) -> int:
    from forwarder.ops.receiver import run_receiver

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_receiver(host, port, status))
    return EXIT_OK


def _read_input(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    with open(file, "rb") as source:
        return source.read()


async def _operator(args: argparse.Namespace, settings: Settings) -> tuple[Any, str]:
    """Run one operator command; return its JSON answer and its rendering."""
    client = AdminClient(settings)
    if args.command == "status":
        payload = await client.request("GET", "/v1/forwarders")
        return payload, format_status(payload)
    if args.command == "deliveries":
        name = quote(args.name, safe="")
        payload = await client.request(
            "GET", f"/v1/forwarders/{name}/deliveries?limit={args.limit}"
        )
        return payload, format_deliveries(payload)
    if args.command == "test":
        payload = await client.request("POST", f"/v1/forwarders/{quote(args.name, safe='')}/test")
        return payload, format_test(payload)
    if args.command == "dead-letters":
        return await _dead_letters(client, args)
    data = _read_input(args.file)
    payload = await client.request("POST", "/v1/events", data, guess_content_type(data))
    return payload, f"accepted {payload['accepted']} event(s), {payload['duplicates']} duplicate(s)"


async def _dead_letters(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    if args.action == "list":
        query = f"?limit={args.limit}"
        if args.forwarder:
            query += f"&forwarder={quote(args.forwarder, safe='')}"
        payload = await client.request("GET", f"/v1/dead-letters{query}")
        return payload, format_dead_letters(payload)
    selection: dict[str, Any] = {"ids": args.ids}
    if args.forwarder:
        selection["forwarder"] = args.forwarder
    if args.action == "purge":
        selection["all"] = args.all
    body = json.dumps(selection).encode()
    payload = await client.request("POST", f"/v1/dead-letters/{args.action}", body)
    if args.action == "replay":
        text = f"replayed {payload['replayed']} dead letter(s)"
        if payload["skipped_unknown_forwarder"]:
            text += f", skipped {payload['skipped_unknown_forwarder']} of removed forwarders"
        return payload, text
    return payload, f"purged {payload['purged']} dead letter(s)"


def _operator_command(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    try:
        payload, text = asyncio.run(_operator(args, settings))
    except OSError as exc:
        print(f"audit-forwarder: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ForwarderError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(payload, indent=2) if args.json else text)
    if args.command == "test" and not payload.get("ok"):
        return EXIT_FAILURE
    return EXIT_OK


def _buffer_command(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    from forwarder.ops.buffer_commands import USABLE, check_buffer, salvage_buffer

    try:
        if args.action == "check":
            payload, text = check_buffer(settings)
        else:
            payload, text = salvage_buffer(settings)
    except BufferUnusableError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        # Nothing there to salvage is a failed command, not an unusable buffer.
        return EXIT_FAILURE if exc.kind == "missing" else EXIT_BUFFER
    print(json.dumps(payload, indent=2) if args.json else text)
    if args.action == "check" and payload["status"] not in USABLE:
        return EXIT_BUFFER
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audit-forwarder`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        return _check(args.config)
    if args.command == "receiver":
        return _receiver(args.host, args.port, args.status)
    if args.command in ("status", "deliveries", "test", "send", "dead-letters"):
        return _operator_command(args)
    if args.command == "buffer":
        return _buffer_command(args)
    print(f"audit-forwarder {__version__}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
