"""Presence: who is subscribed to a channel, and how many streams it has, across workers.

Each worker knows its own streams (the broker's registry: channel and
subject of each). A stream that ends stays present for ``grace`` seconds
(``SSE_PRESENCE_GRACE_SECONDS``), so a client that reconnects within it — to
this worker or another — is neither a leave nor a join; one that reconnects
to this worker takes its own place back at once.

With a backend that shares presence (Redis), every worker publishes its
snapshot under a lease of two heartbeats, renewed every heartbeat and
rewritten within a tick of any change: a worker that dies (SIGKILL, a lost
host) leaves presence when its lease runs out. Details:
docs/operations.md#presence.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .broker import Broker

#: ``(channel, subject)``; the subject is None for a stream nobody identified.
Key = tuple[str, "str | None"]


class Presence:
    """One hub's presence in this process, and its view of everyone else's."""

    def __init__(self, broker: Broker, *, grace: float, lease: float) -> None:
        self.broker = broker
        self.grace = grace
        self.lease = lease
        #: This process's name in the shared presence.
        self.worker = secrets.token_hex(8)
        self._current: Counter[Key] = Counter()
        #: Streams that ended within the grace: key -> when each one's grace ends.
        self._lingering: dict[Key, list[float]] = {}
        self._shared_at = 0.0
        self._dirty = False
        # The ticker and the requests asking for presence both follow the registry.
        self._lock = threading.Lock()

    # -- this process -------------------------------------------------------

    def tick(self) -> None:
        """Follow the registry (ticker thread); share the snapshot when it changed or is due."""
        now = time.monotonic()
        snapshot: dict[str, str] | None = None
        with self._lock:
            self._refresh(now)
            for key, ends in list(self._lingering.items()):
                kept = [end for end in ends if end > now]
                if len(kept) != len(ends):
                    self._dirty = True
                    if kept:
                        self._lingering[key] = kept
                    else:
                        del self._lingering[key]
            if self.broker.backend.shares_presence and (
                self._dirty or now - self._shared_at >= self.lease / 2
            ):
                self._dirty = False
                self._shared_at = now
                snapshot = self.snapshot()
        if snapshot is not None:
            self.broker.backend.share_presence(self.worker, snapshot, self.lease)

    def _refresh(self, now: float) -> None:
        """Bring ``_current`` and ``_lingering`` up to the registry (under ``_lock``).

        Called by every query too, not only by the ticker: a stream that just
        ended must linger from the moment it left the registry, never be
        missing until the next tick.
        """
        changes = self.broker.registration_changes()
        if changes is None:  # too many to follow one by one: start from the registry
            current = Counter(self.broker.registrations())
            changes = [*((key, -1) for key in (self._current - current).elements()),
                       *((key, 1) for key in (current - self._current).elements())]
        for key, delta in changes:
            self._dirty = True
            if delta > 0:
                self._current[key] += 1
                ends = self._lingering.get(key)
                if ends:  # back within its grace: in its own place again
                    del ends[0]
                    if not ends:
                        del self._lingering[key]
            else:
                self._current[key] -= 1
                if self._current[key] <= 0:
                    del self._current[key]
                self._lingering.setdefault(key, []).append(now + self.grace)

    def snapshot(self) -> dict[str, str]:
        """This process's presence, per channel: ``[streams, [subjects]]`` as JSON."""
        streams: Counter[str] = Counter()
        subjects: dict[str, set[str]] = {}
        for (channel, subject), count in self._counted():
            streams[channel] += count
            if subject is not None:
                subjects.setdefault(channel, set()).add(subject)
        return {
            channel: json.dumps([count, sorted(subjects.get(channel, ()))])
            for channel, count in streams.items()
        }

    def _counted(self) -> Iterable[tuple[Key, int]]:
        yield from self._current.items()
        for key, ends in self._lingering.items():
            yield key, len(ends)

    def _local(self, channel: str) -> tuple[int, set[str]]:
        now = time.monotonic()
        count, present = 0, set[str]()
        with self._lock:
            self._refresh(now)
            for (name, subject), streams in self._current.items():
                if name == channel:
                    count += streams
                    if subject is not None:
                        present.add(subject)
            for (name, subject), ends in self._lingering.items():
                lingering = sum(1 for end in ends if end > now)
                if name == channel and lingering:
                    count += lingering
                    if subject is not None:
                        present.add(subject)
        return count, present

    # -- every worker ---------------------------------------------------------

    def of(self, channel: str) -> tuple[int, list[str]]:
        """Streams on ``channel`` and their subjects, over every worker sharing presence."""
        count, subjects = self._local(channel)
        for worker, entry in self.broker.backend.shared_presence(channel).items():
            if worker == self.worker:
                continue  # ours is fresher here than what we shared
            parsed = _entry(entry)
            if parsed is not None:  # else not a snapshot of ours: nobody's presence
                count += parsed[0]
                subjects.update(parsed[1])
        return count, sorted(subjects)

    def leave(self) -> None:
        """This process stops (shutdown): its streams leave everyone's presence now."""
        if self.broker.backend.shares_presence:
            self.broker.backend.share_presence(self.worker, {}, self.lease)


def _entry(text: str) -> tuple[int, list[str]] | None:
    """A shared snapshot entry, ``[streams, [subjects]]``, checked whole before it counts."""
    try:
        streams, names = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(streams, int) or isinstance(streams, bool) or streams < 0:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return streams, names
