"""The admin API's input handling, through the real aiohttp app on a real buffer file.

Fixtures are in ``conftest.py``; the checks that keep web pages out are in
``test_admin_browser.py``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request

from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER
from forwarder.buffer.history import INSERT_ATTEMPT, pack_event_ids
from forwarder.buffer.store import EventBuffer
from forwarder.delivery.forwarders import describe_request
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.requests import RequestBuilder
from forwarder.ops.admin import ADMIN_KEY, _is_local
from forwarder.secrets import masker
from tests.ops.conftest import Client
from tests.support import stored_events

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "malformed JSON"),
        (b"[]", "expected"),
        (b'"siem"', "expected"),
        (b'{"forwarder": 5}', "forwarder must be a string"),
        (b'{"ids": "e-1"}', "ids must be a list of strings"),
        (b'{"ids": [1, 2]}', "ids must be a list of strings"),
        (b'{"all": "yes"}', "all must be true or false"),
        (b'{"evil": 1}', "expected"),
        (b'{"ids": [' + b",".join(b'"x"' for _ in range(501)) + b"]}", "at most 500"),
    ],
)
@pytest.mark.parametrize("action", ["replay", "purge"])
async def test_malformed_selections_are_400_and_change_nothing(
    client: Client, buffer: EventBuffer, action: str, body: bytes, message: str
) -> None:
    """A bad replay/purge selection is a JSON 400 and leaves every dead letter in place."""
    response = await client.post(f"/v1/dead-letters/{action}", data=body, headers=JSON)
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "malformed"
    assert message in payload["message"]
    assert (await buffer.query("SELECT count(*) FROM dead_letters"))[0][0] == 3


async def test_oversized_selection_is_413(client: Client) -> None:
    """A selection body over 64 KiB is refused before parsing."""
    response = await client.post("/v1/dead-letters/purge", data=b" " * 70_000, headers=JSON)
    assert response.status == 413


async def test_purge_without_a_selection_is_refused(client: Client, buffer: EventBuffer) -> None:
    """Purging needs a forwarder, ids or all: true; an empty body purges nothing."""
    response = await client.post("/v1/dead-letters/purge", headers=JSON)
    assert response.status == 400
    assert (await buffer.query("SELECT count(*) FROM dead_letters"))[0][0] == 3


async def test_purge_by_ids_and_by_forwarder(client: Client, buffer: EventBuffer) -> None:
    """Purge removes exactly the selected dead letters."""
    response = await client.post("/v1/dead-letters/purge", json={"ids": ["e-1", "e-404"]})
    assert await response.json() == {"purged": 1}
    response = await client.post("/v1/dead-letters/purge", json={"forwarder": "archive"})
    assert await response.json() == {"purged": 1}
    rows = await buffer.query("SELECT event_id FROM dead_letters")
    assert rows == [("e-2",)]


async def test_replay_requeues_for_that_forwarder_only(client: Client, buffer: EventBuffer) -> None:
    """Replay moves dead letters back as events for their own forwarder, atomically."""
    response = await client.post("/v1/dead-letters/replay", json={"forwarder": "siem"})
    assert await response.json() == {"replayed": 2, "skipped_unknown_forwarder": 0}
    events = [(e.event_id, e.only_forwarder, e.body) for e in stored_events(buffer.path)]
    assert events == [("e-1", "siem", b'{"n":1}'), ("e-2", "siem", b'{"n":2}')]
    listed = await (await client.get("/v1/dead-letters")).json()
    assert listed["total"] == 1
    assert listed["dead_letters"][0]["event_id"] == "e-3"


async def test_replay_to_an_unknown_forwarder_is_404(client: Client) -> None:
    """Naming a forwarder that does not exist is a 404, not a silent no-op."""
    response = await client.post("/v1/dead-letters/replay", json={"forwarder": "nope"})
    assert response.status == 404


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten", "limit=-1"])
async def test_bad_limits_are_400(client: Client, query: str) -> None:
    """History and dead-letter limits outside 1..1000 are refused."""
    for path in ("/v1/dead-letters", "/v1/forwarders/siem/deliveries"):
        response = await client.get(f"{path}?{query}")
        assert response.status == 400


async def test_unknown_forwarder_paths_are_404(client: Client) -> None:
    """History and test button of an unknown forwarder answer 404 JSON."""
    for method, path in (
        ("GET", "/v1/forwarders/nope/deliveries"),
        ("POST", "/v1/forwarders/nope/test"),
        ("GET", "/v1/forwarders/..%2F..%2Fetc/deliveries"),
    ):
        response = await client.request(method, path, headers=JSON)
        assert response.status == 404
        assert (await response.json())["error"] in ("unknown_forwarder", "not_found")


@pytest.mark.parametrize(
    ("peer", "transport", "local"),
    [
        (("127.0.0.1", 5000), "http", True),
        (("::1", 5000, 0, 0), "http", True),
        (("10.1.2.3", 5000), "http", False),
        (("192.0.2.7", 5000), "http", False),
        ("", "unix", True),
    ],
)
def test_admin_answers_loopback_and_unix_socket_only(
    peer: Any, transport: str, local: bool
) -> None:
    """Requests from other hosts are not local; the Unix socket always is."""

    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return peer if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    request = make_mocked_request("GET", "/v1/forwarders", transport=Transport())
    assert _is_local(request, transport) is local


def test_invocation_data_masks_the_token_in_a_custom_auth_header() -> None:
    """The test button's request shows no token, whatever header auth puts it in."""
    spec = WebhookForwarderConfig(
        kind="webhook",
        uri="https://x.example/in",
        token="H-SECRET",
        auth={"type": "header", "header": "X-Custom-Key"},
    )
    builder = RequestBuilder(spec)
    shown = describe_request(builder.build([], 0.0).request, builder.display_url, "X-Custom-Key")
    assert shown["headers"]["X-Custom-Key"] == "***"
    assert "H-SECRET" not in str(shown)


