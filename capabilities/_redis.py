"""Shared Redis access for capabilities with a ``redis`` backend.

The client library is imported lazily (composing on the memory backend never imports redis).
Clients are cached per (URL, event loop): a node built outside an event loop keeps working
across repeated ``asyncio.run()`` calls, because each loop gets its own connection pool.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

__all__ = ["DEFAULT_REDIS_URL", "async_client", "redis_url", "sync_client"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_async_clients: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_sync_clients: dict[str, Any] = {}


def redis_url(configured: str | None = None) -> str:
    """The URL to use: the configured one, else ``ONEX_REDIS_URL``, else the local server."""
    return configured or os.environ.get("ONEX_REDIS_URL") or DEFAULT_REDIS_URL


def async_client(url: str | None = None, **kwargs: Any) -> Any:
    """A ``redis.asyncio.Redis`` for the running event loop (cached per loop and URL)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    url = redis_url(url)
    per_loop = _async_clients.setdefault(loop, {})
    client = per_loop.get(url)
    if client is None:
        opts = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "protocol": 2}
        opts.update(kwargs)
        client = per_loop[url] = aioredis.Redis.from_url(url, **opts)
    return client


def sync_client(url: str | None = None, **kwargs: Any) -> Any:
    """A synchronous ``redis.Redis`` (cached per URL)."""
    import redis

    url = redis_url(url)
    client = _sync_clients.get(url)
    if client is None:
        opts = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "protocol": 2}
        opts.update(kwargs)
        client = _sync_clients[url] = redis.Redis.from_url(url, **opts)
    return client
