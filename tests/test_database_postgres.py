"""The database capability's PostgreSQL-specific behaviour: isolation between connections,
conflict retry, server-side deadlines, concurrent migrators, and a server killed mid-run.
(SQLite-file migrators are here too: the two-process test runs on both.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from onex_compose import NodeEffect, compose
from onex_compose.capabilities import _sql
from onex_compose.capabilities.database import (
    DatabaseUnavailableError,
    TransactionConflictError,
)

pytestmark = pytest.mark.postgres

DbNode = compose(NodeEffect, ["database"])


def _plain(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    """This test's database config: the shared server, a schema of its own (dropped after)."""
    import asyncpg

    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": postgres_dsn, "schema": schema}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(_plain(postgres_dsn))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _acct(db: Any) -> None:
    await db.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    await db.execute("INSERT INTO acct (id, v) VALUES (1, 0), (2, 0)")


async def test_joined_writes_are_invisible_to_other_connections_until_commit(
        pg: dict[str, Any]) -> None:
    db = DbNode(capability_config={"database": pg}).db
    other = DbNode(capability_config={"database": pg}).db
    await _acct(db)

    async def helper() -> None:
        await db.execute("UPDATE acct SET v = 5 WHERE id = 1")

    async with db.transaction() as tx:
        await helper()
        assert await tx.fetch_val("SELECT v FROM acct WHERE id = 1") == 5
        seen = await asyncio.create_task(other.fetch_val("SELECT v FROM acct WHERE id = 1"))
        assert seen == 0
    assert await other.fetch_val("SELECT v FROM acct WHERE id = 1") == 5


async def _conflicting_pair(db: Any, barrier_first: bool = True) -> list[int]:
    """Two serializable transactions read both rows, then each bumps its row after the other
    read: the second to commit gets 40001 and is run again."""
    calls = {1: 0, 2: 0}
    both_read = asyncio.Barrier(2) if barrier_first else None

    async def bump(tx: Any, row: int) -> None:
        calls[row] += 1
        total = await tx.fetch_val("SELECT sum(v) FROM acct")
        if calls[row] == 1 and both_read is not None:
            await asyncio.wait_for(both_read.wait(), 10)
        await tx.execute("UPDATE acct SET v = :v WHERE id = :id", {"v": total + 1, "id": row})

    await asyncio.gather(db.run_in_transaction(bump, 1, isolation="serializable"),
                         db.run_in_transaction(bump, 2, isolation="serializable"))
    return [calls[1], calls[2]]


async def test_serialization_conflict_is_retried_and_both_effects_land(
        pg: dict[str, Any]) -> None:
    node = DbNode(capability_config={"database": pg})
    db = node.db
    await _acct(db)
    calls = await _conflicting_pair(db)
    assert sorted(calls) == [1, 2]  # one of them ran twice
    rows = await db.fetch_all("SELECT v FROM acct ORDER BY id")
    assert sorted(r["v"] for r in rows) == [1, 2]  # serial order: 0+1, then 1+1
    c = node.metrics.snapshot()["counters"]
    assert c["db_transaction_retries_total"] == 1
    assert c['db_transactions_total{outcome="conflict"}'] == 1


async def test_with_retry_composed_the_retry_is_counted_by_retry(pg: dict[str, Any]) -> None:
    node = compose(NodeEffect, ["database", "retry"])(capability_config={
        "database": pg, "retry": {"initial_delay": 0.01, "max_attempts": 5}})
    db = node.db
    await _acct(db)
    calls = await _conflicting_pair(db)
    assert sorted(calls) == [1, 2]
    c = node.metrics.snapshot()["counters"]
    retried = sum(v for k, v in c.items()
                  if k.startswith("retry_attempts_total") and 'outcome="retry"' in k)
    assert retried == 1
    assert c["db_transaction_retries_total"] == 1


async def test_inside_a_retried_process_the_conflict_reaches_the_outer_retry(
        pg: dict[str, Any]) -> None:
    attempts: list[int] = []
    gate = asyncio.Event()

    class Worker(compose(NodeEffect, ["database", "retry"])):  # type: ignore[misc]
        async def process(self, input_data: Any) -> Any:
            row = input_data["row"]

            async def bump(tx: Any) -> None:
                attempts.append(row)
                total = await tx.fetch_val("SELECT sum(v) FROM acct")
                if row == 2 and attempts.count(2) == 1:
                    await asyncio.wait_for(gate.wait(), 10)  # row 1 commits in between
                await tx.execute("UPDATE acct SET v = :v WHERE id = :id",
                                 {"v": total + 1, "id": row})

            await self.db.run_in_transaction(bump, isolation="serializable")
            if row == 1:
                gate.set()
            return row

    node = Worker(capability_config={
        "database": {**pg, "retry_attempts": 5},
        "retry": {"initial_delay": 0.01, "max_attempts": 3, "guard_process": True,
                  "retriable_error_types": ["TransactionConflictError"]}})
    await _acct(node.db)
    second = asyncio.create_task(node.process({"row": 2}))
    while 2 not in attempts:
        await asyncio.sleep(0.01)
    assert await node.process({"row": 1}) == 1
    assert await asyncio.wait_for(second, 20) == 2
    # row 2: one attempt per process() call (the inner loop did not retry), two calls
    assert attempts.count(2) == 2
    assert node.metrics.snapshot()["counters"].get("db_transaction_retries_total", 0) == 0


