"""Rate-limited warnings (flask_sse_hub/logs.py): a flood of bad requests cannot fill a disk.

One line per kind of warning per interval; the next line of that kind says
how many were folded into it. Checked on the class, and on the standalone
hub answering a flood of refused publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Flask

from flask_sse_hub.logs import RateLimitedLog

LOGGER = "flask_sse_hub"


def test_one_line_per_kind_per_interval_and_the_next_one_counts_the_folded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("flask_sse_hub.logs.time.monotonic", lambda: now[0])
    warnings = RateLimitedLog(logging.getLogger(LOGGER), interval=10.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        logged = [warnings.warn("slow", "dropped %s", n) for n in range(50)]
        assert warnings.warn("refused", "refused %s", "x")  # another kind: its own line
        now[0] += 10.0
        assert warnings.warn("slow", "dropped %s", 50)
    assert logged == [True] + [False] * 49
    assert [record.getMessage() for record in caplog.records] == [
        "dropped 0",
        "refused x",
        "dropped 50 (and 49 more like it in the last 10 s)",
    ]


def test_a_flood_of_refused_publishes_is_one_log_line(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(standalone=True, SSE_PUBLISH_TOKEN="the-right-token")
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(200):
            answer = client.post("/publish", json={"data": 1},
                                 headers={"Authorization": "Bearer wrong"})
            assert answer.status_code == 401
    refused = [r for r in caplog.records if "refused publish" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    answer = client.post("/publish", json={"data": 1},
                         headers={"Authorization": "Bearer the-right-token"})
    assert answer.status_code == 202  # and the hub keeps serving
