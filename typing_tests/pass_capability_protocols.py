"""User code touching ``self.cache`` type-checks through the capability's mixin and Protocol.

mypy cannot see the bases of a class built at run time (``class S(compose(...))`` is an
"Unsupported dynamic base class"), so the typed spelling of a composed service names the mixins
statically under ``TYPE_CHECKING`` and composes them at run time. Both spellings build the same
class: the hand-written one is checked by the same rules, and ``explain()`` shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_type

from onex_compose.capabilities.caching import Cache, CachingProtocol, MixinCaching
from onex_compose.capabilities.health_check import MixinHealthCheck
from onex_compose.capabilities.metrics import MetricsProtocol, MixinMetrics

from onex_compose import NodeCompute, compose


class CachedPricer(NodeCompute, MixinCaching, MixinMetrics):
    """Hand-written (seed 000 style): every facility is typed by its mixin."""

    async def process(self, input_data: Any) -> Any:
        assert_type(self.cache, Cache)
        cache: CachingProtocol = self.cache  # the facility satisfies the capability Protocol
        metrics: MetricsProtocol = self.metrics
        key = self.generate_cache_key(input_data)
        hit = await cache.get(key)
        if hit is not None:
            metrics.increment("cache_hits")
            return hit
        await cache.set(key, input_data, ttl=60)
        return input_data


if TYPE_CHECKING:
    class _PricerBase(NodeCompute, MixinCaching, MixinHealthCheck):
        """What mypy sees."""
else:
    _PricerBase = compose(NodeCompute, ["caching", "health_check"])  # what runs


class ComposedPricer(_PricerBase):
    """A composed base, typed through the stand-in above."""

    async def process(self, input_data: Any) -> Any:
        if not self.is_healthy():
            return None
        cache: CachingProtocol = self.cache
        return await cache.get(str(input_data))


def needs_a_cache(holder: CachingProtocol) -> None:
    """Library code that accepts any cache facility."""


needs_a_cache(CachedPricer().cache)
needs_a_cache(ComposedPricer().cache)


if __name__ == "__main__":
    import asyncio

    async def main() -> None:
        pricer = CachedPricer()
        assert await pricer.process({"x": 1}) == {"x": 1}
        assert await pricer.process({"x": 1}) == {"x": 1}  # the second call is a cache hit
        composed = ComposedPricer()
        assert await composed.process("missing") is None

    asyncio.run(main())
