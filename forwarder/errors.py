"""The exception tree of audit-forwarder, rooted in one class and split by phase.

Every error carries the data a caller needs to act on it (a status code, a
``Retry-After`` delay, the list of configuration problems) instead of a message
that has to be parsed. aiohttp's own exceptions are translated into these in
exactly one place (``destinations/webhook/sending.py``), so the rest of the
code handles our errors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ForwarderError(Exception):
    """Root of every error raised on purpose by audit-forwarder."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a configuration, located by its YAML path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ForwarderError):
    """The configuration cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class IngestError(ForwarderError):
    """A request to the ingest API was refused; ``status`` is the HTTP answer.

    ``reason`` is the stable label counted in the rejection metric.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(message)


class BufferUnavailableError(ForwarderError):
    """The buffer cannot take events now (shutting down, full, disk error).

    Ingest answers 503 with ``Retry-After: retry_after_seconds``.
    """

    def __init__(self, reason: str, message: str, retry_after_seconds: int = 1) -> None:
        self.reason = reason
        self.message = message
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)


class BufferUnusableError(ForwarderError):
    """The buffer file cannot be used by this process, so nothing can be acknowledged.

    Raised before the daemon accepts anything: a damaged, foreign or too-new
    file, a path that is not a file, missing permissions, or another daemon
    holding the file. ``kind`` is a stable label (``damaged``, ``foreign``,
    ``too_new``, ``unreadable``, ``not_a_file``, ``missing``, ``locked``);
    the message is one line saying what is wrong, with which file, and what to
    do. The command line exits with its own code (3) for it.
    """

    def __init__(self, kind: str, path: Path | str, problem: str, remedy: str) -> None:
        self.kind = kind
        self.path = str(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"buffer {path} {problem}: {remedy}")


class BufferLockedError(BufferUnusableError):
    """Another process holds the buffer's lock; ``holder_pid`` is its PID when known."""

    def __init__(self, path: Path | str, lock_path: Path | str, holder_pid: int | None) -> None:
        self.holder_pid = holder_pid
        holder = f"PID {holder_pid}" if holder_pid is not None else "a process of unknown PID"
        super().__init__(
            "locked",
            path,
            f"is in use by another audit-forwarder ({holder}, lock {lock_path})",
            "stop that process first, or give this one another buffer.path",
        )


class DeliveryError(ForwarderError):
    """A delivery attempt did not succeed.

    ``code`` is the HTTP status as a string, or ``timeout`` /
    ``connection_error`` / ``invalid_response`` when there was no usable
    answer; it is the ``code`` label of the attempt metrics. ``body`` is the
    response body (truncated) when there was one.
    """

    def __init__(
        self, code: str, message: str, *, status: int | None = None, body: bytes = b""
    ) -> None:
        self.code = code
        self.status = status
        self.message = message
        self.body = body
        super().__init__(message)


class RetryableDeliveryError(DeliveryError):
    """The attempt may succeed later: connection errors, timeouts, 408, 429, 5xx.

    ``retry_after`` is the delay the receiver asked for, in seconds, if any.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message, status=status, body=body)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Sending the same request again cannot succeed (other 4xx): dead-letter it."""


class RejectedContentError(PermanentDeliveryError):
    """The destination refused what the payload carries, not the request as such.

    A webhook's 400, 409, 413 or 422; a JetStream publish refused for one
    message (over the stream's maximum size, a subject no stream takes).
    Sending the same payload again cannot succeed, but a part of it may: the
    worker splits a batch that gets this until the refused events are alone.
    """
