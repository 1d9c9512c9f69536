"""Shared fixtures: real service URLs (skip or fail when unreachable), key prefixes, private servers.

A backend test skips with a clear reason when its server is unreachable, except when
``ONEX_REQUIRE_SERVICES=1`` (set by ``.ci/run``), which turns the skip into a failure so a
missing server cannot hide. This holds both for a test marked ``redis``/``postgres``/``amqp``/
``nats`` and for one that asks for the server's fixture (``redis_url``, ``postgres_dsn``,
``amqp_url``, ``nats_url``); a test that uses a fixture gets its marker
added, so ``-m "not redis"`` deselects every Redis test. Tests never stop or reconfigure the
machine's shared servers: a fault test starts its own ``redis-server`` on a free port with
:func:`private_redis` and kills that.
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
AMQP_URL = os.environ.get("ONEX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("ONEX_NATS_URL", "nats://127.0.0.1:4222")
REQUIRE = os.environ.get("ONEX_REQUIRE_SERVICES") == "1"

# marker -> (server name, URL, default port, environment variable)
SERVERS: dict[str, tuple[str, str, int, str]] = {
    "redis": ("Redis", REDIS_URL, 6379, "ONEX_REDIS_URL"),
    "postgres": ("PostgreSQL", POSTGRES_DSN, 5432, "ONEX_POSTGRES_DSN"),
    "amqp": ("RabbitMQ", AMQP_URL, 5672, "ONEX_AMQP_URL"),
    "nats": ("NATS", NATS_URL, 4222, "ONEX_NATS_URL"),
}
# fixture -> the marker a test using it gets
FIXTURE_MARKERS = {"redis_url": "redis", "redis_prefix": "redis", "postgres_dsn": "postgres",
                   "amqp_url": "amqp", "nats_url": "nats"}
_reachability: dict[str, bool] = {}


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1",
                                       parsed.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def _masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (skip reasons are printed)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.rsplit("@", 1)[1]
    return parsed._replace(netloc=f"{parsed.username or ''}:***@{netloc}").geturl()


def _need(marker: str) -> str:
    """The URL of the server behind ``marker``; skip (or fail under ONEX_REQUIRE_SERVICES=1)."""
    name, url, port, variable = SERVERS[marker]
    if marker not in _reachability:
        _reachability[marker] = _reachable(url, port)
    if _reachability[marker]:
        return url
    msg = (f"{name} is unreachable at {_masked(url)} (start the server, or point {variable} at "
           "one)")
    if REQUIRE:
        pytest.fail(msg + "; ONEX_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(msg)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a server's fixture (so ``-m "not redis"`` deselects it)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = FIXTURE_MARKERS.get(fixture)
            if marker is not None and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked with a server skips when that server is unreachable (fails under
    ONEX_REQUIRE_SERVICES=1), whether or not it asks for the server's fixture."""
    for marker in SERVERS:
        if item.get_closest_marker(marker) is not None:
            _need(marker)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the shared Redis server (ONEX_REDIS_URL)."""
    return _need("redis")


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
    return _need("postgres")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the shared RabbitMQ server (ONEX_AMQP_URL)."""
    return _need("amqp")


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of the shared NATS server (ONEX_NATS_URL)."""
    return _need("nats")


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


def _pg_tool(name: str) -> str | None:
    import glob

    found = shutil.which(name)
    if found:
        return found
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return path
    return None


class PrivatePostgres:
    """A PostgreSQL server owned by one test (``initdb`` + ``postgres`` as the ``postgres`` user
    through ``runuser``, trust auth, on a free port); ``stop()`` kills it (immediate shutdown,
    like a crash) and ``start()`` restarts it on the same port and data."""

    def __init__(self) -> None:
        import tempfile

        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.dir = tempfile.mkdtemp(prefix="onex-pg-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._initialised = False

    def _need(self) -> tuple[str, str]:
        initdb, postgres = _pg_tool("initdb"), _pg_tool("postgres")
        if initdb is None or postgres is None or shutil.which("runuser") is None:
            if REQUIRE:
                pytest.fail("initdb/postgres/runuser are not installed")
            pytest.skip("initdb/postgres/runuser are not installed")
        return initdb, postgres

    def start(self) -> None:
        initdb, postgres = self._need()
        data = os.path.join(self.dir, "data")
        if not self._initialised:
            shutil.chown(self.dir, "postgres", "postgres")
            subprocess.run(["runuser", "-u", "postgres", "--", initdb, "-D", data, "-A", "trust",
                            "-U", "postgres", "--no-sync", "-E", "UTF8"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._initialised = True
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", postgres, "-D", data, "-p", str(self.port),
             "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("private postgres exited at start")
            try:
                out = subprocess.run(
                    ["runuser", "-u", "postgres", "--", _pg_tool("pg_isready") or "pg_isready",
                     "-h", "127.0.0.1", "-p", str(self.port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5)
                if out.returncode == 0:
                    return
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)
        raise RuntimeError("private postgres did not start")

    def stop(self) -> None:
        """Kill the server: SIGQUIT to the postmaster (immediate shutdown, no checkpoint)."""
        if self.proc is not None:
            pid = self._postmaster_pid()
            if pid is not None:
                try:
                    os.kill(pid, 3)  # SIGQUIT
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def _postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server on a free port, killed and removed at the end of the test."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()
