"""``onex demo``: seed 000's ``RobustComputeService`` running for real.

On the embedded defaults (no servers needed) it computes a few inputs, showing a cache hit, a
transient failure that ``with_retry`` absorbs, and the published ``computation_completed``
events, then prints the explain report, the metrics and the health report.

With ``--redis URL`` the cache gets its Redis L2 and the event bus its Redis pub/sub backend, under
``--namespace`` (default ``onex-demo``; the writer clears that namespace's cache first, so every
run computes, retries and publishes as on the first). A second process started with the same URL and
``--role reader`` sees the first one's events, reads its cache entries from the shared L2, and
sees its invalidation (the writer deletes one entry at the end; the reader's L1 copy disappears).
With ``--json``, a line starting with ``DEMO `` (a JSON record meant for scripts and tests)
follows each human line; without it the output is for people only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from onex_compose import NodeComputeService
from onex_compose.exceptions import ServiceUnavailableError
from onex_compose.mixin import (
    MixinCaching,
    MixinEventBus,
    MixinHealthCheck,
    MixinMetrics,
    MixinRetry,
)

__all__ = ["RobustComputeService", "build_service_class", "main"]

INPUTS: list[dict[str, Any]] = [
    {"values": [1, 2, 3]},
    {"values": [4, 5]},
    {"values": [3, 2, 1]},
    {"values": [1, 2, 3]},   # a cache hit
    {"values": [10, 20], "fail_times": 2},  # fails twice, then succeeds through retry
]


class RobustComputeService(
    NodeComputeService,  # Base node functionality
    MixinHealthCheck,  # Health monitoring
    MixinMetrics,  # Performance metrics
    MixinCaching,  # Result caching
    MixinEventBus,  # Event communication
    MixinRetry,  # Fault tolerance
):
    """Compute service with comprehensive operational capabilities"""

    def __init__(self, contract: Any) -> None:
        super().__init__(contract)
        self._initialize_mixins(contract)
        self.attempts: dict[str, int] = {}

    async def compute(self, input_data: dict[str, Any]) -> Any:
        # Health check integration
        if not self.is_healthy():
            raise ServiceUnavailableError("Service unhealthy")

        # Metrics collection
        with self.metrics.timer("compute_duration"):
            # Cache lookup
            cache_key = self.generate_cache_key(input_data)
            cached_result = await self.cache.get(cache_key)

            if cached_result:
                self.metrics.increment("cache_hits")
                return cached_result

            # Retry-wrapped computation
            result = await self.with_retry(
                self._execute_computation,
                input_data,
                max_attempts=3,
            )

            # Cache result
            await self.cache.set(cache_key, result, ttl=3600)

            # Publish completion event
            await self.event_bus.publish(
                "computation_completed",
                {"input": input_data, "result": result},
            )

            return result

    async def _execute_computation(self, input_data: dict[str, Any]) -> Any:
        key = self.generate_cache_key(input_data)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] <= input_data.get("fail_times", 0):
            raise ConnectionError(f"transient failure #{self.attempts[key]}")
        return {"sum": sum(input_data["values"]), "count": len(input_data["values"])}



def build_service_class() -> type:
    """Seed 000's ``RobustComputeService`` (with the computation the seed leaves undefined)."""
    return RobustComputeService


def _contract(redis: str | None, namespace: str) -> dict[str, Any]:
    """A node contract (seed 000's subcontract keys) for the demo's capabilities."""
    subcontracts: dict[str, Any] = {
        "health_check": {},
        "metrics": {"namespace": "onex_demo"},
        "caching": {"max_entries": 1000},
        "event_type": {},
        "retry": {"max_attempts": 3, "backoff_factor": 2.0, "max_delay": 60.0,
                  "initial_delay": 0.05},
    }
    if redis:
        shared = {"backend": "redis", "redis_url": redis, "namespace": namespace}
        subcontracts["caching"].update(shared)
        subcontracts["event_type"].update(shared)
    return {"subcontracts": subcontracts}


_RECORDS = {"on": False}  # set from --json by main(): print the DEMO records


def _record(**data: Any) -> None:
    """Print one machine-readable ``DEMO {...}`` line, when ``--json`` asked for them."""
    if _RECORDS["on"]:
        print("DEMO " + json.dumps(data, sort_keys=True, default=str), flush=True)


