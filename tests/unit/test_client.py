"""The Python listener (``client.py``): URLs, events, and how it reconnects; ``tail``'s lines.

The listener talks to a scripted hub (httpx's ``MockTransport``): each
connection gets the next answer of a script that ends with a 404, so every
iteration ends (:class:`Refused`) after what the test wanted to see. The
module's ``time.sleep`` and ``random.uniform`` are patched: the waits are
recorded, not slept, and the jitter is 1. Against a real hub:
tests/integration (the client tests there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from flask_sse_hub import client as client_module
from flask_sse_hub.client import (
    EXIT_REFUSED,
    MAX_BACKOFF,
    Disconnected,
    Gap,
    Listener,
    Refused,
    ServerEvent,
    _tail_line,
    listen,
)

URL = "http://hub.test/stream"
STREAM = {"content-type": "text/event-stream"}
POSITION = b"id: 1-0\nevent: sse-hub-position\n\n"


def stream(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers=STREAM, content=body)


def refused(status: int = 404, error: str = "no such hub") -> httpx.Response:
    return httpx.Response(status, json={"error": error})


class Hub:
    """A scripted hub: the answers of its connections in order, and the requests made."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.answers, "connected once more than scripted"
        return self.answers.pop(0)

    def last_event_ids(self) -> list[str | None]:
        return [request.headers.get("last-event-id") for request in self.requests]


class Waits:
    """What the listener waited (``time.sleep``) and told ``on_reconnect``."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.told: list[tuple[float, str | None]] = []

    def on_reconnect(self, listener: Listener, delay: float) -> None:
        self.told.append((delay, listener.last_error))


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    found = Waits()
    monkeypatch.setattr(client_module, "time", SimpleNamespace(sleep=found.slept.append))
    monkeypatch.setattr(client_module, "random", SimpleNamespace(uniform=lambda low, high: 1.0))
    return found


@pytest.fixture
def follow(waits: Waits) -> Iterator[Callable[..., tuple[list[ServerEvent], Refused]]]:
    """``follow(hub, **options)``: every event a listener yields until the script's refusal."""
    clients: list[httpx.Client] = []

    def run(hub: Hub, **options: Any) -> tuple[list[ServerEvent], Refused]:
        http = httpx.Client(transport=httpx.MockTransport(hub))
        clients.append(http)
        listener = listen(URL, client=http, on_reconnect=waits.on_reconnect, **options)
        events: list[ServerEvent] = []
        with pytest.raises(Refused) as raised:
            events.extend(listener)
        return events, raised.value

    yield run
    for http in clients:
        http.close()


# -- URLs and events ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "channels", "expected"), [
    (URL, [], URL),
    (URL, ["a", "b c"], f"{URL}?channel=a&channel=b+c"),
    (f"{URL}?token=t", ["a"], f"{URL}?token=t&channel=a"),
])
def test_listen_puts_the_channels_in_the_query(
    url: str, channels: list[str], expected: str,
) -> None:
    with httpx.Client() as http:
        assert listen(url, channels, client=http).url == expected


def test_event_kinds_and_the_gap_s_last_event_id() -> None:
    plain = ServerEvent("message", '{"n": 1}', "1-1")
    gap = Gap("sse-hub-gap", json.dumps({"last_event_id": "7-3"}), None)
    assert (plain.is_gap, plain.is_disconnect, plain.json()) == (False, False, {"n": 1})
    assert (gap.is_gap, gap.is_disconnect, gap.last_event_id) == (True, False, "7-3")
    assert Gap("sse-hub-gap", json.dumps({"last_event_id": 7}), None).last_event_id is None
    assert Gap("sse-hub-gap", "{}", None).last_event_id is None
    disconnected = Disconnected("sse-hub-disconnect", "{}", None)
    assert (disconnected.is_gap, disconnected.is_disconnect) == (False, True)


def test_tail_line_is_one_line_per_event_tab_separated() -> None:
    event = ServerEvent("update", "two\nlines and a \\n", "3-1")
    assert _tail_line(event, False) == "3-1\tupdate\ttwo\\nlines and a \\\\n"
    assert _tail_line(ServerEvent("message", "x", None), False) == "-\tmessage\tx"
    line = _tail_line(event, True)
    assert "\n" not in line
    assert json.loads(line) == {"id": "3-1", "type": "update", "data": "two\nlines and a \\n"}


# -- the listener ----------------------------------------------------------------------------


def test_events_are_yielded_by_kind_never_the_position_or_data_less_blocks(
    follow: Callable[..., tuple[list[ServerEvent], Refused]],
) -> None:
    hub = Hub(stream(
        b"retry: 2000\n: hello\n\n" + POSITION
        + b"id: 1-1\ndata: a\n\n"
        + b'event: sse-hub-gap\ndata: {"last_event_id": "0-9"}\n\n'
        + b"event: sse-hub-disconnect\ndata: {}\n\n"
    ), refused())
    events, _ = follow(hub)
    assert events == [
        ServerEvent("message", "a", "1-1"),
        Gap("sse-hub-gap", '{"last_event_id": "0-9"}', "1-1"),
        Disconnected("sse-hub-disconnect", "{}", "1-1"),
    ]
    assert [type(event) for event in events] == [ServerEvent, Gap, Disconnected]


