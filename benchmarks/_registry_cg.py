"""Callgrind helper for bench_registry: run N operations of one kind in a fresh process.

``valgrind --tool=callgrind python benchmarks/_registry_cg.py MODE N`` for MODE in
``ours-heartbeat``, ``raw-heartbeat``, ``same-heartbeat``, ``ours-discover``, ``raw-discover``;
instructions per operation = (I(N) - I(0)) / N (the client's CPU only: the Redis server is
another process).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any


async def main(mode: str, n: int) -> None:
    import redis.asyncio as aioredis

    from onex_compose.capabilities._redis import async_client
    from onex_compose.capabilities.service_registry import ServiceRegistry

    ns = f"cg-{uuid.uuid4().hex[:8]}"
    raw = aioredis.Redis.from_url("redis://127.0.0.1:6379/0", protocol=2)
    same = async_client(None, timeout=1.0, retries=0)
    reg = ServiceRegistry({"backend": "redis", "namespace": ns, "instance_id": "hb",
                           "ttl": 3600}, node_id="hb", capabilities=("metrics",))
    await reg.register()
    key, zkey = f"{ns}:registry:node:peer", f"{ns}:registry:expiry"
    regs = []
    if mode.endswith("discover"):
        for i in range(1000):
            caps = ("metrics", "caching") if i % 4 == 0 else ("metrics", "retry")
            r = ServiceRegistry({"backend": "redis", "namespace": ns, "instance_id": f"b-{i}",
                                 "ttl": 3600, "metadata": {"zone": "eu"}},
                                node_id=f"N-{i}", capabilities=caps)
            await r.register()
            regs.append(r)

    async def pipe(client: Any) -> None:
        now = time.time()
        p = client.pipeline(transaction=False)
        p.hset(key, mapping={"last_heartbeat": repr(now), "expires_at": repr(now + 15),
                             "status": "online"})
        p.zadd(zkey, {"peer": now + 15})
        await p.execute()

    async def raw_discover() -> None:
        ids = await raw.smembers(f"{ns}:registry:cap:caching")
        p = raw.pipeline(transaction=False)
        for i in ids:
            p.hgetall(f"{ns}:registry:node:{i.decode()}")
        await p.execute()

    ops = {"ours-heartbeat": reg.heartbeat, "raw-heartbeat": lambda: pipe(raw),
           "same-heartbeat": lambda: pipe(same),
           "ours-discover": lambda: reg.discover(capability="caching"),
           "raw-discover": raw_discover}
    op = ops[mode]
    await op()   # warm (connections, scripts) in every run, N=0 included
    for _ in range(n):
        await op()
    for r in [reg, *regs]:
        if r._hb_task is not None:
            r._hb_task.cancel()
    keys = [k async for k in raw.scan_iter(match=f"{ns}:*", count=1000)]
    if keys:
        await raw.delete(*keys)
    await raw.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
