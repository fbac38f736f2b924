"""The Redis backend's one-connection multiplexer against a real, frozen Redis.

``_Multiplexer.call`` promises (docs/protocol.md#redis-timeouts): a request
still queued behind a stuck pipeline when its caller's time is up is never
sent ("connecting to ...": nothing was done, so the hub may say "nothing was
published"); one already sent raises ``TimeoutError`` (it may yet run). The
hub-level fault tests cannot force the first case on demand, so this drives
the multiplexer directly: the attack is a Redis stopped with SIGSTOP.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from .conftest import RedisServer, stopped

pytestmark = pytest.mark.integration

redis = pytest.importorskip("redis")

from flask_sse_hub.backends.redis import _Multiplexer  # noqa: E402 - after the importorskip


def test_a_request_queued_behind_a_frozen_pipeline_is_never_sent_once_its_caller_gave_up(
    redis_server: RedisServer, redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    multiplexer = _Multiplexer(client, "test", depth=8)
    assert multiplexer.call(lambda pipe: pipe.ping(), timeout=5) is True  # connected
    assert redis_server.process is not None

    first: list[Any] = []
    with stopped(redis_server.process.pid):
        sender = threading.Thread(target=lambda: first.append(
            multiplexer.call(lambda pipe: pipe.incr("sent"), timeout=10)))
        sender.start()
        # The serve thread takes "sent" into a pipeline, then blocks reading
        # its reply from the stopped Redis; what comes after it waits queued.
        deadline = time.monotonic() + 5
        while multiplexer._requests.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # let the serve thread reach its blocking read (not an assertion)

        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="connecting to Redis: the test connection"):
            multiplexer.call(lambda pipe: pipe.incr("abandoned"), timeout=0.3)
        took = time.monotonic() - started
        assert took < 1.5, f"the queued caller waited {took:.2f}s for a 0.3 s timeout"
    sender.join(timeout=10)
    assert first == [1], first  # the sent request ran once Redis went on

    # The serve thread has passed the abandoned request by now: the next
    # request comes back only after it, in queue order.
    assert multiplexer.call(lambda pipe: pipe.incr("after"), timeout=5) == 1
    inspect = redis.Redis.from_url(redis_url, socket_timeout=5)
    assert inspect.get("abandoned") is None, "a request its caller gave up on was sent"
    assert inspect.get("sent") == b"1" and inspect.get("after") == b"1"
    inspect.close()
    client.close()


def test_a_sent_request_whose_caller_gave_up_says_it_may_have_run(
    redis_server: RedisServer, redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    multiplexer = _Multiplexer(client, "test", depth=8)
    assert multiplexer.call(lambda pipe: pipe.ping(), timeout=5) is True
    assert redis_server.process is not None

    with stopped(redis_server.process.pid), pytest.raises(redis.TimeoutError):
        multiplexer.call(lambda pipe: pipe.incr("maybe"), timeout=0.3)
    # It was on the wire: Redis runs it once it goes on (the serve thread's
    # socket timeout, 3 s, had not passed).
    inspect = redis.Redis.from_url(redis_url, socket_timeout=5)
    deadline = time.monotonic() + 5
    while inspect.get("maybe") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert inspect.get("maybe") == b"1"
    inspect.close()
    client.close()
