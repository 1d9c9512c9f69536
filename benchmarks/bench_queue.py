"""message_queue throughput: enqueue + receive + ack of 1 KB payloads, ours against raw SQL.

Backends: the ``database`` backend on SQLite (memory) and PostgreSQL, the ``redis`` backend and
the ``rabbitmq`` backend (each skipped when its server is unreachable: ONEX_POSTGRES_DSN,
ONEX_REDIS_URL, ONEX_AMQP_URL).

Each case moves one message through the whole protocol, single or batched (100 per round trip):

================================================  ===============================================
ours                                              raw SQL through SQLAlchemy (same engine, same
                                                  table, the same statements the same way)
================================================  ===============================================
``enqueue`` + ``receive`` + ``msg.ack()``          INSERT; SELECT ready rows (``FOR UPDATE SKIP
                                                  LOCKED`` on PostgreSQL) + UPDATE receipt in one
                                                  transaction; DELETE by id and receipt
``enqueue_many(100)`` + ``receive(100)`` + acks    one multi-row INSERT; the same receive for 100;
                                                  100 DELETEs
================================================  ===============================================

On Redis the raw side is redis-py ``XADD`` / ``XREADGROUP`` / ``XACK`` + ``XDEL`` (pipelined
alike: a batch's XADDs in one pipeline, each ack one pipelined round trip, as ours); ours runs
one Lua script per receive and ack (receipts, visibility, delayed promotion and redelivery are
what the script adds; its reply is one flat array) and a plain ``XADD`` per enqueue without
idempotency key or delay (pipelined for a batch). On RabbitMQ the raw side is aio-pika
``publish`` with publisher confirms to a durable quorum queue, ``basic.get`` and ``ack``, as
ours (ours adds one header, the enqueue time, and keeps the deliveries' visibility deadlines in
one heap with one timer; the raw message carries an ``x-onex-deliveries`` header).

For A/B comparisons of the client's own cost on this busy machine, count instructions instead
of timing: ``valgrind --tool=callgrind python <script>`` running N and 0 messages through the
same case, the difference divided by N (the README gives the numbers).

The table shows seconds per message (``1 / throughput``) as the median of alternating rounds;
ratio = ours / raw, so the issue's target "throughput >= 0.8x the raw client" is a ratio
<= 1.25x. The p50 latency per message of the single case is the per-message time itself (one
message in flight at a time).

Run: ``python benchmarks/bench_queue.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args  # noqa: E402

from onex_compose import NodeEffect, compose  # noqa: E402

PG_DSN = os.environ.get("ONEX_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PAYLOAD = {"data": "x" * 1000}
BATCH = 100


async def _round(fn: Callable[[int], Awaitable[int]], messages: int) -> float:
    start = time.perf_counter()
    done = await fn(messages)
    assert done >= messages, (done, messages)
    return (time.perf_counter() - start) / done


async def _compare(cases: dict[str, Callable[[int], Awaitable[int]]], messages: int,
                   repeats: int, warm: bool) -> dict[str, float]:
    for fn in cases.values():
        if warm:
            await _round(fn, max(BATCH, messages // 10))
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(await _round(fn, messages))
    return {k: statistics.median(v) for k, v in samples.items()}


def _cases(node: Any) -> dict[str, Callable[[int], Awaitable[int]]]:
    import json

    from sqlalchemy import text

    mq = node.message_queue
    db = node.db
    pg = db.dialect == "postgresql"
    table = mq.backend.messages
    lock = " FOR UPDATE OF m SKIP LOCKED" if pg else ""
    select = text(f"SELECT m.seq, m.id, m.payload, m.headers, m.delivery_count FROM {table} m "
                  "WHERE m.queue = :q AND m.acked_at IS NULL AND m.available_at <= :now AND "
                  "(m.locked_until IS NULL OR m.locked_until <= :now) ORDER BY m.seq LIMIT :n"
                  f"{lock}")
    insert = text(f"INSERT INTO {table} (id, queue, key, payload, headers, enqueued_at, "
                  "available_at, delivery_count) VALUES (:i, :q, NULL, :p, NULL, :t, :t, 0)")
    delete = text(f"DELETE FROM {table} WHERE id = :i AND receipt = :r")
    engine = db.engine()
    dumps = mq.serializer.dumps
    loads = mq.serializer.loads

    async def raw_receive(n: int) -> list[tuple[str, str, Any]]:
        receipt = uuid.uuid4().hex
        now = time.time()
        async with engine.begin() as c:
            rows = (await c.execute(select, {"q": "raw", "now": now, "n": n})).mappings().all()
            if rows:
                marks = ", ".join(f":s{k}" for k in range(len(rows)))
                params: dict[str, Any] = {f"s{k}": r["seq"] for k, r in enumerate(rows)}
                params.update(r=receipt, lu=now + 30.0)
                await c.execute(text(
                    f"UPDATE {table} SET delivery_count = delivery_count + 1, receipt = :r, "
                    f"locked_until = :lu WHERE seq IN ({marks})"), params)
        return [(r["id"], receipt, (loads(bytes(r["payload"])),
                                    json.loads(r["headers"]) if r["headers"] else {}))
                for r in rows]

    async def raw_ack(mid: str, receipt: str) -> None:
        async with engine.begin() as c:
            await c.execute(delete, {"i": mid, "r": receipt})

    async def ours_single(n: int) -> int:
        for _ in range(n):
            await mq.enqueue("ours", PAYLOAD)
            [msg] = await mq.receive("ours")
            await msg.ack()
        return n

    async def raw_single(n: int) -> int:
        for _ in range(n):
            async with engine.begin() as c:
                await c.execute(insert, {"i": uuid.uuid4().hex, "q": "raw",
                                         "p": dumps(PAYLOAD), "t": time.time()})
            [(mid, receipt, _)] = await raw_receive(1)
            await raw_ack(mid, receipt)
        return n

    async def ours_batch(n: int) -> int:
        done = 0
        while done < n:
            await mq.enqueue_many("ours", [PAYLOAD] * BATCH)
            for msg in await mq.receive("ours", max_messages=BATCH):
                await msg.ack()
                done += 1
        return done

    async def raw_batch(n: int) -> int:
        done = 0
        while done < n:
            now = time.time()
            values = ", ".join(f"(:i{k}, :q, NULL, :p{k}, NULL, :t, :t, 0)" for k in range(BATCH))
            params: dict[str, Any] = {"q": "raw", "t": now}
            for k in range(BATCH):
                params[f"i{k}"] = uuid.uuid4().hex
                params[f"p{k}"] = dumps(PAYLOAD)
            async with engine.begin() as c:
                await c.execute(text(
                    f"INSERT INTO {table} (id, queue, key, payload, headers, enqueued_at, "
                    f"available_at, delivery_count) VALUES {values}"), params)
            for mid, receipt, _ in await raw_receive(BATCH):
                await raw_ack(mid, receipt)
                done += 1
        return done

    return {"ours_single": ours_single, "raw_single": raw_single, "ours_batch": ours_batch,
            "raw_batch": raw_batch}


async def _backend(database: dict[str, Any], messages: int, repeats: int, warm: bool
                   ) -> dict[str, float] | None:
    ns = f"bq{uuid.uuid4().hex[:6]}"
    node = compose(NodeEffect, ["message_queue"])(capability_config={
        "database": {**database, "namespace": ns}, "message_queue": {"namespace": ns}})
    try:
        await node.message_queue.stats("ours")  # migrations
    except Exception:
        await node.aclose()
        return None
    try:
        return await _compare(_cases(node), messages, repeats, warm)
    finally:
        await node.aclose()


def _redis_cases(node: Any, url: str, ns: str) -> dict[str, Callable[[int], Awaitable[int]]]:
    from onex_compose.capabilities._redis import async_client

    mq = node.message_queue
    dumps = mq.serializer.dumps
    loads = mq.serializer.loads
    stream, group = f"{ns}:raw", f"{ns}:raw"
    consumer = "bench"
    ready: list[bool] = []

    async def client() -> Any:
        c = async_client(url, timeout=2.0, retries=0)
        if not ready:
            await c.xgroup_create(stream, group, id="0", mkstream=True)
            ready.append(True)
        return c

    async def raw_ack(c: Any, eid: Any) -> None:
        pipe = c.pipeline(transaction=False)
        pipe.xack(stream, group, eid)
        pipe.xdel(stream, eid)
        await pipe.execute()

    def fields() -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "payload": dumps(PAYLOAD), "headers": "{}",
                "enq": repr(time.time())}

    async def ours_single(n: int) -> int:
        for _ in range(n):
            await mq.enqueue("ours", PAYLOAD)
            [msg] = await mq.receive("ours")
            await msg.ack()
        return n

    async def raw_single(n: int) -> int:
        c = await client()
        for _ in range(n):
            await c.xadd(stream, fields())
            [[_, entries]] = await c.xreadgroup(group, consumer, {stream: ">"}, count=1)
            for eid, f in entries:
                loads(f[b"payload"])
                await raw_ack(c, eid)
        return n

    async def ours_batch(n: int) -> int:
        done = 0
        while done < n:
            await mq.enqueue_many("ours", [PAYLOAD] * BATCH)
            for msg in await mq.receive("ours", max_messages=BATCH):
                await msg.ack()
                done += 1
        return done

    async def raw_batch(n: int) -> int:
        c = await client()
        done = 0
        while done < n:
            pipe = c.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.xadd(stream, fields())
            await pipe.execute()
            [[_, entries]] = await c.xreadgroup(group, consumer, {stream: ">"}, count=BATCH)
            for eid, f in entries:
                loads(f[b"payload"])
                await raw_ack(c, eid)
                done += 1
        return done

    return {"ours_single": ours_single, "raw_single": raw_single, "ours_batch": ours_batch,
            "raw_batch": raw_batch}


async def _redis(messages: int, repeats: int, warm: bool) -> dict[str, float] | None:
    url = os.environ.get("ONEX_REDIS_URL", "redis://127.0.0.1:6379/0")
    ns = f"bq{uuid.uuid4().hex[:6]}"
    node = compose(NodeEffect, ["message_queue"])(capability_config={
        "message_queue": {"namespace": ns, "backend": "redis", "redis_url": url}})
    try:
        await node.message_queue.stats("ours")
    except Exception:
        await node.aclose()
        return None
    try:
        return await _compare(_redis_cases(node, url, ns), messages, repeats, warm)
    finally:
        from onex_compose.capabilities._redis import async_client

        c = async_client(url)
        keys = [k async for k in c.scan_iter(match=f"{ns}:*", count=500)]
        if keys:
            await c.delete(*keys)
        await node.aclose()


def _rabbit_cases(node: Any, link: Any, raw_queue: Any, raw_name: str
                  ) -> dict[str, Callable[[int], Awaitable[int]]]:
    import aio_pika

    mq = node.message_queue
    dumps = mq.serializer.dumps
    loads = mq.serializer.loads
    exchange = link.default_exchange

    def message() -> Any:
        return aio_pika.Message(dumps(PAYLOAD), message_id=uuid.uuid4().hex,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                headers={"x-onex-deliveries": 0})

    async def ours_single(n: int) -> int:
        for _ in range(n):
            await mq.enqueue("ours", PAYLOAD)
            [msg] = await mq.receive("ours")
            await msg.ack()
        return n

    async def raw_single(n: int) -> int:
        for _ in range(n):
            await exchange.publish(message(), routing_key=raw_name)
            got = await raw_queue.get(no_ack=False, fail=False)
            while got is None:  # a quorum queue may lag its own confirm by a moment
                got = await raw_queue.get(no_ack=False, fail=False)
            loads(got.body)
            await got.ack()
        return n

    async def ours_batch(n: int) -> int:
        done = 0
        while done < n:
            await mq.enqueue_many("ours", [PAYLOAD] * BATCH)
            for msg in await mq.receive("ours", max_messages=BATCH, wait=5):
                await msg.ack()
                done += 1
        return done

    async def raw_batch(n: int) -> int:
        done = 0
        while done < n:
            await asyncio.gather(*(exchange.publish(message(), routing_key=raw_name)
                                   for _ in range(BATCH)))
            for _ in range(BATCH):
                got = await raw_queue.get(no_ack=False, fail=False)
                if got is None:
                    break
                loads(got.body)
                await got.ack()
                done += 1
        return done

    return {"ours_single": ours_single, "raw_single": raw_single, "ours_batch": ours_batch,
            "raw_batch": raw_batch}


async def _rabbit(messages: int, repeats: int, warm: bool) -> dict[str, float] | None:
    try:
        import aio_pika
    except ImportError:
        return None
    url = os.environ.get("ONEX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    ns = f"bq{uuid.uuid4().hex[:6]}"
    try:
        connection = await aio_pika.connect(url, timeout=3)
    except Exception:
        return None
    node = compose(NodeEffect, ["message_queue"])(capability_config={
        "message_queue": {"namespace": ns, "backend": "rabbitmq", "amqp_url": url}})
    channel = await connection.channel(publisher_confirms=True)
    raw_name = f"{ns}.raw"
    raw_queue = await channel.declare_queue(raw_name, durable=True,
                                            arguments={"x-queue-type": "quorum"})
    try:
        return await _compare(_rabbit_cases(node, channel, raw_queue, raw_name), messages,
                              repeats, warm)
    finally:
        names = set(node.message_queue.backend.declared) | {raw_name}
        await node.aclose()
        for name in sorted(names):
            if name.endswith(".dlx"):
                await channel.exchange_delete(name)
            else:
                await channel.queue_delete(name)
        await connection.close()


async def _drop(schema: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_DSN.replace("postgresql+asyncpg://", "postgresql://"))
    except (OSError, asyncpg.PostgresError):
        return
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    messages = 100 if args.smoke else 1000
    repeats = 1 if args.smoke else max(3, args.repeats // 2)
    schema = f"bench_{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[dict[str, float] | None, ...]:
        lite = await _backend({}, messages, repeats, not args.smoke)
        try:
            pg = await _backend({"url": PG_DSN, "schema": schema}, messages, repeats,
                                not args.smoke)
        finally:
            await _drop(schema)
        red = await _redis(messages, repeats, not args.smoke)
        rabbit = await _rabbit(messages, repeats, not args.smoke)
        return lite, pg, red, rabbit

    lite, pg, red, rabbit = asyncio.run(run())
    table = Table("queue", "message_queue: enqueue + receive + ack of 1 KB, against raw SQL "
                           "(seconds per message; ratio <= 1.25x is >= 0.8x throughput)")
    for name, r, raw_name in (("database sqlite memory", lite, "raw SQL"),
                              ("database postgresql", pg, "raw SQL"),
                              ("redis streams", red, "redis-py"),
                              ("rabbitmq quorum", rabbit, "aio-pika")):
        if r is None:
            table.add(f"{name}: skipped (server unreachable)", 0.0)
            continue
        for case, label in (("single", "single"), ("batch", f"batched x{BATCH}")):
            ours, raw = r[f"ours_{case}"], r[f"raw_{case}"]
            table.add(f"{name}: {label} ({1 / ours:,.0f} msg/s)", ours, baseline=raw,
                      target="<= 1.25x", note=f"{raw_name} {1 / raw:,.0f} msg/s")
        table.add(f"{name}: p50 latency per message (single)", r["ours_single"])
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
