"""The facility: a node's named breakers, created on first use from the config, and the
process-wide registry of breakers shared by name (``scope: process``)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config
from onex_compose.capabilities import _redis as redis_support
from onex_compose.capabilities._context import monotonic
from onex_compose.capabilities._redis import require_client
from onex_compose.capabilities.circuit_breaker._breaker import CircuitBreaker
from onex_compose.capabilities.circuit_breaker._model import (
    BreakerPolicy,
    CircuitBreakerConfig,
    CircuitStateChange,
    Clock,
    Listener,
    _Dispatcher,
)
from onex_compose.capabilities.circuit_breaker._redis import AnyBreaker, RedisCircuitBreaker
from onex_compose.exceptions import ConfigurationError

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------
# the facility: named breakers


class _FanoutMetrics:
    """The metrics of a process-scope breaker: every sharing node's metrics facility."""

    __slots__ = ("targets",)

    def __init__(self, targets: weakref.WeakSet[_Dispatcher]) -> None:
        self.targets = targets

    def increment(self, name: str, *args: Any, **kwargs: Any) -> None:
        for target in list(self.targets):
            if target.metrics is not None:
                target.metrics.increment(name, *args, **kwargs)

    def gauge(self, name: str, *args: Any, **kwargs: Any) -> None:
        for target in list(self.targets):
            if target.metrics is not None:
                target.metrics.gauge(name, *args, **kwargs)


class _Fanout(_Dispatcher):
    """The dispatcher of a process-scope breaker: its state changes and counters reach every
    node that shares it (their metrics and ``on_state_change`` listeners); logged once."""

    def __init__(self) -> None:
        self.targets: weakref.WeakSet[_Dispatcher] = weakref.WeakSet()
        super().__init__(_FanoutMetrics(self.targets))

    def emit(self, change: CircuitStateChange, own: list[Listener]) -> None:
        shared = [listener for target in list(self.targets) for listener in target.listeners]
        super().emit(change, [*own, *shared])

    @property  # type: ignore[override]
    def tracer(self) -> Any:
        """A sharing node's tracer (any: span events go to the current span, whose ever it is)."""
        for target in list(self.targets):
            if target.tracer is not None:
                return target.tracer
        return None


_shared: weakref.WeakValueDictionary[tuple[str, ...], AnyBreaker] = \
    weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def _join_shared(key: tuple[str, ...], policy: BreakerPolicy, dispatch: _Dispatcher,
                 build: Callable[[_Dispatcher], AnyBreaker]) -> AnyBreaker:
    """The process-wide breaker under ``key`` (built on first use); ``dispatch`` (one node's)
    starts hearing it. A different policy for the same name is a configuration error."""
    with _shared_lock:
        breaker = _shared.get(key)
        if breaker is None:
            breaker = _shared[key] = build(_Fanout())
        elif breaker.policy != policy:
            differ = sorted(k for k in BreakerPolicy.model_fields
                            if getattr(breaker.policy, k) != getattr(policy, k))
            raise ConfigurationError(
                f"circuit breaker {key[-1]!r} is shared by every node of this process "
                f"(scope: process) and already exists with a different policy ({', '.join(differ)} "
                "differ); give the nodes the same policy for it, or use scope: node (one breaker "
                "per node)", capability="circuit_breaker")
        fanout = cast(_Fanout, breaker._dispatch)
        fanout.targets.add(dispatch)
    dispatch.created(breaker.name, breaker.state)
    return breaker