async def test_without_retry_a_conflict_after_the_last_attempt_propagates(
        pg: dict[str, Any]) -> None:
    db = DbNode(capability_config={"database": {**pg, "retry_attempts": 1}}).db
    await _acct(db)
    with pytest.raises(TransactionConflictError) as info:
        await _conflicting_pair(db)
    assert info.value.sqlstate == "40001" and info.value.onex_retriable is True


async def test_a_deadline_cancels_the_query_on_the_server(pg: dict[str, Any]) -> None:
    from onex_compose.capabilities.timeout import OperationTimeoutError

    node = compose(NodeEffect, ["database", "timeout"])(capability_config={"database": pg})
    marker = f"onex_sleep_{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        await node.with_timeout(node.db.fetch_val, f"SELECT pg_sleep(30) AS {marker}",
                                timeout=0.2)
    assert time.monotonic() - t0 < 5
    assert node.db.pool_status()["checked_out"] == 0
    assert await node.db.fetch_val("SELECT 2") == 2  # the pool hands out a working connection
    watcher = DbNode(capability_config={"database": pg}).db
    deadline = time.monotonic() + 5
    while True:
        running = await watcher.fetch_val(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE :q AND state = 'active' "
            "AND pid <> pg_backend_pid()", {"q": f"%{marker}%"})
        if running == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert running == 0


async def test_statement_timeout_config_applies_per_transaction(pg: dict[str, Any]) -> None:
    from onex_compose.capabilities.database import DatabaseError

    db = DbNode(capability_config={"database": {**pg, "statement_timeout": 0.2}}).db
    with pytest.raises(DatabaseError) as info:
        await db.fetch_val("SELECT pg_sleep(5)")
    assert info.value.sqlstate == "57014"


_MIGRATOR = textwrap.dedent("""
    import asyncio, sys
    from onex_compose import NodeEffect, compose
    from onex_compose.capabilities.database import Migration
    cfg = {"url": sys.argv[1]}
    if sys.argv[2]:
        cfg["schema"] = sys.argv[2]
    node = compose(NodeEffect, ["database"])(capability_config={"database": cfg})
    node.db.register_migrations("race", [
        Migration(f"{i:03d}", f"CREATE TABLE race_{i} (x INTEGER)") for i in range(5)])
    async def main():
        await node.db.migrate()
        await node.db.aclose()
    asyncio.run(main())
""")


async def _two_migrators(url: str, schema: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _MIGRATOR, url, schema],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        out, err = await asyncio.to_thread(p.communicate, timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]


@pytest.mark.slow
async def test_two_processes_migrate_concurrently_on_postgresql(pg: dict[str, Any]) -> None:
    await _two_migrators(pg["url"], pg["schema"])
    db = DbNode(capability_config={"database": pg}).db
    rows = await db.fetch_all("SELECT id, count(*) AS n FROM onex_migrations GROUP BY id "
                              "ORDER BY id")
    assert [(r["id"], r["n"]) for r in rows] == [(f"{i:03d}", 1) for i in range(5)]


@pytest.mark.slow
async def test_server_killed_mid_run(private_postgres: Any) -> None:
    from onex_compose.capabilities.circuit_breaker import CircuitOpenError

    Node = compose(NodeEffect, ["database", "health_check", "circuit_breaker"])
    node = Node(capability_config={
        "database": {"url": private_postgres.url, "connect_timeout": 2, "pool_timeout": 2},
        "circuit_breaker": {"failure_threshold": 2, "reset_timeout": 0.5}})
    db = node.db
    await db.execute("CREATE TABLE t (x INTEGER)")
    inside = asyncio.Event()

    async def in_flight() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (x) VALUES (1)")
            inside.set()
            await tx.fetch_val("SELECT pg_sleep(10)")

    task = asyncio.create_task(in_flight())
    await asyncio.wait_for(inside.wait(), 10)
    await asyncio.sleep(0.2)
    await asyncio.to_thread(private_postgres.stop)
    with pytest.raises(DatabaseUnavailableError) as info:
        await asyncio.wait_for(task, 15)
    assert info.value.onex_retriable is True
    assert db.pool_status()["checked_out"] == 0
    assert (await db.health())["status"] == "unhealthy"

    breaker = node.circuit_breaker.get("database")
    for _ in range(5):
        try:
            await breaker.acall(db.fetch_val, "SELECT 1")
        except CircuitOpenError:
            break
        except DatabaseUnavailableError:
            continue
    else:
        pytest.fail("the breaker did not open on DatabaseUnavailableError")

    await asyncio.to_thread(private_postgres.start)
    deadline = time.monotonic() + 10
    while True:  # pre-ping discards the dead pooled connections: the next call succeeds
        try:
            assert await db.fetch_val("SELECT 1") == 1
            break
        except DatabaseUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    assert (await db.health())["status"] == "healthy"
    await _sql.dispose_engines()


async def test_isolation_readonly_and_search_path(pg: dict[str, Any]) -> None:
    from onex_compose.capabilities.database import DatabaseError

    db = DbNode(capability_config={"database": {**pg, "isolation": "repeatable_read"}}).db
    async with db.transaction() as tx:
        assert await tx.fetch_val("SHOW transaction_isolation") == "repeatable read"
        assert await tx.fetch_val("SELECT current_schema()") == pg["schema"]
    async with db.transaction(isolation="serializable") as tx:
        assert await tx.fetch_val("SHOW transaction_isolation") == "serializable"
    await _acct(db)
    with pytest.raises(DatabaseError, match="read-only"):
        async with db.transaction(readonly=True) as tx:
            await tx.execute("UPDATE acct SET v = 1")
