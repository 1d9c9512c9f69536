"""service_registry benchmark: heartbeat and discovery against raw redis-py doing the same
round trips, and discovery in memory.

* ``await reg.heartbeat()`` (Redis, one Lua script) against a raw redis-py pipeline of
  ``HSET`` + ``ZADD`` (one round trip), on a default client and on a client with the
  registry's connection settings;
* ``await reg.discover(capability=...)`` over 1,000 entries (Redis) against raw redis-py:
  ``SMEMBERS`` of the capability's index set, then a pipelined ``HGETALL`` of the matches;
* ``await reg.discover(capability=...)`` over 1,000 entries in memory.

Targets (issue 14): heartbeat <= 1.2x, Redis discover <= 1.2x, memory discover <= 200 us.
Ratios are medians of interleaved pairs (ours and the peer back to back, same load). Needs the
Redis at ``ONEX_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); the Redis rows are skipped
with a note when it is unreachable.

Run: ``python benchmarks/bench_registry.py`` (``--smoke`` for a quick check).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Table, parse_args  # noqa: E402

from onex_compose.capabilities.service_registry import ServiceRegistry  # noqa: E402

ENTRIES = 1_000
EVERY = 4          # every 4th entry has the capability searched for: 250 matches


async def paired(ours: Callable[[], Awaitable[Any]], peer: Callable[[], Awaitable[Any]], *,
                 number: int, repeats: int, clock: Callable[[], float] = time.perf_counter,
                 ) -> tuple[float, float, float]:
    """Interleaved pairs inside one loop: (ours s/call, peer s/call, median ratio).
    ``clock=time.thread_time``: the client's CPU time only (leaves out waiting for the server
    and for a core on a loaded machine)."""
    for _ in range(max(1, number // 4)):   # warm both (connections, script cache)
        await peer()
        await ours()
    o_s, p_s, ratios = [], [], []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(number):
            await peer()
        t1 = clock()
        for _ in range(number):
            await ours()
        t2 = clock()
        p, o = (t1 - t0) / number, (t2 - t1) / number
        p_s.append(p)
        o_s.append(o)
        ratios.append(o / p)
    return statistics.median(o_s), statistics.median(p_s), statistics.median(ratios)


async def fill(cfg: dict[str, Any]) -> list[ServiceRegistry]:
    regs = []
    for i in range(ENTRIES):
        caps = ("metrics", "caching") if i % EVERY == 0 else ("metrics", "retry")
        reg = ServiceRegistry({**cfg, "instance_id": f"bench-{i}", "ttl": 3600,
                               "metadata": {"zone": "eu", "n": str(i)}, "domain": "bench"},
                              node_id=f"Node-{i}", name="BenchNode", node_type="COMPUTE",
                              capabilities=caps)
        await reg.register()
        regs.append(reg)
    return regs


async def close_all(regs: list[ServiceRegistry]) -> None:
    for reg in regs:
        task, reg._hb_task = reg._hb_task, None   # no deregistration traffic: drop the keys
        if task is not None:
            task.cancel()


async def redis_rows(table: Table, number: int, repeats: int) -> None:
    import redis.asyncio as aioredis

    from onex_compose.capabilities._redis import async_client, redis_url

    url = redis_url(None)
    raw = aioredis.Redis.from_url(url, protocol=2)
    try:
        await raw.ping()
    except Exception as exc:
        table.add(f"Redis rows skipped: {url} unreachable ({type(exc).__name__})", 0.0)
        await raw.aclose()
        return
    ns = f"bench-registry-{uuid.uuid4().hex[:8]}"
    cfg = {"backend": "redis", "namespace": ns}
    try:
        one = ServiceRegistry({**cfg, "instance_id": "hb", "ttl": 3600}, node_id="hb",
                              capabilities=("metrics",))
        await one.register()
        key, zkey = f"{ns}:registry:node:peer", f"{ns}:registry:expiry"

        async def raw_heartbeat() -> None:
            now = time.time()
            pipe = raw.pipeline(transaction=False)
            pipe.hset(key, mapping={"last_heartbeat": repr(now), "expires_at": repr(now + 15),
                                    "status": "online"})
            pipe.zadd(zkey, {"peer": now + 15})
            await pipe.execute()

        ours, peer, ratio = await paired(one.heartbeat, raw_heartbeat, number=number,
                                         repeats=repeats)
        table.add("raw redis-py: pipeline HSET + ZADD", peer, baseline=peer, note="baseline")
        table.add("ours: await reg.heartbeat() (Lua script)", ours, baseline=peer,
                  target="<= 1.2x", note=f"ratio of pairs {ratio:.2f}x")
        ours, peer, ratio = await paired(one.heartbeat, raw_heartbeat, number=number,
                                         repeats=repeats, clock=time.thread_time)
        table.add("raw redis-py: pipeline HSET + ZADD (client CPU time)", peer, baseline=peer,
                  note="baseline")
        table.add("ours: await reg.heartbeat() (client CPU time)", ours, baseline=peer,
                  target="<= 1.2x", note=f"ratio of pairs {ratio:.2f}x")
        # the same pipeline on a client with the registry's connection settings (blocking
        # pool, 1 s socket timeouts, no retries): what the registry's own layer costs
        same = async_client(None, timeout=1.0, retries=0)

        async def raw_heartbeat_same() -> None:
            now = time.time()
            pipe = same.pipeline(transaction=False)
            pipe.hset(key, mapping={"last_heartbeat": repr(now), "expires_at": repr(now + 15),
                                    "status": "online"})
            pipe.zadd(zkey, {"peer": now + 15})
            await pipe.execute()

        ours, peer2, ratio = await paired(one.heartbeat, raw_heartbeat_same, number=number,
                                          repeats=repeats)
        table.add("raw redis-py, same client settings: pipeline HSET + ZADD", peer2,
                  baseline=peer2, note="baseline")
        table.add("ours: await reg.heartbeat(), vs the same client settings", ours,
                  baseline=peer2, target="<= 1.2x", note=f"ratio of pairs {ratio:.2f}x")
        await close_all([one])

        regs = await fill(cfg)
        reader = regs[0]
        cap_key = f"{ns}:registry:cap:caching"

        async def raw_discover() -> list[Any]:
            ids = await raw.smembers(cap_key)
            pipe = raw.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(f"{ns}:registry:node:{i.decode()}")
            return list(await pipe.execute())

        async def ours_discover() -> list[Any]:
            return await reader.discover(capability="caching")

        matches = len(await ours_discover())
        assert matches == len(await raw_discover()) == ENTRIES // EVERY, matches
        n = max(1, number // 20)
        ours, peer, ratio = await paired(ours_discover, raw_discover, number=n, repeats=repeats)
        table.add(f"raw redis-py: SMEMBERS index + pipelined HGETALL ({matches} of {ENTRIES})",
                  peer, baseline=peer, note="baseline")
        table.add(f"ours: discover(capability='caching') ({matches} of {ENTRIES})", ours,
                  baseline=peer, target="<= 1.2x",
                  note=f"ratio of pairs {ratio:.2f}x; entries decoded and status-checked")
        ours, peer, ratio = await paired(ours_discover, raw_discover, number=n,
                                         repeats=repeats, clock=time.thread_time)
        table.add("raw redis-py discover (client CPU time)", peer, baseline=peer,
                  note="baseline")
        table.add("ours: discover(capability='caching') (client CPU time)", ours,
                  baseline=peer, target="<= 1.2x", note=f"ratio of pairs {ratio:.2f}x")
        await close_all(regs)
    finally:
        keys = [k async for k in raw.scan_iter(match=f"{ns}:*", count=1000)]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


async def memory_rows(table: Table, number: int, repeats: int) -> None:
    cfg = {"backend": "memory", "namespace": f"bench-{uuid.uuid4().hex[:8]}"}
    regs = await fill(cfg)
    reader = regs[0]
    matches = len(await reader.discover(capability="caching"))
    samples = []
    n = max(1, number // 4)
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            await reader.discover(capability="caching")
        samples.append((time.perf_counter() - t0) / n)
    took = statistics.median(samples)
    table.add(f"memory: discover(capability='caching') ({matches} of {ENTRIES})", took,
              target="<= 200 us", note=f"{took * 1e6:,.0f} us")
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            await reader.heartbeat()
        samples.append((time.perf_counter() - t0) / number)
    table.add("memory: await reg.heartbeat()", statistics.median(samples), note="for reference")
    await close_all(regs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    number, repeats = (20, 3) if args.smoke else (400, args.repeats)
    table = Table("registry", "service_registry: heartbeat and discovery")

    async def run() -> None:
        await redis_rows(table, number, repeats)
        await memory_rows(table, number, repeats)

    asyncio.run(run())
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
