"""The ticker (``ticker.py``): the process's one thread calling the periodic jobs.

The thread is the process's (hubs of other tests may have jobs on it too);
every test here removes its own jobs, and makes the ticks short for its
duration. Each waits for calls against a deadline, never for a fixed time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from flask_sse_hub import ticker

#: Seconds: the bound on every wait for a job's calls.
WAIT = 10.0


class Job:
    """A job counting its calls (and raising, if told to)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.threads: set[str] = set()
        self._error = error

    def __call__(self) -> None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self._error is not None:
            raise self._error

    def wait(self, calls: int) -> None:
        """Until called ``calls`` times in all (bounded)."""
        deadline = time.monotonic() + WAIT
        while self.calls < calls:
            assert time.monotonic() < deadline, f"called {self.calls} of {calls} times"
            time.sleep(0.005)  # polling against the deadline above


class Records(logging.Handler):
    """The flask_sse_hub log's records (attached to it: propagation may be off)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Job]]:
    """``jobs(error=None)``: a Job on the ticker; every one is stopped at teardown."""
    monkeypatch.setattr(ticker, "INTERVAL", 0.01)
    made: list[Job] = []

    def factory(error: Exception | None = None) -> Job:
        job = Job(error)
        made.append(job)
        ticker.every_tick(job)
        return job

    yield factory
    for job in made:
        ticker.stop(job)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("flask_sse_hub")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_a_job_is_called_on_every_tick_from_the_ticker_thread(
    jobs: Callable[..., Job],
) -> None:
    job = jobs()
    job.wait(3)
    assert job.threads == {"sse-hub-ticker"}


def test_a_failing_job_is_logged_once_per_interval_and_the_others_go_on(
    jobs: Callable[..., Job], records: Records,
) -> None:
    failing = jobs(RuntimeError("ticker-test-boom"))
    healthy = jobs()
    healthy.wait(5)
    failing.wait(5)
    failed = [message for message in records.messages if "ticker-test-boom" in message]
    # Rate limited (one per job every 10 s): five failures, one line naming the job.
    assert len(failed) == 1, failed
    assert failed[0] == f"periodic {failing!r} failed: RuntimeError('ticker-test-boom')"


def test_a_stopped_job_is_called_no_more(jobs: Callable[..., Job]) -> None:
    job, witness = jobs(), jobs()
    job.wait(2)
    ticker.stop(job)
    witness.wait(witness.calls + 2)  # a round begun before stop() is over
    calls = job.calls
    witness.wait(witness.calls + 3)
    assert job.calls == calls
    ticker.stop(job)  # stopping twice (or a job never added) is harmless
