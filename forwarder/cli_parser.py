"""The ``audit-forwarder`` argument parser: every command, its flags and their checks.

Split from ``cli.py``, which runs the commands, so each module holds one job.
It imports argparse and nothing else of weight: building the parser is on
the path of every command, ``--help`` included (see ``cli.py``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from forwarder import __version__

DEFAULT_CONFIG = "config.yaml"


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("AUDIT_FORWARDER_CONFIG_FILE", DEFAULT_CONFIG),
        help="YAML configuration file (default: $AUDIT_FORWARDER_CONFIG_FILE or config.yaml)",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON for scripts (errors too, on stdout)"
    )


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (a usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({low}-{high})")
        return value

    return parse


LIMIT = _int_in(1, 1000, "a number of rows")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="audit-forwarder",
        description="Forward local audit events durably to webhook endpoints.",
    )
    parser.add_argument(
        "-V", "--version", action="version", version=f"audit-forwarder {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    _add_config(run)

    check = commands.add_parser("check-config", help="validate a configuration file")
    _add_config(check)
    _add_json(check)

    receiver = commands.add_parser("receiver", help="a debug receiver that prints deliveries")
    receiver.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    receiver.add_argument(
        "--port",
        type=_int_in(0, 65535, "a port"),
        default=9000,
        help="port to listen on (default: 9000)",
    )
    receiver.add_argument(
        "--status",
        type=_int_in(100, 599, "an HTTP status"),
        default=200,
        help="HTTP status to answer every request with, 100-599 (default: 200)",
    )

    status = commands.add_parser("status", help="show every forwarder's state")
    _add_config(status)
    _add_json(status)

    deliveries = commands.add_parser("deliveries", help="show a forwarder's delivery history")
    _add_config(deliveries)
    _add_json(deliveries)
    deliveries.add_argument("name", help="forwarder name")
    deliveries.add_argument("--limit", type=LIMIT, default=20, help="newest N attempts (max 1000)")

    test = commands.add_parser("test", help="send a test event to a forwarder's receiver")
    _add_config(test)
    _add_json(test)
    test.add_argument("name", help="forwarder name")

    render = commands.add_parser(
        "render", help="show the request a forwarder would send for an event, without sending it"
    )
    _add_config(render)
    _add_json(render)
    render.add_argument("name", help="forwarder name")
    render.add_argument(
        "--event",
        metavar="FILE",
        help="a file holding one JSON event, or - for stdin (default: a built-in sample event)",
    )

    send = commands.add_parser("send", help="ingest JSON or NDJSON events from a file or stdin")
    _add_config(send)
    _add_json(send)
    send.add_argument("file", nargs="?", default="-", help="a file, or - for stdin (default)")

    dead = commands.add_parser("dead-letters", help="list, replay or purge dead letters")
    dead_commands = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "show dead letters, newest first"),
        ("replay", "put dead letters back into their forwarder's queue"),
        ("purge", "delete dead letters: --forwarder, --id or --all"),
    ):
        sub = dead_commands.add_parser(action, help=text)
        _add_config(sub)
        _add_json(sub)
        sub.add_argument("--forwarder", help="only this forwarder's dead letters")
        if action == "list":
            sub.add_argument("--limit", type=LIMIT, default=50, help="newest N (max 1000)")
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

    top = commands.add_parser("top", help="a live view of the forwarders, ingest and the buffer")
    _add_config(top)
    _add_json(top)
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    top.add_argument("--metrics-url", help="the metrics listener (default: from the config)")

    _add_integrity_commands(commands)
    commands.add_parser("version", help="print the version")
    return parser


def _add_integrity_commands(commands: Any) -> None:
    """``keygen`` and ``verify`` (tamper-evident delivery; ops/integrity_commands.py)."""
    keygen = commands.add_parser("keygen", help="write an Ed25519 key pair for integrity")
    keygen.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.key/.pub")
    verify = commands.add_parser("verify", help="check exported events against their chain")
    verify.add_argument(
        "--public-key", action="append", required=True, metavar="FILE", help="repeatable"
    )
    verify.add_argument("events", nargs="?", default="-", help="NDJSON or a JSON array; - stdin")
    verify.add_argument("--from-seq", type=_int_in(1, 2**62, "a seq"), default=1)
    verify.add_argument("--output", choices=("text", "json"), default="text")
    _add_json(verify)
