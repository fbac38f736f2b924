"""Unknown and garbage resume ids with Redis ids: a gap (docs/protocol.md#gap).

Redis ids look like ``<ms>-<seq>``. Whatever a client sends as its last id —
garbage, an id of the right shape that the stream never held, one from the
future, one too long, one too large for Redis — the stream opens (200) with an
``sse-hub-gap`` event naming it, then the retained history of its channels,
then live events, and the hub stays healthy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.integration.conftest import GAP_EVENT, HubLauncher, HubServer

from .conftest import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub(start_hub_for_module: HubLauncher, redis_server: RedisServer) -> Iterator[HubServer]:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # an earlier module killed it
    redis_server.command("FLUSHALL")
    server = start_hub_for_module(SSE_REDIS_URL=redis_server.url, SSE_HEARTBEAT_SECONDS=1)
    yield server
    server.close_streams()


UNKNOWN_IDS = [
    pytest.param("header", "garbage", id="garbage"),
    pytest.param("query", "garbage", id="garbage-in-query"),
    pytest.param("header", "1-0", id="well-formed-never-held"),
    pytest.param("header", "0-1", id="zero-ms"),
    pytest.param("header", "99999999999999-0", id="in-the-future"),
    pytest.param("header", "1795505705834", id="no-sequence"),
    pytest.param("header", "1795505705834-0-0", id="two-sequences"),
    pytest.param("header", "-1-0", id="negative"),
    pytest.param("header", "+", id="xrange-plus"),
    pytest.param("header", "$", id="xread-dollar"),
    pytest.param("query", "(1-0", id="xrange-exclusive-prefix"),
    pytest.param("header", "1" * 200 + "-0", id="over-long"),
    # Well-formed for the hub's pattern (at most 20 digits) but over Redis's
    # 64-bit limit: Redis answers "ERR Invalid stream ID".
    pytest.param("header", "99999999999999999999-0", id="ms-over-64-bits"),
    pytest.param("header", "1-99999999999999999999", id="seq-over-64-bits"),
]


@pytest.mark.parametrize(("via", "requested"), UNKNOWN_IDS)
def test_unknown_or_garbage_id_gives_a_gap_then_the_retained_history_never_an_error(
    hub: HubServer, via: str, requested: str, request: pytest.FixtureRequest,
) -> None:
    channel = f"unknown-{request.node.callspec.id}"
    witness = hub.subscribe(channel)
    published = [hub.publish(f"e{n}", channel=channel) for n in range(3)]
    witness.until_id(published[-1], timeout=5)

    if via == "header":
        stream = hub.open_stream(f"/stream?channel={channel}",
                                 headers={"Last-Event-ID": requested})
    else:
        stream = hub.open_stream(f"/stream?channel={channel}&lastEventId={quote(requested)}")
    assert stream.status == 200, f"{requested!r} -> {stream.status}: {stream.read_body()!r}"

    live = hub.publish("live", channel=channel)
    gap, *history, last = stream.until_id(live, timeout=5)
    assert gap.type == GAP_EVENT
    assert json.loads(gap.data) == {"last_event_id": requested}
    assert [e.last_event_id for e in history] == published
    assert last.data == "live"
    status, _, body = hub.request("GET", "/healthz")
    assert status == 200, body
    assert "Traceback" not in hub.log_text()
