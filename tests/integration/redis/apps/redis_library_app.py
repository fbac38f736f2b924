"""A user's Flask app with flask-sse-hub as a library and Redis as the backplane.

Run by ``tests/integration/redis/test_library.py`` under gunicorn
(``--pythonpath tests/integration/redis/apps redis_library_app:app``, the
repository's gunicorn.conf.py) and as ``flask --app <this file> sse publish``
from another process. Its settings come from the environment, as a deployed
app's would: ``SSE_REDIS_URL`` (required here) and ``SSE_HEARTBEAT_SECONDS``.

* the default ``flask_sse_hub.sse`` blueprint under ``/events``;
* ``GET /healthz`` answers 200 once the app is up (the test fixture waits on it).
"""

from __future__ import annotations

import os

from flask import Flask

from flask_sse_hub import sse

app = Flask(__name__)
app.config["SSE_REDIS_URL"] = os.environ["SSE_REDIS_URL"]
app.config["SSE_HEARTBEAT_SECONDS"] = float(os.environ.get("SSE_HEARTBEAT_SECONDS", "15"))
app.register_blueprint(sse, url_prefix="/events")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
