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
imports only argparse and the ground floor (the parser is ``cli_parser.py``);
each command imports its own modules inside its handler. ``--help`` and
``--version`` load no third-party package; ``check-config`` loads pydantic
and YAML but not aiohttp, structlog or prometheus_client; the operator
commands load YAML and the standard library's HTTP client, not pydantic:
they find the daemon with ``ops/locate.py`` and validate the whole file only
when that cannot tell or the command fails (see :func:`_operator_command`).
``tests/test_cli_imports.py`` guards this and ``python -m bench.cli_startup``
measures it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forwarder import __version__
from forwarder.cli_parser import build_parser
from forwarder.errors import BufferUnusableError, ConfigError, ForwarderError

if TYPE_CHECKING:
    from forwarder.config.settings import Settings
    from forwarder.ops.commands import CommandError, Outcome
    from forwarder.ops.locate import AdminAddress

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_BUFFER = 0, 1, 2, 3
OPERATOR_COMMANDS = ("status", "deliveries", "test", "send", "dead-letters")


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


def _validated(path: str) -> Settings:
    """The whole configuration, validated; raises ``ConfigError``."""
    from forwarder.config.loading import load_config  # pydantic and YAML: not for --help

    return load_config(path)


def _load(path: str, as_json: bool = False) -> Settings | None:
    """The settings, or None once every problem is reported (the caller exits 2)."""
    try:
        return _validated(path)
    except ConfigError as exc:
        _config_problems(path, exc, as_json)
        return None


def _config_problems(path: str, error: ConfigError, as_json: bool) -> None:
    """Report every problem of an invalid configuration once (the caller exits 2)."""
    if as_json:
        problems = [{"path": p.path, "message": p.message} for p in error.problems]
        _print_json(
            {
                "error": "invalid_configuration",
                "message": f"invalid configuration {path}",
                "problems": problems,
            }
        )
        return
    print(f"audit-forwarder: invalid configuration {path}:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def _run(path: str) -> int:
    from forwarder.memory import leave_out_unused_libraries  # before structlog: see memory.py

    leave_out_unused_libraries()
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
    """A command that talks to the daemon: found by the light locator when it can tell.

    What an operator sees is what validating the file first would show: when
    the locator declines, the file is validated before anything is sent; when
    it does not, the file is validated once the command has failed (any exit
    but 0), and an invalid file is reported instead of the failure, with
    nothing else printed. Only a command that succeeded against a daemon
    skips validating the forwarders: they are the daemon's, not this
    command's (see ``ops/locate.py``).
    """
    from forwarder.ops.commands import CommandError
    from forwarder.ops.locate import address_of, locate

    validated: list[Settings] = []

    def settings() -> Settings:
        if not validated:
            validated.append(_validated(args.config))
        return validated[0]

    notices: list[str] = []
    try:
        address = locate(args.config)
        if address is None:
            address = address_of(settings())
        answer = _ask_daemon(args, address, settings, notices)
        if isinstance(answer, CommandError) or answer.exit_code != EXIT_OK:
            settings()  # an invalid file is said instead of the failure
    except ConfigError as exc:
        _config_problems(args.config, exc, args.json)
        return EXIT_CONFIG
    for line in notices:
        _notice(line)
    if isinstance(answer, CommandError):
        return _fail(answer, args.json)
    return _print_outcome(answer, args.json)


def _ask_daemon(
    args: argparse.Namespace,
    address: AdminAddress,
    settings: Callable[[], Settings],
    notices: list[str],
) -> Outcome | CommandError:
    """The daemon's answer, or why there is none in command-line terms; ConfigError passes."""
    from forwarder.ops.commands import CommandError, check_dead_letter_selection, run_operator

    try:
        if args.command == "dead-letters":
            check_dead_letter_selection(args)  # before anything is sent
        return run_operator(args, address, settings, notices.append)
    except CommandError as exc:
        return exc
    except ConfigError:
        raise  # the file, not the command (a failed test's hint validates it)
    except ForwarderError as exc:  # the daemon did not answer
        return CommandError("daemon_unreachable", str(exc))


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
