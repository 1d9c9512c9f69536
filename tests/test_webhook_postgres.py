"""webhook on PostgreSQL: two worker processes on one outbox (no concurrent duplicate attempt of
one webhook-id), and a server killed mid-run (publish raises, nothing is lost, pending
deliveries resume after the restart). One schema per test; only loopback traffic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from onex_compose import NodeEffect, compose
from onex_compose.capabilities import _sql
from onex_compose.capabilities.database import DatabaseError

pytestmark = pytest.mark.postgres

WebhookNode = compose(NodeEffect, ["webhook", "health_check"])

WORKER = r"""
import asyncio, json, sys, time
from onex_compose import NodeEffect, compose

async def main(db, seconds):
    node = compose(NodeEffect, ["webhook"])(capability_config={"database": db, "webhook": {
        "allow_http": True, "allow_private_networks": True, "workers": 4}})
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        done = await node.webhooks.step()
        sent += done
        if not done:
            if (await node.webhooks.deliveries(status="pending", limit=1)) == []:
                break
            await asyncio.sleep(0.02)
    await node.webhooks.aclose()
    print(sent)

asyncio.run(main(json.loads(sys.argv[1]), float(sys.argv[2])))
"""


class CountingServer:
    """Counts requests per webhook-id and records any id seen twice at the same time."""

    def __init__(self, delay: float = 0.02) -> None:
        self.seen: dict[str, int] = {}
        self.inflight: set[str] = set()
        self.concurrent: list[str] = []
        lock = threading.Lock()
        me = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                mid = self.headers["webhook-id"]
                with lock:
                    if mid in me.inflight:
                        me.concurrent.append(mid)
                    me.inflight.add(mid)
                    me.seen[mid] = me.seen.get(mid, 0) + 1
                time.sleep(delay)
                with lock:
                    me.inflight.discard(mid)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _plain(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    import asyncpg

    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": postgres_dsn, "schema": schema, "namespace": "t"}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(_plain(postgres_dsn))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def make(db: dict[str, Any], **cfg: Any) -> Any:
    node = WebhookNode(capability_config={"database": db, "webhook": {
        "allow_http": True, "allow_private_networks": True, "jitter": 0.0, **cfg}})

    async def no_dns(host: str, port: int) -> list[str]:
        raise OSError(f"no resolution in tests ({host})")

    node.webhooks.resolver = no_dns
    node.webhooks.autostart = False
    return node


async def test_round_trip_and_statuses_on_postgres(pg: dict[str, Any]) -> None:
    server = CountingServer(delay=0)
    node = make(pg)
    try:
        await node.webhooks.subscribe(server.url, ["order.*"])
        ids = await node.webhooks.publish("order.created", {"id": 1}, idempotency_key="k")
        assert await node.webhooks.publish("order.created", {"id": 1}, idempotency_key="k") == ids
        assert await node.webhooks.step() == 1
        [d] = await node.webhooks.deliveries()
        assert (d.status, d.attempts, d.last_status_code) == ("delivered", 1, 200)
        assert server.seen == {d.msg_id: 1}
    finally:
        await node.webhooks.aclose()
        server.close()


@pytest.mark.slow
async def test_two_worker_processes_never_attempt_one_webhook_id_concurrently(
        pg: dict[str, Any]) -> None:
    server = CountingServer(delay=0.02)
    node = make(pg)
    try:
        await node.webhooks.subscribe(server.url, ["*"])
        await node.webhooks.subscribe(server.url + "?second", ["*"])
        for i in range(60):
            await node.webhooks.publish("tick", {"i": i})
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(pg), "90"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        outs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err.decode()[-2000:]
        sent = [int(out.decode().strip().splitlines()[-1]) for out, _ in outs]
        print("attempts per process", sent)
        assert sum(sent) == 120
        assert server.concurrent == []
        assert len(server.seen) == 120 and set(server.seen.values()) == {1}
        assert {d.status for d in await node.webhooks.deliveries(limit=500)} == {"delivered"}
    finally:
        await node.webhooks.aclose()
        server.close()


async def _until_up(node: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await node.db.fetch_val("SELECT 1")
            return
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_server_killed_mid_run_publish_raises_and_pending_deliveries_resume(
        private_postgres: Any) -> None:
    server = CountingServer(delay=0)
    db = {"url": private_postgres.url, "connect_timeout": 2, "pool_timeout": 2, "namespace": "t"}
    node = make(db)
    node.webhooks.autostart = True
    try:
        await node.webhooks.subscribe(server.url, ["*"])
        node.webhooks.autostart = False
        await node.webhooks.publish("before", 1)         # pending, not yet sent
        await asyncio.to_thread(private_postgres.stop)
        with pytest.raises(DatabaseError) as info:
            await node.webhooks.publish("during", 2)
        assert isinstance(info.value, ConnectionError)
        node.webhooks.ensure_worker()                     # the worker meets the outage
        report = await node.webhooks.health()
        assert report["status"] == "unhealthy"
        await asyncio.to_thread(private_postgres.start)
        await _until_up(node)
        assert await node.webhooks.drain(timeout=60)
        [d] = await node.webhooks.deliveries()
        assert (d.event_type, d.status) == ("before", "delivered")
        assert list(server.seen.values()) == [1]
        assert (await node.webhooks.health())["status"] == "healthy"
    finally:
        await node.webhooks.aclose()
        await _sql.dispose_engines()
        server.close()


async def test_patterns_match_alike_on_postgres(pg: dict[str, Any]) -> None:
    node = make(pg)
    try:
        await node.webhooks.subscribe("http://127.0.0.1:9/a", ["order.?aid", "user_%", "a\\b*"])
        assert len(await node.webhooks.publish("order.paid", 1)) == 1
        assert await node.webhooks.publish("order.PAID", 1) == []
        assert await node.webhooks.publish("user_x", 1) == []
        assert len(await node.webhooks.publish("user_%", 1)) == 1
        assert len(await node.webhooks.publish("a\\bcd", 1)) == 1
        assert await node.webhooks.publish("axbcd", 1) == []
    finally:
        await node.webhooks.aclose()
