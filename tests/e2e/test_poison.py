"""End to end: poison events and statusPolicy through the real daemon and real receivers.

The ``audit-forwarder`` process ingests real requests; two loopback receivers
refuse every batch that carries a poison event with 400. One forwarder uses
the default rule (bisect until the refused events are alone), the other has
``statusPolicy: {deadLetter: [400]}`` (give up on the whole batch), so the
same input shows both behaviours; dead letters are read back with the real
``dead-letters list`` command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Received,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
POISON = frozenset({3, 27, 28, 64, 99})


async def refuse_poison(request: web.Request) -> Reply:
    """400 naming the first poison event of a batch, else 200."""
    numbers = [e["n"] for e in json.loads(await request.read()) if e.get("poison")]
    return Reply(400, body=f"refused n={numbers[0]}".encode()) if numbers else Reply(200)


async def dead_letters(config_path: Path, forwarder: str, expected: int) -> Any:
    """The dead letters of ``forwarder`` (oldest first) once there are ``expected``, else None."""
    code, out, err = await run_cli(
        "dead-letters", "list", "--config", str(config_path), "--forwarder", forwarder,
        "--limit", "1000", "--json",
    )  # fmt: skip
    assert code == 0, err
    entries = list(reversed(json.loads(out)["dead_letters"]))
    return entries if len(entries) == expected else None


def numbers(requests: list[Received]) -> list[int]:
    """The ``n`` of every event in ``requests``, in order."""
    return [e["n"] for request in requests for e in request.json()]


async def test_poison_events_alone_are_dead_lettered_unless_the_policy_says_give_up(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """By default only the 5 poison events are dead letters; deadLetter: [400] drops batches."""
    siem, strict = await make_receiver(), await make_receiver()
    siem.decide = strict.decide = refuse_poison
    batch = {"maxEvents": 20, "maxWaitMs": 200}
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{siem.url}in", name="siem", batch=batch),
            forwarder_config(
                f"{strict.url}in", name="strict", batch=batch, statusPolicy={"deadLetter": [400]}
            ),
        ],
    )
    daemon = await daemons(config).start()
    events = [{"id": f"evt-{n}", "n": n} for n in range(100)]
    for n in POISON:
        events[n]["poison"] = True
    body = "\n".join(json.dumps(e) for e in events)
    assert (await post_events(daemon.ingest_url, body, "application/x-ndjson"))[0] == 202

    await wait_for(lambda: len(numbers(siem.delivered)) == 95, message="95 events at siem")
    siem_dead = await wait_for(lambda: dead_letters(daemon.config_path, "siem", 5))
    await wait_for(lambda: len(numbers(strict.attempts)) == 100, message="100 events at strict")
    accepted = {id(request) for request in strict.delivered}
    refused = sorted(numbers([r for r in strict.attempts if id(r) not in accepted]))
    strict_dead = await wait_for(lambda: dead_letters(daemon.config_path, "strict", len(refused)))

    assert numbers(siem.delivered) == [n for n in range(100) if n not in POISON]
    assert [(d["event_id"], d["status"], d["response_body"]) for d in siem_dead] == [
        (f"evt-{n}", 400, f"refused n={n}") for n in sorted(POISON)
    ]
    # strict: each refused batch is dead-lettered whole, after one request: nothing sent twice.
    assert sorted(numbers(strict.attempts)) == list(range(100))
    assert set(refused) > POISON  # whole batches, not just the poison events
    assert [d["event_id"] for d in strict_dead] == [f"evt-{n}" for n in refused]
    assert {d["reason"] for d in strict_dead} == {"HTTP 400 (statusPolicy)"}
    assert numbers(strict.delivered) == [n for n in range(100) if n not in refused]
    assert await daemon.terminate() == 0


async def test_check_config_refuses_a_status_policy_that_gives_a_code_two_outcomes(
    tmp_path: Path,
) -> None:
    """check-config exits 2 and names the conflicting code and the bad range, with YAML paths."""
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(
                "https://receiver.example/in",
                name="siem",
                statusPolicy={"retry": [503, "9xx"], "deadLetter": [503]},
            )
        ],
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    code, _, err = await run_cli("check-config", "--config", str(path))

    assert code == 2
    assert "auditLogForwarders[0].statusPolicy.retry[1]: '9xx' is not a status code" in err
    # The conflict is checked once every entry is valid: fix the range and it is reported.
    config["auditLogForwarders"][0]["statusPolicy"]["retry"] = [503]
    path.write_text(yaml.safe_dump(config))
    code, _, err = await run_cli("check-config", "--config", str(path))
    assert code == 2
    assert "auditLogForwarders[0].statusPolicy: 503 is in both retry and deadLetter" in err


async def test_policy_success_holds_for_deliveries_and_the_test_command(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """success: [404] counts a 404 as delivered, and `audit-forwarder test` reports it as ok."""
    receiver.default = Reply(404, body=b"not here")
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem", statusPolicy={"success": [404]})],
    )
    daemon = await daemons(config).start()
    conf = str(daemon.config_path)

    code, out, err = await run_cli("test", "siem", "--config", conf, "--json")
    assert code == 0, err
    invocation = json.loads(out)
    assert (invocation["ok"], invocation["response"]["status"]) == (True, 404)

    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202

    async def delivered() -> bool:
        code, out, _ = await run_cli("status", "--config", conf, "--json")
        (siem,) = json.loads(out)["forwarders"]
        return code == 0 and siem["pending"] == 0 and siem["last_success_at"] is not None

    await wait_for(delivered, message="the 404 counted as a success")
    assert len(receiver.attempts) == 2  # the test event, then the event: no retry
    assert await dead_letters(daemon.config_path, "siem", 0) == []
    assert await daemon.terminate() == 0
