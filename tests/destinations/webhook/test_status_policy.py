"""statusPolicy: validated when the configuration is loaded, applied where answers are classified.

Validation is exercised through ``load_config`` on real YAML files, so the
problems are checked as an operator reads them (YAML path and message).
Classification is exercised through ``send_request`` against a real aiohttp
receiver on loopback answering the status under test.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.config.loading import load_config
from forwarder.destinations.webhook.options import StatusPolicy
from forwarder.destinations.webhook.sending import (
    OutgoingRequest,
    RejectedContentError,
    Response,
    send_request,
)
from forwarder.errors import ConfigError, PermanentDeliveryError, RetryableDeliveryError
from tests.support import Reply, ScriptedReceiver

PATH = "auditLogForwarders[0].statusPolicy"


def config_with(policy: str) -> str:
    """A configuration whose only forwarder has ``statusPolicy: <policy>`` (YAML flow style)."""
    return textwrap.dedent(
        f"""\
        auditLogForwarders:
          - kind: webhook
            uri: https://receiver.example/in
            statusPolicy: {policy}
        """
    )


def load_policy(tmp_path: Path, policy: str) -> StatusPolicy:
    """The statusPolicy of the forwarder, loaded from a real file."""
    path = tmp_path / "config.yaml"
    path.write_text(config_with(policy), encoding="utf-8")
    return load_config(path).audit_log_forwarders[0].status_policy


def problems(tmp_path: Path, policy: str) -> list[str]:
    """The problems ``load_config`` reports for the policy, as ``path: message``."""
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path, policy)
    return [str(problem) for problem in caught.value.problems]


# -- validation --------------------------------------------------------------------------


def test_codes_and_ranges_load_normalised(tmp_path: Path) -> None:
    """Codes may be numbers or digit strings, ranges any case; they load as ints and "Nxx"."""
    policy = load_policy(
        tmp_path, "{retry: ['4XX', '503'], deadLetter: [404, 5xx], success: [409, 2xx]}"
    )

    assert policy.retry == ["4xx", 503]
    assert policy.dead_letter == [404, "5xx"]
    assert policy.success == [409, "2xx"]


def test_no_policy_names_no_status(tmp_path: Path) -> None:
    """Without statusPolicy every status is left to the built-in classification."""
    policy = load_policy(tmp_path, "{}")

    assert [policy.verdict(status) for status in (200, 302, 400, 404, 429, 503)] == [None] * 6


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (
            "{retry: [abc]}",
            f"{PATH}.retry[0]: 'abc' is not a status code (100-599) or a range"
            " (2xx, 3xx, 4xx, 5xx)",
        ),
        (
            "{retry: [6xx]}",
            f"{PATH}.retry[0]: '6xx' is not a status code (100-599) or a range"
            " (2xx, 3xx, 4xx, 5xx)",
        ),
        (
            "{success: [1xx]}",
            f"{PATH}.success[0]: '1xx' is not a status code (100-599) or a range"
            " (2xx, 3xx, 4xx, 5xx)",
        ),
        (
            "{deadLetter: [true]}",
            f"{PATH}.deadLetter[0]: true is not a status code (100-599) or a range"
            " (2xx, 3xx, 4xx, 5xx)",
        ),
        (
            "{retry: [503.5]}",
            f"{PATH}.retry[0]: 503.5 is not a status code (100-599) or a range"
            " (2xx, 3xx, 4xx, 5xx)",
        ),
        ("{retry: [600]}", f"{PATH}.retry[0]: 600 is not a status code: codes are 100-599"),
        ("{success: [99]}", f"{PATH}.success[0]: 99 is not a status code: codes are 100-599"),
        ("{retry: 503}", f"{PATH}.retry: input should be a valid list"),
        ("{deadLetters: [503]}", f"{PATH}.deadLetters: unknown key (did you mean deadLetter?)"),
    ],
)
def test_bad_entries_are_problems_at_their_yaml_path(
    tmp_path: Path, policy: str, problem: str
) -> None:
    """A bad string, an out-of-range code, a wrong type or key is refused where it is written."""
    assert problems(tmp_path, policy) == [problem]


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ("{retry: [503], deadLetter: ['503']}", "503 is in both retry and deadLetter"),
        ("{deadLetter: [4xx], success: [4XX]}", "4xx is in both deadLetter and success"),
        ("{retry: [409], success: [409]}", "409 is in both retry and success"),
    ],
)
def test_a_status_in_two_lists_is_refused(tmp_path: Path, policy: str, problem: str) -> None:
    """The same code, or the same range, cannot have two outcomes."""
    assert problems(tmp_path, policy) == [f"{PATH}: {problem}: a status can have one outcome"]


def test_an_over_long_value_is_not_echoed_whole(tmp_path: Path) -> None:
    """A hostile value is shown shortened in the problem, never whole."""
    (problem,) = problems(tmp_path, "{retry: [" + "x" * 5000 + "]}")

    assert problem.startswith(f"{PATH}.retry[0]: 'xxx")
    assert len(problem) < 200


# -- precedence --------------------------------------------------------------------------


def test_an_explicit_code_beats_a_range_in_another_list() -> None:
    """retry: [4xx] with deadLetter: [404]: 404 dead-letters, other 4xx retry, the rest is unset."""
    policy = StatusPolicy.model_validate({"retry": ["4xx"], "deadLetter": [404], "success": [503]})

    verdicts = {status: policy.verdict(status) for status in (400, 404, 418, 500, 503, 200)}
    assert verdicts == {
        400: "retry",
        404: "dead_letter",
        418: "retry",
        500: None,
        503: "success",
        200: None,
    }


# -- classification of real answers -------------------------------------------------------


async def answer(
    receiver: ScriptedReceiver, reply: Reply, policy: dict[str, Any] | None = None
) -> Response | BaseException:
    """What ``send_request`` makes of ``reply`` under ``policy``: the Response or the error."""
    receiver.respond(reply)
    request = OutgoingRequest("POST", receiver.url + "in", {}, b"[]")
    async with aiohttp.ClientSession() as session:
        try:
            return await send_request(
                session, request, 5, (), StatusPolicy.model_validate(policy or {})
            )
        except (RetryableDeliveryError, PermanentDeliveryError) as exc:
            return exc


@pytest.mark.parametrize("status", [400, 409, 413, 422])
async def test_content_refusals_are_split_by_default(
    receiver: ScriptedReceiver, status: int
) -> None:
    """Without a policy, 400/409/413/422 raise RejectedContentError: the worker bisects."""
    result = await answer(receiver, Reply(status))

    assert isinstance(result, RejectedContentError)
    assert (result.code, result.message) == (str(status), f"HTTP {status}")


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407, 410, 415, 302])
async def test_request_refusals_are_permanent_without_splitting(
    receiver: ScriptedReceiver, status: int
) -> None:
    """Auth, URL, method, media type and redirects refuse the request as such: no split."""
    result = await answer(receiver, Reply(status))

    assert isinstance(result, PermanentDeliveryError)
    assert not isinstance(result, RejectedContentError)


async def test_policy_retry_retries_a_4xx_with_its_retry_after(receiver: ScriptedReceiver) -> None:
    """retry: [400] makes a 400 retryable, carrying the receiver's Retry-After."""
    result = await answer(
        receiver, Reply(400, headers={"Retry-After": "7"}, body=b"later"), {"retry": [400]}
    )

    assert isinstance(result, RetryableDeliveryError)
    assert (result.code, result.retry_after, result.body) == ("400", 7.0, b"later")
    assert result.message == "HTTP 400 (statusPolicy)"


@pytest.mark.parametrize(("status", "policy"), [(503, [503]), (400, [400]), (502, ["5xx"])])
async def test_policy_dead_letter_is_permanent_and_never_split(
    receiver: ScriptedReceiver, status: int, policy: list[Any]
) -> None:
    """deadLetter turns a 5xx permanent, and a 400 permanent without splitting."""
    result = await answer(receiver, Reply(status), {"deadLetter": policy})

    assert isinstance(result, PermanentDeliveryError)
    assert not isinstance(result, RejectedContentError)
    assert result.message == f"HTTP {status} (statusPolicy)"


async def test_policy_success_returns_a_4xx_as_delivered(receiver: ScriptedReceiver) -> None:
    """success: [404] returns the 404 as a Response, the way a 2xx is returned."""
    result = await answer(receiver, Reply(404, body=b"gone"), {"success": [404]})

    assert isinstance(result, Response)
    assert (result.status, result.body) == (404, b"gone")


async def test_policy_can_refuse_a_2xx(receiver: ScriptedReceiver) -> None:
    """retry: [202] overrides the default too: a 202 is retried instead of delivered."""
    result = await answer(receiver, Reply(202), {"retry": [202]})

    assert isinstance(result, RetryableDeliveryError)
    assert result.code == "202"
