"""Toy capabilities for the engine's tests and benchmarks, registered in private registries.

The engine's tests must not depend on the real capabilities (they are written in parallel and
have backends), so they compose these small mixins instead. They mirror seed 000's dependency
graph (metrics needs nothing; health_check, caching and event_bus need metrics; retry and
circuit_breaker need metrics and health_check) and build small facility objects in their setup
hooks, like the real ones do.

This module is import-stable: every mixin, facility and config model is a module-level name, so
``pickle`` in a fresh interpreter can import them by reference. :data:`REGISTRY` is a private
registry filled at import; :func:`make_registry` builds a fresh one for tests that mutate it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from onex_compose import NodeCompute, Registry, coerce_config, facility

__all__ = [
    "REGISTRY",
    "TOY_NAMES",
    "MixinToyCaching",
    "MixinToyCircuitBreaker",
    "MixinToyEventBus",
    "MixinToyHealthCheck",
    "MixinToyMetrics",
    "MixinToyRetry",
    "ToyBreaker",
    "ToyBus",
    "ToyCache",
    "ToyHealth",
    "ToyMetrics",
    "ToyNode",
    "ToyService",
    "make_registry",
    "plain_mixin",
    "forget_plugin_modules",
    "write_plugin_distribution",
]


# -- facilities -------------------------------------------------------------------------------


class ToyMetricsConfig(BaseModel):
    """Config model of the toy metrics capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prefix: str = "toy"


class ToyMetrics:
    """A counter dictionary: the smallest metrics facility."""

    __slots__ = ("counts", "prefix")

    def __init__(self, prefix: str = "toy") -> None:
        self.prefix = prefix
        self.counts: dict[str, int] = {}

    def increment(self, name: str, value: int = 1) -> None:
        key = f"{self.prefix}.{name}"
        self.counts[key] = self.counts.get(key, 0) + value


