"""Rate-limited warnings: a flood of bad requests cannot fill a disk with log lines."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class RateLimitedLog:
    """At most one warning per key every ``interval`` seconds; the rest are counted.

    The next warning of a key says how many were suppressed since the last
    one, so nothing is hidden, only folded.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval; True if logged."""
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(key, 0.0):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._next[key] = now + self._interval
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, suppressed, self._interval)
        self._logger.warning(message, *args)
        return True
