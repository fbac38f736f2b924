"""``POST /publish`` with ``Idempotency-Key`` (memory backend, one gunicorn worker).

The same key with the same body within ``SSE_IDEMPOTENCY_SECONDS`` is the
same publish: the first call's 202 answer again, nothing published twice. The
same key with another body is refused (422); a key that is not 1-255 visible
ASCII characters is refused (400). The Redis case, across two workers, is in
redis/test_operations_across_workers.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import HubLauncher, HubServer, HubStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(SSE_HEARTBEAT_SECONDS=1)


def publish_with_key(hub: HubServer, body: Any, key: str) -> tuple[int, bytes]:
    status, _, answer = hub.request(
        "POST", "/publish", json.dumps(body).encode(),
        {"Content-Type": "application/json", "Idempotency-Key": key},
    )
    return status, answer


def messages_until(hub: HubServer, stream: HubStream, channel: str) -> list[str]:
    """The data of every message ``stream`` gets up to a marker published now (excluded)."""
    marker = hub.publish("marker", channel=channel)
    got = stream.until_id(marker, timeout=5)[:-1]
    return [event.data for event in got if event.type == "message"]


def test_a_repeated_key_answers_the_first_202_and_publishes_once(hub: HubServer) -> None:
    stream = hub.subscribe("i-once")
    published_before = hub.stats()["events_published"]
    key, body = str(uuid.uuid4()), {"channel": "i-once", "data": "pay 10"}
    first, second = publish_with_key(hub, body, key), publish_with_key(hub, body, key)
    assert first[0] == second[0] == 202, (first, second)
    assert first[1] == second[1], "the repeat is answered the first call's body"
    assert messages_until(hub, stream, "i-once") == ["pay 10"]
    # The event and the marker; the repeat published nothing.
    assert hub.stats()["events_published"] == published_before + 2


def test_a_repeated_batch_is_published_once_with_the_same_ids(hub: HubServer) -> None:
    stream = hub.subscribe("i-batch")
    key = str(uuid.uuid4())
    body = [{"channel": "i-batch", "data": f"b{n}"} for n in range(3)]
    first, second = publish_with_key(hub, body, key), publish_with_key(hub, body, key)
    assert first == second and first[0] == 202, (first, second)
    assert len(json.loads(first[1])["ids"]) == 3
    assert messages_until(hub, stream, "i-batch") == ["b0", "b1", "b2"]


def test_the_same_key_with_another_body_is_refused_and_publishes_nothing(
    hub: HubServer,
) -> None:
    stream = hub.subscribe("i-other")
    key = str(uuid.uuid4())
    assert publish_with_key(hub, {"channel": "i-other", "data": "a"}, key)[0] == 202
    status, answer = publish_with_key(hub, {"channel": "i-other", "data": "b"}, key)
    assert status == 422, answer
    assert json.loads(answer)["error"]
    assert messages_until(hub, stream, "i-other") == ["a"]


def test_different_keys_are_different_publishes(hub: HubServer) -> None:
    stream = hub.subscribe("i-two")
    body = {"channel": "i-two", "data": "same"}
    for _ in range(2):
        assert publish_with_key(hub, body, str(uuid.uuid4()))[0] == 202
    assert messages_until(hub, stream, "i-two") == ["same", "same"]


@pytest.mark.parametrize("key", [
    pytest.param("", id="empty"),
    pytest.param("x" * 256, id="256-characters"),
    pytest.param("has space", id="space"),
    pytest.param("tab\tinside", id="tab"),
])
def test_a_bad_key_is_refused_with_400_and_publishes_nothing(hub: HubServer, key: str) -> None:
    stream = hub.subscribe("i-bad")
    status, answer = publish_with_key(hub, {"channel": "i-bad", "data": "no"}, key)
    assert status == 400, answer
    assert "Idempotency-Key" in json.loads(answer)["error"]
    assert messages_until(hub, stream, "i-bad") == []


def test_the_longest_key_is_accepted(hub: HubServer) -> None:
    key = "~" * 255
    body = {"channel": "i-long", "data": "ok"}
    first, second = publish_with_key(hub, body, key), publish_with_key(hub, body, key)
    assert first == second and first[0] == 202, (first, second)