class ToyCacheConfig(BaseModel):
    """Config model of the toy caching capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_size: int = 128


class ToyCache:
    """A bounded dict cache that counts hits and misses in the metrics facility."""

    __slots__ = ("data", "max_size", "metrics")

    def __init__(self, max_size: int, metrics: ToyMetrics) -> None:
        self.max_size = max_size
        self.metrics = metrics
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key in self.data:
            self.metrics.increment("cache_hits")
            return self.data[key]
        self.metrics.increment("cache_misses")
        return None

    def set(self, key: str, value: Any) -> None:
        if len(self.data) >= self.max_size:
            self.data.pop(next(iter(self.data)))
        self.data[key] = value


class ToyHealth:
    """Named health checks, all of which must return true."""

    __slots__ = ("checks",)

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], bool]] = {}

    def ok(self) -> bool:
        return all(check() for check in self.checks.values())


class ToyBus:
    """An in-process publish/subscribe list."""

    __slots__ = ("metrics", "published")

    def __init__(self, metrics: ToyMetrics) -> None:
        self.metrics = metrics
        self.published: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any) -> None:
        self.metrics.increment("events")
        self.published.append((topic, payload))


class ToyBreaker:
    """A failure counter that opens after ``threshold`` failures."""

    __slots__ = ("failures", "threshold")

    def __init__(self, threshold: int = 3) -> None:
        self.threshold = threshold
        self.failures = 0

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold


# -- mixins -----------------------------------------------------------------------------------


class MixinToyMetrics:
    """Toy metrics: ``self.metrics``."""

    __slots__ = ()

    def setup_metrics(self, config: ToyMetricsConfig | Mapping[str, Any] | None = None) -> None:
        cfg = coerce_config(ToyMetricsConfig, config, "metrics")
        host: Any = self  # a slotted mixin sets its state on the host's __dict__
        host.metrics = ToyMetrics(cfg.prefix)

    @facility
    def metrics(self) -> ToyMetrics:
        return ToyMetrics()


class MixinToyHealthCheck:
    """Toy health checks: ``self.health``, ``self.is_healthy()``."""

    __slots__ = ()
    metrics: ToyMetrics

    def setup_health_check(self, config: Any = None) -> None:
        host: Any = self
        host.health = ToyHealth()

    @facility
    def health(self) -> ToyHealth:
        return ToyHealth()

    def is_healthy(self) -> bool:
        return self.health.ok()


class MixinToyCaching:
    """Toy caching: ``self.cache``."""

    __slots__ = ()
    metrics: ToyMetrics

    def setup_caching(self, config: ToyCacheConfig | Mapping[str, Any] | None = None) -> None:
        cfg = coerce_config(ToyCacheConfig, config, "caching")
        host: Any = self
        host.cache = ToyCache(cfg.max_size, self.metrics)

    @facility
    def cache(self) -> ToyCache:
        return ToyCache(128, self.metrics)


class MixinToyEventBus:
    """Toy event bus: ``self.event_bus``."""

    __slots__ = ()
    metrics: ToyMetrics

    def setup_event_bus(self, config: Any = None) -> None:
        host: Any = self
        host.event_bus = ToyBus(self.metrics)

    @facility
    def event_bus(self) -> ToyBus:
        return ToyBus(self.metrics)


class MixinToyRetry:
    """Toy retry: ``self.with_retry(func, *args, max_attempts=3)``."""

    __slots__ = ()
    metrics: ToyMetrics

    def setup_retry(self, config: Any = None) -> None:
        host: Any = self
        host.retry_attempts = 3

    def with_retry(self, func: Callable[..., Any], *args: Any, max_attempts: int = 3) -> Any:
        last: Exception | None = None
        for _ in range(max_attempts):
            try:
                return func(*args)
            except ValueError as exc:
                self.metrics.increment("retries")
                last = exc
        assert last is not None
        raise last


class MixinToyCircuitBreaker:
    """Toy circuit breaker: ``self.breaker``."""

    __slots__ = ()

    def setup_circuit_breaker(self, config: Any = None) -> None:
        host: Any = self
        host.breaker = ToyBreaker()

    @facility
    def breaker(self) -> ToyBreaker:
        return ToyBreaker()


TOY_NAMES = ("metrics", "health_check", "caching", "event_bus", "retry", "circuit_breaker")


def make_registry(name: str = "toys") -> Registry:
    """A fresh private registry holding the six toy capabilities, their aliases and a bundle.

    Example:
        >>> reg = make_registry()
        >>> sorted(spec.name for spec in reg)[:3]
        ['caching', 'circuit_breaker', 'event_bus']
    """
    reg = Registry(name=name)
    reg.register(MixinToyMetrics, name="metrics", config=ToyMetricsConfig, rank=100)
    reg.register(MixinToyHealthCheck, name="health_check", requires=["metrics"], rank=200)
    reg.register(MixinToyCaching, name="caching", requires=["metrics"], config=ToyCacheConfig,
                 provides=["CachingProtocol"], rank=300)
    reg.register(MixinToyEventBus, name="event_bus", requires=["metrics"])
    reg.register(MixinToyRetry, name="retry", requires=["metrics", "health_check"])
    reg.register(MixinToyCircuitBreaker, name="circuit_breaker",
                 requires=["metrics", "health_check"])
    reg.alias("health_monitoring", "health_check")
    reg.alias("performance_metrics", "metrics")
    reg.alias("event_communication", "event_bus")
    reg.alias("fault_tolerance", "retry", "circuit_breaker")
    return reg


REGISTRY = make_registry("toys")
"""A private registry filled at import (import-stable for pickling tests)."""


class ToyNode(NodeCompute):
    """A node base for the pickling tests: composed names on it (``ToyNode[...]``) are theirs."""

    async def process(self, input_data: Any) -> Any:
        return input_data


class ToyService(NodeCompute, MixinToyCaching):
    """A hand-written class in seed 000's style; ``metrics`` is added automatically."""

    __onex_registry__ = REGISTRY