async def test_rows_stored_unmasked_are_masked_on_the_way_out(
    client: Client, buffer: EventBuffer
) -> None:
    """History and dead letters stored unmasked (an older build, a newer secret) never show it."""
    secret = "OLD/ROW+SECRET=1"
    await buffer.execute(
        [
            (
                INSERT_ATTEMPT,
                [
                    (
                        "siem",
                        3.0,
                        1,
                        1,
                        pack_event_ids(["e-1"]),
                        "dead_letter",
                        "401",
                        401,
                        1.0,
                        f"bad {secret}",
                        f"echo {secret}".encode(),
                    )
                ],
            ),
            (
                INSERT_DEAD_LETTER,
                [
                    (
                        "siem",
                        9,
                        "e-9",
                        "a",
                        1.0,
                        2.0,
                        401,
                        "401",
                        f"HTTP 401 {secret}",
                        quote(secret, safe="").encode(),
                        b'{"n":9}',
                    )
                ],
            ),
        ]
    )
    masker.update([secret])
    try:
        deliveries = await (await client.get("/v1/forwarders/siem/deliveries")).text()
        letters = await (await client.get("/v1/dead-letters?forwarder=siem")).text()
    finally:
        masker.update([])
    for answer in (deliveries, letters):
        assert "SECRET" not in answer
        assert "***" in answer
    assert '"e-9"' in letters


