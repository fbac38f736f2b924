"""flask-sse-hub used as a library by an app of its own, served by gunicorn's gevent worker.

``flask_sse_hub.sse`` registers under a prefix of the app's choice;
``@sse.authorize`` refuses a stream with 403 before it starts when any
requested channel is refused; ``flask_sse_hub.publish()`` from a view returns
the id the subscriber then sees; ``flask sse publish CHANNEL DATA --event``
publishes from a shell (docs/protocol.md#library); the subscribe endpoint
answers with the same statuses and headers under the app's prefix
(docs/protocol.md#subscribe-api).

The app is ``tests/integration/apps/library_app.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import APPS_DIR, EVENT_ID_RE, HubLauncher, HubServer

pytestmark = pytest.mark.integration

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")


@pytest.fixture(scope="module")
def app_server(start_hub_for_module: HubLauncher) -> HubServer:
    return start_hub_for_module(
        "library_app:app", pythonpath=APPS_DIR, SSE_HEARTBEAT_SECONDS=0.5, SSE_RETRY_MS=1500,
    )


def test_blueprint_serves_streams_under_the_apps_prefix(app_server: HubServer) -> None:
    stream = app_server.subscribe("ok", prefix="/events")
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers.get("x-accel-buffering") == "no"
    assert stream.retry == 1500  # the app's SSE_* config reached the hub
    stream.close()
    status, _, _ = app_server.request("GET", "/stream?channel=ok")
    assert status == 404, "the blueprint must live only where the app registered it"


@pytest.mark.parametrize(
    "query",
    ["channel=secret", "channel=ok&channel=secret", "channel=secret&channel=ok",
     "channel=a&channel=b&channel=secret&channel=c"],
)
def test_authorize_refuses_the_whole_stream_with_403_before_it_starts(
    app_server: HubServer, query: str,
) -> None:
    status, headers, body = app_server.request("GET", f"/events?{query}")
    assert status == 403
    assert not headers.get("content-type", "").startswith("text/event-stream"), headers
    assert 0 < len(body.strip()) <= 500, body
    assert b"secret" in body, "the reason should name the refused channel"


def test_authorized_channels_are_streamed(app_server: HubServer) -> None:
    stream = app_server.subscribe("ok", "other", prefix="/events")
    assert stream.status == 200
    stream.close()


def test_bad_channel_under_the_apps_prefix_is_400(app_server: HubServer) -> None:
    status, headers, body = app_server.request("GET", "/events?channel=bad%20name")
    assert status == 400, body
    assert not headers.get("content-type", "").startswith("text/event-stream"), headers


def test_publish_from_a_view_reaches_the_subscriber_with_the_returned_id(
    app_server: HubServer,
) -> None:
    stream = app_server.subscribe("orders", prefix="/events")
    status, answer = app_server.post_json("/orders", {"order": 42, "items": ["tea"]})
    assert status == 201, answer
    event_id = answer["event_id"]
    assert EVENT_ID_RE.fullmatch(event_id), event_id
    event = stream.next_event(timeout=5)
    assert event.type == "order-created"
    assert event.last_event_id == event_id
    assert json.loads(event.data) == {"order": 42, "items": ["tea"]}
    assert event.data == '{"order":42,"items":["tea"]}'

    # ... and the id is a resume position for a later subscriber.
    second_id = app_server.post_json("/orders", {"order": 43})[1]["event_id"]
    assert stream.next_event(timeout=5).last_event_id == second_id
    stream.close()
    resumed = app_server.subscribe("orders", prefix="/events",
                                   headers={"Last-Event-ID": event_id})
    assert resumed.next_event(timeout=5).last_event_id == second_id


def run_flask_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SSE_", "FLASK_"))}
    return subprocess.run(
        [FLASK, "--app", "library_app", "sse", "publish", *args],
        cwd=APPS_DIR, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_cli_publish_prints_the_event_id_and_warns_about_the_memory_backend() -> None:
    result = run_flask_cli("orders", "hello from a shell", "--event", "note")
    assert result.returncode == 0, result.stderr
    assert EVENT_ID_RE.fullmatch(result.stdout.strip()), result.stdout
    assert result.stdout.count("\n") == 1, "stdout should be the id alone"
    assert "memory backend" in result.stderr.lower(), result.stderr


def test_cli_publish_of_json_data_prints_an_id() -> None:
    result = run_flask_cli("orders", '{"order": 1}', "--json")
    assert result.returncode == 0, result.stderr
    assert EVENT_ID_RE.fullmatch(result.stdout.strip()), result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("bad name", "x"), id="bad-channel"),
        pytest.param(("orders", "x", "--event", "sse-hub-gap"), id="reserved-event-type"),
        pytest.param(("orders", "{not json", "--json"), id="bad-json"),
    ],
)
def test_cli_publish_refuses_bad_input_with_an_error_and_no_id(args: tuple[str, ...]) -> None:
    result = run_flask_cli(*args)
    assert result.returncode != 0
    assert result.stdout.strip() == ""
    assert "error" in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
