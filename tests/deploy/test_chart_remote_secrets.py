"""How the chart stores the remote-endpoint secrets: client secret, proxy password, rotation.

Each goes into the chart's Secret and reaches the daemon as a ``*File`` key,
never as a value in the ConfigMap; the rendered pod is then checked by the
real ``check-config``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import helm_python as helm

from tests.deploy.chart_support import (
    SECRETS_DIR,
    daemon_accepts,
    daemon_config,
    one,
    render,
    schema_error,
    with_forwarder,
)

CLIENT_SECRET = "chart-client-secret-0123456789"
PROXY_PASSWORD = "chart-proxy-password-0123"
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()


def test_client_secret_proxy_password_and_rotation_go_to_the_secret(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """clientSecret, proxy.password and a secret list become Secret files check-config reads."""
    values = with_forwarder(
        auth={
            "type": "oauth2",
            "tokenUrl": "https://login.microsoftonline.com/tenant/oauth2/v2.0/token",
            "clientId": "app",
            "clientSecret": CLIENT_SECRET,
            "scopes": ["https://monitor.azure.com//.default"],
        },
        proxy={"url": "http://proxy.corp:3128", "username": "svc", "password": PROXY_PASSWORD},
        signingSecret=[OLD, NEW],
    )
    objects = render(chart, values)
    secret = {
        key: base64.b64decode(value).decode()
        for key, value in one(objects, "Secret")["data"].items()
    }
    assert secret["forwarder-0-client-secret"] == CLIENT_SECRET
    assert secret["forwarder-0-proxy-password"] == PROXY_PASSWORD
    assert secret["forwarder-0-signing-secret"] == f"{OLD}\n{NEW}"
    forwarder = daemon_config(objects)["auditLogForwarders"][0]
    assert forwarder["auth"]["clientSecretFile"] == f"{SECRETS_DIR}/forwarder-0-client-secret"
    assert "clientSecret" not in forwarder["auth"]
    assert forwarder["proxy"] == {
        "url": "http://proxy.corp:3128",
        "username": "svc",
        "passwordFile": f"{SECRETS_DIR}/forwarder-0-proxy-password",
    }
    config_map = str(one(objects, "ConfigMap"))
    for value in (CLIENT_SECRET, PROXY_PASSWORD, OLD, NEW):
        assert value not in config_map
    assert "OK (1 forwarder(s): webhook-0)" in daemon_accepts(objects, tmp_path)


def test_schema_refuses_an_empty_secret_list_and_a_proxy_without_url(chart: helm.Chart) -> None:
    """An empty signingSecret list and a proxy with no url fail the values schema."""
    assert "signingSecret" in schema_error(chart, with_forwarder(signingSecret=[]))
    assert "url" in schema_error(chart, with_forwarder(proxy={"username": "svc"}))
