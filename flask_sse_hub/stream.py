"""One subscriber's response body: opening, replay, live events and heartbeats, ending.

A :class:`Stream` is the WSGI body of ``GET /stream``: the server iterates it
and calls :meth:`Stream.close` when the response is over, however it ended.
It holds no request context, only its subscription and its socket, so an idle
stream costs little memory. The steps, in order:

* **opening**: ``retry:``, a comment, then a gap event (the resume id is
  unknown or trimmed) or the start position (``sse-hub-position``);
* **replay**: what a resuming client missed, read lazily (Redis reads it a
  page at a time while the previous page is written);
* **live**: chunks from the subscription's queue, coalesced, with a
  heartbeat when idle, until the hub ends the stream (slow, shutdown, gone),
  its age or token runs out, or its client leaves;
* **ending**: unregister, and make the server close the connection instead
  of keeping it alive, so that the reconnect opens a new one.

What each step sends, and when a stream ends: docs/protocol.md#stream.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .broker import CLOSE, Replay, ReplayInterrupted, Subscription, join_chunks, tag
from .metrics import record_lag
from .sockets import end_of_requests, forget_error
from .wire import encode_gap, encode_position

if TYPE_CHECKING:
    from .blueprint import Hub

log = logging.getLogger("flask_sse_hub")


class Stream:
    """The body of one stream; iterate it once, then :meth:`close` it."""

    __slots__ = ("_hub", "_last_id", "_replay", "_sock", "_sub", "_watch")

    def __init__(
        self, hub: Hub, sub: Subscription, replay: Replay, last_id: str | None,
        sock: socket.socket | None, expires_at: float | None = None,
    ) -> None:
        self._hub = hub
        self._sub = sub
        self._replay = replay
        self._last_id = last_id
        self._sock = sock
        deadline = self._end_time(expires_at)
        if deadline is not None:
            hub.broker.end_at(sub, deadline)
        self._watch = hub.watcher.watch(sock, self._gone)

    def __iter__(self) -> Iterator[bytes]:
        # A chain, not a generator around the steps: one suspended frame less
        # for every idle stream.
        return itertools.chain((self._opening(),), self._replayed(), self._live())

    def close(self) -> None:
        """Unregister: the WSGI ``close``, which servers call however the response ended."""
        self._hub.watcher.forget(self._watch)
        self._watch = None
        self._hub.broker.unsubscribe(self._sub)

    def _gone(self) -> None:
        """Its client hung up or vanished (the watcher): end the stream now."""
        forget_error(self._sock)
        self._hub.broker.end(self._sub, "gone")

    def _end_time(self, expires_at: float | None) -> float | None:
        """When the stream ends by itself (monotonic): its age limit, or its token's expiry."""
        deadline = None
        max_age = self._hub.config.max_connection_seconds
        if max_age is not None:
            # Jitter spreads the reconnects of streams opened together.
            deadline = time.monotonic() + max_age * random.uniform(0.9, 1.0)
        if expires_at is not None:
            expiry = time.monotonic() + (expires_at - time.time())
            deadline = expiry if deadline is None else min(deadline, expiry)
        return deadline

    def _opening(self) -> bytes:
        first = self._hub.preamble
        replay = self._replay
        if replay.gap:
            assert self._last_id is not None
            return first + encode_gap(self._last_id, replay.gap_position)
        if replay.start is not None:
            return first + encode_position(replay.start)
        return first

    def _replayed(self) -> Iterator[bytes]:
        sub = self._sub
        try:
            frames = (
                (tag(event) for event in self._replay.events) if sub.tagged
                else (event.frame for event in self._replay.events)
            )
            for chunk, count in join_chunks(frames):
                yield chunk
                sub.delivered += count
        except ReplayInterrupted as exc:
            # Its client resumes from the last event it got: nothing is lost.
            log.warning("ending a stream during its replay: %s", exc)
            sub.end_reason = "replay"
        self._replay = Replay()  # what is written is not kept

    def _live(self) -> Iterator[bytes]:
        """Live chunks and heartbeats until the stream ends; then the connection closes.

        The wait has no timeout: heartbeats arrive through the queue like
        events (the broker's sweep puts one in the queue of each idle
        stream), and so does the end at the stream's deadline. One timer per
        hub instead of one per wait of every stream.
        """
        sub = self._sub
        while sub.end_reason is None:
            item = sub.queue.get()
            if item is CLOSE or sub.end_reason is not None:
                break
            chunk, count, published_at = item
            if not count:  # a heartbeat
                yield chunk
                continue
            if sub.enqueued - sub.dequeued > count:
                chunk, count = self._coalesce(chunk, count)
            sub.dequeued += count
            yield chunk
            # Resumed: the server wrote the chunk (the lag of its oldest event).
            sub.delivered += count
            record_lag(published_at, count)
        self.close()  # at once, not when the server gets round to it
        end_of_requests(self._sock)

    def _coalesce(self, chunk: bytes, count: int) -> tuple[bytes, int]:
        """Join what queued up while the last chunk was being written: one write for all."""
        sub = self._sub
        parts = [chunk]
        while True:
            try:
                more = sub.queue.get_nowait()
            except queue.Empty:
                break
            if more is CLOSE:
                sub.end_reason = sub.end_reason or "closed"
                break
            parts.append(more[0])
            count += more[1]  # the first chunk's time stands for all: the oldest
        return b"".join(parts), count

