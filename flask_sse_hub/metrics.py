"""Prometheus metrics of the hub, summed over the worker processes of a host.

The hot path never touches ``prometheus_client``: the broker and the streams
keep plain counters (those ``/stats`` shows) and a stream records the delivery
lag of what it writes into a process-wide array of bucket counts (one clock
read per write, :func:`record_lag`). A ticker thread copies the increase of
each into the Prometheus metrics once a second (:meth:`Metrics.sync`), and the
worker answering ``/metrics`` does so first for itself, so a scrape is at most
a second behind on the other workers.

Across gunicorn workers the metrics use ``prometheus_client``'s multiprocess
mode: the packaged gunicorn settings point ``PROMETHEUS_MULTIPROC_DIR`` at a
directory made for the run (:func:`flask_sse_hub.gunicorn_config.on_starting`);
any worker answering ``/metrics`` reads every worker's files. Without it (one
process, ``flask run``) the metrics are this process's.

Names, types and labels: docs/operations.md#metrics. No label is per channel
or per client, so the number of series stays bounded.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from . import ticker

if TYPE_CHECKING:
    from .blueprint import Hub

#: How often every worker copies its figures into the metrics.
SYNC_SECONDS = 1.0
#: Upper bounds (seconds) of the delivery-lag histogram's buckets.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Written by every stream of the process, read by the ticker; under gevent one
# OS thread does both, so the increments are exact (with OS threads a rare
# increment may be lost: the histogram is a measurement, not an account).
_lag_counts = [0] * (len(LAG_BUCKETS) + 1)
_lag_sum = [0.0]


def record_lag(published_at: float, count: int) -> None:
    """``count`` events published at ``published_at`` (wall clock) were just written."""
    lag = time.time() - published_at
    _lag_counts[bisect_left(LAG_BUCKETS, lag)] += count
    _lag_sum[0] += lag * count


#: The /stats figures each counter follows: metric name -> (stats key, help text).
COUNTERS = {
    "sse_hub_events_published": ("events_published", "Events published through this host"),
    "sse_hub_events_delivered": ("events_delivered", "Events written to subscribers' sockets"),
    "sse_hub_subscribers_dropped_slow": (
        "subscribers_dropped_slow", "Subscribers dropped because they read too slowly"),
    "sse_hub_gaps": ("gaps_reported", "sse-hub-gap events sent (events a stream cannot get)"),
    "sse_hub_replays": ("replays_served", "Resumes served from history"),
    "sse_hub_disconnects": ("streams_disconnected", "Streams ended by disconnect()"),
}


def multiprocess_dir() -> str | None:
    """The directory of the multiprocess metrics, when the server set one up."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """This process's Prometheus metrics and the hubs they follow (one per process)."""

    _instance: Metrics | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> Metrics:
        """The process's metrics, created on first use (after the server forked)."""
        with cls._instance_lock:
            if cls._instance is None or cls._instance._pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        # Imported here: prometheus_client picks its multiprocess storage at
        # import, which must come after the server set PROMETHEUS_MULTIPROC_DIR.
        from prometheus_client import Counter, Gauge, Histogram

        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._synced_at = 0.0
        self._hubs: dict[str, Hub] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._lag_seen = [0] * len(_lag_counts)
        self._lag_sum_seen = 0.0
        self.streams = Gauge(
            "sse_hub_streams", "Open streams", ["hub"], multiprocess_mode="livesum",
        )
        self.counters = {
            name: Counter(name, text, ["hub"]) for name, (_, text) in COUNTERS.items()
        }
        self.lag = Histogram(
            "sse_hub_delivery_lag_seconds",
            "Seconds from the publish call to the socket write, per live event",
            buckets=LAG_BUCKETS,
        )
        self.broadcaster_lag = Gauge(
            "sse_hub_redis_broadcaster_lag_seconds",
            "Seconds from an event's XADD to this host's broadcaster reading it (last batch)",
            ["hub"], multiprocess_mode="livemax",
        )
        self.refused = Counter(
            "sse_hub_requests_refused", "Requests answered with an error status", ["status"],
        )

    def follow(self, hub: Hub) -> None:
        """Export ``hub``'s figures from now on (the ticker calls :meth:`sync`)."""
        with self._lock:
            if not self._hubs:
                ticker.every_tick(self._every_second)
            self._hubs[hub.name] = hub
            # Every series from the start, at 0: a rate() over it needs no first event.
            for counter in self.counters.values():
                counter.labels(hub=hub.name)
            self.streams.labels(hub=hub.name).set(0)

    def _every_second(self) -> None:
        now = time.monotonic()
        if now - self._synced_at >= SYNC_SECONDS:
            self._synced_at = now
            self.sync()

    def refuse(self, status: int) -> None:
        """Count a request answered with ``status`` (4xx, 5xx)."""
        self.refused.labels(status=str(status)).inc()

    def sync(self) -> None:
        """Copy what changed since the last call into the Prometheus metrics."""
        with self._lock:
            for name, hub in self._hubs.items():
                self._sync_hub(name, hub.broker.stats())
            self._sync_lag()

    def _sync_hub(self, name: str, stats: dict[str, Any]) -> None:
        self.streams.labels(hub=name).set(stats["subscribers"])
        for metric, (key, _) in COUNTERS.items():
            value = stats.get(key, 0)
            seen = self._seen.get((name, key), 0)
            # Lower than before: a new app under the same name (tests, reloads),
            # counting from zero: all of it is new.
            increase = value - seen if value >= seen else value
            self._seen[name, key] = value
            if increase > 0:
                self.counters[metric].labels(hub=name).inc(increase)
        lag = stats.get("redis_broadcaster_lag_seconds")
        if lag is not None:
            self.broadcaster_lag.labels(hub=name).set(lag)

    def _sync_lag(self) -> None:
        counts, total = list(_lag_counts), _lag_sum[0]
        added = [now - before for now, before in zip(counts, self._lag_seen, strict=True)]
        if not any(added):
            return
        self._add_observations(added, total - self._lag_sum_seen)
        self._lag_seen, self._lag_sum_seen = counts, total

    def _add_observations(self, added: list[int], total: float) -> None:
        # prometheus_client has no call that adds many observations at once;
        # its histogram keeps one value per bucket and the sum, which are
        # incremented here directly (observe() once per event would cost the
        # ticker a lock and a write per event). Checked by the metrics tests.
        buckets = getattr(self.lag, "_buckets", None)
        if buckets is None or len(buckets) != len(added):
            for index, count in enumerate(added):
                bound = (*LAG_BUCKETS, LAG_BUCKETS[-1] * 2)[index]
                for _ in range(count):
                    self.lag.observe(bound)
            return
        for bucket, count in zip(buckets, added, strict=True):
            if count:
                bucket.inc(count)
        self.lag._sum.inc(total)


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type: every worker's metrics with multiprocess."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    Metrics.get().sync()
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST

