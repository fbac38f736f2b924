"""The packaged gunicorn settings and hooks (``gunicorn_config.py``).

The settings are read when gunicorn loads the module, so each test loads a
fresh copy of it with the environment and descriptor limit it wants (the
imported module is left alone). The hooks run on a stand-in worker: the
attributes gunicorn's worker has (``cfg``, ``log``, ``wsgi``) and nothing else.
"""

from __future__ import annotations

import errno
import gc
import importlib.util
import logging
import resource
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import flask_sse_hub
from flask_sse_hub import gunicorn_config
from flask_sse_hub.blueprint import default_capacity

SETTINGS_ENV = ("SSE_BIND", "WEB_CONCURRENCY", "SSE_WORKER_CONNECTIONS", "SSE_GRACEFUL_TIMEOUT",
                "SSE_LOG_LEVEL", "SSE_ACCESS_LOG")


def load_settings(
    monkeypatch: pytest.MonkeyPatch, hard_fds: int, **env: str
) -> ModuleType:
    """A fresh copy of the module as gunicorn loads it, with ``env`` and that hard fd limit."""
    for key in SETTINGS_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (min(hard_fds, 1024), hard_fds))
    spec = importlib.util.spec_from_file_location("gunicorn_config_under_test",
                                                  gunicorn_config.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the settings ---------------------------------------------------------------------------


def test_defaults_one_gevent_worker_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(monkeypatch, hard_fds=1 << 20)
    assert settings.bind == "127.0.0.1:8000"
    assert settings.workers == 1
    assert settings.worker_class == "gevent"
    assert settings.worker_connections == 20000
    assert settings.graceful_timeout == 10
    assert settings.control_socket_disable is True
    assert "%(U)s" in settings.access_log_format and "%(r)s" not in settings.access_log_format


def test_the_environment_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        monkeypatch, hard_fds=1 << 20, SSE_BIND="0.0.0.0:9000", WEB_CONCURRENCY="4",
        SSE_WORKER_CONNECTIONS="5000", SSE_GRACEFUL_TIMEOUT="3", SSE_ACCESS_LOG="-",
    )
    assert (settings.bind, settings.workers, settings.worker_connections) == ("0.0.0.0:9000", 4,
                                                                              5000)
    assert (settings.graceful_timeout, settings.accesslog) == (3, "-")


@pytest.mark.parametrize(
    ("hard_fds", "wanted", "expected"),
    [
        (1 << 20, "20000", 20000),  # room enough: as asked
        (4096, "20000", 4096 - gunicorn_config.FD_RESERVE),  # kept below the descriptors
        (50, "20000", 16),  # never below 16
        (resource.RLIM_INFINITY, "30000", 30000),  # no limit: as asked
    ],
    ids=["room", "fd-limit", "floor", "unlimited"],
)
def test_worker_connections_fit_the_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, hard_fds: int, wanted: str, expected: int,
) -> None:
    settings = load_settings(monkeypatch, hard_fds=hard_fds, SSE_WORKER_CONNECTIONS=wanted)
    assert settings.worker_connections == expected


# -- the one-worker guard and the worker's fitting --------------------------------------


@dataclass
class Cfg:
    workers: int
    worker_class_str: str = "gthread"
    threads: int = 8
    worker_connections: int = 1000


@dataclass
class Log:
    error_log: logging.Logger
    errors: list[str] = field(default_factory=list)

    def error(self, message: str, *args: Any) -> None:
        self.errors.append(message % args)

    def info(self, message: str, *args: Any) -> None:
        pass


@dataclass
class Worker:
    wsgi: Any
    cfg: Cfg
    log: Log


@pytest.fixture
def worker_for() -> Iterator[Callable[..., Worker]]:
    """``worker_for(wsgi, workers=n)``; the SIGTERM handler and log filters restored after."""
    previous = signal.getsignal(signal.SIGTERM)
    thresholds = gc.get_threshold()
    error_log = logging.getLogger("tests.gunicorn.error")
    try:
        yield lambda wsgi, **cfg: Worker(wsgi, Cfg(**cfg), Log(error_log))
    finally:
        signal.signal(signal.SIGTERM, previous)
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        for log_filter in list(error_log.filters):
            error_log.removeFilter(log_filter)


