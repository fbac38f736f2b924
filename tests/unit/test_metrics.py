"""The Prometheus metrics (``metrics.py``): lag buckets, and what :meth:`Metrics.sync` copies.

The hubs followed here are fakes (a ``name`` and a ``broker.stats()``) under
names no other test uses. The metrics are one per process and their registry
is process-wide (the ticker may sync at any time too), so every check reads
the increase from values taken after a sync of its own. The exposition over
HTTP, across workers: tests/integration/test_metrics.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import prometheus_client
import pytest
from prometheus_client import REGISTRY

from flask_sse_hub import metrics
from flask_sse_hub.blueprint import Hub
from flask_sse_hub.metrics import LAG_BUCKETS, Metrics, exposition, record_lag

#: The wall clock record_lag reads while a test patches it: exact lags in binary.
NOW = 1000.0
_names = itertools.count()


def sample(name: str, **labels: str) -> float:
    """A sample's value in the process's registry (it must exist)."""
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


class FakeHub:
    """What Metrics reads of a hub: its name and its broker's /stats figures."""

    def __init__(self, name: str, **stats: Any) -> None:
        self.name = name
        self.stats: dict[str, Any] = {"subscribers": 0, **stats}
        self.broker = SimpleNamespace(stats=lambda: dict(self.stats))


@pytest.fixture
def follow() -> Iterator[Callable[..., FakeHub]]:
    """``follow(**stats)``: a fake hub under a fresh name, followed; unfollowed at teardown."""
    followed: list[str] = []

    def factory(name: str | None = None, **stats: Any) -> FakeHub:
        hub = FakeHub(name or f"unit-metrics-{next(_names)}", **stats)
        Metrics.get().follow(cast(Hub, hub))
        followed.append(hub.name)
        return hub

    yield factory
    found = Metrics.get()
    with found._lock:  # no public way to unfollow: the ticker would sync the fakes forever
        for name in followed:
            found._hubs.pop(name, None)


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """record_lag reads :data:`NOW` as the time (the module's clock only)."""
    monkeypatch.setattr(metrics, "time", SimpleNamespace(time=lambda: NOW,
                                                         monotonic=time.monotonic))


# -- record_lag -----------------------------------------------------------------------------


@pytest.mark.parametrize(("lag", "bucket"), [
    (0.0, 0), (0.25, LAG_BUCKETS.index(0.25)), (0.3, LAG_BUCKETS.index(0.5)),
    (10.0, LAG_BUCKETS.index(10.0)), (20.0, len(LAG_BUCKETS)),
])
@pytest.mark.usefixtures("wall_clock")
def test_record_lag_counts_in_the_bucket_whose_bound_is_the_first_at_or_above(
    lag: float, bucket: int,
) -> None:
    counts, total = list(metrics._lag_counts), metrics._lag_sum[0]
    record_lag(NOW - lag, 3)
    added = [now - before for now, before in zip(metrics._lag_counts, counts, strict=True)]
    assert added == [3 if index == bucket else 0 for index in range(len(LAG_BUCKETS) + 1)]
    assert metrics._lag_sum[0] - total == pytest.approx(lag * 3)


# -- sync: counters and gauges ------------------------------------------------------------


def test_follow_creates_every_series_at_zero(follow: Callable[..., FakeHub]) -> None:
    hub = follow()
    for name in metrics.COUNTERS:
        assert sample(f"{name}_total", hub=hub.name) == 0
    assert sample("sse_hub_streams", hub=hub.name) == 0


def test_sync_copies_each_increase_once(follow: Callable[..., FakeHub]) -> None:
    hub = follow(events_published=5, gaps_reported=1)
    found = Metrics.get()
    found.sync()
    assert sample("sse_hub_events_published_total", hub=hub.name) == 5
    assert sample("sse_hub_gaps_total", hub=hub.name) == 1
    found.sync()  # nothing changed: nothing added
    assert sample("sse_hub_events_published_total", hub=hub.name) == 5
    hub.stats["events_published"] = 8
    found.sync()
    assert sample("sse_hub_events_published_total", hub=hub.name) == 8
    assert sample("sse_hub_gaps_total", hub=hub.name) == 1


def test_a_replaced_hub_counting_from_zero_never_decreases_the_counter(
    follow: Callable[..., FakeHub],
) -> None:
    old = follow(events_published=8)
    Metrics.get().sync()
    new = follow(old.name, events_published=2)  # a new app under the same name
    Metrics.get().sync()  # a negative increase would raise in prometheus_client
    restarted = sample("sse_hub_events_published_total", hub=old.name)
    assert restarted >= 8
    new.stats["events_published"] = 5
    Metrics.get().sync()
    assert sample("sse_hub_events_published_total", hub=old.name) == restarted + 3


def test_streams_gauge_follows_subscribers_both_ways(follow: Callable[..., FakeHub]) -> None:
    hub = follow(subscribers=3, redis_broadcaster_lag_seconds=0.5)
    Metrics.get().sync()
    assert sample("sse_hub_streams", hub=hub.name) == 3
    assert sample("sse_hub_redis_broadcaster_lag_seconds", hub=hub.name) == 0.5
    hub.stats["subscribers"] = 1
    Metrics.get().sync()
    assert sample("sse_hub_streams", hub=hub.name) == 1


def test_refuse_counts_per_status() -> None:
    found = Metrics.get()
    found.refuse(418)
    before = sample("sse_hub_requests_refused_total", status="418")
    found.refuse(418)
    assert sample("sse_hub_requests_refused_total", status="418") == before + 1


# -- sync: the lag histogram ----------------------------------------------------------------


LAG = "sse_hub_delivery_lag_seconds"
LE = ("0.1", "0.25", "10.0", "+Inf")


def histogram() -> dict[str, float]:
    return {
        "count": sample(f"{LAG}_count"), "sum": sample(f"{LAG}_sum"),
        **{le: sample(f"{LAG}_bucket", le=le) for le in LE},
    }


@pytest.mark.usefixtures("wall_clock")
def test_sync_adds_the_recorded_lags_to_the_histogram_once() -> None:
    found = Metrics.get()
    found.sync()  # whatever earlier tests' streams recorded is in
    before = histogram()
    record_lag(NOW - 0.25, 2)
    record_lag(NOW - 20.0, 1)
    found.sync()
    after = histogram()
    added = {key: after[key] - before[key] for key in after}
    assert added == {"count": 3, "sum": pytest.approx(20.5),
                     "0.1": 0, "0.25": 2, "10.0": 2, "+Inf": 3}
    found.sync()
    assert histogram() == after


# -- exposition -----------------------------------------------------------------------------


def test_exposition_syncs_then_gives_the_text_format(
    follow: Callable[..., FakeHub], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    hub = follow()
    hub.stats["events_delivered"] = 7
    body, content_type = exposition()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    text = body.decode()
    assert f'sse_hub_events_delivered_total{{hub="{hub.name}"}} 7.0' in text
    for name in ("sse_hub_streams", "sse_hub_delivery_lag_seconds_bucket",
                 "sse_hub_requests_refused_total", "sse_hub_disconnects_total"):
        assert name in text
