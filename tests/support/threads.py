"""A thread whose failure fails the test: ``run_in_thread(fn, *args).join(timeout)``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest


class Worker:
    """``fn(*args)`` running in a thread; :meth:`join` re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        self._fn = fn
        self._args = args
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._fn(*self._args)
        except BaseException as exc:  # re-raised in the test's thread by join()
            self._error = exc

    def start(self) -> Worker:
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds; fail if still running, re-raise its exception."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            pytest.fail(f"thread {self.thread.name} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error


def run_in_thread(fn: Callable[..., Any], *args: Any, name: str | None = None) -> Worker:
    """Start ``fn(*args)`` in a (daemon) thread and return its :class:`Worker`."""
    return Worker(fn, *args, name=name).start()
