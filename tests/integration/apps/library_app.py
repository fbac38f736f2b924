"""A Flask app that uses flask-sse-hub as a library, as a user would.

Run by the integration tests with ``gunicorn --pythonpath tests/integration/apps
library_app:app`` (the repository's gunicorn.conf.py, gevent worker) and with
``flask --app library_app sse publish ...``.

* the default ``flask_sse_hub.sse`` blueprint under ``/events``;
* ``@sse.authorize`` refuses the channel ``secret``;
* ``POST /orders`` publishes an ``order-created`` event with ``flask_sse_hub.publish``
  and answers with its id;
* ``GET /healthz`` so the test fixture knows the server is up.

``SSE_*`` settings come from the environment, as an app would load its config.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

import flask_sse_hub
from flask_sse_hub import sse

app = Flask(__name__)
app.config.update({key: value for key, value in os.environ.items() if key.startswith("SSE_")})
app.register_blueprint(sse, url_prefix="/events")


@sse.authorize
def may_subscribe(channel: str) -> bool:
    return channel != "secret"


@app.post("/orders")
def create_order() -> tuple[dict[str, Any], int]:
    order = request.get_json()
    event_id = flask_sse_hub.publish(order, event="order-created", channel="orders")
    return {"event_id": event_id}, 201


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
