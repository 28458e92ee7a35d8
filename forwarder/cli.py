"""The ``audit-forwarder`` command line: the daemon, config checks, and operator commands.

``status``, ``deliveries``, ``test``, ``send`` and ``dead-letters`` talk to a
running daemon through its admin API (``ops/commands.py``, ``ops/client.py``),
found from the same configuration file: the Unix socket, or the TCP listener
when the socket cannot be reached (said in one line on stderr). A daemon that
does not answer is reported in one line, exit code 1. ``check-config`` and
``render`` (``ops/render.py``) need no daemon; ``buffer check`` / ``salvage``
work on the buffer file itself (``ops/buffer_commands.py``).

Errors are said once, in the command line's terms (flags, forwarder names):
``audit-forwarder: <message>`` on stderr, or with ``--json`` one JSON document
on stdout, ``{"error": "<code>", "message": ...}``, so a script always reads
stdout as JSON and decides by the exit code, which ``--json`` does not change.
argparse's own usage errors stay text on stderr (``--json`` may be unparsed).

This is the only module that calls ``asyncio.run`` or exits the process.
Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error
(including an event ``render`` cannot read as one), 3 the buffer file cannot
be used (damaged, foreign, written by a newer version, unreadable, or held by
another daemon): a supervisor restarting the daemon cannot fix that, an
operator can.

Start-up is part of the interface: an operator (or a probe script) waits for
it on every call, and the interpreter alone takes ~12 ms. So this module
imports only argparse and the ground floor; each command imports its own
modules inside its handler. ``--help`` and ``--version`` load no third-party
package; ``check-config`` loads pydantic and YAML but not aiohttp, structlog
or prometheus_client; the operator commands add only the standard library's
HTTP client (``ops/client.py``). ``tests/test_cli_imports.py`` guards this
and ``python -m bench.cli_startup`` measures it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forwarder import __version__
from forwarder.errors import BufferUnusableError, ConfigError, ForwarderError

if TYPE_CHECKING:
    from forwarder.config.settings import Settings
    from forwarder.ops.commands import CommandError, Outcome

DEFAULT_CONFIG = "config.yaml"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_BUFFER = 0, 1, 2, 3
OPERATOR_COMMANDS = ("status", "deliveries", "test", "send", "dead-letters")


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


def _integrity_command(args: argparse.Namespace) -> int:
    # Only these two commands load cryptography.
    from forwarder.ops.integrity_commands import (
        EXIT_FINDINGS,
        IntegrityCommandError,
        keygen,
        report_json,
        report_text,
        verify,
    )

    as_json = args.command == "verify" and (args.json or args.output == "json")
    try:
        if args.command == "keygen":
            private_path, public_path = keygen(args.out)
            print(f"wrote {private_path} (private, mode 0600) and {public_path}")
            return EXIT_OK
        report = verify(args.public_key, args.events, args.from_seq)
    except IntegrityCommandError as exc:
        if as_json:
            _print_json({"error": "usage", "message": str(exc)})
        else:
            print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if as_json:
        _print_json(report_json(report))
    else:
        print(report_text(report))
    return EXIT_OK if report.clean else EXIT_FINDINGS


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def _fail(error: CommandError, as_json: bool) -> int:
    """Report a failed command once: JSON on stdout, or one line on stderr."""
    if as_json:
        _print_json(error.to_json())
    else:
        print(f"audit-forwarder: {error.message}", file=sys.stderr)
    return error.exit_code


def _load(path: str, as_json: bool = False) -> Settings | None:
    """The settings, or None once every problem is reported (the caller exits 2)."""
    from forwarder.config.loading import load_config  # pydantic and YAML: not for --help

    try:
        return load_config(path)
    except ConfigError as exc:
        if as_json:
            problems = [{"path": p.path, "message": p.message} for p in exc.problems]
            _print_json(
                {
                    "error": "invalid_configuration",
                    "message": f"invalid configuration {path}",
                    "problems": problems,
                }
            )
            return None
        print(f"audit-forwarder: invalid configuration {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _run(path: str) -> int:
    settings = _load(path)
    if settings is None:
        return EXIT_CONFIG
    # Imported late, as every command's own modules are: the others stay light.
    from forwarder.app import Daemon
    from forwarder.event_loop import event_loop_runner
    from forwarder.logs import configure_logging

    configure_logging(settings.logging.level, settings.logging.format)

    try:
        return event_loop_runner()(Daemon(settings, Path(path)).serve())
    except BufferUnusableError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_BUFFER
    except ForwarderError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _check(args: argparse.Namespace) -> int:
    settings = _load(args.config, args.json)
    if settings is None:
        return EXIT_CONFIG
    names = settings.forwarder_names()
    if args.json:
        _print_json({"config": args.config, "ok": True, "forwarders": names})
    else:
        print(f"{args.config}: OK ({len(names)} forwarder(s): {', '.join(names)})")
    return EXIT_OK


def _receiver(host: str, port: int, status: int) -> int:
    import asyncio
    import contextlib

    from forwarder.ops.receiver import ReceiverBindError, run_receiver

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_receiver(host, port, status))
    except ReceiverBindError as exc:
        print(f"audit-forwarder: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    settings = _load(args.config, args.json)
    if settings is None:
        return EXIT_CONFIG
    import asyncio

    from forwarder.ops.commands import CommandError
    from forwarder.ops.top import run_top

    view = run_top(
        settings,
        metrics_url=args.metrics_url,
        interval=args.interval,
        once=args.once,
        as_json=args.json,
    )
    try:
        return asyncio.run(view)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how a live view ends
    except ForwarderError as exc:  # the daemon did not answer
        return _fail(CommandError("daemon_unreachable", str(exc)), args.json)


def _notice(line: str) -> None:
    print(f"audit-forwarder: {line}", file=sys.stderr)


def _print_outcome(outcome: Outcome, as_json: bool) -> int:
    failure = outcome.failure
    if as_json:
        # One document: the answer, and the failure's keys when part of it failed.
        _print_json({**outcome.payload, **failure.to_json()} if failure else outcome.payload)
    else:
        print(outcome.text)
        if failure is not None:
            print(f"audit-forwarder: {failure.message}", file=sys.stderr)
    return outcome.exit_code


def _operator_command(args: argparse.Namespace) -> int:
    settings = _load(args.config, args.json)
    if settings is None:
        return EXIT_CONFIG
    from forwarder.ops.commands import CommandError, check_dead_letter_selection, run_operator

    try:
        if args.command == "dead-letters":
            check_dead_letter_selection(args)  # before anything is sent
        outcome = run_operator(args, settings, _notice)
    except CommandError as exc:
        return _fail(exc, args.json)
    except ForwarderError as exc:  # the daemon did not answer
        return _fail(CommandError("daemon_unreachable", str(exc)), args.json)
    return _print_outcome(outcome, args.json)


def _render(args: argparse.Namespace) -> int:
    settings = _load(args.config, args.json)
    if settings is None:
        return EXIT_CONFIG
    from forwarder.ops.commands import CommandError
    from forwarder.ops.render import format_render, read_event, render

    try:
        data, source = read_event(args.event)
        result = render(settings, args.name, data, source)
    except CommandError as exc:
        return _fail(exc, args.json)
    if args.json:
        _print_json(result)
    else:
        print(format_render(result))
    return EXIT_OK


def _buffer_command(args: argparse.Namespace) -> int:
    settings = _load(args.config, args.json)
    if settings is None:
        return EXIT_CONFIG
    from forwarder.destinations.webhook.formats import rfc3339
    from forwarder.ops.buffer_commands import USABLE, check_buffer, salvage_buffer
    from forwarder.ops.commands import CommandError

    try:
        if args.action == "check":
            payload, text = check_buffer(settings)
        else:
            payload, text = salvage_buffer(settings)
    except BufferUnusableError as exc:
        # Nothing there to salvage is a failed command, not an unusable buffer.
        code = EXIT_FAILURE if exc.kind == "missing" else EXIT_BUFFER
        error = CommandError("buffer_unusable", str(exc), code, {"kind": exc.kind})
        return _fail(error, args.json)
    if args.json:
        # One time format in every JSON output: the check reports Unix times.
        for forwarder in (payload.get("summary") or {}).get("forwarders", []):
            if forwarder.get("oldest_pending_at") is not None:
                forwarder["oldest_pending_at"] = rfc3339(forwarder["oldest_pending_at"])
        _print_json(payload)
    else:
        print(text)
    if args.action == "check" and payload["status"] not in USABLE:
        return EXIT_BUFFER
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audit-forwarder`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        return _check(args)
    if args.command == "receiver":
        return _receiver(args.host, args.port, args.status)
    if args.command in OPERATOR_COMMANDS:
        return _operator_command(args)
    if args.command == "render":
        return _render(args)
    if args.command == "buffer":
        return _buffer_command(args)
    if args.command == "top":
        return _top(args)
    if args.command in ("keygen", "verify"):
        return _integrity_command(args)
    print(f"audit-forwarder {__version__}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
