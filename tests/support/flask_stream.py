"""A subscribe response of Flask's test client, read as a browser's EventSource would parse it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import cast

import pytest
from werkzeug.test import TestResponse

from .sse_parser import Event, EventStreamParser

#: Seconds: the bound on every wait for events.
WAIT = 10.0


class OpenStream:
    """A 200 subscribe response being read chunk by chunk (each read is bounded by the
    app's heartbeat: an idle stream still writes one)."""

    def __init__(self, response: TestResponse) -> None:
        assert response.status_code == 200, response.get_data(as_text=True)
        self.response = response
        self._chunks: Iterator[bytes] = iter(cast("Iterable[bytes]", response.response))
        self.parser = EventStreamParser()
        self.first_chunk = next(self._chunks)
        self.events: list[Event] = self.parser.feed(self.first_chunk)
        self.ended = False

    def read(self, count: int, timeout: float = WAIT) -> list[Event]:
        """The first ``count`` events of the stream, waiting for them (bounded)."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"got {len(self.events)} of {count} events")
            try:
                chunk = next(self._chunks)  # a heartbeat at the latest after one interval
            except StopIteration:
                raise EOFError(f"stream ended after {len(self.events)} events") from None
            self.events += self.parser.feed(chunk)
        return self.events[:count]

    def next_chunk(self) -> bytes:
        """The next chunk the server writes (events, or a heartbeat when idle)."""
        chunk = next(self._chunks)
        self.events += self.parser.feed(chunk)
        return chunk

    def wait_end(self, timeout: float) -> float:
        """Read until the server ends the body; return how long that took."""
        start = time.monotonic()
        for chunk in self._chunks:
            self.events += self.parser.feed(chunk)
            if time.monotonic() - start > timeout:
                pytest.fail(f"stream still open after {timeout}s")
        self.ended = True
        return time.monotonic() - start

    def close(self) -> None:
        self.response.close()
