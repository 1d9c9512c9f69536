"""Shared fixtures: real service URLs (skip or fail when unreachable), key prefixes, private servers.

A backend test skips with a clear reason when its server is unreachable, except when
``ONEX_REQUIRE_SERVICES=1`` (set by ``.ci/run``), which turns the skip into a failure so a
missing server cannot hide. Tests never stop or reconfigure the machine's shared servers: a fault
test starts its own ``redis-server`` on a free port with :func:`private_redis` and kills that.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

REDIS_URL = os.environ.get("ONEX_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("ONEX_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE = os.environ.get("ONEX_REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1",
                                       parsed.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(name: str, url: str, port: int) -> str:
    if _reachable(url, port):
        return url
    msg = f"{name} is unreachable at {url} (set the URL variable or start the server)"
    if REQUIRE:
        pytest.fail(msg + "; ONEX_REQUIRE_SERVICES=1 makes this a failure")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the shared Redis server (ONEX_REDIS_URL)."""
    return _need("Redis", REDIS_URL, 6379)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key/channel prefix for one test; every key under it is deleted afterwards."""
    import redis

    prefix = f"onextest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the shared PostgreSQL server (ONEX_POSTGRES_DSN)."""
    return _need("PostgreSQL", POSTGRES_DSN, 5432)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server owned by one test, on a free port; ``stop()``/``start()`` simulate outages."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            if REQUIRE:
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _reachable(self.url, self.port):
                return
            time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private redis-server on a free port, killed at the end of the test."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
