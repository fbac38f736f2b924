"""A thread whose failure fails the test: ``run_in_thread(fn, *args).join(timeout)``.

Every background thread of a test (a publisher, a reader, a prober) is one of
these rather than a ``threading.Thread`` with a list of failures beside it:
:meth:`Worker.join` fails the test if the thread is still running, and
re-raises in the test's thread whatever the thread raised; :meth:`Worker.check`
does the same at any point while it runs (in a polling loop, say).
"""

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
        except BaseException as exc:  # re-raised in the test's thread by join()/check()
            self._error = exc

    def start(self) -> Worker:
        self.thread.start()
        return self

    @property
    def failed(self) -> bool:
        """True once the thread ended with an exception (which :meth:`check` re-raises)."""
        return self._error is not None

    def check(self) -> None:
        """Re-raise the thread's exception now if it has failed; else return."""
        if self._error is not None:
            raise self._error

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds; fail if still running, re-raise its exception."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            pytest.fail(f"thread {self.thread.name} did not finish within {timeout} s")
        self.check()


def run_in_thread(fn: Callable[..., Any], *args: Any, name: str | None = None) -> Worker:
    """Start ``fn(*args)`` in a (daemon) thread and return its :class:`Worker`."""
    return Worker(fn, *args, name=name).start()
