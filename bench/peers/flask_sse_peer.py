"""flask-sse (PyPI) behind the benchmark's common API, served by gunicorn's gevent worker.

``POST /publish`` takes the hub's JSON body (one object or a batch array) and
calls ``flask_sse.sse.publish`` per event, so every event goes through Redis
pub/sub exactly as flask-sse's users do it. ``GET /stream?channel=`` is
flask-sse's own stream view with one addition: after subscribing it writes a
comment, because flask-sse sends nothing (not even the headers, under
gunicorn) until the first event, and the load generator must know that every
stream is subscribed before it publishes. Everything else — a Redis
connection and pub/sub per stream, ``Message`` formatting, the request
context kept by ``stream_with_context`` — is flask-sse's code path.

Run: REDIS_URL=redis://127.0.0.1:PORT/0 gunicorn -k gevent flask_sse_peer:app
"""

import os

from flask import Flask, json, jsonify, request, stream_with_context
from flask_sse import Message, sse
from redis.exceptions import ConnectionError as RedisConnectionError

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@app.post("/publish")
def publish():
    payload = request.get_json(force=True)
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        sse.publish(item["data"], type=item.get("event"), channel=item.get("channel") or "sse")
    if isinstance(payload, list):
        return jsonify(ids=[None] * len(items)), 202
    return jsonify(id=None), 202


@app.get("/stream")
def stream():
    # flask_sse.ServerSentEventsBlueprint.stream + .messages, plus the opening comment.
    channel = request.args.get("channel") or "sse"

    @stream_with_context
    def generator():
        pubsub = sse.redis.pubsub()
        pubsub.subscribe(channel)
        try:
            yield ": open\n\n"
            for pubsub_message in pubsub.listen():
                if pubsub_message["type"] == "message":
                    yield str(Message(**json.loads(pubsub_message["data"])))
        finally:
            try:
                pubsub.unsubscribe(channel)
            except RedisConnectionError:
                pass

    return app.response_class(generator(), mimetype="text/event-stream")


@app.get("/healthz")
def healthz():
    sse.redis.ping()
    return jsonify(status="ok")
