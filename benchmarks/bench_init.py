"""Instance creation: a composed class vs a hand-written flat class building the same objects.

The composed class is ``NodeCompute`` + the six toy capabilities of ``tests/toy_capabilities.py``
(metrics, health_check, caching, event_bus, retry, circuit_breaker); each setup hook builds a
small facility object. The flat class's ``__init__`` builds exactly those objects directly,
which is the floor any composition scheme is measured against (target: <= 1.3x). Extra rows
show the cost of passing configuration (validated by each capability's Pydantic model) and of a
hand-written seed-style class (``class S(NodeCompute, Mixin...)``), which shares the init plan.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import Table, parse_args, time_sync  # noqa: E402
from toy_capabilities import (  # noqa: E402
    TOY_NAMES,
    MixinToyCaching,
    MixinToyCircuitBreaker,
    MixinToyEventBus,
    MixinToyHealthCheck,
    MixinToyMetrics,
    MixinToyRetry,
    ToyBreaker,
    ToyBus,
    ToyCache,
    ToyHealth,
    ToyMetrics,
    make_registry,
)

from onex_compose import NodeCompute, compose  # noqa: E402

REG = make_registry("bench-init")


class FlatService:
    """What a user would write by hand: one ``__init__`` building every facility directly."""

    def __init__(self, contract: Any = None, *, node_id: str | None = None) -> None:
        self.contract = contract
        if node_id is not None:  # as the node base: a default id is made on first read only
            self.node_id = node_id
        self.metrics = ToyMetrics("toy")  # the config defaults, written in by hand
        self.health = ToyHealth()
        self.cache = ToyCache(128, self.metrics)
        self.event_bus = ToyBus(self.metrics)
        self.retry_attempts = 3
        self.breaker = ToyBreaker()


class HandWritten(NodeCompute, MixinToyHealthCheck, MixinToyMetrics, MixinToyCaching,
                  MixinToyEventBus, MixinToyRetry, MixinToyCircuitBreaker):
    """Seed 000's style, on the toy registry."""

    __onex_registry__ = REG


REAL_NAMES = ["metrics", "health_check", "caching", "event_bus", "retry", "circuit_breaker"]


def real_flat_class() -> type:
    """A hand-written class building the real capabilities' facilities directly, with the same
    default configs and the same health-check registrations their setup hooks make."""
    import itertools

    from onex_compose.capabilities.caching import Cache, CachingConfig
    from onex_compose.capabilities.circuit_breaker import CircuitBreakerConfig, CircuitBreakers
    from onex_compose.capabilities.event_bus import EventBus, EventBusConfig
    from onex_compose.capabilities.health_check import HealthCheckConfig, HealthMonitor
    from onex_compose.capabilities.metrics import MetricsConfig, build_metrics
    from onex_compose.capabilities.retry import RetryConfig, RetryPolicy, _RetryHealth

    configs = (MetricsConfig(), HealthCheckConfig(), CachingConfig(), EventBusConfig(),
               RetryConfig(), CircuitBreakerConfig())
    ids = itertools.count()

    class FlatReal:
        def __init__(self) -> None:
            m, h, c, e, r, b = configs
            self.contract = None
            self.node_id = node_id = f"FlatReal-{next(ids)}"
            self.metrics = metrics = build_metrics(m)
            self.health = health = HealthMonitor(h, metrics=metrics, node_id=node_id)
            self.cache = Cache(c, metrics=metrics, owner=node_id, clock=None)
            health.register(self.cache.health, name="cache")
            self.event_bus = EventBus(e, metrics=metrics, source=node_id)
            health.register(self.event_bus.health, name="event_bus")
            self.retry_policy = RetryPolicy(r, metrics=metrics, name=f"{node_id}.retry")
            health.register(_RetryHealth(self), name="retry", critical=False)
            self.circuit_breaker = CircuitBreakers(b, metrics=metrics, clock=None)
            health.register(self.circuit_breaker.health_check, name="circuit_breaker")

        def register_health_check(self, *args: Any, **kwargs: Any) -> str:
            return self.health.register(*args, **kwargs)  # type: ignore[no-any-return]

    return FlatReal


def main() -> None:
    args = parse_args()
    repeats = 2 if args.smoke else args.repeats
    number = 1_000 if args.smoke else 50_000
    table = Table("bench_init", "instance creation: composed vs hand-written flat class")

    composed: Any = compose(NodeCompute, list(TOY_NAMES), registry=REG)
    node = composed()
    flat = FlatService()
    built = {k for k in vars(node) if not k.startswith("_onex")}
    assert set(vars(flat)) == built, f"the two classes must build the same objects: {built}"
    assert all(type(vars(flat)[k]) is type(vars(node)[k]) for k in vars(flat))

    floor = time_sync(FlatService, number=number, repeats=repeats)
    table.add("flat class: __init__ builds 5 facilities directly", floor)
    plain = time_sync(composed, number=number, repeats=repeats)
    table.add("composed NodeCompute + 6 capabilities: cls()", plain, baseline=floor,
              note="toy facilities: the worst case, one setup call (~50 ns) per capability")
    hand = time_sync(HandWritten, number=number, repeats=repeats)
    table.add("hand-written class with the 6 mixins: cls()", hand, baseline=floor)
    config = {"metrics": {"prefix": "svc"}, "caching": {"max_size": 64}}
    configured = time_sync(lambda: composed(capability_config=config), number=number,
                           repeats=repeats)
    table.add("composed: cls(capability_config={2 capabilities})", configured, baseline=floor,
              note="validated by the Pydantic config models")
    real = compose(NodeCompute, REAL_NAMES)
    flat_real = real_flat_class()
    assert {k for k in vars(real()) if not k.startswith("_onex")} - {"contract"} <= (
        set(vars(flat_real())) | {"node_id"})
    real_floor = time_sync(flat_real, number=number // 5, repeats=repeats)
    table.add("flat class building the 6 real facilities directly", real_floor)
    real_time = time_sync(real, number=number // 5, repeats=repeats)
    table.add("composed NodeCompute + the 6 real capabilities: cls()", real_time,
              baseline=real_floor, target="<= 1.3x",
              note="metrics, health_check, caching, event_bus, retry, circuit_breaker")
    bare = time_sync(lambda: NodeCompute(), number=number, repeats=repeats)
    table.add("NodeCompute() with no capabilities", bare, baseline=floor,
              note="the base's own cost (init plan, bookkeeping)")
    table.finish(args.smoke)


if __name__ == "__main__":
    main()
