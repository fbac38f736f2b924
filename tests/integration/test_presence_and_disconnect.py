"""Presence and ending streams on demand (memory backend, one gunicorn worker).

* ``GET /presence?channel=X`` answers the channel's open streams and the
  subjects (JWT ``sub``) holding them; a stream that closes stays present for
  ``SSE_PRESENCE_GRACE_SECONDS``, and one that comes back within it is never
  seen to leave.
* ``POST /disconnect`` ``{"channel", "subject"}`` (one or both; the publish
  credential) ends exactly the matching streams, each with a last
  ``sse-hub-disconnect`` event (no id) and the end of the body; the others
  keep receiving.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from flask_sse_hub import mint_token

from .conftest import HubLauncher, HubServer, HubStream, wait_until

pytestmark = pytest.mark.integration

SECRET = "ops-tests-hs256-secret-0123456789abcdef"
GRACE = 1.5
DISCONNECT_EVENT = "sse-hub-disconnect"
#: A publisher that may publish anywhere (and so end any subject's streams).
ANYWHERE = mint_token(SECRET, publish=["*"], ttl=86400)  # outlives any slow run


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(
        SSE_JWT_SECRET=SECRET, SSE_HEARTBEAT_SECONDS=1, SSE_PRESENCE_GRACE_SECONDS=GRACE,
    )


def join(hub: HubServer, subject: str, *channels: str) -> HubStream:
    """A stream of ``subject`` (its token's ``sub``) on ``channels``."""
    token = mint_token(SECRET, subscribe=list(channels), subject=subject)
    return hub.subscribe(*channels, headers=auth(token))


def presence(hub: HubServer, channel: str) -> dict[str, Any]:
    answer: dict[str, Any] = hub.get_json(f"/presence?channel={channel}")
    return answer


def wait_presence(hub: HubServer, channel: str, occupancy: int, subjects: list[str],
                  timeout: float = 5.0) -> None:
    expected = {"channel": channel, "occupancy": occupancy, "subjects": subjects}
    wait_until(lambda: presence(hub, channel), lambda got: got == expected, timeout=timeout,
               what=f"presence {expected}", log=hub.log_text)


def publish(hub: HubServer, data: str, channel: str) -> str:
    status, answer = hub.post_json("/publish", {"channel": channel, "data": data}, auth(ANYWHERE))
    assert status == 202, (status, answer)
    event_id: str = answer["id"]
    return event_id


def disconnect(hub: HubServer, body: dict[str, Any], token: str = ANYWHERE) -> tuple[int, Any]:
    return hub.post_json("/disconnect", body, auth(token))


def assert_disconnected(stream: HubStream, channel: str | None, subject: str | None) -> None:
    """The stream's last event is ``sse-hub-disconnect`` naming the match; then its body ends."""
    events = stream.read_until_closed(timeout=5)
    assert events, f"{stream.path} ended with no event"
    last = events[-1]
    assert last.type == DISCONNECT_EVENT, [(e.type, e.data) for e in events]
    assert json.loads(last.data) == {"channel": channel, "subject": subject}
    block = stream.body.decode().rsplit(f"event: {DISCONNECT_EVENT}", 1)[1]
    assert "\nid:" not in block.split("\n\n", 1)[0], "the disconnect event carries no id"


def assert_still_receiving(hub: HubServer, stream: HubStream, channel: str) -> None:
    event_id = publish(hub, f"after-{time.monotonic_ns()}", channel)
    assert stream.until_id(event_id, timeout=5)[-1].type == "message"


# -- presence -------------------------------------------------------------------


def test_presence_lists_the_subjects_and_counts_the_streams(hub: HubServer) -> None:
    join(hub, "alice", "p-room")
    join(hub, "alice", "p-room", "p-other")
    join(hub, "bob", "p-room")
    wait_presence(hub, "p-room", 3, ["alice", "bob"])
    wait_presence(hub, "p-other", 1, ["alice"])
    wait_presence(hub, "p-empty", 0, [])


def test_a_closed_stream_leaves_presence_after_the_grace(hub: HubServer) -> None:
    join(hub, "alice", "p-leave")
    bob = join(hub, "bob", "p-leave")
    wait_presence(hub, "p-leave", 2, ["alice", "bob"])
    bob.close()
    closed_at = time.monotonic()
    wait_presence(hub, "p-leave", 1, ["alice"], timeout=GRACE + 3)
    assert time.monotonic() - closed_at >= GRACE - 0.1, "bob left before the grace ran out"


def test_a_reconnect_within_the_grace_is_never_seen_to_leave(hub: HubServer) -> None:
    carol = join(hub, "carol", "p-back")
    wait_presence(hub, "p-back", 1, ["carol"])
    carol.close()
    join(hub, "carol", "p-back")
    seen = [presence(hub, "p-back") for _ in sample_for(GRACE + 1.5)]
    assert all(answer["subjects"] == ["carol"] for answer in seen), seen
    assert seen[-1]["occupancy"] == 1, seen[-1]  # its own place taken back: no double count


def sample_for(seconds: float) -> list[None]:
    """Drive a sampling loop for ``seconds`` (one item per 50 ms round)."""
    rounds: list[None] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rounds.append(None)
        time.sleep(0.05)
    return rounds


def test_presence_needs_a_channel(hub: HubServer) -> None:
    status, _, body = hub.request("GET", "/presence")
    assert status == 400, body


# -- disconnect -----------------------------------------------------------------


def test_disconnect_by_subject_ends_exactly_that_subjects_streams(hub: HubServer) -> None:
    dave_a, dave_ab = join(hub, "dave", "d-a"), join(hub, "dave", "d-a", "d-b")
    erin = join(hub, "erin", "d-a")
    assert disconnect(hub, {"subject": "dave"}) == (202, {"channel": None, "subject": "dave"})
    for stream in (dave_a, dave_ab):
        assert_disconnected(stream, None, "dave")
    assert_still_receiving(hub, erin, "d-a")


def test_disconnect_by_channel_ends_every_stream_of_it_only(hub: HubServer) -> None:
    on_c, on_cd = join(hub, "frank", "d-c"), join(hub, "gina", "d-c", "d-d")
    on_d = join(hub, "frank", "d-d")
    assert disconnect(hub, {"channel": "d-c"})[0] == 202
    for stream in (on_c, on_cd):
        assert_disconnected(stream, "d-c", None)
    assert_still_receiving(hub, on_d, "d-d")


def test_disconnect_by_channel_and_subject_needs_both_to_match(hub: HubServer) -> None:
    target, same_subject = join(hub, "hank", "d-e"), join(hub, "hank", "d-f")
    same_channel = join(hub, "ivy", "d-e")
    assert disconnect(hub, {"channel": "d-e", "subject": "hank"})[0] == 202
    assert_disconnected(target, "d-e", "hank")
    assert_still_receiving(hub, same_subject, "d-f")
    assert_still_receiving(hub, same_channel, "d-e")


def test_events_published_before_the_disconnect_arrive_before_it(hub: HubServer) -> None:
    stream = join(hub, "jack", "d-order")
    ids = [publish(hub, f"m{n}", "d-order") for n in range(3)]
    assert disconnect(hub, {"channel": "d-order"})[0] == 202
    events = stream.read_until_closed(timeout=5)
    assert [e.last_event_id for e in events if e.type == "message"] == ids
    assert events[-1].type == DISCONNECT_EVENT


@pytest.mark.parametrize(("body", "grant", "status"), [
    pytest.param({}, ["*"], 400, id="empty-body"),
    pytest.param({"channel": "d-g", "extra": 1}, ["*"], 400, id="unknown-field"),
    pytest.param({"channel": "d-g"}, ["d-other"], 403, id="channel-not-granted"),
    pytest.param({"subject": "kim"}, ["d-g"], 403, id="subject-needs-every-channel"),
    pytest.param({"channel": 123}, ["*"], 400, id="channel-not-a-string"),
    pytest.param({"channel": ["d-g"]}, ["*"], 400, id="channel-a-list"),
    pytest.param({"channel": "bad name"}, ["*"], 400, id="bad-channel-name"),
    pytest.param({"subject": {"id": 1}}, ["*"], 400, id="subject-not-a-string"),
    pytest.param({"subject": "k" * 257}, ["*"], 400, id="subject-too-long"),
])
def test_a_refused_disconnect_ends_nothing(
    hub: HubServer, body: dict[str, Any], grant: list[str], status: int,
) -> None:
    stream = join(hub, "kim", "d-g")
    got, answer = disconnect(hub, body, mint_token(SECRET, publish=grant))
    assert got == status, answer
    assert_still_receiving(hub, stream, "d-g")


def test_disconnect_without_a_token_is_refused(hub: HubServer) -> None:
    status, _ = hub.post_json("/disconnect", {"channel": "d-h"})
    assert status == 401


def test_a_channel_grant_may_end_that_channels_streams(hub: HubServer) -> None:
    stream = join(hub, "lee", "d-i")
    assert disconnect(hub, {"channel": "d-i"}, mint_token(SECRET, publish=["d-i"]))[0] == 202
    assert_disconnected(stream, "d-i", None)
