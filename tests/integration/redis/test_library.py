"""The library with Redis: ``flask sse publish`` in another process reaches the app's streams.

A Flask app of the tests' own (``apps/redis_library_app.py``) registers
``flask_sse_hub.sse`` with ``SSE_REDIS_URL`` from its environment and runs
under gunicorn. ``flask --app ... sse publish CHANNEL DATA --event NAME``, a
separate process with the same environment, reaches its subscribers through
Redis, and the id it prints is the id on the wire.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO_ROOT, HubLauncher

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parent / "apps" / "redis_library_app.py"
FLASK = Path(sys.executable).parent / "flask"
REDIS_ID = re.compile(r"[0-9]+-[0-9]+")


def test_flask_sse_publish_from_another_process_reaches_the_apps_subscribers(
    start_hub: HubLauncher, redis_url: str,
) -> None:
    app = start_hub("redis_library_app:app", pythonpath=APP.parent,
                    SSE_REDIS_URL=redis_url, SSE_HEARTBEAT_SECONDS=1)
    streams = [app.subscribe("orders", prefix="/events") for _ in range(3)]

    done = subprocess.run(
        [str(FLASK), "--app", str(APP), "sse", "publish", "orders", "order 42 created",
         "--event", "order-created"],
        cwd=REPO_ROOT, env=app.env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout.strip()
    assert REDIS_ID.fullmatch(printed), f"printed {done.stdout!r} (stderr {done.stderr!r})"
    assert "memory backend" not in done.stderr

    for stream in streams:
        event = stream.next_event(timeout=10)
        assert (event.type, event.data, event.last_event_id) == (
            "order-created", "order 42 created", printed,
        )
