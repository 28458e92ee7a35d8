"""Every query of the Grafana dashboard, run by a real Prometheus that scraped a real daemon.

The daemon has three forwarders: ``ok`` (its receiver answers 200), ``bad``
(400: every event is dead-lettered) and ``down`` (503: retried, so events stay
pending). After real traffic (TCP and the Unix socket, a duplicate id, a
malformed body, a SIGHUP reload), each panel's PromQL is sent to Prometheus's
query API with the dashboard's variables replaced the way Grafana would
(``$__rate_interval`` by ``1m``, "All" by ``.*``, constants by the values the
chart would set), and must parse and return data. The same queries with one
forwarder selected must return only that forwarder, and with a namespace, pod
or instance that does not exist must return nothing: every panel honours
every filter.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Reply,
    daemon_config,
    forwarder_config,
    free_port,
    post_events,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "audit-forwarder.json"
MAX_BYTES = 64 * 1024 * 1024
MakeDaemon = Callable[..., DaemonProcess]
# What every query is filtered by; each is set to a value nothing carries in turn.
SCOPES = ("namespace", "pod", "instance")


class Prometheus:
    """A real Prometheus server scraping one target every second, and its query API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    async def query(self, promql: str) -> dict[str, Any]:
        """Run an instant query; return the whole answer (status, data or error)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params={"query": promql}) as response,
        ):
            answer: dict[str, Any] = await response.json()
            return answer

    async def series(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of a query, asserting that Prometheus accepted it."""
        answer = await self.query(promql)
        assert answer["status"] == "success", f"{promql}\n{answer}"
        assert answer["data"]["resultType"] == "vector", promql
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    async def ready(self) -> bool:
        """True once the query API answers."""
        try:
            return (await self.query("vector(1)"))["status"] == "success"
        except aiohttp.ClientError:
            return False


@pytest.fixture
async def prometheus_for(tmp_path: Path) -> AsyncIterator[Callable[[str], Prometheus]]:
    """Start Prometheus servers scraping a target (host:port) every second; stopped at teardown."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs the Debian package"
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "audit-forwarder", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return Prometheus(f"http://127.0.0.1:{port}", process)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def dashboard() -> dict[str, Any]:
    """The dashboard at its stable path."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """The query as Grafana sends it: every ``$variable`` replaced (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"an unknown variable is left in {expr}"
    return expr


def variables(board: dict[str, Any], **chosen: str) -> dict[str, str]:
    """Grafana's substitutions: ``1m`` rate interval, "All" (``.*``), constants, ``chosen``."""
    values = {"__rate_interval": "1m"}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]
        elif variable["type"] == "constant":
            values[variable["name"]] = variable["query"]
    values["max_bytes"] = str(MAX_BYTES)  # what the chart sets from config.buffer.maxBytes
    return {**values, **chosen}


def is_constant_line(expr: str) -> bool:
    """A threshold drawn from a dashboard constant: it reads no metric."""
    return expr.startswith("vector(")


def by_forwarder(result: list[dict[str, Any]]) -> dict[str, float]:
    """A result vector's values by their forwarder label."""
    return {series["metric"]["forwarder"]: float(series["value"][1]) for series in result}


