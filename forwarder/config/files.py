"""The files a configuration names: paths resolved, secrets read, and the checks that need them.

``loading.py`` turns the YAML into validated models; this module finishes
them. It is split from the loader because it is a different job with a
different reason to change: the loader changes with the document's grammar
(expansion, overrides, how problems are reported and ordered), this module
with what each section and destination kind keeps in files (a new
``*File`` secret, a new key or TLS file). The loader decides *which* models
are checked (all of them when the document is valid, each section and
forwarder valid on its own when it is not); the functions here check one.

* Relative paths (``buffer.path``, ``ingest.unixSocket``, ``tokenFile``,
  ``signingSecretFile``, the ``tls`` files, ``buffer.encryption``'s key
  files) are resolved against the directory of the configuration file, not
  the working directory: the same file means the same buffer whichever
  directory the daemon, ``check-config`` or an operator command was started
  from. The default ``buffer.path`` stays relative to the working directory.
* ``tokenFile``, ``signingSecretFile`` and the other ``*File`` secrets are
  read here, so the rest of the daemon only ever sees a resolved secret;
  checks that need a resolved secret or a readable file (a token's form, a
  signing key, TLS files, a NATS seed) run after that, so they fail
  ``check-config`` instead of deliveries. A problem names the file, never
  quotes a secret.
* The models are frozen for everyone else; these functions finish them in
  place, on copies of any section that may be pydantic's shared default.
* ``check-config`` and every operator command load a configuration, so the
  webhook transport (and with it aiohttp, ~120 ms of start-up) is imported
  only when a forwarder has TLS files to load or an IP address to judge
  against ``denyPrivateNetworks``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from pydantic.alias_generators import to_camel

from forwarder.buffer.encryption import KeyFileError, read_key
from forwarder.config.settings import BufferConfig, IngestConfig, Settings
from forwarder.destinations.kinds import AnyForwarderConfig
from forwarder.destinations.nats.options import NatsForwarderConfig, seed_problem
from forwarder.destinations.webhook.auth import check_token
from forwarder.destinations.webhook.signing import check_secret
from forwarder.destinations.webhook.templates import compile_template
from forwarder.errors import ConfigProblem

FORWARDERS = "auditLogForwarders"


def template_problems(template: str, where: str) -> list[ConfigProblem]:
    """Whether a forwarder's ``template`` compiles; the compiler's reason when not."""
    try:
        compile_template(template)
    except ValueError as exc:
        return [ConfigProblem(f"{where}.template", str(exc))]
    return []


def check_settings(settings: Settings, base_dir: Path | None) -> list[ConfigProblem]:
    """Resolve paths and secret files of valid settings; what cannot work, per forwarder."""
    # A section the file leaves out is pydantic's default instance, shared by
    # every Settings: finish a copy of it, never the default itself.
    _set(settings, "ingest", settings.ingest.model_copy())
    _set(settings, "buffer", settings.buffer.model_copy())
    # Only a path someone wrote is relative to the file. The default
    # ./data/buffer.db stays relative to the working directory, as the
    # container image (WORKDIR on its volume) and `make run` rely on.
    if "path" in settings.buffer.model_fields_set:
        _resolve_paths(settings.buffer, ("path",), base_dir)
    problems = check_ingest(settings.ingest, base_dir)
    problems += check_encryption(settings.buffer, base_dir)
    for index, spec in enumerate(settings.audit_log_forwarders):
        problems += check_forwarder(spec, f"{FORWARDERS}[{index}]", base_dir)
    return problems


def _set(model: Any, field: str, value: Any) -> None:
    # The models are frozen for everyone else; loading finishes them in place.
    object.__setattr__(model, field, value)


def _resolved(path: Path, base_dir: Path | None) -> Path:
    return path if base_dir is None or path.is_absolute() else base_dir / path


def _resolve_paths(model: Any, fields: tuple[str, ...], base_dir: Path | None) -> None:
    for field in fields:
        path = getattr(model, field)
        if path is not None:
            _set(model, field, _resolved(path, base_dir))


def _read_secret_file(path: Path, where: str, problems: list[ConfigProblem]) -> SecretStr | None:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        problems.append(ConfigProblem(where, f"cannot read {path}: {reason}"))
        return None
    if not secret:
        problems.append(ConfigProblem(where, "the file is empty"))
        return None
    return SecretStr(secret)


def _read_secret(
    model: Any, file_field: str, value_field: str, where: str, problems: list[ConfigProblem]
) -> None:
    """Read a ``*File`` secret (a Kubernetes Secret mount) into its field."""
    path = getattr(model, file_field)
    if path is not None:
        secret = _read_secret_file(path, where, problems)
        if secret is not None:
            _set(model, value_field, secret)


def check_encryption(buffer: BufferConfig, base_dir: Path | None) -> list[ConfigProblem]:
    """Resolve ``buffer.encryption``'s key files and read them, so a bad key fails check-config.

    Never quotes a key: a problem names the file and what is wrong with it.
    """
    if buffer.encryption is None:
        return []
    encryption = buffer.encryption.model_copy()
    _set(buffer, "encryption", encryption)
    if encryption.key_file is not None:
        _resolve_paths(encryption, ("key_file",), base_dir)
        places = ["buffer.encryption.keyFile"]
    else:
        keys = [key.model_copy() for key in encryption.keys or []]
        for key in keys:
            _resolve_paths(key, ("file",), base_dir)
        _set(encryption, "keys", keys)
        places = [f"buffer.encryption.keys[{index}].file" for index in range(len(keys))]
    problems = []
    for place, (_, path) in zip(places, encryption.key_files(), strict=True):
        try:
            read_key(path)
        except KeyFileError as exc:
            problems.append(ConfigProblem(place, str(exc)))
    if not problems:
        encryption.load()
    return problems


def check_ingest(ingest: IngestConfig, base_dir: Path | None) -> list[ConfigProblem]:
    """Resolve ``ingest``'s socket and token file against the file's directory; read the token."""
    problems: list[ConfigProblem] = []
    _resolve_paths(ingest, ("unix_socket", "token_file"), base_dir)
    _read_secret(ingest, "token_file", "token", "ingest.tokenFile", problems)
    return problems


def check_forwarder(
    spec: AnyForwarderConfig, where: str, base_dir: Path | None
) -> list[ConfigProblem]:
    """Checks that need resolved secrets or files: they fail check-config, not deliveries."""
    integrity = [] if spec.integrity is None else _check_integrity(spec, where, base_dir)
    if isinstance(spec, NatsForwarderConfig):
        return integrity + _check_nats_forwarder(spec, where, base_dir)
    problems: list[ConfigProblem] = integrity
    _resolve_paths(spec, ("token_file", "signing_secret_file"), base_dir)
    _set(spec, "tls", spec.tls.model_copy())  # maybe the shared default, as above
    _resolve_paths(spec.tls, ("ca_file", "cert_file", "key_file"), base_dir)
    _read_secret(spec, "token_file", "token", f"{where}.tokenFile", problems)
    _read_secret(
        spec, "signing_secret_file", "signing_secret", f"{where}.signingSecretFile", problems
    )
    # The oauth2 client secret and the proxy password may be Secret mounts too.
    for section, file_field, field, key in (
        ("auth", "client_secret_file", "client_secret", "auth.clientSecretFile"),
        ("proxy", "password_file", "password", "proxy.passwordFile"),
    ):
        model = getattr(spec, section)
        if model is not None and getattr(model, file_field) is not None:
            _set(spec, section, model.model_copy())  # the auth section may be the shared default
            _resolve_paths(getattr(spec, section), (file_field,), base_dir)
            _read_secret(getattr(spec, section), file_field, field, f"{where}.{key}", problems)
    token_problem = check_token(spec)
    if token_problem:
        problems.append(ConfigProblem(f"{where}.token", token_problem))
    if spec.signing_secret is not None:
        secret_problem = check_secret(spec.signing_secret.get_secret_value())
        if secret_problem:
            key = "signingSecretFile" if spec.signing_secret_file is not None else "signingSecret"
            problems.append(ConfigProblem(f"{where}.{key}", secret_problem))
    tls = spec.tls
    # The transport module brings aiohttp (~120 ms): imported only when there are
    # TLS files to load or an address to judge, so a plain check-config stays fast.
    if tls.ca_file is not None or tls.cert_file is not None or tls.insecure_skip_verify:
        from forwarder.destinations.webhook.transport import check_tls

        tls_problem = check_tls(tls)
        if tls_problem:
            problems.append(ConfigProblem(f"{where}.tls", tls_problem))
    if spec.template is not None:
        problems += template_problems(spec.template, where)
    host = urlsplit(spec.uri).hostname or ""
    if spec.deny_private_networks and _is_ip(host) and _is_private(host):
        problems.append(
            ConfigProblem(
                f"{where}.uri",
                f"{host} is a private address and denyPrivateNetworks is true",
            )
        )
    return problems


def _check_nats_forwarder(
    spec: NatsForwarderConfig, where: str, base_dir: Path | None
) -> list[ConfigProblem]:
    """A NATS forwarder's files: secrets read, the seed, credentials and TLS files readable."""
    problems: list[ConfigProblem] = []
    _resolve_paths(
        spec, ("token_file", "password_file", "nkey_seed_file", "credentials_file"), base_dir
    )
    _set(spec, "tls", spec.tls.model_copy())  # maybe the shared default
    _resolve_paths(spec.tls, ("ca_file", "cert_file", "key_file"), base_dir)
    _read_secret(spec, "token_file", "token", f"{where}.tokenFile", problems)
    _read_secret(spec, "password_file", "password", f"{where}.passwordFile", problems)
    # Read again when connecting (a rotated file is used then); read here to fail early.
    for field, key in (("nkey_seed_file", "nkeySeedFile"), ("credentials_file", "credentialsFile")):
        path = getattr(spec, field)
        secret = None if path is None else _read_secret_file(path, f"{where}.{key}", problems)
        problem = None
        if secret is not None and field == "nkey_seed_file":
            problem = seed_problem(secret.get_secret_value())
        elif secret is not None and "BEGIN USER NKEY SEED" not in secret.get_secret_value():
            problem = "the file is not a NATS credentials file (no user NKey seed in it)"
        if problem is not None:
            problems.append(ConfigProblem(f"{where}.{key}", problem))
    for field in ("ca_file", "cert_file", "key_file"):
        path = getattr(spec.tls, field)
        if path is not None and not os.access(path, os.R_OK):
            problems.append(ConfigProblem(f"{where}.tls.{to_camel(field)}", f"cannot read {path}"))
    return problems


def _check_integrity(
    spec: AnyForwarderConfig, where: str, base_dir: Path | None
) -> list[ConfigProblem]:
    """Read ``integrity.signingKeyFile``; check the key can sign (never quoting it)."""
    problems: list[ConfigProblem] = []
    assert spec.integrity is not None
    _set(spec, "integrity", spec.integrity.model_copy())
    integrity = spec.integrity
    _resolve_paths(integrity, ("signing_key_file",), base_dir)
    key = "signingKeyFile" if integrity.signing_key_file is not None else "signingKey"
    _read_secret(integrity, "signing_key_file", "signing_key", f"{where}.integrity.{key}", problems)
    problem = None if problems else integrity.key_problem()
    if problem:
        problems.append(ConfigProblem(f"{where}.integrity.{key}", problem))
    return problems


def _is_private(host: str) -> bool:
    from forwarder.destinations.webhook.transport import is_private  # see check_forwarder

    return is_private(host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
