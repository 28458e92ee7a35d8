"""The ``audit-forwarder`` command line: run, check-config, receiver, version.

This is the only module that calls ``asyncio.run`` or exits the process.
Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from forwarder import __version__
from forwarder.config import Settings, load_config
from forwarder.errors import ConfigError, ForwarderError
from forwarder.logs import configure_logging

DEFAULT_CONFIG = "config.yaml"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


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

    commands.add_parser("version", help="print the version")
    return parser


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
        return asyncio.run(Daemon(settings).serve())
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
    from forwarder.receiver import run_receiver

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_receiver(host, port, status))
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
    print(f"audit-forwarder {__version__}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