async def test_every_panel_query_returns_data_from_a_real_prometheus(
    tmp_path: Path,
    make_receiver: ReceiverFactory,
    daemons: MakeDaemon,
    prometheus_for: Callable[[str], Prometheus],
) -> None:
    """Each panel's PromQL parses and returns data, follows $forwarder and every scope filter."""
    ok, bad, down = [await make_receiver() for _ in range(3)]
    bad.default = Reply(400, body=b'{"error": "schema"}')
    down.default = Reply(503)
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{ok.url}in", name="ok"),
            forwarder_config(f"{bad.url}in", name="bad"),
            forwarder_config(f"{down.url}in", name="down"),
        ],
        buffer={"maxBytes": MAX_BYTES},
        # Two processes, so the per-process panels have a series for each.
        delivery={"process": "separate"},
    )
    daemon = await daemons(config).start()
    instance = daemon.metrics_url.removeprefix("http://")
    prometheus = prometheus_for(instance)
    await wait_for(prometheus.ready, timeout=60, message="Prometheus's query API")
    # A first scrape before any traffic, so that every rate has a sample to rise from.
    await wait_for(
        lambda: prometheus.series('up{job="audit-forwarder"} == 1'),
        timeout=60,
        message="a first scrape",
    )

    for n in range(4):
        assert (await post_events(daemon.ingest_url, json.dumps({"n": n})))[0] == 202
    status, _, _ = await post_events(
        "", '{"id": "evt-dup", "n": 4}', socket_path=daemon.socket_path
    )
    assert status == 202
    _, answer, _ = await post_events(daemon.ingest_url, '{"id": "evt-dup", "n": 4}')
    assert answer["duplicates"] == 1
    assert (await post_events(daemon.ingest_url, "{nope"))[0] == 400
    daemon.signal(signal.SIGHUP)
    await wait_for(lambda: len(ok.delivered) == 5, message="5 deliveries at ok")
    await wait_for(lambda: len(down.attempts) >= 2, message="retries at down")

    async def scraped_after_traffic() -> bool:
        settled = (
            'audit_forwarder_events_dead_lettered_total{forwarder="bad"} == 5'
            ' and on () audit_forwarder_config_reloads_total{result="success"} == 1'
            # Attempt series are born with their first attempt: rate() needs a second sample.
            " and on () min(count_over_time(audit_forwarder_delivery_attempts_total[1m])) >= 2"
        )
        return bool(await prometheus.series(settled))

    await wait_for(scraped_after_traffic, timeout=60, message="the traffic in Prometheus")

    board = dashboard()
    everything = variables(board, instance=instance)
    answers: dict[str, list[dict[str, Any]]] = {}
    for title, expr in targets(board):
        result = await prometheus.series(substitute(expr, everything))
        assert result, f"{title}: no data for {substitute(expr, everything)}"
        answers[expr] = result

    # Every panel follows the forwarder picked, and each scope filter.
    only_bad = variables(board, instance=instance, forwarder="bad")
    for title, expr in targets(board):
        if "$forwarder" in expr:
            result = await prometheus.series(substitute(expr, only_bad))
            assert result, f"{title}: no data for forwarder bad"
            assert {s["metric"]["forwarder"] for s in result} == {"bad"}, title
    for scope in SCOPES:
        nowhere = variables(board, **{"instance": instance, scope: "nowhere"})
        for title, expr in targets(board):
            if not is_constant_line(expr):
                result = await prometheus.series(substitute(expr, nowhere))
                assert result == [], f"{title} ignores ${scope}: {expr}"

    # The values say what happened.
    def answer_of(start: str) -> list[dict[str, Any]]:
        (expr,) = [e for e in answers if e.startswith(start)]
        return answers[expr]

    delivered = by_forwarder(answer_of("sum by (forwarder) (rate(audit_forwarder_events_delivered"))
    assert delivered["ok"] > 0
    assert delivered["bad"] == delivered["down"] == 0
    dead = by_forwarder(answer_of("sum by (forwarder) (rate(audit_forwarder_events_dead"))
    assert dead["bad"] > 0
    assert dead["ok"] == 0
    pending = by_forwarder(answer_of("sum by (forwarder) (audit_forwarder_pending_events"))
    assert pending == {"ok": 0, "bad": 0, "down": 5}
    oldest = by_forwarder(answer_of("max by (forwarder) (audit_forwarder_oldest_pending_age"))
    assert oldest["down"] > 0
    assert oldest["ok"] == 0
    since = by_forwarder(answer_of("max by (forwarder) (time() - audit_forwarder_last_success"))
    assert 0 <= since["ok"] < 600
    assert since["bad"] > 1e8  # never: the panel maps it to "never"
    attempts = {
        (s["metric"]["forwarder"], s["metric"]["outcome"], s["metric"]["code"])
        for s in answer_of("sum by (forwarder, outcome, code)")
    }
    assert {("ok", "success", "200"), ("bad", "dead_letter", "400"), ("down", "retry", "503")} <= (
        attempts
    )
    ingest_to_delivery = (
        "histogram_quantile(0.99, sum by (forwarder, le) (rate(audit_forwarder_ingest"
    )
    p99 = by_forwarder(answer_of(ingest_to_delivery))
    assert set(p99) == {"ok", "bad", "down"}
    assert math.isfinite(p99["ok"])
    received = {
        s["metric"]["transport"]
        for s in answer_of("sum by (transport) (rate(audit_forwarder_events_received")
    }
    assert received == {"http", "unix"}
    duplicates = {
        s["metric"]["transport"]: float(s["value"][1])
        for s in answer_of("sum by (transport) (rate(audit_forwarder_events_duplicate")
    }
    assert duplicates["http"] > 0
    rejected = {s["metric"]["reason"]: float(s["value"][1]) for s in answer_of("sum by (reason)")}
    assert rejected["malformed"] > 0
    reloads = {s["metric"]["result"]: float(s["value"][1]) for s in answer_of("sum by (result)")}
    assert reloads["success"] > 0
    limit_line = answer_of("vector($max_bytes) > 0")
    assert float(limit_line[0]["value"][1]) == MAX_BYTES
    held = {s["metric"]["kind"] for s in answer_of("max by (kind)")}
    assert held == {"pending_events", "dead_letters", "history"}
    cpu = {s["metric"].get("process") for s in answer_of("rate(process_cpu_seconds_total")}
    assert cpu == {"daemon", "delivery"}
    memory = answer_of("sum without (process) (process_resident_memory_bytes")
    assert len(memory) == 1
    assert float(memory[0]["value"][1]) > 10 * 1024 * 1024
    assert await daemon.terminate() == 0


async def test_the_template_variables_list_what_prometheus_holds(
    tmp_path: Path,
    make_receiver: ReceiverFactory,
    daemons: MakeDaemon,
    prometheus_for: Callable[[str], Prometheus],
) -> None:
    """Each variable's label_values() query, run as PromQL, lists the real forwarders and target."""
    receiver = await make_receiver()
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{receiver.url}in", name="siem"),
            forwarder_config(f"{receiver.url}archive", name="archive"),
        ],
    )
    daemon = await daemons(config).start()
    instance = daemon.metrics_url.removeprefix("http://")
    prometheus = prometheus_for(instance)
    await wait_for(prometheus.ready, timeout=60, message="Prometheus's query API")
    board = dashboard()
    everything = variables(board)
    found: dict[str, set[str]] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match, variable["query"]
        metric, label = substitute(match[1], everything), match[2]

        async def values(metric: str = metric, label: str = label) -> set[str] | None:
            result = await prometheus.series(f"group by ({label}) ({metric})")
            return {s["metric"].get(label, "") for s in result} or None

        found[variable["name"]] = await wait_for(
            values, timeout=60, message=f"values of ${variable['name']}"
        )
    # No Kubernetes here: namespace and pod are absent, so "All" (.*) is what matches.
    assert found == {
        "namespace": {""},
        "pod": {""},
        "instance": {instance},
        "forwarder": {"siem", "archive"},
    }
    assert await daemon.terminate() == 0
