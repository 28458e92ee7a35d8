"""Log lines never carry a secret in any encoding, nor an event body at info and above.

The logging configuration is the daemon's own (``configure_logging``),
writing to the captured stdout; each test restores the defaults after.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import yarl
from aiohttp.http_exceptions import TransferEncodingError

from forwarder.logs import SecretRedactor, configure_logging, get_logger, redactor
from forwarder.secrets import SecretMasker

TOKEN = "BAD/HTTP+SECRET=31x"
# What aiohttp's ClientResponseError says: the URL with yarl's half-encoded query.
YARL_URL = str(yarl.URL("http://127.0.0.1:1/in?token=BAD%2FHTTP%2BSECRET%3D31x"))
JSON_ESCAPED = TOKEN.replace("/", "\\/")


def reset_logging() -> None:
    """structlog's defaults back, and the standard library's handler of forwarder.logs gone."""
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__module__ == "forwarder.logs"]:
        root.removeHandler(handler)


@pytest.fixture
def daemon_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The daemon's JSON logging at info, knowing TOKEN, on the captured stdout; reset after.

    Configured lazily, from the test itself: the stdout captured for a test
    is the one in place while it runs, not during fixture setup.
    """
    redactor.update([TOKEN])
    try:
        yield capsys
    finally:
        redactor.update([])
        reset_logging()


def start_logging(level: str = "info") -> None:
    """Configure the daemon's JSON logging on the current stdout."""
    configure_logging(level, "json")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines printed so far (each line must be one JSON object)."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_redactor_masks_encoded_forms_nested_values_and_bytes(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """Every string in an event, nested or bytes, loses every wire form of a secret."""
    event = redactor(
        None,
        "warning",
        {
            "event": "forwarder_failing",
            "error": f"ClientResponseError: 400, url='{YARL_URL}'",
            "problems": [f"token {JSON_ESCAPED}"],
            "request": {"url": f"/in?token={TOKEN}"},
            "raw": b"token=BAD%2fHTTP%2bSECRET%3d31x",
            "count": 3,
        },
    )

    assert event == {
        "event": "forwarder_failing",
        "error": "ClientResponseError: 400, url='http://127.0.0.1:1/in?token=***'",
        "problems": ["token ***"],
        "request": {"url": "/in?token=***"},
        "raw": b"token=***",
        "count": 3,
    }


def test_a_logged_line_and_its_traceback_are_masked(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """The configured pipeline masks the yarl form in fields and in a rendered traceback."""
    start_logging()
    log = get_logger("delivery")
    try:
        raise RuntimeError(f"failed on {YARL_URL}")
    except RuntimeError:
        log.exception("task_failed", error=YARL_URL)

    output = daemon_logging.readouterr().out
    assert "SECRET" not in output
    (entry,) = [json.loads(line) for line in output.splitlines()]
    assert entry["error"] == "http://127.0.0.1:1/in?token=***"
    assert "RuntimeError: failed on http://127.0.0.1:1/in?token=***" in entry["exception"]


def test_a_redactor_can_use_its_own_masker() -> None:
    """A SecretRedactor given a masker applies that one, not the process's."""
    own = SecretRedactor(SecretMasker(["own-s3cret"]))

    assert own(None, "info", {"event": "x own-s3cret"}) == {"event": "x ***"}
    assert redactor(None, "info", {"event": "x own-s3cret"}) == {"event": "x own-s3cret"}


def test_bytes_are_logged_as_their_size_at_info_but_kept_at_debug(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """A bytes value (an event body) is "<N bytes>" at info and above; debug keeps it."""
    start_logging("debug")
    log = get_logger("delivery")
    log.info("sent", body=b'{"pii": "x"}')
    log.debug("sent", body=b'{"pii": "x"}')

    info, debug = lines(daemon_logging)

    assert info["body"] == "<12 bytes>"
    assert "pii" in debug["body"]


def test_aiohttp_errors_are_json_lines_without_the_request_they_quote(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """aiohttp's "Error handling request" becomes a JSON line naming the error, not its bytes."""
    start_logging()
    try:
        raise ValueError('Invalid chunk size:\n\n  b\'{"pii": "PERSONAL-DATA"}\'\n   ^')
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "::1")

    output = daemon_logging.readouterr().out
    assert "PERSONAL-DATA" not in output
    (entry,) = [json.loads(line) for line in output.splitlines()]
    assert entry["event"] == "Error handling request from ::1"
    assert entry["component"] == "aiohttp.server"
    assert entry["level"] == "error"
    assert entry["error"] == "ValueError"
    assert "exception" not in entry


def test_our_own_lines_name_a_parser_error_without_its_bytes(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """A handler logging aiohttp's parser error (a body cut short) keeps its type, not its bytes."""
    start_logging()
    exc = TransferEncodingError('Invalid chunk:\n\n  b\'{"pii": "PERSONAL-DATA"}\'\n  ^')
    get_logger("ingest").error("handler_failed", path="/v1/events", exc_info=exc)

    output = daemon_logging.readouterr().out
    assert "PERSONAL-DATA" not in output
    (entry,) = [json.loads(line) for line in output.splitlines()]
    assert entry["event"] == "handler_failed"
    assert entry["error"] == "TransferEncodingError"
    assert "exception" not in entry


def test_other_libraries_warnings_are_masked_json_lines(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """A warning from another library (asyncio) is a JSON line, secrets masked, traceback kept."""
    start_logging()
    try:
        raise OSError(f"connect to {YARL_URL}")
    except OSError:
        logging.getLogger("asyncio").warning("Task exception: %s", YARL_URL, exc_info=True)
    logging.getLogger("aiosqlite").info("executing %s", TOKEN)  # below warning: not logged

    output = daemon_logging.readouterr().out
    assert "SECRET" not in output
    (entry,) = [json.loads(line) for line in output.splitlines()]
    assert entry["event"] == "Task exception: http://127.0.0.1:1/in?token=***"
    assert entry["level"] == "warning"
    assert "OSError: connect to http://127.0.0.1:1/in?token=***" in entry["exception"]


def test_reconfiguring_keeps_one_handler_for_the_standard_library(
    daemon_logging: pytest.CaptureFixture[str],
) -> None:
    """configure_logging again (a reload) replaces its handler: each record is printed once."""
    start_logging()
    start_logging()
    logging.getLogger("asyncio").warning("once")

    assert [entry["event"] for entry in lines(daemon_logging)] == ["once"]