def test_a_data_less_block_after_an_event_is_not_yielded(
    follow: Callable[..., tuple[list[ServerEvent], Refused]],
) -> None:
    hub = Hub(stream(POSITION + b"id: 1-1\ndata: a\n\nretry: 500\n\n"), refused())
    events, _ = follow(hub)
    assert events == [ServerEvent("message", "a", "1-1")]


def test_reconnects_resume_from_the_last_id_seen_the_position_included(
    follow: Callable[..., tuple[list[ServerEvent], Refused]],
) -> None:
    hub = Hub(
        stream(POSITION),  # ended before its first event
        stream(b"id: 1-5\ndata: x\n\n"),
        stream(b"data: no id\n\n"),
        refused(),
    )
    events, _ = follow(hub, last_event_id="0-0", token="secret")
    assert hub.last_event_ids() == ["0-0", "1-0", "1-5", "1-5"]
    assert {request.headers["authorization"] for request in hub.requests} == {"Bearer secret"}
    assert [event.data for event in events] == ["x", "no id"]


def test_retry_sets_the_delay_after_a_clean_end(
    follow: Callable[..., tuple[list[ServerEvent], Refused]], waits: Waits,
) -> None:
    hub = Hub(stream(b"retry: 2000\n\n" + POSITION), stream(b"retry: 500\n\n" + POSITION),
              refused())
    follow(hub)
    assert waits.told == [(2.0, "the stream ended"), (0.5, "the stream ended")]
    assert waits.slept == [2.0, 0.5]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_final_status_raises_refused_without_retrying(
    follow: Callable[..., tuple[list[ServerEvent], Refused]], waits: Waits, status: int,
) -> None:
    hub = Hub(refused(status, "token revoked"))
    events, raised = follow(hub)
    assert (raised.status, raised.reason) == (status, "token revoked")
    assert (events, len(hub.requests), waits.slept) == ([], 1, [])


def test_failures_are_retried_with_a_doubling_capped_backoff(
    follow: Callable[..., tuple[list[ServerEvent], Refused]], waits: Waits,
) -> None:
    failures = [httpx.Response(503, text="busy") for _ in range(6)]
    hub = Hub(*failures, httpx.Response(200, text="not a stream"), refused())
    follow(hub)
    assert waits.slept == [2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    assert waits.told[0] == (2.0, "503: Service Unavailable")
    assert len(hub.requests) == 8


def test_an_event_resets_the_backoff(
    follow: Callable[..., tuple[list[ServerEvent], Refused]], waits: Waits,
) -> None:
    def busy() -> httpx.Response:
        return httpx.Response(503)

    hub = Hub(busy(), busy(), stream(b"id: 1-1\ndata: a\n\n"), busy(), refused())
    follow(hub)
    assert waits.slept == [2.0, 4.0, 2.0, 2.0]  # the last: one failure since the event


def test_stop_on_disconnect_ends_the_iteration(waits: Waits) -> None:
    hub = Hub(stream(b"event: sse-hub-disconnect\ndata: {}\n\n"))
    with httpx.Client(transport=httpx.MockTransport(hub)) as http:
        events = list(listen(URL, client=http, stop_on_disconnect=True))
    assert [event.is_disconnect for event in events] == [True]
    assert (len(hub.requests), waits.slept) == (1, [])


# -- flask-sse-hub tail --------------------------------------------------------------------


def run_tail(monkeypatch: pytest.MonkeyPatch, hub: Hub, *args: str) -> Any:
    http = httpx.Client(transport=httpx.MockTransport(hub))
    real = client_module.listen
    monkeypatch.setattr(client_module, "listen",
                        lambda *given, **options: real(*given, client=http, **options))
    try:
        return CliRunner().invoke(client_module.tail_command(), [URL, *args])
    finally:
        http.close()


@pytest.mark.usefixtures("waits")
def test_tail_prints_count_events_and_notes_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = Hub(httpx.Response(503), stream(POSITION + b"id: 1-1\ndata: a\n\nid: 1-2\ndata: b\n\n"))
    result = run_tail(monkeypatch, hub, "-c", "orders", "--count", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "1-1\tmessage\ta\n1-2\tmessage\tb\n"
    assert result.stderr == (
        "# 503: Service Unavailable; reconnecting in 2.0 s, after the start\n")
    assert hub.requests[0].url.params.get_list("channel") == ["orders"]


@pytest.mark.usefixtures("waits")
def test_tail_exits_3_when_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_tail(monkeypatch, Hub(refused(401, "bad token")), "--json")
    assert result.exit_code == EXIT_REFUSED
    assert (result.stdout, result.stderr) == ("", "# refused: 401: bad token\n")
