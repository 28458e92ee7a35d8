"""One forwarder's NATS connection: made when first needed, made again when lost.

The ``nats`` library is imported here, inside :meth:`NatsLink.jetstream`,
so a daemon without a NATS forwarder never loads it, and neither does
``check-config``.

Design decisions:

* nats-py's own reconnection is off (``allow_reconnect=False``). Its
  reconnect loop buffers publishes while it retries in the background,
  which would hide an outage behind timeouts; with it off, a lost
  connection closes the client, the attempt in flight fails (retried by the
  worker with its backoff and metrics, like any failed delivery), and the
  next attempt connects afresh, to any server of ``servers`` (nats-py tries
  each in turn, twice, before giving up). The delivery loop already is a
  retry loop; a second one inside the client would only blur what
  ``status`` shows.
* Nothing is connected at start: a NATS that is down must not keep the
  daemon from starting or accepting events. ``open`` only prepares, and the
  first delivery attempt connects.
* With ``stream`` set, each new connection first asks JetStream for the
  stream; a missing stream is a retryable ``stream_not_found`` failure with
  a message that says so (in ``status``, the history and the
  ``forwarder_failing`` log line), and an error log line once per
  connection. Events wait until the stream is created: nothing is
  dead-lettered because of a setup step not yet done.
* A refused login (``Authorization Violation``) is retryable too
  (``auth_error``): credentials are fixed by a reload, and the events must
  still be there when they are.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from forwarder.destinations.nats import nkeys
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.errors import RetryableDeliveryError
from forwarder.logs import get_logger
from forwarder.secrets import masker

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = get_logger("delivery")

RECONNECT_WAIT_SECONDS = 0.1  # between two tries of the same server within one connect


def tls_context(spec: NatsForwarderConfig) -> ssl.SSLContext | None:
    """The client TLS context (private CA, client certificate), or None without TLS settings."""
    tls = spec.tls
    if not tls.enabled and not any(url.startswith("tls://") for url in spec.servers):
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return context


def auth_options(spec: NatsForwarderConfig) -> dict[str, Any]:
    """nats-py's ``connect`` keywords for the configured way of authenticating."""
    if spec.token is not None:
        return {"token": spec.token.get_secret_value()}
    if spec.username is not None and spec.password is not None:
        return {"user": spec.username, "password": spec.password.get_secret_value()}
    if spec.credentials_file is not None:
        jwt, pair = nkeys.read_credentials(spec.credentials_file)
        return {"user_jwt_cb": lambda: jwt, "signature_cb": pair.sign_nonce}
    if spec.nkey_seed_file is not None:
        pair = nkeys.read_seed_file(spec.nkey_seed_file)
        return {"signature_cb": pair.sign_nonce, "public_nkey": pair.public_key}
    return {}


def describe_failure(exc: BaseException) -> str:
    """A one-line reason from a nats-py exception (whose ``str`` is often empty), masked."""
    text = str(exc).strip()
    return masker.mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class NatsLink:
    """The connection of one forwarder and its JetStream context. No I/O until used."""

    def __init__(self, spec: NatsForwarderConfig) -> None:
        self.spec = spec
        self.name = str(spec.name)
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._verified = False  # the configured stream was found on this connection

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context of a live connection; RetryableDeliveryError if none can be had."""
        async with self._lock:
            client, jetstream = self._client, self._jetstream
            if client is None or jetstream is None or not client.is_connected:
                if self._closed:
                    raise RetryableDeliveryError("stopping", "the forwarder is stopping")
                await self._drop()
                client = self._client = await self._connect()
                jetstream = self._jetstream = client.jetstream(timeout=self.spec.timeout_seconds)
                self._verified = False
                log.info("nats_connected", forwarder=self.name, server=self._server())
            if not self._verified:
                await self._verify_stream(jetstream)
                self._verified = True
            return jetstream

    def _server(self) -> str:
        client = self._client
        url = getattr(client, "connected_url", None) if client is not None else None
        return url.netloc.rpartition("@")[2] if url is not None else self.spec.host

    async def _connect(self) -> Client:
        import nats.errors
        from nats.aio.client import Client

        client = Client()
        options = self._options()
        public_nkey = options.pop("public_nkey", None)
        if public_nkey is not None:
            # nats-py sends CONNECT's `nkey` only from this attribute, which it
            # fills itself only with the optional `nkeys` package (see nkeys.py).
            client._public_nkey = public_nkey
        try:
            await client.connect(**options)
        except nats.errors.AuthorizationError as exc:
            await _quietly_close(client)
            raise RetryableDeliveryError(
                "auth_error",
                f"the NATS server refused the credentials ({describe_failure(exc)})",
            ) from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await _quietly_close(client)
            if "authorization" in str(exc).lower():
                raise RetryableDeliveryError(
                    "auth_error",
                    f"the NATS server refused the credentials ({describe_failure(exc)})",
                ) from None
            raise RetryableDeliveryError(
                "connection_error",
                f"cannot connect to {self.spec.host}: {describe_failure(exc)}",
            ) from None
        return client

    def _options(self) -> dict[str, Any]:
        try:
            auth = auth_options(self.spec)
        except (OSError, UnicodeDecodeError, nkeys.NKeyError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise RetryableDeliveryError(
                "auth_error", f"cannot use the credentials: {reason}"
            ) from None
        return {
            "servers": list(self.spec.servers),
            "name": f"audit-forwarder {self.name}",
            "connect_timeout": self.spec.timeout_seconds,
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": RECONNECT_WAIT_SECONDS,
            "error_cb": self._on_error,
            "tls": tls_context(self.spec),
            **auth,
        }

    async def _on_error(self, exc: Exception) -> None:
        # Every failure reaches the worker as a DeliveryError too; this is detail.
        log.debug("nats_client_error", forwarder=self.name, error=describe_failure(exc))

    async def _verify_stream(self, jetstream: JetStreamContext) -> None:
        """Ask JetStream for the account (and the stream, when set) on a new connection.

        The first request also sets up the client's reply subscription, so
        that the publishes of a batch, started together, each reach the
        socket in the batch's order (none of them waits for that set-up).
        """
        import nats.errors
        import nats.js.errors

        stream = self.spec.stream
        try:
            if stream is None:
                await jetstream.account_info()
                return
            await jetstream.stream_info(stream)
        except nats.js.errors.NotFoundError:
            log.error(
                "nats_stream_missing",
                forwarder=self.name,
                stream=stream,
                server=self._server(),
                action="events wait until the stream is created",
            )
            raise RetryableDeliveryError(
                "stream_not_found",
                f"JetStream has no stream {stream!r} (on {self._server()}): create it,"
                " or correct the forwarder's stream",
            ) from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            what = "the JetStream account" if stream is None else f"stream {stream!r}"
            raise RetryableDeliveryError(
                "jetstream_unavailable", f"cannot look up {what}: {describe_failure(exc)}"
            ) from None

    async def _drop(self) -> None:
        client, self._client, self._jetstream = self._client, None, None
        if client is not None:
            await _quietly_close(client)

    async def close(self) -> None:
        """Close the connection (in-flight publishes fail); safe to call twice."""
        self._closed = True
        async with self._lock:
            await self._drop()


async def _quietly_close(client: Client) -> None:
    """Close a client whose state may be half-made; its errors are no longer ours."""
    try:
        await client.close()
    except Exception as exc:
        log.debug("nats_close_failed", error=describe_failure(exc))
