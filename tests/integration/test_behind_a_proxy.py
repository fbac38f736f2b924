"""``SSE_PROXY_HOPS``: the standalone hub behind reverse proxies (Werkzeug's ``ProxyFix``).

Every client of a proxied hub connects from the proxy's address. With the
number of trusted proxies set, the per-IP limit counts the client address the
proxy forwards; without it, ``X-Forwarded-For`` is not believed (anyone could
send one) and every client counts as the proxy.
"""

from __future__ import annotations

import json

import pytest

from .conftest import HubLauncher, HubServer

pytestmark = pytest.mark.integration


def stream_status(hub: HubServer, client: str) -> int:
    stream = hub.open_stream("/stream?channel=proxied", {"X-Forwarded-For": client})
    if stream.status == 200:
        stream.wait_comment()  # the preamble: the subscription is registered
    else:
        assert "SSE_MAX_CONNECTIONS_PER_IP" in json.loads(stream.read_body())["error"]
    return stream.status


def test_with_one_trusted_proxy_the_limit_counts_forwarded_clients(
    start_hub: HubLauncher,
) -> None:
    hub = start_hub(SSE_PROXY_HOPS=1, SSE_MAX_CONNECTIONS_PER_IP=1)
    assert stream_status(hub, "203.0.113.1") == 200
    assert stream_status(hub, "203.0.113.1") == 429
    assert stream_status(hub, "203.0.113.2") == 200
    # Only the last hop is trusted: a client's own forged entry is ignored.
    assert stream_status(hub, "198.51.100.7, 203.0.113.1") == 429
    assert hub.stats()["client_addresses"] == 2


def test_without_trusted_proxies_forwarded_for_is_not_believed(start_hub: HubLauncher) -> None:
    hub = start_hub(SSE_MAX_CONNECTIONS_PER_IP=1)
    assert stream_status(hub, "203.0.113.1") == 200
    assert stream_status(hub, "203.0.113.2") == 429  # both are 127.0.0.1 to the hub
    assert hub.stats()["client_addresses"] == 1


def test_a_proxied_client_is_still_no_anonymous_publisher(start_hub: HubLauncher) -> None:
    # ProxyFix makes the client's address the remote address; a relayed
    # request still carries X-Forwarded-For, so the loopback rule refuses it.
    hub = start_hub(SSE_PROXY_HOPS=1)
    for client in ("203.0.113.1", "127.0.0.1"):
        status, answer = hub.post_json("/publish", {"data": "x"}, {"X-Forwarded-For": client})
        assert status == 403, answer
