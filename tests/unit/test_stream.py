"""One stream's body (``stream.py``): heartbeats, coalesced writes, and how it ends.

Its opening (headers, ``retry:``, the gap or position) is tested with the
subscribe view in test_blueprint.py. Here through Flask's test client too,
and directly on a :class:`~flask_sse_hub.stream.Stream` where the view would
hide what is tested (how queued chunks are written, what ends the loop).
What a stream sends and when it ends: docs/protocol.md#stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder

import flask_sse_hub
from flask_sse_hub.blueprint import Hub
from flask_sse_hub.broker import Subscription
from flask_sse_hub.stream import Stream
from tests.support.flask_stream import WAIT
from tests.support.hub_http import open_stream, subscribers
from tests.support.sse_parser import Event, EventStreamParser

# -- heartbeats ----------------------------------------------------------------------------


def test_idle_stream_sends_heartbeat_comments(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    stream = open_stream(app)
    try:
        for expected_comments in (2, 3):  # the preamble's, then one per idle interval
            stream.next_chunk()
            assert len(stream.parser.comments) == expected_comments
        assert stream.events == []
    finally:
        stream.close()


def test_ping_event_replaces_the_heartbeat_comment(make_app: Callable[..., Flask]) -> None:
    app = make_app(SSE_PING_EVENT="ping")
    stream = open_stream(app)
    try:
        (ping,) = stream.read(1)
        # The stream's start position (before any event) is its last event id.
        assert ping == Event(type="ping", data="", last_event_id=ping.last_event_id)
        assert ping.last_event_id.endswith("-0")
    finally:
        stream.close()


# -- the live loop, on a Stream itself ---------------------------------------------------


def direct_stream(app: Flask, channel: str) -> tuple[Hub, Subscription, Stream, Iterator[bytes]]:
    """A Stream of the app's hub as the view makes it (no socket); its opening is read."""
    hub = flask_sse_hub.hubs(app)["sse"]
    sub, replay = hub.broker.subscribe([channel])
    stream = Stream(hub, sub, replay, None, None)
    chunks = iter(stream)
    assert next(chunks).startswith(hub.preamble)
    return hub, sub, stream, chunks


def wait_enqueued(sub: Subscription, count: int) -> None:
    """Until the broadcaster has queued ``count`` events for ``sub`` (bounded)."""
    deadline = time.monotonic() + WAIT
    while sub.enqueued < count:
        assert time.monotonic() < deadline, f"{sub.enqueued} of {count} events queued"
        time.sleep(0.005)  # polling against the deadline above


def test_chunks_queued_while_one_was_written_go_out_in_one_write(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    hub, sub, stream, chunks = direct_stream(app, "a")
    try:
        ids = []
        for n in range(3):  # three fan-outs: three queue items
            ids.append(hub.publish(str(n), channel="a"))
            wait_enqueued(sub, n + 1)
        assert sub.queue.qsize() == 3
        events = EventStreamParser().feed(next(chunks))
    finally:
        stream.close()
    assert [(e.data, e.last_event_id) for e in events] == [
        ("0", ids[0]), ("1", ids[1]), ("2", ids[2]),
    ]
    assert sub.dequeued == 3


def test_a_stream_the_hub_ends_stops_and_unregisters_at_once(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    hub, sub, stream, chunks = direct_stream(app, "a")
    hub.broker.end(sub, "slow")
    assert list(chunks) == [], "a stream ended by the hub wrote more"
    assert subscribers(app) == 0, "not unregistered before the server closes the body"
    stream.close()  # what the server does next: harmless
    assert subscribers(app) == 0


# -- its end --------------------------------------------------------------------------------


def test_closing_the_response_unsubscribes(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    streams = [open_stream(app, "?channel=a&channel=b"), open_stream(app, "?channel=a")]
    assert subscribers(app) == 2
    for stream in streams:
        stream.close()
    assert subscribers(app) == 0
    assert flask_sse_hub.hubs(app)["sse"].broker.stats()["channels"] == {}


def test_response_closed_before_its_first_chunk_unsubscribes(
    make_app: Callable[..., Flask],
) -> None:
    """PEP 3333: a server calls close() on the body even when it never iterated it.

    The WSGI app is called directly (the test client always pulls the first
    chunk): a request whose client is gone before the first write must not
    leave its subscription registered.
    """
    app = make_app()
    environ = EnvironBuilder(path="/stream", query_string="channel=a").get_environ()
    body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert subscribers(app) == 1
    body.close()  # type: ignore[attr-defined]
    assert subscribers(app) == 0, "the subscription outlived its response"


def test_max_connection_seconds_ends_the_stream_for_a_resume(
    make_app: Callable[..., Flask],
) -> None:
    """SSE_MAX_CONNECTION_SECONDS: the stream ends after that age (clients resume)."""
    app = make_app(SSE_MAX_CONNECTION_SECONDS=0.3, SSE_HEARTBEAT_SECONDS=5)
    stream = open_stream(app)
    started = time.monotonic()
    with pytest.raises(EOFError):
        stream.read(1, timeout=WAIT)
    assert time.monotonic() - started < 5, "ended by the heartbeat wait, not by its age"
    assert subscribers(app) == 0
