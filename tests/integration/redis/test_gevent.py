"""Under gevent, the Redis broadcaster's blocking XREAD blocks no other greenlet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_blocking_xread_does_not_block_other_greenlets(redis_url: str) -> None:
    script = Path(__file__).with_name("gevent_xread_check.py")
    done = subprocess.run(
        [sys.executable, str(script), redis_url],
        capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout
