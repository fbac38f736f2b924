"""The demo page (SPEC §3 ``GET /``) in a real headless Chromium.

Its ``EventSource`` shows events published over HTTP (as ``curl`` would),
multi-line and non-ASCII data exactly, and its form publishes too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..conftest import HubLauncher

pytestmark = pytest.mark.integration


def test_demo_page_shows_events_published_over_http_and_from_its_form(
    start_hub: HubLauncher, page: Any, tmp_path: Path,
) -> None:
    hub = start_hub()
    page.goto(f"http://127.0.0.1:{hub.port}/")
    page.wait_for_selector("#state[data-state=open]", timeout=10_000)

    tricky = ["line one\nline two", "  leading spaces", "héllo wörld ✓"]
    ids = [hub.publish(data, channel="default") for data in tricky]
    page.wait_for_function("document.querySelectorAll('#events tr').length >= 3")

    page.fill("#pub-data", "from the form")
    page.click("#publish-form button")
    page.wait_for_function("document.querySelectorAll('#events tr').length >= 4")
    page.wait_for_selector("#publish-result:has-text('published')")

    rows = page.eval_on_selector_all(
        "#events tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    # Newest first: the form's event, then the three published over HTTP.
    assert [row[3] for row in rows] == ["from the form", *reversed(tricky)]
    assert [row[1] for row in rows[1:]] == list(reversed(ids))
    assert page.text_content("#last-id") == rows[0][1]
    page.wait_for_function("document.getElementById('subscribers').textContent === '1'")
    page.screenshot(path=str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 0
