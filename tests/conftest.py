"""Fixtures shared by every test directory.

Only things that both unit and integration tests may need live here; the
real-gunicorn fixtures are in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it (bind to port 0); the socket is closed again so that a
    server started next can bind it. Another process could take it in between,
    so server fixtures retry with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a currently unused port on 127.0.0.1."""
    return find_free_port