class CircuitBreakers:
    """The node's breakers, one per operation name, created on first use from the config.

    ``self.circuit_breaker("payments")`` (or ``.get("payments")``) returns the breaker named
    ``payments``, with the default policy plus ``breakers["payments"]`` from the config;
    ``.default`` is the one guarding ``process()``. Listeners appended to ``on_state_change``
    hear every breaker of the node.

    Example:
        >>> breakers = CircuitBreakers(CircuitBreakerConfig(breakers={"db": {"failure_threshold": 2}}))
        >>> breakers("db").policy.failure_threshold, breakers("api").policy.failure_threshold
        (2, 5)
        >>> sorted(breakers.states().items())
        [('api', 'closed'), ('db', 'closed')]
    """

    def __init__(self, config: CircuitBreakerConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, clock: Clock | None = None) -> None:
        self.config: CircuitBreakerConfig = coerce_config(CircuitBreakerConfig, config,
                                                          "circuit_breaker")
        self._clock = clock
        self._dispatch = _Dispatcher(metrics)
        self.on_state_change = self._dispatch.listeners
        self._breakers: dict[str, AnyBreaker] = {}
        self._lock = threading.Lock()

    def use_tracer(self, tracer: Any) -> None:
        """Report state changes and rejections of every breaker of this node as span events
        (``circuit_breaker.state_change``, ``circuit_breaker.rejected``) on the current span;
        ``None`` stops. ``setup_circuit_breaker`` calls it when the node composes tracing."""
        self._dispatch.tracer = tracer

    @property
    def clock(self) -> Clock | None:
        """The injected clock (``None``: real time); setting it rebuilds nothing, it re-points
        every existing breaker, so tests can inject a ``ManualClock`` into a composed node."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock | None) -> None:
        self._clock = clock
        with self._lock:
            for breaker in self._breakers.values():
                if isinstance(breaker, CircuitBreaker):
                    breaker.clock = clock or monotonic
                else:
                    breaker.set_clock(clock, self.config.redis_clock)

    def get(self, name: str | None = None) -> AnyBreaker:
        """The breaker called ``name`` (default: the ``process()`` breaker), created if new."""
        name = name or self.config.process_breaker
        breaker = self._breakers.get(name)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = self._make(name)
        return breaker

    __call__ = get

    def _make(self, name: str) -> AnyBreaker:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty string name, got {name!r}")
        cfg = self.config
        policy = cfg.policy(name)
        if cfg.backend == "redis":
            require_client("circuit_breaker")

        def build(dispatch: _Dispatcher) -> AnyBreaker:
            if cfg.backend == "redis":
                return RedisCircuitBreaker(
                    name, policy, url=cfg.redis_url, namespace=cfg.namespace, clock=self._clock,
                    redis_clock=cfg.redis_clock, on_backend_error=cfg.on_backend_error,
                    backend_retry_interval=cfg.backend_retry_interval, _dispatcher=dispatch)
            return CircuitBreaker(name, policy, clock=self._clock or monotonic,
                                  _dispatcher=dispatch)

        if cfg.scope == "node":
            return build(self._dispatch)
        key = ((cfg.backend, redis_support.redis_url(cfg.redis_url), cfg.namespace, name)
               if cfg.backend == "redis" else ("memory", name))
        return _join_shared(key, policy, self._dispatch, build)

    @property
    def default(self) -> AnyBreaker:
        """The breaker that guards ``process()`` (``config.process_breaker``)."""
        return self.get(self.config.process_breaker)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[AnyBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __repr__(self) -> str:
        return f"<CircuitBreakers backend={self.config.backend} {self.states()}>"

    def states(self) -> dict[str, str]:
        """``{name: "closed" | "open" | "half_open"}`` as this process last saw them."""
        return {name: b.state.label for name, b in list(self._breakers.items())}

    async def health_check(self) -> dict[str, Any]:
        """Health report: any open breaker -> ``open_health``, any half-open -> ``degraded``.

        Redis breakers are read from Redis (their shared state); a Redis error reports the
        breakers' last known state with the error attached.
        """
        states: dict[str, str] = {}
        error = None
        for breaker in list(self._breakers.values()):
            try:
                states[breaker.name] = (await breaker.astatus()).state.label
            except Exception as exc:
                states[breaker.name] = breaker.state.label
                error = f"{type(exc).__name__}: {exc}"
        status = "healthy"
        if "half_open" in states.values():
            status = "degraded"
        if "open" in states.values():
            status = self.config.open_health
        report: dict[str, Any] = {"status": status, "breakers": states}
        if error:
            report["error"] = error
        return report

    async def drain(self) -> None:
        """Wait for pending async listeners (state-change events) of the running loop."""
        await self._dispatch.drain()
        for breaker in list(self._breakers.values()):
            if breaker._dispatch is not self._dispatch:  # process scope: the shared dispatcher
                await breaker._dispatch.drain()
