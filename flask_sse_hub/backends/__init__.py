"""Backends: where published events go and where the broadcaster reads them."""

from __future__ import annotations

from ..broker import Backend
from ..config import HubConfig
from ..errors import ConfigError


def make_backend(config: HubConfig, name: str = "sse") -> Backend:
    """The backend ``config`` asks for: Redis when ``SSE_REDIS_URL`` is set, else memory.

    ``name`` (the blueprint's) names the Redis stream, so that every app and
    worker using the same blueprint name on one Redis shares one hub.
    """
    if config.redis_url or config.redis_sentinels:
        try:
            from .redis import RedisBackend  # redis-py is an optional extra
        except ImportError as exc:
            raise ConfigError(
                f"SSE_REDIS_URL is set but redis-py is missing ({exc}): "
                "pip install 'flask-sse-hub[redis]'"
            ) from None
        return RedisBackend(
            config.redis_url, history_size=config.history_size, key=f"flask-sse-hub:{name}",
            timeout=config.redis_timeout, sentinels=config.redis_sentinels,
            sentinel_master=config.redis_sentinel_master, min_replicas=config.redis_min_replicas,
        )
    from .memory import MemoryBackend

    return MemoryBackend(history_size=config.history_size)
