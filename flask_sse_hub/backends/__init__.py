"""Backends: where published events go and where the broadcaster reads them."""

from __future__ import annotations

from ..broker import Backend
from ..config import HubConfig
from ..errors import ConfigError


def make_backend(config: HubConfig) -> Backend:
    """The backend ``config`` asks for: Redis when ``SSE_REDIS_URL`` is set, else memory."""
    if config.redis_url:
        raise ConfigError("SSE_REDIS_URL is set, but the Redis backend is not built yet")
    from .memory import MemoryBackend

    return MemoryBackend(history_size=config.history_size)