async def test_replay_by_ids_names_the_ids_that_matched_nothing(
    client: Client, buffer: EventBuffer
) -> None:
    """Ids that match no dead letter (of that forwarder) come back as not_found, in order."""
    response = await client.post(
        "/v1/dead-letters/replay", json={"forwarder": "siem", "ids": ["e-404", "e-1", "e-3"]}
    )
    assert await response.json() == {
        "replayed": 1,
        "skipped_unknown_forwarder": 0,
        "not_found": ["e-404", "e-3"],  # e-3 is archive's, not siem's
    }
    assert (await buffer.query("SELECT count(*) FROM dead_letters"))[0][0] == 2


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/forwarders/nope/deliveries", None),
        ("POST", "/v1/forwarders/nope/test", None),
        ("GET", "/v1/dead-letters?forwarder=nope", None),
        ("POST", "/v1/dead-letters/replay", {"forwarder": "nope"}),
        ("POST", "/v1/dead-letters/purge", {"forwarder": "nope"}),
    ],
    ids=["deliveries", "test", "list", "replay", "purge"],
)
async def test_an_unknown_forwarder_is_404_listing_the_known_ones(
    client: Client, buffer: EventBuffer, method: str, path: str, body: Any
) -> None:
    """Every call naming a forwarder that does not exist says which ones do."""
    response = await client.request(method, path, json=body, headers=JSON)
    assert response.status == 404
    assert await response.json() == {
        "error": "unknown_forwarder",
        "message": "no forwarder named 'nope'",
        "known_forwarders": ["siem", "archive"],
    }
    assert (await buffer.query("SELECT count(*) FROM dead_letters"))[0][0] == 3


async def test_dead_letters_of_a_removed_forwarder_can_still_be_listed_and_purged(
    client: Client, buffer: EventBuffer
) -> None:
    """A name that is no longer configured but still holds dead letters selects them."""
    row = ("gone", 7, "e-7", "a", 1.0, 2.0, 500, "500", "HTTP 500", b"", b"{}")
    await buffer.execute([(INSERT_DEAD_LETTER, [row])])

    listed = await (await client.get("/v1/dead-letters?forwarder=gone")).json()
    assert [d["event_id"] for d in listed["dead_letters"]] == ["e-7"]
    refused = await client.get("/v1/dead-letters?forwarder=nope")
    assert (await refused.json())["known_forwarders"] == ["siem", "archive", "gone"]
    purged = await client.post("/v1/dead-letters/purge", json={"forwarder": "gone"})
    assert await purged.json() == {"purged": 1}


RFC3339_UTC = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


async def test_every_time_is_rfc3339_utc_and_every_status_an_integer_or_null(
    client: Client, buffer: EventBuffer
) -> None:
    """Dead letters, deliveries and forwarder states share one time format and status type."""
    await buffer.execute(
        [
            (
                INSERT_ATTEMPT,
                [("siem", 1700000000.5, 1, 1, pack_event_ids(["e-1"]), "retry", "timeout",
                  None, 5.0, "timed out", b"")],
            )
        ]
    )  # fmt: skip
    worker = client.server.app[ADMIN_KEY].forwarders.workers["siem"]
    worker.status.last_attempt_at, worker.status.last_status = 1700000001.25, "503"
    worker.status.last_success_at = 1700000000.0

    letters = (await (await client.get("/v1/dead-letters")).json())["dead_letters"]
    deliveries = (await (await client.get("/v1/forwarders/siem/deliveries")).json())["deliveries"]
    states = {
        f["name"]: f for f in (await (await client.get("/v1/forwarders")).json())["forwarders"]
    }

    for letter in letters:
        assert re.match(RFC3339_UTC, letter["received_at"]), letter
        assert re.match(RFC3339_UTC, letter["dead_at"]), letter
        assert isinstance(letter["status"], int)
    assert letters[-1]["received_at"] == "1970-01-01T00:00:01.000Z"
    assert deliveries == [
        {**deliveries[0], "at": "2023-11-14T22:13:20.500Z", "status": None, "code": "timeout"}
    ]
    assert states["siem"]["last_attempt"] == {
        "at": "2023-11-14T22:13:21.250Z",
        "status": 503,
        "code": "503",
        "error": None,
    }
    assert states["siem"]["last_success_at"] == "2023-11-14T22:13:20.000Z"
    assert states["archive"]["last_attempt"] == {
        "at": None,
        "status": None,
        "code": None,
        "error": None,
    }
