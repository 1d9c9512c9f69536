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
from typing import Any
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


# -- the landed suites again, with tracing composed (issue 11) ----------------------------------
#
# The flagship (caching, retry, circuit_breaker) and flow-control (rate_limiting, bulkhead,
# timeout) suites and the database suite must stay green when tracing is composed next to the
# capability they test (the guarded-pipeline and event_bus suites run their own [traced]
# variant through their ``make``/``compose`` helpers). Every test of these modules that composes a
# node runs twice, as ``[plain]`` and ``[traced]``: in the traced variant ``compose`` (the
# module's own name and ``onex_compose.compose``) adds ``tracing`` to every composition that
# uses the default registry, and module-level composed classes (``DbNode = compose(...)``,
# ``class Flaky(compose(...))``) are swapped for traced ones. Tracing runs with its defaults:
# sampled spans with every retrofitted capability instrumented (exporter ``none``: spans are
# recorded, events added, then dropped). Tests that check exactly what is composed (pipelines,
# class names, complete metric snapshots) are listed in TRACED_VARIANT_SKIPS with the reason.

TRACED_SUITES = frozenset({
    "test_caching", "test_caching_loads", "test_caching_redis", "test_retry",
    "test_retry_hardening", "test_circuit_breaker", "test_circuit_breaker_redis",
    "test_rate_limiting", "test_rate_limiting_redis", "test_bulkhead", "test_timeout",
    "test_database", "test_database_postgres",
})
_EXACT = "it checks exactly what compose() built, which tracing changes by design"
TRACED_VARIANT_SKIPS: dict[str, str] = {
    "test_composed_by_name_as_the_design_card_uses_it": _EXACT,
    "test_compose_pulls_in_metrics_and_health_check": _EXACT,
}


def _composed_globals(module: object) -> dict[str, type]:
    """The module-level classes built by ``compose`` (or derived from one), by name."""
    out = {}
    for name, value in vars(module).items():
        if isinstance(value, type) and value.__module__ in (module.__name__,  # type: ignore[attr-defined]
                                                            "onex_compose._composed"):
            comp = getattr(value, "__composition__", None)
            if comp is not None and comp.style == "composed" and "tracing" not in comp.capabilities:
                out[name] = value
    return out


def _source(obj: object) -> str:
    import inspect

    obj = getattr(obj, "__wrapped__", None) or getattr(obj, "_fixture_function", None) or obj
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def _composing_names(module: Any) -> frozenset[str]:
    """Module-level names whose use composes a node: composed classes, and helpers and
    fixtures that call ``compose(`` or use such a name (to a fixpoint)."""
    import re

    cached = module.__dict__.get("_onex_composing_names")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    names = set(_composed_globals(module))
    sources = {name: _source(value) for name, value in vars(module).items()
               if callable(value) and not isinstance(value, type)
               and getattr(value, "__module__", None) == module.__name__}
    changed = True
    while changed:
        changed = False
        for name, text in sources.items():
            if name in names or not text:
                continue
            if "compose(" in text or any(re.search(rf"\b{re.escape(n)}\b", text) for n in names):
                names.add(name)
                changed = True
    result = frozenset(names)
    module._onex_composing_names = result
    return result


def _uses_composition(metafunc: pytest.Metafunc) -> bool:
    import re

    names = _composing_names(metafunc.module)
    if any(n in names for n in metafunc.fixturenames):
        return True
    text = _source(metafunc.function)
    return "compose(" in text or any(re.search(rf"\b{re.escape(n)}\b", text) for n in names)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the composing tests of TRACED_SUITES (and any test asking for ``compose_variant``)
    as ``[plain]`` and ``[traced]``; :func:`_apply_compose_variant` does the patching."""
    module = metafunc.module
    asked = "compose_variant" in metafunc.fixturenames
    if not asked:
        if module.__name__.rpartition(".")[2] not in TRACED_SUITES:
            return
        if not _uses_composition(metafunc):
            return
        metafunc.fixturenames.append("compose_variant")
    metafunc.parametrize("compose_variant", ["plain", "traced"])


@pytest.fixture
def compose_variant() -> str:
    """``"plain"`` or ``"traced"`` (parametrised by :func:`pytest_generate_tests`); outside
    the traced suites a test that asks for it runs both variants too."""
    return "plain"


@pytest.fixture(autouse=True)
def _apply_compose_variant(request: pytest.FixtureRequest,
                           monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In a ``[traced]`` test, every composition the test (or its fixtures, which run after
    this autouse fixture) makes gains ``tracing``."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("compose_variant") != "traced":
        yield
        return
    skip = TRACED_VARIANT_SKIPS.get(request.node.originalname)
    if skip:
        pytest.skip(f"traced variant: {skip}")
    pytest.importorskip("opentelemetry.sdk", reason="the traced variant needs [otel]")
    import gc

    gc.collect()  # the [plain] run's nodes go, with the process-scope breakers they shared
    import onex_compose
    from onex_compose._registry import default_registry

    real = onex_compose.compose

    def traced_compose(base: Any, capabilities: Any, /, **options: Any) -> Any:
        caps = list(capabilities)
        if "registry" not in options and "tracing" not in caps:
            caps = ["tracing", *caps]
        return real(base, caps, **options)

    module = request.module
    for name, cls in _composed_globals(module).items():
        comp = cls.__composition__
        if comp.options != type(comp.options)() or comp.registry is not default_registry:
            continue  # structural options or a private registry: left as composed
        if cls.__module__ == "onex_compose._composed":   # DbNode = compose(...)
            traced = real(comp.base, ["tracing", *comp.capabilities])
        else:                                             # class Flaky(compose(...))
            traced = real(cls, ["tracing"])
        monkeypatch.setattr(module, name, traced)
    if getattr(module, "compose", None) is real:
        monkeypatch.setattr(module, "compose", traced_compose)
    monkeypatch.setattr(onex_compose, "compose", traced_compose)
    yield
