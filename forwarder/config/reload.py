"""Live configuration reload: on SIGHUP, and when the file (or a secret it reads) changes.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink
(``..data``) atomically, so the watcher compares a signature of every file
the configuration depends on — the config file and each ``tokenFile`` /
``signingSecretFile`` / ``auth.clientSecretFile`` / ``proxy.passwordFile`` /
TLS file, followed through symlinks — every
``interval`` seconds, rather than relying on inotify events that a symlink
swap does not raise on the watched path. A rotated token is therefore picked
up without a restart.

A new configuration is validated completely before anything changes; an
invalid one is logged with every problem and counted, and the running
configuration stays in force. What can change live (forwarders, tokens,
options, logging, limits, retention) is applied by the target's ``apply``
(the daemon; typed as :class:`ReloadTarget` so that config does not import
the stages above it); what needs a restart (listeners, the buffer's path and sync mode) is
reported in the log and left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from forwarder.config.loading import load_config
from forwarder.config.settings import Settings
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.errors import ConfigError
from forwarder.logs import get_logger
from forwarder.metrics import Metrics

log = get_logger("reload")

FileSignature = tuple[tuple[str, int, int, int], ...]


def dependent_files(path: Path, settings: Settings) -> list[Path]:
    """The config file and every file it tells the daemon to read."""
    files = [path]
    if settings.ingest.token_file is not None:
        files.append(settings.ingest.token_file)
    for spec in settings.audit_log_forwarders:
        if spec.integrity is not None and spec.integrity.signing_key_file is not None:
            files.append(spec.integrity.signing_key_file)
        if isinstance(spec, NatsForwarderConfig):
            files += spec.files()
            continue
        for candidate in (
            spec.token_file,
            spec.signing_secret_file,
            spec.auth.client_secret_file,
            spec.proxy.password_file if spec.proxy is not None else None,
            spec.tls.ca_file,
            spec.tls.cert_file,
            spec.tls.key_file,
        ):
            if candidate is not None:
                files.append(candidate)
    return files


def signature(files: list[Path]) -> FileSignature:
    """What identifies the current content of ``files``: inode, size and mtime each."""
    parts = []
    for file in files:
        try:
            info = os.stat(file)  # follows the ..data symlink swap
        except OSError:
            parts.append((str(file), -1, -1, -1))
            continue
        parts.append((str(file), info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(parts)


class ReloadTarget(Protocol):
    """What a reload needs of the daemon: its settings, its metrics, and applying new ones."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    async def apply(self, new: Settings) -> None: ...


class Reloader:
    """Owns the watch task; ``request()`` (SIGHUP) reloads at once."""

    def __init__(
        self,
        daemon: ReloadTarget,
        path: Path,
        *,
        interval: float = 2.0,
        load: Callable[[Path], Settings] = load_config,
    ) -> None:
        self._daemon = daemon
        self._path = path
        self._interval = interval
        self._load = load
        self._requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._signature: FileSignature = ()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The watch task, for the daemon to supervise."""
        return self._task

    def start(self) -> None:
        """Remember the current files and start watching."""
        self._signature = signature(dependent_files(self._path, self._daemon.settings))
        self._task = asyncio.create_task(self._run(), name="config-watch")

    def request(self) -> None:
        """Reload as soon as possible (the SIGHUP handler)."""
        log.info("config_reload_requested", reason="SIGHUP")
        self._requested.set()

    async def stop(self) -> None:
        """Stop watching. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._requested.wait(), self._interval)
            requested = self._requested.is_set()
            self._requested.clear()
            current = signature(dependent_files(self._path, self._daemon.settings))
            if requested or current != self._signature:
                self._signature = current
                await self.reload_now()

    async def reload_now(self) -> bool:
        """Load, validate and apply the configuration file; False if it was refused."""
        reloads = self._daemon.metrics.config_reloads
        try:
            settings = await asyncio.to_thread(self._load, self._path)
        except ConfigError as exc:
            reloads.labels(result="failure").inc()
            log.error(
                "config_reload_failed",
                path=str(self._path),
                problems=[str(problem) for problem in exc.problems],
            )
            return False
        # Files the new configuration reads are watched from now on.
        self._signature = signature(dependent_files(self._path, settings))
        await self._daemon.apply(settings)
        reloads.labels(result="success").inc()
        return True