async def _writer(args: argparse.Namespace) -> int:
    service = build_service_class()(_contract(args.redis, args.namespace))
    print(f"onex demo: {type(service).__qualname__} on "
          f"{'Redis ' + args.redis if args.redis else 'embedded defaults (memory)'}\n")
    events: list[Any] = []

    def on_completed(event: Any) -> None:
        events.append(event)
        print(f"  event  computation_completed  {event.payload}")

    await service.start()
    if args.redis:
        # entries of an earlier run (ttl=3600) would turn every input into a cache hit
        await service.cache.clear()
    await service.event_bus.subscribe("computation_completed", on_completed)
    print("computing:")
    for item in INPUTS:
        hits_before = _cache_hits(service)
        result = await service.compute(item)
        hit = _cache_hits(service) > hits_before
        key = service.generate_cache_key(item)
        tries = service.attempts.get(key, 0)
        note = "cache hit" if hit else f"computed in {tries} attempt(s)"
        print(f"  {json.dumps(item):40} -> {result}   ({note})")
        _record(role="writer", input=item, result=result, cache_hit=hit, attempts=tries, key=key)
    await service.event_bus.drain(2.0)
    if args.redis:
        await asyncio.sleep(args.hold)
        victim = service.generate_cache_key(INPUTS[0])
        await service.cache.delete(victim)
        print(f"\ninvalidated {victim} (every process's L1 drops it)")
        _record(role="writer", invalidated=victim)
    from onex_compose import explain

    print("\n== explain ==")
    print(explain(service))
    print("\n== metrics ==")
    print(json.dumps(service.metrics.snapshot(), indent=2, sort_keys=True, default=str))
    print("\n== health ==")
    report = await service.health_check()
    print(json.dumps(report, indent=2, sort_keys=True, default=str))
    healthy = service.is_healthy()
    print(f"\n{len(events)} computation_completed event(s) received; healthy: {healthy}")
    _record(role="writer", events=len(events), healthy=healthy)
    await service.stop() if service.service.running else await service.aclose()
    return 0


def _cache_hits(service: Any) -> float:
    return float(service.metrics.snapshot()["counters"].get("cache_hits", 0))


async def _reader(args: argparse.Namespace) -> int:
    if not args.redis:
        print("onex demo --role reader needs --redis URL (the writer's Redis)", file=sys.stderr)
        return 2
    from onex_compose.capabilities.caching import MISSING

    service = build_service_class()(_contract(args.redis, args.namespace))
    await service.start()
    seen: asyncio.Queue[Any] = asyncio.Queue()
    await service.event_bus.subscribe("computation_completed", seen.put_nowait)
    print(f"onex demo reader: listening on Redis {args.redis} (namespace {args.namespace})",
          flush=True)
    _record(role="reader", ready=True)
    victim = service.generate_cache_key(INPUTS[0])
    expected = len({service.generate_cache_key(i) for i in INPUTS})
    try:
        async with asyncio.timeout(args.timeout):
            keys = []
            for _ in range(expected):
                event = await seen.get()
                key = service.generate_cache_key(event.payload["input"])
                keys.append(key)
                value = await service.cache.get(key)  # the writer's entry, from the shared L2
                print(f"  event  computation_completed  {event.payload}  (cache: {value})",
                      flush=True)
                _record(role="reader", event=event.payload, cache_value=value, key=key)
            for key in keys:  # read again once the writer is quiet: now served from our L1
                await service.cache.get(key)
                in_l1 = service.cache._l1_peek(key) is not MISSING
                print(f"  {key}: {'held in this process (L1)' if in_l1 else 'not in L1'}",
                      flush=True)
                _record(role="reader", key=key, in_l1=in_l1)
            # the invalidation arrives from another process: poll our L1 until it drops the key
            while await service.cache.contains(victim):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            print(f"  {victim}: invalidated by the writer, dropped from this process's L1",
                  flush=True)
            _record(role="reader", invalidated=victim)
    except TimeoutError:
        print(f"onex demo reader: gave up after {args.timeout} s", file=sys.stderr)
        _record(role="reader", timeout=args.timeout)
        return 1
    finally:
        await service.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo (``onex demo``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="onex demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="use Redis for the L2 cache and the event bus")
    parser.add_argument("--role", choices=["writer", "reader"], default="writer")
    parser.add_argument("--namespace", default="onex-demo", help="Redis key/channel prefix")
    parser.add_argument("--timeout", type=float, default=30.0, help="reader: seconds to wait")
    parser.add_argument("--hold", type=float, default=0.5,
                        help="writer: seconds to wait before the invalidation (Redis only)")
    parser.add_argument("--json", action="store_true",
                        help="follow each human line with a machine-readable 'DEMO {...}' line")
    args = parser.parse_args(argv)
    _RECORDS["on"] = args.json
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    runner = _reader if args.role == "reader" else _writer
    return asyncio.run(_run(runner, args))


async def _run(runner: Any, args: argparse.Namespace) -> int:
    """Check that Redis answers before the demo starts (a clear message, not a traceback)."""
    if args.redis:
        problem = await _redis_problem(args.redis)
        if problem is not None:
            print(f"onex demo: cannot reach Redis at {args.redis} ({problem}); start it, or "
                  "run 'onex demo' without --redis", file=sys.stderr)
            return 1
    return int(await runner(args))


async def _redis_problem(url: str) -> str | None:
    from onex_compose.capabilities._redis import check_redis_url, require_client

    try:
        check_redis_url(url)
    except ValueError as exc:
        return str(exc)
    require_client("caching")  # redis-py missing: a ConfigurationError naming the install
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        await client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


if __name__ == "__main__":
    raise SystemExit(main())
