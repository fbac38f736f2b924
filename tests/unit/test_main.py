"""``flask-sse-hub`` / ``python -m flask_sse_hub`` (``__main__.py``): gunicorn with the packaged
settings, serving the standalone hub; options on the command line win.

gunicorn's own application is built as the command builds it, and stopped
just before it would start serving.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from gunicorn.app.wsgiapp import WSGIApplication  # type: ignore[import-untyped]

from flask_sse_hub import __main__ as command


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The gunicorn applications ``main()`` built; their ``run()`` records instead of serving."""
    apps: list[Any] = []
    monkeypatch.setattr(WSGIApplication, "run", lambda self: apps.append(self))
    monkeypatch.setattr(sys, "argv", ["flask-sse-hub"])
    for key in ("SSE_BIND", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"):
        monkeypatch.delenv(key, raising=False)
    return apps


def test_it_serves_the_standalone_hub_with_the_packaged_settings(built: list[Any]) -> None:
    command.main([])
    (app,) = built
    assert sys.argv == ["flask-sse-hub", "--config", command.CONFIG, command.APP]
    assert app.app_uri == "flask_sse_hub.server:create_app()"
    assert app.cfg.worker_class_str == "gevent"
    assert app.cfg.workers == 1
    assert app.cfg.bind == ["127.0.0.1:8000"]


def test_command_line_options_win_over_the_packaged_settings(built: list[Any]) -> None:
    command.main(["--bind", "0.0.0.0:9000", "--workers", "3"])
    (app,) = built
    assert app.cfg.bind == ["0.0.0.0:9000"]
    assert app.cfg.workers == 3
    assert app.cfg.worker_class_str == "gevent"


def test_without_arguments_it_takes_the_processes_own(
    built: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["flask-sse-hub", "--workers", "2"])
    command.main()
    (app,) = built
    assert app.cfg.workers == 2