def plain_mixin(class_name: str, members: Mapping[str, Any] | None = None) -> type:
    """A new rule-abiding mixin class (``__slots__ = ()``) with the given members.

    Example:
        >>> plain_mixin("MixinX", {"hello": lambda self: "hi"})().hello()
        'hi'
    """
    return type(class_name, (), {"__slots__": (), **(members or {})})


PLUGIN_PACKAGE = "onex_toyplugin"
"""Import name of the fake plugin package written by :func:`write_plugin_distribution`."""

_PLUGIN_FILES = {
    "__init__.py": """
        MANIFEST = {
            "capabilities": {
                "ep_alpha": {"mixin": "onex_toyplugin.alpha:MixinEpAlpha"},
                "ep_beta": {"mixin": "onex_toyplugin.beta:MixinEpBeta", "requires": ["ep_alpha"]},
                "ep_gamma": {"mixin": "onex_toyplugin.gamma:MixinEpGamma"},
            },
            "aliases": {"ep_bundle": ["ep_alpha", "ep_gamma"]},
        }
    """,
    "alpha.py": """
        class MixinEpAlpha:
            __slots__ = ()
            def setup_ep_alpha(self, config):
                self.alpha = ["alpha"]
    """,
    "beta.py": """
        class MixinEpBeta:
            __slots__ = ()
            def setup_ep_beta(self, config):
                self.beta = ["beta", *self.alpha]
            def beta_value(self):
                return len(self.beta)
    """,
    "gamma.py": """
        class MixinEpGamma:
            __slots__ = ()
            def setup_ep_gamma(self, config):
                self.gamma = "gamma"
    """,
    "classmixin.py": """
        class MixinEpDelta:
            __onex_capability__ = "ep_delta"
            __slots__ = ()
            def delta(self):
                return "delta"
    """,
    "hook.py": """
        from onex_compose import CapabilitySpec

        class MixinEpEpsilon:
            __slots__ = ()

        def register(registry):
            registry.register(CapabilitySpec(
                name="ep_epsilon", mixin_ref="onex_toyplugin.hook:MixinEpEpsilon",
                requires=["ep_alpha"], declared_at="onex_toyplugin.hook"))
    """,
}


def write_plugin_distribution(root: Path, *, broken: bool = True) -> Path:
    """Write a fake installed plugin (package + ``*.dist-info``) under ``root``; return ``root``.

    Putting ``root`` on ``sys.path`` makes ``importlib.metadata`` find the distribution
    ``onex-toyplugin`` and its entry points in the group ``onex_compose.capabilities``: a
    manifest (``ep_alpha``, ``ep_beta`` requiring ``ep_alpha``, ``ep_gamma``, the bundle
    ``ep_bundle``), a decorated mixin class (``ep_delta``), a registration callable
    (``ep_epsilon``) and, when ``broken``, an entry point whose module does not exist.
    """
    pkg = root / PLUGIN_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    for filename, text in _PLUGIN_FILES.items():
        (pkg / filename).write_text(textwrap.dedent(text).lstrip(), "utf-8")
    info = root / "onex_toyplugin-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: onex-toyplugin\nVersion: 1.0\n", "utf-8")
    lines = [
        "[onex_compose.capabilities]",
        f"toyplugin = {PLUGIN_PACKAGE}:MANIFEST",
        f"toydelta = {PLUGIN_PACKAGE}.classmixin:MixinEpDelta",
        f"toyhook = {PLUGIN_PACKAGE}.hook:register",
    ]
    if broken:
        lines.append(f"toybroken = {PLUGIN_PACKAGE}.does_not_exist:MANIFEST")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", "utf-8")
    importlib.invalidate_caches()
    return root


def forget_plugin_modules() -> None:
    """Drop the fake plugin's modules from ``sys.modules`` (so laziness can be observed)."""
    for name in [m for m in sys.modules if m == PLUGIN_PACKAGE or
                 m.startswith(PLUGIN_PACKAGE + ".")]:
        del sys.modules[name]