def test_a_memory_hub_in_several_workers_refuses_to_boot(
    make_app: Callable[..., Flask], worker_for: Callable[..., Worker],
) -> None:
    app = make_app()
    worker = worker_for(ProxyFix(app), workers=2)  # found behind middleware too
    with pytest.raises(SystemExit) as exited:
        gunicorn_config.post_worker_init(worker)
    assert exited.value.code == 3  # gunicorn's "worker failed to boot": the master stops
    (message,) = worker.log.errors
    assert "memory backend" in message and "SSE_REDIS_URL" in message
    assert "hub sse" in message


def test_one_worker_with_a_memory_hub_boots_fitted_to_its_threads(
    make_app: Callable[..., Flask], worker_for: Callable[..., Worker],
) -> None:
    app = make_app()
    worker = worker_for(app, workers=1, threads=8)
    before = signal.getsignal(signal.SIGTERM)
    gunicorn_config.post_worker_init(worker)
    hub = flask_sse_hub.hubs(app)["sse"]
    assert worker.log.errors == []
    assert hub.broker.max_streams == default_capacity(8)
    assert hub.threads == 8
    assert signal.getsignal(signal.SIGTERM) is not before  # its streams end on SIGTERM


def test_a_redis_hub_may_run_in_several_workers(
    make_app: Callable[..., Flask], worker_for: Callable[..., Worker],
) -> None:
    pytest.importorskip("redis")
    app = make_app(SSE_REDIS_URL="redis://127.0.0.1:1/0")  # never reached here
    worker = worker_for(app, workers=4, worker_class_str="sync", worker_connections=500)
    gunicorn_config.post_worker_init(worker)
    assert worker.log.errors == []
    assert flask_sse_hub.hubs(app)["sse"].broker.max_streams == default_capacity(500)


def test_an_app_that_is_not_flask_is_left_alone(worker_for: Callable[..., Worker]) -> None:
    worker = worker_for(lambda environ, start_response: [], workers=2)
    gunicorn_config.post_worker_init(worker)
    assert worker.log.errors == []


def test_the_worker_collects_rarely_and_never_scans_the_app_as_loaded(
    worker_for: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SSE_GC_THRESHOLD", raising=False)
    gc.unfreeze()
    gunicorn_config.post_worker_init(worker_for(lambda environ, start_response: [], workers=1))
    assert gc.get_threshold() == gunicorn_config.GC_THRESHOLDS
    assert gc.get_freeze_count() > 1000


@pytest.mark.parametrize("given", ["700,10,10", " 9000, 5 ,7"])
def test_sse_gc_threshold_sets_other_thresholds(
    worker_for: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch, given: str,
) -> None:
    monkeypatch.setenv("SSE_GC_THRESHOLD", given)
    gunicorn_config.post_worker_init(worker_for(lambda environ, start_response: [], workers=1))
    assert gc.get_threshold() == tuple(int(part) for part in given.split(","))


@pytest.mark.parametrize("given", ["many", "700,10", "700,10,10,10", "0,10,10", "-1,5,5"])
def test_a_wrong_sse_gc_threshold_refuses_to_boot(
    worker_for: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch, given: str,
) -> None:
    monkeypatch.setenv("SSE_GC_THRESHOLD", given)
    worker = worker_for(lambda environ, start_response: [], workers=1)
    with pytest.raises(SystemExit) as exited:
        gunicorn_config.post_worker_init(worker)
    assert exited.value.code == 3
    (message,) = worker.log.errors
    assert "SSE_GC_THRESHOLD must be three positive integers" in message and repr(given) in message


# -- the log filter for clients that are gone ---------------------------------------------


def socket_error(code: int, message: str = "Socket error processing request.") -> logging.LogRecord:
    exc = OSError(code, "test")
    return logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, message, None,
                             (OSError, exc, None))


@pytest.mark.parametrize("code", [errno.EBADF, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                  errno.ENETUNREACH])
def test_a_write_to_a_client_that_is_gone_is_not_logged_as_an_error(code: int) -> None:
    assert not gunicorn_config._ClientGone().filter(socket_error(code))


def test_other_socket_errors_are_still_logged() -> None:
    keep = gunicorn_config._ClientGone()
    assert keep.filter(socket_error(errno.ENOMEM))
    assert keep.filter(socket_error(errno.EBADF, "Error handling request"))
